"""Running summaries: the messages that slide out of a conversation's recent window are
folded into a summary stored in the database file, in the background.

When: after a write to a conversation, once at least ``fold_tokens`` of its messages lie
beyond its newest ``window_tokens`` (and outside the summary), the worker folds them, oldest
first, in chunks of at most ``chunk_tokens``: ``summarizer(previous_summary, messages) ->
str`` gives the new summary, written with the covered position and the next version. A
fold writes only if the summary's version is still the one it read, so two folders
(threads or processes of one file) never both apply theirs; the loser reads again.

What ``add()`` pays: a dictionary update. The worker reads and counts; the summariser (an
LLM, perhaps) runs in the worker's thread, never in the caller's. A failed fold leaves
the summary as it was; it is retried with a back-off, and ``flush()`` retries at once and
raises ``SummaryError``. Nothing is lost in a crash: the summary is derived from messages
that are already durable, and the next write to the conversation (or ``build_context``)
finds what is left to fold.

Deleting a message the summary covers, or writing one at a time it covers, empties the
summary (triggers in the store): it is rebuilt from the messages that remain.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from . import driver
from .backend import NO_MARK, Backend, row_to_message
from .errors import ClosedError, InvalidInputError, LocalMemError, SummaryError
from .records import Message
from .tokens import MESSAGE_OVERHEAD, check_counter

log = logging.getLogger("localmem.summaries")

Summarizer = Callable[[str, Sequence[Message]], str]
Key = tuple[str, str]  # (owner_id, conversation_id)


class Written(NamedTuple):
    """What was written to a conversation, for the summary worker: at least ``tokens``
    (-1: unknown, the counter failed) and the oldest message's time."""

    tokens: int
    oldest_us: int
_MAX_TOKENS = 10**7  # bound for every token setting: beyond any model's context
_DUE_KEYS = 100_000  # conversations whose due count is remembered (the rest check on next write)
_PAGE = 256  # rows read per query while folding
# A conversation waits this long in the queue before the worker looks (flush() does not
# wait): a burst of writes (an import, a fast exchange) then costs one look and one larger
# fold instead of many small ones, and leaves the writer the CPU in the meantime.
SETTLE_SECONDS = 0.25
# While writes keep arriving (one in the last SETTLE_SECONDS), the worker rests this many
# times the CPU time its last fold took before the next one: folding then takes about 3 %
# of a CPU, and a bulk import keeps the CPU, the GIL and the write lock (at 9, add_many of
# 100k messages ran 7-13 % slower than with summaries off in benchmarks/core_speed.py; the
# folds are deferred, not lost). Waiting on an LLM's reply costs no CPU, so such a
# summariser hardly rests. Idle, or in flush(), it folds at full speed.
REST_FACTOR = 30.0
_COSTS = 65_536  # messages whose cost is remembered (each look re-reads the window's rows)


@dataclass(frozen=True)
class SummaryPolicy:
    """When and how a conversation's older messages are folded into its summary.

    ``window_tokens``: the newest messages kept out of the summary (they are the recent
    turns a context shows verbatim); ``fold_tokens``: fold once this many tokens lie
    beyond the window, so a summariser that calls an LLM runs once per ``fold_tokens``,
    not once per message; ``chunk_tokens``: the most one summariser call is given (a long
    import is folded in several calls); ``max_tokens``: how long the default summariser's
    summary may grow. ``summarizer(previous_summary, messages) -> str`` (None: the offline
    extractive one, ``localmem.summarize.ExtractiveSummarizer``), with ``name`` recorded
    beside each summary (None: the summariser's qualified name). ``count_tokens`` measures
    the window (None: ``localmem.tokens.count_tokens``), plus ``MESSAGE_OVERHEAD`` per message.

    The newest message is always in the window, however long. Messages beyond the window
    but fewer than ``fold_tokens`` wait for the next fold: a context whose recent turns
    get less than ``window_tokens + fold_tokens`` shows neither them nor a summary of them
    (``Context.dropped`` lists them as ``"not_summarized"``). With the defaults that needs
    a turn budget of 2500 tokens: ``build_context(max_tokens=4000)`` gives the turns 65 %,
    2600. For smaller budgets, lower ``window_tokens`` with them.
    """

    window_tokens: int = 2000
    fold_tokens: int = 500
    chunk_tokens: int = 4000
    max_tokens: int = 800
    summarizer: Summarizer | None = None
    name: str | None = None
    count_tokens: Callable[[str], int] | None = None

    def __post_init__(self) -> None:
        for field in ("window_tokens", "fold_tokens", "chunk_tokens", "max_tokens"):
            value = getattr(self, field)
            if type(value) is not int or not 1 <= value <= _MAX_TOKENS:
                raise InvalidInputError(f"SummaryPolicy.{field} must be an int from 1 to {_MAX_TOKENS}; got {value!r}")
        if self.summarizer is not None and not callable(self.summarizer):
            raise InvalidInputError(f"SummaryPolicy.summarizer must be callable(previous, messages); got {self.summarizer!r}")
        if self.name is not None and (not isinstance(self.name, str) or not self.name.strip()):
            raise InvalidInputError(f"SummaryPolicy.name must be a non-empty str; got {self.name!r}")
        check_counter(self.count_tokens)


