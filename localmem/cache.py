"""The diskcache tiers: the hot window, the embedding cache and the query-result cache.

Each tier is an accelerator, never a source of truth:

* The hot window (the Redis list of the original design) holds the last N messages of each
  conversation. An entry remembers the conversation ``version`` (see ``store.py``) it was
  built from, and is served only while the database still reports that version. A message
  committed by any process bumps the version in the same transaction, so a stale window is
  never served.
* The embedding cache (the original design's ``embedding_cache`` table plus a local LRU)
  maps (model, kind, text) to a vector: an in-process LRU in front of a diskcache tier that
  every process sharing the cache directory reads.
* The query cache keeps strategy answers for a short while, each stored with a scope token
  (a conversation version, say) and served only for that exact token.
* Entries are rebuilt on a miss; deleting the cache directory loses nothing.
* Values are raw bytes (JSON, or float32 vectors) in a ``Disk`` that stores and returns raw
  bytes only: nothing is ever pickled or unpickled, even if someone plants a pickled row in a
  cache file.
* Directories are created with mode 0o700: cached messages are as private as the database.
* Cache trouble (a damaged or vanished cache file, a lock timeout) is logged and treated as a
  miss; the answer then comes from SQLite or the model, which are always correct.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import diskcache

from . import driver
from .errors import InvalidInputError
from .store import ConversationState

if TYPE_CHECKING:  # numpy is imported on first use: ``import localmem`` stays light
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_HOT_WINDOW = 10
DEFAULT_HOT_TTL = 3600.0
DEFAULT_EMBEDDING_TTL = 90 * 86400.0
DEFAULT_QUERY_TTL = 300.0
EMBEDDING_KINDS = ("document", "query")
_CACHE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout, ValueError, TypeError)
_COUNTERS = ("memory_hits", "disk_hits", "misses")


class RawBytesDisk(diskcache.Disk):
    """A diskcache ``Disk`` for str keys and bytes values that refuses to pickle."""

    def put(self, key: Any) -> tuple[Any, bool]:
        if type(key) is not str:
            raise TypeError("localmem cache keys are str")
        return super().put(key)

    def get(self, key: Any, raw: bool) -> Any:
        if not raw:
            raise ValueError("refusing a pickled cache key")
        return key

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or type(value) is not bytes:
            raise TypeError("localmem cache values are bytes")
        return super().store(value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode not in (diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY):
            raise ValueError(f"refusing a cache value stored in mode {mode} (only raw bytes)")
        return super().fetch(mode, filename, value, read)


class _CounterDisk(RawBytesDisk):
    """Str keys and int values (SQLite integers, as ``Cache.incr`` writes them); no pickle."""

    def store(self, value: Any, read: bool, key: Any = diskcache.core.UNKNOWN) -> Any:
        if read or type(value) is not int:
            raise TypeError("localmem counters are ints")
        return diskcache.Disk.store(self, value, read, key=key)

    def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
        if mode != diskcache.core.MODE_RAW or type(value) is not int:
            raise ValueError(f"refusing a counter stored in mode {mode} (only raw ints)")
        return value


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0o700 whatever the umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


def _json(value: Any, *, canonical: bool = True) -> str:
    """Compact JSON, with sorted keys when ``canonical`` (for comparing keys and scopes);
    raises TypeError/ValueError for what JSON cannot hold."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=canonical)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate in user text is stored, not an error
    return text.encode("utf-8", "surrogatepass")


