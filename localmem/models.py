"""Model registry and resolution: which ONNX files a model name means, and where they are.

A model is a ``ModelSpec`` (a row of ``REGISTRY``, or ``folder_spec()`` for a folder of
your own). ``resolve()`` turns it into ``ModelFiles``: concrete paths to the ONNX file and
``tokenizer.json``. Places are tried in this order; the first that has the files wins::

    1. path=...                          a folder (or a .onnx file) you name   source "path"
    2. $LOCALMEM_MODELS_DIR/<name>/      a folder per model                    "models_dir"
    3. the Hugging Face cache            HF_HUB_CACHE, then cache_dir()/hub    "hf_cache"
    4. an earlier download               cache_dir()/models/<name>/            "localmem_cache"
    5. a download from the Hub           into cache_dir()/models/<name>/       "download"

Step 5 is skipped with ``download=False`` or when ``HF_HUB_OFFLINE`` is set; it is bounded
in time and retried a bounded number of times (see ``download.py``). When every place
fails, one ``ModelError`` names each place tried (with its path) and how to fix it.
In a folder the ONNX file is ``<spec.onnx_file>`` (``onnx/model.onnx`` on the Hub) or, for
a flat folder, ``model.onnx`` at the top.

int8: ``quantize()`` writes a dynamically quantized copy once; ``resolve(int8=True)``
returns it, and never quantizes on its own. Where the copy lives: see ``int8_path()``.

Nothing here touches the network or imports onnxruntime / huggingface_hub at import time.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import stat
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import platformdirs

from .errors import ModelError, ModelNotFoundError
from .progress import ProgressCallback

__all__ = [
    "ModelSpec",
    "ModelFiles",
    "DEFAULT_EMBEDDER",
    "DEFAULT_RERANKER",
    "REGISTRY",
    "get_spec",
    "folder_spec",
    "resolve",
    "check_onnx",
    "int8_path",
    "quantize",
    "file_sha256",
    "model_identity",
    "cache_dir",
]

KINDS = ("embedder", "reranker")
POOLINGS = ("mean", "cls")
SOURCES = ("path", "models_dir", "hf_cache", "localmem_cache", "download")
MODELS_DIR_ENV = "LOCALMEM_MODELS_DIR"
FLAT_ONNX = "model.onnx"  # where a flat folder (e.g. the shared models dir) keeps it
INT8_SUFFIX = ".int8.onnx"
# The extra holds only onnx; naming the package itself works from a checkout and an index alike.
QUANTIZE_HINT = "pip install 'onnx>=1.15' (the extra localmem-engine[quantize])"


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """What a model is: where it is published, which files it needs, how to use it."""

    name: str
    kind: str
    repo: str | None
    onnx_file: str = "onnx/model.onnx"
    tokenizer_file: str = "tokenizer.json"
    extra_files: tuple[str, ...] = ("config.json",)
    dim: int | None = None
    pooling: str | None = None
    normalize: bool = True
    max_length: int = 512
    query_prefix: str = ""
    document_prefix: str = ""
    license: str = ""
    description: str = ""
    prefer_int8: bool = False
    # The relevance floor measured for this embedder: the cosine similarity below which a
    # message does not answer a query (retrieval.floor; Memory's min_relevance="auto").
    # None: not calibrated, no floor by default.
    min_relevance: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name or "\\" in self.name:
            raise ModelError(f"model name must be a non-empty str without slashes; got {self.name!r}")
        if self.kind not in KINDS:
            raise ModelError(f"model kind must be one of {', '.join(KINDS)}; got {self.kind!r}")
        if self.pooling is not None and self.pooling not in POOLINGS:
            raise ModelError(f"pooling must be one of {', '.join(POOLINGS)} or None; got {self.pooling!r}")
        if type(self.max_length) is not int or self.max_length < 1:
            raise ModelError(f"max_length must be a positive int; got {self.max_length!r}")
        if self.dim is not None and (type(self.dim) is not int or self.dim < 1):
            raise ModelError(f"dim must be a positive int or None; got {self.dim!r}")
        if not isinstance(self.extra_files, tuple):
            raise ModelError(f"extra_files must be a tuple; got {type(self.extra_files).__name__}")
        if self.min_relevance is not None and (
            type(self.min_relevance) is not float or not -1.0 <= self.min_relevance <= 1.0
        ):
            raise ModelError(f"min_relevance must be a float from -1 to 1 or None; got {self.min_relevance!r}")


@dataclass(frozen=True, slots=True)
class ModelFiles:
    """A resolved model: the files to load and where they were found."""

    spec: ModelSpec
    directory: Path
    onnx_path: Path
    tokenizer_path: Path
    source: str


DEFAULT_EMBEDDER = "all-MiniLM-L6-v2"
DEFAULT_RERANKER = "ms-marco-MiniLM-L-6-v2"

_ST_FILES = ("config.json", "sentence_bert_config.json", "special_tokens_map.json",
             "tokenizer_config.json")
_CE_FILES = ("config.json", "special_tokens_map.json", "tokenizer_config.json")

# The file paths follow the repos' own `onnx/` folders (the fp32 export is onnx/model.onnx;
# tokenizer.json and the config files sit at the repo's top). They are written from what
# these repos are known to publish; no machine here can reach the Hub to re-check them, so
# `localmem models download NAME` on a connected machine is the test. A file a repo lacks
# is simply not fetched: only the ONNX file and tokenizer.json are required.
_SPECS = (
    ModelSpec(
        name="all-MiniLM-L6-v2", kind="embedder", repo="sentence-transformers/all-MiniLM-L6-v2",
        extra_files=_ST_FILES, dim=384, pooling="mean", max_length=256, license="Apache-2.0",
        description="English sentence embeddings; small and fast (the default)",
        # benchmarks/relevance_floor.py: 72 no-answer queries x 5 LoCoMo owners vs its 762
        # questions. 0.35 lets 9.2 % of no-answer calls through at a fused R@10 cost of
        # 0.001 (0.40: 6.4 % for 0.003, but 0.026 when turns lack the "Speaker: " prefix).
        min_relevance=0.35,
    ),
    ModelSpec(
        name="bge-small-en-v1.5", kind="embedder", repo="BAAI/bge-small-en-v1.5",
        extra_files=_ST_FILES, dim=384, pooling="cls", max_length=512, license="MIT",
        query_prefix="Represent this sentence for searching relevant passages: ",
        description="English embeddings, stronger retrieval; queries take an instruction prefix",
    ),
    ModelSpec(
        name="multilingual-e5-small", kind="embedder", repo="intfloat/multilingual-e5-small",
        extra_files=_ST_FILES, dim=384, pooling="mean", max_length=512, license="MIT",
        query_prefix="query: ", document_prefix="passage: ",
        description="about 100 languages; 'query: ' / 'passage: ' prefixes",
    ),
    ModelSpec(
        name="paraphrase-multilingual-MiniLM-L12-v2", kind="embedder",
        repo="sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2",
        extra_files=_ST_FILES, dim=384, pooling="mean", max_length=128, license="Apache-2.0",
        description="50+ languages, paraphrase-trained; short texts (128 tokens)",
    ),
    ModelSpec(
        name="ms-marco-MiniLM-L-6-v2", kind="reranker", repo="cross-encoder/ms-marco-MiniLM-L-6-v2",
        extra_files=_CE_FILES, max_length=512, license="Apache-2.0",
        description="English cross-encoder reranker trained on MS MARCO (the default)",
    ),
    ModelSpec(
        name="ms-marco-TinyBERT-L-2-v2", kind="reranker", repo="cross-encoder/ms-marco-TinyBERT-L-2-v2",
        extra_files=_CE_FILES, max_length=512, license="Apache-2.0",
        description="English cross-encoder, 2 layers: fastest, a little less accurate",
    ),
    ModelSpec(
        name="mmarco-mMiniLMv2-L12-H384-v1", kind="reranker",
        repo="cross-encoder/mmarco-mMiniLMv2-L12-H384-v1",
        extra_files=_CE_FILES, max_length=512, license="Apache-2.0",
        description="multilingual cross-encoder (mMARCO, 14 languages)",
    ),
)

REGISTRY: dict[str, ModelSpec] = {spec.name: spec for spec in _SPECS}


def get_spec(name: str) -> ModelSpec:
    """The registered spec called ``name``; ``ModelError`` listing the known names if none."""
    spec = REGISTRY.get(name) if isinstance(name, str) else None
    if spec is None:
        raise ModelError(f"unknown model {name!r}; known models: {_known_names()}")
    return spec


def _known_names() -> str:
    return ", ".join(f"{s.name} ({s.kind})" for s in REGISTRY.values())


# -- folders of your own ------------------------------------------------------------------


def _read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``; {} if the file is absent."""
    try:
        with open(path, encoding="utf-8") as f:
            value = json.load(f)
    except FileNotFoundError:
        return {}
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    if not isinstance(value, dict):
        raise ModelError(f"{path} does not hold a JSON object")
    return value


