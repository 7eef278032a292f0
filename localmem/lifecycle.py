"""Data lifecycle: forgetting for real, retention and archive, maintenance.

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

import contextlib
import logging
import os
import shutil
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import driver
from .backend import Backend, is_postgres_url
from .cache import HotTier, QueryTier
from .errors import ClosedError, InvalidInputError, LockTimeoutError
from .progress import ProgressCallback, Reporter
from .records import ForgetReport
from .strategy_log import StrategyLog
from .validate import check_id, from_utc_us, now_us

log = logging.getLogger(__name__)

# maintain() rewrites the file (VACUUM) when at least this share of its pages is free and
# that is at least VACUUM_MIN_BYTES: VACUUM writes the whole file again (and as much to the
# WAL), so it is worth it only for real space. (benchmarks/lifecycle.py measures both.)
VACUUM_FREE_SHARE = 0.2
# Retention removes at most this many messages a transaction, so that a first run over a
# year of history does not hold the write lock for many seconds (forgetting 50k of 100k
# messages at once held it 7.7 s: longer than the default lock_timeout of other writers).
RETENTION_BATCH = 5000
VACUUM_MIN_BYTES = 1 << 20
_US_PER_DAY = 86_400_000_000


@dataclass(frozen=True, slots=True)
class RetentionPolicy:
    """Keep messages ``max_age_days``; older ones are removed by ``Memory.maintain()``
    (as ``forget`` removes them: no byte left).

    ``owner_id``: this owner's messages only; a policy without one covers every owner
    that has no policy of its own. ``archive``: a file to write them to first (JSONL, or
    Parquet when it ends in ``.parquet``), in ``Memory.export``'s format, so that
    ``Memory.import_`` brings them back. ``{time}`` in it becomes the run's UTC time
    (``20261129T093000Z``) and ``{owner}`` the owner id (``all`` for a policy of everyone);
    without ``{time}``, a second run finds the file there and stops with an error rather
    than overwrite it.
    """

    max_age_days: float
    owner_id: str | None = None
    archive: str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        days = self.max_age_days
        if isinstance(days, bool) or not isinstance(days, (int, float)) or not 0 < days < 10**6:
            raise InvalidInputError(f"RetentionPolicy.max_age_days must be days in (0, 1e6); got {days!r}")
        if self.owner_id is not None:
            check_id(self.owner_id, "RetentionPolicy.owner_id")
        if self.archive is not None and not isinstance(self.archive, (str, os.PathLike)):
            raise InvalidInputError(f"RetentionPolicy.archive must be a path or None; got {self.archive!r}")

    def archive_path(self, at_us: int) -> str | None:
        if self.archive is None:
            return None
        stamp = from_utc_us(at_us).strftime("%Y%m%dT%H%M%SZ")
        return os.fspath(self.archive).replace("{time}", stamp).replace("{owner}", self.owner_id or "all")


def check_retention(value: Any) -> tuple[RetentionPolicy, ...]:
    """``retention=`` as given to Memory: None, a policy, or a sequence of them (one
    without an owner at most, and one per owner)."""
    if value is None:
        return ()
    policies = (value,) if isinstance(value, RetentionPolicy) else value
    if isinstance(policies, (str, bytes)) or not isinstance(policies, Sequence) or not all(
            isinstance(p, RetentionPolicy) for p in policies):
        raise InvalidInputError(f"retention must be a RetentionPolicy, a list of them, or None; got {value!r}")
    owners = [p.owner_id for p in policies]
    if len(set(owners)) != len(owners):
        raise InvalidInputError("retention: one policy per owner, and one without an owner at most")
    return tuple(policies)


@dataclass(frozen=True, slots=True)
class MaintenanceStep:
    """One step of ``Memory.maintain()``: its name, how long it took, what it did."""

    name: str
    seconds: float
    detail: str


@dataclass(frozen=True, slots=True)
class MaintenanceReport:
    """What ``Memory.maintain()`` did, step by step.

    ``archived``/``forgotten``: messages written to retention archives (``archives``, the
    files) and removed; ``bytes_before``/``bytes_after``: the database file and its WAL;
    ``integrity``: "ok" or the problems found (None: not checked); ``complete``: every step
    ran to its end (else ``pending`` says what is left, e.g. a checkpoint a reader holds up).
    """

    steps: tuple[MaintenanceStep, ...]
    archived: int
    forgotten: int
    archives: tuple[str, ...]
    bytes_before: int
    bytes_after: int
    integrity: str | None
    complete: bool
    pending: tuple[str, ...]
    seconds: float


# Writes the messages a policy removes to an archive file: (path, owner_id, before in µs,
# exclude_owners, through_id) -> how many were written.
Archiver = Callable[[str, "str | None", int, Sequence[str], int], int]


@dataclass(frozen=True, slots=True)
class Target:
    """Which messages: an owner, one of its conversations, everything before a time
    (µs since the epoch, UTC), or an owner's messages before it."""

    owner_id: str | None = None
    conversation_id: str | None = None
    before_us: int | None = None
    exclude_owners: tuple[str, ...] = ()  # retention: owners with a policy of their own
    through_id: int | None = None  # retention: only what the archive read


