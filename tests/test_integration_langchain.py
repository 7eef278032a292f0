"""localmem.integrations.langchain: the chat message history (lossless round trips of
every LangChain message kind, order, all-or-nothing writes, retries, clear, async) and
the retriever (LangChain's standard retriever suite, the document fields, k, strategies,
an LCEL chain), plus examples/langchain_memory.py run as a user would.

LangChain has no standard suite for chat message histories: the contract tests here are
our own.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import uuid
from datetime import datetime
from pathlib import Path

import pytest
from hash_embedder import HashEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    AIMessageChunk,
    ChatMessage,
    FunctionMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import RunnableLambda
from langchain_tests.integration_tests import RetrieversIntegrationTests
from real_model import needs_minilm

from localmem import InvalidInputError, LocalMemError, Memory, Strategy
from localmem import validate as localmem_validate
from localmem.integrations._messages import CARRIER_FORMAT
from localmem.integrations.langchain import (
    CARRIER_KEY,
    LocalmemChatMessageHistory,
    LocalmemRetriever,
    to_localmem,
)

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
OWNER, CONV = "alice", "chat-1"


@pytest.fixture
def mem(any_backend, tmp_path):
    with Memory(any_backend, embed="off", cache_dir=tmp_path / "cache") as m:
        yield m


def history(mem: Memory, conversation_id: str = CONV, owner_id: str = OWNER) -> LocalmemChatMessageHistory:
    return LocalmemChatMessageHistory(mem, conversation_id=conversation_id, owner_id=owner_id)


# -- the history: construction -----------------------------------------------------------

@pytest.mark.parametrize("ids", [
    {"conversation_id": "", "owner_id": OWNER},
    {"conversation_id": "   ", "owner_id": OWNER},
    {"conversation_id": CONV, "owner_id": "x" * 256},
    {"conversation_id": None, "owner_id": OWNER},
    {"conversation_id": CONV, "owner_id": 7},
])
def test_bad_ids_raise_at_construction(mem, ids):
    with pytest.raises(InvalidInputError, match="conversation_id|owner_id"):
        LocalmemChatMessageHistory(mem, **ids)


def test_memory_must_be_a_memory():
    with pytest.raises(InvalidInputError, match="localmem.Memory"):
        LocalmemChatMessageHistory("m.db", conversation_id=CONV, owner_id=OWNER)  # type: ignore[arg-type]


# -- the history: round trips --------------------------------------------------------------

TOOL_CALL = {"name": "get_weather", "args": {"city": "Paris", "days": [1, 2]}, "id": "call-1", "type": "tool_call"}
KINDS = {
    "system": SystemMessage("You are terse."),
    "human": HumanMessage("hi there"),
    "human_named": HumanMessage("hi, I am Bob", name="bob"),
    "ai": AIMessage("hello!"),
    "ai_tool_calls_only": AIMessage("", tool_calls=[TOOL_CALL]),
    "ai_text_and_tool_calls": AIMessage("Let me look.", tool_calls=[TOOL_CALL]),
    "ai_invalid_tool_calls": AIMessage("", invalid_tool_calls=[
        {"name": "broken", "args": "{not json", "id": "call-2", "error": "bad json", "type": "invalid_tool_call"}]),
    "ai_everything": AIMessage(
        "done", additional_kwargs={"refusal": None, "x": {"deep": [1, {"a": "b"}]}},
        response_metadata={"model_name": "m-1", "finish_reason": "stop"},
        usage_metadata={"input_tokens": 10, "output_tokens": 3, "total_tokens": 13}, name="helper",
    ),
    "ai_blocks": AIMessage(content=[
        {"type": "text", "text": "Here is the picture: "},
        {"type": "image_url", "image_url": {"url": "https://example.org/cat.png"}},
        "and a plain string",
    ]),
    "ai_image_only": AIMessage(content=[{"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]),
    "ai_chunk": AIMessageChunk(content="partial"),
    "tool": ToolMessage("18 degrees", tool_call_id="call-1", artifact={"raw": [18.0, "C"]}, status="success"),
    "tool_error_empty": ToolMessage("", tool_call_id="call-9", status="error"),
    "chat_custom_role": ChatMessage(content="Looks right to me.", role="critic"),
    "chat_user_role": ChatMessage(content="as a chat message", role="user"),
    "function": FunctionMessage(content='{"temp": 18}', name="get_weather"),
}
# localmem role and stored content for each (what other readers of the file see).
STORED = {
    "system": ("system", "You are terse."),
    "human": ("user", "hi there"),
    "human_named": ("user", "hi, I am Bob"),
    "ai": ("assistant", "hello!"),
    "ai_tool_calls_only": ("assistant", '[tool call] get_weather {"city": "Paris", "days": [1, 2]}'),
    "ai_text_and_tool_calls": ("assistant", "Let me look."),
    "ai_invalid_tool_calls": ("assistant", "[tool call] broken {not json"),
    "ai_everything": ("assistant", "done"),
    "ai_blocks": ("assistant", "Here is the picture: and a plain string"),
    "ai_image_only": ("assistant", "[image_url]"),
    "ai_chunk": ("assistant", "partial"),
    "tool": ("assistant", "18 degrees"),
    "tool_error_empty": ("assistant", "[tool result] call-9"),
    "chat_custom_role": ("assistant", "Looks right to me."),
    "chat_user_role": ("user", "as a chat message"),
    "function": ("assistant", '{"temp": 18}'),
}
PLAIN = {"system", "human", "ai"}  # stored with no metadata at all


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_comes_back_equal_with_its_msg_id(mem, kind):
    original = KINDS[kind]
    h = history(mem)
    h.add_messages([original])
    [stored] = mem.messages(conversation_id=CONV, owner_id=OWNER)
    [back] = h.messages
    assert type(back) is type(original)
    assert back == original.model_copy(update={"id": stored.msg_id})
    assert (stored.role, stored.content) == STORED[kind]
    if kind in PLAIN:
        assert stored.metadata is None
    else:
        assert set(stored.metadata) == {CARRIER_KEY}
        wrapper = json.loads(stored.metadata[CARRIER_KEY])
        assert wrapper["format"] == CARRIER_FORMAT
        carried = wrapper["message"]
        # The text is not stored twice, nor the id (the msg_id gives it back).
        assert "id" not in carried["data"]
        assert ("content" in carried["data"]) == (original.content != stored.content)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_each_kind_with_an_id_comes_back_equal_including_the_id(mem, kind):
    original = KINDS[kind].model_copy(update={"id": f"lc-{kind}"})
    h = history(mem)
    h.add_messages([original])
    assert h.messages == [original]
    assert mem.get(f"lc-{kind}") is not None  # the id became the msg_id


def test_an_id_that_cannot_be_a_msg_id_is_kept_and_given_back(mem):
    original = HumanMessage("long id", id="i" * 300)
    h = history(mem)
    h.add_messages([original])
    [stored] = mem.messages(conversation_id=CONV, owner_id=OWNER)
    assert stored.msg_id != original.id and CARRIER_KEY in stored.metadata
    assert h.messages == [original]


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    text=st.text(alphabet=st.characters(exclude_categories=("Cs",)), max_size=200),
    kind=st.sampled_from([HumanMessage, AIMessage, SystemMessage]),
)
def test_any_text_round_trips(mem, text, kind):
    original = kind(content=text)
    h = history(mem, conversation_id=uuid.uuid4().hex)
    h.add_messages([original])
    [stored] = mem.messages(conversation_id=h.conversation_id, owner_id=OWNER)
    assert h.messages == [original.model_copy(update={"id": stored.msg_id})]
    if "\0" in text:
        assert stored.content == text.replace("\0", "\ufffd") and CARRIER_KEY in stored.metadata
    elif text.strip():
        assert stored.content == text and stored.metadata is None  # stored as it is
    else:
        assert stored.content == "[empty message]"  # a blank message is kept by the carrier


def test_nul_is_stored_as_a_replacement_character_and_read_back_as_nul(mem):
    original = AIMessage("a\0b")
    history(mem).add_messages([original])
    [stored] = mem.messages(conversation_id=CONV, owner_id=OWNER)
    assert stored.content == "a\ufffdb"
    assert history(mem).messages == [original.model_copy(update={"id": stored.msg_id})]


def test_a_lone_surrogate_is_refused_with_localmems_error(mem):
    with pytest.raises(InvalidInputError, match="surrogate"):
        history(mem).add_messages([HumanMessage("fine"), HumanMessage("bad \ud800 text")])
    assert history(mem).messages == []


def test_messages_stored_by_something_else_read_as_plain_messages(mem):
    mem.add("user", "from the CLI", conversation_id=CONV, owner_id=OWNER, msg_id="m1", metadata={"channel": "cli"})
    mem.add("assistant", "reply", conversation_id=CONV, owner_id=OWNER, msg_id="m2")
    mem.add("system", "rules", conversation_id=CONV, owner_id=OWNER, msg_id="m3")
    assert history(mem).messages == [
        HumanMessage("from the CLI", id="m1"), AIMessage("reply", id="m2"), SystemMessage("rules", id="m3"),
    ]


@pytest.mark.parametrize("value", ["1.0", "not json", "[1, 2]", '{"type": "ai", "data": {}}', 5, {"a": 1}])
def test_a_callers_own_metadata_under_the_carriers_name_is_not_a_carrier(mem, value):
    """A tag such as metadata={"langchain": "1.0"} (from the MCP server, the command line)
    must not lock the history: such a message reads as the plain message of its role."""
    mem.add("user", "x", conversation_id=CONV, owner_id=OWNER, msg_id="m1", metadata={CARRIER_KEY: value})
    assert history(mem).messages == [HumanMessage("x", id="m1")]


@pytest.mark.parametrize("message", [None, "text", {"type": 1}, {"type": "nonsense", "data": {}}])
def test_a_damaged_carrier_raises_instead_of_guessing(mem, message):
    value = json.dumps({"format": CARRIER_FORMAT, "message": message})
    mem.add("user", "x", conversation_id=CONV, owner_id=OWNER, metadata={CARRIER_KEY: value})
    with pytest.raises(LocalMemError, match=CARRIER_KEY):
        _ = history(mem).messages


# -- the history: contract -----------------------------------------------------------------

def test_empty_history(mem):
    assert history(mem).messages == []
    history(mem).clear()  # clearing nothing is fine
    history(mem).add_messages([])
    assert history(mem).messages == []


def test_add_then_read_keeps_the_order_across_calls(mem):
    h = history(mem)
    h.add_message(HumanMessage("one"))
    h.add_messages([AIMessage("two"), HumanMessage("three")])
    h.add_user_message("four")
    h.add_ai_message("five")
    assert [m.content for m in h.messages] == ["one", "two", "three", "four", "five"]


def test_one_call_keeps_its_order_within_the_same_microsecond(mem, monkeypatch):
    monkeypatch.setattr(localmem_validate, "now_us", lambda: 1_700_000_000_000_000)
    h = history(mem)
    batch = [HumanMessage(f"m{i:02}") if i % 2 else AIMessage(f"m{i:02}", name="x") for i in range(40)]
    rev = list(reversed(batch))  # not the order msg_ids or texts would sort in
    h.add_messages(rev)
    stored = mem.messages(conversation_id=CONV, owner_id=OWNER)
    assert len({m.created_at for m in stored}) == 1  # all in one microsecond
    assert [m.content for m in h.messages] == [m.content for m in rev]


def test_clear_empties_only_this_conversation(mem):
    history(mem).add_messages([HumanMessage("mine"), AIMessage("reply")])
    history(mem, conversation_id="chat-2").add_messages([HumanMessage("other chat")])
    history(mem, owner_id="bob").add_messages([HumanMessage("bob's, same conversation id")])
    history(mem).clear()
    assert history(mem).messages == []
    assert mem.messages(conversation_id=CONV, owner_id=OWNER) == ()
    assert [m.content for m in history(mem, conversation_id="chat-2").messages] == ["other chat"]
    assert [m.content for m in history(mem, owner_id="bob").messages] == ["bob's, same conversation id"]
    assert mem.conversations(OWNER) == ("chat-2",)


def test_two_histories_on_the_same_file_see_each_others_writes(tmp_path):
    path = tmp_path / "shared.db"
    with Memory(path, embed="off") as one, Memory(path, embed="off") as two:
        a, b = history(one), history(two)
        a.add_messages([HumanMessage("from a")])
        b.add_messages([AIMessage("from b", tool_calls=[TOOL_CALL])])
        assert [m.content for m in a.messages] == [m.content for m in b.messages] == ["from a", "from b"]
        assert b.messages[1].tool_calls[0]["args"] == TOOL_CALL["args"]
        b.clear()
        assert a.messages == []


def test_adding_the_same_messages_with_ids_twice_stores_them_once(mem):
    h = history(mem)
    batch = [HumanMessage("q", id="turn-1-q"), AIMessage("a", id="turn-1-a", tool_calls=[TOOL_CALL])]
    h.add_messages(batch)
    h.add_messages(batch)  # a retry after a timeout, say
    assert h.messages == batch
    h.add_messages(h.messages)  # what was read back, added again: also a retry
    assert len(mem.messages(conversation_id=CONV, owner_id=OWNER)) == 2


def test_a_different_message_under_a_stored_id_raises_and_writes_nothing(mem):
    h = history(mem)
    h.add_messages([HumanMessage("q", id="turn-1")])
    with pytest.raises(InvalidInputError, match="turn-1"):
        h.add_messages([HumanMessage("new"), HumanMessage("changed", id="turn-1")])
    assert [m.content for m in h.messages] == ["q"]


def test_a_message_over_the_size_limit_raises_and_nothing_of_the_call_is_stored(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", max_content_bytes=100) as small:
        h = history(small)
        h.add_messages([HumanMessage("kept")])
        with pytest.raises(InvalidInputError, match="limit is 100"):
            h.add_messages([HumanMessage("fits"), AIMessage("x" * 101), HumanMessage("fits too")])
        assert [m.content for m in h.messages] == ["kept"]


@pytest.mark.parametrize(("bad", "error"), [
    (ToolMessage("r", tool_call_id="c", artifact=object()), "JSON"),
    (AIMessage("a", additional_kwargs={"n": float("nan")}), "JSON"),
    ("just a string", "BaseMessage"),
    (HumanMessage("deep", additional_kwargs={"pad": "p" * 70_000}), "beside the text: keep large files by reference"),
    (AIMessage("a", additional_kwargs={"note": "x\ud800y"}), "lone surrogate"),
])
def test_a_message_that_cannot_be_stored_raises_and_stores_nothing(mem, bad, error):
    h = history(mem)
    with pytest.raises(InvalidInputError, match=error):
        h.add_messages([HumanMessage("first"), bad])
    assert h.messages == []


def test_works_with_embedding_on_and_the_stand_in_text_is_searchable(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as m:
        history(m).add_messages([HumanMessage("weather?"), AIMessage("", tool_calls=[TOOL_CALL])])
        found = m.get_memory("semantic_search", query="get_weather Paris", conversation_id=CONV, owner_id=OWNER)
        assert found.messages[0].content.startswith("[tool call] get_weather")


async def test_async_variants_behave_the_same_and_run_off_the_loop(mem, monkeypatch):
    loop_thread = threading.get_ident()
    seen: list[int] = []
    for name in ("messages", "add_many", "forget"):
        real = getattr(mem, name)

        def spy(*args, _real=real, **kwargs):
            seen.append(threading.get_ident())
            return _real(*args, **kwargs)

        monkeypatch.setattr(mem, name, spy)
    h = history(mem)
    assert await h.aget_messages() == []
    batch = [HumanMessage("q", id="q1"), ToolMessage("r", tool_call_id="c", id="r1", artifact=[1])]
    await h.aadd_messages(batch)
    await h.aadd_messages(batch)  # a retry
    assert await h.aget_messages() == batch
    with pytest.raises(InvalidInputError):
        await h.aadd_messages([AIMessage("ok"), ToolMessage("r", tool_call_id="c", artifact=object())])
    await h.aclear()
    assert await h.aget_messages() == []
    # 3 reads, 2 add_many (the third call is refused before it), 1 forget: none on the loop
    assert len(seen) == 6 and loop_thread not in seen


# -- the retriever: LangChain's standard suite ---------------------------------------------

QUERY = "pizza napolitana"
PIZZA = [
    "I love pizza napolitana with basil",
    "the best pizza place is near the station",
    "napolitana pizza needs a very hot oven",
    "we ate pizza on Friday",
    "pizza dough rests for a day",
    "my favourite napolitana topping is anchovies",
]
SEEDED: dict[str, Memory] = {}


@pytest.fixture(scope="module", autouse=True)
def seeded_memory(tmp_path_factory):
    """One Memory for the module's retriever tests: six pizza messages in chat-1, a
    fact in chat-2, bob's message in chat-1; embedded at once by a deterministic embedder."""
    path = tmp_path_factory.mktemp("lc_retriever") / "seeded.db"
    with Memory(path, embedder=HashEmbedder(), embed="sync") as m:
        for i, text in enumerate(PIZZA):
            m.add("user" if i % 2 == 0 else "assistant", text, conversation_id=CONV, owner_id=OWNER,
                  msg_id=f"p{i}", feature="chat" if i == 0 else None, metadata={"n": i})
        m.add("user", "my sister Ana lives in Porto with a spare room", conversation_id="chat-2",
              owner_id=OWNER, msg_id="ana")
        m.add("user", "bob likes pizza napolitana too", conversation_id=CONV, owner_id="bob", msg_id="bob")
        SEEDED["mem"] = m
        yield m
        SEEDED.clear()


