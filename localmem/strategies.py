"""The retrieval strategies: one function each, one signature, one registry.

Each takes the ``Sources`` it reads and the validated ``Request`` and returns a
``Recall``; ``REGISTRY`` maps every ``Strategy`` to its function. ``Memory.get_memory``
validates arguments, looks the strategy up, caches the answers of the searching ones and
wraps the answer in a ``MemoryResult`` with its latency. The searching strategies run the
pipeline of ``retrieval.py``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from .backend import Backend
from .cache import HotTier, message_rows
from .records import RetrievedMessage, Row, SearchStages, Strategy
from .retrieval import Candidate, Rerank, Retrieval, Searcher, Trace, retrieve
from .validate import from_utc_us, now_us, to_utc_us

_US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Recall:
    """What a strategy answers: its messages, whether a cache answered, a summary."""

    messages: tuple[RetrievedMessage, ...]
    cache_hit: bool
    context_summary: str
    stages: SearchStages | None = None
    trace: Trace | None = None  # the search's lists (not cached): for Memory.explain


@dataclass(frozen=True, slots=True)
class Request:
    """A validated ``get_memory`` call, as every strategy receives it. ``query`` is the
    text to search with (None: none given and no user message to default to)."""

    owner_id: str
    conversation_id: str
    query: str | None
    limit: int
    lookback_days: float | None
    min_relevance: float | None = None  # the relevance floor (retrieval.floor); None: off
    rerank: Rerank | None = None  # the reranker's settings; None: no reranking
    since_us: int | None = None  # the lookback window's start, fixed once per call (None: no limit)


@dataclass(frozen=True, slots=True)
class Sources:
    """What strategies read: the store, the hot window (None: off), and, for the
    strategies that search, ``searcher()`` giving the ``Searcher`` of this call."""

    store: Backend
    hot: HotTier | None
    make_searcher: Callable[[], Searcher] | None = None

    def searcher(self) -> Searcher:
        if self.make_searcher is None:
            raise AssertionError("a searching strategy was called without a searcher")
        return self.make_searcher()


_RECALL_FORMAT = 3  # the layout of a cached Recall; an entry in another one is a miss
_EXTRA = 5  # after a row's eight fields: score, source, first_rank, first_score, rerank_score


def recall_to_json(recall: Recall) -> dict[str, Any]:
    """A Recall as JSON for the query cache: store rows, each with its score, source and
    the first stage's rank and score and the rerank score."""
    rows = [
        [m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, to_utc_us(m.created_at),
         m.feature, None if m.metadata is None else json.dumps(m.metadata, ensure_ascii=False),
         m.score, m.source, m.first_rank, m.first_score, m.rerank_score]
        for m in recall.messages
    ]
    return {"f": _RECALL_FORMAT, "rows": rows, "summary": recall.context_summary}


def recall_from_json(value: Any, lookback_days: float | None) -> Recall | None:
    """A cached answer, or None if it is not one this version wrote (checked field by
    field: the file is editable), or no longer holds: a message chosen inside the lookback
    window has since left it (the window moves with the clock, not with the data)."""
    if type(value) is not dict or value.get("f") != _RECALL_FORMAT or type(value.get("summary")) is not str:
        return None
    rows = message_rows(value.get("rows"), extra=_EXTRA)
    if rows is None or not all(
        _number_or_none(r[8]) and type(r[9]) is str and (r[10] is None or type(r[10]) is int)
        and _number_or_none(r[11]) and _number_or_none(r[12])
        for r in rows
    ):
        return None
    since = since_us(lookback_days)
    found = [(Row._make(r[:8]), r[8:]) for r in rows]
    if since is not None and any(
        extra[1] in ("recent", "cross_conversation") and row.created_us < since for row, extra in found
    ):
        return None
    messages = tuple(_retrieved(row, source, score, first_rank, first_score, rerank_score)
                     for row, (score, source, first_rank, first_score, rerank_score) in found)
    return Recall(messages, True, value["summary"])


def _number_or_none(value: Any) -> bool:
    return value is None or type(value) in (int, float)


def _retrieved(
    row: Row, source: str, score: float | None = None, first_rank: int | None = None,
    first_score: float | None = None, rerank_score: float | None = None,
) -> RetrievedMessage:
    # Unpacked and passed by position: this runs for every message of every answer (the
    # hot window's included), and keyword arguments and field descriptors cost 1 µs each.
    msg_id, conversation_id, owner_id, role, content, created_us, feature, metadata = row
    return RetrievedMessage(
        msg_id, conversation_id, owner_id, role, content, from_utc_us(created_us), feature,
        None if metadata is None else json.loads(metadata), score, source, first_rank, first_score,
        rerank_score,
    )


def describe_days(lookback_days: float | None) -> str:
    if lookback_days is None:
        return "all time"
    days = int(lookback_days) if float(lookback_days).is_integer() else lookback_days
    return f"last {days} day" if days == 1 else f"last {days} days"


def since_us(lookback_days: float | None) -> int | None:
    """The start of the lookback window, in µs since the epoch (None: no limit)."""
    return None if lookback_days is None else now_us() - int(lookback_days * _US_PER_DAY)


def session_only(sources: Sources, request: Request) -> Recall:
    """No stored history: the agent's live session already carries the context."""
    return Recall((), False, "No historical context loaded (session only mode)")


def recent_history(sources: Sources, request: Request) -> Recall:
    """The last ``limit`` messages of the conversation inside the lookback window, oldest
    first. Served from the hot window when it holds them at the current version."""
    since = request.since_us
    rows, hit = _recent_rows(sources.store, sources.hot, request.owner_id, request.conversation_id,
                             request.limit, since)
    messages = tuple(_retrieved(r, "recent") for r in rows)
    summary = f"Loaded {len(messages)} recent messages from {describe_days(request.lookback_days)}"
    return Recall(messages, hit, summary)


