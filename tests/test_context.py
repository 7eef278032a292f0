"""Context building (localmem.context.assemble, Memory.build_context): the budget is never
exceeded, whatever the counter; the budget policy (the newest turns first, a window that
never starts on an assistant turn, splits at message boundaries or one marked truncation,
the memory_share setting); and payloads that the OpenAI and Anthropic SDKs' own request types
accept, plus the Anthropic rules those types do not encode.

The payload checks import openai and anthropic (the ``test`` extra); without them they
are skipped, and the budget tests still run.
"""

from __future__ import annotations

import itertools
import json
import re
import sys
import uuid
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hash_embedder import HashEmbedder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localmem import InvalidInputError, Memory, Strategy, SummaryPolicy
from localmem.context import (
    HISTORY_HEADER,
    SUMMARY_HEADER,
    Candidate,
    Context,
    Dropped,
    assemble,
    best_first,
    history_line,
)
from localmem.records import RetrievedMessage
from localmem.tokens import MESSAGE_OVERHEAD, count_tokens

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
MARKER = re.compile(r"\[\.\.\. (\d+) tokens cut\] ")
NEEDS_SDKS = "needs the SDKs of the `test` extra: pip install -e '.[test]'"
REASONS = {"budget", "assistant_first", "not_summarized", "truncated"}


# -- counters: the default, and others a caller may pass ---------------------------------


def words(text: str) -> int:
    return len(text.split())


def lumpy(text: str) -> int:
    """Not additive: rounding, and a newline costs one more (so joined parts cost more)."""
    return len(text.encode()) // 3 + text.count("\n")


def quadratic(text: str) -> int:
    """Superadditive: a joined text costs more than its parts together."""
    return len(text) + len(text) ** 2 // 500


COUNTERS: dict[str, Callable[[str], int]] = {
    "default": count_tokens, "len": len, "words": words, "lumpy": lumpy, "quadratic": quadratic,
}


# -- what hypothesis draws ------------------------------------------------------------------

# Texts as the store accepts them (not blank, no NUL, no lone surrogate): arbitrary
# Unicode, almost-empty ones, words of several scripts with emoji and flags, long ones.
WORDS = st.sampled_from([
    "pizza", "Rex", "beach", "Caroline", "Lisboa", "olá", "ação", "日本語", "👍", "🇵🇹",
    "R$ 15.800", "2024-05-08", "...", "\u200b", "x", "naïve", "\n", "Hotel", "July",
])
SHORT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=40).filter(str.strip)
EMPTYISH = st.sampled_from([".", "a", "\u200b", "👍", "🇵🇹", " \n x \t", "\u3000y\u3000", "é"])
PHRASE = st.lists(WORDS, min_size=1, max_size=12).map(" ".join).filter(str.strip)
LONG = st.builds(lambda phrase, n: " ".join([phrase] * n), PHRASE, st.integers(20, 400))
TEXT = st.one_of(SHORT, EMPTYISH, PHRASE, LONG)
SUMMARY = st.one_of(
    st.just(""),
    st.lists(st.one_of(SHORT, PHRASE), max_size=8).map("\n".join),
    st.text(st.characters(codec="utf-8"), max_size=200),  # any text: blank lines, \r, \u2028 ...
)
ROLES = ("user", "assistant", "system")


@st.composite
def scenarios(draw: st.DrawFn) -> dict[str, Any]:
    """The arguments of one assemble() call: a conversation (candidates newest first, the
    oldest ``covered`` of them in the summary), a summary, a retrieved history that may
    overlap the conversation, a budget, shares, instructions and a counter."""
    turns = draw(st.lists(st.tuples(st.sampled_from(ROLES), TEXT), max_size=10))  # oldest first
    covered = draw(st.integers(0, len(turns)))
    candidates = [
        Candidate(role, text, f"m{i}", T0 + timedelta(minutes=i), summarized=i < covered)
        for i, (role, text) in enumerate(turns)
    ][::-1]
    history: list[RetrievedMessage] = []
    for j, spec in enumerate(draw(st.lists(st.one_of(st.integers(0, 9), TEXT), max_size=6))):
        if isinstance(spec, int):  # a message of this conversation, perhaps in the window
            if spec >= len(turns) or any(m.msg_id == f"m{spec}" for m in history):
                continue
            role, text = turns[spec]
            msg_id, conversation, at = f"m{spec}", "c", T0 + timedelta(minutes=spec)
        else:
            role, text = draw(st.sampled_from(("user", "assistant"))), spec
            msg_id, conversation, at = f"h{j}", draw(st.sampled_from(("c", "other"))), T0 - timedelta(days=j + 1)
        history.append(RetrievedMessage(msg_id, conversation, "u", role, text, at, score=1.0 - j / 10,
                                         source="semantic"))
    return {
        "candidates": candidates,
        "summary": draw(SUMMARY),
        "summary_version": draw(st.none() | st.integers(1, 9)),
        "history": history,
        "max_tokens": draw(st.integers(1, 3000)),
        "memory_share": draw(st.floats(0, 1)),
        "summary_share": draw(st.floats(0, 1)),
        "instructions": draw(st.none() | st.just("") | TEXT),
        "counter": draw(st.sampled_from(sorted(COUNTERS))),
    }


def run_assemble(sc: dict[str, Any]) -> Context:
    return assemble(
        max_tokens=sc["max_tokens"], count=COUNTERS[sc["counter"]], instructions=sc["instructions"],
        candidates=sc["candidates"], summary=sc["summary"], summary_version=sc["summary_version"],
        history=sc["history"], conversation_id="c", memory_share=sc["memory_share"],
        summary_share=sc["summary_share"],
    )


def instructions_fit(sc: dict[str, Any]) -> bool:
    instructions = sc["instructions"]
    return not instructions or COUNTERS[sc["counter"]](instructions) + MESSAGE_OVERHEAD <= sc["max_tokens"]


# -- the invariants of every context ---------------------------------------------------------


