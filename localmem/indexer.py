"""Embedding on write: turns messages waiting in ``pending_vectors`` into vectors.

``add()`` commits a message and its queue row in one transaction and returns; this worker
(one daemon thread per ``Memory``) then embeds queued messages in batches and writes their
vectors, one transaction per batch. The queue lives in the database, so a crash loses no
work: whatever was not written is still queued and is embedded after the next open.

A failure (the model cannot be loaded, it returns the wrong shape, the disk is full, the
file belongs to another model) stops the worker and is kept: the semantic strategies raise
it, and the messages stay queued. Nothing is skipped silently, and nothing stays broken
for good: ``flush()`` retries at once (and raises if that attempt fails too), the next
``add()`` retries once a back-off has passed (1 s after the first failure, doubling up to
60 s), and a successful attempt clears the failure.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np

from . import driver
from .backend import Backend
from .errors import (
    ClosedError,
    LockTimeoutError,
    ModelError,
    ModelNotFoundError,
    as_localmem_error,
)

log = logging.getLogger(__name__)

DEFAULT_BATCH = 64
# The background worker lets the searches in flight finish before it starts a batch, for
# at most this long (a search at 100k messages takes 50-100 ms, p95 under 270 ms; past it
# the batch runs anyway, so steady searching cannot starve the embedder). An agent writes
# its user's turn, then searches: the worker woken by that add() embedded the turn and
# committed its vector in the middle of the search, taking a core (of 2 here) and the GIL
# from it, and its commit made SQLite drop the search's page caches and memory maps a
# second time (cosines after it: 1.4 -> 2.9 ms). At 100k messages, p50 of add-then-search
# over a search with no write before it (benchmarks/write_then_search.py, same run):
# semantic_search 1.38x -> 1.10x, hybrid 1.61x -> 1.27x, cross_conversation 1.45x ->
# 1.05x. The vector is then written after the search instead of during it; the search
# found the turn by its keywords either way (a pending vector is not searched).
YIELD_TO_SEARCHES = 0.5
# flush(): the longest pause between two looks at a queue another process still holds rows of.
FLUSH_POLL_MAX = 0.5


def check_vectors(vectors: Any, count: int, dim: int | None, who: str) -> np.ndarray:
    """``vectors`` as a C-contiguous little-endian float32 (count, dim) array of unit
    vectors, or a ModelError saying what the embedder returned instead.

    Each row is scaled to length 1 (in float64), which leaves its cosine with anything
    unchanged and keeps float32 cosine arithmetic from overflowing or underflowing to NaN.
    A zero row stays exactly zero: it has no direction, and the store indexes it as such.
    """
    import numpy as np  # not at import time: ``import localmem`` stays light

    try:
        array = np.asarray(vectors, dtype=np.float64)
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{who} returned something that is not an array of numbers: {exc}") from exc
    if array.ndim != 2 or array.shape[0] != count or (dim is not None and array.shape[1] != dim):
        want = f"({count}, {dim if dim is not None else 'dim'})"
        raise ModelError(f"{who} returned an array of shape {array.shape}; expected {want}")
    if array.shape[1] == 0:
        raise ModelError(f"{who} returned zero-dimensional vectors")
    if not np.isfinite(array).all():
        raise ModelError(f"{who} returned NaN or infinite values")
    scale = np.abs(array).max(axis=1, keepdims=True)  # first: no square overflows
    scaled = np.divide(array, scale, out=np.zeros_like(array), where=scale > 0)
    norms = np.linalg.norm(scaled, axis=1, keepdims=True)
    unit = np.divide(scaled, norms, out=np.zeros_like(scaled), where=norms > 0)
    return np.ascontiguousarray(unit, dtype="<f4")


class Searches:
    """The searches in flight in one ``Memory``, which its background embedder lets finish
    before each batch (``YIELD_TO_SEARCHES``)."""

    def __init__(self) -> None:
        self.reset_locks_after_fork()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._count = 0

    @contextlib.contextmanager
    def running(self) -> Iterator[None]:
        """Around one search."""
        with self._cond:
            self._count += 1
        try:
            yield
        finally:
            with self._cond:
                self._count -= 1
                if not self._count:
                    self._cond.notify_all()

    def wait_idle(self, timeout: float) -> bool:
        """Wait until no search is in flight, at most ``timeout`` seconds; whether none is."""
        with self._cond:
            return self._cond.wait_for(lambda: not self._count, timeout)


class Indexer:
    """The background embedding worker of one ``Memory``.

    ``open_store()`` gives the worker its own ``Store`` (its own connection, opened on first
    use), so a batch waiting for the write lock never holds up the ``Memory``'s own calls;
    the worker closes it. None: use ``store``, the ``Memory``'s (an in-memory database
    exists on one connection only). ``searches``: the ``Memory``'s searches in flight,
    which the worker lets finish before each batch, waiting up to ``yield_to_searches``
    seconds (0: not at all); ``run_batch()`` called directly (``embed="sync"``,
    ``flush()`` in a forked child) does not wait.
    ``embed(texts) -> float32 (n, dim)`` embeds documents (through the embedding cache);
    ``identity()`` gives the model's identity to record. All are called lazily, so opening
    a ``Memory`` never loads a model. ``thread_exit()`` runs in the worker thread as it
    ends (what it opened for itself, such as per-thread cache connections, closes there).
    """

    def __init__(
        self,
        store: Backend,
        open_store: Callable[[], Backend] | None,
        embed: Callable[[Sequence[str]], np.ndarray],
        identity: Callable[[], dict[str, Any]],
        *,
        batch_size: int = DEFAULT_BATCH,
        thread_exit: Callable[[], None] | None = None,
        guard: Callable[[], contextlib.AbstractContextManager[Any]] | None = None,
        searches: Searches | None = None,
        yield_to_searches: float = YIELD_TO_SEARCHES,
    ):
        self._shared_store = store
        self._open_store = open_store
        self._store_lock = threading.Lock()
        self._own_store: Backend | None = None
        self._embed = embed
        self._identity = identity
        self._thread_exit = thread_exit
        self._guard = guard or contextlib.nullcontext  # held from a batch's read to its cache puts
        self.batch_size = batch_size
        self.searches = searches
        self.yield_to_searches = yield_to_searches
        self._init_thread_state()
        self._gate = threading.RLock()  # reentrant: an embedder may fork inside a batch
        driver.reset_locks_after_fork(self)
        driver.gate_fork(self)  # fork() waits for the batch in progress

    def _init_thread_state(self) -> None:
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._alive = False  # a worker thread is in its loop (it may outlive it briefly)
        self._wanted = False  # more work may have arrived since the last empty batch
        self._running = False  # the worker is inside a batch
        self._stopping = False
        self._forked = False
        self.error: BaseException | None = None  # the last attempt's failure, if it failed
        self._failures = 0  # failed attempts in a row
        self._retry_at = 0.0  # add() retries no sooner than this after a failure
        self._lock_waits = 0  # times a batch waited lock_timeout for the write lock in vain
        self._lock_error: LockTimeoutError | None = None
        self._reported: tuple[str, str] | None = None  # the failure last logged

    def reset_locks_after_fork(self) -> None:
        # The parent's thread does not exist in the child. The child starts no worker of
        # its own: ONNX Runtime is not fork-safe (a session created in a child forked while
        # the parent ran one can deadlock), so the child's messages stay queued for the
        # parent's worker or the next open. flush() in the child embeds in its own thread.
        # (The store reconnects itself.)
        self._init_thread_state()
        self._store_lock = threading.Lock()
        self._gate = threading.RLock()  # reentrant: an embedder may fork inside a batch
        self._forked = True

    @property
    def _store(self) -> Backend:
        if self._stopping:  # never reopen a connection once close() has begun
            raise ClosedError("the Memory is closed")
        if self._open_store is None:
            return self._shared_store
        with self._store_lock:
            if self._own_store is None:
                self._own_store = self._open_store()
            return self._own_store

    # -- control ----------------------------------------------------------------------

    def notify(self, *, retry: bool = False) -> None:
        """New messages are queued: make sure a worker will look. After a failure the
        worker starts again (a retry) only once the back-off has passed, or at once when
        ``retry``."""
        with self._cond:
            if self._stopping or self._forked:
                return
            if self.error is not None and not self._running:
                if not retry and time.monotonic() < self._retry_at:
                    return  # the failure stays reported until the next retry
                self.error = None
            self._wanted = True
            if not self._alive:
                self._alive = True
                self._thread = threading.Thread(
                    target=self._run, name="localmem-embedder", daemon=True
                )
                self._thread.start()
            self._cond.notify_all()

    def flush(self, timeout: float | None = None) -> None:
        """Wait until the queue is empty (every message of the file has its vector).

        A failure of an earlier attempt is retried first. Raises the worker's error if
        this attempt fails (the messages stay queued), ``LockTimeoutError`` when the worker
        waited ``lock_timeout`` for another writer's lock in vain (it keeps waiting in the
        background), and ``TimeoutError`` after ``timeout`` seconds.
        """
        if self._forked:
            while self.run_batch():
                pass
            return
        deadline = None if timeout is None else time.monotonic() + timeout
        retry = True
        pause = 0.005
        while True:
            with self._cond:
                waits = self._lock_waits
            self.notify(retry=retry)
            retry = False
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            with self._cond:
                # wait_for calls the predicate before this iteration ends: it sees this 'waits'.
                done = self._cond.wait_for(
                    lambda: self.error is not None or self._stopping or self._lock_waits != waits  # noqa: B023
                    or not (self._wanted or self._running),
                    timeout=left,
                )
                lock_error = self._lock_error if self._lock_waits != waits else None
            self.raise_error()
            if self._stopping:
                raise ClosedError("the Memory was closed while flush() waited; the rest stays queued")
            if lock_error is not None:
                raise LockTimeoutError(
                    f"{lock_error} (flush() gave up; the embedding worker keeps waiting for the lock)"
                ) from lock_error
            if not done:
                raise TimeoutError(f"embeddings still pending after {timeout} s")
            if not self._store.pending_count():
                return
            # Still pending: queued by another process meanwhile (this worker takes it next
            # round), or claimed by another process's worker (PostgreSQL: until it writes,
            # or its lease ends). A pause, growing, so the rounds do not spin: without it
            # a flush() waiting on another worker's claim ran 3,300 transactions a second.
            time.sleep(pause)
            pause = min(pause * 2, FLUSH_POLL_MAX)

    def raise_error(self) -> None:
        """Raise the last attempt's failure, if it failed, as a localmem error."""
        error = self.error
        if error is not None:
            raise as_localmem_error(error, "background embedding failed") from error

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the current batch. Unfinished work stays queued in the file."""
        driver.stop_worker(self, timeout)
        with self._store_lock:
            store, self._own_store = self._own_store, None
        if store is not None:
            store.close()

    # -- work -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        finally:
            with self._cond:  # however the loop ended, a later notify() can start a worker
                if self._thread is threading.current_thread():
                    self._alive = False
                    self._running = False
                self._cond.notify_all()
            if self._thread_exit is not None:  # e.g. close this thread's cache connections
                self._thread_exit()

    def _work(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._wanted or self._stopping)
                if self._stopping:
                    self._wanted = False
                    self._alive = False
                    self._cond.notify_all()
                    return
                self._wanted = False
                self._running = True
            error: BaseException | None = None
            try:
                while not self._stopping and self._run_batch_patiently():
                    pass
            except BaseException as exc:  # noqa: BLE001 - any failure, even SystemExit from an embedder, is kept for flush(); the messages stay queued
                if not (isinstance(exc, ClosedError) and self._stopping):  # else close() began
                    error = exc
                    self._report(exc)
            finally:
                with self._cond:
                    self._running = False
                    if error is not None:
                        self.error = error
                        self._failures += 1
                        self._retry_at = time.monotonic() + min(60.0, 2.0 ** (self._failures - 1))
                        self._alive = False  # the next notify() starts a new worker
                    self._cond.notify_all()
            if error is not None:
                return

    def _run_batch_patiently(self) -> int:
        """``run_batch()``, waiting out a writer that holds the lock past ``lock_timeout``
        (another process's long import, say): that is a reason to wait, not to stop. Each
        vain wait is counted, so that flush() can say so instead of waiting without end."""
        while True:
            if self.searches is not None and self.yield_to_searches > 0:
                self.searches.wait_idle(self.yield_to_searches)
            try:
                taken = self.run_batch()
            except LockTimeoutError as exc:
                log.warning("localmem: embedding waits for the write lock: %s", exc)
                with self._cond:
                    self._lock_waits += 1
                    self._lock_error = exc
                    self._cond.notify_all()
                    if self._cond.wait_for(lambda: self._stopping, timeout=0.5):
                        return 0
                continue
            with self._cond:
                self._failures = 0
                self._reported = None
            return taken

    def _report(self, exc: BaseException) -> None:
        """One log line per kind of failure, not a paragraph per retry: flush() and the
        searches by meaning raise the whole error (for a missing model, every place
        looked in). The same failure again is logged at DEBUG only."""
        first = (str(exc).strip().splitlines() or [""])[0]
        key = (type(exc).__name__, first)
        if key == self._reported:
            log.debug("localmem: background embedding failed again: %s: %s", *key)
            return
        self._reported = key
        if isinstance(exc, ModelNotFoundError):
            log.warning(
                "localmem: no embedding model %r here: messages wait in the queue for their "
                "vectors; recent history works, and flush() or a search by meaning raises the "
                "error that says where it looked", exc.model,
            )
        else:
            log.error("localmem: background embedding stopped, the messages stay queued "
                      "(flush() raises the full error): %s: %s", *key)

    def run_batch(self) -> int:
        """Embed and store one batch of queued messages; returns how many were taken from
        the queue."""
        with self._gate, self._guard():
            batch = self._store.pending_batch(self.batch_size)
            if not batch:
                return 0
            return self._embed_and_store(batch)

    def _embed_and_store(self, batch: list[tuple[int, str]]) -> int:
        identity = self._identity()
        if self._stopping:
            return 0
        vectors = check_vectors(
            self._embed([content for _, content in batch]), len(batch), identity.get("dim"), "the embedder"
        )
        if self._stopping:  # close() began while the model ran: leave the batch queued
            return 0
        self._store.write_vectors(identity, [row_id for row_id, _ in batch], [v.tobytes() for v in vectors])
        return len(batch)
