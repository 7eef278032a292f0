"""The SQLite file: schema, versions, pragmas, durability options, FTS5, drivers, paths."""

from __future__ import annotations

import os
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest

import localmem
from localmem import CorruptDatabaseError, InvalidInputError, Memory, StoreError, driver
from localmem.store import MIGRATIONS, SCHEMA_VERSION

OK = dict(conversation_id="c1", owner_id="u1")


def raw(path):
    return driver.connect(str(path))


def test_fresh_file_has_schema_version_wal_and_expected_tables(db_path):
    with Memory(db_path) as m:
        m.add("user", "hi", **OK)
    conn = raw(db_path)
    try:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == len(MIGRATIONS)
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master")}
        assert {"messages", "messages_fts", "conversations", "meta",
                "messages_by_conversation", "messages_by_owner"} <= names
        plans = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE conversation_id = 'c1' AND owner_id = 'u1'"
            " ORDER BY created_at DESC, id DESC LIMIT 10"))
        assert "messages_by_conversation" in plans
        plans = " ".join(str(r) for r in conn.execute(
            "EXPLAIN QUERY PLAN SELECT * FROM messages WHERE owner_id = 'u1' ORDER BY created_at DESC"))
        assert "messages_by_owner" in plans
    finally:
        conn.close()


@pytest.mark.parametrize("durability, level", [("normal", 1), ("full", 2)])
def test_durability_sets_synchronous(db_path, durability, level):
    with Memory(db_path, durability=durability) as m:
        assert m._store._conn.execute("PRAGMA synchronous").fetchone()[0] == level


def test_bad_options_are_rejected(db_path):
    for kwargs in ({"durability": "fast"}, {"lock_timeout": 0}, {"lock_timeout": -1},
                   {"hot_window": -1}, {"max_content_bytes": 0}):
        with pytest.raises(InvalidInputError):
            Memory(db_path, **kwargs)


def test_messages_persist_across_reopen_in_order(db_path):
    base = datetime(2024, 1, 1, tzinfo=timezone.utc)
    with Memory(db_path) as m:
        for i in range(5):
            m.add("user", f"m{i}", created_at=base + timedelta(minutes=i), **OK)
    with Memory(db_path) as m:
        got = m.get_memory("recent_history", limit=10, lookback_days=None, **OK)
        assert [x.content for x in got.messages] == [f"m{i}" for i in range(5)]
        assert m.stats()["messages"] == 5


def test_ties_in_created_at_keep_insertion_order(mem):
    when = datetime(2024, 1, 1, tzinfo=timezone.utc)
    for i in range(12):
        mem.add("user", f"m{i}", created_at=when, **OK)
    got = mem.get_memory("recent_history", limit=12, lookback_days=None, **OK)
    assert [x.content for x in got.messages] == [f"m{i}" for i in range(12)]


def test_migration_from_an_older_version_runs_forward(db_path, monkeypatch):
    # A file at version 0 (empty) is migrated to the newest version on open, once.
    with Memory(db_path):
        pass
    with Memory(db_path) as m:
        assert m.stats()["schema_version"] == SCHEMA_VERSION
    extra = MIGRATIONS + (("CREATE TABLE migrated_marker (x)",),)
    monkeypatch.setattr(localmem.store, "MIGRATIONS", extra)
    monkeypatch.setattr(localmem.store, "SCHEMA_VERSION", len(extra))
    with Memory(db_path) as m:
        assert m._store._conn.execute("PRAGMA user_version").fetchone()[0] == len(extra)
        assert m._store._conn.execute("SELECT count(*) FROM migrated_marker").fetchone()[0] == 0


def test_newer_schema_is_refused(db_path):
    with Memory(db_path):
        pass
    conn = raw(db_path)
    conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(CorruptDatabaseError, match="newer"):
        Memory(db_path)


def test_not_a_database_file(db_path):
    db_path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(CorruptDatabaseError) as info:
        Memory(db_path)
    assert isinstance(info.value.__cause__, driver.dbapi().DatabaseError)


def test_foreign_sqlite_database_is_refused_not_modified(db_path):
    conn = sqlite3.connect(db_path)
    conn.execute("CREATE TABLE theirs (x)")
    conn.commit()
    conn.close()
    with pytest.raises(CorruptDatabaseError, match="not a localmem"):
        Memory(db_path)
    conn = sqlite3.connect(db_path)
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["theirs"]
    conn.close()


