"""The approximate index of large owners (localmem/vector_index.py) through Store.knn:
its answers against sqlite-vec's exact ones, the log of what changed since its file, and
what forget, a new model, a damaged file and a read-only store do to it."""

from __future__ import annotations

import logging
import os
import time
from datetime import datetime, timezone

import numpy as np
import pytest

from localmem import vector_index
from localmem.store import Store
from localmem.validate import new_message

DIM = 32
N = 6000
IDENTITY = {"name": "t", "dim": DIM, "sha256": None}
EXACT = 10**9  # knn(exact_max=EXACT) on a store whose index_min is past the size: sqlite-vec, exact


def unit(rows: np.ndarray) -> np.ndarray:
    return (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def vectors() -> np.ndarray:
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((40, DIM))
    return unit(centres[rng.integers(0, 40, N)] + rng.standard_normal((N, DIM)) * 0.5)


def conversation(i: int) -> str:
    return "tiny" if i % 50 == 0 else f"c{i % 3}"


def fill(path, vectors) -> Store:
    store = Store(str(path))
    store.insert_many([new_message("user", f"m{i}", conversation_id=conversation(i), owner_id="u",
                                   created_at=datetime.fromtimestamp(1_700_000_000 + i, timezone.utc)) for i in range(N)])
    batch = store.pending_batch(N)
    store.write_vectors(IDENTITY, [i for i, _ in batch], [vectors[i - 1].tobytes() for i, _ in batch])
    return store


@pytest.fixture
def built(tmp_path, vectors):
    """A store of 6000 messages whose owner has an index file (index_min lowered)."""
    store = fill(tmp_path / "a.db", vectors)
    store.index_min = 1000
    assert store.build_vector_index("u")
    yield store
    store.close()


def exact_ids(path, q, **scope) -> list[int]:
    plain = Store(str(path))
    try:
        plain.index_min = EXACT
        return [i for i, _ in plain.knn(q, 10, owner_id="u", exact_max=EXACT, **scope)]
    finally:
        plain.close()


def query(vectors, i: int, noise: float = 0.05) -> bytes:
    rng = np.random.default_rng(i)
    return unit(vectors[i][None] + rng.standard_normal((1, DIM)) * noise)[0].tobytes()


@pytest.mark.parametrize("scope", [{}, {"conversation_id": "c1"}, {"conversation_id": "tiny"},
                                   {"since_us": (1_700_000_000 + 4000) * 1_000_000}])
def test_the_index_answers_what_exact_search_does(built, vectors, scope):
    path = built.path
    found = 0
    for i in range(0, N, 600):
        q = query(vectors, i)
        got = built.knn(q, 10, owner_id="u", **scope)
        assert "u" in built._indexes  # answered by the index, not sqlite-vec
        exact = exact_ids(path, q, **scope)
        found += len(set(exact) & {j for j, _ in got})
        # Scores are the cosines (of the float16 copies: within 2e-4), best first.
        for row_id, score in got:
            assert score == pytest.approx(float(vectors[row_id - 1] @ np.frombuffer(q, np.float32)), abs=2e-4)
        assert [s for _, s in got] == sorted((s for _, s in got), reverse=True)
        rows = built.rows_by_id([j for j, _ in got])
        if "conversation_id" in scope:
            assert {r.conversation_id for r in rows.values()} <= {scope["conversation_id"]}
        if "since_us" in scope:
            assert min(r.created_us for r in rows.values()) >= scope["since_us"]
    assert found / (10 * len(range(0, N, 600))) >= 0.95


def test_changes_after_the_file_are_searched_here_and_in_another_store(built, vectors):
    q = query(vectors, 7)
    first = built.knn(q, 10, owner_id="u")[0][0]
    built.insert_many([new_message("user", "new", conversation_id="c1", owner_id="u")])
    batch = built.pending_batch(10)
    built.write_vectors(IDENTITY, [i for i, _ in batch], [q for _ in batch])
    new_id = batch[0][0]
    built.delete(built.rows_by_id([first])[first].msg_id)
    other = Store(str(built.path))  # another process's view: the same file, the same log
    other.index_min = 1000
    try:
        for store in (built, other):
            got = [i for i, _ in store.knn(q, 10, owner_id="u")]
            assert got[0] == new_id and first not in got
            assert store._indexes["u"].changes == 2
            assert new_id in [i for i, _ in store.knn(q, 10, owner_id="u", conversation_id="c1")]
    finally:
        other.close()


def test_a_new_file_takes_the_changes_in_and_trims_the_log(built, vectors):
    q = query(vectors, 11)
    built.knn(q, 10, owner_id="u")
    victims = [i for i, _ in built.knn(q, 5, owner_id="u")]
    for row_id in victims:
        built.delete(built.rows_by_id([row_id])[row_id].msg_id)
    assert len(built._query("SELECT * FROM vector_log")) == 5
    old = built._query("SELECT file, trained FROM vector_indexes")[0]
    assert built.build_vector_index("u")
    new = built._query("SELECT file, trained FROM vector_indexes")[0]
    assert new[0] != old[0] and new[1] == old[1]  # a merge: the lists are kept
    assert built._query("SELECT * FROM vector_log") == []
    assert sorted(p.name for p in built.index_dir.glob("*.ivf")) == [new[0]]  # the old file went
    got = [i for i, _ in built.knn(q, 10, owner_id="u")]
    assert not set(victims) & set(got)
    assert built._indexes["u"].base.count == N - 5 and built._indexes["u"].changes == 0


def test_forget_removes_the_owners_file_at_once(built, vectors):
    q = query(vectors, 3)
    built.knn(q, 10, owner_id="u")
    built.forget("u", "c1", None)
    assert list(built.index_dir.glob("*.ivf")) == []
    assert built._query("SELECT count(*) FROM vector_indexes")[0][0] == 0
    got = built.knn(q, 10, owner_id="u")  # sqlite-vec meanwhile; a build starts in the background
    rows = built.rows_by_id([i for i, _ in got])
    assert rows and all(r.conversation_id != "c1" for r in rows.values())
    assert built.build_vector_index("u")
    assert all(built.rows_by_id([i])[i].conversation_id != "c1" for i, _ in built.knn(q, 10, owner_id="u"))


def test_a_new_vector_space_drops_the_files(built, vectors):
    built.reset_vectors()
    assert list(built.index_dir.glob("*.ivf")) == []
    assert built._query("SELECT count(*) FROM vector_indexes")[0][0] == 0
    assert built.knn(query(vectors, 1), 10, owner_id="u") == []  # no vector yet: nothing is near


def test_a_damaged_file_is_not_used_and_is_built_anew(built, vectors, caplog):
    q = query(vectors, 5)
    expected = exact_ids(built.path, q)
    (path,) = built.index_dir.glob("*.ivf")
    built.close()
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)
    damaged = path.stat().st_size
    store = Store(str(built.path))
    store.index_min = 1000
    try:
        with caplog.at_level(logging.WARNING, logger="localmem.store"):
            got = [i for i, _ in store.knn(q, 10, owner_id="u", exact_max=EXACT)]
        assert got == expected  # sqlite-vec answered
        assert "unreadable" in caplog.text
        deadline = time.monotonic() + 60
        while store._index_builds and time.monotonic() < deadline:
            time.sleep(0.05)
        (fresh,) = store.index_dir.glob("*.ivf")
        assert fresh.stat().st_size > damaged and vector_index.IndexFile(fresh).verify() == []
        store.knn(q, 10, owner_id="u")
        assert "u" in store._indexes
    finally:
        store.close()


