#!/usr/bin/env python3
"""Build small, deterministic BERT models in ONNX for tests and benchmarks.

The models have the real BERT architecture (post-LayerNorm encoder, exact-erf GELU,
additive attention mask built from ``attention_mask`` inside the graph) and are laid
out on disk like the real downloads, so the library's ONNX Runtime and ``tokenizers``
code paths run for real with no network:

* ``build_embedder``: a sentence-transformers style embedder (``last_hidden_state``,
  mean pooling config); ``token_type_input=False`` drops the ``token_type_ids`` input
  like some exports do.
* ``build_cross_encoder``: ``BertForSequenceClassification`` with one logit (``logits``).
* ``build_all``: the three of them side by side.

The weights are random (seeded), so the vectors mean nothing; what matters is that
the shapes, names, files and numerics are those of a real export and that different
texts give clearly different outputs. Same arguments -> byte-identical files.

Only numpy and ``tokenizers`` are needed: the ONNX protobuf is written directly by a
small encoder below, so the ``onnx`` package is NOT required (tests that have it use it
to check the result against ``onnx.checker`` and ``onnx``'s own serializer).

CLI::

    python models/build_test_models.py OUT_DIR [--layers N --hidden H --heads A
        --intermediate I --vocab-size V --max-position P --seed S] [--realistic]
        [--only embedder|cross-encoder|embedder-no-token-types] [--no-weights]

See models/README.md.
"""
from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import string
import struct
import sys
import unicodedata
import zipfile
from pathlib import Path
from typing import Iterable, NamedTuple, Sequence

import numpy as np

__all__ = [
    "REALISTIC",
    "SPECIAL_TOKENS",
    "TRAP_LENGTH",
    "ModelSet",
    "build_all",
    "build_cross_encoder",
    "build_embedder",
    "default_vocab",
    "sha256_file",
]

OPSET = 17
# IR version 8 goes with opset 17 and loads in every onnxruntime the library supports
# (>= 1.17), unlike the newest IR version that a fresh `onnx` package would stamp.
IR_VERSION = 8
PRODUCER = "localmem-test-models"
PRODUCER_VERSION = "1"

SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")  # ids 0..4
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(5)

# The deliberate trap (see README): tokenizer.json ships with padding to this fixed
# length and truncation at it, like all-MiniLM-L6-v2's tokenizer.json does at 128.
TRAP_LENGTH = 16

# The "realistic size" used by benchmarks: all-MiniLM-L6-v2's shape.
REALISTIC = dict(layers=6, hidden=384, heads=12, intermediate=1536, max_position=512,
                 vocab_size=30522)

LAYER_NORM_EPS = 1e-12
# What Hugging Face uses for masked positions: (1 - mask) * finfo(float32).min.
MASK_VALUE = float(np.finfo(np.float32).min)
# Init standard deviations (see _make_weights). Changing any of them changes every
# model's bytes.
_INIT = dict(word=0.05, pos=0.01, type=0.01, ln=0.1, bias=0.1, qk=2.0)

# ---------------------------------------------------------------------------------------
# Vocabulary
# ---------------------------------------------------------------------------------------

_ENGLISH = """
the a an and or but if then so of to in on at by for with about from into over under
after before between through during without again is are was were be been being am
do does did done have has had having will would can could should may might must shall
i me my mine myself you your yours we us our they them their he him his she her it its
this that these those there here what which who whom whose when where why how all any
both each few more most other some such no not only own same than too very just also
now today tomorrow yesterday tonight morning evening night day week month year time
hello hi hey thanks thank please yes ok okay sorry bye goodbye welcome sure great good
bad best better nice fine cool love like hate want need know think tell say said ask
help make get got give take go going come came see look find use work call try keep
let put show turn start stop open close order cancel pay buy sell send receive check
book change update delete remember forget talk speak write read listen play eat drink
pizza pasta burger coffee tea water beer wine food lunch dinner breakfast menu table
restaurant delivery price cheap expensive free money card cash bill receipt refund
weather rain sun sunny cloudy cold hot warm wind snow storm forecast temperature
town city street home house room office school hospital airport station hotel park
car bus train taxi flight ticket trip travel map address phone email message account
password user name number date hour minute account problem issue question answer
favorite new old big small long short high low first last next early late right left
friend family mother father brother sister child children people man woman boy girl
dog cat music movie game book news sport football team match
one two three four five six seven eight nine ten hundred thousand
monday tuesday wednesday thursday friday saturday sunday weekend
january february march april may june july august september october november december
napolitana margherita pepperoni cheese tomato chicken beef fish salad soup sauce
"""

