"""The embedder as a ``Memory`` uses it: which model, its identity, and its vectors.

``Embeddings`` resolves the model lazily (a registry name, a folder of the caller's via
``load_embedder(path=...)``, or any object with ``embed()``; unset, the model recorded in
the file, else the registry default), knows the identity the file records for it (name,
dimension, the ONNX file's sha256), and embeds through the embedding cache, so that a text
is embedded at most once while the cache holds it. Opening a ``Memory`` loads nothing: the
first vector asked for does.

Nothing here imports numpy or onnxruntime at import time.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import driver
from .backend import describe_model, model_mismatch, same_model
from .cache import EmbeddingCache
from .errors import InvalidInputError, ModelError, call_model
from .indexer import check_vectors

log = logging.getLogger(__name__)

if TYPE_CHECKING:
    import numpy as np

__all__ = ["Embeddings", "load_model", "model_arg", "model_name"]


def model_arg(value: Any, what: str, method: str) -> Any:
    """None, a registry name, or an object with the model's ``method``; else
    ``InvalidInputError``."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and not value.strip():
            raise InvalidInputError(f"{what} name must not be blank")
        return value
    if not callable(getattr(value, method, None)):
        raise InvalidInputError(
            f"{what} must be a model name or an object with a {method}() method; "
            f"got {type(value).__name__}"
        )
    return value


def model_name(value: Any) -> str | None:
    """The name a model argument goes by: the name given, or the object's ``name``."""
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "name", None)


def load_model(arg: Any, kind: str) -> Any:
    """``arg`` loaded: a name (None: the registry default) by localmem's loader for
    ``kind`` ("embedder" or "reranker"), an object of the caller's as it is.

    A reranker by name uses its int8 copy when ``localmem models quantize`` has made one
    (about 2x faster on CPU; its scores shift a little with the other candidates of a
    call, see rerank.py), else the fp32 model. An embedder never switches on its own:
    its vectors must match the ones already in the file."""
    if arg is not None and not isinstance(arg, str):
        return arg
    if kind == "embedder":
        from . import embed

        return embed.load_embedder(arg)
    from . import rerank
    from .models import int8_path, resolve

    files = resolve(arg, kind="reranker", int8=False)
    return rerank.CrossEncoder(files if not int8_path(files.onnx_path).is_file()
                               else resolve(arg, kind="reranker", int8=True))


def run_embedder(method: Callable[[Sequence[str]], Any], texts: Sequence[str], name: str) -> Any:
    """``method(texts)``; an exception of the embedder's own is a ModelError naming it."""
    return call_model(f"the embedder {name!r}", method, texts)


