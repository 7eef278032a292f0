"""Export files: messages written to JSONL (or Parquet), and read back.

A JSONL export (format 1) is UTF-8, one JSON object a line, each line ending in ``\\n``::

    {"localmem_export":1,"embedder":{"dim":384,"name":"all-MiniLM-L6-v2","sha256":"9a3..."},"vectors":true}
    {"msg_id":"m-1","conversation_id":"c1","owner_id":"u1","role":"user","content":"hi","created_at":"2024-05-01T09:30:00.000000+00:00","feature":null,"metadata":{"channel":"web"},"vector":"AACAPw..."}

The first line is the header: the format number, the embedder the vectors come from (null
when no vectors were exported, or none exist yet) and whether message lines carry a
``vector``: base64 of its little-endian float32 values, null for a message still waiting
for its vector. Then one line per message, in the order the messages were stored, keys in
the order above, ``created_at`` in UTC with microseconds, ``metadata`` the JSON object as
stored (or null). Nothing in the file depends on when it was written: exporting an import
of an export into an empty file gives the same bytes.

A Parquet export holds the same columns (``created_at`` a UTC timestamp in microseconds,
``metadata`` the JSON text, ``vector`` a BLOB of the float32 bytes, present only with
vectors), the header line as the file's key-value metadata under ``localmem_export``, and
row groups of 10,000 rows (reading one back takes memory for one row group). DuckDB writes
and reads it; its Parquet support is built into the wheel, so nothing is downloaded.

Reading checks every message with the rules ``add()`` applies (``validate.new_message``);
here ``msg_id`` and ``created_at`` are required, since an import must be repeatable.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import tempfile
import time
from array import array
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, NamedTuple

from .backend import Backend, describe_model, same_model
from .errors import InvalidInputError, StorageFullError
from .progress import ProgressCallback, Reporter, check_callback
from .records import Row
from .validate import (
    MAX_METADATA_BYTES,
    MAX_US,
    MIN_US,
    NewMessage,
    check_flag,
    check_selection,
    from_utc_us,
    new_message,
)

__all__ = [
    "BadLine", "ExportReport", "ImportReport", "export", "export_format", "import_",
]

FORMAT_VERSION = 1
HEADER_KEY = "localmem_export"
FORMATS = ("jsonl", "parquet")
FIELDS = ("msg_id", "conversation_id", "owner_id", "role", "content", "created_at", "feature", "metadata")
REQUIRED = FIELDS[:6]
_OPTIONAL = frozenset(("feature", "metadata", "vector"))
_HEADER_FIELDS = (HEADER_KEY, "embedder", "vectors")
_EMBEDDER_FIELDS = frozenset(("name", "dim", "sha256"))
MAX_DIM = 65_536
CHUNK = 1_000  # messages a transaction on import; rows a batch on export
PARQUET_ROW_GROUP = 10_000
SHOWN_ERRORS = 10  # bad lines an InvalidInputError lists
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)

# What pass 1 of an import found on each line (a bytearray, one byte a line).
_SKIP, _NEW, _STORED, _REPEAT, _BAD = range(5)  # blank/header, to write, stored already, repeats an earlier line, invalid


@dataclass(frozen=True, slots=True)
class BadLine:
    """A line an import refused: its number (the header is line 1; in a Parquet file, the
    row number, from 1) and why."""

    line: int
    error: str


@dataclass(frozen=True, slots=True)
class ExportReport:
    """What ``Memory.export`` wrote: ``messages`` lines (rows), ``vectors`` of them with a
    vector, in ``format`` ("jsonl" or "parquet") at ``path``, in ``seconds``."""

    path: str
    messages: int
    vectors: int
    format: str
    seconds: float


@dataclass(frozen=True, slots=True)
class ImportReport:
    """What ``Memory.import_`` did with the file at ``path``.

    ``lines``: message lines (rows) read; ``imported``: messages stored by this import;
    ``unchanged``: lines whose message was stored already with the same fields (an earlier
    import, or the same line twice in the file); ``invalid``: the lines refused (only with
    ``skip_invalid=True``: else the import raises); ``vectors``: vectors taken from the file
    (their messages need no embedding); ``vectors_skipped``: why the file's vectors were
    not used, if it has some that were not (the messages then wait for the embedder).
    """

    path: str
    format: str
    lines: int
    imported: int
    unchanged: int
    invalid: tuple[BadLine, ...]
    vectors: int
    vectors_skipped: str | None
    seconds: float


class Header(NamedTuple):
    """An export's header: the embedder its vectors come from, whether lines carry one."""

    embedder: dict[str, Any] | None
    vectors: bool


