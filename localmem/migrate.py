"""Moving up: copy a database (a SQLite file, usually) into another backend (PostgreSQL,
usually), with its vectors, then check the copy.

``localmem migrate --from agent.db --to postgresql://...`` runs ``migrate()``. The source
is opened read-only and read in one snapshot, a batch at a time (memory stays bounded);
each batch is one transaction in the target, messages and vectors together. A msg_id the
target holds already with the same fields is skipped, so a migration stopped half-way
(a crash, a lost connection) is finished by running it again; one held with other fields
stops it (``InvalidInputError``) before that batch is written.

What is copied: every message (ids, times, metadata) and its vector as stored, so nothing
is embedded again (into an empty PostgreSQL target, the HNSW index is built once at the end:
``Backend.bulk_load``) (the target records the source's model; a target holding vectors of
another model is refused: ``ModelMismatchError``). Messages still waiting for their vector
wait in the target too. Not copied: the running summaries (their positions are the
source's row ids; the target folds them again from the messages), the strategy log and the
caches (each machine keeps its own).

The check, after the copy: every owner's and conversation's message count is compared
(those of the source must be in the target: the target may hold more), the vector counts,
and a sample of searches: for ``sample`` messages with a vector, the nearest 10 of their
owner by the source's ranking (exact, or its vector index for owners that have one) against
the target's own search (HNSW on PostgreSQL): recall@10, and the keyword search of their words (the
message itself must be among the target's first 10).
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .backend import Backend, open_backend
from .errors import InvalidInputError
from .progress import ProgressCallback, Reporter
from .records import Row
from .retrieval import keyword_terms
from .validate import NewMessage

__all__ = ["MigrationReport", "migrate"]

BATCH = 1000
_NEAREST = 10
_TIE = 1e-5  # cosines closer than this are a tie


@dataclass(frozen=True, slots=True)
class MigrationReport:
    """What ``migrate`` did. ``messages``: in the source; ``copied``: stored by this run
    (the rest were in the target already); ``vectors``: vectors written by this run.
    ``counts_match``: every owner's and conversation's count of the source is in the
    target, and as many vectors. ``searches``: messages sampled; ``knn_recall``: mean
    overlap of the target's 10 nearest with the source's exact 10 (None: no vectors);
    ``keyword_found``: share of sampled messages the target's keyword search of their own
    words ranks in its first 10. ``problems``: what did not match, a line each."""

    source: str
    target: str
    messages: int
    copied: int
    vectors: int
    counts_match: bool
    searches: int
    knn_recall: float | None
    keyword_found: float | None
    problems: tuple[str, ...]
    seconds: float

    @property
    def ok(self) -> bool:
        return not self.problems


def migrate(source: str, target: str, *, sample: int = 50, batch_size: int = BATCH,
            progress: ProgressCallback | None = None, seed: int = 0) -> MigrationReport:
    """Copy every message of ``source`` (with vectors) into ``target``, then check the
    copy (see the module docstring). Both are what ``Memory`` takes: a file path or a
    ``postgresql://`` URL; the target is created if need be."""
    if source == target:
        raise InvalidInputError("migrate: the source and the target are the same database")
    start = time.perf_counter()
    src = open_backend(source, read_only=True)
    try:
        dst = open_backend(target)
        try:
            read = _copy(src, dst, batch_size, progress, sample, seed)
            problems = _compare_counts(src, dst, read.scopes)
            counts_match = not problems
            recall, found, more = _compare_searches(src, dst, read.sampled)
            problems.extend(more)
        finally:
            dst.close()
    finally:
        src.close()
    return MigrationReport(source=src.path, target=dst.path, messages=read.total, copied=read.copied,
                           vectors=read.vectors, counts_match=counts_match, searches=len(read.sampled),
                           knn_recall=recall, keyword_found=found, problems=tuple(problems),
                           seconds=round(time.perf_counter() - start, 3))