class Embeddings:
    """One ``Memory``'s embedder and embedding cache. Thread-safe.

    ``recorded()`` gives the identity the file records (None before its first vector);
    ``path`` names the file in errors. The cache lives in ``cache_dir/embeddings`` (None:
    a throwaway folder), per model identity; ``disk_cache=False``: in this process only.
    """

    def __init__(
        self,
        arg: Any,
        *,
        path: str,
        recorded: Callable[[], dict[str, Any] | None],
        cache_dir: Path | None,
        ttl: float,
        timeout: float,
        disk_cache: bool = True,
    ):
        self.arg = model_arg(arg, "embedder", "embed")
        self._path = path
        # Told of each embed: (cache hits, cache misses, None), then (0, 0, model seconds)
        # when the model ran; Memory's metrics listen here when they are on.
        self.observe: Callable[[int, int, float | None], None] | None = None
        self._recorded = recorded
        self._cache_dir = cache_dir
        self._ttl = ttl
        self._timeout = timeout
        self._disk_cache = disk_cache
        self._model: Any = None
        self._identity: dict[str, Any] | None = None
        self._cache: EmbeddingCache | None = None
        self._lock = threading.Lock()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.Lock()

    @property
    def name(self) -> str | None:
        """The model asked for (None: unset)."""
        return model_name(self.arg)

    def model(self) -> Any:
        """The embedder object, resolved on first use."""
        with self._lock:
            if self._model is None:
                arg = self.arg
                if arg is None:
                    recorded = self._recorded()
                    arg = recorded["name"] if recorded else None
                self._model = load_model(arg, "embedder")
            return self._model

    def identity(self) -> dict[str, Any]:
        """What the file records about this embedder: name, dim, and the ONNX file's
        sha256 for localmem's own models (an object of the caller's gives ``name`` and
        ``dim`` attributes, else its class name and the width of one probe vector)."""
        if self._identity is None:
            model = self.model()
            files = getattr(model, "files", None)
            if files is not None and hasattr(files, "spec"):
                from .models import model_identity

                identity = model_identity(files)
            else:
                name = getattr(model, "name", None) or type(model).__qualname__
                dim = getattr(model, "dim", None)
                if type(dim) is not int:
                    probe = run_embedder(model.embed, ["dimension probe"], name)
                    dim = check_vectors(probe, 1, None, name).shape[1]
                identity = {"name": str(name), "dim": dim, "sha256": None}
            self._identity = identity
        return self._identity

    def calibrated_floor(self) -> float | None:
        """The relevance floor measured for this embedder (``min_relevance="auto"``): its
        own ``min_relevance`` attribute, else its registry spec's; None if not measured."""
        model = self.model()
        value = getattr(model, "min_relevance", None)
        if value is None:
            value = getattr(getattr(model, "spec", None), "min_relevance", None)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not -1 <= value <= 1:
            raise ModelError(f"the embedder's min_relevance must be a cosine from -1 to 1; got {value!r}")
        return float(value)

    def prove(self) -> None:
        """Resolve and load the embedder and have it produce one good vector, or raise:
        re-embedding drops every vector, so a model that cannot load (a typo in its name,
        no copy offline, a damaged file) must fail before that, with nothing dropped."""
        identity = self.identity()
        vector = run_embedder(self.model().embed, ["re-embedding probe"], identity["name"])
        check_vectors(vector, 1, identity["dim"], identity["name"])

    def cache(self) -> EmbeddingCache:
        """The embedding cache of this model (opened on first use)."""
        identity = self.identity()
        with self._lock:
            if self._cache is None:
                self._cache = EmbeddingCache(
                    self._cache_dir, model_key=json.dumps(identity, sort_keys=True), dim=identity["dim"],
                    ttl=self._ttl, timeout=self._timeout, on_disk=self._disk_cache,
                )
            return self._cache

    def embed(self, texts: Sequence[str], kind: str) -> np.ndarray:
        """Vectors for ``texts`` (``kind`` "document" or "query"), each embedded at most
        once while it stays in the embedding cache."""
        import numpy as np

        identity = self.identity()
        cache = self.cache()
        found = cache.get_many(texts, kind=kind)
        missing = [i for i, v in enumerate(found) if v is None]
        out = np.empty((len(texts), identity["dim"]), dtype="<f4")
        observe = self.observe
        if observe is not None:
            observe(len(texts) - len(missing), len(missing), None)
        if missing:
            model = self.model()
            todo = list(dict.fromkeys(texts[i] for i in missing))
            method = getattr(model, "embed_query", None) if kind == "query" else None
            started = time.perf_counter()
            raw = run_embedder(method or model.embed, todo, identity["name"])
            if observe is not None:
                observe(0, 0, time.perf_counter() - started)
            fresh = check_vectors(raw, len(todo), identity["dim"], identity["name"])
            cache.put_many(todo, fresh, kind=kind)
            by_text = dict(zip(todo, fresh, strict=True))
            for i in missing:
                out[i] = by_text[texts[i]]
        for i, vector in enumerate(found):
            if vector is not None:
                out[i] = vector
        return out

    def documents(self, texts: Sequence[str]) -> np.ndarray:
        return self.embed(texts, "document")

    def query_vector(self, query: str) -> bytes:
        """The query's vector (float32 bytes), after checking that the file's vectors come
        from this model."""
        identity = self.identity()
        recorded = self._recorded()
        if recorded is not None and not same_model(recorded, identity):
            raise model_mismatch(self._path, recorded, describe_model(identity))
        return self.embed([query], "query")[0].tobytes()

    def forget(self, text: str) -> None:
        """Drop the cached vector of ``text`` (see ``erase``); trouble is logged."""
        problem = self.erase([text])
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase(self, texts: Sequence[str]) -> str | None:
        """Drop the cached vectors of ``texts`` for good, also when this Memory has not
        opened the embedding cache (another process may have filled it): then through a
        cache opened for the model recorded in the file, just for this. None when done,
        else what was left undone (see ``EmbeddingCache.erase``)."""
        if self._cache is not None:
            return self._cache.erase_texts(texts)
        recorded = self._recorded()
        if recorded is None or type(recorded.get("dim")) is not int:
            return None
        if self._cache_dir is None or not (self._cache_dir / "embeddings").is_dir():
            return None  # no embedding cache on disk to hold it
        cache = EmbeddingCache(
            self._cache_dir, model_key=json.dumps(recorded, sort_keys=True), dim=recorded["dim"],
            memory_items=0, timeout=self._timeout,
        )
        try:
            return cache.erase_texts(texts)
        finally:
            cache.close()

    def release_thread(self) -> None:
        """Close what the calling thread opened in the cache (the worker, as it ends)."""
        if self._cache is not None:
            self._cache.release_thread()

    def close(self) -> None:
        if self._cache is not None:
            self._cache.close()