# -- arguments ---------------------------------------------------------------------------


def export_format(path: str, format: Any) -> str:
    """``format`` checked, or (None) the one the file name says: ``.parquet`` is Parquet,
    anything else JSONL."""
    if format is None:
        return "parquet" if path.lower().endswith(".parquet") else "jsonl"
    if format not in FORMATS:
        raise InvalidInputError(f"format must be one of {', '.join(FORMATS)} or None; got {format!r}")
    return str(format)


def _path(path: Any) -> str:
    if not isinstance(path, (str, os.PathLike)):
        raise InvalidInputError(f"path must be a str or os.PathLike, not {type(path).__name__}")
    text = os.fspath(path)
    if not isinstance(text, str) or not text:
        raise InvalidInputError(f"path must name a file; got {path!r}")
    return text


# -- encoding ----------------------------------------------------------------------------


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def header_line(embedder: dict[str, Any] | None, vectors: bool) -> str:
    """The header as one line of JSON (no newline); of the embedder, its dim, name and
    sha256, in that order (what ``parse_header`` reads back)."""
    identity = None if embedder is None else {key: embedder.get(key) for key in sorted(_EMBEDDER_FIELDS)}
    return _dumps({HEADER_KEY: FORMAT_VERSION, "embedder": identity, "vectors": vectors})


def iso_time(created_us: int) -> str:
    """A stored time as ISO 8601 in UTC with microseconds: ``2024-05-01T09:30:00.000000+00:00``."""
    return from_utc_us(created_us).isoformat(timespec="microseconds")


def message_line(row: Row, vector: bytes | None, vectors: bool) -> str:
    """One message as its export line, newline included. The stored metadata is already
    canonical JSON text (``validate.check_metadata``), so it goes in as it is."""
    head = _dumps({
        "msg_id": row.msg_id, "conversation_id": row.conversation_id, "owner_id": row.owner_id,
        "role": row.role, "content": row.content, "created_at": iso_time(row.created_us), "feature": row.feature,
    })
    tail = ',"metadata":' + ("null" if row.metadata is None else row.metadata)
    if vectors:
        tail += ',"vector":' + ("null" if vector is None else '"' + base64.b64encode(vector).decode("ascii") + '"')
    return head[:-1] + tail + "}\n"


# -- writing files -----------------------------------------------------------------------


def _check_target(path: str, overwrite: bool, database: str) -> None:
    """Refuse to replace a file unless asked, a folder always, and the database itself."""
    if os.path.isdir(path):
        raise InvalidInputError(f"{path} is a folder; name the file to write")
    if not os.path.lexists(path):
        return
    if not overwrite:
        raise InvalidInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it")
    for own in (database, database + "-wal", database + "-shm", database + "-journal"):
        with contextlib.suppress(OSError):
            if os.path.samefile(path, own):
                raise InvalidInputError(f"{path} is the database's own file; export to another file")


def _fsync_folder(folder: str) -> None:
    """Make a rename in ``folder`` durable (where a folder can be opened: not Windows)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        with contextlib.suppress(OSError):
            os.fsync(fd)
    finally:
        os.close(fd)


def _publish(temp: str, path: str, overwrite: bool) -> None:
    """``temp`` becomes ``path`` in one step. Without ``overwrite`` a hard link does it,
    which fails if ``path`` appeared meanwhile (a rename would replace it)."""
    if overwrite:
        os.replace(temp, path)
        return
    try:
        os.link(temp, path)
    except FileExistsError:
        raise InvalidInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it") from None
    except OSError:  # no hard links on this file system: check, then rename
        if os.path.lexists(path):
            raise InvalidInputError(f"{path} exists; pass overwrite=True (--overwrite) to replace it") from None
        os.replace(temp, path)
    else:
        os.unlink(temp)


@contextlib.contextmanager
def _publishing(path: str, overwrite: bool) -> Iterator[str]:
    """A fresh temporary file beside ``path`` (mode 0600) for the block to fill; once the
    block succeeds it is flushed to disk and becomes ``path``; on any error it is removed.
    So ``path`` never holds half an export."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, temp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    os.close(fd)
    try:
        yield temp
        os.chmod(temp, 0o600)  # (DuckDB's COPY makes a file of its own, with the umask's mode)
        with open(temp, "rb+") as done:
            os.fsync(done.fileno())
        _publish(temp, path, overwrite)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
            raise StorageFullError(f"{path}: the disk is full ({exc}); nothing was written") from exc
        raise
    _fsync_folder(folder)


