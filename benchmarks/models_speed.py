"""Local model speed, fp32 and int8 side by side in one run.

    python benchmarks/models_speed.py            # ~2 minutes on 2 cores
    python benchmarks/models_speed.py --quick    # smoke run, numbers not meaningful

Embedder: the real all-MiniLM-L6-v2, resolved offline (LOCALMEM_MODELS_DIR, the Hugging
Face cache, or --model-path). Its int8 copy is written with localmem's quantize() if it
does not exist yet. Measured: one short query (p50, interleaved fp32/int8 calls), bulk
throughput on LoCoMo turns (sentences/s, median of rounds), and int8 agreement (mean and
minimum cosine to the fp32 vectors).

Cross-encoder: no real reranker weights exist on these machines, so the timing uses a model
with the real architecture of ms-marco-MiniLM-L-6-v2 (6 layers, hidden 384, 12 heads,
intermediate 1536, vocab 30522) and random weights, built by models/build_test_models.py.
Measured: 20 candidates of about 64 tokens each (p50), fp32 and int8, and agreement of the
int8 logits with fp32 (rank correlation, top-5 overlap). Random weights say nothing about
ranking quality; they time the same arithmetic.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

import localmem
from localmem.embed import Embedder
from localmem.models import folder_spec, quantize, resolve
from localmem.onnx_runtime import physical_cores
from localmem.rerank import CrossEncoder

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_LOCOMO = ROOT.parent / "shared" / "data" / "locomo"


def locomo_turns(folder: Path) -> list[str]:
    turns = []
    for path in sorted(folder.glob("*.json")):
        data = json.loads(path.read_text())
        for key, value in data.items():
            if key.startswith("session_") and isinstance(value, list):
                turns += [t["text"] for t in value if t.get("text")]
    if not turns:
        raise SystemExit(f"no LoCoMo turns in {folder}; pass --locomo DIR")
    return turns


def timed(fn, repeats: int) -> list[float]:
    samples = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
    return samples


def ms(samples: list[float]) -> float:
    return statistics.median(samples) * 1000


def plain_loop(files, texts: list[str], batch_size: int = 32) -> np.ndarray:
    """The baseline: batches of 32 in input order, the tokenizer padding each to its
    longest member, the same session settings. What localmem adds is length sorting."""
    from tokenizers import Tokenizer

    from localmem.onnx_runtime import load_session

    session = plain_loop.sessions.get(files.onnx_path) or load_session(files.onnx_path)
    plain_loop.sessions[files.onnx_path] = session
    tokenizer = Tokenizer.from_file(str(files.tokenizer_path))
    tokenizer.no_truncation()
    tokenizer.enable_truncation(files.spec.max_length)
    tokenizer.enable_padding()  # to the longest in each batch
    out = []
    for start in range(0, len(texts), batch_size):
        enc = tokenizer.encode_batch(texts[start : start + batch_size])
        ids = np.array([e.ids for e in enc], dtype=np.int64)
        mask = np.array([e.attention_mask for e in enc], dtype=np.int64)
        hidden = session.run(None, {"input_ids": ids, "attention_mask": mask,
                                    "token_type_ids": np.zeros_like(ids)})[0]
        pooled = (hidden * mask[:, :, None]).sum(1) / mask.sum(1, keepdims=True)
        out.append(pooled / np.linalg.norm(pooled, axis=1, keepdims=True))
    return np.concatenate(out)


plain_loop.sessions = {}


def bench_embedder(args, turns: list[str]) -> dict:
    where = dict(kind="embedder", path=args.model_path, download=False)
    fp32_files = resolve("all-MiniLM-L6-v2", int8=False, **where)
    int8_file = quantize(fp32_files)
    int8_files = resolve("all-MiniLM-L6-v2", int8=True, **where)
    models = {"fp32": Embedder(fp32_files), "int8": Embedder(int8_files)}
    for e in models.values():
        e.embed(turns[:64])  # load + warm up

    query = ["what did Caroline say about the adoption agency?"]
    query_samples: dict[str, list[float]] = {"fp32": [], "int8": []}
    bulk_rates: dict[str, list[float]] = {"fp32": [], "int8": [], "plain loop fp32": []}
    bulk = turns[: args.bulk]
    plain_loop(fp32_files, turns[:64])
    for _ in range(args.rounds):
        t = time.perf_counter()
        plain = plain_loop(fp32_files, bulk)
        bulk_rates["plain loop fp32"].append(len(bulk) / (time.perf_counter() - t))
        for name, e in models.items():
            query_samples[name] += timed(lambda e=e: e.embed_query(query), args.queries)
        for name, e in models.items():
            t = time.perf_counter()
            e.embed(bulk)
            bulk_rates[name].append(len(bulk) / (time.perf_counter() - t))
    a, b = models["fp32"].embed(bulk), models["int8"].embed(bulk)
    cosines = (a * b).sum(axis=1)  # both L2-normalised
    assert np.abs(a - plain).max() < 1e-4, "the baseline must compute the same vectors"
    return {
        "onnx_fp32": str(fp32_files.onnx_path), "onnx_int8": str(int8_file),
        "bytes_fp32": fp32_files.onnx_path.stat().st_size, "bytes_int8": int8_file.stat().st_size,
        "query_p50_ms": {k: ms(v) for k, v in query_samples.items()},
        "bulk_sentences_per_s": {k: statistics.median(v) for k, v in bulk_rates.items()},
        "bulk_n": len(bulk),
        "int8_cosine_mean": float(cosines.mean()), "int8_cosine_min": float(cosines.min()),
    }


def load_builder():
    spec = importlib.util.spec_from_file_location("build_test_models", ROOT / "models" / "build_test_models.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def candidates(turns: list[str], tokenizer, n: int = 20, tokens: int = 64) -> list[str]:
    """n documents of exactly `tokens` tokens each ([CLS] and [SEP] included), cut from
    consecutive LoCoMo turns at a token boundary."""
    docs, words = [], " ".join(turns).split()
    start = 0
    while len(docs) < n and start < len(words):
        text = " ".join(words[start : start + 4 * tokens])
        encoding = tokenizer.encode(text)
        cut = encoding.offsets[tokens - 2][1]  # the last content token that fits
        docs.append(text[:cut])
        start += len(text[:cut].split())
    return docs


def bench_reranker(args, turns: list[str], tmp: Path) -> dict:
    builder = load_builder()
    folder = builder.build_cross_encoder(tmp / "ce", **builder.REALISTIC, save_weights=False)
    spec = folder_spec(folder, kind="reranker", name="ms-marco-MiniLM-L-6-v2-architecture")
    fp32_files = resolve(path=folder, kind="reranker", spec=spec, int8=False)
    quantize(fp32_files)
    int8_files = resolve(path=folder, kind="reranker", spec=spec, int8=True)
    models = {"fp32": CrossEncoder(fp32_files), "int8": CrossEncoder(int8_files)}
    _, tokenizer, _ = models["fp32"]._model.get()
    docs = candidates(turns, tokenizer)
    # About 10 tokens, in words the test tokenizer knows whole (a real one would too).
    query = "what did you tell me about the pizza order today"
    lengths = [len(tokenizer.encode(d).ids) for d in docs]
    query_tokens = len(tokenizer.encode(query).ids)
    for m in models.values():
        m.logits(query, docs)
    samples: dict[str, list[float]] = {"fp32": [], "int8": []}
    for _ in range(args.rounds):
        for name, m in models.items():
            samples[name] += timed(lambda m=m: m.logits(query, docs), args.rerank_calls)
    a, b = models["fp32"].logits(query, docs), models["int8"].logits(query, docs)
    rank_a, rank_b = np.argsort(np.argsort(-a)), np.argsort(np.argsort(-b))
    spearman = float(np.corrcoef(rank_a, rank_b)[0, 1])
    top5 = len(set(np.argsort(-a)[:5]) & set(np.argsort(-b)[:5]))
    return {
        "candidates": len(docs), "tokens_mean": float(np.mean(lengths)), "query_tokens": query_tokens,
        "p50_ms": {k: ms(v) for k, v in samples.items()},
        "int8_spearman": spearman, "int8_top5_overlap": top5,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--model-path", type=Path, help="folder of all-MiniLM-L6-v2 (model.onnx + tokenizer.json)")
    parser.add_argument("--locomo", type=Path, default=DEFAULT_LOCOMO)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    args.rounds, args.queries, args.bulk, args.rerank_calls = (
        (1, 5, 64, 3) if args.quick else (5, 40, 1000, 10))

    turns = locomo_turns(args.locomo)
    with tempfile.TemporaryDirectory(prefix="localmem-models-bench-") as tmp:
        emb = bench_embedder(args, turns)
        rr = bench_reranker(args, turns, Path(tmp))

    q, bulk, p = emb["query_p50_ms"], emb["bulk_sentences_per_s"], rr["p50_ms"]
    print(f"localmem model speed  |  onnxruntime {__import__('onnxruntime').__version__}  |  "
          f"{os.cpu_count()} CPUs, {physical_cores()} physical  |  {args.rounds} rounds")
    print(f"{'':44s} {'fp32':>9s} {'int8':>9s} {'ratio':>7s}")
    print(f"{'all-MiniLM-L6-v2: one short query, p50 ms':44s} {q['fp32']:9.2f} {q['int8']:9.2f} "
          f"{q['fp32'] / q['int8']:6.2f}x")
    print(f"{'all-MiniLM-L6-v2: LoCoMo turns, sentences/s':44s} {bulk['fp32']:9.0f} {bulk['int8']:9.0f} "
          f"{bulk['int8'] / bulk['fp32']:6.2f}x   ({emb['bulk_n']} turns)")
    print(f"{'  baseline: plain batched loop, sentences/s':44s} {bulk['plain loop fp32']:9.0f} "
          f"{'':9s} {bulk['fp32'] / bulk['plain loop fp32']:6.2f}x   (localmem fp32 / plain loop)")
    print(f"{'all-MiniLM-L6-v2: model file, MB':44s} {emb['bytes_fp32'] / 1e6:9.1f} {emb['bytes_int8'] / 1e6:9.1f}")
    print(f"{'cross-encoder 6x384: 20 candidates, p50 ms':44s} {p['fp32']:9.1f} {p['int8']:9.1f} "
          f"{p['fp32'] / p['int8']:6.2f}x   ({rr['candidates']} docs of {rr['tokens_mean']:.0f} tokens, "
          f"query {rr['query_tokens']})")
    print(f"int8 agreement: embedder cosine to fp32 mean {emb['int8_cosine_mean']:.4f} "
          f"(min {emb['int8_cosine_min']:.4f}); cross-encoder rank correlation "
          f"{rr['int8_spearman']:.3f}, top-5 overlap {rr['int8_top5_overlap']}/5")
    goals = [
        ("one short query < 8 ms p50 (fp32)", q["fp32"] < 8, f"{q['fp32']:.2f} ms"),
        ("bulk >= 250 sentences/s (fp32)", bulk["fp32"] >= 250, f"{bulk['fp32']:.0f}/s"),
        ("int8 >= 1.8x faster in bulk", bulk["int8"] / bulk["fp32"] >= 1.8,
         f"{bulk['int8'] / bulk['fp32']:.2f}x"),
        ("int8 mean cosine to fp32 >= 0.98", emb["int8_cosine_mean"] >= 0.98, f"{emb['int8_cosine_mean']:.4f}"),
        ("cross-encoder 20 x ~64 tokens < 150 ms p50 (int8)", p["int8"] < 150, f"{p['int8']:.1f} ms"),
    ]
    print()
    for name, ok, value in goals:
        print(f"{'met ' if ok else 'MISSED'}  {name}: {value}")
    if args.json:
        args.json.write_text(json.dumps({"embedder": emb, "reranker": rr,
                                         "goals": [{"goal": g, "met": ok, "value": v} for g, ok, v in goals]},
                                        indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
