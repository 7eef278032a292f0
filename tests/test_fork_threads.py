"""fork() safety, many threads on one Memory, and the close() lifecycle."""

from __future__ import annotations

import os
import threading
import traceback

import pytest
from forking import fork, wait_child

from localmem import ClosedError, Memory, Strategy, driver

OWNER = "owner-1"
# These tests are about the store, the hot window and close(); the embedding worker is off
# so that no ONNX model is loaded. fork() during background embedding is tested in
# test_semantic.py (test_fork_waits_for_the_embedding_worker).
EMBED = "off"

needs_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="os.fork() is POSIX-only")

# Exit codes a forked child reports (anything unexpected is 1).
CHILD_CODES = {
    1: "exception in the child (traceback on its stderr)",
    2: "the child reused the parent's SQLite connection",
    3: "the child's add/read gave a wrong answer",
    4: "the child reused the parent's hot-window cache",
}


def _recent(m: Memory, conv: str, limit: int = 10) -> list[str]:
    result = m.get_memory(
        Strategy.RECENT_HISTORY, conversation_id=conv, owner_id=OWNER, limit=limit,
        lookback_days=None,
    )
    return [x.msg_id for x in result.messages]


# -- fork ------------------------------------------------------------------------------


@needs_fork
def test_forked_child_uses_its_own_connection(db_path):
    with Memory(db_path, embed=EMBED) as m:
        m.add("user", "from the parent", conversation_id="c", owner_id=OWNER, msg_id="parent-0")
        assert _recent(m, "c") == ["parent-0"]  # the hot window is open and warm, too
        parent_conn = m._store._conn
        parent_cache = m._hot._cache
        assert parent_conn is not None

        def child() -> int:
            m.add("assistant", "from the child", conversation_id="c", owner_id=OWNER,
                  msg_id="child-0")
            if m._store._conn is parent_conn:
                return 2
            if _recent(m, "c") != ["parent-0", "child-0"]:
                return 3
            if m._hot._cache is parent_cache:
                return 4
            if m.get("child-0").content != "from the child":
                return 3
            if m.check_integrity() != "ok":
                return 3
            return 0

        code = wait_child(fork(child), timeout=30)
        assert code is not None, "forked child hung"
        assert code == 0, f"child failed: {CHILD_CODES.get(code, code)}"

        # The parent goes on with its own connection, and sees the child's message.
        assert m._store._conn is parent_conn
        assert m.get("child-0").content == "from the child"
        m.add("user", "parent after fork", conversation_id="c", owner_id=OWNER, msg_id="parent-1")
        assert _recent(m, "c") == ["parent-0", "child-0", "parent-1"]
        assert m.stats()["messages"] == 3
        assert m.check_integrity() == "ok"


@needs_fork
def test_child_closing_memory_does_not_disturb_the_parent(db_path):
    with Memory(db_path, embed=EMBED) as m:
        # Leave committed data in the WAL, not yet checkpointed into the main file.
        m.add_many(
            [{"role": "user", "content": f"wal {i}", "msg_id": f"w{i}"} for i in range(200)],
            conversation_id="c", owner_id=OWNER,
        )
        assert os.path.getsize(str(db_path) + "-wal") > 0

        def child() -> int:
            m.add("user", "child", conversation_id="c", owner_id=OWNER, msg_id="child")
            m.close()  # closes only what the child opened; the inherited objects are left alone
            return 0

        code = wait_child(fork(child), timeout=30)
        assert code == 0, f"child failed: {CHILD_CODES.get(code, code)}"
        assert not m.closed
        assert os.path.exists(str(db_path) + "-wal"), "the child deleted the parent's WAL"
        for i in range(200):
            assert m.get(f"w{i}") is not None, f"w{i} lost after the child closed"
        assert m.get("child") is not None
        m.add("user", "parent", conversation_id="c", owner_id=OWNER, msg_id="parent")
        assert m.stats()["messages"] == 202
        assert m.check_integrity() == "ok"
    with Memory(db_path, embed=EMBED) as again:
        assert again.stats()["messages"] == 202
        assert again.check_integrity() == "ok"


