"""Keyword search at scale: ``Store.keyword`` p50/p95 at 100k (and 1M) messages, main's
search beside the bounded one, in the same run.

    python benchmarks/keyword_scale.py                      # 100k (~2 minutes)
    python benchmarks/keyword_scale.py --million --queries 150   # and 1M (~2 minutes to build)
    python benchmarks/keyword_scale.py --dir DIR            # keep the files in DIR, reuse them
    python benchmarks/keyword_scale.py --quick              # 2k, smoke run, numbers not meaningful

One owner, 20 conversations, texts = LoCoMo's turns cycled (semantic_speed.py's
``locomo_text()``; Zipf-drawn words without LoCoMo), no vectors: BM25 only. Queries: the
LoCoMo questions (keyword_terms() of each). Each query runs every configuration in turn
(interleaved, so the noise of a shared machine hits all), in two scopes: the owner
(cross_conversation's) and one conversation (semantic_search's, c0: 1/20 of the file).

Configurations (``localmem.store.KEYWORD_BUDGET``,
``localmem.retrieval.DROP_FRAGMENTS``, switched per call):

* main: every word but the stopwords, no budget: the SQL main ran before the bound.
* no fragments: "s", "t" of "Nate's", "don't" and single letters left out.
* budget B: and the commonest words left out while the rest match more than B rows.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from semantic_speed import locomo_text, pct

from localmem import retrieval
from localmem import store as store_module
from localmem.store import Store
from localmem.validate import new_message

CONVERSATIONS = 20
T0 = datetime(2023, 1, 1, tzinfo=timezone.utc)


def texts_and_questions(seed: int = 0) -> tuple[list[str], list[str], str]:
    real = locomo_text()
    if real is not None:
        return real[0], real[1], "LoCoMo turns cycled, LoCoMo questions"
    rng = np.random.default_rng(seed)
    ranks = np.minimum(rng.zipf(1.2, (5000, 12)), 5000)
    turns = [" ".join(f"w{r}" for r in row) for row in ranks]
    return turns, [f"w{k % 40 + 1} w{k % 300 + 7} question {k}" for k in range(500)], "Zipf words (no LoCoMo here)"


def build(path: Path, n: int, turns: list[str]) -> None:
    """n messages of one owner, conversation c0 first, then c1 ... (each a stretch of the
    cycled turns, one second apart), inserted 5000 at a time."""
    store = Store(str(path))
    try:
        per, chunk = n // CONVERSATIONS, []
        for k in range(per * CONVERSATIONS):
            chunk.append(new_message("user", turns[k % len(turns)], conversation_id=f"c{k // per}",
                                     owner_id="u1", created_at=T0 + timedelta(seconds=k)))
            if len(chunk) == 5000:
                store.insert_many(chunk)
                chunk = []
        if chunk:
            store.insert_many(chunk)
    finally:
        store.close()


@contextlib.contextmanager
def configured(fragments: bool, budget: int | None) -> Iterator[None]:
    saved = retrieval.DROP_FRAGMENTS, store_module.KEYWORD_BUDGET
    retrieval.DROP_FRAGMENTS, store_module.KEYWORD_BUDGET = fragments, budget
    try:
        yield
    finally:
        retrieval.DROP_FRAGMENTS, store_module.KEYWORD_BUDGET = saved


def measure(path: Path, questions: list[str], configs: dict[str, tuple[bool, int | None]],
            depth: int) -> dict[str, dict[str, list[float]]]:
    """{scope: {configuration: [ms per question]}}, every configuration run per question."""
    scopes = {"owner": {"owner_id": "u1"}, "conversation": {"owner_id": "u1", "conversation_id": "c0"}}
    times: dict[str, dict[str, list[float]]] = {s: {c: [] for c in configs} for s in scopes}
    store = Store(str(path), read_only=True)
    try:
        for warm, batch in ((True, questions[:20]), (False, questions)):
            for question in batch:
                for scope, where in scopes.items():
                    for name, setting in configs.items():
                        with configured(*setting):
                            terms = retrieval.keyword_terms(question)
                            if not terms:
                                continue
                            start = time.perf_counter()
                            store.keyword(terms, depth, **where)
                            elapsed = (time.perf_counter() - start) * 1e3
                        if not warm:
                            times[scope][name].append(elapsed)
    finally:
        store.close()
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--million", action="store_true", help="also 1M messages")
    parser.add_argument("--quick", action="store_true", help="2k messages, 50 questions: a smoke run")
    parser.add_argument("--dir", type=Path, help="build the files here and reuse them (default: a temporary folder)")
    parser.add_argument("--budget", type=int, default=store_module.KEYWORD_BUDGET or 5000,
                        help="the posting budget measured (default: KEYWORD_BUDGET)")
    parser.add_argument("--queries", type=int, help="only this many questions, spread evenly (default: all)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    turns, questions, how = texts_and_questions()
    sizes = [2000] if args.quick else [100_000] + ([1_000_000] if args.million else [])
    wanted = 50 if args.quick else args.queries
    if wanted:
        questions = questions[:: max(1, len(questions) // wanted)][:wanted]
    b = args.budget
    configs = {"main": (False, None), "no fragments": (True, None), f"budget {b}": (True, b)}
    print(f"data: {how}; {len(questions)} questions; depth {retrieval.SCORED_DEPTH} (the fused search's)")
    results = []
    with contextlib.ExitStack() as stack:
        folder = args.dir or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="localmem-keyword-")))
        folder.mkdir(parents=True, exist_ok=True)
        for n in sizes:
            path = folder / f"keyword_scale_{n}.db"
            if not path.exists():
                start = time.perf_counter()
                build(path, n, turns)
                print(f"built {n:,} messages in {time.perf_counter() - start:.0f} s: {path}")
            times = measure(path, questions, configs, retrieval.SCORED_DEPTH)
            print(f"\n{n:,} messages    {'p50 ms':>8}{'p95':>8}{'mean':>8}{'p50 vs main':>13}")
            for scope, rows in times.items():
                print(f"scope: {scope}")
                base = statistics.median(rows["main"])
                for name, ms in rows.items():
                    p50 = statistics.median(ms)
                    print(f"  {name:24}{p50:8.2f}{pct(ms, 0.95):8.2f}{statistics.mean(ms):8.2f}{p50 / base:12.2f}x")
                    results.append({"n": n, "scope": scope, "config": name, "p50_ms": p50,
                                    "p95_ms": pct(ms, 0.95), "mean_ms": statistics.mean(ms)})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
