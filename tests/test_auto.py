"""Strategy.AUTO: the text rules (English and Portuguese, whole words, accents folded), the
memory probe that decides the scope, the owner's habit, and what the result says."""

from __future__ import annotations

import pytest
from hash_embedder import HashEmbedder
from real_model import needs_minilm

from localmem import InvalidInputError, Memory, Selection, Strategy
from localmem.selector import Probe, choose, habit, read_cues


def pick(text: str, probe: Probe | None = None, pattern: Strategy | None = None) -> Selection:
    return choose(read_cues(text), lambda: probe, lambda: pattern)


@pytest.mark.parametrize(("text", "strategy"), [
    # The original design's three tests.
    ("Oi, tudo bem?", Strategy.SESSION_ONLY),
    ("Lembra quando falamos sobre pizza?", Strategy.SEMANTIC_SEARCH),
    ("Qual foi meu último pedido?", Strategy.RECENT_HISTORY),
    # Without accents, other case: the same.
    ("qual foi meu ultimo pedido", Strategy.RECENT_HISTORY),
    ("OLÁ! Tudo bom?", Strategy.SESSION_ONLY),
    ("thanks so much!!", Strategy.SESSION_ONLY),
    ("kkkk valeuu", Strategy.SESSION_ONLY),
    ("what did I just say?", Strategy.RECENT_HISTORY),
    ("o que vc acabou de falar?", Strategy.RECENT_HISTORY),
    ("and the second one?", Strategy.RECENT_HISTORY),
    ("e se chover?", Strategy.RECENT_HISTORY),
    ("what did we decide about the budget earlier in this chat?", Strategy.SEMANTIC_SEARCH),
    ("do you remember my dog's name?", Strategy.CROSS_CONVERSATION),
    ("qual é minha comida favorita?", Strategy.CROSS_CONVERSATION),
    ("vc lembra quanto eu ganho?", Strategy.CROSS_CONVERSATION),  # remember + "I": the person
    ("lembra quando falamos sobre pizza hoje?", Strategy.SEMANTIC_SEARCH),  # ... today: this chat
    ("quanto é 7 x 60?", Strategy.SESSION_ONLY),
    ("What's 18% of 760?", Strategy.SESSION_ONLY),
    ("e o segundo item?", Strategy.RECENT_HISTORY),
    ("bold the times pls", Strategy.RECENT_HISTORY),  # an edit of what was just produced
    ("coloca em ordem alfabética", Strategy.RECENT_HISTORY),
    ("too long, cut it to 8 items", Strategy.RECENT_HISTORY),
    ("can you put that in a table?", Strategy.RECENT_HISTORY),
])
def test_the_text_decides_when_it_says_enough(text, strategy):
    got = pick(text)  # no probe: the text alone
    assert got.strategy is strategy, got


def test_whole_words_only():
    # The seed's substring rules take "oi" inside "foi" and "ola" inside "bola" for greetings.
    assert read_cues("foi").small_talk is False
    assert read_cues("a bola").small_talk is False
    assert read_cues("oi").small_talk is True
    # A greeting followed by a real question is not small talk.
    assert read_cues("hi! which hotel did I book in Lisbon?").small_talk is False


def test_accents_that_change_meaning_are_kept_where_it_matters():
    # "é o" ("is the") does not open a message like "e o" ("and the").
    assert read_cues("é obrigatório visto pra entrar em Portugal?").opening is False
    assert read_cues("e o segundo?").opening is True
    # "o primeiro" points at a list only when it opens the message.
    assert read_cues("Quem foi o primeiro presidente do Brasil?").follow_up is False


def test_what_the_assistant_said_is_searched_in_this_conversation():
    probe = Probe(here=0.24, elsewhere=0.34, closeness=0.35)
    got = pick("how much ice did you say I should buy?", probe)
    assert got.strategy is Strategy.SEMANTIC_SEARCH and got.reason == "assistant_said"
    # ... unless another conversation is clearly the closer one.
    elsewhere = Probe(here=0.2, elsewhere=0.6, closeness=0.35)
    assert pick("how much ice did you say I should buy?", elsewhere).strategy is Strategy.CROSS_CONVERSATION


