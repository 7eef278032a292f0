"""The retrieval pipeline of the strategies that search by meaning.

Every search runs the same stages, each a function with a typed output:

1. ``gather``: candidates, the dense KNN ranking (sqlite-vec, cosine) and the keyword
   ranking (FTS5 BM25), each to a depth, in the scope (owner, conversation, time);
2. ``fuse``: one ranking, by reciprocal rank fusion when both lists exist, each
   ``Candidate`` keeping its rank and score in each list;
3. ``floor``: the relevance floor, dropping what has nothing in common with the query;
4. ``rerank_stage``: a cross-encoder (or any scorer) orders the first candidates, and a
   threshold drops weak ones, keeping at least ``min_keep`` (optional);
5. order and limit: the best ``limit``.

The strategies (``strategies.py``) decide what to search and turn candidates into
messages; ``Memory`` validates and caches.
"""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, TypedDict

from .errors import ModelError, call_model
from .records import Row, SearchStages
from .store import EXACT_SEARCH_MAX, Store

__all__ = ["CONFIDENT", "FUSION_DEPTH", "RRF_K", "STOPWORDS", "Candidate", "Lists", "Rerank", "Retrieval",
           "Searcher", "Trace", "floor", "fuse", "gather", "keyword_query", "rerank_stage", "retrieve", "rrf",
           "score_with", "skip_reason"]

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

    store: Store
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
        key = (query, depth, scope["owner_id"], scope["conversation_id"], scope["since_us"])
        ranked = self._dense.get(key)
        if ranked is None:
            ranked = self._dense[key] = self.store.knn(self.vector(query), depth, exact_max=self.exact_max, **scope)
        return list(ranked)

    def depth(self, limit: int, rerank: Rerank | None) -> int:
        """How deep each ranking is searched for ``limit`` messages: ``FUSION_DEPTH`` (or
        the number the reranker or the limit needs, if larger) when both are fused, that
        number alone otherwise."""
        wanted = max(limit, rerank.candidates if rerank is not None else 0)
        return max(wanted, FUSION_DEPTH) if self.keyword and self.dense else wanted


def rrf(rankings: Sequence[Sequence[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Fuse ranked id lists: (id, sum of 1 / (k + rank)), best first (ties: smaller id)."""
    scores: dict[int, float] = {}
    for ranking in rankings:
        for rank, row_id in enumerate(ranking, start=1):
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (k + rank)
    return sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))


class Candidate(NamedTuple):  # a NamedTuple: fusion makes up to 100 per search
    """A message on its way through the pipeline, with what each stage knew of it.

    ``score`` is the ranking score at the end: the RRF score when both lists were fused,
    the cosine similarity when searching by vectors alone, ``-bm25`` (higher is better)
    by keywords alone. ``cosine`` and ``dense_rank`` are set when the dense list held the
    message, ``bm25`` (as ``-bm25``) and ``keyword_rank`` when the keyword list did (ranks
    from 1).
    """

    row_id: int
    score: float
    cosine: float | None = None
    dense_rank: int | None = None
    bm25: float | None = None
    keyword_rank: int | None = None
    first_rank: int | None = None  # place after fusion and the floor, from 1
    rerank_score: float | None = None
    row: Row | None = None  # the message, once a stage needed its text


@dataclass(frozen=True, slots=True)
class Lists:
    """Stage 1's output: the dense and keyword rankings, best first, as (row id, score)
    with score the cosine similarity and ``-bm25``. ``None`` for a list not searched."""

    dense: list[tuple[int, float]] | None
    keyword: list[tuple[int, float]] | None


def gather(searcher: Searcher, query: str, depth: int, scope: _SearchScope) -> Lists:
    """Stage 1, candidates: the top ``depth`` of each ranking the searcher uses (BM25 runs
    beside the KNN scan in a thread when ``searcher.parallel``)."""
    match = keyword_query(query) if searcher.keyword else None
    if not searcher.dense:
        return Lists(None, searcher.store.keyword(match, depth, **scope) if match else [])
    def dense() -> list[tuple[int, float]]:
        return searcher.knn(query, depth, scope)

    if not searcher.keyword:
        return Lists(dense(), None)
    if match is None:
        return Lists(dense(), [])
    if not searcher.parallel:
        return Lists(dense(), searcher.store.keyword(match, depth, **scope))
    ranked, sparse = _beside(dense, lambda: searcher.store.keyword(match, depth, **scope))
    return Lists(ranked, sparse)


def fuse(lists: Lists) -> list[Candidate]:
    """Stage 2, fusion: one ranking, best first. Both lists: reciprocal rank fusion
    (``rrf``); one list: that list, its own score kept (BM25's as ``-bm25``)."""
    dense = {row_id: (rank, cos) for rank, (row_id, cos) in enumerate(lists.dense or (), start=1)}
    keyword = {row_id: (rank, -bm25) for rank, (row_id, bm25) in enumerate(lists.keyword or (), start=1)}

    none = (None, None)

    def candidate(row_id: int, score: float) -> Candidate:  # by position: up to 100 per search
        d_rank, cosine = dense.get(row_id, none)
        k_rank, bm25 = keyword.get(row_id, none)
        return Candidate(row_id, score, cosine, d_rank, bm25, k_rank)

    if lists.dense is None:
        return [candidate(row_id, -bm25) for row_id, bm25 in lists.keyword or ()]
    if lists.keyword is None:
        return [candidate(row_id, cos) for row_id, cos in lists.dense]
    fused = rrf([[i for i, _ in lists.dense], [i for i, _ in lists.keyword]])
    return [candidate(row_id, score) for row_id, score in fused]


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


@dataclass(frozen=True, slots=True)
class Rerank:
    """Stage 4's settings: ``model.score(query, texts)`` gives relevance in [0, 1]; it
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
    """Every stage's list, for the explain view: ``fused`` the first stage's ranking
    before the floor, ``kept`` after it (in order), ``reranked`` every candidate
    the reranker scored in its order (empty when it did not run), and the floor and
    threshold in effect."""

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
    store: Store, rerank: Rerank, query: str, kept: list[Candidate], limit: int
) -> tuple[list[Candidate], list[Candidate]]:
    """Stage 4: the reranker orders the first ``max(candidates, limit)`` messages (ties
    keep the first stage's order), the threshold drops weak ones unless fewer than
    ``min_keep`` pass. Returns (every scored candidate in rerank order, the survivors in
    that order). ``min_keep`` picks only among what passed the relevance floor."""
    pool = kept[: max(rerank.candidates, limit)]
    rows = store.rows_by_id([c.row_id for c in pool])
    pool = [c._replace(first_rank=rank, row=rows[c.row_id])
            for rank, c in enumerate(pool, start=1) if c.row_id in rows]
    if not pool:
        return [], []
    scores = score_with(rerank, query, [rows[c.row_id].content for c in pool])
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
    """The pipeline: candidates, fusion, the relevance floor, the reranker (when given),
    then the ``limit`` best. Each list is searched to ``FUSION_DEPTH`` (or the number the
    reranker or the limit needs, if larger) when both are fused, to that number alone
    (``Searcher.depth``)."""
    started = time.perf_counter()
    scope: _SearchScope = {"owner_id": owner_id, "conversation_id": conversation_id, "since_us": since_us}
    lists = gather(searcher, query, searcher.depth(limit, rerank), scope)
    fused = fuse(lists)
    kept = floor(fused, lists, min_relevance)
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
        candidates=len(fused), below_floor=len(fused) - len(kept), reranked=len(ordered),
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
