"""The contract, part 2: what each strategy returns, and that no owner sees another's.

A small hand-built memory: two owners who both have a conversation called "trip" (so a
conversation id alone never scopes a search), messages sharing words across owners and
conversations, and old messages outside the lookback window. The test embedder is a
bag of words (``tests/hash_embedder.py``): texts sharing words are near, so the ranking
by meaning is deterministic, and it declares no relevance floor, so every message of a
scope is a candidate.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest

from localmem import Strategy

UTC = timezone.utc
SEARCHING = (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION)
PER_CONVERSATION = (Strategy.SESSION_ONLY, Strategy.RECENT_HISTORY, Strategy.SEMANTIC_SEARCH, Strategy.HYBRID)

TRIP = [  # ana's "trip": 3 days ago, an hour apart
    ("user", "We are planning a trip to Lisbon in June"),
    ("assistant", "Lisbon in June is sunny, book the hotel early"),
    ("user", "Which neighbourhood has the best pastries"),
    ("assistant", "Belem has the famous custard pastries"),
    ("user", "Thanks, and the tram to Belem?"),
    ("assistant", "Tram 15 goes from the centre to Belem"),
]
FOOD = [  # ana's "food": a day ago
    ("user", "My pizza dough keeps tearing"),
    ("assistant", "Let the pizza dough rest longer before stretching"),
    ("user", "Any tips for a pizza oven at home"),
]
FOOD_OLD = ("user", "I bought a pizza stone last winter")  # ana's "food", 40 days ago
OLD = ("user", "I once baked pizza in Lisbon with friends")  # ana's "old", 30 days ago
BOB = [  # bob's "trip" and "food": the same words, another owner
    ("trip", "user", "Bob plans a trip to Lisbon for pizza and custard pastries"),
    ("trip", "assistant", "Bob should take tram 15 to Belem for pastries and pizza dough"),
    ("food", "user", "pizza dough pizza oven pizza stone, Bob's pizza"),
]


@pytest.fixture
def world(mem):
    """``mem`` holding the memory described above; returns it."""
    now = datetime.now(UTC)
    items = []
    for i, (role, text) in enumerate(TRIP):
        items.append({"role": role, "content": text, "conversation_id": "trip", "owner_id": "ana",
                      "msg_id": f"trip-{i}", "created_at": now - timedelta(days=3) + timedelta(hours=i)})
    for i, (role, text) in enumerate(FOOD):
        items.append({"role": role, "content": text, "conversation_id": "food", "owner_id": "ana",
                      "msg_id": f"food-{i}", "created_at": now - timedelta(days=1) + timedelta(minutes=i)})
    items.append({"role": FOOD_OLD[0], "content": FOOD_OLD[1], "conversation_id": "food", "owner_id": "ana",
                  "msg_id": "food-old", "created_at": now - timedelta(days=40)})
    items.append({"role": OLD[0], "content": OLD[1], "conversation_id": "old", "owner_id": "ana",
                  "msg_id": "old-0", "created_at": now - timedelta(days=30)})
    for i, (conversation, role, text) in enumerate(BOB):
        items.append({"role": role, "content": text, "conversation_id": conversation, "owner_id": "bob",
                      "msg_id": f"bob-{i}", "created_at": now - timedelta(days=2) + timedelta(minutes=i)})
    assert mem.add_many(items) == len(items)
    mem.flush()
    return mem


def ids(result) -> list[str]:
    return [m.msg_id for m in result.messages]


def ask(mem, strategy, conversation="trip", owner="ana", **kwargs):
    return mem.get_memory(strategy, conversation_id=conversation, owner_id=owner, **kwargs)


# -- each strategy ----------------------------------------------------------------------------


def test_every_strategy_on_an_empty_memory_returns_nothing(mem):
    for strategy in Strategy:
        result = ask(mem, strategy, query="pizza in Lisbon")
        assert result.messages == (), strategy
        assert result.strategy is not Strategy.AUTO


def test_session_only_returns_no_stored_message(world):
    result = ask(world, Strategy.SESSION_ONLY, query="Lisbon")
    assert result.messages == () and result.strategy is Strategy.SESSION_ONLY


def test_recent_history_is_the_last_messages_oldest_first(world):
    result = ask(world, Strategy.RECENT_HISTORY, limit=3)
    assert result.strategy is Strategy.RECENT_HISTORY
    assert ids(result) == ["trip-3", "trip-4", "trip-5"]
    assert all(m.source == "recent" and m.score is None for m in result.messages)
    assert [m.content for m in result.messages] == [text for _, text in TRIP[3:]]
    assert ids(ask(world, Strategy.RECENT_HISTORY)) == [f"trip-{i}" for i in range(6)]  # limit 10, 7 days
    assert ids(ask(world, Strategy.RECENT_HISTORY, conversation="food", lookback_days=None)) == [
        "food-old", "food-0", "food-1", "food-2"]


def test_recent_history_keeps_to_the_lookback_window(world):
    # trip-i is 3 days minus i hours old: a 2.9-day window holds trip-3 (2.875 days) on.
    assert ids(ask(world, Strategy.RECENT_HISTORY, lookback_days=2.9)) == ["trip-3", "trip-4", "trip-5"]
    assert ids(ask(world, Strategy.RECENT_HISTORY, lookback_days=2)) == []
    assert ids(ask(world, Strategy.RECENT_HISTORY, conversation="food")) == ["food-0", "food-1", "food-2"]
    assert ids(ask(world, Strategy.RECENT_HISTORY, conversation="food", lookback_days=41))[0] == "food-old"


def test_semantic_search_ranks_the_conversation_by_meaning(world):
    result = ask(world, Strategy.SEMANTIC_SEARCH, conversation="food", query="my pizza dough is tearing", limit=2)
    assert result.strategy is Strategy.SEMANTIC_SEARCH
    assert ids(result)[0] == "food-0"  # holds every word of the query
    assert len(result.messages) == 2 and {m.conversation_id for m in result.messages} == {"food"}
    assert all(m.source == "semantic" for m in result.messages)
    scores = [m.score for m in result.messages]
    assert scores == sorted(scores, reverse=True) and scores[0] > scores[1] > 0
    # All time, whatever lookback_days says: the 40-day-old message is in its scope.
    everything = ask(world, Strategy.SEMANTIC_SEARCH, conversation="food", query="pizza stone", limit=50)
    assert ids(everything)[0] == "food-old"
    assert sorted(ids(everything)) == ["food-0", "food-1", "food-2", "food-old"]


def test_dense_only_scores_are_cosine_similarities(world):
    result = ask(world, Strategy.SEMANTIC_SEARCH, query=TRIP[3][1], keyword=False, limit=50)
    assert ids(result)[0] == "trip-3"
    assert result.messages[0].score == pytest.approx(1.0, abs=1e-4)  # the same text: cosine 1
    scores = [m.score for m in result.messages]
    assert scores == sorted(scores, reverse=True)
    assert all(-1.0 - 1e-4 <= s <= 1.0 + 1e-4 for s in scores)
    assert sorted(ids(result)) == [f"trip-{i}" for i in range(6)]


def test_keyword_only_search_needs_no_vector(world):
    result = ask(world, Strategy.SEMANTIC_SEARCH, query="custard", dense=False, limit=50)
    # The message holding the word, then its neighbours (they carry its text at half weight).
    assert ids(result)[0] == "trip-3"
    assert set(ids(result)) == {"trip-2", "trip-3", "trip-4"}
    scores = [m.score for m in result.messages]
    assert scores == sorted(scores, reverse=True) and scores[-1] > 0


def test_hybrid_is_the_newest_messages_then_the_best_matches_not_among_them(world):
    result = ask(world, Strategy.HYBRID, query="custard pastries", limit=4)
    assert result.strategy is Strategy.HYBRID
    assert [m.source for m in result.messages] == ["recent", "recent", "semantic", "semantic"]
    assert ids(result)[:2] == ["trip-4", "trip-5"]  # max(1, 4 // 2) newest, oldest first
    assert ids(result)[2] == "trip-3"  # "custard pastries"
    assert ids(result)[3] == "trip-2"  # "pastries"
    one = ask(world, Strategy.HYBRID, query="custard pastries", limit=1)
    assert ids(one) == ["trip-5"]
    whole = ask(world, Strategy.HYBRID, query="custard pastries", limit=50, lookback_days=None)
    assert sorted(ids(whole)) == [f"trip-{i}" for i in range(6)] and len(set(ids(whole))) == 6


def test_cross_conversation_searches_all_the_owners_conversations_in_the_window(world):
    result = ask(world, Strategy.CROSS_CONVERSATION, query="pizza dough", limit=3)
    assert result.strategy is Strategy.CROSS_CONVERSATION
    assert ids(result)[:2] == ["food-0", "food-1"]  # from "food", asked from "trip"
    assert all(m.source == "cross_conversation" for m in result.messages)
    window = ask(world, Strategy.CROSS_CONVERSATION, query="pizza dough", limit=50)
    assert sorted(ids(window)) == sorted([f"trip-{i}" for i in range(6)] + ["food-0", "food-1", "food-2"])
    ever = ask(world, Strategy.CROSS_CONVERSATION, query="baked pizza in Lisbon", limit=50, lookback_days=None)
    assert ids(ever)[0] == "old-0"
    assert "food-old" in ids(ever) and len(ids(ever)) == 11


@pytest.mark.parametrize("strategy", [s for s in Strategy if s is not Strategy.SESSION_ONLY])
def test_limit_caps_every_strategy(world, strategy):
    for limit in (1, 2, 5):
        result = ask(world, strategy, query="Lisbon pizza pastries Belem", limit=limit, lookback_days=None)
        assert 0 < len(result.messages) <= limit
        assert len(set(ids(result))) == len(result.messages)


# -- isolation --------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", list(Strategy), ids=str)
def test_no_owner_ever_sees_another_owners_messages(world, strategy):
    queries = ["Lisbon pizza pastries Belem tram dough", "Bob's pizza", "pizza", "what did I just say?",
               "do you remember my trip last week?", "", None]
    for owner, conversation in (("ana", "trip"), ("bob", "trip"), ("ana", "food"), ("bob", "food"),
                                ("carol", "trip")):
        for query in queries:
            for dense in (True, False):
                result = ask(world, strategy, conversation=conversation, owner=owner, query=query, limit=50,
                             lookback_days=None, dense=dense)
                ran = result.strategy
                assert ran is not Strategy.AUTO
                for m in result.messages:
                    assert m.owner_id == owner, (ran, query, m)
                    if ran in PER_CONVERSATION:
                        assert m.conversation_id == conversation, (ran, query, m)
                if owner == "carol":
                    assert result.messages == ()


def test_a_cross_conversation_search_finds_every_message_of_its_owner_and_no_other(world):
    for owner, expected in (("ana", 11), ("bob", 3)):
        result = ask(world, Strategy.CROSS_CONVERSATION, owner=owner, query="Lisbon", limit=100, lookback_days=None)
        assert len(result.messages) == expected
        assert {m.owner_id for m in result.messages} == {owner}


# -- auto -------------------------------------------------------------------------------------


def test_auto_small_talk_loads_nothing(world):
    result = ask(world, Strategy.AUTO, query="hi there")
    assert result.strategy is Strategy.SESSION_ONLY and result.messages == ()
    assert result.selection is not None and result.selection.strategy is Strategy.SESSION_ONLY


def test_auto_a_reference_to_the_last_turns_loads_them(world):
    result = ask(world, Strategy.AUTO, query="what did I just say?", limit=3)
    assert result.strategy is Strategy.RECENT_HISTORY and result.selection.reason == "recent_reference"
    assert ids(result) == ["trip-3", "trip-4", "trip-5"]


def test_auto_by_keywords_goes_where_the_owners_words_are(world):
    # "custard" is in ana's "trip" and in bob's "trip"; "stone" in ana's "food" (and bob's).
    here = ask(world, Strategy.AUTO, query="custard", dense=False)
    assert here.strategy is Strategy.SEMANTIC_SEARCH and here.selection.reason == "words_here"
    assert ids(here)[0] == "trip-3"
    elsewhere = ask(world, Strategy.AUTO, query="stone", dense=False, lookback_days=None)
    assert elsewhere.strategy is Strategy.CROSS_CONVERSATION and elsewhere.selection.reason == "words_elsewhere"
    assert ids(elsewhere)[0] == "food-old"
    # Words only another owner has are nowhere, for ana: no search decides by them.
    nowhere = ask(world, Strategy.AUTO, query="Bob", dense=False)
    assert nowhere.selection.reason not in ("words_here", "words_elsewhere")
    assert all(m.owner_id == "ana" for m in nowhere.messages)


def test_auto_a_general_question_sharing_no_word_with_the_owners_messages_loads_nothing(world):
    # Bob's messages hold "Bob" and "stone"; ana's hold "stone" but not "Bob".
    result = ask(world, Strategy.AUTO, query="How heavy is a Bob?")
    assert result.strategy is Strategy.SESSION_ONLY and result.selection.reason == "nothing_in_common"
    searched = ask(world, Strategy.AUTO, query="How heavy is a pizza stone?", lookback_days=None)
    assert searched.strategy in SEARCHING and "food-old" in ids(searched)


@pytest.mark.parametrize("query", ["custard pastries", "pizza stone", "what did I just say?", "hi there",
                                   "do you remember my pizza dough?"])
def test_auto_answers_exactly_what_the_strategy_it_chose_answers(target, open_memory, query):
    mem = open_memory(target, embed="sync", query_cache_ttl=0, hot_window=0)
    now = datetime.now(UTC)
    for i, (role, text) in enumerate(TRIP):
        mem.add(role, text, conversation_id="trip", owner_id="ana", created_at=now - timedelta(hours=6 - i))
    for i, (role, text) in enumerate(FOOD + [FOOD_OLD]):
        mem.add(role, text, conversation_id="food", owner_id="ana", created_at=now - timedelta(days=2, hours=-i))
    args = {"conversation_id": "trip", "owner_id": "ana", "query": query, "limit": 4}
    auto = mem.get_memory(Strategy.AUTO, **args)
    assert auto.strategy is not Strategy.AUTO and auto.selection.strategy is auto.strategy
    direct = mem.get_memory(auto.strategy, **args)
    assert ids(auto) == ids(direct)
    assert [m.score for m in auto.messages] == pytest.approx([m.score for m in direct.messages])
