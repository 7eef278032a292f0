"""When the embedder or the disk misbehaves: a localmem error that says what failed, no
hang, no raw exception, nothing lost, and recovery once the cause is gone."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from hash_embedder import HashEmbedder

from localmem import (
    LockTimeoutError,
    Memory,
    ModelError,
    NotEmbeddedError,
    StorageFullError,
    Strategy,
    driver,
)
from localmem import store as store_module

OK = dict(conversation_id="c", owner_id="u")


def _causes(exc: BaseException) -> list[type]:
    """The types along ``exc``'s ``__cause__`` chain."""
    chain = []
    while exc.__cause__ is not None:
        exc = exc.__cause__
        chain.append(type(exc))
    return chain


def _wait_until(condition, timeout: float = 30.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


class _FailingFor(HashEmbedder):
    """Raises ``error`` on its first ``times`` calls, then embeds."""

    def __init__(self, error: BaseException, times: int = 1):
        super().__init__()
        self.error, self.left = error, times

    def embed(self, texts):
        if self.left:
            self.left -= 1
            raise self.error
        return super().embed(texts)


# -- the worker recovers (issue 9, item 7) ------------------------------------------------


def test_flush_retries_after_a_transient_failure(db_path):
    with Memory(db_path, embedder=_FailingFor(RuntimeError("device busy"))) as mem:
        mem.add("user", "pizza tonight", **OK)
        with pytest.raises(ModelError, match="device busy") as info:
            mem.flush(timeout=30)
        assert RuntimeError in _causes(info.value)  # the embedder's own error, chained
        # The failure is kept for the semantic strategies until a retry succeeds ...
        with pytest.raises(ModelError, match="device busy"):
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", **OK)
        assert mem.stats()["pending_vectors"] == 1
        mem.flush(timeout=30)  # ... and flush() retries at once
        assert mem.stats()["vectors"] == 1 and mem.stats()["pending_vectors"] == 0
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", keyword=False, **OK)
        assert [m.content for m in got.messages] == ["pizza tonight"]


def test_a_later_add_retries_after_the_back_off(db_path):
    with Memory(db_path, embedder=_FailingFor(RuntimeError("device busy"))) as mem:
        indexer = mem._indexer
        started = time.monotonic()
        mem.add("user", "first", **OK)
        assert _wait_until(lambda: indexer.error is not None)
        assert indexer._failures == 1 and indexer._retry_at <= time.monotonic() + 1.0
        assert indexer._retry_at >= started + 1.0  # the first back-off is 1 s
        indexer._retry_at = time.monotonic() + 3600  # (held, so that the next add is inside it)
        mem.add("user", "second", **OK)  # within the back-off: no retry yet
        assert indexer.error is not None and mem.stats()["pending_vectors"] == 2
        indexer._retry_at = 0.0  # the back-off has passed
        mem.add("user", "third", **OK)  # no flush(): the worker retries on its own
        assert _wait_until(lambda: mem.stats()["pending_vectors"] == 0)
        assert indexer.error is None and indexer._failures == 0 and mem.stats()["vectors"] == 3


def test_a_permanent_failure_is_raised_by_every_flush(db_path):
    with Memory(db_path, embedder=_FailingFor(RuntimeError("no such device"), times=10**6)) as mem:
        mem.add("user", "pizza", **OK)
        for _ in range(3):  # each flush() is a new attempt, and says why it failed
            with pytest.raises(ModelError, match="no such device"):
                mem.flush(timeout=30)
        assert mem.stats()["pending_vectors"] == 1


@pytest.mark.parametrize("error", [KeyboardInterrupt(), SystemExit(3), GeneratorExit()])
def test_a_base_exception_in_the_embedder_never_leaves_flush_waiting(db_path, error):
    with Memory(db_path, embedder=_FailingFor(error)) as mem:
        mem.add("user", "pizza", **OK)
        outcome: list[BaseException | None] = []

        def flush() -> None:
            try:
                mem.flush(timeout=60)
                outcome.append(None)
            except BaseException as exc:  # noqa: BLE001 - recorded for the assertion
                outcome.append(exc)

        waiter = threading.Thread(target=flush, daemon=True)
        waiter.start()
        waiter.join(60)
        assert not waiter.is_alive(), "flush() still waiting after the embedder raised"
        assert isinstance(outcome[0], ModelError), outcome
        assert type(error).__name__ in str(outcome[0])
        mem.flush(timeout=30)  # the retry embeds it
        assert mem.stats()["vectors"] == 1


# -- the embedder's own errors at query time (item 10) ----------------------------------


class _QueryBoom(HashEmbedder):
    def embed(self, texts):
        if any("boom" in t for t in texts):
            raise RuntimeError("tokenizer exploded")
        return super().embed(texts)


def test_an_embedder_error_at_query_time_is_a_model_error(db_path):
    with Memory(db_path, embedder=_QueryBoom(), embed="sync") as mem:
        mem.add("user", "pizza", **OK)
        for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
            with pytest.raises(ModelError, match="tokenizer exploded") as info:
                mem.get_memory(strategy, query="boom", **OK)
            assert _causes(info.value) == [RuntimeError]
        assert mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", **OK).messages


@pytest.mark.parametrize("returned", [["a", "b"], [[1, 2], [3]], object()])
def test_an_embedder_returning_no_numbers_is_a_model_error(db_path, returned):
    class Odd(HashEmbedder):
        def embed(self, texts):
            return returned if "odd" in texts[0] else super().embed(texts)

    with Memory(db_path, embedder=Odd(), embed="sync") as mem:
        mem.add("user", "pizza", **OK)
        with pytest.raises(ModelError, match="not an array of numbers|shape"):
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query="odd", **OK)