def _write_jsonl(temp: str, header: str, batches: Iterator[list[tuple[Row, bytes | None]]],
                 vectors: bool, reporter: Reporter) -> tuple[int, int]:
    messages = with_vector = 0
    with open(temp, "wb") as out:
        out.write(header.encode("utf-8") + b"\n")
        for batch in batches:
            out.write("".join(message_line(row, vector, vectors) for row, vector in batch).encode("utf-8"))
            messages += len(batch)
            with_vector += sum(1 for _, vector in batch if vector is not None)
            reporter.advance(len(batch))
    return messages, with_vector


def _duckdb() -> Any:
    import duckdb  # a core dependency, imported when used (as analytics.py does)

    return duckdb


def _sql_text(value: str) -> str:
    """A value as an SQL string literal (COPY takes no bound parameters in its options)."""
    return "'" + value.replace("'", "''") + "'"


def _write_parquet(temp: str, header: str, batches: Iterator[list[tuple[Row, bytes | None]]],
                   vectors: bool, reporter: Reporter) -> tuple[int, int]:
    """Through a DuckDB database in a scratch file beside ``temp`` (so that memory stays
    bounded), appended a batch at a time, then copied out as Parquet."""
    import numpy as np

    duckdb = _duckdb()
    scratch = temp + ".duckdb"
    messages = with_vector = 0
    try:
        conn = duckdb.connect(scratch)
        try:
            conn.execute("SET TimeZone = 'UTC'")
            conn.execute("SET preserve_insertion_order = true")
            conn.execute(
                "CREATE TABLE messages (msg_id VARCHAR, conversation_id VARCHAR, owner_id VARCHAR, role VARCHAR,"
                " content VARCHAR, created_us BIGINT, feature VARCHAR, metadata VARCHAR, vector BLOB)"
            )
            for batch in batches:
                columns: dict[str, Any] = {
                    name: np.array([row[i] for row, _ in batch], dtype=object) for i, name in enumerate(Row._fields)
                }
                columns["created_us"] = np.array([row.created_us for row, _ in batch], dtype=np.int64)
                columns["vector"] = np.array([vector for _, vector in batch], dtype=object)
                conn.register("batch", columns)
                conn.execute(
                    "INSERT INTO messages SELECT msg_id, conversation_id, owner_id, role, content, created_us,"
                    " feature, metadata, vector FROM batch"
                )
                conn.unregister("batch")
                messages += len(batch)
                with_vector += sum(1 for _, vector in batch if vector is not None)
                reporter.advance(len(batch))
            reporter.stage("parquet", None)
            conn.execute(
                "COPY (SELECT msg_id, conversation_id, owner_id, role, content,"
                " make_timestamp(created_us)::TIMESTAMPTZ AS created_at, feature, metadata"
                + (", vector" if vectors else "") + " FROM messages)"
                f" TO {_sql_text(temp)} (FORMAT parquet, ROW_GROUP_SIZE {PARQUET_ROW_GROUP},"
                f" KV_METADATA {{{HEADER_KEY}: {_sql_text(header)}}})"
            )
        finally:
            conn.close()
    except duckdb.Error as exc:
        if "no space left" in str(exc).lower():
            raise OSError(errno.ENOSPC, f"DuckDB could not write {temp}: {exc}") from exc
        raise OSError(f"DuckDB could not write {temp}: {exc}") from exc
    finally:
        for leftover in (scratch, scratch + ".wal"):
            with contextlib.suppress(OSError):
                os.unlink(leftover)
    return messages, with_vector