def test_missing_directory_is_a_store_error(tmp_path):
    with pytest.raises(StoreError):
        Memory(tmp_path / "no" / "such" / "dir" / "m.db")


def test_in_memory_database(tmp_path):
    with Memory(":memory:") as m:
        m.add("user", "hi", **OK)
        assert m.get_memory("recent_history", **OK).messages[0].content == "hi"
        cache_dir = m._hot.directory
        assert cache_dir.exists()
    assert not cache_dir.exists()  # an in-memory database's cache goes with it


def test_default_path_is_in_the_user_data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    monkeypatch.setenv("HOME", str(tmp_path))
    with Memory() as m:
        assert m.path == str(tmp_path / "data" / "localmem" / "memory.db")
        m.add("user", "hi", **OK)
    assert os.path.exists(tmp_path / "data" / "localmem" / "memory.db")


def test_messages_are_immutable_in_the_file(mem, db_path):
    stored = mem.add("user", "hi", **OK)
    conn = raw(db_path)
    try:
        with pytest.raises(driver.dbapi().DatabaseError, match="immutable"):
            conn.execute("UPDATE messages SET content = 'changed' WHERE msg_id = ?", (stored.msg_id,))
    finally:
        conn.close()


def fts(db_path, query):
    conn = raw(db_path)
    try:
        return [r[0] for r in conn.execute(
            "SELECT m.content FROM messages_fts JOIN messages m ON m.id = messages_fts.rowid"
            " WHERE messages_fts.content MATCH ? ORDER BY m.id", (query,))]
    finally:
        conn.close()


def test_fts_index_written_with_the_message_and_folds_accents(mem, db_path):
    mem.add("user", "Adoro pizza napolitana, é o meu coração", **OK)
    mem.add("user", "The café near the station", **OK)
    mem.add_many([{"role": "user", "content": "Ação e reação"}], **OK)
    assert fts(db_path, "coracao") == ["Adoro pizza napolitana, é o meu coração"]
    assert fts(db_path, "coração") == ["Adoro pizza napolitana, é o meu coração"]
    assert fts(db_path, "cafe") == ["The café near the station"]
    assert fts(db_path, "ACAO") == ["Ação e reação"]
    assert mem.check_integrity() == "ok"


def test_deleting_a_message_removes_its_fts_row_and_changes_the_version(mem, db_path):
    stored = mem.add("user", "unique zebra words", **OK)
    before = mem._store.conversation_state("u1", "c1")
    conn = raw(db_path)
    conn.execute("DELETE FROM messages WHERE msg_id = ?", (stored.msg_id,))
    conn.close()
    assert fts(db_path, "zebra") == []
    after = mem._store.conversation_state("u1", "c1")
    # Even a delete through a raw connection (no write stamp of localmem's) changes it.
    assert after.version != before.version and after.message_count == 0
    assert mem.check_integrity() == "ok"


def test_conversations_are_keyed_by_owner_too(mem):
    mem.add("user", "alice's", conversation_id="shared", owner_id="alice")
    mem.add("user", "bob's", conversation_id="shared", owner_id="bob")
    for owner, text in (("alice", "alice's"), ("bob", "bob's")):
        got = mem.get_memory("recent_history", conversation_id="shared", owner_id=owner)
        assert [x.content for x in got.messages] == [text]
    assert mem.stats()["conversations"] == 2 and mem.stats()["owners"] == 2


def test_generated_msg_ids_are_unique_and_time_sortable(mem):
    ids = [mem.add("user", f"m{i}", **OK).msg_id for i in range(200)]
    assert len(set(ids)) == 200
    assert all(len(i) == 26 for i in ids)
    assert [i[:10] for i in ids] == sorted(i[:10] for i in ids)  # the time part never goes back


def test_forced_stdlib_driver_without_extension_loading_says_why(monkeypatch):
    monkeypatch.setenv("LOCALMEM_SQLITE_DRIVER", "sqlite3")
    driver.dbapi.cache_clear()
    try:
        if driver._usable(sqlite3):
            assert driver.dbapi() is sqlite3
        else:
            with pytest.raises(ImportError, match="cannot load"):
                driver.dbapi()
    finally:
        monkeypatch.delenv("LOCALMEM_SQLITE_DRIVER")
        driver.dbapi.cache_clear()


