"""The diskcache tiers. For now: the hot window, the last N messages of each conversation.

The hot window plays the Redis list of the original design. It is an accelerator and never
a source of truth:

* An entry remembers the conversation ``version`` (see ``store.py``) it was built from, and
  is served only while the database still reports that version. A message committed by any
  process bumps the version in the same transaction, so a stale window is never served.
* Entries are rebuilt from SQLite on a miss; deleting the cache directory loses nothing.
* Values are JSON bytes in a ``Disk`` that stores and returns raw bytes only: nothing is ever
  pickled or unpickled, even if someone plants a pickled row in the cache file.
* The directory is created with mode 0o700: cached messages are as private as the database.
* Cache trouble (a damaged or vanished cache file, a lock timeout) is logged and treated as a
  miss; the answer then comes from SQLite, which is always correct.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import tempfile
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import diskcache

from . import driver
from .store import ConversationState

log = logging.getLogger(__name__)

DEFAULT_HOT_WINDOW = 10
DEFAULT_HOT_TTL = 3600.0
_CACHE_ERRORS = (sqlite3.Error, OSError, diskcache.Timeout, ValueError, TypeError)


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


def private_dir(path: Path) -> Path:
    """Create ``path`` (and parents) and make it 0o700 whatever the umask."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)
    return path


class HotWindow:
    """Last ``size`` messages per conversation, as rows in the store's column order."""

    def __init__(
        self,
        directory: Path | None,
        *,
        namespace: str,
        size: int = DEFAULT_HOT_WINDOW,
        ttl: float = DEFAULT_HOT_TTL,
    ):
        self.size = size
        self.ttl = ttl
        self._namespace = namespace
        self._owned_tmp = directory is None
        if directory is None:  # an in-memory database gets a throwaway cache
            directory = Path(tempfile.mkdtemp(prefix="localmem-cache-"))
        self.directory = private_dir(Path(directory))
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._cache = self._open()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.Lock()

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(str(self.directory), disk=RawBytesDisk)

    def _current(self) -> diskcache.Cache:
        if self._pid != os.getpid():  # never reuse the parent's SQLite connection
            with self._lock:
                if self._pid != os.getpid():
                    driver.abandon(self._cache)
                    self._cache = self._open()
                    self._pid = os.getpid()
        return self._cache

    def _key(self, owner_id: str, conversation_id: str) -> str:
        return json.dumps([self._namespace, owner_id, conversation_id], ensure_ascii=False)

    def get(
        self, owner_id: str, conversation_id: str, state: ConversationState
    ) -> list[list[Any]] | None:
        """The cached window if it was built from ``state``'s version, else None."""
        try:
            raw = self._current().get(self._key(owner_id, conversation_id))
            if raw is None:
                return None
            entry = json.loads(raw)
        except _CACHE_ERRORS as exc:
            log.warning("localmem hot window unreadable, using the database: %s", exc)
            return None
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

    def close(self) -> None:
        if self._pid != os.getpid():
            driver.abandon(self._cache)
            return
        self._cache.close()
        if self._owned_tmp:
            shutil.rmtree(self.directory, ignore_errors=True)
