"""Export / import speed, file sizes and memory (issue 13), beside add_many as a yardstick.

    python benchmarks/transfer_speed.py            # 100k messages, 384-dim vectors (~2 minutes)
    python benchmarks/transfer_speed.py --quick    # smoke run, numbers not meaningful

The source database holds N messages (1000 conversations, ~90 characters each, a third
with metadata) and a 384-dimension vector for each (random unit vectors written through
the store: what all-MiniLM-L6-v2 would leave, without running it). Rows:

* add_many: the same messages stored from Python dicts, embed="off": the bulk-write
  yardstick an import is compared with (an import reads, validates and looks up every line
  first, then writes through the same insert path).
* export jsonl / jsonl + vectors / parquet + vectors: Memory.export of every message.
* import jsonl / jsonl + vectors / parquet + vectors: into an empty file (vectors stored as
  they are, nothing embedded), then the same file imported again (every line unchanged:
  nothing is written).

Each row gives seconds, messages per second, and for files their size; RSS growth is the
peak anonymous memory over the run start (Linux RssAnon; SQLite's mmap'd pages excluded).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from localmem import Memory

DIM = 384
NAME = "bench-random-384"


def anon_mb() -> float | None:
    """This process's anonymous resident memory (Linux), in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def messages(n: int):
    for i in range(n):
        yield {
            "role": "user" if i % 2 == 0 else "assistant",
            "content": f"message {i}: we talked about the trip to Lisbon and where to eat near the station",
            "conversation_id": f"c{i % 1000}", "owner_id": f"u{i % 50}", "msg_id": f"m{i:08d}",
            "metadata": {"channel": "web", "turn": i} if i % 3 == 0 else None,
        }


def build_source(path: Path, n: int) -> Memory:
    mem = Memory(path, embed="off", strategy_log=False, summaries=None)
    mem.add_many(messages(n))
    store = mem._store  # vectors without a model: random unit vectors, written as the worker would
    rng = np.random.default_rng(7)
    identity = {"name": NAME, "dim": DIM, "sha256": None}
    while batch := store.pending_batch(5000):
        vectors = rng.standard_normal((len(batch), DIM)).astype("<f4")
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        store.write_vectors(identity, [row_id for row_id, _ in batch], [v.tobytes() for v in vectors])
    return mem


def timed(func):
    started = time.perf_counter()
    result = func()
    return result, time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=100_000, help="messages (default: 100000)")
    parser.add_argument("--quick", action="store_true", help="2000 messages: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args()
    n = 2000 if args.quick else args.n
    base = anon_mb()
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        tmp = Path(folder)
        with Memory(tmp / "yardstick.db", embed="off", strategy_log=False, summaries=None) as mem:
            _, seconds = timed(lambda: mem.add_many(messages(n)))
        rows.append({"name": "add_many (yardstick)", "seconds": seconds})
        source = build_source(tmp / "source.db", n)
        files = {
            "jsonl": (tmp / "all.jsonl", False),
            "jsonl + vectors": (tmp / "vectors.jsonl", True),
            "parquet + vectors": (tmp / "vectors.parquet", True),
        }
        for label, (path, vectors) in files.items():
            report, seconds = timed(lambda p=path, v=vectors: source.export(p, vectors=v))
            assert report.messages == n
            rows.append({"name": f"export {label}", "seconds": seconds, "bytes": path.stat().st_size})
        source.close()
        for i, (label, (path, vectors)) in enumerate(files.items()):
            with Memory(tmp / f"copy{i}.db", embed="off", strategy_log=False, summaries=None) as copy:
                report, seconds = timed(lambda p=path, c=copy: c.import_(p))
                assert report.imported == n and report.vectors == (n if vectors else 0), report
                rows.append({"name": f"import {label}", "seconds": seconds})
                report, seconds = timed(lambda p=path, c=copy: c.import_(p))
                assert report.unchanged == n and report.imported == 0
                rows.append({"name": f"import {label} again (no-op)", "seconds": seconds})
    peak = anon_mb()
    for row in rows:
        row["per_second"] = n / row["seconds"]
    result = {"n": n, "dim": DIM, "rows": rows, "python": sys.version.split()[0], "cpus": os.cpu_count(),
              "rss_anon_growth_mb": None if base is None or peak is None else peak - base,
              "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    print(f"{n} messages, {DIM}-dim vectors")
    print(f"{'':34}{'seconds':>9}{'msg/s':>10}{'MB':>8}")
    for row in rows:
        size = f"{row['bytes'] / 1e6:8.1f}" if "bytes" in row else ""
        print(f"{row['name']:34}{row['seconds']:9.2f}{row['per_second']:10.0f}{size}")
    if result["rss_anon_growth_mb"] is not None:
        print(f"anonymous memory: {result['rss_anon_growth_mb']:.0f} MB more than at start (whole run)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
