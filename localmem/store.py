"""The SQLite store: one file holding messages, their FTS5 index, conversations and meta.

Rules this module keeps (see DESIGN.md):

* WAL, ``synchronous=NORMAL`` (``durability="full"``: ``FULL``), ``busy_timeout``.
* Every write is one ``BEGIN IMMEDIATE`` transaction, retried until ``lock_timeout``, then
  ``LockTimeoutError``. A message, its FTS5 row and its conversation's version are written by
  the same transaction, so no crash can separate them.
* The schema version lives in ``PRAGMA user_version``; ``MIGRATIONS[i]`` takes a file from
  version ``i`` to ``i + 1``, in one transaction. A file from a newer localmem is refused.
* Messages are immutable. Each conversation, keyed by ``(owner_id, conversation_id)``, and
  each owner has a ``version`` that every insert or delete of one of its messages replaces:
  caches compare it to know whether what they hold is current. A version is never a
  counter: a counter repeats after a backup is restored, a copy diverges, or a power loss
  drops the last commits, and a cache would then take other contents for the ones it holds.
  It is the file's ``write_stamp`` XOR the message's id (see ``_INSERTED``); every write
  connection sets a fresh random stamp with its first write, and each of those cases
  comes back through a new connection (SQLite forbids replacing a file under an open one).
* Reads run on a pool of read-only connections, one per concurrent reader, so that they
  never wait behind a writer that waits for the file lock (WAL lets them read meanwhile);
  writes run on one connection whose lock a thread waits for within ``lock_timeout``.
* A raw driver error never escapes: ``_mapped_errors`` turns it into a ``StoreError``.
* ``read_only=True`` opens an existing file with ``mode=ro`` connections only (the rules for
  WAL files on read-only media are in ``driver``): no migration, no journal-mode switch, no
  write stamp, no ``PRAGMA optimize``; every write raises ``ReadOnlyError`` in ``write()``,
  before SQLite is asked.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from . import driver, vector_index
from .backend import (
    EXACT_SEARCH_MAX,
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
    LockTimeoutError,
    ReadOnlyError,
    StorageFullError,
    StoreError,
)
from .records import Message, Row
from .validate import MAX_US, MIN_US, NewMessage, now_us

# The message just before (cmp "<", order DESC) or just after (">", ASC) message ``m`` in
# its conversation, by (created_at, id); ``col`` picks what to return. Uses the
# messages_by_conversation index.
_NEIGHBOUR = (
    "(SELECT n.{col} FROM messages n WHERE n.conversation_id = {m}.conversation_id"
    " AND n.owner_id = {m}.owner_id AND (n.created_at, n.id) {cmp} ({m}.created_at, {m}.id)"
    " ORDER BY n.created_at {order}, n.id {order} LIMIT 1)"
)

# The version a row change gives its conversation and owner: the write stamp (see the
# module docstring; each write connection sets a fresh random one with its first write,
# from os.urandom: SQLite's random() would repeat in a forked child, which inherits its
# PRNG state) XOR the message's id, negated for a delete. Ids are never reused in a file
# (AUTOINCREMENT), so a version changes with every row change, even one written without
# Store.write (by a raw connection, say); a fresh stamp keeps the versions of a restored
# backup's new life apart from those of its lost one, whose ids it reuses. (SQLite has no
# XOR operator: a ^ b = (a | b) - (a & b), exact for any two 64-bit ints.)
_STAMP = "(SELECT value FROM write_stamp)"
_INSERTED = f"(({_STAMP} | new.id) - ({_STAMP} & new.id))"
_DELETED = f"(({_STAMP} | -old.id) - ({_STAMP} & -old.id))"

# Empties the summary of message ``m``'s conversation (the caller adds the condition): a
# new version, no text, nothing covered.
_EMPTY_SUMMARY = (
    "UPDATE summaries SET version = version + 1, text = '', through_us = -9223372036854775808,"
    " through_id = 0, folded = 0,"
    " updated_us = CAST((julianday('now') - 2440587.5) * 86400000000 AS INTEGER)"
    " WHERE owner_id = {m}.owner_id AND conversation_id = {m}.conversation_id"
)

# What the delete trigger does after repointing the neighbours' keyword rows (schema 3 on).
_AFTER_DELETE = f"""DELETE FROM messages_fts WHERE rowid = old.id;
            UPDATE conversations SET version = {_DELETED}, message_count = message_count - 1
                WHERE owner_id = old.owner_id AND conversation_id = old.conversation_id;
            UPDATE owners SET version = {_DELETED}, message_count = message_count - 1
                WHERE owner_id = old.owner_id;
            DELETE FROM zero_vectors WHERE id = old.id;"""

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
    # 2 -> 3: versions that never repeat, an owners table, vectors with no direction.
    # Every write connection first sets write_stamp to a fresh random value (Store.write);
    # the triggers derive from it the versions of the conversation and owner they touch.
    # (The migration sets every version to its own stamp: Store._migrate.)
    (
        """CREATE TABLE write_stamp (
            only  INTEGER PRIMARY KEY CHECK (only = 1),
            value INTEGER NOT NULL
        )""",
        "INSERT INTO write_stamp (only, value) VALUES (1, 0)",
        """CREATE TABLE owners (
            owner_id      TEXT PRIMARY KEY,
            version       INTEGER NOT NULL,
            message_count INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """INSERT INTO owners (owner_id, version, message_count)
            SELECT owner_id, 0, sum(message_count) FROM conversations GROUP BY owner_id""",
        # Messages embedded as the zero vector (a custom embedder's answer for a text it
        # has nothing for): it has no direction, so cosine is undefined (vec0 returns NULL,
        # and sorts it ahead of every real neighbour). They get no row in message_vectors,
        # are found by keywords only, and are counted here so that check_integrity() can
        # still account for every message.
        "CREATE TABLE zero_vectors (id INTEGER PRIMARY KEY)",
        "DROP TRIGGER messages_after_insert",
        f"""CREATE TRIGGER messages_after_insert AFTER INSERT ON messages BEGIN
            INSERT INTO conversations (owner_id, conversation_id, version, message_count)
                VALUES (new.owner_id, new.conversation_id, {_INSERTED}, 1)
                ON CONFLICT DO UPDATE SET version = excluded.version, message_count = message_count + 1;
            INSERT INTO owners (owner_id, version, message_count)
                VALUES (new.owner_id, {_INSERTED}, 1)
                ON CONFLICT DO UPDATE SET version = excluded.version, message_count = message_count + 1;
            INSERT INTO pending_vectors (id) VALUES (new.id);
        END""",
        "DROP TRIGGER messages_after_delete",
        f"""CREATE TRIGGER messages_after_delete AFTER DELETE ON messages BEGIN
            UPDATE messages_fts SET prev = {_NEIGHBOUR.format(m="old", cmp="<", order="DESC", col="content")}
                WHERE rowid = {_NEIGHBOUR.format(m="old", cmp=">", order="ASC", col="id")};
            {_AFTER_DELETE}
        END""",
    ),
    # 3 -> 4: each conversation's running summary (localmem/summaries.py folds the messages
    # that slid out of the recent window into it). One row per conversation: ``version``
    # grows with every fold and is what a fold compares before it writes, so two folders
    # (threads, processes) never both apply theirs; the summary covers every message at or
    # before (through_us, through_id) in the conversation's (created_at, id) order.
    (
        """CREATE TABLE summaries (
            owner_id        TEXT NOT NULL,
            conversation_id TEXT NOT NULL,
            version         INTEGER NOT NULL,
            text            TEXT NOT NULL,
            through_us      INTEGER NOT NULL,
            through_id      INTEGER NOT NULL,
            folded          INTEGER NOT NULL,  -- messages folded in since it was last emptied
            summarizer      TEXT NOT NULL,
            updated_us      INTEGER NOT NULL,
            PRIMARY KEY (owner_id, conversation_id)
        ) WITHOUT ROWID""",
        # A summary must not outlive what it summarises: deleting a message it covers empties
        # it (the next fold rebuilds it from the messages left), and so does a message
        # written with a time it covers, which it never saw. Triggers, so no path forgets.
        f"""CREATE TRIGGER summaries_after_delete AFTER DELETE ON messages BEGIN
            {_EMPTY_SUMMARY.format(m="old")}
                AND (old.created_at, old.id) <= (through_us, through_id);
        END""",
        f"""CREATE TRIGGER summaries_after_insert AFTER INSERT ON messages BEGIN
            {_EMPTY_SUMMARY.format(m="new")}
                AND new.created_at < through_us;
        END""",
    ),
    # 4 -> 5: a third keyword column, ``next``, holding the following message of the
    # conversation at half weight (bm25(messages_fts, 1.0, 0.5, 0.5)): a question turn
    # ("You play any instruments?") is found by the words of its answer, as a reply is by
    # its question's (``prev``). On LoCoMo with score fusion and the signals (measured
    # offline on the same candidates): recall@10 0.765 -> 0.781, no embedding cost. The table is rebuilt, as for ``prev``.
    (
        "DROP TRIGGER messages_after_delete",
        "DROP TABLE messages_fts",
        """CREATE VIRTUAL TABLE messages_fts USING fts5(
            content, prev, next, tokenize='porter unicode61 remove_diacritics 2'
        )""",
        """INSERT INTO messages_fts (rowid, content, prev, next)
            SELECT id, content, lag(content) OVER w, lead(content) OVER w FROM messages
            WINDOW w AS (PARTITION BY owner_id, conversation_id ORDER BY created_at, id)""",
        # A deleted message's neighbours take each other as ``prev`` and ``next``.
        f"""CREATE TRIGGER messages_after_delete AFTER DELETE ON messages BEGIN
            UPDATE messages_fts SET prev = {_NEIGHBOUR.format(m="old", cmp="<", order="DESC", col="content")}
                WHERE rowid = {_NEIGHBOUR.format(m="old", cmp=">", order="ASC", col="id")};
            UPDATE messages_fts SET next = {_NEIGHBOUR.format(m="old", cmp=">", order="ASC", col="content")}
                WHERE rowid = {_NEIGHBOUR.format(m="old", cmp="<", order="DESC", col="id")};
            {_AFTER_DELETE}
        END""",
    ),
    # 5 -> 6: the approximate index of large owners (localmem/vector_index.py) lives in files
    # beside the database; here is which file each owner's is (``vector_indexes``: the
    # vector generation it belongs to, the log position it covers) and what changed since
    # (``vector_log``: the ids whose vector was written or deleted, kept only for owners
    # that have an index, and trimmed when a newer file is published).
    (
        """CREATE TABLE vector_indexes (
            owner_id   TEXT PRIMARY KEY,
            generation INTEGER NOT NULL,
            seq        INTEGER NOT NULL,
            file       TEXT,
            count      INTEGER NOT NULL,
            trained    INTEGER NOT NULL
        ) WITHOUT ROWID""",
        """CREATE TABLE vector_log (
            seq      INTEGER PRIMARY KEY AUTOINCREMENT,
            owner_id TEXT NOT NULL,
            id       INTEGER NOT NULL
        )""",
        "CREATE INDEX vector_log_by_owner ON vector_log (owner_id, seq)",
        """CREATE TRIGGER messages_after_delete_indexed AFTER DELETE ON messages
            WHEN EXISTS (SELECT 1 FROM vector_indexes WHERE owner_id = old.owner_id) BEGIN
            INSERT INTO vector_log (owner_id, id) VALUES (old.owner_id, old.id);
        END""",
    ),
)
SCHEMA_VERSION = len(MIGRATIONS)
# Statements that give every version in the file the current write stamp: run when a
# file is migrated to version 3, so that no version from before (a counter) stays.
_RESTAMP = (
    f"UPDATE conversations SET version = {_STAMP}",
    f"UPDATE owners SET version = {_STAMP}",
)

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
# The owner's messages that have a vector (not waiting for one, not set aside as zero).
_VECTOR_IDS = (
    "SELECT m.id FROM messages m WHERE m.owner_id = ?"
    " AND NOT EXISTS (SELECT 1 FROM pending_vectors p WHERE p.id = m.id)"
    " AND NOT EXISTS (SELECT 1 FROM zero_vectors z WHERE z.id = m.id)"
)
_LOG_VECTOR = (
    "INSERT INTO vector_log (owner_id, id) SELECT owner_id, id FROM messages"
    " WHERE id = ? AND owner_id IN (SELECT owner_id FROM vector_indexes)"
)
# A conversation's newest user message (args: conversation_id, owner_id).
_LATEST_USER_MESSAGE = (
    "SELECT {column} FROM messages WHERE conversation_id = ? AND owner_id = ?"
    " AND role = 'user' ORDER BY created_at DESC, id DESC LIMIT 1"
)
_VECTOR_DELETE_TRIGGER = """CREATE TRIGGER messages_after_delete_vector AFTER DELETE ON messages
BEGIN
    DELETE FROM message_vectors WHERE rowid = old.id;
END"""

