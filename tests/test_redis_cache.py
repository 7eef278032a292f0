"""The Redis tiers (localmem/redis_cache.py) against a real redis-server: hits and
misses, never stale, TTLs, namespaces apart, groups and conversations erased, planted
values refused, JSON only, and a server that dies or hangs is a miss with a warning.

The server is this session's own (tests/redis_server.py), or the one at the URL in
LOCALMEM_TEST_REDIS; every test keys its entries under a namespace of its own, and the
tests that stop a server start a private one.
"""

from __future__ import annotations

import inspect
import json
import logging
import os
import pickle
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import redis
from forking import fork, wait_child
from hash_embedder import HashEmbedder
from redis_server import RedisServer

from localmem import Memory, redis_cache
from localmem.backend import ConversationState
from localmem.cache import HotWindow, QueryCache
from localmem.errors import InvalidInputError
from localmem.records import Row
from localmem.redis_cache import RedisHotWindow, RedisQueryCache, open_tiers

T0 = 1_700_000_000_000_000  # µs


@pytest.fixture(scope="session")
def redis_url():
    url = os.environ.get("LOCALMEM_TEST_REDIS")
    if url:
        yield url
        return
    server = RedisServer()
    try:
        yield server.url
    finally:
        server.stop()


@pytest.fixture
def private_server():
    """A server of this test's alone, which it may kill or freeze."""
    server = RedisServer()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def raw(redis_url):
    """A plain client, to look at and plant what the tiers read."""
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def ns(raw):
    """A namespace of this test's own, whose keys go at its end (on a shared server too)."""
    namespace = uuid.uuid4().hex
    yield namespace
    for key in keys_of(raw, namespace):
        raw.delete(key)


@pytest.fixture
def tiers(redis_url, ns):
    hot, queries = open_tiers(redis_url, namespace=ns, hot_size=3, hot_ttl=60, query_ttl=60)
    yield hot, queries
    hot.close()
    queries.close()


def rows(n, conversation_id="c1", owner_id="u1", start=0):
    return [Row(f"m{i}", conversation_id, owner_id, "user" if i % 2 == 0 else "assistant",
                f"message {i} é ✓", T0 + i, None, json.dumps({"i": i})) for i in range(start, start + n)]


def keys_of(raw, ns):
    return sorted(raw.scan_iter(match=f"localmem:{ns}:*"))


def poll(condition, within=15.0):
    deadline = time.monotonic() + within
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


def redis_warnings(caplog):
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "Redis" in r.getMessage()]


# -- the same tiers as the disk ones ---------------------------------------------------


def test_import_localmem_does_not_import_redis():
    code = ("import sys, localmem, localmem.redis_cache\n"
            "assert 'redis' not in sys.modules, sorted(m for m in sys.modules if m.startswith('redis'))\n")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


@pytest.mark.parametrize(("disk", "ours", "methods"), [
    (HotWindow, RedisHotWindow, ["get", "put", "forget", "erase_conversations", "erase", "close"]),
    (QueryCache, RedisQueryCache, ["get", "put", "forget_group", "erase_groups", "erase", "close"]),
])
def test_the_methods_localmem_calls_have_the_disk_tiers_signatures(disk, ours, methods):
    for name in methods:
        want, got = inspect.signature(getattr(disk, name)), inspect.signature(getattr(ours, name))
        if name == "erase":  # maintain() calls it with no argument; the disk tier takes keys too
            assert list(got.parameters) == ["self"] and got.return_annotation == want.return_annotation
        else:
            assert got == want, name
    # The keywords Memory gives a disk tier (a url instead of the directory; no max_bytes:
    # a Redis's memory is bounded by its maxmemory).
    init_disk, init_ours = inspect.signature(disk.__init__), inspect.signature(ours.__init__)
    assert list(init_ours.parameters)[2:] == [p for p in list(init_disk.parameters)[2:] if p != "max_bytes"]


# -- the hot window --------------------------------------------------------------------


