"""The contract, part 1: storing and reading messages back.

Every test here runs against each backend (``target``); each uses the public API only
(``Memory`` and what it returns or raises), so passing means the same thing on both.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from localmem import ClosedError, InvalidInputError, Message, Strategy

UTC = timezone.utc
T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
OK = {"conversation_id": "c1", "owner_id": "u1"}


def contents(messages) -> list[str]:
    return [m.content for m in messages]


# -- round trips ----------------------------------------------------------------------------


def test_a_message_round_trips_every_field(mem):
    text = "Olá! 😀 coração — ünïcödé 漢字\nsecond line\ttab \"quoted\" \\ {json}"
    meta = {"channel": "web", "n": [1, 2.5, None, True, -3], "deep": {"a.b": "ç", "empty": {}}, "big": 10**30}
    when = datetime(2024, 5, 1, 9, 30, 0, 123456, tzinfo=timezone(timedelta(hours=-3)))
    stored = mem.add("assistant", text, conversation_id="conversa ç", owner_id="dono 👤", feature="chat",
                     msg_id="m-1 é", metadata=meta, created_at=when)
    assert isinstance(stored, Message)
    for got in (stored, mem.get("m-1 é"), *mem.messages(conversation_id="conversa ç", owner_id="dono 👤")):
        assert (got.msg_id, got.role, got.content) == ("m-1 é", "assistant", text)
        assert (got.conversation_id, got.owner_id, got.feature) == ("conversa ç", "dono 👤", "chat")
        assert got.metadata == meta
        # The same instant, handed back in UTC.
        assert got.created_at == when and got.created_at.utcoffset() == timedelta(0)
        assert got.created_at.hour == 12 and got.created_at.microsecond == 123456


def test_defaults_generated_id_no_feature_no_metadata_and_now(mem):
    before = datetime.now(UTC)
    first = mem.add("user", "hello", **OK)
    second = mem.add("user", "hello", **OK)  # same text, no msg_id: another message
    after = datetime.now(UTC)
    assert first.msg_id != second.msg_id and first.msg_id and second.msg_id
    assert first.feature is None and first.metadata is None
    assert first.created_at.tzinfo is not None and first.created_at.utcoffset() == timedelta(0)
    assert before - timedelta(seconds=1) <= first.created_at <= after + timedelta(seconds=1)
    assert mem.get(first.msg_id) == first and mem.get(second.msg_id) == second
    assert mem.get("no-such-id") is None
    assert mem.stats()["messages"] == 2


def test_a_naive_datetime_is_rejected_and_nothing_is_written(mem):
    with pytest.raises(InvalidInputError, match="naive"):
        mem.add("user", "hi", created_at=datetime(2024, 1, 1), msg_id="naive", **OK)
    with pytest.raises(InvalidInputError):
        mem.add_many([{"role": "user", "content": "hi", "created_at": datetime(2024, 1, 1)}], **OK)
    assert mem.get("naive") is None and mem.messages(**OK) == ()
    assert mem.stats()["messages"] == 0


def test_the_edges_of_the_calendar_round_trip(mem):
    earliest = datetime(1, 1, 1, tzinfo=UTC)
    latest = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=UTC)
    for n, when in enumerate((latest, earliest)):
        mem.add("user", f"edge {n}", created_at=when, msg_id=f"e{n}", **OK)
    assert mem.get("e0").created_at == latest and mem.get("e1").created_at == earliest
    assert contents(mem.messages(**OK)) == ["edge 1", "edge 0"]


def test_messages_are_ordered_by_created_at_then_insertion(mem):
    mem.add("user", "second", created_at=T0 + timedelta(hours=1), **OK)
    mem.add("user", "first", created_at=T0, **OK)
    for n in range(3):  # the same instant: the order they were stored in
        mem.add("assistant", f"tie {n}", created_at=T0 + timedelta(hours=2), **OK)
    mem.add("user", "between", created_at=T0 + timedelta(minutes=30), **OK)  # backdated
    mem.add("user", "elsewhere", conversation_id="c2", owner_id="u1", created_at=T0)
    mem.add("user", "someone else's", conversation_id="c1", owner_id="u2", created_at=T0)
    expected = ["first", "between", "second", "tie 0", "tie 1", "tie 2"]
    assert contents(mem.messages(**OK)) == expected
    got = mem.get_memory(Strategy.RECENT_HISTORY, **OK, limit=100, lookback_days=None)
    assert contents(got.messages) == expected
    assert mem.messages(conversation_id="unknown", owner_id="u1") == ()


def test_conversations_lists_the_owners_conversations_sorted(mem):
    for conversation in ("b", "a", "c", "a"):
        mem.add("user", "hi", conversation_id=conversation, owner_id="u1")
    mem.add("user", "hi", conversation_id="z", owner_id="u2")
    assert mem.conversations("u1") == ("a", "b", "c")
    assert mem.conversations("u2") == ("z",)
    assert mem.conversations("nobody") == ()


# -- idempotency by msg_id -------------------------------------------------------------------


def test_a_retry_with_the_same_fields_returns_the_stored_message_and_adds_nothing(mem):
    fields = {"metadata": {"a": 1}, "feature": "f", "created_at": T0, **OK}
    first = mem.add("user", "hello", msg_id="m-1", **fields)
    assert mem.add("user", "hello", msg_id="m-1", **fields) == first
    # Without created_at the retry cannot know the stored time: the stored one stands.
    assert mem.add("user", "hello", msg_id="m-1", **{k: v for k, v in fields.items() if k != "created_at"}) == first
    assert mem.stats()["messages"] == 1 and len(mem.messages(**OK)) == 1


@pytest.mark.parametrize("change", [
    {"content": "hello!"}, {"role": "assistant"}, {"metadata": {"a": 2}}, {"metadata": None},
    {"conversation_id": "c2"}, {"owner_id": "u2"}, {"feature": "g"},
    {"created_at": T0 + timedelta(microseconds=1)},
], ids=lambda change: "-".join(change))
def test_the_same_msg_id_with_other_fields_is_refused(mem, change):
    base = {"role": "user", "content": "hello", "metadata": {"a": 1}, "feature": "f", "created_at": T0, **OK}
    first = mem.add(base.pop("role"), base.pop("content"), msg_id="m-1", **base)
    fields = {"role": "user", "content": "hello", "metadata": {"a": 1}, "feature": "f", "created_at": T0,
              **OK, **change}
    with pytest.raises(InvalidInputError, match="already exists"):
        mem.add(fields.pop("role"), fields.pop("content"), msg_id="m-1", **fields)
    assert mem.get("m-1") == first and mem.stats()["messages"] == 1


def test_add_many_counts_new_messages_and_fills_in_ids(mem):
    items = [{"role": "user", "content": f"m{i}", "msg_id": f"id{i}", "created_at": T0 + timedelta(minutes=i)}
             for i in range(5)]
    items.append({"role": "assistant", "content": "own ids", "conversation_id": "c2", "owner_id": "u2",
                  "created_at": T0})
    assert mem.add_many(items, chunk_size=2, **OK) == 6
    assert contents(mem.messages(**OK)) == [f"m{i}" for i in range(5)]
    assert contents(mem.messages(conversation_id="c2", owner_id="u2")) == ["own ids"]
    # Re-running it adds again only the item without a msg_id (it has no identity to retry).
    assert mem.add_many(items, chunk_size=4, **OK) == 1
    assert contents(mem.messages(**OK)) == [f"m{i}" for i in range(5)]
    assert contents(mem.messages(conversation_id="c2", owner_id="u2")) == ["own ids", "own ids"]
    assert mem.stats()["messages"] == 7
    assert mem.add_many(iter(()), **OK) == 0


def test_add_many_duplicates_inside_one_chunk(mem):
    same = [{"role": "user", "content": "a", "msg_id": "x"}, {"role": "user", "content": "a", "msg_id": "x"}]
    assert mem.add_many(same, **OK) == 1  # an identical retry inside the chunk is fine
    clash = [{"role": "user", "content": "b", "msg_id": "y"}, {"role": "user", "content": "c", "msg_id": "y"}]
    with pytest.raises(InvalidInputError, match="already exists"):
        mem.add_many(clash, **OK)
    assert mem.get("y") is None
    assert contents(mem.messages(**OK)) == ["a"]


def test_add_many_writes_a_conflicting_chunk_not_at_all(mem):
    mem.add("user", "stored before", msg_id="taken", created_at=T0, **OK)
    items = [{"role": "user", "content": f"m{i}", "msg_id": f"id{i}", "created_at": T0 + timedelta(minutes=i + 1)}
             for i in range(6)]
    items[4] = {"role": "user", "content": "not what is stored", "msg_id": "taken", "created_at": T0}
    with pytest.raises(InvalidInputError, match="already exists"):
        mem.add_many(items, chunk_size=3, **OK)
    # chunk 0-2 committed; chunk 3-5 (holding the clash) not at all, not even its good items
    assert contents(mem.messages(**OK)) == ["stored before", "m0", "m1", "m2"]
    assert mem.get("id3") is None and mem.get("id5") is None
    assert mem.get("taken").content == "stored before"


def test_add_many_bad_item_names_its_index_and_leaves_its_chunk_unwritten(mem):
    items = [{"role": "user", "content": f"m{i}"} for i in range(6)]
    items[4]["role"] = "robot"
    with pytest.raises(InvalidInputError, match="item 4"):
        mem.add_many(items, chunk_size=3, **OK)
    assert contents(mem.messages(**OK)) == ["m0", "m1", "m2"]


# -- validation ------------------------------------------------------------------------------

BAD_ADD = {
    "unknown role": (("robot", "hi"), {}),
    "empty content": (("user", ""), {}),
    "whitespace content": (("user", " \t\n"), {}),
    "NUL in content": (("user", "a\x00b"), {}),
    "lone surrogate": (("user", "a\ud800b"), {}),
    "too large": (("user", "é" * 33), {}),  # 66 bytes of UTF-8 > max_content_bytes=64
    "empty conversation_id": (("user", "hi"), {"conversation_id": ""}),
    "blank owner_id": (("user", "hi"), {"owner_id": "  "}),
    "msg_id too long": (("user", "hi"), {"msg_id": "m" * 256}),
    "empty feature": (("user", "hi"), {"feature": ""}),
    "metadata key": (("user", "hi"), {"metadata": {"a'); DROP TABLE messages;--": 1}}),
    "metadata NaN": (("user", "hi"), {"metadata": {"a": float("nan")}}),
    "created_at str": (("user", "hi"), {"created_at": "2024-01-01T00:00:00Z"}),
}


@pytest.mark.parametrize("case", list(BAD_ADD))
def test_bad_input_raises_invalid_input_and_writes_nothing(target, open_memory, case):
    args, overrides = BAD_ADD[case]
    mem = open_memory(target, embed="sync", max_content_bytes=64)
    mem.add("user", "already here", msg_id="kept", **OK)
    before = mem.stats()
    with pytest.raises(InvalidInputError) as info:
        mem.add(*args, **{**OK, "msg_id": "new", **overrides})
    assert isinstance(info.value, ValueError)
    with pytest.raises(InvalidInputError):
        mem.add_many([{"role": "user", "content": "fine", "msg_id": "fine"},
                      {"role": args[0], "content": args[1], **OK, **overrides}], **OK)
    assert mem.stats() == before
    assert mem.get("new") is None and mem.get("fine") is None
    assert contents(mem.messages(**OK)) == ["already here"]


@pytest.mark.parametrize("call", [
    lambda m: m.get(""),
    lambda m: m.messages(conversation_id="", owner_id="u1"),
    lambda m: m.conversations(" "),
    lambda m: m.get_memory("telepathy", **OK),
    lambda m: m.get_memory(Strategy.RECENT_HISTORY, **OK, limit=0),
    lambda m: m.get_memory(Strategy.RECENT_HISTORY, **OK, lookback_days=-1),
    lambda m: m.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="x", keyword=False, dense=False),
    lambda m: m.forget(),
], ids=["get", "messages", "conversations", "strategy", "limit", "lookback", "nothing-to-search", "forget"])
def test_bad_read_arguments_raise_invalid_input(mem, call):
    mem.add("user", "hi", **OK)
    with pytest.raises(InvalidInputError):
        call(mem)
    assert contents(mem.messages(**OK)) == ["hi"]


# -- lifecycle of the Memory itself ----------------------------------------------------------


def test_a_closed_memory_raises_closed_error(target, open_memory, tmp_path):
    mem = open_memory(target, embed="sync")
    stored = mem.add("user", "hi", **OK)
    with mem:  # a context manager that closes on exit
        assert not mem.closed
    assert mem.closed
    mem.close()  # idempotent
    for call in (
        lambda: mem.add("user", "again", **OK),
        lambda: mem.add_many([{"role": "user", "content": "again"}], **OK),
        lambda: mem.get(stored.msg_id),
        lambda: mem.messages(**OK),
        lambda: mem.conversations("u1"),
        lambda: mem.get_memory(Strategy.RECENT_HISTORY, **OK),
        lambda: mem.get_memory(Strategy.SEMANTIC_SEARCH, query="hi", **OK),
        lambda: mem.delete(stored.msg_id),
        lambda: mem.forget(owner_id="u1"),
        lambda: mem.export(tmp_path / "out.jsonl"),
        lambda: mem.stats(),
        lambda: mem.flush(),
    ):
        with pytest.raises(ClosedError):
            call()
    with open_memory(target) as again:  # nothing was lost by closing
        assert again.get(stored.msg_id) == stored


def test_stats_counts_messages_conversations_owners_and_vectors(target, open_memory):
    mem = open_memory(target, embed="off")
    empty = mem.stats()
    assert (empty["messages"], empty["conversations"], empty["owners"]) == (0, 0, 0)
    assert (empty["vectors"], empty["pending_vectors"], empty["embedder"]) == (0, 0, None)
    mem.add_many([{"role": "user", "content": f"m{i}", "conversation_id": f"c{i % 3}", "owner_id": f"u{i % 2}"}
                  for i in range(7)])
    stats = mem.stats()
    # (u0: c0 c1 c2; u1: c0 c1 c2) from m0..m6
    assert (stats["messages"], stats["conversations"], stats["owners"]) == (7, 6, 2)
    assert (stats["vectors"], stats["pending_vectors"]) == (0, 7)  # embed="off": all queued
    mem.close()
    mem = open_memory(target)  # embedding on: the queue is worked off
    mem.flush(timeout=60)
    stats = mem.stats()
    assert (stats["messages"], stats["vectors"], stats["pending_vectors"]) == (7, 7, 0)
    assert stats["embedder"]["name"] == "test-hash-embedder" and stats["embedder"]["dim"] == 64
