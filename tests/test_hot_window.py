"""The hot window: served when current, never stale, JSON only, private, disposable."""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import stat
import subprocess
import sys
from datetime import datetime, timedelta, timezone

import diskcache
from hash_embedder import HashEmbedder

from localmem import Memory, driver

OK = dict(conversation_id="c1", owner_id="u1")


def recent(m, **kw):
    return m.get_memory("recent_history", **{**OK, **kw})


def test_second_read_is_a_hit_with_the_same_answer(mem):
    for i in range(3):
        mem.add("user", f"m{i}", **OK)
    first, second = recent(mem), recent(mem)
    assert not first.cache_hit and second.cache_hit
    assert first.messages == second.messages
    assert second.context_summary == "Loaded 3 recent messages from last 7 days"


def test_own_write_is_in_the_next_answer(mem):
    mem.add("user", "m0", **OK)
    recent(mem)
    recent(mem)
    mem.add("user", "m1", **OK)
    after = recent(mem)
    assert [m.content for m in after.messages] == ["m0", "m1"]
    assert not after.cache_hit and recent(mem).cache_hit


def test_write_by_another_process_is_in_the_next_answer(mem, db_path):
    mem.add("user", "mine", **OK)
    recent(mem)
    assert recent(mem).cache_hit
    code = (
        "import sys; from localmem import Memory\n"
        "with Memory(sys.argv[1]) as m: m.add('assistant', 'theirs', conversation_id='c1', owner_id='u1')\n"
    )
    subprocess.run([sys.executable, "-c", code, str(db_path)], check=True, timeout=60)
    got = recent(mem)
    assert [m.content for m in got.messages] == ["mine", "theirs"]


def test_write_by_another_memory_sharing_the_cache_dir(db_path):
    with Memory(db_path) as a, Memory(db_path) as b:
        a.add("user", "one", **OK)
        assert [m.content for m in recent(b).messages] == ["one"]
        assert recent(a).cache_hit  # b filled the shared window, a reads it
        b.add("user", "two", **OK)
        assert [m.content for m in recent(a).messages] == ["one", "two"]


def test_limit_and_lookback_are_applied_to_the_window(mem):
    now = datetime.now(timezone.utc)
    for i in range(15):
        mem.add("user", f"m{i}", created_at=now - timedelta(days=14 - i), **OK)
    recent(mem)
    got = recent(mem, limit=5)
    assert got.cache_hit and [m.content for m in got.messages] == [f"m{i}" for i in range(10, 15)]
    got = recent(mem, limit=10, lookback_days=3.5)
    assert got.cache_hit and [m.content for m in got.messages] == ["m11", "m12", "m13", "m14"]
    got = recent(mem, limit=12, lookback_days=None)  # more than the window holds: from SQLite
    assert not got.cache_hit and [m.content for m in got.messages] == [f"m{i}" for i in range(3, 15)]
    assert recent(mem, lookback_days=None).context_summary == "Loaded 10 recent messages from all time"
    assert recent(mem, lookback_days=1).context_summary == "Loaded 1 recent messages from last 1 day"


def test_small_conversation_serves_any_limit_from_the_window(mem):
    for i in range(3):
        mem.add("user", f"m{i}", **OK)
    recent(mem)
    got = recent(mem, limit=50)
    assert got.cache_hit and len(got.messages) == 3


def test_empty_and_unknown_conversations(mem):
    got = recent(mem)
    assert got.messages == () and not got.cache_hit
    assert got.context_summary == "Loaded 0 recent messages from last 7 days"
    mem.add("user", "hi", **OK)
    assert recent(mem, owner_id="someone-else").messages == ()


def test_hot_window_off(db_path):
    with Memory(db_path, hot_window=0) as m:
        m.add("user", "hi", **OK)
        assert not recent(m).cache_hit and not recent(m).cache_hit
        assert recent(m).messages[0].content == "hi"