def check_context(
    ctx: Context, *, count: Callable[[str], int], max_tokens: int, candidates: Sequence[Candidate],
    summary: str = "", history: Sequence[RetrievedMessage] = (), instructions: str | None = None,
    conversation_id: str = "c",
) -> None:
    # The budget, recounted on what is sent.
    assert ctx.tokens.max_tokens == max_tokens
    assert ctx.tokens.total <= max_tokens
    assert ctx.tokens.total == sum(count(m["content"]) + MESSAGE_OVERHEAD for m in ctx.to_openai())
    assert ctx.tokens.system == (count(ctx.system) + MESSAGE_OVERHEAD if ctx.system else 0)
    assert ctx.tokens.turns == sum(count(t.content) + MESSAGE_OVERHEAD for t in ctx.turns)
    assert ctx.tokens.total == ctx.tokens.system + ctx.tokens.turns
    assert ctx.tokens.instructions == (count(instructions) if instructions else 0)

    # The system text: the instructions whole, then the memory block.
    assert ctx.system == "\n\n".join(p for p in (instructions or "", ctx.memory) if p)
    summary_part = f"{SUMMARY_HEADER}\n{ctx.summary}" if ctx.summary else ""
    assert ctx.memory.startswith(summary_part)
    history_part = ctx.memory[len(summary_part):].removeprefix("\n\n") if summary_part else ctx.memory
    assert history_part.startswith(f"{HISTORY_HEADER}\n") if ctx.history else history_part == ""

    # Turns: the newest contiguous run of the candidates, never starting on an assistant turn.
    by_id = {c.msg_id: c for c in candidates}
    assert [t.msg_id for t in reversed(ctx.turns)] == [c.msg_id for c in candidates[: len(ctx.turns)]]
    assert [t.role for t in ctx.turns if t.role != "system"][:1] in ([], ["user"])
    shown = {t.msg_id for t in ctx.turns}
    for t in ctx.turns:
        original = by_id[t.msg_id]
        assert (t.role, t.created_at) == (original.role, original.created_at)
        if not t.truncated:
            assert t.content == original.content
            continue
        # Only the newest turn may be cut: a marker, then the original's end.
        assert t.msg_id == candidates[0].msg_id
        marker = MARKER.match(t.content)
        assert marker, t.content[:80]
        kept = t.content[marker.end():]
        assert original.content.endswith(kept) and len(kept) < len(original.content)
        # It is cut only when it does not fit the budget whole.
        assert count(original.content) + MESSAGE_OVERHEAD + ctx.tokens.system > max_tokens
        assert any(d.reason == "truncated" and d.msg_id == t.msg_id for d in ctx.dropped)

    # dropped: every candidate neither shown nor in the summary, and nothing shown whole.
    for d in ctx.dropped:
        assert d.part in ("turn", "history", "summary") and d.reason in REASONS, d
        assert isinstance(d.tokens, int) and d.tokens >= 0, d
        assert (d.msg_id is None) == (d.part == "summary"), d
    dropped_turns = {d.msg_id for d in ctx.dropped if d.part == "turn" and d.reason != "truncated"}
    assert not dropped_turns & shown
    assert dropped_turns <= set(by_id)
    for c in candidates:
        if c.msg_id not in shown and not c.summarized:
            assert c.msg_id in dropped_turns, c.msg_id
    for d in ctx.dropped:
        if d.reason == "assistant_first":  # an assistant turn that may not open the window, or older
            assert any(by_id[o.msg_id].role == "assistant" and o.reason == "assistant_first"
                       and by_id[o.msg_id].created_at >= by_id[d.msg_id].created_at for o in ctx.dropped), d
        if d.reason == "truncated" and d.part == "turn":  # "cut in the context": so it is shown
            assert d.msg_id in shown, d

    # History: best first as retrieved, never a message already among the turns, the rest dropped.
    shown_history = [m.msg_id for m in ctx.history]
    assert not set(shown_history) & shown
    remaining = iter(m.msg_id for m in history)
    assert all(msg_id in remaining for msg_id in shown_history)  # a subsequence, in order
    dropped_history = {d.msg_id for d in ctx.dropped if d.part == "history" and d.reason == "budget"}
    for m in history:
        if m.msg_id not in shown and m.msg_id not in shown_history:
            assert m.msg_id in dropped_history, m.msg_id
    for m in ctx.history:
        cut = any(d.part == "history" and d.reason == "truncated" and d.msg_id == m.msg_id for d in ctx.dropped)
        line = history_line(m, conversation_id, "" if cut else m.content)
        assert line in history_part

    # The summary: its newest lines; each line left out is dropped.
    lines = [line for line in summary.splitlines() if line.strip()]
    shown_lines = ctx.summary.splitlines()
    assert shown_lines == lines[len(lines) - len(shown_lines):]
    assert sum(d.part == "summary" for d in ctx.dropped) == len(lines) - len(shown_lines)


# -- the SDKs' request types ------------------------------------------------------------------


def _sdk_validators() -> dict[str, Any]:
    """Strict validators of the SDKs' request types: extra keys are refused (TypedDicts
    drop them silently otherwise). Skips the test when the SDKs are not installed."""
    chat = pytest.importorskip("openai.types.chat", reason=NEEDS_SDKS)
    anthropic_types = pytest.importorskip("anthropic.types", reason=NEEDS_SDKS)
    from pydantic import ConfigDict, TypeAdapter

    # arbitrary_types_allowed: older anthropic types (0.30) declare base64 inputs as IO[bytes].
    strict = ConfigDict(extra="forbid", arbitrary_types_allowed=True)
    return {
        "openai": TypeAdapter(list[chat.ChatCompletionMessageParam], config=strict),
        "anthropic": TypeAdapter(list[anthropic_types.MessageParam], config=strict),
        "anthropic_system": TypeAdapter(str, config=strict),
    }


@pytest.fixture(scope="module")
def sdk_types() -> dict[str, Any]:
    return _sdk_validators()


@pytest.fixture(scope="module")
def sdk_types_if_installed() -> dict[str, Any] | None:
    """The validators, or None without the SDKs (the budget checks run regardless)."""
    try:
        return _sdk_validators()
    except pytest.skip.Exception:
        return None


