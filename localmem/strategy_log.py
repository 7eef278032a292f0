"""The strategy log: one entry per ``get_memory`` call, kept for analytics and for the
automatic selector's per-owner pattern.

Rules it keeps (a lost log line is acceptable; a slower or failed read is not):

* ``append()`` is all a read pays: an entry goes to an in-process buffer (a few µs), with
  the query's text. A daemon thread writes the buffer out about once a second (at once
  from 512 entries), hashing the queries there, and ``close()`` writes what is left. A
  read never opens, waits for or locks the log file: the owner's habit is read on a
  read-only connection of its own (WAL readers wait for no writer).
* The entries go to a file of their own beside the database (``<path>-log``, WAL), never to
  the database: a log write never waits for, nor holds up, a message writer. Processes
  sharing a database share its log file; SQLite serialises their writes.
* If the log file cannot be opened or written (read-only folder, disk full, held by another
  writer past ``BUSY_MS``), entries wait in the buffer and the writer retries after a
  pause that doubles up to ``MAX_BACKOFF``; past ``MAX_BUFFER`` the oldest are dropped
  and counted (``dropped``), and one warning is logged per minute at most. Nothing of it
  reaches the caller of ``get_memory``.
* ``read_only=True`` (a read-only Memory's log): nothing is appended or written, ever
  (``append`` drops the entry; a write raises ``ReadOnlyError``); an existing log is still
  read, so ``strategy_stats``, ``analytics`` and the selector's per-owner pattern see what
  read-write Memories logged. No log file reads as an empty log.
* Entries are stored by columns, in batches of up to ``BATCH_ROWS`` (one SQLite row per
  batch: a numpy structured array and a JSON list of each string column's distinct
  values), so analytics over a million entries reads a few hundred rows, not a million.
  Each write adds a batch of what it holds; once ``COMPACT_AT`` batches are not full,
  the next write merges them into full ones (so a write never rewrites a big batch).
* Queries are user content: an entry holds a keyed hash of the query (BLAKE2b, 8 bytes,
  keyed with a random secret of this log file, so equal queries match within the file and
  a guessed text cannot be checked against a hash without the file), and its text (the
  first ``QUERY_CHARS`` characters, as the original design's column) only when the Memory
  was opened with ``log_queries=True``.
* The owner's explicitly chosen strategies are also counted per day (``explicit_choices``):
  the selector's per-owner pattern reads them in one indexed lookup, and never learns from
  its own automatic choices.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import driver
from .errors import ClosedError, LockTimeoutError, ReadOnlyError, StoreError
from .validate import now_us

__all__ = ["BATCH_ROWS", "CHOSEN_BY", "COLUMNS", "LogEntry", "StrategyLog", "log_path"]

log = logging.getLogger(__name__)

BATCH_ROWS = 4096  # entries per stored batch
FLUSH_EVERY = 1.0  # seconds an entry may wait in the buffer
FLUSH_AT = 512  # entries that start a write at once
MAX_BUFFER = 50_000  # entries held while the file cannot be written; then the oldest go
PRUNE_EVERY = 86_400.0  # seconds between retention passes of one process (the first write does one)
BUSY_MS = 200  # how long a log write waits for another process's (it is never a reader's wait)
MAX_BACKOFF = 60.0  # seconds between tries of a log file that keeps failing
COMPACT_AT = 32  # batches that are not full, merged by the next write
QUERY_CHARS = 500  # of a query's text kept with log_queries=True
_US_PER_DAY = 86_400 * 1_000_000
_FORMAT = 1  # the layout of a batch; a batch in another one is skipped when read
CHOSEN_BY = ("caller", "auto")

# The fixed-width columns of a batch, little-endian (one numpy structured array). String
# columns are stored as an index into the batch's list of distinct values (u4 below);
# "none" numbers are NaN (floats) or -1 (ints).
_NUMBERS = np.dtype([
    ("at_us", "<i8"), ("latency_ms", "<f4"), ("selection_ms", "<f4"), ("rerank_ms", "<f4"),
    ("results", "<i4"), ("reranked", "<i4"), ("rerank_dropped", "<i4"), ("cache_hit", "u1"),
    ("query_hash", "<u8"),
    ("owner_id", "<u4"), ("conversation_id", "<u4"), ("strategy", "<u4"), ("chosen_by", "<u4"),
    ("reason", "<u4"), ("query", "<u4"),
])
_STRINGS = ("owner_id", "conversation_id", "strategy", "chosen_by", "reason", "query")
COLUMNS = ("at_us", "owner_id", "conversation_id", "strategy", "chosen_by", "reason", "results",
           "latency_ms", "cache_hit", "selection_ms", "rerank_ms", "reranked", "rerank_dropped",
           "query_hash", "query")

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID""",
    # One row per batch of entries; first_us/last_us bound its entries' times.
    """CREATE TABLE IF NOT EXISTS batches (
        id       INTEGER PRIMARY KEY,
        format   INTEGER NOT NULL,
        rows     INTEGER NOT NULL,
        first_us INTEGER NOT NULL,
        last_us  INTEGER NOT NULL,
        numbers  BLOB NOT NULL,
        strings  TEXT NOT NULL
    )""",
    "CREATE INDEX IF NOT EXISTS batches_by_time ON batches (last_us)",
    """CREATE TABLE IF NOT EXISTS explicit_choices (
        owner_id TEXT NOT NULL,
        day      INTEGER NOT NULL,
        strategy TEXT NOT NULL,
        calls    INTEGER NOT NULL,
        PRIMARY KEY (owner_id, day, strategy)
    ) WITHOUT ROWID""",
)


