"""Relevance floor study: which rule keeps unrelated messages out of the prompt, at what cost.

    python benchmarks/relevance_floor.py [--data DIR] [--queries FILE] [--json OUT]   # ~1-2 min

Issue 10, part 3: without a reranker, a search by meaning always returns its ``limit`` best
messages, however unrelated. This study measures candidate floors built from what the
pipeline knows about each retrieved message (its dense cosine similarity to the query,
whether BM25 matched it) on two sides:

* false positives: ``data/no_answer_queries.json`` (small talk, arithmetic, general
  knowledge; English and Portuguese; nothing in LoCoMo answers them), each asked of every
  LoCoMo owner. FP share = share of these calls that still return at least one message.
  Goal: at most 0.10.
* cost: LoCoMo fused recall@1/5/10 (protocol of benchmarks/locomo.py: category 5 skipped,
  cross_conversation, lookback_days=None) with the floor applied to the fused top-50 list,
  recall@k counting the evidence turns among the first k messages the floor keeps. Goal:
  recall@10 drops by at most 0.01 against no floor.

Runs through the public API (``Memory.add_many``, ``flush``, ``get_memory``); the loader is
benchmarks/locomo.py's. For each query it makes three calls on the owner: the default fused
ranking (limit 50, the fusion depth; score = the fused score: RRF when the floor was
chosen, score fusion and signals since issue 17), ``dense=False`` (limit 50; score =
-bm25, and an empty list means BM25 matched nothing) and ``keyword=False`` over all the
owner's messages (score = cosine similarity, so every fused candidate gets its exact
cosine, including those only BM25 found: a floor in the library must look those up).

Rules evaluated (each keeps or drops one fused message; a query-level gate answers all or
nothing), thresholds swept in steps of 0.01:

* (a) ``cos >= T``
* (b) ``cos >= T or bm25``          (bm25: the message is among BM25's top 50)
* (c) ``cos >= T1 or (bm25 and cos >= T2)``, T2 < T1 (grid)
* (d) gate: nothing if the query's top-1 cosine < T, else the unfiltered fused list
* (e) gate on top-1 cosine >= T1, then per message ``cos >= T2`` (grid)
* (f) gate on top-1 cosine >= T, then per message ``cos >= T or bm25`` (one number)
* (g) gate on top-1 cosine >= T1, then per message ``cos >= T2 or bm25`` (grid)

FP is counted on the filtered top-50 list (a call is a false positive if any of its 50
fused candidates survives); the default limit (10) truncates after filtering, so it returns
something exactly when the filtered top-50 does. For the gates the two orders agree.

The numbers are specific to all-MiniLM-L6-v2 and to this data; the chosen threshold is
tuned on the same LoCoMo questions it is measured on (see the report's caveats).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import locomo  # benchmarks/locomo.py: DEFAULT_DATA, load

from localmem import Memory, Strategy

DEPTH = 50  # the fused list the floor filters: localmem's fusion depth
KS = (1, 5, 10)
FP_GOAL = 0.10
DROP_GOAL = 0.01
DEFAULT_QUERIES = Path(__file__).resolve().parent / "data" / "no_answer_queries.json"
GRID = np.round(np.arange(0.0, 0.801, 0.01), 2)  # thresholds swept
SHOWN = np.round(np.arange(0.05, 0.651, 0.05), 2)  # thresholds printed


def _keyword_terms(text: str) -> list[str] | None:
    """The words localmem's BM25 query keeps (internal helper; None if it has moved)."""
    try:
        from localmem.retrieval import keyword_query
    except ImportError:
        return None
    match = keyword_query(text)
    return [] if match is None else [w.strip('"') for w in match.split(" OR ")]


