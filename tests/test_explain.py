"""The explain view: before, after, filtered, summary; it matches what get_memory
answers, and neither reads nor writes the query cache."""

from __future__ import annotations

import pytest
from hash_embedder import HashEmbedder
from real_model import needs_minilm
from test_rerank import IDS, TEXTS, WordScorer, ask, open_memory

from localmem import InvalidInputError, Memory, Strategy
from localmem.explain import BELOW_FLOOR, BELOW_THRESHOLD, KEPT


def explain(mem, **options):
    options = {"query": "what did we see on the beach trip?", "limit": 3, **IDS, **options}
    return mem.explain(Strategy.SEMANTIC_SEARCH, **options)


def test_it_shows_what_get_memory_answers_and_how(db_path):
    with open_memory(db_path, WordScorer()) as mem:
        answer = ask(mem, limit=5)
        e = explain(mem, limit=5)
        assert [c.msg_id for c in e.after] == [m.msg_id for m in answer.messages]
        assert len(e.before) == len(TEXTS) and [c.first_rank for c in e.before] == list(range(1, 6))
        top = e.after[0]
        assert top.content == "we saw dolphins near the shore" and top.rerank_score == 0.9
        assert top.moved == top.first_rank - 1 > 0
        assert {c.fate for c in e.filtered} == {BELOW_THRESHOLD}
        assert len(e.filtered) == e.stages.below_threshold == 2
        assert all(c.fate == KEPT for c in e.after)
        text = e.render()
        for part in ("before (the first stage", "after (the answer", "filtered", "summary: 3 in the answer",
                     f"was #{top.first_rank}", "below the rerank threshold: rerank score 0.200 < 0.5"):
            assert part in text, part


def test_it_names_what_the_floor_dropped(db_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:
        for text in TEXTS:
            mem.add("user", text, **IDS)
        e = explain(mem, query="dolphins", keyword=False, min_relevance=0.3, limit=5)
    assert [c.content for c in e.after] == ["we saw dolphins near the shore"]
    assert {c.fate for c in e.filtered} == {BELOW_FLOOR} and len(e.filtered) == 4
    assert "below the relevance floor: cosine" in e.render() and "< 0.3, no keyword match" in e.render()


def test_it_bypasses_the_query_cache(db_path):
    with open_memory(db_path, WordScorer()) as mem:
        explain(mem)
        assert not ask(mem).cache_hit  # explain wrote nothing
        e = explain(mem)  # and read nothing: its stages are its own
        assert e.stages is not None and e.stages.reranked == len(TEXTS)


def test_only_searching_strategies(db_path):
    with Memory(db_path, embedder=HashEmbedder()) as mem, pytest.raises(InvalidInputError, match="searches"):
        mem.explain(Strategy.RECENT_HISTORY, **IDS)


@needs_minilm  # the CLI searches with the recorded (default) model
def test_cli_search_explain(run, db_path, tiny_models):
    for text in TEXTS:
        assert run("--db", str(db_path), "add", "--conversation", "c", "--owner", "u", text)[0] == 0
    code, out, err = run("--db", str(db_path), "search", "--conversation", "c", "--owner", "u",
                         "--strategy", "semantic_search", "--reranker", str(tiny_models.cross_encoder),
                         "--rerank-threshold", "none", "--min-relevance", "none", "--explain", "beach trip")
    assert code == 0, err
    assert out.startswith("explain: semantic_search, query 'beach trip', limit 10")
    assert "reranked (threshold none)" in out and "summary: 5 in the answer" in out
    code, out, err = run("--db", str(db_path), "search", "--conversation", "c", "--owner", "u",
                         "--min-relevance", "high", "beach trip")
    assert code == 1 and "--min-relevance must be a number" in err
