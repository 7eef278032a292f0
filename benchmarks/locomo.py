"""Retrieval quality on LoCoMo: turn-level recall@k of cross_conversation, per configuration.

    python benchmarks/locomo.py [--data DIR] [--json OUT]      # about 1 minute

Protocol (../shared/data/locomo/README.md): skip category 5; one owner per conversation
file, one conversation per session, every turn a message stamped with its session's time;
for each question, retrieve the owner's top k messages across all sessions; recall@k is the
share of the question's evidence turns among them, averaged over questions.

Runs through the public API only (``Memory.add_many``, ``flush``, ``get_memory(
Strategy.CROSS_CONVERSATION, lookback_days=None)``), so it works on any data in this
format. Configurations: the default (dense KNN fused with BM25 by reciprocal rank fusion,
then the relevance floor), the same with ``min_relevance=None`` (no floor), ``keyword=False``
(dense only), ``dense=False`` (BM25 only). Prints recall@1/5/10/20/50 overall and per
question category.

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

from localmem import Memory, Strategy

# LOCALMEM_LOCOMO_DIR (which .ci/run sets), else the project workspace's shared copy.
NO_ANSWER = Path(__file__).resolve().parent / "data" / "no_answer_queries.json"
DEFAULT_DATA = Path(os.environ.get("LOCALMEM_LOCOMO_DIR") or
                    Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "locomo")
KS = (1, 5, 10, 20, 50)
CONFIGS = {  # name -> get_memory arguments
    "fused (default)": {},
    "fused, no floor": {"min_relevance": None},
    "dense only (keyword=False)": {"keyword": False},
    "keyword only (dense=False)": {"dense": False},
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


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"no LoCoMo files in {args.data}", file=sys.stderr)
        return 2
    # recall[config][category or "all"][k] -> one value per question
    recall: dict[str, dict[Any, dict[int, list[float]]]] = {
        name: {c: {k: [] for k in KS} for c in ("all", *CATEGORIES)} for name in CONFIGS
    }
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "locomo.db", query_cache_ttl=0) as mem:
        started = time.perf_counter()
        questions = []
        for path in files:
            messages, qs = load(path)
            mem.add_many(messages)
            questions += [(path.stem, *q) for q in qs]
        mem.flush()
        print(f"{mem.stats()['messages']} messages embedded in {time.perf_counter() - started:.1f} s; "
              f"{len(questions)} questions from {len(files)} conversations")
        for owner, question, category, evidence in questions:
            for name, options in CONFIGS.items():
                got = mem.get_memory(
                    Strategy.CROSS_CONVERSATION, query=question, owner_id=owner,
                    conversation_id="session_1", limit=max(KS), lookback_days=None, **options,
                )
                ids = [m.msg_id for m in got.messages]
                for k in KS:
                    value = len(evidence & set(ids[:k])) / len(evidence) if evidence else 0.0
                    recall[name]["all"][k].append(value)
                    if category in CATEGORIES:
                        recall[name][category][k].append(value)
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
    print(f"\n{'all questions':30}" + "".join(f"{'R@' + str(k):>8}" for k in KS))
    for name, rows in table.items():
        print(f"{name:30}" + "".join(f"{rows['all'][f'R@{k}']:8.3f}" for k in KS))
    print(f"\n{'R@10 by category':30}" + "".join(f"{c:>13}" for c in CATEGORIES.values()))
    print(f"{'(questions)':30}" + "".join(f"{table[next(iter(CONFIGS))][c]['questions']:>13}" for c in CATEGORIES.values()))
    for name, rows in table.items():
        print(f"{name:30}" + "".join(f"{rows[c]['R@10']:13.3f}" for c in CATEGORIES.values()))
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
        args.json.write_text(json.dumps({**table, "no_answer": no_answer}, indent=2))
    return 0


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
