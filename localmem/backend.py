"""The storage interface: what the rest of localmem asks of a backend, and the typed
records that cross it.

Two backends implement ``Backend``: ``store.Store`` (one SQLite file: sqlite-vec, FTS5;
the default) and ``postgres.PostgresStore`` (PostgreSQL with pgvector, for many processes
on many machines). ``open_backend`` picks one from the path: a ``postgresql://`` URL is
PostgreSQL, anything else a file. Nothing outside the backends writes SQL against the
database; rows cross as ``records.Row`` and the records here, never positional tuples.

The helpers below are the rules both backends share: what a retry of a msg_id is, how a
model's identity is compared, what a vector with no direction is.
"""

from __future__ import annotations

import array
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from .errors import InvalidInputError, ModelMismatchError
from .records import Message, Row
from .validate import NewMessage, from_utc_us

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


# A libpq keyword/value connection string ("host=db dbname=memory user=agent"): words
# joined by "=" to values, one of them a key only a connection string has.
_CONNINFO = re.compile(r"\s*[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*)(?:\s+[A-Za-z_]+\s*=\s*(?:'(?:[^'\\]|\\.)*'|\S*))*\s*")
_CONNINFO_KEYS = re.compile(r"(?:^|\s)(?:host|hostaddr|dbname|user|password|port|service|sslmode)\s*=")


def is_postgres_url(path: str) -> bool:
    """Does ``path`` name a PostgreSQL database (a libpq URL, ``postgresql://...``, or a
    keyword/value connection string, ``host=... dbname=...``) rather than a file?"""
    return path.startswith(POSTGRES_SCHEMES) or (
        _CONNINFO.fullmatch(path) is not None and _CONNINFO_KEYS.search(path) is not None)


def row_to_message(row: Row) -> Message:
    """A stored row as a Message."""
    return Message(
        msg_id=row.msg_id,
        conversation_id=row.conversation_id,
        owner_id=row.owner_id,
        role=row.role,
        content=row.content,
        created_at=from_utc_us(row.created_us),
        feature=row.feature,
        metadata=None if row.metadata is None else json.loads(row.metadata),
    )


def message_params(m: NewMessage) -> Row:
    return Row(
        m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, m.created_us,
        m.feature, m.metadata_json,
    )


def same_fields(stored: Row, new: NewMessage) -> bool:
    """Is ``new`` a retry of the stored row? created_at counts only if the caller gave it."""
    same = (
        stored.conversation_id == new.conversation_id
        and stored.owner_id == new.owner_id
        and stored.role == new.role
        and stored.content == new.content
        and stored.feature == new.feature
        and stored.metadata == new.metadata_json
    )
    return same and (not new.explicit_created_at or stored.created_us == new.created_us)


def unique_by_msg_id(chunk: Sequence[NewMessage]) -> dict[str, NewMessage]:
    """The chunk by msg_id, a retry inside it dropped; a msg_id repeated with different
    fields raises."""
    fresh: dict[str, NewMessage] = {}
    for m in chunk:
        seen = fresh.get(m.msg_id)
        if seen is None:
            fresh[m.msg_id] = m
        elif not same_fields(message_params(seen), m):
            raise conflict_error(m)
    return fresh


def vector_dim(identity: dict[str, Any]) -> int:
    dim = identity.get("dim")
    if type(dim) is not int or dim < 1:
        raise InvalidInputError(f"an embedder identity needs a positive int dim; got {dim!r}")
    return dim



def conflict_error(new: NewMessage) -> InvalidInputError:
    return InvalidInputError(
        f"msg_id {new.msg_id!r} already exists with different fields; a msg_id names one message"
    )



def is_zero_vector(vector: bytes) -> bool:
    """Is this float32 vector all zeros (+0.0 or -0.0)? It has no direction: its cosine
    with anything is undefined."""
    return not any(array.array("f", vector))


def new_stamp() -> int:
    """A fresh random 63-bit write stamp (from the OS: a forked child never repeats its
    parent's, as a copied PRNG state would)."""
    return int.from_bytes(os.urandom(8), "big") >> 1



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


class SummaryRow(NamedTuple):
    """A conversation's summary row. It covers every message at or before
    (``through_us``, ``through_id``) in (created_at, id) order; an emptied summary covers
    nothing (``through_us`` below every time)."""

    version: int
    text: str
    through_us: int
    through_id: int
    folded: int
    summarizer: str
    updated_us: int


NO_MARK = (-(2**63), 0)  # (created_us, id) before every message: a summary covering nothing


@dataclass(frozen=True, slots=True)
class Deleted:
    """A message just deleted: where it was and what it said, for the caches to forget."""

    owner_id: str
    conversation_id: str
    content: str


