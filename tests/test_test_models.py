"""The test models of models/build_test_models.py are real BERT, built deterministically.

Each ONNX model is checked against an independent numpy forward pass of BERT that reads
the same weights (weights.npz), on a padded batch of different lengths.
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from tokenizers import Tokenizer

ROOT = Path(__file__).resolve().parent.parent
BUILDER = ROOT / "models" / "build_test_models.py"


def _builder():
    name = "localmem_test_model_builder"   # the name tests/conftest.py registers too
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, BUILDER)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


btm = _builder()

TEXTS = [
    "I love pizza napolitana",
    "What is the weather today?",
    "Eu quero cancelar o meu pedido, por favor",
    "hello",
    "Tell me about the best restaurant in town, the one near the station",
]


# ---------------------------------------------------------------------------------------
# Helpers: tokenization, ONNX Runtime, numpy reference
# ---------------------------------------------------------------------------------------

def load_tokenizer(model_dir: Path, reset: bool = True) -> Tokenizer:
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))
    if reset:
        tok.no_padding()
        tok.no_truncation()
    return tok


def batch(encodings) -> dict[str, np.ndarray]:
    """Right-pad a list of encodings into the three int64 model inputs."""
    n = max(len(e.ids) for e in encodings)
    pad = lambda seq: list(seq) + [0] * (n - len(seq))  # noqa: E731
    return {
        "input_ids": np.array([pad(e.ids) for e in encodings], dtype=np.int64),
        "attention_mask": np.array([pad([1] * len(e.ids)) for e in encodings],
                                   dtype=np.int64),
        "token_type_ids": np.array([pad(e.type_ids) for e in encodings], dtype=np.int64),
    }


def session(model_dir: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(model_dir / "model.onnx"),
                                providers=["CPUExecutionProvider"])


def run(model_dir: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    sess = session(model_dir)
    names = {i.name for i in sess.get_inputs()}
    return sess.run(None, {k: v for k, v in feeds.items() if k in names})[0]


def load_weights(model_dir: Path) -> dict[str, np.ndarray]:
    with np.load(model_dir / "weights.npz") as npz:
        return {k: npz[k].astype(np.float64) for k in npz.files}


def _layer_norm(x, gamma, beta, eps=1e-12):
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def _linear(x, w, prefix):
    return x @ w[prefix + ".weight"].T + w[prefix + ".bias"]    # PyTorch layout [out, in]


_erf = np.vectorize(math.erf, otypes=[np.float64])


def reference_bert(w, config, input_ids, attention_mask, token_type_ids):
    """BERT's forward pass in float64 numpy, as Hugging Face's BertModel computes it."""
    heads = config["num_attention_heads"]
    b, s = input_ids.shape
    d = config["hidden_size"] // heads
    x = (w["embeddings.word_embeddings.weight"][input_ids]
         + w["embeddings.position_embeddings.weight"][np.arange(s)]
         + w["embeddings.token_type_embeddings.weight"][token_type_ids])
    x = _layer_norm(x, w["embeddings.LayerNorm.weight"], w["embeddings.LayerNorm.bias"])
    additive = (1.0 - attention_mask[:, None, None, :]) * np.finfo(np.float32).min
    for i in range(config["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def split(t):
            return t.reshape(b, s, heads, d).transpose(0, 2, 1, 3)

        q = split(_linear(x, w, p + "attention.self.query"))
        k = split(_linear(x, w, p + "attention.self.key"))
        v = split(_linear(x, w, p + "attention.self.value"))
        scores = q @ k.transpose(0, 1, 3, 2) / math.sqrt(d) + additive
        scores -= scores.max(-1, keepdims=True)
        probs = np.exp(scores)
        probs /= probs.sum(-1, keepdims=True)
        ctx = (probs @ v).transpose(0, 2, 1, 3).reshape(b, s, heads * d)
        x = _layer_norm(_linear(ctx, w, p + "attention.output.dense") + x,
                        w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"])
        h = _linear(x, w, p + "intermediate.dense")
        h = 0.5 * h * (1.0 + _erf(h / math.sqrt(2.0)))
        x = _layer_norm(_linear(h, w, p + "output.dense") + x,
                        w[p + "output.LayerNorm.weight"], w[p + "output.LayerNorm.bias"])
    return x


def reference_cross_encoder(w, config, *inputs):
    cls = reference_bert(w, config, *inputs)[:, 0]
    return _linear(np.tanh(_linear(cls, w, "pooler.dense")), w, "classifier")


def read_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text())


def mean_pool(hidden, mask):
    m = mask[..., None].astype(np.float64)
    v = (hidden * m).sum(1) / m.sum(1)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------------------------
# Numerics: ONNX Runtime == numpy reference
# ---------------------------------------------------------------------------------------

def test_embedder_matches_numpy_reference(tiny_models):
    d = tiny_models.embedder
    tok = load_tokenizer(d)
    encodings = tok.encode_batch(TEXTS[:3]) + [tok.encode("where is my order?",
                                                          "Pedido cancelado hoje")]
    feeds = batch(encodings)
    assert (feeds["attention_mask"] == 0).any() and (feeds["token_type_ids"] == 1).any()
    got = run(d, feeds)
    want = reference_bert(load_weights(d), read_config(d), *feeds.values())
    assert got.dtype == np.float32 and got.shape == (4, feeds["input_ids"].shape[1], 32)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_cross_encoder_matches_numpy_reference(tiny_models):
    d = tiny_models.cross_encoder
    tok = load_tokenizer(d)
    query = "where can I eat pizza today"
    feeds = batch(tok.encode_batch([(query, t) for t in TEXTS]))
    got = run(d, feeds)
    want = reference_cross_encoder(load_weights(d), read_config(d), *feeds.values())
    assert got.dtype == np.float32 and got.shape == (len(TEXTS), 1)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=0)


def test_the_reference_comparison_can_fail(tiny_models):
    """The tolerance is tight enough to see a wrong mask or wrong token types."""
    d = tiny_models.embedder
    feeds = batch(load_tokenizer(d).encode_batch(TEXTS))
    w, config = load_weights(d), read_config(d)
    got = run(d, feeds)
    no_mask = reference_bert(w, config, feeds["input_ids"],
                             np.ones_like(feeds["attention_mask"]), feeds["token_type_ids"])
    types_one = reference_bert(w, config, feeds["input_ids"], feeds["attention_mask"],
                               np.ones_like(feeds["token_type_ids"]))
    assert np.abs(got - no_mask).max() > 1e-2
    assert np.abs(got - types_one).max() > 1e-2


def test_padding_does_not_change_the_real_tokens(tiny_models):
    for d in (tiny_models.embedder, tiny_models.embedder_no_token_types):
        tok = load_tokenizer(d)
        encodings = tok.encode_batch(TEXTS)
        padded = run(d, batch(encodings))
        for row, enc in enumerate(encodings):
            alone = run(d, batch([enc]))[0]
            np.testing.assert_allclose(padded[row, :len(enc.ids)], alone, atol=1e-5)


def test_different_texts_give_clearly_different_outputs(tiny_models):
    d = tiny_models.embedder
    feeds = batch(load_tokenizer(d).encode_batch(TEXTS))
    vectors = mean_pool(run(d, feeds), feeds["attention_mask"])
    cos = vectors @ vectors.T
    off_diagonal = cos[~np.eye(len(TEXTS), dtype=bool)]
    assert off_diagonal.max() < 0.95, cos

    c = tiny_models.cross_encoder
    tok = load_tokenizer(c)
    logits = run(c, batch(tok.encode_batch([("where can I eat pizza", t) for t in TEXTS])))
    assert logits.std() > 0.1, logits
    assert len(np.unique(np.round(logits, 3))) == len(TEXTS)


def test_cross_encoder_uses_token_types(tiny_models):
    c = tiny_models.cross_encoder
    feeds = batch(load_tokenizer(c).encode_batch([("where can I eat pizza", t)
                                                  for t in TEXTS]))
    zeros = dict(feeds, token_type_ids=np.zeros_like(feeds["token_type_ids"]))
    assert np.abs(run(c, feeds) - run(c, zeros)).max() > 0.05


# ---------------------------------------------------------------------------------------
# Graph interface
# ---------------------------------------------------------------------------------------

def _io(model_dir):
    sess = session(model_dir)
    return ([(i.name, i.type, i.shape) for i in sess.get_inputs()],
            [(o.name, o.type, o.shape) for o in sess.get_outputs()])


def test_graph_inputs_and_outputs(tiny_models):
    ids = ("tensor(int64)", ["batch", "seq"])
    three = [("input_ids", *ids), ("attention_mask", *ids), ("token_type_ids", *ids)]
    assert _io(tiny_models.embedder) == (
        three, [("last_hidden_state", "tensor(float)", ["batch", "seq", 32])])
    assert _io(tiny_models.cross_encoder) == (
        three, [("logits", "tensor(float)", ["batch", 1])])
    assert _io(tiny_models.embedder_no_token_types) == (
        three[:2], [("last_hidden_state", "tensor(float)", ["batch", "seq", 32])])


def test_no_token_types_variant_equals_embedder_with_zero_token_types(tiny_models):
    d, d2 = tiny_models.embedder, tiny_models.embedder_no_token_types
    assert len(session(d2).get_inputs()) == 2
    feeds = batch(load_tokenizer(d).encode_batch(TEXTS))
    feeds["token_type_ids"][:] = 0
    with pytest.raises(Exception):    # the graph rejects an input it does not have
        session(d2).run(None, feeds)
    np.testing.assert_allclose(run(d2, feeds), run(d, feeds), atol=1e-6)


def test_onnx_checker_and_serialization(tiny_models):
    """Our hand-written protobuf is valid ONNX and byte-equal to onnx's own serializer."""
    onnx = pytest.importorskip("onnx")
    for d in tiny_models:
        data = (d / "model.onnx").read_bytes()
        model = onnx.load_from_string(data)
        onnx.checker.check_model(model, full_check=True)
        assert model.SerializeToString() == data
        assert model.ir_version == 8
        assert [(o.domain, o.version) for o in model.opset_import] == [("", 17)]
        assert {n.op_type for n in model.graph.node} >= {
            "Gather", "Range", "LayerNormalization", "MatMul", "Softmax", "Erf", "Cast"}