class TestLocalmemRetrieverStandard(RetrieversIntegrationTests):
    @property
    def retriever_constructor(self) -> type[LocalmemRetriever]:
        return LocalmemRetriever

    @property
    def retriever_constructor_params(self) -> dict:
        return {"memory": SEEDED["mem"], "owner_id": OWNER, "conversation_id": CONV, "strategy": "semantic_search"}

    @property
    def retriever_query_example(self) -> str:
        return QUERY


def retriever(**options) -> LocalmemRetriever:
    return LocalmemRetriever(memory=SEEDED["mem"], owner_id=OWNER, conversation_id=CONV, **options)


# -- the retriever: our own tests ----------------------------------------------------------

def test_documents_carry_the_message_fields():
    docs = retriever(strategy=Strategy.SEMANTIC_SEARCH, k=6).invoke(QUERY)
    assert len(docs) == 6 and all(isinstance(d, Document) for d in docs)
    assert {d.id for d in docs} == {f"p{i}" for i in range(6)}  # bob's and chat-2's not among them
    by_id = {d.id: d for d in docs}
    first = by_id["p0"]
    assert first.page_content == PIZZA[0]
    meta = first.metadata
    assert meta["msg_id"] == "p0" and meta["conversation_id"] == CONV and meta["owner_id"] == OWNER
    assert meta["role"] == "user" and by_id["p1"].metadata["role"] == "assistant"
    assert meta["feature"] == "chat" and meta["metadata"] == {"n": 0}
    assert datetime.fromisoformat(meta["created_at"]).utcoffset().total_seconds() == 0
    assert meta["strategy"] == "semantic_search" and "selection_reason" not in meta
    assert meta["source"] in {"fused", "semantic", "keyword", "dense"}
    assert [d.metadata["first_rank"] for d in docs] == list(range(1, 7))
    scores = [d.metadata["score"] for d in docs]
    assert scores == sorted(scores, reverse=True) and scores[0] > 0
    assert "rerank_score" not in meta  # no reranker


