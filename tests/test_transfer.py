"""Export and import (localmem/transfer.py): the file format, round trips, validation."""

from __future__ import annotations

import base64
import json
import os
import re
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hash_embedder import HashEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localmem import (
    BadLine,
    ExportReport,
    ImportReport,
    InvalidInputError,
    Memory,
    ReadOnlyError,
    SummaryPolicy,
)
from localmem import transfer as transfer_module
from localmem.store import Store

UTC = timezone.utc
KEYS = ["msg_id", "conversation_id", "owner_id", "role", "content", "created_at", "feature", "metadata"]


class ZeroEmbedder(HashEmbedder):
    """HashEmbedder, but the text "∅" gets the zero vector (a vector with no direction)."""

    def _vector(self, text):
        return np.zeros(self.dim, dtype=np.float32) if text == "∅" else super()._vector(text)


SAMPLES = [
    {"role": "user", "content": 'say "hi" \\ to\nthe {json} crowd\ttab\r\u2028end', "conversation_id": "c1",
     "owner_id": "u1", "msg_id": "m-1", "created_at": datetime(2024, 5, 1, 9, 30, tzinfo=UTC),
     "metadata": {"channel": "web", "n": [1, 2.5, None, True, -0.0, 1e16], "deep": {"a.b": "ç"}, "big": 10**30}},
    {"role": "assistant", "content": "Olá! 😀 coração — ünïcödé 漢字", "conversation_id": "c1", "owner_id": "u1",
     "feature": "chat", "msg_id": "m-2", "created_at": datetime(2024, 5, 1, 9, 31, 0, 123456, tzinfo=UTC)},
    # Backdated, given in another zone: stored (and exported) in UTC.
    {"role": "system", "content": "an old note", "conversation_id": "c1", "owner_id": "u1", "msg_id": "m-3",
     "created_at": datetime(1999, 12, 31, 21, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3)))},
    {"role": "user", "content": "another owner's words", "conversation_id": "c9", "owner_id": "u2", "msg_id": "m-4",
     "created_at": datetime(2024, 6, 1, tzinfo=UTC)},
    {"role": "user", "content": "a second conversation, an id made here", "conversation_id": "c2", "owner_id": "u1"},
    {"role": "user", "content": "the first year", "conversation_id": "c2", "owner_id": "u1", "msg_id": "m-6",
     "created_at": datetime(1, 1, 1, tzinfo=UTC)},
    {"role": "assistant", "content": "∅", "conversation_id": "c2", "owner_id": "u1", "msg_id": "m-7",
     "created_at": datetime(2024, 5, 2, tzinfo=UTC)},
]


def memory(path, **options) -> Memory:
    options.setdefault("embedder", ZeroEmbedder())
    options.setdefault("embed", "off")
    options.setdefault("strategy_log", False)
    return Memory(path, **options)


@pytest.fixture
def source(tmp_path):
    """A Memory holding SAMPLES, every one embedded."""
    with memory(tmp_path / "source.db", embed="sync") as mem:
        mem.add_many(SAMPLES)
        yield mem


def lines(path) -> list[dict]:
    with open(path, "rb") as f:
        return [json.loads(line) for line in f]


def write_lines(path, values) -> None:
    text = "".join((v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)) + "\n" for v in values)
    Path(path).write_bytes(text.encode())


def file_state(mem: Memory) -> tuple:
    """The database's bytes (file and WAL): what "changes nothing" is checked against."""
    files = [Path(mem.path + suffix) for suffix in ("", "-wal")]
    return tuple(f.read_bytes() if f.exists() else None for f in files)


# -- round trips -----------------------------------------------------------------------


