"""Cache trouble is a miss (and a log line), never an error, a stall or a leak.

The README promises that the cache folder can be deleted any time and that its entries are
never trusted: a damaged, locked, unwritable, full, foreign or hostile cache folder must
leave every answer right (from SQLite), quick, and the files outside the folder untouched.
"""

from __future__ import annotations

import json
import os
import sqlite3
import stat
import subprocess
import threading
import time

import diskcache
import pytest
from hash_embedder import HashEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localmem import Memory, Strategy
from localmem.cache import _FORMAT, HotWindow

OK = dict(conversation_id="c1", owner_id="u1")
# Far below diskcache's own 60 s, far above what a fast miss needs on a loaded machine.
PATIENCE = 10.0


def _cache_dir(db_path):
    return db_path.parent / (db_path.name + "-cache")


def _recent(mem: Memory, limit: int = 10):
    return mem.get_memory(Strategy.RECENT_HISTORY, **OK, limit=limit, lookback_days=None)


def _contents(result) -> list[str]:
    return [m.content for m in result.messages]


def _seed(db_path, n: int = 3) -> list[str]:
    texts = [f"message {i} about pizza" for i in range(n)]
    with Memory(db_path, embedder=HashEmbedder()) as mem:
        for text in texts:
            mem.add("user", text, **OK)
        mem.flush(timeout=30)
        _recent(mem)  # the hot window exists
        mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", **OK)  # so do the other tiers
    return texts


# -- a lock held on a cache file (issue 9, item 4) ----------------------------------------


class _CacheLockHolder:
    """Another connection holding a lock on one of the cache's SQLite files, the way a
    stuck process would: ``mode`` "write" holds the write lock (BEGIN IMMEDIATE);
    "exclusive" holds an exclusive lock that keeps readers out too."""

    def __init__(self, path, mode: str):
        self.conn = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        if mode == "exclusive":
            self.conn.execute("PRAGMA locking_mode = EXCLUSIVE")
            self.conn.execute("BEGIN EXCLUSIVE")
            self.conn.execute("CREATE TABLE IF NOT EXISTS held (x)")
        else:
            self.conn.execute("BEGIN IMMEDIATE")

    def release(self) -> None:
        self.conn.execute("ROLLBACK")
        self.conn.close()


@pytest.mark.parametrize("mode", ["write", "exclusive"])
def test_a_locked_cache_file_is_a_fast_miss(db_path, mode):
    texts = _seed(db_path)
    holders = [_CacheLockHolder(p, mode) for p in _cache_dir(db_path).rglob("cache.db")]
    assert len(holders) >= 3  # hot window, queries, embeddings (and its counters)
    try:
        started = time.monotonic()
        with Memory(db_path, embedder=HashEmbedder(), lock_timeout=5.0) as mem:
            assert _contents(_recent(mem)) == texts
            mem.add("user", "one more about pizza", **OK)
            assert _contents(_recent(mem)) == [*texts, "one more about pizza"]
            got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", **OK)
            assert len(got.messages) == 4 and not got.cache_hit
            mem.flush(timeout=30)
        # Each of those calls waited up to 60 s before (diskcache's default timeout).
        assert time.monotonic() - started < PATIENCE
    finally:
        for holder in holders:
            holder.release()


# -- a cache folder that cannot be used (items 6 and 15) ---------------------------------


def _answers_without_a_cache(db_path, caplog, **options) -> None:
    """Open, write, read every way and embed: all right, and the trouble logged."""
    fresh = dict(conversation_id="fresh", owner_id="u1")
    with Memory(db_path, embedder=HashEmbedder(), **options) as mem:
        mem.add("user", "pizza at noon", **fresh)
        mem.add("user", "rain at night", **fresh)
        recent = mem.get_memory(Strategy.RECENT_HISTORY, **fresh)
        assert _contents(recent) == ["pizza at noon", "rain at night"]
        mem.flush(timeout=30)  # the worker embeds without its cache
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", keyword=False, limit=1, **fresh)
        assert _contents(got) == ["pizza at noon"]
        assert mem.embedding_cache_stats()["entries"] == 0
        assert mem.cleanup_expired() == 0
        assert mem.check_integrity() == "ok"
    assert "localmem" in caplog.text and "cache" in caplog.text