@needs_fork
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # 3.12+: fork() with threads running
def test_fork_while_another_thread_is_inside_the_store(db_path):
    """A thread that is in the middle of a store call when another thread forks holds the
    store's lock; the child has no such thread, so that lock must not stay held there."""
    with Memory(db_path, embed=EMBED) as m:
        m.add("user", "before", conversation_id="c", owner_id=OWNER, msg_id="before")
        inside, leave = threading.Event(), threading.Event()

        def busy() -> None:
            with m._store._lock:  # stands for a thread part-way through add()/get_memory()
                inside.set()
                leave.wait(30)

        t = threading.Thread(target=busy)
        t.start()
        try:
            assert inside.wait(10)

            def child() -> int:
                m.add("user", "from child", conversation_id="c", owner_id=OWNER, msg_id="child")
                return 0 if _recent(m, "c") == ["before", "child"] else 3

            pid = fork(child, dump_after=8)
        finally:
            leave.set()
            t.join()
        code = wait_child(pid, timeout=10)
        assert code is not None, (
            "forked child deadlocked: the store lock held by another thread at fork() time "
            "stayed held in the child"
        )
        assert code == 0, f"child failed: {CHILD_CODES.get(code, code)}"
        assert m.get("child") is not None
        assert m.check_integrity() == "ok"


# -- threads ---------------------------------------------------------------------------

WRITERS, PER_WRITER, READERS = 8, 200, 3


def test_threads_share_one_memory(db_path):
    errors: list[str] = []
    acked: dict[int, list[str]] = {t: [] for t in range(WRITERS)}
    writers_done = threading.Event()
    barrier = threading.Barrier(WRITERS + READERS)
    reads = [0] * READERS

    with Memory(db_path, embed=EMBED) as m:

        def writer(t: int) -> None:
            try:
                barrier.wait(10)
                for i in range(PER_WRITER):
                    msg = m.add(
                        "user", f"t{t}-{i}", conversation_id=f"conv-{t}", owner_id=OWNER,
                        metadata={"t": t, "i": i},
                    )
                    acked[t].append(msg.msg_id)
            except BaseException:
                errors.append(f"writer {t}:\n{traceback.format_exc()}")

        def reader(r: int) -> None:
            newest = [-1] * WRITERS  # the newest seq this reader has seen, per conversation
            try:
                barrier.wait(10)
                k = 0
                while not writers_done.is_set():
                    t = (r + k) % WRITERS
                    k += 1
                    got = m.get_memory(
                        Strategy.RECENT_HISTORY, conversation_id=f"conv-{t}", owner_id=OWNER,
                        limit=10, lookback_days=None,
                    )
                    seqs = [int(x.content.split("-")[1]) for x in got.messages]
                    assert all(x.content.startswith(f"t{t}-") for x in got.messages), seqs
                    if seqs:
                        # The newest 10, consecutive, oldest first ...
                        assert seqs == list(range(seqs[-1] - len(seqs) + 1, seqs[-1] + 1)), seqs
                        assert len(seqs) == min(10, seqs[-1] + 1), seqs
                        # ... and never older than what this thread saw before.
                        assert seqs[-1] >= newest[t], (t, seqs, newest[t])
                        newest[t] = seqs[-1]
                    reads[r] += 1
                    if k % 7 == 0:
                        assert m.stats()["messages"] <= WRITERS * PER_WRITER
            except BaseException:
                errors.append(f"reader {r}:\n{traceback.format_exc()}")

        threads = [threading.Thread(target=writer, args=(t,)) for t in range(WRITERS)]
        readers = [threading.Thread(target=reader, args=(r,)) for r in range(READERS)]
        for th in threads + readers:
            th.start()
        for th in threads:
            th.join(120)
        writers_done.set()
        for th in readers:
            th.join(30)
        assert not any(th.is_alive() for th in threads + readers), "a thread hung"
        assert not errors, "\n".join(errors)
        assert all(n > 0 for n in reads), f"readers never ran concurrently: {reads}"

        assert m.stats()["messages"] == WRITERS * PER_WRITER
        conn = driver.connect(str(db_path))
        try:
            assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == WRITERS * PER_WRITER
            assert conn.execute("SELECT count(DISTINCT msg_id) FROM messages").fetchone()[0] == (
                WRITERS * PER_WRITER
            )
        finally:
            conn.close()
        for t in range(WRITERS):
            assert len(acked[t]) == PER_WRITER
            assert _recent(m, f"conv-{t}", limit=PER_WRITER) == acked[t], f"conv-{t} order"
            got = m.get(acked[t][-1])
            assert got is not None and got.content == f"t{t}-{PER_WRITER - 1}"
        assert m.check_integrity() == "ok"