def test_a_large_owner_gets_its_file_in_the_background(tmp_path, vectors):
    store = fill(tmp_path / "b.db", vectors)
    store.index_min = 1000
    try:
        q = query(vectors, 9)
        assert len(store.knn(q, 10, owner_id="u")) == 10  # sqlite-vec, while the build runs
        deadline = time.monotonic() + 60
        while not store._query("SELECT file FROM vector_indexes WHERE file IS NOT NULL") \
                and time.monotonic() < deadline:
            time.sleep(0.05)
        store.knn(q, 10, owner_id="u")
        assert "u" in store._indexes
    finally:
        store.close()


def test_a_read_only_store_searches_the_file_and_builds_nothing(built, vectors):
    q = query(vectors, 2)
    built.insert_many([new_message("user", "late", conversation_id="c2", owner_id="u")])
    batch = built.pending_batch(10)
    built.write_vectors(IDENTITY, [i for i, _ in batch], [q for _ in batch])
    ro = Store(str(built.path), read_only=True)
    ro.index_min = 1000
    try:
        assert ro.knn(q, 1, owner_id="u")[0][0] == batch[0][0]
        assert "u" in ro._indexes and not ro._index_builds
        with pytest.raises(Exception, match="read-only"):
            ro.build_vector_index("u")
    finally:
        ro.close()


