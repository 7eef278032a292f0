"""The strategy log: one entry per get_memory call, never in the way of a read; DuckDB
analytics over it; retention; many processes on one log file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder

from localmem import Memory, Strategy, StrategyStats
from localmem.errors import InvalidInputError, StrategyUnavailableError
from localmem.strategy_log import BATCH_ROWS, LogEntry, StrategyLog

US_PER_DAY = 86_400 * 1_000_000


def entry(at_us: int, owner: str = "u", strategy: str = "hybrid", chosen_by: str = "caller", **more) -> LogEntry:
    fields = {"conversation_id": "c", "reason": None if chosen_by == "caller" else "fallback", "results": 3,
              "latency_ms": 2.5, "cache_hit": False, **more}
    return LogEntry(at_us, owner, strategy=strategy, chosen_by=chosen_by, **fields)


@pytest.fixture
def filled(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        mem.add("user", "we booked Hotel Lisboa for July", conversation_id="old", owner_id="u")
        mem.add("user", "plan the party", conversation_id="now", owner_id="u")
        yield mem


def test_every_call_is_logged_with_who_chose_and_the_query_hashed(filled):
    filled.get_memory("recent_history", conversation_id="now", owner_id="u")
    filled.get_memory("hybrid", query="hotel Lisboa secret", conversation_id="now", owner_id="u")
    filled.get_memory("hybrid", query="hotel Lisboa secret", conversation_id="now", owner_id="u")  # cached
    filled.get_memory("auto", query="Oi, tudo bem?", conversation_id="now", owner_id="u")
    rows = filled.analytics().sql(
        "SELECT strategy, chosen_by, reason, results, cache_hit, query_hash, query, selection_ms"
        " FROM strategy_log ORDER BY called_at").fetchall()
    assert [r[:2] for r in rows] == [("recent_history", "caller"), ("hybrid", "caller"), ("hybrid", "caller"),
                                     ("session_only", "auto")]
    assert rows[3][2] == "small_talk" and rows[3][7] is not None and rows[0][7] is None
    assert [r[4] for r in rows] == [False, False, True, False]
    assert rows[1][5] == rows[2][5] and len(rows[1][5]) == 16  # the same query, the same hash
    assert all(r[6] is None for r in rows)  # no text without log_queries=True
    raw = b"".join(Path(filled.path + suffix).read_bytes() for suffix in ("-log", "-log-wal"))
    assert b"secret" not in raw


def test_log_queries_keeps_the_text(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", log_queries=True) as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        mem.get_memory("auto", query="what did I just say?", conversation_id="c", owner_id="u")
        (query,) = mem.analytics().execute("SELECT query FROM strategy_log").fetchone()
    assert query == "what did I just say?"


def test_strategy_stats_per_strategy_and_global(tmp_path):
    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        for _ in range(3):
            mem.get_memory("recent_history", conversation_id="c", owner_id="u")
        mem.get_memory("auto", query="obrigado!", conversation_id="c", owner_id="u")
        mem.get_memory("recent_history", conversation_id="c", owner_id="v")
        stats = mem.strategy_stats(owner_id="u")
        everyone = mem.strategy_stats(days=None)
    assert isinstance(stats, StrategyStats) and stats.owner_id == "u" and stats.total_calls == 4
    by = {u.strategy: u for u in stats.strategies}
    assert by["recent_history"].calls == 3 and by["recent_history"].share == 0.75
    assert by["recent_history"].avg_results == 1.0 and by["recent_history"].auto_share == 0.0
    assert by["session_only"].auto_share == 1.0 and stats.auto_reasons == (("small_talk", 1),)
    assert by["recent_history"].latency_p50_ms <= by["recent_history"].latency_p95_ms
    assert everyone.total_calls == 5 and everyone.owner_id is None
    json.dumps(stats.as_dict())  # JSON-ready


def test_stats_arguments_are_checked(filled):
    with pytest.raises(InvalidInputError):
        filled.strategy_stats(days=0)
    with pytest.raises(InvalidInputError):
        filled.strategy_stats(owner_id="")


def test_no_log_when_turned_off(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", strategy_log=False) as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        mem.get_memory("recent_history", conversation_id="c", owner_id="u")
        with pytest.raises(StrategyUnavailableError):
            mem.strategy_stats()
    assert not os.path.exists(tmp_path / "m.db-log")


def test_an_unwritable_log_never_fails_a_read(tmp_path, caplog):
    (tmp_path / "m.db-log").mkdir()  # a folder where the log file goes: it cannot be opened
    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        for _ in range(3):
            got = mem.get_memory("recent_history", conversation_id="c", owner_id="u")
            assert len(got) == 1
        assert mem._log.flush() is False  # kept in memory for a later try, and said once
    assert any("could not write the strategy log" in r.message for r in caplog.records)


def test_retention_drops_old_entries_and_their_explicit_counts(tmp_path):
    log = StrategyLog(str(tmp_path / "x-log"), retention_days=None)
    now = time.time_ns() // 1000
    old, new = [entry(now - 100 * US_PER_DAY - i) for i in range(5)], [entry(now - i) for i in range(7)]
    log.write(old + new)
    assert log.explicit_counts("u", now - 200 * US_PER_DAY) == {"hybrid": 12}
    assert log.prune(now - 90 * US_PER_DAY) == 5
    assert len(log.columns()["at_us"]) == 7
    assert log.explicit_counts("u", now - 200 * US_PER_DAY) == {"hybrid": 7}
    log.close()


def test_batches_fill_up_and_columns_filter_by_owner_and_time(tmp_path):
    log = StrategyLog(str(tmp_path / "x-log"))
    now = time.time_ns() // 1000
    for start in range(0, BATCH_ROWS + 100, 700):  # appended in several writes
        log.write([entry(now - i, owner=f"o{i % 3}") for i in range(start, min(start + 700, BATCH_ROWS + 100))])
    assert len(log.columns()["at_us"]) == BATCH_ROWS + 100
    assert len(log.columns(owner_id="o1")["at_us"]) == len([i for i in range(BATCH_ROWS + 100) if i % 3 == 1])
    assert len(log.columns(since_us=now - 9)["at_us"]) == 10
    assert log.columns(owner_id="nobody")["strategy"].size == 0
    assert log.forget("o1") > 0 and log.columns(owner_id="o1")["at_us"].size == 0
    import sqlite3

    sizes = [n for (n,) in sqlite3.connect(tmp_path / "x-log").execute("SELECT rows FROM batches ORDER BY id")]
    assert max(sizes) <= BATCH_ROWS
    log.close()


def test_many_processes_share_one_log(tmp_path):
    script = (
        "import sys; from localmem import Memory\n"
        "with Memory(sys.argv[1], embed='off') as mem:\n"
        "    mem.add('user', 'hello', conversation_id='c', owner_id='u')\n"
        "    for _ in range(200): mem.get_memory('recent_history', conversation_id='c', owner_id=sys.argv[2])\n"
    )
    db = str(tmp_path / "m.db")
    Memory(db, embed="off").close()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [subprocess.Popen([sys.executable, "-c", script, db, f"p{i}"], env=env) for i in range(3)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    with Memory(db, embed="off") as mem:
        stats = mem.strategy_stats()
        assert stats.total_calls == 600
        assert {mem.strategy_stats(owner_id=f"p{i}").total_calls for i in range(3)} == {200}


def test_cli_stats(tmp_path, run):
    db = str(tmp_path / "m.db")
    with Memory(db, embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        mem.get_memory("auto", query="thanks!", conversation_id="c", owner_id="u")
        mem.get_memory(Strategy.RECENT_HISTORY, conversation_id="c", owner_id="u")
    code, out, err = run("--db", db, "stats")
    assert code == 0, err
    assert "2 get_memory calls" in out and "session_only" in out and "why auto chose: small_talk 1" in out
    code, out, _ = run("--db", db, "stats", "--owner", "u", "--json")
    assert code == 0 and json.loads(out)["total_calls"] == 2


def test_a_forked_child_logs_its_own_calls_once(tmp_path):
    from forking import fork, wait_child

    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        for _ in range(3):  # buffered in the parent when it forks
            mem.get_memory("recent_history", conversation_id="c", owner_id="parent")

        def child() -> int:
            for _ in range(2):
                mem.get_memory("recent_history", conversation_id="c", owner_id="child")
            mem.close()  # writes the child's entries, not the parent's buffer
            return 0

        pid = fork(child)
        assert wait_child(pid, 60) == 0
        stats = {o: mem.strategy_stats(owner_id=o).total_calls for o in ("parent", "child")}
    assert stats == {"parent": 3, "child": 2}


def test_a_log_that_cannot_be_written_backs_off_instead_of_spinning(tmp_path):
    log = StrategyLog(str(tmp_path / "missing" / "m.db-log"))  # its folder does not exist
    attempts = []
    real_write = log._write

    def counted(entries):
        attempts.append(len(entries))
        return real_write(entries)

    log._write = counted
    now = time.time_ns() // 1000
    for i in range(600):  # more than FLUSH_AT: the writer must still pause between tries
        log.append(entry(now - i))
    deadline = time.monotonic() + 30
    while not attempts and time.monotonic() < deadline:  # the writer's first try (and failure)
        time.sleep(0.01)
    time.sleep(0.3)  # a spinning writer made thousands of tries in this time; a slow machine makes fewer
    assert 1 <= len(attempts) <= 2
    assert log._backoff >= 1.0
    before = log._backoff
    assert log.flush() is False and log._backoff == min(60.0, before * 2)
    log.close()
    assert log.dropped == 600  # unwritable at close: counted, not silently gone


def test_reads_never_touch_the_log_file(tmp_path):
    log = StrategyLog(str(tmp_path / "m.db-log"))

    def no_file():
        raise AssertionError("a read opened the log's write connection")

    log._connection = no_file
    log.append(entry(time.time_ns() // 1000, query="what did I say about the budget?"))
    assert log.explicit_counts("u", 0) == {"hybrid": 1}  # the buffer's, no file yet
    assert log._buffer[0].query_hash is None  # hashed by the writer, not on the read path


def test_the_callers_query_is_logged_never_the_message_searched_with(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync", log_queries=True) as mem:
        mem.add("user", "my secret diagnosis is X", conversation_id="c", owner_id="u")
        mem.get_memory("hybrid", conversation_id="c", owner_id="u")  # searches with that message
        mem.get_memory("hybrid", query="  ", conversation_id="c", owner_id="u")
        mem.get_memory("hybrid", query="x" * 2000, conversation_id="c", owner_id="u")
        rows = mem.analytics().execute("SELECT query, query_hash FROM strategy_log").fetchall()
    assert rows[0] == (None, None) and rows[1] == (None, None)
    assert rows[2][0] == "x" * 500 and rows[2][1] is not None  # the original design's 500 characters


def test_small_writes_are_merged_into_full_batches(tmp_path):
    import sqlite3

    from localmem.strategy_log import COMPACT_AT

    log = StrategyLog(str(tmp_path / "x-log"))
    now = time.time_ns() // 1000
    for i in range(100):  # a write a second of a quiet agent
        log.write([entry(now - i)])
    batches = sqlite3.connect(tmp_path / "x-log").execute("SELECT count(*), sum(rows) FROM batches").fetchone()
    assert batches[1] == 100 and batches[0] < COMPACT_AT
    assert len(log.columns()["at_us"]) == 100
    log.close()


def test_stats_read_while_another_process_writes_the_log(tmp_path):
    import sqlite3

    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        mem.get_memory("recent_history", conversation_id="c", owner_id="u")
        mem._log.flush()
        other = sqlite3.connect(tmp_path / "m.db-log", isolation_level=None)
        other.execute("BEGIN IMMEDIATE")  # another process's write in progress
        try:
            mem.get_memory("recent_history", conversation_id="c", owner_id="u")
            got = mem.strategy_stats()  # its flush waits, gives up, and the read goes on
        finally:
            other.execute("ROLLBACK")
            other.close()
    assert got.total_calls >= 1


def test_cli_reads_do_not_create_a_log(tmp_path, run):
    db = str(tmp_path / "m.db")
    with Memory(db, embed="off", strategy_log=False) as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
    for argv in (["recent", "--conversation", "c", "--owner", "u"], ["stats"], ["metrics"]):
        code, _, err = run("--db", db, *argv)
        assert code in (0, 1), err
    assert not os.path.exists(db + "-log")
