"""``localmem demo``: six weeks of one person's chats with an assistant, then the questions
that show what each way of recalling them finds.

The tour is ``SCENES``, a sequence of small functions, each printing one point; a new
feature is shown by adding one. Every answer printed comes from a real
``Memory.get_memory`` call and is labelled with the path that produced it (recent window,
keywords, meaning, fused, or a cache), its scores with what they measure. Without an
embedding model the tour says so and runs only what needs none: recency and keywords.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta, timezone
from typing import Any

from .errors import LocalMemError, ModelError
from .memory import Memory
from .models import DEFAULT_EMBEDDER
from .records import MemoryResult, RetrievedMessage, Strategy
from .retrieval import FUSION_DEPTH, KEYWORD_WEIGHT

OWNER = "maya"


@dataclass(frozen=True)
class Chat:
    """One conversation of the demo: it started ``ago`` before now, a message a minute."""

    conversation_id: str
    ago: timedelta
    lines: tuple[tuple[str, str], ...]


CHATS = (
    Chat("meal-prep", timedelta(days=44, hours=3), (
        ("user", "Can you help me plan lunches for the work week? I want to stop buying takeaway."),
        ("assistant", "Happy to. Any diet or foods I should keep in mind?"),
        ("user", "I'm pescatarian, so fish is fine but no meat. And I have a severe peanut allergy: even a trace means an EpiPen and a trip to A&E."),
        ("assistant", "Understood: pescatarian, and no peanuts in any form. Monday lentil soup, Tuesday salmon grain bowl, Wednesday chickpea wraps, Thursday miso cod."),
        ("user", "Nice. Keep the groceries under 60 euros a week."),
        ("assistant", "Done: the shopping list comes to about 54 euros, mostly from the Saturday market."),
    )),
    Chat("team-offsite", timedelta(days=30, hours=6), (
        ("user", "I need to organise our team offsite in Porto next month."),
        ("assistant", "Sure. How many people, and what's the budget?"),
        ("user", "Twelve of us, 4,500 euros all in. Anything over that needs sign-off from Wojciechowski in finance."),
        ("assistant", "Noted: a 4,500 euro cap, and Wojciechowski approves any overspend. I'll keep a running total."),
        ("user", "Okafor from HR needs the final headcount by Friday."),
        ("assistant", "I'll remind you on Thursday. Should I also send the agenda to Lindqvist?"),
        ("user", "Yes, Lindqvist runs the Thursday workshop. Find us a venue with a room for it."),
        ("assistant", "The Armazém conference space has a 20-seat room with a projector: 900 euros for the day."),
    )),
    Chat("lisbon-weekend", timedelta(days=18, hours=2), (
        ("user", "My sister Inês and I want a long weekend in Lisbon in May."),
        ("assistant", "Lovely. Flights, a place to stay, or both?"),
        ("user", "Both. We fly from Dublin on the 16th and back on the 19th, about 1,200 euros for the two of us."),
        ("assistant", "Outbound: TP1327 leaves Dublin at 07:10 on the 16th, 96 euros each."),
        ("user", "Early, but fine. And for the way back?"),
        ("assistant", "Return: TP1330 leaves Lisbon at 18:40 on the 19th, 104 euros each."),
        ("user", "Book both, and a guesthouse in Alfama."),
        ("assistant", "Booked: the flights, and three nights in Alfama at 110 euros a night, a short walk from the 28 tram."),
        ("user", 'The guesthouse wrote back: "Reserva confirmada, até breve!" What should we do on Saturday night?'),
        ("assistant", "Tasca do Chico has fado from 9 pm; no reservations, so go early. Then pastéis de nata at Manteigaria, two streets away."),
    )),
    Chat("half-marathon", timedelta(days=8, hours=5), (
        ("user", "I signed up for the Dublin half marathon on 14 September. Can you build me a training plan?"),
        ("assistant", "Four runs a week: two easy, one with intervals, and a long run growing from 10 to 19 km."),
        ("user", "My left knee gets sore after long runs downhill."),
        ("assistant", "Then keep the long runs flat, along the canal, and add two short strength sessions a week."),
    )),
    Chat("dinner-party", timedelta(minutes=25), (
        ("user", "I'm hosting six friends for dinner on Saturday. Can you plan a menu?"),
        ("assistant", "How about a Thai night: chicken satay with peanut sauce, green papaya salad, a red prawn curry and mango sticky rice?"),
        ("user", "Sounds fun. Two more people are coming, so make it for eight."),
        ("assistant", "Scaled for eight: 1.2 kg chicken, 400 g peanut butter for the sauce, 800 g prawns, 3 mangoes and 500 g sticky rice."),
    )),
)

CURRENT = "dinner-party"  # the chat going on now
# What Maya types next in the current chat, and where the answer was said.
QUESTION = "Hang on, what about my allergy?"
ALLERGY = "demo-meal-prep-3"
# Scene 2's questions, chosen by measuring all-MiniLM-L6-v2 on these chats: a paraphrase
# sharing no word with the message it means, and an exact token the vectors blur.
PARAPHRASE, KNEE = "joint pain when jogging", "demo-half-marathon-3"
CODE, OUTBOUND = "TP1327", "demo-lisbon-weekend-4"

SEARCHES = (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION)
DOWNLOAD = "localmem models download all-MiniLM-L6-v2"


def demo_messages(now: datetime) -> list[dict[str, Any]]:
    """The chats as ``add_many`` items, dated back from ``now``, with fixed msg_ids."""
    return [
        {"msg_id": f"demo-{chat.conversation_id}-{i}", "conversation_id": chat.conversation_id,
         "owner_id": OWNER, "role": role, "content": text,
         "created_at": now - chat.ago + timedelta(minutes=i)}
        for chat in CHATS
        for i, (role, text) in enumerate(chat.lines, 1)
    ]


@dataclass(frozen=True)
class Ask:
    """One ``get_memory`` call of the tour."""

    strategy: Strategy
    conversation_id: str = CURRENT
    query: str | None = None
    limit: int = 3
    lookback_days: float | None = None
    keyword: bool = True
    dense: bool = True
    floor: bool = True  # False: min_relevance=None (the relevance floor off)

    @property
    def path(self) -> str:
        """What produces the answer."""
        if self.strategy is Strategy.RECENT_HISTORY:
            return "recent window"
        if self.strategy is Strategy.SESSION_ONLY:
            return "nothing stored"
        if not self.dense:
            return "keywords only (BM25)"
        path = "meaning only (dense)" if not self.keyword else "fused: meaning + keywords"
        return path if self.floor else f"{path}, no relevance floor"

    @property
    def short(self) -> str:
        """The path in a word: recent, nothing, keywords, meaning, fused."""
        return self.path.split()[0].rstrip(":")

    @property
    def scope(self) -> str:
        """Where it looks."""
        days = "all time" if self.lookback_days is None else f"last {self.lookback_days:g} days"
        where = "all of Maya's chats" if self.strategy is Strategy.CROSS_CONVERSATION else repr(self.conversation_id)
        return f"{where}, {days}" if self.strategy is not Strategy.SEMANTIC_SEARCH else where


@dataclass
class Tour:
    """What the scenes share: the open Memory, whether it can search by meaning, and the
    answers given so far (a later scene may ask the same again)."""

    mem: Memory
    now: datetime
    dense: bool = True
    asked: dict[Ask, list[MemoryResult]] = field(default_factory=dict)

    def runnable(self, ask: Ask) -> Ask:
        """``ask`` as this tour can run it: with no model, a search uses keywords alone."""
        if not self.dense and (ask.strategy in SEARCHES or ask.strategy is Strategy.AUTO):
            return replace(ask, dense=False, keyword=True)
        return ask

    def ask(self, ask: Ask) -> tuple[Ask, MemoryResult]:
        """Run ``ask`` (as ``runnable`` makes it, which its path label then says)."""
        ask = self.runnable(ask)
        result = self.mem.get_memory(
            ask.strategy, conversation_id=ask.conversation_id, owner_id=OWNER, query=ask.query,
            limit=ask.limit, lookback_days=ask.lookback_days, keyword=ask.keyword, dense=ask.dense,
            min_relevance="auto" if ask.floor else None,
        )
        self.asked.setdefault(ask, []).append(result)
        return ask, result

    def ranks(self, ask: Ask) -> tuple[dict[str, int], dict[str, int]]:
        """Each message's place in the two rankings a fused search combines (meaning,
        keywords), each as deep as fusion reads it (and before the relevance floor)."""
        strategy = Strategy.CROSS_CONVERSATION if ask.strategy is Strategy.CROSS_CONVERSATION \
            else Strategy.SEMANTIC_SEARCH
        lists = []
        for keyword, dense in ((False, True), (True, False)):
            result = self.mem.get_memory(
                strategy, conversation_id=ask.conversation_id, owner_id=OWNER, query=ask.query,
                limit=FUSION_DEPTH, lookback_days=ask.lookback_days, keyword=keyword, dense=dense,
                min_relevance=None,
            )
            lists.append({m.msg_id: rank for rank, m in enumerate(result.messages, 1)})
        return lists[0], lists[1]


# -- printing ----------------------------------------------------------------------------


def _ago(tour: Tour, when: datetime) -> str:
    seconds = max(0.0, (tour.now - when).total_seconds())
    if seconds < 3600:
        return f"{int(seconds // 60)} min ago"
    if seconds < 86_400:
        return f"{int(seconds // 3600)} h ago"
    days = int(seconds // 86_400)
    return "1 day ago" if days == 1 else f"{days} days ago"


def _how(ask: Ask, result: MemoryResult) -> str:
    """Where the answer came from, and how long it took."""
    if result.cache_hit:
        where = "from the hot window" if ask.strategy is Strategy.RECENT_HISTORY else "from the query cache"
        return f"{where} (cache_hit=True), {result.latency_ms:.2f} ms"
    return f"computed in {result.latency_ms:.2f} ms"


def _score(ask: Ask, m: RetrievedMessage, ranks: tuple[dict[str, int], dict[str, int]] | None) -> str:
    if m.score is None or m.source == "recent":
        return "recent window"
    if not ask.dense:
        return f"{m.score:5.2f} BM25"
    if not ask.keyword:
        return f"{m.score:5.3f} cosine"
    if ranks is None:
        return f"{m.score:5.3f} fused"
    meaning, keywords = (f"#{r[m.msg_id]}" if m.msg_id in r else "-" for r in ranks)
    return f"{m.score:5.3f} fused (meaning {meaning}, keywords {keywords})"


def show(tour: Tour, ask: Ask, result: MemoryResult, title: str = "") -> None:
    """An answer: a header naming the strategy, the path and the cost, then its messages."""
    head = f"== {ask.strategy.value} · {title or ask.scope} · {ask.path}"
    print(f"\n{head} · {_how(ask, result)}")
    if ask.strategy is Strategy.SESSION_ONLY:
        print("   nothing loaded: the agent's live session already holds the conversation")
        return
    floor = _floor_note(result)
    if not result.messages:
        if floor:
            print(f"   nothing relevant: {floor}")
        else:
            print("   nothing found" + ("" if ask.dense or ask.query is None
                                        else ": no stored message shares a word with the question"))
        return
    fused = ask.strategy in SEARCHES and ask.dense and ask.keyword
    ranks = tour.ranks(ask) if fused else None
    for m in result.messages:
        if ask.strategy is Strategy.RECENT_HISTORY:  # the header says how these were chosen
            print(f"   {_ago(tour, m.created_at)} · [{m.role}] {m.content}")
        else:
            where = f"{m.conversation_id}, {_ago(tour, m.created_at)}"
            print(f"   {_score(ask, m, ranks)} · {where} · [{m.role}] {m.content}")
    if floor:
        print(f"   and nothing relevant by meaning: {floor}")


def _floor_note(result: MemoryResult) -> str:
    """The summary's account of the relevance floor, when it emptied the search."""
    _, found, note = result.context_summary.partition("no relevant memory: ")
    return note if found else ""