def _positive_int(value: Any) -> int | None:
    return value if type(value) is int and value > 0 else None


def _split_onnx_path(path: Path) -> tuple[Path, str | None]:
    """(model folder, onnx file relative to it or None) for a folder or a .onnx file.

    A file inside an ``onnx/`` subfolder whose parent holds tokenizer.json (the Hub layout)
    belongs to the parent folder.
    """
    if path.suffix != ".onnx" or path.is_dir():
        return path, None
    folder = path.parent
    if (folder.name == "onnx" and not (folder / "tokenizer.json").exists()
            and (folder.parent / "tokenizer.json").exists()):
        return folder.parent, f"onnx/{path.name}"
    return folder, path.name


def folder_spec(path: str | os.PathLike[str], *, kind: str, name: str | None = None,
                **fields: Any) -> ModelSpec:
    """A spec for a folder of your own: an ONNX export plus ``tokenizer.json``.

    ``path`` is the folder (holding ``model.onnx`` or ``onnx/model.onnx``) or the .onnx file.
    What is not given in ``fields`` is read from the folder's config files:
    ``dim`` from config.json ``hidden_size``; ``max_length`` from sentence_bert_config.json
    ``max_seq_length``, else config.json ``max_position_embeddings`` (less RoBERTa's two
    offset positions), else 512; ``pooling`` from 1_Pooling/config.json, else ``"mean"``
    (embedders); prefixes from config_sentence_transformers.json ``prompts``. The name
    defaults to the folder's name; ``repo`` is None.
    """
    if kind not in KINDS:
        raise ModelError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    folder, onnx_file = _split_onnx_path(Path(path).expanduser())
    if not folder.is_dir():
        raise ModelError(f"model folder {folder} does not exist")
    if onnx_file is None:
        onnx_file = next((c for c in (FLAT_ONNX, "onnx/model.onnx") if (folder / c).is_file()), None)
        if onnx_file is None:
            raise ModelError(
                f"no ONNX model in {folder}: expected {folder / FLAT_ONNX} or "
                f"{folder / 'onnx' / 'model.onnx'}"
            )
    config = _read_json(folder / "config.json")
    sbert = _read_json(folder / "sentence_bert_config.json")
    max_length = _positive_int(sbert.get("max_seq_length"))
    if max_length is None:
        max_length = _positive_int(config.get("max_position_embeddings"))
        # RoBERTa-family position ids start after padding_idx (1): 514 positions, 512 tokens.
        if max_length and config.get("model_type") in ("roberta", "xlm-roberta", "camembert"):
            max_length -= 2
    found: dict[str, Any] = {
        "name": name or folder.name,
        "kind": kind,
        "repo": None,
        "onnx_file": onnx_file,
        "extra_files": tuple(
            f for f in ("config.json", "sentence_bert_config.json", "special_tokens_map.json",
                        "tokenizer_config.json", "config_sentence_transformers.json",
                        "modules.json", "1_Pooling/config.json")
            if (folder / f).is_file()
        ),
        "max_length": max_length or 512,
        "description": f"your own model in {folder}",
    }
    if kind == "embedder":
        pooling_config = _read_json(folder / "1_Pooling" / "config.json")
        found["dim"] = (_positive_int(config.get("hidden_size"))
                        or _positive_int(pooling_config.get("word_embedding_dimension")))
        found["pooling"] = "cls" if pooling_config.get("pooling_mode_cls_token") else "mean"
        prompts = _read_json(folder / "config_sentence_transformers.json").get("prompts") or {}
        if isinstance(prompts, dict):
            query = prompts.get("query")
            document = prompts.get("document", prompts.get("passage"))
            found["query_prefix"] = query if isinstance(query, str) else ""
            found["document_prefix"] = document if isinstance(document, str) else ""
    found.update(fields)
    try:
        return ModelSpec(**found)
    except TypeError as exc:
        known = ", ".join(f.name for f in dataclasses.fields(ModelSpec))
        raise ModelError(f"folder_spec: {exc}; ModelSpec fields are {known}") from None