# Accented on purpose: BertNormalizer(lowercase=True, strip_accents=None) strips accents
# (as in BERT uncased), so these go into the vocabulary accent-stripped ("você" ->
# "voce") and both spellings of a text tokenize alike.
_PORTUGUESE = """
eu você voce ele ela nós nos vocês eles elas meu minha meus minhas seu sua nosso nossa
o a os as um uma uns umas de do da dos das em no na nos nas por pelo pela para com sem
e ou mas se que quem qual quando onde como porque porquê muito pouco mais menos
não nao sim é está estou estamos são ser estar ter tenho tem temos fazer faz vou vai
ir quero queria gosto gostaria adoro amo preciso posso pode sei acho falar dizer
olá ola oi obrigado obrigada tchau bom boa bem mal melhor pior ótimo otimo legal
hoje amanhã ontem agora depois antes sempre nunca dia noite manhã tarde semana mês ano
tempo chuva sol frio calor quente vento previsão
pedido pedir cancelar pagar comprar entregar entrega conta cartão dinheiro preço
pizza massa café cafe água agua cerveja vinho comida almoço jantar cardápio mesa
restaurante cidade rua casa trabalho escola hospital aeroporto hotel carro ônibus
amigo amiga família mãe pai irmão irmã filho filha pessoa gente
favorito favorita novo nova velho grande pequeno primeiro último próximo
segunda terça quarta quinta sexta sábado domingo
"""


def _strip_accents(text: str) -> str:
    return "".join(c for c in unicodedata.normalize("NFD", text)
                   if unicodedata.category(c) != "Mn")


def default_vocab(vocab_size: int | None = None) -> list[str]:
    """The WordPiece vocabulary, index = token id.

    Special tokens (ids 0-4), then every letter, digit and ASCII punctuation mark, then
    "##" + each letter and digit (so every ASCII word tokenizes into pieces without
    [UNK]), then a few hundred frequent English and Portuguese words (lowercased,
    accent-stripped). ``vocab_size`` pads the list with "[unusedN]" tokens (BERT's own
    filler, which text can never produce) up to that size.
    """
    tokens: list[str] = list(SPECIAL_TOKENS)
    tokens += list(string.ascii_lowercase) + list(string.digits) + list(string.punctuation)
    tokens += ["##" + c for c in string.ascii_lowercase + string.digits]
    for word in (_ENGLISH + _PORTUGUESE).split():
        tokens.append(_strip_accents(word.lower()))
    seen: set[str] = set()
    vocab = [t for t in tokens if not (t in seen or seen.add(t))]
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size {vocab_size} is smaller than the base vocabulary "
                             f"({len(vocab)} tokens)")
        vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    return vocab


def _resolve_vocab(vocab: Sequence[str] | None, vocab_size: int | None) -> list[str]:
    if vocab is None:
        return default_vocab(vocab_size)
    vocab = list(vocab)
    if tuple(vocab[:len(SPECIAL_TOKENS)]) != SPECIAL_TOKENS:
        raise ValueError(f"a vocabulary must start with {SPECIAL_TOKENS}")
    if len(set(vocab)) != len(vocab):
        raise ValueError("the vocabulary has duplicate tokens")
    if vocab_size is not None:
        if vocab_size < len(vocab):
            raise ValueError(f"vocab_size {vocab_size} < len(vocab) {len(vocab)}")
        vocab += [f"[unused{i}]" for i in range(vocab_size - len(vocab))]
    return vocab


# ---------------------------------------------------------------------------------------
# Tokenizer
# ---------------------------------------------------------------------------------------

