"""Core engine speed: add(), add_many(), recent_history, next to bare-SQLite floors.

    python benchmarks/core_speed.py            # full run (~1 minute)
    python benchmarks/core_speed.py --quick    # smoke run, numbers not meaningful

Baselines run in the same process, interleaved with what they are compared to, in rounds,
so the noise of a shared machine hits both alike; we report medians and ratios.

* floor: a bare single-row INSERT + COMMIT into a table of the same columns, no indexes,
  WAL + synchronous=NORMAL, same driver. The issue's yardstick for add().
* schema SQL: the same INSERT into localmem's own schema (indexes, triggers, the FTS5 row
  with its previous message), raw SQL.
  The gap floor -> schema SQL is the cost of the index work; schema SQL -> add() is
  localmem's own overhead (validation, id, locking, result object).
* recent_history (hot window): repeated reads that the hot window answers (cache_hit).
* recent_history (SQLite): the same reads with the hot window off.
* add_many: 100k messages from a generator, chunked transactions (1000 conversations of
  100 messages, each with some to fold into its running summary); beside it the same with
  ``summaries=None``, what the background summary worker costs an import (two runs each,
  alternated, the better of each reported); peak RSS growth, and
  the growth of anonymous memory (Linux: RssAnon), which leaves out the database pages
  SQLite maps with mmap: those are the OS page cache, shared and reclaimable, and they
  grow with the file, not with localmem's own memory.

Every Memory here is opened with embed="off": these rows time the durable write path (the
message, its FTS5 row and its place in the embedding queue). Embedding runs after it, in
the background; models_speed.py and semantic_speed.py measure that side.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

from localmem import Memory, driver
from localmem.store import (
    _INSERT_FTS,  # the statement add() runs, so the row compares like with like
)

TEXT = "I love pizza napolitana; can you remind me which place we liked near the station?"
FLOOR_DDL = (
    "CREATE TABLE floor (id INTEGER PRIMARY KEY, msg_id TEXT, conversation_id TEXT,"
    " owner_id TEXT, feature TEXT, role TEXT, content TEXT, metadata TEXT, created_at INTEGER)"
)
INSERT = (
    "INSERT INTO {table} (msg_id, conversation_id, owner_id, feature, role, content, metadata,"
    " created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summary(name: str, samples_s: list[float]) -> dict:
    us = [s * 1e6 for s in samples_s]
    return {"name": name, "n": len(us), "p50_us": statistics.median(us), "p95_us": pct(us, 0.95)}


def raw_inserter(path: Path, table: str):
    conn = driver.connect(str(path))
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")
    if table == "floor":
        conn.execute(FLOOR_DDL)
    sql = INSERT.format(table=table)
    counter = [0]

    index_fts = table == "messages"

    def one() -> float:
        counter[0] += 1
        params = (f"raw-{counter[0]}", "c-raw", "u1", None, "user", TEXT, None, time.time_ns() // 1000)
        t = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        rowid = conn.execute(sql, params).lastrowid
        if index_fts:  # what localmem writes with every message: its keyword row
            conn.execute(_INSERT_FTS, (rowid - 1,))
        conn.execute("COMMIT")
        return time.perf_counter() - t

    return conn, one


def bench_add(tmp: Path, rounds: int, per_round: int) -> list[dict]:
    floor_conn, floor = raw_inserter(tmp / "floor.db", "floor")
    mem = Memory(tmp / "add.db", embed="off")  # the durable write; embedding is measured apart
    schema_conn, schema_sql = raw_inserter(tmp / "add.db", "messages")
    samples: dict[str, list[float]] = {"floor": [], "schema SQL": [], "add()": []}
    for _ in range(rounds):
        for _ in range(per_round):
            samples["floor"].append(floor())
        for _ in range(per_round):
            samples["schema SQL"].append(schema_sql())
        for _ in range(per_round):
            t = time.perf_counter()
            mem.add("user", TEXT, conversation_id="c-add", owner_id="u1")
            samples["add()"].append(time.perf_counter() - t)
    floor_conn.close()
    schema_conn.close()
    mem.close()
    return [summary(k, v) for k, v in samples.items()]


def bench_recent(tmp: Path, rounds: int, per_round: int) -> list[dict]:
    hot = Memory(tmp / "recent.db", embed="off")
    cold = Memory(tmp / "recent.db", hot_window=0, embed="off")
    for i in range(50):
        hot.add("user" if i % 2 == 0 else "assistant", f"{TEXT} ({i})", conversation_id="c-r", owner_id="u1")
    args = dict(conversation_id="c-r", owner_id="u1", limit=10, lookback_days=7)
    hot.get_memory("recent_history", **args)  # fill the window
    samples: dict[str, list[float]] = {"recent_history (hot window)": [], "recent_history (SQLite)": []}
    for _ in range(rounds):
        for _ in range(per_round):
            t = time.perf_counter()
            r = hot.get_memory("recent_history", **args)
            samples["recent_history (hot window)"].append(time.perf_counter() - t)
            assert r.cache_hit and len(r.messages) == 10
        for _ in range(per_round):
            t = time.perf_counter()
            r = cold.get_memory("recent_history", **args)
            samples["recent_history (SQLite)"].append(time.perf_counter() - t)
            assert not r.cache_hit and len(r.messages) == 10
    hot.close()
    cold.close()
    return [summary(k, v) for k, v in samples.items()]


def bench_add_many(tmp: Path, n: int, summaries: bool = True) -> dict:
    def items():
        for i in range(n):
            yield {"role": "user" if i % 2 == 0 else "assistant", "content": f"{TEXT} #{i}",
                   "conversation_id": f"c{i // 100}"}

    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    options = {} if summaries else {"summaries": None}
    tmp.mkdir()
    with Memory(tmp / "bulk.db", embed="off", **options) as mem:
        anon_before = anon_kb()
        t = time.perf_counter()
        added = mem.add_many(items(), owner_id="u1")
        elapsed = time.perf_counter() - t
        anon_after = anon_kb()
        assert added == n and mem.stats()["messages"] == n
    growth_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before
    anon = None if anon_before is None or anon_after is None else (anon_after - anon_before) / 1024
    return {"name": "add_many" if summaries else "add_many, summaries=None", "n": n, "seconds": elapsed, "msgs_per_s": n / elapsed,
            "peak_rss_growth_mb": growth_kb / 1024, "anon_growth_mb": anon}


def anon_kb() -> int | None:
    """Anonymous resident memory of this process in kB (Linux), else None."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    rounds, per_round, bulk = (2, 50, 2_000) if args.quick else (7, 1_000, 100_000)

    with tempfile.TemporaryDirectory(prefix="localmem-bench-") as tmp:
        tmp_path = Path(tmp)
        adds = bench_add(tmp_path, rounds, per_round)
        reads = bench_recent(tmp_path, rounds, per_round)
        # On and off alternated (on, off, off, on), each file fresh: the better of each
        # pair, so that neither side gets the warmer machine.
        runs = [bench_add_many(tmp_path / f"bulk{k}", bulk, summaries=on)
                for k, on in enumerate((True, False, False, True))]
        # (Memory figures from the first run of each: peak RSS only grows within a process.)
        bulk_result = {**runs[0], "msgs_per_s": max(runs[0]["msgs_per_s"], runs[3]["msgs_per_s"])}
        bulk_plain = {**runs[1], "msgs_per_s": max(runs[1]["msgs_per_s"], runs[2]["msgs_per_s"])}

    floor = adds[0]["p50_us"]
    print(f"localmem core speed  |  Python {platform.python_version()}  |  driver "
          f"{driver.dbapi().__name__} (SQLite {driver.dbapi().sqlite_version})  |  "
          f"{os.cpu_count()} CPUs  |  {rounds} rounds x {per_round}")
    print(f"{'operation':32s} {'p50 µs':>9s} {'p95 µs':>9s} {'x floor':>8s}")
    for row in adds + reads:
        print(f"{row['name']:32s} {row['p50_us']:9.1f} {row['p95_us']:9.1f} {row['p50_us'] / floor:8.2f}")
    print(f"{'add_many':32s} {bulk_result['msgs_per_s']:9.0f} msgs/s over {bulk_result['n']} messages, "
          f"peak RSS growth {bulk_result['peak_rss_growth_mb']:.1f} MB"
          + ("" if bulk_result["anon_growth_mb"] is None
             else f" (anonymous memory {bulk_result['anon_growth_mb']:+.1f} MB; the rest is mmap'd file pages)"))
    print(f"{'add_many, summaries=None':32s} {bulk_plain['msgs_per_s']:9.0f} msgs/s "
          f"({bulk_result['msgs_per_s'] / bulk_plain['msgs_per_s']:.2f}x with summaries on)")

    by_name = {r["name"]: r for r in adds + reads}
    goals = [
        ("add() p50 within 2x of the floor", by_name["add()"]["p50_us"] <= 2 * floor,
         f"{by_name['add()']['p50_us'] / floor:.2f}x"),
        ("recent_history (hot window) p50 < 200 µs",
         by_name["recent_history (hot window)"]["p50_us"] < 200,
         f"{by_name['recent_history (hot window)']['p50_us']:.1f} µs"),
        ("add_many >= 30,000 msgs/s", bulk_result["msgs_per_s"] >= 30_000,
         f"{bulk_result['msgs_per_s']:.0f}/s"),
    ]
    print()
    for name, ok, value in goals:
        print(f"{'met ' if ok else 'MISSED'}  {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"ops": adds + reads, "add_many": bulk_result, "add_many_plain": bulk_plain,
                                         "goals": [{"goal": g, "met": ok, "value": v} for g, ok, v in goals]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
