"""Data lifecycle: forgetting for real, and (next) retention, archive and maintenance.

``Memory`` delegates here; this module knows every place a message's bytes can be, and
in which order to clear them:

1. The database, one transaction (``Store.forget``): the messages and all that the
   triggers tie to them (keyword rows, vectors, queue rows, counts), their summaries, the
   conversation and owner rows left empty, FTS5's leftover terms and ANALYZE's samples.
   Every connection runs with ``secure_delete`` on (``Store._open``), so freed cells and
   pages are zeroed; a file written before that (no ``SECURE_SINCE`` in meta) still has
   stale copies in live pages, and gets one VACUUM.
2. The cache tiers: the hot windows of the conversations touched, the owners' cached
   answers (all answers for a forget by age alone), the cached vectors of the texts;
   each tier's WAL is then checkpointed and truncated.
3. The strategy log: the owner's (or conversation's, or older) entries, then its WAL.
4. The database's WAL: copied back and truncated (``Store.checkpoint``). A reader that
   holds an older snapshot (an open read transaction of another thread or process)
   keeps the old pages needed by it in the -wal until it ends: the checkpoint then is
   left ``pending`` in the report, never waited on forever and never silently skipped.

The measurements behind each step (what stays where without it, and what it costs) are
in the tests (tests/test_forget.py scans every file byte by byte) and in the commits.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .records import ForgetReport
from .store import Store
from .strategy_log import StrategyLog


@dataclass(frozen=True, slots=True)
class Target:
    """Which messages: an owner, one of its conversations, everything before a time
    (µs since the epoch, UTC), or an owner's messages before it."""

    owner_id: str | None = None
    conversation_id: str | None = None
    before_us: int | None = None


class Lifecycle:
    """The parts of one Memory that hold message bytes, and what clears them."""

    def __init__(
        self,
        store: Store,
        *,
        hot: Any,  # cache.HotWindow | None
        queries: Any,  # cache.QueryCache | None
        embeddings: Any,  # embedding.Embeddings
        log: StrategyLog | None,
        refold: Callable[[str, str], None] | None,
    ) -> None:
        self._store = store
        self._hot, self._queries, self._embeddings, self._log = hot, queries, embeddings, log
        self._refold = refold
        # Forgets run one at a time: two at once would only wait for each other's locks.
        self._lock = threading.Lock()
        self._pending_checkpoint = False  # a forget's WAL is left for maintain()/close()

    def forget(self, target: Target, *, wait: float) -> ForgetReport:
        with self._lock:
            return self._forget(target, wait)

    def _forget(self, sel: Target, wait: float) -> ForgetReport:
        seconds: dict[str, float] = {}
        start = step = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal step
            now = time.perf_counter()
            seconds[name] = round(now - step, 4)
            step = now

        gone = self._store.forget(sel.owner_id, sel.conversation_id, sel.before_us)
        lap("database")
        pending: list[str | None] = []
        if self._hot is not None:
            pending.append(self._hot.erase_conversations(gone.scopes))
        if self._queries is not None:
            owners = None if sel.owner_id is None else [sel.owner_id]
            pending.append(self._queries.erase_groups(owners))
        if gone.contents:
            pending.append(self._embeddings.erase(gone.contents))
        lap("caches")
        if self._log is not None:
            self._log.forget(sel.owner_id, sel.conversation_id, sel.before_us)
            pending.append(self._log.checkpoint())
            lap("strategy_log")
        if gone.messages and not gone.secure:
            self._store.vacuum()  # stale copies from before secure_delete: once per file
            lap("vacuum")
        left = self._store.checkpoint(wait)
        if left:
            self._pending_checkpoint = True
            pending.append(
                f"database: {left} frames of {self._store.path}-wal not checkpointed: a reader (another "
                "thread or process) holds an older snapshot, and the forgotten bytes stay in the -wal and "
                "the file until it ends and a checkpoint runs (maintain(), close(), or another forget)"
            )
        lap("checkpoint")
        if self._refold is not None:  # conversations that keep messages get their summary rebuilt
            emptied = set(gone.emptied)
            for owner_id, conversation_id in gone.scopes:
                if (owner_id, conversation_id) not in emptied:
                    self._refold(owner_id, conversation_id)
        seconds["total"] = round(time.perf_counter() - start, 4)
        problems = tuple(p for p in pending if p is not None)
        return ForgetReport(
            messages=gone.messages, conversations=len(gone.scopes), emptied=len(gone.emptied),
            complete=not problems, pending=problems, seconds=seconds,
        )

    def close(self) -> None:
        """A forget's checkpoint left pending: one more try before the file closes (the
        last connection to close checkpoints the WAL and removes it anyway)."""
        if self._pending_checkpoint and not self._store.closed:
            self._pending_checkpoint = bool(self._store.checkpoint(0))
