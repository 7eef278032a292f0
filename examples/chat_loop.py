"""localmem: a complete chat loop with memory, context building and a running summary,
offline. A stand-in reply function takes the place of the LLM; swap in your client.

Each turn: store the user's message, build the context for the reply within a token
budget (the running summary of older turns, messages retrieved from this and earlier
chats, the recent turns), send it, store the reply. The summary is folded in the
background as turns slide out of the recent window.

    python examples/chat_loop.py              # with all-MiniLM-L6-v2 (found or downloaded once)
    python examples/chat_loop.py --no-model   # no model: keyword retrieval only
"""

import json
import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from localmem import Memory, SummaryPolicy

OWNER = "maya"
NOW = datetime.now(timezone.utc)
BUDGET = 700  # tokens for the whole prompt (a small one, so that things must give)
INSTRUCTIONS = "You are Maya's travel assistant. Use the memory below when it helps."
EARLIER_CHAT = [  # five weeks ago, another conversation
    ("user", "My sister Ana lives in Porto, near the Ribeira; she has a spare room."),
    ("assistant", "Good to know: a free place to stay in Porto."),
]
USER_TURNS = [
    "I want to plan a trip to Portugal in May 2025, about 10 days.",
    "Flights from Berlin to Lisbon cost 180 euros in May; the train Lisbon to Porto is 30 euros.",
    "In Lisbon I want to see the Alfama and eat pastel de nata at Manteigaria.",
    "My budget is 1500 euros for everything, and I hate early flights.",
    "Let's say Lisbon from 3 May to 7 May, then Porto.",
    "Could we add a day trip to Sintra on 5 May?",
    "For Porto, I'd like a port wine tasting at Graham's.",
    "What about the Douro valley, is a day trip from Porto worth it?",
    "Remind me: where could I stay in Porto for free?",
    "And how much is the train from Lisbon to Porto?",
]


def reply(messages: list) -> str:
    """A stand-in for the LLM: it answers with what it was given, deterministically."""
    system = messages[0]["content"] if messages[0]["role"] == "system" else ""
    question = messages[-1]["content"]
    recalled = [line for line in system.splitlines() if line.startswith("- [")]
    hint = f" I remember: {recalled[0].split('] ', 1)[1]}" if recalled else ""
    return f"(stand-in reply to {question[:40]!r}: {len(messages)} messages in my prompt.){hint}"


def main(use_model: bool) -> None:
    options = {} if use_model else {"embed": "off"}
    # A short window, so that this short chat already has older turns to summarise.
    summaries = SummaryPolicy(window_tokens=250, fold_tokens=60, max_tokens=200)
    with tempfile.TemporaryDirectory() as folder, \
            Memory(Path(folder) / "memory.db", summaries=summaries, **options) as mem:
        for i, (role, text) in enumerate(EARLIER_CHAT):
            mem.add(role, text, conversation_id="family", owner_id=OWNER,
                    created_at=NOW - timedelta(days=35, minutes=-i))
        if use_model:
            mem.flush()

        for turn, text in enumerate(USER_TURNS, 1):
            mem.add("user", text, conversation_id="trip", owner_id=OWNER)  # counted in the budget
            ctx = mem.build_context(conversation_id="trip", owner_id=OWNER, query=text,
                                    max_tokens=BUDGET, instructions=INSTRUCTIONS)
            answer = reply(ctx.to_openai())
            mem.add("assistant", answer, conversation_id="trip", owner_id=OWNER)
            t = ctx.tokens
            print(f"turn {turn:2}: {t.total:3}/{t.max_tokens} tokens: {len(ctx.turns)} recent turns ({t.turns}), "
                  f"summary v{ctx.summary_version or 0} ({t.summary}), {len(ctx.history)} recalled ({t.history}), "
                  f"history by {ctx.strategy.value if ctx.strategy else '-'}; {len(ctx.dropped)} left out")
            print(f"         {answer}")
            if turn % 4 == 0:
                mem.flush()  # in a real agent the worker just runs; here, make the demo repeatable

        mem.flush()
        summary = mem.get_conversation_summary(conversation_id="trip", owner_id=OWNER)
        print(f"\nrunning summary v{summary.version}, {summary.folded} messages folded in "
              f"(by {summary.summarizer}):")
        print(summary.text)
        ctx = mem.build_context(conversation_id="trip", owner_id=OWNER, max_tokens=BUDGET,
                                instructions=INSTRUCTIONS, query="Where can I stay in Porto?")
        payload = ctx.to_anthropic(user_message="Where can I stay in Porto?")
        print(f"\nthe Anthropic request: system of {len(payload['system'])} characters, "
              f"{len(payload['messages'])} alternating turns, first {payload['messages'][0]['role']}, "
              f"last {payload['messages'][-1]['role']}")
        print(json.dumps(payload["messages"][-1]))


if __name__ == "__main__":
    main(use_model="--no-model" not in sys.argv[1:])
