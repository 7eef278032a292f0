"""What adaptive rerank skipping would save on LoCoMo, and what it would forgo.

    python benchmarks/rerank_skipping.py [--data DIR] [--json OUT]      # about 1 minute

The rules of issue 10 ("skip when it cannot pay: fewer candidates than the limit, a very
short query, a confident first stage") measured without a reranker, on the LoCoMo
questions through the public API (benchmarks/locomo.py's protocol and loader, the default
limit 10, no relevance floor so every call has its candidates):

* how often each rule fires (the share of rerank calls it saves);
* for the confident-first-stage rule (the fused top message is first by meaning and by
  keywords), how often the first stage's top message is an evidence turn where the rule
  fires and where it does not: what a reranker could still fix where it is skipped.

No real cross-encoder weights exist here, so what reranking itself gains is not measured.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import locomo  # benchmarks/locomo.py: DEFAULT_DATA, load

from localmem import Memory, Strategy

LIMIT = 10
SHORT = (2, 3, 5)  # "a very short query": fewer words than this


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=locomo.DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    files = sorted(args.data.glob("*.json"))
    if not files:
        print(f"no LoCoMo files in {args.data}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp, Memory(Path(tmp) / "locomo.db", query_cache_ttl=0) as mem:
        questions = []
        for path in files:
            messages, qs = locomo.load(path)
            mem.add_many(messages)
            questions += [(path.stem, *q) for q in qs]
        mem.flush()
        for owner, question, _, evidence in questions:
            ask = {"query": question, "owner_id": owner, "conversation_id": "session_1",
                   "lookback_days": None, "min_relevance": None}
            fused = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=LIMIT, **ask).messages
            dense = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=1, keyword=False, **ask).messages
            keyword = mem.get_memory(Strategy.CROSS_CONVERSATION, limit=1, dense=False, **ask).messages
            top = fused[0].msg_id if fused else None
            rows.append({
                "confident": bool(fused and dense and keyword and dense[0].msg_id == top == keyword[0].msg_id),
                "top_right": top in evidence,
                "words": len(question.split()),
                "few_candidates": len(fused) < LIMIT,
            })
    n = len(rows)
    confident = [r for r in rows if r["confident"]]
    rest = [r for r in rows if not r["confident"]]
    results = {
        "calls": n,
        "confident_share": len(confident) / n,
        "top_right_when_confident": statistics.mean(r["top_right"] for r in confident) if confident else None,
        "top_right_otherwise": statistics.mean(r["top_right"] for r in rest) if rest else None,
        "few_candidates_share": statistics.mean(r["few_candidates"] for r in rows),
        **{f"shorter_than_{w}_words_share": statistics.mean(r["words"] < w for r in rows) for w in SHORT},
    }
    print(f"{n} LoCoMo questions, cross_conversation, limit {LIMIT}")
    print(f"  confident first stage (top first by meaning and by keywords): {results['confident_share']:.3f} "
          f"of calls; its top message is right {results['top_right_when_confident']:.3f} of the time "
          f"(elsewhere {results['top_right_otherwise']:.3f})")
    print(f"  fewer candidates than the limit: {results['few_candidates_share']:.3f} of calls")
    for w in SHORT:
        print(f"  a query of fewer than {w} words: {results[f'shorter_than_{w}_words_share']:.3f} of calls")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