def export(
    store: Backend, path: Any, *, database: str, owner_id: Any = None, conversation_id: Any = None,
    before: Any = None, vectors: Any = False, format: Any = None, overwrite: Any = False, progress: Any = None,
    exclude_owners: Sequence[str] = (), through_id: int | None = None,
) -> ExportReport:
    """Write the selected messages to ``path`` (see ``Memory.export``; retention's archive
    also passes ``exclude_owners`` and ``through_id``, see ``Store.forget``)."""
    started = time.perf_counter()
    target = _path(path)
    owner, conversation, before_us = check_selection(owner_id, conversation_id, before)
    vectors = check_flag(vectors, "vectors")
    overwrite = check_flag(overwrite, "overwrite")
    kind = export_format(target, format)
    callback = check_callback(progress)
    _check_target(target, overwrite, database)
    write = _write_jsonl if kind == "jsonl" else _write_parquet
    with _publishing(target, overwrite) as temp, store.exporting(
        owner_id=owner, conversation_id=conversation, before_us=before_us, vectors=vectors, batch_size=CHUNK,
        exclude_owners=exclude_owners, through_id=through_id,
    ) as snapshot:
        reporter = Reporter(callback, "export", snapshot.total, stage="write")
        header = header_line(snapshot.embedder if vectors else None, vectors)
        messages, with_vector = write(temp, header, snapshot.batches, vectors, reporter)
    reporter.finish()
    return ExportReport(target, messages, with_vector, kind, time.perf_counter() - started)


# -- reading files -----------------------------------------------------------------------


class _Bad(NamedTuple):
    """A line that could not even be read as a message's fields."""

    error: str


def _object_pairs(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object, refusing a key given twice (json.loads would keep the last)."""
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise InvalidInputError(f"the key {key!r} appears twice in one object")
        found[key] = value
    return found


def _no_constant(name: str) -> Any:
    raise InvalidInputError(f"{name} is not JSON")


def _loads(text: str) -> Any:
    return json.loads(text, object_pairs_hook=_object_pairs, parse_constant=_no_constant)


def parse_header(text: str) -> Header:
    """The header line's text checked; InvalidInputError says what is wrong with it."""
    try:
        value = _loads(text)
    except (ValueError, RecursionError) as exc:
        raise InvalidInputError(f"not a localmem export: the header is not JSON ({exc})") from None
    if type(value) is not dict or HEADER_KEY not in value:
        raise InvalidInputError(f"not a localmem export: the first line is no {{\"{HEADER_KEY}\": ...}} header")
    version = value[HEADER_KEY]
    if type(version) is not int or version < 1:
        raise InvalidInputError(f"the header's {HEADER_KEY} must be a format number; got {version!r}")
    if version > FORMAT_VERSION:
        raise InvalidInputError(
            f"written in export format {version}, newer than this localmem reads ({FORMAT_VERSION}); upgrade localmem"
        )
    unknown = sorted(set(value) - set(_HEADER_FIELDS))
    if unknown or set(value) != set(_HEADER_FIELDS):
        raise InvalidInputError(f"the header must have exactly the keys {', '.join(_HEADER_FIELDS)}; got {sorted(value)}")
    if type(value["vectors"]) is not bool:
        raise InvalidInputError(f"the header's vectors must be true or false; got {value['vectors']!r}")
    embedder = value["embedder"]
    if embedder is not None:
        if type(embedder) is not dict or set(embedder) != _EMBEDDER_FIELDS:
            raise InvalidInputError(f"the header's embedder must be null or {{name, dim, sha256}}; got {embedder!r}")
        name, dim, sha = embedder["name"], embedder["dim"], embedder["sha256"]
        if type(name) is not str or not name.strip():
            raise InvalidInputError(f"the header's embedder name must be a non-empty str; got {name!r}")
        if type(dim) is not int or not 1 <= dim <= MAX_DIM:
            raise InvalidInputError(f"the header's embedder dim must be an int from 1 to {MAX_DIM}; got {dim!r}")
        if sha is not None and (type(sha) is not str or not sha.strip()):
            raise InvalidInputError(f"the header's embedder sha256 must be a str or null; got {sha!r}")
    return Header(embedder, value["vectors"])


def _created_at(value: Any) -> datetime:
    """A line's created_at: an ISO 8601 string from JSON (naive ones reach new_message,
    which refuses them as add() does), or the aware datetime a Parquet reader made."""
    if isinstance(value, datetime):
        return value
    if type(value) is not str:
        raise InvalidInputError(f"created_at must be an ISO 8601 time string; got {value!r}")
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"created_at {value!r} is not an ISO 8601 time") from None