def test_a_build_that_dies_leaves_the_published_file_in_place(built, vectors, monkeypatch):
    (published,) = built.index_dir.glob("*.ivf")

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(vector_index.os, "replace", fail)
    with pytest.raises(OSError, match="disk full"):
        built.build_vector_index("u")
    monkeypatch.undo()
    assert [p.name for p in built.index_dir.glob("*.ivf")] == [published.name]
    assert not list(built.index_dir.glob(".building-*"))  # its temporary file was removed
    assert built._query("SELECT file FROM vector_indexes")[0][0] == published.name
    (built.index_dir / f".building-{vector_index.owner_key('u')}-x.ivf").write_bytes(b"partial")
    assert built.build_vector_index("u")  # the next builder clears what a killed one left
    assert not list(built.index_dir.glob(".building-*"))


def test_the_file_format_checks_itself(built):
    (path,) = built.index_dir.glob("*.ivf")
    assert vector_index.IndexFile(path).verify() == []
    codes_at = vector_index.IndexFile(path).header["arrays"]["codes"][2]
    with open(path, "r+b") as f:
        f.seek(codes_at + 100)
        f.write(b"\x7f" * 10)
    assert vector_index.IndexFile(path).verify()
    path.write_bytes(b"not an index at all")
    with pytest.raises(ValueError, match="not a localmem vector index"):
        vector_index.IndexFile(path)


def test_an_in_memory_store_keeps_no_index(vectors):
    store = Store(":memory:")
    try:
        assert store.index_dir is None
        with pytest.raises(Exception, match="in-memory"):
            store.build_vector_index("u")
    finally:
        store.close()


def test_cosines_of_keyword_candidates_come_from_the_index(built, vectors):
    q = query(vectors, 4)
    built.knn(q, 10, owner_id="u")  # opens the index
    built.insert_many([new_message("user", "late", conversation_id="c2", owner_id="u")])
    batch = built.pending_batch(10)
    built.write_vectors(IDENTITY, [i for i, _ in batch], [vectors[0].tobytes() for _ in batch])
    gone = 17
    built.delete(built.rows_by_id([gone])[gone].msg_id)
    ids = [3, 500, 4999, batch[0][0], gone]
    got = built.cosines(q, ids, owner_id="u")
    assert set(got) == {3, 500, 4999, batch[0][0]}
    qv = np.frombuffer(q, np.float32)
    for row_id, score in got.items():
        vector = vectors[0] if row_id == batch[0][0] else vectors[row_id - 1]
        assert score == pytest.approx(float(vector @ qv), abs=2e-4)
    assert built.cosines(q, ids) == pytest.approx(got, abs=2e-4)  # without the owner: sqlite-vec's


def test_maintain_writes_changed_files_anew_and_removes_orphans(built, vectors):
    (published,) = built.index_dir.glob("*.ivf")
    orphan = built.index_dir / f"{vector_index.owner_key('gone')}-g1-s1.ivf"
    orphan.write_bytes(b"left by a build that died before publishing")
    assert built.refresh_vector_indexes() == (0, 1)  # nothing changed: the file stays
    assert [p.name for p in built.index_dir.glob("*.ivf")] == [published.name]
    built.delete(built.rows_by_id([42])[42].msg_id)
    assert built.refresh_vector_indexes() == (1, 0)  # the deleted vector's codes go (the old file with them)
    (fresh,) = built.index_dir.glob("*.ivf")
    assert fresh.name != published.name and vector_index.IndexFile(fresh).count == N - 1
    assert built._query("SELECT count(*) FROM vector_log")[0][0] == 0


def test_rows_of_lists_are_the_runs_in_the_order_asked():
    offsets = np.array([0, 3, 3, 7, 10])
    assert vector_index._rows_of_lists(offsets, np.array([2, 0, 1, 3])).tolist() == [3, 4, 5, 6, 0, 1, 2, 7, 8, 9]
    assert vector_index._rows_of_lists(offsets, np.array([], np.int64)).tolist() == []
    assert vector_index.probe_rows(100) == vector_index.PROBE_ROWS
    assert vector_index.probe_rows(1_000_000) == 12_000


def test_a_process_holding_the_file_never_answers_what_another_forgot(built, vectors):
    q = query(vectors, 1)  # near message 2, of c1
    c1 = {r[0] for r in built._query("SELECT id FROM messages WHERE conversation_id = 'c1'")}
    assert {i for i, _ in built.knn(q, 10, owner_id="u")} & c1
    other = Store(str(built.path))  # another process: forgets, then builds at once
    other.index_min = 1000
    try:
        old = built._query("SELECT file FROM vector_indexes")[0][0]
        other.forget("u", "c1", None)
        assert other.build_vector_index("u")
        assert other._query("SELECT file FROM vector_indexes")[0][0] != old  # (a forget logs nothing)
    finally:
        other.close()
    assert not {i for i, _ in built.knn(q, 10, owner_id="u")} & c1