def test_recent_history_documents_have_no_score():
    docs = retriever(strategy="recent_history", k=2).invoke("anything")
    assert [d.id for d in docs] == ["p4", "p5"]
    assert all(d.metadata["score"] is None and d.metadata["source"] == "recent" for d in docs)


def test_k_limits_in_the_constructor_and_per_call():
    r = retriever(strategy="semantic_search", k=2)
    assert len(r.invoke(QUERY)) == 2
    assert len(r.invoke(QUERY, k=5)) == 5
    assert len(retriever(strategy="semantic_search").invoke(QUERY)) == 4  # the default k


@pytest.mark.parametrize("k", [0, -1, "3", 2.0, True, None])
def test_a_bad_k_raises(k):
    with pytest.raises(InvalidInputError, match="k must be an int >= 1"):
        retriever(k=k)
    if k is not None:
        with pytest.raises(InvalidInputError, match="k must be an int >= 1"):
            retriever().invoke(QUERY, k=k)


def test_a_bad_strategy_raises():
    with pytest.raises(InvalidInputError, match="unknown strategy 'semantic'"):
        retriever(strategy="semantic")


@pytest.mark.parametrize("field", ["owner_id", "conversation_id"])
def test_bad_ids_raise(field):
    options = {"memory": SEEDED["mem"], "owner_id": OWNER, "conversation_id": CONV, field: " "}
    with pytest.raises(InvalidInputError, match=field):
        LocalmemRetriever(**options)
    with pytest.raises(InvalidInputError, match="localmem.Memory"):
        LocalmemRetriever(memory="seeded.db", owner_id=OWNER, conversation_id=CONV)