# -- where files live -----------------------------------------------------------------------


def _cache_root() -> Path:
    return Path(platformdirs.user_cache_dir("localmem", appauthor=False))


def cache_dir() -> Path:
    """localmem's own cache folder (platformdirs' user cache dir), created with mode 0o700."""
    path = _cache_root()
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


def _hf_cache() -> str:
    from huggingface_hub import constants

    return constants.HF_HUB_CACHE


def _hub_offline() -> bool:
    """HF_HUB_OFFLINE as huggingface_hub reads it: its import-time constant, or the
    environment now (a truthy value in its own ENV_VARS_TRUE_VALUES)."""
    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return True
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE")
    return value is not None and value.upper() in constants.ENV_VARS_TRUE_VALUES


def _allow_patterns(spec: ModelSpec) -> list[str]:
    return list(dict.fromkeys((spec.onnx_file, spec.tokenizer_file, *spec.extra_files)))


def _find_in_folder(folder: Path, spec: ModelSpec, onnx_file: str | None = None) -> tuple[Path, Path]:
    """(onnx file, tokenizer.json) in ``folder``, or ``ModelError`` saying what is missing.

    The ONNX file is ``<spec.onnx_file>`` or a flat ``model.onnx``; the tokenizer is
    ``<spec.tokenizer_file>`` or sits beside the ONNX file.
    """
    if not folder.is_dir():
        raise ModelError(f"{folder} does not exist" if not folder.exists() else f"{folder} is not a folder")
    candidates = [onnx_file] if onnx_file else list(dict.fromkeys((spec.onnx_file, FLAT_ONNX)))
    onnx_path = next((folder / c for c in candidates if (folder / c).is_file()), None)
    if onnx_path is None:
        raise ModelError(f"no {' or '.join(candidates)} in {folder}")
    if onnx_path.stat().st_size == 0:
        raise ModelError(f"{onnx_path} is empty (0 bytes): delete it and fetch the model again")
    tokenizer_candidates = list(dict.fromkeys((
        folder / spec.tokenizer_file, onnx_path.parent / Path(spec.tokenizer_file).name
    )))
    tokenizer_path = next((t for t in tokenizer_candidates if t.is_file()), None)
    if tokenizer_path is None:
        raise ModelError(f"no {spec.tokenizer_file} in {folder}")
    if tokenizer_path.stat().st_size == 0:
        raise ModelError(f"{tokenizer_path} is empty (0 bytes): delete it and fetch the model again")
    return onnx_path, tokenizer_path


