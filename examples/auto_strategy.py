"""localmem: let it choose the strategy per message (Strategy.AUTO), then read the strategy
log: which strategies ran, how fast, and why auto chose them.

An agent passes each new user message as the query; localmem picks what to load. Runs
offline: with the real all-MiniLM-L6-v2 (found or downloaded once) the choice also
reads where the closest stored messages are; without any model (embed="off") the text
rules alone choose and searches use keywords.
"""

import sys
import tempfile
from datetime import datetime, timedelta, timezone
from pathlib import Path

from localmem import Memory, Strategy

NOW = datetime.now(timezone.utc)
OWNER = "maya"
OLD_CHAT = [  # three weeks ago
    ("user", "I'm pescatarian, and I have a severe peanut allergy."),
    ("assistant", "Noted: fish is fine, no meat, and no peanuts in any form."),
]
THIS_CHAT = [  # going on now
    ("user", "Help me plan a Thai dinner for six on Saturday."),
    ("assistant", "Chicken satay with peanut sauce, green papaya salad and mango sticky rice."),
]
MESSAGES = ("thanks, that helps!", "what did you just suggest?", "Hang on, what about my allergy?")


def main(use_model: bool) -> None:
    options = {} if use_model else {"embed": "off"}
    search = {} if use_model else {"dense": False}  # no model: keyword search only
    with tempfile.TemporaryDirectory() as folder, Memory(Path(folder) / "memory.db", **options) as mem:
        for chat, lines, start in (("meal-prep", OLD_CHAT, NOW - timedelta(days=21)),
                                   ("dinner", THIS_CHAT, NOW - timedelta(minutes=5))):
            for i, (role, text) in enumerate(lines):
                mem.add(role, text, conversation_id=chat, owner_id=OWNER, created_at=start + timedelta(minutes=i))
        if use_model:
            mem.flush()  # vectors first, so that the choice can compare meanings

        for message in MESSAGES:
            result = mem.get_memory(Strategy.AUTO, query=message, conversation_id="dinner", owner_id=OWNER,
                                    lookback_days=None, limit=3, **search)
            chose = result.selection
            print(f'"{message}" -> {result.strategy.value} ({chose.reason}, '
                  f'{"confident" if chose.confident else "not confident"})')
            print(f"   {chose.detail}")
            for m in result.messages:
                print(f"   [{m.conversation_id}] {m.content}")

        # Every get_memory call is in the strategy log (the query as a hash only).
        mem.get_memory(Strategy.RECENT_HISTORY, conversation_id="dinner", owner_id=OWNER)
        stats = mem.strategy_stats(owner_id=OWNER)
        print(f"\n{stats.total_calls} calls logged; chosen by auto: {stats.auto_share:.0%}")
        for usage in stats.strategies:
            print(f"   {usage.strategy:20} {usage.calls} call(s), p50 {usage.latency_p50_ms:.2f} ms")
        print("why auto chose:", ", ".join(f"{reason} ({n})" for reason, n in stats.auto_reasons))

        # Your own SQL over the log, with DuckDB.
        table = mem.analytics()
        rows = table.execute("SELECT strategy, chosen_by, count(*) FROM strategy_log"
                             " GROUP BY ALL ORDER BY 3 DESC, 1").fetchall()
        table.close()
        print("by strategy and chooser:", rows)


if __name__ == "__main__":
    main(use_model="--no-model" not in sys.argv[1:])
