"""The contract, part 4: caches never serve a stale answer; vectors and their model.

A ``Memory`` keeps a hot window of recent messages and cached answers in its cache
folder. Whatever backend holds the messages, an answer read from a cache must equal one
computed afresh: after a write by this Memory, by another Memory sharing its cache folder
(another process on the machine), or by one with a folder of its own (another machine
sharing the database).
"""

from __future__ import annotations

import pytest
from hash_embedder import HashEmbedder

from localmem import ModelMismatchError, Strategy

OK = {"conversation_id": "c1", "owner_id": "u1"}
ALL_ANSWERS = (Strategy.RECENT_HISTORY, Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION)


def answer(mem, strategy, query="pizza"):
    return mem.get_memory(strategy, **OK, query=query, limit=20, lookback_days=None)


def contents(result) -> set[str]:
    return {m.content for m in result.messages}


@pytest.mark.parametrize("strategy", ALL_ANSWERS, ids=str)
def test_a_repeated_call_is_a_cache_hit_with_the_same_answer(mem, strategy):
    mem.add("user", "pizza napolitana", **OK)
    mem.add("assistant", "pizza with basil", **OK)
    first, again = answer(mem, strategy), answer(mem, strategy)
    assert (first.cache_hit, again.cache_hit) == (False, True)
    assert again.messages == first.messages and len(first.messages) == 2


@pytest.mark.parametrize("strategy", ALL_ANSWERS, ids=str)
def test_an_own_write_is_in_the_next_answer(mem, strategy):
    mem.add("user", "pizza napolitana", **OK)
    answer(mem, strategy)
    assert answer(mem, strategy).cache_hit
    mem.add("assistant", "more pizza here", **OK)
    after = answer(mem, strategy)
    assert not after.cache_hit and contents(after) == {"pizza napolitana", "more pizza here"}
    assert answer(mem, strategy).cache_hit


def test_a_write_elsewhere_voids_only_the_answers_whose_scope_holds_it(mem):
    mem.add("user", "pizza napolitana", **OK)
    for strategy in ALL_ANSWERS:
        answer(mem, strategy)
    mem.add("user", "pizza in another chat", conversation_id="c2", owner_id="u1")
    mem.add("user", "pizza of another owner", conversation_id="c1", owner_id="u2")
    assert answer(mem, Strategy.SEMANTIC_SEARCH).cache_hit  # another conversation
    crossed = answer(mem, Strategy.CROSS_CONVERSATION)  # the same owner: its scope changed
    assert not crossed.cache_hit and contents(crossed) == {"pizza napolitana", "pizza in another chat"}


@pytest.mark.parametrize("shared_cache", [True, False], ids=["same-cache-dir", "own-cache-dir"])
def test_another_clients_writes_are_in_the_next_answer(target, open_memory, tmp_path, shared_cache):
    """``b`` is another process on this machine (same cache folder) or on another machine
    (a folder of its own): either way ``a`` never answers from a cache that misses them."""
    a = open_memory(target, embed="sync")
    b = open_memory(target, embed="sync", **({} if shared_cache else {"cache_dir": tmp_path / "other-cache"}))
    a.add("user", "pizza napolitana", **OK)
    for strategy in ALL_ANSWERS:
        answer(a, strategy)
        assert answer(a, strategy).cache_hit
    written = b.add("assistant", "pizza from the other client", **OK)
    for strategy in ALL_ANSWERS:
        got = answer(a, strategy)
        assert contents(got) == {"pizza napolitana", "pizza from the other client"}, strategy
    assert b.delete(written.msg_id)
    for strategy in ALL_ANSWERS:
        got = answer(a, strategy)
        assert contents(got) == {"pizza napolitana"}, strategy
    assert [m.content for m in a.messages(**OK)] == ["pizza napolitana"]


def test_a_second_memory_reads_what_the_first_wrote(target, open_memory, tmp_path):
    a = open_memory(target, embed="sync")
    first = a.add("user", "pizza napolitana", **OK, msg_id="m1")
    b = open_memory(target, cache_dir=tmp_path / "b-cache")
    assert b.get("m1") == first
    assert b.messages(**OK) == (first,)
    assert b.conversations("u1") == ("c1",)
    found = b.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="pizza", keyword=False)
    assert [m.msg_id for m in found.messages] == ["m1"]  # by its vector, written by a


# -- vectors and the embedding model -------------------------------------------------------


def test_background_embedding_then_flush_makes_messages_searchable_by_meaning(target, open_memory):
    mem = open_memory(target, embedder=HashEmbedder(delay=0.01))  # embed="background", the default
    mem.add_many(({"role": "user", "content": f"message number {i} about topic{i}"} for i in range(120)),
                 **OK, chunk_size=25)
    mem.add("user", "the zeppelin landed", **OK, msg_id="z")
    mem.flush(timeout=120)
    stats = mem.stats()
    assert (stats["messages"], stats["vectors"], stats["pending_vectors"]) == (121, 121, 0)
    found = mem.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="zeppelin landed", keyword=False, limit=1)
    assert [m.msg_id for m in found.messages] == ["z"]
    text = "message number 77 about topic77"
    found = mem.get_memory(Strategy.CROSS_CONVERSATION, **OK, query=text, keyword=False, limit=1)
    assert [m.content for m in found.messages] == [text]
    assert found.messages[0].score == pytest.approx(1.0, abs=1e-4)


def test_messages_stored_without_embedding_are_embedded_on_the_next_open(target, open_memory):
    with open_memory(target, embed="off") as mem:
        mem.add("user", "pizza napolitana", **OK)
        found = mem.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="pizza", dense=False)
        assert [m.content for m in found.messages] == ["pizza napolitana"]  # by keywords meanwhile
        assert mem.stats()["pending_vectors"] == 1
    with open_memory(target) as mem:
        mem.flush(timeout=60)
        assert (mem.stats()["vectors"], mem.stats()["pending_vectors"]) == (1, 0)
        found = mem.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="pizza", keyword=False)
        assert [m.content for m in found.messages] == ["pizza napolitana"]


def test_another_embedder_is_refused_at_open_and_reembed_switches(target, open_memory):
    with open_memory(target, embed="sync") as mem:
        mem.add("user", "pizza napolitana", **OK)
        mem.add("user", "rain and clouds", **OK)
        assert mem.stats()["embedder"]["name"] == "test-hash-embedder"
    other = HashEmbedder(dim=32, name="other-model")
    with pytest.raises(ModelMismatchError):
        open_memory(target, embedder=other)
    with open_memory(target) as mem:  # the recorded model still opens, its vectors intact
        assert (mem.stats()["vectors"], mem.stats()["pending_vectors"]) == (2, 0)
    with open_memory(target, embedder=other, reembed=True) as mem:
        mem.flush(timeout=60)
        stats = mem.stats()
        assert (stats["vectors"], stats["pending_vectors"]) == (2, 0)
        assert (stats["embedder"]["name"], stats["embedder"]["dim"]) == ("other-model", 32)
        found = mem.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="rain clouds", keyword=False)
        assert found.messages[0].content == "rain and clouds"
    with pytest.raises(ModelMismatchError):
        open_memory(target)  # HashEmbedder's name: now the other one is recorded