def _force(value: Any) -> Any:
    """pydantic validates an ``Iterable[...]`` field lazily: consume it to validate its items."""
    if isinstance(value, dict):
        return {k: _force(v) for k, v in value.items()}
    if isinstance(value, (str, bytes)):
        return value
    if hasattr(value, "__iter__"):
        return [_force(v) for v in value]
    return value


def check_openai(types: dict[str, Any], ctx: Context, *, system_role: str = "system",
                 user_message: str | None = None) -> list[dict[str, str]]:
    messages = ctx.to_openai(system_role=system_role, user_message=user_message)
    assert _force(types["openai"].validate_python(messages)) == messages  # valid, nothing dropped or coerced
    json.dumps(messages)
    expected = [{"role": system_role, "content": ctx.system}] if ctx.system else []
    expected += [{"role": t.role, "content": t.content} for t in ctx.turns]
    if user_message is not None:
        expected.append({"role": "user", "content": user_message})
    assert messages == expected
    assert all(m["role"] in ("user", "assistant", "system") for m in messages[bool(ctx.system):])
    return messages


def check_anthropic(types: dict[str, Any], ctx: Context, *, user_message: str | None = None) -> dict[str, Any]:
    payload = ctx.to_anthropic(user_message=user_message)
    json.dumps(payload)
    assert "messages" in payload and set(payload) <= {"system", "messages"}
    expected_system = "\n\n".join([ctx.system, *(t.content for t in ctx.turns if t.role == "system")]).strip()
    if "system" in payload:
        types["anthropic_system"].validate_python(payload["system"], strict=True)
        assert payload["system"].strip()
    assert payload.get("system", "") == expected_system
    messages = payload["messages"]
    assert _force(types["anthropic"].validate_python(messages)) == messages
    # What the types admit but the API refuses (or the SDK's newest types admit, older refuse).
    roles = [m["role"] for m in messages]
    assert set(roles) <= {"user", "assistant"}
    assert roles and roles[0] == "user"
    assert all(a != b for a, b in itertools.pairwise(roles))
    assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)
    assert all(set(m) == {"role", "content"} for m in messages)
    # Nothing lost or reordered: the user and assistant turns, merged.
    chat = [t.content for t in ctx.turns if t.role != "system"]
    chat += [user_message] if user_message is not None else []
    assert "\n\n".join(m["content"] for m in messages) == "\n\n".join(chat)
    if user_message is not None:
        assert roles[-1] == "user" and messages[-1]["content"].endswith(user_message)
    return payload


# -- assemble(): properties --------------------------------------------------------------------


@settings(max_examples=400, deadline=None)
@given(sc=scenarios())
def test_assemble_never_exceeds_the_budget_and_keeps_the_policy(sc):
    if not instructions_fit(sc):
        with pytest.raises(InvalidInputError, match="instructions alone"):
            run_assemble(sc)
        return
    ctx = run_assemble(sc)  # never "cannot fit": dropping everything else always fits
    check_context(ctx, count=COUNTERS[sc["counter"]], max_tokens=sc["max_tokens"],
                  candidates=sc["candidates"], summary=sc["summary"], history=sc["history"],
                  instructions=sc["instructions"])
    assert ctx.summary_version == sc["summary_version"]


@settings(max_examples=300, deadline=None)
@given(sc=scenarios(), system_role=st.sampled_from(["system", "developer"]),
       user_message=st.none() | st.one_of(SHORT, PHRASE))
def test_payloads_validate_against_the_sdk_request_types(sdk_types, sc, system_role, user_message):
    if not instructions_fit(sc):
        return
    ctx = run_assemble(sc)
    check_openai(sdk_types, ctx, system_role=system_role, user_message=user_message)
    check_openai(sdk_types, ctx)
    has_user = any(t.role == "user" for t in ctx.turns)
    if has_user or user_message is not None:
        check_anthropic(sdk_types, ctx, user_message=user_message)
    else:
        with pytest.raises(InvalidInputError, match="user_message"):
            ctx.to_anthropic(user_message=user_message)
    if has_user:
        check_anthropic(sdk_types, ctx)


def test_the_strict_validators_catch_what_the_types_would_drop(sdk_types):
    """The checks above are not vacuous: an extra key, a bad part, a bad role fail."""
    from pydantic import ValidationError

    for bad in ([{"role": "user", "content": "x", "speaker": "bob"}], [{"role": "human", "content": "x"}],
                [{"role": "user", "content": [{"type": "nope", "text": "x"}]}]):
        with pytest.raises(ValidationError):
            _force(sdk_types["openai"].validate_python(bad))
        with pytest.raises(ValidationError):
            _force(sdk_types["anthropic"].validate_python(bad))


# -- assemble(): behaviour --------------------------------------------------------------------


def conversation_candidates(turns: Sequence[tuple[str, str]], covered: int = 0) -> list[Candidate]:
    """Candidates newest first from (role, text) turns oldest first; the oldest ``covered`` summarized."""
    return [Candidate(role, text, f"m{i}", T0 + timedelta(minutes=i), summarized=i < covered)
            for i, (role, text) in enumerate(turns)][::-1]


def retrieved(msg_id: str, text: str, *, conversation_id: str = "other", role: str = "user") -> RetrievedMessage:
    return RetrievedMessage(msg_id, conversation_id, "u", role, text, T0 - timedelta(days=3), score=0.9,
                            source="semantic")


def build(candidates=(), *, max_tokens=1000, count=count_tokens, instructions=None, summary="",
          history=(), memory_share=0.35, summary_share=0.6) -> Context:
    return assemble(max_tokens=max_tokens, count=count, instructions=instructions, candidates=list(candidates),
                    summary=summary, summary_version=1 if summary else None, history=list(history),
                    conversation_id="c", memory_share=memory_share, summary_share=summary_share)