def log_path(db_path: str) -> str | None:
    """The log file of a database file (None for an in-memory database: its log is too)."""
    if db_path == ":memory:" or db_path.startswith("file::memory:"):
        return None
    return db_path + "-log"


class LogEntry(NamedTuple):  # a NamedTuple: one per read, and a frozen dataclass costs µs to build
    """One ``get_memory`` call. ``strategy`` is the one that ran; ``chosen_by`` is
    ``"caller"`` or ``"auto"``; ``reason`` the selector's rule (auto only). Times in ms;
    the rerank figures are None when the reranker did not run. Appended, ``query`` is the
    caller's query (None: none given) and ``query_hash`` None: the writer sets the hash
    and keeps the text only with ``log_queries=True``."""

    at_us: int
    owner_id: str
    conversation_id: str
    strategy: str
    chosen_by: str
    reason: str | None
    results: int
    latency_ms: float
    cache_hit: bool
    selection_ms: float | None = None
    rerank_ms: float | None = None
    reranked: int | None = None
    rerank_dropped: int | None = None
    query_hash: int | None = None
    query: str | None = None


def _encode(entries: Sequence[LogEntry]) -> tuple[np.ndarray, dict[str, list[Any]]]:
    """Entries as a batch's columns: the numbers, and each string column's distinct values
    (its codes index those)."""
    numbers = np.zeros(len(entries), dtype=_NUMBERS)
    numbers["at_us"] = [e.at_us for e in entries]
    numbers["latency_ms"] = [e.latency_ms for e in entries]
    numbers["selection_ms"] = [np.nan if e.selection_ms is None else e.selection_ms for e in entries]
    numbers["rerank_ms"] = [np.nan if e.rerank_ms is None else e.rerank_ms for e in entries]
    numbers["results"] = [e.results for e in entries]
    numbers["reranked"] = [-1 if e.reranked is None else e.reranked for e in entries]
    numbers["rerank_dropped"] = [-1 if e.rerank_dropped is None else e.rerank_dropped for e in entries]
    numbers["cache_hit"] = [e.cache_hit for e in entries]
    numbers["query_hash"] = [e.query_hash or 0 for e in entries]
    strings: dict[str, list[Any]] = {}
    for name in _STRINGS:
        codes: dict[Any, int] = {}
        numbers[name] = [codes.setdefault(getattr(e, name), len(codes)) for e in entries]
        strings[name] = list(codes)
    return numbers, strings