def _recent_rows(
    store: Backend,
    hot: HotTier | None,
    owner_id: str,
    conversation_id: str,
    limit: int,
    since: int | None,
) -> tuple[Sequence[Row], bool]:
    if hot is None:
        return store.recent_rows(owner_id, conversation_id, limit, since)[1], False
    state = store.conversation_state(owner_id, conversation_id)
    if state is None:
        return [], False
    # A window holds the newest messages of the conversation: it answers any limit up to
    # how many it holds, or any limit at all when it holds the whole conversation.
    window = hot.get(owner_id, conversation_id, state)
    if window is not None and window.answers(limit):
        return _newest(window.rows, limit, since), True
    if limit <= hot.size or state.message_count <= hot.size:
        # Rebuild the window (newest rows, no lookback filter) and answer from it.
        state, rows = store.recent_rows(owner_id, conversation_id, hot.size, None)
        if state is not None:
            window = hot.put(owner_id, conversation_id, state, rows)
            if window.answers(limit):
                return _newest(window.rows, limit, since), False
    return store.recent_rows(owner_id, conversation_id, limit, since)[1], False


def _newest(rows: Sequence[Row], limit: int, since: int | None) -> Sequence[Row]:
    if since is not None:
        rows = [r for r in rows if r.created_us >= since]
    return rows[-limit:]


def _rows(store: Backend, found: Sequence[Candidate], source: str) -> tuple[RetrievedMessage, ...]:
    """The candidates as messages (their rows read now, unless a stage already did)."""
    missing = [c.row_id for c in found if c.row is None]
    rows = store.rows_by_id(missing) if missing else {}
    out = []
    for c in found:
        row = c.row if c.row is not None else rows.get(c.row_id)
        if row is not None:
            score = c.score if c.rerank_score is None else c.rerank_score
            out.append(_retrieved(row, source, score, c.first_rank, c.score, c.rerank_score))
    return tuple(out)


def _no_query(summary: str) -> Recall:
    return Recall((), False, f"{summary}: no query given and no user message to search with")


def _floor_note(result: Retrieval, request: Request) -> str:
    """What the summary adds when the floor dropped every candidate: the answer is empty
    on purpose ("no relevant memory"), not for want of messages."""
    if result.found or not result.stages.below_floor:
        return ""
    return (f"; no relevant memory: none of {result.stages.candidates} candidates reached the "
            f"relevance floor (min_relevance {request.min_relevance:g})")


def _search(sources: Sources, request: Request, query: str, limit: int, *, conversation_id: str | None,
            since: int | None) -> Retrieval:
    """The pipeline in this scope, with the request's floor and reranker."""
    return retrieve(
        sources.searcher(), query, limit, owner_id=request.owner_id, conversation_id=conversation_id,
        since_us=since, min_relevance=request.min_relevance, rerank=request.rerank,
    )


def semantic_search(sources: Sources, request: Request) -> Recall:
    """The conversation's messages most related to the query, best first (all time)."""
    if request.query is None:
        return _no_query("Found 0 semantically relevant messages")
    result = _search(sources, request, request.query, request.limit,
                     conversation_id=request.conversation_id, since=None)
    messages = _rows(sources.store, result.found, "semantic")
    note = _floor_note(result, request)
    summary = f"Found {len(messages)} semantically relevant messages{note}"
    return Recall(messages, False, summary, result.stages, result.trace)


def hybrid(sources: Sources, request: Request) -> Recall:
    """The newest ``max(1, limit // 2)`` messages (inside the lookback window, oldest first,
    ``source="recent"``), then the conversation's messages most related to the query that
    are not among them (best first, ``source="semantic"``), up to ``limit`` in all."""
    recent = recent_history(sources, replace(request, limit=max(1, request.limit // 2))).messages
    semantic: tuple[RetrievedMessage, ...] = ()
    wanted = request.limit - len(recent)
    note = ""
    stages = trace = None
    if request.query is not None and wanted > 0:
        seen = {m.msg_id for m in recent}
        result = _search(sources, request, request.query, wanted + len(recent),
                         conversation_id=request.conversation_id, since=None)
        found = _rows(sources.store, result.found, "semantic")
        semantic = tuple(m for m in found if m.msg_id not in seen)[:wanted]
        note = _floor_note(result, request)
        stages, trace = result.stages, result.trace
    summary = f"Loaded {len(recent)} recent + {len(semantic)} semantic messages{note}"
    return Recall(recent + semantic, False, summary, stages, trace)


def cross_conversation(sources: Sources, request: Request) -> Recall:
    """The owner's messages, from all conversations inside the lookback window, most related
    to the query, best first."""
    if request.query is None:
        return _no_query("Found 0 relevant messages across all conversations")
    result = _search(sources, request, request.query, request.limit,
                     conversation_id=None, since=request.since_us)
    messages = _rows(sources.store, result.found, "cross_conversation")
    note = _floor_note(result, request)
    summary = f"Found {len(messages)} relevant messages across all conversations{note}"
    return Recall(messages, False, summary, result.stages, result.trace)


StrategyFunction = Callable[[Sources, Request], Recall]

# Every strategy, by name: Memory.get_memory looks the requested one up here.
REGISTRY: dict[Strategy, StrategyFunction] = {
    Strategy.SESSION_ONLY: session_only,
    Strategy.RECENT_HISTORY: recent_history,
    Strategy.SEMANTIC_SEARCH: semantic_search,
    Strategy.HYBRID: hybrid,
    Strategy.CROSS_CONVERSATION: cross_conversation,
}
# The ones that search (Sources.searcher): they need a query and, by default, the embedder.
SEARCHING = frozenset({Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION})