def _vector(value: Any, header: Header) -> bytes | None:
    """A line's vector: base64 text (JSONL) or bytes (Parquet), of the header's dim, finite."""
    if value is None:
        return None
    if header.embedder is None:
        raise InvalidInputError("the line has a vector but the header names no embedder")
    if isinstance(value, str):
        try:
            value = base64.b64decode(value.encode("ascii"), validate=True)
        except ValueError:
            raise InvalidInputError("vector is not base64 text") from None
    if type(value) is not bytes:
        raise InvalidInputError(f"vector must be base64 text or null; got {type(value).__name__}")
    dim = header.embedder["dim"]
    if len(value) != 4 * dim:
        raise InvalidInputError(
            f"vector has {len(value)} bytes; the header's embedder (dim {dim}) needs {4 * dim}"
        )
    import numpy as np

    if not np.isfinite(np.frombuffer(value, dtype="<f4")).all():
        raise InvalidInputError("vector holds NaN or infinity")
    return value


def check_message(fields: Any, header: Header, max_content_bytes: int) -> tuple[NewMessage, bytes | None]:
    """One line's fields as a checked message and its vector (InvalidInputError if not):
    the rules of ``add()``, ``msg_id`` and ``created_at`` required, no unknown key, and a
    ``vector`` only when the header says lines carry one."""
    if type(fields) is not dict:
        raise InvalidInputError(f"a message line must be a JSON object, not {type(fields).__name__}")
    missing = [k for k in REQUIRED if fields.get(k) is None]
    if missing:
        raise InvalidInputError(f"missing {', '.join(missing)} (an export line needs {', '.join(REQUIRED)})")
    allowed = set(REQUIRED) | (_OPTIONAL if header.vectors else _OPTIONAL - {"vector"})
    unknown = sorted(set(fields) - allowed)
    if unknown:
        extra = "" if header.vectors or "vector" not in unknown else " (the header says the file has no vectors)"
        raise InvalidInputError(f"unknown keys {unknown}{extra}")
    m = new_message(
        fields["role"], fields["content"], conversation_id=fields["conversation_id"],
        owner_id=fields["owner_id"], feature=fields.get("feature"), msg_id=fields["msg_id"],
        metadata=fields.get("metadata"), created_at=_created_at(fields["created_at"]),
        max_content_bytes=max_content_bytes,
    )
    return m, _vector(fields.get("vector"), header)


def _fingerprint(m: NewMessage) -> tuple[bytes, bytes]:
    """(16 bytes naming the msg_id, 8 bytes naming all its fields): what pass 1 keeps of a
    line to find a msg_id repeated inside the file, in 24 bytes whatever the message."""
    fields = _dumps([m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, m.created_us,
                     m.feature, m.metadata_json])
    return (hashlib.blake2b(m.msg_id.encode("utf-8"), digest_size=16).digest(),
            hashlib.blake2b(fields.encode("utf-8"), digest_size=8).digest())


class _Jsonl:
    """A JSONL export, read a line at a time (a line longer than any valid one is refused
    without being held whole)."""

    unit = "line"
    format = "jsonl"

    def __init__(self, path: str, max_content_bytes: int):
        self.path = path
        # A valid line holds at most: its content and metadata with every byte escaped
        # (\\u00XX: 6 bytes), plus ids, time and a vector of MAX_DIM floats in base64.
        self.limit = 6 * (max_content_bytes + MAX_METADATA_BYTES) + 4 * 6 * 3 * 255 + 16 * MAX_DIM // 3 + 4096
        self.size = os.path.getsize(path)

    @contextlib.contextmanager
    def open(self) -> Iterator[Any]:
        with open(self.path, "rb") as f:
            yield f

    def _lines(self, f: Any) -> Iterator[tuple[int, bytes | None, int]]:
        """(number, line or None if too long, bytes read), from line 1."""
        number = 0
        while line := f.readline(self.limit):
            number += 1
            size = len(line)
            if size == self.limit and not line.endswith(b"\n"):
                while (rest := f.readline(self.limit)) and not rest.endswith(b"\n"):
                    size += len(rest)
                yield number, None, size + len(rest)
            else:
                yield number, line, size

    def header(self) -> Header:
        with self.open() as f:
            first = next(self._lines(f), None)
        if first is None:
            raise InvalidInputError(f"{self.path}: line 1: the file is empty, not a localmem export")
        line = first[1]
        if line is None:
            raise InvalidInputError(f"{self.path}: line 1: not a localmem export (no header line)")
        try:
            return parse_header(line.decode("utf-8"))
        except UnicodeDecodeError:
            raise InvalidInputError(f"{self.path}: line 1: not a localmem export (not UTF-8 text)") from None
        except InvalidInputError as exc:
            raise InvalidInputError(f"{self.path}: line 1: {exc}") from None

    def records(self) -> Iterator[tuple[int, Any, int]]:
        """(line number, the line's JSON value or _Bad or None for a blank line, bytes read),
        the header line given as None."""
        with self.open() as f:
            for number, line, size in self._lines(f):
                if number == 1 or (line is not None and not line.strip()):
                    yield number, None, size
                elif line is None:
                    yield number, _Bad(f"the line is over {self.limit} bytes, longer than any valid message"), size
                else:
                    try:
                        yield number, _loads(line.decode("utf-8")), size
                    except UnicodeDecodeError as exc:
                        yield number, _Bad(f"not UTF-8 text (byte {exc.start})"), size
                    except (ValueError, RecursionError) as exc:  # JSONDecodeError, InvalidInputError
                        yield number, _Bad(f"not JSON: {exc}"), size


