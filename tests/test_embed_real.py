"""The embedder on the real all-MiniLM-L6-v2 (golden vectors) and model identity in the file.

The real model is not in git. CI provides it through LOCALMEM_MODELS_DIR (see .ci/run);
elsewhere these tests skip and say how to provide it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest

from localmem import Memory, ModelMismatchError

MODELS_DIR = os.environ.get("LOCALMEM_MODELS_DIR", "")
REAL = Path(MODELS_DIR) / "all-MiniLM-L6-v2" if MODELS_DIR else None
GOLDEN = Path(MODELS_DIR) / "golden" / "all-MiniLM-L6-v2.json" if MODELS_DIR else None
needs_real_model = pytest.mark.skipif(
    REAL is None or not (REAL / "model.onnx").exists() or not GOLDEN.exists(),
    reason="needs the real all-MiniLM-L6-v2: set LOCALMEM_MODELS_DIR to a folder holding "
    "all-MiniLM-L6-v2/ (model.onnx, tokenizer.json) and golden/all-MiniLM-L6-v2.json, "
    "or run `localmem models download all-MiniLM-L6-v2` on a machine with internet",
)


@pytest.fixture(scope="module")
def real_embedder():
    import localmem

    return localmem.load_embedder("all-MiniLM-L6-v2", download=False)


@pytest.fixture(scope="module")
def golden():
    return json.loads(GOLDEN.read_text())


@needs_real_model
def test_golden_vectors_within_1e_5(real_embedder, golden):
    vectors = real_embedder.embed(golden["sentences"])
    expected = np.asarray(golden["embeddings"], dtype=np.float32)
    assert vectors.dtype == np.float32 and vectors.shape == expected.shape == (11, 384)
    worst = np.abs(vectors - expected).max(axis=1)
    assert worst.max() < 1e-5, dict(zip(golden["sentences"], worst.tolist(), strict=True))


@needs_real_model
def test_the_long_sentence_is_past_the_tokenizer_files_128_token_trap(real_embedder, golden):
    from tokenizers import Tokenizer

    longest = max(golden["sentences"], key=len)
    raw = Tokenizer.from_file(str(real_embedder.files.tokenizer_path))
    assert len(raw.encode(longest).ids) == 128  # what the file does by itself: the trap
    _, tokenizer, _ = real_embedder._model.get()
    assert len(tokenizer.encode(longest).ids) > 128
    assert len(tokenizer.encode("a").ids) == 3  # no fixed padding either


@needs_real_model
def test_one_at_a_time_equals_batched_and_shuffled(real_embedder, golden):
    sentences = golden["sentences"]
    batched = real_embedder.embed(sentences)
    single = np.stack([real_embedder.embed([s])[0] for s in sentences])
    order = np.random.default_rng(7).permutation(len(sentences))
    shuffled = real_embedder.embed([sentences[i] for i in order])
    assert np.abs(batched - single).max() < 1e-5
    assert np.abs(batched[order] - shuffled).max() < 1e-5


@needs_real_model
def test_similar_texts_are_closer_in_english_and_portuguese(real_embedder):
    v = real_embedder.embed(["I love pizza napolitana", "Best pizza in town", "Weather is nice today"])
    q = real_embedder.embed_query(["tell me about pizza"])[0]
    sims = v @ q
    assert sims[0] > sims[2] and sims[1] > sims[2]


# -- model identity in the database -------------------------------------------------------

class FakeEmbedder:
    def __init__(self, name="fake", dim=4):
        self.name, self.dim = name, dim

    def embed(self, texts):
        return np.ones((len(texts), self.dim), dtype=np.float32)


def test_identity_is_recorded_once_and_a_different_model_is_refused(db_path):
    with Memory(db_path) as m:
        store = m._store
        assert store.embedder_identity() is None
        store.bind_embedder({"name": "a", "dim": 384, "sha256": "11"})
        store.bind_embedder({"name": "a", "dim": 384, "sha256": "11"})  # same: fine
        for other in ({"name": "b", "dim": 384, "sha256": "11"}, {"name": "a", "dim": 768, "sha256": "11"},
                      {"name": "a", "dim": 384, "sha256": "22"}):
            with pytest.raises(ModelMismatchError, match="'a'"):
                store.bind_embedder(other)
        store.bind_embedder({"name": "b", "dim": 8, "sha256": None}, replace=True)
        assert store.embedder_identity() == {"name": "b", "dim": 8, "sha256": None}


def test_opening_with_another_embedder_name_raises_at_open(db_path):
    with Memory(db_path) as m:
        m._store.bind_embedder({"name": "all-MiniLM-L6-v2", "dim": 384, "sha256": "ab"})
    with pytest.raises(ModelMismatchError, match="all-MiniLM-L6-v2"):
        Memory(db_path, embedder="bge-small-en-v1.5")
    with pytest.raises(ModelMismatchError):
        Memory(db_path, embedder=FakeEmbedder("fake"))
    with Memory(db_path, embedder="all-MiniLM-L6-v2"):
        pass


def test_a_users_own_embedder_object_is_used_as_is(db_path):
    fake = FakeEmbedder()
    with Memory(db_path, embedder=fake) as m:
        assert m.embedder is fake


def test_objects_without_the_method_are_rejected(db_path):
    from localmem import InvalidInputError

    with pytest.raises(InvalidInputError, match="embed"):
        Memory(db_path, embedder=object())
    with pytest.raises(InvalidInputError, match="score"):
        Memory(db_path, reranker=FakeEmbedder())


@needs_real_model
def test_memory_loads_the_recorded_embedder_by_default(db_path):
    with Memory(db_path) as m:
        m._store.bind_embedder({"name": "all-MiniLM-L6-v2", "dim": 384, "sha256": None})
    with Memory(db_path) as m:
        assert m.embedder.name == "all-MiniLM-L6-v2"