@pytest.mark.parametrize("vectors", [False, True])
def test_export_import_export_is_byte_identical(source, tmp_path, vectors):
    first = tmp_path / "first.jsonl"
    report = source.export(first, vectors=vectors)
    assert report == ExportReport(str(first), len(SAMPLES), len(SAMPLES) if vectors else 0, "jsonl", report.seconds)
    embedder = ZeroEmbedder()
    with memory(tmp_path / "copy.db", embedder=embedder, embed="sync") as copy:
        got = copy.import_(first)
        assert got == ImportReport(str(first), "jsonl", len(SAMPLES), len(SAMPLES), 0, (),
                                   6 if vectors else 0, None, got.seconds)  # (the zero vector is not indexed)
        again = tmp_path / "again.jsonl"
        copy.export(again, vectors=vectors)
        assert again.read_bytes() == first.read_bytes()
        for m in lines(first)[1:]:
            assert copy.get(m["msg_id"]) == source.get(m["msg_id"])
        stats = copy.stats()
        assert stats["messages"] == len(SAMPLES) and stats["pending_vectors"] == 0
        # With the file's vectors nothing was embedded; without, every message was.
        assert embedder.calls == (0 if vectors else len(SAMPLES))
        assert copy.check_integrity() == "ok"


def test_the_file_reads_as_documented(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path, vectors=True)
    raw = path.read_bytes()
    assert raw.endswith(b"\n") and b"\r\n" not in raw.replace(b"\\r", b"")
    header, *messages = lines(path)
    assert raw.split(b"\n")[0] == (
        b'{"localmem_export":1,"embedder":{"dim":64,"name":"test-hash-embedder","sha256":null},"vectors":true}'
    )
    assert header == {"localmem_export": 1, "embedder": source.stats()["embedder"], "vectors": True}
    assert [m["msg_id"] for m in messages][:4] == ["m-1", "m-2", "m-3", "m-4"]  # insertion order
    for m in messages:
        assert list(m) == [*KEYS, "vector"]
    first, _, old, *_ = messages
    assert first["created_at"] == "2024-05-01T09:30:00.000000+00:00"
    assert old["created_at"] == "2000-01-01T00:00:00.000001+00:00"
    assert first["metadata"] == SAMPLES[0]["metadata"] and first["feature"] is None
    assert messages[1]["feature"] == "chat" and messages[1]["metadata"] is None
    vector = np.frombuffer(base64.b64decode(first["vector"]), dtype="<f4")
    assert np.array_equal(vector, HashEmbedder()._vector(SAMPLES[0]["content"]))
    assert not np.frombuffer(base64.b64decode(messages[-1]["vector"]), dtype="<f4").any()  # "∅"
    # Unicode as itself, not \u escapes; one line per message however many newlines it holds.
    assert "Olá! 😀".encode() in raw and len(raw.split(b"\n")) == len(SAMPLES) + 2


def test_without_vectors_the_header_names_no_embedder(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path)
    header, *messages = lines(path)
    assert header == {"localmem_export": 1, "embedder": None, "vectors": False}
    assert all(list(m) == KEYS for m in messages)


def test_a_message_waiting_for_its_vector_is_exported_with_null_and_stays_waiting(tmp_path):
    with memory(tmp_path / "a.db", embed="sync") as a:
        a.add("user", "embedded", conversation_id="c", owner_id="u", msg_id="e")
    with memory(tmp_path / "a.db", embed="off") as a:
        a.add("user", "not yet", conversation_id="c", owner_id="u", msg_id="w")
        a.export(tmp_path / "a.jsonl", vectors=True)
    assert [m["vector"] is None for m in lines(tmp_path / "a.jsonl")[1:]] == [False, True]
    with memory(tmp_path / "b.db") as b:
        report = b.import_(tmp_path / "a.jsonl")
        assert (report.imported, report.vectors) == (2, 1)
        assert b.stats()["pending_vectors"] == 1