def test_hot_window_hit_and_miss(tiers):
    hot, _ = tiers
    state = ConversationState(version=7, message_count=9)
    assert hot.get("u1", "c1", state) is None
    window = hot.put("u1", "c1", state, rows(5))
    assert window.rows == rows(5)[-3:] and window.complete is False
    got = hot.get("u1", "c1", state)
    assert got == window and all(type(r) is Row for r in got.rows)
    assert not got.answers(4) and got.answers(3)
    assert hot.get("u1", "c2", state) is None and hot.get("u2", "c1", state) is None
    small = hot.put("u1", "c2", ConversationState(3, 2), rows(2, "c2"))
    assert small.complete and hot.get("u1", "c2", ConversationState(3, 2)) == small


def test_hot_window_is_never_stale(tiers):
    hot, _ = tiers
    hot.put("u1", "c1", ConversationState(1, 2), rows(2))
    assert hot.get("u1", "c1", ConversationState(2, 3)) is None  # a message came: the version moved
    assert hot.get("u1", "c1", ConversationState(1, 2)) is not None
    # A late writer's old window replaces a newer one: served only at its own version.
    hot.put("u1", "c1", ConversationState(3, 4), rows(4))
    hot.put("u1", "c1", ConversationState(2, 3), rows(3))
    assert hot.get("u1", "c1", ConversationState(3, 4)) is None
    assert hot.get("u1", "c1", ConversationState(2, 3)).rows == rows(3)


def test_hot_window_erase_and_forget(tiers, raw, ns):
    hot, _ = tiers
    state = ConversationState(1, 2)
    for c in ("c1", "c2", "c3"):
        hot.put("u1", c, state, rows(2, c))
    assert hot.erase_conversations([("u1", "c1"), ("u9", "nothing")]) is None
    assert hot.get("u1", "c1", state) is None and hot.get("u1", "c2", state) is not None
    hot.forget("u1", "c2")
    assert hot.get("u1", "c2", state) is None and hot.get("u1", "c3", state) is not None
    assert hot.erase_conversations([]) is None
    assert hot.erase() is None  # maintain(): nothing to do, Redis expires keys itself
    assert len(keys_of(raw, ns)) == 1
    hot.forget("u1", "c3")
    assert keys_of(raw, ns) == []


# -- the query cache -------------------------------------------------------------------


def test_query_cache_hit_miss_and_scope(tiers):
    _, queries = tiers
    key = ["hybrid", "u1", "c1", "what did we say?", 10, 7, True, False, None, None]
    value = {"messages": [{"content": "é ✓", "score": 0.5}], "hit": True}
    assert queries.get(key, [3, 1]) is None
    queries.put(key, [3, 1], value, group="u1")
    assert queries.get(key, [3, 1]) == value
    assert queries.get(tuple(key), [3, 1]) == value  # any sequence: the same JSON
    assert queries.get(key, [4, 1]) is None  # the scope moved: never stale
    assert queries.get([*key[:3], "another query", *key[4:]], [3, 1]) is None
    scoped = {"b": 1, "a": [2]}
    queries.put(key, scoped, value, group="u1")
    assert queries.get(key, {"a": [2], "b": 1}) == value  # scopes compare as canonical JSON
    queries.put(["none"], 1, None, group="u1")
    assert queries.get(["none"], 1) is None  # a stored None reads as a miss


def test_unusable_keys_and_values_are_not_cached(tiers, caplog):
    _, queries = tiers
    caplog.set_level(logging.WARNING, "localmem")
    queries.put(["k"], 1, {"v": object()}, group="u1")
    assert queries.get(["k"], 1) is None
    assert queries.get([object()], 1) is None
    assert redis_warnings(caplog)


