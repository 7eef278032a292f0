"""The relevance floor: a query nothing answers gets an explicit empty answer, a message
with nothing in common with the query does not reach the prompt, and the floor is
switchable per Memory and per call."""

from __future__ import annotations

import math

import pytest
from hash_embedder import HashEmbedder
from real_model import needs_minilm

from localmem import InvalidInputError, Memory, Strategy

IDS = {"conversation_id": "c", "owner_id": "u"}
# Oldest first. Each message is also found by the words of the one before it (at half
# weight), so the unrelated ones come first: nothing about pizza precedes them.
TEXTS = ("the weather today is nice", "train to Porto at noon", "pizza dough recipe from Naples", "recipe")


class CalibratedEmbedder(HashEmbedder):
    """A custom embedder that declares the floor measured for it."""

    min_relevance = 0.7


def fill(mem: Memory) -> None:
    for text in TEXTS:
        mem.add("user", text, **IDS)


@pytest.fixture
def mem(db_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as m:
        fill(m)
        yield m


def contents(result) -> list[str]:
    return [m.content for m in result.messages]


def test_a_query_nothing_answers_gets_an_explicit_empty_answer(mem):
    # "today" matches BM25, but no message is close in meaning: the gate closes.
    ask = dict(query="today 15 of 240", limit=3, lookback_days=None, **IDS)
    for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.CROSS_CONVERSATION):
        floored = mem.get_memory(strategy, min_relevance=0.7, **ask)
        assert floored.messages == ()
        assert "no relevant memory: none of 4 candidates reached the relevance floor (min_relevance 0.7)" \
            in floored.context_summary
        unfloored = mem.get_memory(strategy, min_relevance=None, **ask)
        assert len(unfloored.messages) == 3  # the least bad ones, as before the floor


def test_a_keyword_match_is_evidence_a_weak_dense_neighbour_is_not(mem):
    ask = dict(query="pizza dough recipe", limit=4, **IDS)
    fused = contents(mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=0.7, **ask))
    # "recipe" is below 0.7 in cosine (1/sqrt(3)) but BM25 matched it: kept. So is the
    # train, by the words of the message after it (the keyword index's ``next`` column):
    # the turn before an answer is its context. The weather shares nothing: dropped.
    assert fused[:2] == ["pizza dough recipe from Naples", "recipe"]
    assert fused[2:] == ["train to Porto at noon"]
    dense = mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=0.7, keyword=False, **ask)
    assert contents(dense) == ["pizza dough recipe from Naples"]
    assert all(m.score >= 0.7 for m in dense.messages)
    assert len(mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=None, **ask).messages) == 4


def test_keyword_only_searches_have_no_similarity_hence_no_floor(mem):
    ask = dict(query="today 15 of 240", dense=False, **IDS)
    floored = mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=0.99, **ask)
    assert contents(floored) == contents(mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=None, **ask))
    assert "the weather today is nice" in contents(floored)


def test_hybrid_floors_its_semantic_part_only(mem):
    got = mem.get_memory(Strategy.HYBRID, query="today 15 of 240", limit=4, min_relevance=0.7, **IDS)
    assert contents(got) == list(TEXTS[2:])  # the two newest, by recency
    assert got.context_summary.startswith("Loaded 2 recent + 0 semantic messages; no relevant memory")


def test_the_memory_setting_and_the_per_call_override(db_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync", min_relevance=0.7) as mem:
        fill(mem)
        ask = dict(query="today 15 of 240", **IDS)
        assert mem.get_memory(Strategy.SEMANTIC_SEARCH, **ask).messages == ()
        assert len(mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=None, **ask).messages) == 4
        # The query cache keeps the two answers apart, and serves each again.
        again = mem.get_memory(Strategy.SEMANTIC_SEARCH, **ask)
        assert again.cache_hit and again.messages == ()
        again = mem.get_memory(Strategy.SEMANTIC_SEARCH, min_relevance=None, **ask)
        assert again.cache_hit and len(again.messages) == 4


def test_auto_is_the_floor_measured_for_the_embedder(db_path, tmp_path):
    ask = dict(query="today 15 of 240", **IDS)
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:  # not measured: no floor
        fill(mem)
        assert mem.min_relevance == "auto"
        assert len(mem.get_memory(Strategy.SEMANTIC_SEARCH, **ask).messages) == 4
    with Memory(tmp_path / "other.db", embedder=CalibratedEmbedder(), embed="sync") as mem:
        fill(mem)
        assert mem.get_memory(Strategy.SEMANTIC_SEARCH, **ask).messages == ()


@pytest.mark.parametrize("bad", ["always", 1.5, -2, math.nan, math.inf, True, [0.3]])
def test_a_bad_floor_is_refused(db_path, bad):
    with pytest.raises(InvalidInputError, match="min_relevance"):
        Memory(db_path, min_relevance=bad)
    with Memory(db_path, embedder=HashEmbedder()) as mem, pytest.raises(InvalidInputError, match="min_relevance"):
        mem.get_memory(Strategy.SEMANTIC_SEARCH, query="x", min_relevance=bad, **IDS)


def test_owners_stay_apart_under_the_floor(mem):
    mem.add("user", "pizza dough recipe for the other owner", conversation_id="c", owner_id="v")
    got = mem.get_memory(Strategy.CROSS_CONVERSATION, query="pizza dough recipe", min_relevance=0.5,
                         owner_id="u", conversation_id="c")
    assert got.messages and all(m.owner_id == "u" for m in got.messages)


@needs_minilm  # the calibrated floor of the default model
def test_the_default_model_answers_small_talk_and_arithmetic_with_nothing(db_path):
    with Memory(db_path, embed="sync") as mem:
        for text in ("I adopted a rescue dog named Biscuit last spring.",
                     "My sister is getting married in Lisbon in June.",
                     "I started learning to paint watercolours."):
            mem.add("user", text, **IDS)
        for query in ("What is 15% of 240?", "What is the capital of Australia?", "Quanto é 7 vezes 8?"):
            got = mem.get_memory(Strategy.CROSS_CONVERSATION, query=query, **IDS)
            assert got.messages == (), (query, got)
        got = mem.get_memory(Strategy.CROSS_CONVERSATION, query="what is my dog called?", **IDS)
        assert got.messages[0].content.startswith("I adopted a rescue dog")
