"""The default summariser (localmem.summarize.ExtractiveSummarizer): what it keeps, what it
drops, its budget, its incremental use, and its refusals."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from localmem.errors import InvalidInputError, ModelError
from localmem.records import Message
from localmem.summarize import ExtractiveSummarizer
from localmem.tokens import count_tokens

T0 = datetime(2024, 5, 1, 10, 0, tzinfo=timezone.utc)
LINE = re.compile(r"\[(\d{4}-\d{2}-\d{2})\] ([^:]+): (.+)\Z")


def msg(content: str, role: str = "user", when: datetime | None = None, k: int = 0) -> Message:
    return Message(
        msg_id=f"m{k}", conversation_id="c", owner_id="u", role=role, content=content,
        created_at=when if when is not None else T0 + timedelta(minutes=k),
    )


def msgs(*contents: str, role: str = "user") -> list[Message]:
    return [msg(c, role, k=k) for k, c in enumerate(contents)]


def cost(summary: str, counter=count_tokens) -> int:
    """What the budget counts: each line, plus 1 for its newline."""
    return sum(counter(line) + 1 for line in summary.splitlines())


def parse(summary: str) -> list[tuple[str, str, str]]:
    out = []
    for line in summary.splitlines():
        m = LINE.match(line)
        assert m, line
        out.append((m.group(1), m.group(2), m.group(3)))
    return out


FACT = "Caroline went to the LGBTQ support group in Boston on 12 May 2023 with Mel."
PLEASANTRIES = ["Thanks!", "Wow, that's cool!", "Thank you so much, that's so nice!", "Haha yes", "Oh, really?"]


# -- what it keeps ----------------------------------------------------------------------


def test_names_dates_and_numbers_beat_pleasantries():
    messages = msgs(*PLEASANTRIES, FACT, "I think that is really great and I love it so much.")
    one_line = count_tokens(f"[2024-05-01] user: {FACT}") + 1
    summary = ExtractiveSummarizer(one_line)("", messages)
    assert summary == f"[2024-05-01] user: {FACT}"


def test_small_talk_is_never_kept_even_with_room():
    summary = ExtractiveSummarizer(1000)("", msgs(*PLEASANTRIES, "Oi!", "Obrigado!", "Que legal!"))
    assert summary == ""


def test_a_short_fact_is_kept_when_there_is_room_but_after_longer_salient_sentences():
    short = "Moro em Lisboa."  # 3 words: below the 5-word rule, still a fact
    messages = msgs(short, FACT)
    roomy = ExtractiveSummarizer(1000)("", messages)
    assert [s for _, _, s in parse(roomy)] == [short, FACT]
    tight = ExtractiveSummarizer(count_tokens(f"[2024-05-01] user: {FACT}") + 1)("", messages)
    assert [s for _, _, s in parse(tight)] == [FACT]


def test_lines_are_date_label_and_the_sentence_verbatim():
    content = "We moved to Porto in March 2021.  My sister Ana   lives in Braga!\nShe has 2 kids? Yes, Tom and Eva."
    summary = ExtractiveSummarizer(1000)("", [msg(content, role="assistant")])
    lines = parse(summary)
    assert {d for d, _, _ in lines} == {"2024-05-01"}
    assert {label for _, label, _ in lines} == {"assistant"}
    sentences = [s for _, _, s in lines]
    assert "My sister Ana   lives in Braga!" in sentences  # inner spacing untouched
    assert all(s in content for s in sentences)
    assert "We moved to Porto in March 2021." in sentences


def test_the_date_is_the_utc_day():
    late = datetime(2024, 5, 1, 23, 30, tzinfo=timezone(timedelta(hours=-3)))  # 02:30 UTC on May 2
    summary = ExtractiveSummarizer(1000)("", [msg(FACT, when=late)])
    assert summary.startswith("[2024-05-02] user: ")


def test_sentence_splitting_keeps_abbreviations_initials_and_list_numbers():
    content = ("Dr. Smith met J. K. Rowling in the U.S. last Monday at 10 a.m. near Boston.\n"
               "1. Book the hotel in Lisbon for 3 nights. 2. Call Ana about the 14 June trip.")
    summary = ExtractiveSummarizer(1000)("", [msg(content)])
    assert [s for _, _, s in parse(summary)] == [
        "Dr. Smith met J. K. Rowling in the U.S. last Monday at 10 a.m. near Boston.",
        "1. Book the hotel in Lisbon for 3 nights.",
        "2. Call Ana about the 14 June trip.",
    ]


# -- speakers ---------------------------------------------------------------------------


def test_a_leading_speaker_label_is_carried_onto_every_sentence():
    content = "Caroline: I went to a support group in Boston yesterday. Then Mel and I ate pizza on Friday night."
    summary = ExtractiveSummarizer(1000)("", [msg(content, role="user")])
    lines = parse(summary)
    assert len(lines) == 2
    assert {label for _, label, _ in lines} == {"Caroline"}
    assert lines[0][2] == "I went to a support group in Boston yesterday."


@pytest.mark.parametrize(("content", "label"), [
    ("Mary Jane Watson: She flew to Paris on 3 June 2022 with Peter Parker.", "Mary Jane Watson"),
    ("Dr. Smith: The surgery in Boston is on Monday 12 June at 9.", "Dr. Smith"),
    ("Note: the surgery in Boston is on Monday 12 June at 9.", "user"),  # a heading, not a speaker
    ("the plan: the surgery in Boston is on Monday 12 June at 9.", "user"),  # not capitalised
    ("Mary Jane Watson Parker: She flew to Paris on 3 June 2022 with Peter.", "user"),  # 4 words
    ("Fechado: 7 pizzas da Bella Napoli para sábado, dia 14, às 16h.", "user"),  # Portuguese "agreed:"
    ("The meeting at 10:30 in Boston moved to Friday 14 June.", "user"),
])
def test_what_counts_as_a_speaker_label(content, label):
    summary = ExtractiveSummarizer(1000)("", [msg(content)])
    assert parse(summary)[0][1] == label


def test_the_role_is_the_label_otherwise():
    messages = [msg(FACT, role="user", k=0), msg("Your trip to Lisbon on 14 June 2024 is booked for 3 nights.",
                                                 role="assistant", k=1)]
    assert [label for _, label, _ in parse(ExtractiveSummarizer(1000)("", messages))] == ["user", "assistant"]


# -- order, incremental use -------------------------------------------------------------


def test_output_is_in_conversation_order_not_rank_order():
    weak = "We talked about the garden and some flowers near the house today."
    strong = "Caroline and Melanie met Jon in Boston on 12 May 2023 at 7 pm for 2 hours."
    summary = ExtractiveSummarizer(1000)("", msgs(weak, strong))
    assert [s for _, _, s in parse(summary)] == [weak, strong]


def test_previous_lines_come_first_then_new_sentences():
    first = ExtractiveSummarizer(1000)("", msgs("Zoe moved to Lisbon in June 2022 with her 2 cats."))
    later = [msg("Ana started a new job at Google in Zurich on 3 March 2024.", k=5)]
    both = ExtractiveSummarizer(1000)(first, later)
    assert both.splitlines()[0] == first
    assert "Zurich" in both.splitlines()[1]


def test_a_summary_that_fits_is_a_fixed_point():
    f = ExtractiveSummarizer(1000)
    summary = f("", msgs(FACT, "Ana started a new job at Google in Zurich on 3 March 2024.", *PLEASANTRIES))
    assert summary
    assert f(summary, []) == summary
    assert f(f(summary, []), []) == summary


def test_previous_lines_stay_unless_beaten():
    budget = count_tokens(f"[2024-05-01] user: {FACT}") + 1  # room for one line
    f = ExtractiveSummarizer(budget)
    previous = f("", msgs(FACT))
    assert previous
    weaker = ["I think that is so true and I really love the garden.", "We should go walking sometime soon."]
    assert f(previous, msgs(*PLEASANTRIES, *weaker)) == previous  # nothing better came
    better = "Mel, Jon and Gina ran the Boston marathon on 5 June 2023."
    assert count_tokens(f"[2024-05-01] user: {better}") + 1 <= budget
    assert f(previous, msgs(better)) == f"[2024-05-01] user: {better}"


def test_incremental_summary_is_a_summary_of_both_parts():
    f = ExtractiveSummarizer(200)
    part1 = msgs(FACT, *PLEASANTRIES)
    part2 = [msg("Ana started a new job at Google in Zurich on 3 March 2024.", k=20), msg("Cool!", k=21)]
    two_steps = f(f("", part1), part2)
    one_step = f("", part1 + part2)
    assert two_steps == one_step
    assert "Boston" in two_steps and "Zurich" in two_steps


def test_empty_messages_retrim_previous_to_the_budget():
    f = ExtractiveSummarizer(1000)
    long = f("", [msg(f"Guest {k}: Ana booked room {k} in Lisbon for {k} nights in June 2024.", k=k)
                  for k in range(40)])
    small = ExtractiveSummarizer(100)(long, [])
    assert 0 < cost(small) <= 100
    assert set(small.splitlines()) <= set(long.splitlines())


def test_previous_from_another_summariser_is_kept_verbatim():
    previous = ("The user, Ana, lives in Lisbon and works at Google since 2021.\n\n"
                "- Prefers vegetarian food; allergic to peanuts.\n"
                "[2024-04-02] meeting moved to Friday 14 June at 10:30\n")
    out = ExtractiveSummarizer(1000)(previous, [])
    assert out.splitlines() == [line for line in previous.splitlines() if line.strip()]


def test_a_previous_line_longer_than_the_budget_is_split_into_sentences():
    paragraph = ("The user, Ana, lives in Lisbon and works at Google since 2021. " * 1
                 + " ".join(f"She visited Porto {k} times with Tom in {2000 + k}." for k in range(30)))
    out = ExtractiveSummarizer(120)(paragraph, [])
    assert 0 < cost(out) <= 120
    assert all(line in paragraph for line in out.splitlines())


# -- near-duplicates --------------------------------------------------------------------


def test_repeated_and_near_duplicate_sentences_are_kept_once():
    a = "Ana booked the hotel in Lisbon for 14 June 2024."
    b = "Ana booked the hotel in Lisbon for 14 June 2024!"  # near-identical wording
    c = "Tom adopted 2 cats from the Boston shelter in March."
    summary = ExtractiveSummarizer(1000)("", msgs(a, a, b, c))
    assert [s for _, _, s in parse(summary)] == [a, c]
    # a new sentence that repeats a previous line is not added again
    assert ExtractiveSummarizer(1000)(summary, [msg(a, k=9)]) == summary


def _fake_embed(groups: dict[str, int], calls: list[list[str]]):
    """Vectors by group: the same group gives parallel (not normalised) vectors."""

    def embed(texts):
        calls.append(list(texts))
        out = np.zeros((len(texts), 8), dtype=np.float32)
        for i, t in enumerate(texts):
            out[i, groups.get(t, 7)] = 3.0 + i  # length varies: must be normalised
            out[i, 7] += 0.01 * (len(t) % 5)
        return out

    return embed


def test_with_an_embedder_near_duplicates_are_judged_by_cosine():
    a = "Ana booked the hotel in Lisbon for 14 June 2024."
    paraphrase = "Her reservation is confirmed: Friday night, Portuguese capital, one room."  # other words
    other = "Tom adopted 2 cats from the Boston shelter in March."
    calls: list[list[str]] = []
    f = ExtractiveSummarizer(1000, embed=_fake_embed({a: 0, paraphrase: 0, other: 1}, calls))
    summary = f("", msgs(a, paraphrase, other))
    assert len(parse(summary)) == 2 and "Tom" in summary
    assert ExtractiveSummarizer(1000)("", msgs(a, paraphrase, other)).count("\n") == 2  # lexical: all kept
    # each sentence is embedded once: the previous lines' vectors are remembered
    calls.clear()
    f(summary, [])
    assert calls == []


def test_an_embedder_failing_is_an_error_not_a_quiet_switch_to_the_lexical_rule():
    def broken(texts):
        raise ModelError("no model")

    with pytest.raises(ModelError, match="no model"):
        ExtractiveSummarizer(1000, embed=broken)("", msgs(FACT, FACT))


def test_an_embedder_returning_the_wrong_shape_is_an_error():
    messages = msgs(FACT, "Tom adopted 2 cats from the Boston shelter in March.")
    f = ExtractiveSummarizer(1000, embed=lambda texts: np.zeros((1, 4), dtype=np.float32))
    with pytest.raises(ModelError):
        f("", messages)


def test_other_embedder_errors_pass():
    def broken(texts):
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        ExtractiveSummarizer(1000, embed=broken)("", msgs(FACT))


# -- Portuguese -------------------------------------------------------------------------


def test_portuguese_facts_beat_portuguese_small_talk():
    fact = "Vou fazer um open house no meu apê novo no sábado, dia 14, com a Ana e o Pedro."
    messages = msgs("Oi! Tudo bem?", "Obrigado, que legal!", "Nossa, que ótimo, valeu mesmo!", fact)
    summary = ExtractiveSummarizer(1000)("", messages)
    assert [s for _, _, s in parse(summary)] == [fact]


def test_portuguese_time_words_count():
    dated = "A gente foi ao mercado ontem e volta na próxima semana."
    undated = "A gente foi ao mercado grande e volta com muita fruta."
    line = f"[2024-05-01] user: {dated}"
    summary = ExtractiveSummarizer(count_tokens(line) + 1)("", msgs(undated, dated))
    assert summary == line
    # and without accents, as people often type
    plain = "A gente foi ao mercado ontem e volta na proxima semana."
    line = f"[2024-05-01] user: {plain}"
    assert ExtractiveSummarizer(count_tokens(line) + 1)("", msgs(undated, plain)) == line


# -- budget and determinism (any text) --------------------------------------------------

TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=300)
CONTENT = st.one_of(
    TEXT,
    st.lists(st.sampled_from([FACT, *PLEASANTRIES, "Caroline: ", "Dr. Smith", "\n", " ", "2.", "Ana", "ontem",
                              "Lisboa", "!", "?", "é", "😀", "\u2028", "\r\n"]), max_size=30).map(" ".join),
)
MESSAGES = st.lists(st.tuples(st.sampled_from(["user", "assistant", "system", "Weird: [role]"]), CONTENT),
                    max_size=8).map(lambda pairs: [msg(c, role=r, k=k) for k, (r, c) in enumerate(pairs)])


@settings(max_examples=300, deadline=None)
@given(previous=TEXT, messages=MESSAGES, budget=st.integers(min_value=1, max_value=300),
       use_len=st.booleans())
def test_never_over_the_budget(previous, messages, budget, use_len):
    counter = len if use_len else count_tokens
    f = ExtractiveSummarizer(budget, count_tokens=counter)
    summary = f(previous, messages)
    assert cost(summary, counter) <= budget
    assert counter(summary) <= budget
    assert "" not in summary.splitlines()
    again = f(summary, messages[:1])
    assert cost(again, counter) <= budget


@settings(max_examples=200, deadline=None)
@given(messages=MESSAGES, budget=st.integers(min_value=1, max_value=400))
def test_lines_are_verbatim_sentences_and_a_summary_is_a_fixed_point(messages, budget):
    f = ExtractiveSummarizer(budget)
    summary = f("", messages)
    for line in summary.splitlines():
        date, _, sentence = LINE.match(line).groups()
        assert any(sentence in m.content and date == m.created_at.date().isoformat() for m in messages)
    assert f(summary, []) == summary
    assert f("", messages) == summary  # deterministic
    assert ExtractiveSummarizer(budget)("", messages) == summary


# -- refusals ---------------------------------------------------------------------------


@pytest.mark.parametrize("budget", [0, -1, 1.5, True, "10", None])
def test_max_tokens_must_be_a_positive_int(budget):
    with pytest.raises(InvalidInputError, match="max_tokens"):
        ExtractiveSummarizer(budget)


@pytest.mark.parametrize("previous", [None, b"bytes", 3, ["line"]])
def test_previous_must_be_a_str(previous):
    with pytest.raises(InvalidInputError, match="previous"):
        ExtractiveSummarizer()(previous, [])


@pytest.mark.parametrize("messages", ["Caroline: hi", [{"role": "user", "content": "hi"}], None, [msg("x"), "y"]])
def test_messages_must_be_message_records(messages):
    with pytest.raises(InvalidInputError, match="messages"):
        ExtractiveSummarizer()("", messages)


def test_counter_and_embedder_must_be_callables():
    with pytest.raises(InvalidInputError, match="count_tokens"):
        ExtractiveSummarizer(count_tokens=5)
    with pytest.raises(InvalidInputError, match="embed"):
        ExtractiveSummarizer(embed="all-MiniLM-L6-v2")
    with pytest.raises(InvalidInputError, match="count_tokens"):
        ExtractiveSummarizer(count_tokens=lambda text: -1)("", msgs(FACT))


def test_the_default_counter_is_localmem_tokens_count_tokens():
    line = f"[2024-05-01] user: {FACT}"
    assert ExtractiveSummarizer(count_tokens(line) + 1)("", msgs(FACT)) == line
    assert ExtractiveSummarizer(count_tokens(line))("", msgs(FACT)) == ""


# -- the fast path gives what the plain algorithm gives ---------------------------------
#
# ExtractiveSummarizer keeps the scores of the previous summary's lines between folds,
# counts a message's head once, and compares word sets as bits. _reference is the plain
# algorithm (as first written): every fold re-parses, re-scores and re-counts everything and
# compares every pair of word sets; the two must give the same bytes.


def _reference(previous: str, messages, max_tokens: int, counter=count_tokens) -> str:
    import localmem.summarize as s

    def sentences(text):
        out = []
        for line in text.splitlines():
            start = 0
            for end in s._END.finditer(line):
                following = line[end.end(): end.end() + 1]
                if not following or following.islower():
                    continue
                if not s._HAS_LETTER.search(line, start, end.start()):
                    continue
                if end.group().rstrip() == ".":
                    before = line[max(0, end.start() - 40): end.start()].split()
                    word = (before[-1] if before else "").lstrip("\"'(“‘«[")
                    if (len(word) == 1 and word.isupper()) or s._DOTTED.fullmatch(word) \
                            or s._fold(word) in s._ABBREVIATIONS:
                        continue
                out.append(line[start: end.end()].strip())
                start = end.end()
            out.append(line[start:].strip())
        return [x for x in out if x]

    units = []  # (line, text)
    for line in previous.splitlines():
        if not line.strip():
            continue
        prefix = s._PREFIX.match(line)
        head, text = (line[: prefix.end()], line[prefix.end():]) if prefix else ("", line)
        if counter(line) + 1 <= max_tokens:
            units.append((line, text))
        else:
            units.extend((head + x, x) for x in sentences(text))
    for m in messages:
        content = m.content
        label = s._LABEL_JUNK.sub("", " ".join(m.role.split()))[:40].strip() or "unknown"
        speaker = s._SPEAKER.match(content, len(content) - len(content.lstrip()))
        if speaker:
            name = speaker.group(1)
            words = name.split(" ")
            if len(name) <= 40 and all(w[0].isupper() for w in words) \
                    and s._fold(words[0]).rstrip(".") not in s._HEADINGS:
                label, content = name, content[speaker.end():]
        created = m.created_at
        day = (created.astimezone(timezone.utc) if created.tzinfo is not None else created).date().isoformat()
        units.extend((f"[{day}] {label}: {x}", x) for x in sentences(content))

    scored = []  # (rank, line, text, cost, words)
    for position, (line, text) in enumerate(units):
        words = s._WORD.findall(text)
        caps = times = 0
        content_words, kept = set(), set()
        for k, word in enumerate(words):
            folded = s._fold(word)
            if folded in s._STOP or s._LAUGH.fullmatch(folded):
                continue
            kept.add(folded)
            if k > 0 and word[0].isupper():
                caps += 1
            if word.isdigit() or folded in s._TIME_WORDS or word == "May":
                times += 1
            if len(word) > 3:
                content_words.add(folded)
        salience = caps + times + s.CONTENT_WEIGHT * len(content_words)
        if salience <= 0.0:
            continue
        cost = counter(line) + 1
        tier = 0 if len(words) >= s.MIN_WORDS else 1
        scored.append(((tier, -salience / cost, position), line, text, cost, frozenset(kept)))

    def duplicate(a, b):
        if not a[4] or not b[4]:
            return a[2].strip().lower() == b[2].strip().lower()
        shared = len(a[4] & b[4])
        return shared / (len(a[4]) + len(b[4]) - shared) > s.JACCARD_DUPLICATE

    fitting = [x for x in scored if x[3] <= max_tokens]
    chosen, used = [], 0
    for candidate in sorted(fitting):
        if used + candidate[3] > max_tokens or any(duplicate(candidate, other) for other in chosen):
            continue
        chosen.append(candidate)
        used += candidate[3]
        if used + min(x[3] for x in fitting) > max_tokens:
            break
    return "\n".join(x[1] for x in sorted(chosen, key=lambda x: x[0][2]))  # in position order


VOCABULARY = ("Caroline Melanie Mel Jon Gina Ana Pedro Lisboa Boston LGBTQ May June yesterday last week "
         "next month ontem próxima semana sábado 2022 14 800 R$ the a and I I'm it's don’t that's went "
         "to support group adoption agency painting pottery camping kids dance studio really so "
         "Thanks! Wow, cool! Haha kkkk Dr. Smith e.g. U.S. Mr. 2. ... café ação 😀 lol yeah")
SENTENCE = st.lists(st.sampled_from(VOCABULARY.split()), min_size=1, max_size=14).map(" ".join).map(
    lambda x: x + "." if not x.endswith((".", "!", "?")) else x)
TURN = st.tuples(
    st.sampled_from(["Caroline: ", "Melanie: ", "Note: ", "", "  Jon: ", "e.g: "]),
    st.lists(st.one_of(SENTENCE, TEXT), min_size=1, max_size=4).map(lambda xs: " ".join(xs)),
    st.sampled_from(["", "\n", "\n\n- ", " "]),
).map(lambda t: t[0] + t[1].replace("  ", t[2], 1))
WHEN = st.sampled_from([T0, T0 + timedelta(days=40), datetime(2024, 5, 1, 23, 30),
                        datetime(2024, 5, 1, 23, 30, tzinfo=timezone(timedelta(hours=-3)))])
LOCOMO_BATCH = st.lists(st.tuples(st.sampled_from(["user", "assistant", "Weird: [role]"]), TURN, WHEN),
                        max_size=8)


def _batch(rows, k0=0):
    return [Message(msg_id=f"m{k0 + k}", conversation_id="c", owner_id="u", role=role, content=content,
                    created_at=when + timedelta(seconds=k)) for k, (role, content, when) in enumerate(rows)]


@settings(max_examples=150, deadline=None)
@given(previous=st.one_of(TEXT, st.lists(TURN, max_size=6).map("\n".join)),
       batches=st.lists(LOCOMO_BATCH, min_size=1, max_size=5),
       budget=st.integers(min_value=1, max_value=400),
       counter=st.sampled_from(["default", "len", "wrapped"]),
       threshold=st.sampled_from([0.5, 0.5, 0.3, 0.0, -1.0, 2.0]))
def test_folds_are_byte_identical_to_the_plain_algorithm(previous, batches, budget, counter, threshold):
    import localmem.summarize as s

    count = {"default": count_tokens, "len": len, "wrapped": lambda text: count_tokens(text)}[counter]
    saved = s.JACCARD_DUPLICATE
    s.JACCARD_DUPLICATE = threshold  # as the evaluation scripts vary it
    try:
        f = ExtractiveSummarizer(budget, count_tokens=None if counter == "default" else count)
        mine = theirs = previous
        for k, rows in enumerate(batches):
            messages = _batch(rows, 100 * k)
            mine, theirs = f(mine, messages), _reference(theirs, messages, budget, count)
            assert mine == theirs
        # the lines it keeps are scored for the budget in force, not the one they were kept under
        f.max_tokens = max(1, budget // 3)
        assert f(mine, []) == _reference(mine, [], f.max_tokens, count)
    finally:
        s.JACCARD_DUPLICATE = saved


def _fixture_conversations():
    import json
    from pathlib import Path

    for path in sorted(Path(__file__).parent.parent.glob("benchmarks/data/auto_strategy_fixture*.json")):
        for conversation in json.loads(path.read_text(encoding="utf-8"))["conversations"]:
            yield [Message(msg_id=f"m{k}", conversation_id="c", owner_id="u", role=m["role"], content=m["content"],
                           created_at=T0 + timedelta(hours=k)) for k, m in enumerate(conversation["messages"])]


@pytest.mark.parametrize("budget", [60, 300, 1000])
def test_folding_the_portuguese_fixtures_matches_the_plain_algorithm(budget):
    f = ExtractiveSummarizer(budget)  # one instance for every conversation, as Memory has
    conversations = list(_fixture_conversations())
    assert len(conversations) >= 10
    for messages in conversations:
        mine = theirs = ""
        for start in range(0, len(messages), 3):
            chunk = messages[start: start + 3]
            mine, theirs = f(mine, chunk), _reference(theirs, chunk, budget)
            assert mine == theirs


def test_a_shared_instance_folds_in_threads_as_it_does_alone():
    import threading

    conversations = list(_fixture_conversations())

    def fold_all(f, messages):
        summary = ""
        for start in range(0, len(messages), 2):
            summary = f(summary, messages[start: start + 2])
        return summary

    alone = [fold_all(ExtractiveSummarizer(200), m) for m in conversations]
    shared = ExtractiveSummarizer(200)
    results: dict[int, str] = {}
    threads = [threading.Thread(target=lambda k=k, m=m: results.__setitem__(k, fold_all(shared, m)))
               for k, m in enumerate(conversations)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [results[k] for k in range(len(conversations))] == alone


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(TEXT, st.text(alphabet=st.characters(max_codepoint=127), max_size=200)),
       head=st.sampled_from(["[2024-05-01] Caroline: ", "[2024-05-01] Weird role: ", "[2024-05-01] Zoë: "]))
def test_a_line_costs_its_head_plus_its_sentence(text, head):
    # (counts add up over whitespace: the summariser counts a message's head once)
    assert count_tokens(head + text) == count_tokens(head) + count_tokens(text)