def _tokenizer_json(vocab: list[str], trap_length: int) -> str:
    from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
    from tokenizers import pre_tokenizers, processors

    tok = Tokenizer(models.WordPiece({t: i for i, t in enumerate(vocab)},
                                     unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)],
    )
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False)
                            for t in SPECIAL_TOKENS])
    # The trap, as in all-MiniLM-L6-v2's tokenizer.json (which pads/truncates to 128).
    tok.enable_truncation(max_length=trap_length)
    tok.enable_padding(length=trap_length, pad_id=PAD_ID, pad_type_id=0, pad_token="[PAD]")
    return tok.to_str(pretty=True)


# ---------------------------------------------------------------------------------------
# A minimal ONNX protobuf writer (fields emitted in field-number order, as protobuf's own
# serializer does, so the bytes equal onnx.ModelProto.SerializeToString()).
# ---------------------------------------------------------------------------------------

_FLOAT, _INT64 = 1, 7              # TensorProto.DataType
_ATTR_FLOAT, _ATTR_INT, _ATTR_INTS = 1, 2, 7  # AttributeProto.AttributeType
_DTYPES = {np.dtype(np.float32): _FLOAT, np.dtype(np.int64): _INT64}


def _varint(n: int) -> bytes:
    if n < 0:
        n += 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _f_varint(field: int, n: int) -> bytes:
    return _varint(field << 3) + _varint(n)


def _f_bytes(field: int, data: bytes) -> bytes:
    return _varint((field << 3) | 2) + _varint(len(data)) + data


def _f_str(field: int, s: str) -> bytes:
    return _f_bytes(field, s.encode("utf-8"))


def _f_float(field: int, x: float) -> bytes:
    return _varint((field << 3) | 5) + struct.pack("<f", x)


def _tensor(name: str, array: np.ndarray) -> bytes:
    array = np.asarray(array, order="C")   # not ascontiguousarray: it makes 0-d 1-d
    dtype = _DTYPES[array.dtype]
    out = b"".join(_f_varint(1, d) for d in array.shape)          # dims (not packed)
    out += _f_varint(2, dtype) + _f_str(8, name)
    return out + _f_bytes(9, array.astype(array.dtype.newbyteorder("<")).tobytes())


def _attribute(name: str, value) -> bytes:
    out = _f_str(1, name)
    if isinstance(value, float):
        return out + _f_float(2, value) + _f_varint(20, _ATTR_FLOAT)
    if isinstance(value, int):
        return out + _f_varint(3, value) + _f_varint(20, _ATTR_INT)
    if isinstance(value, (list, tuple)):
        return out + b"".join(_f_varint(8, v) for v in value) + _f_varint(20, _ATTR_INTS)
    raise TypeError(f"unsupported attribute {name}={value!r}")


def _node(op: str, inputs: Iterable[str], outputs: Iterable[str], name: str,
          attrs: dict) -> bytes:
    out = b"".join(_f_str(1, i) for i in inputs)
    out += b"".join(_f_str(2, o) for o in outputs)
    out += _f_str(3, name) + _f_str(4, op)
    return out + b"".join(_f_bytes(5, _attribute(k, v)) for k, v in sorted(attrs.items()))


def _value_info(name: str, elem_type: int, dims: Sequence[int | str]) -> bytes:
    shape = b"".join(_f_bytes(1, _f_varint(1, d) if isinstance(d, int) else _f_str(2, d))
                     for d in dims)
    tensor_type = _f_varint(1, elem_type) + _f_bytes(2, shape)
    return _f_str(1, name) + _f_bytes(2, _f_bytes(1, tensor_type))


