"""localmem.integrations.llamaindex: LocalmemChatStore, a LlamaIndex BaseChatStore.

Direct calls (the round trips of every role and kind of content, the contract with
SimpleChatStore as the reference), then through ChatMemoryBuffer and SimpleChatEngine
with MockLLM (no network: the tokenizer is str.split, sockets refuse to connect), then
the example.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from llama_index.core.base.llms.types import (
    AudioBlock,
    ChatMessage,
    DocumentBlock,
    ImageBlock,
    MessageRole,
    TextBlock,
    ThinkingBlock,
    ToolCallBlock,
)
from llama_index.core.chat_engine import SimpleChatEngine
from llama_index.core.llms import MockLLM
from llama_index.core.memory import ChatMemoryBuffer
from llama_index.core.storage.chat_store import BaseChatStore, SimpleChatStore
from real_model import needs_minilm

import localmem.validate
from localmem import Memory
from localmem.errors import InvalidInputError, LocalMemError
from localmem.integrations._messages import CARRIER_FORMAT
from localmem.integrations.llamaindex import CARRIER_KEY, LocalmemChatStore

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OWNER = "alice"


@pytest.fixture
def memory(any_backend, tmp_path):
    with Memory(any_backend, embed="off", cache_dir=tmp_path / "cache") as m:
        yield m


@pytest.fixture
def store(memory):
    return LocalmemChatStore(memory, owner_id=OWNER)


def user(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.USER, content=text)


def bot(text: str) -> ChatMessage:
    return ChatMessage(role=MessageRole.ASSISTANT, content=text)


def texts(messages: list[ChatMessage]) -> list[str | None]:
    return [m.content for m in messages]


def same_microsecond(monkeypatch) -> None:
    """Every message stored from now on gets the same created_at."""
    fixed = localmem.validate.now_us()
    monkeypatch.setattr(localmem.validate, "now_us", lambda: fixed)


# -- construction ------------------------------------------------------------------------


def test_it_is_a_base_chat_store_that_serialises_to_its_settings(store):
    assert isinstance(store, BaseChatStore)
    assert LocalmemChatStore.class_name() == "LocalmemChatStore"
    assert store.model_dump() == {"owner_id": OWNER, "class_name": "LocalmemChatStore"}
    buffer = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="c1", token_limit=100,
                                            tokenizer_fn=str.split)
    data = json.loads(json.dumps(buffer.to_dict()))  # plain JSON: no Memory inside
    assert data["chat_store"] == {"owner_id": OWNER, "class_name": "LocalmemChatStore"}
    assert data["chat_store_key"] == "c1"


@pytest.mark.parametrize("owner_id", ["", "   ", 5, None, "x" * 256])
def test_a_bad_owner_id_is_an_invalid_input_error(memory, owner_id):
    with pytest.raises(InvalidInputError, match="owner_id"):
        LocalmemChatStore(memory, owner_id=owner_id)


def test_the_memory_must_be_a_localmem_memory(tmp_path):
    with pytest.raises(InvalidInputError, match="localmem Memory"):
        LocalmemChatStore(str(tmp_path / "memory.db"), owner_id=OWNER)


# -- the mapping ---------------------------------------------------------------------------

OPENAI_CALL = {"id": "call_1", "type": "function",
               "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}

# (message, the stored role, the stored content, whether a carrier is needed)
MAPPED = {
    "user": (user("I love pizza"), "user", "I love pizza", False),
    "assistant": (bot("Noted!"), "assistant", "Noted!", False),
    "system": (ChatMessage(role="system", content="Be brief."), "system", "Be brief.", False),
    "developer": (ChatMessage(role="developer", content="Be brief."), "system", "Be brief.", True),
    "chatbot": (ChatMessage(role="chatbot", content="Hi"), "assistant", "Hi", True),
    "model": (ChatMessage(role="model", content="Hi"), "assistant", "Hi", True),
    "tool result": (
        ChatMessage(role="tool", content="22 C and sunny",
                    additional_kwargs={"tool_call_id": "call_1", "name": "get_weather"}),
        "assistant", "22 C and sunny", True,
    ),
    "function result": (ChatMessage(role="function", content='{"temp": 22}', additional_kwargs={"name": "f"}),
                        "assistant", '{"temp": 22}', True),
    "openai tool call": (
        ChatMessage(role="assistant", content="", additional_kwargs={"tool_calls": [OPENAI_CALL]}),
        "assistant", '[tool call] get_weather {"city": "Paris"}', True,
    ),
    "openai tool call, no content": (
        ChatMessage(role="assistant", additional_kwargs={"tool_calls": [OPENAI_CALL, {**OPENAI_CALL, "id": "c2"}]}),
        "assistant", '[tool call] get_weather {"city": "Paris"}\n[tool call] get_weather {"city": "Paris"}', True,
    ),
    "tool call block": (
        ChatMessage(role="assistant", blocks=[ToolCallBlock(tool_call_id="t1", tool_name="search",
                                                            tool_kwargs={"q": "porto", "n": [1, {"deep": True}]})]),
        "assistant", '[tool call] search {"n": [1, {"deep": true}], "q": "porto"}', True,
    ),
    "text and a tool call block": (
        ChatMessage(role="assistant", blocks=[TextBlock(text="Let me look."),
                                              ToolCallBlock(tool_name="search", tool_kwargs="porto")]),
        "assistant", "Let me look.", True,
    ),
    "image with text": (
        ChatMessage(role="user", blocks=[TextBlock(text="What is this?"),
                                         ImageBlock(image=b"\x89PNG\r\n\x1a\n0000", image_mimetype="image/png")]),
        "user", "What is this?", True,
    ),
    "image only": (ChatMessage(role="user", blocks=[ImageBlock(url="https://example.com/a.png")]),
                   "user", "[image]", True),
    "audio and document": (
        ChatMessage(role="user", blocks=[AudioBlock(audio=b"RIFF....", format="wav"),
                                         DocumentBlock(data=b"%PDF-1.4", title="doc.pdf")]),
        "user", "[audio] [document]", True,
    ),
    "thinking": (
        ChatMessage(role="assistant", blocks=[ThinkingBlock(content="hmm", num_tokens=3), TextBlock(text="Yes.")]),
        "assistant", "Yes.", True,
    ),
    "two text blocks": (ChatMessage(role="user", blocks=[TextBlock(text="one"), TextBlock(text="two")]),
                        "user", "one\ntwo", True),
    "additional kwargs": (
        ChatMessage(role="assistant", content="Hi", additional_kwargs={"usage": {"tokens": 3}, "note": None}),
        "assistant", "Hi", True,
    ),
    "blank text": (user("  \n "), "user", "[empty message]", True),
    "a NUL character": (user("a\x00b"), "user", "a\ufffdb", True),
    "empty text": (bot(""), "assistant", "[empty message]", True),
    "no blocks": (ChatMessage(role="user"), "user", "[empty message]", True),
}


@pytest.mark.parametrize("case", MAPPED, ids=list(MAPPED))
def test_each_kind_of_message_round_trips_and_is_stored_as_mapped(store, memory, case):
    message, role, content, carried = MAPPED[case]
    store.add_message("c1", message)
    assert store.get_messages("c1") == [message]
    [stored] = memory.messages(conversation_id="c1", owner_id=OWNER)
    assert (stored.role, stored.content) == (role, content)
    assert (stored.metadata is not None) == carried
    if carried:
        assert list(stored.metadata) == [CARRIER_KEY]


def test_the_carrier_leaves_out_the_text_the_content_already_holds(store, memory):
    long = "the forecast: " + "sunny " * 500
    message = ChatMessage(role="tool", content=long, additional_kwargs={"tool_call_id": "c"})
    store.add_message("c1", message)
    [stored] = memory.messages(conversation_id="c1", owner_id=OWNER)
    assert stored.content == long
    assert "sunny" not in stored.metadata[CARRIER_KEY]
    assert store.get_messages("c1") == [message]


def test_messages_written_by_others_read_back_as_plain_chat_messages(store, memory):
    memory.add("user", "from the CLI", conversation_id="c1", owner_id=OWNER, metadata={"channel": "cli"})
    memory.add("system", "from MCP", conversation_id="c1", owner_id=OWNER)
    assert store.get_messages("c1") == [user("from the CLI"), ChatMessage(role="system", content="from MCP")]


@pytest.mark.parametrize("value", ["1.0", "not json", '["a list"]', '{"role": "user", "blocks": []}', 7])
def test_a_callers_own_metadata_under_the_carriers_name_reads_as_a_plain_message(store, memory, value):
    memory.add("assistant", "hello", conversation_id="c1", owner_id=OWNER, metadata={CARRIER_KEY: value})
    assert store.get_messages("c1") == [ChatMessage(role="assistant", content="hello")]


@pytest.mark.parametrize("message", [None, ["a list"], {"role": "nobody", "blocks": []}])
def test_a_damaged_carrier_is_an_error_not_a_silent_plain_message(store, memory, message):
    value = json.dumps({"format": CARRIER_FORMAT, "message": message})
    memory.add("assistant", "hello", conversation_id="c1", owner_id=OWNER, metadata={CARRIER_KEY: value})
    with pytest.raises(LocalMemError, match=CARRIER_KEY):
        store.get_messages("c1")


@settings(max_examples=50, deadline=None)
@given(text=st.text(), role=st.sampled_from(list(MessageRole)))
def test_any_text_in_any_role_round_trips(tmp_path_factory, text, role):
    with Memory(tmp_path_factory.mktemp("h") / "memory.db", embed="off") as memory:
        store = LocalmemChatStore(memory, owner_id=OWNER)
        message = ChatMessage(role=role, content=text)
        store.add_message("c1", message)
        store.add_message("c1", bot("after"))
        assert store.get_messages("c1") == [message, bot("after")]


def test_a_message_localmem_cannot_store_raises_its_invalid_input_error(tmp_path):
    with Memory(tmp_path / "memory.db", embed="off", max_content_bytes=100) as memory:
        store = LocalmemChatStore(memory, owner_id=OWNER)
        with pytest.raises(InvalidInputError, match="limit is 100"):
            store.add_message("c1", user("x" * 101))
        with pytest.raises(InvalidInputError, match="at most 65536 beside the text"):  # the carrier
            store.add_message("c1", ChatMessage(role="tool", content="x", additional_kwargs={"big": "y" * 70_000}))
        assert store.get_messages("c1") == []


@pytest.mark.parametrize("key", ["", "  ", "k" * 256])
def test_a_key_that_cannot_be_a_conversation_id_is_an_invalid_input_error(store, key):
    with pytest.raises(InvalidInputError, match="conversation_id"):
        store.add_message(key, user("hi"))
    with pytest.raises(InvalidInputError, match="conversation_id"):
        store.get_messages(key)


# -- the contract (SimpleChatStore is the reference) ----------------------------------------


def test_an_unknown_key_has_no_messages(store):
    assert store.get_messages("nothing here") == []
    assert store.get_messages("nothing here", some_kwarg=1) == []  # BaseChatStoreMemory.get passes kwargs on


def test_messages_come_back_in_the_order_added_even_within_one_microsecond(store, memory, monkeypatch):
    same_microsecond(monkeypatch)
    added = [user(f"message {i}") if i % 2 else bot(f"message {i}") for i in range(12)]
    for m in added:
        store.add_message("c1", m)
    assert len({m.created_at for m in memory.messages(conversation_id="c1", owner_id=OWNER)}) == 1
    assert store.get_messages("c1") == added


def test_keys_are_this_owners_conversations_that_hold_messages(store, memory):
    assert store.get_keys() == []
    store.add_message("b", user("1"))
    store.add_message("a", user("2"))
    memory.add("user", "by localmem", conversation_id="c", owner_id=OWNER)
    LocalmemChatStore(memory, owner_id="bob").add_message("bobs", user("3"))
    assert store.get_keys() == ["a", "b", "c"]
    store.delete_messages("b")
    store.delete_last_message("c")
    assert store.get_keys() == ["a"]
    assert LocalmemChatStore(memory, owner_id="bob").get_keys() == ["bobs"]


def reference(messages: list[ChatMessage]) -> SimpleChatStore:
    return SimpleChatStore(store={"c1": list(messages)})


def outcome(call):
    try:
        return call()
    except (IndexError, TypeError, ValueError) as exc:  # the kind of failure is compared
        return type(exc)


THREE = [user("one"), bot("two"), user("three")]


@pytest.mark.parametrize("idx", range(-5, 5))
def test_delete_message_matches_simple_chat_store(store, idx):
    simple = reference(THREE)
    store.set_messages("c1", THREE)
    assert outcome(lambda: store.delete_message("c1", idx)) == outcome(lambda: simple.delete_message("c1", idx))
    assert store.get_messages("c1") == simple.get_messages("c1")


@pytest.mark.parametrize("idx", [-4, -1, 0, 3])
def test_delete_message_of_an_unknown_key_is_none(store, idx):
    assert store.delete_message("nothing", idx) is None
    assert SimpleChatStore().delete_message("nothing", idx) is None


def test_delete_message_removes_only_that_stored_message(store, memory):
    store.set_messages("c1", THREE)
    ids = [m.msg_id for m in memory.messages(conversation_id="c1", owner_id=OWNER)]
    assert store.delete_message("c1", 1) == bot("two")
    assert [m.msg_id for m in memory.messages(conversation_id="c1", owner_id=OWNER)] == [ids[0], ids[2]]
    assert memory.get(ids[1]) is None


def test_delete_last_message(store):
    assert store.delete_last_message("c1") is None
    store.set_messages("c1", THREE)
    assert store.delete_last_message("c1") == user("three")
    assert store.delete_last_message("c1") == bot("two")
    assert store.get_messages("c1") == [user("one")]
    assert store.delete_last_message("c1") == user("one")
    assert store.delete_last_message("c1") is None
    assert store.get_keys() == []


def test_delete_messages_forgets_the_conversation_and_returns_it(store, memory):
    assert store.delete_messages("c1") is None
    store.set_messages("c1", THREE)
    store.add_message("other", user("stays"))
    assert store.delete_messages("c1") == THREE
    assert memory.messages(conversation_id="c1", owner_id=OWNER) == ()
    assert store.get_messages("other") == [user("stays")]
    assert store.delete_messages("c1") is None


@pytest.mark.parametrize("one_microsecond", [False, True], ids=["distinct times", "one microsecond"])
@pytest.mark.parametrize("idx", range(-5, 6))
def test_add_message_at_an_index_matches_simple_chat_store(store, memory, monkeypatch, idx, one_microsecond):
    if one_microsecond:
        same_microsecond(monkeypatch)
    simple = reference(THREE)
    store.set_messages("c1", THREE)
    before = {m.content: m.msg_id for m in memory.messages(conversation_id="c1", owner_id=OWNER)}
    store.add_message("c1", bot("new"), idx=idx)
    simple.add_message("c1", bot("new"), idx=idx)
    assert store.get_messages("c1") == simple.get_messages("c1")
    after = {m.content: m.msg_id for m in memory.messages(conversation_id="c1", owner_id=OWNER)}
    assert {k: after[k] for k in before} == before  # moved messages keep their msg_id


def test_add_message_idx_must_be_an_int(store):
    with pytest.raises(InvalidInputError, match="idx"):
        store.add_message("c1", user("x"), idx="1")
    assert store.get_messages("c1") == []


def stored_ids(memory, key="c1"):
    return [m.msg_id for m in memory.messages(conversation_id=key, owner_id=OWNER)]


def test_set_messages_on_a_new_key_stores_them(store):
    store.set_messages("c1", THREE)
    assert store.get_messages("c1") == THREE


def test_set_messages_with_more_messages_only_appends(store, memory):
    store.set_messages("c1", THREE)
    ids = stored_ids(memory)
    longer = [*THREE, bot("four"), user("five")]
    store.set_messages("c1", longer)
    assert store.get_messages("c1") == longer
    assert stored_ids(memory)[:3] == ids


def test_set_messages_with_fewer_messages_keeps_the_prefix(store, memory):
    store.set_messages("c1", THREE)
    ids = stored_ids(memory)
    store.set_messages("c1", THREE[:1])
    assert store.get_messages("c1") == THREE[:1]
    assert stored_ids(memory) == ids[:1]


def test_set_messages_replaces_from_the_first_difference(store, memory):
    store.set_messages("c1", THREE)
    ids = stored_ids(memory)
    changed = [THREE[0], bot("TWO"), user("three")]
    store.set_messages("c1", changed)
    assert store.get_messages("c1") == changed
    now = stored_ids(memory)
    assert now[0] == ids[0] and not set(now[1:]) & set(ids)


def test_set_messages_replaces_everything_and_an_empty_list_clears(store, memory):
    store.set_messages("c1", THREE)
    other = [ChatMessage(role="tool", content="x", additional_kwargs={"tool_call_id": "1"}), bot("y")]
    store.set_messages("c1", other)
    assert store.get_messages("c1") == other
    store.set_messages("c1", [])
    assert store.get_messages("c1") == [] and store.get_keys() == []


def test_set_messages_checks_every_message_before_deleting_any(tmp_path):
    with Memory(tmp_path / "memory.db", embed="off", max_content_bytes=100) as memory:
        store = LocalmemChatStore(memory, owner_id=OWNER)
        store.set_messages("c1", THREE)
        with pytest.raises(InvalidInputError, match="limit is 100"):
            store.set_messages("c1", [THREE[0], bot("fine"), user("x" * 101)])
        assert store.get_messages("c1") == THREE


def test_two_stores_over_the_same_file_see_each_others_writes(tmp_path):
    path = tmp_path / "memory.db"
    with Memory(path, embed="off") as one, Memory(path, embed="off") as two:
        a, b = LocalmemChatStore(one, owner_id=OWNER), LocalmemChatStore(two, owner_id=OWNER)
        a.add_message("c1", user("from a"))
        b.add_message("c1", bot("from b"))
        assert a.get_messages("c1") == b.get_messages("c1") == [user("from a"), bot("from b")]
        assert b.delete_last_message("c1") == bot("from b")
        assert a.get_messages("c1") == [user("from a")]
        b.delete_messages("c1")
        assert a.get_keys() == []


async def test_the_async_methods_give_the_same_results(store):
    def script_sync():
        store.set_messages("s", THREE)
        store.add_message("s", bot("four"))
        store.add_message("s", user("zero"), idx=0)
        return [store.get_messages("s"), store.delete_message("s", 1), store.delete_message("s", 9),
                store.delete_last_message("s"), store.get_messages("s"), store.delete_messages("s"),
                store.delete_messages("s"), store.delete_last_message("s"), store.get_keys()]

    async def script_async():
        await store.aset_messages("a", THREE)
        await store.async_add_message("a", bot("four"))
        await store.async_add_message("a", user("zero"), idx=0)
        return [await store.aget_messages("a", extra=1), await store.adelete_message("a", 1),
                await store.adelete_message("a", 9), await store.adelete_last_message("a"),
                await store.aget_messages("a"), await store.adelete_messages("a"),
                await store.adelete_messages("a"), await store.adelete_last_message("a"), await store.aget_keys()]

    expected = script_sync()
    assert expected[0] == [user("zero"), *THREE, bot("four")]  # (the script does something)
    assert await script_async() == expected
    await store.aset_messages("k", THREE)
    assert await store.aget_keys() == ["k"]


async def test_async_errors_propagate(store):
    with pytest.raises(InvalidInputError):
        await store.async_add_message("", user("x"))


# -- through LlamaIndex: ChatMemoryBuffer + SimpleChatEngine -------------------------------


@pytest.fixture
def no_network(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError(f"network use: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def engine_over(memory, key="conv-1"):
    store = LocalmemChatStore(memory, owner_id=OWNER)
    buffer = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key=key, token_limit=500,
                                            tokenizer_fn=str.split)
    return store, SimpleChatEngine.from_defaults(llm=MockLLM(max_tokens=8), memory=buffer)


ANSWER = " ".join(["text"] * 8)  # MockLLM(max_tokens=8)


async def test_a_chat_engine_keeps_its_turns_in_the_store(memory, no_network):
    store, engine = engine_over(memory)
    assert engine.chat("hello there").response == ANSWER
    assert (await engine.achat("second turn")).response == ANSWER
    stream = await engine.astream_chat("third")
    assert "".join([t async for t in stream.async_response_gen()]) == ANSWER
    expected = [user("hello there"), bot(ANSWER), user("second turn"), bot(ANSWER), user("third"), bot(ANSWER)]
    assert store.get_messages("conv-1") == expected
    assert [(m.role, m.content) for m in memory.messages(conversation_id="conv-1", owner_id=OWNER)] == [
        (m.role.value, m.content) for m in expected]
    assert engine.chat_history == expected
    engine.reset()
    assert store.get_messages("conv-1") == [] and store.get_keys() == []


def test_a_new_engine_over_the_reopened_file_continues_the_conversation(tmp_path, no_network):
    path = tmp_path / "memory.db"
    with Memory(path, embed="off") as memory:
        _, engine = engine_over(memory)
        engine.chat("My sister lives in Porto.")
        engine.chat("I fly on Monday.")
    with Memory(path, embed="off") as memory:
        store, engine = engine_over(memory)
        assert texts(engine.chat_history) == ["My sister lives in Porto.", ANSWER, "I fly on Monday.", ANSWER]
        engine.chat("Where does my sister live?")
        assert texts(store.get_messages("conv-1"))[-2:] == ["Where does my sister live?", ANSWER]
        # The same file answers localmem's own search.
        found = memory.get_memory("semantic_search", query="sister Porto", conversation_id="conv-1",
                                  owner_id=OWNER, dense=False)
        assert found.messages[0].content == "My sister lives in Porto."


def test_a_buffer_built_with_a_chat_history_stores_it(store, no_network):
    buffer = ChatMemoryBuffer.from_defaults(chat_history=THREE, chat_store=store, chat_store_key="c1",
                                            token_limit=500, tokenizer_fn=str.split)
    assert store.get_messages("c1") == THREE
    buffer.put(bot("four"))
    buffer.set([*THREE, bot("four"), user("five")])
    assert buffer.get_all() == [*THREE, bot("four"), user("five")]
    # The token limit trims what the buffer gives the LLM, never what is stored.
    small = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="c1", token_limit=2,
                                           tokenizer_fn=str.split)
    assert small.get() == [user("five")]
    assert len(store.get_messages("c1")) == 5


# -- the example ---------------------------------------------------------------------------


def run_example(tmp_path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "llamaindex_memory.py"), *args], capture_output=True, text=True,
        encoding="utf-8", timeout=300, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)}, check=False,
    )
    assert done.returncode == 0, done.stderr
    # It cleans up after itself (onnxruntime's own .ses telemetry file is not ours).
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []
    return done.stdout


def check_example_output(out: str) -> None:
    assert "turn 3: 'Flights from Berlin to Lisbon cost 180 euros in May.' -> 'text text" in out
    assert "reopened: 6 messages in 'trip' of 'maya'" in out
    assert "  user: My sister Ana lives in Porto, near the Ribeira; she has a spare room.\n" in out
    assert "after one more turn: 8 messages" in out
    found = out.split("localmem get_memory(auto) ran ", 1)[1]
    assert "found: user: My sister Ana lives in Porto, near the Ribeira" in found


def test_the_example_without_a_model(tmp_path):
    check_example_output(run_example(tmp_path, "--no-model"))


@needs_minilm
def test_the_example_with_the_real_model(tmp_path):
    check_example_output(run_example(tmp_path))

