"""Reranking as the pipeline's fourth stage, with a deterministic scorer (no real
cross-encoder weights exist here) and with a cross-encoder of the real architecture:
it reorders, the threshold and min_keep hold, the floor and the scopes hold after it, the
query cache keeps reranked and unreranked answers apart, and a failing reranker fails
the call."""

from __future__ import annotations

import math

import pytest
from hash_embedder import HashEmbedder

import localmem
from localmem import InvalidInputError, Memory, ModelError, Strategy

IDS = {"conversation_id": "c", "owner_id": "u"}


class WordScorer:
    """Relevance 0.9 for a text holding ``word``, else 0.2; records what it was shown."""

    name = "word-scorer"

    def __init__(self, word: str = "dolphins"):
        self.word = word
        self.calls: list[tuple[str, list[str]]] = []

    def score(self, query, texts):
        self.calls.append((query, list(texts)))
        return [0.9 if self.word in t else 0.2 for t in texts]


TEXTS = (
    "we talked about the beach trip",           # shares "beach trip" with the query
    "a beach trip with the kids in July",       # shares more of it
    "we saw dolphins near the shore",           # what the scorer says answers it
    "beach trip packing list: towels",
    "beach umbrella broke on the trip",
)


def open_memory(path, scorer=None, **options):
    mem = Memory(path, embedder=HashEmbedder(), embed="sync", reranker=scorer or WordScorer(), **options)
    for text in TEXTS:
        mem.add("user", text, **IDS)
    return mem


@pytest.fixture
def scorer():
    return WordScorer()


@pytest.fixture
def mem(db_path, scorer):
    with open_memory(db_path, scorer) as m:
        yield m


def ask(mem, strategy=Strategy.SEMANTIC_SEARCH, **options):
    options = {"query": "what did we see on the beach trip?", "limit": 3, **IDS, **options}
    return mem.get_memory(strategy, **options)


def test_it_reorders_and_keeps_the_first_stage_beside_its_score(mem, scorer):
    plain = ask(mem, rerank=False)
    assert plain.messages[0].content != "we saw dolphins near the shore"
    reranked = ask(mem)
    first = reranked.messages[0]
    assert first.content == "we saw dolphins near the shore"
    assert first.rerank_score == first.score == 0.9
    assert first.first_rank > 1  # it moved up
    assert first.first_score is not None and first.first_score != first.score
    assert all(m.first_rank is not None for m in reranked.messages)
    stages = reranked.stages
    assert stages.reranked == len(TEXTS) and stages.rerank_skipped is None
    assert stages.retrieval_ms >= 0 and stages.rerank_ms >= 0
    assert len(scorer.calls) == 1 and scorer.calls[0][0] == "what did we see on the beach trip?"


def test_threshold_and_min_keep(mem):
    kept = ask(mem, limit=5)  # one passes 0.5; min_keep 3 keeps the two best others
    assert len(kept.messages) == 3 and kept.messages[0].rerank_score == 0.9
    assert kept.stages.below_threshold == len(TEXTS) - 3
    assert [m.content for m in ask(mem, limit=5, rerank_min_keep=0).messages] == ["we saw dolphins near the shore"]
    assert len(ask(mem, limit=5, rerank_threshold=None).messages) == 5
    assert len(ask(mem, limit=5, rerank_threshold=0.1).messages) == 5


def test_min_keep_never_overrides_the_relevance_floor(mem, scorer):
    got = ask(mem, query="quantum chromodynamics lecture", min_relevance=0.9, rerank_min_keep=3)
    assert got.messages == () and "no relevant memory" in got.context_summary
    assert got.stages.rerank_skipped == "no candidates" and scorer.calls == []


def test_rerank_false_skips_it_per_call(mem, scorer):
    got = ask(mem, rerank=False)
    assert scorer.calls == [] and got.stages.rerank_skipped == "no reranker"
    assert all(m.rerank_score is None for m in got.messages)


def test_it_sees_the_first_candidates_never_fewer_than_the_limit(db_path, scorer):
    with open_memory(db_path, scorer, rerank_candidates=2) as mem:
        ask(mem, limit=1)
        ask(mem, limit=4, query="beach trip, again")
    assert [len(texts) for _, texts in scorer.calls] == [2, 4]


def test_scopes_hold_after_reranking(mem):
    mem.add("user", "we saw dolphins from the ferry", conversation_id="other", owner_id="u")
    mem.add("user", "we saw dolphins too", conversation_id="c", owner_id="someone-else")
    in_conversation = ask(mem, limit=5, rerank_threshold=None)
    assert {m.conversation_id for m in in_conversation.messages} == {"c"}
    assert {m.owner_id for m in in_conversation.messages} == {"u"}
    across = ask(mem, Strategy.CROSS_CONVERSATION, limit=8, lookback_days=None, rerank_threshold=None)
    assert {m.owner_id for m in across.messages} == {"u"}
    assert "we saw dolphins from the ferry" in [m.content for m in across.messages[:2]]


def test_hybrid_reranks_its_semantic_part_only(mem):
    got = ask(mem, Strategy.HYBRID, limit=4)
    recent, semantic = got.messages[:2], got.messages[2:]
    assert [m.source for m in recent] == ["recent", "recent"] and all(m.rerank_score is None for m in recent)
    assert semantic[0].content == "we saw dolphins near the shore" and semantic[0].rerank_score == 0.9