def _place(result: MemoryResult, msg_id: str) -> str:
    ids = [m.msg_id for m in result.messages]
    return f"#{ids.index(msg_id) + 1}" if msg_id in ids else "not found"


def _first_line(exc: BaseException) -> str:
    line = (str(exc).splitlines() or [type(exc).__name__])[0].strip()
    # The first line may end by announcing a list of places tried: not shown here.
    if line.endswith(":") and ". " in line:
        line = line.rsplit(". ", 1)[0] + "."
    return line


# -- scenes ------------------------------------------------------------------------------


def scene_chats(tour: Tour) -> None:
    """What is stored: one owner, five conversations over six weeks."""
    print(f"\nMaya's chats with her assistant (owner {OWNER!r}), oldest first:")
    for chat in CHATS:
        first = tour.mem.get(f"demo-{chat.conversation_id}-1")
        if first is None:
            continue
        now = "  <- going on now" if chat.conversation_id == CURRENT else ""
        print(f"   {_ago(tour, first.created_at):>12}  {chat.conversation_id:<15}"
              f"{len(chat.lines):>3} messages  \"{first.content}\"{now}")


def scene_recency_misses_it(tour: Tour) -> None:
    """The answer is in a weeks-old chat: the recent window misses it, cross_conversation
    finds it once the lookback reaches back far enough."""
    print(f'\n1. Recency alone misses it. In {CURRENT!r}, Maya now asks: "{QUESTION}"')
    ask, recent = tour.ask(Ask(Strategy.RECENT_HISTORY, limit=4, lookback_days=7))
    show(tour, ask, recent, f"{CURRENT!r}, last 4 messages of the last 7 days")
    print(f"   -> the allergy: {_place(recent, ALLERGY)} in this chat's recent window")
    said = tour.mem.get(ALLERGY)
    for lookback in (7, None):
        ask, found = tour.ask(Ask(Strategy.CROSS_CONVERSATION, query=QUESTION, lookback_days=lookback))
        show(tour, ask, found)
        where = f"; it was said {_ago(tour, said.created_at)} in {said.conversation_id!r}" if said else ""
        print(f"   -> the allergy: {_place(found, ALLERGY)}{where}")


