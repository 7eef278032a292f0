"""Context building: the prompt's memory under a token budget, as chat messages.

``assemble()`` is the budget policy; ``Memory.build_context`` gathers what it needs (the
conversation's newest messages, its summary, the messages a strategy retrieved) and
returns the ``Context`` it builds. A ``Context`` renders as the OpenAI chat list, the
Anthropic Messages request's ``system`` and ``messages``, or text.

The policy, in the manner of LangChain's ``trim_messages`` and LlamaIndex's memory, with
a guarantee neither gives: the result never exceeds ``max_tokens`` with the counter in use.

* The caller's ``instructions`` come first and always whole; instructions that do not fit
  alone are an error, not a silent overflow.
* ``memory_share`` of the rest is reserved for the memory block (summary + retrieved
  history); the recent turns take the rest, and what either side leaves unused goes to
  the other.
* Recent turns are the longest newest run of the conversation that fits: an older turn
  is never kept while a newer one is dropped, the run never starts on an assistant turn,
  and splits are at message boundaries. The one exception: when the newest turn alone is
  over the budget, its end is kept, behind a marker that says how much was cut.
* In the memory block, the summary takes up to ``summary_share`` of it when retrieved
  messages compete for room (its oldest lines go first), and retrieved messages go in
  best first, each cut to at most half of the block. Retrieved messages already
  among the recent turns are not repeated.
* A chat message costs its content's tokens plus ``MESSAGE_OVERHEAD``; the system message
  (instructions + memory block) is one message. ``tokens.total`` is that sum, counted on
  the final text, and the final count is checked: should a counter not add up over
  joined text, parts are dropped until it fits.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .errors import InvalidInputError
from .records import RetrievedMessage, Selection, Strategy
from .tokens import MESSAGE_OVERHEAD

SUMMARY_HEADER = "Context Summary:"
HISTORY_HEADER = "Relevant Conversation History:"
_CHAT_ROLES = ("user", "assistant")
_MIN_ITEM_TOKENS = 16  # a retrieved message is never cut below this (else it is left out)


@dataclass(frozen=True, slots=True)
class Turn:
    """A recent message of the conversation, as the context shows it. ``truncated``: its
    beginning was cut to fit (``content`` then starts with the marker)."""

    role: str
    content: str
    msg_id: str
    created_at: datetime
    truncated: bool = False


@dataclass(frozen=True, slots=True)
class Dropped:
    """Something left out of (or cut in) the context. ``part``: ``"turn"``, ``"history"``
    or ``"summary"``; ``msg_id``: the message (None for a summary line); ``tokens``: what
    it would have cost (for ``"truncated"``, what was cut); ``reason``: ``"budget"``,
    ``"assistant_first"`` (the window never starts on an assistant turn: it, and any
    older turn left with it),
    ``"not_summarized"`` (older than the window and not yet in the summary), or
    ``"truncated"``."""

    part: str
    msg_id: str | None
    tokens: int
    reason: str


@dataclass(frozen=True, slots=True)
class ContextTokens:
    """Tokens of each part, as counted by the build's counter. ``system``: the system
    message (instructions + memory block, plus its overhead); ``instructions``,
    ``summary``, ``history``: each part's text (with its header); ``turns``: the recent
    turns, overhead included; ``total``: system + turns, never above ``max_tokens``."""

    instructions: int
    summary: int
    history: int
    system: int
    turns: int
    total: int
    max_tokens: int


@dataclass(frozen=True, slots=True)
class Context:
    """What ``Memory.build_context`` returns: ready-to-send chat messages.

    ``system``: the system message's text (the caller's instructions, then the memory
    block); ``memory``: the memory block alone (``"Context Summary:"`` and ``"Relevant
    Conversation History:"`` sections); ``turns``: the recent turns, oldest first;
    ``summary``: the summary text shown (possibly trimmed), ``summary_version`` its stored
    version (None: no summary); ``history``: the retrieved messages shown, best first;
    ``tokens``: per part; ``dropped``: what was left out or cut, and why;
    ``unsummarized``: messages older than those read that the summary does not cover
    (folding runs in the background, and leaves fewer than ``fold_tokens`` beyond the
    window: see ``SummaryPolicy``); ``strategy`` and
    ``selection``: how the history was retrieved (None when nothing was searched).
    """

    system: str
    memory: str
    turns: tuple[Turn, ...]
    summary: str
    summary_version: int | None
    history: tuple[RetrievedMessage, ...]
    tokens: ContextTokens
    dropped: tuple[Dropped, ...]
    unsummarized: int = 0
    strategy: Strategy | None = None
    selection: Selection | None = None

    def to_openai(self, *, system_role: str = "system", user_message: str | None = None) -> list[dict[str, str]]:
        """The OpenAI Chat Completions ``messages`` list: the system (or, with
        ``system_role="developer"``, developer) message first when there is system text,
        then the turns as ``{"role", "content"}``. ``user_message`` is appended as the last
        user turn (not counted in ``max_tokens``: add() it before building to have it
        counted)."""
        if system_role not in ("system", "developer"):
            raise InvalidInputError(f"system_role must be 'system' or 'developer'; got {system_role!r}")
        messages = [{"role": system_role, "content": self.system}] if self.system else []
        messages += [{"role": t.role, "content": t.content} for t in self.turns]
        if user_message is not None:
            messages.append({"role": "user", "content": _check_text(user_message, "user_message")})
        return messages

    def to_anthropic(self, *, user_message: str | None = None) -> dict[str, Any]:
        """The Anthropic Messages request's ``{"system": str, "messages": [...]}``: only user
        and assistant turns, alternating (consecutive turns of one role are merged, joined
        by a blank line), the first from the user. ``"system"`` is left out when there is
        no system text. ``user_message`` is appended as the last user turn (merged into a
        trailing user turn; not counted in ``max_tokens``). Without it, a context whose
        newest turn is the assistant's ends on that turn, which the API takes as a
        prefill: pass the user's next message. Raises ``InvalidInputError`` when no turn
        is left (the API needs one)."""
        turns = [(t.role, t.content) for t in self.turns if t.content and t.role != "system"]
        # A system message stored in the conversation cannot be a turn here: it joins the system text.
        system = "\n\n".join([self.system, *(t.content for t in self.turns if t.role == "system")]).strip()
        if user_message is not None:
            turns.append(("user", _check_text(user_message, "user_message")))
        while turns and turns[0][0] != "user":
            turns.pop(0)  # (assemble() never starts on an assistant turn; this keeps the promise anyway)
        if not turns:
            raise InvalidInputError(
                "no user turn fits in this context; the Messages API needs one: pass user_message="
            )
        merged: list[dict[str, str]] = []
        for role, content in turns:
            if merged and merged[-1]["role"] == role:
                merged[-1]["content"] += "\n\n" + content
            else:
                merged.append({"role": role, "content": content})
        return {"system": system, "messages": merged} if system else {"messages": merged}

    def to_text(self) -> str:
        """The context as plain text: the system text, then one ``role: content`` block per turn."""
        parts = [self.system] if self.system else []
        parts += [f"{t.role}: {t.content}" for t in self.turns]
        return "\n\n".join(parts)


def _check_text(value: Any, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise InvalidInputError(f"{name} must be a non-empty str; got {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class Candidate:
    """A stored message the window may show (newest first when given to ``assemble``).
    ``summarized``: the conversation's summary already covers it. ``cost``: its tokens
    plus ``MESSAGE_OVERHEAD`` if already counted with the build's counter."""

    role: str
    content: str
    msg_id: str
    created_at: datetime
    summarized: bool
    cost: int | None = None


def best_first(messages: Sequence[RetrievedMessage]) -> list[RetrievedMessage]:
    """A strategy's answer in the order a context keeps it when room runs out: the messages
    found by searching as ranked, then the recent ones newest first (a recency answer is
    oldest first, and the ones next to the recent turns matter most)."""
    return ([m for m in messages if m.source != "recent"]
            + [m for m in reversed(messages) if m.source == "recent"])


def history_line(m: RetrievedMessage, conversation_id: str, content: str) -> str:
    """A retrieved message as the memory block shows it: labelled by time and source."""
    where = "this conversation" if m.conversation_id == conversation_id else f"conversation {m.conversation_id}"
    return f"- [{m.created_at:%Y-%m-%d %H:%M} UTC, {where}, {m.source}] {m.role}: {content}"


def cut_to_fit(text: str, budget: int, count: Callable[[str], int], *, keep_end: bool) -> tuple[str, int] | None:
    """The most of ``text`` (its end with ``keep_end``: a turn keeps its question; else
    its beginning: a retrieved message keeps its start) that, with a marker saying how many
    tokens were cut, costs at most ``budget``; and the number of tokens cut. At least one
    character goes; the cut moves to a nearby word boundary when that still fits. None if
    not even the marker fits."""
    total = count(text)

    def kept(k: int) -> str:  # the text with k characters kept
        return text[len(text) - k:] if keep_end else text[:k]

    def marked(k: int) -> str:
        marker = f"[... {max(1, total - count(kept(k)))} tokens cut]"
        return f"{marker} {kept(k)}" if keep_end else f"{kept(k)} {marker}"

    if count(marked(0)) > budget:
        return None
    low, high = 0, len(text) - 1  # the most characters whose marked text fits (a monotone counter)
    while low < high:
        mid = (low + high + 1) // 2
        if count(marked(mid)) <= budget:
            low = mid
        else:
            high = mid - 1
    if keep_end:  # start after the next space, if it is near
        space = text.find(" ", len(text) - low)
        near, at_word = 0 <= space < len(text) - low + 40, len(text) - space - 1
    else:  # end at the space before, if it is near
        space = text.rfind(" ", 0, low)
        near, at_word = 0 < space and space > low - 40, space
    k = at_word if near and count(marked(at_word)) <= budget else low
    return marked(k), total - count(kept(k))


def assemble(
    *,
    max_tokens: int,
    count: Callable[[str], int],
    instructions: str | None,
    candidates: Sequence[Candidate],
    summary: str,
    summary_version: int | None,
    history: Sequence[RetrievedMessage],
    conversation_id: str,
    memory_share: float,
    summary_share: float,
    unsummarized: int = 0,
    strategy: Strategy | None = None,
    selection: Selection | None = None,
) -> Context:
    """Fit the context into ``max_tokens`` (see the module docstring)."""
    instructions = instructions or ""
    instruction_tokens = count(instructions) if instructions else 0
    base = instruction_tokens + MESSAGE_OVERHEAD if instructions else 0
    if base > max_tokens:
        raise InvalidInputError(
            f"the instructions alone take {base} tokens (with the message overhead), "
            f"more than max_tokens={max_tokens}"
        )
    available = max_tokens - base
    # The system message's overhead is paid once, by the instructions or by the memory.
    memory_overhead = 0 if instructions else MESSAGE_OVERHEAD
    reserve = math.floor(available * memory_share)

    window = _Window(candidates, count)
    block = _MemoryBlock(count, summary, history, conversation_id, summary_share)
    # The turns get their share, and never less than the newest turn whole when it fits the
    # budget at all (it is cut only when it is over the whole budget); then the memory
    # block fits in what is left, and what it leaves unused goes back to the turns, until
    # neither changes (a few rounds: the turns' budget only grows).
    turn_budget = available - reserve
    newest = window.newest_cost()
    if newest is not None and newest <= available:
        turn_budget = max(turn_budget, newest)
    for _ in range(8):
        window.fit(turn_budget)
        block.fit(available - window.used - memory_overhead, shown=window.ids())
        left = available - (block.used + memory_overhead if block.used else 0)
        if left <= turn_budget:
            break
        turn_budget = left

    while True:  # the final count, on the final text
        memory = block.render()
        system = "\n\n".join(p for p in (instructions, memory) if p)
        system_tokens = count(system) + MESSAGE_OVERHEAD if system else 0
        turn_tokens = sum(count(t.content) + MESSAGE_OVERHEAD for t in window.turns)
        if system_tokens + turn_tokens <= max_tokens:
            break
        if not (block.drop_one() or window.drop_oldest()):  # (a counter that does not add up)
            raise InvalidInputError(
                f"cannot fit the context into max_tokens={max_tokens} with this counter"
            )

    dropped = window.dropped + block.dropped
    return Context(
        system=system,
        memory=memory,
        turns=tuple(window.turns),
        summary="\n".join(block.summary_lines),
        summary_version=summary_version,
        history=tuple(m for m, _ in block.items),
        tokens=ContextTokens(
            instructions=instruction_tokens,
            summary=count(block.render_summary()) if block.summary_lines else 0,
            history=count(block.render_history()) if block.items else 0,
            system=system_tokens,
            turns=turn_tokens,
            total=system_tokens + turn_tokens,
            max_tokens=max_tokens,
        ),
        dropped=tuple(dropped),
        unsummarized=unsummarized,
        strategy=strategy,
        selection=selection,
    )


class _Window:
    """The recent turns: the newest run of candidates that fits."""

    def __init__(self, candidates: Sequence[Candidate], count: Callable[[str], int]):
        self._candidates = [c for c in candidates if c.role in _CHAT_ROLES or c.role == "system"]
        self._count = count
        self._costs = [count(c.content) + MESSAGE_OVERHEAD if c.cost is None else c.cost for c in self._candidates]
        self.turns: list[Turn] = []
        self.dropped: list[Dropped] = []
        self.used = 0

    def ids(self) -> set[str]:
        return {t.msg_id for t in self.turns}

    def newest_cost(self) -> int | None:
        return self._costs[0] if self._costs else None

    def fit(self, budget: int) -> None:
        turns: list[Turn] = []
        used = 0
        taken = 0
        for c, cost in zip(self._candidates, self._costs):
            if used + cost > budget:
                break
            turns.append(Turn(c.role, c.content, c.msg_id, c.created_at))
            used += cost
            taken += 1
        dropped: list[Dropped] = []
        if taken == 0 and self._candidates and self._candidates[0].role == "user":
            # The newest turn alone is over the budget: the user's message is cut, keeping
            # its end (an assistant's or system's could not open the window anyway).
            newest = self._candidates[0]
            cut = cut_to_fit(newest.content, budget - MESSAGE_OVERHEAD, self._count, keep_end=True)
            if cut is not None:
                turns.append(Turn(newest.role, cut[0], newest.msg_id, newest.created_at, truncated=True))
                used = self._count(cut[0]) + MESSAGE_OVERHEAD
                dropped.append(Dropped("turn", newest.msg_id, cut[1], "truncated"))
                taken = 1
        turns.reverse()  # oldest first
        used -= self._drop_leading_assistant(turns, dropped)
        rest = list(zip(self._candidates[taken:], self._costs[taken:]))
        if taken == 0 and rest:  # the newest turn is over the whole budget (and not the user's: not cut)
            dropped.append(Dropped("turn", rest[0][0].msg_id, rest[0][1], "budget"))
            rest = rest[1:]
        for c, cost in rest:
            if c.summarized:
                break  # older ones are in the summary
            dropped.append(Dropped("turn", c.msg_id, cost, "not_summarized"))
        self.turns, self.used, self.dropped = turns, used, dropped

    def _drop_leading_assistant(self, turns: list[Turn], dropped: list[Dropped]) -> int:
        """Drop the turns up to the last assistant turn before the first user turn: the
        window never opens on an assistant turn, and stays a contiguous newest run (system
        turns after that assistant turn stay: they are not chat turns). Returns the tokens
        freed."""
        first_user = next((i for i, t in enumerate(turns) if t.role == "user"), len(turns))
        last = max((i for i in range(first_user) if turns[i].role == "assistant"), default=-1)
        freed = 0
        for gone in turns[: last + 1]:
            cost = self._count(gone.content) + MESSAGE_OVERHEAD
            dropped.append(Dropped("turn", gone.msg_id, cost, "assistant_first"))
            freed += cost
        del turns[: last + 1]
        return freed

    def drop_oldest(self) -> bool:
        if not self.turns:
            return False
        first = self.turns.pop(0)
        self.dropped.append(Dropped("turn", first.msg_id, self._count(first.content) + MESSAGE_OVERHEAD, "budget"))
        self._drop_leading_assistant(self.turns, self.dropped)
        return True


class _MemoryBlock:
    """The summary and the retrieved history, fitted to a budget."""

    def __init__(self, count: Callable[[str], int], summary: str, history: Sequence[RetrievedMessage],
                 conversation_id: str, summary_share: float):
        self._count = count
        self._lines = [line for line in summary.splitlines() if line.strip()]
        self._history = list(history)
        self._conversation = conversation_id
        self._share = summary_share
        self.summary_lines: list[str] = []
        self.items: list[tuple[RetrievedMessage, str]] = []  # (message, its line)
        self.dropped: list[Dropped] = []
        self.used = 0

    def render_summary(self) -> str:
        return "\n".join([SUMMARY_HEADER, *self.summary_lines])

    def render_history(self) -> str:
        return "\n".join([HISTORY_HEADER, *(line for _, line in self.items)])

    def render(self) -> str:
        parts = []
        if self.summary_lines:
            parts.append(self.render_summary())
        if self.items:
            parts.append(self.render_history())
        return "\n\n".join(parts)

    def fit(self, budget: int, *, shown: set[str]) -> None:
        count = self._count
        self.dropped = []
        history = []  # (message, its line whole, the line's cost)
        for m in self._history:
            if m.msg_id not in shown:
                line = history_line(m, self._conversation, m.content)
                history.append((m, line, count(line)))
        # Room for the summary: all of it if the history leaves it, else its share.
        history_need = count(HISTORY_HEADER) + sum(cost for _, _, cost in history) if history else 0
        summary_room = max(math.floor(budget * self._share), budget - history_need)
        lines: list[str] = []
        used = count(SUMMARY_HEADER) if self._lines else 0
        if used > summary_room:
            used = 0
        else:
            for line in reversed(self._lines):  # the newest lines first; the oldest go
                cost = count(line)
                if used + cost > summary_room:
                    break
                lines.insert(0, line)
                used += cost
        kept = len(lines)
        for line in self._lines[: len(self._lines) - kept]:
            self.dropped.append(Dropped("summary", None, count(line), "budget"))
        if not lines:
            used = 0
        room = budget - used
        items: list[tuple[RetrievedMessage, str]] = []
        h_used = count(HISTORY_HEADER) if history else 0
        item_cap = max(_MIN_ITEM_TOKENS, budget // 2)  # one long message may not fill the block
        for m, line, whole in history:  # best first; the worst go
            cost = whole
            cut = None
            if cost > item_cap:
                cut = cut_to_fit(m.content, item_cap - (cost - count(m.content)), count, keep_end=False)
                if cut is not None:
                    line = history_line(m, self._conversation, cut[0])
                    cost = count(line)
            if h_used + cost > room:
                self.dropped.append(Dropped("history", m.msg_id, whole, "budget"))
                continue
            if cut is not None:
                self.dropped.append(Dropped("history", m.msg_id, cut[1], "truncated"))
            items.append((m, line))
            h_used += cost
        self.summary_lines, self.items = lines, items
        self.used = count(self.render()) if (lines or items) else 0

    def drop_one(self) -> bool:
        """Drop the worst history item, else the oldest summary line."""
        if self.items:
            m, line = self.items.pop()
            self.dropped.append(Dropped("history", m.msg_id, self._count(line), "budget"))
            return True
        if self.summary_lines:
            line = self.summary_lines.pop(0)
            self.dropped.append(Dropped("summary", None, self._count(line), "budget"))
            return True
        return False


__all__ = ["Candidate", "Context", "ContextTokens", "Dropped", "Turn", "assemble", "best_first"]