def test_an_impersonal_question_sharing_no_word_with_memory_needs_none():
    probe = Probe(here=0.55, elsewhere=0.59, closeness=0.35, shares_words=False)
    got = pick("me explica o que são juros compostos", probe)
    assert got.strategy is Strategy.SESSION_ONLY and got.reason == "nothing_in_common"
    # A person in it ("my", "I") or a shared word keeps the memory in play.
    assert pick("what are my juros compostos?", probe).strategy is Strategy.CROSS_CONVERSATION
    shared = Probe(here=0.55, elsewhere=0.59, closeness=0.35, shares_words=True)
    assert pick("me explica o que são juros compostos", shared).strategy is Strategy.CROSS_CONVERSATION


def test_the_probe_decides_the_scope_of_a_plain_question():
    question = "When did Caroline go to the support group?"  # no keyword of any rule
    elsewhere = pick(question, Probe(here=0.2, elsewhere=0.6, closeness=0.35))
    assert elsewhere.strategy is Strategy.CROSS_CONVERSATION and elsewhere.reason == "closer_elsewhere"
    assert (elsewhere.here, elsewhere.elsewhere) == (0.2, 0.6) and "0.60" in elsewhere.detail
    here = pick(question, Probe(here=0.7, elsewhere=0.2, closeness=0.35))
    assert here.strategy is Strategy.SEMANTIC_SEARCH and here.confident
    # Close on both sides: the owner-wide search, whose scope holds this conversation too.
    both = pick(question, Probe(here=0.7, elsewhere=0.4, closeness=0.35))
    assert both.strategy is Strategy.CROSS_CONVERSATION and both.reason == "close_elsewhere_too"
    # A model with no calibrated closeness: the closer side decides.
    assert pick(question, Probe(0.7, 0.2, None)).strategy is Strategy.SEMANTIC_SEARCH
    assert pick(question, Probe(0.2, 0.7, None)).strategy is Strategy.CROSS_CONVERSATION
    tie = pick(question, Probe(here=0.6, elsewhere=0.62, closeness=0.35))
    assert tie.strategy is Strategy.CROSS_CONVERSATION  # its scope holds this conversation too


def test_nothing_close_is_said_and_falls_back_safely():
    far = pick("Who painted the Mona Lisa?", Probe(here=0.1, elsewhere=0.15, closeness=0.35))
    assert far.strategy is Strategy.SESSION_ONLY and far.reason == "nothing_close"
    near = pick("Who painted the Mona Lisa?", Probe(here=0.1, elsewhere=0.33, closeness=0.35))
    assert near.strategy is Strategy.RECENT_HISTORY and near.reason == "fallback" and not near.confident
    assert "safe default" in near.detail
    mine = pick("where is the dinner we reserved?", Probe(here=0.2, elsewhere=0.3, closeness=0.35))
    assert mine.strategy is Strategy.CROSS_CONVERSATION and not mine.confident


def test_the_owner_habit_breaks_ties_only():
    probe = Probe(here=0.1, elsewhere=0.33, closeness=0.35)
    got = pick("Who painted the Mona Lisa?", probe, pattern=Strategy.HYBRID)
    assert got.strategy is Strategy.HYBRID and got.reason == "owner_pattern" and not got.confident
    # A confident choice ignores it.
    assert pick("oi", pattern=Strategy.HYBRID).strategy is Strategy.SESSION_ONLY
    clear = Probe(here=0.2, elsewhere=0.6, closeness=0.35)
    assert pick("when did Caroline move?", clear, Strategy.HYBRID).strategy is Strategy.CROSS_CONVERSATION