def scene_keywords_or_meaning(tour: Tour) -> None:
    """The same question by keywords only, by meaning only, and fused."""
    bm25 = ("BM25 = keyword relevance (higher is better, no fixed scale; a message also matches"
            "\n   the words of the ones before and after it, at half weight: a reply is found by its question)")
    if tour.dense:
        print("\n2. Keywords, meaning, or both: each question asked three ways")
        print(f"   scores: {bm25};\n   cosine = how close the vectors are (1 = same direction);"
              f" fused = {KEYWORD_WEIGHT:g} x BM25 / the best BM25\n   + {1 - KEYWORD_WEIGHT:g} x cosine / the best"
              " cosine, plus what the signals add (a question\n   passes part of its score to its answer;"
              " a time or a name in the query; length)")
    else:
        print("\n2. Keyword search: what it finds, and what it cannot")
        print(f"   scores: {bm25}")
    for query, target, what in (
        (PARAPHRASE, KNEE, "a paraphrase, not one word in common with what Maya said"),
        (CODE, OUTBOUND, "a flight number, an exact token"),
    ):
        print(f'\n   "{query}" ({what})')
        places = []
        for keyword, dense in ((True, False), (False, True), (True, True)):
            if not tour.dense and dense:
                continue
            ask, result = tour.ask(Ask(Strategy.CROSS_CONVERSATION, query=query,
                                       keyword=keyword, dense=dense))
            show(tour, ask, result, f'"{query}"')
            places.append(f"{ask.short} {_place(result, target)}")
        print(f"   -> the message asked about: {', '.join(places)}")
        if not tour.dense and target == KNEE:
            print(f"   (finding a paraphrase takes the embedding model: {DOWNLOAD})")