# ---------------------------------------------------------------------------------------
# Files, tokenizer, determinism
# ---------------------------------------------------------------------------------------

def test_files_and_configs(tiny_models):
    e, c = tiny_models.embedder, tiny_models.cross_encoder
    vocab_size = Tokenizer.from_file(str(e / "tokenizer.json")).get_vocab_size()
    config = read_config(e)
    assert {k: config[k] for k in (
        "model_type", "hidden_size", "num_hidden_layers", "num_attention_heads",
        "intermediate_size", "max_position_embeddings", "vocab_size", "type_vocab_size")} == {
        "model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
        "num_attention_heads": 4, "intermediate_size": 64, "max_position_embeddings": 128,
        "vocab_size": vocab_size, "type_vocab_size": 2}
    assert load_weights(e)["embeddings.word_embeddings.weight"].shape == (vocab_size, 32)
    assert json.loads((e / "sentence_bert_config.json").read_text()) == {
        "max_seq_length": 128, "do_lower_case": False}
    pooling = json.loads((e / "1_Pooling" / "config.json").read_text())
    assert pooling["word_embedding_dimension"] == 32
    assert pooling["pooling_mode_mean_tokens"] is True
    assert not any(v for k, v in pooling.items()
                   if k.startswith("pooling_mode_") and k != "pooling_mode_mean_tokens")
    assert json.loads((e / "special_tokens_map.json").read_text())["pad_token"] == "[PAD]"
    assert json.loads((e / "tokenizer_config.json").read_text())["model_max_length"] == 128
    ce = read_config(c)
    assert ce["architectures"] == ["BertForSequenceClassification"]
    assert ce["num_labels"] == 1 and ce["model_type"] == "bert"
    assert not (c / "1_Pooling").exists()


