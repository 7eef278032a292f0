"""Retrieval quality on LoCoMo: turn-level recall@k of cross_conversation, per configuration.

    python benchmarks/locomo.py [--data DIR] [--json OUT]      # about 1 minute
    python benchmarks/locomo.py --reranker NAME|PATH [--int8] [--limit-questions N]

Protocol (../shared/data/locomo/README.md): skip category 5; one owner per conversation
file, one conversation per session, every turn a message stamped with its session's time;
for each question, retrieve the owner's top k messages across all sessions; recall@k is the
share of the question's evidence turns among them, averaged over questions.

Runs through the public API only (``Memory.add_many``, ``flush``, ``get_memory(
Strategy.CROSS_CONVERSATION, lookback_days=None)``), so it works on any data in this
format. Configurations: the default (dense KNN fused with BM25 by score fusion, the signals,
then the relevance floor: localmem/retrieval.py), the same with ``min_relevance=None`` (no floor), ``keyword=False``
(dense only), ``dense=False`` (BM25 only), each with ``rerank=False``. Prints
recall@1/5/10/20/50 overall and per question category.

``--reranker NAME|PATH`` (a registry name such as ms-marco-MiniLM-L-6-v2, or a model
folder; ``--int8`` for its int8 copy, else the fp32 model even where
``Memory(reranker=NAME)`` would take an int8 copy) adds two rows on the same ``Memory``
and the same vectors: "fused + rerank (NAME)", the default search reranked with the
Memory's defaults (threshold 0.5, min_keep 3), and the same with
``rerank_threshold=None`` (the reranker's order alone: recall@k not cut by the
threshold). Every call asks for 50 messages (for R@50), so the reranker scores
max(rerank_candidates 30, limit 50) = 50 per call (fewer when fewer pass the floor).
Also printed: the mean ``stages.rerank_ms`` of those calls. ``--limit-questions N``
keeps N questions spread evenly over all of them (a shorter run;
its recall is not comparable with the full run's).

The relevance floor's other side in the same run: ``data/no_answer_queries.json`` (72
queries nothing in LoCoMo answers: small talk, arithmetic, general knowledge; English and
Portuguese), each asked of every owner with the default limit; the false-positive share
is the share of those calls that return any message (goal: at most 0.10, for a recall@10
cost of at most 0.01). How the floor was chosen: benchmarks/relevance_floor.py.

Needs the real all-MiniLM-L6-v2 (LOCALMEM_MODELS_DIR or the model cache).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import localmem
from localmem import Memory, Strategy

# LOCALMEM_LOCOMO_DIR (which .ci/run sets), else the project workspace's shared copy.
NO_ANSWER = Path(__file__).resolve().parent / "data" / "no_answer_queries.json"
DEFAULT_DATA = Path(os.environ.get("LOCALMEM_LOCOMO_DIR") or
                    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "locomo")
KS = (1, 5, 10, 20, 50)
CONFIGS: dict[str, dict[str, Any]] = {  # name -> get_memory arguments
    "fused (default)": {"rerank": False},
    "fused, no floor": {"min_relevance": None, "rerank": False},
    "dense only (keyword=False)": {"keyword": False, "rerank": False},
    "keyword only (dense=False)": {"dense": False, "rerank": False},
}
CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}


def session_time(text: str) -> datetime:
    """"1:56 pm on 8 May, 2023" as an aware UTC datetime."""
    return datetime.strptime(text, "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def load(path: Path) -> tuple[list[dict], list[tuple[str, int, set[str]]]]:
    """One conversation file: its messages (add_many items) and its questions as
    (question, category, evidence msg_ids)."""
    data = json.loads(path.read_text())
    owner = path.stem
    messages = []
    for key, turns in data.items():
        if not re.fullmatch(r"session_\d+", key):
            continue
        when = session_time(data[f"{key}_date_time"])
        for turn in turns:
            # "Speaker: text", as the reference numbers embed turns: questions name people
            # ("When did Caroline ..."), and without the name dense recall@10 falls ~20 points.
            text = f"{turn['speaker']}: {turn['text']}"
            if turn.get("blip_caption"):
                text += f" [shares a photo: {turn['blip_caption']}]"
            messages.append({
                "msg_id": f"{owner}:{turn['dia_id']}", "role": "user", "content": text,
                "conversation_id": key, "owner_id": owner, "created_at": when,
                "metadata": {"speaker": turn["speaker"]},
            })
    questions = []
    for qa in data["qa"]:
        if qa.get("category") == 5:
            continue
        evidence = " ".join(qa["evidence"]) if isinstance(qa["evidence"], list) else str(qa["evidence"])
        ids = {f"{owner}:{d}" for d in re.findall(r"D\d+:\d+", evidence)}
        questions.append((qa["question"], qa.get("category"), ids))
    return messages, questions


def ingest(mem: Memory, files: list[Path], limit: int | None) -> tuple[list[tuple[str, str, int, set[str]]], int]:
    """Every conversation file into ``mem`` (one owner each), embedded; the questions as
    (owner, question, category, evidence), ``limit`` of them spread evenly when given,
    and how many there were in all."""
    questions = []
    for path in files:
        messages, qs = load(path)
        mem.add_many(messages)
        questions += [(path.stem, *q) for q in qs]
    mem.flush()
    total = len(questions)
    if limit is not None and limit < total:
        questions = [questions[i * total // limit] for i in range(limit)]
    return questions, total


def load_reranker(value: str, int8: bool) -> Any:
    """--reranker's model: a folder (or .onnx file) if that path exists, else a registry
    name (found as localmem finds models: LOCALMEM_MODELS_DIR, the Hugging Face cache, a
    download unless HF_HUB_OFFLINE). Scores one pair at once, so a model that cannot load
    fails here rather than after the embedding."""
    path = Path(value).expanduser()
    model = (localmem.load_reranker(path=path, int8=int8) if path.exists()
             else localmem.load_reranker(value, int8=int8))
    model.score("warm-up", ["the session loads here"])
    return model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    parser.add_argument("--reranker", metavar="NAME|PATH",
                        help="also measure fused search reranked by this cross-encoder (registry name or folder)")
    parser.add_argument("--int8", action="store_true", help="with --reranker: its int8 copy (default: fp32)")
    parser.add_argument("--db", metavar="PATH|URL",
                        help="an empty database to run in (e.g. a postgresql:// URL, to measure that backend;"
                             " default: a temporary file)")
    parser.add_argument("--limit-questions", type=int, metavar="N",
                        help="only N questions, spread evenly (shorter run; recall not comparable)")
    args = parser.parse_args()
    if args.int8 and not args.reranker:
        parser.error("--int8 needs --reranker")
    if args.limit_questions is not None and args.limit_questions < 1:
        parser.error("--limit-questions must be at least 1")
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"no LoCoMo files in {args.data}", file=sys.stderr)
        return 2
    configs = dict(CONFIGS)
    reranker, label = None, ""
    if args.reranker:
        reranker = load_reranker(args.reranker, args.int8)
        label = f"{reranker.name}{' int8' if args.int8 else ''}"
        configs[f"fused + rerank ({label})"] = {}  # the Memory's defaults: threshold 0.5, min_keep 3
        configs[f"fused + rerank ({label}), no threshold"] = {"rerank_threshold": None}
    reranked = [name for name, options in configs.items() if options.get("rerank", True) and reranker]
    width = max(30, *(len(name) + 2 for name in configs))
    # recall[config][category or "all"][k] -> one value per question
    recall: dict[str, dict[Any, dict[int, list[float]]]] = {
        name: {c: {k: [] for k in KS} for c in ("all", *CATEGORIES)} for name in configs
    }
    # per reranked config: SearchStages of each call, and how many messages it returned
    stages: dict[str, list[Any]] = {name: [] for name in reranked}
    returned: dict[str, list[int]] = {name: [] for name in reranked}
    with tempfile.TemporaryDirectory() as tmp, \
            Memory(args.db or Path(tmp) / "locomo.db", query_cache_ttl=0, reranker=reranker,
                   cache_dir=Path(tmp) / "cache") as mem:
        if mem.stats()["messages"]:
            print(f"{args.db} is not empty: --db takes an empty database", file=sys.stderr)
            return 2
        started = time.perf_counter()
        questions, total = ingest(mem, files, args.limit_questions)
        print(f"{mem.stats()['messages']} messages embedded in {time.perf_counter() - started:.1f} s; "
              f"{len(questions)} questions from {len(files)} conversations"
              + (f" (--limit-questions: {len(questions)} of {total}, spread evenly)" if len(questions) < total else ""))
        asked = time.perf_counter()
        for owner, question, category, evidence in questions:
            for name, options in configs.items():
                got = mem.get_memory(
                    Strategy.CROSS_CONVERSATION, query=question, owner_id=owner,
                    conversation_id="session_1", limit=max(KS), lookback_days=None, **options,
                )
                if name in stages:
                    stages[name].append(got.stages)
                    returned[name].append(len(got.messages))
                ids = [m.msg_id for m in got.messages]
                for k in KS:
                    value = len(evidence & set(ids[:k])) / len(evidence) if evidence else 0.0
                    recall[name]["all"][k].append(value)
                    if category in CATEGORIES:
                        recall[name][category][k].append(value)
        asked_s = time.perf_counter() - asked
        owners = sorted({owner for owner, *_ in questions})
        no_answer = false_positives(mem, owners)
    table = {
        name: {
            ("all" if c == "all" else CATEGORIES[c]): {
                "questions": len(by_k[KS[0]]),
                **{f"R@{k}": statistics.mean(v) if v else 0.0 for k, v in by_k.items()},
            }
            for c, by_k in per_category.items()
        }
        for name, per_category in recall.items()
    }
    print(f"\n{'all questions':{width}}" + "".join(f"{'R@' + str(k):>8}" for k in KS))
    for name, rows in table.items():
        print(f"{name:{width}}" + "".join(f"{rows['all'][f'R@{k}']:8.3f}" for k in KS))
    print(f"\n{'R@10 by category':{width}}" + "".join(f"{c:>13}" for c in CATEGORIES.values()))
    print(f"{'(questions)':{width}}" + "".join(f"{table[next(iter(CONFIGS))][c]['questions']:>13}" for c in CATEGORIES.values()))
    for name, rows in table.items():
        print(f"{name:{width}}" + "".join(f"{rows[c]['R@10']:13.3f}" for c in CATEGORIES.values()))
    rerank = rerank_summary(reranker, args, stages, returned) if reranker is not None else None
    if rerank is not None:
        print(f"\nreranker {label} ({rerank['source']}); {len(questions)} questions x {len(configs)} "
              f"configurations asked in {asked_s:.0f} s")
        print(f"{'reranked calls':{width}}{'rerank_ms mean':>15}{'p50':>9}{'p95':>9}{'scored':>8}"
              f"{'< threshold':>12}{'returned':>9}")
        for name, r in rerank["configs"].items():
            print(f"{name:{width}}{r['rerank_ms_mean']:15.1f}{r['rerank_ms_p50']:9.1f}{r['rerank_ms_p95']:9.1f}"
                  f"{r['scored_mean']:8.1f}{r['below_threshold_mean']:12.1f}{r['returned_mean']:9.1f}")
        print("(means per call; every call asks for 50 messages, so the reranker scores up to "
              "max(rerank_candidates 30, limit 50) = 50 of them)")
    print(f"\n{'no-answer queries (calls)':30}{'any message returned (share of calls)':>40}")
    for name, by_group in no_answer.items():
        groups = "  ".join(f"{g} {share:.3f}" for g, share in by_group.items() if g != "all")
        print(f"{name:30}{by_group['all']:8.3f}   ({groups})")
    cost = table["fused, no floor"]["all"]["R@10"] - table["fused (default)"]["all"]["R@10"]
    fp = no_answer["fused (default)"]["all"]
    print(f"\nrelevance floor (default settings): false positives {fp:.3f} (goal <= 0.10), "
          f"fused R@10 cost {cost:.3f} (goal <= 0.01): "
          f"{'met' if fp <= 0.10 and cost <= 0.01 else 'MISSED'}")
    if args.json:
        extra = {} if rerank is None else {"rerank": rerank}
        args.json.write_text(json.dumps({**table, "no_answer": no_answer, **extra}, indent=2))
    return 0


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def rerank_summary(reranker: Any, args: argparse.Namespace, stages: dict[str, list[Any]],
                   returned: dict[str, list[int]]) -> dict[str, Any]:
    """What the reranked calls cost and did, from their ``MemoryResult.stages``."""
    configs = {}
    for name, per_call in stages.items():
        ms = [s.rerank_ms for s in per_call]
        configs[name] = {
            "calls": len(per_call),
            "rerank_ms_mean": statistics.mean(ms), "rerank_ms_p50": statistics.median(ms),
            "rerank_ms_p95": pct(ms, 0.95),
            "retrieval_ms_mean": statistics.mean(s.retrieval_ms for s in per_call),
            "scored_mean": statistics.mean(s.reranked for s in per_call),
            "below_threshold_mean": statistics.mean(s.below_threshold for s in per_call),
            "returned_mean": statistics.mean(returned[name]),
            "skipped": sum(s.rerank_skipped is not None for s in per_call),
        }
    return {
        "reranker": reranker.name, "source": str(reranker.files.onnx_path), "int8": bool(args.int8),
        "configs": configs,
    }


def false_positives(mem: Memory, owners: list[str]) -> dict[str, dict[str, float]]:
    """For the default fused search and for the same without the floor: the share of
    no-answer calls (each query asked of each owner, default limit) that return any
    message, overall and per language and kind."""
    queries = json.loads(NO_ANSWER.read_text(encoding="utf-8"))
    out = {}
    for name in ("fused (default)", "fused, no floor"):
        hits: dict[str, list[bool]] = {"all": []}
        for q in queries:
            for owner in owners:
                got = mem.get_memory(
                    Strategy.CROSS_CONVERSATION, query=q["text"], owner_id=owner,
                    conversation_id="session_1", lookback_days=None, **CONFIGS[name],
                )
                for group in ("all", q["lang"], q["kind"]):
                    hits.setdefault(group, []).append(bool(got.messages))
        out[name] = {group: statistics.mean(values) for group, values in hits.items()}
    return out


if __name__ == "__main__":
    sys.exit(main())