class ForgetGate:
    """Keeps a forget apart from the work that copies messages into a cache.

    A search reads messages, then stores its answer in the query cache and its window in
    the hot window; the embedding worker reads queued messages, then stores their vectors
    in the embedding cache. Had a forget deleted them and purged the caches in between,
    those puts would write the forgotten text (or vector) back to disk. So such work holds
    the gate ``shared()`` from its first read to its last put, and a forget holds it
    ``exclusive()`` while it deletes and purges: it waits for the work in flight, and new
    work waits for it (a waiting forget goes first, so steady searches cannot starve it).
    ``shared`` is reentrant in a thread (``build_context`` runs a search). Within one
    process: two processes sharing the file and cache folder still race (README).
    """

    def __init__(self) -> None:
        self.reset_locks_after_fork()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting = 0
        self._mine = threading.local()  # this thread's depth of shared()

    @contextlib.contextmanager
    def shared(self) -> Iterator[None]:
        depth = getattr(self._mine, "depth", 0)
        if not depth:
            with self._cond:
                while self._writer or self._waiting:
                    self._cond.wait()
                self._readers += 1
        self._mine.depth = depth + 1
        try:
            yield
        finally:
            self._mine.depth = depth
            if not depth:
                with self._cond:
                    self._readers -= 1
                    if not self._readers:
                        self._cond.notify_all()

    @contextlib.contextmanager
    def exclusive(self, timeout: float) -> Iterator[None]:
        if getattr(self._mine, "depth", 0):
            raise InvalidInputError("forget() cannot run inside a search, a context or an embedding batch "
                                    "(from a callback of theirs): it waits for them to end")
        with self._cond:
            self._waiting += 1
            try:
                if not self._cond.wait_for(lambda: not (self._writer or self._readers), timeout):
                    raise LockTimeoutError(
                        f"searches or an embedding batch still running after {timeout:g} s: forget waited for "
                        "them (they could write what it forgets back into a cache) and gave up; nothing was deleted"
                    )
            finally:
                self._waiting -= 1
                self._cond.notify_all()  # work held back for this forget goes on if it gave up
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


