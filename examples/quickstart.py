"""localmem quickstart: store a conversation, then load it back for the next prompt."""

import tempfile
from datetime import datetime, timezone
from pathlib import Path

from localmem import Memory, Strategy

# One SQLite file holds everything. Memory() with no path uses memory.db in your user
# data directory; here a temporary folder keeps the example self-contained. Leaving the
# with block closes the Memory (then deletes the folder).
with tempfile.TemporaryDirectory() as folder, Memory(Path(folder) / "memory.db") as mem:
    ids = {"conversation_id": "trip-42", "owner_id": "alice"}
    mem.add("user", "Find me a quiet hotel in Lisbon for May.", **ids)
    mem.add("assistant", "Chiado has a few; do you prefer a view or a garden?", **ids)

    # Your own msg_id makes a write safe to retry; metadata is any JSON-able dict;
    # feature tags the part of your app that wrote it; created_at must be timezone-aware.
    fields = dict(
        msg_id="msg-0003", feature="hotel_search", metadata={"channel": "mobile"},
        created_at=datetime.now(timezone.utc), **ids,
    )
    first = mem.add("user", "A garden, please. I'm vegetarian.", **fields)
    retry = mem.add("user", "A garden, please. I'm vegetarian.", **fields)  # e.g. after a timeout
    print("retry returned the stored message:", retry == first, retry.msg_id)

    # What to put in the next prompt: the last 10 messages of the past 7 days, oldest
    # first. The second call is answered from the hot window (cache_hit=True).
    for attempt in (1, 2):
        result = mem.get_memory(Strategy.RECENT_HISTORY, limit=10, lookback_days=7, **ids)
        print(f"\ncall {attempt}: strategy={result.strategy} cache_hit={result.cache_hit} "
              f"latency_ms={result.latency_ms:.2f}")
        print("context_summary:", result.context_summary)
        for m in result.messages:
            print(f"  {m.created_at.isoformat()} [{m.role}] {m.content}"
                  + (f"  feature={m.feature} metadata={m.metadata}" if m.feature else ""))
