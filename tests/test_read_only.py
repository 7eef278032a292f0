"""Read-only use (issue 13): ``Memory(path, read_only=True)`` and the CLI's read commands.

A filled database is copied, cleanly closed, into a folder of its own (``media``), as onto
a read-only disk. Every strategy must answer there as it does read-write; every write must
raise ``ReadOnlyError`` and leave every file byte for byte as it was, creating nothing.
Really unwritable files are read by a child process that drops root's privileges (CI runs
as root, for whom chmod changes nothing), and on a tmpfs remounted read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder

import localmem
import localmem.cli
from localmem import (
    CorruptDatabaseError,
    InvalidInputError,
    Memory,
    ReadOnlyError,
    StoreError,
    Strategy,
    SummaryPolicy,
    driver,
)
from localmem.store import MIGRATIONS, SCHEMA_VERSION, Store
from localmem.validate import new_message

ROOT = Path(localmem.__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent
BASE = datetime(2024, 3, 1, 9, 0, tzinfo=timezone.utc)
U1C1 = {"conversation_id": "c1", "owner_id": "u1"}
NOBODY = 65534
CHILD_TIMEOUT = 120  # seconds; a hung child fails the test instead of hanging it

TALK = [
    ("user", "I love pizza napolitana with fresh basil"),
    ("assistant", "Napolitana is a classic: tomato, mozzarella, basil."),
    ("user", "My dog Rex hates thunderstorms"),
    ("assistant", "Poor Rex; a quiet room helps during storms."),
    ("user", "Book me a table for pizza on Friday"),
    ("assistant", "Done: Friday at eight, table for two."),
    ("user", "What is the weather in Lisbon next week?"),
    ("assistant", "Sunny in Lisbon, around 22 degrees."),
    ("user", "Remind me to buy dog food for Rex"),
    ("assistant", "Reminder set: dog food for Rex."),
    ("user", "Any pizza place near the office?"),
    ("assistant", "Forno Vecchio is two blocks from the office."),
]


def _fill(path: Path) -> None:
    """Three conversations of two owners, all embedded, a stored summary for c1, and a
    strategy log with three calls."""
    policy = SummaryPolicy(window_tokens=40, fold_tokens=10)
    with Memory(path, embedder=HashEmbedder(), embed="sync", summaries=policy) as mem:
        mem.add_many(
            [{"role": role, "content": text, "created_at": BASE + timedelta(minutes=i), **U1C1}
             for i, (role, text) in enumerate(TALK)]
        )
        mem.add_many(
            [{"role": "user", "content": text, "created_at": BASE + timedelta(days=1, minutes=i),
              "conversation_id": "c2", "owner_id": "u1"}
             for i, text in enumerate(["pizza dough needs a long rise", "Rex learned to sit"])]
        )
        mem.add("user", "pizza for the other owner", conversation_id="c3", owner_id="u2",
                created_at=BASE)
        assert mem.fold_summary(**U1C1) > 0
        for strategy in ("recent_history", "hybrid", "semantic_search"):
            mem.get_memory(strategy, query="pizza", lookback_days=None, **U1C1)


@pytest.fixture(scope="module")
def filled(tmp_path_factory) -> Path:
    """A filled database, closed (built once; tests read copies of it)."""
    path = tmp_path_factory.mktemp("filled") / "memory.db"
    _fill(path)
    return path


def _copy(source: Path, folder: Path) -> Path:
    """The database file and its strategy log, copied into ``folder`` (as onto other media:
    cleanly closed, no -wal, no cache folder)."""
    folder.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-log"):
        shutil.copyfile(f"{source}{suffix}", folder / f"memory.db{suffix}")
    return folder / "memory.db"


@pytest.fixture
def media(filled, tmp_path) -> Path:
    return _copy(filled, tmp_path / "media")


def snapshot(folder: Path) -> dict[str, str]:
    """Every file below ``folder`` with its sha256 (folders as such)."""
    found = {}
    for path in sorted(folder.rglob("*")):
        key = str(path.relative_to(folder))
        found[key] = "folder" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return found


def answer(mem: Memory, strategy: str, query: str | None = "pizza", **ids: str):
    result = mem.get_memory(strategy, query=query, lookback_days=None, **(ids or U1C1))
    return result.strategy, [(m.msg_id, m.source, m.score) for m in result.messages]


# -- every read works, and answers as read-write does ------------------------------------


@pytest.mark.parametrize("strategy", [s.value for s in Strategy])
@pytest.mark.parametrize("query", ["pizza", "Rex the dog", None])
def test_every_strategy_answers_as_it_does_read_write(media, strategy, query):
    # strategy_log=False on both sides: auto's per-owner habit would otherwise count the
    # read-write calls made here.
    with Memory(media, embedder=HashEmbedder(), strategy_log=False) as rw:
        expected = answer(rw, strategy, query)
    with Memory(media, embedder=HashEmbedder(), strategy_log=False, read_only=True) as ro:
        got = answer(ro, strategy, query)
    assert got == expected
    if strategy != "session_only":
        assert got[1], "an empty answer would prove nothing"


def test_cross_conversation_and_other_owners_read_only(media):
    with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
        _, found = answer(ro, "cross_conversation", "Rex")
        assert {ro.get(msg_id).conversation_id for msg_id, _, _ in found} == {"c1", "c2"}
        _, other = answer(ro, "recent_history", conversation_id="c3", owner_id="u2")
        assert [ro.get(msg_id).content for msg_id, _, _ in other] == ["pizza for the other owner"]


def test_build_context_shows_the_stored_summary(media):
    with Memory(media, embedder=HashEmbedder(), strategy_log=False, summaries=None) as rw:
        expected = rw.build_context(**U1C1).to_text()
        summary = rw.get_conversation_summary(**U1C1)
    with Memory(media, embedder=HashEmbedder(), strategy_log=False, read_only=True) as ro:
        ctx = ro.build_context(**U1C1)
        assert ro.get_conversation_summary(**U1C1) == summary
    assert summary is not None and summary.text in ctx.to_text()
    assert ctx.to_text() == expected


def test_stats_integrity_log_and_caches_read_only(media):
    with Memory(media, embedder=HashEmbedder()) as rw:
        stats = {k: v for k, v in rw.stats().items() if k != "bytes"}
        calls = rw.strategy_stats(days=None).total_calls
    assert calls == 3  # what _fill logged
    with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
        assert {k: v for k, v in ro.stats().items() if k != "bytes"} == stats
        assert ro.check_integrity() == "ok"
        answer(ro, "hybrid")
        answer(ro, "auto")
        ro.flush()  # returns at once: nothing runs in the background
        assert ro.strategy_stats(days=None).total_calls == calls  # read, never appended to
        assert ro.analytics().sql("SELECT count(*) FROM strategy_log").fetchall() == [(calls,)]
        cache = ro.embedding_cache_stats()  # the query vectors: in this process only
        assert cache["memory_entries"] > 0 and cache["entries"] == 0
        assert repr(ro).endswith("open read-only>")


def test_check_integrity_finds_a_damaged_keyword_index_read_only(media):
    conn = driver.dbapi().connect(str(media), isolation_level=None)
    conn.execute("UPDATE messages_fts_content SET c0 = 'words the index never saw' WHERE id = 3")
    conn.close()
    with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
        found = ro.check_integrity()
    assert "inverted index" in found and "fts5" in found.lower()


# -- writes are refused, and nothing changes ---------------------------------------------

WRITES = {
    "add": lambda m: m.add("user", "hi", **U1C1),
    "add_many": lambda m: m.add_many([{"role": "user", "content": "hi", **U1C1}]),
    "delete": lambda m: m.delete(m.get_memory("recent_history", **U1C1, lookback_days=None).messages[0].msg_id),
    "reembed": lambda m: m.reembed(),
    "fold_summary": lambda m: m.fold_summary(**U1C1),
    "cleanup_expired": lambda m: m.cleanup_expired(),
}


@pytest.mark.parametrize("write", sorted(WRITES))
def test_each_write_raises_and_changes_nothing(media, write):
    before = snapshot(media.parent)
    with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
        with pytest.raises(ReadOnlyError, match=r"read_only=True: cannot"):
            WRITES[write](ro)
        assert ro.stats()["messages"] == len(TALK) + 3
    assert snapshot(media.parent) == before


STORE_WRITES = {
    "insert": lambda s: s.insert(new_message("user", "hi", **U1C1)),
    "insert_many": lambda s: s.insert_many([new_message("user", "hi", **U1C1)]),
    "delete": lambda s: s.delete("any"),
    "set_meta": lambda s: s.set_meta("k", "v"),
    "bind_embedder": lambda s: s.bind_embedder({"name": "x", "dim": 4}, replace=True),
    "write_vectors": lambda s: s.write_vectors({"name": "x", "dim": 1}, [1], [b"\0\0\x80?"]),
    "reset_vectors": lambda s: s.reset_vectors(),
    "save_summary": lambda s: s.save_summary("u1", "c1", expected_version=1, text="t", after=(0, 0),
                                             through=(1, 1), ids=[1], folded=1, summarizer="s"),
}


@pytest.mark.parametrize("write", sorted(STORE_WRITES))
def test_every_store_write_is_a_read_only_error(media, write):
    # Not SQLite's raw "attempt to write a readonly database": Store.write() refuses first.
    before = snapshot(media.parent)
    store = Store(str(media), read_only=True)
    try:
        with pytest.raises(ReadOnlyError, match="open read-only") as info:
            STORE_WRITES[write](store)
        assert info.value.__cause__ is None
    finally:
        store.close()
    assert snapshot(media.parent) == before


def test_reading_everything_creates_and_changes_nothing(media):
    before = snapshot(media.parent)
    assert sorted(before) == ["memory.db", "memory.db-log"]
    with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
        for strategy in Strategy:
            answer(ro, strategy.value)
        ro.explain("hybrid", query="pizza", **U1C1)
        ro.build_context(**U1C1)
        ro.stats(), ro.check_integrity(), ro.strategy_stats(), ro.embedding_cache_stats()
        # (SQLite makes a -wal and -shm to read a WAL file when it can; they go at close)
    assert snapshot(media.parent) == before


def test_the_wal_files_stay_while_another_connection_uses_them(media):
    with Memory(media, embedder=HashEmbedder()) as rw:  # a writer holds the file open
        rw.add("user", "written meanwhile", **U1C1)
        with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
            assert answer(ro, "recent_history")[1][-1][0] == rw.get_memory(
                "recent_history", lookback_days=None, **U1C1).messages[-1].msg_id
        assert os.path.exists(f"{media}-wal")  # the read-only close left the writer's files
        rw.add("user", "and after", **U1C1)
    with Memory(media, read_only=True) as ro:
        assert ro.stats()["messages"] == len(TALK) + 5


def test_invalid_combinations(media):
    with pytest.raises(InvalidInputError, match="in-memory"):
        Memory(":memory:", read_only=True)
    with pytest.raises(InvalidInputError, match="reembed"):
        Memory(media, read_only=True, reembed=True)
    with pytest.raises(InvalidInputError, match="read_only"):
        Memory(media, read_only="yes")


# -- files it cannot read as they are ----------------------------------------------------


def test_a_missing_file_is_an_error_and_nothing_is_created(tmp_path, run):
    missing = tmp_path / "missing.db"
    with pytest.raises(StoreError, match="no such database file") as info:
        Memory(missing, read_only=True)
    assert not isinstance(info.value, ReadOnlyError)
    code, _, err = run("--db", str(missing), "info")
    assert code == 1 and "no database at" in err
    assert list(tmp_path.iterdir()) == []


def _old_file(path: Path, version: int) -> None:
    """A file as a localmem of schema ``version`` left it."""
    conn = driver.dbapi().connect(str(path), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    for statements in MIGRATIONS[:version]:
        for sql in statements:
            conn.execute(sql)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()


@pytest.mark.parametrize("version", range(1, SCHEMA_VERSION))
def test_an_older_schema_is_refused_not_upgraded(tmp_path, version):
    # Upgrading is a write; the older schemas lack tables every read path uses (summaries,
    # owners, write_stamp), so reading them as they are is no option either.
    path = tmp_path / "old.db"
    _old_file(path, version)
    before = snapshot(tmp_path)
    with pytest.raises(ReadOnlyError, match=f"schema version {version}, older.*without read_only"):
        Memory(path, read_only=True)
    assert snapshot(tmp_path) == before
    with Memory(path, embed="off") as rw:  # as the message says: once read-write upgrades it
        rw.add("user", "hi", **U1C1)
    with Memory(path, read_only=True) as ro:
        assert ro.stats()["schema_version"] == SCHEMA_VERSION


def test_newer_empty_and_foreign_files(tmp_path):
    newer, empty, foreign = tmp_path / "newer.db", tmp_path / "empty.db", tmp_path / "foreign.db"
    _old_file(newer, SCHEMA_VERSION)
    conn = driver.dbapi().connect(str(newer), isolation_level=None)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    empty.touch()
    conn = driver.dbapi().connect(str(foreign), isolation_level=None)
    conn.execute("CREATE TABLE theirs (x)")
    conn.close()
    before = snapshot(tmp_path)
    with pytest.raises(CorruptDatabaseError, match="newer"):
        Memory(newer, read_only=True)
    with pytest.raises(ReadOnlyError, match="not a localmem database yet"):
        Memory(empty, read_only=True)
    with pytest.raises(CorruptDatabaseError, match="not a localmem one"):
        Memory(foreign, read_only=True)
    assert snapshot(tmp_path) == before


# -- a read-only mount -------------------------------------------------------------------


def _hash_model(monkeypatch) -> None:
    """The CLI resolves the recorded embedder by name; the tests' one is not registered."""
    real = localmem.embedding.load_model
    monkeypatch.setattr(localmem.embedding, "load_model", lambda arg, kind: (
        HashEmbedder() if arg == HashEmbedder.name else real(arg, kind)))


