"""The retrieval strategies, one function each, over the store and the caches.

Each returns a ``Recall``; ``Memory.get_memory`` validates arguments before calling and
wraps the answer in a ``MemoryResult`` with its latency.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .cache import HotWindow
from .records import RetrievedMessage
from .store import Store
from .validate import from_utc_us, now_us

_US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Recall:
    messages: tuple[RetrievedMessage, ...]
    cache_hit: bool
    context_summary: str


def _retrieved(row: Sequence[Any], source: str, score: float | None = None) -> RetrievedMessage:
    return RetrievedMessage(
        msg_id=row[0],
        conversation_id=row[1],
        owner_id=row[2],
        role=row[3],
        content=row[4],
        created_at=from_utc_us(row[5]),
        feature=row[6],
        metadata=None if row[7] is None else json.loads(row[7]),
        score=score,
        source=source,
    )


def describe_days(lookback_days: float | None) -> str:
    if lookback_days is None:
        return "all time"
    days = int(lookback_days) if float(lookback_days).is_integer() else lookback_days
    return f"last {days} day" if days == 1 else f"last {days} days"


def session_only() -> Recall:
    """No stored history: the agent's live session already carries the context."""
    return Recall((), False, "No historical context loaded (session only mode)")


def recent_history(
    store: Store,
    hot: HotWindow | None,
    *,
    owner_id: str,
    conversation_id: str,
    limit: int,
    lookback_days: float | None,
) -> Recall:
    """The last ``limit`` messages of the conversation inside the lookback window, oldest
    first. Served from the hot window when it holds them at the current version."""
    since = None if lookback_days is None else now_us() - int(lookback_days * _US_PER_DAY)
    rows, hit = _recent_rows(store, hot, owner_id, conversation_id, limit, since)
    messages = tuple(_retrieved(r, "recent") for r in rows)
    summary = f"Loaded {len(messages)} recent messages from {describe_days(lookback_days)}"
    return Recall(messages, hit, summary)


def _recent_rows(
    store: Store,
    hot: HotWindow | None,
    owner_id: str,
    conversation_id: str,
    limit: int,
    since: int | None,
) -> tuple[Sequence[Sequence[Any]], bool]:
    if hot is None:
        return store.recent_rows(owner_id, conversation_id, limit, since)[1], False
    state = store.conversation_state(owner_id, conversation_id)
    if state is None:
        return [], False
    # The window holds the newest `size` messages; it answers any limit up to that, or any
    # limit at all when it holds the whole conversation.
    servable = limit <= hot.size or state.message_count <= hot.size
    if servable:
        rows = hot.get(owner_id, conversation_id, state)
        if rows is not None:
            return _newest(rows, limit, since), True
        # Rebuild the window (newest rows, no lookback filter) and answer from it.
        state, rows = store.recent_rows(owner_id, conversation_id, hot.size, None)
        if state is not None:
            hot.put(owner_id, conversation_id, state, rows)
            if limit <= hot.size or state.message_count <= hot.size:
                return _newest(rows, limit, since), False
    return store.recent_rows(owner_id, conversation_id, limit, since)[1], False


def _newest(rows: Sequence[Sequence[Any]], limit: int, since: int | None) -> Sequence[Sequence[Any]]:
    if since is not None:
        rows = [r for r in rows if r[5] >= since]
    return rows[-limit:]
