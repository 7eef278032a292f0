"""What the first stage's signals cost per query: p50/p95 of the searching strategies (and
of add()) at 10k messages, this tree beside another localmem tree (the baseline) in the
same run.

    python benchmarks/quality_cost.py --baseline PATH [--rounds 4] [--queries 100]

PATH is a checkout of the baseline localmem (for issue 17: the commit before it,
``git worktree add /tmp/before 4b25969``). Each round runs the measurement in a child
process per tree, alternating (A B A B ...), so the noise of a shared machine hits both;
the medians over rounds are printed with their ratio. The data is ``speed.py``'s: one
owner, 20 conversations, LoCoMo turns with precomputed vectors (``LookupEmbedder``: no
model time), query cache off, lookback None, conversation c0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
STRATEGIES = ("semantic_search", "hybrid", "cross_conversation")
ROWS = (*STRATEGIES, "add (embed off)")


def measure(n: int, queries: int, seed: int) -> dict[str, list[float]]:
    """In the child: build n messages, then time each strategy over the queries (ms)."""
    sys.path.insert(0, str(HERE))
    from semantic_speed import LookupEmbedder, dataset

    from localmem import Memory, Strategy

    vectors, base_texts, asked, _ = dataset(n, queries, seed)
    texts = [f"{t} [{i}]" for i, t in enumerate(base_texts)]
    table = dict(zip(texts, vectors, strict=True)) | {q: v for q, v in asked}
    out: dict[str, list[float]] = {s: [] for s in STRATEGIES}
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "q.db", embedder=LookupEmbedder(table),
                                                      query_cache_ttl=0) as mem:
        mem.add_many({"role": "user", "content": text, "conversation_id": f"c{i % 20}", "owner_id": "u1"}
                     for i, text in enumerate(texts))
        mem.flush()
        for query, _ in asked[:5]:  # warm the pages
            mem.get_memory(Strategy.CROSS_CONVERSATION, query=query, conversation_id="c0", owner_id="u1",
                           lookback_days=None)
        for query, _ in asked:
            for name in STRATEGIES:
                t = time.perf_counter()
                mem.get_memory(Strategy(name), query=query, conversation_id="c0", owner_id="u1",
                               lookback_days=None)
                out[name].append((time.perf_counter() - t) * 1000)
    # add(): the durable write alone (embed="off": no model), which now also rewrites the
    # previous message's keyword row (its ``next`` column).
    out["add (embed off)"] = []
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "a.db", embed="off") as mem:
        mem.add_many({"role": "user", "content": text, "conversation_id": f"c{i % 20}", "owner_id": "u1"}
                     for i, text in enumerate(texts))
        for i in range(queries):
            t = time.perf_counter()
            mem.add("user", texts[i], conversation_id=f"c{i % 20}", owner_id="u1")
            out["add (embed off)"].append((time.perf_counter() - t) * 1000)
    return out


def child(tree: Path, n: int, queries: int, seed: int) -> dict[str, list[float]]:
    env = dict(os.environ, PYTHONPATH=str(tree))
    done = subprocess.run(
        [sys.executable, __file__, "--child", str(n), str(queries), str(seed)],
        env=env, capture_output=True, text=True, check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.splitlines()[-1])


def main() -> int:
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        print(json.dumps(measure(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))))
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--baseline", type=Path, required=True, help="a checkout of the baseline localmem")
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--queries", type=int, default=100)
    args = parser.parse_args()
    trees = {"baseline": args.baseline.resolve(), "this tree": HERE.parent}
    samples: dict[str, dict[str, list[float]]] = {t: {s: [] for s in ROWS} for t in trees}
    for r in range(args.rounds):
        for label, tree in (trees.items() if r % 2 == 0 else reversed(trees.items())):
            for name, values in child(tree, args.messages, args.queries, seed=r).items():
                samples[label][name] += values
        print(f"round {r + 1} of {args.rounds} done", file=sys.stderr)
    print(f"{args.messages} messages, {args.rounds} rounds x {args.queries} queries per strategy; "
          f"baseline {trees['baseline']}")
    print(f"{'call (ms)':22}{'baseline p50':>14}{'p95':>8}{'this p50':>10}{'p95':>8}{'ratio p50':>11}")
    for name in ROWS:
        base, this = samples["baseline"][name], samples["this tree"][name]
        b50, t50 = statistics.median(base), statistics.median(this)
        b95, t95 = statistics.quantiles(base, n=20)[-1], statistics.quantiles(this, n=20)[-1]
        print(f"{name:22}{b50:14.2f}{b95:8.2f}{t50:10.2f}{t95:8.2f}{t50 / b50:10.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