class Lifecycle:
    """The parts of one Memory that hold message bytes, and what clears them."""

    def __init__(
        self,
        store: Backend,
        *,
        hot: HotTier | None,
        queries: QueryTier | None,
        embeddings: Any,  # embedding.Embeddings
        log: StrategyLog | None,
        refold: Callable[[str, str], None] | None,
        gate: ForgetGate,
    ) -> None:
        self._store = store
        self.gate = gate
        self._hot, self._queries, self._embeddings, self._log = hot, queries, embeddings, log
        self._refold = refold
        # Forgets and maintenance run one at a time (two at once would only wait for each
        # other's locks); reentrant, so a progress callback of maintain() may forget.
        self._lock = threading.RLock()
        self._closing = False
        self._pending_checkpoint = False  # a forget's WAL is left for maintain()/close()

    @contextlib.contextmanager
    def _turn(self, what: str) -> Iterator[None]:
        """This thread's turn for a forget or a maintenance run: waits for the one running,
        at most ``lock_timeout``; refused once the Memory is closing."""
        if not self._lock.acquire(timeout=self._store.lock_timeout):
            raise LockTimeoutError(f"{what} waited past lock_timeout ({self._store.lock_timeout:g} s) for "
                                   "another forget or maintain() of this Memory to end; nothing was done")
        try:
            if self._closing:
                raise ClosedError(f"{what}: the Memory is closing")
            yield
        finally:
            self._lock.release()

    def forget(self, target: Target, *, wait: float) -> ForgetReport:
        with self._turn("forget"):
            return self._forget(target, wait)

    def _forget(self, sel: Target, wait: float, *, scrub: bool = True) -> ForgetReport:
        with self.gate.exclusive(self._store.lock_timeout):
            return self._forget_now(sel, wait, scrub)

    def _forget_now(self, sel: Target, wait: float, scrub: bool) -> ForgetReport:
        seconds: dict[str, float] = {}
        start = step = time.perf_counter()

        def lap(name: str) -> None:
            nonlocal step
            now = time.perf_counter()
            seconds[name] = round(now - step, 4)
            step = now

        gone = self._store.forget(sel.owner_id, sel.conversation_id, sel.before_us,
                                  exclude_owners=sel.exclude_owners, through_id=sel.through_id, scrub=scrub)
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
            try:
                self._log.forget(sel.owner_id, sel.conversation_id, sel.before_us, keep_owners=sel.exclude_owners)
            except Exception as exc:  # noqa: BLE001 - reported: the messages are gone, the rest goes on
                pending.append(f"strategy log {self._log.path}: entries not forgotten: {type(exc).__name__}: {exc}")
            else:
                pending.append(self._log.checkpoint())
            lap("strategy_log")
        if gone.messages and not gone.secure:
            self._store.vacuum()  # stale copies from before secure_delete: once per file
            lap("vacuum")
        if gone.messages:
            pending.append(gone.remains)
        pending.append(self._checkpoint(wait))
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

    def _checkpoint(self, wait: float) -> str | None:
        """The database's WAL copied back and truncated (``Store.checkpoint``): None when
        done, else what is left pending (``close()`` tries again)."""
        left = self._store.checkpoint(wait)
        self._pending_checkpoint = bool(left)
        if not left:
            return None
        return (f"database: {left} frames of {self._store.path}-wal not checkpointed: a reader (another "
                "thread or process) holds an older snapshot, and the old pages (forgotten bytes among them) "
                "stay in the -wal and the file until it ends and a checkpoint runs (maintain(), close(), or "
                "another forget)")

    def drain(self) -> None:
        """Before the caches and the log close: wait for a forget or maintenance run in
        progress to end (it would find them closed half-way), and refuse new ones."""
        with self._lock:
            self._closing = True

    def close(self) -> None:
        """A forget's checkpoint left pending: one more try before the file closes (the
        last connection to close checkpoints the WAL and removes it anyway)."""
        if self._pending_checkpoint and not self._store.closed:
            self._pending_checkpoint = bool(self._store.checkpoint(0))

    def maintain(self, policies: Sequence[RetentionPolicy], *, archive: Archiver | None, vacuum: bool | None,
                 integrity: bool, wait: float, progress: ProgressCallback | None) -> MaintenanceReport:
        with self._turn("maintain"):
            return self._maintain(policies, archive, vacuum, integrity, wait, progress)

    def _maintain(self, policies: Sequence[RetentionPolicy], archive: Archiver | None, vacuum: bool | None,
                  integrity: bool, wait: float, progress: ProgressCallback | None) -> MaintenanceReport:
        start = time.perf_counter()
        steps: list[MaintenanceStep] = []
        pending: list[str] = []
        archives: list[str] = []
        archived = forgotten = 0
        bytes_before = self._store.file_bytes()
        names = ["caches", "retention", "keyword_index", "strategy_log", "vectors", "vector_index", "checkpoint",
                 "space", "integrity"]
        reporter = Reporter(progress, "maintain", len(names), unit="steps", stage=names[0])

        def step(name: str, run: Callable[[], str]) -> None:
            began = time.perf_counter()
            reporter.stage(name, len(names), unit="steps", done=len(steps))
            detail = run()
            steps.append(MaintenanceStep(name, round(time.perf_counter() - began, 4), detail))

        def caches() -> str:
            tiers = [t for t in (self._hot, self._queries) if t is not None]
            problems = [t.erase() for t in tiers] + [self._embeddings.erase([])]
            pending.extend(p for p in problems if p is not None)
            return "expired entries removed, WALs truncated"

        def retention() -> str:
            nonlocal archived, forgotten
            if not policies:
                return "no retention policy"
            at = now_us()
            owned = tuple(p.owner_id for p in policies if p.owner_id is not None)
            done = []
            for policy in sorted(policies, key=lambda p: p.owner_id is None):  # owners' own first
                cutoff = at - int(policy.max_age_days * _US_PER_DAY)
                exclude = () if policy.owner_id is not None else owned
                through = self._store.last_id()  # what the archive reads; later writes stay
                path = policy.archive_path(at)
                if path is not None and self._store.count_selected(policy.owner_id, cutoff, exclude, through):
                    if archive is None:
                        raise InvalidInputError("retention archives need an archiver")
                    archived += archive(path, policy.owner_id, cutoff, exclude, through)
                    archives.append(path)
                removed = 0
                while True:  # at most RETENTION_BATCH messages a transaction: writers get turns
                    upto = self._store.nth_selected_id(policy.owner_id, cutoff, exclude, through, RETENTION_BATCH)
                    last = upto is None or upto == through
                    # (the FTS5 and ANALYZE scrub once, in the keyword_index step below)
                    report = self._forget(Target(policy.owner_id, None, cutoff, exclude, through if last else upto),
                                          wait, scrub=False)
                    removed += report.messages
                    forgotten += report.messages
                    pending.extend(report.pending)
                    if last:
                        break
                who = policy.owner_id or ("everyone else" if owned else "everyone")
                done.append(f"{who}: {removed} older than {policy.max_age_days:g} days removed")
            return "; ".join(done)

        def strategy_log() -> str:
            if self._log is None or self._log.retention_days is None:
                return "no strategy log retention"
            try:
                removed = self._log.prune(now_us() - int(self._log.retention_days * _US_PER_DAY))
            except Exception as exc:  # noqa: BLE001 - reported; the log is retried next run
                pending.append(f"strategy log {self._log.path}: retention not applied: {type(exc).__name__}: {exc}")
                return "could not be written (see pending)"
            problem = self._log.checkpoint()
            if problem is not None:
                pending.append(problem)
            return f"{removed} entries older than {self._log.retention_days:g} days removed"

        def keyword_index() -> str:
            self._store.scrub()  # after retention too: what its deletes left in old segments
            return "segments merged, deleted rows' terms dropped"

        def vectors() -> str:
            waste = self._store.vector_waste()
            if not waste:
                return "every owner's vectors fill the chunks they hold"
            freed = 0
            reporter.stage("vectors", len(waste), unit="owners")
            for owner_id, chunks in waste:
                self._store.compact_vectors(owner_id)
                freed += chunks
                reporter.advance()
            return f"{freed} half-empty vector chunks of {len(waste)} owners packed"

        def vector_index() -> str:
            written, removed = self._store.refresh_vector_indexes()
            return f"{written} owners' vector index files written anew, {removed} orphan files removed"

        def checkpoint() -> str:
            problem = self._checkpoint(wait)
            if problem is not None:
                pending.append(problem)
                return "frames left: a reader holds an older snapshot (see pending)"
            return "WAL copied back and truncated"

        def space() -> str:
            size, count, free = self._store.pages()
            share = free / count if count else 0.0
            wanted = vacuum if vacuum is not None else (
                share >= VACUUM_FREE_SHARE and free * size >= VACUUM_MIN_BYTES)
            described = f"{free} of {count} pages free ({share:.0%}, {free * size / 2**20:.1f} MiB)"
            if vacuum is False:
                return f"{described}: no VACUUM (vacuum=False)"
            if not wanted:
                return f"{described}: not worth a VACUUM (below {VACUUM_FREE_SHARE:.0%} or {VACUUM_MIN_BYTES >> 20} MiB)"
            if self._store.in_memory:
                return f"{described}: an in-memory database is not vacuumed"
            local = not is_postgres_url(self._store.path)  # (a server's disk is not this machine's)
            room = shutil.disk_usage(os.path.dirname(os.path.abspath(self._store.path))).free if local else None
            if room is not None and room < 2 * count * size:
                pending.append(f"space: VACUUM needs about {2 * count * size >> 20} MiB free, {room >> 20} MiB are")
                return f"{described}: not enough disk for a VACUUM"
            try:
                self._store.vacuum()
            except LockTimeoutError as exc:
                pending.append(f"space: VACUUM waited past lock_timeout ({exc})")
                return f"{described}: VACUUM could not get the file"
            problem = self._checkpoint(wait)  # (the VACUUM wrote the whole file to the WAL)
            if problem is not None:
                pending.append(problem)
            return f"{described}: VACUUM gave them back"

        step("caches", caches)
        try:
            step("retention", retention)
        except BaseException:
            if forgotten:  # batches went before the error: what their deletes left goes now
                with contextlib.suppress(Exception):
                    self._store.scrub()
                    self._store.checkpoint(wait)
            raise
        step("keyword_index", keyword_index)
        step("strategy_log", strategy_log)
        step("vectors", vectors)
        step("vector_index", vector_index)
        step("checkpoint", checkpoint)
        step("space", space)
        result: str | None = None

        def check() -> str:
            nonlocal result
            result = self._store.check_integrity()
            return result

        if integrity:
            step("integrity", check)
        reporter.finish()
        return MaintenanceReport(
            steps=tuple(steps), archived=archived, forgotten=forgotten, archives=tuple(archives),
            bytes_before=bytes_before, bytes_after=self._store.file_bytes(), integrity=result,
            complete=not pending, pending=tuple(pending), seconds=round(time.perf_counter() - start, 4),
        )


class Maintainer:
    """Runs ``maintain`` every ``interval`` seconds on a daemon thread (``Memory``'s
    ``maintenance_interval=``), for agents that live long. A failed run is logged and
    the next one comes on time; ``close()`` stops the thread (waiting for a run in
    progress)."""

    def __init__(self, interval: float, maintain: Callable[[], Any]) -> None:
        self.interval = interval
        self._maintain = maintain
        self._stop = threading.Event()
        self.runs = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="localmem-maintenance", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                report = self._maintain()
                self.runs += 1
                if not report.complete:
                    log.warning("localmem maintenance left work pending: %s", "; ".join(report.pending))
            except Exception:  # logged; the next run is on time
                self.failures += 1
                log.exception("localmem maintenance failed")

    def close(self) -> None:
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