def collect(mem: Memory, owner: str, size: int, query: str) -> dict[str, Any]:
    """The signals of one query on one owner: the fused top-50 with each message's cosine,
    BM25 membership and RRF score; the query's top-1 cosine; BM25's hit count."""
    common = {"query": query, "owner_id": owner, "conversation_id": "session_1", "lookback_days": None}
    fused = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=DEPTH, **common).messages
    sparse = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=DEPTH, dense=False, **common).messages
    dense = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=size, keyword=False, **common).messages
    cosine = {m.msg_id: m.score for m in dense}
    bm25 = {m.msg_id: m.score for m in sparse}
    return {
        "ids": [m.msg_id for m in fused],
        "rrf": [m.score for m in fused],
        "cos": [cosine.get(m.msg_id, -1.0) for m in fused],  # -1: no vector (never here)
        "bm25": [m.msg_id in bm25 for m in fused],
        "top1": dense[0].score if dense else -1.0,
        "top1_text": dense[0].content if dense else "",
        "bm25_hits": len(sparse),
        "cos_all": cosine,
    }


class Signals:
    """Per query, the fused top-50 as padded arrays [queries, DEPTH]."""

    def __init__(self, rows: list[dict[str, Any]], evidence: list[set[str]] | None = None):
        n = len(rows)
        self.valid = np.zeros((n, DEPTH), bool)
        self.cos = np.full((n, DEPTH), -1.0)
        self.bm25 = np.zeros((n, DEPTH), bool)
        self.top1 = np.array([r["top1"] for r in rows])
        self.gold = np.zeros((n, DEPTH), bool)
        self.n_gold = np.ones(n)
        for i, r in enumerate(rows):
            k = len(r["ids"])
            self.valid[i, :k] = True
            self.cos[i, :k] = r["cos"]
            self.bm25[i, :k] = r["bm25"]
            if evidence is not None:
                self.gold[i, :k] = [m in evidence[i] for m in r["ids"]]
                self.n_gold[i] = len(evidence[i])
        if evidence is not None:
            self.has_gold = np.array([bool(e) for e in evidence])

    def recall(self, keep: np.ndarray) -> dict[int, float]:
        """Mean recall@k with ``keep`` applied to the fused list before truncating at k."""
        keep = keep & self.valid
        rank = np.cumsum(keep, axis=1)  # 1-based position among kept messages
        out = {}
        for k in KS:
            hit = (self.gold & keep & (rank <= k)).sum(axis=1)
            out[k] = float(np.mean(hit / np.maximum(self.n_gold, 1)))  # no evidence: 0, as locomo.py
        return out

    def kept(self, keep: np.ndarray, limit: int = 10) -> float:
        """Mean number of messages a call with ``limit`` returns."""
        return float(np.minimum((keep & self.valid).sum(axis=1), limit).mean())

    def nonempty(self, keep: np.ndarray) -> np.ndarray:
        return (keep & self.valid).any(axis=1)


def rules() -> dict[str, Any]:
    """name -> (parameter grid, function(signals, *params) -> keep mask)."""
    pairs = [(t1, t2) for t1 in GRID if t1 >= 0.15 for t2 in GRID if t2 < t1]
    return {
        "a: cos>=T": ([(t,) for t in GRID], lambda s, t: s.cos >= t),
        "b: cos>=T or bm25": ([(t,) for t in GRID], lambda s, t: (s.cos >= t) | s.bm25),
        "c: cos>=T1 or (bm25 and cos>=T2)": (pairs, lambda s, t1, t2: (s.cos >= t1) | (s.bm25 & (s.cos >= t2))),
        "d: top1>=T gate": ([(t,) for t in GRID], lambda s, t: np.broadcast_to((s.top1 >= t)[:, None], s.valid.shape)),
        "e: top1>=T1 gate, cos>=T2": (pairs, lambda s, t1, t2: (s.top1 >= t1)[:, None] & (s.cos >= t2)),
        "f: top1>=T gate, cos>=T or bm25": (
            [(t,) for t in GRID], lambda s, t: (s.top1 >= t)[:, None] & ((s.cos >= t) | s.bm25)),
        "g: top1>=T1 gate, cos>=T2 or bm25": (
            pairs, lambda s, t1, t2: (s.top1 >= t1)[:, None] & ((s.cos >= t2) | s.bm25)),
    }