def test_a_context_with_everything_reads_as_documented():
    turns = [("user", "we booked Hotel Lisboa for July"), ("assistant", "Great choice!"),
             ("user", "what should I pack?")]
    ctx = build(conversation_candidates(turns), instructions="You are a travel agent.",
                summary="[2024-04-30] user: my dog Rex loves the beach",
                history=[retrieved("h1", "Rex is allergic to chicken")])
    assert ctx.system == (
        "You are a travel agent.\n\n"
        "Context Summary:\n[2024-04-30] user: my dog Rex loves the beach\n\n"
        "Relevant Conversation History:\n"
        "- [2024-04-28 00:00 UTC, conversation other, semantic] user: Rex is allergic to chicken"
    )
    assert ctx.memory == ctx.system.split("\n\n", 1)[1]
    assert [(t.role, t.content) for t in ctx.turns] == turns
    assert ctx.dropped == ()
    assert ctx.to_openai()[0] == {"role": "system", "content": ctx.system}
    assert ctx.to_openai(system_role="developer")[0]["role"] == "developer"
    assert ctx.to_anthropic() == {"system": ctx.system, "messages": [{"role": r, "content": c} for r, c in turns]}
    assert ctx.to_text().startswith(ctx.system + "\n\nuser: we booked")
    with pytest.raises(InvalidInputError, match="system_role"):
        ctx.to_openai(system_role="assistant")


def test_memory_share_moves_the_split_between_memory_and_turns():
    turns = [("user" if i % 2 == 0 else "assistant", f"turn {i}: " + "words about the trip " * 4) for i in range(30)]
    summary = "\n".join(f"[2024-04-{i + 1:02d}] user: Caroline met Rex at Lisboa beach on day {i}" for i in range(12))
    history = [retrieved(f"h{i}", f"old fact {i} about Hotel Lisboa and July " * 3) for i in range(6)]
    shares = [0.0, 0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    built = [build(conversation_candidates(turns), max_tokens=600, summary=summary, history=history,
                   memory_share=share) for share in shares]
    memory = [ctx.tokens.system for ctx in built]
    kept = [len(ctx.turns) for ctx in built]
    assert memory == sorted(memory) and kept == sorted(kept, reverse=True)
    assert memory[0] < memory[-2] and kept[0] > kept[-2]
    for share, ctx in zip(shares, built):
        assert ctx.tokens.total <= 600
        if 0 < share < 1:  # the memory block gets at least its share when it has that much to show
            assert ctx.tokens.system >= int(600 * share) - 60
    # Either side's unused share goes to the other: no memory, all turns that fit.
    bare = build(conversation_candidates(turns), max_tokens=600, memory_share=0.9)
    assert bare.system == "" and bare.tokens.total > 600 - 60


def test_retrieved_messages_already_in_the_window_are_not_repeated():
    turns = [("user", "my dog Rex loves the beach"), ("assistant", "Lovely!"), ("user", "Rex is allergic to chicken")]
    history = [retrieved("m2", turns[2][1], conversation_id="c"), retrieved("h9", "we booked Hotel Lisboa"),
               retrieved("m0", turns[0][1], conversation_id="c")]
    ctx = build(conversation_candidates(turns), history=history)
    assert [t.msg_id for t in ctx.turns] == ["m0", "m1", "m2"]
    assert [m.msg_id for m in ctx.history] == ["h9"]
    assert ctx.system.count("Rex") == 0 and "Hotel Lisboa" in ctx.system
    assert ctx.dropped == ()  # shown, not dropped
    # When the window no longer holds a message, it may come back as history (or be dropped as such).
    small = build(conversation_candidates(turns), history=history, max_tokens=60, memory_share=0.7)
    assert [t.msg_id for t in small.turns] == ["m2"] and [m.msg_id for m in small.history] == ["h9"]
    assert Dropped("history", "m0", count_tokens(history_line(history[2], "c", history[2].content)),
                   "budget") in small.dropped


def test_instructions_are_counted_whole_and_must_fit():
    instructions = "You are a helpful assistant. Answer in Portuguese, briefly."
    cost = count_tokens(instructions) + MESSAGE_OVERHEAD
    turns = [("user", "hello there, how are you today?"), ("assistant", "fine, thanks!")] * 10
    without = build(conversation_candidates(turns), max_tokens=120)
    with_them = build(conversation_candidates(turns), max_tokens=120, instructions=instructions)
    assert with_them.tokens.instructions == count_tokens(instructions)
    assert with_them.system == instructions and with_them.tokens.system == cost
    assert len(with_them.turns) < len(without.turns) and with_them.tokens.total <= 120
    exact = build(conversation_candidates(turns), max_tokens=cost, instructions=instructions)
    assert exact.system == instructions and exact.turns == () and exact.tokens.total == cost
    with pytest.raises(InvalidInputError, match=f"instructions alone take {cost} tokens"):
        build(conversation_candidates(turns), max_tokens=cost - 1, instructions=instructions)


def test_an_oversized_newest_user_turn_is_cut_at_its_beginning_with_a_marker():
    text = "START of a long paste. " + "lorem ipsum dolor sit amet " * 200 + "the question is at THE END?"
    ctx = build(conversation_candidates([("user", "hi"), ("assistant", "hello"), ("user", text)]),
                max_tokens=100, instructions="Be brief.")
    (turn,) = ctx.turns
    assert turn.truncated and turn.msg_id == "m2" and turn.role == "user"
    marker = MARKER.match(turn.content)
    assert marker and turn.content.endswith("THE END?") and "START" not in turn.content
    assert text.endswith(turn.content[marker.end():])
    (cut,) = [d for d in ctx.dropped if d.reason == "truncated"]
    assert cut == Dropped("turn", "m2", int(marker.group(1)), "truncated")
    assert cut.tokens == count_tokens(text) - count_tokens(turn.content[marker.end():])
    assert {d.msg_id: d.reason for d in ctx.dropped if d.reason != "truncated"} == {
        "m1": "not_summarized", "m0": "not_summarized"}
    assert ctx.tokens.total <= 100
    # Not even the marker fits: nothing is shown rather than too much.
    tiny = build(conversation_candidates([("user", text)]), max_tokens=6)
    assert tiny.turns == () and tiny.tokens.total == 0
    assert tiny.dropped == (Dropped("turn", "m0", count_tokens(text) + MESSAGE_OVERHEAD, "budget"),)


def test_the_window_never_starts_on_an_assistant_turn():
    turns = [("user", "a long question " * 30), ("assistant", "short answer"), ("user", "thanks!")]
    ctx = build(conversation_candidates(turns), max_tokens=30, memory_share=0)
    assert [(t.role, t.content) for t in ctx.turns] == [("user", "thanks!")]
    assert Dropped("turn", "m1", count_tokens("short answer") + MESSAGE_OVERHEAD, "assistant_first") in ctx.dropped
    assert {d.msg_id: d.reason for d in ctx.dropped} == {"m1": "assistant_first", "m0": "not_summarized"}
    # Newest turn the assistant's and the user's before it too long: no turn at all.
    alone = build(conversation_candidates(turns[:2]), max_tokens=30, memory_share=0)
    assert alone.turns == ()
    assert [d.reason for d in alone.dropped] == ["assistant_first", "not_summarized"]


def test_summarized_turns_left_out_are_not_dropped_and_the_oldest_summary_lines_go_first():
    turns = [("user", f"message number {i} " * 5) for i in range(8)]
    summary = "\n".join(f"line {i}: Caroline went to Lisboa" for i in range(10))
    ctx = build(conversation_candidates(turns, covered=5), max_tokens=90, summary=summary, memory_share=0.4)
    shown = {t.msg_id for t in ctx.turns}
    assert shown and not shown & {"m0", "m1", "m2", "m3", "m4"}
    dropped_turns = {d.msg_id for d in ctx.dropped if d.part == "turn"}
    assert dropped_turns == {"m5", "m6", "m7"} - shown
    assert not dropped_turns & {"m0", "m1", "m2", "m3", "m4"}  # the summary covers them
    lines = ctx.summary.splitlines()
    assert lines and lines == summary.splitlines()[-len(lines):] and len(lines) < 10
    assert sum(d.part == "summary" for d in ctx.dropped) == 10 - len(lines)


def test_an_oversized_newest_assistant_turn_is_left_out_not_cut():
    text = "pizza " * 100
    ctx = build(conversation_candidates([("user", "hi"), ("assistant", text)]), max_tokens=13, memory_share=0)
    assert ctx.turns == ()
    # Only a user's turn is cut (an assistant's could not open the window); this one is
    # left out whole, for the budget, at its whole cost, and not also listed as cut.
    assert Dropped("turn", "m1", count_tokens(text) + MESSAGE_OVERHEAD, "budget") in ctx.dropped
    assert not any(d.reason == "truncated" for d in ctx.dropped)


def test_recent_history_left_to_the_memory_block_is_the_newest_part(off):
    """recent_history returns messages oldest first; the block fills in that order as if it
    were best first, so it keeps the oldest and drops those next to the window: a gap."""
    add_turns(off, [("user" if i % 2 == 0 else "assistant", f"message {i} about the trip") for i in range(12)])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="recent_history", max_tokens=120,
                            memory_share=0.5)
    assert [t.msg_id for t in ctx.turns] == ["c-8", "c-9", "c-10", "c-11"]
    shown = [int(m.msg_id[2:]) for m in ctx.history]
    dropped = [int(d.msg_id[2:]) for d in ctx.dropped if d.part == "history"]
    assert shown and dropped  # (today: shown c-2, c-3; dropped c-4 .. c-7)
    assert max(dropped) < min(shown)