def test_tokenizer_trap_until_reset(tiny_models):
    """tokenizer.json pads AND truncates to 16, like all-MiniLM's does to 128."""
    d = tiny_models.embedder
    long_text = " ".join(["pizza"] * 40)
    trapped = load_tokenizer(d, reset=False)
    assert btm.TRAP_LENGTH == 16
    enc = trapped.encode(long_text)
    assert len(enc.ids) == 16 and enc.tokens[-1] == "[SEP]"      # truncated
    enc = trapped.encode("hello")
    assert len(enc.ids) == 16 and enc.attention_mask == [1, 1, 1] + [0] * 13  # padded

    tok = load_tokenizer(d)             # no_padding() + no_truncation()
    assert len(tok.encode(long_text).ids) == 42
    enc = tok.encode("hello")
    assert enc.tokens == ["[CLS]", "hello", "[SEP]"] and enc.ids[0] == 2 and enc.ids[2] == 3


def test_tokenizer_pairs_words_and_accents(tiny_models):
    tok = load_tokenizer(tiny_models.cross_encoder)
    pair = tok.encode("where is my order", "o pedido")
    assert pair.tokens == ["[CLS]", "where", "is", "my", "order", "[SEP]",
                           "o", "pedido", "[SEP]"]
    assert pair.type_ids == [0] * 6 + [1] * 3
    # Lowercased, accents stripped (BERT uncased): both spellings are the same tokens.
    assert tok.encode("Você está AQUI").ids == tok.encode("voce esta aqui").ids
    # Every ASCII word tokenizes without [UNK] (letter pieces); other scripts may not.
    enc = tok.encode("Zyxwq42 flibbertigibbet, ok?")
    assert "[UNK]" not in enc.tokens and "##q" in enc.tokens
    assert tok.encode("ok 🍕").tokens == ["[CLS]", "ok", "[UNK]", "[SEP]"]
    assert tok.decode(tok.encode("I love pizza napolitana").ids) == "i love pizza napolitana"
    vocab = tok.get_vocab()
    assert [vocab[t] for t in btm.SPECIAL_TOKENS] == [0, 1, 2, 3, 4]