_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1).filter(
    lambda t: t.strip())
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,10}", fullmatch=True), inner, max_size=3),
    max_leaves=4,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.fixed_dictionaries({
            "role": st.sampled_from(["user", "assistant", "system"]),
            "content": _TEXT,
            "conversation_id": _TEXT.filter(lambda t: len(t) <= 255),
            "owner_id": st.sampled_from(["u1", "ü 2"]),
            "feature": st.none() | _TEXT.filter(lambda t: len(t) <= 255),
            "metadata": st.none() | st.dictionaries(st.from_regex(r"[a-z_]{1,8}", fullmatch=True), _JSON, max_size=3),
            "created_at": st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                                       timezones=st.just(UTC)),
        }),
        min_size=1, max_size=8,
    )
)
def test_round_trip_of_any_text(items):
    with tempfile.TemporaryDirectory() as folder:
        first, again = os.path.join(folder, "first.jsonl"), os.path.join(folder, "again.jsonl")
        with memory(":memory:", hot_window=0, query_cache_ttl=0, summaries=None) as a:
            a.add_many(items)
            a.export(first)
            stored = [a.get(m["msg_id"]) for m in lines(first)[1:]]
        with memory(":memory:", hot_window=0, query_cache_ttl=0, summaries=None) as b:
            assert b.import_(first).imported == len(items)
            b.export(again)
            assert [b.get(m.msg_id) for m in stored] == stored
        assert Path(first).read_bytes() == Path(again).read_bytes()


