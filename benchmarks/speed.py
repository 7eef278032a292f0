"""localmem end to end at 1k, 10k and 100k messages, beside bare SQLite, numpy and Chroma.

    pip install '.[bench]'                      # Chroma, the peer (optional: skipped if absent)
    python benchmarks/speed.py                  # 1k, 10k, 100k (~10 minutes on 2 cores)
    python benchmarks/speed.py --quick          # 1k, smoke run, numbers not meaningful

For each size one owner holds every message, in 20 conversations. Both libraries are fed
the same precomputed 384-d vectors (``semantic_speed.dataset``: LoCoMo turns embedded by
the real all-MiniLM-L6-v2 when it is on the machine), so no model time is measured:
localmem gets ``LookupEmbedder`` (text -> vector), Chroma ``embeddings=``.

* ingest: ``add_many`` + ``flush`` (messages, FTS5, vectors) vs Chroma's ``collection.add``
  in batches, in messages/s; the files each leaves on disk.
* add(): one more message into the full store (embed="off": the durable write) vs the
  floor, a bare INSERT + COMMIT into a table of the same columns (core_speed.py).
* recent_history (each round first adds a message to the same conversation, so the hot
  window is rebuilt: a read after a write); semantic_search, hybrid, cross_conversation
  (query cache off, conversation c0 of 20, lookback None): p50/p95
  beside numpy brute force over the same vectors (one core) and Chroma's query with the
  same conversation filter.

Rounds interleave every contender, so the noise of a shared machine hits all alike.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")  # numpy's floor is one core's
os.environ.setdefault("OMP_NUM_THREADS", "1")

import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from core_speed import raw_inserter  # sibling benchmark modules
from semantic_speed import LookupEmbedder, dataset, row, run_sizes

from localmem import Memory, Strategy

CONVERSATIONS = 20
BATCH = 5000  # Chroma refuses batches over its max_batch_size (5461 here)


def dir_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def chroma_client(folder: Path):
    """Chroma's embedded PersistentClient, or None when the bench extra is not installed."""
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError:
        return None
    return chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))


def run_size(n: int, rounds: int, per_round: int) -> list[dict]:
    vectors, base_texts, queries, how = dataset(n, per_round)
    texts = [f"{t} [{i}]" for i, t in enumerate(base_texts)]  # unique: one vector per text
    table = dict(zip(texts, vectors, strict=True)) | {q: v for q, v in queries}
    conv = [f"c{i % CONVERSATIONS}" for i in range(n)]
    results: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        db = tmp_path / "localmem" / "bench.db"
        db.parent.mkdir()
        t = time.perf_counter()
        with Memory(db, embedder=LookupEmbedder(table)) as mem:
            mem.add_many({"role": "user", "content": text, "conversation_id": c, "owner_id": "u1"}
                         for text, c in zip(texts, conv, strict=True))
            mem.flush()
        ingest_s = time.perf_counter() - t
        results.append({"name": "ingest: localmem add_many + flush", "msgs_per_s": n / ingest_s,
                        "bytes": dir_bytes(db.parent)})

        client = chroma_client(tmp_path / "chroma")
        have_chroma = client is not None
        collection = None
        if client is not None:
            collection = client.create_collection(
                "bench", metadata={"hnsw:space": "cosine"}, embedding_function=None
            )
            t = time.perf_counter()
            for start in range(0, n, BATCH):
                stop = min(n, start + BATCH)
                collection.add(
                    ids=[str(i) for i in range(start, stop)],
                    embeddings=vectors[start:stop],
                    documents=texts[start:stop],
                    metadatas=[{"owner_id": "u1", "conversation_id": conv[i]} for i in range(start, stop)],
                )
            chroma_s = time.perf_counter() - t
            results.append({"name": "ingest: Chroma collection.add", "msgs_per_s": n / chroma_s,
                            "bytes": dir_bytes(tmp_path / "chroma")})

        floor_conn, floor = raw_inserter(tmp_path / "floor.db", "floor")
        writer = Memory(db, embed="off", hot_window=0, query_cache_ttl=0)
        mem = Memory(db, embedder=LookupEmbedder(table), query_cache_ttl=0)
        samples: dict[str, list[float]] = {}

        def timed(name, fn):
            t = time.perf_counter()
            fn()
            samples.setdefault(name, []).append(time.perf_counter() - t)

        ask = {"owner_id": "u1", "conversation_id": "c0", "limit": 10, "lookback_days": None}
        for text, _ in queries[:3]:  # warm caches on both sides
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query=text, **ask)
        for _ in range(rounds):
            for k, (text, q) in enumerate(queries):
                timed("add(): bare SQLite floor", floor)
                timed("add(): localmem", lambda k=k: writer.add("user", f"new {k}", conversation_id="c0", owner_id="u1"))
                timed("recent_history", lambda: mem.get_memory(Strategy.RECENT_HISTORY, **ask))
                timed("search: numpy brute force", lambda q=q: np.argpartition(-(vectors @ q), 10)[:10])
                for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
                    timed(f"search: localmem {strategy.value}",
                          lambda s=strategy, t=text: mem.get_memory(s, query=t, **ask))
                timed("search: localmem semantic_search keyword=False",
                      lambda t=text: mem.get_memory(Strategy.SEMANTIC_SEARCH, query=t, keyword=False, **ask))
                if collection is not None:
                    timed("search: Chroma query (same conversation filter)", lambda q=q: collection.query(
                        query_embeddings=[q], n_results=10, where={"conversation_id": "c0"}))
                    timed("search: Chroma query (owner filter)", lambda q=q: collection.query(
                        query_embeddings=[q], n_results=10, where={"owner_id": "u1"}))
        writer.close()
        mem.close()
        floor_conn.close()
        if client is not None:
            del collection, client  # release Chroma's files before the folder goes
        shutil.rmtree(tmp_path, ignore_errors=True)
    floor_add = statistics.median(samples["add(): bare SQLite floor"])
    floor_search = statistics.median(samples["search: numpy brute force"])
    for name, s in samples.items():
        base = floor_add if name.startswith("add") else floor_search if name.startswith("search") else None
        results.append(row(name, s, x_baseline=None if base is None else statistics.median(s) / base))
    print(f"\n{n:,} messages, one owner, {CONVERSATIONS} conversations; {how}")
    for r in results:
        if "msgs_per_s" in r:
            print(f"  {r['name']:50} {r['msgs_per_s']:10,.0f} msgs/s  {r['bytes'] / 2**20:8.1f} MB on disk")
    print(f"  {'':50} {'p50 ms':>10} {'p95 ms':>8} {'x base':>7}")
    for r in results:
        if "p50_ms" in r:
            ratio = "" if r["x_baseline"] is None else f"{r['x_baseline']:7.1f}"
            print(f"  {r['name']:50} {r['p50_ms']:10.3f} {r['p95_ms']:8.3f} {ratio:>7}")
    if not have_chroma:
        print("  (Chroma not installed: pip install '.[bench]' to compare)")
    return [{"messages": n, **r} for r in results]


def main() -> int:
    try:
        import chromadb

        peer = f", chromadb {chromadb.__version__}"
    except ImportError:
        peer = ", no chromadb"
    return run_sizes(__doc__.split("\n")[0], run_size, [1000, 10_000, 100_000], 1000, peer)


if __name__ == "__main__":
    sys.exit(main())