def test_a_regular_file_where_the_cache_folder_goes(db_path, caplog):
    _cache_dir(db_path).write_bytes(b"not a folder")
    _answers_without_a_cache(db_path, caplog)
    assert _cache_dir(db_path).read_bytes() == b"not a folder"


def test_a_dangling_symlink_where_the_cache_folder_goes(db_path, caplog):
    _cache_dir(db_path).symlink_to(db_path.parent / "nowhere")
    _answers_without_a_cache(db_path, caplog)
    assert not (db_path.parent / "nowhere").exists()


def test_a_damaged_cache_folder(db_path, caplog):
    _seed(db_path)
    for path in _cache_dir(db_path).rglob("*"):
        if path.is_file():
            path.write_bytes(b"\xff" * 8192)
    _answers_without_a_cache(db_path, caplog)


@pytest.mark.skipif(not hasattr(os, "geteuid"), reason="file ownership is a POSIX notion")
@pytest.mark.parametrize("linked", [False, True])
def test_another_users_folder_is_neither_used_nor_changed(db_path, caplog, tmp_path, linked):
    theirs = tmp_path / "theirs"
    theirs.mkdir(mode=0o755)
    (theirs / "their-file").write_text("theirs")
    try:
        os.chown(theirs, os.geteuid() + 4242, -1)
    except PermissionError:
        pytest.skip("needs root to give a folder to another user id (CI runs as root)")
    if linked:
        _cache_dir(db_path).symlink_to(theirs)
        options = {}
    else:
        options = {"cache_dir": theirs}
    _answers_without_a_cache(db_path, caplog, **options)
    assert stat.S_IMODE(theirs.stat().st_mode) == 0o755  # never chmod-ed to 0700
    assert sorted(p.name for p in theirs.iterdir()) == ["their-file"]


def test_an_unwritable_cache_folder(db_path, caplog, tmpfs):
    _seed(db_path)  # cache tiers built on the normal disk, then moved to a read-only one
    subprocess.run(["cp", "-a", str(_cache_dir(db_path)) + "/.", str(tmpfs.path)], check=True)
    tmpfs.read_only()
    _answers_without_a_cache(db_path, caplog, cache_dir=tmpfs.path / ".")


def test_a_full_cache_disk(db_path, caplog, tmpfs):
    tmpfs.fill()
    _answers_without_a_cache(db_path, caplog, cache_dir=tmpfs.path / "cache")


def test_a_tier_that_could_not_open_comes_back_later(db_path, caplog, monkeypatch):
    import localmem.cache as cache_module

    monkeypatch.setattr(cache_module, "RETRY_OPEN_AFTER", 0.0)
    _cache_dir(db_path).write_bytes(b"in the way")
    with Memory(db_path, embed="off") as mem:
        mem.add("user", "hello", **OK)
        assert not _recent(mem).cache_hit
        _cache_dir(db_path).unlink()  # the trouble is gone: the tiers open on next use
        _recent(mem)
        assert _recent(mem).cache_hit


# -- hostile entries (items 9 and 13) ------------------------------------------------------


def _plant_file_row(cache_db, key: str, filename: str, *, expired: bool) -> None:
    """A Cache row whose value is a file, named by ``filename`` (diskcache's MODE_BINARY)."""
    conn = sqlite3.connect(str(cache_db))
    now = time.time()
    conn.execute(
        "INSERT OR REPLACE INTO Cache (key, raw, store_time, expire_time, access_time,"
        " access_count, tag, size, mode, filename, value) VALUES (?, 1, ?, ?, ?, 0, NULL, 0, ?, ?, NULL)",
        (key, now, now - 10 if expired else None, now, diskcache.core.MODE_BINARY, filename),
    )
    conn.commit()
    conn.close()


@pytest.mark.parametrize("absolute", [False, True])
def test_a_planted_file_name_never_reaches_outside_the_cache_folder(db_path, tmp_path, absolute):
    with Memory(db_path, embed="off") as mem:
        mem.add("user", "the real message", **OK)
        _recent(mem)
        key = mem._hot._key("u1", "c1")
        namespace = mem._store.instance_id
    victim = tmp_path / "victim.json"
    # A file holding a well-formed window for the current version: read, it would be served.
    victim.write_text(json.dumps({"f": _FORMAT, "v": 0, "complete": True, "rows": []}))
    name = str(victim) if absolute else os.path.relpath(victim, _cache_dir(db_path))
    cache_db = _cache_dir(db_path) / "cache.db"
    _plant_file_row(cache_db, key, name, expired=False)
    _plant_file_row(cache_db, json.dumps([namespace, "u1", "other"]), name, expired=True)
    with Memory(db_path, embed="off") as mem:
        assert _contents(_recent(mem)) == ["the real message"]  # read: refused
        hot = HotWindow(_cache_dir(db_path), namespace=namespace)
        hot._current().expire()  # expiry of the planted row: nothing removed outside
        hot.forget("u1", "c1")  # nor by deleting it
        hot.close()
        mem.delete(mem.get_memory(Strategy.RECENT_HISTORY, **OK).messages[0].msg_id)
    assert victim.exists() and json.loads(victim.read_text())["f"] == _FORMAT