def test_a_forked_child_does_not_keep_the_build_lock(tmp_path):
    folder = tmp_path / "idx"
    ready, tell = os.pipe()
    with vector_index.owner_lock(folder, "u", wait=True) as held:
        assert held
        pid = os.fork()
        if pid == 0:  # the child lives on past the parent's build (its fork hooks have run)
            os.write(tell, b"x")
            time.sleep(30)
            os._exit(0)
    os.read(ready, 1)
    try:
        with vector_index.owner_lock(folder, "u", wait=False) as again:
            assert again  # the child's copy was closed at fork
    finally:
        os.kill(pid, 9)
        os.waitpid(pid, 0)


def test_a_background_build_waits_for_the_vectors(tmp_path, vectors):
    store = Store(str(tmp_path / "c.db"))
    try:
        store.insert_many([new_message("user", f"m{i}", conversation_id="c", owner_id="u") for i in range(3000)])
        batch = store.pending_batch(64)  # most messages still wait for their vector
        store.write_vectors(IDENTITY, [i for i, _ in batch], [vectors[i].tobytes() for i, _ in batch])
        assert not store.build_vector_index("u", at_least=1000)
        assert store._query("SELECT count(*) FROM vector_indexes")[0][0] == 0  # not even registered
        store.index_min = 1000
        store.knn(query(vectors, 1), 5, owner_id="u")  # starts the background build, which declines
        deadline = time.monotonic() + 30
        while store._index_builds and time.monotonic() < deadline:
            time.sleep(0.02)
        assert "u" in store._index_retry_at  # and is not tried again on every search
        assert store._query("SELECT count(*) FROM vector_indexes")[0][0] == 0
    finally:
        store.close()


def test_a_file_damaged_inside_its_arrays_is_refused_at_open(built, vectors):
    (path,) = built.index_dir.glob("*.ivf")
    offsets_at = vector_index.IndexFile(path).header["arrays"]["offsets"][2]
    built.close()
    with open(path, "r+b") as f:
        f.seek(offsets_at + 8)
        f.write(np.int64(-5).tobytes())
    with pytest.raises(ValueError, match="offsets"):
        vector_index.IndexFile(path)
    store = Store(str(built.path))
    store.index_min = 1000
    try:
        q = query(vectors, 8)
        assert [i for i, _ in store.knn(q, 10, owner_id="u", exact_max=EXACT)] == exact_ids(built.path, q)
    finally:
        store.close()


def test_maintain_drops_the_file_of_an_owner_below_index_min_and_spares_builds_in_progress(built, vectors):
    temp = built.index_dir / f".building-{vector_index.owner_key('u')}-inprogress.ivf"
    temp.write_bytes(b"another process is writing this")
    for i in range(1, 201):
        built.delete(built.rows_by_id([i])[i].msg_id)
    built.index_min = N  # the owner now has fewer
    assert built.refresh_vector_indexes() == (0, 1)
    assert list(built.index_dir.glob("[!.]*.ivf")) == [] and temp.exists()
    assert built._query("SELECT count(*) FROM vector_log")[0][0] == 0
    assert built._query("SELECT count(*) FROM vector_indexes")[0][0] == 0


def test_many_changes_since_the_file_are_searched_exactly(built, vectors):
    rng = np.random.default_rng(3)
    extra = unit(rng.standard_normal((300, DIM)))
    built.insert_many([new_message("user", f"x{i}", conversation_id="c2", owner_id="u") for i in range(300)])
    batch = built.pending_batch(300)
    built.write_vectors(IDENTITY, [i for i, _ in batch], [extra[k].tobytes() for k, _ in enumerate(batch)])
    for i in range(300, 360):
        built.delete(built.rows_by_id([i])[i].msg_id)
    for k in (0, 150, 299):
        q = extra[k].tobytes()
        got = built.knn(q, 10, owner_id="u")
        assert got[0][0] == batch[k][0] and got[0][1] == pytest.approx(1.0, abs=1e-5)
        assert not {i for i, _ in got} & set(range(300, 360))
        assert len({i for i, _ in got}) == 10
    assert built._indexes["u"].changes == 360