# -- vectors with no direction (item 8) -------------------------------------------------


class _ZeroFor(HashEmbedder):
    """The zero vector for any text holding "nothing": a text it has no words for."""

    def embed(self, texts):
        vectors = super().embed(texts)
        for i, text in enumerate(texts):
            if "nothing" in text:
                vectors[i] = 0.0
        return vectors


def test_a_zero_vector_is_not_indexed_and_never_breaks_a_search(db_path):
    with Memory(db_path, embedder=_ZeroFor()) as mem:
        for text in ("pizza at noon", "pizza with olives", "nothing here", "rain in the evening"):
            mem.add("user", text, **OK)
        mem.add("user", "nothing for another owner", conversation_id="c", owner_id="v")
        mem.flush(timeout=30)
        stats = mem.stats()
        assert stats["vectors"] == 3 and stats["pending_vectors"] == 0
        for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
            dense = mem.get_memory(strategy, query="pizza", keyword=False, limit=3, **OK)
            # Before: the zero vector's NULL distance sorted first and then raised TypeError.
            assert "nothing here" not in [m.content for m in dense.messages if m.source != "recent"]
            assert {"pizza at noon", "pizza with olives"} <= {m.content for m in dense.messages}
        fused = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="nothing", limit=5, **OK)
        assert fused.messages[0].content == "nothing here"  # found by its words
        # A query with no direction finds nothing by meaning, and still by keywords.
        assert mem.get_memory(Strategy.SEMANTIC_SEARCH, query="nothing", keyword=False, **OK).messages == ()
        assert mem.check_integrity() == "ok"
        assert mem.delete(fused.messages[0].msg_id)
        assert mem.check_integrity() == "ok"
    with Memory(db_path, embedder=_ZeroFor()) as mem:
        assert mem.reembed() == 4
        mem.flush(timeout=30)
        assert mem.stats()["vectors"] == 3 and mem.check_integrity() == "ok"


def test_tiny_and_huge_vectors_keep_their_direction(db_path):
    """float32 cosine of an unscaled vector under- or overflows to NaN: vectors are stored
    scaled to length 1, so scale never changes a ranking."""

    class Scaled(HashEmbedder):
        def embed(self, texts):
            vectors = super().embed(texts).astype(np.float64)
            scale = np.array([1e-30 if "tiny" in t else 1e30 if "huge" in t else 1.0 for t in texts])
            return vectors * scale[:, None]

    with Memory(db_path, embedder=Scaled(), embed="sync") as mem:
        for text in ("tiny pizza", "huge pizza", "plain rain"):
            mem.add("user", text, **OK)
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", keyword=False, **OK)
        assert {m.content for m in got.messages[:2]} == {"tiny pizza", "huge pizza"}
        assert all(m.score is not None and -1.0 <= m.score <= 1.0 for m in got.messages)


def _version_2_file(path, vectors: dict[str, np.ndarray]) -> None:
    """A file as localmem wrote it at schema version 2, with the given vectors stored for
    one message each (a zero one among them, as version 2 stored it)."""
    conn = driver.connect(str(path))
    conn.execute("PRAGMA journal_mode = WAL")
    for statements in store_module.MIGRATIONS[:2]:
        for sql in statements:
            conn.execute(sql)
    conn.execute("INSERT INTO meta VALUES ('instance_id', 'v2-file')")
    dim = len(next(iter(vectors.values())))
    conn.execute(
        "INSERT INTO meta VALUES ('embedder', ?)",
        ('{"dim": %d, "name": "test-hash-embedder", "sha256": null}' % dim,),
    )
    conn.execute(store_module._VECTOR_TABLE.format(dim=dim, coarse=f",\n    coarse bit[{dim}]"))
    conn.execute(store_module._VECTOR_DELETE_TRIGGER)
    for i, (text, vector) in enumerate(vectors.items()):
        conn.execute(
            "INSERT INTO messages (msg_id, conversation_id, owner_id, role, content, created_at)"
            " VALUES (?, 'c', 'u', 'user', ?, ?)", (f"m{i}", text, 1_700_000_000_000_000 + i),
        )
        row_id = conn.execute("SELECT id FROM messages WHERE msg_id = ?", (f"m{i}",)).fetchone()[0]
        conn.execute("DELETE FROM pending_vectors WHERE id = ?", (row_id,))
        blob = vector.astype("<f4").tobytes()
        conn.execute(
            "INSERT INTO message_vectors (rowid, owner_id, conversation_id, created_at, embedding, coarse)"
            " VALUES (?, 'u', 'c', ?, ?, vec_quantize_binary(?))",
            (row_id, 1_700_000_000_000_000 + i, blob, blob),
        )
    conn.execute(
        "INSERT INTO messages_fts (rowid, content, prev) SELECT id, content,"
        " lag(content) OVER (ORDER BY created_at, id) FROM messages"
    )
    conn.execute("PRAGMA user_version = 2")
    conn.close()


