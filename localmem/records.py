"""The values localmem hands back: plain frozen dataclasses that hold no connection."""

from __future__ import annotations

import enum
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NamedTuple


class Strategy(str, enum.Enum):
    """How ``Memory.get_memory`` chooses messages (values as in the original design)."""

    SESSION_ONLY = "session_only"
    """No stored history: the agent's live session already holds the context."""
    RECENT_HISTORY = "recent_history"
    """The last ``limit`` messages of the conversation inside the lookback window."""
    SEMANTIC_SEARCH = "semantic_search"
    HYBRID = "hybrid"
    CROSS_CONVERSATION = "cross_conversation"
    AUTO = "auto"
    """Chosen per query (``localmem.selector``); ``MemoryResult.strategy`` is the one that ran."""

    def __str__(self) -> str:
        return self.value


class Row(NamedTuple):
    """A stored message as the store reads it, before it becomes a ``Message``: what
    crosses from the store to the caches and strategies. The caches keep it as a JSON
    list in this field order (their entries carry a format number)."""

    msg_id: str
    conversation_id: str
    owner_id: str
    role: str
    content: str
    created_us: int  # µs since the epoch, UTC
    feature: str | None
    metadata: str | None  # a JSON object's text


@dataclass(frozen=True, slots=True)
class Message:
    """One stored message. ``created_at`` is a timezone-aware UTC datetime."""

    msg_id: str
    conversation_id: str
    owner_id: str
    role: str
    content: str
    created_at: datetime
    feature: str | None = None
    metadata: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class RetrievedMessage(Message):
    """A message chosen by a strategy.

    ``source`` names the path that found it (``"recent"`` for the recency strategies);
    ``score`` is ``None`` for recency, where order is by time, not relevance. A message
    found by searching keeps its place in the first stage (``first_rank``, from 1, and
    ``first_score``: the fused, cosine or BM25 score); when a reranker ordered the answer,
    ``rerank_score`` is its relevance in [0, 1] and ``score`` equals it.
    """

    score: float | None = None
    source: str = "recent"
    first_rank: int | None = None
    first_score: float | None = None
    rerank_score: float | None = None


@dataclass(frozen=True, slots=True)
class SearchStages:
    """What the search pipeline did for one ``get_memory`` call (None on a cache hit and
    for the strategies that do not search). Times in ms; counts of messages.

    ``candidates``: out of fusion; ``below_floor``: dropped by the relevance floor;
    ``reranked``: scored by the reranker (0 when it did not run); ``below_threshold``:
    dropped for a rerank score under the threshold (after ``min_keep``);
    ``rerank_skipped``: why the reranker did not run, or None.
    """

    retrieval_ms: float
    rerank_ms: float
    candidates: int
    below_floor: int
    reranked: int
    below_threshold: int
    rerank_skipped: str | None


@dataclass(frozen=True, slots=True)
class Selection:
    """How ``Strategy.AUTO`` chose (``MemoryResult.selection``).

    ``strategy``: the one that ran. ``reason``: the rule that decided: from the text,
    ``small_talk``, ``recent_reference``, ``this_chat_topic``, ``this_chat``, ``follow_up``,
    ``arithmetic``, ``no_query`` (and without an embedding ``recall``, then from keyword
    matches ``words_here``, ``words_elsewhere``); from the memory, ``like_small_talk``,
    ``like_a_follow_up``, ``nothing_in_common``, ``past_or_personal``, ``long_request``,
    ``current_thread``, ``assistant_said``, ``closer_elsewhere``, ``close_elsewhere_too``,
    ``closer_here``, ``recall_here``, ``memory_asked``, ``addressed_nothing_close``,
    ``nothing_close``; undecided, ``owner_pattern`` or ``fallback``. ``detail``: the same in
    words, with the scores. ``confident``: False when nothing settled it and a tie-break
    or the safe default chose. ``choose_ms``: what choosing cost beyond embedding (the
    query's, and once per Memory the selector's examples). ``here`` and ``elsewhere``: the
    best cosine of the query in this conversation and in the owner's others (None: not
    measured, or nothing there).
    """

    strategy: Strategy
    reason: str
    detail: str
    confident: bool
    choose_ms: float
    here: float | None = None
    elsewhere: float | None = None


@dataclass(frozen=True, slots=True)
class ConversationSummary:
    """A conversation's running summary (``Memory.get_conversation_summary``).

    ``text``: the summary; ``version``: grows with every fold (and when a deletion or a
    backdated message empties it); ``covers_until``: the time of the newest message folded
    in (every message of the conversation up to it is covered); ``folded``: how many
    messages were folded in; ``summarizer``: who wrote it; ``updated_at``: when.
    """

    conversation_id: str
    owner_id: str
    text: str
    version: int
    covers_until: datetime
    folded: int
    summarizer: str
    updated_at: datetime


@dataclass(frozen=True, slots=True)
class MemoryResult:
    """The answer of ``Memory.get_memory``. ``messages`` are oldest first for recency.
    ``strategy`` is the strategy that ran (never ``AUTO``)."""

    messages: tuple[RetrievedMessage, ...]
    strategy: Strategy
    cache_hit: bool
    context_summary: str
    latency_ms: float
    stages: SearchStages | None = None
    selection: Selection | None = None  # set when Strategy.AUTO chose the strategy

    def __len__(self) -> int:
        return len(self.messages)

    def __iter__(self) -> Iterator[RetrievedMessage]:
        return iter(self.messages)


@dataclass(frozen=True, slots=True)
class ForgetReport:
    """What ``Memory.forget`` did.

    ``messages``: how many were deleted; ``conversations``: how many conversations lost
    some (``emptied``: of those, how many have none left). ``complete`` is True when no
    byte of them is left anywhere under the database path or its cache folder; when
    something could not be finished (a reader of another process holding an old snapshot
    of the file, a cache it could not open), ``pending`` says what and where, and
    ``Memory.maintain()``, ``close()`` or another ``forget`` finishes it. ``seconds``:
    each step's time, and ``"total"``.
    """

    messages: int
    conversations: int
    emptied: int
    complete: bool
    pending: tuple[str, ...]
    seconds: dict[str, float]