class _DiskTier:
    """One ``diskcache.Cache`` in a private directory: the plumbing every tier shares.

    ``directory`` None means a throwaway temp directory, removed on ``close()`` by the
    process that made it. ``subdir`` gives the tier its own folder below ``directory``, so
    that several tiers share one cache directory. After ``fork()`` the child never uses the
    parent's SQLite connection: its first use abandons it (``driver.abandon``) and opens one
    of its own; a lock the parent held at the fork is replaced in the child.
    """

    _label = "cache"  # names the tier in log lines

    def __init__(
        self,
        directory: Path | None,
        subdir: str | None = None,
        *,
        disk: type[diskcache.Disk] = RawBytesDisk,
        **settings: Any,
    ) -> None:
        self._owned_tmp: Path | None = None
        if directory is None:  # an in-memory database gets a throwaway cache
            directory = self._owned_tmp = Path(tempfile.mkdtemp(prefix="localmem-cache-"))
        root = private_dir(Path(directory))
        self.directory = private_dir(root / subdir) if subdir else root
        self._disk = disk
        self._settings = settings
        self._pid = self._creator_pid = os.getpid()
        self._lock = threading.Lock()
        try:
            self._cache = self._open()
        except BaseException:
            self._remove_owned_tmp()
            raise
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(str(self.directory), disk=self._disk, **self._settings)

    def _current(self) -> diskcache.Cache:
        """This process's cache object (reopened on first use after a fork)."""
        if self._pid != os.getpid():  # never reuse the parent's SQLite connection
            with self._lock:
                if self._pid != os.getpid():
                    driver.abandon(self._cache)
                    self._cache = self._open()
                    self._pid = os.getpid()
        return self._cache

    def _get_json(self, key: str, fallback: str) -> Any:
        """The JSON value stored under ``key``, or None when absent or unreadable (logged,
        saying what happens instead: ``fallback``)."""
        try:
            raw = self._current().get(key)
            return None if raw is None else json.loads(raw)
        except _CACHE_ERRORS as exc:
            log.warning("localmem %s unreadable, %s: %s", self._label, fallback, exc)
            return None

    def _remove_owned_tmp(self) -> None:
        # Only the creator removes it: a forked child closing its copy must not pull the
        # directory from under the parent.
        if self._owned_tmp is not None and os.getpid() == self._creator_pid:
            shutil.rmtree(self._owned_tmp, ignore_errors=True)

    def close(self) -> None:
        """Close this process's connection (idempotent) and remove a throwaway directory."""
        if self._pid != os.getpid():
            driver.abandon(self._cache)  # the parent's connection: never closed here
        else:
            self._cache.close()
        self._remove_owned_tmp()


