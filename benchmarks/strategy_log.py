"""What the strategy log costs a read, whether it holds up message writers, and how fast
its analytics answer over a million entries.

    python benchmarks/strategy_log.py            # ~1 min, no model needed
    python benchmarks/strategy_log.py --rows 200000

1. Read path: ``get_memory`` on the same Memory file opened with ``strategy_log=True`` and
   ``False``, alternating rounds, median per call: ``recent_history`` from the hot window
   (the cheapest call, where a fixed cost shows most) and a query-cache hit of a keyword
   search.
2. Writers: ``add()`` latency while a thread of the same process calls ``get_memory`` as
   fast as it can, log on and off (the log writes to its own file: it must not hold the
   database's write lock).
3. Analytics over ``--rows`` entries (default 1M, 1,000 owners, 5 strategies): writing them,
   ``strategy_stats()`` for all owners and for one, ``analytics()`` (the whole log as a
   DuckDB table). Baseline in the same run: the same entries as one SQLite row per call
   (the original design's ``memory_strategy_log`` table), read into DuckDB through
   Python, the way a row table must be without DuckDB's sqlite extension (not available
   offline). Goal: stats under 1 s.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from localmem import Memory, analytics
from localmem.driver import dbapi
from localmem.strategy_log import LogEntry, StrategyLog

STRATEGIES = ("session_only", "recent_history", "semantic_search", "hybrid", "cross_conversation")


def median_us(calls: list[float]) -> float:
    return statistics.median(calls) * 1e6


def read_path(folder: Path, rounds: int = 7, calls: int = 400) -> dict[str, dict[str, float]]:
    db = folder / "read.db"
    with Memory(db, embed="off") as mem:
        mem.add_many([{"role": "user", "content": f"message {i} about pizza and the party",
                       "conversation_id": "c", "owner_id": "u"} for i in range(30)])
    kinds = {
        "recent_history (hot window)": {"strategy": "recent_history", "limit": 10},
        "keyword search (query cache hit)": {"strategy": "semantic_search", "query": "pizza party", "dense": False},
    }
    out: dict[str, dict[str, list[float]]] = {k: {"log on": [], "log off": []} for k in kinds}
    mems = {"log on": Memory(db, embed="off"), "log off": Memory(db, embed="off", strategy_log=False)}
    try:
        for _ in range(rounds):
            for label, mem in mems.items():
                for kind, ask in kinds.items():
                    ask = dict(ask)
                    strategy = ask.pop("strategy")
                    mem.get_memory(strategy, conversation_id="c", owner_id="u", **ask)  # warm
                    times = []
                    for _ in range(calls):
                        started = time.perf_counter()
                        mem.get_memory(strategy, conversation_id="c", owner_id="u", **ask)
                        times.append(time.perf_counter() - started)
                    out[kind][label].append(median_us(times))
    finally:
        for mem in mems.values():
            mem.close()
    return {k: {label: statistics.median(v) for label, v in by.items()} for k, by in out.items()}


def writers(folder: Path, rounds: int = 5, adds: int = 300) -> dict[str, float]:
    """Median add() latency (µs) with a reader thread calling get_memory meanwhile."""
    result: dict[str, list[float]] = {"log on": [], "log off": []}
    for r in range(rounds):
        for label, on in (("log on", True), ("log off", False)):
            with Memory(folder / f"w{r}-{label[-2:]}.db", embed="off", strategy_log=on) as mem:
                mem.add("user", "seed", conversation_id="c", owner_id="u")
                stop = threading.Event()

                def read(mem: Memory = mem, stop: threading.Event = stop) -> None:
                    while not stop.is_set():
                        mem.get_memory("recent_history", conversation_id="c", owner_id="u", limit=5)

                thread = threading.Thread(target=read)
                thread.start()
                times = []
                try:
                    for i in range(adds):
                        started = time.perf_counter()
                        mem.add("user", f"message {i}", conversation_id="c", owner_id="u")
                        times.append(time.perf_counter() - started)
                finally:
                    stop.set()
                    thread.join()
                result[label].append(median_us(times))
    return {label: statistics.median(v) for label, v in result.items()}


def entries(n: int) -> list[LogEntry]:
    rng = random.Random(7)
    now = time.time_ns() // 1000
    return [LogEntry(now - rng.randrange(6 * 86_400_000_000), f"owner-{i % 1000}", f"conv-{i % 20011}",
                     STRATEGIES[i % 5], "auto" if i % 3 else "caller", "closer_elsewhere" if i % 3 else None,
                     i % 11, rng.random() * 40, i % 4 == 0, 0.6 if i % 3 else None, None, None, None,
                     rng.getrandbits(63) | 1, None)
            for i in range(n)]


def row_table_baseline(folder: Path, items: list[LogEntry]) -> tuple[float, float]:
    """(write s, stats s) for one SQLite row per call, read into DuckDB through Python."""
    conn = dbapi().connect(str(folder / "rows.db"), isolation_level=None)
    conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("CREATE TABLE memory_strategy_log (id INTEGER PRIMARY KEY, created_at INT, owner_id TEXT,"
                 " correlation_id TEXT, strategy TEXT, chosen_by TEXT, reason TEXT, results_count INT,"
                 " latency_ms REAL, cache_hit INT)")
    started = time.perf_counter()
    conn.execute("BEGIN")
    conn.executemany("INSERT INTO memory_strategy_log (created_at, owner_id, correlation_id, strategy, chosen_by,"
                     " reason, results_count, latency_ms, cache_hit) VALUES (?,?,?,?,?,?,?,?,?)",
                     [(e.at_us, e.owner_id, e.conversation_id, e.strategy, e.chosen_by, e.reason, e.results,
                       e.latency_ms, int(e.cache_hit)) for e in items])
    conn.execute("COMMIT")
    wrote = time.perf_counter() - started
    started = time.perf_counter()
    rows = conn.execute("SELECT strategy, chosen_by, reason, results_count, latency_ms, cache_hit"
                        " FROM memory_strategy_log WHERE created_at >= ?", (0,)).fetchall()
    strategy, chosen_by, reason, results, latency, hit = zip(*rows, strict=True)
    columns = {"strategy": np.array(strategy, dtype=object), "chosen_by": np.array(chosen_by, dtype=object),
               "reason": np.array(reason, dtype=object), "results": np.array(results, dtype=np.int32),
               "latency_ms": np.array(latency, dtype=np.float32), "cache_hit": np.array(hit, dtype=np.uint8)}
    analytics.strategy_stats(columns, owner_id=None, days=None)
    conn.close()
    return wrote, time.perf_counter() - started


def analytics_speed(folder: Path, n: int, rounds: int = 3) -> dict[str, float]:
    items = entries(n)
    log = StrategyLog(str(folder / "big.db-log"))
    started = time.perf_counter()
    log.write(items)
    wrote = time.perf_counter() - started
    timings: dict[str, list[float]] = {"stats, all owners": [], "stats, one owner": [], "analytics() table": []}
    for _ in range(rounds):
        started = time.perf_counter()
        stats = analytics.strategy_stats(log.columns(names=analytics.STATS_COLUMNS), owner_id=None, days=None)
        timings["stats, all owners"].append(time.perf_counter() - started)
        assert stats.total_calls == n
        started = time.perf_counter()
        analytics.strategy_stats(log.columns(owner_id="owner-7", names=analytics.STATS_COLUMNS),
                                 owner_id="owner-7", days=None)
        timings["stats, one owner"].append(time.perf_counter() - started)
        started = time.perf_counter()
        analytics.connect(log.columns()).close()
        timings["analytics() table"].append(time.perf_counter() - started)
    log.close()
    base_write, base_stats = row_table_baseline(folder, items)
    out = {name: statistics.median(v) for name, v in timings.items()}
    out.update({"write": wrote, "baseline write": base_write, "baseline stats": base_stats})
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="log entries for the analytics part")
    parser.add_argument("--quick", action="store_true", help="fewer rounds (a check that it runs, not a measurement)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    rounds = 2 if args.quick else 7
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        print("1. read path, median per call (µs), alternating rounds on one file")
        reads = read_path(folder, rounds=rounds, calls=50 if args.quick else 400)
        for kind, by in reads.items():
            on, off = by["log on"], by["log off"]
            print(f"   {kind:34} log on {on:7.1f}   log off {off:7.1f}   cost {on - off:+6.1f} µs ({on / off:.2f}x)")
        print("2. add() median latency (µs) while a thread reads as fast as it can")
        w = writers(folder, rounds=2 if args.quick else 5, adds=50 if args.quick else 300)
        print(f"   log on {w['log on']:.0f}   log off {w['log off']:.0f}   ratio {w['log on'] / w['log off']:.2f}")
        print(f"3. analytics over {args.rows:,} entries (medians of 3)")
        a = analytics_speed(folder, args.rows)
        print(f"   write: columnar batches {a['write']:.2f} s; baseline (one row per call) {a['baseline write']:.2f} s")
        for name in ("stats, all owners", "stats, one owner", "analytics() table"):
            print(f"   {name:20} {a[name]:.3f} s")
        print(f"   baseline stats (row table -> Python -> DuckDB): {a['baseline stats']:.3f} s, "
              f"{a['baseline stats'] / a['stats, all owners']:.1f}x the columnar log")
        goal = a["stats, all owners"] < 1.0
        print(f"   goal stats < 1 s over {args.rows:,} rows: {'met' if goal else 'MISSED'}")
    if args.json:
        args.json.write_text(json.dumps({"read_path_us": reads, "add_us": w, "analytics_s": a, "rows": args.rows}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