_PARQUET_TYPES = {
    **{name: "VARCHAR" for name in FIELDS}, "created_at": "TIMESTAMP WITH TIME ZONE", "vector": "BLOB",
}


class _Parquet:
    """A Parquet export, read a row group's worth at a time on one DuckDB thread (DuckDB's
    results are materialised whole: ranges of file_row_number keep memory bounded)."""

    unit = "row"
    format = "parquet"

    def __init__(self, path: str, max_content_bytes: int):
        if not os.path.isfile(path):
            raise FileNotFoundError(errno.ENOENT, "No such file", path)
        self.path = path
        self._duckdb = _duckdb()
        with self._connect() as conn:
            try:
                self.size = conn.execute("SELECT count(*) FROM read_parquet(?)", [path]).fetchone()[0]
                columns = {r[0]: r[1] for r in conn.execute("DESCRIBE SELECT * FROM read_parquet(?)", [path]).fetchall()}
                kv = conn.execute(
                    "SELECT value FROM parquet_kv_metadata(?) WHERE key = ?", [path, HEADER_KEY.encode()]
                ).fetchall()
            except self._duckdb.Error as exc:
                raise InvalidInputError(f"{path}: not a readable Parquet file ({exc})") from None
        self._columns = columns
        self._kv = kv

    @contextlib.contextmanager
    def _connect(self) -> Iterator[Any]:
        conn = self._duckdb.connect(":memory:")
        try:
            conn.execute("SET threads = 1")
            yield conn
        finally:
            conn.close()

    def header(self) -> Header:
        if len(self._kv) != 1:
            raise InvalidInputError(f"{self.path}: not a localmem export (no {HEADER_KEY} key in its Parquet metadata)")
        raw = self._kv[0][0]
        try:
            header = parse_header(raw.decode("utf-8") if isinstance(raw, bytes) else str(raw))
        except (InvalidInputError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"{self.path}: the {HEADER_KEY} metadata: {exc}") from None
        wanted = [*FIELDS, "vector"] if header.vectors else list(FIELDS)
        if sorted(self._columns) != sorted(wanted):
            raise InvalidInputError(f"{self.path}: the columns must be {', '.join(wanted)}; got {', '.join(self._columns)}")
        for name in wanted:
            if self._columns[name] != _PARQUET_TYPES[name]:
                raise InvalidInputError(
                    f"{self.path}: column {name} is {self._columns[name]}; it must be {_PARQUET_TYPES[name]}"
                )
        self._vectors = header.vectors
        return header

    def records(self) -> Iterator[tuple[int, Any, int]]:
        """(row number from 1, the row's fields or _Bad, 1)."""
        select = (
            "SELECT msg_id, conversation_id, owner_id, role, content, epoch_us(created_at), feature, metadata, "
            + ("vector" if self._vectors else "NULL") + " FROM read_parquet(?, file_row_number = true)"
            " WHERE file_row_number >= ? AND file_row_number < ? ORDER BY file_row_number"
        )
        with self._connect() as conn:
            for start in range(0, self.size, PARQUET_ROW_GROUP):
                try:
                    rows = conn.execute(select, [self.path, start, start + PARQUET_ROW_GROUP]).fetchall()
                except self._duckdb.Error as exc:
                    raise InvalidInputError(f"{self.path}: rows {start + 1} on cannot be read ({exc})") from None
                for offset, row in enumerate(rows):
                    yield start + offset + 1, self._fields(row), 1

    def _fields(self, row: Sequence[Any]) -> Any:
        fields = dict(zip(FIELDS, row[:8]))
        if self._vectors:
            fields["vector"] = row[8]
        for name in ("feature", "metadata", "vector"):
            if fields.get(name, 0) is None:
                del fields[name]
        created = fields.get("created_at")
        if created is not None:
            if not MIN_US <= created <= MAX_US:
                return _Bad("created_at is outside the years 1 to 9999 in UTC")
            fields["created_at"] = _EPOCH + timedelta(microseconds=created)
        if "metadata" in fields:
            try:
                fields["metadata"] = _loads(fields["metadata"])
            except (ValueError, RecursionError) as exc:
                return _Bad(f"metadata is not JSON: {exc}")
        return fields


