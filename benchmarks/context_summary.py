"""Context building on LoCoMo: is a question's evidence inside the context build_context makes?

    python benchmarks/context_summary.py [--data DIR] [--max-tokens 4000] [--json OUT]
    python benchmarks/context_summary.py --retrieval        # also summary + window + history (needs the model)
    python benchmarks/context_summary.py --tiktoken o200k_base   # count with a real tokenizer
    python benchmarks/context_summary.py --quick             # two conversations

Protocol. Each LoCoMo conversation file is one conversation of one owner: every turn a
message ("Speaker: text", the first speaker as the user, the other as the assistant), in
order, stamped with its session's time. The messages are written session by session, and
after each session ``flush()`` brings the running summary up to date, as an agent's
background worker would between sessions (``SummaryPolicy()`` defaults: a 2000-token
window, folded every 500 tokens, a summary of at most 800 tokens, the offline extractive
summariser). LoCoMo asks its questions after the last session, so every question (category
5 skipped, as in benchmarks/locomo.py) is asked of the context built at the end, with the
same budget (``--max-tokens``, default 4000, the original design's ``max_context_tokens``):

* window alone: ``Memory(summaries=None)``, ``build_context(memory_share=0)``: the newest
  turns that fit, the baseline;
* summary + window: the default ``Memory``, ``build_context(strategy="session_only")``
  (nothing retrieved): the summary in the memory block, the newest turns in the rest;
* with ``--retrieval``, summary + window + history: ``build_context(query=question)`` with
  the default ``auto`` strategy (needs all-MiniLM-L6-v2).

A question counts as "evidence inside" when every one of its evidence turns is inside:
among the context's turns, among its retrieved history, or in the summary (a summary line
whose sentence is part of that turn: the lenient reading, since any sentence of the turn
counts). The stricter, independent check: the answer (answers of at most 4 words,
lowercased) appears in the context's text. Tokens are counted with the default counter
(``localmem.tokens.count_tokens``, which overcounts English by ~1.3x against GPT
tokenizers), or with ``--tiktoken ENCODING`` when tiktoken can load that encoding.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path
from typing import Any

from locomo import DEFAULT_DATA, session_time

from localmem import Memory, SummaryPolicy

EVIDENCE = re.compile(r"D\d+:\d+")
LINE = re.compile(r"^\[[^\]]*\] [^:]{1,60}: (?P<sentence>.+)$")


def load(path: Path) -> tuple[list[list[dict[str, Any]]], list[dict[str, Any]]]:
    """One LoCoMo file: its sessions (lists of add() arguments) and questions."""
    data = json.loads(path.read_text())
    user = data["speaker_a"]
    sessions = []
    n = 1
    while f"session_{n}" in data:
        when = session_time(data[f"session_{n}_date_time"])
        turns = []
        for i, turn in enumerate(data[f"session_{n}"]):
            turns.append({
                "role": "user" if turn["speaker"] == user else "assistant",
                "content": f"{turn['speaker']}: {turn['text']}",
                "msg_id": turn["dia_id"], "created_at": when + timedelta(seconds=i),
            })
        sessions.append(turns)
        n += 1
    questions = []
    for qa in data["qa"]:
        if qa.get("category") == 5:
            continue
        evidence = set(EVIDENCE.findall(" ".join(map(str, qa.get("evidence", [])))))
        questions.append({"question": qa["question"], "answer": str(qa.get("answer", "")), "evidence": evidence})
    return sessions, questions


def inside(ctx: Any, contents: dict[str, str]) -> set[str]:
    """The msg_ids a context holds: its turns, its history, and the turns whose sentences
    its summary lines quote."""
    held = {t.msg_id for t in ctx.turns} | {m.msg_id for m in ctx.history}
    for line in ctx.summary.splitlines():
        match = LINE.match(line)
        sentence = match.group("sentence") if match else line
        held |= {msg_id for msg_id, text in contents.items() if sentence in text}
    return held


def answer_inside(ctx: Any, answer: str) -> bool | None:
    if not answer or len(answer.split()) > 4:
        return None
    text = ctx.to_text().lower()
    return answer.lower() in text


def run(files: list[Path], max_tokens: int, retrieval: bool, counter: Any, workdir: Path) -> dict[str, Any]:
    rows: dict[str, dict[str, list[bool]]] = {}

    def record(name: str, ctx: Any, q: dict[str, Any], contents: dict[str, str]) -> None:
        row = rows.setdefault(name, {"evidence": [], "answer": []})
        valid = {e for e in q["evidence"] if e in contents}
        row["evidence"].append(bool(valid) and valid <= inside(ctx, contents))
        found = answer_inside(ctx, q["answer"])
        if found is not None:
            row["answer"].append(found)

    folds_s = 0.0
    summary_tokens = []
    for path in files:
        sessions, questions = load(path)
        questions = [q for q in questions if q["evidence"]]
        contents = {t["msg_id"]: t["content"] for s in sessions for t in s}
        ids = {"conversation_id": "chat", "owner_id": path.stem}
        plain = Memory(workdir / f"{path.stem}-plain.db", embed="off", summaries=None, strategy_log=False)
        summed = Memory(workdir / f"{path.stem}.db", embed="background" if retrieval else "off",
                        summaries=SummaryPolicy(count_tokens=counter), strategy_log=False)
        with plain, summed:
            for session in sessions:
                plain.add_many(session, **ids)
                summed.add_many(session, **ids)
                started = time.perf_counter()
                summed.flush()
                folds_s += time.perf_counter() - started
            window = plain.build_context(**ids, max_tokens=max_tokens, memory_share=0.0,
                                         strategy="session_only", count_tokens=counter)
            both = summed.build_context(**ids, max_tokens=max_tokens, strategy="session_only",
                                        count_tokens=counter)
            summary_tokens.append(both.tokens.summary)
            for q in questions:
                record("window alone", window, q, contents)
                record("summary + window", both, q, contents)
                if retrieval:
                    ctx = summed.build_context(**ids, query=q["question"], max_tokens=max_tokens,
                                               count_tokens=counter)
                    record("summary + window + history (auto)", ctx, q, contents)
    table = {
        name: {
            "questions": len(r["evidence"]),
            "evidence_inside": sum(r["evidence"]) / len(r["evidence"]),
            "answer_checked": len(r["answer"]),
            "answer_inside": sum(r["answer"]) / len(r["answer"]) if r["answer"] else None,
        }
        for name, r in rows.items()
    }
    return {"max_tokens": max_tokens, "rows": table, "flush_seconds": folds_s,
            "summary_tokens_at_end": summary_tokens}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="LoCoMo folder (default: %(default)s)")
    parser.add_argument("--max-tokens", type=int, default=4000)
    parser.add_argument("--retrieval", action="store_true", help="also build with retrieved history (model needed)")
    parser.add_argument("--tiktoken", metavar="ENCODING", help="count with this tiktoken encoding")
    parser.add_argument("--quick", action="store_true", help="two conversations")
    parser.add_argument("--json", type=Path, metavar="OUT")
    args = parser.parse_args(argv)
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"no LoCoMo files in {args.data}", file=sys.stderr)
        return 2
    if args.quick:
        files = files[:2]
    counter = None
    if args.tiktoken:
        import tiktoken

        encoding = tiktoken.get_encoding(args.tiktoken)
        counter = lambda text: len(encoding.encode(text, disallowed_special=()))
    with tempfile.TemporaryDirectory() as tmp:
        result = run(files, args.max_tokens, args.retrieval, counter, Path(tmp))
    result["counter"] = args.tiktoken or "localmem.tokens.count_tokens"
    result["conversations"] = len(files)
    print(f"LoCoMo, {len(files)} conversations, budget {args.max_tokens} tokens ({result['counter']}), "
          "questions asked after the last session")
    print(f"{'context':<36}{'questions':>10}{'evidence inside':>17}{'answer inside':>15}")
    for name, row in result["rows"].items():
        answer = "-" if row["answer_inside"] is None else f"{row['answer_inside']:.3f}"
        print(f"{name:<36}{row['questions']:>10}{row['evidence_inside']:>17.3f}{answer:>15}")
    base = result["rows"]["window alone"]["evidence_inside"]
    best = result["rows"]["summary + window"]["evidence_inside"]
    print(f"summary + window / window alone: {best / base:.2f}x; flush() after each session (folds, and "
          f"vectors with --retrieval) took {result['flush_seconds']:.1f} s in all; summary at the end: "
          f"{result['summary_tokens_at_end']} tokens")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    raise SystemExit(main())