def test_cross_conversation_finds_another_conversations_message():
    docs = retriever(strategy="cross_conversation", k=1).invoke("where does my sister Ana live")
    assert [(d.id, d.metadata["conversation_id"]) for d in docs] == [("ana", "chat-2")]
    assert docs[0].metadata["strategy"] == "cross_conversation"
    # semantic_search stays inside the conversation
    assert "ana" not in {d.id for d in retriever(strategy="semantic_search", k=8).invoke("sister Ana Porto")}


def test_auto_says_what_ran_and_why():
    [*docs] = retriever(k=3).invoke("what did I say about pizza napolitana last week?")
    assert docs, "auto found nothing"
    strategies = {d.metadata["strategy"] for d in docs}
    assert len(strategies) == 1 and strategies <= {s.value for s in Strategy} - {"auto"}
    assert all(isinstance(d.metadata["selection_reason"], str) and d.metadata["selection_reason"] for d in docs)


def test_min_relevance_is_passed_only_when_given(monkeypatch):
    mem = SEEDED["mem"]
    calls: list[dict] = []
    real = mem.get_memory

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(mem, "get_memory", spy)
    retriever(strategy="semantic_search").invoke(QUERY)
    assert retriever(strategy="semantic_search", min_relevance=0.99).invoke(QUERY) == []  # nothing that close
    retriever(strategy="semantic_search", min_relevance=None).invoke(QUERY)
    assert "min_relevance" not in calls[0]
    assert calls[1]["min_relevance"] == 0.99 and calls[2]["min_relevance"] is None
    assert calls[0]["lookback_days"] is None and calls[0]["limit"] == 4


