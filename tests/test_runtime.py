"""Embedder and cross-encoder on small models with the real BERT architecture (built at
test time by models/build_test_models.py): the real ONNX and tokenizer code paths."""

from __future__ import annotations

import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import localmem
from localmem import InvalidInputError, ModelError
from localmem.embed import Embedder
from localmem.models import folder_spec, resolve

WORDS = ["pizza", "weather", "love", "hello", "order", "cancel", "tell", "about", "best", "town",
         "today", "nice", "você", "pedido", "hoje", "the", "a", "is", "in", "me", "x", "zebra"]
texts = st.lists(
    st.lists(st.sampled_from(WORDS), min_size=1, max_size=40).map(" ".join)
    | st.text(min_size=1, max_size=60),
    min_size=1, max_size=12,
)
quick = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def embedder(tiny_models):
    return localmem.load_embedder(path=tiny_models.embedder)


@pytest.fixture(scope="module")
def reranker(tiny_models):
    return localmem.load_reranker(path=tiny_models.cross_encoder)


def test_shape_dtype_and_unit_norm(embedder):
    vectors = embedder.embed(["hello town", "pizza today", "x"])
    assert vectors.dtype == np.float32 and vectors.shape == (3, embedder.dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-6)
    assert embedder.embed([]).shape == (0, embedder.dim)


def test_loading_is_lazy(tiny_models):
    e = localmem.load_embedder(path=tiny_models.embedder)
    assert not e._model.loaded
    e.embed(["hello"])
    assert e._model.loaded


@quick
@given(batch=texts, data=st.data())
def test_embeddings_do_not_depend_on_batching_or_order(embedder, batch, data):
    together = embedder.embed(batch)
    alone = np.stack([embedder.embed([t])[0] for t in batch])
    assert np.abs(together - alone).max() < 1e-5
    order = data.draw(st.permutations(range(len(batch))))
    shuffled = embedder.embed([batch[i] for i in order])
    assert np.abs(together[list(order)] - shuffled).max() < 1e-5


@quick
@given(batch=texts, size=st.integers(1, 5))
def test_batch_size_does_not_change_embeddings(tiny_models, embedder, batch, size):
    small = localmem.load_embedder(path=tiny_models.embedder, batch_size=size)
    assert np.abs(small.embed(batch) - embedder.embed(batch)).max() < 1e-5


def test_long_text_is_truncated_at_the_model_max_length_not_the_files_16(embedder):
    # The test tokenizer.json pads/truncates to 16 tokens, like the real one does to 128.
    start = " ".join(["pizza"] * 30)
    a, b = embedder.embed([start + " hello town", start + " zebra weather"])
    assert not np.allclose(a, b)  # tokens past 16 still count
    huge = " ".join(WORDS * 200)  # far past max_position: must be cut, not crash
    assert embedder.embed([huge]).shape == (1, embedder.dim)


def test_graph_without_token_type_ids_input(tiny_models, embedder):
    other = localmem.load_embedder(path=tiny_models.embedder_no_token_types)
    batch = ["hello town", "você pedido hoje"]
    assert np.abs(other.embed(batch) - embedder.embed(batch)).max() < 1e-5


def test_cls_pooling_and_prefixes_come_from_the_spec(tiny_models, embedder):
    spec = folder_spec(tiny_models.embedder, kind="embedder", pooling="cls",
                       query_prefix="query: ", document_prefix="passage: ")
    files = resolve(path=tiny_models.embedder, kind="embedder", spec=spec)
    cls = Embedder(files)
    doc, query = cls.embed(["pizza"]), cls.embed_query(["pizza"])
    assert not np.allclose(doc, query)  # different prefixes
    assert not np.allclose(cls.embed(["pizza"]), embedder.embed(["pizza"]))  # CLS != mean
    plain = resolve(path=tiny_models.embedder, kind="embedder",
                    spec=folder_spec(tiny_models.embedder, kind="embedder", pooling="cls"))
    assert np.allclose(Embedder(plain).embed(["passage: pizza"]), doc, atol=1e-6)


@pytest.mark.parametrize("bad", ["just a string", [1, 2], None, [b"bytes"]])
def test_bad_input(embedder, reranker, bad):
    with pytest.raises(InvalidInputError):
        embedder.embed(bad)
    with pytest.raises(InvalidInputError):
        reranker.score("query", bad)


def test_a_corrupt_model_file_is_a_model_error(tmp_path, tiny_models):
    import shutil

    folder = tmp_path / "broken"
    shutil.copytree(tiny_models.embedder, folder)
    (folder / "model.onnx").write_bytes(os.urandom(4096))
    with pytest.raises(ModelError, match="model.onnx"):
        localmem.load_embedder(path=folder).embed(["hello"])


def test_threads_share_one_embedder(embedder):
    import threading

    batch = ["hello town", "pizza today", "você pedido hoje"]
    expected = embedder.embed(batch)
    errors, results = [], []

    def work():
        try:
            for _ in range(20):
                results.append(embedder.embed(batch))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and len(results) == 80
    assert all(np.abs(r - expected).max() < 1e-5 for r in results)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_loads_its_own_session(embedder):
    expected = embedder.embed(["hello town"])
    parent_session = embedder._model.get()[0]
    pid = os.fork()
    if pid == 0:  # child
        try:
            got = embedder.embed(["hello town"])
            ok = np.abs(got - expected).max() < 1e-5 and embedder._model.get()[0] is not parent_session
            os._exit(0 if ok else 1)
        except BaseException:
            os._exit(2)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert np.abs(embedder.embed(["hello town"]) - expected).max() < 1e-5


# -- cross-encoder --------------------------------------------------------------------------

def test_scores_are_sigmoid_of_logits_in_input_order(reranker):
    docs = ["pizza today", "hello town", "zebra weather cancel order", "x"]
    logits = reranker.logits("best pizza", docs)
    scores = reranker.score("best pizza", docs)
    assert logits.dtype == scores.dtype == np.float32 and logits.shape == (4,)
    assert np.all((scores > 0) & (scores < 1))
    assert np.allclose(scores, 1 / (1 + np.exp(-logits.astype(np.float64))), atol=1e-6)
    assert len(set(np.round(logits, 4))) > 1  # the model tells documents apart
    assert reranker.score("q", []).shape == (0,)


@quick
@given(docs=texts, query=st.sampled_from(WORDS), data=st.data(), size=st.integers(1, 5))
def test_scores_do_not_depend_on_batch_size_or_order(tiny_models, reranker, docs, query, data, size):
    together = reranker.logits(query, docs)
    small = localmem.load_reranker(path=tiny_models.cross_encoder, batch_size=size).logits(query, docs)
    assert np.abs(together - small).max() < 1e-4
    order = data.draw(st.permutations(range(len(docs))))
    shuffled = reranker.logits(query, [docs[i] for i in order])
    assert np.abs(together[list(order)] - shuffled).max() < 1e-4


def test_pairs_use_segment_ids_and_truncate_longest_first(reranker):
    _, tokenizer, _ = reranker._model.get()
    long_doc = " ".join(WORDS * 50)
    pair = tokenizer.encode("best pizza", long_doc)
    assert len(pair.ids) == reranker.spec.max_length  # cut to the model's max length
    assert pair.type_ids[:4] == [0, 0, 0, 0] and pair.type_ids[-1] == 1
    assert pair.tokens[0] == "[CLS]" and pair.tokens[-1] == "[SEP]"
    query_tokens = [t for t, s in zip(pair.tokens, pair.type_ids, strict=True) if s == 0]
    assert query_tokens == ["[CLS]", "best", "pizza", "[SEP]"]  # the short side is kept whole