def test_habit_needs_enough_explicit_calls_and_a_majority():
    assert habit({}) is None
    assert habit({"hybrid": 3}) is None
    assert habit({"hybrid": 4}) is Strategy.HYBRID
    assert habit({"hybrid": 4, "recent_history": 4}) is None
    assert habit({"no-such-strategy": 9}) is None


def test_long_requests_get_the_recent_turns_and_what_relates():
    text = ("Okay, now put everything together for me: a final shopping list for the party with the pizzas, "
            "the drinks and the ice, each with its price")
    assert pick(text).strategy is Strategy.HYBRID


@pytest.fixture
def chats(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync") as mem:
        for i, text in enumerate(["my dog Rex loves the beach", "Rex is allergic to chicken",
                                  "we booked Hotel Lisboa for July"]):
            mem.add("user", text, conversation_id="old", owner_id="u", msg_id=f"old-{i}")
        for i, text in enumerate(["let us plan the party", "twenty guests, pizza and music"]):
            mem.add("user", text, conversation_id="now", owner_id="u", msg_id=f"now-{i}")
        mem.add("user", "someone else's Rex beach", conversation_id="x", owner_id="other")
        yield mem


def test_auto_runs_the_chosen_strategy_and_says_how(chats):
    got = chats.get_memory("auto", query="Rex beach chicken allergic", conversation_id="now", owner_id="u",
                           lookback_days=None)
    assert got.strategy is Strategy.CROSS_CONVERSATION  # never AUTO
    assert got.selection is not None and got.selection.strategy is got.strategy
    assert got.selection.reason == "closer_elsewhere" and got.selection.choose_ms >= 0
    assert {m.msg_id for m in got.messages} >= {"old-0", "old-1"}
    assert all(m.owner_id == "u" for m in got.messages)  # the probe never looks at other owners
    here = chats.get_memory(Strategy.AUTO, query="party guests pizza music", conversation_id="now",
                            owner_id="u", lookback_days=None)
    # Its closest messages are this conversation's last turns: the thread itself.
    assert here.strategy is Strategy.HYBRID and here.selection.reason == "current_thread"
    assert {m.conversation_id for m in here.messages} == {"now"}
    talk = chats.get_memory(Strategy.AUTO, query="Oi, tudo bem?", conversation_id="now", owner_id="u")
    assert talk.strategy is Strategy.SESSION_ONLY and talk.messages == ()
    explicit = chats.get_memory(Strategy.HYBRID, query="party", conversation_id="now", owner_id="u")
    assert explicit.selection is None


def test_auto_embeds_the_query_once(tmp_path):
    embedder = HashEmbedder()
    with Memory(tmp_path / "m.db", embedder=embedder, embed="sync", query_cache_ttl=0) as mem:
        mem.add("user", "my dog Rex loves the beach", conversation_id="old", owner_id="u")
        mem.add("user", "plan the party", conversation_id="now", owner_id="u")
        before = embedder.calls
        got = mem.get_memory("auto", query="tell me about Rex on the beach", conversation_id="now",
                             owner_id="u", lookback_days=None)
        assert got.strategy is Strategy.CROSS_CONVERSATION
        assert embedder.calls - before == 1


def test_auto_without_embeddings_uses_the_text_alone(tmp_path):
    with Memory(tmp_path / "m.db", embed="off") as mem:  # no model is ever loaded
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        got = mem.get_memory("auto", query="qual foi meu último pedido?", conversation_id="c", owner_id="u")
        assert got.strategy is Strategy.RECENT_HISTORY and got.selection.reason == "recent_reference"
        plain = mem.get_memory("auto", query="Who painted the Mona Lisa?", conversation_id="c", owner_id="u")
        assert plain.strategy is Strategy.RECENT_HISTORY and not plain.selection.confident
        assert "no similarity" in plain.selection.detail


def test_auto_learns_the_habit_from_explicit_calls_not_its_own(tmp_path):
    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        for _ in range(10):  # its own choices never become a habit
            mem.get_memory("auto", query="Who painted the Mona Lisa?", conversation_id="c", owner_id="u")
        got = mem.get_memory("auto", query="Who painted the Mona Lisa?", conversation_id="c", owner_id="u")
        assert got.selection.reason == "fallback"
        for _ in range(4):  # the owner names session_only itself
            mem.get_memory("session_only", conversation_id="c", owner_id="u")
        got = mem.get_memory("auto", query="Who painted the Mona Lisa?", conversation_id="c", owner_id="u")
        assert got.strategy is Strategy.SESSION_ONLY and got.selection.reason == "owner_pattern"
        other = mem.get_memory("auto", query="Who painted the Mona Lisa?", conversation_id="c", owner_id="v")
        assert other.selection.reason == "fallback"  # one owner's habit is not another's


def test_examples_by_meaning_catch_what_the_lists_do_not():
    probe = Probe(here=0.1, elsewhere=0.5, closeness=0.35, like_small_talk=0.75, like_recent=0.3)
    got = pick("good night, talk tomorrow", probe)
    assert got.strategy is Strategy.SESSION_ONLY and got.reason == "like_small_talk" and "0.75" in got.detail
    follow = Probe(here=0.1, elsewhere=0.5, closeness=0.35, like_small_talk=0.2, like_recent=0.8)
    assert pick("the doorman part once more", follow).strategy is Strategy.RECENT_HISTORY
    # A memory asked for is not small talk, however it reads.
    assert pick("do you remember my dog?", probe).strategy is Strategy.CROSS_CONVERSATION


@needs_minilm
def test_auto_with_the_real_model(tmp_path):
    with Memory(tmp_path / "m.db", embed="sync") as mem:
        mem.add("user", "My dog Thor is allergic to chicken", conversation_id="old", owner_id="u")
        mem.add("user", "Let's plan the open house for Saturday", conversation_id="now", owner_id="u")
        ask = {"conversation_id": "now", "owner_id": "u", "lookback_days": None}
        night = mem.get_memory("auto", query="good night, talk tomorrow", **ask)
        assert night.strategy is Strategy.SESSION_ONLY and night.selection.reason == "like_small_talk"
        dog = mem.get_memory("auto", query="What is Thor allergic to?", **ask)
        assert dog.strategy is Strategy.CROSS_CONVERSATION and dog.messages[0].conversation_id == "old"
        assert dog.selection.elsewhere > dog.selection.here


def test_the_current_thread_and_a_short_request_to_the_assistant():
    # The conversation's closest messages are among its last turns: the thread itself.
    thread = Probe(here=0.5, elsewhere=0.45, closeness=0.35, recent=0.52)
    got = pick("the butter amount for the minis", thread)
    assert got.strategy is Strategy.HYBRID and got.reason == "current_thread"
    # An older message of this conversation clearly closer: a topic search instead.
    older = Probe(here=0.7, elsewhere=0.2, closeness=0.35, recent=0.4)
    assert pick("the butter amount for the minis", older).strategy is Strategy.SEMANTIC_SEARCH
    # Nothing close, but spoken to the assistant: the recent turns, not "no memory".
    far = Probe(here=0.1, elsewhere=0.15, closeness=0.35, recent=0.1)
    got = pick("can u add more emoji", far)
    assert got.strategy is Strategy.RECENT_HISTORY and not got.confident


def test_explain_follows_what_auto_chose(chats):
    ask = {"conversation_id": "now", "owner_id": "u", "lookback_days": None}
    shown = chats.explain("auto", query="Rex beach chicken allergic", **ask)
    assert "cross_conversation" in shown.render()
    with pytest.raises(InvalidInputError, match="auto chose session_only"):
        chats.explain("auto", query="Oi, tudo bem?", **ask)


def test_without_embeddings_a_question_about_the_user_searches_their_memory(tmp_path):
    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "I have a severe peanut allergy", conversation_id="old", owner_id="u")
        mem.add("user", "plan a Thai dinner", conversation_id="now", owner_id="u")
        got = mem.get_memory("auto", query="Hang on, what about my allergy?", conversation_id="now",
                             owner_id="u", dense=False, lookback_days=None)
        assert got.strategy is Strategy.CROSS_CONVERSATION
        assert [m.conversation_id for m in got.messages] == ["old"]  # found by keywords