def test_reranked_documents_carry_the_rerank_score(tmp_path):
    class Scorer:
        name = "anchovy-scorer"

        def score(self, query, texts):
            return [0.9 if "anchovies" in t else 0.3 for t in texts]

    with Memory(tmp_path / "r.db", embedder=HashEmbedder(), embed="sync", reranker=Scorer(),
                rerank_threshold=None) as m:
        m.add_many([{"role": "user", "content": t} for t in PIZZA], conversation_id=CONV, owner_id=OWNER)
        docs = LocalmemRetriever(memory=m, owner_id=OWNER, conversation_id=CONV, strategy="semantic_search",
                                 k=3).invoke(QUERY)
        assert docs[0].page_content == PIZZA[5] and docs[0].metadata["rerank_score"] == pytest.approx(0.9)
        assert all("rerank_score" in d.metadata for d in docs)


def test_keyword_only_search_works_without_a_model(mem):
    history(mem).add_messages([HumanMessage(t) for t in PIZZA])
    r = LocalmemRetriever(memory=mem, owner_id=OWNER, conversation_id=CONV, strategy="hybrid", k=3, dense=False)
    assert len(r.invoke("napolitana")) == 3
    with pytest.raises(LocalMemError, match="embed='off'"):  # localmem's own error, with its advice
        LocalmemRetriever(memory=mem, owner_id=OWNER, conversation_id=CONV, strategy="semantic_search").invoke("x")


