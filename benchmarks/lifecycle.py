"""File size after deleting half of 100k messages, and what forget() and maintain() cost.

    python benchmarks/lifecycle.py             # 100k messages (~2 minutes)
    python benchmarks/lifecycle.py --quick     # smoke run, numbers not meaningful

The file: N messages with 384-dim vectors (a fast random embedder: this measures storage,
not a model), 100 owners x 10 conversations, each message dated at random over two years
and written in no time order, as an import of old chats would be. Then ``forget(before=)``
removes the older half: every b-tree page and every vector chunk loses about half its
rows, the hard case for giving space back (deleting whole owners empties whole chunks).

Rows: the file after the import; after the forget (database + WAL); after ``maintain()``
(which VACUUMs when a fifth of the pages are free); beside them, the baseline: a fresh file
holding only the surviving messages, the smallest the same data can be. Each with its
split by table (dbstat): messages and their indexes, keyword index, vectors, other.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

from localmem import Memory

WORDS = ("pizza", "station", "train", "weather", "mountain", "trip", "recipe", "garden", "music", "concert",
         "budget", "doctor", "holiday", "school", "project", "meeting", "birthday", "coffee", "river", "book",
         "movie", "game", "flight", "hotel")
START = datetime(2024, 1, 1, tzinfo=timezone.utc)
SPAN_S = 2 * 365 * 86400
CUT = START + timedelta(seconds=SPAN_S // 2)


class RandomEmbedder:
    """Dense unit vectors from the text's hash: fast, and as incompressible as real ones."""

    name = "bench-random-384"
    dim = 384

    def embed(self, texts):
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for i, t in enumerate(texts):
            v = np.random.default_rng(abs(hash(t)) % 2**63).standard_normal(self.dim).astype(np.float32)
            out[i] = v / np.linalg.norm(v)
        return out


def messages(n: int, seed: int, keep_after: datetime | None = None):
    """The benchmark's messages (``keep_after``: only those at or after it, in the same order)."""
    rng = random.Random(seed)
    for i in range(n):
        owner = rng.randrange(100)
        when = START + timedelta(seconds=rng.randrange(SPAN_S))
        text = " ".join(rng.choice(WORDS) for _ in range(rng.randrange(8, 30))) + f" #{i}"
        conversation = f"c{owner}-{rng.randrange(10)}"
        if keep_after is None or when >= keep_after:
            yield {"role": "user" if i % 2 == 0 else "assistant", "content": text, "msg_id": f"m{i}",
                   "owner_id": f"owner{owner}", "conversation_id": conversation, "created_at": when}


def file_bytes(path: str) -> int:
    return sum(os.path.getsize(p) for p in (path, path + "-wal") if os.path.exists(p))


def split(mem: Memory) -> dict[str, int]:
    """Bytes by what the b-trees hold (dbstat), plus free pages."""
    groups = {"messages": 0, "keyword index": 0, "vectors": 0, "other": 0}
    with mem._store.read() as conn:
        for name, size in conn.execute("SELECT name, sum(pgsize) FROM dbstat GROUP BY name"):
            if name.startswith("messages_fts"):
                groups["keyword index"] += size
            elif name.startswith("message_vectors"):
                groups["vectors"] += size
            elif name.startswith(("messages", "sqlite_autoindex_messages")):
                groups["messages"] += size
            else:
                groups["other"] += size
        page = conn.execute("PRAGMA page_size").fetchone()[0]
        groups["free pages"] = conn.execute("PRAGMA freelist_count").fetchone()[0] * page
    return groups


def build(path: str, n: int, keep_after: datetime | None = None) -> float:
    began = time.perf_counter()
    with Memory(path, embedder=RandomEmbedder(), hot_window=0, query_cache_ttl=0, strategy_log=False,
                summaries=None) as mem:
        mem.add_many(messages(n, 7, keep_after), chunk_size=2000)
        mem.flush()
        mem._store.checkpoint(5.0)
    return time.perf_counter() - began


def mb(n: int) -> str:
    return f"{n / 2**20:8.1f} MB"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="2000 messages: a smoke run")
    parser.add_argument("-n", type=int, default=100_000, help="messages (default 100000)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args(argv)
    n = 2000 if args.quick else args.n
    rows: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="localmem-lifecycle-") as tmp:
        path = os.path.join(tmp, "full.db")
        built = build(path, n)
        with Memory(path, embedder=RandomEmbedder(), strategy_log=False, summaries=None) as mem:
            rows.append({"state": f"after importing {n} messages", "bytes": file_bytes(path), "split": split(mem),
                         "seconds": built})
            forget = mem.forget(before=CUT)
            rows.append({"state": f"after forget(before=) of {forget.messages}", "bytes": file_bytes(path),
                         "split": split(mem), "seconds": forget.seconds["total"], "steps": forget.seconds})
            report = mem.maintain()
            rows.append({"state": "after maintain()", "bytes": file_bytes(path), "split": split(mem),
                         "seconds": report.seconds,
                         "steps": {s.name: [s.seconds, s.detail] for s in report.steps}})
            survivors = mem.stats()["messages"]
        fresh = os.path.join(tmp, "fresh.db")
        built = build(fresh, n, keep_after=CUT)
        with Memory(fresh, embedder=RandomEmbedder(), strategy_log=False, summaries=None) as mem:
            assert mem.stats()["messages"] == survivors, "the baseline must hold the same messages"
            rows.append({"state": f"baseline: a fresh file of the {survivors} survivors", "bytes": file_bytes(fresh),
                         "split": split(mem), "seconds": built})
    base = rows[-1]["bytes"]
    print(f"{n} messages, {survivors} kept (python {sys.version.split()[0]})\n")
    print(f"{'':44} {'file':>11} {'x fresh':>8} {'messages':>11} {'keywords':>11} {'vectors':>11} "
          f"{'free pages':>11} {'seconds':>8}")
    for r in rows:
        s = r["split"]
        print(f"{r['state']:44} {mb(r['bytes'])} {r['bytes'] / base:8.2f} {mb(s['messages'])} "
              f"{mb(s['keyword index'])} {mb(s['vectors'])} {mb(s['free pages'])} {r['seconds']:8.2f}")
    print("\nforget steps (s):", rows[1]["steps"])
    print("maintain steps:")
    for name, (sec, detail) in rows[2]["steps"].items():
        print(f"  {name:14} {sec:8.3f} s  {detail}")
    if args.json:
        args.json.write_text(json.dumps({"n": n, "kept": survivors, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