def test_the_query_cache_never_mixes_reranked_and_unreranked(mem, scorer):
    reranked, plain = ask(mem), ask(mem, rerank=False)
    again_reranked, again_plain = ask(mem), ask(mem, rerank=False)
    assert again_reranked.cache_hit and again_plain.cache_hit
    assert again_reranked.messages == reranked.messages and again_plain.messages == plain.messages
    assert reranked.messages != plain.messages
    assert len(scorer.calls) == 1
    other = ask(mem, rerank_threshold=None)  # other settings: another answer, computed
    assert not other.cache_hit and len(scorer.calls) == 2


class Broken(WordScorer):
    def score(self, query, texts):
        raise RuntimeError("the ONNX graph is damaged")


class Wrong(WordScorer):
    def __init__(self, scores):
        super().__init__()
        self.scores = scores

    def score(self, query, texts):
        return self.scores(len(texts))


@pytest.mark.parametrize("scorer, message", [
    (Broken(), "the reranker 'word-scorer' failed: RuntimeError: the ONNX graph is damaged"),
    (Wrong(lambda n: [0.5] * (n - 1)), "one score in \\[0, 1\\] per text"),
    (Wrong(lambda n: [1.5] * n), "one score in \\[0, 1\\] per text"),
    (Wrong(lambda n: [math.nan] * n), "one score in \\[0, 1\\] per text"),
])
def test_a_failing_reranker_fails_the_call(db_path, scorer, message):
    with open_memory(db_path, scorer) as mem, pytest.raises(ModelError, match=message):
        ask(mem)


def test_a_reranker_that_cannot_load_fails_the_call(db_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync", reranker="no-such-reranker") as mem:
        mem.add("user", "hello", **IDS)
        with pytest.raises(ModelError, match="no-such-reranker"):
            ask(mem, query="hello")
        assert ask(mem, query="hello", rerank=False).messages  # per call, it can be skipped


@pytest.mark.parametrize("option, bad", [
    ("rerank_candidates", 0), ("rerank_candidates", 1.5), ("rerank_threshold", 2.0),
    ("rerank_threshold", "high"), ("rerank_min_keep", -1), ("rerank_min_keep", True),
])
def test_bad_settings_are_refused(db_path, option, bad):
    with pytest.raises(InvalidInputError, match=option):
        Memory(db_path, **{option: bad})
    if option != "rerank_candidates":
        with Memory(db_path, embedder=HashEmbedder()) as mem, pytest.raises(InvalidInputError, match=option):
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query="x", **{option: bad}, **IDS)


def test_a_cross_encoder_of_the_real_architecture_orders_the_answer(db_path, tiny_models):
    """The ONNX path end to end (random weights: the order means nothing, but it must be
    the model's own)."""
    reranker = localmem.load_reranker(path=tiny_models.cross_encoder)
    with open_memory(db_path, reranker, rerank_threshold=None) as mem:
        got = ask(mem, limit=5)
    query = "what did we see on the beach trip?"
    expected = reranker.score(query, [m.content for m in got.messages])
    assert [m.rerank_score for m in got.messages] == pytest.approx(sorted(expected, reverse=True))
    assert all(0 < m.rerank_score < 1 for m in got.messages)


def test_adaptive_skips_where_the_first_stage_is_confident_and_says_why(db_path, scorer):
    from localmem.retrieval import CONFIDENT

    with open_memory(db_path, scorer, rerank_adaptive=True) as mem:
        confident = ask(mem, query="dolphins near the shore")
        assert confident.stages.rerank_skipped == CONFIDENT and scorer.calls == []
        assert confident.messages[0].content == "we saw dolphins near the shore"
        assert all(m.rerank_score is None for m in confident.messages)
        # Dense only, no message can be first in both rankings: the reranker runs.
        dense = ask(mem, query="dolphins near the shore", keyword=False)
        assert dense.stages.rerank_skipped is None and len(scorer.calls) == 1
    with open_memory(db_path.with_name("off.db"), WordScorer()) as mem:  # off by default
        assert ask(mem, query="dolphins near the shore").stages.rerank_skipped is None
    with pytest.raises(InvalidInputError, match="rerank_adaptive"):
        Memory(db_path, rerank_adaptive="yes")


def test_a_reranker_by_name_uses_its_int8_copy_when_there_is_one(db_path, tmp_path, tiny_models, monkeypatch):
    import shutil

    from localmem.models import quantize

    folder = tmp_path / "models" / "ms-marco-MiniLM-L-6-v2"
    shutil.copytree(tiny_models.cross_encoder, folder)
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(folder.parent))
    with open_memory(db_path, "ms-marco-MiniLM-L-6-v2") as mem:
        assert mem.reranker.files.onnx_path.name == "model.onnx"  # no copy yet: fp32
        assert ask(mem).stages.reranked
    quantize(folder)
    with open_memory(db_path.with_name("int8.db"), "ms-marco-MiniLM-L-6-v2") as mem:
        assert mem.reranker.files.onnx_path.name == "model.int8.onnx"
        assert ask(mem).stages.reranked