def test_in_an_lcel_chain():
    def format_docs(docs: list[Document]) -> str:
        return "\n".join(f"[{d.metadata['conversation_id']}] {d.page_content}" for d in docs)

    chain = retriever(strategy="cross_conversation", k=1) | RunnableLambda(format_docs)
    assert isinstance(chain.first, BaseRetriever)
    assert chain.invoke("sister Ana Porto spare room") == "[chat-2] my sister Ana lives in Porto with a spare room"
    assert chain.batch(["sister Ana", "pizza dough"])[1].startswith("[chat-1] ")


async def test_ainvoke_runs_in_a_worker_thread(monkeypatch):
    mem = SEEDED["mem"]
    loop_thread = threading.get_ident()
    threads: list[int] = []
    real = mem.get_memory

    def spy(*args, **kwargs):
        threads.append(threading.get_ident())
        return real(*args, **kwargs)

    monkeypatch.setattr(mem, "get_memory", spy)
    r = retriever(strategy="semantic_search", k=2)
    docs, other = await asyncio.gather(r.ainvoke(QUERY), r.ainvoke(QUERY, k=1))
    assert len(docs) == 2 and len(other) == 1
    assert threads and loop_thread not in threads


def test_to_localmem_is_the_add_many_item():
    assert to_localmem(HumanMessage("hi", id="x1")) == {"role": "user", "content": "hi", "msg_id": "x1"}
    item = to_localmem(ChatMessage(content="hm", role="developer"))
    assert item["role"] == "system" and CARRIER_KEY in item["metadata"]