def test_cache_dir_is_private_and_beside_the_database(mem, db_path):
    cache_dir = db_path.parent / (db_path.name + "-cache")
    assert mem._hot.directory == cache_dir
    assert stat.S_IMODE(os.stat(cache_dir).st_mode) == 0o700


def test_values_are_json_bytes_never_pickle(mem, db_path):
    mem.add("user", "hello", metadata={"k": [1, "x"]}, **OK)
    recent(mem)
    conn = sqlite3.connect(db_path.parent / (db_path.name + "-cache") / "cache.db")
    rows = conn.execute("SELECT key, raw, mode, value FROM Cache").fetchall()
    conn.close()
    assert rows, "the window was not stored"
    for _key, raw_key, mode, value in rows:
        assert raw_key == 1 and mode == diskcache.core.MODE_RAW
        entry = json.loads(value)
        assert entry["rows"][0][4] == "hello"


def test_a_planted_pickle_is_never_loaded(mem, db_path):
    mem.add("user", "hello", **OK)
    recent(mem)
    key = mem._hot._key("u1", "c1")
    cache_dir = str(db_path.parent / (db_path.name + "-cache"))

    class Boom:
        def __reduce__(self):
            return (os.system, ("touch planted-pickle-ran",))

    with diskcache.Cache(cache_dir) as evil:  # the default Disk pickles
        evil.set(key, Boom())
    got = recent(mem)
    assert [m.content for m in got.messages] == ["hello"] and not got.cache_hit
    assert not os.path.exists("planted-pickle-ran")


def test_deleting_the_cache_directory_loses_nothing(db_path):
    with Memory(db_path) as m:
        for i in range(4):
            m.add("user", f"m{i}", **OK)
        recent(m)
    shutil.rmtree(db_path.parent / (db_path.name + "-cache"))
    with Memory(db_path) as m:
        got = recent(m)
        assert [x.content for x in got.messages] == [f"m{i}" for i in range(4)] and not got.cache_hit
        assert recent(m).cache_hit


def test_damaged_cache_file_falls_back_to_the_database(db_path, caplog):
    with Memory(db_path) as m:
        m.add("user", "hi", **OK)
    cache_db = db_path.parent / (db_path.name + "-cache") / "cache.db"
    with Memory(db_path) as m:
        recent(m)
        m._hot._cache.close()
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(str(cache_db) + suffix):
                with open(str(cache_db) + suffix, "r+b") as f:
                    f.write(b"\xff" * 4096)
        got = recent(m)
        assert [x.content for x in got.messages] == ["hi"]


def test_a_recreated_database_never_sees_the_old_cache(db_path):
    with Memory(db_path) as m:
        m.add("user", "old life", **OK)
        recent(m)
    for suffix in ("", "-wal", "-shm"):
        if os.path.exists(str(db_path) + suffix):
            os.remove(str(db_path) + suffix)
    with Memory(db_path) as m:  # same path, same cache dir, same conversation version 1
        m.add("user", "new life", **OK)
        assert [x.content for x in recent(m).messages] == ["new life"]


# -- entries say what they hold; versions never repeat (issue 9, items 2, 3, 16) ----------


def test_a_window_written_by_a_smaller_setting_is_not_taken_for_more(db_path):
    with Memory(db_path, hot_window=10) as small:
        for i in range(40):
            small.add("user", f"m{i}", **OK)
        assert len(recent(small, limit=10).messages) == 10  # the window: 10 newest
    with Memory(db_path, hot_window=30) as large:
        got = recent(large, limit=30)
        assert [m.content for m in got.messages] == [f"m{i}" for i in range(10, 40)]
        assert not got.cache_hit  # before: 10 messages, cache_hit=True
        again = recent(large, limit=30)
        assert again.cache_hit and len(again.messages) == 30
    with Memory(db_path, hot_window=10) as small:  # and back: 30 rows answer 10 as well
        got = recent(small, limit=10)
        assert got.cache_hit and [m.content for m in got.messages] == [f"m{i}" for i in range(30, 40)]