@dataclass(frozen=True, slots=True)
class Forgotten:
    """What ``Store.forget`` deleted: how many messages, the (owner, conversation) pairs
    that lost some (``emptied``: those left with none), the texts (for the caches), and
    whether the file was written with secure_delete on all along (``secure``), and what
    the backend keeps of them that it cannot erase (``remains``)."""

    messages: int
    scopes: tuple[tuple[str, str], ...]
    emptied: tuple[tuple[str, str], ...]
    contents: tuple[str, ...]
    secure: bool
    remains: str | None = None  # what the backend could not erase, said plainly (None: nothing)


@dataclass(frozen=True, slots=True)
class Scope:
    """A search scope's state: ``token`` changes whenever a message enters or leaves it, or
    the vectors are rebuilt;
    ``size`` counts its messages; ``pending`` is True while some lack their vector."""

    token: list[int]
    size: int
    pending: bool


class Exported(NamedTuple):
    """What ``Store.exporting`` reads in one snapshot: how many messages are selected, the
    embedder recorded for their vectors (None: none yet), and the messages themselves as
    batches of (row, float32 vector bytes or None), in insertion order."""

    total: int
    embedder: dict[str, Any] | None
    batches: Iterator[list[tuple[Row, bytes | None]]]


# Vector search: scopes of up to this many messages are searched exactly, on both backends
# (store.py and postgres.py say what they do above it, and what it costs).
EXACT_SEARCH_MAX = 5_000
# When every word of a query matches more than the keyword budget, which is the rarest
# takes a longer count (at 1M messages ~50 ns a row: 8 x 5000 rows cost ~2 ms a word).
RANKING_COUNT = 8


def within_budget(terms: Sequence[str], count: Callable[[str, int], int], budget: int) -> list[tuple[str, int]]:
    """The keyword budget, one rule for both backends: ``terms`` (at least one) kept while
    the rows they match add up to at most ``budget``, the rarest always, most common left
    out first; each with its count (``count(term, limit)``: matches counted up to
    ``limit``, here ``budget + 1``, or ``RANKING_COUNT x budget`` to find the rarest when
    every term is past the budget). In the terms' own order."""
    counted = sorted((count(term, budget + 1), position, term) for position, term in enumerate(terms))
    if counted[0][0] > budget:
        counted = sorted((count(term, RANKING_COUNT * budget), position, term) for _, position, term in counted)
    kept, rows = [counted[0]], counted[0][0]
    for n, position, term in counted[1:]:
        if rows + n > budget:
            break
        kept.append((n, position, term))
        rows += n
    return [(term, n) for n, _, term in sorted(kept, key=lambda kept_term: kept_term[1])]


