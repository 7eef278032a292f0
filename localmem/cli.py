"""The ``localmem`` command: ``demo``, ``add``, ``recent`` and ``info``.

Exit codes: 0 success, 1 a localmem error (printed as ``localmem: error: ...``), 2 a usage
error (argparse's own).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from dataclasses import asdict
from typing import Any

from .errors import InvalidInputError, LocalMemError, StrategyUnavailableError
from .memory import Memory, default_path
from .records import MemoryResult, Message, Strategy
from .validate import ROLES


def _iso(value: Any) -> str:
    return value.isoformat(timespec="seconds")


def _message_json(m: Message) -> dict[str, Any]:
    return {**asdict(m), "created_at": m.created_at.isoformat()}


def _print_json(value: Any) -> None:
    print(json.dumps(value, ensure_ascii=False, indent=2))


def _db_path(args: argparse.Namespace) -> str:
    return os.fspath(default_path()) if args.db is None else args.db


def _open_existing(args: argparse.Namespace, **options: Any) -> Memory:
    """Open a database that must already exist: reading never creates a file."""
    path = _db_path(args)
    if path != ":memory:" and not os.path.exists(path):
        raise LocalMemError(
            f"no database at {path} (nothing was created); "
            "'localmem add' or 'localmem demo --db PATH' creates one"
        )
    return Memory(path, **options)


def _demo_conversations() -> dict[str, list[dict[str, Any]]]:
    """Two short chats, English and Portuguese, with fixed msg_ids so a re-run is a no-op."""
    chats = {
        "trip-lisbon": [
            ("user", "I'm planning three days in Lisbon in May. Where should I stay?"),
            ("assistant", "Alfama or Chiado: both walkable, close to trams and viewpoints."),
            ("user", "Chiado then. I'm vegetarian, by the way."),
            ("assistant", "Noted. Try Ao 26 in Chiado for dinner; book a day ahead."),
            ("user", "Perfect. Add a day trip to Sintra on the second day."),
        ],
        "pizza-noite": [
            ("user", "Quero pedir pizza hoje à noite. O que você recomenda?"),
            ("assistant", "Que tal uma margherita com manjericão fresco? É clássica."),
            ("user", "Prefiro sem cebola e com borda recheada de catupiry."),
            ("assistant", "Anotado: sem cebola, borda de catupiry. Quer bebida também?"),
            ("user", "Sim, um guaraná gelado, por favor."),
        ],
    }
    conversations = {
        conv: [{"msg_id": f"demo-{conv}-{i}", "role": role, "content": text}
               for i, (role, text) in enumerate(lines, 1)]
        for conv, lines in chats.items()
    }
    # One message carries a feature tag and metadata; both come back as given.
    conversations["trip-lisbon"][2].update(
        feature="trip_planner", metadata={"diet": "vegetarian", "channel": "web"}
    )
    return conversations


def _print_result(result: MemoryResult) -> None:
    print(f"  {result.context_summary}")
    hot = " (served from the hot window)" if result.cache_hit else ""
    print(f"  cache_hit={result.cache_hit}{hot}  latency_ms={result.latency_ms:.2f}")
    for m in result.messages:
        print(f"    [{m.role}] {m.content}")
        if m.feature or m.metadata:
            print(f"      feature={m.feature} metadata={json.dumps(m.metadata, ensure_ascii=False)}")


def cmd_demo(args: argparse.Namespace) -> int:
    """Write two short conversations, then ask every strategy about them."""
    if args.db is None:
        path = os.path.join(tempfile.mkdtemp(prefix="localmem-demo-"), "memory.db")
    else:
        path = args.db
    owner = "demo-user"
    print(f"localmem demo: database {path}")
    with Memory(path) as mem:
        conversations = _demo_conversations()
        for conv, items in conversations.items():
            added = mem.add_many(items, conversation_id=conv, owner_id=owner)
            print(f"  wrote {added} new of {len(items)} messages to {conv!r} (owner {owner!r})")
        first = next(iter(conversations))
        for strategy in Strategy:
            # recent_history: each conversation once, then the first again (hot window hit).
            asks = [*conversations, first] if strategy is Strategy.RECENT_HISTORY else [first]
            for n, conv in enumerate(asks):
                again = ", asked again" if conv in asks[:n] else ""
                print(f"\n== {strategy.value} (conversation {conv!r}{again})")
                try:
                    result = mem.get_memory(strategy, conversation_id=conv, owner_id=owner)
                except StrategyUnavailableError as exc:
                    print(f"  not available in this build: {exc}")
                    continue
                _print_result(result)
    print(f"\nInspect it: localmem info --db {path}")
    return 0


def _read_text(text: str) -> str:
    """TEXT, or stdin (UTF-8, trailing newlines dropped) when TEXT is ``-``."""
    if text != "-":
        return text
    stream = getattr(sys.stdin, "buffer", None)
    if stream is None:
        return sys.stdin.read().rstrip("\r\n")
    try:
        return stream.read().decode("utf-8").rstrip("\r\n")
    except UnicodeDecodeError as exc:
        raise InvalidInputError(f"stdin is not valid UTF-8 (byte {exc.start})") from None


def cmd_add(args: argparse.Namespace) -> int:
    metadata = None
    if args.metadata is not None:
        try:
            metadata = json.loads(args.metadata)
        except json.JSONDecodeError as exc:
            raise InvalidInputError(f"--metadata is not valid JSON: {exc}") from None
    content = _read_text(args.text)
    with Memory(_db_path(args)) as mem:
        m = mem.add(
            args.role, content, conversation_id=args.conversation, owner_id=args.owner,
            feature=args.feature, msg_id=args.msg_id, metadata=metadata,
        )
    if args.json:
        _print_json(_message_json(m))
    else:
        print(f"{m.msg_id}  {_iso(m.created_at)}")
    return 0


def cmd_recent(args: argparse.Namespace) -> int:
    lookback = None if args.all else args.lookback_days
    with _open_existing(args) as mem:
        result = mem.get_memory(
            Strategy.RECENT_HISTORY, conversation_id=args.conversation, owner_id=args.owner,
            limit=args.limit, lookback_days=lookback,
        )
    if args.json:
        _print_json({
            "strategy": result.strategy.value,
            "cache_hit": result.cache_hit,
            "context_summary": result.context_summary,
            "latency_ms": result.latency_ms,
            "messages": [_message_json(m) for m in result.messages],
        })
        return 0
    for m in result.messages:
        print(f"{_iso(m.created_at)}  [{m.role}] {m.content}")
    print(result.context_summary)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    # hot_window=0: looking must not create the cache directory beside the file.
    with _open_existing(args, hot_window=0) as mem:
        stats = mem.stats()
    if args.json:
        _print_json(stats)
        return 0
    stats["bytes"] = f"{stats['bytes']} bytes"
    for key, value in stats.items():
        print(f"{'size' if key == 'bytes' else key:<14}  {value}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="localmem",
        description="Conversation memory for AI agents, in one SQLite file.",
        epilog="Start with: localmem demo",
    )
    db_help = "database file (default: memory.db in the user data directory)"
    parser.add_argument("--db", metavar="PATH", help=db_help)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(name: str, func: Any, help: str, db: str = db_help) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help, description=help)
        # SUPPRESS: given after the subcommand it wins; absent, the global --db stands.
        p.add_argument("--db", metavar="PATH", default=argparse.SUPPRESS, help=db)
        p.set_defaults(func=func)
        return p

    def ids(p: argparse.ArgumentParser) -> None:
        p.add_argument("--conversation", required=True, metavar="ID", help="conversation id")
        p.add_argument("--owner", required=True, metavar="ID", help="owner (user) id")
        p.add_argument("--json", action="store_true", help="print JSON")

    command("demo", cmd_demo, "write two sample conversations and ask every strategy",
            db="use this file instead of a fresh temporary database")

    add = command("add", cmd_add, "store one message and print its msg_id")
    ids(add)
    add.add_argument("--role", default="user", help=f"{' | '.join(ROLES)} (default: user)")
    add.add_argument("--feature", help="feature tag")
    add.add_argument("--msg-id", help="your own id; re-adding it with the same fields is a no-op")
    add.add_argument("--metadata", metavar="JSON", help='a JSON object, e.g. \'{"lang": "en"}\'')
    add.add_argument("text", metavar="TEXT", help="the message; - reads it from stdin")

    recent = command("recent", cmd_recent, "print the most recent messages of a conversation")
    ids(recent)
    recent.add_argument("--limit", type=int, default=10, help="at most this many (default: 10)")
    window = recent.add_mutually_exclusive_group()
    window.add_argument("--lookback-days", type=float, default=7, metavar="D",
                        help="only messages from the last D days (default: 7)")
    window.add_argument("--all", action="store_true", help="no time limit")

    info = command("info", cmd_info, "print the database's path, schema version, size and counts")
    info.add_argument("--json", action="store_true", help="print JSON")
    return parser


def _utf8_output() -> None:
    """Print UTF-8 whatever the locale says, so accents never crash the output."""
    for stream in (sys.stdout, sys.stderr):
        encoding = (getattr(stream, "encoding", None) or "").lower().replace("-", "")
        if encoding != "utf8" and hasattr(stream, "reconfigure"):
            stream.reconfigure(encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse exits 2 on usage errors)."""
    args = _parser().parse_args(argv)
    _utf8_output()
    try:
        return args.func(args)
    except LocalMemError as exc:
        print(f"localmem: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