def _copy_database(source, target) -> None:
    """A consistent copy of the file (SQLite's online backup), as a user's backup is.
    Through localmem's own driver: a second SQLite library in one process would drop the
    first one's POSIX locks on the file as it closes it (sqlite.org/howtocorrupt.html)."""
    src, dst = driver.connect(str(source)), driver.connect(str(target))
    src.backup(dst)
    src.close()
    dst.close()


def _semantic(m, query: str):
    return m.get_memory("semantic_search", query=query, dense=False, **OK)


def test_a_restored_backup_never_meets_the_caches_of_its_lost_future(db_path, tmp_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as m:
        m.add("user", "one apple", **OK)
        m.add("user", "two apples", **OK)
        _copy_database(db_path, tmp_path / "backup.db")
        m.add("user", "three apples, later deleted by the restore", **OK)
        assert len(recent(m).messages) == 3 and recent(m).cache_hit
        assert len(_semantic(m, "apples").messages) == 3 and _semantic(m, "apples").cache_hit
    for suffix in ("", "-wal", "-shm"):  # restore the backup in place; the cache folder stays
        if os.path.exists(str(db_path) + suffix):
            os.remove(str(db_path) + suffix)
    shutil.copy(tmp_path / "backup.db", db_path)
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as m:
        m.add("user", "four apples", **OK)  # a counter would now repeat the lost version
        assert [x.content for x in recent(m).messages] == ["one apple", "two apples", "four apples"]
        contents = {x.content for x in _semantic(m, "apples").messages}
        assert contents == {"one apple", "two apples", "four apples"}


def test_two_copies_sharing_a_cache_folder_never_serve_each_other(db_path, tmp_path):
    shared = tmp_path / "shared-cache"
    options = dict(embedder=HashEmbedder(), embed="sync", cache_dir=shared)
    with Memory(db_path, **options) as m:
        m.add("user", "common ground", **OK)
    _copy_database(db_path, tmp_path / "copy.db")  # same instance id, same versions
    with Memory(db_path, **options) as a, Memory(tmp_path / "copy.db", **options) as b:
        a.add("user", "only in a", **OK)
        assert [x.content for x in recent(a).messages] == ["common ground", "only in a"]
        b.add("user", "only in b", **OK)
        assert [x.content for x in recent(b).messages] == ["common ground", "only in b"]
        assert [x.content for x in recent(a).messages] == ["common ground", "only in a"]
        # ("common ground" may come too: the keyword index holds its successor's words)
        assert {x.content for x in _semantic(b, "only").messages} - {"common ground"} == {"only in b"}
        assert {x.content for x in _semantic(a, "only").messages} - {"common ground"} == {"only in a"}


def test_a_version_changes_with_every_write_and_never_comes_back(mem):
    seen = set()
    for i in range(50):
        message = mem.add("user", f"m{i}", **OK)
        seen.add(mem._store.conversation_state("u1", "c1").version)
        if i % 5 == 4:
            mem.delete(message.msg_id)
            seen.add(mem._store.conversation_state("u1", "c1").version)
    assert len(seen) == 60


def test_a_deleted_message_leaves_no_trace_in_the_cache_folder(db_path):
    marker = "zanzibar-marker-7f3a9"
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as m:
        m.add("user", "an ordinary message", **OK)
        gone = m.add("user", f"my secret is {marker}", **OK)
        m.add("user", "another ordinary one", **OK)
        recent(m)
        m.get_memory("semantic_search", query=marker, **OK)
        m.get_memory("cross_conversation", query=marker, **OK)
        cache = db_path.parent / (db_path.name + "-cache")
        assert any(marker.encode() in p.read_bytes() for p in cache.rglob("*") if p.is_file())
        assert m.delete(gone.msg_id)
        leaks = [p for p in cache.rglob("*") if p.is_file() and marker.encode() in p.read_bytes()]
        assert leaks == []
        assert marker not in [x.content for x in recent(m).messages]
        assert m.get_memory("semantic_search", query=marker, **OK).messages[0].content != gone.content