def test_a_read_only_mount(filled, tmpfs, run, monkeypatch):
    path = _copy(filled, tmpfs.path)
    with Memory(path, embedder=HashEmbedder(), strategy_log=False) as rw:
        expected = answer(rw, "hybrid")
    tmpfs.read_only()
    before = snapshot(tmpfs.path)

    code, out, err = run("--db", str(path), "info", "--json")  # the example
    assert code == 0, err
    assert json.loads(out)["messages"] == len(TALK) + 3
    code, out, err = run("--db", str(path), "recent", "--all", "--conversation", "c1", "--owner", "u1")
    assert code == 0 and "Forno Vecchio" in out, err
    code, out, err = run("--db", str(path), "stats", "--days", "0", "--json")
    assert code == 0 and json.loads(out)["total_calls"] == 3, err
    _hash_model(monkeypatch)
    code, out, err = run("--db", str(path), "search", "--all", "--conversation", "c1", "--owner", "u1",
                         "--json", "pizza")
    assert code == 0, err
    assert [m["msg_id"] for m in json.loads(out)["messages"]] == [msg_id for msg_id, _, _ in expected[1]]
    code, out, err = run("--db", str(path), "context", "--conversation", "c1", "--owner", "u1",
                         "--strategy", "recent_history")
    assert code == 0 and "Forno Vecchio" in out, err

    with Memory(path, embedder=HashEmbedder(), read_only=True) as ro:
        assert answer(ro, "hybrid") == expected
        assert ro.check_integrity() == "ok"
    with pytest.raises(ReadOnlyError, match="open it with read_only=True"):
        Memory(path)  # read-write on read-only media: said so, not "unable to open"
    code, _, err = run("--db", str(path), "add", "--conversation", "c1", "--owner", "u1", "hi")
    assert code == 1 and "read_only=True" in err
    assert snapshot(tmpfs.path) == before