def _files(spec: ModelSpec, folder: Path, source: str, onnx_file: str | None = None) -> ModelFiles:
    onnx_path, tokenizer_path = _find_in_folder(folder, spec, onnx_file)
    return ModelFiles(spec=spec, directory=folder, onnx_path=onnx_path,
                      tokenizer_path=tokenizer_path, source=source)


def _from_path(path: str | os.PathLike[str], name: str | None, kind: str,
               spec: ModelSpec | None) -> ModelFiles:
    """Step 1: an explicit folder or .onnx file. Failing here is final: no fallback."""
    given = Path(path).expanduser()
    folder, onnx_file = _split_onnx_path(given)
    if not folder.is_dir() or (onnx_file is not None and not given.is_file()):
        raise ModelError(
            f"model path {given} does not exist; pass the folder that holds {FLAT_ONNX} "
            "(or onnx/model.onnx) and tokenizer.json, or the .onnx file itself"
        )
    if spec is None:
        # The name defaults to the folder's. A registered name brings its spec (prefixes,
        # pooling, license); a folder's own name only when it is of the kind asked for.
        registered = REGISTRY.get(name or folder.name)
        if registered is not None and (name is not None or registered.kind == kind):
            spec = registered
        else:
            spec = folder_spec(given, kind=kind, name=name)
    try:
        return _files(spec, folder, "path", onnx_file)
    except ModelError as exc:
        raise ModelError(
            f"model path {given}: {exc}. The folder needs the ONNX export ({FLAT_ONNX} or "
            f"{spec.onnx_file}) and {spec.tokenizer_file}"
        ) from None


