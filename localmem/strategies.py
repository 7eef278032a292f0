"""The retrieval strategies, one function each, over the store and the caches.

Each returns a ``Recall``; ``Memory.get_memory`` validates arguments before calling and
wraps the answer in a ``MemoryResult`` with its latency.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypedDict

from .cache import HotWindow, message_rows
from .records import RetrievedMessage, Row
from .store import EXACT_SEARCH_MAX, Store
from .validate import from_utc_us, now_us, to_utc_us

_US_PER_DAY = 86_400 * 1_000_000


@dataclass(frozen=True, slots=True)
class Recall:
    messages: tuple[RetrievedMessage, ...]
    cache_hit: bool
    context_summary: str


_RECALL_FORMAT = 2  # the layout of a cached Recall; an entry in another one is a miss


def recall_to_json(recall: Recall) -> dict[str, Any]:
    """A Recall as JSON for the query cache: store rows, each with its score and source."""
    rows = [
        [m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, to_utc_us(m.created_at),
         m.feature, None if m.metadata is None else json.dumps(m.metadata, ensure_ascii=False),
         m.score, m.source]
        for m in recall.messages
    ]
    return {"f": _RECALL_FORMAT, "rows": rows, "summary": recall.context_summary}


def recall_from_json(value: Any, lookback_days: float | None) -> Recall | None:
    """A cached answer, or None if it is not one this version wrote (checked field by
    field: the file is editable), or no longer holds: a message chosen inside the lookback
    window has since left it (the window moves with the clock, not with the data)."""
    if type(value) is not dict or value.get("f") != _RECALL_FORMAT or type(value.get("summary")) is not str:
        return None
    rows = message_rows(value.get("rows"), extra=2)
    if rows is None or not all(
        (r[8] is None or type(r[8]) in (int, float)) and type(r[9]) is str for r in rows
    ):
        return None
    since = since_us(lookback_days)
    found = [(Row._make(r[:8]), r[8], r[9]) for r in rows]
    if since is not None and any(
        source in ("recent", "cross_conversation") and row.created_us < since for row, _, source in found
    ):
        return None
    return Recall(tuple(_retrieved(row, source, score) for row, score, source in found), True, value["summary"])


def _retrieved(row: Row, source: str, score: float | None = None) -> RetrievedMessage:
    return RetrievedMessage(
        msg_id=row.msg_id,
        conversation_id=row.conversation_id,
        owner_id=row.owner_id,
        role=row.role,
        content=row.content,
        created_at=from_utc_us(row.created_us),
        feature=row.feature,
        metadata=None if row.metadata is None else json.loads(row.metadata),
        score=score,
        source=source,
    )


def describe_days(lookback_days: float | None) -> str:
    if lookback_days is None:
        return "all time"
    days = int(lookback_days) if float(lookback_days).is_integer() else lookback_days
    return f"last {days} day" if days == 1 else f"last {days} days"


def since_us(lookback_days: float | None) -> int | None:
    """The start of the lookback window, in µs since the epoch (None: no limit)."""
    return None if lookback_days is None else now_us() - int(lookback_days * _US_PER_DAY)


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
    since = since_us(lookback_days)
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


# -- searching by meaning ------------------------------------------------------------------

# Reciprocal rank fusion (Cormack et al., 2009): score = sum over lists of 1 / (RRF_K + rank).
# Each list contributes its top FUSION_DEPTH (or the limit, if larger). On LoCoMo (5
# conversations, 762 questions) K=10 beat the customary 60 at every depth: recall@10 0.65
# against 0.59 at depth 50, since with a deep list and K=60 a middling message found by
# both rankings outranks the top hit of one.
RRF_K = 10
FUSION_DEPTH = 50
_MAX_QUERY_WORDS = 64
_WORD = re.compile(r"\w+", re.UNICODE)


# Function words left out of keyword queries (English and Portuguese): OR-ing "what" or
# "the" into BM25 only adds noise. On LoCoMo, dropping them lifts BM25 recall@10 by 5 points.
# (One string, split: easier to read and edit than a list of quoted words.)
STOPWORDS = frozenset(
    "a an and are as at be by did do does for from had has have he her his how i in is it "  # noqa: SIM905
    "its my of on or she that the their they this to was were what when where which who "
    "why will with you your "
    "o os as um uma uns umas de do da dos das em no na nos nas para por com que e é se "
    "ao aos à às eu ele ela eles elas meu minha seu sua foi ser são qual quando onde como".split()
)


def keyword_query(text: str) -> str | None:
    """An FTS5 expression matching any word of ``text``; None when it has no words.

    Every word becomes a quoted FTS5 string, so nothing the user typed is FTS5 syntax:
    ``NEAR(``, ``*``, ``col:``, ``OR``, ``AND``, ``NOT``, ``^`` and quotes are searched as
    the words they contain (or dropped, being punctuation). Stopwords are left out unless
    the query has nothing else.
    """
    words = list(dict.fromkeys(w.lower() for w in _WORD.findall(text)))
    words = ([w for w in words if w not in STOPWORDS] or words)[:_MAX_QUERY_WORDS]
    if not words:
        return None
    return " OR ".join('"' + w.replace('"', '""') + '"' for w in words)


@dataclass(frozen=True, slots=True)
class Searcher:
    """What the semantic strategies search with: the store, a function giving the query's
    vector (float32 bytes), and whether BM25 is fused with the dense ranking.

    ``parallel``: the BM25 search runs in a thread while the KNN scan runs in the caller's
    (each on its own read connection of the store; SQLite releases the GIL while it works),
    so a large scope costs the longer of the two instead of their sum.
    """

    store: Store
    query_vector: Callable[[str], bytes]
    keyword: bool = True
    parallel: bool = False
    exact_max: int = EXACT_SEARCH_MAX
    dense: bool = True


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: (id, sum of 1 / (k + rank)), best first (ties: smaller id)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row_id in enumerate(ranking, start=1):
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


class _SearchScope(TypedDict):
    """The keyword arguments of ``Store.knn`` and ``Store.keyword`` that name the scope."""

    owner_id: str
    conversation_id: str | None
    since_us: int | None


def search(
    searcher: Searcher,
    query: str,
    limit: int,
    *,
    owner_id: str,
    conversation_id: str | None,
    since_us: int | None,
) -> list[tuple[int, float]]:
    """The ``limit`` best (id, score) in the scope: cosine similarity when dense only,
    ``-bm25`` when keyword only, the RRF score when both are fused."""
    scope: _SearchScope = {"owner_id": owner_id, "conversation_id": conversation_id, "since_us": since_us}
    match = keyword_query(query) if searcher.keyword else None
    if not searcher.dense:  # BM25 alone; score = -bm25 (higher is better)
        found = searcher.store.keyword(match, limit, **scope) if match else []
        return [(row_id, -bm25) for row_id, bm25 in found]
    vector = searcher.query_vector(query)
    depth = max(limit, FUSION_DEPTH) if searcher.keyword else limit

    def dense() -> list[tuple[int, float]]:
        return searcher.store.knn(vector, depth, exact_max=searcher.exact_max, **scope)

    if not searcher.keyword:
        return dense()
    if match is None:
        ranked, sparse = dense(), []
    elif not searcher.parallel:
        ranked, sparse = dense(), searcher.store.keyword(match, depth, **scope)
    else:
        ranked, sparse = _beside(dense, lambda: searcher.store.keyword(match, depth, **scope))
    return rrf([[i for i, _ in ranked], [i for i, _ in sparse]])[:limit]


def _beside(main: Callable[[], Any], side: Callable[[], Any]) -> tuple[Any, Any]:
    """(main(), side()), side() run in a thread meanwhile; an error in either is raised
    here, in the caller's thread."""
    outcome: list[Any] = []

    def run_side() -> None:
        try:
            outcome.append(side())
        except BaseException as exc:  # noqa: BLE001 - re-raised below, in the caller's thread
            outcome.append(exc)

    thread = threading.Thread(target=run_side, name="localmem-bm25", daemon=True)
    thread.start()
    try:
        first = main()
    finally:
        thread.join()
    if isinstance(outcome[0], BaseException):
        raise outcome[0]
    return first, outcome[0]


def _rows(store: Store, scored: Sequence[tuple[int, float]], source: str) -> tuple[RetrievedMessage, ...]:
    rows = store.rows_by_id([i for i, _ in scored])
    return tuple(_retrieved(rows[i], source, score) for i, score in scored if i in rows)


def _no_query(summary: str) -> Recall:
    return Recall((), False, f"{summary}: no query given and no user message to search with")


def semantic_search(
    searcher: Searcher, *, owner_id: str, conversation_id: str, query: str | None, limit: int
) -> Recall:
    """The conversation's messages most related to ``query``, best first (all time)."""
    if query is None:
        return _no_query("Found 0 semantically relevant messages")
    scored = search(searcher, query, limit, owner_id=owner_id, conversation_id=conversation_id, since_us=None)
    messages = _rows(searcher.store, scored, "semantic")
    return Recall(messages, False, f"Found {len(messages)} semantically relevant messages")


def hybrid(
    searcher: Searcher,
    hot: HotWindow | None,
    *,
    owner_id: str,
    conversation_id: str,
    query: str | None,
    limit: int,
    lookback_days: float | None,
) -> Recall:
    """The newest ``max(1, limit // 2)`` messages (inside the lookback window, oldest first,
    ``source="recent"``), then the conversation's messages most related to ``query`` that
    are not among them (best first, ``source="semantic"``), up to ``limit`` in all."""
    recent = recent_history(
        searcher.store, hot, owner_id=owner_id, conversation_id=conversation_id,
        limit=max(1, limit // 2), lookback_days=lookback_days,
    ).messages
    semantic: tuple[RetrievedMessage, ...] = ()
    wanted = limit - len(recent)
    if query is not None and wanted > 0:
        seen = {m.msg_id for m in recent}
        scored = search(
            searcher, query, wanted + len(recent),
            owner_id=owner_id, conversation_id=conversation_id, since_us=None,
        )
        semantic = tuple(m for m in _rows(searcher.store, scored, "semantic") if m.msg_id not in seen)[:wanted]
    summary = f"Loaded {len(recent)} recent + {len(semantic)} semantic messages"
    return Recall(recent + semantic, False, summary)


def cross_conversation(
    searcher: Searcher, *, owner_id: str, query: str | None, limit: int, lookback_days: float | None
) -> Recall:
    """The owner's messages, from all conversations inside the lookback window, most related
    to ``query``, best first."""
    if query is None:
        return _no_query("Found 0 relevant messages across all conversations")
    scored = search(
        searcher, query, limit, owner_id=owner_id, conversation_id=None,
        since_us=since_us(lookback_days),
    )
    messages = _rows(searcher.store, scored, "cross_conversation")
    return Recall(messages, False, f"Found {len(messages)} relevant messages across all conversations")