def test_search_of_an_unwritable_file_finds_waiting_messages_by_keywords(media, run, monkeypatch):
    # `localmem add` leaves messages waiting for their vectors; `search` embeds them first
    # when it can write the file, and otherwise finds them by keywords, saying so.
    with Memory(media, embed="off") as rw:
        rw.add("user", "the zebra crossing on Main Street", msg_id="waiting", **U1C1)
    before = snapshot(media.parent)
    monkeypatch.setattr(localmem.cli, "can_write", lambda path: False)
    _hash_model(monkeypatch)
    code, out, err = run("--db", str(media), "search", "--all", "--json", "--conversation", "c1",
                         "--owner", "u1", "--strategy", "semantic_search", "zebra crossing")
    assert code == 0, err
    assert "1 message(s) still waiting for a vector are found by keywords only" in err
    assert "waiting" in [m["msg_id"] for m in json.loads(out)["messages"]]
    assert snapshot(media.parent) == before  # nothing embedded, nothing created
    with Memory(media, read_only=True) as ro:
        assert ro.stats()["pending_vectors"] == 1


def test_a_wal_with_commits_but_no_index_on_a_read_only_mount(filled, tmpfs):
    # Copied while a writer had it open, without the -shm: SQLite cannot make the index on
    # read-only media, and reading the file without its log would miss the commits.
    source = _copy(filled, tmpfs.path.parent / "source")
    with Memory(source, embedder=HashEmbedder()) as rw:
        rw.add("user", "only in the log", **U1C1)
        assert os.path.getsize(f"{source}-wal") > 0
        for suffix in ("", "-wal"):
            shutil.copyfile(f"{source}{suffix}", tmpfs.path / f"memory.db{suffix}")
    tmpfs.read_only()
    with pytest.raises(StoreError, match="write-ahead log .* holds commits") as info:
        Memory(tmpfs.path / "memory.db", read_only=True)
    assert not isinstance(info.value, ReadOnlyError)