def test_group_forgetting(tiers, raw, ns):
    _, queries = tiers
    for i in range(3):
        queries.put(["q", i], 1, {"n": i}, group="alice")
    queries.put(["q", "b"], 1, {"n": "b"}, group="bob")
    queries.forget_group("alice")
    assert [queries.get(["q", i], 1) for i in range(3)] == [None, None, None]
    assert queries.get(["q", "b"], 1) == {"n": "b"}
    assert queries.erase_groups(["bob", "nobody"]) is None
    assert queries.get(["q", "b"], 1) is None
    assert keys_of(raw, ns) == []  # the groups' sets went with their answers
    for group in ("alice", "bob"):
        queries.put(["q", group], 1, {"n": group}, group=group)
    assert queries.erase_groups(None) is None
    assert keys_of(raw, ns) == []
    assert queries.erase_groups([]) is None and queries.erase() is None


def test_namespaces_are_isolated(redis_url, raw):
    a_ns, b_ns = uuid.uuid4().hex, uuid.uuid4().hex
    a_hot, a_q = open_tiers(redis_url, namespace=a_ns, hot_size=3, hot_ttl=60, query_ttl=60)
    b_hot, b_q = open_tiers(redis_url, namespace=b_ns, hot_size=3, hot_ttl=60, query_ttl=60)
    try:
        state = ConversationState(1, 2)
        a_hot.put("u1", "c1", state, rows(2))
        a_q.put(["q"], 1, "a's answer", group="u1")
        assert b_hot.get("u1", "c1", state) is None and b_q.get(["q"], 1) is None
        b_q.put(["q"], 1, "b's answer", group="u1")
        assert a_q.get(["q"], 1) == "a's answer" and b_q.get(["q"], 1) == "b's answer"
        assert b_q.erase_groups(None) is None and b_q.erase_groups(["u1"]) is None
        assert b_hot.erase_conversations([("u1", "c1")]) is None
        assert a_q.get(["q"], 1) == "a's answer" and a_hot.get("u1", "c1", state) is not None
        assert keys_of(raw, b_ns) == [] and len(keys_of(raw, a_ns)) == 3
    finally:
        for tier in (a_hot, a_q, b_hot, b_q):
            tier.erase_groups(None) if isinstance(tier, RedisQueryCache) else tier.erase_conversations([("u1", "c1")])
            tier.close()


# -- TTLs ------------------------------------------------------------------------------


def test_entries_expire_after_their_ttl(redis_url, raw, ns):
    hot, queries = open_tiers(redis_url, namespace=ns, hot_size=3, hot_ttl=1.0, query_ttl=1.0)
    try:
        state = ConversationState(1, 2)
        hot.put("u1", "c1", state, rows(2))
        queries.put(["q"], 1, "answer", group="u1")
        keys = keys_of(raw, ns)
        assert len(keys) == 3  # the window, the answer, the group's set
        assert all(0 < raw.pttl(k) <= 1000 for k in keys)
        assert poll(lambda: hot.get("u1", "c1", state) is None and queries.get(["q"], 1) is None)
        assert poll(lambda: keys_of(raw, ns) == [])
    finally:
        hot.close()
        queries.close()


def test_a_groups_set_lives_as_long_as_its_longest_lived_answer(redis_url, raw, ns):
    short = RedisQueryCache(redis_url, namespace=ns, ttl=1.0)
    long = RedisQueryCache(redis_url, namespace=ns, ttl=120.0)
    try:
        long.put(["long"], 1, "stays", group="u1")
        short.put(["short"], 1, "goes", group="u1")  # must not shorten the set's life
        (group_key,) = [k for k in keys_of(raw, ns) if b":g:" in k]
        assert raw.pttl(group_key) > 60_000
        assert poll(lambda: short.get(["short"], 1) is None)
        long.forget_group("u1")  # the set still names the long-lived answer
        assert long.get(["long"], 1) is None and keys_of(raw, ns) == []
    finally:
        short.close()
        long.close()


# -- nothing read from Redis is trusted ------------------------------------------------