def test_the_chosen_driver_loads_sqlite_vec():
    import sqlite_vec

    conn = driver.connect(":memory:")
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)
        assert conn.execute("SELECT vec_version()").fetchone()[0].startswith("v")
    finally:
        conn.close()


def prev_column(db_path, column: str = "prev") -> dict[str, str | None]:
    conn = raw(db_path)
    try:
        return dict(conn.execute(
            f"SELECT m.content, f.{column} FROM messages m JOIN messages_fts f ON f.rowid = m.id"
        ).fetchall())
    finally:
        conn.close()


def next_column(db_path) -> dict[str, str | None]:
    return prev_column(db_path, "next")


def test_the_keyword_index_knows_each_messages_predecessor(mem, db_path):
    from datetime import datetime, timedelta, timezone

    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    mem.add("user", "first", created_at=t0, **OK)
    mem.add("user", "third", created_at=t0 + timedelta(minutes=2), **OK)
    mem.add("user", "elsewhere", conversation_id="c2", owner_id="u1", created_at=t0)
    assert prev_column(db_path) == {"first": None, "third": "first", "elsewhere": None}
    assert next_column(db_path) == {"first": "third", "third": None, "elsewhere": None}
    mem.add("user", "second", created_at=t0 + timedelta(minutes=1), msg_id="m2", **OK)  # backdated
    assert prev_column(db_path) == {"first": None, "second": "first", "third": "second", "elsewhere": None}
    assert next_column(db_path) == {"first": "second", "second": "third", "third": None, "elsewhere": None}
    mem.add_many([{"role": "user", "content": "zero", "created_at": t0 - timedelta(minutes=1)},
                  {"role": "user", "content": "fourth", "created_at": t0 + timedelta(minutes=3)}], **OK)
    assert prev_column(db_path)["first"] == "zero" and prev_column(db_path)["fourth"] == "third"
    assert next_column(db_path)["zero"] == "first" and next_column(db_path)["third"] == "fourth"
    assert next_column(db_path)["fourth"] is None
    assert mem.delete("m2")
    assert prev_column(db_path)["third"] == "first" and next_column(db_path)["first"] == "third"
    assert mem.check_integrity() == "ok"
    # A reply is found by the words of the message it answers, and a message by the words
    # of its reply (each at half weight).
    got = mem._store.keyword('"third"', 10, owner_id="u1", conversation_id="c1")
    found = [mem._store.rows_by_id([i])[i].content for i, _ in got]
    assert found[0] == "third" and sorted(found[1:]) == ["first", "fourth"]


@pytest.mark.parametrize("column, neighbour", [("next", "two"), ("prev", "one")])
def test_integrity_check_notices_a_stale_neighbour(mem, db_path, column, neighbour):
    mem.add("user", "one", **OK)
    mem.add("user", "two", **OK)
    conn = raw(db_path)
    conn.execute(f"UPDATE messages_fts SET {column} = 'wrong' WHERE {column} = ?", (neighbour,))
    conn.close()
    assert "previous or next message" in mem.check_integrity()


def test_integrity_check_notices_a_message_without_its_fts_row(mem, db_path):
    mem.add("user", "indexed", **OK)
    mem.add_many([{"role": "user", "content": f"bulk {i}"} for i in range(5)], **OK)
    assert mem.check_integrity() == "ok"
    conn = raw(db_path)
    conn.execute("INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at)"
                 " VALUES ('sneaky', 'c1', 'u1', 'user', 'not indexed', 0)")
    conn.close()
    assert mem.check_integrity() != "ok"


def test_a_full_database_raises_storage_full_and_keeps_what_was_stored(mem):
    from localmem import StorageFullError

    kept = mem.add("user", "before the disk filled", **OK)
    pages = mem._store._conn.execute("PRAGMA page_count").fetchone()[0]
    mem._store._conn.execute(f"PRAGMA max_page_count = {pages + 2}")
    with pytest.raises(StorageFullError) as info:
        mem.add_many([{"role": "user", "content": "x" * 4000} for _ in range(50)], **OK)
    assert isinstance(info.value.__cause__, driver.dbapi().Error)
    assert mem.stats()["messages"] == 1 and mem.get(kept.msg_id) == kept
    assert mem.check_integrity() == "ok"


# -- hazards from the reliability review (issue 9) ----------------------------------------