# -- an unprivileged process: a file and folder it cannot write --------------------------

# Run as root (CI), the child imports what it needs, then drops to uid/gid 65534, for whom
# the copy (root's, folder 0555, files 0444) is read-only; lazy imports after that could
# fail where the interpreter lives in a folder only root may read, hence the imports first.
# Not root: chmod alone makes the copy read-only to the child. It prints one JSON line per
# line of stdin: {"op": ...} -> its answer.
CHILD = textwrap.dedent(
    """
    import importlib, io, json, os, pkgutil, sys, contextlib
    import localmem, localmem.cli, localmem.embedding, hash_embedder, numpy, duckdb, sqlite_vec
    for info in pkgutil.walk_packages(localmem.__path__, "localmem."):
        with contextlib.suppress(ImportError):
            importlib.import_module(info.name)
    localmem.driver.dbapi()
    from localmem import Memory
    from hash_embedder import HashEmbedder

    real = localmem.embedding.load_model
    localmem.embedding.load_model = lambda arg, kind: (
        HashEmbedder() if arg == HashEmbedder.name else real(arg, kind))
    if os.geteuid() == 0:
        os.setgroups([])
        os.setgid(65534)
        os.setuid(65534)
    path = sys.argv[1]

    def can_append():
        try:
            open(path, "ab").close()
        except OSError:
            return False
        return True

    def cli(*argv):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = localmem.cli.main(["--db", path, *argv])
        return {"code": code, "out": out.getvalue(), "err": err.getvalue()}

    mem = None
    for line in sys.stdin:
        ask = json.loads(line)
        if ask["op"] == "whoami":
            reply = {"uid": os.geteuid(), "can_append": can_append(),
                     "can_create": os.access(os.path.dirname(path), os.W_OK)}
        elif ask["op"] == "cli":
            reply = cli(*ask["argv"])
        elif ask["op"] == "open":
            mem = Memory(path, embedder=HashEmbedder(), read_only=True)
            reply = {}
        elif ask["op"] == "ask":
            result = mem.get_memory(ask["strategy"], query=ask.get("query"), lookback_days=None,
                                    conversation_id="c1", owner_id="u1")
            reply = {"ids": [m.msg_id for m in result.messages]}
        elif ask["op"] == "close":
            mem.close()
            reply = {}
        print(json.dumps(reply), flush=True)
    """
)