def _store_row(i: int, **changes):
    row = [f"m{i}", "c1", "u1", "user", f"planted {i}", 1_700_000_000_000_000 + i, None, None]
    for index, value in changes.items():
        row[int(index[1:])] = value
    return row


BAD_WINDOWS = [
    {"f": _FORMAT, "complete": True, "rows": "not a list"},
    {"f": _FORMAT, "complete": True, "rows": [["too", "short"]]},
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i4=42)]},  # content not a str
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i3="robot")]},  # unknown role
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i5="yesterday")]},
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i5=True)]},
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i5=10**30)]},  # no datetime
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i7="{not json")]},
    {"f": _FORMAT, "complete": True, "rows": [_store_row(0, i7="[1, 2]")]},  # not an object
    {"f": _FORMAT, "complete": "yes", "rows": []},
    {"f": 1, "complete": True, "rows": []},
    ["a", "list"],
    None,
]


def _plant_window(mem: Memory, entry) -> None:
    if isinstance(entry, dict):  # at the current version, so that only its contents fail
        entry = {**entry, "v": mem._store.conversation_state("u1", "c1").version}
    raw = json.dumps(entry).encode()
    mem._hot._current().set(mem._hot._key("u1", "c1"), raw)


@pytest.mark.parametrize("entry", BAD_WINDOWS)
def test_a_well_formed_but_wrong_hot_window_entry_is_a_miss(db_path, entry):
    with Memory(db_path, embed="off") as mem:
        mem.add("user", "real", **OK)
        _plant_window(mem, entry)
        got = _recent(mem)
        assert _contents(got) == ["real"] and not got.cache_hit
        _plant_window(mem, entry)  # and hybrid, which reads the window too
        hybrid = mem.get_memory(Strategy.HYBRID, query="real", dense=False, **OK)
        assert _contents(hybrid) == ["real"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=json_values, complete=json_values)
def test_any_json_in_a_hot_window_entry_is_never_an_error(db_path, rows, complete):
    with Memory(db_path, embed="off", query_cache_ttl=0) as mem:
        if mem._store.conversation_state("u1", "c1") is None:
            mem.add("user", "real", **OK)
        _plant_window(mem, {"f": _FORMAT, "complete": complete, "rows": rows})
        got = _recent(mem)
        if got.cache_hit:  # only a window that is exactly right may be served
            assert rows == [] and complete is True or isinstance(rows, list) and len(rows) >= 1
        else:
            assert _contents(got) == ["real"]


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_json_in_a_query_cache_entry_is_never_an_error(db_path, value):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:
        if mem._store.conversation_state("u1", "c1") is None:
            mem.add("user", "pizza", **OK)
        args = dict(query="pizza", **OK)
        mem.get_memory(Strategy.SEMANTIC_SEARCH, **args)  # cached: find its key and scope
        queries = mem._queries
        disk = queries._current()
        (key,) = [k for k in disk.iterkeys()]
        entry = json.loads(disk.get(key))
        disk.set(key, json.dumps({**entry, "v": value}).encode())
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, **args)
        assert _contents(got) == ["pizza"]


# -- concurrency: threads hitting a tier that cannot open ----------------------------------


def test_threads_sharing_a_memory_with_a_broken_cache(db_path):
    _cache_dir(db_path).write_bytes(b"in the way")
    errors: list[BaseException] = []
    with Memory(db_path, embed="off") as mem:

        def work(n: int) -> None:
            try:
                for i in range(20):
                    mem.add("user", f"t{n} m{i}", **OK)
                    _recent(mem, limit=3)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=work, args=(n,)) for n in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not errors and mem.stats()["messages"] == 80
