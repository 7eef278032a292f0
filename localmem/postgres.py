"""The PostgreSQL backend: the same ``Backend`` as the SQLite file, for agents on many
processes and machines sharing one database (the ``postgres`` extra: psycopg 3, its
connection pool, pgvector's client).

What it keeps in the database (schema ``localmem``, so it can share a database with an
application's own tables):

* ``messages`` with a ``terms`` tsvector (GIN index): the message's own text at weight A,
  the previous message of its conversation at B and the next one at C, as the SQLite
  FTS5 table's ``content``/``prev``/``next`` columns, ranked 1.0 / 0.5 / 0.5. The text
  configuration ``localmem.localmem`` is the English Snowball (Porter) stemmer without
  stopwords, as SQLite's ``porter`` tokenizer; accents are folded by ``localmem.fold``
  (Unicode decomposition, combining marks dropped: PostgreSQL's ``unaccent`` is a contrib
  extension a server may lack), so "coração" and "coracao" match, in Portuguese and
  English alike.
* ``message_vectors``: pgvector ``vector(dim)`` with an HNSW cosine index, made when the
  first vector is written (the dimension comes from the model). Scopes of at most
  ``exact_max`` messages are searched exactly (a sequential scan of the scope through its
  btree index); larger ones through HNSW with iterative scans (pgvector 0.8,
  ``relaxed_order``), so owner, conversation and time filters never starve the result,
  and an exact search answers when the index returns fewer than asked.
* ``pending_vectors``: the embedding queue, claimed by ``FOR UPDATE SKIP LOCKED`` with a
  lease (``claimed_until``): workers on several hosts embed without duplicates, and a
  batch whose worker died is claimed again once its lease ends.
* ``conversations`` / ``owners`` with versions (a fresh random stamp per committed write:
  never a counter), ``summaries``, ``zero_vectors`` and ``meta`` (schema version, model
  identity, instance id), as in the SQLite file.

Writes are transactions at READ COMMITTED that lock the conversations (then owners) they
touch in a fixed order before they compute neighbours, so two clients appending to one
conversation serialise there and each sees the other's rows; a deadlock or serialization
failure is retried until ``lock_timeout``. Idempotency by ``msg_id`` is the unique index:
``INSERT ... ON CONFLICT DO NOTHING``, then the stored row is compared.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar
from urllib.parse import quote, unquote, urlsplit

import numpy as np
import psycopg
import psycopg_pool
from pgvector.psycopg import register_vector
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from . import driver
from .backend import (
    EXACT_SEARCH_MAX,
    POSTGRES_SCHEMES,
    ConversationState,
    Deleted,
    Exported,
    Forgotten,
    Scope,
    SummaryRow,
    conflict_error,
    describe_model,
    is_zero_vector,
    message_params,
    model_mismatch,
    new_stamp,
    row_to_message,
    same_fields,
    same_model,
    unique_by_msg_id,
    vector_dim,
    within_budget,
)
from .errors import (
    ClosedError,
    CorruptDatabaseError,
    InvalidInputError,
    LocalMemError,
    LockTimeoutError,
    ReadOnlyError,
    StorageFullError,
    StoreError,
)
from .records import Message, Row
from .validate import MAX_US, NewMessage, now_us, redact_url

__all__ = ["CLAIM_SECONDS", "SCHEMA_VERSION", "PostgresStore", "redact"]

log = logging.getLogger(__name__)
T = TypeVar("T")

SCHEMA = "localmem"
# What a forget on PostgreSQL cannot promise (ForgetReport.pending says it each time).
_REMAINS = (
    "PostgreSQL: the rows are deleted and VACUUMed (their space reusable), but their bytes stay in the "
    "table files until overwritten, and in the WAL (and any archive, replica or backup) until recycled; "
    "other machines' own cache folders keep their copies until those expire (never served: the version "
    "moved), unless the Memories share a Redis tier (cache=), which this forget erased"
)
_CONFIG = "localmem.localmem"  # the text search configuration
# Seconds a worker's claim on a batch of the embedding queue lasts: past it, a batch whose
# worker died (or lost its connection) is claimed by another. A live worker embeds a
# batch in well under this (64 texts: ~0.3 s with the default model on 2 cores).
CLAIM_SECONDS = 120.0
# hnsw.ef_search floor. pgvector's default, 40, gave recall@10 0.83 against exact at 100k
# LoCoMo-like vectors (benchmarks/backends.py); 100 gave 0.956 for about the same time on
# this machine (/work/exp16/ef.py: 64 -> 0.911, 160 -> 0.969).
_EF_SEARCH_MIN = 100
_EF_SEARCH_MAX = 1000  # pgvector's limit
_MAX_SCAN_TUPLES = 20_000  # pgvector's default for iterative scans; raised for selective scopes
_KEYWORD_BUDGET = 5_000  # as store.KEYWORD_BUDGET (a knob of its own, as each backend's costs differ)
_COUNT_TTL = 300.0  # seconds a word's match count is reused (see PostgresStore._count)
_COUNTS_KEPT = 50_000  # words whose counts are kept, the least recently used dropped first
_RANK_WEIGHTS = "'{0.0, 0.5, 0.5, 1.0}'::float4[]"  # ts_rank's weights of D, C (next), B (prev), A (own text)
_POOL_MAX = 8
_RETRYABLE = (pg_errors.DeadlockDetected, pg_errors.SerializationFailure)
_TERM = re.compile(r'"((?:[^"]|"")*)"')  # an FTS5 string, as retrieval.keyword_terms writes them


# Accent folding: the text decomposed (NFD) and its combining marks (U+0300-U+036F)
# dropped, as SQLite's remove_diacritics; ASCII text is returned as it is without that work.
# (A translate() table of 600 accented letters cost 0.3 ms a call and made inserts 1.5 ms a
# message; this costs ~20 us on non-ASCII text: /work/exp16/fold.py.) normalize() needs a
# UTF8 database, which the schema's creation checks.
_FOLD = "CASE WHEN t ~ '[^[:ascii:]]' THEN regexp_replace(normalize(t, NFD), '[\u0300-\u036f]', '', 'g') ELSE t END"
# A tsvector holds at most 1 MiB: a message's terms take the first OWN_CHARS characters of
# its text and NEIGHBOUR_CHARS of each neighbour's (a 900 KB message, within
# max_content_bytes, was refused before). Its vector sees far less (the model's 256 tokens).
OWN_CHARS = 200_000
NEIGHBOUR_CHARS = 50_000
_TERMS_OF = (
    f"setweight(to_tsvector('{{cfg}}', localmem.fold(left({{own}}, {OWN_CHARS}))), 'A')"
    f" || setweight(to_tsvector('{{cfg}}', localmem.fold(left(coalesce({{prev}}, ''), {NEIGHBOUR_CHARS}))), 'B')"
    f" || setweight(to_tsvector('{{cfg}}', localmem.fold(left(coalesce({{next}}, ''), {NEIGHBOUR_CHARS}))), 'C')"
)
# The message just before ("<", DESC) or after (">", ASC) message m in its conversation.
_NEIGHBOUR = (
    "(SELECT n.{col} FROM localmem.messages n WHERE n.owner_id = m.owner_id AND n.conversation_id = m.conversation_id"
    " AND (n.created_at, n.id) {cmp} (m.created_at, m.id) ORDER BY n.created_at {order}, n.id {order} LIMIT 1)"
)
_PREV = _NEIGHBOUR.format(col="{col}", cmp="<", order="DESC")
_NEXT = _NEIGHBOUR.format(col="{col}", cmp=">", order="ASC")
_REINDEX = (
    "UPDATE localmem.messages m SET terms = "
    + _TERMS_OF.format(cfg=_CONFIG, own="m.content", prev=_PREV.format(col="content"), next=_NEXT.format(col="content"))
    + " WHERE m.id = ANY(%s)"
)
# The new messages and their neighbours: whose terms an insert changes.
_AROUND = (
    "SELECT DISTINCT x FROM (SELECT unnest(ARRAY[m.id, " + _PREV.format(col="id") + ", " + _NEXT.format(col="id")
    + "]) AS x FROM localmem.messages m WHERE m.id = ANY(%s)) t WHERE x IS NOT NULL"
)
_COLUMNS = "msg_id, conversation_id, owner_id, role, content, created_at, feature, metadata"  # a Row
_M_COLUMNS = ", ".join(f"m.{c.strip()}" for c in _COLUMNS.split(","))
_SUMMARY_COLUMNS = "version, text, through_us, through_id, folded, summarizer, updated_us"  # a SummaryRow
_EMPTY_SUMMARY = (
    "UPDATE localmem.summaries SET version = version + 1, text = '', through_us = -9223372036854775808,"
    " through_id = 0, folded = 0, updated_us = %s"
)

MIGRATIONS: tuple[tuple[str, ...], ...] = (
    # 0 -> 1: everything (the SQLite file's schema 6, less what PostgreSQL does itself:
    # HNSW replaces the IVF index files, GIN the FTS5 table).
    (
        f"CREATE FUNCTION localmem.fold(t text) RETURNS text LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE RETURN {_FOLD}",
        "CREATE TEXT SEARCH DICTIONARY localmem.stem (TEMPLATE = snowball, Language = english)",
        "CREATE TEXT SEARCH CONFIGURATION localmem.localmem (COPY = pg_catalog.simple)",
        ("ALTER TEXT SEARCH CONFIGURATION localmem.localmem ALTER MAPPING FOR asciiword, asciihword, hword_asciipart,"
         " word, hword, hword_part WITH localmem.stem"),
        "CREATE TABLE localmem.meta (key text PRIMARY KEY, value text NOT NULL)",
        """CREATE TABLE localmem.messages (
            id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            msg_id          text NOT NULL UNIQUE,
            conversation_id text NOT NULL,
            owner_id        text NOT NULL,
            feature         text,
            role            text NOT NULL CHECK (role IN ('user', 'assistant', 'system')),
            content         text NOT NULL,
            metadata        text,
            created_at      bigint NOT NULL,  -- microseconds since 1970-01-01 UTC
            terms           tsvector
        )""",
        "CREATE INDEX messages_by_conversation ON localmem.messages (owner_id, conversation_id, created_at, id)",
        "CREATE INDEX messages_by_owner ON localmem.messages (owner_id, created_at, id)",
        "CREATE INDEX messages_terms ON localmem.messages USING gin (terms)",
        """CREATE TABLE localmem.conversations (
            owner_id        text NOT NULL,
            conversation_id text NOT NULL,
            version         bigint NOT NULL,
            message_count   bigint NOT NULL,
            PRIMARY KEY (owner_id, conversation_id)
        )""",
        """CREATE TABLE localmem.owners (
            owner_id      text PRIMARY KEY,
            version       bigint NOT NULL,
            message_count bigint NOT NULL
        )""",
        """CREATE TABLE localmem.pending_vectors (
            id            bigint PRIMARY KEY REFERENCES localmem.messages (id) ON DELETE CASCADE,
            claimed_until timestamptz,
            claimed_by    text
        )""",
        """CREATE TABLE localmem.zero_vectors (
            id bigint PRIMARY KEY REFERENCES localmem.messages (id) ON DELETE CASCADE
        )""",
        """CREATE TABLE localmem.summaries (
            owner_id        text NOT NULL,
            conversation_id text NOT NULL,
            version         bigint NOT NULL,
            text            text NOT NULL,
            through_us      bigint NOT NULL,
            through_id      bigint NOT NULL,
            folded          bigint NOT NULL,
            summarizer      text NOT NULL,
            updated_us      bigint NOT NULL,
            PRIMARY KEY (owner_id, conversation_id)
        )""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
