"""The retrieval pipeline of the strategies that search by meaning.

Every search runs the same stages, each a function with a typed output:

1. ``gather``: candidates, the dense KNN ranking (sqlite-vec, cosine) and the keyword
   ranking (FTS5 BM25), each to a depth, in the scope (owner, conversation, time), with
   both scores of every candidate (a cosine computed for what only BM25 found, the BM25
   score of what only the KNN found when BM25 ranks it within ``SCORED_DEPTH``);
2. ``fuse``: one ranking, by score fusion when both lists exist (max-normalised BM25
   and cosine, weighted; a negative cosine counts as 0), each ``Candidate`` keeping its
   rank and score in each list;
3. ``floor``: the relevance floor, dropping what has nothing in common with the query;
4. ``adjust``: what the query and the messages say besides the rankings (``signals``):
   a question passes part of its score to its answer, a time or a name the query gives
   favours the messages that match it, and substance counts;
5. ``rerank_stage``: a cross-encoder (or any scorer) orders the first candidates, and a
   threshold drops weak ones, keeping at least ``min_keep`` (optional);
6. order and limit: the best ``limit``.

The strategies (``strategies.py``) decide what to search and turn candidates into
messages; ``Memory`` validates and caches.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, NamedTuple, TypedDict

from . import signals
from .backend import EXACT_SEARCH_MAX, Backend
from .errors import ModelError, call_model
from .records import Row, SearchStages
from .signals import STOPWORDS, WORD

__all__ = ["ADJUST_DEPTH", "CONFIDENT", "FUSION_DEPTH", "KEYWORD_WEIGHT", "SCORED_DEPTH", "STOPWORDS", "Candidate", "Lists",
           "Rerank", "Retrieval", "Searcher", "Trace", "adjust", "floor", "fuse", "gather", "keyword_query",
           "keyword_terms",
           "rerank_stage", "retrieve", "score_with", "skip_reason"]

# Score fusion: KEYWORD_WEIGHT x BM25 / the pool's best BM25 + (1 - KEYWORD_WEIGHT) x
# cosine / the pool's best cosine, over the top FUSION_DEPTH of each list (or the limit,
# if larger). On LoCoMo (benchmarks/locomo.py; decided on three conversations, confirmed
# on two; benchmarks/locomo_signals.py) it beat reciprocal rank fusion (K=10, which had
# beaten the customary 60): recall@1 0.299 -> 0.377, recall@10 0.722 -> 0.744. Rank
# fusion gives the second message of the stronger list as much as the first of the
# weaker. Min-max and z-score normalisation measured within 0.005 of it; weights 0.5-0.7
# within 0.01.
KEYWORD_WEIGHT = 0.6
FUSION_DEPTH = 50
# How deep the keyword search reads scores (candidates come from its top FUSION_DEPTH):
# a message the KNN found that BM25 ranks lower still has its BM25 score to fuse (SQLite
# scores every match in the scope to sort them anyway; what costs is reading the rows).
# On LoCoMo, depth 50 / 100 / 200 / 1000 give recall@10 0.783 / 0.788 / 0.791 / 0.793;
# 1000 rows cost 1.4 ms more than 50 at 10k messages, 200 about 0.3.
SCORED_DEPTH = 200
# The signals stage reads the rows of the first ADJUST_DEPTH candidates (the rest keep
# their fused order below them: the signals only add). On LoCoMo, 1000 / 60 / 40 / 30 give
# recall@10 0.791 / 0.791 / 0.788 / 0.780 (before the fixes of review, which made the
# default 0.793); the stage's time is about linear in it.
ADJUST_DEPTH = 60
_MAX_QUERY_WORDS = 64
DROP_FRAGMENTS = True
FRAGMENTS = frozenset({"s", "t", "m", "d", "ll", "re", "ve"})


def keyword_query(text: str) -> str | None:
    """An FTS5 expression matching any word of ``text``; None when it has no words
    (``keyword_terms()`` OR-ed)."""
    return " OR ".join(keyword_terms(text)) or None


def keyword_terms(text: str) -> list[str]:
    """The words of ``text`` a keyword search looks for, each an FTS5 string.

    Every word becomes a quoted FTS5 string, so nothing the user typed is FTS5 syntax:
    ``NEAR(``, ``*``, ``col:``, ``OR``, ``AND``, ``NOT``, ``^`` and quotes are searched as
    the words they contain (or dropped, being punctuation). Stopwords and the pieces of
    contractions (``FRAGMENTS``) are left out unless the query has nothing else.
    """
    words = list(dict.fromkeys(w.lower() for w in WORD.findall(text)))
    words = ([w for w in words if w not in STOPWORDS] or words)
    if DROP_FRAGMENTS:
        words = [w for w in words if not _fragment(w)] or words
    return ['"' + w.replace('"', '""') + '"' for w in words[:_MAX_QUERY_WORDS]]


def _fragment(word: str) -> bool:
    return word in FRAGMENTS or (len(word) == 1 and word.isascii() and word.isalpha())


class _SearchScope(TypedDict):
    """The keyword arguments of ``Store.knn`` and ``Store.keyword`` that name the scope."""

    owner_id: str
    conversation_id: str | None
    since_us: int | None


@dataclass(frozen=True, slots=True)
class Searcher:
    """What the semantic strategies search with: the store, a function giving the query's
    vector (float32 bytes), and whether BM25 is fused with the dense ranking.

    ``parallel``: the BM25 search runs in a thread while the KNN scan runs in the caller's
    (each on its own read connection of the store; SQLite releases the GIL while it works),
    so a large scope costs the longer of the two instead of their sum.

    One searcher serves one ``get_memory`` call: it keeps the query's vector and each
    dense ranking it computed, so that the automatic selector's probe and the search it
    chooses embed once and scan a scope once (``dataclasses.replace`` keeps them).
    """

    store: Backend
    query_vector: Callable[[str], bytes]
    keyword: bool = True
    parallel: bool = False
    exact_max: int = EXACT_SEARCH_MAX
    dense: bool = True
    _vectors: dict[str, bytes] = field(default_factory=dict)
    _dense: dict[tuple[Any, ...], list[tuple[int, float]]] = field(default_factory=dict)

    def vector(self, query: str) -> bytes:
        """The query's vector, computed once per searcher."""
        vector = self._vectors.get(query)
        if vector is None:
            vector = self._vectors[query] = self.query_vector(query)
        return vector

    def knn(self, query: str, depth: int, scope: _SearchScope) -> list[tuple[int, float]]:
        """The dense ranking of ``query`` in ``scope`` to ``depth`` (computed once per
        searcher; a copy, so callers may change it)."""
        return self._scan(query, depth, scope)[:depth]

    def seen(self, query: str, depth: int, scope: _SearchScope) -> dict[int, float]:
        """Every cosine that ``knn(query, depth, scope)`` computed: its ranking, and on the
        approximate path every candidate it re-scored (``Store.knn``'s ``spare``)."""
        return dict(self._scan(query, depth, scope))

    def _scan(self, query: str, depth: int, scope: _SearchScope) -> list[tuple[int, float]]:
        key = (query, depth, scope["owner_id"], scope["conversation_id"], scope["since_us"])
        ranked = self._dense.get(key)
        if ranked is None:
            ranked = self._dense[key] = self.store.knn(
                self.vector(query), depth, exact_max=self.exact_max, spare=True, **scope)
        return ranked

    def depth(self, limit: int, rerank: Rerank | None) -> int:
        """How deep each ranking is searched for ``limit`` messages: ``FUSION_DEPTH`` (or
        the number the reranker or the limit needs, if larger) when both are fused, that
        number alone otherwise."""
        wanted = max(limit, rerank.candidates if rerank is not None else 0)
        return max(wanted, FUSION_DEPTH) if self.keyword and self.dense else wanted


class Candidate(NamedTuple):  # a NamedTuple: fusion makes up to 100 per search
    """A message on its way through the pipeline, with what each stage knew of it.

    ``score`` is the ranking score at the end of the first stage: the fused score when
    both lists were searched (plus what ``adjust`` added: ``signals``), the cosine
    similarity when searching by vectors alone, ``-bm25`` (higher is better) by keywords
    alone. ``cosine`` is set when the message has a vector (the dense list's, or computed
    for the fusion), ``bm25`` (as ``-bm25``) when the keyword search matched it;
    ``dense_rank`` and ``keyword_rank`` are its places in those rankings (from 1; the
    keyword ranking is read to ``SCORED_DEPTH``). ``reply_to``: the row id of the question
    this message answers, for a message that entered the ranking as an answer.
    """

    row_id: int
    score: float
    cosine: float | None = None
    dense_rank: int | None = None
    bm25: float | None = None
    keyword_rank: int | None = None
    first_rank: int | None = None  # place in the first stage's final ranking, from 1
    rerank_score: float | None = None
    row: Row | None = None  # the message, once a stage needed its text
    signals: float = 0.0  # what adjust() added to the fused score
    reply_to: int | None = None


@dataclass(frozen=True, slots=True)
class Lists:
    """Stage 1's output: the dense and keyword rankings, best first, as (row id, score)
    with score the cosine similarity and ``bm25`` (lower is better), each to the search's
    depth (``None`` for a list not searched). With both: ``bm25_of`` holds ``-bm25`` of
    every keyword match read (to ``SCORED_DEPTH``), ``cosine_of`` the cosine of every
    message of either list that has a vector."""

    dense: list[tuple[int, float]] | None
    keyword: list[tuple[int, float]] | None
    bm25_of: dict[int, float] = field(default_factory=dict)
    cosine_of: dict[int, float] = field(default_factory=dict)


def gather(searcher: Searcher, query: str, depth: int, scope: _SearchScope) -> Lists:
    """Stage 1, candidates: the top ``depth`` of each ranking the searcher uses (BM25 runs
    beside the KNN scan in a thread when ``searcher.parallel``), and, when both are used,
    each candidate's score in the other list."""
    match = keyword_terms(query) if searcher.keyword else None
    if not searcher.dense:
        return Lists(None, searcher.store.keyword(match, depth, **scope) if match else [])
    def dense() -> list[tuple[int, float]]:
        return searcher.knn(query, depth, scope)

    if not searcher.keyword:
        return Lists(dense(), None)
    if not match:
        ranked = dense()
        return Lists(ranked, [], {}, dict(ranked))
    scored = max(depth, SCORED_DEPTH)
    if not searcher.parallel:
        ranked, sparse = dense(), searcher.store.keyword(match, scored, **scope)
    else:
        ranked, sparse = _beside(dense, lambda: searcher.store.keyword(match, scored, **scope))
    cosine_of = searcher.seen(query, depth, scope)
    unscored = [row_id for row_id, _ in sparse[:depth] if row_id not in cosine_of]
    cosine_of.update(searcher.store.cosines(searcher.vector(query), unscored, owner_id=scope["owner_id"]))
    return Lists(ranked, sparse[:depth], {row_id: -bm25 for row_id, bm25 in sparse}, cosine_of)


def fuse(lists: Lists) -> list[Candidate]:
    """Stage 2, fusion: one ranking, best first (ties: smaller id). Both lists: score
    fusion over the union of the two (``KEYWORD_WEIGHT``); one list: that list, its own
    score kept (BM25's as ``-bm25``)."""
    if lists.dense is None:
        return [Candidate(row_id, -bm25, bm25=-bm25, keyword_rank=rank)
                for rank, (row_id, bm25) in enumerate(lists.keyword or (), start=1)]
    if lists.keyword is None:
        return [Candidate(row_id, cos, cos, rank) for rank, (row_id, cos) in enumerate(lists.dense, start=1)]
    dense_rank = {row_id: rank for rank, (row_id, _) in enumerate(lists.dense, start=1)}
    keyword_rank = {row_id: rank for rank, row_id in enumerate(lists.bm25_of, start=1)}
    pool = list(dict.fromkeys([row_id for row_id, _ in lists.dense] + [row_id for row_id, _ in lists.keyword]))
    best_bm25 = max((lists.bm25_of.get(i, 0.0) for i in pool), default=0.0)
    best_cosine = max((lists.cosine_of.get(i, 0.0) for i in pool), default=0.0)
    out = []
    for row_id in pool:
        bm25, cosine = lists.bm25_of.get(row_id), lists.cosine_of.get(row_id)
        score = 0.0
        if bm25 is not None and best_bm25 > 0:
            score += KEYWORD_WEIGHT * bm25 / best_bm25
        if cosine is not None and cosine > 0 and best_cosine > 0:  # opposite meaning counts as none
            score += (1.0 - KEYWORD_WEIGHT) * cosine / best_cosine
        out.append(Candidate(row_id, score, cosine, dense_rank.get(row_id), bm25, keyword_rank.get(row_id)))
    out.sort(key=lambda c: (-c.score, c.row_id))
    return out


def floor(found: list[Candidate], lists: Lists, min_relevance: float | None) -> list[Candidate]:
    """Stage 3, the relevance floor: what has nothing in common with the query does not
    reach the prompt. ``min_relevance`` is a cosine similarity (None: no floor).

    When the best dense match of the query is below it, nothing in the scope answers the
    query: the answer is empty, whatever BM25 matched (common words match small talk).
    Otherwise a message stays if its cosine reaches the floor or BM25 matched it (a
    keyword match of a query that does have an answer is evidence; on LoCoMo, filtering
    those by cosine too costs 0.04 of recall@10). Without a dense list (``dense=False``)
    or with no vector in the scope yet, there is no similarity to judge by: no floor.
    """
    if min_relevance is None or not lists.dense:
        return found
    if max(cos for _, cos in lists.dense) < min_relevance:
        return []
    return [c for c in found if c.bm25 is not None or (c.cosine is not None and c.cosine >= min_relevance)]


def adjust(store: Backend, query: str, kept: list[Candidate], lists: Lists, now: datetime) -> list[Candidate]:
    """Stage 4, signals (``localmem.signals``) on the ranking the floor kept: each
    message that asks a question passes ``REPLY_SHARE`` of its (positive) score to the
    next message of its conversation, which joins the ranking if it was not in it, past
    the relevance floor: an answer like "Yes! It was amazing" shares no word with the
    query, and the question it answers is the evidence. Every message gets
    ``CONVERSATION_SHARE`` of the best fused score in its conversation, and what the
    query's time and names and its own length add (``signals.bonus``); the signals only
    add. Best first (ties: smaller id), each with its row as read here. Only the first
    ``ADJUST_DEPTH`` are adjusted (an answer further down moves up among them); the rest
    follow unchanged. A message deleted before its row is read here is left out."""
    if not kept:
        return kept
    kept, rest = kept[:ADJUST_DEPTH], kept[ADJUST_DEPTH:]
    hints = signals.hints(query, now)
    rows, answers = store.rows_and_successors([c.row_id for c in kept])
    ranked = [c for c in kept if c.row_id in rows]
    passed: dict[int, float] = {}
    question: dict[int, int] = {}
    for c in ranked:
        reply = answers.get(c.row_id)
        if reply is not None and c.score > 0 and signals.asks(rows[c.row_id].content):
            passed[reply] = passed.get(reply, 0.0) + signals.REPLY_SHARE * c.score
            question.setdefault(reply, c.row_id)
    joining = [row_id for row_id in passed if row_id not in rows]
    if joining:
        rows.update(store.rows_by_id(joining))
        below = {c.row_id: c for c in rest if c.row_id in passed}  # moved up, as they were
        rest = [c for c in rest if c.row_id not in below]
        for row_id in joining:
            if row_id not in rows:
                continue
            ranked.append(below.get(row_id) or Candidate(
                row_id, 0.0, cosine=lists.cosine_of.get(row_id), bm25=lists.bm25_of.get(row_id),
                reply_to=question[row_id]))
    best: dict[str, float] = {}  # the best fused score in each conversation
    for c in ranked:
        conversation = rows[c.row_id].conversation_id
        if c.score > best.get(conversation, 0.0):
            best[conversation] = c.score
    out = []
    share = signals.CONVERSATION_SHARE
    for c in ranked:  # (Candidate(...) by position: _replace costs 3x as much, 60 times a search)
        row = rows[c.row_id]
        added = (passed.get(c.row_id, 0.0) + share * best.get(row.conversation_id, 0.0)
                 + signals.bonus(row.content, row.created_us, hints))
        out.append(Candidate(c.row_id, c.score + added, c.cosine, c.dense_rank, c.bm25, c.keyword_rank,
                             c.first_rank, c.rerank_score, row, added, c.reply_to))
    out.sort(key=lambda c: (-c.score, c.row_id))
    return out + rest


@dataclass(frozen=True, slots=True)
class Rerank:
    """Stage 5's settings: ``model.score(query, texts)`` gives relevance in [0, 1]; it
    sees the first ``candidates`` messages (never fewer than the limit); those scoring
    under ``threshold`` (None: no threshold) are dropped, but the best ``min_keep`` stay."""

    model: Any
    name: str
    candidates: int = 30
    threshold: float | None = 0.5
    min_keep: int = 3
    adaptive: bool = False  # skip it where the first stage is confident (skip_reason)


CONFIDENT = "confident first stage: the top message is first by meaning and by keywords"


def skip_reason(rerank: Rerank, kept: list[Candidate]) -> str | None:
    """Why the reranker need not run for this call, or None.

    Only rules measured to save something are here (benchmarks/rerank_skipping.py, the
    762 LoCoMo questions): with ``adaptive``, a top candidate first in both the dense and the keyword
    ranking (21.9 % of the calls; the first stage's top message answers 58.7 % of those,
    against 27.1 % of the others). A short-query rule and a fewer-candidates-than-limit
    rule were measured and dropped: they fire on 0 % and about 0 % of those calls.
    """
    if not kept:
        return "no candidates"
    if rerank.adaptive and kept[0].dense_rank == 1 and kept[0].keyword_rank == 1:
        return CONFIDENT
    return None


@dataclass(frozen=True, slots=True)
class Trace:
    """Every stage's list, for the explain view: ``fused`` the fusion's ranking before
    the floor, ``kept`` the first stage's final ranking (after the floor and the
    signals; answers that joined through their question included), ``reranked`` every
    candidate the reranker scored in its order (empty when it did not run), and the
    floor and threshold in effect."""

    fused: list[Candidate]
    kept: list[Candidate]  # in order; their first_rank is their place here, from 1
    reranked: list[Candidate]
    min_relevance: float | None
    threshold: float | None


@dataclass(frozen=True, slots=True)
class Retrieval:
    """What the pipeline found: ``found``, best first, at most the limit, what each stage
    did (``localmem.SearchStages``) and its lists (``trace``)."""

    found: list[Candidate]
    stages: SearchStages
    trace: Trace


def score_with(rerank: Rerank, query: str, texts: list[str]) -> list[float]:
    """The reranker's scores for ``texts``, checked: one finite number in [0, 1] each. Its
    own failure is a ``ModelError`` naming it (never a silent fallback to the first stage)."""
    def scored() -> list[float]:  # float() of a bad value is the reranker's failure too
        return [float(x) for x in rerank.model.score(query, texts)]

    scores: list[float] = call_model(f"the reranker {rerank.name!r}", scored)
    if len(scores) != len(texts) or not all(math.isfinite(x) and 0.0 <= x <= 1.0 for x in scores):
        raise ModelError(
            f"the reranker {rerank.name!r} must give one score in [0, 1] per text; got "
            f"{len(scores)} for {len(texts)} texts ({scores[:3]}...)"
        )
    return scores


def rerank_stage(
    store: Backend, rerank: Rerank, query: str, kept: list[Candidate], limit: int
) -> tuple[list[Candidate], list[Candidate]]:
    """Stage 5: the reranker orders the first ``max(candidates, limit)`` messages (ties
    keep the first stage's order), the threshold drops weak ones unless fewer than
    ``min_keep`` pass. Returns (every scored candidate in rerank order, the survivors in
    that order). ``min_keep`` picks only among what passed the relevance floor."""
    pool = kept[: max(rerank.candidates, limit)]
    missing = [c.row_id for c in pool if c.row is None]
    rows = store.rows_by_id(missing) if missing else {}
    pool = [c._replace(first_rank=rank, row=c.row or rows[c.row_id])
            for rank, c in enumerate(pool, start=1) if c.row is not None or c.row_id in rows]
    if not pool:
        return [], []
    scores = score_with(rerank, query, [c.row.content for c in pool])  # type: ignore[union-attr]
    ordered = sorted(
        (c._replace(rerank_score=s) for c, s in zip(pool, scores, strict=True)),
        key=lambda c: -(c.rerank_score or 0.0),
    )
    passed = ordered if rerank.threshold is None else [
        c for c in ordered if (c.rerank_score or 0.0) >= rerank.threshold
    ]
    if len(passed) < rerank.min_keep:
        passed = ordered[: rerank.min_keep]
    return ordered, passed


def _ranked(found: list[Candidate]) -> list[Candidate]:
    """``found`` with each one's ``first_rank`` set (only what leaves the pipeline gets it:
    a copy per candidate costs microseconds, and fusion makes up to a hundred)."""
    return [c._replace(first_rank=rank) for rank, c in enumerate(found, start=1)]


def retrieve(
    searcher: Searcher,
    query: str,
    limit: int,
    *,
    owner_id: str,
    conversation_id: str | None,
    since_us: int | None,
    min_relevance: float | None = None,
    rerank: Rerank | None = None,
) -> Retrieval:
    """The pipeline: candidates, fusion, the relevance floor, the signals (when both
    rankings were fused), the reranker (when given), then the ``limit`` best. Each list
    is searched to ``FUSION_DEPTH`` (or the number the reranker or the limit needs, if
    larger) when both are fused, to that number alone (``Searcher.depth``)."""
    started = time.perf_counter()
    scope: _SearchScope = {"owner_id": owner_id, "conversation_id": conversation_id, "since_us": since_us}
    lists = gather(searcher, query, searcher.depth(limit, rerank), scope)
    fused = fuse(lists)
    kept = floored = floor(fused, lists, min_relevance)
    if lists.dense is not None and lists.keyword is not None:
        kept = adjust(searcher.store, query, floored, lists, datetime.now(timezone.utc))
    retrieved = time.perf_counter()
    ordered: list[Candidate] = []
    passed: list[Candidate] = []
    skipped: str | None = None
    if rerank is None:
        found, skipped = _ranked(kept[:limit]), "no reranker"
    elif (skipped := skip_reason(rerank, kept)) is not None:
        found = _ranked(kept[:limit])
    else:
        ordered, passed = rerank_stage(searcher.store, rerank, query, kept, limit)
        found = passed[:limit]
    done = time.perf_counter()
    below_threshold = len(ordered) - len(passed)
    stages = SearchStages(
        retrieval_ms=(retrieved - started) * 1000, rerank_ms=(done - retrieved) * 1000,
        candidates=len(fused), below_floor=len({c.row_id for c in fused} - {c.row_id for c in kept}),
        reranked=len(ordered),
        below_threshold=below_threshold, rerank_skipped=skipped,
    )
    trace = Trace(fused, kept, ordered, min_relevance, None if rerank is None else rerank.threshold)
    return Retrieval(found, stages, trace)


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