class _Planted:
    """Unpickling it would create a file (it never is unpickled)."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def _hot_entry(**changes):
    entry = {"f": 1, "k": json.dumps(["u1", "c1"], separators=(",", ":")), "v": 5, "complete": True,
             "rows": [list(r) for r in rows(2)]}
    entry.update(changes)
    return json.dumps(entry).encode()


def _bad_row(index, value):
    row = list(rows(1)[0])
    row[index] = value
    return _hot_entry(rows=[row])


BAD_HOT = {
    "not json": b"\xff\xfe not json",
    "a json list": b"[1, 2]",
    "another format": _hot_entry(f=2),
    "another conversation's": _hot_entry(k=json.dumps(["u1", "c2"], separators=(",", ":"))),
    "a version of another type": _hot_entry(v="5"),
    "a version true": _hot_entry(v=True),
    "no complete": _hot_entry(complete=None),
    "rows not a list": _hot_entry(rows={"a": 1}),
    "an unknown role": _bad_row(3, "root"),
    "a time out of range": _bad_row(5, 10**30),
    "metadata not an object": _bad_row(7, "[1]"),
    "a row too short": _hot_entry(rows=[["m0", "c1", "u1", "user"]]),
}


def test_the_good_entry_the_bad_ones_are_made_from_is_a_hit(tiers, raw):
    hot, _ = tiers
    hot_key = hot._key("u1", "c1")[0]
    raw.set(hot_key, _hot_entry())
    got = hot.get("u1", "c1", ConversationState(5, 2))
    assert got is not None and got.rows == rows(2) and got.complete


@pytest.mark.parametrize("name", sorted(BAD_HOT))
def test_planted_hot_entries_are_misses(tiers, raw, name):
    hot, _ = tiers
    raw.set(hot._key("u1", "c1")[0], BAD_HOT[name])
    assert hot.get("u1", "c1", ConversationState(5, 2)) is None


def test_planted_pickles_and_wrong_types_are_misses_never_unpickled(tiers, raw, tmp_path, caplog):
    caplog.set_level(logging.WARNING, "localmem")
    hot, queries = tiers
    marker = tmp_path / "unpickled"
    hot_key = hot._key("u1", "c1")[0]
    query_key = queries._key(json.dumps(["q"]))
    for protocol in (0, 2, pickle.HIGHEST_PROTOCOL):
        planted = pickle.dumps(_Planted(str(marker)), protocol=protocol)
        raw.set(hot_key, planted)
        raw.set(query_key, planted)
        assert hot.get("u1", "c1", ConversationState(5, 2)) is None
        assert queries.get(["q"], 1) is None
    assert not marker.exists()
    raw.delete(hot_key, query_key)
    raw.rpush(hot_key, b"a list, not a string")
    raw.hset(query_key, "f", 1)
    assert hot.get("u1", "c1", ConversationState(5, 2)) is None  # WRONGTYPE: a miss
    assert queries.get(["q"], 1) is None
    hot.put("u1", "c1", ConversationState(5, 2), rows(2))  # SET replaces a key of any type
    assert hot.get("u1", "c1", ConversationState(5, 2)) is not None
    # Rate-limited: one line per tier, the repeats counted for the next one.
    messages = redis_warnings(caplog)
    assert len(messages) == 2 and "unreadable" in messages[0] and "unreadable" in messages[1]
    assert queries._held_warnings == 3  # two pickles, a WRONGTYPE


@pytest.mark.parametrize("entry", [
    {"f": 1, "k": '["q"]', "s": "2", "v": "answer"},  # another scope
    {"f": 1, "k": '["other"]', "s": "1", "v": "answer"},  # another key's entry
    {"f": 9, "k": '["q"]', "s": "1", "v": "answer"},
    {"k": '["q"]', "s": "1", "v": "answer"},
    ["q", "1", "answer"],
])
def test_planted_query_entries_are_misses(tiers, raw, entry):
    _, queries = tiers
    raw.set(queries._key(json.dumps(["q"], separators=(",", ":"))), json.dumps(entry).encode())
    assert queries.get(["q"], 1) is None
    good = {"f": 1, "k": '["q"]', "s": "1", "v": "answer"}
    raw.set(queries._key('["q"]'), json.dumps(good).encode())
    assert queries.get(["q"], 1) == "answer"


def test_a_planted_group_set_deletes_nothing_outside_the_namespaces_answers(tiers, raw, ns):
    _, queries = tiers
    victim = f"not-localmem-{uuid.uuid4().hex}"
    raw.set(victim, b"someone else's")
    try:
        queries.put(["q"], 1, "answer", group="u1")
        raw.sadd(queries._group_key("u1"), victim, f"localmem:{uuid.uuid4().hex}:q:abc")
        queries.forget_group("u1")
        assert raw.get(victim) == b"someone else's"
        assert queries.get(["q"], 1) is None and keys_of(raw, ns) == []
    finally:
        raw.delete(victim)


def test_a_group_key_of_another_type_is_reported_and_the_other_groups_erased(tiers, raw, caplog):
    caplog.set_level(logging.WARNING, "localmem")
    _, queries = tiers
    raw.set(queries._group_key("broken"), b"a string, not a set")
    queries.put(["q"], 1, "answer", group="fine")
    problem = queries.erase_groups(["broken", "fine"])
    assert problem is not None and "WRONGTYPE" in problem and "not erased" in problem
    assert queries.get(["q"], 1) is None
    queries.forget_group("broken")  # logged, never raised
    assert any("WRONGTYPE" in m for m in redis_warnings(caplog))
    queries.put(["q2"], 1, "answer", group="broken")  # the MULTI fails: logged, not cached
    assert queries.get(["q2"], 1) is None


def test_stored_bytes_are_json_never_pickle(tiers, raw, ns):
    hot, queries = tiers
    hot.put("u1", "c1", ConversationState(1, 3), [*rows(2), Row("m9", "c1", "u1", "user", "lone \ud800", T0, "f", None)])
    queries.put(["q", "é"], [1, 2], {"answer": ["✓", 1.5, None, True]}, group="u1")
    stored = keys_of(raw, ns)
    assert len(stored) == 3
    for key in stored:
        kind = raw.type(key)
        values = [raw.get(key)] if kind == b"string" else sorted(raw.smembers(key))
        assert kind in (b"string", b"set")
        for value in values:
            assert not value.startswith(b"\x80")  # PROTO, the opcode every pickle >= 2 starts with
            if kind == b"string":
                assert value[:1] == b"{" and type(json.loads(value)) is dict
            else:
                assert value.startswith(f"localmem:{ns}:q:".encode()) and value.isascii()
    window = hot.get("u1", "c1", ConversationState(1, 3))
    assert window is not None and window.rows[-1].content == "lone \ud800"


# -- Redis trouble is a miss -----------------------------------------------------------


def test_a_server_that_dies_gives_misses_and_a_warning(private_server, caplog):
    caplog.set_level(logging.WARNING, "localmem")
    hot, queries = open_tiers(private_server.url, namespace="db1", hot_size=3, hot_ttl=60, query_ttl=60)
    try:
        state = ConversationState(1, 2)
        hot.put("u1", "c1", state, rows(2))
        queries.put(["q"], 1, "answer", group="u1")
        assert hot.get("u1", "c1", state) is not None and queries.get(["q"], 1) == "answer"
        private_server.kill()
        assert hot.get("u1", "c1", state) is None
        assert queries.get(["q"], 1) is None
        messages = redis_warnings(caplog)
        assert any("hot window" in m and "ConnectionError" in m and "not tried again" in m for m in messages)
        assert any("query cache" in m for m in messages)
        # Everything else goes on without Redis, and says so where it must.
        assert hot.put("u1", "c1", state, rows(2)).rows == rows(2)
        queries.put(["q"], 1, "answer", group="u1")
        hot.forget("u1", "c1")
        queries.forget_group("u1")
        assert "not erased" in hot.erase_conversations([("u1", "c1")])
        assert "not erased" in queries.erase_groups(None)
        assert hot.erase() is None and queries.erase() is None
        assert hot.get("u1", "c1", state) is None  # paused: no new attempt, no new error
    finally:
        hot.close()
        queries.close()


def test_the_tiers_use_a_server_that_comes_back(private_server, monkeypatch):
    monkeypatch.setattr(redis_cache, "RETRY_AFTER", 0.2)
    hot, queries = open_tiers(private_server.url, namespace="db1", hot_size=3, hot_ttl=60, query_ttl=60)
    try:
        state = ConversationState(1, 2)
        queries.put(["q"], 1, "before", group="u1")  # (the server now knows the script)
        private_server.kill()
        assert queries.get(["q"], 1) is None and hot.get("u1", "c1", state) is None
        private_server.start()  # empty: no entries, no script

        def stored_again():
            queries.put(["q"], 1, "after", group="u1")
            hot.put("u1", "c1", state, rows(2))
            return queries.get(["q"], 1) == "after" and hot.get("u1", "c1", state) is not None

        assert poll(stored_again)
        queries.forget_group("u1")
        assert queries.get(["q"], 1) is None
    finally:
        hot.close()
        queries.close()


def test_a_server_that_hangs_gives_misses(private_server, caplog):
    caplog.set_level(logging.WARNING, "localmem")
    hot = RedisHotWindow(private_server.url, namespace="db1", size=3, ttl=60, timeout=0.1)
    try:
        state = ConversationState(1, 2)
        hot.put("u1", "c1", state, rows(2))
        assert hot.get("u1", "c1", state) is not None
        private_server.pause()
        try:
            assert hot.get("u1", "c1", state) is None
        finally:
            private_server.resume()
        assert any("Timeout" in m for m in redis_warnings(caplog))
    finally:
        hot.close()


def test_no_server_at_all_is_a_miss_not_an_error(tmp_path, caplog):
    caplog.set_level(logging.WARNING, "localmem")
    hot, queries = open_tiers(f"unix://{tmp_path}/nothing.sock", namespace="db1")
    state = ConversationState(1, 2)
    assert hot.get("u1", "c1", state) is None
    assert hot.put("u1", "c1", state, rows(2)).rows == rows(2)[-10:]
    assert queries.get(["q"], 1) is None
    queries.put(["q"], 1, "answer", group="u1")
    assert redis_warnings(caplog)
    hot.close()
    queries.close()
    hot.close()  # idempotent
    assert hot.get("u1", "c1", state) is None
    assert "closed" in hot.erase_conversations([("u1", "c1")])


def test_a_forked_child_uses_connections_of_its_own(tiers):
    hot, queries = tiers
    state = ConversationState(1, 2)
    hot.put("u1", "c1", state, rows(2))  # the parent has a connection open

    def child():
        ok = hot.get("u1", "c1", state) is not None
        hot.put("u1", "c2", state, rows(2, "c2"))
        queries.put(["from the child"], 1, "hello", group="u1")
        hot.close()
        queries.close()
        return 0 if ok else 3

    assert wait_child(fork(child), 60) == 0
    assert hot.get("u1", "c2", state) is not None  # the parent's connection still works
    assert queries.get(["from the child"], 1) == "hello"


# -- URLs and arguments ----------------------------------------------------------------


@pytest.mark.parametrize("url", [
    "http://localhost:6379", "postgresql://u:secret@db/x", "localhost:6379", "", "unix://",
    "redis://localhost:notaport", "/tmp/redis.sock",
])
def test_only_redis_urls_are_accepted(url):
    with pytest.raises(InvalidInputError) as err:
        open_tiers(url, namespace="db1")
    assert "secret" not in str(err.value)


def test_urls_and_arguments(redis_url):
    for url in ("redis://localhost:6379/0", "rediss://user:pw@cache.example:6380", "unix:///run/redis.sock?db=1",
                "REDIS://localhost"):
        hot, queries = open_tiers(url, namespace="db1")  # nothing is sent to the server here
        assert "pw" not in hot.url
        hot.close()
        queries.close()
    with pytest.raises(InvalidInputError):
        open_tiers(b"redis://localhost", namespace="db1")
    for namespace in ("", "a*b", "a:b", None, "x" * 129):
        with pytest.raises(InvalidInputError, match="namespace"):
            open_tiers(redis_url, namespace=namespace)
    for ttl in (0, -1, True, "60", float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="ttl"):
            RedisQueryCache(redis_url, namespace="db1", ttl=ttl)
    with pytest.raises(InvalidInputError, match="size"):
        RedisHotWindow(redis_url, namespace="db1", size=0)
    assert open_tiers(redis_url, namespace="db1", hot_size=0, query_ttl=0) == (None, None)


# -- in a Memory -----------------------------------------------------------------------


def test_a_memory_with_a_redis_cache_serves_current_answers(redis_url, raw, tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync", cache=redis_url) as mem:
        namespace = mem._store.instance_id
        where = {"conversation_id": "c1", "owner_id": "u1"}
        for i in range(3):
            mem.add("user", f"apples {i}", **where)

        def recent():
            return mem.get_memory("recent_history", **where)

        def search():
            return mem.get_memory("hybrid", query="apples", dense=False, rerank=False, **where)

        first, second = recent(), recent()
        assert not first.cache_hit and second.cache_hit and first.messages == second.messages
        assert not search().cache_hit and search().cache_hit
        mem.add("assistant", "apples 3", **where)
        after = recent()
        assert not after.cache_hit and [m.content for m in after.messages][-1] == "apples 3"
        found = search()
        assert not found.cache_hit and "apples 3" in [m.content for m in found.messages]
        assert keys_of(raw, namespace)
        report = mem.forget(owner_id="u1")
        assert report.complete, report.pending
        assert keys_of(raw, namespace) == []


def test_memories_of_two_machines_on_postgresql_share_one_redis_tier(redis_url, raw, postgres_url, tmp_path):
    """Two clients of one PostgreSQL database, each with a cache folder of its own (two
    machines), one Redis: what one cached the other is served, and never a stale answer."""
    where = {"conversation_id": "c1", "owner_id": "u1"}
    options = {"embedder": HashEmbedder(), "embed": "sync", "cache": redis_url}
    with Memory(postgres_url, cache_dir=tmp_path / "a", **options) as a, \
            Memory(postgres_url, cache_dir=tmp_path / "b", **options) as b:
        for i in range(3):
            a.add("user", f"pears {i}", **where)
        first = a.get_memory("recent_history", **where)
        served = b.get_memory("recent_history", **where)
        assert not first.cache_hit and served.cache_hit and served.messages == first.messages
        assert not a.get_memory("hybrid", query="pears", **where).cache_hit
        assert b.get_memory("hybrid", query="pears", **where).cache_hit
        b.add("assistant", "pears 3", **where)  # the other machine writes
        after = a.get_memory("recent_history", **where)
        assert not after.cache_hit and after.messages[-1].content == "pears 3"
        again = a.get_memory("hybrid", query="pears", **where)
        assert not again.cache_hit and "pears 3" in [m.content for m in again.messages]
        assert keys_of(raw, a._store.instance_id)
        report = a.forget(owner_id="u1")
        assert [p for p in report.pending if not p.startswith("PostgreSQL:")] == []  # (what it cannot erase)
        assert keys_of(raw, a._store.instance_id) == []


def test_a_redis_cache_url_is_checked(tmp_path):
    with pytest.raises(InvalidInputError, match="redis"):
        Memory(tmp_path / "m.db", cache="http://localhost:6379")
    assert not (tmp_path / "m.db").exists()


@pytest.mark.parametrize("url", ["redis://u:pw1@h:6379/0", "redis://h:6379/0?password=pw1", "unix:///s.sock?password=pw1"])
def test_a_redis_password_is_never_shown(url):
    shown = redis_cache.redact(url)
    assert "pw1" not in shown and shown.split("://")[0] == url.split("://")[0] and "://" in shown