class HotWindow(_DiskTier):
    """Last ``size`` messages per conversation, as rows in the store's column order."""

    _label = "hot window"

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        size: int = DEFAULT_HOT_WINDOW,
        ttl: float = DEFAULT_HOT_TTL,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._namespace = namespace
        super().__init__(directory)

    def _key(self, owner_id: str, conversation_id: str) -> str:
        return json.dumps([self._namespace, owner_id, conversation_id], ensure_ascii=False)

    def get(
        self, owner_id: str, conversation_id: str, state: ConversationState
    ) -> list[list[Any]] | None:
        """The cached window if it was built from ``state``'s version, else None."""
        entry = self._get_json(self._key(owner_id, conversation_id), "using the database")
        if type(entry) is not dict or entry.get("v") != state.version:
            return None
        rows = entry.get("rows")
        return rows if type(rows) is list else None

    def put(
        self,
        owner_id: str,
        conversation_id: str,
        state: ConversationState,
        rows: Sequence[Sequence[Any]],
    ) -> None:
        """Remember the newest rows (oldest first) of a conversation at ``state``."""
        value = json.dumps(
            {"v": state.version, "rows": list(rows[-self.size :])},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8")
        try:
            self._current().set(self._key(owner_id, conversation_id), value, expire=self.ttl)
        except _CACHE_ERRORS as exc:
            log.warning("localmem hot window not updated: %s", exc)


class EmbeddingCache(_DiskTier):
    """Vectors by (model, kind, text): an in-process LRU in front of a diskcache tier.

    ``model_key`` names the vector space (the embedder's identity); ``kind`` is
    ``"document"`` or ``"query"`` (e5-style models embed them differently). The key of an
    entry is the sha256 of the JSON list ``[model_key, kind, text]``, so models and kinds
    never share entries, and texts of any length make short keys.

    * Tier 1, ``memory_items`` read-only float32 vectors in this process (0: none). It has
      no TTL: it is bounded by count and lives as long as the object.
    * Tier 2, ``<directory>/embeddings``: raw little-endian float32 bytes, shared by every
      process using the directory. An entry lives ``ttl`` seconds after it was written or
      last read (each disk hit renews it, as the original design's ``last_hit_at``); ``ttl``
      0 keeps vectors in memory only. A value that is not exactly ``dim`` float32s is a miss
      and is deleted. Its size is diskcache's default limit (1 GiB, least recently stored
      evicted first).

    Hit and miss counters persist in ``<directory>/embedding-stats``, a second small
    diskcache whose values are SQLite integers bumped with ``Cache.incr``: each call of
    ``get_many`` adds its counts in one transaction, so counts from every process sharing
    the directory add up and survive restarts. (diskcache's own ``stats(enable=True)``
    would count every internal read, never see memory hits, and count a rejected entry as a
    hit.) They are counts for the whole directory, all models together; ``clear()`` resets
    them.
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        model_key: str,
        dim: int,
        memory_items: int = 4096,
        ttl: float = DEFAULT_EMBEDDING_TTL,
    ) -> None:
        if type(model_key) is not str:
            raise InvalidInputError(f"model_key must be a str; got {model_key!r}")
        if type(dim) is not int or dim < 1:
            raise InvalidInputError(f"dim must be a positive int; got {dim!r}")
        if type(memory_items) is not int or memory_items < 0:
            raise InvalidInputError(f"memory_items must be an int >= 0; got {memory_items!r}")
        if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl >= 0:
            raise InvalidInputError(f"ttl must be seconds >= 0; got {ttl!r}")
        self.model_key = model_key
        self.dim = dim
        self.memory_items = memory_items
        self.ttl = float(ttl)
        self._lru: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lru_lock = threading.Lock()
        super().__init__(directory, "embeddings")
        try:
            self._counters = _DiskTier(self.directory.parent / "embedding-stats", disk=_CounterDisk)
        except BaseException:
            super().close()
            raise

    def reset_locks_after_fork(self) -> None:
        super().reset_locks_after_fork()
        self._lru_lock = threading.Lock()

    def _keys(self, texts: Sequence[str], kind: str) -> list[str]:
        if kind not in EMBEDDING_KINDS:
            raise InvalidInputError(f"kind must be one of {EMBEDDING_KINDS}; got {kind!r}")
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a sequence of str, not one str")
        keys = []
        for text in texts:
            if type(text) is not str:
                raise InvalidInputError(f"texts must be str; got {type(text).__name__}")
            blob = json.dumps([self.model_key, kind, text], separators=(",", ":"))  # ASCII
            keys.append(hashlib.sha256(blob.encode("ascii")).hexdigest())
        return keys

    def _remember(self, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Put vectors in the LRU as most recent, evicting the least recent beyond the limit."""
        if not self.memory_items:
            return
        with self._lru_lock:
            for key, vector in items:
                self._lru[key] = vector
                self._lru.move_to_end(key)
            while len(self._lru) > self.memory_items:
                self._lru.popitem(last=False)

    def _read_disk(self, keys: Iterable[str]) -> dict[str, np.ndarray]:
        """Read-only vectors of the keys found on disk, their TTL renewed.

        The reads take no write lock; one short transaction then renews the hits and
        deletes malformed entries (a wrong length, or a row RawBytesDisk refuses to load,
        such as a planted pickle).
        """
        import numpy as np

        found: dict[str, np.ndarray] = {}
        bad: list[str] = []
        try:
            cache = self._current()
            for key in dict.fromkeys(keys):
                try:
                    raw = cache.get(key)
                except (ValueError, TypeError):
                    raw = b""
                if raw is None:
                    continue
                if type(raw) is not bytes or len(raw) != self.dim * 4:
                    bad.append(key)
                    continue
                vector = np.frombuffer(raw, dtype="<f4").astype(np.float32)
                vector.flags.writeable = False
                found[key] = vector
            if bad:
                log.warning("localmem embedding cache: dropping %d malformed entries", len(bad))
            if bad or (found and self.ttl):
                with cache.transact():
                    for key in bad:
                        cache.delete(key)
                    if self.ttl:
                        for key in found:
                            cache.touch(key, expire=self.ttl)
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache unreadable, embedding again: %s", exc)
        return found

    def _count(self, **deltas: int) -> None:
        """Add to the persistent counters (one transaction)."""
        if not any(deltas.values()):
            return
        try:
            counters = self._counters._current()
            with counters.transact():
                for name, delta in deltas.items():
                    if delta:
                        counters.incr(name, delta)
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache counters not updated: %s", exc)

    def get_many(
        self, texts: Sequence[str], *, kind: str = "document"
    ) -> list[np.ndarray | None]:
        """The cached vector of each text (read-only float32), or None where it is not cached."""
        keys = self._keys(texts, kind)
        found: list[np.ndarray | None] = [None] * len(keys)
        with self._lru_lock:
            for i, key in enumerate(keys):
                vector = self._lru.get(key)
                if vector is not None:
                    self._lru.move_to_end(key)
                    found[i] = vector
        memory_hits = sum(vector is not None for vector in found)
        todo = [i for i, vector in enumerate(found) if vector is None]
        disk_hits = 0
        if todo:
            from_disk = self._read_disk(keys[i] for i in todo)
            for i in todo:
                found[i] = from_disk.get(keys[i])
                disk_hits += found[i] is not None
            self._remember(from_disk.items())
        self._count(
            memory_hits=memory_hits,
            disk_hits=disk_hits,
            misses=len(keys) - memory_hits - disk_hits,
        )
        return found

    def put_many(
        self, texts: Sequence[str], vectors: np.ndarray, *, kind: str = "document"
    ) -> None:
        """Cache ``vectors[i]`` as the vector of ``texts[i]`` (copied; the caller keeps theirs)."""
        import numpy as np

        keys = self._keys(texts, kind)
        try:
            rows = np.asarray(vectors, dtype="<f4")
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"vectors must be numbers: {exc}") from exc
        if rows.shape != (len(keys), self.dim):
            raise InvalidInputError(
                f"vectors must have shape ({len(keys)}, {self.dim}); got {rows.shape}"
            )
        frozen = []
        for row in rows:
            vector = row.astype(np.float32)  # a copy
            vector.flags.writeable = False
            frozen.append(vector)
        self._remember(zip(keys, frozen))
        if not self.ttl:
            return
        try:
            cache = self._current()
            with cache.transact():
                for key, row in zip(keys, rows):
                    cache.set(key, row.tobytes(), expire=self.ttl)
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache not updated: %s", exc)

    def stats(self) -> dict[str, Any]:
        """Entries (disk: all models, expired ones not yet removed included; memory) and the
        persistent hit/miss counts of the directory."""
        entries = 0
        counts = dict.fromkeys(_COUNTERS, 0)
        try:
            entries = len(self._current())
            counters = self._counters._current()
            for name in _COUNTERS:
                counts[name] = counters.get(name, 0)
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache stats unreadable: %s", exc)
        with self._lru_lock:
            memory_entries = len(self._lru)
        hits = counts["memory_hits"] + counts["disk_hits"]
        looked_up = hits + counts["misses"]
        return {
            "entries": entries,
            "memory_entries": memory_entries,
            "hits": hits,
            "memory_hits": counts["memory_hits"],
            "disk_hits": counts["disk_hits"],
            "misses": counts["misses"],
            "hit_rate": hits / looked_up if looked_up else 0.0,
        }

    def cleanup_expired(self) -> int:
        """Remove expired disk entries; how many were removed."""
        try:
            return int(self._current().expire())
        except diskcache.Timeout as exc:  # carries the count removed before it
            log.warning("localmem embedding cache cleanup interrupted: %s", exc)
            return int(exc.args[0]) if exc.args and type(exc.args[0]) is int else 0
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache cleanup failed: %s", exc)
            return 0

    def clear(self) -> None:
        """Forget every vector (both tiers, all models) and reset the counters."""
        with self._lru_lock:
            self._lru.clear()
        try:
            self._current().clear()
            self._counters._current().clear()
        except _CACHE_ERRORS as exc:
            log.warning("localmem embedding cache not cleared: %s", exc)

    def close(self) -> None:
        with self._lru_lock:
            self._lru.clear()
        self._counters.close()
        super().close()


