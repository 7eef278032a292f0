"""The signals stage: what the query's time and names and a message's shape add
(localmem/signals.py), and how the pipeline uses them (retrieval.adjust)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hash_embedder import HashEmbedder

from localmem import Memory, Strategy, signals
from localmem.signals import Span, asks, names, time_span

UTC = timezone.utc
NOW = datetime(2026, 11, 29, 15, 30, tzinfo=UTC)


def day(y: int, m: int, d: int) -> datetime:
    return datetime(y, m, d, tzinfo=UTC)


def us(when: datetime) -> int:
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


@pytest.mark.parametrize("query, span", [
    ("What did Joanna do on 1 May, 2022?", Span(day(2022, 5, 1), day(2022, 5, 2))),
    ("What painting did she show on October 13, 2023?", Span(day(2023, 10, 13), day(2023, 10, 14))),
    ("the 3rd of March 2024", Span(day(2024, 3, 3), day(2024, 3, 4))),
    ("3rd March 2024", Span(day(2024, 3, 3), day(2024, 3, 4))),
    ("What setback did Melanie face in October 2023?", Span(day(2023, 10, 1), day(2023, 11, 1))),
    ("Sept. 2021", Span(day(2021, 9, 1), day(2021, 10, 1))),
    ("in December 2023", Span(day(2023, 12, 1), day(2024, 1, 1))),
    ("How many times did she go to the beach in 2023?", Span(day(2023, 1, 1), day(2024, 1, 1))),
    ("When did Melanie go camping in June?", Span(None, None, 6)),
    ("what did I do last May", Span(None, None, 5)),
    ("o que aconteceu em 13 de março de 2023?", Span(day(2023, 3, 13), day(2023, 3, 14))),
    ("onde fui em maio de 2024", Span(day(2024, 5, 1), day(2024, 6, 1))),
    ("what did we talk about yesterday", Span(day(2026, 11, 28), day(2026, 11, 29))),
    ("and today?", Span(day(2026, 11, 29), day(2026, 11, 30))),
    ("what did I buy last week", Span(day(2026, 11, 16), day(2026, 11, 23))),
    ("last month's plans", Span(day(2026, 10, 1), day(2026, 11, 1))),
    ("o que fiz no ano passado", Span(day(2025, 1, 1), day(2026, 1, 1))),
    ("you may go now", None),  # "may" the verb
    ("31 February 2023", None),  # no such day
    ("room 2023 is free", None),  # a number, not a year
    ("tell me about pizza", None),
])
def test_the_time_a_query_names(query, span):
    assert time_span(query, NOW) == span


def test_last_month_in_january_is_december():
    assert time_span("last month", day(2027, 1, 10)) == Span(day(2026, 12, 1), day(2027, 1, 1))


def test_a_span_holds_what_was_said_in_it_or_soon_after():
    may = Span(day(2023, 5, 1), day(2023, 6, 1))
    assert may.holds(day(2023, 5, 31)) and may.holds(day(2023, 6, 1) + signals.TIME_SLACK - timedelta(seconds=1))
    assert not may.holds(day(2023, 4, 30)) and not may.holds(day(2023, 6, 1) + signals.TIME_SLACK)
    june = Span(None, None, 6)
    assert june.holds(day(2019, 6, 2)) and june.holds(day(2024, 7, 10)) and not june.holds(day(2024, 8, 1))
    # holds_us (the store's µs) agrees, to the microsecond at each edge
    edge = timedelta(microseconds=1)
    for span in (may, june):
        for when in (day(2023, 5, 1), day(2023, 5, 1) - edge, day(2023, 6, 1) + signals.TIME_SLACK,
                     day(2023, 6, 1) + signals.TIME_SLACK - edge, day(2019, 6, 2), day(2024, 8, 1)):
            assert span.holds_us(us(when)) is span.holds(when), (span, when)


@pytest.mark.parametrize("query, found", [
    ("What did Caroline research?", ("caroline",)),
    ("What do Melanie's kids like?", ("melanie",)),
    ("Did Tim visit New York with John in May?", ("tim", "new", "york", "john")),
    ("Would Caroline still want to pursue counseling?", ("caroline",)),
    ("Onde a Júlia morava?", ("julia",)),
    ("what did i say about pizza", ()),
    ("When In Doubt", ("doubt",)),
])
def test_the_names_in_a_query(query, found):
    assert names(query) == found


@pytest.mark.parametrize("text, asking", [
    ("You play any instruments?", True),
    ("How was it? Send me photos!", True),
    ("Really? [image: a beach]", True),
    ("Tudo bem？", True),
    ("Yes, I play clarinet!", False),
    ("", False),
])
def test_a_message_that_asks(text, asking):
    assert asks(text) is asking


def test_bonus_adds_time_names_and_length():
    hints = signals.hints("What did Caroline do in May 2023?", NOW)
    plain = signals.bonus("went hiking", us(day(2022, 1, 1)), hints)
    assert plain == pytest.approx(signals.LENGTH_WEIGHT * 1.0986, rel=1e-3)  # log(1 + 2 words)
    in_time = signals.bonus("went hiking", us(day(2023, 5, 20)), hints)
    assert in_time - plain == pytest.approx(signals.TIME_BONUS)
    named = signals.bonus("Caroline went hiking", us(day(2022, 1, 1)), hints)
    assert named - signals.bonus("Somebody went hiking", us(day(2022, 1, 1)), hints) == pytest.approx(signals.NAME_BONUS)


# -- through the pipeline ------------------------------------------------------------------

OWNER = dict(owner_id="u1")


def test_a_question_passes_its_score_to_its_answer(tmp_path):
    """The reply shares no word with the query; it is found through the question it answers."""
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        t0 = day(2024, 3, 1)
        mem.add("user", "Do you play any musical instruments these days?", conversation_id="c1",
                created_at=t0, **OWNER)
        mem.add("assistant", "Yes, the clarinet, since I was young.", conversation_id="c1",
                created_at=t0 + timedelta(minutes=1), **OWNER)
        for i in range(20):
            mem.add("user", f"unrelated chatter number {i} about the weather", conversation_id="c2",
                    created_at=t0 + timedelta(days=i), **OWNER)
        got = mem.get_memory(Strategy.CROSS_CONVERSATION, query="which musical instruments", conversation_id="c1",
                             lookback_days=None, min_relevance=None, limit=5, **OWNER)
        contents = [m.content for m in got.messages]
        assert contents[:2] == ["Do you play any musical instruments these days?",
                                "Yes, the clarinet, since I was young."]
        explained = mem.explain(Strategy.CROSS_CONVERSATION, query="which musical instruments",
                                conversation_id="c1", lookback_days=None, min_relevance=None, limit=5, **OWNER)
        answer = next(c for c in explained.candidates if c.content.startswith("Yes, the clarinet"))
        assert answer.first_rank == 2 and answer.fate == "kept"


def test_the_time_a_query_names_lifts_what_was_said_then(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        mem.add("user", "We went to the lake for a picnic", conversation_id="c1", created_at=day(2023, 5, 10), **OWNER)
        mem.add("user", "We went to the lake for a picnic", conversation_id="c2", created_at=day(2023, 9, 10), **OWNER)
        for query, first in (("picnic at the lake in May 2023", "c1"), ("picnic at the lake in September 2023", "c2")):
            got = mem.get_memory(Strategy.CROSS_CONVERSATION, query=query, conversation_id="c1",
                                 lookback_days=None, min_relevance=None, **OWNER)
            assert got.messages[0].conversation_id == first, query


def test_a_name_in_the_query_lifts_the_messages_that_hold_it(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        mem.add("user", "Melanie: I adopted a dog last week", conversation_id="c1", created_at=day(2023, 5, 10), **OWNER)
        mem.add("user", "Caroline: I adopted a dog last week", conversation_id="c1", created_at=day(2023, 5, 10), **OWNER)
        for person in ("Melanie", "Caroline"):
            got = mem.get_memory(Strategy.CROSS_CONVERSATION, query=f"When did {person} adopt a dog?",
                                 conversation_id="c1", lookback_days=None, min_relevance=None, **OWNER)
            assert got.messages[0].content.startswith(person)


def test_signals_apply_to_fused_search_only(tmp_path):
    """By one ranking alone, the score is that ranking's own (cosine, -bm25): unchanged."""
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        mem.add("user", "Do you like pizza?", conversation_id="c1", created_at=day(2024, 1, 1), **OWNER)
        mem.add("user", "A lot, with basil", conversation_id="c1", created_at=day(2024, 1, 2), **OWNER)
        kw = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", conversation_id="c1", dense=False, **OWNER)
        assert [m.content for m in kw.messages] == ["Do you like pizza?", "A lot, with basil"]  # via next/prev columns
        assert kw.messages[0].score > kw.messages[1].score > 0
        dense = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="pizza", conversation_id="c1", keyword=False,
                               min_relevance=None, **OWNER)
        assert all(-1.0 <= m.score <= 1.0 for m in dense.messages)