def evaluate(
    loco: Signals, noans: Signals, groups: dict[str, np.ndarray], only: tuple[str, ...] | None = None
) -> dict[str, list[dict]]:
    base = loco.recall(np.ones_like(loco.valid))
    results: dict[str, list[dict]] = {}
    for name, (grid, keep_of) in rules().items():
        if only is not None and name not in only:
            continue
        rows = []
        for params in grid:
            keep = keep_of(loco, *params)
            r = loco.recall(keep)
            hits = noans.nonempty(keep_of(noans, *params))
            rows.append({
                "params": [float(p) for p in params],
                "fp": float(hits.mean()),
                **{f"fp_{g}": float(hits[m].mean()) for g, m in groups.items()},
                **{f"R@{k}": r[k] for k in KS},
                "drop_R@10": base[10] - r[10],
                "locomo_empty": float(1 - loco.nonempty(keep).mean()),
                "kept@10": loco.kept(keep),
            })
        results[name] = rows
    results["none"] = [{"params": [], "fp": 1.0, **{f"R@{k}": base[k] for k in KS}, "drop_R@10": 0.0,
                        "locomo_empty": 0.0, "kept@10": loco.kept(np.ones_like(loco.valid))}]
    return results


def feasible(row: dict) -> bool:
    return row["fp"] <= FP_GOAL and row["drop_R@10"] <= DROP_GOAL + 1e-12