_VECTOR_TABLE = (
    """CREATE TABLE localmem.message_vectors (
        id              bigint PRIMARY KEY REFERENCES localmem.messages (id) ON DELETE CASCADE,
        owner_id        text NOT NULL,
        conversation_id text NOT NULL,
        created_at      bigint NOT NULL,
        embedding       vector({dim}) NOT NULL
    )""",
    "CREATE INDEX message_vectors_scope ON localmem.message_vectors (owner_id, conversation_id, created_at)",
)
_HNSW = "CREATE INDEX IF NOT EXISTS message_vectors_hnsw ON localmem.message_vectors USING hnsw (embedding vector_cosine_ops)"
_HAS_HNSW = "SELECT to_regclass('localmem.message_vectors_hnsw') IS NOT NULL"
# Held (a session advisory lock) while a bulk load defers the HNSW index: no one else builds it meanwhile.
_BULK_LOCK = "hashtext('localmem bulk load')"
# Memory for building the HNSW index in one go (it is built in memory while the graph fits).
_BUILD_MEMORY = "1GB"


_SECRET_KEYS = ("password", "sslpassword")  # libpq parameters whose values are secrets


def redact(url: str) -> str:
    """``url`` without its secrets (``password`` and ``sslpassword``, wherever libpq would
    read them: ``user:pw@``, the query, a keyword/value string): what messages and logs
    may show. What libpq cannot parse shows as the scheme alone."""
    try:
        params = conninfo_to_dict(url)
    except psycopg.Error:
        return "postgresql://(a connection string libpq cannot parse)"
    values = {key: str(value) for key, value in params.items() if value is not None}
    secrets = [values[k] for k in _SECRET_KEYS if values.get(k)]
    if not url.startswith(POSTGRES_SCHEMES):  # keyword/value
        return make_conninfo("", **{k: "***" if k in _SECRET_KEYS else v for k, v in values.items()})
    shown = redact_url(url, _SECRET_KEYS)
    if any(s in shown or quote(s, safe="") in shown for s in secrets):
        # urllib reads this URL otherwise than libpq: rebuilt from what libpq reads.
        user, host, port, dbname = (values.pop(k, "") for k in ("user", "host", "port", "dbname"))
        password = values.pop("password", "")
        if host.startswith("/"):
            values["host"], host = host, ""
        auth = f"{user}{':***' if password else ''}@" if user or password else ""
        query = "&".join(f"{k}={'***' if k in _SECRET_KEYS else v}" for k, v in values.items())
        shown = f"postgresql://{auth}{host}{':' + port if port else ''}/{dbname}" + (f"?{query}" if query else "")
    scheme, rest = shown.split("://", 1)
    for secret in _secrets(url):  # last: what a naive reading takes for a password, libpq not
        rest = rest.replace(secret, "***")
    return f"{scheme}://{rest}"


def _secrets(url: str) -> list[str]:
    """The secret values of ``url``, as libpq reads them and as urllib does, raw and
    percent-encoded (longest first): what driver messages must not show."""
    found: set[str] = set()
    try:
        params = conninfo_to_dict(url)
        found |= {str(params[k]) for k in _SECRET_KEYS if params.get(k)}
    except psycopg.Error:
        pass
    rest = url.split("://", 1)[1] if "://" in url else ""
    userinfo = rest.rsplit("@", 1)[0] if "@" in rest else ""
    if ":" in userinfo:
        found.add(userinfo.split(":", 1)[1])
    try:
        for pair in urlsplit(url).query.split("&"):
            key, _, value = pair.partition("=")
            if unquote(key).lower() in _SECRET_KEYS:
                found.add(value)
    except ValueError:
        pass
    found |= {unquote(v) for v in found} | {quote(v, safe="") for v in found}
    return sorted((v for v in found if v), key=len, reverse=True)


# The localmem error for a driver error (the first row whose classes match), and what it
# says before the driver's own message (which closes the parenthesis).
_ERRORS: tuple[tuple[type[Exception] | tuple[type[Exception], ...], type[LocalMemError], str], ...] = (
    ((pg_errors.LockNotAvailable, pg_errors.QueryCanceled), LockTimeoutError,
     "waited past lock_timeout ({self.lock_timeout:g} s) for a lock another client holds ("),
    (pg_errors.DiskFull, StorageFullError, "the database server's disk is full ("),
    (pg_errors.ReadOnlySqlTransaction, ReadOnlyError, "the database cannot be written here ("),
    (pg_errors.InsufficientPrivilege, ReadOnlyError, "permission denied: this role cannot do that here ("),
    (pg_errors.ProgramLimitExceeded, InvalidInputError, "a value is past a PostgreSQL limit ("),
    (pg_errors.DataCorrupted, CorruptDatabaseError, "the database reports damage ("),
    (psycopg.OperationalError, StoreError, "the database connection failed ("),
)


def _terms(match: str | Sequence[str]) -> list[str]:
    """The words of a keyword query (FTS5 strings, see retrieval.keyword_terms)."""
    if isinstance(match, str):
        return [t.replace('""', '"') for t in _TERM.findall(match)]
    return [t[1:-1].replace('""', '"') if len(t) >= 2 and t[0] == t[-1] == '"' else t for t in match]


def _tsquery(words: Sequence[str]) -> tuple[str, list[str]]:
    """A tsquery expression OR-ing the words (each parsed as plain text: never syntax)."""
    one = f"plainto_tsquery('{_CONFIG}', localmem.fold(%s))"
    return "(" + " || ".join([one] * len(words)) + ")", list(words)


def _selected(owner_id: str | None, conversation_id: str | None, before_us: int | None,
              exclude_owners: Sequence[str] = (), through_id: int | None = None) -> tuple[str, list[Any]]:
    """As store._selected: the WHERE clause over ``localmem.messages m`` of a selection."""
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (("m.owner_id = %s", owner_id), ("m.conversation_id = %s", conversation_id),
                             ("m.created_at < %s", before_us), ("m.id <= %s", through_id)):
        if value is not None:
            conditions.append(condition)
            args.append(value)
    if exclude_owners:
        conditions.append("NOT (m.owner_id = ANY(%s))")
        args.append(list(exclude_owners))
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", args


def _row(values: Sequence[Any]) -> Row:
    return Row._make(values)


