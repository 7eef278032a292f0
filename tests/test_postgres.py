"""The PostgreSQL backend's own behaviour, beyond the contract suite (tests/contract): the
embedding queue claimed across workers, concurrent writers, the HNSW path and its filters,
schema versions, connection errors, fork, and ``localmem migrate``.

Every test here needs a PostgreSQL with pgvector (``postgres_url``: a fresh database of
the server tests/postgres_server.py starts, or of ``LOCALMEM_TEST_POSTGRES``'s); without
one they fail, they never skip.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time
from contextlib import closing

import numpy as np
import psycopg
import pytest
from hash_embedder import HashEmbedder

from localmem import Memory, Strategy
from localmem.backend import open_backend
from localmem.errors import CorruptDatabaseError, ReadOnlyError, StoreError
from localmem.postgres import SCHEMA_VERSION, PostgresStore, redact
from localmem.validate import new_message


def _msg(i: int, *, owner: str = "u1", conversation: str = "c1", text: str | None = None) -> object:
    return new_message("user", text if text is not None else f"message number {i} about topic {i % 7}",
                       conversation_id=conversation, owner_id=owner, msg_id=f"m{i}")


IDENTITY = {"name": "unit", "dim": 8, "sha256": None}


def _vector(seed: int, dim: int = 8) -> bytes:
    v = np.random.default_rng(seed).standard_normal(dim).astype("<f4")
    return (v / np.linalg.norm(v)).astype("<f4").tobytes()


# -- the embedding queue ----------------------------------------------------------------


def test_workers_claim_disjoint_batches(postgres_url):
    first, second, third = (PostgresStore(postgres_url) for _ in range(3))
    try:
        first.insert_many([_msg(i) for i in range(30)])
        a = first.pending_batch(10)
        b = second.pending_batch(10)
        c = third.pending_batch(10)
        ids = [i for i, _ in a + b + c]
        assert len(ids) == 30 and len(set(ids)) == 30  # no message claimed twice
        with closing(PostgresStore(postgres_url)) as fourth:
            assert fourth.pending_batch(10) == []  # all claimed, none free
        assert first.pending_count() == 30  # claimed is still pending until written
        written = first.write_vectors(IDENTITY, [i for i, _ in a], [_vector(i) for i, _ in a])
        assert written == 10 and first.pending_count() == 20
        # A vector for a message another worker already wrote is not written twice.
        assert second.write_vectors(IDENTITY, [i for i, _ in a], [_vector(i) for i, _ in a]) == 0
        assert first.vector_count() == 10
    finally:
        first.close()
        second.close()
        third.close()


def test_a_dead_workers_batch_is_claimed_after_its_lease(postgres_url):
    dead, alive = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        dead.insert_many([_msg(i) for i in range(5)])
        dead.claim_seconds = 0.5
        claimed = dead.pending_batch(5)
        assert len(claimed) == 5
        assert alive.pending_batch(5) == []  # leased
        deadline = time.monotonic() + 30
        again: list[tuple[int, str]] = []
        while not again and time.monotonic() < deadline:
            time.sleep(0.2)
            again = alive.pending_batch(5)
        assert sorted(again) == sorted(claimed)
    finally:
        alive.close()
        dead._pool = None  # "dies": its claims are not given back by close()
        dead.close()


def test_a_handle_retries_its_own_claim_and_close_gives_claims_back(postgres_url):
    worker, other = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        worker.insert_many([_msg(i) for i in range(4)])
        claimed = worker.pending_batch(4)
        assert worker.pending_batch(4) == claimed  # its own retry (the embedder failed, say)
        assert other.pending_batch(4) == []
        worker.close()
        assert sorted(other.pending_batch(4)) == sorted(claimed)
    finally:
        other.close()


def _embed_worker(url: str, done: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    store = PostgresStore(url)
    written = 0
    try:
        while batch := store.pending_batch(7):
            written += store.write_vectors(IDENTITY, [i for i, _ in batch], [_vector(i) for i, _ in batch])
    finally:
        store.close()
    done.put(written)


def test_worker_processes_embed_the_queue_once(postgres_url):
    with closing(PostgresStore(postgres_url)) as store:
        store.insert_many([_msg(i) for i in range(300)])
    ctx = multiprocessing.get_context("spawn")
    done = ctx.Queue()
    workers = [ctx.Process(target=_embed_worker, args=(postgres_url, done)) for _ in range(3)]
    for w in workers:
        w.start()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    counts = [done.get(timeout=5) for _ in workers]
    assert sum(counts) == 300  # every vector written once, by one worker
    with closing(PostgresStore(postgres_url)) as store:
        assert store.vector_count() == 300 and store.pending_count() == 0
        assert store.check_integrity() == "ok"


# -- concurrent writers -----------------------------------------------------------------


def _terms_consistent(url: str) -> int:
    """Messages whose stored keyword terms differ from what their neighbours give now."""
    from localmem.postgres import _CONFIG, _NEXT, _PREV, _TERMS_OF

    expected = _TERMS_OF.format(cfg=_CONFIG, own="m.content", prev=_PREV.format(col="content"),
                                next=_NEXT.format(col="content"))
    with psycopg.connect(url) as conn:
        conn.execute("SET search_path = localmem, public")
        return int(conn.execute(f"SELECT count(*) FROM localmem.messages m WHERE m.terms <> {expected}").fetchone()[0])


def test_concurrent_appends_to_one_conversation_keep_neighbours_right(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    errors: list[BaseException] = []

    def append(n: int, store: PostgresStore) -> None:
        try:
            for j in range(40):
                store.insert(_msg(n * 1000 + j, text=f"writer {n} line {j} word{j % 5}"))
        except Exception as exc:  # noqa: BLE001  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=append, args=(n, s)) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert not errors
        state = stores[0].conversation_state("u1", "c1")
        assert state is not None and state.message_count == 160
        assert _terms_consistent(postgres_url) == 0
        assert stores[0].check_integrity() == "ok"
    finally:
        for s in stores:
            s.close()


def test_the_same_msg_id_from_two_clients_is_stored_once(postgres_url):
    stores = [PostgresStore(postgres_url) for _ in range(4)]
    results: list[bool] = []
    barrier = threading.Barrier(4)

    def add(store: PostgresStore) -> None:
        barrier.wait()
        results.append(store.insert(_msg(1))[1])

    threads = [threading.Thread(target=add, args=(s,)) for s in stores]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    try:
        assert sorted(results) == [False, False, False, True]
        assert stores[0].counts()["messages"] == 1
    finally:
        for s in stores:
            s.close()


# -- vector search ----------------------------------------------------------------------


def _filled(url: str, n: int, *, conversations: int = 10, dim: int = 16) -> tuple[PostgresStore, np.ndarray]:
    store = PostgresStore(url)
    store.insert_many([new_message("user", f"text {i}", conversation_id=f"c{i % conversations}", owner_id="u1",
                                   msg_id=f"m{i}", created_at=None) for i in range(n)])
    vectors = np.random.default_rng(0).standard_normal((n, dim)).astype("<f4")
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    identity = {"name": "unit", "dim": dim, "sha256": None}
    batch = store.pending_batch(n)
    store.write_vectors(identity, [i for i, _ in batch], [vectors[int(text.split()[1])].tobytes() for _, text in batch])
    return store, vectors


def test_hnsw_search_with_filters_matches_exact(postgres_url):
    store, _ = _filled(postgres_url, 3000)
    try:
        rng = np.random.default_rng(1)
        overlap = []
        for _ in range(20):
            q = rng.standard_normal(16).astype("<f4")
            q /= np.linalg.norm(q)
            for conversation in (None, "c3"):
                exact = store.knn(q.tobytes(), 10, owner_id="u1", conversation_id=conversation, exact_max=10**9)
                approx = store.knn(q.tobytes(), 10, owner_id="u1", conversation_id=conversation, exact_max=0)
                assert len(approx) == 10  # the filter never starves the answer
                assert [c for _, c in approx] == sorted((c for _, c in approx), reverse=True)
                overlap.append(len({i for i, _ in exact} & {i for i, _ in approx}) / 10)
                if conversation is not None:
                    homes = store.conversation_ids([i for i, _ in approx])
                    assert set(homes.values()) == {"c3"}
        assert sum(overlap) / len(overlap) >= 0.9
    finally:
        store.close()


def test_a_selective_filter_falls_back_to_an_exact_answer(postgres_url):
    store, _ = _filled(postgres_url, 2000, conversations=1000)  # 2 messages per conversation
    try:
        q = _vector(5, 16)
        found = store.knn(q, 10, owner_id="u1", conversation_id="c7", exact_max=0)
        assert len(found) == 2
        assert set(store.conversation_ids([i for i, _ in found]).values()) == {"c7"}
        assert store.knn(q, 10, owner_id="nobody", exact_max=0) == []
    finally:
        store.close()


# -- schema, connections, read-only ------------------------------------------------------


def test_a_newer_schema_is_refused(postgres_url):
    PostgresStore(postgres_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute("UPDATE localmem.meta SET value = %s WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),))
    with pytest.raises(CorruptDatabaseError, match="newer"):
        PostgresStore(postgres_url)


def test_read_only_needs_a_schema_and_writes_nothing(postgres_url):
    with pytest.raises(ReadOnlyError, match="read-write"):
        PostgresStore(postgres_url, read_only=True)
    PostgresStore(postgres_url).close()
    store = PostgresStore(postgres_url, read_only=True)
    try:
        with pytest.raises(ReadOnlyError):
            store.insert(_msg(1))
        assert store.pending_batch(5) == []
        assert store.counts()["messages"] == 0
    finally:
        store.close()


def test_an_unreachable_server_is_a_store_error_without_the_password(tmp_path):
    url = f"postgresql://someone:s3cret@/nothing?host={tmp_path}"
    with pytest.raises(StoreError) as raised:
        open_backend(url, lock_timeout=1)
    assert "s3cret" not in str(raised.value)
    assert redact(url) == f"postgresql://someone:***@/nothing?host={tmp_path}"


def test_two_clients_binding_different_models_one_wins(postgres_url):
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        a.bind_embedder(IDENTITY)
        from localmem.errors import ModelMismatchError

        with pytest.raises(ModelMismatchError):
            b.bind_embedder({"name": "other", "dim": 8, "sha256": None})
    finally:
        a.close()
        b.close()


def _forked_child(url: str) -> None:
    with Memory(url, embedder=HashEmbedder(), embed="sync", cache_dir=os.environ["CHILD_CACHE"]) as m:
        m.add("user", "from the child", conversation_id="c1", owner_id="u1")


def test_a_forked_child_uses_its_own_connections(postgres_url, tmp_path):
    with Memory(postgres_url, embedder=HashEmbedder(), embed="sync", cache_dir=tmp_path / "cache") as m:
        m.add("user", "from the parent", conversation_id="c1", owner_id="u1")
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child
            code = 0
            try:
                m.add("user", "child through the parent's memory", conversation_id="c1", owner_id="u1")
            except Exception:  # noqa: BLE001  # any failure is the child's exit code
                code = 1
            os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        m.add("user", "parent again", conversation_id="c1", owner_id="u1")  # its pool still works
        texts = [x.content for x in m.messages(conversation_id="c1", owner_id="u1")]
        assert texts == ["from the parent", "child through the parent's memory", "parent again"]


# -- localmem migrate -------------------------------------------------------------------


def _run(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "localmem", *args], capture_output=True, text=True, env=env,
                          timeout=300, check=False)


def test_migrate_copies_messages_and_vectors_and_checks_them(postgres_url, tmp_path):
    source = str(tmp_path / "agent.db")
    with Memory(source, embedder=HashEmbedder(), embed="sync", cache_dir=tmp_path / "c1") as m:
        m.add_many([{"role": "user", "content": f"note {i}: the {['red', 'blue', 'green'][i % 3]} car {i % 11}",
                     "conversation_id": f"c{i % 4}", "owner_id": f"u{i % 2}", "metadata": {"i": i}}
                    for i in range(500)])
        m.add("assistant", "coração", conversation_id="c9", owner_id="u1")
        expected = m.get_memory(Strategy.SEMANTIC_SEARCH, query="blue car 7", conversation_id="c1", owner_id="u1",
                                limit=5)
    done = _run("migrate", "--from", source, "--to", postgres_url, "--sample", "30")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["messages"] == report["copied"] == 501 and report["vectors"] == 501
    assert report["counts_match"] and report["ok"] and report["knn_recall"] >= 0.9
    with closing(PostgresStore(postgres_url)) as copy:
        assert copy.check_integrity() == "ok"  # the HNSW index built at the end of the load
    again = json.loads(_run("migrate", "--from", source, "--to", postgres_url).stdout)
    assert again["copied"] == 0 and again["ok"]  # a second run changes nothing
    with Memory(postgres_url, embedder=HashEmbedder(), cache_dir=tmp_path / "c2") as pg:
        assert pg.stats()["pending_vectors"] == 0  # nothing to embed again
        got = pg.get_memory(Strategy.SEMANTIC_SEARCH, query="blue car 7", conversation_id="c1", owner_id="u1", limit=5)
        assert [x.msg_id for x in got.messages] == [x.msg_id for x in expected.messages]
        assert pg.get(expected.messages[0].msg_id).metadata == expected.messages[0].metadata


def test_migrate_refuses_a_msg_id_the_target_holds_with_other_fields(postgres_url, tmp_path):
    source = str(tmp_path / "agent.db")
    with Memory(source, embed="off", cache_dir=tmp_path / "c1") as m:
        m.add("user", "one thing", conversation_id="c1", owner_id="u1", msg_id="x")
    with Memory(postgres_url, embed="off", cache_dir=tmp_path / "c2") as pg:
        pg.add("user", "another thing", conversation_id="c1", owner_id="u1", msg_id="x")
    done = _run("migrate", "--from", source, "--to", postgres_url)
    assert done.returncode == 1 and "msg_id 'x' already exists" in done.stderr


def test_a_bulk_load_indexes_at_the_end_and_a_broken_one_is_finished_by_maintain(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.insert_many([_msg(i) for i in range(40)])
        batch = store.pending_batch(40)
        with store.bulk_load():
            store.write_vectors(IDENTITY, [i for i, _ in batch[:20]], [_vector(i) for i, _ in batch[:20]])
            assert "no HNSW index" in store.check_integrity()  # deferred while loading
            # searches are exact meanwhile: the nearest of a stored vector is itself
            assert store.knn(_vector(batch[0][0]), 1, owner_id="u1", exact_max=0)[0][0] == batch[0][0]
        assert store.check_integrity() == "ok"  # built at the end
        store.reset_vectors()
        batch = store.pending_batch(40)
        with pytest.raises(RuntimeError), store.bulk_load():
            store.write_vectors(IDENTITY, [i for i, _ in batch], [_vector(i) for i, _ in batch])
            raise RuntimeError("the load stops here")
        assert "no HNSW index" in store.check_integrity()
        assert store.refresh_vector_indexes() == (1, 0)  # what maintain() runs
        assert store.check_integrity() == "ok"
        assert store.knn(_vector(batch[3][0]), 1, owner_id="u1", exact_max=0)[0][0] == batch[3][0]
    finally:
        store.close()


def test_word_counts_are_reused_and_dropped_by_a_delete(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.insert_many([_msg(i, text=f"the quokka number {i}") for i in range(6)])
        assert [i for i, _ in store.keyword(['"quokka"', '"number"'], 3, owner_id="u1")]
        assert store._counts  # the words' counts, kept for the next search
        store.delete("m0")
        assert not store._counts  # a count would say the deleted words were there
        store.keyword(['"quokka"'], 3, owner_id="u1")
        store.forget("u1", None, None)
        assert not store._counts
    finally:
        store.close()


# -- found by review (each failed before its fix) ----------------------------------------


@pytest.mark.parametrize("url", [
    "postgresql://u:pw1@/db?host=/nowhere",
    "postgresql://u@/db?host=/nowhere&password=pw1",
    "postgresql:///db?host=/nowhere&sslpassword=pw1&password=pw1",
    "postgresql://u:Top%zzpw1@/db?host=/nowhere",
    "postgresql://u:pa#pw1@/db?host=/nowhere",  # libpq reads these as passwords, urllib not
    "postgresql://u:pa?pw1@/db?host=/nowhere",
    "postgresql://u@/db?host=/nowhere&%70assword=pw1",
    "postgresql://u:pa/pw1@/db",
    "host=/nowhere dbname=db user=u password=pw1",  # a keyword/value connection string
])
def test_no_secret_of_the_url_reaches_a_message(url):
    assert "pw1" not in redact(url)
    with pytest.raises(StoreError) as raised:
        open_backend(url, lock_timeout=1)
    assert "pw1" not in str(raised.value)


def test_another_clients_reset_leaves_stats_and_integrity_working(postgres_url):
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        a.insert_many([_msg(i) for i in range(3)])
        batch = a.pending_batch(3)
        a.write_vectors(IDENTITY, [i for i, _ in batch], [_vector(i) for i, _ in batch])
        assert b.vector_count() == 3
        a.reset_vectors()  # drops the vector table
        assert b.vector_count() == 0 and b.check_integrity() == "ok"
        with b.exporting(vectors=True) as exported:
            assert [v for batch in exported.batches for _, v in batch] == [None, None, None]
    finally:
        a.close()
        b.close()


def test_a_scope_token_never_comes_back_after_a_forget(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        empty = store.scope("u1", None).token
        store.insert(_msg(1))
        store.forget("u1", None, None)
        assert store.scope("u1", None).token != empty  # (an answer cached while it was empty)
        assert store.scope("u1", "c1").token != empty
    finally:
        store.close()


def test_a_long_message_with_long_neighbours_is_stored_and_found(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        words = " ".join(f"w{i}x" for i in range(120_000))  # ~900 KB, within max_content_bytes
        for i in range(4):
            store.insert(_msg(i, text=f"ocelot{i} " + words))
        assert [i for i, _ in store.keyword(['"ocelot3"'], 5, owner_id="u1")]
        assert store.check_integrity() == "ok"
    finally:
        store.close()


def test_a_bulk_load_finishes_the_index_an_earlier_one_left(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.insert_many([_msg(i) for i in range(10)])
        batch = store.pending_batch(10)
        with pytest.raises(RuntimeError), store.bulk_load():
            store.write_vectors(IDENTITY, [i for i, _ in batch[:5]], [_vector(i) for i, _ in batch[:5]])
            raise RuntimeError("stopped")
        with store.bulk_load():  # the re-run (localmem migrate again)
            store.write_vectors(IDENTITY, [i for i, _ in batch[5:]], [_vector(i) for i, _ in batch[5:]])
        assert store.check_integrity() == "ok"
    finally:
        store.close()


def test_forget_says_what_postgresql_keeps(postgres_url, tmp_path):
    with Memory(postgres_url, embed="off", cache_dir=tmp_path / "c") as m:
        m.add("user", "the vault code is 1234", conversation_id="c1", owner_id="u1")
        report = m.forget(owner_id="u1")
        assert not report.complete and report.pending[0].startswith("PostgreSQL:")


def test_read_only_reads_this_machines_strategy_log(postgres_url, tmp_path):
    with Memory(postgres_url, embed="off", cache_dir=tmp_path / "c") as m:
        m.add("user", "hello there", conversation_id="c1", owner_id="u1")
        m.get_memory(Strategy.RECENT_HISTORY, conversation_id="c1", owner_id="u1")
    with Memory(postgres_url, embed="off", cache_dir=tmp_path / "c", read_only=True) as r:
        assert r.strategy_stats().total_calls == 1


# -- found by the second review (/work/review16b) ----------------------------------------


def test_a_keyword_value_connection_string_is_postgresql_not_a_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(StoreError) as raised:
        Memory("host=/nowhere dbname=db user=u password=pw1", cache_dir=tmp_path / "c", lock_timeout=1)
    assert "pw1" not in str(raised.value) and "cannot connect to PostgreSQL" in str(raised.value)
    assert [p.name for p in tmp_path.iterdir()] == []  # no SQLite file named after it


def test_another_clients_forget_voids_the_remembered_word_counts(postgres_url, monkeypatch):
    import localmem.postgres as pg

    monkeypatch.setattr(pg, "_KEYWORD_BUDGET", 3)  # a word matching more than 3 messages is left out
    a, b = PostgresStore(postgres_url), PostgresStore(postgres_url)
    try:
        a.insert_many([_msg(i, owner="crowd", text=f"zebra crossing {i}") for i in range(5)])
        a.insert(_msg(101, text="apple pie"))  # (first: an apple-only search ranks these first)
        a.insert(_msg(102, text="apple tart"))
        a.insert(_msg(100, text="zebra apple"))
        # "zebra" matches 6 messages: past the budget, so only "apple" is searched
        assert a.keyword(['"zebra"', '"apple"'], 10, owner_id="u1")
        b.forget("crowd", None, None)  # now "zebra" is the rare word
        found = a.rows_by_id([i for i, _ in a.keyword(['"zebra"', '"apple"'], 1, owner_id="u1")])
        assert [r.content for r in found.values()] == ["zebra apple"]
    finally:
        a.close()
        b.close()


def test_one_owners_delete_leaves_another_owners_tokens(postgres_url):
    store = PostgresStore(postgres_url)
    try:
        store.insert(_msg(1, owner="alice"))
        store.insert_many([_msg(2, owner="bob"), _msg(3, owner="bob")])
        before = store.scope("alice", None).token
        store.delete("m2")  # bob keeps a message: no scope emptied
        assert store.scope("alice", None).token == before
        store.delete("m3")  # bob's last: his scope is emptied
        assert store.scope("bob", None).token != [0, *before[1:]]
    finally:
        store.close()


def test_maintain_with_vacuum_and_a_log_without_disk_tiers(postgres_url, tmp_path):
    with Memory(postgres_url, embed="off", cache_dir=tmp_path / "c", hot_window=0, query_cache_ttl=0) as m:
        m.add("user", "hello", conversation_id="c1", owner_id="u1")
        m.get_memory(Strategy.RECENT_HISTORY, conversation_id="c1", owner_id="u1")
        assert m.strategy_stats().total_calls == 1  # the log's folder is made though no tier made it
        report = m.maintain(vacuum=True)
        assert report.complete and report.integrity == "ok"


def test_without_the_extra_a_url_names_the_extra_to_install(monkeypatch):
    import sys

    from localmem.errors import InvalidInputError

    monkeypatch.delitem(sys.modules, "localmem.postgres", raising=False)
    monkeypatch.setitem(sys.modules, "psycopg", None)  # as if not installed
    with pytest.raises(InvalidInputError, match=r"pip install 'localmem-engine\[postgres\]'"):
        open_backend("postgresql://u@/db?host=/nowhere")
