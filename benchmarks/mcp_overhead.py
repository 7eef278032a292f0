"""What a call through the MCP server costs beside the same call on a Memory in-process.

    python benchmarks/mcp_overhead.py              # LoCoMo, all-MiniLM-L6-v2 if found (~1 minute)
    python benchmarks/mcp_overhead.py --no-model   # keywords only (the server: --keywords-only)
    python benchmarks/mcp_overhead.py --quick      # smoke run, numbers not meaningful

The five LoCoMo conversations (one owner each; ``LOCALMEM_LOCOMO_DIR``, else the
workspace's copy; without them, synthetic turns) go into one file. Then, on that file,
a ``localmem mcp`` server (a child process spoken to by the SDK's stdio client, as a
desktop client does) and a ``Memory`` in this process, with the same settings, answer
the same kinds of call, interleaved step by step:

* ``recall`` (scope ``all_conversations``: ``cross_conversation`` over the owner's
  conversations, all time) vs ``get_memory("cross_conversation")``; the questions are
  split between the two (a question asked twice would be a query-cache hit the second
  time), alternating which goes first;
* ``recent`` (10 messages) vs ``get_memory("recent_history")``: the hot window;
* ``remember`` vs ``add()``: one new message each.

Rows: p50 and p95 of each side, their difference (what MCP adds: JSON-RPC over pipes,
pydantic validation of arguments and answers, a worker thread per call) and ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
from mcp import ClientSession, StdioServerParameters, stdio_client

sys.path.insert(0, str(Path(__file__).resolve().parent))
from locomo import DEFAULT_DATA, load
from semantic_speed import pct

from localmem import Memory, Strategy

CONVERSATION = "session_1"


def corpus(quick: bool) -> tuple[list[dict], str, list[str], str]:
    """(add_many items, the owner the calls serve, its questions, where they come from)."""
    files = sorted(DEFAULT_DATA.glob("*.json")) if DEFAULT_DATA.is_dir() else []
    if files:
        items, questions = [], []
        for path in files[:1] if quick else files:
            messages, qs = load(path)
            items += messages
            questions.append([q for q, _, _ in qs])
        return items, files[0].stem, questions[0], f"LoCoMo ({len(files[:1] if quick else files)} conversations)"
    topics = ["pizza in Naples", "a trip to Porto", "the dog Thor", "a peanut allergy", "the open house"]
    items = [{"role": "user", "content": f"turn {i}: something about {topics[i % len(topics)]}",
              "conversation_id": f"session_{1 + i % 7}", "owner_id": "owner"} for i in range(600)]
    return items, "owner", [f"what about {t}?" for t in topics] * 20, "synthetic (no LoCoMo here)"


async def measure(db: Path, owner: str, questions: list[str], no_model: bool, steps: int) -> dict[str, Any]:
    args = ["-m", "localmem", "--db", str(db), "mcp", "--owner", owner, "--conversation", CONVERSATION]
    if no_model:
        args.append("--keywords-only")
    env = {k: os.environ[k] for k in ("LOCALMEM_MODELS_DIR", "HF_HUB_OFFLINE", "HF_HOME") if k in os.environ}
    params = StdioServerParameters(command=sys.executable, args=args, env=env)
    times: dict[str, dict[str, list[float]]] = {op: {"direct": [], "mcp": []} for op in ("recall", "recent", "remember")}
    ask = {"conversation_id": CONVERSATION, "owner_id": owner}
    with Memory(db, embed="off" if no_model else "background") as mem:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()

            async def via_mcp(tool: str, arguments: dict[str, Any]) -> None:
                result = await session.call_tool(tool, arguments)
                if result.is_error:
                    raise SystemExit(f"{tool}: {result.content[0].text}")

            def direct(op: str, text: str) -> None:
                if op == "recall":
                    mem.get_memory(Strategy.CROSS_CONVERSATION, query=text, limit=10, lookback_days=None,
                                   dense=not no_model, **ask)
                elif op == "recent":
                    mem.get_memory(Strategy.RECENT_HISTORY, limit=10, lookback_days=None, **ask)
                else:
                    mem.add("user", text, conversation_id="bench", owner_id=owner)

            calls = {"recall": lambda t: ("recall", {"query": t, "scope": "all_conversations", "limit": 10}),
                     "recent": lambda t: ("recent", {"limit": 10}),
                     "remember": lambda t: ("remember", {"content": t, "conversation_id": "bench"})}
            await via_mcp("recall", {"query": "warm up the model and the caches"})  # untimed
            direct("recall", "warm up the in-process side too")
            for step in range(steps):
                for op in times:
                    pair = [(questions[(2 * step) % len(questions)], "mcp"), (questions[(2 * step + 1) % len(questions)], "direct")]
                    if step % 2:
                        pair.reverse()
                    for text, side in pair:
                        text = text if op != "remember" else f"{side} step {step}: {text}"
                        started = time.perf_counter()
                        if side == "mcp":
                            await via_mcp(*calls[op](text))
                        else:
                            direct(op, text)
                        times[op][side].append((time.perf_counter() - started) * 1000)
    rows = []
    for op, sides in times.items():
        d, m = statistics.median(sides["direct"]), statistics.median(sides["mcp"])
        rows.append({"op": op, "direct_p50_ms": d, "direct_p95_ms": pct(sides["direct"], 0.95),
                     "mcp_p50_ms": m, "mcp_p95_ms": pct(sides["mcp"], 0.95), "added_ms": m - d, "ratio": m / d})
    return {"rows": rows, "steps": steps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-model", action="store_true", help="keywords only (no embedding model)")
    parser.add_argument("--steps", type=int, default=100, help="calls per operation and side (default: 100)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 5 steps, one conversation")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args()
    steps = 5 if args.quick else args.steps
    items, owner, questions, source = corpus(args.quick)
    with tempfile.TemporaryDirectory() as folder:
        db = Path(folder) / "memory.db"
        with Memory(db, embed="off" if args.no_model else "background") as mem:
            mem.add_many(items)
            if not args.no_model:
                mem.flush()
        result = anyio.run(measure, db, owner, questions, args.no_model, steps)
    result.update(source=source, messages=len(items), model=not args.no_model)
    print(f"{source}: {len(items)} messages; owner {owner}; {steps} calls per operation and side; "
          f"{'keywords only' if args.no_model else 'all-MiniLM-L6-v2'}")
    print(f"{'operation':<10} {'in-process p50 (p95) ms':>24} {'MCP p50 (p95) ms':>20} {'added ms':>9} {'ratio':>6}")
    for r in result["rows"]:
        print(f"{r['op']:<10} {r['direct_p50_ms']:>12.2f} ({r['direct_p95_ms']:>7.2f})    "
              f"{r['mcp_p50_ms']:>9.2f} ({r['mcp_p95_ms']:>7.2f}) {r['added_ms']:>9.2f} {r['ratio']:>6.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