def test_a_stored_system_message_opening_the_conversation_is_shown(off):
    """A system prompt stored as a conversation's first message: plenty of budget, yet the
    window drops it (it may not start on a non-user turn), with reason "budget"."""
    add_turns(off, [("system", "You are a pirate."), ("user", "hi")])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", max_tokens=4000)
    assert not any(d.reason == "budget" for d in ctx.dropped)
    assert "You are a pirate." in [m["content"] for m in ctx.to_openai()]
    assert "You are a pirate." in ctx.to_anthropic().get("system", "")


def test_the_newest_turn_is_not_cut_for_memory_that_is_then_left_out():
    """The only turn costs 318 of 361 tokens. The window is fitted to 361 - the reserve (cut),
    the history line to the rest; the window is refitted around the history (cut again, to
    316), and then the history no longer fits and is dropped: a cut turn and no memory,
    where the whole turn alone would have fitted. (Found by hypothesis, through
    build_context with cross_conversation.)"""
    text = " ".join(["pizza"] * 157)
    assert count_tokens(text) + MESSAGE_OVERHEAD == 318
    ctx = build([Candidate("user", text, "m1", T0, summarized=False)], max_tokens=361, memory_share=0.375,
                history=[retrieved("h0", "Lisboa " * 6)])
    assert ctx.tokens.total <= 361  # (holds)
    assert not ctx.turns[0].truncated, (ctx.tokens, ctx.dropped)


def test_a_counter_that_does_not_add_up_still_fits():
    turns = [("user", "x" * 30), ("assistant", "y" * 30), ("user", "z" * 30)]
    for max_tokens in range(1, 200, 7):
        ctx = build(conversation_candidates(turns), max_tokens=max_tokens, count=quadratic,
                    summary="a\nbb\nccc", history=[retrieved("h1", "w" * 40)], memory_share=0.5)
        check_context(ctx, count=quadratic, max_tokens=max_tokens, candidates=conversation_candidates(turns),
                      summary="a\nbb\nccc", history=[retrieved("h1", "w" * 40)])


def test_to_anthropic_needs_a_user_turn():
    empty = build([], max_tokens=100, instructions="Be brief.")
    with pytest.raises(InvalidInputError, match="user_message"):
        empty.to_anthropic()
    assert empty.to_anthropic(user_message="hi") == {"system": "Be brief.", "messages": [{"role": "user",
                                                                                          "content": "hi"}]}
    for bad in ("", "  \n", 5):
        with pytest.raises(InvalidInputError, match="user_message"):
            empty.to_anthropic(user_message=bad)
        with pytest.raises(InvalidInputError, match="user_message"):
            empty.to_openai(user_message=bad)
    # Consecutive user turns are merged, and user_message joins a trailing user turn.
    ctx = build(conversation_candidates([("user", "hi"), ("assistant", "hello"), ("user", "q"), ("user", "q2")]))
    assert [m["role"] for m in ctx.to_anthropic()["messages"]] == ["user", "assistant", "user"]
    assert ctx.to_anthropic(user_message="more")["messages"][-1] == {"role": "user", "content": "q\n\nq2\n\nmore"}
    # Ending on the assistant's turn (a prefill, as documented) unless user_message follows it.
    ended = build(conversation_candidates([("user", "hi"), ("assistant", "hello")]))
    assert [m["role"] for m in ended.to_anthropic()["messages"]] == ["user", "assistant"]
    assert [m["role"] for m in ended.to_anthropic(user_message="and?")["messages"]] == ["user", "assistant", "user"]


