"""Search at scale: 100k and 1M messages, one owner, 20 conversations (issue 14).

    python benchmarks/scale.py                       # 100k (~3 minutes)
    python benchmarks/scale.py --sizes 100000 1000000 --keep /work/exp/scale   # + 1M (~15 minutes)

Data: ``semantic_speed.dataset()`` (LoCoMo turns embedded by all-MiniLM-L6-v2, mixed
pairwise, so neighbourhoods are as crowded as real chat; texts are the turns, cycled);
message i belongs to conversation ``c{i % 20}``. Vectors are precomputed and written
straight to the store; the query embedder is a lookup table (the model's own time is not
in these numbers). Per size, in one process, interleaved per query, medians and p95:

* ingest (in a child process whose BLAS may use every core): ``Store.insert_many``
  (chunks of 5000), ``write_vectors``, the index build;
* numpy floor: exact ``V @ q`` + argpartition over the owner's float32 vectors in memory
  (one BLAS thread); also the exact answer recall is measured against; each path below
  then runs its queries in a loop of its own (warm, as a serving process);
* dense, owner-wide and one conversation (5 % of the owner): ``Store.knn(k=10)`` through
  the vector index (this change) and through sqlite-vec alone (``index_min`` past the size:
  the code before it), each with recall@10 against exact;
* fused: ``Memory.get_memory`` for semantic_search (the conversation), hybrid and
  cross_conversation, query cache off, index on and off;
* Chroma (when the bench extra is installed, up to ``--chroma-max`` messages): the same
  vectors with owner and conversation as metadata, the two dense searches;
* serving process: a child process that opens the file, runs the fused queries and reports
  its peak RSS (``ru_maxrss``); and the files' sizes on disk.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from semantic_speed import DIM, LookupEmbedder, dataset, pct

from localmem import Memory, Strategy, vector_index
from localmem.store import Store
from localmem.validate import new_message

CONVERSATIONS = 20
OWNER = "u1"
IDENTITY = {"name": LookupEmbedder.name, "dim": DIM, "sha256": None}


def ingest(path: Path, vectors: np.ndarray, texts: list[str]) -> dict[str, float]:
    store = Store(str(path))
    try:
        t0 = time.perf_counter()
        for start in range(0, len(texts), 5000):
            store.insert_many([new_message("user", texts[i], conversation_id=f"c{i % CONVERSATIONS}", owner_id=OWNER,
                                           msg_id=f"m{i}") for i in range(start, min(len(texts), start + 5000))])
        t1 = time.perf_counter()
        while batch := store.pending_batch(5000):
            ids = [i for i, _ in batch]
            store.write_vectors(IDENTITY, ids, [vectors[i - 1].tobytes() for i in ids])
        t2 = time.perf_counter()
        store.build_vector_index(OWNER)
        t3 = time.perf_counter()
    finally:
        store.close()
    return {"messages_s": t1 - t0, "vectors_s": t2 - t1, "index_s": t3 - t2, "total_s": t3 - t0}


def recall(found: list[int], exact: list[int]) -> float:
    return len(set(found) & set(exact)) / max(1, len(exact))


def measure(path: Path, vectors: np.ndarray, queries: list[tuple[str, np.ndarray]], index_min: int) -> dict:
    table = {text: vec for text, vec in queries}
    indexed, plain = Store(str(path)), Store(str(path))
    indexed.index_min = index_min
    plain.index_min = 1 << 62  # sqlite-vec alone: the code before this change
    conv = np.arange(len(vectors)) % CONVERSATIONS == 3
    rows: dict[str, list[float]] = {}
    recalls: dict[str, list[float]] = {}

    def timed(label: str, fn):
        t = time.perf_counter()
        out = fn()
        rows.setdefault(label, []).append((time.perf_counter() - t) * 1000)
        return out

    try:
        for _text, q in queries:  # warm both paths (the file's pages, the index's mapping)
            indexed.knn(q.tobytes(), 10, owner_id=OWNER)
            plain.knn(q.tobytes(), 10, owner_id=OWNER)
        exact, exact_c = [], []
        for _text, q in queries:
            scores = timed("numpy floor, owner-wide", lambda q=q: vectors @ q)
            exact.append((np.argpartition(-scores, 10)[:10] + 1).tolist())
            exact_c.append((np.argpartition(-np.where(conv, scores, -2), 10)[:10] + 1).tolist())
        # Each path in a loop of its own, as a serving process runs: timed between numpy's
        # 1.5 GB scans at 1M, the index's search took 12.7 ms instead of 4.7 (its pages and
        # caches evicted by the scan each time).
        for label, store in (("index", indexed), ("sqlite-vec", plain)):
            for (_text, q), truth, truth_c in zip(queries, exact, exact_c, strict=True):
                got = timed(f"dense owner-wide, {label}", lambda s=store, q=q: s.knn(q.tobytes(), 10, owner_id=OWNER))
                recalls.setdefault(f"dense owner-wide, {label}", []).append(recall([i for i, _ in got], truth))
                got = timed(f"dense one conversation, {label}",
                            lambda s=store, q=q: s.knn(q.tobytes(), 10, owner_id=OWNER, conversation_id="c3"))
                recalls.setdefault(f"dense one conversation, {label}", []).append(recall([i for i, _ in got], truth_c))
    finally:
        indexed.close()
        plain.close()
    for label, threshold in (("index", index_min), ("sqlite-vec", 1 << 62)):
        mem = Memory(str(path), embedder=LookupEmbedder(table), query_cache_ttl=0, hot_window=10)
        mem._store.index_min = threshold
        try:
            for text, _ in queries[:5]:
                mem.get_memory(Strategy.CROSS_CONVERSATION, query=text, conversation_id="c3", owner_id=OWNER)
            for text, _ in queries:
                for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
                    timed(f"fused {strategy.value}, {label}", lambda t=text, s=strategy, m=mem: m.get_memory(
                        s, query=t, conversation_id="c3", owner_id=OWNER, limit=10))
        finally:
            mem.close()
    return {"p50": {k: statistics.median(v) for k, v in rows.items()},
            "p95": {k: pct(v, 0.95) for k, v in rows.items()},
            "recall": {k: statistics.mean(v) for k, v in recalls.items()}}


def chroma(folder: Path, vectors: np.ndarray, texts: list[str], queries: list[tuple[str, np.ndarray]]) -> dict | None:
    """The same vectors in Chroma (its embedded PersistentClient, HNSW, cosine), with
    owner and conversation as metadata: ingest time and the two dense searches with
    recall against exact. None when the bench extra (chromadb) is not installed."""
    try:
        import chromadb
        from chromadb.config import Settings
    except ImportError:
        return None
    client = chromadb.PersistentClient(path=str(folder), settings=Settings(anonymized_telemetry=False))
    collection = client.get_or_create_collection("scale", metadata={"hnsw:space": "cosine"}, embedding_function=None)
    t = time.perf_counter()
    if collection.count() != len(vectors):
        for start in range(0, len(vectors), 5000):
            stop = min(len(vectors), start + 5000)
            collection.add(ids=[str(i + 1) for i in range(start, stop)], embeddings=vectors[start:stop],
                           documents=texts[start:stop],
                           metadatas=[{"owner_id": OWNER, "conversation_id": f"c{i % CONVERSATIONS}"}
                                      for i in range(start, stop)])
    ingest_s = time.perf_counter() - t
    conv = np.arange(len(vectors)) % CONVERSATIONS == 3
    rows: dict[str, list[float]] = {}
    recalls: dict[str, list[float]] = {}
    for _text, q in queries:
        scores = vectors @ q
        exact = (np.argpartition(-scores, 10)[:10] + 1).tolist()
        exact_c = (np.argpartition(-np.where(conv, scores, -2), 10)[:10] + 1).tolist()
        for label, where, truth in (("dense owner-wide, Chroma", {"owner_id": OWNER}, exact),
                                    ("dense one conversation, Chroma", {"conversation_id": "c3"}, exact_c)):
            t = time.perf_counter()
            got = collection.query(query_embeddings=[q], n_results=10, where=where)
            rows.setdefault(label, []).append((time.perf_counter() - t) * 1000)
            recalls.setdefault(label, []).append(recall([int(i) for i in got["ids"][0]], truth))
    return {"ingest_s": ingest_s, "p50": {k: statistics.median(v) for k, v in rows.items()},
            "p95": {k: pct(v, 0.95) for k, v in rows.items()},
            "recall": {k: statistics.mean(v) for k, v in recalls.items()}}


def serve(path: str, queries_file: str, index_min: str) -> None:
    """The child: open the file as an agent would, run the fused searches, print peak RSS."""
    data = json.loads(Path(queries_file).read_text())
    table = {t: np.array(v, np.float32) for t, v in data}
    mem = Memory(path, embedder=LookupEmbedder(table), query_cache_ttl=0, hot_window=10)
    mem._store.index_min = int(index_min)
    times = []
    for text, _ in data:
        for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
            t = time.perf_counter()
            mem.get_memory(strategy, query=text, conversation_id="c3", owner_id=OWNER, limit=10)
            times.append((time.perf_counter() - t) * 1000)
    # VmHWM, not getrusage's ru_maxrss: Linux carries ru_maxrss over exec, so a child would
    # report the (large) benchmark process it was forked from.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines()
                  if line.startswith(("RssAnon", "RssFile", "VmHWM")))
    by_file: dict[str, float] = {}
    current = ""
    for line in Path("/proc/self/smaps").read_text().splitlines():
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line
            current = "database" if head[-1].endswith(".db") else "index" if head[-1].endswith(".ivf") else ""
        elif current and line.startswith("Rss:"):
            by_file[current] = by_file.get(current, 0) + int(head[1]) / 1024
    mem.close()
    print(json.dumps({"mapped_mb": by_file, "max_rss_mb": int(status["VmHWM"].split()[0]) / 1024,
                      "anon_mb": int(status["RssAnon"].split()[0]) / 1024,
                      "file_mb": int(status["RssFile"].split()[0]) / 1024,
                      "p50_ms": statistics.median(times)}))


def chromadb_version() -> str:
    import chromadb

    return chromadb.__version__


def disk(path: Path) -> dict[str, float]:
    sizes = {"database": path.stat().st_size}
    wal = Path(str(path) + "-wal")
    sizes["wal"] = wal.stat().st_size if wal.exists() else 0
    folder = Path(str(path) + "-index")
    sizes["index"] = sum(p.stat().st_size for p in folder.glob("*.ivf")) if folder.exists() else 0
    return {k: v / 1e6 for k, v in sizes.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--keep", type=Path, help="build the files here and reuse them on later runs")
    parser.add_argument("--chroma-max", type=int, default=100_000,
                        help="measure Chroma beside localmem up to this size (needs the bench extra)")
    parser.add_argument("--index-min", type=int, default=vector_index.INDEX_MIN,
                        help="owners indexed from this many messages (default: the library's)")
    parser.add_argument("--quick", action="store_true", help="3000 messages, 5 queries: a smoke run")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--serve", nargs=3, help=argparse.SUPPRESS)
    parser.add_argument("--ingest", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(*args.serve)
        return 0
    if args.ingest:
        n = int(args.ingest[1])
        vectors, texts, _, _ = dataset(n, args.queries)
        print(json.dumps(ingest(Path(args.ingest[0]), vectors, texts)))
        return 0
    if args.quick:
        args.sizes, args.queries, args.index_min, args.chroma_max = [3000], 5, 1000, 0
    folder = args.keep or Path(tempfile.mkdtemp(prefix="localmem-scale-"))
    report = []
    folder.mkdir(parents=True, exist_ok=True)
    for n in args.sizes:
        vectors, texts, queries, how = dataset(n, args.queries)
        path = folder / f"scale-{n}.db"
        built = None
        if not path.exists():  # in a child: BLAS may use both cores there (the searches get one)
            env = {**os.environ, "OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1),
                   "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
            child = subprocess.run([sys.executable, __file__, "--ingest", str(path), str(n)], env=env,
                                   capture_output=True, text=True, check=True)
            built = json.loads(child.stdout.strip().splitlines()[-1])
        result = measure(path, vectors, queries, args.index_min)
        peer = chroma(folder / f"chroma-{n}", vectors, texts, queries) if n <= args.chroma_max else None
        if peer is not None:
            for key in ("p50", "p95", "recall"):
                result[key].update(peer[key])
        qfile = folder / f"queries-{n}.json"
        qfile.write_text(json.dumps([(t, v.tolist()) for t, v in queries]))
        child = subprocess.run([sys.executable, __file__, "--serve", str(path), str(qfile), str(args.index_min)],
                               capture_output=True, text=True, check=True)
        served = json.loads(child.stdout.strip().splitlines()[-1])
        print(f"\n## {n:,} messages, one owner, {CONVERSATIONS} conversations ({how})")
        if built:
            print(f"ingest: messages {built['messages_s']:.1f} s, vectors {built['vectors_s']:.1f} s, "
                  f"index {built['index_s']:.1f} s; total {built['total_s']:.1f} s "
                  f"({n / built['total_s']:,.0f} messages/s)")
        else:
            print(f"ingest: reused {path}")
        if peer is not None:
            print(f"Chroma {chromadb_version()}: ingest {peer['ingest_s']:.1f} s (0 when reused)")
        print(f"{'':44} {'p50 ms':>8} {'p95 ms':>8} {'recall@10':>10}")
        for label, p50 in result["p50"].items():
            rec = result["recall"].get(label)
            print(f"{label:44} {p50:8.2f} {result['p95'][label]:8.2f} {'' if rec is None else f'{rec:10.3f}'}")
        for kind in ("dense owner-wide", "dense one conversation", "fused semantic_search", "fused hybrid",
                     "fused cross_conversation"):
            a, b = result["p50"].get(f"{kind}, index"), result["p50"].get(f"{kind}, sqlite-vec")
            if a and b:
                print(f"  {kind}: {b / a:.1f}x faster with the index")
        print(f"serving process (fused searches, index on): peak RSS {served['max_rss_mb']:.0f} MB "
              f"(at the end: {served['anon_mb']:.0f} MB anonymous, {served['file_mb']:.0f} MB mapped file pages: "
              + ", ".join(f"{k} {v:.0f} MB" for k, v in served["mapped_mb"].items()) + "), "
              f"p50 {served['p50_ms']:.1f} ms")
        sizes = disk(path)
        print("disk: " + ", ".join(f"{k} {v:,.0f} MB" for k, v in sizes.items()))
        report.append({"n": n, "ingest": built, "served": served, "disk_mb": sizes, **result})
        if not args.keep:
            for p in folder.glob(f"scale-{n}.db*"):
                if p.is_dir():
                    shutil.rmtree(p)
                else:
                    p.unlink()
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