_COLUMNS = "msg_id, conversation_id, owner_id, role, content, created_at, feature, metadata"  # a Row
_M_COLUMNS = ", ".join(f"m.{name.strip()}" for name in _COLUMNS.split(","))  # the same, of messages m
_INSERT = (
    "INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at,"
    " feature, metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
# Keyword rows for messages, each with its predecessor as ``prev`` and its successor as
# ``next``: _INSERT_FTS for the messages with id > ?, _REINDEX_FTS for a list of ids
# ({marks}: its ?s).
_FTS_ROWS = (
    "INSERT INTO messages_fts (rowid, content, prev, next) SELECT m.id, m.content, "
    + _NEIGHBOUR.format(m="m", cmp="<", order="DESC", col="content") + ", "
    + _NEIGHBOUR.format(m="m", cmp=">", order="ASC", col="content")
    + " FROM messages m WHERE "
)
_INSERT_FTS = _FTS_ROWS + "m.id > ?"
_REINDEX_FTS = _FTS_ROWS + "m.id IN ({marks})"
# New messages (id > ?) whose predecessor is an older message: that one's ``next`` is now
# the new message. Every append finds one per conversation it writes to.
_FOLLOWED = (
    "SELECT p.id, m.content FROM messages m JOIN messages p ON p.id = "
    + _NEIGHBOUR.format(m="m", cmp="<", order="DESC", col="id")
    + " WHERE m.id > ?1 AND p.id <= ?1"
)
# New messages (id > ?) whose successor is an older message: that one's ``prev`` is now the
# new message (a backdated insert). Append-only writes find none.
_DISPLACED = (
    "SELECT s.id, m.content FROM messages m JOIN messages s ON s.id = "
    + _NEIGHBOUR.format(m="m", cmp=">", order="ASC", col="id")
    + " WHERE m.id > ?1 AND s.id <= ?1"
)
# In meta when every write to the file ran with secure_delete on (since its creation, or
# since a VACUUM rewrote it): forget() then needs no VACUUM to leave no stale copy.
SECURE_SINCE = "secure_delete_since"
# Store.forget makes the vector table anew, instead of deleting row by row, when it
# removes at least this share of the stored vectors (and at least _REBUILD_MIN): per-row
# deletes cost ~0.4 ms each when spread over the chunks, a rebuild ~0.05 ms per vector kept.
_REBUILD_SHARE = 0.15
_REBUILD_MIN = 2000
_FORGET_SUMMARY = (
    "UPDATE summaries SET version = version + 1, text = '', through_us = -9223372036854775808,"
    " through_id = 0, folded = 0, updated_us = ? WHERE owner_id = ? AND conversation_id = ?"
)
_CHECKPOINT_TRY_MS = 50  # Store.checkpoint: how long one try waits for readers, lock held
_CHECKPOINT_PAUSE = 0.1  # and the pause between tries, lock released
_MAX_PARAMS = 500  # per IN (...) lookup, well under SQLite's limit
_MAX_K = 4096  # sqlite-vec's largest k
_MMAP_SIZE = 1 << 30  # bytes of the file read through mmap (SQLite caps it at its own limit)

# Vector search: scopes up to EXACT_SEARCH_MAX messages get an exact float scan; larger ones
# a sign-bit scan for OVERSAMPLE x k candidates (at least MIN_CANDIDATES), re-scored exactly.
# sqlite-vec's top-k selection costs n x k, so candidates are the price: 160 of 100k
# vectors take ~17 ms and give recall@10 0.92 against the exact ranking on LoCoMo-derived
# vectors (benchmarks/semantic_speed.py; see the README's speed table).
OVERSAMPLE = 2
MIN_CANDIDATES = 160
# Owners past vector_index.INDEX_MIN: candidates asked of their index (at least), scored
# with the file's float16 copies.
INDEX_CANDIDATES = 40
INDEX_RETRY_AFTER = 30.0  # seconds before a background build that did not publish is tried again

log = logging.getLogger(__name__)

# SQLite primary result codes (https://sqlite.org/rescode.html).
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 26


# Keyword search's work. FTS5 scores every row that matches any word of the query, in the
# whole file, before the owner and conversation filters; a word matches about 3x the
# messages that hold it (the content, prev and next columns), so a common one ("like",
# "time") makes a search cost in proportion to the file. KEYWORD_BUDGET bounds the rows
# scored: the query's words are counted (each count stops at the budget), and the most
# common are left out while the kept ones match more rows than that, the rarest always
# kept (None: no budget). Measured (benchmarks/keyword_scale.py, LoCoMo turns cycled, one
# owner, p50/p95 of the owner's search): 100k messages 47.7/113 -> 5.6/12.3 ms, 1M
# 502/1234 -> 15.1/77.5 ms (the tail: queries whose every word is common). On LoCoMo
# (2,760 messages) 5000 never binds: recall unchanged. Scaled to LoCoMo's size (the same
# share of the file as 5000 / 20k / 50k at 1M: 14 / 55 / 138 rows) it costs recall@10
# 0.793 -> 0.682 / 0.717 / 0.750: on a million messages of such text, words left out
# cost recall. Scoring only the newest matches of a word too common for the budget
# (ORDER BY rowid DESC LIMIT inside the MATCH) was tried: 0.647 at 14 rows, dropped.
# Adding the left-out words' BM25 to the bounded search's top rows afterwards (exact for
# them: bm25 is a sum over the words) won back 0.016-0.022 of recall@10 at the scaled
# budgets (0.033-0.043 when the KNN's candidates were re-scored too) for about twice the
# keyword search's time (100k: 9.2 -> 18.4 ms on a loaded machine): not kept (branch
# bm25-rescore), since it would take the fused search at 100k past its 10 ms.
KEYWORD_BUDGET: int | None = 5_000


def _bounded_match(conn: Any, terms: Sequence[str], budget: int | None) -> str:
    """The FTS5 expression OR-ing the ``terms`` (each an FTS5 string) kept within
    ``budget`` rows (the rarest always; ``backend.within_budget``)."""
    if budget is None or len(terms) < 2:
        return " OR ".join(terms)
    kept = within_budget(terms, lambda term, limit: _count_matches(conn, term, limit), budget)
    return " OR ".join(term for term, _ in kept)


def _count_matches(conn: Any, term: str, limit: int) -> int:
    """How many rows match ``term``, counted up to ``limit`` (the count reads the word's
    list of rows, no scoring)."""
    return conn.execute("SELECT count(*) FROM (SELECT 1 FROM messages_fts WHERE messages_fts MATCH ? LIMIT ?)",
                        (term, limit)).fetchone()[0]


def _in_chunks(values: Sequence[Any]) -> Iterator[tuple[list[Any], str]]:
    """``values`` in parts of at most ``_MAX_PARAMS``, each with its ``?, ?, ...`` for an
    ``IN (...)``: SQLite limits the parameters of a statement."""
    for start in range(0, len(values), _MAX_PARAMS):
        part = list(values[start : start + _MAX_PARAMS])
        yield part, ",".join("?" * len(part))


def _cosines(conn: Any, vector: bytes, ids: Sequence[int]) -> Iterator[tuple[int, float]]:
    """(id, cosine similarity to ``vector``) of each message of ``ids`` with a stored
    vector, one point lookup each in one statement (the loop in C: vec0 turns the join's
    rowid equality into its rowid index); a vector with no direction (NaN) is left out."""
    for row_id, distance in conn.execute(
        "SELECT j.value, vec_distance_cosine(v.embedding, ?) FROM json_each(?) j"
        " JOIN message_vectors v ON v.rowid = j.value", (vector, json.dumps(list(ids)))
    ):
        if distance is not None:
            yield row_id, 1.0 - distance


def _vector_rows(conn: Any, ids: Sequence[int], columns: str) -> list[tuple[Any, ...]]:
    """(rowid, ``columns``...) of the vector table's rows of ``ids`` that exist. Through a
    join, as ``_cosines`` does: sqlite-vec answers ``rowid IN (...)`` with a scan of the
    whole table (23 ms for 2 ids at 100k vectors), a join's equality with its rowid index."""
    return conn.execute(f"SELECT j.value, {', '.join('v.' + c.strip() for c in columns.split(','))}"
                        " FROM json_each(?) j JOIN message_vectors v ON v.rowid = j.value",
                        (json.dumps(list(ids)),)).fetchall()


def _signature(path: Path) -> tuple[Any, ...]:
    """What tells a file from the one that had its name before it (None: no file)."""
    try:
        st = path.stat()
    except OSError:
        return (path.name, None)
    return (path.name, st.st_ino, st.st_size, st.st_mtime_ns)


def _error_code(exc: BaseException) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


def _is_busy(exc: BaseException) -> bool:
    code = _error_code(exc)
    if code is not None:
        return code in (_BUSY, _LOCKED)
    return "locked" in str(exc).lower()


def _disk_is_full(path: str) -> bool:
    """Is the file system holding ``path`` out of space? SQLite reports some writes on a
    full disk (growing the -shm file, say) as a plain I/O error."""
    try:
        info = os.statvfs(os.path.dirname(os.path.abspath(path)) or ".")
    except (OSError, AttributeError):  # AttributeError: no statvfs (Windows)
        return False
    return info.f_bavail * info.f_frsize < 64 * 1024


def map_error(exc: Exception, path: str) -> StoreError:
    """The StoreError that stands for a driver error."""
    code = _error_code(exc)
    text = str(exc).lower()
    if _is_busy(exc):
        return LockTimeoutError(f"{path}: the database stayed locked by another connection ({exc})")
    if code == _FULL or "disk is full" in text or (code == _IOERR and _disk_is_full(path)):
        return StorageFullError(f"{path}: the disk is full ({exc})")
    if code in (_CORRUPT, _NOTADB) or "not a database" in text or "malformed" in text:
        return CorruptDatabaseError(f"{path}: not a usable localmem database ({exc})")
    if code == _READONLY or (code == _CANTOPEN and os.path.isfile(path) and not driver.can_write(path)):
        return ReadOnlyError(
            f"{path}: the file cannot be written here ({exc}): read-only media or no write "
            "permission; to read it, open it with read_only=True"
        )
    return StoreError(f"{path}: {exc}")


def _refuse_hard_links(path: str) -> None:
    """Refuse a database file with more than one name. SQLite finds the -wal and -shm
    files by the name it was opened with: two processes opening one file by two hard
    links each use a WAL of their own, and every acknowledged write of one can be lost
    (symbolic links are fine: SQLite resolves them)."""
    try:
        links = os.stat(path).st_nlink
    except FileNotFoundError:
        return
    except OSError as exc:
        raise StoreError(f"{path}: cannot read the file's status ({exc})") from exc
    if links > 1:
        raise StoreError(
            f"{path} has {links} hard links. SQLite keeps its write-ahead log beside the name a "
            "file is opened by, so two names for one database can lose committed writes. Open "
            "it by one name only: remove the other links, or make a copy (cp) instead of a link"
        )


_SUMMARY_COLUMNS = "version, text, through_us, through_id, folded, summarizer, updated_us"  # a SummaryRow


def _selected(owner_id: str | None, conversation_id: str | None, before_us: int | None,
              exclude_owners: Sequence[str] = (), through_id: int | None = None) -> tuple[str, list[Any]]:
    """The WHERE clause (or "") over ``messages m`` picking the messages of an owner, of
    one of its conversations, created before a time: any of them None is no condition.
    (Retention's archive also leaves out the owners with policies of their own, and the
    messages written after ``through_id``: see ``Store.forget``.)"""
    conditions: list[str] = []
    args: list[Any] = []
    for condition, value in (("m.owner_id = ?", owner_id), ("m.conversation_id = ?", conversation_id),
                             ("m.created_at < ?", before_us), ("m.id <= ?", through_id)):
        if value is not None:
            conditions.append(condition)
            args.append(value)
    if exclude_owners:
        conditions.append(f"m.owner_id NOT IN ({', '.join('?' * len(exclude_owners))})")
        args.extend(exclude_owners)
    return (" WHERE " + " AND ".join(conditions)) if conditions else "", args


class Store:
    """One SQLite file. Thread-safe: writes on one connection behind a lock, reads on a
    pool of read-only connections. Fork-safe: a child process opens its own connections
    on first use.

    ``read_only``: open an existing file for reading only (see the module docstring): a
    missing file is a ``StoreError`` (never created), a file of an older schema a
    ``ReadOnlyError`` (upgrading is a write: open it once read-write), a newer one a
    ``CorruptDatabaseError`` as always.
    """

    def __init__(
        self, path: str, *, durability: str = "normal", lock_timeout: float = 5.0, read_only: bool = False,
        index_dir: str | None = None,
    ):
        if durability not in ("normal", "full"):
            raise InvalidInputError(f"durability must be 'normal' or 'full', not {durability!r}")
        if not isinstance(lock_timeout, (int, float)) or not 0 < lock_timeout <= 3600:
            raise InvalidInputError(f"lock_timeout must be seconds in (0, 3600]; got {lock_timeout!r}")
        if type(read_only) is not bool:
            raise InvalidInputError(f"read_only must be True or False; got {read_only!r}")
        self.path = path
        self.durability = durability
        self.lock_timeout = float(lock_timeout)
        self.read_only = read_only
        self._in_memory = path == ":memory:" or path.startswith("file::memory:")
        if read_only and self._in_memory:
            raise InvalidInputError("an in-memory database cannot be opened read_only: it would be empty")
        # Read-only: connections open with immutable=1 (see driver.immutable_allowed) while
        # this is set; ``_immutable_readers`` are the ones opened so, closed once it is not.
        self._immutable = False
        self._immutable_readers: set[Any] = set()
        # Read-only: there was no -wal at open, so a -wal and -shm that SQLite makes for our
        # mode=ro connections are ours to remove at close (driver.tidy_wal).
        self._tidy = False
        self._lock = threading.RLock()  # the write connection
        self._pool_lock = threading.Lock()  # the read pool's lists
        driver.reset_locks_after_fork(self)
        self._pid = os.getpid()
        self._conn: Any = None
        self._stamped = False  # this write connection has set its write stamp
        # Read connections not in use, by the kind of read they serve: a keyword search
        # keeps to connections of its own, whose page cache holds the FTS5 index, so that
        # it does not evict the vector pages of the KNN scan running beside it (sharing
        # one pool made the fused search at 100k 20 % slower: benchmarks/semantic_speed.py).
        self._idle: dict[str, list[Any]] = {}
        self._readers: list[Any] = []  # every read connection, to close them
        self._closed = False
        # Large owners' approximate indexes (localmem/vector_index.py): their folder (none
        # for an in-memory database: its owners are searched by sqlite-vec alone), the open
        # ones, and the owners whose file this process is building.
        self.index_dir = None if self._in_memory else Path(index_dir if index_dir is not None else path + "-index")
        self.index_min = vector_index.INDEX_MIN
        self._indexes: dict[str, vector_index.OwnerIndex] = {}
        self._index_lock = threading.Lock()
        self._index_builds: set[str] = set()
        self._index_retry_at: dict[str, float] = {}  # owner -> no background build before (monotonic)
        self._bad_index_files: dict[str, tuple[Any, ...]] = {}  # owner -> _signature of its unreadable file
        if not self._in_memory:
            _refuse_hard_links(path)
        with self._mapped_errors():
            if read_only:
                try:
                    self._open_read_only()
                except BaseException:
                    self.close()  # its readers, and the -wal/-shm SQLite made for them
                    raise
            else:
                self._conn = self._open()
                self._migrate()
            self.instance_id = self._meta_value("instance_id")

    # -- connection lifecycle ---------------------------------------------------------

    def reopen(self) -> Store:
        """Another handle on the file with the same settings (its own connections)."""
        return Store(self.path, durability=self.durability, lock_timeout=self.lock_timeout, read_only=self.read_only,
                     index_dir=None if self.index_dir is None else str(self.index_dir))

    def _open(self, *, reader: bool = False) -> Any:
        if self.read_only:
            conn = driver.connect(driver.read_only_uri(self.path, immutable=self._immutable), uri=True)
        else:
            conn = driver.connect(self.path)
        return self._configure(conn, reader=reader)

    def _configure(self, conn: Any, *, reader: bool) -> Any:
        """Set a new connection up (closed if that fails)."""
        try:
            # busy_timeout first: the journal-mode switch below may itself wait for a lock.
            conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            if reader:  # the writer opened the file first: it is in WAL mode already
                conn.execute("PRAGMA query_only = 1")
            elif not self._in_memory:
                mode = self._execute_when_free(conn, "PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    mode = self._execute_when_free(conn, "PRAGMA journal_mode = WAL").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise StoreError(f"{self.path}: could not switch to WAL (journal_mode={mode})")
            sync = "FULL" if self.durability == "full" else "NORMAL"
            conn.execute(f"PRAGMA synchronous = {sync}")
            # A deleted row's bytes are overwritten with zeros, not left in free space:
            # forget() depends on it. It must hold from the file's creation on (a page
            # rebalanced earlier leaves stale copies behind), and it is a per-connection
            # setting whose default depends on the build (sqlean's is off). Costs measured
            # at 100k messages: add_many +6 %, delete 1.23 -> 1.42 ms.
            conn.execute("PRAGMA secure_delete = ON")
            # Read the file through mmap: a vector scan then reads pages in place instead
            # of copying each through the page cache. At 100k vectors this halves the
            # exact scan (89 -> 44 ms) and the sign-bit scan (29 -> 17 ms).
            conn.execute(f"PRAGMA mmap_size = {_MMAP_SIZE}")
        except BaseException:
            conn.close()
            raise
        if self._immutable:
            self._immutable_readers.add(conn)
        return conn

    def _open_read_only(self) -> None:
        """Open an existing file read-only: the first reader, then the schema's version
        checked (``_check_readable``). When SQLite cannot make the file's WAL index here,
        retry with immutable=1 if ``driver.immutable_allowed`` says it reads the file right."""
        if not os.path.isfile(self.path):
            raise StoreError(
                f"{self.path}: no such database file (read_only=True opens an existing file, never creates one)"
            )
        self._tidy = not os.path.exists(self.path + "-wal")
        try:
            conn, self._immutable = driver.connect_read_only(self.path)
        except driver.dbapi().Error as exc:
            raise self._unreadable(exc) from exc
        self._tidy = self._tidy and not self._immutable
        conn = self._configure(conn, reader=True)
        self._readers.append(conn)
        self._idle["read"] = [conn]
        with self.read() as conn:
            self._check_readable(conn)

    def _unreadable(self, exc: Exception) -> StoreError:
        """The error for a read-only open that failed."""
        if _error_code(exc) in (_READONLY, _CANTOPEN) and os.path.exists(self.path + "-wal") \
                and not os.path.exists(self.path + "-shm"):
            return StoreError(
                f"{self.path} cannot be read here ({exc}): its write-ahead log {self.path}-wal holds "
                f"commits not yet in the file, and SQLite cannot create the log's index {self.path}-shm "
                "in this read-only folder. Open it once read-write where it can be written (closing "
                "folds the log into the file), or copy the database with its -wal and -shm files"
            )
        if _error_code(exc) == _READONLY:
            return StoreError(f"{self.path}: cannot be read here ({exc})")
        return map_error(exc, self.path)

    def _check_readable(self, conn: Any) -> None:
        """A read-only open reads the current schema only (inside a read transaction)."""
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        self._check_known(version, conn=conn)
        if version == 0:
            raise ReadOnlyError(
                f"{self.path} is not a localmem database yet (no schema); read_only=True cannot create "
                "one: open it once without read_only"
            )
        if version < SCHEMA_VERSION:
            raise ReadOnlyError(
                f"{self.path} has schema version {version}, older than this localmem's ({SCHEMA_VERSION}); "
                "read_only=True cannot upgrade it: open it once without read_only (that upgrades it), "
                "then read-only"
            )

    def _connection(self) -> Any:
        """The write connection for this process. Caller holds ``self._lock``."""
        if self._closed:
            raise ClosedError("this Memory is closed")
        if self._pid != os.getpid():
            self._after_fork()
        return self._conn

    def _after_fork(self) -> None:
        if self._in_memory:
            raise StoreError("an in-memory database cannot be used from a forked child process")
        for conn in [self._conn, *self._readers]:
            driver.abandon(conn)
        self._conn, self._idle, self._readers = None, {}, []
        self._immutable_readers = set()
        self._pid = os.getpid()
        self._tidy = False  # the parent's to do
        self._conn = None if self.read_only else self._open()
        self._stamped = False  # a new connection: the child's writes get a stamp of their own
        self._index_builds = set()  # the parent's build threads are not the child's

    def close(self) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True
            conn, self._conn = self._conn, None
            with self._pool_lock:
                idle = [c for conns in self._idle.values() for c in conns]
                self._idle = {}
            if self._pid != os.getpid():
                for c in [conn, *self._readers]:
                    driver.abandon(c)
                return
            with self._mapped_errors():
                for reader in idle:  # a reader in use is closed when it is given back
                    reader.close()
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.execute("PRAGMA optimize")  # SQLite's advice for long-lived connections
                    conn.close()
            if self._tidy:
                driver.tidy_wal(self.path)
            with self._index_lock:
                indexes = list(self._indexes.values())
                self._indexes.clear()
            for index in indexes:
                with index.lock:  # a search in flight finishes first
                    index.close()

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def in_memory(self) -> bool:
        """An in-memory database: it exists on this one connection only."""
        return self._in_memory

    def reset_locks_after_fork(self) -> None:
        self._lock = threading.RLock()
        self._pool_lock = threading.Lock()
        self._index_lock = threading.Lock()
        for index in self._indexes.values():  # a parent's thread may have held one mid-search
            index.lock = threading.Lock()

    # -- transactions -----------------------------------------------------------------

    @contextlib.contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        dbapi = driver.dbapi()
        try:
            yield
        except dbapi.Error as exc:
            raise map_error(exc, self.path) from exc

    @contextlib.contextmanager
    def _reader(self, kind: str = "read") -> Iterator[Any]:
        """A read-only connection of this process's pool for reads of ``kind``, for the
        caller alone (an in-memory database has one connection: the writer's, under its
        lock)."""
        if self._in_memory:
            with self._write_lock(), self._mapped_errors():
                yield self._connection()
            return
        conn = self._take(kind)
        try:
            with self._mapped_errors():
                yield conn
        finally:
            self._give(conn, kind)

    def _take(self, kind: str) -> Any:
        """An idle read connection for ``kind``, or a new one (file databases only)."""
        if self._closed:
            raise ClosedError("this Memory is closed")
        if self._pid != os.getpid():
            with self._lock:
                if self._pid != os.getpid():
                    self._after_fork()
        self._end_immutable_if_written()
        with self._pool_lock:
            idle = self._idle.get(kind)
            if idle:
                return idle.pop()
        with self._mapped_errors():
            conn = self._open(reader=True)
        with self._pool_lock:
            self._readers.append(conn)
        return conn

    def _end_immutable_if_written(self) -> None:
        """If a writer has made a -wal since the file was opened immutable: from now on
        reads open mode=ro connections (which see its commits); immutable ones close as
        they come back to the pool."""
        if not (self._immutable and driver.wal_appeared(self.path)):
            return
        with self._pool_lock:
            if not self._immutable:
                return
            self._immutable = False
            idle = [c for conns in self._idle.values() for c in conns if c in self._immutable_readers]
            for kind, conns in self._idle.items():
                self._idle[kind] = [c for c in conns if c not in self._immutable_readers]
            for conn in idle:
                self._readers.remove(conn)
                self._immutable_readers.discard(conn)
        for conn in idle:
            with contextlib.suppress(Exception):
                conn.close()

    def _give(self, conn: Any, kind: str) -> None:
        """Back to the pool; closed instead if the store was closed meanwhile (or if it is
        an immutable connection no longer wanted)."""
        with self._pool_lock:
            keep = not self._closed and (self._immutable or conn not in self._immutable_readers)
            if keep:
                self._idle.setdefault(kind, []).append(conn)
            else:
                self._readers.remove(conn)
                self._immutable_readers.discard(conn)
        if not keep:
            with contextlib.suppress(Exception):
                conn.close()

    @contextlib.contextmanager
    def _fresh_reader(self) -> Iterator[Any]:
        """A read connection of its own, closed after use: nothing cached from before."""
        if self._in_memory:
            with self._reader() as conn:
                yield conn
            return
        self._end_immutable_if_written()
        with self._mapped_errors():
            conn = self._open(reader=True)
            try:
                yield conn
            finally:
                self._immutable_readers.discard(conn)
                conn.close()

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        """The rows of one read statement (a statement is its own snapshot)."""
        if self._in_memory:
            with self._reader() as conn:
                return conn.execute(sql, args).fetchall()
        conn = self._take("read")  # (written out: the hot window's read path)
        try:
            return conn.execute(sql, args).fetchall()
        except driver.dbapi().Error as exc:
            raise map_error(exc, self.path) from exc
        finally:
            self._give(conn, "read")

    @contextlib.contextmanager
    def read(self, kind: str = "read") -> Iterator[Any]:
        """A consistent snapshot: every statement inside sees the same committed state
        (``kind``: see ``_reader``)."""
        with self._reader(kind) as conn:
            conn.execute("BEGIN")
            try:
                yield conn
            except BaseException:
                with contextlib.suppress(Exception):
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    @contextlib.contextmanager
    def _write_lock(self) -> Iterator[float]:
        """Hold the write connection's lock, waited for at most ``lock_timeout``; yields
        the deadline (``lock_timeout`` after the call began) for the file lock too."""
        deadline = time.monotonic() + self.lock_timeout
        if not self._lock.acquire(timeout=self.lock_timeout):
            raise LockTimeoutError(
                f"{self.path}: the write lock stayed taken past lock_timeout ({self.lock_timeout:g} s): "
                "other threads of this process were writing, or waiting for another writer"
            )
        try:
            yield deadline
        finally:
            self._lock.release()

    @contextlib.contextmanager
    def write(self, *, stamp: bool = True) -> Iterator[Any]:
        """One ``BEGIN IMMEDIATE`` transaction: committed on success, rolled back on any error.

        The whole wait (for other threads of this process, then for the file lock) is
        bounded by ``lock_timeout``. The first write of a connection sets a fresh write
        stamp (see the module docstring); ``stamp=False`` leaves it to the caller (the
        migration, which may create the table).

        A read-only store raises ``ReadOnlyError`` here, before SQLite is asked.
        """
        if self.read_only:
            raise ReadOnlyError(f"{self.path} is open read-only: nothing was written")
        with self._write_lock() as deadline, self._mapped_errors():
            conn = self._connection()
            self._execute_when_free(conn, "BEGIN IMMEDIATE", deadline)
            stamping = stamp and not self._stamped
            try:
                if stamping:
                    conn.execute("UPDATE write_stamp SET value = ?", (new_stamp(),))
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
            if stamping:
                self._stamped = True

    def _execute_when_free(self, conn: Any, sql: str, deadline: float | None = None) -> Any:
        """Run ``sql``, retrying while the file is busy, until ``deadline`` (a monotonic
        time; default ``lock_timeout`` from now).

        ``busy_timeout`` does most of the waiting; the loop covers the cases where SQLite
        reports SQLITE_BUSY at once, without calling the busy handler: WAL recovery, a
        racing checkpoint, and a lock upgrade that could deadlock (switching a new file
        to WAL while other connections open it).
        """
        if deadline is None:
            deadline = time.monotonic() + self.lock_timeout
        full = int(self.lock_timeout * 1000)
        left_ms = int((deadline - time.monotonic()) * 1000)
        shortened = left_ms < full - 1  # part of the time went waiting for another thread
        try:
            if shortened:
                conn.execute(f"PRAGMA busy_timeout = {max(1, left_ms)}")
            while True:
                try:
                    return conn.execute(sql)
                except driver.dbapi().OperationalError as exc:
                    left = deadline - time.monotonic()
                    if not _is_busy(exc) or left <= 0.002:
                        raise
                    shortened = True
                    time.sleep(0.002)
                    conn.execute(f"PRAGMA busy_timeout = {max(1, int((left - 0.002) * 1000))}")
        finally:
            if shortened:
                conn.execute(f"PRAGMA busy_timeout = {full}")

    # -- schema -----------------------------------------------------------------------

    def _migrate(self) -> None:
        version = self._execute_when_free(self._conn, "PRAGMA user_version").fetchone()[0]
        if version == SCHEMA_VERSION:
            return
        self._check_known(version, tables=False)  # (its tables are read in the transaction below:
        # counted here, they could be another opener's, committed since the version was read)
        with self.write(stamp=False) as conn:  # the stamp table may not exist yet
            version = conn.execute("PRAGMA user_version").fetchone()[0]  # another opener?
            self._check_known(version)
            for statements in MIGRATIONS[version:]:
                for sql in statements:
                    conn.execute(sql)
            conn.execute("UPDATE write_stamp SET value = ?", (new_stamp(),))
            if version < 3:
                for sql in _RESTAMP:
                    conn.execute(sql)
                self._set_aside_zero_vectors(conn)
            if version == 0:
                conn.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)",
                    [("instance_id", uuid.uuid4().hex), ("created_at_us", str(now_us())),
                     (SECURE_SINCE, "created")],
                )
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        self._stamped = True  # the migration's transaction set it

    def _set_aside_zero_vectors(self, conn: Any) -> None:
        """Move zero vectors (written before version 3 refused to index them) from
        message_vectors to zero_vectors: they sort ahead of every real neighbour."""
        if self._vector_table(conn) is None:
            return
        row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
        dim = None if row is None else json.loads(row[0]).get("dim")
        if type(dim) is not int or dim < 1:
            return
        zero = bytes(4 * dim)
        ids = [i for (i,) in conn.execute(
            "SELECT rowid FROM message_vectors WHERE vec_distance_l2(embedding, ?) = 0", (zero,)
        )]
        for row_id in ids:
            conn.execute("DELETE FROM message_vectors WHERE rowid = ?", (row_id,))
            conn.execute("INSERT INTO zero_vectors (id) VALUES (?)", (row_id,))

    def _check_known(self, version: int, *, tables: bool = True, conn: Any = None) -> None:
        """Refuse a file from a newer localmem, and (``tables``: inside the migration's
        transaction, where the version and the tables are one snapshot; on ``conn``, else
        the write connection) an SQLite file with tables but no localmem schema version."""
        if version > SCHEMA_VERSION:
            raise CorruptDatabaseError(
                f"{self.path} has schema version {version}, newer than this localmem knows "
                f"({SCHEMA_VERSION}); upgrade localmem to open it"
            )
        if version == 0 and tables:
            found = (conn or self._conn).execute(
                "SELECT count(*) FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
            ).fetchone()[0]
            if found:
                raise CorruptDatabaseError(
                    f"{self.path} is an SQLite database but not a localmem one "
                    f"(it has {found} tables and no localmem schema version)"
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
        cached from the old one must not be served, though no message changed. Like the
        versions, the generation is a fresh random stamp, never a counter that repeats."""
        conn.execute(
            "INSERT INTO meta (key, value) VALUES ('vector_generation', ?)"
            " ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (str(new_stamp()),),
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
        dim = vector_dim(identity)
        with self.write() as conn:
            return self._write_vectors(conn, identity, dim, ids, vectors)

    def _write_vectors(
        self, conn: Any, identity: dict[str, Any], dim: int, ids: Sequence[int], vectors: Sequence[bytes]
    ) -> int:
        """``write_vectors`` inside the caller's transaction."""
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
        # An owner with an approximate index learns of new vectors from the log.
        logged = conn.execute("SELECT EXISTS (SELECT 1 FROM vector_indexes)").fetchone()[0]
        for row_id, vector in zip(ids, vectors, strict=True):
            if len(vector) != dim * 4:
                raise InvalidInputError(
                    f"vector for message {row_id} has {len(vector)} bytes; dim {dim} needs {dim * 4}"
                )
            if conn.execute("DELETE FROM pending_vectors WHERE id = ?", (row_id,)).rowcount:
                if is_zero_vector(vector):  # no direction: not indexed (see zero_vectors)
                    conn.execute("INSERT INTO zero_vectors (id) SELECT id FROM messages WHERE id = ?", (row_id,))
                else:
                    written += conn.execute(insert, (vector, row_id)).rowcount
                    if logged:
                        conn.execute(_LOG_VECTOR, (row_id,))
        return written

    def reset_vectors(self) -> int:
        """Drop every vector and the recorded embedder; queue every message to be embedded
        again (by whatever model writes next). Returns how many messages are queued."""
        with self.write() as conn:
            self._bump_generation(conn)
            conn.execute("DROP TRIGGER IF EXISTS messages_after_delete_vector")
            conn.execute("DROP TABLE IF EXISTS message_vectors")
            conn.execute("DELETE FROM meta WHERE key = 'embedder'")
            conn.execute("DELETE FROM zero_vectors")
            dropped = self._drop_indexes(conn, None)
            conn.execute("INSERT OR IGNORE INTO pending_vectors (id) SELECT id FROM messages")
            queued = conn.execute("SELECT count(*) FROM pending_vectors").fetchone()[0]
        self._remove_index_files(dropped)
        return queued

    # -- the approximate index of large owners (localmem/vector_index.py) -------------

    @staticmethod
    def _generation(conn: Any) -> int:
        return conn.execute("SELECT coalesce((SELECT CAST(value AS INTEGER) FROM meta"
                            " WHERE key = 'vector_generation'), 0)").fetchone()[0]

    def _indexed_knn(self, conn: Any, vector: bytes, k: int, owner_id: str, conversation_id: str | None,
                     since_us: int | None, spare: bool) -> list[tuple[int, float]] | None:
        """``knn`` through the owner's approximate index, in the caller's snapshot. None
        when the owner has no usable file yet (one is built meanwhile, in the background;
        sqlite-vec answers until then)."""
        index = self._synced_index(conn, owner_id)
        if index is None:
            return None
        wanted = min(_MAX_K, max(OVERSAMPLE * k, INDEX_CANDIDATES))
        with index.lock:
            if index.closed:  # forgotten or replaced meanwhile
                return None
            try:
                found = index.search(np.frombuffer(vector, np.float32), wanted, conversation_id=conversation_id,
                                     since_us=since_us)
            except (ValueError, IndexError, TypeError) as exc:  # damage the checks at open did not see
                self._refuse_index(owner_id, index, exc)
                return None
        return found if spare else found[:k]

    def _refuse_index(self, owner_id: str, index: vector_index.OwnerIndex, exc: Exception) -> None:
        """A file that failed a search: reported, not used again, built anew (the caller
        holds ``index.lock``)."""
        log.warning("%s: the vector index of an owner failed a search (%s); it is built anew", self.path, exc)
        with self._index_lock:
            if self._indexes.get(owner_id) is index:
                del self._indexes[owner_id]
            self._bad_index_files[owner_id] = _signature(index.base.path)
        index.close()
        self._build_later(owner_id)

    def _synced_index(self, conn: Any, owner_id: str) -> vector_index.OwnerIndex | None:
        """The owner's index with the log's changes since its file applied, as of the
        caller's snapshot; None (and a build started) when there is no usable file."""
        row = conn.execute("SELECT generation, file FROM vector_indexes WHERE owner_id = ?", (owner_id,)).fetchone()
        if row is None or row[1] is None or row[0] != self._generation(conn):
            with self._index_lock:
                self._indexes.pop(owner_id, None)
            self._build_later(owner_id)
            return None
        index = self._open_index(owner_id, row[1])
        if index is None:
            if owner_id in self._bad_index_files:  # not just replaced since this snapshot began
                self._build_later(owner_id)
            return None
        with index.lock:
            if index.closed:
                return None
            logged = conn.execute("SELECT seq, id FROM vector_log WHERE owner_id = ? AND seq > ? ORDER BY seq",
                                  (owner_id, index.seq)).fetchall()
            if logged:
                ids = list(dict.fromkeys(row_id for _, row_id in logged))
                now = {r[0]: (r[1], r[2], r[3]) for r in _vector_rows(conn, ids, "conversation_id, created_at, embedding")}
                index.apply(logged[-1][0], [(row_id, now.get(row_id)) for row_id in ids])
            if index.needs_merge():
                self._build_later(owner_id)
        return index

    def _open_index(self, owner_id: str, name: str) -> vector_index.OwnerIndex | None:
        """The owner's index on the published file ``name`` (opened on first use, or when
        a newer file replaced this process's); None if it cannot be read."""
        assert self.index_dir is not None
        with self._index_lock:
            index = self._indexes.get(owner_id)
            if index is not None and index.base.path.name == name:
                return index
            path = self.index_dir / name
            if owner_id in self._bad_index_files and self._bad_index_files[owner_id] == _signature(path):
                return None  # said once; a build (here or elsewhere) replaces it
            try:
                index = vector_index.OwnerIndex(vector_index.IndexFile(path))
            except FileNotFoundError as exc:
                # A search whose snapshot began before another process published a newer
                # file and removed this one: answered without the index, nothing to say.
                current = self._query("SELECT file FROM vector_indexes WHERE owner_id = ?", (owner_id,))
                if not current or current[0][0] != name:  # (or it was dropped: forget, a new model)
                    return None
                log.warning("%s: the vector index of an owner is missing (%s); it is built anew", self.path, exc)
                self._bad_index_files[owner_id] = _signature(path)
                return None
            except (OSError, ValueError, KeyError, TypeError) as exc:
                log.warning("%s: the vector index of an owner is unreadable (%s); it is built anew", self.path, exc)
                self._indexes.pop(owner_id, None)
                self._bad_index_files[owner_id] = _signature(path)
                return None
            self._bad_index_files.pop(owner_id, None)
            self._indexes[owner_id] = index  # the one it replaces closes when no search holds it
            return index

    def _build_later(self, owner_id: str) -> None:
        """Build (or merge) the owner's index in a background thread of this process,
        unless one is running here already, or the store cannot write."""
        if self.read_only or self._closed or self.index_dir is None:
            return
        with self._index_lock:
            if owner_id in self._index_builds or time.monotonic() < self._index_retry_at.get(owner_id, 0.0):
                return
            self._index_builds.add(owner_id)
        threading.Thread(target=self._build_in_background, args=(owner_id,), daemon=True,
                         name="localmem-vector-index").start()

    def _build_in_background(self, owner_id: str) -> None:
        built = False
        try:
            built = self.build_vector_index(owner_id, wait=False, at_least=self.index_min)
        except Exception as exc:  # noqa: BLE001 - a thread's end: the searches go on through sqlite-vec; say why
            if not self._closed:
                log.warning("%s: building the vector index of an owner failed: %s", self.path, exc)
        finally:
            with self._index_lock:
                self._index_builds.discard(owner_id)
                if not built:  # failed, skipped or too few vectors yet: not on every search
                    self._index_retry_at[owner_id] = time.monotonic() + INDEX_RETRY_AFTER

    def build_vector_index(self, owner_id: str, *, wait: bool = True, at_least: int = 0) -> bool:
        """Write the owner's approximate index file anew from its stored vectors and
        publish it (see localmem/vector_index.py); True when published. One builder per
        owner at a time, across processes: with ``wait=False`` this returns False at once
        if another holds the owner's lock. The lists trained for the previous file are
        kept while the owner has grown less than RETRAIN_GROWTH x since (a merge: no
        k-means). Searches go on meanwhile, on the previous file or sqlite-vec.
        ``at_least``: build only if the owner has that many vectors (the background builds:
        an owner past ``index_min`` messages whose vectors are still being computed would
        get lists trained on a few)."""
        if self.read_only:
            raise ReadOnlyError(f"{self.path} is open read-only: no index is built")
        if self.index_dir is None:
            raise InvalidInputError("an in-memory database keeps no vector index files")
        folder = self.index_dir
        if at_least and self._query(f"SELECT count(*) FROM ({_VECTOR_IDS})", (owner_id,))[0][0] < at_least:
            return False
        with vector_index.owner_lock(folder, owner_id, wait=wait) as held:
            if not held:
                return False
            with self.write() as conn:
                generation = self._generation(conn)
                row = conn.execute("SELECT generation, file FROM vector_indexes WHERE owner_id = ?",
                                   (owner_id,)).fetchone()
                if row is None or row[0] != generation:  # from now on, the owner's changes are logged
                    conn.execute("INSERT INTO vector_indexes (owner_id, generation, seq, file, count, trained)"
                                 " VALUES (?, ?, 0, NULL, 0, 0) ON CONFLICT (owner_id) DO UPDATE SET"
                                 " generation = excluded.generation, seq = 0, file = NULL, count = 0, trained = 0",
                                 (owner_id, generation))
                    conn.execute("DELETE FROM vector_log WHERE owner_id = ?", (owner_id,))
                    row = (generation, None)
            for path in vector_index.stale_files(folder, owner_id, keep=row[1]):
                with contextlib.suppress(OSError):
                    path.unlink()
            built = self._build_index_file(owner_id, generation, row[1])
            if built is None:
                return False
            with self.write() as conn:
                now = conn.execute("SELECT generation FROM vector_indexes WHERE owner_id = ?", (owner_id,)).fetchone()
                if now is None or now[0] != generation:  # dropped (forget, a new model) meanwhile
                    with contextlib.suppress(OSError):
                        built.path.unlink()
                    return False
                conn.execute("UPDATE vector_indexes SET seq = ?, file = ?, count = ?, trained = ? WHERE owner_id = ?",
                             (built.seq, built.path.name, built.count, built.trained, owner_id))
                conn.execute("DELETE FROM vector_log WHERE owner_id = ? AND seq <= ?", (owner_id, built.seq))
            for path in vector_index.stale_files(folder, owner_id, keep=built.path.name):
                with contextlib.suppress(OSError):
                    path.unlink()  # a process still searching it keeps its mapping
            return True

    def _build_index_file(self, owner_id: str, generation: int, previous: str | None) -> vector_index.Built | None:
        """The owner's vectors, read in one snapshot, written to a new index file (not yet
        published); None when the owner has no vector."""
        assert self.index_dir is not None
        with self._fresh_reader() as conn:
            conn.execute("BEGIN")
            try:
                table = self._vector_table(conn)
                identity = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
                if table is None or identity is None:
                    return None
                dim = vector_dim(json.loads(identity[0]))
                seq = conn.execute("SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'vector_log'),"
                                   " 0)").fetchone()[0]
                ids = np.array([i for (i,) in conn.execute(_VECTOR_IDS, (owner_id,))], np.int64)
                reuse = None
                if previous is not None:
                    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
                        old = vector_index.IndexFile(self.index_dir / previous)
                        if len(ids) <= vector_index.RETRAIN_GROWTH * old.trained:
                            reuse = (np.array(old.centroids), old.trained, old.scale)
                        old.close()
                if reuse is None:
                    picked = vector_index.sample_of(ids)
                    sample = np.frombuffer(b"".join(r[1] for r in _vector_rows(conn, picked.tolist(), "embedding")),
                                           np.float32).reshape(-1, dim)
                else:
                    sample = np.empty((0, dim), np.float32)

                def chunks() -> Iterator[tuple[np.ndarray, list[str], np.ndarray, np.ndarray]]:
                    cursor = conn.execute("SELECT rowid, conversation_id, created_at, embedding FROM message_vectors"
                                          " WHERE owner_id = ?", (owner_id,))
                    while rows := cursor.fetchmany(8192):
                        if self._closed:
                            raise StoreError(f"{self.path}: closed while its vector index was being built")
                        yield (np.array([r[0] for r in rows], np.int64), [r[1] for r in rows],
                               np.array([r[2] for r in rows], np.int64),
                               np.frombuffer(b"".join(r[3] for r in rows), np.float32).reshape(-1, dim))

                return vector_index.build(
                    self.index_dir, vector_index.file_name(owner_id, generation, seq), chunks(), dim=dim,
                    sample=sample, owner_id=owner_id, generation=generation, seq=seq, size_hint=len(ids),
                    centroids=None if reuse is None else reuse[0], trained=None if reuse is None else reuse[1],
                    scale=None if reuse is None else reuse[2])
            finally:
                conn.execute("COMMIT")

    def refresh_vector_indexes(self) -> tuple[int, int]:
        """``maintain()``'s step: write anew the index file of every owner past
        ``index_min`` vectors that has none or whose log holds changes (their codes of
        deleted vectors go with it), and remove the files no owner's row names (a build
        that died between its rename and its publication). Returns (files written, files
        removed)."""
        if self.read_only or self.index_dir is None:
            return 0, 0
        with self.read() as conn:
            generation = self._generation(conn)
            owners = [] if self._vector_table(conn) is None else [o for (o,) in conn.execute(
                "SELECT owner_id FROM owners WHERE message_count >= ? ORDER BY owner_id", (self.index_min,))]
            current = {o: f for o, g, f in conn.execute("SELECT owner_id, generation, file FROM vector_indexes")
                       if g == generation}
            changed = {o for (o,) in conn.execute("SELECT DISTINCT owner_id FROM vector_log")}
            registered = [o for (o,) in conn.execute("SELECT owner_id FROM vector_indexes")]
        # Owners that fell below index_min (a forget, retention) are searched by sqlite-vec
        # again: their files (with the codes of what was deleted) and logs go.
        small = sorted(set(registered) - set(owners))
        if small:
            with self.write() as conn:
                small = self._drop_indexes(conn, small)
            self._remove_index_files(small)
        written = sum(self.build_vector_index(o) for o in owners if current.get(o) is None or o in changed)
        removed = len(small)
        if not self.index_dir.is_dir():
            return written, removed
        # (dotfiles are builds in progress, or died: the owner's next build removes those)
        for key in sorted({p.name.split("-")[0] for p in self.index_dir.glob("*.ivf") if not p.name.startswith(".")}):
            with vector_index.key_lock(self.index_dir, key, wait=False) as held:
                if not held:  # a build of that owner is under way
                    continue
                with self.read() as conn:
                    named = {f for (f,) in conn.execute("SELECT file FROM vector_indexes WHERE file IS NOT NULL")}
                for path in self.index_dir.glob(f"{key}-*.ivf"):
                    if path.name not in named and not path.name.startswith("."):
                        with contextlib.suppress(OSError):
                            path.unlink()
                            removed += 1
        return written, removed

    def _drop_indexes(self, conn: Any, owners: Sequence[str] | None) -> list[str]:
        """Unregister the approximate indexes of ``owners`` (None: all), in the caller's
        transaction; returns the owners that had one (their files go after the commit:
        ``_remove_index_files``)."""
        if owners is None:
            dropped = [o for (o,) in conn.execute("SELECT owner_id FROM vector_indexes")]
            conn.execute("DELETE FROM vector_indexes")
            conn.execute("DELETE FROM vector_log")
            return dropped
        dropped = []
        for part, marks in _in_chunks(list(owners)):
            dropped += [o for (o,) in conn.execute(
                f"DELETE FROM vector_indexes WHERE owner_id IN ({marks}) RETURNING owner_id", part)]
            conn.execute(f"DELETE FROM vector_log WHERE owner_id IN ({marks})", part)
        return dropped

    def _remove_index_files(self, owners: Sequence[str]) -> None:
        """Delete the published index files of ``owners`` (unregistered already)."""
        if self.index_dir is None:
            return
        for owner in owners:
            with self._index_lock:
                index = self._indexes.pop(owner, None)
            if index is not None:
                with index.lock:  # a search in flight finishes first; later ones find it closed
                    index.close()
            for path in self.index_dir.glob(f"{vector_index.owner_key(owner)}-*.ivf"):
                with contextlib.suppress(OSError):
                    path.unlink()

    def bulk_load(self) -> contextlib.AbstractContextManager[None]:
        """Nothing to defer: FTS5 and sqlite-vec index as rows come, and an owner's vector
        index file is built when its first search needs it."""
        return contextlib.nullcontext()

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
        table = "owners" if conversation_id is None else "conversations"
        with self.read() as conn:
            row = conn.execute(f"SELECT version, message_count FROM {table} WHERE {where}", args).fetchone()
            version, count = row if row is not None else (0, 0)
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
        # The version is the stamp of the last transaction that changed the scope's
        # messages (never repeated); the generation changes when vectors are rebuilt.
        return Scope(token=[version, generation], size=count, pending=pending)

    def knn(
        self,
        vector: bytes,
        k: int,
        *,
        owner_id: str,
        conversation_id: str | None = None,
        since_us: int | None = None,
        exact_max: int = EXACT_SEARCH_MAX,
        spare: bool = False,
    ) -> list[tuple[int, float]]:
        """The ``k`` messages nearest ``vector`` (float32 bytes) in the scope, as
        (id, cosine similarity), most similar first.

        Scopes of at most ``exact_max`` messages are searched exactly (a float scan). Larger
        ones scan the sign bits first (Hamming distance, 32x less data) for
        ``OVERSAMPLE * k`` candidates (at least ``MIN_CANDIDATES``), then re-score those with
        their float vectors: approximate, measured in benchmarks/semantic_speed.py.
        ``spare``: on that path, return every candidate re-scored (more than ``k``), still
        best first; their cosines cost nothing more, and fusion needs cosines.

        Owners with at least ``index_min`` messages are searched through their vector
        index file instead (localmem/vector_index.py: approximate, whatever the scope;
        cosines of float16 copies; ``spare`` as above), once it is built: the first such
        search starts the build in a background thread and is answered as above.
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
        if is_zero_vector(vector):  # the zero vector: no direction, so nothing is near it
            return []
        with self.read() as conn:
            table = self._vector_table(conn)
            if table is None:
                return []
            size = conn.execute(
                "SELECT coalesce(sum(message_count), 0) FROM "
                + ("owners WHERE owner_id = ?" if conversation_id is None
                   else "conversations WHERE owner_id = ? AND conversation_id = ?"),
                args[: 1 if conversation_id is None else 2],
            ).fetchone()[0]
            owner_size = size if conversation_id is None else conn.execute(
                "SELECT coalesce(sum(message_count), 0) FROM owners WHERE owner_id = ?", (owner_id,)).fetchone()[0]
            if owner_size >= self.index_min and self.index_dir is not None and size > 0:
                found = self._indexed_knn(conn, vector, k, owner_id, conversation_id, since_us, spare)
                if found is not None:
                    return found
            if size > exact_max and _COARSE in table:
                wanted = min(_MAX_K, max(k * OVERSAMPLE, MIN_CANDIDATES))
                candidates = conn.execute(
                    "SELECT rowid FROM message_vectors WHERE coarse MATCH vec_quantize_binary(?)"
                    f" AND k = ? AND {where}",
                    [vector, wanted, *args],
                ).fetchall()
                scored = list(_cosines(conn, vector, [row_id for (row_id,) in candidates]))
                scored.sort(key=lambda pair: (-pair[1], pair[0]))
                return scored if spare else scored[:k]
            rows = [
                row for row in conn.execute(
                    "SELECT rowid, distance FROM message_vectors WHERE embedding MATCH ?"
                    f" AND k = ? AND {where} ORDER BY distance",
                    [vector, min(k, _MAX_K), *args],
                )
                if row[1] is not None  # NaN: a vector with no direction
            ]
        rows.sort(key=lambda pair: (pair[1], pair[0]))  # vec0 allows no second sort key
        return [(row_id, 1.0 - distance) for row_id, distance in rows]

    def keyword(
        self,
        match: str | Sequence[str],
        k: int,
        *,
        owner_id: str,
        conversation_id: str | None = None,
        since_us: int | None = None,
    ) -> list[tuple[int, float]]:
        """The ``k`` best BM25 matches of an FTS5 ``match`` expression in the scope, as
        (id, bm25 score: lower is better), best first. Build ``match`` with
        ``keyword_query()``: raw user text is never FTS5 syntax; or give the words apart
        (``keyword_terms()``): they are OR-ed, the most common left out while the rest
        match more than KEYWORD_BUDGET rows (see there)."""
        with self.read("keyword") as conn:
            if not isinstance(match, str):
                match = _bounded_match(conn, match, KEYWORD_BUDGET)
            sql = (
                "SELECT m.id, bm25(messages_fts, 1.0, 0.5, 0.5) AS score FROM messages_fts"
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
            return conn.execute(sql, args).fetchall()

    def keyword_presence(
        self, terms: Sequence[str], *, owner_id: str, conversation_id: str, since_us: int | None,
        skip_text: str | None,
    ) -> tuple[bool, bool]:
        """Whether the words (``keyword_terms()``, the keyword budget applied) are in a
        message's own text (not the ``prev``/``next`` context) of this conversation, and of
        another of the owner's (from ``since_us``). Here, the conversation's latest user
        message and any whose text is ``skip_text`` do not count: that is the query
        itself, stored before the search, which would always point here. Two EXISTS
        probes: no ranking."""
        with self.read("keyword") as conn:
            match = f"content : ({_bounded_match(conn, terms, KEYWORD_BUDGET)})"
            base = ("SELECT 1 FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
                    " WHERE messages_fts MATCH ? AND m.owner_id = ?")
            since, since_args = ("", []) if since_us is None else (" AND m.created_at >= ?", [since_us])
            here = conn.execute(
                base + " AND m.conversation_id = ? AND m.content != ?"
                f" AND m.id IS NOT ({_LATEST_USER_MESSAGE.format(column='id')})" + since + " LIMIT 1",
                [match, owner_id, conversation_id, (skip_text or "").strip(), conversation_id, owner_id, *since_args],
            ).fetchone() is not None
            elsewhere = conn.execute(
                base + " AND m.conversation_id != ?" + since + " LIMIT 1",
                [match, owner_id, conversation_id, *since_args],
            ).fetchone() is not None
        return here, elsewhere

    def cosines(self, vector: bytes, ids: Sequence[int], owner_id: str | None = None) -> dict[int, float]:
        """The cosine similarity between ``vector`` and each message of ``ids`` that has a
        vector (the others are left out): the fusion's score for a message that the
        keyword search found and the dense search did not rank. ``owner_id``: the owner
        the ids belong to; when it has an approximate index, its copies answer (a
        point lookup in sqlite-vec costs ~45 us at 100k)."""
        if not ids or is_zero_vector(vector):
            return {}
        with self.read() as conn:
            if self._vector_table(conn) is None:
                return {}
            found: dict[int, float] = {}
            if owner_id is not None and owner_id in self._indexes and self.index_dir is not None:
                index = self._synced_index(conn, owner_id)
                if index is not None:
                    with index.lock:
                        if not index.closed:
                            found = index.cosines(np.frombuffer(vector, np.float32), list(ids))
            rest = [row_id for row_id in ids if row_id not in found]
            found.update(_cosines(conn, vector, rest))
            return found

    def rows_and_successors(self, ids: Sequence[int]) -> tuple[dict[int, Row], dict[int, int]]:
        """``rows_by_id(ids)``, and the next message of each in its conversation's
        (created_at, id) order as {id: successor id} (a conversation's last message is left
        out): one snapshot, one statement."""
        rows: dict[int, Row] = {}
        successors: dict[int, int] = {}
        for row in self._rows(ids, _NEIGHBOUR.format(m="m", cmp=">", order="ASC", col="id")):
            rows[row[0]] = Row._make(row[1:-1])
            if row[-1] is not None:
                successors[row[0]] = row[-1]
        return rows, successors

    def _rows(self, ids: Sequence[int], extra: str | None = None) -> list[tuple[Any, ...]]:
        """(id, a Row's fields, then ``extra``'s value if given: an expression over
        ``messages m``) of each message of ``ids`` that exists, in one snapshot."""
        columns = f"m.id, {_M_COLUMNS}" + ("" if extra is None else f", {extra}")
        with self.read() as conn:
            return [row for part, marks in _in_chunks(ids) for row in conn.execute(
                f"SELECT {columns} FROM messages m WHERE m.id IN ({marks})", part)]

    def recent_similarity(self, vector: bytes, owner_id: str, conversation_id: str, n: int) -> float | None:
        """The best cosine between ``vector`` and the newest ``n`` messages of the
        conversation that have a vector (None: none has one yet)."""
        if is_zero_vector(vector):
            return None
        with self.read() as conn:
            if self._vector_table(conn) is None:
                return None
            ids = [i for (i,) in conn.execute(
                "SELECT id FROM messages WHERE conversation_id = ? AND owner_id = ?"
                " ORDER BY created_at DESC, id DESC LIMIT ?", (conversation_id, owner_id, n))]
            if not ids:
                return None
            return max((cos for _, cos in _cosines(conn, vector, ids)), default=None)

    def any_keyword_match(self, match: str, owner_id: str, since_us: int | None = None,
                          scan: int = 5_000) -> bool | None:
        """Whether any of the owner's messages (from ``since_us``) matches the FTS5
        ``match`` (built with ``keyword_query()``). The index is not partitioned by owner,
        so the work is bounded: None (unknown) when the first ``scan`` matches of the
        whole file hold none of the owner's."""
        sql = ("SELECT 1 FROM (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ? LIMIT ?) f"
               " JOIN messages m ON m.id = f.rowid WHERE m.owner_id = ?")
        args: list[Any] = [match, scan, owner_id]
        if since_us is not None:
            sql += " AND m.created_at >= ?"
            args.append(since_us)
        with self.read("keyword") as conn:
            if conn.execute(sql + " LIMIT 1", args).fetchone() is not None:
                return True
            seen = conn.execute("SELECT count(*) FROM (SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?"
                                " LIMIT ?)", (match, scan)).fetchone()[0]
        return False if seen < scan else None

    def rows_by_id(self, ids: Sequence[int]) -> dict[int, Row]:
        """Message rows by their integer id; missing ids are left out."""
        return {row[0]: Row._make(row[1:]) for row in self._rows(ids)}

    @contextlib.contextmanager
    def exporting(
        self, *, owner_id: str | None = None, conversation_id: str | None = None,
        before_us: int | None = None, vectors: bool = False, batch_size: int = 1000,
        exclude_owners: Sequence[str] = (), through_id: int | None = None,
    ) -> Iterator[Exported]:
        """The selected messages (see ``_selected``), read in one snapshot while the
        ``with`` block lasts, in batches of ``batch_size``: memory stays bounded whatever
        their number. With ``vectors``, each row comes with its vector (the zero vector for
        a message embedded as one; None for a message still waiting for its vector)."""
        where, args = _selected(owner_id, conversation_id, before_us, exclude_owners, through_id)
        with self.read() as conn:
            total = conn.execute(f"SELECT count(*) FROM messages m{where}", args).fetchone()[0]
            row = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
            identity = None if row is None else json.loads(row[0])
            vector, vector_args = "NULL", []
            dim = None if identity is None else identity.get("dim")
            if vectors and self._vector_table(conn) is not None and type(dim) is int:
                vector = (
                    "CASE WHEN EXISTS (SELECT 1 FROM zero_vectors z WHERE z.id = m.id) THEN zeroblob(?)"
                    " ELSE (SELECT v.embedding FROM message_vectors v WHERE v.rowid = m.id) END"
                )
                vector_args = [4 * dim]
            cursor = conn.execute(
                f"SELECT {_COLUMNS}, {vector} FROM messages m{where} ORDER BY m.id", [*vector_args, *args]
            )

            def batches() -> Iterator[list[tuple[Row, bytes | None]]]:
                while rows := cursor.fetchmany(batch_size):
                    yield [(Row._make(r[:8]), r[8]) for r in rows]

            yield Exported(total, identity, batches())

    def conversation_ids(self, ids: Sequence[int]) -> dict[int, str]:
        """The conversation of each message id (missing ids are left out): what the
        automatic selector needs of a ranking, without the messages' text."""
        found: dict[int, str] = {}
        with self.read() as conn:
            for part, marks in _in_chunks(ids):
                found.update(conn.execute(f"SELECT id, conversation_id FROM messages WHERE id IN ({marks})", part))
        return found

    def active_conversations(self, since_us: int) -> int:
        """How many conversations have a message created from ``since_us`` on (one index
        seek per conversation: messages_by_conversation ends with created_at)."""
        return int(self._query(
            "SELECT count(*) FROM conversations c WHERE (SELECT max(m.created_at) FROM messages m"
            " WHERE m.conversation_id = c.conversation_id AND m.owner_id = c.owner_id) >= ?",
            (since_us,),
        )[0][0])

    def latest_user_message(self, owner_id: str, conversation_id: str) -> str | None:
        """The content of the conversation's newest user message."""
        rows = self._query(_LATEST_USER_MESSAGE.format(column="content"), (conversation_id, owner_id))
        return rows[0][0] if rows else None

    # -- writes -----------------------------------------------------------------------

    def insert(self, m: NewMessage) -> tuple[Message, bool]:
        """Store one message: (it, whether it is new). A retry of an existing msg_id
        returns the stored message and False."""
        with self.write() as conn:
            cur = conn.execute(_INSERT + " ON CONFLICT (msg_id) DO NOTHING", message_params(m))
            if cur.rowcount == 1:
                self._index_keywords(conn, cur.lastrowid - 1)
                stored = None
            else:
                stored = conn.execute(
                    f"SELECT {_COLUMNS} FROM messages WHERE msg_id = ?", (m.msg_id,)
                ).fetchone()
        if stored is None:
            return row_to_message(message_params(m)), True
        row = Row._make(stored)
        if not same_fields(row, m):
            raise conflict_error(m)
        return row_to_message(row), False

    def insert_many(self, chunk: Sequence[NewMessage]) -> int:
        """Store a chunk in one transaction; returns how many were new.

        Retries (same msg_id, same fields) are skipped; a msg_id reused with different
        fields, in the file or inside the chunk, raises before anything is written.
        """
        fresh = unique_by_msg_id(chunk)
        with self.write() as conn:
            return self._insert_fresh(conn, fresh)

    def _insert_fresh(self, conn: Any, fresh: dict[str, NewMessage]) -> int:
        """``insert_many`` inside the caller's transaction, for messages by msg_id (none
        repeated): stored ones are skipped (popped from ``fresh``), the rest written."""
        given = [m.msg_id for m in fresh.values() if m.explicit_msg_id]
        for part, marks in _in_chunks(given):
            for stored in conn.execute(
                f"SELECT {_COLUMNS} FROM messages WHERE msg_id IN ({marks})", part
            ):
                m = fresh.pop(stored[0])
                if not same_fields(Row._make(stored), m):
                    raise conflict_error(m)
        last_id = conn.execute("SELECT coalesce(max(id), 0) FROM messages").fetchone()[0]
        conn.executemany(_INSERT, [message_params(m) for m in fresh.values()])
        self._index_keywords(conn, last_id)
        return len(fresh)

    def stored_as(self, chunk: Sequence[NewMessage]) -> list[bool | None]:
        """For each message of ``chunk``, whether its msg_id is stored already: None (no),
        True (with the same fields: a retry), False (with other fields: a conflict)."""
        ids = list(dict.fromkeys(m.msg_id for m in chunk))
        stored: dict[str, Row] = {}
        with self.read() as conn:
            for part, marks in _in_chunks(ids):
                for row in conn.execute(f"SELECT {_COLUMNS} FROM messages WHERE msg_id IN ({marks})", part):
                    stored[row[0]] = Row._make(row)
        found = [stored.get(m.msg_id) for m in chunk]
        return [None if row is None else same_fields(row, m) for row, m in zip(found, chunk)]

    def import_chunk(
        self, chunk: Sequence[NewMessage], vectors: dict[str, bytes], identity: dict[str, Any] | None,
    ) -> tuple[int, int]:
        """Store a chunk as ``insert_many`` does and, in the same transaction, the vectors
        it came with (``vectors`` by msg_id, from the model ``identity``; see
        ``write_vectors``: only a message still waiting gets one). Returns (new messages,
        vectors written)."""
        fresh = unique_by_msg_id(chunk)
        dim = None if identity is None or not vectors else vector_dim(identity)
        with self.write() as conn:
            new = self._insert_fresh(conn, dict(fresh))
            if dim is None or identity is None:
                return new, 0
            wanted = list(vectors)
            ids: dict[str, int] = {}
            for part, marks in _in_chunks(wanted):
                ids.update(conn.execute(f"SELECT msg_id, id FROM messages WHERE msg_id IN ({marks})", part))
            found = [msg_id for msg_id in wanted if msg_id in ids]
            written = self._write_vectors(
                conn, identity, dim, [ids[k] for k in found], [vectors[k] for k in found]
            )
        return new, written

    @staticmethod
    def _index_keywords(conn: Any, last_id: int) -> None:
        """Index the messages with id > ``last_id`` (one statement: FTS5 writes one segment
        per statement, not per row), and repoint the ``prev`` of any older message that a
        backdated one now precedes, and the ``next`` of the older message each new one now
        follows."""
        conn.execute(_INSERT_FTS, (last_id,))
        for successor, content in conn.execute(_DISPLACED, (last_id,)).fetchall():
            conn.execute("UPDATE messages_fts SET prev = ? WHERE rowid = ?", (content, successor))
        for predecessor, content in conn.execute(_FOLLOWED, (last_id,)).fetchall():
            conn.execute("UPDATE messages_fts SET next = ? WHERE rowid = ?", (content, predecessor))

    def delete(self, msg_id: str) -> Deleted | None:
        """Delete a message; triggers remove its FTS5 row, vector and queue entry. Returns
        what the caches need to forget it, or None if there was no such message."""
        with self.write() as conn:
            row = conn.execute(
                "SELECT owner_id, conversation_id, content FROM messages WHERE msg_id = ?", (msg_id,)
            ).fetchone()
            if row is not None:
                conn.execute("DELETE FROM messages WHERE msg_id = ?", (msg_id,))
        return None if row is None else Deleted(*row)

    def forget(self, owner_id: str | None, conversation_id: str | None, before_us: int | None, *,
               exclude_owners: Sequence[str] = (), through_id: int | None = None, scrub: bool = True) -> Forgotten:
        """Delete every message of the selection (an owner, one of its conversations,
        and/or everything older than ``before_us``) in one transaction, with all that
        holds their text or ids in the file: FTS5 rows (and FTS5's own leftover terms:
        'optimize' rewrites the index, since a delete leaves a row's terms in older
        segments), vectors (sqlite-vec >= 0.1.7 zeroes a deleted vector's slot),
        pending-queue rows, the summaries of the conversations touched (a later fold
        rebuilds what is left), the rows of conversations and owners left with no
        message, and ANALYZE's samples (``sqlite_stat4`` copies index keys). With
        secure_delete on, freed cells and pages are zeroed; the caller then checkpoints
        (``checkpoint``) so that no old page stays in the -wal. ``exclude_owners`` keep
        theirs (retention's per-owner policies); ``through_id`` spares messages written
        after it (an archive read up to there). ``scrub=False`` leaves the FTS5 and
        ANALYZE steps to a later ``scrub()`` (retention's batches: one at the end)."""
        if owner_id is None and before_us is None:
            raise InvalidInputError("forget needs owner_id, before, or both")
        if len(exclude_owners) > _MAX_PARAMS:
            raise InvalidInputError(f"at most {_MAX_PARAMS} owners can be excluded")
        where, args = _selected(owner_id, conversation_id, before_us, exclude_owners, through_id)
        with self.write() as conn:
            rows = conn.execute(f"SELECT m.owner_id, m.conversation_id, m.content FROM messages m{where}",
                                args).fetchall()
            if not rows:
                return Forgotten(0, (), (), (), secure=self._secure(conn))
            # The index rows first, each in one statement: the delete triggers then find
            # them gone and skip their per-row work (rewriting a doomed successor's
            # keyword row, or deleting vectors one at a time). Measured on 20k messages
            # forgetting the older half: 3.2 s -> 1.8 s; the triggers still repoint the
            # keyword row of each surviving successor.
            doomed = f"SELECT m.id FROM messages m{where}"
            # The survivors next to what goes lose their keyword rows too, and get them
            # back written from the survivors alone: while the delete runs (a row at a
            # time), the triggers would copy a doomed neighbour's text into their prev or
            # next column, new index data holding what is being forgotten.
            bordering = [row_id for (row_id,) in conn.execute(
                f"SELECT DISTINCT n FROM (SELECT {_NEIGHBOUR.format(m='m', cmp='<', order='DESC', col='id')} AS n"
                f" FROM messages m{where} UNION ALL SELECT {_NEIGHBOUR.format(m='m', cmp='>', order='ASC', col='id')}"
                f" FROM messages m{where}) WHERE n IS NOT NULL AND n NOT IN ({doomed})", [*args, *args, *args])]
            conn.execute(f"DELETE FROM messages_fts WHERE rowid IN ({doomed})", args)
            for part, marks in _in_chunks(bordering):
                conn.execute(f"DELETE FROM messages_fts WHERE rowid IN ({marks})", part)
            ddl = self._vector_table(conn)
            if ddl is not None:
                stored = conn.execute("SELECT count(*) FROM message_vectors_rowids").fetchone()[0]
                if len(rows) >= max(_REBUILD_MIN, stored * _REBUILD_SHARE):
                    self._rewrite_vectors(conn, ddl, f"rowid NOT IN ({doomed})", args, anew=True)
                else:
                    conn.execute(f"DELETE FROM message_vectors WHERE rowid IN ({doomed})", args)
            # The owners' approximate index files hold the doomed vectors' codes: they go
            # (after the commit), and are built anew from what is left.
            dropped = self._drop_indexes(conn, sorted({o for o, _, _ in rows}))
            conn.execute(f"DELETE FROM messages AS m{where}", args)
            for part, marks in _in_chunks(bordering):
                conn.execute(_REINDEX_FTS.format(marks=marks), part)
            scopes = sorted({(o, c) for o, c, _ in rows})
            for o, c in scopes:
                # The summary may quote what went: emptied, with a new version, so that a
                # fold in flight (which read the old one) cannot save over it; deleted with
                # the conversation's row when no message is left (a fold in flight then
                # finds its messages gone). A deleted row would restart at version 1 and
                # let that fold's stale text in.
                conn.execute(_FORGET_SUMMARY, (now_us(), o, c))
                conn.execute("DELETE FROM summaries WHERE owner_id = ? AND conversation_id = ? AND NOT EXISTS"
                             " (SELECT 1 FROM messages WHERE owner_id = ? AND conversation_id = ?)", (o, c, o, c))
                conn.execute("DELETE FROM conversations WHERE owner_id = ? AND conversation_id = ?"
                             " AND message_count = 0", (o, c))
            for o in sorted({o for o, _ in scopes}):
                conn.execute("DELETE FROM owners WHERE owner_id = ? AND message_count = 0", (o,))
            emptied = tuple((o, c) for o, c in scopes if conn.execute(
                "SELECT 1 FROM conversations WHERE owner_id = ? AND conversation_id = ?", (o, c)).fetchone() is None)
            if scrub:
                self._scrub(conn)
            forgotten = Forgotten(len(rows), tuple(scopes), emptied, tuple(r[2] for r in rows),
                                  secure=self._secure(conn))
        self._remove_index_files(dropped)
        return forgotten

    @staticmethod
    def _scrub(conn: Any) -> None:
        """Drop deleted rows' traces that outlive their delete: FTS5 keeps a row's terms in
        older index segments until 'optimize' rewrites the index, and ANALYZE's
        ``sqlite_stat4`` samples copy index keys (owner ids, conversation ids, msg ids)."""
        conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('optimize')")
        if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_stat4'").fetchone():
            conn.execute("ANALYZE")

    def scrub(self) -> None:
        """``_scrub`` in a transaction of its own (after forgets with ``scrub=False``)."""
        with self.write() as conn:
            self._scrub(conn)

    def nth_selected_id(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str],
                        through_id: int | None, n: int) -> int | None:
        """The id of the ``n``-th message ``_selected`` picks, in id order (None: fewer)."""
        where, args = _selected(owner_id, None, before_us, exclude_owners, through_id)
        rows = self._query(f"SELECT m.id FROM messages m{where} ORDER BY m.id LIMIT 1 OFFSET ?", [*args, n - 1])
        return None if not rows else int(rows[0][0])

    @staticmethod
    def _rewrite_vectors(conn: Any, ddl: str, keep: str, args: Sequence[Any], *, anew: bool) -> None:
        """Write the vectors ``keep`` selects again, packed into as few chunks as they need:
        copied to a plain table, removed, inserted back. ``anew``: the vector table is
        dropped and made again (every vector not kept goes with it: sqlite-vec deletes a
        row at a time, measured 20.7 s for 50k spread over 100k vectors, and a copy, a new
        table and one insert take a fraction of that); else only the kept rows are
        deleted first (their old chunks empty, and sqlite-vec deletes an emptied chunk).
        In the caller's transaction. (A plain table, not TEMP: temp_store may put a temp
        table in a file outside the database's folder, which forget() could not scrub.)"""
        columns = "owner_id, conversation_id, created_at, embedding"
        values = columns
        if _COARSE in ddl:  # a bit vector goes back in through vec_bit()
            columns += ", coarse"
            values += ", vec_bit(coarse)"
        conn.execute("DROP TABLE IF EXISTS vector_copy")
        conn.execute(f"CREATE TABLE vector_copy AS SELECT rowid AS id, {columns} FROM message_vectors"
                     f" WHERE {keep}", args)
        if anew:
            conn.execute("DROP TABLE message_vectors")
            conn.execute(ddl)
        else:
            conn.execute("DELETE FROM message_vectors WHERE rowid IN (SELECT id FROM vector_copy)")
        # No ORDER BY: SQLite's sorter drops the subtype vec_bit() gives the bit vector.
        conn.execute(f"INSERT INTO message_vectors (rowid, {columns}) SELECT id, {values} FROM vector_copy")
        conn.execute("DROP TABLE vector_copy")

    @staticmethod
    def _secure(conn: Any) -> bool:
        return conn.execute("SELECT 1 FROM meta WHERE key = ?", (SECURE_SINCE,)).fetchone() is not None

    def vector_waste(self) -> list[tuple[str, int]]:
        """The owners whose vectors hold more chunks than they need, with how many chunks
        a compaction would free. sqlite-vec allocates a chunk of ``chunk_size`` slots
        (1024: 1.6 MB at 384 dimensions) per owner at a time, fills only the newest, and
        never refills the slots a delete empties: after deletes spread over time, each
        owner keeps its half-empty chunks (reads sqlite-vec 0.1's shadow tables, as
        ``_vector_problems`` does)."""
        with self.read() as conn:
            if self._vector_table(conn) is None:
                return []
            rows = conn.execute(
                "SELECT c.partition00, count(DISTINCT c.chunk_id), count(r.rowid), max(c.size)"
                " FROM message_vectors_chunks c LEFT JOIN message_vectors_rowids r ON r.chunk_id = c.chunk_id"
                " GROUP BY c.partition00"
            ).fetchall()
        waste = [(owner, chunks - max(1, -(-used // size))) for owner, chunks, used, size in rows]
        return [(owner, n) for owner, n in waste if n > 0]

    def compact_vectors(self, owner_id: str) -> None:
        """Write an owner's vectors again, packed into as few chunks as they need (its
        old chunks are emptied, and sqlite-vec deletes an emptied chunk). One short
        transaction per owner, so writers wait at most that long."""
        with self.write() as conn:
            ddl = self._vector_table(conn)
            if ddl is None:
                return
            self._rewrite_vectors(conn, ddl, "rowid IN (SELECT id FROM messages WHERE owner_id = ?)", (owner_id,),
                                  anew=False)

    def count_selected(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str] = (),
                       through_id: int | None = None) -> int:
        """How many messages ``_selected`` picks."""
        where, args = _selected(owner_id, None, before_us, exclude_owners, through_id)
        return int(self._query(f"SELECT count(*) FROM messages m{where}", args)[0][0])

    def last_id(self) -> int:
        """The id of the newest message (0 when there is none)."""
        return int(self._query("SELECT coalesce(max(id), 0) FROM messages")[0][0])

    def file_bytes(self) -> int:
        """The file's size with its WAL (0 in memory)."""
        if self._in_memory:
            return 0
        return sum(os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p))

    def pages(self) -> tuple[int, int, int]:
        """(page size, pages in the file, pages on the freelist): how much VACUUM would give back."""
        with self.read() as conn:
            return tuple(int(conn.execute(f"PRAGMA {name}").fetchone()[0])  # type: ignore[return-value]
                         for name in ("page_size", "page_count", "freelist_count"))

    def vacuum(self) -> None:
        """Rewrite the file (VACUUM): gives free pages back to the disk and, in a file
        written before secure_delete was on (no ``SECURE_SINCE`` in meta), drops the stale
        copies of deleted text that earlier page splits left in live pages. Marks the
        file as clean from then on. Needs the write lock and no reader in a transaction."""
        with self._write_lock() as deadline, self._mapped_errors():
            conn = self._connection()
            self._execute_when_free(conn, "VACUUM", deadline)
        with self.write() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES (?, 'vacuumed')"
                         " ON CONFLICT (key) DO NOTHING", (SECURE_SINCE,))

    def checkpoint(self, wait: float) -> int:
        """Copy the WAL back into the file and truncate it to zero bytes, so that no old
        page (a deleted message's) stays in the -wal; returns the frames left behind: 0
        when done. A reader holding an older snapshot (another thread's or process's
        open read) blocks it until the reader ends: tries for up to ``wait`` seconds,
        holding the write lock ~50 ms a try and letting writers in between (one long
        wait under the lock stalled concurrent add() for 2.9 s; this way, 87 ms)."""
        if self._in_memory:
            return 0
        deadline = time.monotonic() + wait
        while True:
            with self._write_lock(), self._mapped_errors():
                conn = self._connection()
                conn.execute(f"PRAGMA busy_timeout = {_CHECKPOINT_TRY_MS}")
                try:
                    busy, frames, done = conn.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
                except driver.dbapi().OperationalError as exc:
                    if not _is_busy(exc):
                        raise
                    busy, frames, done = 1, -1, 0
                finally:
                    conn.execute(f"PRAGMA busy_timeout = {int(self.lock_timeout * 1000)}")
            if not busy:
                return 0
            if time.monotonic() >= deadline:
                return max(1, frames - done)
            time.sleep(_CHECKPOINT_PAUSE)

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
    ) -> tuple[ConversationState | None, list[Row]]:
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
        return ConversationState(state[0], state[1]), [Row._make(r) for r in reversed(rows)]

    # -- summaries --------------------------------------------------------------------

    def summary(self, owner_id: str, conversation_id: str) -> SummaryRow | None:
        """The conversation's summary row (None before its first fold)."""
        rows = self._query(
            f"SELECT {_SUMMARY_COLUMNS} FROM summaries WHERE owner_id = ? AND conversation_id = ?",
            (owner_id, conversation_id),
        )
        return SummaryRow._make(rows[0]) if rows else None

    def rows_after(
        self, owner_id: str, conversation_id: str, after: tuple[int, int], *,
        before: tuple[int, int] | None = None, newest_first: bool, limit: int,
    ) -> list[tuple[int, Row]]:
        """(id, row) of the conversation's messages after ``after`` (and before ``before``),
        positions being (created_us, id) in its (created_at, id) order: the newest
        ``limit`` of them newest first, or the oldest ``limit`` oldest first."""
        order = "DESC" if newest_first else "ASC"
        end = (MAX_US + 1, 0) if before is None else before
        rows = self._query(
            f"SELECT id, {_COLUMNS} FROM messages WHERE conversation_id = ? AND owner_id = ?"
            " AND (created_at, id) > (?, ?) AND (created_at, id) < (?, ?)"
            f" ORDER BY created_at {order}, id {order} LIMIT ?",
            (conversation_id, owner_id, *after, *end, limit),
        )
        return [(r[0], Row._make(r[1:])) for r in rows]

    def count_between(
        self, owner_id: str, conversation_id: str, after: tuple[int, int], before: tuple[int, int]
    ) -> int:
        """How many of the conversation's messages lie strictly between two positions
        (created_us, id) in its (created_at, id) order."""
        return int(self._query(
            "SELECT count(*) FROM messages WHERE conversation_id = ? AND owner_id = ?"
            " AND (created_at, id) > (?, ?) AND (created_at, id) < (?, ?)",
            (conversation_id, owner_id, *after, *before),
        )[0][0])

    def save_summary(
        self, owner_id: str, conversation_id: str, *, expected_version: int, text: str,
        after: tuple[int, int], through: tuple[int, int], ids: Sequence[int], folded: int, summarizer: str,
    ) -> bool:
        """Write the conversation's summary, now covering up to ``through``, if nothing
        changed since the fold read it: its version is still ``expected_version`` (0: no
        row yet) and the messages folded (``ids``) are still all there is between ``after``
        and ``through``: as many, and none newer (ids only grow, so a message written
        meanwhile at a time in that span has a larger id, even if another was deleted from
        it). Else a message would be skipped, or a deleted one kept. False when something
        changed."""
        values = (text, through[0], through[1], folded, summarizer, now_us(), owner_id, conversation_id)
        with self.write() as conn:
            present, newest = conn.execute(
                "SELECT count(*), max(id) FROM messages WHERE conversation_id = ? AND owner_id = ?"
                " AND (created_at, id) > (?, ?) AND (created_at, id) <= (?, ?)",
                (conversation_id, owner_id, *after, *through),
            ).fetchone()
            if present != len(ids) or newest != max(ids):
                return False
            if expected_version == 0:
                cur = conn.execute(
                    "INSERT INTO summaries (text, through_us, through_id, folded, summarizer,"
                    " updated_us, owner_id, conversation_id, version) VALUES (?, ?, ?, ?, ?, ?, ?, ?, 1)"
                    " ON CONFLICT DO NOTHING", values,
                )
            else:
                cur = conn.execute(
                    "UPDATE summaries SET text = ?, through_us = ?, through_id = ?, folded = ?,"
                    " summarizer = ?, updated_us = ?, version = version + 1"
                    " WHERE owner_id = ? AND conversation_id = ? AND version = ?",
                    (*values, expected_version),
                )
        return bool(cur.rowcount == 1)

    def get(self, msg_id: str) -> Message | None:
        rows = self._query(f"SELECT {_COLUMNS} FROM messages WHERE msg_id = ?", (msg_id,))
        return row_to_message(Row._make(rows[0])) if rows else None

    def conversation_rows(self, owner_id: str, conversation_id: str) -> list[Row]:
        """Every message of the conversation, oldest first ((created_at, id) order)."""
        rows = self._query(
            f"SELECT {_COLUMNS} FROM messages WHERE conversation_id = ? AND owner_id = ?"
            " ORDER BY created_at, id",
            (conversation_id, owner_id),
        )
        return [Row._make(r) for r in rows]

    def owner_conversations(self, owner_id: str) -> list[str]:
        """The ids of the owner's conversations that hold a message, sorted."""
        rows = self._query(
            "SELECT conversation_id FROM conversations WHERE owner_id = ? AND message_count > 0"
            " ORDER BY conversation_id",
            (owner_id,),
        )
        return [r[0] for r in rows]

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
        """"ok", or what was found, a line a problem: ``PRAGMA integrity_check``; the
        keyword index (a row per message, the right previous message, FTS5's own check);
        the vectors (see ``_vector_problems``); times a datetime cannot hold. Read-only,
        FTS5's own check is the one ``PRAGMA integrity_check`` runs (SQLite 3.44+; older
        ones say it was skipped)."""
        # On a fresh connection: SQLite 3.50's PRAGMA integrity_check reports a healthy
        # FTS5 index as "malformed inverted index" on a connection that read the index
        # before another connection changed it (FTS5 keeps the index structure cached
        # per connection, and its integrity check does not refresh it).
        with self._fresh_reader() as conn:
            result = "\n".join(r[0] for r in conn.execute("PRAGMA integrity_check"))
        if result != "ok":
            return result
        problems: list[str] = []
        with self.read() as conn:
            unindexed = conn.execute(
                "SELECT count(*) FROM messages m"
                " WHERE NOT EXISTS (SELECT 1 FROM messages_fts f WHERE f.rowid = m.id)"
            ).fetchone()[0]
            indexed = conn.execute("SELECT count(*) FROM messages_fts").fetchone()[0]
            total = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
            stale = conn.execute(
                "SELECT count(*) FROM (SELECT id, lag(content) OVER w AS prev, lead(content) OVER w AS next"
                " FROM messages WINDOW w AS (PARTITION BY owner_id, conversation_id ORDER BY created_at, id)) x"
                " JOIN messages_fts f ON f.rowid = x.id WHERE f.prev IS NOT x.prev OR f.next IS NOT x.next"
            ).fetchone()[0]
            if unindexed or indexed != total:
                problems.append(
                    f"fts5: {unindexed} messages missing from the keyword index, which has {indexed} rows for {total} messages"
                )
            if stale:
                problems.append(f"fts5: {stale} keyword rows hold the wrong previous or next message")
            out_of_range = conn.execute(
                "SELECT count(*) FROM messages WHERE created_at NOT BETWEEN ? AND ?", (MIN_US, MAX_US)
            ).fetchone()[0]
            if out_of_range:
                problems.append(f"messages: {out_of_range} have a created_at outside the years 1 to 9999 UTC")
            problems += _vector_problems(conn)
        if self.read_only:
            # FTS5's own check is a write ('integrity-check' needs the write lock). From
            # SQLite 3.44 on, PRAGMA integrity_check above ran the same check (FTS5's
            # xIntegrity; it reports a damaged index as "malformed inverted index").
            if driver.dbapi().sqlite_version_info < (3, 44, 0):
                problems.append(
                    f"fts5: its own check was skipped: read-only, it needs SQLite 3.44 or newer "
                    f"(this is {driver.dbapi().sqlite_version})"
                )
            return "\n".join(problems) or "ok"
        try:
            with self.write() as conn:
                conn.execute("INSERT INTO messages_fts (messages_fts) VALUES ('integrity-check')")
        except LockTimeoutError:
            raise  # a busy file is not a damaged one
        except StoreError as exc:
            problems.append(f"fts5: {exc}")
        return "\n".join(problems) or "ok"