def test_the_probe_and_the_search_scan_the_owner_once_with_a_lookback(chats, monkeypatch):
    calls = []
    real_knn = chats._store.knn

    def counted(*args, **kwargs):
        calls.append(kwargs.get("conversation_id"))
        return real_knn(*args, **kwargs)

    monkeypatch.setattr(chats._store, "knn", counted)
    got = chats.get_memory("auto", query="Rex beach chicken allergic", conversation_id="now", owner_id="u",
                           lookback_days=7)
    assert got.strategy is Strategy.CROSS_CONVERSATION
    assert calls == [None]  # one owner-wide scan, the probe's, reused by the search


def test_a_fact_with_number_in_it_is_not_a_follow_up():
    elsewhere = Probe(here=0.2, elsewhere=0.8, closeness=0.35)
    assert pick("dentist phone number?", elsewhere).strategy is Strategy.CROSS_CONVERSATION
    # An edit of the user's own things is not an edit of the last answer.
    assert pick("list my allergies", elsewhere).strategy is Strategy.CROSS_CONVERSATION
    # Only remembering makes a question about the person: "eu falei ..." (I said) may be this chat.
    assert read_cues("eu falei algo sobre o tom da palestra?").personal is False
    assert read_cues("do you remember what I weigh?").personal is True