# -- the example ---------------------------------------------------------------------------

def run_example(tmp_path, *args: str) -> str:
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "langchain_memory.py"), *args], capture_output=True, text=True,
        encoding="utf-8", timeout=300, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)}, check=False,
    )
    assert done.returncode == 0, done.stderr
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []  # it cleaned up
    return done.stdout


def check_example(out: str) -> None:
    assert "turn 3: 6 messages in the prompt; Where could I stay in Porto for free?" in out
    turn3 = out.split("turn 3:", 1)[1]
    assert "  recalled [family] My sister Ana lives in Porto, near the Ribeira; she has a spare room." in turn3
    assert "after reopening: 6 messages in 'trip': human ai human ai human ai" in out
    assert "  last: You could stay with your sister Ana, near the Ribeira." in out
    assert "after clear(): 0 in 'trip', 2 in 'family'" in out


def test_example_without_a_model(tmp_path):
    check_example(run_example(tmp_path, "--no-model"))


@needs_minilm
def test_example_with_the_model(tmp_path):
    check_example(run_example(tmp_path))


def test_a_thread_copied_into_another_conversation_keeps_its_ids_and_a_retry_adds_nothing(mem):
    a = history(mem)
    a.add_messages([HumanMessage("plan the trip"), AIMessage("where to?", id="ai-1"), ToolMessage("ok", tool_call_id="t")])
    b = LocalmemChatMessageHistory(mem, conversation_id="fork", owner_id=OWNER)
    b.add_messages(a.messages)  # the messages carry a's msg_ids as their ids
    assert b.messages == a.messages
    b.add_messages(a.messages)  # a retry: nothing new
    assert len(mem.messages(conversation_id="fork", owner_id=OWNER)) == 3
    assert a.messages == b.messages and len(a.messages) == 3
    b.clear()
    assert len(a.messages) == 3  # a's messages are its own


def test_two_owners_whose_clients_number_messages_alike_do_not_collide(mem):
    mine = history(mem)
    theirs = LocalmemChatMessageHistory(mem, conversation_id=CONV, owner_id="someone-else")
    mine.add_messages([HumanMessage("mine", id="1")])
    theirs.add_messages([HumanMessage("theirs", id="1")])
    theirs.add_messages([HumanMessage("theirs", id="1")])
    assert mine.messages == [HumanMessage("mine", id="1")]
    assert theirs.messages == [HumanMessage("theirs", id="1")]
    with pytest.raises(InvalidInputError, match="'1'"):  # in the same conversation, an id names one message
        mine.add_messages([HumanMessage("changed", id="1")])


def test_a_copied_thread_added_again_after_its_original_is_gone_is_not_doubled(mem):
    a = history(mem)
    a.add_messages([HumanMessage("hi there"), AIMessage("hello!")])
    b = LocalmemChatMessageHistory(mem, conversation_id="fork", owner_id=OWNER)
    b.add_messages(a.messages)
    a.clear()  # the original ids are free again
    b.add_messages(b.messages)  # an app re-adding its whole history
    assert [m.content for m in b.messages] == ["hi there", "hello!"]
    u1, u2 = history(mem), LocalmemChatMessageHistory(mem, conversation_id=CONV, owner_id="u2")
    u1.add_messages([HumanMessage("u1 first", id="1")])
    u2.add_messages([HumanMessage("u2 first", id="1")])
    u1.clear()
    u2.add_messages(u2.messages)
    assert u2.messages == [HumanMessage("u2 first", id="1")]