def test_zero_vectors_of_a_version_2_file_are_set_aside_on_upgrade(db_path):
    embedder = HashEmbedder()
    texts = ["pizza at noon", "pizza with olives", "nothing here", "rain in the evening"]
    vectors = {t: (np.zeros(embedder.dim) if "nothing" in t else embedder.embed([t])[0]) for t in texts}
    _version_2_file(db_path, vectors)
    with Memory(db_path, embedder=HashEmbedder()) as mem:
        assert mem.stats()["schema_version"] == store_module.SCHEMA_VERSION
        assert mem.stats()["vectors"] == 3
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", keyword=False, limit=2, **OK)
        assert {m.content for m in got.messages} == {"pizza at noon", "pizza with olives"}
        assert mem.check_integrity() == "ok"


def test_a_null_distance_in_the_index_is_skipped(db_path):
    """A zero vector that reached the index anyway (written by hand) has a NULL distance:
    never a TypeError, never a result."""
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:
        for text in ("pizza at noon", "pizza with olives", "rain"):
            mem.add("user", text, **OK)
        conn = driver.connect(str(db_path))
        conn.execute("UPDATE message_vectors SET embedding = ? WHERE rowid = 3", (bytes(4 * 64),))
        conn.close()
        for exact in (10**9, 0):  # the exact scan, and the sign-bit scan with re-scoring
            mem.exact_search_max = exact
            got = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", keyword=False, **OK)
            assert [m.content for m in got.messages] and "rain" not in [m.content for m in got.messages]


# -- a full disk (item 7) -----------------------------------------------------------------


def test_a_full_disk_is_storage_full_and_embedding_resumes_once_there_is_room(tmpfs):
    path = tmpfs.path / "memory.db"
    with Memory(path, embed="off") as mem:
        for i in range(40):
            mem.add("user", f"message number {i} about pizza and rain", **OK)
    with Memory(path, embedder=HashEmbedder(dim=384)) as mem:
        filler = tmpfs.fill()
        with pytest.raises(StorageFullError):
            mem.flush(timeout=60)
        assert mem.stats()["pending_vectors"] == 40  # nothing lost, nothing half-written
        os.remove(filler)
        mem.flush(timeout=60)
        assert mem.stats()["vectors"] == 40 and mem.check_integrity() == "ok"


# -- embed="sync": stored but not embedded (hazard) -------------------------------------


class _LockingEmbedder(HashEmbedder):
    """Takes the database's write lock from another connection while it embeds (as another
    process's long import would), so the vector write that follows times out."""

    def __init__(self, path):
        super().__init__()
        self.path, self.holder = str(path), None

    def embed(self, texts):
        if self.holder is None and any("locked out" in t for t in texts):
            self.holder = driver.connect(self.path)
            self.holder.execute("BEGIN IMMEDIATE")
        return super().embed(texts)

    def release(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()
            self.holder = None


def test_a_sync_lock_timeout_after_the_message_is_stored_is_not_a_lock_timeout(db_path):
    embedder = _LockingEmbedder(db_path)
    with Memory(db_path, embedder=embedder, embed="sync", lock_timeout=0.3) as mem:
        with pytest.raises(NotEmbeddedError) as info:
            mem.add("user", "locked out", **OK)
        embedder.release()
        assert not isinstance(info.value, LockTimeoutError)  # a retry-on-timeout loop stops here
        assert LockTimeoutError in _causes(info.value)
        stored = info.value.message
        assert stored.content == "locked out" and mem.get(stored.msg_id) == stored
        assert mem.stats()["messages"] == 1 and mem.stats()["pending_vectors"] == 1
        mem.flush(timeout=30)
        assert mem.stats()["vectors"] == 1


def test_add_many_sync_says_how_many_it_stored(db_path):
    embedder = _LockingEmbedder(db_path)
    with Memory(db_path, embedder=embedder, embed="sync", lock_timeout=0.3) as mem:
        items = [{"role": "user", "content": f"item {i}"} for i in range(3)]
        items.append({"role": "user", "content": "locked out"})
        with pytest.raises(NotEmbeddedError) as info:
            mem.add_many(items, **OK, chunk_size=2)
        embedder.release()
        assert info.value.added == 4 and info.value.message is None
        assert mem.stats()["messages"] == 4