class Backend(Protocol):
    """What ``Memory``, the strategies, the pipeline, the embedding worker, the summary
    folder, lifecycle and transfer ask of a database. Thread-safe; after ``fork()`` an
    implementation opens new connections on first use. Every method raises only
    ``LocalMemError`` subclasses (a driver's own error never escapes).

    Ids: each message has a backend-assigned integer ``id`` that only grows (a message
    written later has a larger one), beside the caller's ``msg_id``. Positions in a
    conversation are ``(created_us, id)``. Versions (``ConversationState.version``,
    ``Scope.token``) change with every committed change of their scope and never repeat.
    """

    path: str  # the file, or the URL with its password removed: what messages name
    durability: str
    lock_timeout: float
    read_only: bool
    instance_id: str | None  # random per database, set at creation: keys the caches

    # -- lifecycle
    def close(self) -> None: ...
    @property
    def closed(self) -> bool: ...
    @property
    def in_memory(self) -> bool: ...
    def reopen(self) -> Backend:
        """Another handle on the same database with the same settings (the embedding
        worker's: its own connections)."""
        ...

    # -- meta and model identity
    def meta(self, key: str) -> str | None: ...
    def set_meta(self, key: str, value: str) -> None: ...
    def embedder_identity(self) -> dict[str, Any] | None: ...
    def bind_embedder(self, identity: dict[str, Any], *, replace: bool = False) -> None: ...

    # -- messages: writes
    def insert(self, m: NewMessage) -> tuple[Message, bool]: ...
    def insert_many(self, chunk: Sequence[NewMessage]) -> int: ...
    def stored_as(self, chunk: Sequence[NewMessage]) -> list[bool | None]: ...
    def import_chunk(self, chunk: Sequence[NewMessage], vectors: dict[str, bytes],
                     identity: dict[str, Any] | None) -> tuple[int, int]: ...
    def delete(self, msg_id: str) -> Deleted | None: ...
    def forget(self, owner_id: str | None, conversation_id: str | None, before_us: int | None, *,
               exclude_owners: Sequence[str] = (), through_id: int | None = None,
               scrub: bool = True) -> Forgotten: ...
    def scrub(self) -> None: ...

    # -- messages: reads
    def get(self, msg_id: str) -> Message | None: ...
    def rows_by_id(self, ids: Sequence[int]) -> dict[int, Row]: ...
    def rows_and_successors(self, ids: Sequence[int]) -> tuple[dict[int, Row], dict[int, int]]: ...
    def conversation_ids(self, ids: Sequence[int]) -> dict[int, str]: ...
    def conversation_rows(self, owner_id: str, conversation_id: str) -> list[Row]: ...
    def owner_conversations(self, owner_id: str) -> list[str]: ...
    def conversation_state(self, owner_id: str, conversation_id: str) -> ConversationState | None: ...
    def recent_rows(self, owner_id: str, conversation_id: str, limit: int,
                    since_us: int | None) -> tuple[ConversationState | None, list[Row]]: ...
    def rows_after(self, owner_id: str, conversation_id: str, after: tuple[int, int], *,
                   before: tuple[int, int] | None = None, newest_first: bool, limit: int) -> list[tuple[int, Row]]: ...
    def count_between(self, owner_id: str, conversation_id: str, after: tuple[int, int],
                      before: tuple[int, int]) -> int: ...
    def latest_user_message(self, owner_id: str, conversation_id: str) -> str | None: ...
    def active_conversations(self, since_us: int) -> int: ...
    def scope(self, owner_id: str, conversation_id: str | None) -> Scope: ...
    def exporting(self, *, owner_id: str | None = None, conversation_id: str | None = None,
                  before_us: int | None = None, vectors: bool = False, batch_size: int = 1000,
                  exclude_owners: Sequence[str] = (), through_id: int | None = None) -> AbstractContextManager[Exported]: ...
    def count_selected(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str] = (),
                       through_id: int | None = None) -> int: ...
    def nth_selected_id(self, owner_id: str | None, before_us: int | None, exclude_owners: Sequence[str],
                        through_id: int | None, n: int) -> int | None: ...
    def last_id(self) -> int: ...
    def counts(self) -> dict[str, int]: ...

    # -- keyword search (``match``: retrieval.keyword_query's expression, or its terms apart)
    def keyword(self, match: str | Sequence[str], k: int, *, owner_id: str, conversation_id: str | None = None,
                since_us: int | None = None) -> list[tuple[int, float]]: ...
    def keyword_presence(self, terms: Sequence[str], *, owner_id: str, conversation_id: str,
                         since_us: int | None, skip_text: str | None) -> tuple[bool, bool]: ...
    def any_keyword_match(self, match: str, owner_id: str, since_us: int | None = None,
                          scan: int = 5_000) -> bool | None: ...

    # -- vectors and their queue
    def pending_batch(self, limit: int, after_id: int = 0) -> list[tuple[int, str]]: ...
    def pending_count(self) -> int: ...
    def write_vectors(self, identity: dict[str, Any], ids: Sequence[int], vectors: Sequence[bytes]) -> int: ...
    def reset_vectors(self) -> int: ...
    def vector_count(self) -> int: ...
    def knn(self, vector: bytes, k: int, *, owner_id: str, conversation_id: str | None = None,
            since_us: int | None = None, exact_max: int = ..., spare: bool = False) -> list[tuple[int, float]]: ...
    def cosines(self, vector: bytes, ids: Sequence[int], owner_id: str | None = None) -> dict[int, float]: ...
    def recent_similarity(self, vector: bytes, owner_id: str, conversation_id: str, n: int) -> float | None: ...

    # -- summaries
    def summary(self, owner_id: str, conversation_id: str) -> SummaryRow | None: ...
    def save_summary(self, owner_id: str, conversation_id: str, *, expected_version: int, text: str,
                     after: tuple[int, int], through: tuple[int, int], ids: Sequence[int], folded: int,
                     summarizer: str) -> bool: ...

    # -- upkeep (maintain(): each does what its database needs, or nothing)
    def vector_waste(self) -> list[tuple[str, int]]: ...
    def compact_vectors(self, owner_id: str) -> None: ...
    def refresh_vector_indexes(self) -> tuple[int, int]: ...
    def bulk_load(self) -> AbstractContextManager[None]:
        """Around a large load (``localmem migrate``): what the backend can index faster
        at the end than row by row, it indexes at the end."""
        ...
    def file_bytes(self) -> int: ...
    def pages(self) -> tuple[int, int, int]: ...
    def vacuum(self) -> None: ...
    def checkpoint(self, wait: float) -> int: ...
    def check_integrity(self) -> str: ...


def open_backend(path: str, *, durability: str = "normal", lock_timeout: float = 5.0,
                 read_only: bool = False) -> Backend:
    """The backend ``path`` names: PostgreSQL for a ``postgresql://`` URL (the ``postgres``
    extra), else the SQLite file."""
    if is_postgres_url(path):
        try:
            from .postgres import PostgresStore
        except ImportError as exc:  # psycopg is the postgres extra
            raise InvalidInputError(
                f"{exc.name or 'psycopg'} is not installed: a PostgreSQL database needs the postgres extra "
                "(pip install 'localmem-engine[postgres]')"
            ) from exc
        return PostgresStore(path, durability=durability, lock_timeout=lock_timeout, read_only=read_only)
    from .store import Store

    return Store(path, durability=durability, lock_timeout=lock_timeout, read_only=read_only)