def scene_ask_again(tour: Tour) -> None:
    """A repeated call on unchanged data is answered from a cache."""
    print("\n3. The same calls again (as in 1)")
    for ask in (Ask(Strategy.CROSS_CONVERSATION, query=QUESTION),
                Ask(Strategy.RECENT_HISTORY, limit=4, lookback_days=7)):
        ask = tour.runnable(ask)
        first = tour.asked[ask][0] if ask in tour.asked else tour.ask(ask)[1]
        ask, again = tour.ask(ask)
        print(f"\n== {ask.strategy.value} · {ask.scope} · {ask.path} · {_how(ask, again)};"
              f" first asked: {_how(ask, first)}")
        same = [m.msg_id for m in first] == [m.msg_id for m in again]
        print(f"   {len(again)} messages" + (", the same ones in the same order" if same else ""))
        if ask.strategy in SEARCHES and not again.cache_hit and not tour.dense:
            print("   (search answers are cached once every message in scope has its vector;"
                  " without a model none has)")


def scene_other_strategies(tour: Tour) -> None:
    """The rest of the strategies, as an agent would call them for its next turn."""
    print("\n4. The other strategies")
    show(tour, *tour.ask(Ask(Strategy.SESSION_ONLY)), f"{CURRENT!r}")
    ask, result = tour.ask(Ask(Strategy.HYBRID, query=QUESTION, limit=4, lookback_days=7))
    show(tour, ask, result, f"{CURRENT!r}: 2 newest, then the best matches in this chat only")
    print(f"   -> the allergy: {_place(result, ALLERGY)} (another chat: that takes cross_conversation)")
    query = "who signs off if we go over budget?"
    show(tour, *tour.ask(Ask(Strategy.SEMANTIC_SEARCH, "team-offsite", query, limit=2)),
         f'\'team-offsite\' only, "{query}"')


