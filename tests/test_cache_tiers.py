"""The embedding cache (memory LRU + diskcache) and the query-result cache."""

from __future__ import annotations

import json
import os
import stat
import time

import diskcache
import numpy as np
import pytest
from forking import fork, wait_child

from localmem import InvalidInputError
from localmem.cache import EmbeddingCache, QueryCache, RawBytesDisk

DIM = 4
needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX-only")


def key_json(key) -> str:
    return json.dumps(key, ensure_ascii=False, separators=(",", ":"), sort_keys=True)


def vec(*values: float) -> np.ndarray:
    return np.array([values], dtype=np.float32)


def rows(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


@pytest.fixture
def emb(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="model-a", dim=DIM)
    yield cache
    cache.close()


def disk_only(tmp_path, **kw) -> EmbeddingCache:
    """An EmbeddingCache with no memory tier: every hit comes from disk."""
    return EmbeddingCache(tmp_path, model_key="model-a", dim=DIM, memory_items=0, **kw)


def fork_and_wait(body) -> int:
    """Run ``body() -> exit code`` in a forked child; its exit code (a hang fails the test)."""
    code = wait_child(fork(body), timeout=30)
    if code is None:
        pytest.fail("forked child hung")
    return code


# -- EmbeddingCache ----------------------------------------------------------------------


@pytest.mark.parametrize("memory_items", [4096, 0])
def test_round_trip_is_byte_identical(tmp_path, memory_items):
    vectors = rows(3)
    vectors[1] = [np.nan, -0.0, np.inf, np.float32(1 / 3)]
    vectors[2] *= np.float32(1e-40)  # subnormals
    texts = ["a", "b", "c"]
    with_memory = EmbeddingCache(tmp_path, model_key="m", dim=DIM, memory_items=memory_items)
    with_memory.put_many(texts, vectors)
    got = with_memory.get_many(texts)
    with_memory.close()
    for want, have in zip(vectors, got, strict=True):
        assert have is not None and have.dtype == np.float32 and have.shape == (DIM,)
        assert have.tobytes() == want.astype("<f4").tobytes()


def test_unknown_texts_are_none_and_the_order_follows_the_input(emb):
    vectors = rows(2)
    emb.put_many(["x", "y"], vectors)
    got = emb.get_many(["y", "nope", "x", "y"])
    assert got[1] is None
    np.testing.assert_array_equal(got[0], vectors[1])
    np.testing.assert_array_equal(got[2], vectors[0])
    np.testing.assert_array_equal(got[3], vectors[1])
    assert emb.get_many([]) == []


def test_lru_evicts_the_least_recently_used(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="m", dim=DIM, memory_items=2)
    cache.put_many(["a", "b"], rows(2))
    cache.get_many(["a"])  # a is now more recent than b
    cache.put_many(["c"], rows(1, seed=1))  # evicts b, not a
    assert list(cache._lru) == cache._keys(["a", "c"], "document")
    before = cache.stats()
    cache.get_many(["a", "c"])
    after = cache.stats()
    assert after["memory_hits"] - before["memory_hits"] == 2
    assert after["disk_hits"] == before["disk_hits"]
    cache.get_many(["b"])  # evicted from memory, still on disk
    assert cache.stats()["disk_hits"] == before["disk_hits"] + 1
    assert cache.stats()["memory_entries"] == 2
    cache.close()


def test_memory_tier_off_keeps_nothing_in_memory(tmp_path):
    cache = disk_only(tmp_path)
    cache.put_many(["a"], rows(1))
    assert cache.get_many(["a"])[0] is not None
    s = cache.stats()
    assert s["memory_entries"] == 0 and s["memory_hits"] == 0 and s["disk_hits"] == 1
    cache.close()


def test_disk_tier_survives_a_new_instance(tmp_path):
    vectors = rows(2)
    first = EmbeddingCache(tmp_path, model_key="m", dim=DIM)
    first.put_many(["p", "q"], vectors)
    first.close()
    second = EmbeddingCache(tmp_path, model_key="m", dim=DIM)
    got = second.get_many(["q", "p"])
    np.testing.assert_array_equal(got[0], vectors[1])
    np.testing.assert_array_equal(got[1], vectors[0])
    s = second.stats()
    assert (s["disk_hits"], s["memory_hits"], s["misses"]) == (2, 0, 0)
    second.get_many(["q"])  # promoted to memory by the disk hit
    assert second.stats()["memory_hits"] == 1
    second.close()


def test_kind_separates_entries(emb):
    emb.put_many(["hello"], vec(1, 2, 3, 4), kind="query")
    assert emb.get_many(["hello"], kind="document") == [None]
    emb.put_many(["hello"], vec(5, 6, 7, 8), kind="document")
    assert emb.get_many(["hello"], kind="query")[0].tolist() == [1, 2, 3, 4]
    assert emb.get_many(["hello"], kind="document")[0].tolist() == [5, 6, 7, 8]


@pytest.mark.parametrize("kind", ["passage", "", "Query", None])
def test_unknown_kind_is_rejected(emb, kind):
    with pytest.raises(InvalidInputError):
        emb.get_many(["x"], kind=kind)
    with pytest.raises(InvalidInputError):
        emb.put_many(["x"], vec(1, 2, 3, 4), kind=kind)


def test_model_key_separates_entries(tmp_path):
    a = EmbeddingCache(tmp_path, model_key="model-a", dim=DIM)
    b = EmbeddingCache(tmp_path, model_key="model-b", dim=DIM)
    a.put_many(["same text"], vec(1, 1, 1, 1))
    assert b.get_many(["same text"]) == [None]
    b.put_many(["same text"], vec(2, 2, 2, 2))
    assert a.get_many(["same text"])[0].tolist() == [1, 1, 1, 1]
    a.close()
    b.close()
    reopened = disk_only(tmp_path)  # model-a, from disk
    assert reopened.get_many(["same text"])[0].tolist() == [1, 1, 1, 1]
    reopened.close()


@pytest.mark.parametrize(
    ("stored", "probe"),
    [
        (("x", "document", "document"), ("xdocument", "document", "")),  # plain concatenation
        (("m", "document", 'x","query'), ("m", "query", "x")),  # naive JSON-like joining
        (("m|document", "document", "t"), ("m", "document", "document|t")),  # joined with |
    ],
)
def test_keys_cannot_be_confused_by_crafted_inputs(tmp_path, stored, probe):
    model, kind, text = stored
    writer = EmbeddingCache(tmp_path, model_key=model, dim=DIM)
    writer.put_many([text], vec(1, 1, 1, 1), kind=kind)
    model, kind, text = probe
    reader = EmbeddingCache(tmp_path, model_key=model, dim=DIM)
    assert reader.get_many([text], kind=kind) == [None]
    writer.close()
    reader.close()


def test_bad_inputs_are_rejected(emb):
    for texts, vectors in [
        (["a", "b"], rows(1)),  # count mismatch
        (["a"], np.zeros((1, DIM + 1), dtype=np.float32)),  # wrong dimension
        (["a"], np.zeros(DIM, dtype=np.float32)),  # 1-D
        (["a"], [["x", "y", "z", "w"]]),  # not numbers
    ]:
        with pytest.raises(InvalidInputError):
            emb.put_many(texts, vectors)
    with pytest.raises(InvalidInputError):
        emb.get_many("abc")  # one str is not a list of texts
    with pytest.raises(InvalidInputError):
        emb.get_many([b"bytes"])
    assert emb.stats()["entries"] == 0


def test_returned_arrays_are_read_only_and_the_callers_input_is_copied(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="model-a", dim=DIM)
    mine = vec(1, 2, 3, 4)
    cache.put_many(["a"], mine)
    mine[0, 0] = 99  # the caller reuses its buffer
    from_memory = cache.get_many(["a"])[0]
    assert not from_memory.flags.writeable
    with pytest.raises(ValueError):
        from_memory[0] = 42
    assert from_memory.tolist() == [1, 2, 3, 4]
    cache.close()
    from_disk = disk_only(tmp_path)
    got = from_disk.get_many(["a"])[0]
    assert got.tolist() == [1, 2, 3, 4] and not got.flags.writeable
    with pytest.raises(ValueError):
        got[0] = 42
    from_disk.close()


def test_stats_after_a_scripted_sequence(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="m", dim=DIM, memory_items=2)
    empty = cache.stats()
    assert empty == {"entries": 0, "memory_entries": 0, "hits": 0, "memory_hits": 0,
                     "disk_hits": 0, "misses": 0, "hit_rate": 0.0}
    assert cache.get_many(["a", "b", "c"]) == [None, None, None]  # 3 misses
    cache.put_many(["a", "b", "c"], rows(3))  # memory keeps b, c
    cache.get_many(["b", "a", "zz"])  # b: memory, a: disk, zz: miss
    cache.get_many(["b", "b"])  # 2 memory hits
    s = cache.stats()
    assert s == {"entries": 3, "memory_entries": 2, "hits": 4, "memory_hits": 3,
                 "disk_hits": 1, "misses": 4, "hit_rate": 0.5}
    cache.close()
    other = EmbeddingCache(tmp_path, model_key="m", dim=DIM)  # counters persist on disk
    other.get_many(["c"])
    s = other.stats()
    assert (s["hits"], s["disk_hits"], s["misses"], s["memory_entries"]) == (5, 2, 4, 1)
    assert s["hit_rate"] == pytest.approx(5 / 9)
    other.clear()
    assert other.stats() == empty
    assert other.get_many(["a"]) == [None]
    other.close()


def test_ttl_is_renewed_by_a_hit(tmp_path):
    cache = disk_only(tmp_path, ttl=0.3)
    cache.put_many(["read", "unread"], rows(2))
    time.sleep(0.2)
    assert cache.get_many(["read"])[0] is not None  # renews: now lives until ~0.5 s
    time.sleep(0.2)  # past the first 0.3 s
    assert cache.get_many(["unread"]) == [None]
    assert cache.get_many(["read"])[0] is not None
    cache.close()


def test_cleanup_expired_removes_and_counts(tmp_path):
    short = disk_only(tmp_path, ttl=0.05)
    long = disk_only(tmp_path, ttl=3600)
    short.put_many(["s1", "s2", "s3"], rows(3))
    long.put_many(["keep"], rows(1))
    assert short.stats()["entries"] == 4
    time.sleep(0.1)
    assert short.cleanup_expired() == 3
    assert short.stats()["entries"] == 1
    assert short.cleanup_expired() == 0
    assert long.get_many(["keep"])[0] is not None
    short.close()
    long.close()


def test_ttl_zero_keeps_vectors_in_memory_only(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="m", dim=DIM, ttl=0)
    cache.put_many(["a"], rows(1))
    assert cache.get_many(["a"])[0] is not None
    assert cache.stats()["entries"] == 0
    cache.close()


def test_a_planted_pickle_is_never_loaded(tmp_path):
    ran = tmp_path / "planted-pickle-ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    cache = disk_only(tmp_path)
    key = cache._keys(["victim"], "document")[0]
    with diskcache.Cache(str(cache.directory)) as evil:  # the default Disk pickles
        evil.set(key, Boom())
        evil.set(cache._keys(["array"], "document")[0], np.zeros(DIM, dtype=np.float32))
    assert cache.get_many(["victim", "array"]) == [None, None]
    assert not ran.exists()
    assert cache.stats()["misses"] == 2 and cache.stats()["entries"] == 0  # dropped
    cache.put_many(["victim"], vec(1, 2, 3, 4))  # and replaced by a good one
    assert cache.get_many(["victim"])[0].tolist() == [1, 2, 3, 4]
    cache.close()


@pytest.mark.parametrize("length", [0, 1, DIM * 4 - 1, DIM * 4 + 4, 2**16])
def test_a_value_of_the_wrong_length_is_a_miss_and_is_deleted(tmp_path, length):
    cache = disk_only(tmp_path)
    key = cache._keys(["t"], "document")[0]
    with diskcache.Cache(str(cache.directory), disk=RawBytesDisk) as raw:
        raw.set(key, b"\x01" * length)
    assert cache.get_many(["t"]) == [None]
    with diskcache.Cache(str(cache.directory), disk=RawBytesDisk) as raw:
        assert key not in raw
    cache.close()


def test_vectors_are_raw_little_endian_float32_on_disk(tmp_path):
    cache = EmbeddingCache(tmp_path, model_key="m", dim=DIM)
    cache.put_many(["a"], vec(1, 2, 3, 4))
    key = cache._keys(["a"], "document")[0]
    cache.close()
    with diskcache.Cache(str(tmp_path / "embeddings"), disk=RawBytesDisk) as raw:
        assert raw.get(key) == np.array([1, 2, 3, 4], dtype="<f4").tobytes()


def test_a_damaged_cache_file_is_a_miss_not_an_error(tmp_path, caplog):
    cache = disk_only(tmp_path)
    cache.put_many(["a"], rows(1))
    cache._cache.close()
    db = cache.directory / "cache.db"
    for suffix in ("", "-wal", "-shm"):
        path = db.with_name(db.name + suffix)
        if path.exists():
            path.write_bytes(b"\xff" * 4096)
    assert cache.get_many(["a"]) == [None]
    cache.put_many(["b"], rows(1))  # no exception either
    assert cache.cleanup_expired() == 0
    assert "localmem embedding cache" in caplog.text
    cache.close()


def test_directories_are_private_whatever_existed_before(tmp_path):
    root = tmp_path / "cache"
    root.mkdir(mode=0o755)
    os.chmod(root, 0o755)
    (root / "embeddings").mkdir(mode=0o777)
    os.chmod(root / "embeddings", 0o777)
    e = EmbeddingCache(root, model_key="m", dim=DIM)
    q = QueryCache(root, namespace="n")
    for path in (root, root / "embeddings", root / "embedding-stats", root / "queries"):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o700, path
    e.close()
    q.close()


def test_directory_none_is_a_temp_dir_removed_on_close():
    e = EmbeddingCache(None, model_key="m", dim=DIM)
    q = QueryCache(None, namespace="n")
    e.put_many(["a"], rows(1))
    q.put(["k"], 1, "v", group="u1")
    assert e.get_many(["a"])[0] is not None and q.get(["k"], 1) == "v"
    roots = [e.directory.parent, q.directory.parent]
    assert roots[0] != roots[1] and all(r.is_dir() for r in roots)
    e.close()
    q.close()
    e.close()  # idempotent
    assert not any(r.exists() for r in roots)


@needs_fork
def test_fork_child_and_parent_both_keep_working(tmp_path):
    cache = disk_only(tmp_path)
    queries = QueryCache(tmp_path, namespace="n")
    cache.put_many(["parent"], vec(1, 2, 3, 4))
    queries.put(["q"], 1, ["from parent"], group="u1")
    parent_conn = cache._cache

    def child() -> int:
        if cache.get_many(["parent"])[0].tolist() != [1, 2, 3, 4]:
            return 3
        if cache._cache is parent_conn:
            return 2
        cache.put_many(["child"], vec(5, 6, 7, 8))
        if queries.get(["q"], 1) != ["from parent"]:
            return 3
        queries.put(["q2"], 1, "from child", group="u1")
        cache.close()
        queries.close()
        return 0

    assert fork_and_wait(child) == 0
    assert cache._cache is parent_conn
    assert cache.get_many(["child"])[0].tolist() == [5, 6, 7, 8]
    assert cache.get_many(["parent"])[0].tolist() == [1, 2, 3, 4]
    assert queries.get(["q2"], 1) == "from child"
    s = cache.stats()
    assert s["disk_hits"] == 3 and s["misses"] == 0  # the child's hit counted too
    cache.close()
    queries.close()


@needs_fork
def test_a_child_closing_does_not_remove_the_parents_temp_dir():
    cache = EmbeddingCache(None, model_key="m", dim=DIM, memory_items=0)
    cache.put_many(["a"], rows(1))

    def child() -> int:
        ok = cache.get_many(["a"])[0] is not None
        cache.close()
        return 0 if ok else 3

    assert fork_and_wait(child) == 0
    assert cache.directory.is_dir()
    assert cache.get_many(["a"])[0] is not None
    root = cache.directory.parent
    cache.close()
    assert not root.exists()


# -- QueryCache --------------------------------------------------------------------------


@pytest.fixture
def queries(tmp_path):
    cache = QueryCache(tmp_path, namespace="db-1")
    yield cache
    cache.close()


KEY = ["hybrid", "u1", "c1", "tell me about pizza", 10]
VALUE = {"messages": [["m-1", "user", "I love pizza", 0.93]], "summary": "Found 1 message"}


def test_query_round_trip(queries):
    assert queries.get(KEY, 7) is None
    queries.put(KEY, 7, VALUE, group="u1")
    assert queries.get(KEY, 7) == VALUE
    assert queries.get(tuple(KEY), 7) == VALUE  # any sequence with the same items
    queries.put(KEY, 8, {"z": 1, "a": [None, True, 1.5, "\u00e9"]}, group="u1")
    assert list(queries.get(KEY, 8)) == ["z", "a"]  # the value's key order is kept
    assert queries.get(KEY, 8)["a"] == [None, True, 1.5, "\u00e9"]


@pytest.mark.parametrize("other_scope", [8, 6, "7", 7.5, None, [7], {"v": 7}, True])
def test_query_scope_must_match_exactly(queries, other_scope):
    queries.put(KEY, 7, VALUE, group="u1")
    assert queries.get(KEY, other_scope) is None
    assert queries.get(KEY, 7) == VALUE


def test_query_scope_can_be_structured(queries):
    scope = {"c1": 3, "c2": 5}
    queries.put(KEY, scope, VALUE, group="u1")
    assert queries.get(KEY, {"c2": 5, "c1": 3}) == VALUE  # same dict, other order
    assert queries.get(KEY, {"c1": 3, "c2": 6}) is None
    queries.put(KEY, 1, "newer", group="u1")  # one entry per key: the last put wins
    assert queries.get(KEY, scope) is None and queries.get(KEY, 1) == "newer"


@pytest.mark.parametrize(
    "other_key",
    [KEY[:-1] + [11], ["semantic_search", *KEY[1:]], KEY[:-1], [*KEY, None], ["hybrid", "u1"]],
)
def test_query_key_must_match(queries, other_key):
    queries.put(KEY, 1, VALUE, group="u1")
    assert queries.get(other_key, 1) is None


def test_query_namespace_separates_databases(tmp_path):
    a = QueryCache(tmp_path, namespace="db-1")
    b = QueryCache(tmp_path, namespace="db-2")
    a.put(KEY, 1, "a's answer", group="u1")
    assert b.get(KEY, 1) is None
    b.put(KEY, 1, "b's answer", group="u1")
    assert a.get(KEY, 1) == "a's answer"
    a.close()
    b.close()


def test_a_hash_collision_is_not_served(queries):
    # Plant an entry under KEY's disk key that was stored for another key.
    queries.put(["other"], 1, "wrong", group="u1")
    disk = queries._current()
    other = disk.get(queries._disk_key('["other"]'))
    disk.set(queries._disk_key(key_json(KEY)), other)
    assert queries.get(KEY, 1) is None
    assert queries.get(["other"], 1) == "wrong"


def test_query_entries_expire(tmp_path):
    cache = QueryCache(tmp_path, namespace="n", ttl=0.05)
    cache.put(KEY, 1, VALUE, group="u1")
    assert cache.get(KEY, 1) == VALUE
    time.sleep(0.1)
    assert cache.get(KEY, 1) is None
    cache.close()


def test_query_unicode_and_lone_surrogates(queries):
    key = ["semantic_search", "u\u00e9", "c", "pizza \U0001f355 \ud800", 5]
    queries.put(key, "v1", {"text": "voc\u00ea \udfff"}, group="u1")
    assert queries.get(key, "v1") == {"text": "voc\u00ea \udfff"}


def test_query_values_are_json_never_pickle(queries, tmp_path):
    queries.put(KEY, 1, VALUE, group="u1")
    with diskcache.Cache(str(tmp_path / "queries"), disk=RawBytesDisk) as raw:
        stored = raw.get(queries._disk_key(key_json(KEY)))
    assert type(stored) is bytes and b'"I love pizza"' in stored

    ran = tmp_path / "planted-pickle-ran"

    class Boom:
        def __reduce__(self):
            return (os.system, (f"touch {ran}",))

    with diskcache.Cache(str(tmp_path / "queries")) as evil:  # the default Disk pickles
        evil.set(queries._disk_key(key_json(KEY)), Boom())
    assert queries.get(KEY, 1) is None
    assert not ran.exists()


def test_query_cache_never_raises_on_bad_values(queries, caplog):
    queries.put(KEY, 1, {"when": object()}, group="u1")  # not JSON: not stored, only logged
    assert queries.get(KEY, 1) is None
    assert queries.get([object()], 1) is None
    assert "localmem query cache" in caplog.text


def test_query_cache_respects_its_size_limit(tmp_path):
    cache = QueryCache(tmp_path, namespace="n", max_bytes=256 * 1024)
    big = "x" * 40_000
    for i in range(40):
        cache.put(["q", i], 1, big, group="u1")
    assert cache._current().volume() < 1024 * 1024
    assert cache.get(["q", 39], 1) == big  # the newest survive
    assert cache.get(["q", 0], 1) is None  # the oldest were culled
    cache.close()


def test_the_embedding_cache_is_bounded_below_the_vectors_it_duplicates(tmp_path):
    """The stored vectors are in the database: the disk tier keeps at most
    EMBEDDING_CACHE_BYTES of them (diskcache's default 1 GiB would add 60 % to a file of a
    million messages), least recently stored evicted first."""
    from localmem.cache import EMBEDDING_CACHE_BYTES, EmbeddingCache

    cache = EmbeddingCache(tmp_path / "c", model_key="m", dim=4, memory_items=0, max_bytes=64 * 1024)
    try:
        for i in range(2000):  # ~2000 entries of 16 bytes plus keys: past 64 KiB
            cache.put_many([f"text {i}"], np.full((1, 4), i, np.float32))
        disk = cache._current()
        assert disk.size_limit == 64 * 1024
        assert disk.volume() <= 2 * 64 * 1024  # diskcache culls a few entries per write
        assert len(disk) < 2000
    finally:
        cache.close()
    default = EmbeddingCache(tmp_path / "d", model_key="m", dim=4)
    try:
        assert default._current().size_limit == EMBEDDING_CACHE_BYTES == 256 << 20
    finally:
        default.close()
