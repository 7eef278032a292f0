"""The contract, part 3: the keyword search.

Searched with ``dense=False`` (BM25 alone: ``score`` is ``-bm25``, higher is better) so
that what is found is found by its words, not by a vector. Accents are folded, words are
stemmed, a message is indexed with its neighbours in the conversation (the previous and
the next message's text at half weight, so a reply is found by the words of its
question), and no character of a query is search syntax.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from localmem import Strategy

UTC = timezone.utc
OK = {"conversation_id": "c1", "owner_id": "u1"}
T0 = datetime.now(UTC) - timedelta(days=1)


def words(mem, query, strategy=Strategy.SEMANTIC_SEARCH, **kwargs):
    """The contents found for ``query`` by keywords alone, best first."""
    args = {**OK, "limit": 50, "lookback_days": None, **kwargs}
    return [m.content for m in mem.get_memory(strategy, query=query, dense=False, **args).messages]


def add(mem, *texts, start=0, **ids):
    """Add ``texts`` a minute apart from ``T0`` (+ ``start`` minutes), alternating roles."""
    for i, text in enumerate(texts):
        mem.add("user" if i % 2 == 0 else "assistant", text, **{**OK, **ids},
                created_at=T0 + timedelta(minutes=start + i))


def test_accents_are_folded_both_ways(mem):
    add(mem, "meu coração está feliz", "nothing in common here")
    add(mem, "the coracao spelled plainly", "still nothing in common", start=10, conversation_id="c2")
    add(mem, "a third message", "a fourth message", start=20, conversation_id="c3")
    assert words(mem, "coracao")[0] == "meu coração está feliz"
    assert words(mem, "CORAÇÃO", conversation_id="c2")[0] == "the coracao spelled plainly"
    for query in ("coracao", "Coração"):
        found = words(mem, query, Strategy.CROSS_CONVERSATION)
        assert set(found[:2]) == {"meu coração está feliz", "the coracao spelled plainly"}
        assert "a third message" not in found


def test_words_are_stemmed(mem):
    add(mem, "I would recommend the blue one", "weather talk", "more weather", "and more weather")
    assert words(mem, "recommendations")[0] == "I would recommend the blue one"
    assert words(mem, "recommended")[0] == "I would recommend the blue one"
    assert "more weather" not in words(mem, "recommendations")


def test_a_reply_is_found_by_the_words_of_its_question(mem):
    add(mem, "Which saxophone brand should I buy?", "Go with a Yamaha, it is reliable.",
        "Something unrelated about gardening.", "Tomatoes need sun.")
    found = words(mem, "saxophone brand")
    assert found == ["Which saxophone brand should I buy?", "Go with a Yamaha, it is reliable."]
    # Its neighbour at half weight scores less than the message itself.
    result = mem.get_memory(Strategy.SEMANTIC_SEARCH, **OK, query="saxophone brand", dense=False)
    assert result.messages[0].score > result.messages[1].score > 0


def test_a_rare_word_counts_more_than_a_common_one(mem):
    # Both messages hold one query word each, the same number of times, at the same length:
    # only how rare each word is in the memory tells them apart (BM25's IDF).
    add(mem, "the yak walks to the lake", "the llama grazes on the hill")  # the yak first: ties go to it
    add(mem, *[f"the yak number {i} says hello" for i in range(12)], start=10, conversation_id="herd")
    assert words(mem, "yak llama")[0] == "the llama grazes on the hill"
    assert words(mem, "llama yak")[0] == "the llama grazes on the hill"


def test_neighbours_are_those_of_the_same_conversation_and_owner(mem):
    # Stored interleaved: the message stored just before each reply is another chat's.
    mem.add("user", "Where do penguins live?", conversation_id="a", owner_id="u1", created_at=T0)
    mem.add("user", "unrelated opening", conversation_id="b", owner_id="u1", created_at=T0 + timedelta(minutes=1))
    mem.add("user", "unrelated opening", conversation_id="a", owner_id="u2", created_at=T0 + timedelta(minutes=1))
    mem.add("assistant", "Mostly in the south.", conversation_id="b", owner_id="u1",
            created_at=T0 + timedelta(minutes=2))
    mem.add("assistant", "In Antarctica.", conversation_id="a", owner_id="u2", created_at=T0 + timedelta(minutes=3))
    mem.add("assistant", "Near the pole.", conversation_id="a", owner_id="u1", created_at=T0 + timedelta(minutes=4))
    found = words(mem, "penguins", Strategy.CROSS_CONVERSATION, conversation_id="a")
    assert found == ["Where do penguins live?", "Near the pole."]
    assert words(mem, "penguins", Strategy.CROSS_CONVERSATION, owner_id="u2", conversation_id="a") == []


def test_a_backdated_message_becomes_its_successors_neighbour(mem):
    add(mem, "opening line", "Yes, every Tuesday.", start=10)
    assert words(mem, "violin lessons") == []
    mem.add("user", "Do you take violin lessons?", **OK, created_at=T0 + timedelta(minutes=10, seconds=30))
    found = words(mem, "violin lessons")
    assert found[0] == "Do you take violin lessons?"
    assert set(found) == {"Do you take violin lessons?", "Yes, every Tuesday.", "opening line"}


def test_a_deleted_message_leaves_no_words_in_its_neighbours(mem):
    add(mem, "opening line", "My locker code is quetzal", "Noted, I will remember it.", "closing line")
    assert set(words(mem, "quetzal")) == {"opening line", "My locker code is quetzal", "Noted, I will remember it."}
    secret = mem.messages(**OK)[1]
    assert mem.delete(secret.msg_id)
    assert words(mem, "quetzal") == []
    for strategy in (Strategy.CROSS_CONVERSATION, Strategy.HYBRID):
        assert "quetzal" not in " ".join(words(mem, "quetzal", strategy))
    # and the survivors are each other's neighbours now
    assert set(words(mem, "remember")) == {"opening line", "Noted, I will remember it.", "closing line"}


HOSTILE = ['NEAR(', 'NEAR(pizza town, 2)', 'pizza*', '*', '"', '""', "pizza OR", "OR", "AND NOT", "NOT pizza",
           "col:pizza", "content:pizza", "{content prev}: pizza", "^pizza", "(pizza", "pizza)", "-pizza", "+",
           "' OR 1=1 --", "pizza'; DROP TABLE messages; --", "%", "_", "\\", "a:b:c", "💥", "   "]


def test_search_syntax_in_a_query_is_harmless(mem):
    add(mem, "Best pizza in town NEAR the OR station", "the weather is nice", "unrelated words here")
    for query in HOSTILE:
        for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION, Strategy.AUTO):
            for dense in (True, False):
                result = mem.get_memory(strategy, **OK, query=query, dense=dense, lookback_days=None)
                assert all(m.owner_id == "u1" for m in result.messages)
        if "pizza" in query:  # whatever surrounds it, the word is searched as a word
            assert words(mem, query)[0] == "Best pizza in town NEAR the OR station", query
    assert mem.stats()["messages"] == 3


@pytest.mark.parametrize("query", ["NEAR(", "OR", "col:station", '"station'])
def test_syntax_words_are_searched_as_plain_words(mem, query):
    add(mem, "unrelated opening", "meet me near the station or the col", "more", "filler", "text")
    assert words(mem, query)[0] == "meet me near the station or the col"