class PostgresStore:
    """One PostgreSQL database (a ``postgresql://`` URL). Thread-safe (a connection pool);
    after ``fork()`` the child opens its own pool on first use."""

    def __init__(self, url: str, *, durability: str = "normal", lock_timeout: float = 5.0,
                 read_only: bool = False, pool_size: int = _POOL_MAX):
        if durability not in ("normal", "full"):
            raise InvalidInputError(f"durability must be 'normal' or 'full', not {durability!r}")
        if not isinstance(lock_timeout, (int, float)) or not 0 < lock_timeout <= 3600:
            raise InvalidInputError(f"lock_timeout must be seconds in (0, 3600]; got {lock_timeout!r}")
        if type(read_only) is not bool:
            raise InvalidInputError(f"read_only must be True or False; got {read_only!r}")
        self._url = url
        self.path = redact(url)
        self._secrets = _secrets(url)
        self.durability = durability
        self.lock_timeout = float(lock_timeout)
        self.read_only = read_only
        self.index_dir = None
        self._pool_size = pool_size
        self._pid = os.getpid()
        self._pool: psycopg_pool.ConnectionPool | None = None
        self._pool_lock = threading.Lock()
        driver.reset_locks_after_fork(self)
        self._closed = False
        self._bulk: Any = None  # the connection holding _BULK_LOCK while bulk_load() runs
        self._counts: OrderedDict[tuple[str, int], tuple[int, float]] = OrderedDict()  # see _count
        self._counts_lock = threading.Lock()
        self._counts_stamp: str | None = None  # the delete stamp the counts were made under
        self._token = uuid.uuid4().hex  # this handle's name on the queue rows it claims
        self.claim_seconds = CLAIM_SECONDS
        try:
            self._prepare()
            self.instance_id = self.meta("instance_id")
        except BaseException:
            self.close()
            raise

    # -- connections ------------------------------------------------------------------

    def _scrub(self, exc: BaseException) -> str:
        """The driver's message with any secret of the URL replaced (libpq quotes bits of
        a conninfo it cannot parse)."""
        text = str(exc)
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return text

    def _connect_error(self, exc: Exception) -> StoreError:
        return StoreError(f"{self.path}: cannot connect to PostgreSQL ({self._scrub(exc)})")

    def _prepare(self) -> None:
        """Create or upgrade the schema (one transaction, under an advisory lock: many
        clients may start at once), on a connection of its own."""
        try:
            conn = psycopg.connect(self._url, autocommit=True, connect_timeout=max(1, int(self.lock_timeout)))
        except psycopg.Error as exc:
            raise self._connect_error(exc) from exc
        try:
            with self._mapped_errors():
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.lock_timeout * 1000)}ms",))
                version = self._schema_version(conn)
                if version > SCHEMA_VERSION:
                    raise CorruptDatabaseError(
                        f"{self.path}: schema version {version} is newer than this localmem's ({SCHEMA_VERSION})")
                if version < SCHEMA_VERSION:
                    if self.read_only:
                        raise ReadOnlyError(f"{self.path} holds no localmem schema of version {SCHEMA_VERSION} "
                                            f"(it has {version}): open it once read-write to create or upgrade it")
                    self._migrate(conn)
        finally:
            conn.close()

    @staticmethod
    def _schema_version(conn: Any) -> int:
        if conn.execute("SELECT to_regclass('localmem.meta')").fetchone()[0] is None:
            return 0
        row = conn.execute("SELECT value FROM localmem.meta WHERE key = 'schema_version'").fetchone()
        return 0 if row is None else int(row[0])

    def _migrate(self, conn: Any) -> None:
        with conn.transaction():
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('localmem schema'))")
            version = self._schema_version(conn)  # another client may have done it meanwhile
            if version >= SCHEMA_VERSION:
                return
            if version == 0:
                encoding = conn.execute("SELECT current_setting('server_encoding')::text").fetchone()[0]
                if encoding != "UTF8":
                    raise StoreError(f"{self.path}: the database's encoding is {encoding}; localmem needs UTF8 "
                                     "(CREATE DATABASE ... ENCODING 'UTF8' TEMPLATE template0)")
                if conn.execute("SELECT 1 FROM pg_extension WHERE extname = 'vector'").fetchone() is None:
                    conn.execute("CREATE EXTENSION vector")
                conn.execute("CREATE SCHEMA IF NOT EXISTS localmem")
            conn.execute(f"SET LOCAL search_path = localmem, {self._vector_schema(conn)}")
            for step in MIGRATIONS[version:]:
                for statement in step:
                    conn.execute(statement)
            conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('instance_id', %s) ON CONFLICT DO NOTHING",
                         (uuid.uuid4().hex,))
            conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('schema_version', %s)"
                         " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(SCHEMA_VERSION),))

    @staticmethod
    def _vector_schema(conn: Any) -> str:
        """The schema holding pgvector's type (quoted for a search_path)."""
        row = conn.execute("SELECT quote_ident(n.nspname) FROM pg_extension e JOIN pg_namespace n"
                           " ON n.oid = e.extnamespace WHERE e.extname = 'vector'").fetchone()
        return "public" if row is None else row[0]

    def _configure(self, conn: Any) -> None:
        conn.execute(f"SET search_path = localmem, {self._vector_schema(conn)}")
        conn.execute("SELECT set_config('lock_timeout', %s, false)", (f"{int(self.lock_timeout * 1000)}ms",))
        if self.read_only:
            conn.execute("SET default_transaction_read_only = on")
        register_vector(conn)

    def _get_pool(self) -> psycopg_pool.ConnectionPool:
        if self._closed:
            raise ClosedError("this database handle is closed")
        with self._pool_lock:
            if self._pid != os.getpid():  # a forked child: the parent's sockets are not ours
                if self._pool is not None:
                    driver.abandon(self._pool)  # never closed here: that would end the parent's sessions
                self._pool, self._pid = None, os.getpid()
            if self._pool is None:
                pool = psycopg_pool.ConnectionPool(
                    self._url, min_size=1, max_size=self._pool_size, kwargs={"autocommit": True},
                    configure=self._configure, timeout=max(self.lock_timeout, 5.0), open=False,
                    # A connection is checked as it is taken: after a server restart (or
                    # an idle connection's end) each pooled one would fail once, else.
                    check=psycopg_pool.ConnectionPool.check_connection,
                    name="localmem",
                )
                try:
                    pool.open(wait=True, timeout=max(self.lock_timeout, 5.0))
                except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
                    pool.close()
                    raise self._connect_error(exc) from exc
                self._pool = pool
            return self._pool

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        try:
            yield
        except psycopg_pool.PoolTimeout as exc:
            # Every connection busy, none can be made (the server is down), or the pool is
            # still reconnecting after losing its connections (a restart): not the same.
            try:
                psycopg.connect(self._url, connect_timeout=2).close()
            except psycopg.Error as down:
                raise self._connect_error(down) from exc
            pool = self._pool
            stats = {} if pool is None else pool.get_stats()
            if pool is not None and not stats.get("requests_waiting") and stats.get("pool_available") == stats.get(
                    "pool_size"):
                # Nobody holds a connection, the server answers, yet none came: the pool
                # lost its connections (a server restart) and waits out its reconnect
                # backoff. A new pool connects at once; this one closes in the background.
                with self._pool_lock:
                    if self._pool is pool:
                        self._pool = None
                threading.Thread(target=pool.close, name="localmem-pool-close", daemon=True).start()
                raise StoreError(f"{self.path}: the connection pool had lost its connections (a server "
                                 "restart?); the next call opens new ones") from exc
            raise LockTimeoutError(f"{self.path}: no database connection free within "
                                   f"{max(self.lock_timeout, 5.0):g} s ({exc})") from exc
        except psycopg.Error as exc:
            for kinds, error, says in _ERRORS:
                if isinstance(exc, kinds):
                    raise error(f"{self.path}: {says.format(self=self)}{self._scrub(exc)})") from exc
            raise StoreError(f"{self.path}: {self._scrub(exc)}") from exc

    @contextlib.contextmanager
    def _read(self) -> Iterator[Any]:
        """A connection holding one REPEATABLE READ, read-only snapshot."""
        with self._mapped_errors(), self._get_pool().connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            yield conn

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """One statement, in autocommit (its own snapshot)."""
        with self._mapped_errors(), self._get_pool().connection() as conn:
            return conn.execute(sql, args).fetchall()

    def _write(self, work: Callable[[Any], T]) -> T:
        """``work(conn)`` in one transaction, retried after a deadlock or serialization
        failure until ``lock_timeout`` has passed."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path} was opened read_only: nothing can be written")
        deadline = time.monotonic() + self.lock_timeout
        pause = 0.005
        while True:
            try:
                with self._mapped_errors(), self._get_pool().connection() as conn, conn.transaction():
                    return work(conn)
            except StoreError as exc:
                if not isinstance(exc.__cause__, _RETRYABLE) or time.monotonic() >= deadline:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.1)

    def close(self) -> None:
        with self._pool_lock:
            if self._closed:
                return
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            # What this handle claimed goes back to the other workers now, not at its lease's end.
            with contextlib.suppress(Exception), pool.connection(timeout=1.0) as conn:
                conn.execute("UPDATE localmem.pending_vectors SET claimed_until = NULL, claimed_by = NULL"
                             " WHERE claimed_by = %s", (self._token,))
            pool.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_memory(self) -> bool:
        return False

    def reopen(self) -> PostgresStore:
        return PostgresStore(self._url, durability=self.durability, lock_timeout=self.lock_timeout,
                             read_only=self.read_only, pool_size=self._pool_size)

    def reset_locks_after_fork(self) -> None:
        self._pool_lock = threading.Lock()
        self._counts_lock = threading.Lock()

    # -- meta and model identity ----------------------------------------------------------

    def meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM localmem.meta WHERE key = %s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._write(lambda conn: conn.execute(
            "INSERT INTO localmem.meta (key, value) VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value)))

    def embedder_identity(self) -> dict[str, Any] | None:
        raw = self.meta("embedder")
        return None if raw is None else json.loads(raw)

    def bind_embedder(self, identity: dict[str, Any], *, replace: bool = False) -> None:
        self._write(lambda conn: self._bind(conn, identity, replace=replace))

    def _bind(self, conn: Any, identity: dict[str, Any], *, replace: bool = False) -> None:
        # The row lock orders two clients binding at once: the second sees the first's model.
        row = conn.execute("SELECT value FROM localmem.meta WHERE key = 'embedder' FOR UPDATE").fetchone()
        if row is not None and not replace:
            recorded = json.loads(row[0])
            if not same_model(recorded, identity):
                raise model_mismatch(self.path, recorded, describe_model(identity))
            return
        self._bump_generation(conn)
        conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('embedder', %s)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (json.dumps(identity, sort_keys=True),))

    @staticmethod
    def _bump_generation(conn: Any) -> None:
        conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('vector_generation', %s)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(new_stamp()),))

    # -- writes ---------------------------------------------------------------------------

    def _inserted(self, conn: Any, fresh: Sequence[NewMessage]) -> list[int]:
        """Insert messages whose msg_ids are new (those another client stored meanwhile
        are skipped: ON CONFLICT), with everything that goes with them: the conversations'
        and owners' counts and versions (locked in key order before the neighbours are
        read), the queue, the summaries a backdated message voids, the keyword terms of
        the new messages and of their neighbours. Returns the new ids."""
        if not fresh:
            return []
        rows = self._insert_rows(conn, [message_params(m) for m in fresh])
        if not rows:
            return []
        stamp = new_stamp()
        by_scope: dict[tuple[str, str], int] = {}
        for _, owner, conversation, _ in rows:
            by_scope[(owner, conversation)] = by_scope.get((owner, conversation), 0) + 1
        by_owner: dict[str, int] = {}
        for (owner, _), n in by_scope.items():
            by_owner[owner] = by_owner.get(owner, 0) + n
        scopes = sorted(by_scope)
        conn.execute(
            "INSERT INTO localmem.conversations AS c (owner_id, conversation_id, version, message_count)"
            " SELECT o, k, %s, n FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(o, k, n) ORDER BY o, k"
            " ON CONFLICT (owner_id, conversation_id) DO UPDATE SET version = excluded.version,"
            " message_count = c.message_count + excluded.message_count",
            (stamp, [o for o, _ in scopes], [c for _, c in scopes], [by_scope[s] for s in scopes]))
        owners = sorted(by_owner)
        conn.execute(
            "INSERT INTO localmem.owners AS w (owner_id, version, message_count)"
            " SELECT o, %s, n FROM unnest(%s::text[], %s::bigint[]) AS t(o, n) ORDER BY o"
            " ON CONFLICT (owner_id) DO UPDATE SET version = excluded.version,"
            " message_count = w.message_count + excluded.message_count",
            (stamp, owners, [by_owner[o] for o in owners]))
        ids = [r[0] for r in rows]
        conn.execute("INSERT INTO localmem.pending_vectors (id) SELECT unnest(%s::bigint[])", (ids,))
        conn.execute(
            _EMPTY_SUMMARY + " FROM (SELECT owner_id AS o, conversation_id AS k, min(created_at) AS t"
            " FROM localmem.messages WHERE id = ANY(%s) GROUP BY 1, 2) n"
            " WHERE owner_id = n.o AND conversation_id = n.k AND n.t < through_us", (now_us(), ids))
        around = [r[0] for r in conn.execute(_AROUND, (ids,)).fetchall()]
        conn.execute(_REINDEX, (around,))
        return ids

    @staticmethod
    def _insert_rows(conn: Any, params: Sequence[Row]) -> list[tuple[int, str, str, int]]:
        columns = [list(c) for c in zip(*params)]
        return conn.execute(
            "INSERT INTO localmem.messages (msg_id, conversation_id, owner_id, role, content, created_at, feature,"
            " metadata) SELECT a, b, c, d, e, f, g, h FROM unnest(%s::text[], %s::text[], %s::text[], %s::text[],"
            " %s::text[], %s::bigint[], %s::text[], %s::text[]) WITH ORDINALITY AS t(a, b, c, d, e, f, g, h, n)"
            " ORDER BY n ON CONFLICT (msg_id) DO NOTHING RETURNING id, owner_id, conversation_id, created_at",
            columns,
        ).fetchall()

    def insert(self, m: NewMessage) -> tuple[Message, bool]:
        def work(conn: Any) -> Row | None:
            if self._inserted(conn, [m]):
                return None
            found = conn.execute(f"SELECT {_COLUMNS} FROM localmem.messages WHERE msg_id = %s", (m.msg_id,)).fetchone()
            if found is None:  # inserted by another client and deleted since: a retry stores it again
                raise pg_errors.SerializationFailure("msg_id vanished between insert and read")
            return _row(found)

        stored = self._write(work)
        if stored is None:
            return row_to_message(message_params(m)), True
        if not same_fields(stored, m):
            raise conflict_error(m)
        return row_to_message(stored), False

    def _insert_fresh(self, conn: Any, fresh: dict[str, NewMessage]) -> int:
        """Stored msg_ids are skipped (a conflict raises), the rest written; returns how
        many were new. ``fresh`` keeps only the new ones."""
        for found in conn.execute(f"SELECT {_COLUMNS} FROM localmem.messages WHERE msg_id = ANY(%s)",
                                  (list(fresh),)).fetchall():
            m = fresh.pop(found[0])
            if not same_fields(_row(found), m):
                raise conflict_error(m)
        new = self._inserted(conn, list(fresh.values()))
        if len(new) != len(fresh):  # another client stored some of them meanwhile: compare those
            raise pg_errors.SerializationFailure("a msg_id was stored by another client meanwhile")
        return len(new)

    def insert_many(self, chunk: Sequence[NewMessage]) -> int:
        fresh = unique_by_msg_id(chunk)
        return self._write(lambda conn: self._insert_fresh(conn, dict(fresh)))

    def stored_as(self, chunk: Sequence[NewMessage]) -> list[bool | None]:
        ids = list(dict.fromkeys(m.msg_id for m in chunk))
        stored = {r[0]: _row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM localmem.messages WHERE msg_id = ANY(%s)", (ids,))}
        found = [stored.get(m.msg_id) for m in chunk]
        return [None if row is None else same_fields(row, m) for row, m in zip(found, chunk)]

    def import_chunk(self, chunk: Sequence[NewMessage], vectors: dict[str, bytes],
                     identity: dict[str, Any] | None) -> tuple[int, int]:
        fresh = unique_by_msg_id(chunk)
        dim = None if identity is None or not vectors else vector_dim(identity)

        def work(conn: Any) -> tuple[int, int]:
            new = self._insert_fresh(conn, dict(fresh))
            if dim is None or identity is None:
                return new, 0
            ids = dict(conn.execute("SELECT msg_id, id FROM localmem.messages WHERE msg_id = ANY(%s)",
                                    (list(vectors),)).fetchall())
            found = [k for k in vectors if k in ids]
            return new, self._write_vectors(conn, identity, dim, [ids[k] for k in found], [vectors[k] for k in found])

        return self._write(work)

    def _neighbours_of(self, conn: Any, where: str, args: Sequence[Any]) -> list[int]:
        """The messages next to the selected ones that are not selected themselves."""
        return [r[0] for r in conn.execute(
            f"SELECT DISTINCT x FROM (SELECT {_PREV.format(col='id')} AS x FROM localmem.messages m{where}"
            f" UNION ALL SELECT {_NEXT.format(col='id')} FROM localmem.messages m{where}) t"
            f" WHERE x IS NOT NULL AND x NOT IN (SELECT m.id FROM localmem.messages m{where})",
            [*args, *args, *args]).fetchall()]

    def _remove(self, conn: Any, where: str, args: Sequence[Any]) -> list[tuple[str, str, str, int, int]]:
        """Delete the selected messages (their vectors, queue and zero rows go by the
        foreign keys), lock and update their scopes first, rewrite their surviving
        neighbours' terms. Returns (owner, conversation, content, created_us, id) of each."""
        scopes = conn.execute(f"SELECT DISTINCT m.owner_id, m.conversation_id FROM localmem.messages m{where}"
                              " ORDER BY 1, 2", args).fetchall()
        if not scopes:
            return []
        conn.execute("SELECT 1 FROM localmem.conversations WHERE (owner_id, conversation_id) IN"
                     " (SELECT * FROM unnest(%s::text[], %s::text[])) ORDER BY owner_id, conversation_id FOR UPDATE",
                     ([o for o, _ in scopes], [c for _, c in scopes]))
        bordering = self._neighbours_of(conn, where, args)
        rows = conn.execute(f"DELETE FROM localmem.messages m{where} RETURNING m.owner_id, m.conversation_id,"
                            " m.content, m.created_at, m.id", args).fetchall()
        if bordering:
            conn.execute(_REINDEX, (bordering,))
        stamp = new_stamp()
        # Every client's remembered word counts are void after a delete (see _count).
        conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('delete_stamp', %s)"
                     " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(stamp),))
        counts: dict[tuple[str, str], int] = {}
        for o, c, _, _, _ in rows:
            counts[(o, c)] = counts.get((o, c), 0) + 1
        keys = sorted(counts)
        conn.execute(
            "UPDATE localmem.conversations c SET version = %s, message_count = c.message_count - t.n"
            " FROM unnest(%s::text[], %s::text[], %s::bigint[]) AS t(o, k, n)"
            " WHERE c.owner_id = t.o AND c.conversation_id = t.k",
            (stamp, [o for o, _ in keys], [k for _, k in keys], [counts[s] for s in keys]))
        owners: dict[str, int] = {}
        for (o, _), n in counts.items():
            owners[o] = owners.get(o, 0) + n
        conn.execute(
            "UPDATE localmem.owners w SET version = %s, message_count = w.message_count - t.n"
            " FROM unnest(%s::text[], %s::bigint[]) AS t(o, n) WHERE w.owner_id = t.o",
            (stamp, sorted(owners), [owners[o] for o in sorted(owners)]))
        return [(o, c, text, created, row_id) for o, c, text, created, row_id in rows]

    def delete(self, msg_id: str) -> Deleted | None:
        def work(conn: Any) -> Deleted | None:
            rows = self._remove(conn, " WHERE m.msg_id = %s", [msg_id])
            if not rows:
                return None
            o, c, text, created, row_id = rows[0]
            # A summary that covered it is emptied: the next fold rebuilds it without it.
            conn.execute(_EMPTY_SUMMARY + " WHERE owner_id = %s AND conversation_id = %s"
                         " AND (%s, %s) <= (through_us, through_id)", (now_us(), o, c, created, row_id))
            self._drop_empty(conn, [(o, c)])
            return Deleted(o, c, text)

        deleted = self._write(work)
        if deleted is not None:
            self._forget_counts()
        return deleted

    @staticmethod
    def _drop_empty(conn: Any, scopes: Sequence[tuple[str, str]]) -> None:
        """Rows of conversations and owners left with no message go (with the summary:
        a fold in flight then finds its messages gone)."""
        owners = sorted({o for o, _ in scopes})
        conn.execute("DELETE FROM localmem.summaries s USING localmem.conversations c WHERE c.owner_id = s.owner_id"
                     " AND c.conversation_id = s.conversation_id AND c.message_count = 0 AND c.owner_id = ANY(%s)",
                     (owners,))
        gone = conn.execute("DELETE FROM localmem.conversations WHERE message_count = 0 AND owner_id = ANY(%s)",
                            (owners,)).rowcount
        conn.execute("DELETE FROM localmem.owners WHERE message_count = 0 AND owner_id = ANY(%s)", (owners,))
        if gone:
            # An emptied scope has no row, and an absent row reads as version 0: a token
            # would repeat one from before its first message. This stamp, in every token,
            # changes whenever a scope is emptied (not at every delete: that voided every
            # owner's cached answers).
            conn.execute("INSERT INTO localmem.meta (key, value) VALUES ('emptied_stamp', %s)"
                         " ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(new_stamp()),))

    def forget(self, owner_id: str | None, conversation_id: str | None, before_us: int | None, *,
               exclude_owners: Sequence[str] = (), through_id: int | None = None, scrub: bool = True) -> Forgotten:
        """As ``Store.forget``: the selection's messages and all that holds their text
        (terms, vectors, queue rows, the summaries of the conversations touched), in one
        transaction. PostgreSQL keeps a deleted row's bytes in its table until VACUUM
        makes the space reusable, so ``secure`` is False: the caller then runs
        ``vacuum()``."""
        if owner_id is None and before_us is None:
            raise InvalidInputError("forget needs owner_id, before, or both")
        where, args = _selected(owner_id, conversation_id, before_us, exclude_owners, through_id)

        def work(conn: Any) -> Forgotten:
            rows = self._remove(conn, where, args)
            if not rows:
                return Forgotten(0, (), (), (), secure=False)
            scopes = sorted({(o, c) for o, c, *_ in rows})
            for o, c in scopes:
                conn.execute(_EMPTY_SUMMARY + " WHERE owner_id = %s AND conversation_id = %s", (now_us(), o, c))
            left = {tuple(r) for r in conn.execute(
                "SELECT owner_id, conversation_id FROM localmem.conversations WHERE message_count > 0 AND"
                " (owner_id, conversation_id) IN (SELECT * FROM unnest(%s::text[], %s::text[]))",
                ([o for o, _ in scopes], [c for _, c in scopes])).fetchall()}
            self._drop_empty(conn, scopes)
            emptied = tuple(s for s in scopes if s not in left)
            return Forgotten(len(rows), tuple(scopes), emptied, tuple(r[2] for r in rows), secure=False,
                             remains=_REMAINS)

        forgotten = self._write(work)
        self._forget_counts()
        return forgotten

    def scrub(self) -> None:
        """Nothing to merge: a GIN index drops a deleted row's entries when VACUUM runs."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path} was opened read_only: nothing can be written")

    # -- reads ----------------------------------------------------------------------------

    def get(self, msg_id: str) -> Message | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM localmem.messages WHERE msg_id = %s", (msg_id,))
        return row_to_message(_row(rows[0])) if rows else None

    def _rows(self, ids: Sequence[int], extra: str | None = None) -> list[tuple[Any, ...]]:
        columns = f"m.id, {_M_COLUMNS}" + ("" if extra is None else f", {extra}")
        return self._query(f"SELECT {columns} FROM localmem.messages m WHERE m.id = ANY(%s)", (list(ids),))

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, Row]:
        return {r[0]: _row(r[1:]) for r in self._rows(ids)}

    def rows_and_successors(self, ids: Sequence[int]) -> tuple[dict[int, Row], dict[int, int]]:
        rows: dict[int, Row] = {}
        successors: dict[int, int] = {}
        for r in self._rows(ids, _NEXT.format(col="id")):
            rows[r[0]] = _row(r[1:-1])
            if r[-1] is not None:
                successors[r[0]] = r[-1]
        return rows, successors

    def conversation_ids(self, ids: Sequence[int]) -> dict[int, str]:
        return dict(self._query("SELECT id, conversation_id FROM localmem.messages WHERE id = ANY(%s)", (list(ids),)))

    def conversation_rows(self, owner_id: str, conversation_id: str) -> list[Row]:
        return [_row(r) for r in self._query(
            f"SELECT {_COLUMNS} FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
            " ORDER BY created_at, id", (owner_id, conversation_id))]

    def owner_conversations(self, owner_id: str) -> list[str]:
        return [r[0] for r in self._query(
            "SELECT conversation_id FROM localmem.conversations WHERE owner_id = %s AND message_count > 0"
            " ORDER BY conversation_id COLLATE \"C\"", (owner_id,))]

    def conversation_state(self, owner_id: str, conversation_id: str) -> ConversationState | None:
        rows = self._query("SELECT version, message_count FROM localmem.conversations"
                           " WHERE owner_id = %s AND conversation_id = %s", (owner_id, conversation_id))
        return ConversationState(*rows[0]) if rows else None

    def recent_rows(self, owner_id: str, conversation_id: str, limit: int,
                    since_us: int | None) -> tuple[ConversationState | None, list[Row]]:
        since = -(2**63) if since_us is None else since_us
        with self._read() as conn:
            state = conn.execute("SELECT version, message_count FROM localmem.conversations"
                                 " WHERE owner_id = %s AND conversation_id = %s", (owner_id, conversation_id)).fetchone()
            if state is None:
                return None, []
            rows = conn.execute(
                f"SELECT {_COLUMNS} FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
                " AND created_at >= %s ORDER BY created_at DESC, id DESC LIMIT %s",
                (owner_id, conversation_id, since, limit)).fetchall()
        return ConversationState(*state), [_row(r) for r in reversed(rows)]

    def rows_after(self, owner_id: str, conversation_id: str, after: tuple[int, int], *,
                   before: tuple[int, int] | None = None, newest_first: bool, limit: int) -> list[tuple[int, Row]]:
        order = "DESC" if newest_first else "ASC"
        end = (MAX_US + 1, 0) if before is None else before
        rows = self._query(
            f"SELECT id, {_COLUMNS} FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
            " AND (created_at, id) > (%s, %s) AND (created_at, id) < (%s, %s)"
            f" ORDER BY created_at {order}, id {order} LIMIT %s",
            (owner_id, conversation_id, *after, *end, limit))
        return [(r[0], _row(r[1:])) for r in rows]

    def count_between(self, owner_id: str, conversation_id: str, after: tuple[int, int],
                      before: tuple[int, int]) -> int:
        return int(self._query(
            "SELECT count(*) FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
            " AND (created_at, id) > (%s, %s) AND (created_at, id) < (%s, %s)",
            (owner_id, conversation_id, *after, *before))[0][0])

    def latest_user_message(self, owner_id: str, conversation_id: str) -> str | None:
        rows = self._query("SELECT content FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
                           " AND role = 'user' ORDER BY created_at DESC, id DESC LIMIT 1", (owner_id, conversation_id))
        return rows[0][0] if rows else None

    def active_conversations(self, since_us: int) -> int:
        return int(self._query(
            "SELECT count(*) FROM localmem.conversations c WHERE EXISTS (SELECT 1 FROM localmem.messages m"
            " WHERE m.owner_id = c.owner_id AND m.conversation_id = c.conversation_id AND m.created_at >= %s)",
            (since_us,))[0][0])

    def scope(self, owner_id: str, conversation_id: str | None) -> Scope:
        with self._read() as conn:
            if conversation_id is None:
                row = conn.execute("SELECT version, message_count FROM localmem.owners WHERE owner_id = %s",
                                   (owner_id,)).fetchone()
                scoped, args = "m.owner_id = %s", [owner_id]
            else:
                row = conn.execute("SELECT version, message_count FROM localmem.conversations"
                                   " WHERE owner_id = %s AND conversation_id = %s", (owner_id, conversation_id)).fetchone()
                scoped, args = "m.owner_id = %s AND m.conversation_id = %s", [owner_id, conversation_id]
            version, count = row if row is not None else (0, 0)
            generation, deleted = conn.execute(
                "SELECT coalesce((SELECT value::bigint FROM localmem.meta WHERE key = 'vector_generation'), 0),"
                " coalesce((SELECT value::bigint FROM localmem.meta WHERE key = 'emptied_stamp'), 0)").fetchone()
            pending = conn.execute(f"SELECT EXISTS (SELECT 1 FROM localmem.pending_vectors p JOIN localmem.messages m"
                                   f" ON m.id = p.id WHERE {scoped})", args).fetchone()[0]
        return Scope(token=[version, generation, deleted], size=count, pending=bool(pending))

    @contextlib.contextmanager
    def exporting(self, *, owner_id: str | None = None, conversation_id: str | None = None,
                  before_us: int | None = None, vectors: bool = False, batch_size: int = 1000,
                  exclude_owners: Sequence[str] = (), through_id: int | None = None) -> Iterator[Exported]:
        where, args = _selected(owner_id, conversation_id, before_us, exclude_owners, through_id)
        with self._read() as conn:
            total = conn.execute(f"SELECT count(*) FROM localmem.messages m{where}", args).fetchone()[0]
            row = conn.execute("SELECT value FROM localmem.meta WHERE key = 'embedder'").fetchone()
            identity = None if row is None else json.loads(row[0])
            dim = None if identity is None else identity.get("dim")
            vector, join = "NULL, false", ""
            if vectors and type(dim) is int and self._vectors_exist(conn):
                vector = "v.embedding, z.id IS NOT NULL"
                join = (" LEFT JOIN localmem.message_vectors v ON v.id = m.id"
                        " LEFT JOIN localmem.zero_vectors z ON z.id = m.id")
            cursor = conn.cursor(name=f"localmem_export_{uuid.uuid4().hex}")
            cursor.itersize = batch_size
            cursor.execute(f"SELECT {_M_COLUMNS}, {vector} FROM localmem.messages m{join}{where} ORDER BY m.id", args)
            zero = b"\0" * (4 * dim) if type(dim) is int else None

            def batches() -> Iterator[list[tuple[Row, bytes | None]]]:
                with self._mapped_errors():
                    while rows := cursor.fetchmany(batch_size):
                        yield [(_row(r[:8]), zero if r[9] else (None if r[8] is None else
                                np.asarray(r[8].to_numpy() if hasattr(r[8], "to_numpy") else r[8],
                                           dtype="<f4").tobytes()))
                               for r in rows]

            try:
                yield Exported(total, identity, batches())
            finally:
                with contextlib.suppress(psycopg.Error):
                    cursor.close()

    def count_selected(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str] = (),
                       through_id: int | None = None) -> int:
        where, args = _selected(owner_id, None, before_us, exclude_owners, through_id)
        return int(self._query(f"SELECT count(*) FROM localmem.messages m{where}", args)[0][0])

    def nth_selected_id(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str],
                        through_id: int | None, n: int) -> int | None:
        where, args = _selected(owner_id, None, before_us, exclude_owners, through_id)
        rows = self._query(f"SELECT m.id FROM localmem.messages m{where} ORDER BY m.id LIMIT 1 OFFSET %s", [*args, n - 1])
        return None if not rows else int(rows[0][0])

    def last_id(self) -> int:
        return int(self._query("SELECT coalesce(max(id), 0) FROM localmem.messages")[0][0])

    def counts(self) -> dict[str, int]:
        with self._read() as conn:
            messages, conversations = conn.execute(
                "SELECT coalesce(sum(message_count), 0), count(*) FROM localmem.conversations"
                " WHERE message_count > 0").fetchone()
            owners = conn.execute("SELECT count(*) FROM localmem.owners WHERE message_count > 0").fetchone()[0]
            version = self._schema_version(conn)
        return {"schema_version": version, "messages": int(messages), "conversations": int(conversations),
                "owners": int(owners)}

    # -- keyword search ---------------------------------------------------------------------

    def _count(self, conn: Any, word: str, limit: int) -> int:
        """How many messages match ``word`` (own text or a neighbour's), counted up to
        ``limit``; remembered for ``_COUNT_TTL`` seconds (statistics for the keyword budget
        and IDF: a count a few minutes old does as well, and counting was 19 of a keyword
        search's 21 ms at 100k messages: /work/exp16/prof2.py)."""
        now = time.monotonic()
        with self._counts_lock:
            known = self._counts.get((word, limit))
            if known is not None and now - known[1] < _COUNT_TTL:
                self._counts.move_to_end((word, limit))
                return known[0]
        query, args = _tsquery([word])
        count = int(conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM localmem.messages WHERE terms @@ {query}"
                                 " LIMIT %s) t", [*args, limit]).fetchone()[0])
        with self._counts_lock:
            self._counts[(word, limit)] = (count, now)
            self._counts.move_to_end((word, limit))
            while len(self._counts) > _COUNTS_KEPT:
                self._counts.popitem(last=False)
        return count

    def _forget_counts(self) -> None:
        """After a delete: the remembered counts go (a word's count says it was there)."""
        with self._counts_lock:
            self._counts.clear()

    def _fresh_counts(self, conn: Any) -> None:
        """Drop the remembered counts if any client deleted since they were counted: a
        count made high by messages since forgotten would leave a word out of the budget,
        and a search would miss a message that matches."""
        stamp = conn.execute("SELECT value FROM localmem.meta WHERE key = 'delete_stamp'").fetchone()
        stamp = None if stamp is None else stamp[0]
        with self._counts_lock:
            if stamp != self._counts_stamp:
                self._counts.clear()
                self._counts_stamp = stamp

    def _bounded(self, conn: Any, words: Sequence[str], *, budget: bool = True) -> list[tuple[str, int]]:
        """The words kept within the keyword budget (the rarest always), as
        store._bounded_match (a common word makes a search cost in proportion to the
        table), each with how many messages it matches (counted up to the budget + 1; the
        rarest further when every word is past it). ``budget=False``: every word, counted."""
        def count(word: str, limit: int) -> int:
            return self._count(conn, word, limit)

        if not budget or len(words) < 2:
            return [(word, count(word, _KEYWORD_BUDGET + 1)) for word in words]
        return within_budget(words, count, _KEYWORD_BUDGET)

    def keyword(self, match: str | Sequence[str], k: int, *, owner_id: str, conversation_id: str | None = None,
                since_us: int | None = None) -> list[tuple[int, float]]:
        """The ``k`` best matches in the scope as (id, score: lower is better), best first.

        The score is BM25's idea with PostgreSQL's parts: the sum over the query's words of
        the word's IDF (``ln((N - n + 0.5) / (n + 0.5) + 1)``, N messages in the database, n
        those matching the word, counted up to the keyword budget + 1) times ``ts_rank`` of
        that word alone (own text at 1.0, the neighbours' at 0.5, divided by 1 + log of the
        length), negated. ts_rank alone has no IDF: "the" counts as much as "okapi". On
        LoCoMo (benchmarks/locomo.py, keyword only) recall@10 0.667 -> 0.717, SQLite's
        FTS5 BM25 0.717; length normalisation 0 gave 0.720 but a lower recall@1, 2 (by
        length) 0.547, ts_rank_cd 0.687."""
        words = _terms(match)
        if not words:
            return []
        with self._read() as conn:
            self._fresh_counts(conn)
            counted = self._bounded(conn, words, budget=not isinstance(match, str))
            total = int(conn.execute("SELECT coalesce(sum(message_count), 0) FROM localmem.owners").fetchone()[0])
            parts, args = [], []
            for word, n in counted:
                one, one_args = _tsquery([word])
                idf = math.log((total - n + 0.5) / (n + 0.5) + 1.0)
                parts.append(f"%s * ts_rank({_RANK_WEIGHTS}, m.terms, {one}, 1)")
                args += [idf, *one_args]
            match_any, any_args = _tsquery([word for word, _ in counted])
            sql = (f"SELECT m.id, -({' + '.join(parts)}) AS score FROM localmem.messages m"
                   f" WHERE m.terms @@ {match_any} AND m.owner_id = %s")
            params: list[Any] = [*args, *any_args, owner_id]
            if conversation_id is not None:
                sql += " AND m.conversation_id = %s"
                params.append(conversation_id)
            if since_us is not None:
                sql += " AND m.created_at >= %s"
                params.append(since_us)
            sql += " ORDER BY score, m.id LIMIT %s"
            params.append(k)
            return [(r[0], float(r[1])) for r in conn.execute(sql, params).fetchall()]

    def keyword_presence(self, terms: Sequence[str], *, owner_id: str, conversation_id: str,
                         since_us: int | None, skip_text: str | None) -> tuple[bool, bool]:
        """As ``Store.keyword_presence``: the words in a message's own text (weight A) of
        this conversation (its latest user message and ``skip_text`` left out), and of
        another of the owner's."""
        words = _terms(list(terms))
        if not words:
            return False, False
        with self._read() as conn:
            self._fresh_counts(conn)
            query, args = _tsquery([word for word, _ in self._bounded(conn, words)])
            base = (f"SELECT EXISTS (SELECT 1 FROM localmem.messages m, (SELECT {query} AS q) q"
                    " WHERE m.terms @@ q.q AND ts_filter(m.terms, '{a}') @@ q.q AND m.owner_id = %s")
            since, since_args = ("", []) if since_us is None else (" AND m.created_at >= %s", [since_us])
            here = conn.execute(
                base + " AND m.conversation_id = %s AND m.content <> %s AND m.id IS DISTINCT FROM"
                " (SELECT id FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s AND role = 'user'"
                " ORDER BY created_at DESC, id DESC LIMIT 1)" + since + ")",
                [*args, owner_id, conversation_id, (skip_text or "").strip(), owner_id, conversation_id, *since_args],
            ).fetchone()[0]
            elsewhere = conn.execute(base + " AND m.conversation_id <> %s" + since + ")",
                                     [*args, owner_id, conversation_id, *since_args]).fetchone()[0]
        return bool(here), bool(elsewhere)

    def any_keyword_match(self, match: str, owner_id: str, since_us: int | None = None,
                          scan: int = 5_000) -> bool | None:
        words = _terms(match)
        if not words:
            return False
        query, args = _tsquery(words)
        sql = f"SELECT EXISTS (SELECT 1 FROM localmem.messages m WHERE m.terms @@ {query} AND m.owner_id = %s"
        params: list[Any] = [*args, owner_id]
        if since_us is not None:
            sql += " AND m.created_at >= %s"
            params.append(since_us)
        return bool(self._query(sql + ")", params)[0][0])

    # -- vectors ---------------------------------------------------------------------------

    def _vectors_exist(self, conn: Any) -> bool:
        """Asked each time (a catalog lookup): another client's reset_vectors drops the table."""
        return conn.execute("SELECT to_regclass('localmem.message_vectors')").fetchone()[0] is not None

    def pending_batch(self, limit: int, after_id: int = 0) -> list[tuple[int, str]]:
        """Claim up to ``limit`` queued messages (``FOR UPDATE SKIP LOCKED``: a row another
        worker is claiming is skipped, not waited for) for ``claim_seconds``; rows this
        handle claimed before count as free to it (its own retry)."""
        if self.read_only:
            return []

        def work(conn: Any) -> list[tuple[int, str]]:
            rows = conn.execute(
                "WITH free AS (SELECT id FROM localmem.pending_vectors WHERE id > %s AND (claimed_until IS NULL"
                " OR claimed_until < clock_timestamp() OR claimed_by = %s) ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED)"
                " UPDATE localmem.pending_vectors p SET claimed_until = clock_timestamp() + make_interval(secs => %s),"
                " claimed_by = %s FROM free, localmem.messages m WHERE p.id = free.id AND m.id = p.id"
                " RETURNING p.id, m.content",
                (after_id, self._token, limit, self.claim_seconds, self._token)).fetchall()
            return sorted((int(i), c) for i, c in rows)

        return self._write(work)

    def pending_count(self) -> int:
        return int(self._query("SELECT count(*) FROM localmem.pending_vectors")[0][0])

    def write_vectors(self, identity: dict[str, Any], ids: Sequence[int], vectors: Sequence[bytes]) -> int:
        dim = vector_dim(identity)
        return self._write(lambda conn: self._write_vectors(conn, identity, dim, ids, vectors))

    def _write_vectors(self, conn: Any, identity: dict[str, Any], dim: int, ids: Sequence[int],
                       vectors: Sequence[bytes]) -> int:
        """As ``Store.write_vectors``: a vector is written only by whoever removes its
        message from the queue (two workers never both write one; a message deleted
        meanwhile gets none)."""
        self._bind(conn, identity)
        for row_id, vector in zip(ids, vectors, strict=True):
            if len(vector) != dim * 4:
                raise InvalidInputError(f"vector for message {row_id} has {len(vector)} bytes; dim {dim} needs {dim * 4}")
        if conn.execute("SELECT to_regclass('localmem.message_vectors')").fetchone()[0] is None:
            conn.execute("SELECT pg_advisory_xact_lock(hashtext('localmem vectors'))")
            if conn.execute("SELECT to_regclass('localmem.message_vectors')").fetchone()[0] is None:
                for statement in _VECTOR_TABLE:
                    conn.execute(statement.format(dim=dim))
                if not self._bulk:
                    conn.execute(_HNSW)
        taken = {r[0] for r in conn.execute("DELETE FROM localmem.pending_vectors WHERE id = ANY(%s) RETURNING id",
                                            (list(ids),)).fetchall()}
        zero = [i for i, v in zip(ids, vectors) if i in taken and is_zero_vector(v)]
        real = [(i, np.frombuffer(v, dtype="<f4")) for i, v in zip(ids, vectors) if i in taken and not is_zero_vector(v)]
        if zero:
            conn.execute("INSERT INTO localmem.zero_vectors (id) SELECT unnest(%s::bigint[]) ON CONFLICT DO NOTHING",
                         (zero,))
        if not real:
            return 0
        with conn.cursor() as cur:
            cur.executemany(
                "INSERT INTO localmem.message_vectors (id, owner_id, conversation_id, created_at, embedding)"
                " SELECT id, owner_id, conversation_id, created_at, %s FROM localmem.messages WHERE id = %s",
                [(v, i) for i, v in real])
        return len(real)

    def reset_vectors(self) -> int:
        def work(conn: Any) -> int:
            self._bump_generation(conn)
            conn.execute("DROP TABLE IF EXISTS localmem.message_vectors")
            conn.execute("DELETE FROM localmem.meta WHERE key = 'embedder'")
            conn.execute("DELETE FROM localmem.zero_vectors")
            conn.execute("INSERT INTO localmem.pending_vectors (id) SELECT id FROM localmem.messages"
                         " ON CONFLICT DO NOTHING")
            return int(conn.execute("SELECT count(*) FROM localmem.pending_vectors").fetchone()[0])

        queued = self._write(work)
        return queued

    def vector_count(self) -> int:
        with self._read() as conn:
            if not self._vectors_exist(conn):
                return 0
            return int(conn.execute("SELECT count(*) FROM localmem.message_vectors").fetchone()[0])

    @contextlib.contextmanager
    def _vector_read(self) -> Iterator[Any]:
        """A read snapshot in which the vector table exists (None: it does not, or was
        dropped by another client's reset)."""
        with self._read() as conn:
            yield conn if self._vectors_exist(conn) else None

    def knn(self, vector: bytes, k: int, *, owner_id: str, conversation_id: str | None = None,
            since_us: int | None = None, exact_max: int = EXACT_SEARCH_MAX, spare: bool = False) -> list[tuple[int, float]]:
        """The ``k`` messages nearest ``vector`` in the scope, as (id, cosine), best first.
        Scopes of at most ``exact_max`` messages: exact. Larger: HNSW with iterative
        scans, ``ef_search`` at least ``2 k``; when the index returns fewer than ``k``
        (a filter stricter than its scan reached), the exact search answers."""
        if is_zero_vector(vector) or k < 1:
            return []
        query = np.frombuffer(vector, dtype="<f4")
        filters: list[str] = ["owner_id = %s"]
        args: list[Any] = [owner_id]
        if conversation_id is not None:
            filters.append("conversation_id = %s")
            args.append(conversation_id)
        if since_us is not None:
            filters.append("created_at >= %s")
            args.append(since_us)
        where = " AND ".join(filters)
        try:
            with self._vector_read() as conn:
                if conn is None:
                    return []
                size = conn.execute(
                    "SELECT coalesce(sum(message_count), 0) FROM localmem." + (
                        "owners WHERE owner_id = %s" if conversation_id is None
                        else "conversations WHERE owner_id = %s AND conversation_id = %s"),
                    args[: 1 if conversation_id is None else 2]).fetchone()[0]
                found: list[tuple[int, float]] = []
                if size > exact_max:
                    total = max(1, conn.execute("SELECT coalesce(sum(message_count), 0) FROM localmem.owners")
                                .fetchone()[0])
                    ef = min(_EF_SEARCH_MAX, max(_EF_SEARCH_MIN, 2 * k))
                    scan = min(10_000_000, max(_MAX_SCAN_TUPLES, int(4 * ef * total / max(size, 1))))
                    conn.execute("SELECT set_config('hnsw.ef_search', %s, true), set_config('hnsw.iterative_scan',"
                                 " 'relaxed_order', true), set_config('hnsw.max_scan_tuples', %s, true)",
                                 (str(ef), str(scan)))
                    found = [(int(i), 1.0 - float(d)) for i, d in conn.execute(
                        f"SELECT id, embedding <=> %s AS d FROM localmem.message_vectors WHERE {where}"
                        " ORDER BY embedding <=> %s LIMIT %s", [query, *args, query, k]).fetchall()]
                if len(found) < k:
                    # Exact: "+ 0" keeps the planner off the HNSW index, onto the scope's btree.
                    found = [(int(i), 1.0 - float(d)) for i, d in conn.execute(
                        f"SELECT id, embedding <=> %s AS d FROM localmem.message_vectors WHERE {where}"
                        " ORDER BY (embedding <=> %s) + 0, id LIMIT %s", [query, *args, query, k]).fetchall()]
        except StoreError as exc:
            if isinstance(exc.__cause__, pg_errors.UndefinedTable):
                return []
            raise
        found = [(i, c) for i, c in found if not math.isnan(c)]  # NaN: no direction
        found.sort(key=lambda pair: (-pair[1], pair[0]))
        return found

    def cosines(self, vector: bytes, ids: Sequence[int], owner_id: str | None = None) -> dict[int, float]:
        if not ids or is_zero_vector(vector):
            return {}
        query = np.frombuffer(vector, dtype="<f4")
        with self._vector_read() as conn:
            if conn is None:
                return {}
            rows = conn.execute("SELECT id, 1 - (embedding <=> %s) FROM localmem.message_vectors WHERE id = ANY(%s)",
                                (query, list(ids))).fetchall()
        return {int(i): float(c) for i, c in rows if not math.isnan(c)}

    def recent_similarity(self, vector: bytes, owner_id: str, conversation_id: str, n: int) -> float | None:
        if is_zero_vector(vector):
            return None
        query = np.frombuffer(vector, dtype="<f4")
        with self._vector_read() as conn:
            if conn is None:
                return None
            row = conn.execute(
                "SELECT max(1 - (v.embedding <=> %s)) FROM (SELECT id FROM localmem.messages WHERE owner_id = %s"
                " AND conversation_id = %s ORDER BY created_at DESC, id DESC LIMIT %s) r"
                " JOIN localmem.message_vectors v ON v.id = r.id", (query, owner_id, conversation_id, n)).fetchone()
        return None if row is None or row[0] is None else float(row[0])

    # -- summaries --------------------------------------------------------------------------

    def summary(self, owner_id: str, conversation_id: str) -> SummaryRow | None:
        rows = self._query(f"SELECT {_SUMMARY_COLUMNS} FROM localmem.summaries WHERE owner_id = %s"
                           " AND conversation_id = %s", (owner_id, conversation_id))
        return SummaryRow._make(rows[0]) if rows else None

    def save_summary(self, owner_id: str, conversation_id: str, *, expected_version: int, text: str,
                     after: tuple[int, int], through: tuple[int, int], ids: Sequence[int], folded: int,
                     summarizer: str) -> bool:
        """As ``Store.save_summary``. The conversation's row is locked first, so no insert
        or delete in it commits between the check and the write."""
        values = (text, through[0], through[1], folded, summarizer, now_us(), owner_id, conversation_id)

        def work(conn: Any) -> bool:
            if conn.execute("SELECT 1 FROM localmem.conversations WHERE owner_id = %s AND conversation_id = %s"
                            " FOR UPDATE", (owner_id, conversation_id)).fetchone() is None:
                return False
            present, newest = conn.execute(
                "SELECT count(*), max(id) FROM localmem.messages WHERE owner_id = %s AND conversation_id = %s"
                " AND (created_at, id) > (%s, %s) AND (created_at, id) <= (%s, %s)",
                (owner_id, conversation_id, *after, *through)).fetchone()
            if present != len(ids) or newest != max(ids):
                return False
            if expected_version == 0:
                cur = conn.execute(
                    "INSERT INTO localmem.summaries (text, through_us, through_id, folded, summarizer, updated_us,"
                    " owner_id, conversation_id, version) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, 1)"
                    " ON CONFLICT DO NOTHING", values)
            else:
                cur = conn.execute(
                    "UPDATE localmem.summaries SET text = %s, through_us = %s, through_id = %s, folded = %s,"
                    " summarizer = %s, updated_us = %s, version = version + 1"
                    " WHERE owner_id = %s AND conversation_id = %s AND version = %s", (*values, expected_version))
            return bool(cur.rowcount == 1)

        return self._write(work)

    # -- upkeep -----------------------------------------------------------------------------

    def vector_waste(self) -> list[tuple[str, int]]:
        return []  # pgvector's heap and HNSW reuse freed space after VACUUM: nothing to pack

    def compact_vectors(self, owner_id: str) -> None:
        return None

    def refresh_vector_indexes(self) -> tuple[int, int]:
        """PostgreSQL keeps the HNSW index itself; this builds it when it is missing (a
        bulk load stopped before its end), unless a bulk load is running. (1, 0) when built."""
        if self.read_only:
            return 0, 0
        conn: Any
        with self._mapped_errors(), self._get_pool().connection() as conn:
            if not self._vectors_exist(conn) or conn.execute(_HAS_HNSW).fetchone()[0]:
                return 0, 0
            if not conn.execute(f"SELECT pg_try_advisory_lock({_BULK_LOCK})").fetchone()[0]:
                return 0, 0
            try:
                self._build_hnsw(conn)
            finally:
                conn.execute(f"SELECT pg_advisory_unlock({_BULK_LOCK})")
        return 1, 0

    @staticmethod
    def _build_hnsw(conn: Any) -> None:
        """Build the HNSW index, then ANALYZE: without statistics of the loaded tables, the
        planner scanned all 100k vectors (250 ms a search) until autovacuum came by."""
        conn.execute("SELECT set_config('maintenance_work_mem', %s, false)", (_BUILD_MEMORY,))
        try:
            conn.execute(_HNSW)
        finally:
            conn.execute("RESET maintenance_work_mem")
        conn.execute("ANALYZE localmem.messages, localmem.message_vectors")

    @contextlib.contextmanager
    def bulk_load(self) -> Iterator[None]:
        """Vectors written inside are indexed at the end, in one HNSW build, when there were
        none before: pgvector builds an index ~9x faster from the loaded table than by
        inserting into it (20k vectors of 384 dimensions here: 188 vectors/s inserted into
        the index, 1625/s loaded then indexed: /work/exp16/vec.py). Searches meanwhile are
        exact (no index: correct, slower). A load stopped before its end leaves the index
        to ``maintain()`` (``refresh_vector_indexes``); ``check_integrity`` says so."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path} was opened read_only: nothing can be written")
        holder: Any
        with self._mapped_errors():
            holder = psycopg.connect(self._url, autocommit=True)
        try:
            with self._mapped_errors():
                holder.execute(f"SELECT pg_advisory_lock({_BULK_LOCK})")
                deferred = holder.execute(
                    "SELECT to_regclass('localmem.message_vectors') IS NULL").fetchone()[0]
                if not deferred:
                    if not holder.execute(_HAS_HNSW).fetchone()[0]:
                        deferred = True  # an earlier load stopped before its end: built at this one's
                    elif holder.execute("SELECT NOT EXISTS (SELECT 1 FROM localmem.message_vectors)").fetchone()[0]:
                        holder.execute("DROP INDEX IF EXISTS localmem.message_vectors_hnsw")
                        deferred = True
            self._bulk = holder if deferred else None
            yield
            if deferred:
                with self._mapped_errors():
                    if holder.execute("SELECT to_regclass('localmem.message_vectors') IS NOT NULL").fetchone()[0]:
                        self._build_hnsw(holder)
        finally:
            self._bulk = None
            with contextlib.suppress(psycopg.Error):
                holder.close()  # (ends the session: the advisory lock goes with it)

    def file_bytes(self) -> int:
        """The size of localmem's tables and indexes."""
        return int(self._query(
            "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0) FROM pg_class c JOIN pg_namespace n"
            " ON n.oid = c.relnamespace WHERE n.nspname = 'localmem' AND c.relkind = 'r'")[0][0])

    def pages(self) -> tuple[int, int, int]:
        return 8192, 0, 0  # autovacuum gives space back; maintain() has no VACUUM to decide

    def vacuum(self) -> None:
        """VACUUM localmem's tables: deleted rows' space (and their index entries) becomes
        reusable, so their bytes are overwritten by later writes. (VACUUM FULL, which
        rewrites the tables, would lock out every client meanwhile.)"""
        if self.read_only:
            raise ReadOnlyError(f"{self.path} was opened read_only: nothing can be written")
        with self._mapped_errors(), self._get_pool().connection() as conn:
            tables = [r[0] for r in conn.execute(
                "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE n.nspname = 'localmem' AND c.relkind = 'r'").fetchall()]
            conn.execute("VACUUM (ANALYZE) " + ", ".join(tables))

    def checkpoint(self, wait: float) -> int:
        return 0  # the server's own checkpoints; nothing of localmem's to copy back

    def check_integrity(self) -> str:
        """"ok", or a line per problem: every message has its terms; every message is
        queued, embedded, or set aside as zero (exactly one); the counts and the rows
        agree."""
        problems: list[str] = []
        with self._read() as conn:
            missing = conn.execute("SELECT count(*) FROM localmem.messages WHERE terms IS NULL").fetchone()[0]
            if missing:
                problems.append(f"{missing} messages have no keyword terms")
            vectors = "localmem.message_vectors" if self._vectors_exist(conn) else None
            parts = ["SELECT id FROM localmem.pending_vectors", "SELECT id FROM localmem.zero_vectors"]
            if vectors:
                parts.append(f"SELECT id FROM {vectors}")
            unaccounted, twice = conn.execute(
                "SELECT count(*) FILTER (WHERE n = 0), count(*) FILTER (WHERE n > 1) FROM (SELECT m.id, count(x.id) AS n"
                f" FROM localmem.messages m LEFT JOIN ({' UNION ALL '.join(parts)}) x ON x.id = m.id GROUP BY m.id) t"
            ).fetchone()
            if unaccounted:
                problems.append(f"{unaccounted} messages are neither embedded nor queued")
            if twice:
                problems.append(f"{twice} messages are in more than one of: queue, vectors, zero vectors")
            wrong = conn.execute(
                "SELECT count(*) FROM localmem.conversations c FULL JOIN (SELECT owner_id, conversation_id, count(*) AS n"
                " FROM localmem.messages GROUP BY 1, 2) m USING (owner_id, conversation_id)"
                " WHERE coalesce(c.message_count, 0) <> coalesce(m.n, 0)").fetchone()[0]
            if wrong:
                problems.append(f"{wrong} conversations' counts differ from their messages")
            if vectors and not conn.execute(_HAS_HNSW).fetchone()[0]:
                problems.append("the vectors have no HNSW index (a bulk load stopped before its end?): "
                                "maintain() builds it; searches are exact meanwhile")
        return "ok" if not problems else "\n".join(problems)