# -- Memory.build_context ---------------------------------------------------------------------


def add_turns(mem: Memory, turns: Sequence[tuple[str, str]], *, conversation_id: str = "c",
              owner_id: str = "u", start: datetime = T0) -> list[str]:
    """Store (role, text) turns oldest first, a second apart; their msg_ids."""
    return [mem.add(role, text, conversation_id=conversation_id, owner_id=owner_id,
                    msg_id=f"{conversation_id}-{i}", created_at=start + timedelta(seconds=i)).msg_id
            for i, (role, text) in enumerate(turns)]


def stored_candidates(mem: Memory, turns: Sequence[tuple[str, str]], ids: Sequence[str], *,
                      conversation_id: str, owner_id: str = "u", summary: Any = "read") -> list[Candidate]:
    """What build_context reads, newest first, from what the test stored (``summary``: the
    conversation's summary as read before the build; by default, read now)."""
    if summary == "read":
        summary = mem.get_conversation_summary(conversation_id=conversation_id, owner_id=owner_id)
    return [Candidate(role, text, msg_id, T0 + timedelta(seconds=i),
                      summarized=summary is not None and T0 + timedelta(seconds=i) <= summary.covers_until)
            for i, ((role, text), msg_id) in enumerate(zip(turns, ids))][::-1]


@pytest.fixture
def off(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=None) as mem:
        yield mem


def test_build_context_end_to_end_without_a_model(off):
    turns = [("user", "my dog Rex loves the beach"), ("assistant", "Noted!"), ("user", "book a hotel in Lisboa"),
             ("assistant", "Hotel Lisboa, July 3-10?"), ("user", "yes please")]
    ids = add_turns(off, turns)
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", instructions="Be brief.")
    assert [(t.role, t.content) for t in ctx.turns] == turns
    assert ctx.system == "Be brief." and ctx.history == () and ctx.strategy is None and ctx.dropped == ()
    recent = off.build_context(conversation_id="c", owner_id="u", strategy=Strategy.RECENT_HISTORY, max_tokens=120,
                               history_limit=10, memory_share=0.6)
    assert recent.strategy is Strategy.RECENT_HISTORY
    check_context(recent, count=count_tokens, max_tokens=120, history=best_first(off.get_memory(
        "recent_history", conversation_id="c", owner_id="u", limit=10, lookback_days=None).messages),
        candidates=stored_candidates(off, turns, ids, conversation_id="c"))
    assert [t.msg_id for t in recent.turns] == ["c-2", "c-3", "c-4"]
    # What the window leaves to the memory block's share comes back as retrieved history, labelled.
    assert sorted(m.msg_id for m in recent.history) == ["c-0", "c-1"]
    assert "this conversation, recent] user: my dog Rex loves the beach" in recent.memory


def test_build_context_retrieved_history_in_the_window_is_not_repeated(off):
    turns = [("user", "hello"), ("assistant", "hi!"), ("user", "how are you?")]
    add_turns(off, turns)
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="recent_history", max_tokens=4000)
    assert len(ctx.turns) == 3 and ctx.history == () and ctx.memory == "" and ctx.system == ""
    assert ctx.to_openai() == [{"role": r, "content": c} for r, c in turns]


def test_build_context_memory_share_is_a_setting(off):
    turns = [("user" if i % 2 == 0 else "assistant", f"message {i} about the trip to Lisboa in July")
             for i in range(40)]
    add_turns(off, turns)
    small, large = (off.build_context(conversation_id="c", owner_id="u", strategy="recent_history", max_tokens=300,
                                      history_limit=40, memory_share=share) for share in (0.1, 0.6))
    assert len(small.turns) > len(large.turns)
    assert small.tokens.history < large.tokens.history
    assert small.tokens.total <= 300 and large.tokens.total <= 300
    with pytest.raises(InvalidInputError, match="memory_share"):
        off.build_context(conversation_id="c", owner_id="u", memory_share=1.5)


def test_build_context_instructions_too_large_is_an_error(off):
    add_turns(off, [("user", "hello")])
    instructions = "Follow these rules. " * 20
    cost = count_tokens(instructions) + MESSAGE_OVERHEAD
    ok = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", instructions=instructions,
                           max_tokens=cost)
    assert ok.system == instructions and ok.turns == () and ok.tokens.total == cost
    with pytest.raises(InvalidInputError, match="instructions alone"):
        off.build_context(conversation_id="c", owner_id="u", strategy="session_only", instructions=instructions,
                          max_tokens=cost - 1)


def test_a_stored_system_message_joins_the_system_text_for_anthropic_only(off):
    turns = [("user", "hi"), ("system", "The user is on the mobile app."), ("assistant", "Hello! How can I help?"),
             ("user", "what time is it?")]
    add_turns(off, turns)
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", instructions="Be brief.")
    assert [t.role for t in ctx.turns] == ["user", "system", "assistant", "user"]
    assert ctx.to_openai() == [{"role": "system", "content": "Be brief."},
                               *({"role": r, "content": c} for r, c in turns)]
    assert ctx.to_openai(system_role="developer")[2] == {"role": "system", "content": "The user is on the mobile app."}
    assert ctx.to_anthropic() == {
        "system": "Be brief.\n\nThe user is on the mobile app.",
        "messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "Hello! How can I help?"},
                     {"role": "user", "content": "what time is it?"}],
    }