def _vector_problems(conn: Any) -> list[str]:
    """What is wrong with the vectors, in one read transaction:

    * accounting: each message is in exactly one of message_vectors, pending_vectors and
      zero_vectors, and nothing there belongs to no message;
    * each vector reads back (through vec0's own row lookup) with its message's owner,
      conversation and time, and the recorded model's dimension;
    * the chunks, as the KNN scan reads them: blobs of the right sizes, and the rows their
      validity bits mark are exactly the rows of the rowid table, at the same places.
      (This reads sqlite-vec 0.1's chunk layout; pyproject keeps sqlite-vec below 0.2.)
    """
    table = Store._vector_table(conn)
    parts = ["pending_vectors", "zero_vectors"] + (["message_vectors_rowids"] if table else [])
    union = " UNION ALL ".join(f"SELECT {'rowid' if p.endswith('rowids') else 'id'} AS id FROM {p}" for p in parts)
    unaccounted, doubled, orphans = conn.execute(
        f"SELECT (SELECT count(*) FROM messages m WHERE NOT EXISTS (SELECT 1 FROM ({union}) u WHERE u.id = m.id)),"
        f" (SELECT count(*) FROM (SELECT id FROM ({union}) GROUP BY id HAVING count(*) > 1)),"
        f" (SELECT count(*) FROM ({union}) u WHERE NOT EXISTS (SELECT 1 FROM messages m WHERE m.id = u.id))"
    ).fetchone()
    problems = []
    if unaccounted:
        problems.append(f"vectors: {unaccounted} messages have no vector and are not queued for one")
    if doubled:
        problems.append(f"vectors: {doubled} messages are counted twice (vector, queue, zero vector)")
    if orphans:
        problems.append(f"vectors: {orphans} vectors or queue rows belong to no message")
    if table is None:
        return problems
    identity = conn.execute("SELECT value FROM meta WHERE key = 'embedder'").fetchone()
    dim = None if identity is None else json.loads(identity[0]).get("dim")
    if type(dim) is not int or f"float[{dim}]" not in table:
        return [*problems, f"vectors: the recorded model's dimension ({dim}) is not the vector table's"]
    messages = {row[0]: row[1:] for row in conn.execute("SELECT id, owner_id, conversation_id, created_at FROM messages")}
    try:
        wrong = sum(
            1 for row_id, owner, conversation, created, length in conn.execute(
                "SELECT rowid, owner_id, conversation_id, created_at, vec_length(embedding) FROM message_vectors"
            )
            if row_id in messages and (messages[row_id] != (owner, conversation, created) or length != dim)
        )
    except driver.dbapi().Error as exc:
        problems.append(f"vectors: unreadable ({exc})")
    else:
        if wrong:
            problems.append(f"vectors: {wrong} vectors disagree with their message (owner, conversation, time or size)")
    places = {row_id: (chunk, offset) for row_id, chunk, offset in conn.execute(
        "SELECT rowid, chunk_id, chunk_offset FROM message_vectors_rowids")}
    seen: dict[int, tuple[int, int]] = {}
    bad_chunks = 0
    blob_sizes = [(name, 4 * dim) for name in ("message_vectors_vector_chunks00",)]
    if _COARSE in table:
        blob_sizes.append(("message_vectors_vector_chunks01", dim // 8))
    blobs = [
        dict(conn.execute(f"SELECT rowid, length(vectors) FROM {name}")) for name, _ in blob_sizes
    ]
    for chunk, size, validity, rowids in conn.execute(
        "SELECT chunk_id, size, validity, rowids FROM message_vectors_chunks"
    ):
        if (
            type(validity) is not bytes or type(rowids) is not bytes
            or len(validity) * 8 != size or len(rowids) != 8 * size
            or any(found.get(chunk) != size * width for found, (_, width) in zip(blobs, blob_sizes))
        ):
            bad_chunks += 1
            continue
        for offset in range(size):
            if validity[offset >> 3] >> (offset & 7) & 1:
                seen[int.from_bytes(rowids[8 * offset : 8 * offset + 8], "little", signed=True)] = (chunk, offset)
    if bad_chunks:
        problems.append(f"vectors: {bad_chunks} chunks of the vector table are damaged (wrong sizes)")
    elif seen != places:
        lost = sum(1 for row_id, place in places.items() if seen.get(row_id) != place)
        extra = sum(1 for row_id in seen if row_id not in places)
        problems.append(
            f"vectors: the search sees {len(seen)} vectors, the table lists {len(places)}"
            f" ({lost} unseen or misplaced, {extra} unlisted)"
        )
    return problems

__all__ = ["MIGRATIONS", "SCHEMA_VERSION", "ConversationState", "Exported", "Scope", "Store", "SummaryRow"]
