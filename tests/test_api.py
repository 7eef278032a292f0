import dataclasses

import pytest

import localmem
from localmem import MemoryResult, Message, RetrievedMessage, Strategy

PUBLIC = {
    "Memory", "Strategy", "Message", "RetrievedMessage", "MemoryResult", "SearchStages", "Selection", "StrategyStats", "StrategyUsage",
    "Context", "ConversationSummary", "SummaryPolicy", "SummaryError", "Progress", "ReadOnlyError",
    "ForgetReport", "MaintenanceReport", "MaintenanceStep", "RetentionPolicy",
    "ExportReport", "ImportReport", "BadLine",
    "LocalMemError", "InvalidInputError", "StoreError", "LockTimeoutError",
    "CorruptDatabaseError", "ModelMismatchError", "StorageFullError", "ModelError",
    "ModelNotFoundError", "StrategyUnavailableError", "ClosedError", "NotEmbeddedError", "load_embedder", "load_reranker",
}


def test_all_is_exactly_the_public_names():
    assert set(localmem.__all__) == PUBLIC
    assert len(localmem.__all__) == len(PUBLIC)
    for name in PUBLIC:
        assert hasattr(localmem, name)


def test_error_tree():
    assert issubclass(localmem.InvalidInputError, ValueError)
    for leaf in ("LockTimeoutError", "CorruptDatabaseError", "ModelMismatchError", "StorageFullError",
                 "ReadOnlyError"):
        assert issubclass(getattr(localmem, leaf), localmem.StoreError)
    for name in PUBLIC - {"Memory", "Strategy", "Message", "RetrievedMessage", "MemoryResult", "SearchStages",
                          "Selection", "StrategyStats", "StrategyUsage", "load_embedder", "load_reranker",
                          "Context", "ConversationSummary", "SummaryPolicy", "Progress",
                          "ForgetReport", "MaintenanceReport", "MaintenanceStep", "RetentionPolicy",
                          "ExportReport", "ImportReport", "BadLine"}:
        assert issubclass(getattr(localmem, name), localmem.LocalMemError)
    # Stored but not embedded is not a lock timeout, whatever caused it: a caller retrying
    # writes on LockTimeoutError must not store the message twice.
    assert not issubclass(localmem.NotEmbeddedError, (localmem.StoreError, localmem.ModelError))
    assert issubclass(localmem.ModelNotFoundError, localmem.ModelError)


def test_strategy_values_and_string_form():
    assert [s.value for s in Strategy] == [
        "session_only", "recent_history", "semantic_search", "hybrid", "cross_conversation", "auto"]
    assert Strategy("hybrid") is Strategy.HYBRID and str(Strategy.HYBRID) == "hybrid"


def test_results_are_frozen_and_hold_no_connection(mem):
    mem.add("user", "hi", conversation_id="c", owner_id="u")
    result = mem.get_memory("recent_history", conversation_id="c", owner_id="u")
    assert isinstance(result, MemoryResult) and result.strategy is Strategy.RECENT_HISTORY
    message = result.messages[0]
    assert isinstance(message, RetrievedMessage) and isinstance(message, Message)
    assert message.source == "recent" and message.score is None
    with pytest.raises(dataclasses.FrozenInstanceError):
        message.content = "changed"
    with pytest.raises(dataclasses.FrozenInstanceError):
        result.cache_hit = True
    assert result.latency_ms >= 0


def test_session_only_and_unavailable_strategies(mem):
    mem.add("user", "hi", conversation_id="c", owner_id="u")
    got = mem.get_memory(Strategy.SESSION_ONLY, conversation_id="c", owner_id="u")
    assert got.messages == () and got.context_summary.startswith("No historical context")
    for strategy in set(Strategy) - set(mem.strategies()):
        with pytest.raises(localmem.StrategyUnavailableError, match="recent_history"):
            mem.get_memory(strategy, conversation_id="c", owner_id="u", query="hi")