def test_a_file_with_two_hard_links_is_refused(db_path, tmp_path):
    with Memory(db_path) as m:
        m.add("user", "hi", **OK)
    other = tmp_path / "other-name.db"
    os.link(db_path, other)
    for path in (db_path, other):
        with pytest.raises(StoreError, match="2 hard links"):
            Memory(path)
    os.unlink(other)
    with Memory(db_path) as m:  # one name again: fine
        assert m.stats()["messages"] == 1


def test_a_symbolic_link_is_fine(db_path, tmp_path):
    with Memory(db_path) as m:
        m.add("user", "hi", **OK)
    link = tmp_path / "link.db"
    link.symlink_to(db_path)
    with Memory(link, embed="off") as m:  # SQLite resolves it: one WAL for both names
        m.add("user", "through the link", **OK)
    with Memory(db_path, embed="off") as m:
        assert m.stats()["messages"] == 2 and m.check_integrity() == "ok"


@pytest.fixture
def embedded(db_path):
    """A file with 300 embedded messages over 3 owners (several vec0 chunks), closed."""
    from hash_embedder import HashEmbedder

    with Memory(db_path, embedder=HashEmbedder()) as m:
        m.add_many({"role": "user", "content": f"message {i}", "conversation_id": f"c{i % 4}",
                    "owner_id": f"u{i % 3}"} for i in range(300))
        m.flush(timeout=60)
        assert m.check_integrity() == "ok"
    return db_path


DAMAGE = [
    # (what, SQL run on the closed file, words the report must hold)
    ("a chunk's validity bits cleared",
     "UPDATE message_vectors_chunks SET validity = zeroblob(length(validity)) WHERE chunk_id = 1",
     "the search sees"),
    ("a chunk's vectors truncated",
     "UPDATE message_vectors_vector_chunks00 SET vectors = substr(vectors, 1, 100) WHERE rowid = 2",
     "chunks of the vector table are damaged"),
    ("a vector's row lost",
     "DELETE FROM message_vectors_rowids WHERE rowid = 7",
     "no vector and are not queued"),
    ("a vector without its message",
     "DELETE FROM messages_fts WHERE rowid = 8; DROP TRIGGER messages_after_delete_vector;"
     " DROP TRIGGER messages_after_delete; DELETE FROM messages WHERE id = 8",
     "belong to no message"),
    ("a message both queued and embedded",
     "INSERT INTO pending_vectors (id) VALUES (9)",
     "counted twice"),
    ("a vector filed under another owner",
     "UPDATE message_vectors SET conversation_id = 'elsewhere' WHERE rowid = 10",
     "disagree with their message"),
]


@pytest.mark.parametrize("sql, words", [d[1:] for d in DAMAGE], ids=[d[0] for d in DAMAGE])
def test_check_integrity_finds_damaged_vectors(embedded, sql, words):
    conn = raw(embedded)
    conn.executescript(sql)
    conn.close()
    with Memory(embedded, embed="off") as m:
        assert words in m.check_integrity()


def test_check_integrity_counts_times_no_datetime_can_hold(db_path):
    with Memory(db_path, embed="off") as m:
        m.add("user", "fine", **OK)
    conn = raw(db_path)
    conn.execute(  # as a localmem that did not check the range could write it
        "INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at)"
        " VALUES ('far', 'c1', 'u1', 'user', 'year zero', ?)", (-62135596800 * 10**6 - 1,)
    )
    conn.execute("INSERT INTO messages_fts (rowid, content, prev, next) SELECT id, content, 'fine', NULL FROM messages WHERE msg_id = 'far'")
    conn.close()
    with Memory(db_path, embed="off") as m:
        assert "1 have a created_at outside the years 1 to 9999" in m.check_integrity()
        with pytest.raises(CorruptDatabaseError, match="created_at"):
            m.get("far")
        assert m.delete("far")  # and it can be removed
        assert m.check_integrity() == "ok"


def test_check_integrity_after_another_connection_wrote(db_path):
    """SQLite's integrity check of FTS5 on a connection that read the index before another
    one changed it reports a healthy index as malformed: localmem checks on a fresh one."""
    with Memory(db_path, embed="off") as a, Memory(db_path, embed="off") as b:
        a.add("user", "first words", **OK)
        assert a.check_integrity() == "ok"
        b.add("user", "more words", **OK)
        b.delete(b.get_memory("recent_history", **OK).messages[0].msg_id)
        assert a.check_integrity() == "ok"


