"""The diskcache tiers: the hot window, the embedding cache and the query-result cache.

Each tier is an accelerator, never a source of truth:

* The hot window (the Redis list of the original design) holds the last N messages of each
  conversation. An entry remembers the conversation ``version`` (see ``store.py``) it was
  built from, and is served only while the database still reports that version. A message
  committed by any process changes the version in the same transaction, to a value it
  never had before (not even in a restored backup), so a stale window is never served.
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
  A directory that is not this user's is never used, nor chmod-ed.
* Cache trouble (a folder that cannot be used, a damaged or vanished cache file, a lock held
  past ``CACHE_TIMEOUT``, an entry of the wrong shape) is logged and treated as a miss; the
  answer then comes from SQLite or the model, which are always correct. Nothing read from a
  cache file is trusted: entries are checked field by field, and a row's file name never
  leads outside the folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import diskcache

from . import driver
from .backend import ConversationState
from .errors import InvalidInputError
from .records import Row
from .validate import MAX_US, MIN_US, ROLES

if TYPE_CHECKING:  # numpy is imported on first use: ``import localmem`` stays light
    import numpy as np

log = logging.getLogger(__name__)

DEFAULT_HOT_WINDOW = 10
DEFAULT_HOT_TTL = 3600.0
DEFAULT_EMBEDDING_TTL = 90 * 86400.0
DEFAULT_QUERY_TTL = 300.0
EMBEDDING_KINDS = ("document", "query")
_MODEL_PREFIX = "model:"  # a key of the counters tier naming a model that cached vectors
# The longest a cache operation waits for a lock on the cache's own SQLite file (or the
# Memory's lock_timeout, if shorter): past it the operation is a miss. Cache writes are
# short transactions, so contention between processes clears well within it.
CACHE_TIMEOUT = 0.1
# A tier that could not be opened is retried after this many seconds; meanwhile every
# call is a miss.
RETRY_OPEN_AFTER = 30.0
# Repeats of one tier's warning are logged at most this often (with how many were held).
WARN_EVERY = 60.0
# Anything a cache operation raises is cache trouble: a miss, logged. (Entries come from
# files anyone with access to the folder can edit: diskcache raises KeyError, for one,
# for a planted eviction policy.) Argument errors of our own are raised before any of it.
_CACHE_ERRORS = (Exception,)
_COUNTERS = ("memory_hits", "disk_hits", "misses")
# The only PRAGMAs a cache connection runs, whatever a Settings row in the cache file says.
_PRAGMAS = frozenset(
    ("auto_vacuum", "cache_size", "journal_mode", "mmap_size", "synchronous", "secure_delete")
)
_PRAGMA_VALUE = re.compile(r"-?[A-Za-z0-9_]{1,32}\Z")
_FORMAT = 2  # the layout of hot-window and query-cache entries; another one is a miss


class RawBytesDisk(diskcache.Disk):
    """A diskcache ``Disk`` for str keys and bytes values that refuses to pickle, and never
    reads or removes a file outside its own directory (a row's ``filename`` comes from the
    cache file, which anyone who can write the folder can edit)."""

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
        if mode == diskcache.core.MODE_BINARY and not self._inside(filename):
            raise ValueError(f"refusing a cache value file outside the cache folder: {filename!r}")
        return super().fetch(mode, filename, value, read)

    def remove(self, file_path: Any) -> None:
        if not self._inside(file_path):
            log.warning("localmem cache: not removing %r, which is outside the cache folder", file_path)
            return
        super().remove(file_path)

    def _inside(self, filename: Any) -> bool:
        """Does ``filename`` name a file strictly below this Disk's directory (after
        resolving ``..`` and symbolic links)?"""
        if type(filename) is not str or not filename or "\x00" in filename:
            return False
        root = os.path.realpath(self._directory)
        full = os.path.realpath(os.path.join(root, filename))
        return full != root and os.path.commonpath([root, full]) == root


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


class _BoundedCache(diskcache.Cache):
    """A ``diskcache.Cache`` that waits for a lock on its file at most ``timeout`` seconds.

    The connection's busy timeout is ``timeout``; diskcache's own retry loops (in
    ``__init__``, which writes its Settings table, and in ``reset()``, which reads and sets
    PRAGMAs on every new connection) would otherwise wait up to 60 s. Only PRAGMAs in
    ``_PRAGMAS`` with plain values are run, whatever the Settings table holds.
    """

    def __init__(self, directory: str, *, timeout: float, **settings: Any) -> None:
        self._retry_for = timeout
        super().__init__(directory, timeout=timeout, **settings)

    def _retrying(self, run: Callable[[], Any]) -> Any:
        deadline = time.monotonic() + self._retry_for
        while True:
            try:
                return run()
            except sqlite3.OperationalError as exc:
                if str(exc) != "database is locked" or time.monotonic() >= deadline:
                    raise
                time.sleep(0.001)

    @property
    def _sql_retry(self) -> Callable[..., Any]:
        sql = self._sql
        return lambda *args, **kwargs: self._retrying(lambda: sql(*args, **kwargs))

    def reset(self, key: str, value: Any = diskcache.core.ENOVAL, update: bool = True) -> Any:
        if not key.startswith("sqlite_") or value is diskcache.core.ENOVAL:
            return super().reset(key, value, update)
        if update:
            self._sql_retry("UPDATE Settings SET value = ? WHERE key = ?", (value, key))
        pragma = key[len("sqlite_"):]
        if pragma not in _PRAGMAS or not _PRAGMA_VALUE.match(str(value)):
            raise ValueError(f"refusing cache setting {key} = {value!r}")

        def apply() -> None:
            ((old,),) = self._sql(f"PRAGMA {pragma}").fetchall()
            if old != value:
                self._sql(f"PRAGMA {pragma} = {value}").fetchall()

        self._retrying(apply)
        setattr(self, key, value)
        return value


def private_dir(path: Path) -> Path:
    """``path`` as a directory of this user's, mode 0o700: created (with its parents) if
    missing. An existing one is used if it is a directory this user owns (through a
    symbolic link too); anything else (a file, a dangling link, another user's directory)
    raises OSError and is left untouched."""
    try:
        path.mkdir(mode=0o700, parents=True)
    except FileExistsError:
        pass
    info = os.stat(path)  # follows a link; a dangling one raises FileNotFoundError
    if not stat.S_ISDIR(info.st_mode):
        raise NotADirectoryError(f"{path} is not a directory")
    if hasattr(os, "geteuid") and info.st_uid != os.geteuid():
        raise PermissionError(f"{path} belongs to user id {info.st_uid}, not to this user")
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def _json(value: Any, *, canonical: bool = True) -> str:
    """Compact JSON, with sorted keys when ``canonical`` (for comparing keys and scopes);
    raises TypeError/ValueError for what JSON cannot hold."""
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), sort_keys=canonical)


def _utf8(text: str) -> bytes:
    # surrogatepass: a lone surrogate in user text is stored, not an error
    return text.encode("utf-8", "surrogatepass")


def _is_json_object(text: str) -> bool:
    try:
        return type(json.loads(text)) is dict
    except ValueError:
        return False


def message_rows(value: Any, extra: int = 0) -> list[list[Any]] | None:
    """``value`` if it is a list of message rows as the store gives them (msg_id,
    conversation_id, owner_id, role, content, created_at in µs, feature, metadata JSON),
    each followed by ``extra`` more fields the caller checks; else None.

    Cache entries are read back from files anyone with access to the folder can edit: a
    row of the wrong shape or type is refused here, so it is a miss, never an exception
    or a wrong value further on.
    """
    if type(value) is not list:
        return None
    width = 8 + extra
    for row in value:  # written out: this runs on every hot-window read
        if type(row) is not list or len(row) != width:
            return None
        msg_id, conversation_id, owner_id, role, content, created, feature, metadata = row[:8]
        if not (
            type(msg_id) is str and type(conversation_id) is str and type(owner_id) is str
            and type(role) is str and role in ROLES and type(content) is str
            and type(created) is int and MIN_US <= created <= MAX_US
            and (feature is None or type(feature) is str)
        ):
            return None
        if metadata is not None and (type(metadata) is not str or not _is_json_object(metadata)):
            return None
    return value


class TierWarnings:
    """Rate-limited log lines for one tier's trouble, ``_label`` naming the tier (the
    diskcache tiers' and the Redis ones', redis_cache.py)."""

    _label = "cache"
    _warned_at = -WARN_EVERY
    _held_warnings = 0

    def _warn(self, what: str, exc: BaseException) -> None:
        """Log cache trouble: the first time, then at most once per ``WARN_EVERY`` seconds,
        counting the repeats held back meanwhile."""
        now = time.monotonic()
        if now - self._warned_at < WARN_EVERY:
            self._held_warnings += 1
            return
        held, self._held_warnings, self._warned_at = self._held_warnings, 0, now
        more = f" ({held} more cache problems since the last report)" if held else ""
        log.warning("localmem %s %s: %s: %s%s", self._label, what, type(exc).__name__, exc, more)


class _DiskTier(TierWarnings):
    """One ``diskcache.Cache`` in a private directory: the plumbing every tier shares.

    ``directory`` None means a throwaway temp directory, removed on ``close()`` by the
    process that made it; ``on_disk=False``: no directory at all, every call a miss (a
    read-only Memory's tiers, which must create nothing). ``subdir`` gives the tier its own folder below ``directory``, so
    that several tiers share one cache directory.

    A tier never raises for cache trouble: a folder it cannot use (see ``private_dir``), a
    damaged file or a lock held past ``timeout`` makes ``_current()`` None or the call a
    miss, with a log line. A tier that could not be opened tries again after
    ``RETRY_OPEN_AFTER`` seconds. After ``fork()`` the child never uses the parent's
    SQLite connection: its first use abandons it (``driver.abandon``) and opens one of its
    own; a lock the parent held at the fork is replaced in the child.
    """

    def __init__(
        self,
        directory: Path | None,
        subdir: str | None = None,
        *,
        disk: type[diskcache.Disk] = RawBytesDisk,
        timeout: float = CACHE_TIMEOUT,
        on_disk: bool = True,
        **settings: Any,
    ) -> None:
        self._on_disk = on_disk
        self._root = directory
        self._subdir = subdir
        self._owned_tmp: Path | None = None
        self._disk = disk
        self._timeout = timeout
        self._settings = {"sqlite_secure_delete": 1, **settings}  # deleted entries leave no bytes
        self._pid = self._creator_pid = os.getpid()
        self._lock = threading.Lock()
        self._cache: diskcache.Cache | None = None
        self._closed = False
        self._retry_at = 0.0
        driver.reset_locks_after_fork(self)
        self._current()

    @property
    def directory(self) -> Path:
        root = self._root if self._root is not None else self._owned_tmp
        if root is None:
            raise RuntimeError("the throwaway cache directory could not be made")
        return root / self._subdir if self._subdir else root

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache:
        if self._root is None and self._owned_tmp is None:  # an in-memory database's cache
            self._owned_tmp = Path(tempfile.mkdtemp(prefix="localmem-cache-"))
        directory = self.directory
        private_dir(directory.parent if self._subdir else directory)
        if self._subdir:
            private_dir(directory)
        return _BoundedCache(str(directory), disk=self._disk, timeout=self._timeout, **self._settings)

    def _current(self) -> diskcache.Cache | None:
        """This process's cache object (reopened on first use after a fork), or None while
        the tier cannot be opened (or has no disk)."""
        if self._closed or not self._on_disk:
            return None
        if self._pid != os.getpid() or (self._cache is None and time.monotonic() >= self._retry_at):
            with self._lock:
                if self._pid != os.getpid():  # never reuse the parent's SQLite connection
                    if self._cache is not None:
                        driver.abandon(self._cache)
                    self._cache, self._retry_at, self._pid = None, 0.0, os.getpid()
                if self._cache is None and time.monotonic() >= self._retry_at:
                    try:
                        self._cache = self._open()
                    except _CACHE_ERRORS as exc:
                        self._retry_at = time.monotonic() + RETRY_OPEN_AFTER
                        self._warn(f"unusable, working without it for {RETRY_OPEN_AFTER:.0f} s", exc)
        return self._cache

    def _get_json(self, key: str, fallback: str) -> Any:
        """The JSON value stored under ``key``, or None when absent or unreadable (logged,
        saying what happens instead: ``fallback``)."""
        try:
            cache = self._current()
            raw = None if cache is None else cache.get(key)
            return None if raw is None else json.loads(raw)
        except _CACHE_ERRORS as exc:
            self._warn(f"unreadable, {fallback}", exc)
            return None

    def _set(self, key: str, value: bytes, expire: float | None, what: str, **kwargs: Any) -> None:
        try:
            cache = self._current()
            if cache is not None:
                cache.set(key, value, expire=expire, **kwargs)
        except _CACHE_ERRORS as exc:
            self._warn(f"not updated ({what})", exc)

    def erase(self, keys: Iterable[str] = (), tags: Iterable[str] = (), *, everything: bool = False) -> str | None:
        """Delete ``keys``, the entries tagged ``tags`` (or ``everything``) for good, then
        copy the WAL back into the file and truncate it, so that their bytes are gone
        (secure_delete zeroes the freed pages). Expired entries go first: diskcache's
        ``delete()`` skips an entry past its expiry, which would keep its bytes. Unlike
        every other tier method this reports trouble instead of logging it: None when
        done, else what was left undone (``Memory.forget`` puts it in its report)."""
        try:
            cache = self._current()
            if cache is None:
                no_folder = self._owned_tmp is None and self._root is None  # (an in-memory tier)
                if no_folder or not (self.directory / "cache.db").exists():
                    return None  # nothing ever written here
                state = "is closed" if self._closed else "could not be opened"
                return f"{self._label}: {self.directory} {state}, entries not erased"
            cache.expire()
            if everything:
                cache.clear()
            else:
                with cache.transact():
                    for key in keys:
                        cache.delete(key)
                for tag in tags:
                    cache.evict(tag)
            busy, frames, done = cache._sql("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except _CACHE_ERRORS as exc:
            return f"{self._label}: entries not erased: {type(exc).__name__}: {exc}"
        if busy:
            return (f"{self._label}: {frames - done} frames of {self.directory / 'cache.db-wal'} not "
                    "checkpointed (another process is reading the cache)")
        return None

    def _remove_owned_tmp(self) -> None:
        # Only the creator removes it: a forked child closing its copy must not pull the
        # directory from under the parent.
        if self._owned_tmp is not None and os.getpid() == self._creator_pid:
            shutil.rmtree(self._owned_tmp, ignore_errors=True)

    def close(self) -> None:
        """Close this process's connection (idempotent) and remove a throwaway directory."""
        self._closed = True  # never reopened, not even in a forked child
        cache, self._cache = self._cache, None
        if cache is not None:
            if self._pid != os.getpid():
                driver.abandon(cache)  # the parent's connection: never closed here
            else:
                cache.close()
        self._remove_owned_tmp()


class _Counters(_DiskTier):
    _label = "embedding cache counters"


@dataclass(frozen=True, slots=True)
class Window:
    """A hot-window entry: the newest ``len(rows)`` messages of a conversation (store rows,
    oldest first) at one version; ``complete`` when they are all its messages."""

    rows: list[Row]
    complete: bool

    def answers(self, limit: int) -> bool:
        """Does it hold the newest ``limit`` messages?"""
        return self.complete or limit <= len(self.rows)

    @classmethod
    def newest(cls, rows: Sequence[Row], size: int, state: ConversationState) -> Window:
        """The window of ``size`` made of a conversation's newest ``rows`` (oldest first),
        read at ``state``."""
        return cls(list(rows[-size:]), len(rows) >= state.message_count)

    @classmethod
    def from_json(cls, rows: Any, complete: Any) -> Window | None:
        """The window a cache entry's ``rows`` and ``complete`` describe, or None when they
        are not of the right shape (see ``message_rows``)."""
        checked = message_rows(rows)
        if checked is None or type(complete) is not bool:
            return None
        return cls([Row._make(r) for r in checked], complete)


class HotTier(Protocol):
    """What localmem asks of a hot window: ``HotWindow`` here, or
    ``redis_cache.RedisHotWindow`` for a database many machines share."""

    size: int
    ttl: float

    def get(self, owner_id: str, conversation_id: str, state: ConversationState) -> Window | None: ...
    def put(self, owner_id: str, conversation_id: str, state: ConversationState, rows: Sequence[Row]) -> Window: ...
    def forget(self, owner_id: str, conversation_id: str) -> None: ...
    def erase_conversations(self, scopes: Iterable[tuple[str, str]]) -> str | None: ...
    def erase(self) -> str | None: ...  # maintain(): expired entries out, deletions made final
    def close(self) -> None: ...


class QueryTier(Protocol):
    """What localmem asks of a query cache: ``QueryCache`` here, or
    ``redis_cache.RedisQueryCache``."""

    ttl: float

    def get(self, key: Sequence[Any], scope: Any) -> Any | None: ...
    def put(self, key: Sequence[Any], scope: Any, value: Any, *, group: str) -> None: ...
    def forget_group(self, group: str) -> None: ...
    def erase_groups(self, groups: Iterable[str] | None) -> str | None: ...
    def erase(self) -> str | None: ...
    def close(self) -> None: ...


class HotWindow(_DiskTier):
    """Last ``size`` messages per conversation, as rows in the store's column order.

    An entry says what it holds (the version it was read at, its rows, whether they are
    the whole conversation), so a Memory opened with a larger ``hot_window`` than the one
    that wrote it never takes it for more than it is.
    """

    _label = "hot window"

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        size: int = DEFAULT_HOT_WINDOW,
        ttl: float = DEFAULT_HOT_TTL,
        timeout: float = CACHE_TIMEOUT,
    ) -> None:
        self.size = size
        self.ttl = ttl
        self._namespace = namespace
        super().__init__(directory, timeout=timeout)

    def _key(self, owner_id: str, conversation_id: str) -> str:
        return json.dumps([self._namespace, owner_id, conversation_id], ensure_ascii=False)

    def get(self, owner_id: str, conversation_id: str, state: ConversationState) -> Window | None:
        """The cached window if it was built at ``state``'s version, else None."""
        entry = self._get_json(self._key(owner_id, conversation_id), "using the database")
        if type(entry) is not dict or entry.get("f") != _FORMAT or entry.get("v") != state.version:
            return None
        return Window.from_json(entry.get("rows"), entry.get("complete"))

    def put(
        self,
        owner_id: str,
        conversation_id: str,
        state: ConversationState,
        rows: Sequence[Row],
    ) -> Window:
        """Remember the newest rows (oldest first) of a conversation at ``state``; returns
        the window as stored."""
        window = Window.newest(rows, self.size, state)
        value = json.dumps(
            {"f": _FORMAT, "v": state.version, "complete": window.complete, "rows": window.rows},
            ensure_ascii=False,
            separators=(",", ":"),
        ).encode("utf-8", "surrogatepass")
        self._set(self._key(owner_id, conversation_id), value, self.ttl, "hot window")
        return window

    def forget(self, owner_id: str, conversation_id: str) -> None:
        """Drop the conversation's entry (its messages must not outlive a delete here),
        an expired one included."""
        problem = self.erase([self._key(owner_id, conversation_id)])
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase_conversations(self, scopes: Iterable[tuple[str, str]]) -> str | None:
        """``erase`` the entries of these (owner, conversation) pairs."""
        return self.erase(self._key(o, c) for o, c in scopes)