def pct(values: Any, ps: tuple[int, ...] = (5, 10, 25, 50, 75, 90, 95)) -> dict[str, float]:
    return {f"p{p}": float(np.percentile(values, p)) for p in ps}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=locomo.DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--queries", type=Path, default=DEFAULT_QUERIES, help="no-answer queries (JSON)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--plain", action="store_true",
                        help="store turns without the 'Speaker: ' prefix (a sensitivity check)")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"no LoCoMo files in {args.data}", file=sys.stderr)
        return 2
    no_answer = json.loads(args.queries.read_text())
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "floor.db", query_cache_ttl=0) as mem:
        questions, sizes = [], {}
        for path in files:
            messages, qs = locomo.load(path)
            if args.plain:
                for m in messages:
                    m["content"] = m["content"].split(": ", 1)[1]
            mem.add_many(messages)
            sizes[path.stem] = len(messages)
            questions += [(path.stem, *q) for q in qs]
        mem.flush()
        print(f"{mem.stats()['messages']} messages embedded in {time.perf_counter() - started:.1f} s; "
              f"{len(questions)} LoCoMo questions, {len(no_answer)} no-answer queries x {len(sizes)} owners")
        loco_rows = [collect(mem, owner, sizes[owner], q) for owner, q, _, _ in questions]
        noans_rows, noans_meta = [], []
        for q in no_answer:
            for owner, size in sizes.items():
                noans_rows.append(collect(mem, owner, size, q["text"]))
                noans_meta.append(q)
    evidence = [ev for _, _, _, ev in questions]
    # Cosine of each evidence turn (all of them, found or not): where a per-message floor bites.
    gold_cos = [row["cos_all"][e] for row, ev in zip(loco_rows, evidence) for e in ev if e in row["cos_all"]]
    loco, noans = Signals(loco_rows, evidence), Signals(noans_rows)
    groups = {
        **{lang: np.array([m["lang"] == lang for m in noans_meta]) for lang in ("en", "pt")},
        **{kind: np.array([m["kind"] == kind for m in noans_meta])
           for kind in dict.fromkeys(m["kind"] for m in noans_meta)},
    }
    results = evaluate(loco, noans, groups)
    # keyword=False: the dense ranking alone (each owner's top 50 by cosine, no BM25), where
    # rules (a) and (f) coincide: a floor there truncates the ranking at the threshold.
    def dense_only(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
        out = []
        for r in rows:
            top = sorted(r["cos_all"].items(), key=lambda kv: -kv[1])[:DEPTH]
            out.append({"ids": [i for i, _ in top], "cos": [c for _, c in top], "bm25": [False] * len(top),
                        "top1": r["top1"]})
        return out
    dense_results = evaluate(Signals(dense_only(loco_rows), evidence), Signals(dense_only(noans_rows)), groups,
                             only=("f: top1>=T gate, cos>=T or bm25",))

    # -- what the signals look like ---------------------------------------------------------
    dist = {
        "top-1 cos, LoCoMo questions": pct(loco.top1),
        "top-1 cos, no-answer (all)": pct(noans.top1),
        **{f"top-1 cos, no-answer {g}": pct(noans.top1[m]) for g, m in groups.items()},
        "cos of evidence turns (all)": pct(gold_cos),
        "cos of evidence turns in fused top-10": pct(loco.cos[:, :10][loco.gold[:, :10]]),
    }
    bm25_any = {
        "LoCoMo questions": float(np.mean([r["bm25_hits"] > 0 for r in loco_rows])),
        **{f"no-answer {g}": float(np.mean([r["bm25_hits"] > 0 for r, ok in zip(noans_rows, m) if ok]))
           for g, m in {"all": np.ones(len(noans_rows), bool), **groups}.items()},
    }
    print(f"\n{'cosine percentiles':42}" + "".join(f"{p:>7}" for p in next(iter(dist.values()))))
    for name, p in dist.items():
        print(f"  {name:40}" + "".join(f"{v:7.3f}" for v in p.values()))
    print("\nshare of calls where BM25 matched anything (a shared non-stopword stem)")
    for name, v in bm25_any.items():
        print(f"  {name:40}{v:7.3f}")

    # -- the rules --------------------------------------------------------------------------
    base = results["none"][0]
    print(f"\nno floor: R@1 {base['R@1']:.3f}  R@5 {base['R@5']:.3f}  R@10 {base['R@10']:.3f}; FP share 1.000\n"
          "FP = share of no-answer calls returning >= 1 message (then per language and kind); "
          "dR@10 = R@10 drop against no floor;\nempty = share of LoCoMo questions answered with "
          "nothing; kept = mean messages returned at limit 10 (LoCoMo)")
    short = {"small_talk": "talk", "arithmetic": "arith", "general_knowledge": "know"}
    cols = ["fp", *(f"fp_{g}" for g in groups), "R@1", "R@5", "R@10", "drop_R@10", "locomo_empty", "kept@10"]
    head = ["FP", *(short.get(g, g) for g in groups), "R@1", "R@5", "R@10", "dR@10", "empty", "kept"]

    def header(label: str) -> None:
        print(f"  {label:11}" + "".join(f"{h:>7}" for h in head))

    def show(row: dict) -> None:
        label = "/".join(f"{v:.2f}" for v in row["params"])
        print(f"  {label:11}" + "".join(f"{row[c]:7.3f}" for c in cols)
              + ("   <- meets both goals" if feasible(row) else ""))

    single = ("a: cos>=T", "b: cos>=T or bm25", "d: top1>=T gate", "f: top1>=T gate, cos>=T or bm25")
    for name in single:
        print(f"\n({name})")
        header("T")
        for row in results[name]:
            if any(abs(row["params"][0] - t) < 1e-9 for t in SHOWN):
                show(row)
    for name in ("c: cos>=T1 or (bm25 and cos>=T2)", "e: top1>=T1 gate, cos>=T2", "g: top1>=T1 gate, cos>=T2 or bm25"):
        ok = [r for r in results[name] if feasible(r)]
        if ok:  # the feasible pairs with the lowest FP, then the smallest cost
            best = sorted(ok, key=lambda r: (r["fp"], r["drop_R@10"], -r["params"][1]))[:5]
        else:  # the pairs nearest both goals
            best = sorted(results[name], key=lambda r: max(r["fp"] - FP_GOAL, 0) + max(r["drop_R@10"] - DROP_GOAL, 0))[:5]
        print(f"\n({name}): {len(ok)} of {len(results[name])} pairs meet both goals; "
              + ("lowest FP among them:" if ok else "the closest:"))
        header("T1/T2")
        for row in best:
            show(row)

    # -- the pick: the one-number rule with the widest band meeting both goals ----------------
    chosen: dict[str, Any] = {}
    print()
    for name in single:
        ok = [r["params"][0] for r in results[name] if feasible(r)]
        chosen[name] = {"feasible": [min(ok), max(ok)] if ok else None}
        closest = min(results[name], key=lambda r: max(r["fp"] - FP_GOAL, 0) + max(r["drop_R@10"] - DROP_GOAL, 0))
        print(f"({name}) T meeting FP <= {FP_GOAL} and dR@10 <= {DROP_GOAL}: "
              + (f"{min(ok):.2f} .. {max(ok):.2f}" if ok else
                 f"none; closest T={closest['params'][0]:.2f} (FP {closest['fp']:.3f}, dR@10 {closest['drop_R@10']:.3f})"))
        if not ok:
            chosen[name]["closest"] = closest
    banded = [n for n in single if chosen[n]["feasible"]]
    t_show = 0.3
    if banded:
        def at(name: str, t: float) -> dict:
            return next(r for r in results[name] if abs(r["params"][0] - t) < 1e-9)

        def middle(name: str) -> float:  # a round number near the middle of the band
            lo, hi = chosen[name]["feasible"]
            return round(round((lo + hi) / 2 / 0.05) * 0.05, 2)

        # The widest band; on a tie, the rule letting fewer messages through at its middle.
        name = min(banded, key=lambda n: (chosen[n]["feasible"][0] - chosen[n]["feasible"][1],
                                          at(n, middle(n))["kept@10"]))
        t_show = middle(name)
        by_t = {round(r["params"][0], 2): r for r in results[name]}
        print(f"\nrecommended: ({name}) at T = {t_show:.2f}; T +- 0.05:")
        header("T")
        for t in np.round(np.arange(t_show - 0.05, t_show + 0.051, 0.01), 2):
            if float(t) in by_t:
                show(by_t[float(t)])
        chosen["recommended"] = {"rule": name, **by_t[t_show]}

    base_dense = dense_results["none"][0]
    print(f"\n(dense only, keyword=False, where rules (a) and (f) coincide; no floor R@10 {base_dense['R@10']:.3f})")
    header("T")
    for row in dense_results["f: top1>=T gate, cos>=T or bm25"]:
        if any(abs(row["params"][0] - t) < 1e-9 for t in SHOWN):
            show(row)

    # -- the no-answer queries that get through the recommended gate ---------------------------
    through: Counter[str] = Counter()
    best_match: dict[str, tuple[float, str]] = {}
    for row, meta in zip(noans_rows, noans_meta):
        if row["top1"] >= t_show:
            through[meta["text"]] += 1
            if row["top1"] > best_match.get(meta["text"], (-1.0, ""))[0]:
                best_match[meta["text"]] = (row["top1"], row["top1_text"][:80])
    print(f"\nno-answer queries whose top-1 cosine reaches {t_show:.2f} (on how many of the {len(sizes)} owners; "
          "the best cosine and its message):")
    for text, n in through.most_common():
        cos, best = best_match[text]
        print(f"  {n}  {cos:.3f}  {text!r} -> {best!r}")
    print(f"\n{time.perf_counter() - started:.0f} s in all")
    if args.json:
        args.json.write_text(json.dumps({
            "messages": sum(sizes.values()), "locomo_questions": len(questions),
            "no_answer_calls": len(noans_rows), "goals": {"fp": FP_GOAL, "drop_R@10": DROP_GOAL},
            "distributions": dist, "bm25_matched_share": bm25_any, "choice": chosen,
            "no_answer_per_query": [
                {**meta, "owner": owner, "top1": row["top1"], "top1_text": row["top1_text"],
                 "bm25_hits": row["bm25_hits"], "keyword_terms": _keyword_terms(meta["text"])}
                for row, meta, owner in zip(noans_rows, noans_meta, [o for _ in no_answer for o in sizes])
            ],
            # One-number rules in full; of the two-number grids, the pairs meeting both goals
            # and the 50 nearest to them.
            "rules": {name: rows if len(rows) <= len(GRID) else [
                r for i, r in enumerate(sorted(rows, key=lambda r: (
                    max(r["fp"] - FP_GOAL, 0) + max(r["drop_R@10"] - DROP_GOAL, 0), r["fp"])))
                if feasible(r) or i < 50] for name, rows in results.items()},
            "rules_dense_only": dense_results,
        }, indent=1, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    if "LOCALMEM_MODELS_DIR" not in os.environ and "HF_HUB_OFFLINE" not in os.environ:
        print("note: needs the real all-MiniLM-L6-v2 (LOCALMEM_MODELS_DIR or the model cache)", file=sys.stderr)
    sys.exit(main())