def test_build_context_cuts_an_oversized_newest_user_turn(off):
    text = "Here is my log:\n" + "ERROR disk full at sector 42\n" * 300 + "Why does it fail?"
    add_turns(off, [("user", "hi"), ("assistant", "hello"), ("user", text)])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="recent_history", max_tokens=200)
    (turn,) = ctx.turns
    assert turn.truncated and turn.msg_id == "c-2" and MARKER.match(turn.content)
    assert turn.content.endswith("Why does it fail?") and "Here is my log" not in turn.content
    assert any(d == Dropped("turn", "c-2", d.tokens, "truncated") and d.tokens > 0 for d in ctx.dropped)
    assert ctx.tokens.total <= 200


def test_build_context_never_starts_on_an_assistant_turn(off):
    add_turns(off, [("user", "please summarise " * 40), ("assistant", "Done."), ("user", "thanks")])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", max_tokens=20)
    assert [t.content for t in ctx.turns] == ["thanks"]
    assert {d.msg_id: d.reason for d in ctx.dropped} == {"c-1": "assistant_first", "c-0": "not_summarized"}


def test_to_anthropic_without_a_user_turn_raises(off):
    add_turns(off, [("assistant", "Welcome! How can I help?")])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only")
    assert ctx.turns == ()
    assert any(d.reason == "assistant_first" for d in ctx.dropped)
    with pytest.raises(InvalidInputError):
        ctx.to_anthropic()
    assert ctx.to_anthropic(user_message="hi")["messages"] == [{"role": "user", "content": "hi"}]


def test_build_context_shows_semantic_history_from_other_conversations(tmp_path):
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(), embed="sync", summaries=None) as mem:
        add_turns(mem, [("user", "my dog Rex loves the beach"), ("user", "Rex is allergic to chicken"),
                        ("user", "we booked Hotel Lisboa for July")],
                  conversation_id="old", start=T0 - timedelta(days=9))
        turns = [("user", "let us plan the party"), ("assistant", "Sure! How many guests?"),
                 ("user", "what food is safe for Rex at the beach?")]
        ids = add_turns(mem, turns, conversation_id="now")
        query = "Rex beach chicken allergic"
        ctx = mem.build_context(conversation_id="now", owner_id="u", strategy="cross_conversation", query=query,
                                max_tokens=500, instructions="Be brief.")
        assert ctx.strategy is Strategy.CROSS_CONVERSATION
        assert {"old-0", "old-1"} <= {m.msg_id for m in ctx.history}
        assert "conversation old, " in ctx.memory and "Rex is allergic to chicken" in ctx.memory
        assert [t.msg_id for t in ctx.turns] == ids
        history = best_first(mem.get_memory("cross_conversation", conversation_id="now", owner_id="u",
                                            query=query, limit=10, lookback_days=None).messages)
        check_context(ctx, count=count_tokens, max_tokens=500, candidates=stored_candidates(
            mem, turns, ids, conversation_id="now"), history=history, instructions="Be brief.",
            conversation_id="now")
        # A tight budget drops the worst history first, and says so.
        tight = mem.build_context(conversation_id="now", owner_id="u", strategy="cross_conversation", query=query,
                                  max_tokens=60, memory_share=0.5)
        assert tight.tokens.total <= 60
        assert len(tight.history) < len(ctx.history)
        assert any(d.part == "history" for d in tight.dropped)
        # Strategy auto; the query: the last user turn.
        auto = mem.build_context(conversation_id="now", owner_id="u", max_tokens=500)
        assert auto.strategy is not Strategy.AUTO and auto.tokens.total <= 500


# -- build_context: properties, with a summary and a retrieved history -------------------------


def _test_summarizer(previous: str, messages: Sequence[Any]) -> str:
    """Deterministic and always says something, so summaries show in the contexts drawn."""
    lines = [*previous.splitlines(), *(f"- {m.role} said {m.content[:30]!r}" for m in messages)]
    return "\n".join(lines[-12:])


@pytest.fixture(scope="module")
def memories(tmp_path_factory):
    """One Memory without a model and one with the hash embedder, shared by the examples
    (each example writes to a conversation of its own)."""
    folder = tmp_path_factory.mktemp("contexts")
    policy = SummaryPolicy(window_tokens=60, fold_tokens=20, chunk_tokens=400, summarizer=_test_summarizer,
                           name="test")
    with Memory(folder / "off.db", embed="off", summaries=policy) as off, \
            Memory(folder / "hash.db", embedder=HashEmbedder(), embed="sync", summaries=policy) as semantic:
        yield {"off": off, "semantic": semantic}


STORED_TEXT = st.one_of(SHORT, EMPTYISH, PHRASE, LONG)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(turns=st.lists(st.tuples(st.sampled_from(ROLES), STORED_TEXT), min_size=1, max_size=12),
       which=st.sampled_from(["off/recent_history", "off/session_only", "semantic/semantic_search",
                              "semantic/hybrid", "semantic/cross_conversation", "semantic/recent_history"]),
       max_tokens=st.integers(1, 3000), memory_share=st.floats(0, 1),
       instructions=st.none() | TEXT, counter=st.sampled_from(sorted(COUNTERS)),
       user_message=st.none() | PHRASE)