def _decode(numbers: bytes, strings: str) -> list[LogEntry]:
    """A stored batch back as entries (to merge it with others, or rewrite it without some)."""
    array = np.frombuffer(numbers, dtype=_NUMBERS)
    values = json.loads(strings)
    out = []
    for row in array.tolist():  # tuples in _NUMBERS' field order
        (at_us, latency, selection, rerank_ms, results, reranked, dropped, hit, qhash,
         owner, conv, strategy, chosen_by, reason, query) = row
        out.append(LogEntry(
            at_us, values["owner_id"][owner], values["conversation_id"][conv], values["strategy"][strategy],
            values["chosen_by"][chosen_by], values["reason"][reason], results, latency, bool(hit),
            None if math.isnan(selection) else selection, None if math.isnan(rerank_ms) else rerank_ms,
            None if reranked < 0 else reranked, None if dropped < 0 else dropped, qhash or None,
            values["query"][query],
        ))
    return out


class StrategyLog:
    """The log of one database (see the module docstring). ``path`` None: in memory.
    ``keep_queries``: store the query text too, not only its hash. ``read_only``: read an
    existing log, never write one."""

    def __init__(self, path: str | None, *, keep_queries: bool = False, retention_days: float | None = 90.0,
                 read_only: bool = False):
        self.path = path
        self.read_only = read_only
        self.keep_queries = keep_queries
        self.retention_days = retention_days
        self._pruned_at: float | None = None  # monotonic time of the last retention pass
        self.dropped = 0  # entries lost: past MAX_BUFFER, or unwritable at close()
        self._buffer: deque[LogEntry] = deque()
        self._lock = threading.Lock()  # the buffer
        self._file_lock = threading.Lock()  # the write connection (the writer's, flush(), prune()...)
        self._read_lock = threading.Lock()  # the read connection
        self._wake = threading.Condition(self._lock)
        self._conn: Any = None
        self._reader: Any = None
        self._tidy = False  # the reader made the -wal and -shm it reads through (driver.tidy_wal)
        self._key: bytes | None = None
        self._thread: threading.Thread | None = None
        self._backoff = 0.0  # seconds to wait before the next try, after a failed write
        self._closed = False  # no more entries taken
        self._finished = False  # closed, and the file too
        self._warned_at = 0.0
        self._pid = os.getpid()
        driver.reset_locks_after_fork(self)

    def reset_locks_after_fork(self) -> None:
        # The child neither writes its parent's buffer (the parent does) nor uses its
        # connections or thread (gone): it starts afresh on first use.
        self._lock = threading.Lock()
        self._file_lock = threading.Lock()
        self._read_lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._buffer = deque()
        self._thread = None
        for conn in (self._conn, self._reader):
            if conn is not None:
                driver.abandon(conn)
        self._conn = self._reader = None
        self._pid = os.getpid()

    # -- the read path ----------------------------------------------------------------

    def append(self, entry: LogEntry) -> None:
        """Queue one entry; never raises, never touches the file (read-only: dropped)."""
        if self.read_only:
            return
        with self._lock:
            if self._closed:
                return
            self._buffer.append(entry)
            if len(self._buffer) > MAX_BUFFER:
                self._buffer.popleft()
                self.dropped += 1
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="localmem-strategy-log", daemon=True)
                self._thread.start()
            elif len(self._buffer) in (1, FLUSH_AT):  # the first one starts the clock
                self._wake.notify()

    def _run(self) -> None:
        """The writer: sleeps while the buffer is empty, then lets entries gather for up to
        ``FLUSH_EVERY`` seconds (or until ``FLUSH_AT`` of them) and writes them; after a
        failed write it waits ``_backoff`` first, whatever the buffer holds."""
        while True:
            with self._lock:
                while not self._buffer and not self._closed:
                    self._wake.wait()
                if self._backoff:
                    deadline = time.monotonic() + self._backoff
                    while not self._closed and (left := deadline - time.monotonic()) > 0:
                        self._wake.wait(left)
                elif len(self._buffer) < FLUSH_AT and not self._closed:
                    self._wake.wait(FLUSH_EVERY)
                if self._closed:
                    return
            self.flush()

    # -- writing ----------------------------------------------------------------------

    def flush(self) -> bool:
        """Write the buffer out now; False (entries kept for the next try) if the file
        could not take them."""
        with self._file_lock:
            with self._lock:
                entries, self._buffer = list(self._buffer), deque()
            if not entries:
                return True
            try:
                self._write(entries)
            except Exception as exc:  # noqa: BLE001 - a log must never fail a read
                with self._lock:
                    self._buffer.extendleft(reversed(entries))
                    while len(self._buffer) > MAX_BUFFER:
                        self._buffer.popleft()
                        self.dropped += 1
                self._backoff = min(MAX_BACKOFF, max(FLUSH_EVERY, self._backoff * 2))
                self._warn(f"could not write the strategy log {self.path or ':memory:'}: {exc}")
                return False
            self._backoff = 0.0
        if self.retention_days is not None and (
                self._pruned_at is None or time.monotonic() - self._pruned_at >= PRUNE_EVERY):
            self._pruned_at = time.monotonic()
            try:
                self.prune(now_us() - int(self.retention_days * _US_PER_DAY))
            except Exception as exc:  # noqa: BLE001 - retention is retried next time
                self._warn(f"could not apply the strategy log's retention to {self.path}: {exc}")
        return True

    def write(self, entries: Sequence[LogEntry]) -> None:
        """Store ``entries`` now, in the caller's thread (raises what the file raises):
        for bulk loads, such as benchmarks/strategy_log.py's million entries."""
        with self._file_lock:
            self._write(list(entries))

    def _warn(self, message: str) -> None:
        now = time.monotonic()
        if now - self._warned_at >= 60 or not self._warned_at:
            self._warned_at = now
            log.warning("%s (entries wait in memory; %d dropped so far)", message, self.dropped)

    def _connection(self) -> Any:
        """The log file's write connection (opened, and the schema made, on first use).
        Caller holds ``_file_lock``; only writes run here."""
        if self._conn is None:
            if self._finished:
                raise ClosedError("the strategy log is closed")
            if self.read_only:
                raise ReadOnlyError(f"the strategy log {self.path} is open read-only: nothing was written")
            conn = driver.dbapi().connect(self.path or ":memory:", isolation_level=None, check_same_thread=False)
            try:
                conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
                conn.execute("PRAGMA secure_delete = ON")  # forgotten entries leave no bytes
                if self.path is not None:
                    conn.execute("PRAGMA journal_mode = WAL")
                    conn.execute("PRAGMA synchronous = NORMAL")  # a lost line is acceptable
                with _transaction(conn):
                    for statement in _SCHEMA:
                        conn.execute(statement)
                    conn.execute("INSERT OR IGNORE INTO meta VALUES ('hash_key', ?)", (secrets.token_hex(16),))
                (value,) = conn.execute("SELECT value FROM meta WHERE key = 'hash_key'").fetchone()
                self._key = bytes.fromhex(value)
            except BaseException:
                conn.close()
                raise
            self._conn = conn
        return self._conn

    def _hashed(self, entries: list[LogEntry]) -> list[LogEntry]:
        """Entries as stored: the query's keyed hash, its text only with ``keep_queries``.
        Caller holds ``_file_lock`` and has opened the connection (which read the key)."""
        key = self._key
        assert key is not None
        out = []
        for e in entries:
            if e.query is not None and e.query_hash is None:
                digest = hashlib.blake2b(e.query.encode("utf-8", "surrogatepass"), digest_size=8, key=key).digest()
                e = e._replace(query_hash=int.from_bytes(digest, "little") or 1,
                               query=e.query[:QUERY_CHARS] if self.keep_queries else None)
            elif not self.keep_queries and e.query is not None:
                e = e._replace(query=None)
            out.append(e)
        return out

    def _write(self, entries: list[LogEntry]) -> None:
        """Add ``entries`` as new batches and count the explicit choices among them; merge
        the batches that are not full once there are ``COMPACT_AT``. One transaction."""
        conn = self._connection()
        entries = self._hashed(entries)
        explicit: dict[tuple[str, int, str], int] = {}
        for e in entries:
            if e.chosen_by == "caller":
                key = (e.owner_id, e.at_us // _US_PER_DAY, e.strategy)
                explicit[key] = explicit.get(key, 0) + 1
        with _transaction(conn):
            for start in range(0, len(entries), BATCH_ROWS):
                self._store_batch(conn, *_encode(entries[start:start + BATCH_ROWS]), None)
            conn.executemany(
                "INSERT INTO explicit_choices VALUES (?, ?, ?, ?)"
                " ON CONFLICT DO UPDATE SET calls = calls + excluded.calls",
                [(*key, n) for key, n in explicit.items()],
            )
            small = conn.execute("SELECT id, numbers, strings FROM batches WHERE format = ? AND rows < ?"
                                 " ORDER BY id", (_FORMAT, BATCH_ROWS)).fetchall() \
                if conn.execute("SELECT count(*) FROM batches WHERE format = ? AND rows < ?",
                                (_FORMAT, BATCH_ROWS)).fetchone()[0] >= COMPACT_AT else []
            if small:
                merged = [e for _, numbers, strings in small for e in _decode(numbers, strings)]
                conn.executemany("DELETE FROM batches WHERE id = ?", [(batch_id,) for batch_id, _, _ in small])
                for start in range(0, len(merged), BATCH_ROWS):
                    self._store_batch(conn, *_encode(merged[start:start + BATCH_ROWS]), None)

    @staticmethod
    def _store_batch(conn: Any, numbers: np.ndarray, strings: dict[str, list[Any]], replace_id: int | None) -> None:
        times = numbers["at_us"]
        values = (_FORMAT, len(numbers), int(times.min()), int(times.max()), numbers.tobytes(),
                  json.dumps({"f": _FORMAT, **strings}, ensure_ascii=False))
        if replace_id is None:
            conn.execute("INSERT INTO batches (format, rows, first_us, last_us, numbers, strings)"
                         " VALUES (?, ?, ?, ?, ?, ?)", values)
        else:
            conn.execute("UPDATE batches SET format = ?, rows = ?, first_us = ?, last_us = ?, numbers = ?,"
                         " strings = ? WHERE id = ?", (*values, replace_id))

    # -- reading and removing ---------------------------------------------------------

    def columns(
        self, *, since_us: int | None = None, owner_id: str | None = None, names: Sequence[str] = COLUMNS,
    ) -> dict[str, np.ndarray]:
        """The stored entries from ``since_us`` on (None: all), of one owner or all, as
        one numpy array per name of ``names`` (of ``COLUMNS``; strings as object arrays,
        "none" as NaN or -1, a missing hash as 0). Call ``flush()`` first to include the
        buffer. Reads on the read-only connection; a file it cannot read raises
        ``StoreError``."""
        unknown = set(names) - set(COLUMNS)
        if unknown:
            raise ValueError(f"not columns of the strategy log: {sorted(unknown)}")
        parts: dict[str, list[np.ndarray]] = {name: [] for name in names}
        since = -(2**63) if since_us is None else since_us
        try:
            batches = self._read(
                "SELECT numbers, strings FROM batches WHERE format = ? AND last_us >= ? ORDER BY id",
                (_FORMAT, since))
        except driver.dbapi().Error as exc:
            busy = "locked" in str(exc) or "busy" in str(exc)
            raise (LockTimeoutError if busy else StoreError)(
                f"could not read the strategy log {self.path}: {exc}") from exc
        for numbers, strings in batches:
            array = np.frombuffer(numbers, dtype=_NUMBERS)
            values = json.loads(strings)
            mask = array["at_us"] >= since
            if owner_id is not None:
                try:
                    mask &= array["owner_id"] == values["owner_id"].index(owner_id)
                except ValueError:
                    continue
            if not mask.all():
                array = array[mask]
            if not len(array):
                continue
            for name in names:
                if name in _STRINGS:
                    distinct = np.empty(len(values[name]), dtype=object)
                    distinct[:] = values[name]
                    parts[name].append(distinct[array[name]])
                else:
                    parts[name].append(array[name])
        empty = {name: np.empty(0, dtype=object if name in _STRINGS else _NUMBERS[name]) for name in names}
        return {name: np.concatenate(chunks) if chunks else empty[name] for name, chunks in parts.items()}

    def _read(self, sql: str, args: tuple[Any, ...]) -> list[Any]:
        """Rows of a read, on a read-only connection of its own (in WAL mode a reader waits
        for no writer), never creating the file nor its schema: no file, or no schema
        yet, reads as no rows. An in-memory log reads on its one connection."""
        if self.path is None:
            with self._file_lock:
                return list(self._connection().execute(sql, args).fetchall())
        with self._read_lock:
            if self._reader is None:
                if not os.path.exists(self.path):
                    return []
                made_wal = not os.path.exists(self.path + "-wal")
                conn, immutable = driver.connect_read_only(self.path, vec=False)
                conn.execute(f"PRAGMA busy_timeout = {BUSY_MS}")
                self._reader, self._tidy = conn, made_wal and not immutable
            try:
                return list(self._reader.execute(sql, args).fetchall())
            except driver.dbapi().OperationalError as exc:
                if "no such table" in str(exc):
                    return []  # another process is making the file right now
                raise

    def explicit_counts(self, owner_id: str, since_us: int) -> dict[str, int]:
        """How often ``owner_id`` named each strategy itself (``chosen_by="caller"``)
        since the day of ``since_us``: stored counts plus the buffer's (read in that order:
        an entry written meanwhile may be missed, never counted twice). Never raises nor
        waits for the writer: a log that cannot be read counts only the buffer."""
        counts: dict[str, int] = {}
        try:
            rows = self._read("SELECT strategy, sum(calls) FROM explicit_choices WHERE owner_id = ? AND day >= ?"
                              " GROUP BY strategy", (owner_id, since_us // _US_PER_DAY))
        except Exception as exc:  # noqa: BLE001 - a log must never fail a read
            self._warn(f"could not read the strategy log {self.path}: {exc}")
            rows = []
        for strategy, calls in rows:
            counts[strategy] = counts.get(strategy, 0) + int(calls)
        with self._lock:
            for e in self._buffer:
                if e.chosen_by == "caller" and e.owner_id == owner_id and e.at_us >= since_us:
                    counts[e.strategy] = counts.get(e.strategy, 0) + 1
        return counts

    def prune(self, before_us: int) -> int:
        """Drop the entries older than ``before_us`` (retention); returns how many."""
        with self._file_lock:
            return self._rewrite(lambda e: e.at_us < before_us, "last_us < ?", "first_us < ?", (before_us,),
                                 ("DELETE FROM explicit_choices WHERE day < ?", (before_us // _US_PER_DAY,)))

    def forget(self, owner_id: str | None = None, conversation_id: str | None = None,
               before_us: int | None = None, *, keep_owners: Sequence[str] = ()) -> int:
        """Drop an owner's entries (or one conversation's), or those older than
        ``before_us``, or both; buffered and stored. Returns how many stored ones went.
        Holds the file while it works, so no write in flight can put forgotten entries
        back. The per-day counts of explicit choices go with the owner (only the days
        before ``before_us``, if given). ``keep_owners``: by age alone, these owners'
        entries stay (retention policies of their own)."""
        if owner_id is None:
            if before_us is None:
                raise ValueError("forget needs owner_id, before_us, or both")
            if not keep_owners:
                return self.prune(before_us)
            keep = set(keep_owners)
            marks = ", ".join("?" * len(keep))
            with self._file_lock:
                with self._lock:
                    self._buffer = deque(e for e in self._buffer if e.at_us >= before_us or e.owner_id in keep)
                return self._rewrite(
                    lambda e: e.at_us < before_us and e.owner_id not in keep, None, "first_us < ?", (before_us,),
                    (f"DELETE FROM explicit_choices WHERE day < ? AND owner_id NOT IN ({marks})",
                     (before_us // _US_PER_DAY, *keep)),
                )

        def drop(e: LogEntry) -> bool:
            return _of(e, owner_id, conversation_id) and (before_us is None or e.at_us < before_us)

        with self._file_lock:
            with self._lock:
                self._buffer = deque(e for e in self._buffer if not drop(e))
            also = None
            if conversation_id is None:
                also = ("DELETE FROM explicit_choices WHERE owner_id = ? AND day < ?",
                        (owner_id, 2**62 if before_us is None else before_us // _US_PER_DAY))
            partial, args = ("1", ()) if before_us is None else ("first_us < ?", (before_us,))
            return self._rewrite(drop, None, partial, args, also)

    def checkpoint(self) -> str | None:
        """Copy the log's WAL back and truncate it (after a forget: no old page stays in
        it). None when done, else why not."""
        with self._file_lock:
            if self._finished or (self.path is not None and self._conn is None and not os.path.exists(self.path)):
                return None
            try:
                busy, frames, done = self._connection().execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
            except Exception as exc:  # noqa: BLE001 - reported to the caller, who says so
                return f"strategy log {self.path}: not checkpointed: {exc}"
        if busy:
            return f"strategy log: {frames - done} frames of {self.path}-wal not checkpointed (a reader holds them)"
        return None

    def _rewrite(self, drop: Any, whole: str | None, partial: str, args: tuple[Any, ...],
                 also: tuple[str, tuple[Any, ...]] | None) -> int:
        """Remove the entries ``drop(entry)`` selects: batches matching SQL ``whole``
        go at once; the ones matching ``partial`` are decoded and rewritten without them.
        Caller holds ``_file_lock``."""
        if self.path is not None and self._conn is None and not os.path.exists(self.path):
            return 0
        removed = 0
        conn = self._connection()
        with _transaction(conn):
            if whole is not None:
                removed += conn.execute(f"SELECT coalesce(sum(rows), 0) FROM batches WHERE {whole}",
                                        args).fetchone()[0]
                conn.execute(f"DELETE FROM batches WHERE {whole}", args)
            rows = conn.execute(f"SELECT id, format, numbers, strings FROM batches WHERE {partial}",
                                args).fetchall()
            for batch_id, fmt, numbers, strings in rows:
                if fmt != _FORMAT:
                    continue
                entries = _decode(numbers, strings)
                kept = [e for e in entries if not drop(e)]
                if len(kept) == len(entries):
                    continue
                removed += len(entries) - len(kept)
                if kept:
                    self._store_batch(conn, *_encode(kept), batch_id)
                else:
                    conn.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
            if also is not None:
                conn.execute(*also)
        return removed

    def close(self) -> None:
        """Write what is buffered (waiting at most ``BUSY_MS`` for the file) and stop;
        entries that cannot be written then are counted in ``dropped``, with a warning."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._wake.notify()
            thread = self._thread
        if thread is not None and thread is not threading.current_thread() and self._pid == os.getpid():
            thread.join()
        if self._pid == os.getpid():
            with self._lock:
                entries, self._buffer = list(self._buffer), deque()
            with self._file_lock:
                if entries:
                    try:
                        self._write(entries)
                    except Exception as exc:  # noqa: BLE001 - a lost log line is acceptable; said
                        self.dropped += len(entries)
                        self._warned_at = 0.0
                        self._warn(f"could not write the strategy log {self.path or ':memory:'} at close: {exc}")
                wrote = self._conn is not None
                for conn in (self._reader, self._conn):  # the writer last: its close removes -wal/-shm
                    if conn is not None:
                        with contextlib.suppress(Exception):
                            conn.close()
                self._conn = self._reader = None
                self._finished = True
                if self._tidy and not wrote and self.path is not None:
                    driver.tidy_wal(self.path)


def _of(entry: LogEntry, owner_id: str, conversation_id: str | None) -> bool:
    return entry.owner_id == owner_id and (conversation_id is None or entry.conversation_id == conversation_id)


@contextlib.contextmanager
def _transaction(conn: Any) -> Iterator[None]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        with contextlib.suppress(Exception):
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