class Child:
    """The CHILD script, asked one JSON line at a time (no deadline but CHILD_TIMEOUT)."""

    def __init__(self, path: Path):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
        # A file, not a pipe: a pipe nobody reads could fill and block the child.
        self.errors = tempfile.TemporaryFile("w+")  # noqa: SIM115 - closed in close()
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=self.errors, text=True, env=env, cwd="/",
        )

    def stderr(self) -> str:
        self.errors.seek(0)
        return self.errors.read()

    def ask(self, op: str, **args) -> dict:
        self.proc.stdin.write(json.dumps({"op": op, **args}) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(CHILD_TIMEOUT)
            raise AssertionError(f"the child ended: {self.stderr()}")
        return json.loads(line)

    def close(self) -> None:
        self.proc.stdin.close()
        assert self.proc.wait(CHILD_TIMEOUT) == 0, self.stderr()
        self.errors.close()


@pytest.fixture
def locked(filled):
    """A copy of ``filled`` the child cannot write: in a fresh folder below the system's
    temporary one (pytest's tmp_path is root's alone), folder 0555, files 0444."""
    top = Path(tempfile.mkdtemp(prefix="localmem-ro-"))
    os.chmod(top, 0o755)
    path = _copy(filled, top / "media")
    for item in (path, Path(f"{path}-log")):
        os.chmod(item, 0o444)
    os.chmod(path.parent, 0o555)
    try:
        yield path
    finally:
        os.chmod(path.parent, 0o755)
        shutil.rmtree(top)


def test_an_unwritable_file_and_folder_in_an_unprivileged_process(filled, locked):
    with Memory(filled, embedder=HashEmbedder(), read_only=True) as ro:
        hybrid = [msg_id for msg_id, _, _ in answer(ro, "hybrid")[1]]
        recent = [msg_id for msg_id, _, _ in answer(ro, "recent_history")[1]]
    before = snapshot(locked.parent)
    outbox = Path(tempfile.mkdtemp(prefix="localmem-export-"))  # where the child may write
    outbox.chmod(0o777)
    child = Child(locked)
    try:
        me = child.ask("whoami")
        assert (me["can_append"], me["can_create"]) == (False, False), me  # really read-only
        assert me["uid"] == (NOBODY if os.geteuid() == 0 else os.geteuid())

        info = child.ask("cli", argv=["info", "--json"])
        assert info["code"] == 0, info["err"]
        assert json.loads(info["out"])["messages"] == len(TALK) + 3
        shown = child.ask("cli", argv=["recent", "--all", "--json", "--conversation", "c1", "--owner", "u1"])
        assert shown["code"] == 0, shown["err"]
        assert [m["msg_id"] for m in json.loads(shown["out"])["messages"]] == recent
        found = child.ask("cli", argv=["search", "--all", "--json", "--conversation", "c1", "--owner", "u1",
                                       "pizza"])
        assert found["code"] == 0, found["err"]
        assert [m["msg_id"] for m in json.loads(found["out"])["messages"]] == hybrid
        stats = child.ask("cli", argv=["stats", "--days", "0", "--json"])
        assert stats["code"] == 0 and json.loads(stats["out"])["total_calls"] == 3, stats["err"]
        added = child.ask("cli", argv=["add", "--conversation", "c1", "--owner", "u1", "hi"])
        assert added["code"] == 1 and "cannot be written here" in added["err"], added
        forgot = child.ask("cli", argv=["forget", "--owner", "u1"])
        assert forgot["code"] == 1 and "cannot be written here" in forgot["err"], forgot
        exported = child.ask("cli", argv=["export", str(outbox / "all.jsonl")])  # a read: works
        assert exported["code"] == 0, exported["err"]
        assert json.loads(exported["out"])["messages"] == len(TALK) + 3

        child.ask("open")
        assert child.ask("ask", strategy="hybrid", query="pizza")["ids"] == hybrid
        child.ask("close")
    finally:
        child.close()
        shutil.rmtree(outbox, ignore_errors=True)
    assert snapshot(locked.parent) == before


def test_a_writer_in_another_process_is_seen_by_the_next_read(media):
    """The reader here, read-only; the writer a process of its own, open throughout."""
    writer = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent("""
            import sys
            from localmem import Memory
            from hash_embedder import HashEmbedder
            with Memory(sys.argv[1], embedder=HashEmbedder(), embed="sync") as mem:
                for line in sys.stdin:
                    mem.add("user", line.strip(), conversation_id="c1", owner_id="u1", msg_id=line.strip())
                    print("added", flush=True)
        """), str(media)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])},
    )

    def write(text: str) -> None:
        writer.stdin.write(text + "\n")
        writer.stdin.flush()
        assert writer.stdout.readline() == "added\n"

    try:
        with Memory(media, embedder=HashEmbedder(), read_only=True) as ro:
            assert "zebra-1" not in [i for i, _, _ in answer(ro, "recent_history")[1]]
            write("zebra-1")
            assert answer(ro, "recent_history")[1][-1][0] == "zebra-1"
            write("zebra-2")
            assert answer(ro, "semantic_search", "zebra-2")[1][0][0] == "zebra-2"
            writer.stdin.close()
            assert writer.wait(CHILD_TIMEOUT) == 0
            assert [i for i, _, _ in answer(ro, "recent_history")[1]][-2:] == ["zebra-1", "zebra-2"]
    finally:
        if writer.poll() is None:
            writer.kill()


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="needs root, to read as another user (uid 65534) what root writes")
def test_an_unprivileged_reader_sees_a_writer_that_comes_later(filled, locked):
    # The file was closed cleanly and the child can make no -shm: it reads it immutable.
    # A writer (root, here) then makes a -wal: the child's next reads must see its commits
    # (they switch to locked mode=ro reads, through a WAL index in the child's memory).
    child = Child(locked)
    try:
        child.ask("open")
        first = child.ask("ask", strategy="recent_history")["ids"]
        assert "late-1" not in first
        with Memory(locked, embedder=HashEmbedder(), embed="sync") as rw:
            rw.add("user", "a late zebra", msg_id="late-1", **U1C1)
            assert child.ask("ask", strategy="recent_history")["ids"][-1] == "late-1"
            rw.add("user", "another late zebra", msg_id="late-2", **U1C1)
            assert child.ask("ask", strategy="semantic_search", query="another late zebra")["ids"][0] == "late-2"
        assert child.ask("ask", strategy="recent_history")["ids"][-2:] == ["late-1", "late-2"]
        child.ask("close")
    finally:
        child.close()