def _reader(path: str, max_content_bytes: int) -> _Jsonl | _Parquet:
    """The file's reader: Parquet if it starts with Parquet's magic bytes, else JSONL."""
    with open(path, "rb") as f:
        magic = f.read(4)
    return (_Parquet if magic == b"PAR1" else _Jsonl)(path, max_content_bytes)


class _Findings:
    """Pass 1's results: a state per line (one byte), and per good line 24 bytes to find a
    msg_id repeated inside the file once every line is read."""

    def __init__(self) -> None:
        self.states = bytearray(1)  # index: line number (0 unused)
        self.bad: list[BadLine] = []
        self.lines = 0
        self._ids = bytearray()
        self._prints = bytearray()
        self._numbers = array("q")

    def mark(self, number: int, state: int) -> None:
        if number >= len(self.states):
            self.states.extend(bytes(number + 1 - len(self.states)))
        self.states[number] = state

    def refuse(self, number: int, error: str) -> None:
        self.mark(number, _BAD)
        self.bad.append(BadLine(number, error))

    def good(self, number: int, m: NewMessage, stored: bool | None) -> None:
        if stored is False:
            self.refuse(number, f"msg_id {m.msg_id!r} is stored already with different fields; a msg_id names one message")
            return
        self.mark(number, _STORED if stored else _NEW)
        name, fields = _fingerprint(m)
        self._ids += name
        self._prints += fields
        self._numbers.append(number)

    def find_repeats(self) -> None:
        """Mark a msg_id's later lines: the same fields as its first line (a repeat:
        unchanged) or different ones (refused)."""
        import numpy as np

        count = len(self._numbers)
        if count < 2:
            return
        ids = np.frombuffer(bytes(self._ids), dtype="<u8").reshape(count, 2)
        prints = np.frombuffer(bytes(self._prints), dtype="<u8")
        numbers = np.frombuffer(self._numbers, dtype=np.int64)
        order = np.lexsort((numbers, ids[:, 1], ids[:, 0]))
        ids, prints, numbers = ids[order], prints[order], numbers[order]
        first = np.ones(count, dtype=bool)
        first[1:] = (ids[1:] != ids[:-1]).any(axis=1)
        group = np.maximum.accumulate(np.where(first, np.arange(count), 0))
        for i in np.flatnonzero(~first):
            number, earlier = int(numbers[i]), int(numbers[group[i]])
            if prints[i] == prints[group[i]]:
                self.mark(number, _REPEAT)
            else:
                self.refuse(number, f"its msg_id is on line {earlier} already, with different fields; a msg_id names one message")


def _vector_plan(header: Header, recorded: dict[str, Any] | None, wanted: dict[str, Any]) -> str | None:
    """Why the file's vectors cannot be used here (None: they can): the database's vectors
    come from another model, or (none recorded yet) this Memory is set to embed with
    another one. ``wanted``: the name (and dim) of the embedder the Memory was given."""
    file = header.embedder
    assert file is not None
    if recorded is not None:
        if same_model(recorded, file):
            return None
        return (f"the file's vectors come from {describe_model(file)}, this database's from "
                f"{describe_model(recorded)}: its messages wait to be embedded")
    name, dim = wanted.get("name"), wanted.get("dim")
    if name is not None and (name != file["name"] or (type(dim) is int and dim != file["dim"])):
        return (f"the file's vectors come from {describe_model(file)}; this Memory embeds with {name!r}: "
                "its messages wait to be embedded")
    return None


