"""What the embedder and the cross-encoder share: an ONNX session and a tokenizer, loaded
lazily, tuned for small machines, renewed after fork().

Session options: intra-op threads = physical cores (hyper-threads slow BERT down), one
inter-op thread, sequential execution, full graph optimisation, and no busy spinning:
ONNX Runtime's worker threads otherwise spin for a while after each call, burning a core
that the agent (or SQLite) could use.

The tokenizer: a ``tokenizer.json`` may carry fixed padding and truncation (the published
all-MiniLM-L6-v2 one pads and truncates to 128). Both are reset on load; truncation is set
to the model's own maximum sequence length.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

from . import driver
from .errors import InvalidInputError, ModelError


def physical_cores() -> int:
    """Physical cores this process may use (Linux: from /proc/cpuinfo), else cpu_count."""
    try:
        allowed = os.sched_getaffinity(0)
    except (AttributeError, OSError):
        allowed = set(range(os.cpu_count() or 1))
    try:
        cores: set[tuple[str, str]] = set()
        processor = physical = None
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                key, value = key.strip(), value.strip()
                if key == "processor":
                    processor = int(value)
                elif key == "physical id":
                    physical = value
                elif key == "core id" and processor in allowed:
                    cores.add((physical or "0", value))
        if cores:
            return len(cores)
    except (OSError, ValueError):
        pass
    return max(1, len(allowed))


def session_options(threads: int | None = None) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or physical_cores()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    return options


def load_session(path: Path, threads: int | None = None) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(
            str(path), sess_options=session_options(threads), providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime raises its own pybind types (InvalidProtobuf, ...)
        raise ModelError(
            f"could not load the ONNX model {path}: {exc}. The file may be damaged or "
            "incomplete: delete it and download it again (localmem models download NAME)"
        ) from exc


def load_tokenizer(path: Path, max_length: int) -> Any:
    from tokenizers import Tokenizer

    try:
        tokenizer = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ModelError(f"could not load the tokenizer {path}: {exc}") from exc
    tokenizer.no_padding()
    tokenizer.no_truncation()
    # longest_first: for a (query, document) pair, trim the longer side first.
    tokenizer.enable_truncation(max_length, strategy="longest_first")
    return tokenizer


class LazyModel:
    """Holds one ONNX session + tokenizer, loaded on first use, once per process."""

    def __init__(self, onnx_path: Path, tokenizer_path: Path, max_length: int, threads: int | None):
        self.onnx_path = Path(onnx_path)
        self.tokenizer_path = Path(tokenizer_path)
        self.max_length = max_length
        self.threads = threads
        self._lock = threading.Lock()
        self._pid = os.getpid()
        self._loaded: tuple[Any, Any, frozenset[str]] | None = None
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.Lock()

    def get(self) -> tuple[Any, Any, frozenset[str]]:
        """(session, tokenizer, names of the graph's inputs)."""
        loaded = self._loaded
        if loaded is not None and self._pid == os.getpid():
            return loaded
        with self._lock:
            if self._pid != os.getpid():
                # ONNX Runtime's thread pool does not survive fork(): never touch (or
                # destroy) the parent's session here, load a fresh one.
                driver.abandon(self._loaded)
                self._loaded = None
                self._pid = os.getpid()
            if self._loaded is None:
                session = load_session(self.onnx_path, self.threads)
                tokenizer = load_tokenizer(self.tokenizer_path, self.max_length)
                names = frozenset(i.name for i in session.get_inputs())
                missing = {"input_ids", "attention_mask"} - names
                if missing:
                    raise ModelError(
                        f"{self.onnx_path} lacks the inputs {sorted(missing)}; "
                        "localmem runs BERT-style models (input_ids, attention_mask)"
                    )
                self._loaded = (session, tokenizer, names)
            return self._loaded

    @property
    def loaded(self) -> bool:
        return self._loaded is not None


def check_texts(texts: Any, what: str = "texts") -> list[str]:
    if isinstance(texts, str) or not isinstance(texts, (list, tuple)):
        raise InvalidInputError(f"{what} must be a list of str, not {type(texts).__name__}")
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise InvalidInputError(f"{what}[{i}] is a {type(text).__name__}, not a str")
    return list(texts)


def length_batches(encodings: list[Any], batch_size: int) -> list[list[int]]:
    """Indices grouped into batches of similar token length (shortest first), so each batch
    pads only to its own longest member. Results are put back in input order by callers."""
    order = sorted(range(len(encodings)), key=lambda i: len(encodings[i].ids))
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def feed(encodings: list[Any], batch: list[int], input_names: frozenset[str], width: int = 0) -> dict[str, Any]:
    """The padded int64 arrays for one batch, only for inputs the graph declares: padded to
    the batch's longest, or to ``width`` tokens if that is more (a benchmark's baseline)."""
    import numpy as np

    width = max(width, *(len(encodings[i].ids) for i in batch))
    ids = np.zeros((len(batch), width), dtype=np.int64)
    mask = np.zeros((len(batch), width), dtype=np.int64)
    types = np.zeros((len(batch), width), dtype=np.int64)
    for row, i in enumerate(batch):
        e = encodings[i]
        n = len(e.ids)
        ids[row, :n] = e.ids
        mask[row, :n] = e.attention_mask
        types[row, :n] = e.type_ids
    arrays = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
    return {name: arrays[name] for name in arrays if name in input_names}


class OnnxModel:
    """What an embedder and a cross-encoder share: a resolved model, its lazily loaded
    session, and ``load()``, which resolves a model of the subclass's ``kind``."""

    kind = ""
    default_batch_size = 32

    def __init__(self, files: Any, *, batch_size: int | None = None, threads: int | None = None):
        if batch_size is None:
            batch_size = self.default_batch_size
        spec = files.spec
        if spec.kind != self.kind:
            raise ModelError(f"{spec.name} is a {spec.kind}, not a {self.kind}")
        if type(batch_size) is not int or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive int; got {batch_size!r}")
        self.files = files
        self.spec = spec
        self.name = spec.name
        self.batch_size = batch_size
        self._model = LazyModel(files.onnx_path, files.tokenizer_path, spec.max_length, threads)

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} {self.files.onnx_path.name}>"

    @classmethod
    def load(
        cls,
        name: str | None = None,
        *,
        path: Any = None,
        int8: bool | None = None,
        download: bool = True,
        batch_size: int | None = None,
        threads: int | None = None,
    ) -> Any:
        """A model by registry name (default: the kind's default) or from a folder.

        Resolution order: ``path``; ``$LOCALMEM_MODELS_DIR/<name>/``; the Hugging Face
        cache; a download into localmem's cache (unless ``download=False`` or
        ``HF_HUB_OFFLINE``). Nothing heavy happens here: the ONNX session loads on the
        first call that needs it. ``int8=True`` uses the copy ``localmem models quantize``
        wrote.
        """
        from .models import resolve

        files = resolve(name, kind=cls.kind, path=path, download=download, int8=int8)
        return cls(files, batch_size=batch_size, threads=threads)
