"""The SQLite store: one file holding messages, their FTS5 index, conversations and meta.

Rules this module keeps (see DESIGN.md):

* WAL, ``synchronous=NORMAL`` (``durability="full"``: ``FULL``), ``busy_timeout``.
* Every write is one ``BEGIN IMMEDIATE`` transaction, retried until ``lock_timeout``, then
  ``LockTimeoutError``. A message, its FTS5 row and its conversation's version are written by
  the same transaction, so no crash can separate them.
* The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes a file from
  version ``i`` to ``i + 1``, in one transaction. A file from a newer localmem is refused.
* Messages are immutable. Each conversation, keyed by ``(owner_id, conversation_id)``, has a
  ``version`` that every insert or delete of one of its messages bumps: caches compare it to
  know whether what they hold is current.
* A raw driver error never escapes: ``_mapped_errors`` turns it into a ``StoreError``.
"""

from __future__ import annotations

import contextlib
import json
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from . import driver
from .errors import (
    ClosedError,
    CorruptDatabaseError,
    InvalidInputError,
    LockTimeoutError,
    ModelMismatchError,
    StorageFullError,
    StoreError,
)
from .records import Message
from .validate import NewMessage, from_utc_us, now_us

# The message just before (cmp "<", order DESC) or just after (">", ASC) message ``m`` in
# its conversation, by (created_at, id); ``col`` picks what to return. Uses the
# messages_by_conversation index.
_NEIGHBOUR = (
    "(SELECT n.{col} FROM messages n WHERE n.conversation_id = {m}.conversation_id"
    " AND n.owner_id = {m}.owner_id AND (n.created_at, n.id) {cmp} ({m}.created_at, {m}.id)"
    " ORDER BY n.created_at {order}, n.id {order} LIMIT 1)"
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: messages, FTS5, conversations, meta.
    (
        """CREATE TABLE meta (
            key   TEXT PRIMARY KEY,
            value TEXT NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE messages (
            id              INTEGER PRIMARY KEY AUTOINCREMENT,
            msg_id          TEXT NOT NULL UNIQUE,
            conversation_id TEXT NOT NULL,
            owner_id        TEXT NOT NULL,
            feature         TEXT,
            role            TEXT NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
            content         TEXT NOT NULL,
            metadata        TEXT,
            created_at      INTEGER NOT NULL  -- microseconds since 1970-01-01 UTC
        )""",
        "CREATE INDEX messages_by_conversation ON messages (conversation_id, owner_id, created_at, id)",
        "CREATE INDEX messages_by_owner ON messages (owner_id, created_at, id)",
        """CREATE TABLE conversations (
            owner_id        TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            version         INTEGER NOT NULL,
            message_count   INTEGER NOT NULL,
            PRIMARY KEY (owner_id, conversation_id)
        ) WITHOUT ROWID""",
        # External-content FTS5 over messages.content. remove_diacritics 2 folds accents,
        # so "coração" matches "coracao" and the reverse, in Portuguese and English alike.
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, content='messages', content_rowid='id',
            tokenize='unicode61 remove_diacritics 2'
        )""",
        # The FTS5 row is written by Store.insert/insert_many in the same transaction, not
        # by this trigger: a trigger runs under a savepoint and FTS5 flushes its pending
        # terms to a new segment at every savepoint, which made bulk inserts 5x slower.
        """CREATE TRIGGER messages_after_insert AFTER INSERT ON messages BEGIN
            INSERT INTO conversations (owner_id, conversation_id, version, message_count)
                VALUES (new.owner_id, new.conversation_id, 1, 1)
                ON CONFLICT DO UPDATE SET version = version + 1,
                                          message_count = message_count + 1;
        END""",
        # Conversation rows are never deleted, so a version never repeats.
        """CREATE TRIGGER messages_after_delete AFTER DELETE ON messages BEGIN
            INSERT INTO messages_fts (messages_fts, rowid, content)
                VALUES ('delete', old.id, old.content);
            UPDATE conversations SET version = version + 1, message_count = message_count - 1
                WHERE owner_id = old.owner_id AND conversation_id = old.conversation_id;
        END""",
        """CREATE TRIGGER messages_are_immutable BEFORE UPDATE ON messages BEGIN
            SELECT RAISE(ABORT, 'localmem messages are immutable');
        END""",
    ),
    # 1 -> 2: the queue of messages still waiting for their vector. The vector table itself
    # (vec0) is created when the first vector is written, since its dimension comes from
    # the model: see Store.write_vectors.
    (
        "CREATE TABLE pending_vectors (id INTEGER PRIMARY KEY)",
        "INSERT INTO pending_vectors (id) SELECT id FROM messages",
        "DROP TRIGGER messages_after_insert",
        # A plain-table insert in a trigger costs little (unlike FTS5, see above), and
        # here no write path can forget it.
        """CREATE TRIGGER messages_after_insert AFTER INSERT ON messages BEGIN
            INSERT INTO conversations (owner_id, conversation_id, version, message_count)
                VALUES (new.owner_id, new.conversation_id, 1, 1)
                ON CONFLICT DO UPDATE SET version = version + 1,
                                          message_count = message_count + 1;
            INSERT INTO pending_vectors (id) VALUES (new.id);
        END""",
        """CREATE TRIGGER messages_after_delete_pending AFTER DELETE ON messages BEGIN
            DELETE FROM pending_vectors WHERE id = old.id;
        END""",
        # The keyword index is rebuilt with two changes measured on LoCoMo
        # (benchmarks/locomo.py, five conversations):
        # * the Porter stemmer ("recommendations" finds "recommend"): BM25 recall@10
        #   0.53 -> 0.57; accent folding stays;
        # * a second column, ``prev``, holding the previous message of the conversation,
        #   ranked at half weight (bm25(messages_fts, 1.0, 0.5)): a reply ("Yes, last
        #   May!") is found by the words of the question it answers. Fused recall@10
        #   0.644 -> 0.711, no embedding cost.
        # It stores its own text (no longer external-content), so a row can be updated
        # when its neighbour changes and deleted without replaying old values.
        "DROP TRIGGER messages_after_delete",
        "DROP TABLE messages_fts",
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, prev, tokenize='porter unicode61 remove_diacritics 2'
        )""",
        """INSERT INTO messages_fts (rowid, content, prev)
            SELECT id, content, lag(content) OVER (
                PARTITION BY owner_id, conversation_id ORDER BY created_at, id)
            FROM messages""",
        # A deleted message's successor takes its predecessor as ``prev``. (This runs
        # AFTER the delete, so neither lookup can find the deleted row itself.)
        f"""CREATE TRIGGER messages_after_delete AFTER DELETE ON messages BEGIN
            UPDATE messages_fts SET prev = {_NEIGHBOUR.format(m="old", cmp="<", order="DESC", col="content")}
                WHERE rowid = {_NEIGHBOUR.format(m="old", cmp=">", order="ASC", col="id")};
            DELETE FROM messages_fts WHERE rowid = old.id;
            UPDATE conversations SET version = version + 1, message_count = message_count - 1
                WHERE owner_id = old.owner_id AND conversation_id = old.conversation_id;
        END""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)

# The vector table: one row per embedded message, rowid = messages.id. owner_id is the
# partition key (every search is inside one owner), conversation_id and created_at are
# metadata columns so their filters run inside the KNN scan. ``embedding`` holds the float
# vector (cosine distance: exact search, and the re-scoring of coarse candidates);
# ``coarse`` its sign bits, scanned first when a scope is large (see Store.knn).
_VECTOR_TABLE = """CREATE VIRTUAL TABLE message_vectors USING vec0(
    owner_id text partition key,
    conversation_id text,
    created_at integer,
    embedding float[{dim}] distance_metric=cosine{coarse}
)"""
_COARSE = "coarse bit["  # the sign-bit column's declaration, up to its dimension
_VECTOR_DELETE_TRIGGER = """CREATE TRIGGER messages_after_delete_vector AFTER DELETE ON messages
BEGIN
    DELETE FROM message_vectors WHERE rowid = old.id;
END"""

_COLUMNS = "msg_id, conversation_id, owner_id, role, content, created_at, feature, metadata"
_INSERT = (
    "INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at,"
    " feature, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Index the messages with id > ?, each with its predecessor as ``prev``.
_INSERT_FTS = (
    "INSERT INTO messages_fts (rowid, content, prev) SELECT m.id, m.content, "
    + _NEIGHBOUR.format(m="m", cmp="<", order="DESC", col="content")
    + " FROM messages m WHERE m.id > ?"
)
# New messages (id > ?) whose successor is an older message: that one's ``prev`` is now the
# new message (a backdated insert). Append-only writes find none.
_DISPLACED = (
    "SELECT s.id, m.content FROM messages m JOIN messages s ON s.id = "
    + _NEIGHBOUR.format(m="m", cmp=">", order="ASC", col="id")
    + " WHERE m.id > ?1 AND s.id <= ?1"
)
_MAX_PARAMS = 500  # per IN (...) lookup, well under SQLite's limit
_MAX_K = 4096  # sqlite-vec's largest k
_MMAP_SIZE = 1 << 30  # bytes of the file read through mmap (SQLite caps it at its own limit)

# Vector search: scopes up to EXACT_SEARCH_MAX messages get an exact float scan; larger ones
# a sign-bit scan for OVERSAMPLE x k candidates (at least MIN_CANDIDATES), re-scored exactly.
# sqlite-vec's top-k selection costs n x k, so candidates are the price: 160 of 100k
# vectors take ~17 ms and give recall@10 0.92 against the exact ranking on LoCoMo-derived
# vectors (benchmarks/semantic_speed.py; see the README's speed table).
EXACT_SEARCH_MAX = 5_000
OVERSAMPLE = 2
MIN_CANDIDATES = 160

# SQLite primary result codes (https://sqlite.org/rescode.html).
_BUSY, _LOCKED, _CORRUPT, _FULL, _NOTADB = 5, 6, 11, 13, 26


def row_to_message(row: Sequence[Any]) -> Message:
    """A ``messages`` row in ``_COLUMNS`` order as a Message."""
    return Message(
        msg_id=row[0],
        conversation_id=row[1],
        owner_id=row[2],
        role=row[3],
        content=row[4],
        created_at=from_utc_us(row[5]),
        feature=row[6],
        metadata=None if row[7] is None else json.loads(row[7]),
    )


def _params(m: NewMessage) -> tuple[Any, ...]:
    return (
        m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, m.created_us,
        m.feature, m.metadata_json,
    )


def _same(stored: Sequence[Any], new: NewMessage) -> bool:
    """Is ``new`` a retry of the stored row? created_at counts only if the caller gave it."""
    same = (
        stored[1] == new.conversation_id
        and stored[2] == new.owner_id
        and stored[3] == new.role
        and stored[4] == new.content
        and stored[6] == new.feature
        and stored[7] == new.metadata_json
    )
    return same and (not new.explicit_created_at or stored[5] == new.created_us)


def _conflict(new: NewMessage) -> InvalidInputError:
    return InvalidInputError(
        f"msg_id {new.msg_id!r} already exists with different fields; a msg_id names one message"
    )


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_busy(exc: BaseException) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    return "locked" in str(exc).lower()


def map_error(exc: Exception, path: str) -> StoreError:
    """The StoreError that stands for a driver error."""
    code = _error_code(exc)
    text = str(exc).lower()
    if _is_busy(exc):
        return LockTimeoutError(f"{path}: the database stayed locked by another connection ({exc})")
    if code == _FULL or "disk is full" in text:
        return StorageFullError(f"{path}: the disk is full ({exc})")
    if code in (_CORRUPT, _NOTADB) or "not a database" in text or "malformed" in text:
        return CorruptDatabaseError(f"{path}: not a usable localmem database ({exc})")
    return StoreError(f"{path}: {exc}")


def same_model(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Same vector space: same name and dim, and same file hash when both are known."""
    if a.get("name") != b.get("name") or a.get("dim") != b.get("dim"):
        return False
    return not (a.get("sha256") and b.get("sha256")) or a["sha256"] == b["sha256"]


def describe_model(identity: dict[str, Any]) -> str:
    sha = identity.get("sha256")
    return f"{identity.get('name')!r} (dim {identity.get('dim')}{', sha256 ' + sha[:12] if sha else ''})"


def model_mismatch(path: str, recorded: dict[str, Any], given: str) -> ModelMismatchError:
    """The one error for a file whose vectors come from another model than ``given``."""
    return ModelMismatchError(
        f"{path} holds vectors from {describe_model(recorded)}; this Memory uses {given}. "
        f"Vectors of two models cannot be mixed: open it with embedder={recorded.get('name')!r} "
        "(or leave embedder unset to use the recorded one)"
    )


@dataclass(frozen=True, slots=True)
class ConversationState:
    """What a cache needs to know to trust an entry: the version and how many messages."""

    version: int
    message_count: int


@dataclass(frozen=True, slots=True)
class Scope:
    """A search scope's state: ``token`` changes whenever a message enters or leaves it, or
    the vectors are rebuilt;
    ``size`` counts its messages; ``pending`` is True while some lack their vector."""

    token: list[int]
    size: int
    pending: bool


class Store:
    """One SQLite file. Thread-safe (one connection behind a lock); fork-safe (a child
    process opens its own connection on first use)."""

    def __init__(self, path: str, *, durability: str = "normal", lock_timeout: float = 5.0):
        if durability not in ("normal", "full"):
            raise InvalidInputError(f"durability must be 'normal' or 'full', not {durability!r}")
        if not isinstance(lock_timeout, (int, float)) or not 0 < lock_timeout <= 3600:
            raise InvalidInputError(f"lock_timeout must be seconds in (0, 3600]; got {lock_timeout!r}")
        self.path = path
        self.durability = durability
        self.lock_timeout = float(lock_timeout)
        self._in_memory = path == ":memory:" or path.startswith("file::memory:")
        self._lock = threading.RLock()
        driver.reset_locks_after_fork(self)
        self._pid = os.getpid()
        self._conn: Any = None
        self._closed = False
        with self._mapped_errors():
            self._conn = self._open()
            self._migrate()
            self.instance_id = self._meta_value("instance_id")

    # -- connection lifecycle ---------------------------------------------------------

    def _open(self) -> Any:
        conn = driver.connect(self.path)
        try:
            # busy_timeout first: the journal-mode switch below may itself wait for a lock.
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            if not self._in_memory:
                mode = self._execute_when_free(conn, "PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = self._execute_when_free(conn, "PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: could not switch to WAL (journal_mode={mode})")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            # Read the file through mmap: a vector scan then reads pages in place instead
            # of copying each through the page cache. At 100k vectors this halves the
            # exact scan (89 -> 44 ms) and the sign-bit scan (29 -> 17 ms).
            conn.execute(f"PRAGMA mmap_size = {_MMAP_SIZE}")
        except BaseException:
            conn.close()
            raise
        return conn

    def _connection(self) -> Any:
        """The connection for this process. Caller holds ``self._lock``."""
        if self._closed:
            raise ClosedError("this Memory is closed")
        if self._pid != os.getpid():
            self._after_fork()
        return self._conn

    def _after_fork(self) -> None:
        if self._in_memory:
            raise StoreError("an in-memory database cannot be used from a forked child process")
        driver.abandon(self._conn)
        self._conn = None
        self._pid = os.getpid()
        self._conn = self._open()

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            if conn is None:
                return
            if self._pid != os.getpid():
                driver.abandon(conn)
                return
            with contextlib.suppress(Exception):
                conn.execute("PRAGMA optimize")  # SQLite's advice for long-lived connections
            with self._mapped_errors():
                conn.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_memory(self) -> bool:
        """An in-memory database: it exists on this one connection only."""
        return self._in_memory

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.RLock()

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        dbapi = driver.dbapi()
        try:
            yield
        except dbapi.Error as exc:
            raise map_error(exc, self.path) from exc

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement (a statement is its own snapshot)."""
        with self._lock, self._mapped_errors():
            return self._connection().execute(sql, args).fetchall()

    @contextlib.contextmanager
    def read(self) -> Iterator[Any]:
        """A consistent snapshot: every statement inside sees the same committed state."""
        with self._lock, self._mapped_errors():
            conn = self._connection()
            conn.execute("BEGIN")
            try:
                yield conn
            finally:
                conn.execute("COMMIT")

    @contextlib.contextmanager
    def write(self) -> Iterator[Any]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error."""
        with self._lock, self._mapped_errors():
            conn = self._connection()
            self._begin_immediate(conn)
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise
            try:
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise

    def _begin_immediate(self, conn: Any) -> None:
        """Take the write lock, waiting at most ``lock_timeout`` in all."""
        self._execute_when_free(conn, "BEGIN IMMEDIATE")

    def _execute_when_free(self, conn: Any, sql: str) -> Any:
        """Run ``sql``, retrying while the file is busy, for at most ``lock_timeout`` in all.

        ``busy_timeout`` does most of the waiting; the loop covers the cases where SQLite
        reports SQLITE_BUSY at once, without calling the busy handler: WAL recovery, a
        racing checkpoint, and a lock upgrade that could deadlock (switching a new file
        to WAL while other connections open it).
        """
        deadline = time.monotonic() + self.lock_timeout
        retried = False
        try:
            while True:
                try:
                    return conn.execute(sql)
                except driver.dbapi().OperationalError as exc:
                    left = deadline - time.monotonic()
                    if not _is_busy(exc) or left <= 0.002:
                        raise
                    retried = True
                    time.sleep(0.002)
                    conn.execute(f"PRAGMA busy_timeout = {max(1, int((left - 0.002) * 1000))}")
        finally:
            if retried:
                conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._execute_when_free(self._conn, "PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        self._check_known(version)
        with self.write() as conn:
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another opener?
            self._check_known(version)
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sql)
            if version == 0:
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("instance_id", uuid.uuid4().hex), ("created_at_us", str(now_us()))],
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")

    def _check_known(self, version: int) -> None:
        if version > SCHEMA_VERSION:
            raise CorruptDatabaseError(
                f"{self.path} has schema version {version}, newer than this localmem knows "
                f"({SCHEMA_VERSION}); upgrade localmem to open it"
            )
        if version == 0:
            tables = self._conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if tables:
                raise CorruptDatabaseError(
                    f"{self.path} is an SQLite database but not a localmem one "
                    f"(it has {tables} tables and no localmem schema version)"
                )

    def _meta_value(self, key: str) -> str | None:
        with self.read() as conn:
            row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else row[0]

    def meta(self, key: str) -> str | None:
        return self._meta_value(key)

    def set_meta(self, key: str, value: str) -> None:
        with self.write() as conn:
            conn.execute(
                "INSERT INTO meta (key, value) VALUES (?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                (key, value),
            )

    # -- model identity ---------------------------------------------------------------

    def embedder_identity(self) -> dict[str, Any] | None:
        """The embedder recorded for this file's vectors: name, dim, sha256 (or None)."""
        raw = self._meta_value("embedder")
        return None if raw is None else json.loads(raw)

    def bind_embedder(self, identity: dict[str, Any], *, replace: bool = False) -> None:
        """Record ``identity`` as the embedder of this file's vectors, the first time.

        A different identity already recorded raises ModelMismatchError: vectors from two
        models must never share an index. ``replace=True`` records the new one; the
        caller must then rebuild every vector (``reset_vectors``).
        """
        with self.write() as conn:
            self._bind(conn, identity, replace=replace)

    def _bind(self, conn: Any, identity: dict[str, Any], *, replace: bool = False) -> None:
        row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
        if row is not None and not replace:
            recorded = json.loads(row[0])
            if not same_model(recorded, identity):
                raise model_mismatch(self.path, recorded, describe_model(identity))
            return
        self._bump_generation(conn)
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('embedder', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (json.dumps(identity, sort_keys=True),),
        )

    # -- vectors ----------------------------------------------------------------------

    @staticmethod
    def _vector_table(conn: Any) -> str | None:
        """The vector table's CREATE statement (it tells whether a ``coarse`` column
        exists), or None before the first vector."""
        row = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'message_vectors'").fetchone()
        return None if row is None else row[0]

    @staticmethod
    def _bump_generation(conn: Any) -> None:
        """A new vector space begins (first model bound, or every vector dropped): answers
        cached from the old one must not be served, though no message changed."""
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('vector_generation', '1')"
            " ON CONFLICT (key) DO UPDATE SET value = CAST(value AS INTEGER) + 1"
        )

    def pending_batch(self, limit: int, after_id: int = 0) -> list[tuple[int, str]]:
        """Up to ``limit`` messages still without a vector, as (id, content), by id."""
        return self._query(
            "SELECT p.id, m.content FROM pending_vectors p JOIN messages m ON m.id = p.id"
            " WHERE p.id > ? ORDER BY p.id LIMIT ?",
            (after_id, limit),
        )

    def pending_count(self) -> int:
        return self._query("SELECT count(*) FROM pending_vectors")[0][0]

    def write_vectors(self, identity: dict[str, Any], ids: Sequence[int], vectors: Sequence[bytes]) -> int:
        """Store float32 vectors (little-endian bytes) for messages ``ids``; returns how many
        were written.

        One transaction: the first write records ``identity`` and creates the vector table
        with its dimension; a different recorded identity raises ModelMismatchError. A
        vector is written only by whoever removes its message from ``pending_vectors``, so
        concurrent writers (threads or processes) never duplicate one, and a message
        deleted meanwhile gets none (no orphans).
        """
        dim = identity.get("dim")
        if type(dim) is not int or dim < 1:
            raise InvalidInputError(f"an embedder identity needs a positive int dim; got {dim!r}")
        with self.write() as conn:
            self._bind(conn, identity)
            table = self._vector_table(conn)
            if table is None:
                table = _VECTOR_TABLE.format(dim=dim, coarse=f",\n    {_COARSE}{dim}]" if dim % 8 == 0 else "")
                conn.execute(table)
                conn.execute(_VECTOR_DELETE_TRIGGER)
            has_coarse = _COARSE in table
            insert = (
                "INSERT INTO message_vectors (rowid, owner_id, conversation_id, created_at,"
                " embedding" + (", coarse)" if has_coarse else ")")
                + " SELECT id, owner_id, conversation_id, created_at, ?1"
                + (", vec_quantize_binary(?1)" if has_coarse else "")
                + " FROM messages WHERE id = ?2"
            )
            written = 0
            for row_id, vector in zip(ids, vectors, strict=True):
                if len(vector) != dim * 4:
                    raise InvalidInputError(
                        f"vector for message {row_id} has {len(vector)} bytes; dim {dim} needs {dim * 4}"
                    )
                if conn.execute("DELETE FROM pending_vectors WHERE id = ?", (row_id,)).rowcount:
                    written += conn.execute(insert, (vector, row_id)).rowcount
        return written

    def reset_vectors(self) -> int:
        """Drop every vector and the recorded embedder; queue every message to be embedded
        again (by whatever model writes next). Returns how many messages are queued."""
        with self.write() as conn:
            self._bump_generation(conn)
            conn.execute("DROP TRIGGER IF EXISTS messages_after_delete_vector")
            conn.execute("DROP TABLE IF EXISTS message_vectors")
            conn.execute("DELETE FROM meta WHERE key = 'embedder'")
            conn.execute("INSERT OR IGNORE INTO pending_vectors (id) SELECT id FROM messages")
            return conn.execute("SELECT count(*) FROM pending_vectors").fetchone()[0]

    def vector_count(self) -> int:
        with self.read() as conn:
            if self._vector_table(conn) is None:
                return 0
            return conn.execute("SELECT count(*) FROM message_vectors").fetchone()[0]

    def scope(self, owner_id: str, conversation_id: str | None) -> Scope:
        """Version token, size and pending state of a conversation, or of all of an owner's
        conversations when ``conversation_id`` is None, read in one snapshot."""
        where = "owner_id = ?" + ("" if conversation_id is None else " AND conversation_id = ?")
        args = (owner_id,) if conversation_id is None else (owner_id, conversation_id)
        with self.read() as conn:
            version, count, conversations = conn.execute(
                "SELECT coalesce(sum(version), 0), coalesce(sum(message_count), 0), count(*)"
                f" FROM conversations WHERE {where}",
                args,
            ).fetchone()
            m_where = where.replace("owner_id", "m.owner_id").replace("conversation_id", "m.conversation_id")
            generation = conn.execute(
                "SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta"
                " WHERE key = 'vector_generation'), 0)"
            ).fetchone()[0]
            # CROSS JOIN keeps pending_vectors (usually empty or small) the outer loop.
            pending = conn.execute(
                "SELECT 1 FROM pending_vectors p CROSS JOIN messages m ON m.id = p.id"
                f" WHERE {m_where} LIMIT 1",
                args,
            ).fetchone() is not None
        # Versions only grow and conversation rows are never deleted, so (sum of versions,
        # number of conversations) changes whenever a message enters or leaves the scope;
        # the generation changes when the vectors are rebuilt.
        return Scope(token=[version, conversations, generation], size=count, pending=pending)

    def knn(
        self,
        vector: bytes,
        k: int,
        *,
        owner_id: str,
        conversation_id: str | None = None,
        since_us: int | None = None,
        exact_max: int = EXACT_SEARCH_MAX,
    ) -> list[tuple[int, float]]:
        """The ``k`` messages nearest ``vector`` (float32 bytes) in the scope, as
        (id, cosine similarity), most similar first.

        Scopes of at most ``exact_max`` messages are searched exactly (a float scan). Larger
        ones scan the sign bits first (Hamming distance, 32x less data) for
        ``OVERSAMPLE * k`` candidates (at least ``MIN_CANDIDATES``), then re-score those with
        their float vectors: approximate, measured in benchmarks/semantic_speed.py.
        """
        filters = ["owner_id = ?"]
        args: list[Any] = [owner_id]
        if conversation_id is not None:
            filters.append("conversation_id = ?")
            args.append(conversation_id)
        if since_us is not None:
            filters.append("created_at >= ?")
            args.append(since_us)
        where = " AND ".join(filters)
        with self.read() as conn:
            table = self._vector_table(conn)
            if table is None:
                return []
            size = conn.execute(
                "SELECT coalesce(sum(message_count), 0) FROM conversations WHERE owner_id = ?"
                + ("" if conversation_id is None else " AND conversation_id = ?"),
                args[: 1 if conversation_id is None else 2],
            ).fetchone()[0]
            if size > exact_max and _COARSE in table:
                wanted = min(_MAX_K, max(k * OVERSAMPLE, MIN_CANDIDATES))
                candidates = conn.execute(
                    "SELECT rowid FROM message_vectors WHERE coarse MATCH vec_quantize_binary(?)"
                    f" AND k = ? AND {where}",
                    [vector, wanted, *args],
                ).fetchall()
                # One statement: a point lookup per candidate, the loop in C (vec0 turns
                # the join's rowid equality into its rowid index).
                scored = [
                    (row_id, 1.0 - distance)
                    for row_id, distance in conn.execute(
                        "SELECT j.value, vec_distance_cosine(v.embedding, ?) FROM json_each(?) j"
                        " JOIN message_vectors v ON v.rowid = j.value",
                        (vector, json.dumps([row_id for (row_id,) in candidates])),
                    )
                ]
                scored.sort(key=lambda pair: (-pair[1], pair[0]))
                return scored[:k]
            rows = conn.execute(
                "SELECT rowid, distance FROM message_vectors WHERE embedding MATCH ?"
                f" AND k = ? AND {where} ORDER BY distance",
                [vector, min(k, _MAX_K), *args],
            ).fetchall()
        rows.sort(key=lambda pair: (pair[1], pair[0]))  # vec0 allows no second sort key
        return [(row_id, 1.0 - distance) for row_id, distance in rows]

    def keyword(
        self,
        match: str,
        k: int,
        *,
        owner_id: str,
        conversation_id: str | None = None,
        since_us: int | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` best BM25 matches of an FTS5 ``match`` expression in the scope, as
        (id, bm25 score: lower is better), best first. Build ``match`` with
        ``keyword_query()``: raw user text is never FTS5 syntax."""
        sql = (
            "SELECT m.id, bm25(messages_fts, 1.0, 0.5) AS score FROM messages_fts"
            " JOIN messages m ON m.id = messages_fts.rowid"
            " WHERE messages_fts MATCH ? AND m.owner_id = ?"
        )
        args: list[Any] = [match, owner_id]
        if conversation_id is not None:
            sql += " AND m.conversation_id = ?"
            args.append(conversation_id)
        if since_us is not None:
            sql += " AND m.created_at >= ?"
            args.append(since_us)
        sql += " ORDER BY score, m.id LIMIT ?"
        args.append(k)
        with self.read() as conn:
            return conn.execute(sql, args).fetchall()

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, tuple[Any, ...]]:
        """Message rows (``_COLUMNS`` order) by their integer id; missing ids are left out."""
        found: dict[int, tuple[Any, ...]] = {}
        with self.read() as conn:
            for start in range(0, len(ids), _MAX_PARAMS):
                part = list(ids[start : start + _MAX_PARAMS])
                marks = ",".join("?" * len(part))
                for row in conn.execute(
                    f"SELECT id, {_COLUMNS} FROM messages WHERE id IN ({marks})", part
                ):
                    found[row[0]] = tuple(row[1:])
        return found

    def latest_user_message(self, owner_id: str, conversation_id: str) -> str | None:
        """The content of the conversation's newest user message."""
        rows = self._query(
            "SELECT content FROM messages WHERE conversation_id = ? AND owner_id = ?"
            " AND role = 'user' ORDER BY created_at DESC, id DESC LIMIT 1",
            (conversation_id, owner_id),
        )
        return rows[0][0] if rows else None

    # -- writes -----------------------------------------------------------------------

    def insert(self, m: NewMessage) -> Message:
        """Store one message; a retry of an existing msg_id returns the stored message."""
        with self.write() as conn:
            cur = conn.execute(_INSERT + " ON CONFLICT (msg_id) DO NOTHING", _params(m))
            if cur.rowcount == 1:
                self._index_keywords(conn, cur.lastrowid - 1)
                stored = None
            else:
                stored = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE msg_id = ?", (m.msg_id,)
                ).fetchone()
        if stored is None:
            return row_to_message(_params(m))
        if not _same(stored, m):
            raise _conflict(m)
        return row_to_message(stored)

    def insert_many(self, chunk: Sequence[NewMessage]) -> int:
        """Store a chunk in one transaction; returns how many were new.

        Retries (same msg_id, same fields) are skipped; a msg_id reused with different
        fields, in the file or inside the chunk, raises before anything is written.
        """
        fresh: dict[str, NewMessage] = {}
        for m in chunk:
            seen = fresh.get(m.msg_id)
            if seen is None:
                fresh[m.msg_id] = m
            elif not _same(_params(seen), m):
                raise _conflict(m)
        with self.write() as conn:
            given = [m.msg_id for m in fresh.values() if m.explicit_msg_id]
            for start in range(0, len(given), _MAX_PARAMS):
                part = given[start : start + _MAX_PARAMS]
                marks = ",".join("?" * len(part))
                for stored in conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE msg_id IN ({marks})", part
                ):
                    m = fresh.pop(stored[0])
                    if not _same(stored, m):
                        raise _conflict(m)
            last_id = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
            conn.executemany(_INSERT, [_params(m) for m in fresh.values()])
            self._index_keywords(conn, last_id)
        return len(fresh)

    @staticmethod
    def _index_keywords(conn: Any, last_id: int) -> None:
        """Index the messages with id > ``last_id`` (one statement: FTS5 writes one segment
        per statement, not per row), and repoint the ``prev`` of any older message that a
        backdated one now precedes."""
        conn.execute(_INSERT_FTS, (last_id,))
        for successor, content in conn.execute(_DISPLACED, (last_id,)).fetchall():
            conn.execute("UPDATE messages_fts SET prev = ? WHERE rowid = ?", (content, successor))

    def delete(self, msg_id: str) -> bool:
        """Delete a message; triggers remove its FTS5 row, vector and queue entry."""
        with self.write() as conn:
            return conn.execute("DELETE FROM messages WHERE msg_id = ?", (msg_id,)).rowcount == 1

    # -- reads ------------------------------------------------------------------------

    def conversation_state(self, owner_id: str, conversation_id: str) -> ConversationState | None:
        rows = self._query(
            "SELECT version, message_count FROM conversations"
            " WHERE owner_id = ? AND conversation_id = ?",
            (owner_id, conversation_id),
        )
        return ConversationState(*rows[0]) if rows else None

    def recent_rows(
        self, owner_id: str, conversation_id: str, limit: int, since_us: int | None
    ) -> tuple[ConversationState | None, list[tuple[Any, ...]]]:
        """The newest ``limit`` rows (oldest first) and the state they belong to, read in
        one snapshot so a cache never pairs rows with a newer version."""
        since = -(2**63) if since_us is None else since_us
        with self.read() as conn:
            state = conn.execute(
                "SELECT version, message_count FROM conversations"
                " WHERE owner_id = ? AND conversation_id = ?",
                (owner_id, conversation_id),
            ).fetchone()
            if state is None:
                return None, []
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM messages"
                " WHERE conversation_id = ? AND owner_id = ? AND created_at >= ?"
                " ORDER BY created_at DESC, id DESC LIMIT ?",
                (conversation_id, owner_id, since, limit),
            ).fetchall()
        rows.reverse()
        return ConversationState(state[0], state[1]), rows

    def get(self, msg_id: str) -> Message | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE msg_id = ?", (msg_id,))
        return row_to_message(rows[0]) if rows else None

    def counts(self) -> dict[str, int]:
        with self.read() as conn:
            messages, conversations = conn.execute(
                "SELECT coalesce(sum(message_count), 0), count(*) FROM conversations"
                " WHERE message_count > 0"
            ).fetchone()
            owners = conn.execute(
                "SELECT count(DISTINCT owner_id) FROM conversations WHERE message_count > 0"
            ).fetchone()[0]
            version = conn.execute("PRAGMA user_version").fetchone()[0]
        return {"schema_version": version, "messages": messages,
                "conversations": conversations, "owners": owners}

    def check_integrity(self) -> str:
        """``PRAGMA integrity_check`` plus FTS5's own check; "ok" when all is well."""
        with self.read() as conn:
            result = "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        if result != "ok":
            return result
        with self.read() as conn:
            unindexed = conn.execute(
                "SELECT count(*) FROM messages m"
                " WHERE NOT EXISTS (SELECT 1 FROM messages_fts f WHERE f.rowid = m.id)"
            ).fetchone()[0]
            indexed = conn.execute("SELECT count(*) FROM messages_fts").fetchone()[0]
            total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            stale = conn.execute(
                "SELECT count(*) FROM (SELECT id, lag(content) OVER (PARTITION BY owner_id,"
                " conversation_id ORDER BY created_at, id) AS prev FROM messages) x"
                " JOIN messages_fts f ON f.rowid = x.id WHERE f.prev IS NOT x.prev"
            ).fetchone()[0]
        if unindexed or indexed != total:
            return f"fts5: {unindexed} messages missing from the keyword index, which has {indexed} rows for {total} messages"
        if stale:
            return f"fts5: {stale} keyword rows hold the wrong previous message"
        try:
            with self.write() as conn:
                conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        except LockTimeoutError:
            raise  # a busy file is not a damaged one
        except StoreError as exc:
            return f"fts5: {exc}"
        return "ok"


__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ConversationState", "Scope", "Store"]