def scene_nothing_relevant(tour: Tour) -> None:
    """A question no chat answers gets no memory, rather than the least bad matches."""
    if not tour.dense:  # the floor is a cosine similarity: it needs the model
        return
    query = "What is 15% of 240?"
    print(f'\n5. Nothing relevant: Maya asks "{query}", which none of her chats answers')
    ask = Ask(Strategy.CROSS_CONVERSATION, query=query)
    show(tour, *tour.ask(ask), f'"{query}"')
    show(tour, *tour.ask(replace(ask, floor=False)), f'"{query}", min_relevance=None')
    print("   -> without the floor, the least bad matches would have reached the prompt")


def scene_auto(tour: Tour) -> None:
    """Strategy.AUTO: the agent passes each new message, localmem picks the strategy."""
    print("\n6. Let localmem choose: Strategy.AUTO, message by message")
    for query in ("thanks, that helps!", "what did I just say?", QUESTION):
        _, result = tour.ask(Ask(Strategy.AUTO, query=query, lookback_days=None))
        chose = result.selection
        assert chose is not None  # AUTO always says how it chose
        print(f'\n== auto · "{query}" -> {result.strategy.value} ({chose.reason}; '
              f"{chose.choose_ms:.2f} ms to choose)")
        print(f"   {chose.detail}")
        for m in result.messages[:3]:
            print(f"   [{m.conversation_id}] {m.content[:72]}")
        if not result.messages:
            print("   (no stored messages)")


SCENES: Sequence[Callable[[Tour], None]] = (
    scene_chats,
    scene_recency_misses_it,
    scene_keywords_or_meaning,
    scene_ask_again,
    scene_other_strategies,
    scene_nothing_relevant,
    scene_auto,
)


# -- the tour ----------------------------------------------------------------------------


def write_chats(mem: Memory, now: datetime) -> None:
    """Store the chats; messages already there (same msg_id) are left as they are."""
    items = demo_messages(now)
    new = [item for item in items if mem.get(item["msg_id"]) is None]
    added = mem.add_many(new) if new else 0
    if added:
        print(f"wrote {added} new of {len(items)} messages")
    else:
        print(f"wrote 0 new of {len(items)} messages: they are already here (fixed msg_ids),"
              " so this run adds nothing")


def prepare_vectors(mem: Memory) -> bool:
    """Wait for the vectors; False (after saying why, and how to fix it) without a model."""
    pending = mem.stats()["pending_vectors"]
    started = time.perf_counter()
    try:
        mem.flush()
        name = getattr(mem.embedder, "name", DEFAULT_EMBEDDER)  # the model that embeds queries
    except ModelError as exc:
        print(f"no embedding model: {_first_line(exc)}")
        print(f"   `{DOWNLOAD}` fetches it (90 MB, once); until then this tour runs recency"
              " and keyword (BM25) search only")
        return False
    took = time.perf_counter() - started
    if pending:
        print(f"vectors: {pending} messages embedded by {name} in {took:.1f} s")
    else:
        print(f"vectors: every message already has one ({name})")
    return True


def run_demo(db: str | None) -> int:
    """Write the demo's chats to ``db`` (default: a fresh temporary file) and run the tour.
    Returns the exit code; prints no traceback (a localmem error is left to the caller)."""
    try:
        path = db if db is not None else os.path.join(tempfile.mkdtemp(prefix="localmem-demo-"), "memory.db")
        print(f"localmem demo: database {path}")
        with Memory(path) as mem:
            now = datetime.now(timezone.utc)
            write_chats(mem, now)
            tour = Tour(mem, now, dense=prepare_vectors(mem))
            for scene in SCENES:
                try:
                    scene(tour)
                except LocalMemError as exc:  # say so, and go on with the next scene
                    print(f"   ({scene.__name__} stopped: {_first_line(exc)})")
        if path != ":memory:":  # gone with the process
            print(f"\nInspect it: localmem info --db {path}")
        sys.stdout.flush()  # a closed pipe fails here, not at exit
    except KeyboardInterrupt:
        print("\ninterrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # the reader left (`localmem demo | head`): stop quietly
        _drop_stdout()
        return 1
    except OSError as exc:  # e.g. no writable temporary folder
        print(f"localmem: error: {exc}", file=sys.stderr)
        return 1
    return 0


def _drop_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit has nowhere to fail."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no real file descriptor (a test's capture)
        pass