def _tree_hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): sha256(p) for p in sorted(root.rglob("*")) if p.is_file()}


def test_build_is_deterministic(tmp_path, tiny_models):
    first = btm.build_all(tmp_path / "a")
    second = btm.build_all(tmp_path / "b")
    for x, y, shared in zip(first, second, tiny_models):
        assert sha256(x / "model.onnx") == sha256(y / "model.onnx") == sha256(
            shared / "model.onnx")
        assert _tree_hashes(x) == _tree_hashes(y)     # every file, weights.npz included
    other_seed = btm.build_embedder(tmp_path / "c", seed=7)
    assert sha256(other_seed / "model.onnx") != sha256(first.embedder / "model.onnx")


def test_tiny_build_is_fast(tmp_path):
    import time
    start = time.perf_counter()
    btm.build_all(tmp_path)
    assert time.perf_counter() - start < 2.0


def test_max_seq_length_below_max_position(tmp_path):
    models = btm.build_all(tmp_path, max_position=64, max_seq_length=40)
    for d in (models.embedder, models.embedder_no_token_types):
        assert json.loads((d / "sentence_bert_config.json").read_text()) == {
            "max_seq_length": 40, "do_lower_case": False}
        assert read_config(d)["max_position_embeddings"] == 64
    assert read_config(models.cross_encoder)["max_position_embeddings"] == 64


def test_invalid_knobs(tmp_path):
    with pytest.raises(ValueError, match="divisible"):
        btm.build_embedder(tmp_path, hidden=30, heads=4)
    with pytest.raises(ValueError, match="vocab_size"):
        btm.build_embedder(tmp_path, vocab_size=10)
    with pytest.raises(ValueError, match="positive"):
        btm.build_cross_encoder(tmp_path, layers=0)
    with pytest.raises(ValueError, match="max_seq_length"):
        btm.build_embedder(tmp_path, max_position=64, max_seq_length=65)


def test_cli_prints_files_and_sha256(tmp_path):
    out = subprocess.run(
        [sys.executable, str(BUILDER), str(tmp_path), "--layers", "1", "--hidden", "16",
         "--heads", "2", "--intermediate", "32", "--max-position", "64",
         "--vocab-size", "1000", "--seed", "3"],
        capture_output=True, text=True, check=True).stdout
    for kind in ("embedder", "cross-encoder", "embedder-no-token-types"):
        d = tmp_path / kind
        assert f"sha256(model.onnx) = {sha256(d / 'model.onnx')}" in out
        config = read_config(d)
        assert (config["num_hidden_layers"], config["hidden_size"], config["vocab_size"],
                config["max_position_embeddings"]) == (1, 16, 1000, 64)
    same = btm.build_embedder(tmp_path / "api", layers=1, hidden=16, heads=2,
                              intermediate=32, max_position=64, vocab_size=1000, seed=3)
    assert sha256(same / "model.onnx") == sha256(tmp_path / "embedder" / "model.onnx")


def test_realistic_size_builds_and_runs(tmp_path):
    """all-MiniLM-L6-v2's shape (about 90 MB): builds and embeds 20 x 64 tokens."""
    d = btm.build_embedder(tmp_path, save_weights=False, **btm.REALISTIC)
    assert btm.REALISTIC == dict(layers=6, hidden=384, heads=12, intermediate=1536,
                                 max_position=512, vocab_size=30522)
    assert Tokenizer.from_file(str(d / "tokenizer.json")).get_vocab_size() == 30522
    assert read_config(d)["vocab_size"] == 30522
    assert not (d / "weights.npz").exists()
    rng = np.random.default_rng(0)
    ids = rng.integers(5, 30522, size=(20, 64))
    mask = np.ones_like(ids)
    mask[10:, 40:] = 0
    feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
    hidden = run(d, feeds)
    assert hidden.shape == (20, 64, 384) and np.isfinite(hidden).all()
    vectors = mean_pool(hidden, mask)
    assert (vectors @ vectors.T)[~np.eye(20, dtype=bool)].max() < 0.99