class _Graph:
    """Collects nodes and initializers; names are deterministic."""

    def __init__(self) -> None:
        self.nodes: list[bytes] = []
        self.inits: list[bytes] = []
        self._count = 0
        self._consts: dict[tuple, str] = {}

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(_tensor(name, array))
        return name

    def const(self, value, dtype) -> str:
        array = np.asarray(value, dtype=dtype)
        key = (array.dtype.str, array.shape, array.tobytes())
        if key not in self._consts:
            self._consts[key] = self.init(f"const_{len(self._consts)}", array)
        return self._consts[key]

    def op(self, op: str, *inputs: str, scope: str = "", out: str | None = None,
           **attrs) -> str:
        self._count += 1
        name = f"{scope}/{op}_{self._count}"
        out = out or f"{name}_output_0"
        self.nodes.append(_node(op, inputs, [out], name, attrs))
        return out

    def model(self, graph_name: str, inputs: list[bytes], outputs: list[bytes]) -> bytes:
        graph = b"".join(_f_bytes(1, n) for n in self.nodes)
        graph += _f_str(2, graph_name)
        graph += b"".join(_f_bytes(5, t) for t in self.inits)
        graph += b"".join(_f_bytes(11, v) for v in inputs)
        graph += b"".join(_f_bytes(12, v) for v in outputs)
        model = _f_varint(1, IR_VERSION) + _f_str(2, PRODUCER) + _f_str(3, PRODUCER_VERSION)
        model += _f_bytes(7, graph)
        return model + _f_bytes(8, _f_str(1, "") + _f_varint(2, OPSET))


# ---------------------------------------------------------------------------------------
# Weights and graph
# ---------------------------------------------------------------------------------------

def _check_knobs(layers, hidden, heads, intermediate, max_position):
    for name, v in dict(layers=layers, hidden=hidden, heads=heads,
                        intermediate=intermediate, max_position=max_position).items():
        if not isinstance(v, int) or isinstance(v, bool) or v < 1:
            raise ValueError(f"{name} must be a positive int, got {v!r}")
    if hidden % heads:
        raise ValueError(f"hidden ({hidden}) must be divisible by heads ({heads})")


def _make_weights(*, vocab_size, layers, hidden, heads, intermediate, max_position, seed,
                  classifier) -> dict[str, np.ndarray]:
    """Random weights under Hugging Face names, Linear weights in PyTorch layout [out, in].

    Not BERT's init (normal 0.02 everywhere, LayerNorm 1/0): with it, every text gets
    nearly the same vector. Here word embeddings (std 0.05) dominate the position and
    token-type ones (0.01), which every text shares; dense weights have std
    1/sqrt(fan_in) (Q and K twice that, so attention is far from uniform); biases std
    0.1; LayerNorm gamma = 1 + N(0, 0.1), beta = N(0, 0.1), so a mix-up of the two shows.
    """
    rng = np.random.default_rng(seed)
    w: dict[str, np.ndarray] = {}

    def normal(shape, std):
        return (rng.standard_normal(shape) * std).astype(np.float32)

    def layer_norm(prefix):
        w[prefix + ".weight"] = (1.0 + normal(hidden, _INIT["ln"])).astype(np.float32)
        w[prefix + ".bias"] = normal(hidden, _INIT["ln"])

    def linear(prefix, fan_in, fan_out, scale=1.0):
        w[prefix + ".weight"] = normal((fan_out, fan_in), scale / math.sqrt(fan_in))
        w[prefix + ".bias"] = normal(fan_out, _INIT["bias"])

    w["embeddings.word_embeddings.weight"] = normal((vocab_size, hidden), _INIT["word"])
    w["embeddings.position_embeddings.weight"] = normal((max_position, hidden), _INIT["pos"])
    w["embeddings.token_type_embeddings.weight"] = normal((2, hidden), _INIT["type"])
    layer_norm("embeddings.LayerNorm")
    for i in range(layers):
        p = f"encoder.layer.{i}."
        linear(p + "attention.self.query", hidden, hidden, scale=_INIT["qk"])
        linear(p + "attention.self.key", hidden, hidden, scale=_INIT["qk"])
        linear(p + "attention.self.value", hidden, hidden)
        linear(p + "attention.output.dense", hidden, hidden)
        layer_norm(p + "attention.output.LayerNorm")
        linear(p + "intermediate.dense", hidden, intermediate)
        linear(p + "output.dense", intermediate, hidden)
        layer_norm(p + "output.LayerNorm")
    if classifier:
        linear("pooler.dense", hidden, hidden)
        linear("classifier", hidden, 1, scale=2.0)
    return w