def test_without_embeddings_auto_searches_where_the_querys_words_are(tmp_path):
    with Memory(tmp_path / "m.db", embed="off") as mem:
        mem.add("user", "My favourite drink is green tea with jasmine", conversation_id="now", owner_id="u")
        for n in range(20):
            mem.add("user", f"Meeting notes {n}: the quarterly budget review", conversation_id="now", owner_id="u")
        mem.add("user", "The boat to Ilha Grande leaves at nine", conversation_id="trip", owner_id="u")
        ask = {"conversation_id": "now", "owner_id": "u", "limit": 3, "lookback_days": None}
        # Not the last turns (the old fallback): this conversation's keyword match.
        tea = mem.get_memory("auto", query="green tea", **ask)  # dense left True: embed="off" decides
        assert tea.strategy is Strategy.SEMANTIC_SEARCH and tea.selection.reason == "words_here"
        assert tea.messages[0].content.startswith("My favourite drink")
        boat = mem.get_memory("auto", query="when does the boat to Ilha Grande leave", **ask)
        assert boat.strategy is Strategy.CROSS_CONVERSATION and boat.selection.reason == "words_elsewhere"
        assert [m.conversation_id for m in boat.messages] == ["trip"]
        # The user's turn stored before the search (here, reworded) is not where its words
        # are: a fact in another conversation still is.
        mem.add("user", "I had green tea at the old place", conversation_id="old", owner_id="u")
        mem.add("user", "Which TEA did I have?", conversation_id="now", owner_id="u")
        which = mem.get_memory("auto", query="which tea did I have", **ask)
        assert which.strategy is Strategy.CROSS_CONVERSATION and which.selection.reason == "words_elsewhere"
        assert "I had green tea at the old place" in [m.content for m in which.messages]
        # The query itself, stored before the search, is not where its words are.
        mem.add("user", "the ferry schedule to Paraty", conversation_id="now", owner_id="u")
        alone = mem.get_memory("auto", query="the ferry schedule to Paraty", **ask)
        assert alone.selection.reason == "fallback" and not alone.selection.confident