def test_a_version_4_file_gets_the_next_column(db_path):
    """A file written before the keyword index had ``next`` is rebuilt with it on open."""
    conn = driver.connect(str(db_path))
    for statements in MIGRATIONS[:4]:
        for sql in statements:
            conn.execute(sql)
    conn.executemany(
        "INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at) VALUES (?, ?, 'u1', 'user', ?, ?)",
        [("a", "c1", "question about turtles?", 1), ("b", "c1", "yes, two of them", 2), ("c", "c2", "alone", 1)],
    )
    conn.execute("INSERT INTO messages_fts (rowid, content, prev) SELECT id, content, NULL FROM messages")
    conn.execute("UPDATE messages_fts SET prev = 'question about turtles?' WHERE content = 'yes, two of them'")
    conn.execute("INSERT INTO meta VALUES ('instance_id', 'x')")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()
    with Memory(db_path, embed="off") as mem:
        assert mem.stats()["schema_version"] == SCHEMA_VERSION
        assert mem.check_integrity() == "ok"
    assert next_column(db_path) == {"question about turtles?": "yes, two of them", "yes, two of them": None, "alone": None}
    assert prev_column(db_path)["yes, two of them"] == "question about turtles?"


def test_forget_rewrites_the_neighbours_keyword_rows_from_the_survivors(mem, db_path):
    """Forgetting the older part of a conversation: the first survivor's ``prev`` is then
    nothing, and no keyword row ever held the forgotten text (its neighbours' rows are
    written again from the survivors, not repointed one deleted row at a time)."""
    t0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
    for i, text in enumerate(["gone one", "gone two", "kept one", "kept two"]):
        mem.add("user", text, created_at=t0 + timedelta(days=i), **OK)
    mem.add("user", "other chat", conversation_id="c2", owner_id="u1", created_at=t0)
    report = mem.forget(owner_id="u1", before=t0 + timedelta(days=2))
    assert report.messages == 3
    assert prev_column(db_path) == {"kept one": None, "kept two": "kept one"}
    assert next_column(db_path) == {"kept one": "kept two", "kept two": None}
    assert mem.check_integrity() == "ok"


def test_keyword_terms_leave_out_pieces_of_contractions():
    from localmem.retrieval import keyword_terms

    # "Nate's" and "don't" split into "nate" "s" and "don" "t": the pieces match most
    # messages and find nothing; single letters alike ("plan b"), unless nothing else is left.
    assert keyword_terms("What is Nate's plan b? I don't know, I'll see") == ['"nate"', '"plan"', '"don"', '"know"', '"see"']
    assert keyword_terms("s") == ['"s"']
    assert keyword_terms("the") == ['"the"']
    assert keyword_terms("日 本") == ['"日"', '"本"']  # one letter of another script is a word
    assert keyword_terms("...") == []


def test_keyword_leaves_out_the_commonest_words_beyond_the_budget(mem, monkeypatch):
    from localmem import store as store_module

    mem.add_many([{"role": "user", "content": f"common filler {i}"} for i in range(30)], **OK)
    mem.add_many([{"role": "user", "content": "common and rare"}, {"role": "user", "content": "rare alone"}], **OK)
    mem.add("user", "uncommon word", **OK)
    content = lambda got: sorted(mem._store.rows_by_id([i])[i].content for i, _ in got)
    terms = ['"common"', '"rare"', '"uncommon"']
    everything = mem._store.keyword(terms, 100, owner_id="u1")
    assert len(everything) == 33  # every message matches (its own words or a neighbour's)
    monkeypatch.setattr(store_module, "KEYWORD_BUDGET", 10)
    # "uncommon" and "rare" match 2 + 4 rows with their neighbours' words; "common" 32: left out.
    got = mem._store.keyword(terms, 100, owner_id="u1")
    assert "common filler 3" not in content(got)
    assert {"common and rare", "rare alone", "uncommon word"} <= set(content(got))
    assert mem._store.keyword(terms, 100, owner_id="u1") == got  # the same choice each time
    # The rarest word is kept however common: "filler" (31 rows) before "common" (32), both
    # over the budget, told apart by a longer count.
    got = mem._store.keyword(['"common"', '"filler"'], 100, owner_id="u1")
    assert len(got) == 31 and "rare alone" not in content(got)
    # An expression given whole is searched as it is.
    assert len(mem._store.keyword('"common" OR "filler"', 100, owner_id="u1")) == 32