# -- close -----------------------------------------------------------------------------


def _every_call(m: Memory) -> dict:
    return {
        "add": lambda: m.add("user", "x", conversation_id="c", owner_id=OWNER),
        "add_many": lambda: m.add_many(
            [{"role": "user", "content": "x"}], conversation_id="c", owner_id=OWNER
        ),
        "get_memory": lambda: m.get_memory("recent_history", conversation_id="c", owner_id=OWNER),
        "get_memory_session_only": lambda: m.get_memory(
            Strategy.SESSION_ONLY, conversation_id="c", owner_id=OWNER
        ),
        "get": lambda: m.get("m0"),
        "stats": lambda: m.stats(),
        "check_integrity": lambda: m.check_integrity(),
        "enter": lambda: m.__enter__(),
    }


def _assert_every_call_raises_closed(m: Memory) -> None:
    for name, call in _every_call(m).items():
        with pytest.raises(ClosedError):
            call()
            pytest.fail(f"{name} worked on a closed Memory")


def test_close_is_idempotent_and_every_call_after_it_raises_closed(db_path):
    m = Memory(db_path, embed=EMBED)
    m.add("user", "hello", conversation_id="c", owner_id=OWNER, msg_id="m0")
    assert not m.closed
    m.close()
    assert m.closed
    m.close()  # a second (and third) close is a no-op
    m.close()
    assert m.closed
    _assert_every_call_raises_closed(m)
    # Closing released the file: it was the last connection, so SQLite folded the WAL in.
    assert not os.path.exists(str(db_path) + "-wal")
    with Memory(db_path, embed=EMBED) as again:
        assert again.get("m0").content == "hello"
        assert again.stats()["messages"] == 1


def test_context_manager_closes_on_exit(db_path):
    with Memory(db_path, embed=EMBED) as m:
        assert not m.closed
        m.add("user", "inside", conversation_id="c", owner_id=OWNER, msg_id="m0")
    assert m.closed
    _assert_every_call_raises_closed(m)
    assert not os.path.exists(str(db_path) + "-wal")


def test_context_manager_closes_when_the_body_raises(db_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Memory(db_path, embed=EMBED) as m:
            m.add("user", "kept", conversation_id="c", owner_id=OWNER, msg_id="m0")
            raise RuntimeError("boom")
    assert m.closed
    with pytest.raises(ClosedError):
        m.add("user", "x", conversation_id="c", owner_id=OWNER)
    with Memory(db_path, embed=EMBED) as again:
        assert again.get("m0").content == "kept"


def test_close_from_many_threads_at_once(db_path):
    m = Memory(db_path, embed=EMBED)
    m.add("user", "x", conversation_id="c", owner_id=OWNER)
    errors: list[BaseException] = []
    barrier = threading.Barrier(8)

    def closer() -> None:
        try:
            barrier.wait(10)
            m.close()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=closer) for _ in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(10)
    assert not errors, errors
    assert m.closed
    with pytest.raises(ClosedError):
        m.get_memory("recent_history", conversation_id="c", owner_id=OWNER)
