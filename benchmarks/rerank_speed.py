"""Cross-encoder reranking latency: 10, 30 and 50 candidates, fp32 and int8, two sizes.

    python benchmarks/rerank_speed.py            # 5 rounds x 20 queries (~17 min on 2 busy cores)
    python benchmarks/rerank_speed.py --quick    # smoke run, numbers not meaningful (~15 s)

No real reranker weights exist on these machines, so both models are built by
models/build_test_models.py with the real architectures and random (seeded) weights, into
a temporary folder: ms-marco-MiniLM-L-6-v2 (6 layers, hidden 384, 12 heads, intermediate
1536) and ms-marco-TinyBERT-L-2-v2 (2 layers, hidden 128, 2 heads, intermediate 512), both
with vocabulary 30522 and 512 positions. Random weights time the same arithmetic; their
scores mean nothing. The int8 copies are made with localmem.models.quantize().

Tokenizer: both real models use BERT's uncased WordPiece vocabulary, which
all-MiniLM-L6-v2 ships too (vocab.txt); when that file is on the machine the models are
built with it, so every pair has exactly the real models' token count. Without it, the
builder's small vocabulary plus every word of the texts stands in (each word one token:
pairs come out a little shorter than the real tokenizer makes them).

Texts: LoCoMo (--locomo DIR, else LOCALMEM_LOCOMO_DIR, else ../shared/data/locomo). A
query is a LoCoMo question (category 5 skipped); its candidates are turns of the same
conversation as "Speaker: text": the question's evidence turns, then other turns drawn at
random (seeded), the first 10 / 30 / 50 of one list, like a retrieval shortlist. --quick
without the LoCoMo files uses a small built-in conversation instead.

Measured per query and candidate count, in interleaved rounds (the order of the three
variants rotates from call to call), p50 and p95 over every call:

* localmem: ``CrossEncoder.logits(query, candidates)``: tokenise the pairs, sort by length,
  batches of 32 each padded to its own longest pair.
* baseline "one batch, longest": the same session and tokenizer, every pair in one batch
  padded to the longest pair (what a plain loop with padding=True does).
* baseline "fixed N" (--fixed-width, default 128): the same, padded to N tokens
  (padding="max_length" as many ONNX examples do), never cut: a longer pair widens the
  batch, so every variant computes the same logits (checked for fp32).

Ratios are baseline p50 / localmem p50 (above 1: localmem is faster). Goals (issue 10):
30 candidates, int8, p50 <= 100 ms for the L-6 architecture and <= 30 ms for TinyBERT-L-2.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import random
import re
import statistics
import sys
import tempfile
import time
import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

import localmem
from localmem.models import quantize
from localmem.onnx_runtime import feed, physical_cores
from localmem.rerank import CrossEncoder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCOMO = Path(os.environ.get("LOCALMEM_LOCOMO_DIR") or ROOT.parent / "shared" / "data" / "locomo")
VOCAB_PLACES = [
    Path(os.environ["LOCALMEM_MODELS_DIR"]) / "all-MiniLM-L6-v2" / "vocab.txt"
    if os.environ.get("LOCALMEM_MODELS_DIR") else None,
    ROOT.parent / "shared" / "models" / "all-MiniLM-L6-v2" / "vocab.txt",
]

# name -> (short label, build_cross_encoder knobs). Folder names must not be registry names.
ARCHS: dict[str, tuple[str, dict[str, int]]] = {
    "ms-marco-MiniLM-L-6-v2": ("MiniLM-L-6", {
        "layers": 6, "hidden": 384, "heads": 12, "intermediate": 1536, "max_position": 512,
        "vocab_size": 30522}),
    "ms-marco-TinyBERT-L-2-v2": ("TinyBERT-L-2", {
        "layers": 2, "hidden": 128, "heads": 2, "intermediate": 512, "max_position": 512,
        "vocab_size": 30522}),
}
PRECISIONS = ("fp32", "int8")
SIZES = (10, 30, 50)
VARIANTS = ("localmem", "longest", "fixed")
# Issue 10: 30 candidates, int8, p50 at most this many ms.
GOALS_MS = {"ms-marco-MiniLM-L-6-v2": 100.0, "ms-marco-TinyBERT-L-2-v2": 30.0}
GOAL_CANDIDATES = 30


# -- texts ---------------------------------------------------------------------------------

@dataclass
class Conversation:
    turns: list[tuple[str, str]]  # (dia_id, "Speaker: text")
    questions: list[tuple[str, list[str]]] = field(default_factory=list)  # (question, evidence ids)


def locomo_conversations(folder: Path) -> list[Conversation]:
    """One Conversation per LoCoMo file; questions of category 5 (adversarial) skipped."""
    conversations = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        turns = []
        for key, value in data.items():
            if key.startswith("session_") and isinstance(value, list):
                turns += [(t.get("dia_id", ""), f"{t['speaker']}: {t['text']}")
                          for t in value if t.get("text")]
        questions = [(q["question"], re.findall(r"D\d+:\d+", " ".join(map(str, q.get("evidence", [])))))
                     for q in data.get("qa", []) if q.get("category") != 5 and q.get("question")]
        if turns and questions:
            conversations.append(Conversation(turns, questions))
    return conversations


# A stand-in for --quick where the LoCoMo files are absent: chat turns of LoCoMo's kind and
# length (about 25 words), written for this file.
_BUILTIN_TURNS = """\
Nadia: Hey Tom! Long time no see. How did the move to the new apartment go last weekend?
Tom: It was chaos, honestly. The van showed up three hours late and we carried the sofa up four flights of stairs ourselves.
Nadia: Oh no, that sounds exhausting. At least the view from the balcony must be worth it?
Tom: It really is. I can see the river and the old railway bridge, and the sunsets have been unreal all week.
Nadia: I'm so jealous. I've been stuck inside studying for the nursing exam, it's in two weeks and I feel behind.
Tom: You always say that and then you ace it. What part worries you the most?
Nadia: Pharmacology. There are so many drug interactions to memorise, and the practice tests keep catching me on dosages for children.
Tom: Maybe make flashcards and quiz yourself on the bus? That's how I got through my certification last spring.
Nadia: Good idea. By the way, did you ever finish that painting of the lighthouse you started in March?
Tom: Almost! I added the storm clouds yesterday. I think it needs one more layer of blue in the waves before it's done.
Nadia: Send me a photo when it's finished, I'd love to hang something like that in my hallway.
Tom: Deal. Also, my sister is running her first half marathon in Lisbon next month, so the whole family is flying over to cheer.
Nadia: That's amazing! Is she nervous? I remember how terrified I was before my first 10k.
Tom: She says she isn't, but she has been texting me her training times every single morning at six.
Nadia: Ha, that's definitely nerves. Tell her to rest properly the week before and not try new shoes on race day.
Tom: I'll pass it on. How is your dog doing after the surgery? Last time you said he was still limping.
Nadia: Much better, thanks. Biscuit is walking normally again and the vet said we can go back to short hikes in a few weeks.
Tom: That's great news. We should take him to the lake trail once he's ready, it's flat and shady.
Nadia: Yes! Maybe the first Saturday of next month? I'll bring sandwiches and that lemon cake you liked.
Tom: Perfect. Oh, and I finally signed up for the pottery class at the community centre, Tuesday evenings from seven.
Nadia: You did? I'm proud of you, you've been talking about it since last summer.
Tom: The first session was fun but my bowl collapsed twice. The teacher said everyone's does at the start.
Nadia: Keep at it. My aunt made wonky mugs for a year and now she sells them at the farmers market every Sunday.
Tom: That's encouraging. Speaking of markets, I bought fresh peaches there this morning and made a cobbler for my neighbours.
Nadia: You're turning into the perfect neighbour. Did they like it?
Tom: They loved it, and in return they lent me their ladder so I can finally fix the curtain rail in the bedroom.
Nadia: Win-win. I had a rough day though, a patient's family was upset with the waiting times and shouted at the front desk.
Tom: I'm sorry, that sounds hard. How did you handle it?
Nadia: I listened, explained the triage process calmly and got them some water. They apologised later, which helped a lot.
Tom: You're so patient. I don't think I could stay that calm after a twelve hour shift.
Nadia: It gets easier with practice. Anyway, have you booked anything for your birthday yet? It's only three weeks away.
Tom: Not yet. I was thinking about a small dinner at the Italian place downtown, the one with the garden in the back.
Nadia: Count me in. I'll make sure I'm not on the night rota that weekend.
Tom: Thanks, it wouldn't be the same without you. I'll send everyone the details once I've talked to the restaurant.
Nadia: Sounds good. I should get back to my flashcards now, talk soon and say hi to your sister for me!
Tom: Will do, good luck with pharmacology and give Biscuit a scratch behind the ears from me.
"""
_BUILTIN_QUESTIONS = [
    ("How many flights of stairs did Tom carry the sofa up?", [2]),
    ("What exam is Nadia studying for and which part worries her?", [5, 7]),
    ("Where is Tom's sister running her first half marathon?", [12]),
    ("What happened to Nadia's dog Biscuit after the surgery?", [16, 17]),
    ("When does Tom's pottery class take place?", [20]),
    ("What did Tom make with the peaches he bought at the market?", [24]),
    ("How did Nadia handle the upset family at the hospital?", [29]),
    ("Where does Tom want to have his birthday dinner?", [32]),
]


def builtin_conversations() -> list[Conversation]:
    lines = _BUILTIN_TURNS.strip().splitlines()
    turns = [(f"D1:{i}", line) for i, line in enumerate(lines, 1)]
    questions = [(q, [f"D1:{i}" for i in ids]) for q, ids in _BUILTIN_QUESTIONS]
    return [Conversation(turns, questions)]


@dataclass
class Query:
    text: str
    candidates: list[str]  # max(SIZES) of them; the first n are the n-candidate set


def make_queries(conversations: list[Conversation], count: int, n: int, seed: int = 0) -> list[Query]:
    """count questions drawn at random, each with n candidates from its own conversation:
    the evidence turns first, then other turns in random order (repeated only if the
    conversation has fewer than n turns, as the built-in one has)."""
    rng = random.Random(seed)
    pool = [(c, q, ev) for c in conversations for q, ev in c.questions]
    chosen = rng.sample(pool, min(count, len(pool)))
    queries = []
    for conv, question, evidence in chosen:
        by_id = {dia: text for dia, text in conv.turns}
        first = [by_id[e] for e in dict.fromkeys(evidence) if e in by_id][:n]
        rest = [text for _, text in conv.turns if text not in first]
        rng.shuffle(rest)
        docs = first + rest
        while len(docs) < n:
            docs += rng.sample(docs, min(len(docs), n - len(docs)))
        queries.append(Query(question, docs[:n]))
    return queries


# -- models --------------------------------------------------------------------------------

def load_builder() -> ModuleType:
    spec = importlib.util.spec_from_file_location("build_test_models", ROOT / "models" / "build_test_models.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def bert_vocab(builder: ModuleType, texts: Sequence[str], vocab_file: Path | None) -> tuple[list[str], str]:
    """(the vocabulary, where it came from). The real uncased BERT vocabulary when found,
    reordered so that the builder's five special tokens come first (token ids differ from
    the real ones, token counts do not); else the builder's own plus the texts' words."""
    places = [vocab_file] if vocab_file else [p for p in VOCAB_PLACES if p]
    for place in places:
        if place.is_file():
            words = place.read_text(encoding="utf-8").splitlines()
            special = list(builder.SPECIAL_TOKENS)
            vocab = special + [w for w in words if w not in special]
            return vocab[:30522], f"BERT uncased WordPiece, {len(words)} tokens ({place}): the real models' token counts"
    if vocab_file:
        raise SystemExit(f"no vocabulary file {vocab_file}")
    vocab = builder.default_vocab()
    known = set(vocab)
    for text in texts:
        plain = "".join(c for c in unicodedata.normalize("NFD", text.lower()) if unicodedata.category(c) != "Mn")
        for word in re.findall(r"\w+", plain):
            if word not in known and len(vocab) < 30522:
                known.add(word)
                vocab.append(word)
    return vocab, ("the builder's vocabulary plus every word of the texts (no BERT vocab.txt found: "
                   "pairs are a little shorter than the real tokenizer makes them)")


def build_models(builder: ModuleType, folder: Path, vocab: list[str]) -> dict[tuple[str, str], CrossEncoder]:
    """{(arch, precision): CrossEncoder}, fp32 and its int8 copy for each architecture."""
    models = {}
    for arch, (label, knobs) in ARCHS.items():
        built = builder.build_cross_encoder(folder / f"{label}-architecture", vocab=vocab,
                                            save_weights=False, **knobs)
        quantize(Path(built))
        for precision in PRECISIONS:
            models[arch, precision] = localmem.load_reranker(path=built, int8=precision == "int8",
                                                             download=False)
    return models


# -- the variants --------------------------------------------------------------------------

def naive(model: CrossEncoder, query: str, docs: list[str], fixed: int | None) -> np.ndarray:
    """The baseline: the same session and tokenizer as ``model``, one batch, padded to the
    longest pair (fixed None) or to ``fixed`` tokens (wider only if a pair is longer)."""
    session, tokenizer, names = model._model.get()
    encodings = tokenizer.encode_batch([(query, d) for d in docs])
    every = list(range(len(encodings)))
    return session.run(None, feed(encodings, every, names, width=fixed or 0))[0][:, 0]


def tokens_fed(lengths: list[int], variant: str, fixed: int, batch_size: int) -> int:
    """Token positions one call runs through the model (padding included)."""
    if variant == "longest":
        return len(lengths) * max(lengths)
    if variant == "fixed":
        return len(lengths) * max(fixed, max(lengths))
    ordered = sorted(lengths)
    return sum(len(b) * max(b) for b in (ordered[i : i + batch_size] for i in range(0, len(ordered), batch_size)))


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# -- the run -------------------------------------------------------------------------------

def measure(models: dict[tuple[str, str], CrossEncoder], queries: list[Query], rounds: int,
            fixed: int, warm_sizes: Sequence[int] = SIZES,
            ) -> tuple[dict[tuple[str, str, int, str], list[float]], dict[tuple[str, str, int, str], float]]:
    """(seconds per call, max |logit difference| from localmem) for every
    (arch, precision, candidates, variant)."""
    calls: dict[str, Callable[[CrossEncoder, str, list[str]], np.ndarray]] = {
        "localmem": lambda m, q, d: m.logits(q, d),
        "longest": lambda m, q, d: naive(m, q, d, None),
        "fixed": lambda m, q, d: naive(m, q, d, fixed),
    }
    # Warm-up: load every session and let ONNX Runtime size its buffers for each shape.
    for model in models.values():
        for n in warm_sizes:
            for variant in VARIANTS:
                calls[variant](model, queries[0].text, queries[0].candidates[:n])
    samples: dict[tuple[str, str, int, str], list[float]] = {}
    diffs: dict[tuple[str, str, int, str], float] = {}
    turn = 0
    for _ in range(rounds):
        for query in queries:
            for (arch, precision), model in models.items():
                for n in SIZES:
                    docs = query.candidates[:n]
                    turn += 1
                    order = VARIANTS[turn % 3:] + VARIANTS[: turn % 3]
                    out = {}
                    for variant in order:
                        t = time.perf_counter()
                        out[variant] = calls[variant](model, query.text, docs)
                        samples.setdefault((arch, precision, n, variant), []).append(time.perf_counter() - t)
                    for variant in ("longest", "fixed"):
                        key = (arch, precision, n, variant)
                        diffs[key] = max(diffs.get(key, 0.0),
                                         float(np.abs(out[variant] - out["localmem"]).max()))
    return samples, diffs


BATCH_SIZES = (4, 8, 16, 32)


def measure_batch_sizes(models: dict[tuple[str, str], CrossEncoder], queries: list[Query],
                        rounds: int) -> dict[str, dict[int, float]]:
    """p50 ms of each architecture's int8 model at GOAL_CANDIDATES candidates, per
    CrossEncoder batch size, the sizes interleaved in random order within each query."""
    rng = random.Random(1)
    out = {}
    for arch in ARCHS:
        files = models[arch, "int8"].files
        variants = {size: CrossEncoder(files, batch_size=size) for size in BATCH_SIZES}
        for model in variants.values():
            model.logits("warm up", ["a short text"] * 4)
        samples: dict[int, list[float]] = {size: [] for size in BATCH_SIZES}
        for _ in range(rounds):
            for q in queries:
                docs = q.candidates[:GOAL_CANDIDATES]
                for size in rng.sample(BATCH_SIZES, len(BATCH_SIZES)):
                    t = time.perf_counter()
                    variants[size].logits(q.text, docs)
                    samples[size].append((time.perf_counter() - t) * 1e3)
        out[arch] = {size: statistics.median(v) for size, v in samples.items()}
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 round x 1 query, warm-up at 10 candidates only (smoke test)")
    parser.add_argument("--rounds", type=int, help="interleaved rounds (default 5; --quick 1)")
    parser.add_argument("--queries", type=int, help="queries per round (default 20; --quick 1)")
    parser.add_argument("--fixed-width", type=int, default=128, metavar="N",
                        help="the fixed-padding baseline's width in tokens (default 128)")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO,
                        help="folder of LoCoMo *.json (default: LOCALMEM_LOCOMO_DIR, else %(default)s)")
    parser.add_argument("--vocab", type=Path, help="BERT uncased vocab.txt (default: all-MiniLM-L6-v2's, if found)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args(argv)
    rounds = args.rounds or (1 if args.quick else 5)
    per_round = args.queries or (1 if args.quick else 20)
    started, load_before = time.perf_counter(), os.getloadavg()

    conversations = locomo_conversations(args.locomo) if args.locomo.is_dir() else []
    if conversations:
        source = f"LoCoMo ({args.locomo}, {len(conversations)} conversations)"
    elif args.quick:
        conversations = builtin_conversations()
        source = f"built-in conversation (no LoCoMo files in {args.locomo})"
    else:
        raise SystemExit(f"no LoCoMo conversations in {args.locomo}: pass --locomo DIR or set "
                         "LOCALMEM_LOCOMO_DIR (only --quick falls back to built-in text)")
    queries = make_queries(conversations, per_round, max(SIZES))
    texts = [t for c in conversations for _, t in c.turns] + [q for c in conversations for q, _ in c.questions]

    builder = load_builder()
    vocab, vocab_source = bert_vocab(builder, texts, args.vocab)
    with tempfile.TemporaryDirectory(prefix="localmem-rerank-bench-") as tmp:
        t = time.perf_counter()
        models = build_models(builder, Path(tmp), vocab)
        build_s = time.perf_counter() - t
        samples, diffs = measure(models, queries, rounds, args.fixed_width,
                                 warm_sizes=SIZES[:1] if args.quick else SIZES)
        by_batch = measure_batch_sizes(models, queries, rounds)
        batch_size = models[next(iter(models))].batch_size
        _, tokenizer, _ = models[next(iter(models))]._model.get()
        lengths = {n: [[len(e.ids) for e in tokenizer.encode_batch([(q.text, d) for d in q.candidates[:n]])]
                       for q in queries] for n in SIZES}
        sizes_mb = {key: m.files.onnx_path.stat().st_size / 1e6 for key, m in models.items()}

    load_after = os.getloadavg()
    rows = []
    for arch, precision in models:
        label = ARCHS[arch][0]
        for n in SIZES:
            ms = {v: [s * 1e3 for s in samples[arch, precision, n, v]] for v in VARIANTS}
            p50 = {v: statistics.median(ms[v]) for v in VARIANTS}
            flat = [x for per_query in lengths[n] for x in per_query]
            row: dict[str, Any] = {
                "name": f"{label} architecture {precision}, {n} candidates",
                "arch": arch, "precision": precision, "candidates": n, "calls": len(ms["localmem"]),
                "p50_ms": p50["localmem"], "p95_ms": pct(ms["localmem"], 0.95),
                "tokens_mean": float(np.mean(flat)), "tokens_max": max(flat),
                "baseline_longest_p50_ms": p50["longest"], "baseline_longest_p95_ms": pct(ms["longest"], 0.95),
                "speedup_vs_longest": p50["longest"] / p50["localmem"],
                "baseline_fixed_width": args.fixed_width,
                "baseline_fixed_p50_ms": p50["fixed"], "baseline_fixed_p95_ms": pct(ms["fixed"], 0.95),
                "speedup_vs_fixed": p50["fixed"] / p50["localmem"],
                "pairs_over_fixed_width": sum(x > args.fixed_width for x in flat),
                "tokens_fed_per_call": {
                    v: float(np.mean([tokens_fed(q, v, args.fixed_width, batch_size) for q in lengths[n]]))
                    for v in VARIANTS},
                "max_abs_logit_diff": {v: diffs[arch, precision, n, v] for v in ("longest", "fixed")},
                "model_mb": sizes_mb[arch, precision],
                "weights": "random (seeded), real architecture", "texts": source, "vocabulary": vocab_source,
                "load_average_before_after": [load_before[0], load_after[0]],
                "goal_p50_ms": GOALS_MS[arch] if precision == "int8" and n == GOAL_CANDIDATES else None,
            }
            row["goal_met"] = None if row["goal_p50_ms"] is None else row["p50_ms"] <= row["goal_p50_ms"]
            if row["goal_p50_ms"] is not None:
                row["batch_size_p50_ms"] = by_batch[arch]
            rows.append(row)
    by_key = {(r["arch"], r["precision"], r["candidates"]): r for r in rows}
    for r in rows:
        if r["precision"] == "int8":
            r["int8_speedup"] = by_key[r["arch"], "fp32", r["candidates"]]["p50_ms"] / r["p50_ms"]
    for r in rows:  # the baselines must compute what localmem computes (fp32; int8 quantizes
        if r["precision"] == "fp32":  # activations per batch, so padding shifts its logits)
            assert max(r["max_abs_logit_diff"].values()) < 1e-3, f"baseline disagrees: {r['name']}"

    import onnxruntime

    print(f"localmem rerank speed  |  onnxruntime {onnxruntime.__version__}  |  {os.cpu_count()} CPUs, "
          f"{physical_cores()} physical  |  {rounds} rounds x {len(queries)} queries, interleaved")
    print("models: the real architectures with RANDOM weights (models/build_test_models.py), "
          f"built in {build_s:.1f} s with their int8 copies: timing only, the scores mean nothing")
    print(f"texts: {source}; candidates = evidence turns + other turns of the question's conversation")
    print(f"tokenizer: {vocab_source}")
    print(f"localmem = CrossEncoder.logits (sorted by length, batches of {batch_size} padded to their own longest); "
          f"baselines: one batch padded to the longest pair, and to {args.fixed_width} tokens; "
          "x = baseline p50 / localmem p50")
    print()
    fixed_head = f"fixed {args.fixed_width} p50"
    print(f"{'architecture':13s} {'prec':4s} {'cands':>5s} {'tok/pair':>8s} {'p50 ms':>8s} {'p95 ms':>8s}  "
          f"{'longest p50':>11s} {'x':>5s}  {fixed_head:>14s} {'x':>5s}  {'int8 x':>6s}  goal")
    for r in rows:
        goal = "" if r["goal_p50_ms"] is None else (
            f"<= {r['goal_p50_ms']:.0f} ms: {'met' if r['goal_met'] else 'MISSED'}")
        gain = f"{r['int8_speedup']:5.2f}x" if "int8_speedup" in r else ""
        print(f"{ARCHS[r['arch']][0]:13s} {r['precision']:4s} {r['candidates']:5d} {r['tokens_mean']:8.1f} "
              f"{r['p50_ms']:8.1f} {r['p95_ms']:8.1f}  {r['baseline_longest_p50_ms']:11.1f} "
              f"{r['speedup_vs_longest']:4.2f}x  {r['baseline_fixed_p50_ms']:14.1f} {r['speedup_vs_fixed']:4.2f}x  "
              f"{gain:>6s}  {goal}")
    print()
    fed = {n: by_key[next(iter(ARCHS)), "fp32", n]["tokens_fed_per_call"] for n in SIZES}
    print("token positions per call (padding included), localmem / longest / fixed: " + "; ".join(
        f"{n}: {fed[n]['localmem']:.0f} / {fed[n]['longest']:.0f} / {fed[n]['fixed']:.0f}" for n in SIZES))
    over = {n: by_key[next(iter(ARCHS)), "fp32", n]["pairs_over_fixed_width"] for n in SIZES}
    if any(over.values()):
        print(f"pairs longer than {args.fixed_width} tokens (they widen the fixed batch): "
              + ", ".join(f"{v} of {n * len(queries)} at {n}" for n, v in over.items()))
    worst_int8 = max(max(r["max_abs_logit_diff"].values()) for r in rows if r["precision"] == "int8")
    print(f"logits: fp32 baselines equal localmem's (max |diff| < 1e-3); int8 baselines differ by up to "
          f"{worst_int8:.3f} (dynamic quantization scales each batch's activations, padding included)")
    print("model files, MB: " + ", ".join(f"{ARCHS[a][0]} {p} {mb:.1f}" for (a, p), mb in sizes_mb.items()))
    for arch, p50s in by_batch.items():
        print(f"{ARCHS[arch][0]} int8, {GOAL_CANDIDATES} candidates, p50 by batch size: "
              + ", ".join(f"{size}: {ms:.1f} ms" for size, ms in p50s.items())
              + f" (CrossEncoder's default: {batch_size})")
    for arch, goal_ms in GOALS_MS.items():
        r = by_key[arch, "int8", GOAL_CANDIDATES]
        print(f"{'met ' if r['goal_met'] else 'MISSED'}  {ARCHS[arch][0]} architecture, {GOAL_CANDIDATES} candidates, "
              f"int8 p50 <= {goal_ms:.0f} ms: {r['p50_ms']:.1f} ms (fp32 {by_key[arch, 'fp32', GOAL_CANDIDATES]['p50_ms']:.1f} ms)")
    print(f"wall time {time.perf_counter() - started:.0f} s; load average (1 min) {load_before[0]:.1f} before, "
          f"{load_after[0]:.1f} after (2 means both cores busy: other processes inflate every number, "
          "the ratios less so)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