def _too_many(path: str, unit: str, findings: _Findings) -> InvalidInputError:
    bad = findings.bad
    listed = "\n".join(f"{unit} {b.line}: {b.error}" for b in bad[:SHOWN_ERRORS])
    more = f"\n... and {len(bad) - SHOWN_ERRORS} more" if len(bad) > SHOWN_ERRORS else ""
    return InvalidInputError(
        f"{path}: {len(bad)} of {findings.lines} {unit}s are invalid; nothing was imported "
        f"(skip_invalid=True imports the others):\n{listed}{more}"
    )


def import_(
    store: Backend, path: Any, *, max_content_bytes: int, wanted: dict[str, Any], skip_invalid: Any = False,
    progress: Any = None, committed: Callable[[list[NewMessage], int], Any] | None = None,
) -> ImportReport:
    """Read an export into ``store`` (see ``Memory.import_``); ``committed(chunk, new)`` is
    told of each chunk once it is committed."""
    started = time.perf_counter()
    source = _path(path)
    skip_invalid = check_flag(skip_invalid, "skip_invalid")
    callback: ProgressCallback | None = check_callback(progress)
    reader = _reader(source, max_content_bytes)
    header = reader.header()
    reporter = Reporter(callback, "import", reader.size, unit="bytes" if reader.unit == "line" else "rows",
                        stage="validate")
    findings = _check_file(store, reader, header, max_content_bytes, reporter)
    if findings.bad and not skip_invalid:
        raise _too_many(source, reader.unit, findings)
    with_vectors = header.vectors and header.embedder is not None
    skipped = _vector_plan(header, store.embedder_identity(), wanted) if with_vectors else None
    identity = header.embedder if with_vectors and skipped is None else None
    todo = findings.states.count(_NEW)
    reporter.stage("write", todo, unit="messages")
    imported = vectors = 0
    chunk: list[NewMessage] = []
    chunk_vectors: dict[str, bytes] = {}

    if identity is not None and todo and store.embedder_identity() is None:
        # The file's model becomes the database's before the first message is written: the
        # background worker, told of the first chunk, must not embed with another one.
        store.bind_embedder(identity)

    def write() -> None:
        nonlocal imported, vectors
        new, written = store.import_chunk(chunk, chunk_vectors, identity)
        imported += new
        vectors += written
        if committed is not None:
            committed(chunk, new)
        reporter.advance(len(chunk))
        chunk.clear()
        chunk_vectors.clear()

    states = findings.states
    for number, fields, _ in reader.records():
        if number >= len(states) or states[number] != _NEW:
            continue
        try:
            if isinstance(fields, _Bad):
                raise InvalidInputError(fields.error)
            m, vector = check_message(fields, header, max_content_bytes)
        except InvalidInputError as exc:
            raise InvalidInputError(
                f"{source} changed while it was imported ({reader.unit} {number}: {exc}); "
                f"{imported} messages were imported before it: import the file again to finish"
            ) from None
        chunk.append(m)
        if vector is not None and identity is not None:
            chunk_vectors[m.msg_id] = vector
        if len(chunk) == CHUNK:
            write()
    if chunk:
        write()
    reporter.finish()
    return ImportReport(
        path=source, format=reader.format, lines=findings.lines, imported=imported,
        unchanged=findings.lines - len(findings.bad) - imported, invalid=tuple(findings.bad),
        vectors=vectors, vectors_skipped=skipped, seconds=time.perf_counter() - started,
    )


def _check_file(store: Backend, reader: _Jsonl | _Parquet, header: Header, max_content_bytes: int,
                reporter: Reporter) -> _Findings:
    """Pass 1: every line checked, against the database too (a msg_id stored with other
    fields), a thousand lines at a time; then msg_ids repeated inside the file."""
    findings = _Findings()
    batch: list[tuple[int, NewMessage]] = []

    def look_up() -> None:
        for (number, m), stored in zip(batch, store.stored_as([m for _, m in batch])):
            findings.good(number, m, stored)
        batch.clear()

    for number, fields, size in reader.records():
        reporter.advance(size)
        if fields is None:
            findings.mark(number, _SKIP)
            continue
        findings.lines += 1
        if isinstance(fields, _Bad):
            findings.refuse(number, fields.error)
            continue
        try:
            m, _ = check_message(fields, header, max_content_bytes)
        except InvalidInputError as exc:
            findings.refuse(number, str(exc))
            continue
        batch.append((number, m))
        if len(batch) == CHUNK:
            look_up()
    if batch:
        look_up()
    findings.find_repeats()
    findings.bad.sort(key=lambda b: b.line)  # (a look-up or a repeat is found after later lines)
    return findings