def test_build_context_never_exceeds_the_budget(memories, sdk_types_if_installed, turns, which, max_tokens,
                                                memory_share, instructions, counter, user_message):
    name, strategy = which.split("/")
    mem = memories[name]
    conversation = uuid.uuid4().hex
    ids = add_turns(mem, turns, conversation_id=conversation)
    mem.flush(timeout=60)  # fold what is due now: no fold races the build (and summaries show)
    count = COUNTERS[counter]
    args = {"conversation_id": conversation, "owner_id": "u", "max_tokens": max_tokens, "count_tokens": count,
            "strategy": strategy, "instructions": instructions, "memory_share": memory_share}
    if instructions and count(instructions) + MESSAGE_OVERHEAD > max_tokens:
        with pytest.raises(InvalidInputError, match="instructions alone"):
            mem.build_context(**args)
        return
    before = mem.get_conversation_summary(conversation_id=conversation, owner_id="u")
    ctx = mem.build_context(**args)
    summary = before.text if before else ""
    assert ctx.summary_version == (before.version if before else None)
    history = () if strategy == "session_only" else best_first(mem.get_memory(
        strategy, conversation_id=conversation, owner_id="u", limit=10, lookback_days=None).messages)
    candidates = stored_candidates(mem, turns, ids, conversation_id=conversation, summary=before)
    # What build_context reads: the newest messages until they cost more than the whole
    # budget (none older could be shown); older ones are only counted.
    read, used = 0, 0
    while read < len(candidates) and used <= max_tokens:
        used += count(candidates[read].content) + MESSAGE_OVERHEAD
        read += 1
    check_context(ctx, count=count, max_tokens=max_tokens, candidates=candidates[:read], summary=summary,
                  history=history, instructions=instructions, conversation_id=conversation)
    assert ctx.unsummarized == sum(not c.summarized for c in candidates[read:])
    if sdk_types_if_installed is None:
        return
    check_openai(sdk_types_if_installed, ctx, user_message=user_message)
    if any(t.role == "user" for t in ctx.turns) or user_message is not None:
        check_anthropic(sdk_types_if_installed, ctx, user_message=user_message)


# -- the SDK clients themselves (a smoke test: they validate nothing, they send) --------------


def _mock_http_client(sdk: Any, handler: Callable[[Any], Any]) -> Any:
    """The SDK's own default client over a MockTransport of the httpx it is built on
    (httpx in older SDKs, httpx2 in newer ones)."""
    base = next(c for c in sdk.DefaultHttpxClient.__mro__
                if c.__name__ == "Client" and not c.__module__.startswith(sdk.__name__))
    httpx = sys.modules[base.__module__.split(".")[0]]
    return sdk.DefaultHttpxClient(transport=httpx.MockTransport(handler))


def test_payloads_go_through_the_real_sdk_clients(off):
    openai = pytest.importorskip("openai", reason=NEEDS_SDKS)
    anthropic = pytest.importorskip("anthropic", reason=NEEDS_SDKS)
    add_turns(off, [("user", "my dog Rex loves the beach 🏖️"), ("system", "The user is on mobile."),
                    ("assistant", "Noted!"), ("user", "olá, ação?")])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", instructions="Be brief.")
    sent: list[tuple[str, dict[str, Any]]] = []

    def handler(request):
        sent.append((request.url.path, json.loads(request.content)))
        if request.url.path.endswith("/chat/completions"):
            body = {"id": "c1", "object": "chat.completion", "created": 0, "model": "m", "choices": [
                {"index": 0, "finish_reason": "stop", "message": {"role": "assistant", "content": "ok"}}]}
        else:
            body = {"id": "msg_1", "type": "message", "role": "assistant", "model": "m",
                    "content": [{"type": "text", "text": "ok"}], "stop_reason": "end_turn", "stop_sequence": None,
                    "usage": {"input_tokens": 1, "output_tokens": 1}}
        httpx = sys.modules[type(request).__module__.split(".")[0]]  # httpx, or httpx2
        return httpx.Response(200, json=body)

    oa = openai.OpenAI(api_key="test", base_url="http://localhost/v1", max_retries=0,
                       http_client=_mock_http_client(openai, handler))
    reply = oa.chat.completions.create(model="m", messages=ctx.to_openai(system_role="developer"))
    assert reply.choices[0].message.content == "ok"
    an = anthropic.Anthropic(api_key="test", base_url="http://localhost", max_retries=0,
                             http_client=_mock_http_client(anthropic, handler))
    message = an.messages.create(model="m", max_tokens=16, **ctx.to_anthropic(user_message="and tomorrow?"))
    assert message.content[0].text == "ok"
    (openai_path, openai_body), (anthropic_path, anthropic_body) = sent
    assert openai_path == "/v1/chat/completions"
    assert openai_body == {"model": "m", "messages": ctx.to_openai(system_role="developer")}
    assert openai_body["messages"][0] == {"role": "developer", "content": "Be brief."}
    assert anthropic_path == "/v1/messages"
    assert anthropic_body == {"model": "m", "max_tokens": 16, **ctx.to_anthropic(user_message="and tomorrow?")}
    assert anthropic_body["system"] == "Be brief.\n\nThe user is on mobile."
    assert [m["role"] for m in anthropic_body["messages"]] == ["user", "assistant", "user"]
    assert anthropic_body["messages"][-1]["content"] == "olá, ação?\n\nand tomorrow?"


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": True}, "max_tokens"),
    ({"max_tokens": 10**8}, "max_tokens"),
    ({"memory_share": float("nan")}, "memory_share"),
    ({"memory_share": 1.5}, "memory_share"),
    ({"history_limit": -1}, "history_limit"),
    ({"count_tokens": "tiktoken"}, "count"),
    ({"instructions": 5}, "instructions"),
    ({"instructions": "bad \ud800 surrogate"}, "instructions"),
    ({"query": 123}, "query"),
    ({"lookback_days": -3}, "lookback_days"),
    ({"lookback_days": "x"}, "lookback_days"),
    ({"strategy": "telepathy"}, "strategy"),
    ({"conversation_id": ""}, "conversation_id"),
])
def test_build_context_refuses_bad_arguments_even_where_nothing_is_searched(off, kwargs, match):
    """Every argument is checked up front, whatever the strategy and the conversation."""
    args = {"conversation_id": "c", "owner_id": "u", "strategy": "session_only", **kwargs}
    with pytest.raises(InvalidInputError, match=match):
        off.build_context(**args)


def test_build_context_reads_only_what_the_budget_could_show(off):
    """Long messages and a small budget: the messages read stop once they cost more than
    the whole budget; the older ones are counted in ``unsummarized``, not read."""
    add_turns(off, [("user" if i % 2 == 0 else "assistant", "word " * 300) for i in range(200)])
    ctx = off.build_context(conversation_id="c", owner_id="u", strategy="session_only", max_tokens=1000)
    seen = {d.msg_id for d in ctx.dropped} | {t.msg_id for t in ctx.turns}
    assert len(seen) == 4 and ctx.unsummarized == 196  # 3 x 304 <= 1000 < 4 x 304