EMBEDDING_CACHE_BYTES = 256 << 20


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
      and is deleted. At most ``max_bytes`` (EMBEDDING_CACHE_BYTES, 256 MiB: ~170k vectors
      of 384 dims; least recently stored evicted first): the stored vectors are in the
      database already, and diskcache's default 1 GiB would have added 60 % to them at a
      million messages (1.6 GB of vectors in the file).

    Hit and miss counters persist in ``<directory>/embedding-stats``, a second small
    diskcache whose values are SQLite integers bumped with ``Cache.incr``: each call of
    ``get_many`` adds its counts in one transaction, so counts from every process sharing
    the directory add up and survive restarts. (diskcache's own ``stats(enable=True)``
    would count every internal read, never see memory hits, and count a rejected entry as a
    hit.) They are counts for the whole directory, all models together; ``clear()`` resets
    them.

    ``on_disk=False``: the LRU only, no folder, no counters (a read-only Memory's).
    """

    def __init__(
        self,
        directory: Path | None,
        *,
        model_key: str,
        dim: int,
        memory_items: int = 4096,
        ttl: float = DEFAULT_EMBEDDING_TTL,
        timeout: float = CACHE_TIMEOUT,
        on_disk: bool = True,
        max_bytes: int = EMBEDDING_CACHE_BYTES,
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
        super().__init__(directory, "embeddings", timeout=timeout, on_disk=on_disk, size_limit=max_bytes)
        self._counters = _Counters(directory, "embedding-stats", disk=_CounterDisk, timeout=timeout,
                                   on_disk=on_disk)
        self._note_model()

    def _note_model(self) -> None:
        """Record this model in the directory (beside the counters), so that erasing a
        text reaches its vectors under every model that cached some: a re-embed leaves the
        old model's entries behind, and their keys need that model's identity."""
        try:
            counters = self._counters._current()
            if counters is not None:
                counters.add(_MODEL_PREFIX + self.model_key, 1)
        except _CACHE_ERRORS as exc:
            self._counters._warn("model not recorded", exc)

    def _model_keys(self) -> list[str]:
        """Every model that cached vectors in this directory (this one included)."""
        keys = {self.model_key}
        counters = self._counters._current()
        if counters is not None:
            keys.update(key[len(_MODEL_PREFIX):] for key in counters.iterkeys()
                        if isinstance(key, str) and key.startswith(_MODEL_PREFIX))
        return sorted(keys)

    _label = "embedding cache"

    def reset_locks_after_fork(self) -> None:
        super().reset_locks_after_fork()
        self._lru_lock = threading.Lock()

    def _keys(self, texts: Sequence[str], kind: str, model_key: str | None = None) -> list[str]:
        if kind not in EMBEDDING_KINDS:
            raise InvalidInputError(f"kind must be one of {EMBEDDING_KINDS}; got {kind!r}")
        if isinstance(texts, str):
            raise InvalidInputError("texts must be a sequence of str, not one str")
        keys = []
        for text in texts:
            if type(text) is not str:
                raise InvalidInputError(f"texts must be str; got {type(text).__name__}")
            blob = json.dumps([model_key or self.model_key, kind, text], separators=(",", ":"))  # ASCII
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
            if cache is None:
                return found
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
            self._warn("unreadable, embedding again", exc)
        return found

    def _count(self, **deltas: int) -> None:
        """Add to the persistent counters (one transaction)."""
        if not any(deltas.values()):
            return
        try:
            counters = self._counters._current()
            if counters is None:
                return
            with counters.transact():
                for name, delta in deltas.items():
                    if delta:
                        counters.incr(name, delta)
        except _CACHE_ERRORS as exc:
            self._counters._warn("not updated", exc)

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
            if cache is None:
                return
            with cache.transact():
                for key, row in zip(keys, rows):
                    cache.set(key, row.tobytes(), expire=self.ttl)
        except _CACHE_ERRORS as exc:
            self._warn("not updated", exc)

    def forget(self, texts: Sequence[str], *, kind: str = "document") -> None:
        """Drop the vectors of ``texts`` from both tiers (a deleted message's text must not
        stay findable here)."""
        problem = self.erase_texts(texts, kinds=(kind,))
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase_texts(self, texts: Sequence[str], *, kinds: Sequence[str] = EMBEDDING_KINDS) -> str | None:
        """``forget`` the vectors of ``texts`` of each of ``kinds`` (default: as documents
        and as queries: a context embeds the latest user message as its query), under
        every model that cached vectors here, reporting what was left undone (see
        ``erase``) instead of logging it."""
        try:
            models = self._model_keys()
        except _CACHE_ERRORS as exc:
            return f"{self._label}: the models that cached vectors here are unreadable: {type(exc).__name__}: {exc}"
        keys = [key for model in models for kind in kinds for key in self._keys(texts, kind, model)]
        with self._lru_lock:
            for key in keys:
                self._lru.pop(key, None)
        return self.erase(keys)

    def stats(self) -> dict[str, Any]:
        """Entries (disk: all models, expired ones not yet removed included; memory) and the
        persistent hit/miss counts of the directory."""
        entries = 0
        counts = dict.fromkeys(_COUNTERS, 0)
        try:
            cache, counters = self._current(), self._counters._current()
            entries = 0 if cache is None else len(cache)
            for name in _COUNTERS:
                counts[name] = 0 if counters is None else counters.get(name, 0)
        except _CACHE_ERRORS as exc:
            self._warn("stats unreadable", exc)
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
            cache = self._current()
            return 0 if cache is None else int(cache.expire())
        except diskcache.Timeout as exc:  # carries the count removed before it
            self._warn("cleanup interrupted", exc)
            return int(exc.args[0]) if exc.args and type(exc.args[0]) is int else 0
        except _CACHE_ERRORS as exc:
            self._warn("cleanup failed", exc)
            return 0

    def clear(self) -> None:
        """Forget every vector (both tiers, all models) and reset the counters."""
        with self._lru_lock:
            self._lru.clear()
        for tier in (self, self._counters):
            try:
                cache = tier._current()
                if cache is not None:
                    cache.clear()
            except _CACHE_ERRORS as exc:
                tier._warn("not cleared", exc)
        self._note_model()  # (vectors this model caches from now on must stay erasable)

    def release_thread(self) -> None:
        """Close the calling thread's connections (diskcache opens one per thread; close()
        closes only its caller's)."""
        for tier in (self, self._counters):
            cache = tier._cache
            if cache is not None and tier._pid == os.getpid():
                with contextlib.suppress(Exception):
                    cache.close()

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
    first). A stored ``None`` reads as a miss. Each entry belongs to a ``group`` (the
    owner), so that ``forget_group`` can drop every answer that may quote a deleted message.
    """

    _label = "query cache"

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        ttl: float = DEFAULT_QUERY_TTL,
        max_bytes: int = 64 * 2**20,
        timeout: float = CACHE_TIMEOUT,
    ) -> None:
        self.ttl = ttl
        self._namespace = namespace
        super().__init__(directory, "queries", timeout=timeout, size_limit=max_bytes, tag_index=1)

    def _disk_key(self, key_json: str) -> str:
        return f"{self._namespace}:{hashlib.sha256(_utf8(key_json)).hexdigest()}"

    def _tag(self, group: str) -> str:
        return json.dumps([self._namespace, group], ensure_ascii=False)

    def get(self, key: Sequence[Any], scope: Any) -> Any | None:
        """The value stored for ``key`` at exactly ``scope``, else None."""
        try:
            key_json, scope_json = _json(list(key)), _json(scope)
        except _CACHE_ERRORS as exc:
            self._warn("key unusable, running the query", exc)
            return None
        entry = self._get_json(self._disk_key(key_json), "running the query")
        if type(entry) is not dict or entry.get("k") != key_json or entry.get("s") != scope_json:
            return None
        return entry.get("v")

    def put(self, key: Sequence[Any], scope: Any, value: Any, *, group: str) -> None:
        """Remember ``value`` (JSON-able) as the answer for ``key`` at ``scope``."""
        try:
            key_json = _json(list(key))
            entry = {"k": key_json, "s": _json(scope), "v": value}
            raw = _utf8(_json(entry, canonical=False))  # the value's own key order is kept
        except _CACHE_ERRORS as exc:
            self._warn("key or value unusable, not cached", exc)
            return
        self._set(self._disk_key(key_json), raw, self.ttl, "query", tag=self._tag(group))

    def forget_group(self, group: str) -> None:
        """Drop every answer stored for ``group``."""
        problem = self.erase(tags=[self._tag(group)])
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase_groups(self, groups: Iterable[str] | None) -> str | None:
        """``erase`` every answer of these groups (None: every answer)."""
        if groups is None:
            return self.erase(everything=True)
        return self.erase(tags=[self._tag(g) for g in groups])


if TYPE_CHECKING:  # (for mypy: the disk tiers are what the protocols say)

    def _conforms(hot: HotWindow, queries: QueryCache) -> tuple[HotTier, QueryTier]:
        return hot, queries