def summarizer_name(summarizer: Any) -> str:
    """What a summary records as its author: a function's or class's qualified name."""
    target = summarizer if hasattr(summarizer, "__qualname__") else type(summarizer)
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', repr(target))}"


class _Look(NamedTuple):
    """What a look at a conversation found: ``edge``, the newest unsummarised message
    beyond the window as (created_us, id), or None; ``beyond``, the tokens beyond the
    window (counted up to ``fold_tokens``); ``window``, the costs of the messages in the
    window, newest first; ``rows``, whether the conversation has any unsummarised message;
    ``newest_us``, the time of the newest of them."""

    edge: tuple[int, int] | None
    beyond: int
    window: list[int]
    rows: bool
    newest_us: int | None = None


class Folder:
    """The background summary worker of one ``Memory``.

    ``written({(owner, conversation): [contents]})`` after a write: the worker looks once
    the writes since its last look could have pushed ``fold_tokens`` out of the window
    (and 0.25 s after the first of them: see SETTLE_SECONDS); ``request(...)`` to have it look
    regardless; ``flush()`` to fold all that lies beyond the windows of the conversations
    this Memory wrote to or asked about; ``fold(...)`` to fold one now, in this thread.
    """

    def __init__(self, store: Backend, policy: SummaryPolicy, summarizer: Summarizer, name: str):
        self._store = store
        self.policy = policy
        self._summarize = summarizer
        self.name = name
        self.count = check_counter(policy.count_tokens)
        self._costs: collections.OrderedDict[int, int] = collections.OrderedDict()  # message id -> cost
        self._init_thread_state()
        driver.reset_locks_after_fork(self)
        driver.gate_fork(self)  # fork() waits while the worker is inside SQLite

    def _init_thread_state(self) -> None:
        self._cond = threading.Condition()
        self._costs_lock = threading.Lock()
        self._gate = threading.RLock()  # held while inside SQLite (see driver.gate_fork)
        # Conversations to look at, in order: True to fold all that lies beyond the window
        # (flush), False to fold once fold_tokens do; and since when each waits.
        self._queue: dict[Key, bool] = {}
        self._queued_at: dict[Key, float] = {}
        self._current: tuple[Key, bool] | None = None  # being folded now
        # Failed conversations: when to retry, and whether a complete fold was asked; how
        # many attempts in a row failed (the back-off doubles, up to a minute).
        self._failed: dict[Key, tuple[float, bool]] = {}
        self._attempts: dict[Key, int] = {}
        self._errors: dict[Key, SummaryError] = {}  # the last failure of each, until it succeeds
        # The tokens a conversation may still take before a look is worth it, whether its
        # last look left nothing beyond the window with no write since ("clean"), and the
        # time of the newest message that look saw. Absent: look at the next write.
        self._due: collections.OrderedDict[Key, tuple[int, bool, int | None]] = collections.OrderedDict()
        self._flushes: list[set[Key]] = []  # each waiting flush(): what it still waits for
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._rest_until = 0.0  # while writes arrive, no fold before this (see REST_FACTOR)
        self._last_write = 0.0

    def reset_locks_after_fork(self) -> None:
        # The parent's worker thread does not exist here: a child starts its own when it
        # writes (fork() waited for the parent's worker to leave SQLite: driver.gate_fork).
        self._init_thread_state()

    # -- what writes cost ---------------------------------------------------------------

    def cost(self, content: str) -> int:
        """What a message costs the window: its tokens and the per-message overhead."""
        return self.count(content) + MESSAGE_OVERHEAD

    def bound(self, content: str) -> int:
        """At least ``cost(content)``: with the default counter, the UTF-8 bytes (no piece
        of text counts more than its bytes), which costs a writer 0.2 µs instead of
        counting's ~9; a custom counter is called."""
        if self.policy.count_tokens is None:
            return len(content.encode("utf-8", "surrogatepass")) + MESSAGE_OVERHEAD
        return self.cost(content)

    def _row_cost(self, row_id: int, content: str) -> int:
        """``cost`` of a stored message, remembered by its id (messages are immutable, and
        ids are never reused in an open file): every look reads the window's rows again."""
        with self._costs_lock:
            cost = self._costs.get(row_id)
            if cost is not None:
                self._costs.move_to_end(row_id)
                return cost
        try:
            cost = self.cost(content)
        except Exception as exc:
            raise SummaryError(
                f"the token counter failed on a stored message: {type(exc).__name__}: {exc}"
            ) from exc
        with self._costs_lock:
            self._costs[row_id] = cost
            if len(self._costs) > _COSTS:
                self._costs.popitem(last=False)
        return cost

    # -- control ----------------------------------------------------------------------

    def written(self, writes: dict[Key, list[tuple[str, int]]]) -> None:
        """Messages were just stored (committed): the (content, created_us) written to each
        conversation. Never raises: the write is done, and a caller retrying it would
        store it twice."""
        self.noted(self.measure(writes))

    def measure(self, writes: dict[Key, list[tuple[str, int]]]) -> dict[Key, Written]:
        """At least the tokens written to each conversation (``bound``; -1 where the token
        counter failed: a look will report it), and the oldest time written. Never raises."""
        measured: dict[Key, Written] = {}
        for key, messages in writes.items():
            oldest = min(created_us for _, created_us in messages)
            try:
                measured[key] = Written(sum(self.bound(c) for c, _ in messages), oldest)
            except Exception as exc:  # noqa: BLE001 - see the docstring
                log.warning("localmem: the token counter failed on a message of %r (%s: %s); "
                            "its summary will say so", key[1], type(exc).__name__, exc)
                measured[key] = Written(-1, oldest)
        return measured

    def noted(self, writes: dict[Key, Written]) -> None:
        """``note`` each conversation of ``measure``'s answer."""
        for key, written in writes.items():
            self.note(*key, written.tokens, oldest_us=written.oldest_us)

    def note(self, owner_id: str, conversation_id: str, tokens: int, *, oldest_us: int | None = None) -> None:
        """``tokens`` (at least; -1: unknown) were written to the conversation, the oldest
        at ``oldest_us``: look if they may have pushed ``fold_tokens`` out of its window.
        A write older than the newest message of the last look may land beyond the window
        directly: that is a look too."""
        key = (owner_id, conversation_id)
        with self._cond:
            self._last_write = time.monotonic()
            due, _, newest = self._due.pop(key, (0, False, None))
            due -= tokens
            backdated = oldest_us is not None and newest is not None and oldest_us < newest
            if due > 0 and tokens >= 0 and not backdated:
                self._remember_due(key, due, clean=False, newest_us=newest)
                return
        self.request(owner_id, conversation_id)

    def _remember_due(self, key: Key, due: int, *, clean: bool, newest_us: int | None) -> None:
        """(Under the lock.)"""
        self._due[key] = (due, clean, newest_us)
        self._due.move_to_end(key)
        if len(self._due) > _DUE_KEYS:
            self._due.popitem(last=False)  # forgotten: its next write makes it look

    def request(self, owner_id: str, conversation_id: str) -> None:
        """Look at the conversation soon (SETTLE_SECONDS after the first request)."""
        with self._cond:
            if self._stopping:
                return
            key = (owner_id, conversation_id)
            self._due.pop(key, None)
            if key in self._queue or key in self._failed:
                return
            # Wake the worker only if it waits for nothing: when something is queued it
            # wakes by itself when that is due, and this key is due later. (Each wake-up
            # costs the writer the GIL: waking per write made add() 40 % slower.)
            wake = not self._queue
            self._queue[key] = False
            self._queued_at[key] = time.monotonic()
            if wake or self._thread is None:
                self._start()

    def _start(self) -> bool:
        """(Under the lock) have a worker look at the queue; False if no worker thread
        could be started (a thread limit, the interpreter shutting down): logged, and the
        next request tries again."""
        if self._thread is None:
            thread = threading.Thread(target=self._run, name="localmem-summaries", daemon=True)
            try:
                thread.start()
            except RuntimeError as exc:
                log.error("localmem: could not start the summary worker: %s", exc)
                return False
            self._thread = thread
        self._cond.notify_all()
        return True

    def flush(self, timeout: float | None = None) -> None:
        """Fold all that lies beyond the windows of the conversations this Memory wrote to
        or asked about, however little, and wait for it (writes that keep arriving meanwhile
        are not waited for). A conversation whose fold failed is retried at once; this raises
        ``SummaryError`` if it fails again (after the others are done), and
        ``TimeoutError`` after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._cond:
            wanted = {key for key, (_, clean, _) in self._due.items() if not clean}
            wanted |= set(self._queue) | set(self._failed)
            if self._current is not None:
                wanted.add(self._current[0])  # folded again, completely, after this fold
            for key in wanted:
                self._failed.pop(key, None)
                self._due.pop(key, None)
                self._errors.pop(key, None)
                self._queue[key] = True
                self._queued_at.setdefault(key, 0.0)
            waiting = set(wanted)
            if waiting and not self._start():
                raise SummaryError("the summary worker could not be started (see the log); "
                                   "fold_summary() folds a conversation in this thread")
            self._flushes.append(waiting)
            try:
                done = self._cond.wait_for(
                    lambda: self._stopping or not waiting,
                    timeout=None if deadline is None else max(0.0, deadline - time.monotonic()),
                )
            finally:
                self._flushes.remove(waiting)
            errors = [self._errors[key] for key in wanted if key in self._errors]
        if self._stopping:
            raise ClosedError("the Memory was closed while flush() waited for summaries")
        if not done:
            raise TimeoutError(f"summaries still being folded after {timeout} s")
        if errors:
            more = f" (and {len(errors) - 1} more conversations)" if len(errors) > 1 else ""
            raise SummaryError(f"{errors[0]}{more}") from errors[0].__cause__

    def close(self, timeout: float = 10.0) -> None:
        """Stop after the current fold (waiting at most ``timeout``: a summariser that
        calls an LLM may be slow); what is left is found again by the next write."""
        driver.stop_worker(self, timeout)

    # -- the worker -------------------------------------------------------------------

    def _run(self) -> None:
        try:
            self._work()
        finally:
            with self._cond:  # however it ended, the next request starts a new worker
                if self._thread is threading.current_thread():
                    self._thread = None
                if self._current is not None:  # (a bug above: have flush() say so, not wait)
                    self._finished(self._current, SummaryError("the summary worker stopped unexpectedly"))
                self._cond.notify_all()

    def _work(self) -> None:
        while True:
            with self._cond:
                while True:
                    if self._stopping:
                        return
                    key, wait = self._next()
                    if key is not None:
                        break
                    self._cond.wait(wait)  # (None: until notified)
                complete = self._queue.pop(key)
                self._queued_at.pop(key, None)
                self._current = (key, complete)
            cpu = time.thread_time()
            error: SummaryError | None = None
            try:
                self._fold_logged(key, complete=complete)
            except BaseException as exc:  # noqa: BLE001 - kept for flush(); the fold is retried
                error = exc if isinstance(exc, SummaryError) else SummaryError(
                    f"folding {key[1]!r} into its summary failed: {type(exc).__name__}: {exc}")
                if error is not exc:
                    error.__cause__ = exc
            with self._cond:
                self._finished((key, complete), error)
                now = time.monotonic()
                if not self._flushes and now - self._last_write < SETTLE_SECONDS:
                    # Writes are arriving: leave them the CPU (and the GIL) for a while.
                    self._rest_until = now + (time.thread_time() - cpu) * REST_FACTOR
                self._cond.notify_all()

    def _finished(self, current: tuple[Key, bool], error: SummaryError | None) -> None:
        """(Under the lock) a fold ended."""
        key, complete = current
        self._current = None
        if complete:
            for waiting in self._flushes:
                waiting.discard(key)
        if error is None:
            self._errors.pop(key, None)
            self._attempts.pop(key, None)
            return
        self._errors[key] = error
        attempts = self._attempts[key] = self._attempts.get(key, 0) + 1
        requeued = self._queue.pop(key, False)  # asked again during the fold: one retry serves both
        self._queued_at.pop(key, None)
        if requeued:  # a flush() asked during a background fold: it retries at once, not after the back-off
            self._queue[key] = True
            self._queued_at[key] = 0.0
            return
        self._failed[key] = (time.monotonic() + min(60.0, 2.0 ** (attempts - 1)), complete)

    def _next(self) -> tuple[Key | None, float | None]:
        """(Under the lock) the conversation to fold now, else how long until one is due
        (None: nothing is queued). A conversation is due once it has settled
        (SETTLE_SECONDS) and the worker's rest is over, or at once when flush() asked;
        a failed one once its back-off has passed."""
        now = time.monotonic()
        wait: float | None = None
        for key, (retry_at, complete) in list(self._failed.items()):
            if retry_at <= now:  # back in the queue
                del self._failed[key]
                self._queue[key] = self._queue.get(key, False) or complete
                self._queued_at.setdefault(key, 0.0)
            else:
                wait = retry_at - now if wait is None else min(wait, retry_at - now)
        if not self._queue:
            return None, wait
        key, complete = next(iter(self._queue.items()))
        if complete:
            return key, 0.0
        due = self._queued_at.get(key, 0.0) + SETTLE_SECONDS
        if not self._flushes and now - self._last_write < SETTLE_SECONDS:
            due = max(due, min(self._rest_until, self._last_write + SETTLE_SECONDS))
        if due <= now:
            return key, 0.0
        return None, due - now if wait is None else min(wait, due - now)

    def _fold_logged(self, key: Key, *, complete: bool) -> None:
        try:
            folded = self.fold(*key, complete=complete)
        except ClosedError:
            if self._stopping:
                return
            raise
        except SummaryError as exc:
            log.error("localmem: %s (retried; flush() raises it)", exc)
            raise
        except LocalMemError as exc:
            log.warning("localmem: folding %r into its summary failed: %s (retried)", key[1], exc)
            raise
        if folded:
            log.debug("folded %d messages of %r into its summary", folded, key[1])

    # -- folding ------------------------------------------------------------------------

    def fold(self, owner_id: str, conversation_id: str, *, complete: bool = False) -> int:
        """Fold what lies beyond the window of one conversation, now, in this thread: once
        ``fold_tokens`` do, or anything with ``complete``. Returns how many messages."""
        threshold = 1 if complete else self.policy.fold_tokens
        key = (owner_id, conversation_id)
        total = 0
        while not self._stopping:
            summary = self._db(self._store.summary, owner_id, conversation_id)
            mark = NO_MARK if summary is None else (summary.through_us, summary.through_id)
            look = self._look(owner_id, conversation_id, mark)
            if look.edge is None or look.beyond < threshold:
                with self._cond:
                    self._after_look(key, look)
                return total
            chunk = self._chunk(owner_id, conversation_id, mark, look.edge)
            if not chunk:
                continue  # the edge was deleted meanwhile: look again
            messages = [row_to_message(row) for _, row in chunk]
            text = self._summarize_checked(summary.text if summary else "", messages, conversation_id)
            last_id, last_row = chunk[-1]
            saved = self._db(
                self._store.save_summary,
                owner_id, conversation_id, expected_version=0 if summary is None else summary.version,
                text=text, after=mark, through=(last_row.created_us, last_id),
                ids=[row_id for row_id, _ in chunk],
                folded=(summary.folded if summary else 0) + len(chunk), summarizer=self.name,
            )
            if saved:
                total += len(chunk)
            # else another folder, a delete or a backdated write came first: read again
        return total

    def _after_look(self, key: Key, look: _Look) -> None:
        """(Under the lock) remember how many tokens the conversation may take before a
        look is worth it: the fewest that can push ``fold_tokens - beyond`` out of the
        window. The window is counted in whole messages, so a short write can push a long
        message out: the writes must first fill the free room, then push out the oldest
        messages, and enough of those must go (newest first: ``window``)."""
        if not look.rows:
            self._due.pop(key, None)  # nothing to fold (or no such conversation): look when written to
            return
        need = self.policy.fold_tokens - look.beyond
        free = max(0, self.policy.window_tokens - sum(look.window))
        pushed = 0  # the oldest messages' tokens that will go first
        due = free + sum(look.window) + 1  # (all of them would not be enough)
        for i in range(len(look.window) - 1, -1, -1):
            if pushed + look.window[i] >= need:
                due = free + pushed + 1  # the writes must exceed the room and the messages after it
                break
            pushed += look.window[i]
        # Writes of more than window_tokens can leave messages of their own beyond the
        # window, whatever the window held (it may hold one message longer than itself).
        due = min(due, self.policy.window_tokens + 1)
        self._remember_due(key, due, clean=look.beyond == 0, newest_us=look.newest_us)

    def _look(self, owner_id: str, conversation_id: str, mark: tuple[int, int]) -> _Look:
        """Read the unsummarised messages newest first: the window (``window_tokens``; the
        newest message is always in it, however long), then what lies beyond."""
        used = beyond = 0
        window: list[int] = []
        edge: tuple[int, int] | None = None
        before: tuple[int, int] | None = None
        any_rows = False
        newest: int | None = None
        while True:
            rows = self._db(
                self._store.rows_after, owner_id, conversation_id, mark, before=before,
                newest_first=True, limit=_PAGE,
            )
            for row_id, row in rows:
                any_rows = True
                if newest is None:
                    newest = row.created_us
                cost = self._row_cost(row_id, row.content)
                if edge is None and (not window or used + cost <= self.policy.window_tokens):
                    used += cost
                    window.append(cost)
                    continue
                if edge is None:
                    edge = (row.created_us, row_id)
                beyond += cost
                if beyond >= self.policy.fold_tokens:
                    return _Look(edge, beyond, window, True, newest)
            if len(rows) < _PAGE:
                return _Look(edge, beyond, window, any_rows, newest)
            before = (rows[-1][1].created_us, rows[-1][0])

    def _chunk(self, owner_id: str, conversation_id: str, mark: tuple[int, int], edge: tuple[int, int]) -> list[Any]:
        """The oldest unsummarised messages, up to ``edge`` and ``chunk_tokens`` (at least one)."""
        chunk: list[Any] = []
        used = 0
        after = mark
        while True:
            rows = self._db(
                self._store.rows_after, owner_id, conversation_id, after, newest_first=False, limit=_PAGE
            )
            for row_id, row in rows:
                if (row.created_us, row_id) > edge:
                    return chunk
                cost = self._row_cost(row_id, row.content)
                if chunk and used + cost > self.policy.chunk_tokens:
                    return chunk
                chunk.append((row_id, row))
                used += cost
            if len(rows) < _PAGE:
                return chunk
            after = (rows[-1][1].created_us, rows[-1][0])

    def _db(self, call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        """A store call, under the gate fork() waits for (the summariser runs outside it)."""
        with self._gate:
            return call(*args, **kwargs)

    def _summarize_checked(self, previous: str, messages: list[Message], conversation_id: str) -> str:
        try:
            text = self._summarize(previous, messages)
        except Exception as exc:
            raise SummaryError(
                f"the summariser {self.name} failed on {len(messages)} messages of {conversation_id!r}: "
                f"{type(exc).__name__}: {exc}"
            ) from exc
        if not isinstance(text, str):
            raise SummaryError(
                f"the summariser {self.name} returned a {type(text).__name__}, not a str, "
                f"for {len(messages)} messages of {conversation_id!r}"
            )
        return text


__all__ = ["Folder", "Summarizer", "SummaryPolicy", "summarizer_name"]