def test_parquet_round_trip(source, tmp_path):
    import duckdb

    path = tmp_path / "out.parquet"
    report = source.export(path, vectors=True)  # Parquet, from the name
    assert (report.format, report.messages, report.vectors) == ("parquet", len(SAMPLES), len(SAMPLES))
    conn = duckdb.connect()
    kv = conn.execute("SELECT key, value FROM parquet_kv_metadata(?)", [str(path)]).fetchall()
    assert [(k, json.loads(v)) for k, v in kv] == [
        (b"localmem_export", {"localmem_export": 1, "embedder": source.stats()["embedder"], "vectors": True})]
    columns = [r[0] for r in conn.execute("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)]).fetchall()]
    assert columns == [*KEYS, "vector"]
    assert conn.execute("SELECT column_type FROM (DESCRIBE SELECT created_at FROM read_parquet(?))",
                        [str(path)]).fetchone()[0] == "TIMESTAMP WITH TIME ZONE"
    source.export(tmp_path / "want.jsonl", vectors=True)
    with memory(tmp_path / "copy.db") as copy:
        got = copy.import_(path)
        assert (got.format, got.lines, got.imported, got.vectors) == ("parquet", len(SAMPLES), len(SAMPLES), 6)
        copy.export(tmp_path / "got.jsonl", vectors=True)
        assert copy.import_(path).unchanged == len(SAMPLES)
    assert (tmp_path / "got.jsonl").read_bytes() == (tmp_path / "want.jsonl").read_bytes()


def test_parquet_bad_rows_are_named_by_row(tmp_path):
    import duckdb

    path = tmp_path / "hand.parquet"
    header = json.dumps({"localmem_export": 1, "embedder": None, "vectors": False}).replace("'", "''")
    duckdb.connect().execute(
        "COPY (SELECT * FROM (VALUES ('a', 'c', 'u', 'user', 'fine', TIMESTAMPTZ '2024-01-01 00:00:00+00', NULL::VARCHAR, NULL::VARCHAR),"
        " ('b', 'c', 'u', 'robot', 'bad role', TIMESTAMPTZ '2024-01-01 00:00:00+00', NULL, '{\"k\": 1}'))"
        " t(msg_id, conversation_id, owner_id, role, content, created_at, feature, metadata))"
        f" TO '{path}' (FORMAT parquet, KV_METADATA {{localmem_export: '{header}'}})"
    )
    with memory(tmp_path / "m.db") as mem:
        with pytest.raises(InvalidInputError, match=r"row 2: role must be one of"):
            mem.import_(path)
        report = mem.import_(path, skip_invalid=True)
        assert report.imported == 1 and [b.line for b in report.invalid] == [2]


# -- idempotence -----------------------------------------------------------------------


def test_importing_again_changes_nothing(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path, vectors=True)
    with memory(tmp_path / "copy.db") as copy:
        copy.import_(path)
        before, stats = file_state(copy), copy.stats()
        report = copy.import_(path)
        assert (report.imported, report.unchanged, report.vectors, report.invalid) == (0, len(SAMPLES), 0, ())
        assert file_state(copy) == before and copy.stats() == stats
    before = file_state(source)
    assert source.import_(path).unchanged == len(SAMPLES)  # into the file it came from
    assert file_state(source) == before


def test_a_line_repeated_in_the_file_is_stored_once(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path)
    header, *messages = lines(path)
    write_lines(path, [header, *messages, messages[0], messages[2]])
    with memory(tmp_path / "copy.db") as copy:
        report = copy.import_(path)
        assert (report.lines, report.imported, report.unchanged) == (len(SAMPLES) + 2, len(SAMPLES), 2)


def test_an_interrupted_import_is_finished_by_importing_again(tmp_path, monkeypatch):
    with memory(tmp_path / "a.db") as a:
        a.add_many([{"role": "user", "content": f"message {i}", "msg_id": f"m{i}"} for i in range(2500)],
                   conversation_id="c", owner_id="u")
        a.export(tmp_path / "a.jsonl")
    calls = []
    real = Store.import_chunk

    def crash_on_second(self, *args):
        calls.append(1)
        if len(calls) == 2:
            raise OSError("power cut")
        return real(self, *args)

    with memory(tmp_path / "b.db") as b:
        monkeypatch.setattr(Store, "import_chunk", crash_on_second)
        with pytest.raises(OSError, match="power cut"):
            b.import_(tmp_path / "a.jsonl")
        assert b.stats()["messages"] == 1000  # the first chunk stays committed
        monkeypatch.setattr(Store, "import_chunk", real)
        report = b.import_(tmp_path / "a.jsonl")
        assert (report.imported, report.unchanged) == (1500, 1000)
        b.export(tmp_path / "b.jsonl")
    assert (tmp_path / "b.jsonl").read_bytes() == (tmp_path / "a.jsonl").read_bytes()


# -- bad lines -------------------------------------------------------------------------


GOOD = {"msg_id": "g", "conversation_id": "c", "owner_id": "u", "role": "user", "content": "fine",
        "created_at": "2024-05-01T09:30:00.000000+00:00", "feature": None, "metadata": None}
HEADER = {"localmem_export": 1, "embedder": {"dim": 4, "name": "tiny-model", "sha256": None}, "vectors": True}


def vec(*values) -> str:
    return base64.b64encode(np.array(values, dtype="<f4").tobytes()).decode()


BAD_LINES = [
    ("not JSON", '{"msg_id": "x", ', "not JSON"),
    ("a list", '["msg_id"]', "must be a JSON object"),
    ("wrong role", {**GOOD, "role": "bot"}, "role must be one of user, assistant, system"),
    ("naive time", {**GOOD, "created_at": "2024-05-01T09:30:00"}, "naive datetime"),
    ("no such day", {**GOOD, "created_at": "2024-13-01T00:00:00+00:00"}, "is not an ISO 8601 time"),
    ("time as a number", {**GOOD, "created_at": 1714555800}, "must be an ISO 8601 time string"),
    ("too long", {**GOOD, "content": "x" * 101}, "content is 101 bytes of UTF-8; the limit is 100"),
    ("blank content", {**GOOD, "content": "  "}, "content must not be empty"),
    ("no msg_id", {k: v for k, v in GOOD.items() if k != "msg_id"}, "missing msg_id"),
    ("null created_at", {**GOOD, "created_at": None}, "missing created_at"),
    ("unknown key", {**GOOD, "colour": "red"}, "unknown keys ['colour']"),
    ("bad metadata key", {**GOOD, "metadata": {"a b": 1}}, "metadata key 'a b'"),
    ("metadata not an object", {**GOOD, "metadata": "{}"}, "metadata must be a dict"),
    ("a key twice", '{"msg_id":"g","msg_id":"h"}', "appears twice"),
    ("NaN", '{"msg_id":"g","n":NaN}', "NaN is not JSON"),
    ("short vector", {**GOOD, "vector": vec(1, 2, 3)}, "vector has 12 bytes; the header's embedder (dim 4) needs 16"),
    ("infinite vector", {**GOOD, "vector": vec(1, 2, 3, float("inf"))}, "vector holds NaN or infinity"),
    ("vector not base64", {**GOOD, "vector": "!!!"}, "vector is not base64"),
    ("lone surrogate", json.dumps({**GOOD, "content": "a\ud800b"}), "lone surrogate"),
]


@pytest.mark.parametrize("line, error", [pytest.param(line, error, id=name) for name, line, error in BAD_LINES])
def test_a_bad_line_is_reported_by_number_and_nothing_is_imported(tmp_path, line, error):
    path = tmp_path / "in.jsonl"
    ok = [{**GOOD, "msg_id": f"ok{i}", "vector": vec(1, 0, 0, i)} for i in range(3)]
    write_lines(path, [HEADER, ok[0], ok[1], line, ok[2]])
    with memory(tmp_path / "m.db", max_content_bytes=100, embedder=None) as mem:
        before = file_state(mem)
        with pytest.raises(InvalidInputError) as exc:
            mem.import_(path, skip_invalid=False)
        assert re.search(f"^line 4: .*{re.escape(error)}", str(exc.value), re.MULTILINE)
        assert "1 of 4 lines are invalid; nothing was imported" in str(exc.value)
        assert mem.stats()["messages"] == 0 and file_state(mem) == before
        report = mem.import_(path, skip_invalid=True)
        assert report.imported == 3 and report.vectors == 3
        assert len(report.invalid) == 1 and report.invalid[0].line == 4 and error in report.invalid[0].error


def test_invalid_utf8_is_a_bad_line(tmp_path):
    path = tmp_path / "in.jsonl"
    path.write_bytes(json.dumps(HEADER).encode() + b"\n" + json.dumps(GOOD).encode()[:-2] + b'\xff"}\n')
    with memory(tmp_path / "m.db") as mem, pytest.raises(InvalidInputError, match=r"line 2: not UTF-8 text"):
        mem.import_(path)


def test_a_msg_id_twice_with_different_fields(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, [HEADER, GOOD, {**GOOD, "msg_id": "other"}, {**GOOD, "content": "changed"}])
    with memory(tmp_path / "m.db") as mem:
        with pytest.raises(InvalidInputError, match=r"line 4: its msg_id is on line 2 already, with different fields"):
            mem.import_(path)
        assert mem.stats()["messages"] == 0
        report = mem.import_(path, skip_invalid=True)
        assert report.imported == 2 and report.invalid == (BadLine(4, report.invalid[0].error),)
        assert mem.get("g").content == "fine"


def test_a_msg_id_stored_with_different_fields(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, [HEADER, {**GOOD, "msg_id": "new"}, GOOD])
    with memory(tmp_path / "m.db") as mem:
        mem.add("user", "the stored one", conversation_id="c", owner_id="u", msg_id="g")
        with pytest.raises(InvalidInputError, match=r"line 3: msg_id 'g' is stored already with different fields"):
            mem.import_(path)
        assert mem.get("new") is None


def test_blank_lines_are_skipped_but_counted(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, [HEADER, "", GOOD, "   ", {**GOOD, "role": "bot"}])
    with memory(tmp_path / "m.db") as mem, pytest.raises(InvalidInputError, match=r"line 5: role"):
        mem.import_(path)


def test_the_error_lists_the_first_ten_bad_lines(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, [HEADER, *[{**GOOD, "msg_id": f"m{i}", "role": "bot"} for i in range(15)], GOOD])
    with memory(tmp_path / "m.db") as mem, pytest.raises(InvalidInputError) as exc:
        mem.import_(path)
    text = str(exc.value)
    assert "15 of 16 lines are invalid" in text and "line 11: role" in text and "line 12:" not in text
    assert text.endswith("... and 5 more")


@pytest.mark.parametrize("first, error", [
    (None, "line 1: the file is empty"),
    ("hello", "line 1: not a localmem export: the header is not JSON"),
    (GOOD, "no {\"localmem_export\": ...} header"),
    ({**HEADER, "localmem_export": 2}, "export format 2, newer than this localmem reads (1)"),
    ({**HEADER, "localmem_export": "1"}, "must be a format number"),
    ({k: v for k, v in HEADER.items() if k != "vectors"}, "exactly the keys localmem_export, embedder, vectors"),
    ({**HEADER, "vectors": 1}, "vectors must be true or false"),
    ({**HEADER, "embedder": {"name": "x", "dim": 0, "sha256": None}}, "dim must be an int from 1"),
    ({**HEADER, "embedder": {"name": "x", "dim": 4}}, "embedder must be null or {name, dim, sha256}"),
])
def test_a_bad_header_refuses_the_file_even_with_skip_invalid(tmp_path, first, error):
    path = tmp_path / "in.jsonl"
    write_lines(path, [] if first is None else [first, GOOD])
    with memory(tmp_path / "m.db") as mem:
        with pytest.raises(InvalidInputError) as exc:
            mem.import_(path, skip_invalid=True)
        assert error in str(exc.value)
        assert mem.stats()["messages"] == 0


def test_a_vector_needs_a_header_that_says_so(tmp_path):
    path = tmp_path / "in.jsonl"
    write_lines(path, [{**HEADER, "vectors": False}, {**GOOD, "vector": vec(1, 2, 3, 4)}])
    with memory(tmp_path / "m.db") as mem, pytest.raises(
            InvalidInputError, match=r"line 2: unknown keys \['vector'\] \(the header says"):
        mem.import_(path)
    write_lines(path, [{**HEADER, "embedder": None}, {**GOOD, "vector": vec(1, 2, 3, 4)}])
    with memory(tmp_path / "m.db") as mem, pytest.raises(
            InvalidInputError, match=r"line 2: the line has a vector but the header names no embedder"):
        mem.import_(path)


# -- vectors ---------------------------------------------------------------------------


def test_imported_vectors_serve_semantic_search_without_embedding(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path, vectors=True)
    embedder = ZeroEmbedder()
    with memory(tmp_path / "copy.db", embedder=embedder, embed="background") as copy:
        report = copy.import_(path)
        assert report.vectors == 6 and report.vectors_skipped is None
        assert copy.stats()["pending_vectors"] == 0 and copy.stats()["embedder"] == source.stats()["embedder"]
        assert embedder.calls == 0
        copy.export(tmp_path / "copy.jsonl", vectors=True)
        assert [m.get("vector") for m in lines(tmp_path / "copy.jsonl")] == [m.get("vector") for m in lines(path)]
        result = copy.get_memory("semantic_search", conversation_id="c1", owner_id="u1",
                                 query="Olá coração", keyword=False, min_relevance=None)
        assert result.messages[0].msg_id == "m-2"
        assert embedder.calls == 1  # the query alone


@pytest.mark.parametrize("embedder", [HashEmbedder(name="another-model"), HashEmbedder(dim=32)],
                         ids=["another name", "another dim"])
def test_vectors_of_another_model_are_left_for_the_embedder(source, tmp_path, embedder):
    path = tmp_path / "out.jsonl"
    source.export(path, vectors=True)
    with memory(tmp_path / "copy.db", embedder=embedder) as copy:
        report = copy.import_(path)
        assert (report.imported, report.vectors) == (len(SAMPLES), 0)
        assert "its messages wait to be embedded" in report.vectors_skipped
        assert copy.stats()["pending_vectors"] == len(SAMPLES) and copy.stats()["embedder"] is None


def test_vectors_of_another_model_than_the_databases_are_left_too(source, tmp_path):
    path = tmp_path / "out.jsonl"
    source.export(path, vectors=True)
    other = HashEmbedder(name="another-model")
    with memory(tmp_path / "copy.db", embedder=other, embed="sync") as copy:
        copy.add("user", "embedded by another model", conversation_id="c", owner_id="u")
    with memory(tmp_path / "copy.db", embedder=None) as copy:  # the recorded model, unset here
        report = copy.import_(path)
        assert report.vectors == 0 and "this database's from 'another-model'" in report.vectors_skipped
        assert copy.stats()["pending_vectors"] == len(SAMPLES)


# -- selection -------------------------------------------------------------------------


@pytest.mark.parametrize("selection, expected", [
    ({}, ["m-1", "m-2", "m-3", "m-4", None, "m-6", "m-7"]),
    ({"owner_id": "u2"}, ["m-4"]),
    ({"owner_id": "u1", "conversation_id": "c1"}, ["m-1", "m-2", "m-3"]),
    ({"before": datetime(2024, 5, 1, 9, 31, tzinfo=UTC)}, ["m-1", "m-3", "m-6"]),
    ({"owner_id": "u1", "before": datetime(2024, 5, 1, 6, 31, tzinfo=timezone(timedelta(hours=-3)))},
     ["m-1", "m-3", "m-6"]),
])
def test_export_a_selection(source, tmp_path, selection, expected):
    path = tmp_path / "out.jsonl"
    report = source.export(path, **selection)
    found = [m["msg_id"] for m in lines(path)[1:]]
    assert report.messages == len(found) == len(expected)
    assert [f if e is not None else None for f, e in zip(found, expected)] == expected


@pytest.mark.parametrize("arguments, error", [
    ({"conversation_id": "c1"}, "conversation_id needs owner_id"),
    ({"before": datetime(2024, 1, 1)}, "before is a naive datetime"),
    ({"before": "2024-01-01"}, "before must be a datetime"),
    ({"owner_id": ""}, "owner_id must not be empty"),
    ({"vectors": "yes"}, "vectors must be True or False"),
    ({"format": "csv"}, "format must be one of jsonl, parquet"),
    ({"progress": "bar"}, "progress must be a callable"),
])
def test_export_arguments_are_checked(source, tmp_path, arguments, error):
    with pytest.raises(InvalidInputError, match=error.replace("(", r"\(")):
        source.export(tmp_path / "out.jsonl", **arguments)
    assert not any(name.startswith(("out", ".out")) for name in os.listdir(tmp_path))


# -- the file written ------------------------------------------------------------------


def test_export_never_replaces_a_file_unless_asked(source, tmp_path):
    path = tmp_path / "out.jsonl"
    path.write_text("mine")
    with pytest.raises(InvalidInputError, match="exists; pass overwrite=True"):
        source.export(path)
    assert path.read_text() == "mine"
    source.export(path, overwrite=True)
    assert lines(path)[0]["localmem_export"] == 1
    with pytest.raises(InvalidInputError, match="the database's own file"):
        source.export(source.path, overwrite=True)
    with pytest.raises(InvalidInputError, match="is a folder"):
        source.export(tmp_path, overwrite=True)
    assert [n for n in os.listdir(tmp_path) if not n.startswith("source.db")] == ["out.jsonl"]


@pytest.mark.parametrize("name", ["out.jsonl", "out.parquet"])
def test_a_failed_export_leaves_no_file(source, tmp_path, monkeypatch, name):
    monkeypatch.setattr(transfer_module, "CHUNK", 2)

    def stop(p):
        if p.done >= 4:
            raise KeyboardInterrupt

    monkeypatch.setattr("localmem.progress.EVERY", 0.0)
    with pytest.raises(KeyboardInterrupt):
        source.export(tmp_path / name, progress=stop)
    assert not any(n.startswith(("out", ".out")) for n in os.listdir(tmp_path))


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
def test_the_export_is_readable_by_its_owner_only(source, tmp_path):
    for name in ("out.jsonl", "out.parquet"):
        source.export(tmp_path / name)
        assert os.stat(tmp_path / name).st_mode & 0o777 == 0o600


# -- progress, read-only, summaries ----------------------------------------------------


def test_progress_reports_start_and_finish(source, tmp_path, monkeypatch):
    monkeypatch.setattr("localmem.progress.EVERY", 3600.0)  # the first and last reports only
    seen = []
    source.export(tmp_path / "out.jsonl", progress=seen.append)
    assert (seen[0].task, seen[0].done, seen[0].total, seen[0].finished) == ("export", 0, len(SAMPLES), False)
    assert (seen[-1].done, seen[-1].finished) == (len(SAMPLES), True)
    seen.clear()
    with memory(tmp_path / "copy.db") as copy:
        copy.import_(tmp_path / "out.jsonl", progress=seen.append)
    stages = [(p.stage, p.unit) for p in seen]
    assert sorted(set(stages), key=stages.index) == [("validate", "bytes"), ("write", "messages")]
    assert seen[0].total == os.path.getsize(tmp_path / "out.jsonl")
    # the validate stage ends with its last count (held back by EVERY) before write starts
    assert [p.done for p in seen if p.stage == "validate"][-1] == seen[0].total
    assert (seen[-1].stage, seen[-1].done, seen[-1].total, seen[-1].finished) == ("write", len(SAMPLES), len(SAMPLES), True)


def test_import_needs_a_writable_memory(source, tmp_path):
    source.export(tmp_path / "out.jsonl")
    with memory(tmp_path / "copy.db") as copy:
        copy.read_only = True  # (what Memory(read_only=True) sets)
        with pytest.raises(ReadOnlyError, match="cannot import"):
            copy.import_(tmp_path / "out.jsonl")
        assert copy.stats()["messages"] == 0


def test_import_tells_the_summary_worker(tmp_path):
    with memory(tmp_path / "a.db") as a:
        a.add_many([{"role": "user", "content": f"we talked about topic number {i} at length"} for i in range(40)],
                   conversation_id="c", owner_id="u")
        a.export(tmp_path / "a.jsonl")
    policy = SummaryPolicy(window_tokens=20, fold_tokens=20)
    with memory(tmp_path / "b.db", summaries=policy) as b:
        b.import_(tmp_path / "a.jsonl")
        b.flush()  # folds the conversations this Memory wrote to
        summary = b.get_conversation_summary(conversation_id="c", owner_id="u")
        assert summary is not None and summary.folded > 0


def test_a_missing_file(tmp_path):
    with memory(tmp_path / "m.db") as mem, pytest.raises(FileNotFoundError):
        mem.import_(tmp_path / "nothing.jsonl")


# -- command line ----------------------------------------------------------------------


def test_cli_export_and_import(source, tmp_path, run):
    source.close()
    path = tmp_path / "out.jsonl"
    code, out, err = run("--db", str(tmp_path / "source.db"), "export", str(path), "--vectors",
                         "--owner", "u1", "--before", "2024-05-02T00:00:00+00:00")
    assert code == 0, err
    report = json.loads(out)
    assert report["messages"] == 4 and report["format"] == "jsonl" and report["path"] == str(path)
    code, out, err = run("--db", str(tmp_path / "copy.db"), "import", str(path))
    assert code == 0, err
    assert json.loads(out)["imported"] == 4 and json.loads(out)["vectors"] == 4
    code, out, err = run("--db", str(tmp_path / "copy.db"), "import", str(path))
    assert json.loads(out)["unchanged"] == 4
    code, _, err = run("--db", str(tmp_path / "source.db"), "export", str(path))
    assert code == 1 and "exists; pass overwrite=True (--overwrite)" in err
    code, _, err = run("--db", str(tmp_path / "source.db"), "export", str(path), "--before", "2024-05-02")
    assert code == 1 and "--before needs its UTC offset" in err
    code, _, err = run("--db", str(tmp_path / "source.db"), "export", str(tmp_path / "x.jsonl"), "--before", "May")
    assert code == 1 and "--before must be an ISO 8601 time" in err
    code, _, err = run("--db", str(tmp_path / "nothing.db"), "export", str(tmp_path / "y.jsonl"))
    assert code == 1 and "no database at" in err and not (tmp_path / "nothing.db").exists()


def test_cli_import_of_a_bad_file(tmp_path, run):
    path = tmp_path / "in.jsonl"
    write_lines(path, [HEADER, GOOD, {**GOOD, "msg_id": "h", "role": "bot"}])
    code, out, err = run("--db", str(tmp_path / "m.db"), "import", str(path))
    assert code == 1 and out == "" and "line 3: role must be one of" in err
    code, out, err = run("--db", str(tmp_path / "m.db"), "import", str(path), "--skip-invalid")
    assert code == 0, err
    report = json.loads(out)
    assert report["imported"] == 1 and report["invalid"] == [{"line": 3, "error": report["invalid"][0]["error"]}]
    code, _, err = run("--db", str(tmp_path / "m.db"), "import", str(tmp_path / "none.jsonl"))
    assert code == 1 and "cannot read" in err
