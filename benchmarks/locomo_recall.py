"""Retrieval quality on LoCoMo: turn-level recall@k of cross_conversation, fused and dense.

    python benchmarks/locomo_recall.py [--data DIR] [--json OUT]

Protocol (../shared/data/locomo/README.md): skip category 5; one owner per conversation
file, one conversation per session, every turn a message stamped with its session's time;
for each question, retrieve the owner's top k messages across all sessions; recall@k is the
share of the question's evidence turns among them, averaged over questions.

Runs through the public API only: ``Memory.add_many``, ``flush``, and ``get_memory(
Strategy.CROSS_CONVERSATION, lookback_days=None)`` with ``keyword=True`` (dense KNN fused
with BM25 by reciprocal rank fusion, the default) and ``keyword=False`` (dense only).
Needs the real all-MiniLM-L6-v2 (LOCALMEM_MODELS_DIR or the model cache).
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from localmem import Memory, Strategy

DEFAULT_DATA = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "locomo"
KS = (5, 10, 50)


def session_time(text: str) -> datetime:
    """"1:56 pm on 8 May, 2023" as an aware UTC datetime."""
    return datetime.strptime(text, "%I:%M %p on %d %B, %Y").replace(tzinfo=timezone.utc)


def load(path: Path) -> tuple[list[dict], list[tuple[str, set[str]]]]:
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
        questions.append((qa["question"], {f"{owner}:{d}" for d in re.findall(r"D\d+:\d+", evidence)}))
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
    recall: dict[str, dict[int, list[float]]] = {m: {k: [] for k in KS} for m in ("fused", "dense")}
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "locomo.db", query_cache_ttl=0) as mem:
        started = time.perf_counter()
        questions = []
        for path in files:
            messages, qs = load(path)
            mem.add_many(messages)
            questions += [(path.stem, q, ev) for q, ev in qs]
        mem.flush()
        print(f"{mem.stats()['messages']} messages embedded in {time.perf_counter() - started:.1f} s; "
              f"{len(questions)} questions from {len(files)} conversations")
        for owner, question, evidence in questions:
            for mode, keyword in (("fused", True), ("dense", False)):
                got = mem.get_memory(
                    Strategy.CROSS_CONVERSATION, query=question, owner_id=owner,
                    conversation_id="session_1", limit=max(KS), lookback_days=None, keyword=keyword,
                )
                ids = [m.msg_id for m in got.messages]
                for k in KS:
                    found = len(evidence & set(ids[:k]))
                    recall[mode][k].append(found / len(evidence) if evidence else 0.0)
    rows = {mode: {f"R@{k}": statistics.mean(v) for k, v in by_k.items()} for mode, by_k in recall.items()}
    print(f"{'':28}" + "".join(f"{'R@' + str(k):>8}" for k in KS))
    names = {"fused": "cross_conversation (fused)", "dense": "keyword=False (dense only)"}
    for mode, row in rows.items():
        print(f"{names[mode]:28}" + "".join(f"{row[f'R@{k}']:8.3f}" for k in KS))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
