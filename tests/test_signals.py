"""The signals stage: what the query's time and names and a message's shape add
(localmem/signals.py), and how the pipeline uses them (retrieval.adjust)."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import numpy as np
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

OWNER = {"owner_id": "u1"}


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


# -- found in review ------------------------------------------------------------------------


class Scripted(HashEmbedder):
    """Vectors by marker word, so a test sets each message's cosine to the query "zebra":
    QUESTION 1.0, HIGH 0.5, LOW 0.3, NEG -0.9, KW 0.01, anything else 0."""

    name = "scripted"

    def _vector(self, text):
        v = np.zeros(self.dim, np.float32)
        for marker, (axis, cos) in {"QUESTION": (1, 1.0), "HIGH": (1, 0.5), "LOW": (2, 0.3), "NEG": (1, -0.9),
                                    "KW": (1, 0.01)}.items():
            if marker in text:
                v[0], v[axis + 1] = cos, np.sqrt(1 - cos * cos)
                return v
        if text == "zebra":
            v[0] = 1.0
        else:
            v[5] = 1.0
        return v


def _chat(mem, texts, conversation="c"):
    t0 = day(2024, 1, 1)
    for k, text in enumerate(texts):
        mem.add("user", text, conversation_id=conversation, owner_id="o", created_at=t0 + timedelta(minutes=k))


def test_an_answer_ranked_past_the_adjusted_candidates_moves_up_once(tmp_path):
    """The question is among the first ADJUST_DEPTH, its answer further down: the answer
    moves up, and appears once (in the answer, in explain, and to a reranker)."""
    with Memory(tmp_path / "m.db", embedder=Scripted(), embed="sync") as mem:
        _chat(mem, [f"HIGH zebra note {k}" for k in range(40)] + ["QUESTION did you like it?",
              "ANSWER yes it was amazing"] + [f"LOW other thing {k}" for k in range(40)])
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="zebra", limit=150)
        ids = [m.msg_id for m in got.messages]
        assert len(ids) == len(set(ids)) == 82
        assert [m.content for m in got.messages].index("ANSWER yes it was amazing") < 60
        explained = mem.explain(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="zebra", limit=150)
        assert len({c.msg_id for c in explained.candidates}) == len(explained.candidates) == 82


def test_an_answer_stays_past_the_floor_through_its_question(tmp_path):
    """The answer has nothing of the query (cosine 0, no keyword): the floor would drop
    it; it stays as the answer of a question that passed, with its cosine known."""
    with Memory(tmp_path / "m.db", embedder=Scripted(), embed="sync", min_relevance=0.5) as mem:
        _chat(mem, ["QUESTION did you like it?", "ANSWER yes it was amazing", "OTHER unrelated chat"])
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="zebra")
        assert [m.content for m in got.messages] == ["QUESTION did you like it?", "ANSWER yes it was amazing"]
        assert got.stages.below_floor == 1  # only OTHER: the answer came back
        explained = mem.explain(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="zebra")
        fates = {c.content: (c.fate, c.cosine) for c in explained.candidates}
        assert fates["ANSWER yes it was amazing"] == ("kept", pytest.approx(0.0, abs=1e-6))
        assert fates["OTHER unrelated chat"][0] == "below the relevance floor"


def test_a_negative_cosine_counts_as_none_and_passes_nothing_on(tmp_path):
    with Memory(tmp_path / "m.db", embedder=Scripted(), embed="sync", min_relevance=None) as mem:
        _chat(mem, ["KW zebra", "NEG anything?", "ANSWER yes"])
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="zebra", limit=5)
        assert all(m.score >= 0 for m in got.messages)
        assert got.messages[0].content == "KW zebra"


def test_a_month_of_any_year_near_the_first_datetime(tmp_path):
    """A message from the first days of year 1 (the earliest time a datetime holds) and a
    query naming a month: no OverflowError."""
    assert not Span(None, None, 12).holds(datetime(1, 1, 3, tzinfo=UTC))
    assert Span(None, None, 1).holds(datetime(1, 1, 3, tzinfo=UTC))
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        mem.add("user", "we went skiing", conversation_id="c", owner_id="o", created_at=datetime(1, 1, 2, tzinfo=UTC))
        got = mem.get_memory(Strategy.SEMANTIC_SEARCH, conversation_id="c", owner_id="o", query="skiing in December")
        assert [m.content for m in got.messages] == ["we went skiing"]


@pytest.mark.parametrize("query, span", [
    ("this may help", None),
    ("since may be useful", None),
    ("in May", Span(None, None, 5)),
    ("a list of 2000 items", None),
    ("13º de outubro de 2023", Span(day(2023, 10, 13), day(2023, 10, 14))),
])
def test_words_that_look_like_times(query, span):
    assert time_span(query, NOW) == span


@pytest.mark.parametrize("query, found", [
    ("What did O'Brien say?", ("brien",)),  # as a message's words split: "o", "brien"
    ("Tell me about the trip", ()),
    ("Remind me what Ana said", ("ana",)),
])
def test_names_as_messages_hold_them(query, found):
    assert names(query) == found
