"""Memory(metrics=True): what a Memory records (queries by strategy and cache hit, auto
choices, errors by operation, the embedding cache and model time, reranks, messages added,
active conversations), metrics_text() and `localmem metrics`; and nothing when off."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from hash_embedder import HashEmbedder

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is the optional [metrics] extra"
)

from localmem import InvalidInputError, Memory, Strategy, StrategyUnavailableError


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for f in parser.text_string_to_metric_families(text) for s in f.samples}


class Reverser:
    """A reranker preferring later texts: it reorders every answer."""

    name = "reverser"

    def score(self, query, texts):
        return np.linspace(0.6, 1.0, num=len(texts))


def test_a_memory_records_its_calls(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync", metrics=True,
                reranker=Reverser()) as mem:
        mem.add("user", "pizza napoletana with basil", conversation_id="c", owner_id="u")
        mem.add_many([{"role": "user", "content": f"pizza number {i}", "conversation_id": "c", "owner_id": "u"}
                      for i in range(4)])
        mem.get_memory("recent_history", conversation_id="c", owner_id="u")
        mem.get_memory("semantic_search", query="pizza basil", conversation_id="c", owner_id="u")
        mem.get_memory("semantic_search", query="pizza basil", conversation_id="c", owner_id="u")  # cached
        mem.get_memory("auto", query="oi, tudo bem?", conversation_id="c", owner_id="u")
        with pytest.raises(InvalidInputError):
            mem.get_memory("recent_history", conversation_id="", owner_id="u")
        got = samples(mem.metrics_text())
    assert got[("localmem_messages_added_total", ())] == 5
    assert got[("localmem_queries_total", (("cache_hit", "false"), ("strategy", "recent_history")))] == 1
    assert got[("localmem_queries_total", (("cache_hit", "false"), ("strategy", "semantic_search")))] == 1
    assert got[("localmem_queries_total", (("cache_hit", "true"), ("strategy", "semantic_search")))] == 1
    assert got[("localmem_auto_selections_total", (("strategy", "session_only"),))] == 1
    assert got[("localmem_errors_total", (("error_type", "InvalidInputError"), ("operation", "get_memory")))] == 1
    assert got[("localmem_query_duration_seconds_count", (("strategy", "semantic_search"),))] == 2
    assert got[("localmem_rerank_duration_seconds_count", ())] == 1  # the cached answer ran no reranker
    assert got[("localmem_rerank_rank_changes_count", ())] == 1
    assert got[("localmem_rerank_rank_changes_sum", ())] >= 2  # the reverser moved them
    assert got[("localmem_embedding_cache_misses_total", ())] >= 6  # 5 messages + the query
    assert got[("localmem_embedding_duration_seconds_count", ())] >= 2
    assert got[("localmem_active_conversations", ())] == 1
    assert not any(label in ("owner_id", "conversation_id", "owner") for _, labels in got for label, _ in labels)


def test_metrics_are_off_by_default(mem):
    with pytest.raises(StrategyUnavailableError, match="metrics=True"):
        mem.metrics_text()
    assert mem._metrics is None and mem._embedding.observe is None


def test_cli_metrics(tmp_path, run):
    db = str(tmp_path / "m.db")
    with Memory(db, embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
    code, out, err = run("--db", db, "metrics")
    assert code == 0, err
    assert samples(out)[("localmem_active_conversations", ())] == 1


def test_structured_events(tmp_path, caplog):
    with caplog.at_level(logging.DEBUG, logger="localmem"), \
            Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync", reranker=Reverser()) as mem:
        mem.add("user", "pizza napoletana", conversation_id="c", owner_id="u")
        mem.get_memory("auto", query="what did I just say?", conversation_id="c", owner_id="u")
        mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", conversation_id="c", owner_id="u")
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "localmem.memory"]
    assert {"message_added", "strategy_auto_selected", "strategy_used", "cache_miss", "rerank_done"} <= set(events)


def test_retries_are_not_counted_as_added_and_bad_input_is_an_error(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", metrics=True) as mem:
        for _ in range(3):
            mem.add("user", "hello", conversation_id="c", owner_id="u", msg_id="m-1")
        mem.add_many([{"role": "user", "content": "hello", "conversation_id": "c", "owner_id": "u",
                       "msg_id": "m-1"}])
        with pytest.raises(InvalidInputError):
            mem.add("nobody", "hello", conversation_id="c", owner_id="u")
        with pytest.raises(InvalidInputError):
            mem.add_many([{"role": "user"}])
        got = samples(mem.metrics_text())
    assert got[("localmem_messages_added_total", ())] == 1
    assert got[("localmem_errors_total", (("error_type", "InvalidInputError"), ("operation", "add")))] == 1
    assert got[("localmem_errors_total", (("error_type", "InvalidInputError"), ("operation", "add_many")))] == 1