@dataclass
class _Read:
    """What one pass over the source gave: how many messages it holds, how many messages
    and vectors the target took, each conversation's count, and the sampled messages."""

    total: int
    copied: int = 0
    vectors: int = 0
    scopes: dict[tuple[str, str], int] = field(default_factory=dict)
    sampled: list[tuple[Row, bytes | None]] = field(default_factory=list)


def _copy(src: Backend, dst: Backend, batch_size: int, progress: ProgressCallback | None, sample: int,
          seed: int) -> _Read:
    """Copy the source in one pass (one snapshot), counting its conversations and keeping
    the ``sample`` messages (with vectors) the checks search with on the way."""
    with dst.bulk_load(), src.exporting(vectors=True, batch_size=batch_size) as exported:
        read = _Read(exported.total)
        wanted = set(random.Random(seed).sample(range(read.total), min(max(sample, 0), read.total)))
        reporter = Reporter(progress, "migrate", read.total, stage="copy")
        identity = exported.embedder
        if identity is not None and dst.embedder_identity() is None:
            dst.bind_embedder(identity)  # a target of another model raises here, before a write
        position = 0
        for batch in exported.batches:
            chunk = []
            for row, vector in batch:
                chunk.append(NewMessage(
                    msg_id=row.msg_id, conversation_id=row.conversation_id, owner_id=row.owner_id,
                    feature=row.feature, role=row.role, content=row.content, metadata_json=row.metadata,
                    created_us=row.created_us, explicit_msg_id=True, explicit_created_at=True))
                key = (row.owner_id, row.conversation_id)
                read.scopes[key] = read.scopes.get(key, 0) + 1
                if position in wanted:
                    read.sampled.append((row, vector))
                position += 1
            carried = {row.msg_id: vector for row, vector in batch if vector is not None}
            new, written = dst.import_chunk(chunk, carried, identity if carried else None)
            read.copied += new
            read.vectors += written
            reporter.advance(len(batch))
        reporter.finish()
        return read


def _compare_counts(src: Backend, dst: Backend, scopes: dict[tuple[str, str], int]) -> list[str]:
    problems: list[str] = []
    for (owner, conversation), count in sorted(scopes.items()):
        state = dst.conversation_state(owner, conversation)
        held = 0 if state is None else state.message_count
        if held < count:
            problems.append(f"owner {owner!r} conversation {conversation!r}: {count} messages in the source, "
                            f"{held} in the target")
    theirs, mine = src.vector_count(), dst.vector_count()
    if mine < theirs:
        problems.append(f"{theirs} vectors in the source, {mine} in the target")
    return problems


def _compare_searches(src: Backend, dst: Backend,
                      rows: list[tuple[Row, bytes | None]]) -> tuple[float | None, float | None, list[str]]:
    """(knn recall@10, keyword found share, problems) of the sampled messages."""
    recalls: list[float] = []
    found = 0
    problems: list[str] = []
    for row, vector in rows:
        if vector is not None and any(vector):
            exact = src.knn(vector, _NEAREST, owner_id=row.owner_id, exact_max=10**12)
            theirs = dst.knn(vector, _NEAREST, owner_id=row.owner_id)
            if exact:
                # Ties (equal cosines, as two float implementations round them) may be
                # ordered either way: a target neighbour counts when it is as near as the
                # source's last.
                last = exact[-1][1] - _TIE
                recalls.append(min(len(exact), sum(1 for _, cosine in theirs if cosine >= last)) / len(exact))
        terms = keyword_terms(row.content)
        hits = dst.keyword(terms, _NEAREST, owner_id=row.owner_id, conversation_id=row.conversation_id) if terms else []
        if row.msg_id in {r.msg_id for r in dst.rows_by_id([i for i, _ in hits]).values()}:
            found += 1
    recall = round(sum(recalls) / len(recalls), 4) if recalls else None
    share = round(found / len(rows), 4) if rows else None
    if recall is not None and recall < 0.8:
        problems.append(f"nearest-neighbour recall@10 of the target against the source's exact search: {recall}")
    return recall, share, problems