class QueryCache(_DiskTier):
    """Strategy answers for ``ttl`` seconds, each served only for the scope it was built at.

    ``key`` is a JSON-able sequence (strategy, owner, conversation, query, limit, ...) and
    ``scope`` a JSON-able token (e.g. the conversation version): ``get`` returns the stored
    value only when both the key and the scope equal, as canonical JSON, those it was
    stored with; any new message that moves the scope voids the entry at once. The disk key
    is ``namespace:sha256(key JSON)``. Values are JSON bytes in ``<directory>/queries``,
    never pickle; the tier holds at most about ``max_bytes`` (least recently stored evicted
    first). A stored ``None`` reads as a miss.
    """

    _label = "query cache"

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        ttl: float = DEFAULT_QUERY_TTL,
        max_bytes: int = 64 * 2**20,
    ) -> None:
        self.ttl = ttl
        self._namespace = namespace
        super().__init__(directory, "queries", size_limit=max_bytes)

    def _disk_key(self, key_json: str) -> str:
        return f"{self._namespace}:{hashlib.sha256(_utf8(key_json)).hexdigest()}"

    def get(self, key: Sequence[Any], scope: Any) -> Any | None:
        """The value stored for ``key`` at exactly ``scope``, else None."""
        try:
            key_json, scope_json = _json(list(key)), _json(scope)
        except _CACHE_ERRORS as exc:
            log.warning("localmem query cache key unusable, running the query: %s", exc)
            return None
        entry = self._get_json(self._disk_key(key_json), "running the query")
        if type(entry) is not dict or entry.get("k") != key_json or entry.get("s") != scope_json:
            return None
        return entry.get("v")

    def put(self, key: Sequence[Any], scope: Any, value: Any) -> None:
        """Remember ``value`` (JSON-able) as the answer for ``key`` at ``scope``."""
        try:
            key_json = _json(list(key))
            entry = {"k": key_json, "s": _json(scope), "v": value}
            raw = _utf8(_json(entry, canonical=False))  # the value's own key order is kept
            self._current().set(self._disk_key(key_json), raw, expire=self.ttl)
        except _CACHE_ERRORS as exc:
            log.warning("localmem query cache not updated: %s", exc)