def _bert_graph(w: dict[str, np.ndarray], *, layers, hidden, heads, token_type_input,
                classifier) -> bytes:
    g = _Graph()
    d_head = hidden // heads

    def linear(x, prefix, scope):
        weight = g.init(prefix + ".weight.T", w[prefix + ".weight"].T)   # [in, out]
        bias = g.init(prefix + ".bias", w[prefix + ".bias"])
        return g.op("Add", g.op("MatMul", x, weight, scope=scope), bias, scope=scope)

    def layer_norm(x, prefix, scope):
        gamma = g.init(prefix + ".weight", w[prefix + ".weight"])
        beta = g.init(prefix + ".bias", w[prefix + ".bias"])
        return g.op("LayerNormalization", x, gamma, beta, scope=scope,
                    axis=-1, epsilon=LAYER_NORM_EPS)

    # Embeddings: word + position (range(seq)) + token type, then LayerNorm.
    s = "/embeddings"
    word_emb = g.init("embeddings.word_embeddings.weight",
                      w["embeddings.word_embeddings.weight"])
    pos_emb = g.init("embeddings.position_embeddings.weight",
                     w["embeddings.position_embeddings.weight"])
    type_emb = g.init("embeddings.token_type_embeddings.weight",
                      w["embeddings.token_type_embeddings.weight"])
    x = g.op("Gather", word_emb, "input_ids", scope=s, axis=0)              # [b, s, h]
    seq_len = g.op("Gather", g.op("Shape", "input_ids", scope=s), g.const(1, np.int64),
                   scope=s, axis=0)                                          # scalar
    position_ids = g.op("Range", g.const(0, np.int64), seq_len, g.const(1, np.int64),
                        scope=s)                                             # [s]
    x = g.op("Add", x, g.op("Gather", pos_emb, position_ids, scope=s, axis=0), scope=s)
    if token_type_input:
        types = g.op("Gather", type_emb, "token_type_ids", scope=s, axis=0)  # [b, s, h]
    else:   # what BERT does when no token_type_ids come in: all zeros
        types = g.op("Gather", type_emb, g.const(0, np.int64), scope=s, axis=0)  # [h]
    x = layer_norm(g.op("Add", x, types, scope=s), "embeddings.LayerNorm", s)

    # Additive mask [b, 1, 1, s]: (1 - mask) * finfo(float32).min, as Hugging Face does.
    s = "/mask"
    mask = g.op("Cast", "attention_mask", scope=s, to=_FLOAT)
    mask = g.op("Unsqueeze", mask, g.const([1, 2], np.int64), scope=s)
    mask = g.op("Sub", g.const(1.0, np.float32), mask, scope=s)
    mask = g.op("Mul", mask, g.const(MASK_VALUE, np.float32), scope=s)

    split_heads = g.const([0, 0, heads, d_head], np.int64)
    merge_heads = g.const([0, 0, hidden], np.int64)
    sqrt_d = g.const(math.sqrt(d_head), np.float32)
    for i in range(layers):
        p, s = f"encoder.layer.{i}.", f"/encoder/layer.{i}"
        sa = s + "/attention/self"

        def heads_of(name, perm):
            y = g.op("Reshape", linear(x, p + "attention.self." + name, sa), split_heads,
                     scope=sa)
            return g.op("Transpose", y, scope=sa, perm=perm)

        q = heads_of("query", [0, 2, 1, 3])                                  # [b, A, s, d]
        k = heads_of("key", [0, 2, 3, 1])                                    # [b, A, d, s]
        v = heads_of("value", [0, 2, 1, 3])                                  # [b, A, s, d]
        scores = g.op("Div", g.op("MatMul", q, k, scope=sa), sqrt_d, scope=sa)
        probs = g.op("Softmax", g.op("Add", scores, mask, scope=sa), scope=sa, axis=-1)
        ctx = g.op("Transpose", g.op("MatMul", probs, v, scope=sa), scope=sa,
                   perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", ctx, merge_heads, scope=sa)                    # [b, s, h]
        so = s + "/attention/output"
        attn = linear(ctx, p + "attention.output.dense", so)
        x = layer_norm(g.op("Add", attn, x, scope=so), p + "attention.output.LayerNorm", so)

        si = s + "/intermediate"
        h = linear(x, p + "intermediate.dense", si)
        erf = g.op("Erf", g.op("Div", h, g.const(math.sqrt(2.0), np.float32), scope=si),
                   scope=si)
        h = g.op("Mul", g.op("Mul", h, g.const(0.5, np.float32), scope=si),
                 g.op("Add", erf, g.const(1.0, np.float32), scope=si), scope=si)
        so = s + "/output"
        out = linear(h, p + "output.dense", so)
        last = not classifier and i == layers - 1
        x = g.op("LayerNormalization", g.op("Add", out, x, scope=so),
                 g.init(p + "output.LayerNorm.weight", w[p + "output.LayerNorm.weight"]),
                 g.init(p + "output.LayerNorm.bias", w[p + "output.LayerNorm.bias"]),
                 scope=so, out="last_hidden_state" if last else None,
                 axis=-1, epsilon=LAYER_NORM_EPS)

    if classifier:
        s = "/pooler"
        cls = g.op("Gather", x, g.const(0, np.int64), scope=s, axis=1)      # [b, h]
        pooled = g.op("Tanh", linear(cls, "pooler.dense", s), scope=s)
        weight = g.init("classifier.weight.T", w["classifier.weight"].T)
        logits = g.op("MatMul", pooled, weight, scope="/classifier")
        g.op("Add", logits, g.init("classifier.bias", w["classifier.bias"]),
             scope="/classifier", out="logits")
        outputs = [_value_info("logits", _FLOAT, ["batch", 1])]
    else:
        outputs = [_value_info("last_hidden_state", _FLOAT, ["batch", "seq", hidden])]

    names = ["input_ids", "attention_mask"] + (["token_type_ids"] if token_type_input else [])
    inputs = [_value_info(n, _INT64, ["batch", "seq"]) for n in names]
    return g.model("main_graph", inputs, outputs)


# ---------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------

def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """Like np.savez, but byte-deterministic (fixed zip timestamps)."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.asarray(arrays[name], order="C"),
                                      allow_pickle=False)
            zf.writestr(zipfile.ZipInfo(name + ".npy", date_time=(1980, 1, 1, 0, 0, 0)),
                        buf.getvalue())


def _write_json(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def _bert_config(*, vocab_size, layers, hidden, heads, intermediate, max_position) -> dict:
    return {
        "attention_probs_dropout_prob": 0.1,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": hidden,
        "initializer_range": 0.02,
        "intermediate_size": intermediate,
        "layer_norm_eps": LAYER_NORM_EPS,
        "max_position_embeddings": max_position,
        "model_type": "bert",
        "num_attention_heads": heads,
        "num_hidden_layers": layers,
        "pad_token_id": PAD_ID,
        "position_embedding_type": "absolute",
        "torch_dtype": "float32",
        "type_vocab_size": 2,
        "vocab_size": vocab_size,
    }


def _write_common(out: Path, vocab: list[str], max_position: int) -> None:
    trap = min(TRAP_LENGTH, max_position)
    (out / "tokenizer.json").write_text(_tokenizer_json(vocab, trap) + "\n",
                                        encoding="utf-8")
    (out / "vocab.txt").write_text("".join(t + "\n" for t in vocab), encoding="utf-8")
    _write_json(out / "special_tokens_map.json", {
        "cls_token": "[CLS]", "mask_token": "[MASK]", "pad_token": "[PAD]",
        "sep_token": "[SEP]", "unk_token": "[UNK]"})
    _write_json(out / "tokenizer_config.json", {
        "clean_up_tokenization_spaces": True,
        "cls_token": "[CLS]",
        "do_basic_tokenize": True,
        "do_lower_case": True,
        "mask_token": "[MASK]",
        "model_max_length": max_position,
        "never_split": None,
        "pad_token": "[PAD]",
        "sep_token": "[SEP]",
        "strip_accents": None,
        "tokenize_chinese_chars": True,
        "tokenizer_class": "BertTokenizer",
        "unk_token": "[UNK]",
    })


def _build(out_dir, *, kind, layers, hidden, heads, intermediate, max_position, seed,
           vocab, vocab_size, token_type_input, save_weights, max_seq_length=None) -> Path:
    _check_knobs(layers, hidden, heads, intermediate, max_position)
    if max_seq_length is None:
        max_seq_length = max_position
    if not 1 <= max_seq_length <= max_position:
        raise ValueError(f"max_seq_length must be in 1..max_position ({max_position}), "
                         f"got {max_seq_length}")
    vocab = _resolve_vocab(vocab, vocab_size)
    knobs = dict(layers=layers, hidden=hidden, heads=heads, intermediate=intermediate,
                 max_position=max_position)
    classifier = kind == "cross_encoder"
    weights = _make_weights(vocab_size=len(vocab), seed=seed, classifier=classifier, **knobs)
    model = _bert_graph(weights, layers=layers, hidden=hidden, heads=heads,
                        token_type_input=token_type_input, classifier=classifier)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "model.onnx").write_bytes(model)
    _write_common(out, vocab, max_position)
    config = _bert_config(vocab_size=len(vocab), **knobs)
    if classifier:
        config.update(architectures=["BertForSequenceClassification"], num_labels=1,
                      id2label={"0": "LABEL_0"}, label2id={"LABEL_0": 0})
    else:
        config.update(architectures=["BertModel"])
        _write_json(out / "sentence_bert_config.json",
                    {"max_seq_length": max_seq_length, "do_lower_case": False})
        _write_json(out / "1_Pooling" / "config.json", {
            "word_embedding_dimension": hidden,
            "pooling_mode_cls_token": False,
            "pooling_mode_mean_tokens": True,
            "pooling_mode_max_tokens": False,
            "pooling_mode_mean_sqrt_len_tokens": False,
            "pooling_mode_weightedmean_tokens": False,
            "pooling_mode_lasttoken": False,
            "include_prompt": True,
        })
        _write_json(out / "modules.json", [
            {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
            {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
            {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
        ])
    _write_json(out / "config.json", dict(sorted(config.items())))
    if save_weights:
        _write_npz(out / "weights.npz", weights)
    return out


def build_embedder(out_dir, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                   intermediate: int = 64, max_position: int = 128, seed: int = 0,
                   vocab: Sequence[str] | None = None, vocab_size: int | None = None,
                   token_type_input: bool = True, save_weights: bool = True,
                   max_seq_length: int | None = None) -> Path:
    """A sentence-transformers BERT embedder in ``out_dir``; returns ``out_dir``.

    model.onnx: inputs input_ids, attention_mask[, token_type_ids] (int64 [batch, seq]),
    output last_hidden_state (float32 [batch, seq, hidden]). ``token_type_input=False``
    drops the token_type_ids input (the graph then uses token type 0, as BERT does
    without it). ``save_weights`` also writes weights.npz (Hugging Face names, PyTorch
    layout) for reference checks. ``max_seq_length`` (default ``max_position``) goes
    into sentence_bert_config.json; real models often have it below the position limit
    (all-MiniLM-L6-v2: 256 of 512).
    """
    return _build(out_dir, kind="embedder", layers=layers, hidden=hidden, heads=heads,
                  intermediate=intermediate, max_position=max_position, seed=seed,
                  vocab=vocab, vocab_size=vocab_size, token_type_input=token_type_input,
                  save_weights=save_weights, max_seq_length=max_seq_length)


def build_cross_encoder(out_dir, *, layers: int = 2, hidden: int = 32, heads: int = 4,
                        intermediate: int = 64, max_position: int = 128, seed: int = 1,
                        vocab: Sequence[str] | None = None, vocab_size: int | None = None,
                        token_type_input: bool = True, save_weights: bool = True) -> Path:
    """A BertForSequenceClassification cross-encoder (1 logit) in ``out_dir``.

    model.onnx: inputs as the embedder's, output logits (float32 [batch, 1]) =
    classifier(tanh(pooler(last_hidden_state[:, 0]))).
    """
    return _build(out_dir, kind="cross_encoder", layers=layers, hidden=hidden, heads=heads,
                  intermediate=intermediate, max_position=max_position, seed=seed,
                  vocab=vocab, vocab_size=vocab_size, token_type_input=token_type_input,
                  save_weights=save_weights)


class ModelSet(NamedTuple):
    embedder: Path
    cross_encoder: Path
    embedder_no_token_types: Path


def build_all(out_dir, *, seed: int = 0, max_seq_length: int | None = None,
              **knobs) -> ModelSet:
    """embedder/, cross-encoder/ (seed + 1) and embedder-no-token-types/ under out_dir.

    ``knobs``: those of build_embedder / build_cross_encoder (layers, hidden, heads,
    intermediate, max_position, vocab, vocab_size, save_weights). The no-token-types
    embedder has the embedder's weights (same seed), so its output equals the
    embedder's fed all-zero token_type_ids.
    """
    out = Path(out_dir)
    return ModelSet(
        embedder=build_embedder(out / "embedder", seed=seed,
                                max_seq_length=max_seq_length, **knobs),
        cross_encoder=build_cross_encoder(out / "cross-encoder", seed=seed + 1, **knobs),
        embedder_no_token_types=build_embedder(
            out / "embedder-no-token-types", seed=seed, token_type_input=False,
            max_seq_length=max_seq_length, **knobs),
    )


def sha256_file(path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# ---------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------

_KINDS = ("embedder", "cross-encoder", "embedder-no-token-types")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description="Build small deterministic BERT ONNX models (embedder, cross-encoder, "
                    "embedder without token_type_ids) for tests and benchmarks.")
    ap.add_argument("out_dir", type=Path, help="parent folder; one subfolder per model")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--hidden", type=int, default=32)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--intermediate", type=int, default=64)
    ap.add_argument("--max-position", type=int, default=128)
    ap.add_argument("--max-seq-length", type=int, default=None,
                    help="embedders' sentence_bert_config.json max_seq_length "
                         "(default: --max-position)")
    ap.add_argument("--vocab-size", type=int, default=None,
                    help="pad the vocabulary with [unusedN] tokens up to this size")
    ap.add_argument("--seed", type=int, default=0,
                    help="embedders use SEED, the cross-encoder SEED + 1")
    ap.add_argument("--realistic", action="store_true",
                    help="all-MiniLM-L6-v2's size: " + " ".join(
                        f"--{k.replace('_', '-')} {v}" for k, v in REALISTIC.items()))
    ap.add_argument("--only", action="append", choices=_KINDS,
                    help="build only this model (repeatable)")
    ap.add_argument("--no-weights", action="store_true", help="do not write weights.npz")
    args = ap.parse_args(argv)

    knobs = dict(layers=args.layers, hidden=args.hidden, heads=args.heads,
                 intermediate=args.intermediate, max_position=args.max_position,
                 vocab_size=args.vocab_size, save_weights=not args.no_weights)
    if args.realistic:
        knobs.update(REALISTIC)
    emb = dict(knobs, max_seq_length=args.max_seq_length)
    builders = {
        "embedder": lambda d: build_embedder(d, seed=args.seed, **emb),
        "cross-encoder": lambda d: build_cross_encoder(d, seed=args.seed + 1, **knobs),
        "embedder-no-token-types": lambda d: build_embedder(
            d, seed=args.seed, token_type_input=False, **emb),
    }
    try:
        for kind in args.only or _KINDS:
            out = builders[kind](args.out_dir / kind)
            print(f"{kind}: {out}")
            for f in sorted(p for p in out.rglob("*") if p.is_file()):
                print(f"  {f.relative_to(out)}  ({f.stat().st_size:,} bytes)")
            print(f"  sha256(model.onnx) = {sha256_file(out / 'model.onnx')}")
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
