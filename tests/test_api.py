import dataclasses
from datetime import datetime, timedelta, timezone

import pytest

import localmem
from localmem import (
    InvalidInputError,
    MemoryResult,
    Message,
    RetrievedMessage,
    Strategy,
)

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


def test_messages_are_the_whole_conversation_oldest_first(mem):
    t = datetime(2024, 5, 1, tzinfo=timezone.utc)
    mem.add("user", "second", conversation_id="c", owner_id="u", created_at=t + timedelta(hours=1))
    mem.add("user", "first", conversation_id="c", owner_id="u", created_at=t)
    for n in range(3):  # the same instant: stored order
        mem.add("assistant", f"tie {n}", conversation_id="c", owner_id="u", created_at=t + timedelta(hours=2))
    mem.add("user", "elsewhere", conversation_id="other", owner_id="u")
    mem.add("user", "someone else's", conversation_id="c", owner_id="v")
    got = mem.messages(conversation_id="c", owner_id="u")
    assert [m.content for m in got] == ["first", "second", "tie 0", "tie 1", "tie 2"]
    assert all(isinstance(m, Message) for m in got)
    assert mem.messages(conversation_id="nobody", owner_id="u") == ()


def test_conversations_lists_an_owners_conversations_that_hold_messages(mem):
    for conversation in ("b", "a", "c"):
        mem.add("user", "hi", conversation_id=conversation, owner_id="u")
    mem.add("user", "hi", conversation_id="z", owner_id="v")
    assert mem.conversations("u") == ("a", "b", "c")
    mem.forget(owner_id="u", conversation_id="b")
    assert mem.conversations("u") == ("a", "c")
    only = mem.messages(conversation_id="c", owner_id="u")[0]
    assert mem.delete(only.msg_id)
    assert mem.conversations("u") == ("a",)
    assert mem.conversations("nobody") == ()


@pytest.mark.parametrize("call", [
    lambda m: m.messages(conversation_id="", owner_id="u"),
    lambda m: m.messages(conversation_id="c", owner_id=None),
    lambda m: m.conversations(" "),
    lambda m: m.conversations(7),
])
def test_messages_and_conversations_check_their_ids(mem, call):
    with pytest.raises(InvalidInputError):
        call(mem)