def _download_hint(spec: ModelSpec) -> str:
    return f"run `localmem models download {spec.name}` on a machine with internet"


def _first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` (huggingface_hub's messages run to paragraphs)."""
    return f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0]}"


def _not_found(spec: ModelSpec, tried: list[str], fixes: list[str]) -> ModelNotFoundError:
    repo = f", Hub repo {spec.repo}" if spec.repo else ""
    lines = [f"cannot find model {spec.name!r} ({spec.kind}{repo}). Looked in:"]
    lines += [f"  - {t}" for t in tried]
    lines.append("To fix, do one of:")
    lines += [f"  - {f}" for f in fixes]
    return ModelNotFoundError("\n".join(lines), model=spec.name)


def resolve(
    name: str | None = None,
    *,
    kind: str = "embedder",
    path: str | os.PathLike[str] | None = None,
    spec: ModelSpec | None = None,
    download: bool = True,
    int8: bool | None = None,
    timeout: float | None = None,
    attempts: int | None = None,
    progress: ProgressCallback | None = None,
) -> ModelFiles:
    """Find the files of a model (see the module docstring for the order of places).

    ``name``: a registered name (default: ``DEFAULT_EMBEDDER`` / ``DEFAULT_RERANKER`` for
    ``kind``), or the name of a folder in ``$LOCALMEM_MODELS_DIR``. ``path``: a folder or
    .onnx file to use instead of looking anywhere else; without ``name`` it is named after
    its folder. ``spec``: use this spec instead of looking ``name`` up. ``download``: allow
    step 5. ``int8``: return the int8 copy (None: ``spec.prefer_int8``); ``ModelError``
    if that copy has not been made with ``localmem models quantize NAME``. ``timeout``
    (seconds without data) and ``attempts`` bound a download; None: the environment's
    ``LOCALMEM_DOWNLOAD_TIMEOUT`` / ``LOCALMEM_DOWNLOAD_ATTEMPTS``, else 15 s and 3.
    ``progress``: a callback that gets a download's bytes as they come (``Progress``,
    task "download", each file a stage).

    Checks that the files exist and are not empty; ``check_onnx()`` loads the model.
    """
    if kind not in KINDS:
        raise ModelError(f"kind must be one of {', '.join(KINDS)}; got {kind!r}")
    if spec is not None and not isinstance(spec, ModelSpec):
        raise ModelError(f"spec must be a ModelSpec; got {type(spec).__name__}")
    if name is not None and not isinstance(name, str):
        raise ModelError(f"model name must be a str or None; got {type(name).__name__}")
    registered = REGISTRY.get(name) if spec is None and name is not None else None
    if registered is not None and registered.kind != kind:
        raise ModelError(f"{name} is a {registered.kind}, not a{'n' if kind == 'embedder' else ''} {kind}")
    if path is not None:
        files = _from_path(path, name, kind, spec)
    else:
        files = _search(name, kind, spec, download, timeout, attempts, progress)
    use_int8 = files.spec.prefer_int8 if int8 is None else bool(int8)
    return _choose_int8(files) if use_int8 else files


def _own_folder_hint(kind: str) -> str:
    """How to use a folder of your own, in the API that exists for it."""
    loader, arg = ("load_embedder", "embedder") if kind == "embedder" else ("load_reranker", "reranker")
    return (f'in Python, load it from a folder of your own: Memory(..., {arg}=localmem.{loader}('
            f'path="FOLDER")), FOLDER holding {FLAT_ONNX} (or onnx/model.onnx) and tokenizer.json')


def _downloads_root() -> Path:
    return _cache_root() / "models"


def _search(name: str | None, kind: str, spec: ModelSpec | None, download: bool,
            timeout: float | None, attempts: int | None, progress: ProgressCallback | None = None) -> ModelFiles:
    """Steps 2-5 for a registered (or given) spec; step 2 only for an unregistered name."""
    if spec is None:
        name = name or (DEFAULT_EMBEDDER if kind == "embedder" else DEFAULT_RERANKER)
        spec = REGISTRY.get(name)
    models_dir = os.environ.get(MODELS_DIR_ENV) or None
    if spec is None:
        # Not registered: a folder of that name in LOCALMEM_MODELS_DIR is the only place.
        assert name is not None
        if models_dir is not None:
            folder = Path(models_dir).expanduser() / name
            if (folder / FLAT_ONNX).is_file() or (folder / "onnx" / "model.onnx").is_file():
                return _files(folder_spec(folder, kind=kind), folder, "models_dir")
            where = f"and there is no model.onnx in {folder}"
        else:
            where = f"and {MODELS_DIR_ENV} is not set"
        raise ModelError(
            f"unknown model {name!r} {where}. Known models: {_known_names()}. For a model of "
            f"your own, put it in $LOCALMEM_MODELS_DIR/{name}/ or, {_own_folder_hint(kind)}"
        )

    tried = ["path=: not given"]
    fixes: list[str] = []

    # 2. $LOCALMEM_MODELS_DIR/<name>/
    if models_dir is not None:
        folder = Path(models_dir).expanduser() / spec.name
        try:
            return _files(spec, folder, "models_dir")
        except ModelError as exc:
            tried.append(f"{MODELS_DIR_ENV}={models_dir}: {exc}")
            fixes.append(f"put {FLAT_ONNX}, {spec.tokenizer_file} and the config files in {folder}/")
    else:
        tried.append(f"{MODELS_DIR_ENV}: not set")
        fixes.append(f"set {MODELS_DIR_ENV}=DIR and put the model's files in DIR/{spec.name}/ "
                     "(the command line and Python both look there)")
    fixes.append(_own_folder_hint(spec.kind))

    # 3. the Hugging Face cache: the default one, then the one older localmem versions
    # downloaded into.
    if spec.repo is None:
        tried.append(f"Hugging Face cache: not looked at ({spec.name} has no Hub repo)")
    else:
        from huggingface_hub import snapshot_download

        hub_caches = dict.fromkeys((os.path.abspath(_hf_cache()), str(_cache_root() / "hub")))
        for label, hub in zip(("Hugging Face cache", "localmem hub cache"), hub_caches):
            if not Path(hub).is_dir():
                tried.append(f"{label} {hub}: does not exist")
                continue
            try:
                snapshot = snapshot_download(
                    spec.repo, allow_patterns=_allow_patterns(spec), cache_dir=hub,
                    local_files_only=True,
                )
            except Exception as exc:  # noqa: BLE001 - LocalEntryNotFoundError, IncompleteSnapshotError...
                reason = (f"no snapshot of {spec.repo}" if type(exc).__name__ == "LocalEntryNotFoundError"
                          else _first_line(exc))
                tried.append(f"{label} {hub}: {reason}")
                continue
            try:
                return _files(spec, Path(snapshot), "hf_cache")
            except ModelError as exc:
                tried.append(f"{label} {hub}: {exc}")

    # 4. an earlier download (complete: download.py writes its manifest last).
    from . import download as downloads

    target = _downloads_root() / spec.name
    if downloads.downloaded(target):
        try:
            return _files(spec, target, "localmem_cache")
        except ModelError as exc:
            tried.append(f"localmem downloads {target}: {exc}")
            fixes.append(f"delete {target} so that it is downloaded again")
    else:
        tried.append(f"localmem downloads {target}: {'incomplete' if target.exists() else 'not there'}")

    # 5. download into localmem's cache.
    if spec.repo is None:
        tried.append("download: impossible, no Hub repo")
    elif not download:
        tried.append("download: not tried (download=False)")
        fixes.append(f"{_download_hint(spec)} (or allow downloading: download=True)")
    elif _hub_offline():
        tried.append("download: not tried, HF_HUB_OFFLINE is set")
        fixes.append(f"{_download_hint(spec)}, then copy the folder it prints to DIR/{spec.name}/ "
                     f"here and set {MODELS_DIR_ENV}=DIR")
        fixes.append(f"unset HF_HUB_OFFLINE so localmem can download it into {target}")
    else:
        config = downloads.settings(timeout, attempts)
        try:
            folder = downloads.fetch(spec, target, config=config, progress=progress)
        except ModelError as exc:
            tried.append(f"download of {spec.repo} into {target}: failed, {exc}")
            fixes.append(f"check the network (or the proxy, or HF_ENDPOINT) and try again; a slow "
                         f"link may need a longer {downloads.TIMEOUT_ENV} (seconds without data, "
                         f"now {config.timeout:g}) or more {downloads.ATTEMPTS_ENV} (now "
                         f"{config.attempts})")
            fixes.append(f"{_download_hint(spec)}, then copy the folder it prints to DIR/{spec.name}/ "
                         f"here and set {MODELS_DIR_ENV}=DIR")
        else:
            try:
                return _files(spec, folder, "download")
            except ModelError as exc:
                tried.append(f"download of {spec.repo}: {exc} (the repo may not publish it)")
    raise _not_found(spec, tried, fixes)


# -- int8 copies ----------------------------------------------------------------------------


def _in_hf_cache(folder: Path) -> bool:
    return "snapshots" in folder.parts and any(p.startswith("models--") for p in folder.parts)


def _int8_fallback(onnx_path: Path) -> Path:
    folder = Path(os.path.abspath(onnx_path.parent))
    label = next((p[len("models--"):] for p in folder.parts if p.startswith("models--")), None)
    if label is None:
        label = folder.parent.name if folder.name == "onnx" else folder.name
    digest = hashlib.sha256(str(folder).encode("utf-8", "surrogatepass")).hexdigest()[:12]
    stem = onnx_path.name.removesuffix(".onnx")
    return _cache_root() / "int8" / f"{label or 'model'}-{digest}" / (stem + INT8_SUFFIX)


def int8_path(onnx_path: str | os.PathLike[str]) -> Path:
    """Where the int8 copy of ``onnx_path`` lives (whether or not it exists yet).

    The rule: ``<folder>/<stem>.int8.onnx`` beside the fp32 file (``model.onnx`` ->
    ``model.int8.onnx``), unless that folder is read-only (a shared models dir) or inside a
    Hugging Face cache snapshot (that folder belongs to huggingface_hub); then
    ``cache_dir()/int8/<name>-<hash of the folder's path>/<stem>.int8.onnx``, where <name>
    is the model folder's name (the repo for a Hub cache) and the hash keeps two folders of
    the same name apart. A copy that already exists in either place wins.
    """
    onnx_path = Path(onnx_path)
    if onnx_path.name.endswith(INT8_SUFFIX):
        return onnx_path
    stem = onnx_path.name.removesuffix(".onnx")
    beside = onnx_path.with_name(stem + INT8_SUFFIX)
    fallback = _int8_fallback(onnx_path)
    for candidate in (beside, fallback):
        if candidate.is_file():
            return candidate
    folder = onnx_path.parent
    if _writable(folder) and not _in_hf_cache(Path(os.path.abspath(folder))):
        return beside
    return fallback


def _writable(folder: Path) -> bool:
    """Writable by us and meant to be: root may write anywhere, but a folder with no write
    bit (like a shared, read-only models dir) is treated as read-only all the same."""
    try:
        mode = folder.stat().st_mode
    except OSError:
        return False
    return bool(mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)) and os.access(folder, os.W_OK)


def _fp32_path(files: ModelFiles) -> Path:
    if not files.onnx_path.name.endswith(INT8_SUFFIX):
        return files.onnx_path
    return _find_in_folder(files.directory, files.spec)[0]


def _choose_int8(files: ModelFiles) -> ModelFiles:
    copy = int8_path(files.onnx_path)
    if not copy.is_file() or copy.stat().st_size == 0:
        how = f"localmem models quantize {files.spec.name}"
        if files.source == "path" or files.spec.repo is None:
            how += f" --path {files.directory}"
        raise ModelError(
            f"no int8 copy of {files.spec.name} at {copy}; make it once with `{how}` "
            "(or pass int8=False for the fp32 model)"
        )
    return dataclasses.replace(files, onnx_path=copy)


def quantize(name_or_files: str | os.PathLike[str] | ModelFiles, *, force: bool = False) -> Path:
    """Write the int8 copy of a model (dynamic quantization, QInt8 weights, per channel)
    at ``int8_path()`` and return its path; an existing copy is kept unless ``force``.

    ``name_or_files``: a registered name (resolved without downloading), a folder / .onnx
    path (a ``Path``), or ``ModelFiles``. Needs the ``onnx`` package: ``ModelError`` with
    the install command if it is missing.

    Per-channel QInt8 over all default op types was measured best on all-MiniLM-L6-v2:
    90 MB -> 23 MB, about 2x faster on CPU, mean cosine to the fp32 vectors 0.992 (per
    tensor: 0.954; MatMul only: 0.993 but 59 MB).
    """
    if isinstance(name_or_files, ModelFiles):
        files = name_or_files
    elif isinstance(name_or_files, str):
        registered = REGISTRY.get(name_or_files)
        kind = registered.kind if registered is not None else "embedder"
        files = resolve(name_or_files, kind=kind, download=False, int8=False)
    elif isinstance(name_or_files, os.PathLike):
        files = resolve(path=name_or_files, int8=False)
    else:
        raise ModelError(
            f"quantize takes a model name, a path or ModelFiles; got {type(name_or_files).__name__}"
        )
    source = _fp32_path(files)
    out = int8_path(source)
    if out.is_file() and out.stat().st_size > 0 and not force:
        return out
    try:
        from onnxruntime.quantization import QuantType, quantize_dynamic
    except ImportError as exc:
        raise ModelError(
            f"quantizing needs the onnx package ({exc}); install it with: {QUANTIZE_HINT}"
        ) from exc
    # A temporary name ending in .onnx (onnx picks the format from the suffix), then an
    # atomic rename: a crash never leaves a half-written copy where resolve() looks.
    tmp = out.with_name(f".{out.name[: -len('.onnx')]}.{os.getpid()}.tmp.onnx")
    try:
        if _cache_root() in out.parents:
            cache_dir()  # every level created with mode 0o700, like the root
            for level in reversed(out.relative_to(_cache_root()).parents[:-1]):
                (_cache_root() / level).mkdir(mode=0o700, exist_ok=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        with _quiet_preprocess_hint():
            quantize_dynamic(os.fspath(source), os.fspath(tmp), weight_type=QuantType.QInt8,
                             per_channel=True)
        os.replace(tmp, out)
    except Exception as exc:
        raise ModelError(f"cannot quantize {source} to {out}: {type(exc).__name__}: {exc}") from exc
    finally:
        try:
            tmp.unlink()
        except OSError:
            pass
    return out


class _quiet_preprocess_hint(logging.Filter):
    """Drops onnxruntime's "consider pre-processing" warning (measured: no gain here)."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "pre-processing before quantization" not in record.getMessage()

    def __enter__(self) -> None:
        logging.getLogger().addFilter(self)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger().removeFilter(self)


# -- loading and identity ------------------------------------------------------------------


def check_onnx(path: str | os.PathLike[str], *, sess_options: Any = None) -> Any:
    """Open ``path`` with onnxruntime on CPU and return the ``InferenceSession``.

    A missing, empty or damaged file raises ``ModelError`` naming it (never a raw
    onnxruntime error such as ``InvalidProtobuf``).
    """
    p = Path(path)
    fix = ("delete it and download the model again (`localmem models download NAME`), "
           "or pass path= to a good copy")
    if not p.is_file():
        raise ModelError(f"ONNX model {p} does not exist")
    if p.stat().st_size == 0:
        raise ModelError(f"ONNX model {p} is empty (0 bytes): {fix}")
    import onnxruntime

    try:
        return onnxruntime.InferenceSession(os.fspath(p), sess_options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime_pybind11_state.InvalidProtobuf, InvalidGraph, Fail, ...
        raise ModelError(
            f"cannot load ONNX model {p} ({type(exc).__name__}: {exc}); the file is damaged or "
            f"not an ONNX model: {fix}"
        ) from exc


_hash_lock = threading.Lock()
_hash_cache: dict[tuple[str, int, int, int], str] = {}


def file_sha256(path: str | os.PathLike[str]) -> str:
    """The hex sha256 of a file, read in 1 MiB chunks; remembered in-process per
    (real path, size, mtime, inode), so a 90 MB model is hashed once."""
    real = os.path.realpath(path)
    try:
        st = os.stat(real)
        key = (real, st.st_size, st.st_mtime_ns, st.st_ino)
        with _hash_lock:
            cached = _hash_cache.get(key)
        if cached is not None:
            return cached
        digest = hashlib.sha256()
        with open(real, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    except OSError as exc:
        raise ModelError(f"cannot read {path}: {exc}") from exc
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def model_identity(files: ModelFiles) -> dict[str, Any]:
    """What a database records about its model: ``{"name", "dim", "sha256"}``, the hash
    being that of the ONNX file in use (the int8 copy when chosen: its vectors differ)."""
    return {"name": files.spec.name, "dim": files.spec.dim, "sha256": file_sha256(files.onnx_path)}
