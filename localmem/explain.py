"""The explain view: how a search chose its answer, stage by stage.

``Memory.explain()`` runs a searching strategy (bypassing the query cache) and returns an
``Explanation``: every candidate the first stage ranked (its rank and score, its cosine
and keyword rank), what became of it (kept, below the relevance floor, below the rerank
threshold, past the limit), its rank and score after reranking and how far it moved, and
the call's ``SearchStages``. ``render()`` prints the original design's debugger view:
before, after, filtered, and summary statistics; ``localmem search --explain`` prints it.
It is how a user tunes ``min_relevance`` and ``rerank_threshold`` on their own data.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass

from .backend import Backend
from .records import SearchStages, Strategy
from .retrieval import Trace

__all__ = ["Explained", "Explanation", "explain"]

KEPT = "kept"
BELOW_FLOOR = "below the relevance floor"
BELOW_THRESHOLD = "below the rerank threshold"
PAST_LIMIT = "past the limit"


@dataclass(frozen=True, slots=True)
class Explained:
    """One candidate and its fate. Ranks from 1; ``moved`` > 0 is up."""

    msg_id: str
    conversation_id: str
    content: str
    first_rank: int  # in the first stage's ranking (what the floor dropped last)
    first_score: float
    cosine: float | None
    keyword_rank: int | None
    rerank_rank: int | None
    rerank_score: float | None
    answer_rank: int | None  # its place in the answer, None if not in it
    fate: str

    @property
    def moved(self) -> int | None:
        """Places gained in the answer against the first stage (None: not in the answer)."""
        return None if self.answer_rank is None else self.first_rank - self.answer_rank


@dataclass(frozen=True, slots=True)
class Explanation:
    strategy: Strategy
    query: str | None
    limit: int
    stages: SearchStages | None
    candidates: tuple[Explained, ...]  # in the first stage's order
    min_relevance: float | None
    threshold: float | None

    @property
    def before(self) -> tuple[Explained, ...]:
        return self.candidates

    @property
    def after(self) -> tuple[Explained, ...]:
        """The answer of the search, in its order."""
        return tuple(sorted((c for c in self.candidates if c.answer_rank is not None),
                            key=lambda c: c.answer_rank or 0))

    @property
    def filtered(self) -> tuple[Explained, ...]:
        return tuple(c for c in self.candidates if c.fate in (BELOW_FLOOR, BELOW_THRESHOLD))

    def render(self, shown: int = 20) -> str:
        """The debugger view as text: the first ``shown`` candidates before, the answer
        after, what was filtered (among those shown), and summary statistics."""
        lines = [f"explain: {self.strategy.value}, query {self.query!r}, limit {self.limit}"]
        if self.stages is None:
            lines.append("  no search ran (no query, and no user message to search with)")
            return "\n".join(lines) + "\n"
        s = self.stages
        floor = "off" if self.min_relevance is None else f"{self.min_relevance:g}"
        threshold = "none" if self.threshold is None else f"{self.threshold:g}"
        lines.append(
            f"stages: retrieval {s.retrieval_ms:.1f} ms, rerank {s.rerank_ms:.1f} ms; {s.candidates} "
            f"candidates, {s.below_floor} below the floor (min_relevance {floor}), {s.reranked} "
            f"reranked (threshold {threshold}), {s.below_threshold} below the threshold"
            + (f"; reranker skipped: {s.rerank_skipped}" if s.rerank_skipped else "")
        )
        lines.append("\nbefore (the first stage: rank, score, cosine, keyword rank)")
        for c in self.candidates[:shown]:
            cosine = "   -  " if c.cosine is None else f"{c.cosine:6.3f}"
            keyword = "  -" if c.keyword_rank is None else f"{c.keyword_rank:3d}"
            fate = f"#{c.answer_rank}" if c.answer_rank is not None else c.fate
            lines.append(f"  #{c.first_rank:<3d} {c.first_score:7.3f} {cosine} {keyword}  -> {fate:<28} {_clip(c.content)}")
        if len(self.candidates) > shown:
            lines.append(f"  ... {len(self.candidates) - shown} more")
        lines.append("\nafter (the answer: rank, rerank score, move)")
        for c in self.after:
            score = "   -  " if c.rerank_score is None else f"{c.rerank_score:6.3f}"
            lines.append(f"  #{c.answer_rank:<3d} {score}  {_move(c):<14} {_clip(c.content)}")
        if not self.after:
            lines.append("  (nothing: no relevant memory)")
        filtered = [c for c in self.filtered if c.first_rank <= shown]
        if filtered:
            lines.append("\nfiltered")
            for c in filtered:
                why = (f"cosine {c.cosine:.3f} < {self.min_relevance:g}, no keyword match"
                       if c.fate == BELOW_FLOOR and c.cosine is not None and self.min_relevance is not None
                       else f"rerank score {c.rerank_score:.3f} < {self.threshold:g}"
                       if c.fate == BELOW_THRESHOLD and c.rerank_score is not None and self.threshold is not None
                       else c.fate)
                lines.append(f"  {c.fate}: {why}: {_clip(c.content)}")
        lines.append("\nsummary: " + self.summary())
        return "\n".join(lines) + "\n"

    def summary(self) -> str:
        after = self.after
        moved = [c.moved for c in after if c.moved is not None]
        up, down = sum(m > 0 for m in moved), sum(m < 0 for m in moved)
        scores = [c.rerank_score for c in after if c.rerank_score is not None]
        parts = [f"{len(after)} in the answer", f"{up} moved up, {down} down, {len(moved) - up - down} in place"]
        if scores:
            parts.append(f"rerank score mean {statistics.mean(scores):.3f}, min {min(scores):.3f}")
        if after:
            top = after[0]
            parts.append("top message unchanged" if top.first_rank == 1 else f"top message was #{top.first_rank}")
        return "; ".join(parts)


def _clip(text: str, width: int = 72) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _move(c: Explained) -> str:
    if c.moved is None or c.moved == 0:
        return "="
    arrow = "↑" if c.moved > 0 else "↓"
    return f"{arrow}{abs(c.moved)} (was #{c.first_rank})"


def explain(
    store: Backend, strategy: Strategy, query: str | None, limit: int, stages: SearchStages | None,
    trace: Trace | None, answer_ids: list[str],
) -> Explanation:
    """An ``Explanation`` of a search from its trace and the msg_ids of its answer (in
    order: for ``hybrid``, its semantic part)."""
    if trace is None:
        return Explanation(strategy, query, limit, stages, (), None, None)
    kept = {c.row_id: c for c in trace.kept}
    reranked = {c.row_id: (rank, c) for rank, c in enumerate(trace.reranked, start=1)}
    # The first stage's final order (after the floor and the signals), then what the
    # floor dropped, in the fusion's order.
    ranking = trace.kept + [c for c in trace.fused if c.row_id not in kept]
    rows = store.rows_by_id([c.row_id for c in ranking])
    answer = {msg_id: rank for rank, msg_id in enumerate(answer_ids, start=1)}
    out = []
    for first_rank, c in enumerate(ranking, start=1):
        row = rows.get(c.row_id)
        if row is None:  # deleted meanwhile
            continue
        rerank_rank, scored = reranked.get(c.row_id, (None, None))
        answer_rank = answer.get(row.msg_id)
        if answer_rank is not None:
            fate = KEPT
        elif c.row_id not in kept:
            fate = BELOW_FLOOR
        elif scored is not None and trace.threshold is not None and (scored.rerank_score or 0.0) < trace.threshold:
            fate = BELOW_THRESHOLD
        else:
            fate = PAST_LIMIT
        out.append(Explained(
            msg_id=row.msg_id, conversation_id=row.conversation_id, content=row.content,
            first_rank=first_rank, first_score=c.score, cosine=c.cosine, keyword_rank=c.keyword_rank,
            rerank_rank=rerank_rank, rerank_score=None if scored is None else scored.rerank_score,
            answer_rank=answer_rank, fate=fate,
        ))
    return Explanation(strategy, query, limit, stages, tuple(out), trace.min_relevance, trace.threshold)
