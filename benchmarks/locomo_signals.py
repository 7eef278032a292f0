"""What each step of the first stage is worth on LoCoMo, on the split it was decided on
and on the split that confirmed it.

    python benchmarks/locomo_signals.py [--data DIR] [--json OUT]      # about 3 minutes
    python benchmarks/locomo_signals.py --limit-questions 40          # a smoke run

The same protocol as benchmarks/locomo.py (default settings: fused search, the relevance
floor, no reranker), through the public API, on one ``Memory``. The rows switch parts of
the pipeline off by setting their module constants (``localmem.signals``,
``localmem.retrieval``) for the length of a row, so each row is the product's own code:

* "RRF (before)": the previous fusion, reciprocal rank fusion with K=10, no signals;
* "score fusion": ``retrieval.fuse`` alone (no signals);
* then each signal added in turn, and the default with each signal taken out.

The keyword index's ``next`` column (schema 5) is in every row: it is in the file.
Overfitting guard (issue 17): every change was decided on conversations 26, 30 and 41
("decide") and kept only if it also helped on 42 and 43 ("confirm").

Needs the real all-MiniLM-L6-v2 (LOCALMEM_MODELS_DIR or the model cache).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from locomo import CATEGORIES, DEFAULT_DATA, ingest

from localmem import Memory, Strategy, retrieval, signals

DECIDE = ("26", "30", "41")
CONFIRM = ("42", "43")
KS = (1, 5, 10)
SIGNALS = {
    "replies": ("REPLY_SHARE",),
    "conversations": ("CONVERSATION_SHARE",),
    "time": ("TIME_BONUS",),
    "names": ("NAME_BONUS",),
    "length": ("LENGTH_WEIGHT",),
}


def rrf_fuse(lists: retrieval.Lists, k: int = 10) -> list[retrieval.Candidate]:
    """The fusion before score fusion: sum of 1 / (k + rank) over the two lists."""
    dense = {row_id: (rank, cos) for rank, (row_id, cos) in enumerate(lists.dense or (), start=1)}
    keyword = {row_id: (rank, -bm25) for rank, (row_id, bm25) in enumerate(lists.keyword or (), start=1)}
    scores: dict[int, float] = {}
    for ranking in (dense, keyword):
        for row_id, (rank, _) in ranking.items():
            scores[row_id] = scores.get(row_id, 0.0) + 1.0 / (k + rank)
    out = []
    for row_id, score in sorted(scores.items(), key=lambda pair: (-pair[1], pair[0])):
        d_rank, cosine = dense.get(row_id, (None, None))
        k_rank, bm25 = keyword.get(row_id, (None, None))
        out.append(retrieval.Candidate(row_id, score, cosine, d_rank, bm25, k_rank))
    return out


@contextlib.contextmanager
def setting(off: tuple[str, ...] = (), *, rrf: bool = False, no_signals: bool = False) -> Iterator[None]:
    """The pipeline with the named ``signals`` constants at 0 (and RRF, or no signal stage)."""
    saved = {name: getattr(signals, name) for name in off}
    fuse, adjust = retrieval.fuse, retrieval.adjust
    try:
        for name in off:
            setattr(signals, name, 0.0)
        if rrf:
            retrieval.fuse = rrf_fuse
        if rrf or no_signals:
            retrieval.adjust = lambda store, query, kept, lists, now: kept
        yield
    finally:
        for name, value in saved.items():
            setattr(signals, name, value)
        retrieval.fuse, retrieval.adjust = fuse, adjust


def rows() -> list[tuple[str, dict[str, Any]]]:
    everything = tuple(n for names in SIGNALS.values() for n in names)
    out: list[tuple[str, dict[str, Any]]] = [
        ("RRF (before)", {"rrf": True}),
        ("score fusion, no signals", {"no_signals": True}),
    ]
    on: list[str] = []
    for name, constants in SIGNALS.items():
        on.append(name)
        off = tuple(c for c in everything if c not in {x for n in on for x in SIGNALS[n]})
        out.append((f"  + {name}" + (" (= the default)" if not off else ""), {"off": off}))
    for name, constants in SIGNALS.items():
        out.append((f"default without {name}", {"off": constants}))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--limit-questions", type=int, metavar="N",
                        help="only N questions, spread evenly (a smoke run; recall not comparable)")
    args = parser.parse_args()
    if args.limit_questions is not None and args.limit_questions < 1:
        parser.error("--limit-questions must be at least 1")
    files = sorted(args.data.glob("*.json"))
    if {p.stem for p in files} != set(DECIDE + CONFIRM):
        print(f"needs the five shared LoCoMo conversations {DECIDE + CONFIRM} in {args.data}", file=sys.stderr)
        return 2
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "locomo.db", query_cache_ttl=0) as mem:
        questions, _ = ingest(mem, files, args.limit_questions)
        print(f"{len(questions)} questions; decide on {', '.join(DECIDE)}, confirm on {', '.join(CONFIRM)}\n")
        header = "".join(f"{'R@' + str(k):>7}" for k in KS)
        print(f"{'':34}{'decide':>21}{'confirm':>21}{'all five':>21}   R@10 by category")
        print(f"{'':34}{header}{header}{header}   " + " ".join(f"{c[:6]:>6}" for c in CATEGORIES.values()))
        for name, options in rows():
            with setting(**options):
                recall: dict[str, list[float]] = {}
                for owner, question, category, evidence in questions:
                    got = mem.get_memory(Strategy.CROSS_CONVERSATION, query=question, owner_id=owner,
                                         conversation_id="session_1", limit=max(KS), lookback_days=None)
                    ids = [m.msg_id for m in got.messages]
                    split = "decide" if owner in DECIDE else "confirm"
                    for k in KS:
                        value = len(evidence & set(ids[:k])) / len(evidence) if evidence else 0.0
                        for group in (split, "all"):
                            recall.setdefault(f"{group} R@{k}", []).append(value)
                        if k == 10:
                            recall.setdefault(f"{CATEGORIES[category]} R@10", []).append(value)
            row = {key: statistics.mean(values) for key, values in recall.items()}
            results[name] = row
            cells = "".join(f"{row[f'{g} R@{k}']:7.3f}" for g in ("decide", "confirm", "all") for k in KS)
            cats = " ".join(f"{row.get(f'{c} R@10', float('nan')):6.3f}" for c in CATEGORIES.values())
            print(f"{name:34}{cells}   {cats}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
