"""localmem as a Model Context Protocol server: ``localmem --db PATH mcp --owner ID``.

Desktop and IDE agents (Claude Desktop, Cursor, ...) start the server as a child process
and talk to it over stdio. It offers six tools, with JSON schemas from the signatures
below and the protocol's hints:

=================  ==========================================  ===========================
tool               what it does                                hints
=================  ==========================================  ===========================
``remember``       store a message or fact                     not read-only, not destructive
``recall``         ``get_memory``: ``auto`` by default         read-only
``recent``         the conversation's last messages            read-only
``build_context``  the prompt's memory under a token budget    read-only
``forget``         hard delete: a message, a conversation,     destructive, idempotent
                   or all of the owner's messages
``stats``          what the memory holds                       read-only
=================  ==========================================  ===========================

Every tool is closed-world (``openWorldHint`` false: it touches only the local file).
The owner comes from the server's settings (``--owner``, ``$LOCALMEM_OWNER``) so that a
single-user setup needs no ids in calls; a call may name it only when it is the same
(or when the server has none: then every call must). The conversation defaults to the
server's (``--conversation``, ``$LOCALMEM_CONVERSATION``, else ``"default"``).

A localmem error (bad input, a model that cannot load, a write to a file it cannot
write, which it serves read-only) comes back as a tool error with localmem's message;
anything else as a tool error naming the exception, with its traceback logged on stderr. The server never dies of a call. Tools run in
worker threads (the SDK runs plain functions so), several at once; ``Memory`` is safe
for that. When the client goes away (stdin closed, or the client killed mid-call) the
server closes the memory and exits quietly.

Tested with the official SDK, mcp 2.0.0 and 2.3.0 (``mcp.server.mcpserver.MCPServer``; 1.x
called it FastMCP), by its own stdio client: tests/test_integration_mcp.py.
"""

from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any, Literal

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations
from pydantic import Field

# Before Python 3.12 pydantic reads only typing_extensions' TypedDict inside other types
# (the output schemas nest them); it comes with pydantic.
from typing_extensions import TypedDict

from .._version import __version__
from ..backend import is_postgres_url
from ..driver import can_write
from ..errors import InvalidInputError, LocalMemError, ModelError
from ..memory import Memory
from ..records import Message, RetrievedMessage, Strategy
from ..validate import MAX_LIMIT, check_id, parse_time
from ._messages import is_carrier

log = logging.getLogger(__name__)

DEFAULT_CONVERSATION = "default"

INSTRUCTIONS = """\
localmem is this user's long-term conversation memory, kept in a local file.
- recall: before answering anything that may depend on what the user said or decided
  before (preferences, facts about them, earlier plans), search with their words.
- remember: store what is worth recalling later (a preference, a fact, a decision), as a
  short self-contained sentence, role "user" for what the user said.
- recent: the last messages of the conversation; build_context: the prompt's memory
  (summary, relevant history, recent turns) within a token budget.
- forget deletes for good; use it only when the user asks.
Owner and conversation ids are optional: the server's settings fill them in."""

# Which strategy each recall scope runs.
SCOPES: dict[str, Strategy] = {
    "auto": Strategy.AUTO,
    "conversation": Strategy.SEMANTIC_SEARCH,
    "all_conversations": Strategy.CROSS_CONVERSATION,
}

# -- what the tools return (each becomes the tool's output schema) --------------------


class StoredMessage(TypedDict):
    msg_id: str
    conversation_id: str
    owner_id: str
    role: str
    content: str
    created_at: str
    feature: str | None
    metadata: dict[str, Any] | None


class FoundMessage(StoredMessage):
    score: float | None
    source: str


class RecallAnswer(TypedDict):
    strategy: str
    why: str | None
    summary: str
    messages: list[FoundMessage]


class RecentAnswer(TypedDict):
    conversation_id: str
    messages: list[StoredMessage]


class Turn(TypedDict):
    role: str
    content: str


class ContextAnswer(TypedDict):
    text: str
    system: str
    turns: list[Turn]
    tokens: dict[str, int]
    strategy: str | None
    left_out: int


class ForgetAnswer(TypedDict):
    deleted: int
    complete: bool
    pending: list[str]


class StatsAnswer(TypedDict):
    owner_id: str
    conversations: list[str]
    database: dict[str, Any]


# -- argument types (their descriptions and bounds go into the input schemas) --------

ConversationArg = Annotated[
    str | None,
    Field(description="conversation id; omit for the server's default conversation"),
]
OwnerArg = Annotated[
    str | None,
    Field(description="owner (user) id; omit to use the server's owner"),
]
Limit = Annotated[int, Field(ge=1, le=MAX_LIMIT, description="at most this many messages")]
LookbackDays = Annotated[
    float | None,
    Field(gt=0, description="only messages from the last N days (omit: all time)"),
]

READ_ONLY = ToolAnnotations(read_only_hint=True, destructive_hint=False, idempotent_hint=True, open_world_hint=False)


def _stored(m: Message) -> StoredMessage:
    return {
        "msg_id": m.msg_id, "conversation_id": m.conversation_id, "owner_id": m.owner_id,
        "role": m.role, "content": m.content, "created_at": m.created_at.isoformat(),
        "feature": m.feature, "metadata": m.metadata,
    }


def _found(m: RetrievedMessage) -> FoundMessage:
    return {**_stored(m), "score": m.score, "source": m.source}


@contextmanager
def _tool_errors(tool: str) -> Iterator[None]:
    """localmem's errors as tool errors with its message; anything else as a tool error
    that names it (traceback on stderr): the client sees why, the server lives on."""
    try:
        yield
    except ToolError:
        raise
    except ModelError as exc:
        raise ToolError(f"{exc} (to search by keywords without a model, start the server with --keywords-only)") from exc
    except LocalMemError as exc:
        raise ToolError(str(exc)) from exc
    except Exception as exc:
        log.error("tool %s failed:\n%s", tool, traceback.format_exc())
        raise ToolError(f"internal error in {tool}: {type(exc).__name__}: {exc}") from exc


class Settings:
    """Who the server serves: the owner (None: every call names one) and the default
    conversation; ``dense=False``: searches by keywords alone (a memory opened with
    ``embed="off"``, on a machine without the embedding model)."""

    def __init__(self, owner_id: str | None = None, conversation_id: str = DEFAULT_CONVERSATION, *,
                 dense: bool = True) -> None:
        self.owner_id = None if owner_id is None else check_id(owner_id, "owner")
        self.conversation_id = check_id(conversation_id, "conversation")
        self.dense = dense

    def owner(self, given: str | None) -> str:
        if self.owner_id is None:
            if given is None:
                raise InvalidInputError(
                    "owner_id is required: pass it, or start the server with --owner ID (or LOCALMEM_OWNER)"
                )
            return given
        if given is not None and given != self.owner_id:
            raise InvalidInputError(f"this server serves owner {self.owner_id!r} only; got owner_id {given!r}")
        return self.owner_id

    def conversation(self, given: str | None) -> str:
        return self.conversation_id if given is None else given


def build_server(memory: Memory, settings: Settings | None = None) -> MCPServer:
    """An MCP server whose tools use ``memory`` (the caller opens and closes it)."""
    s = settings or Settings()
    server = MCPServer("localmem", version=__version__, instructions=INSTRUCTIONS, log_level="WARNING")

    @server.tool(annotations=ToolAnnotations(
        title="Remember", read_only_hint=False, destructive_hint=False, idempotent_hint=False, open_world_hint=False,
    ))
    def remember(
        content: Annotated[str, Field(min_length=1, description="the text to store: a message, or a fact as a sentence")],
        role: Annotated[
            Literal["user", "assistant", "system"], Field(description="who said it (default: user)")
        ] = "user",
        conversation_id: ConversationArg = None,
        owner_id: OwnerArg = None,
        feature: Annotated[str | None, Field(description="an optional tag, e.g. 'preference'")] = None,
        metadata: Annotated[dict[str, Any] | None, Field(description="an optional JSON object kept with it")] = None,
        msg_id: Annotated[
            str | None,
            Field(description="an id of your own; storing the same id and text again is a no-op"),
        ] = None,
    ) -> StoredMessage:
        """Store a message or a fact in long-term memory, so that recall finds it later.
        Durable when this returns. Returns the stored message with its msg_id."""
        with _tool_errors("remember"):
            owner = s.owner(owner_id)
            if metadata is not None and any(is_carrier(value) for value in metadata.values()):
                # A forged one would make the chat-history adapters fail on the conversation.
                raise InvalidInputError("metadata holds a chat-adapter carrier: only localmem's LangChain "
                                        "and LlamaIndex adapters write those")
            if msg_id is not None and (taken := memory.get(msg_id)) is not None and taken.owner_id != owner:
                # Said without what holds it: another owner's message is not there for this one.
                raise InvalidInputError(f"msg_id {msg_id!r} is taken; choose another, or leave it out")
            stored = memory.add(
                role, content, conversation_id=s.conversation(conversation_id), owner_id=owner,
                feature=feature, msg_id=msg_id, metadata=metadata,
            )
            return _stored(stored)

    @server.tool(annotations=READ_ONLY.model_copy(update={"title": "Recall"}))
    def recall(
        query: Annotated[str, Field(min_length=1, description="what to look for, in the user's words")],
        scope: Annotated[
            Literal["auto", "conversation", "all_conversations"],
            Field(description="auto (default): localmem chooses per query where to look and how; "
                              "conversation: this conversation, best matches first; "
                              "all_conversations: every conversation of the owner"),
        ] = "auto",
        limit: Limit = 10,
        lookback_days: LookbackDays = None,
        conversation_id: ConversationArg = None,
        owner_id: OwnerArg = None,
    ) -> RecallAnswer:
        """Search long-term memory for messages related to the query, best first.
        The answer says which strategy ran and, for auto, why."""
        with _tool_errors("recall"):
            result = memory.get_memory(
                SCOPES[scope], query=query, limit=limit, lookback_days=lookback_days, dense=s.dense,
                conversation_id=s.conversation(conversation_id), owner_id=s.owner(owner_id),
            )
            return {
                "strategy": result.strategy.value,
                "why": None if result.selection is None else result.selection.detail,
                "summary": result.context_summary,
                "messages": [_found(m) for m in result.messages],
            }

    @server.tool(annotations=READ_ONLY.model_copy(update={"title": "Recent messages"}))
    def recent(
        limit: Limit = 10,
        lookback_days: LookbackDays = None,
        conversation_id: ConversationArg = None,
        owner_id: OwnerArg = None,
    ) -> RecentAnswer:
        """The last messages of the conversation, oldest first."""
        with _tool_errors("recent"):
            conversation = s.conversation(conversation_id)
            result = memory.get_memory(
                Strategy.RECENT_HISTORY, limit=limit, lookback_days=lookback_days,
                conversation_id=conversation, owner_id=s.owner(owner_id),
            )
            return {"conversation_id": conversation, "messages": [_stored(m) for m in result.messages]}

    @server.tool(annotations=READ_ONLY.model_copy(update={"title": "Build context"}))
    def build_context(
        query: Annotated[
            str | None,
            Field(description="what the next reply is about (omit: the conversation's latest user message)"),
        ] = None,
        max_tokens: Annotated[int, Field(ge=1, le=1_000_000, description="the token budget of the whole")] = 4000,
        instructions: Annotated[
            str | None, Field(description="a system prompt to put first (counted in the budget)")
        ] = None,
        conversation_id: ConversationArg = None,
        owner_id: OwnerArg = None,
    ) -> ContextAnswer:
        """The memory for the conversation's next reply within a token budget: the running
        summary, messages retrieved for the query (auto strategy), and the recent turns.
        ``text`` is all of it as plain text."""
        with _tool_errors("build_context"):
            ctx = memory.build_context(
                conversation_id=s.conversation(conversation_id), owner_id=s.owner(owner_id), query=query,
                max_tokens=max_tokens, instructions=instructions,
            )
            t = ctx.tokens
            return {
                "text": ctx.to_text(),
                "system": ctx.system,
                "turns": [{"role": turn.role, "content": turn.content} for turn in ctx.turns],
                "tokens": {"total": t.total, "max_tokens": t.max_tokens, "system": t.system, "summary": t.summary,
                           "history": t.history, "turns": t.turns},
                "strategy": None if ctx.strategy is None else ctx.strategy.value,
                "left_out": len(ctx.dropped),
            }

    @server.tool(annotations=ToolAnnotations(
        title="Forget", read_only_hint=False, destructive_hint=True, idempotent_hint=True, open_world_hint=False,
    ))
    def forget(
        msg_id: Annotated[str | None, Field(description="delete this one message")] = None,
        conversation_id: Annotated[str | None, Field(description="delete this whole conversation")] = None,
        everything: Annotated[bool, Field(description="delete every message of the owner")] = False,
        before: Annotated[
            str | None,
            Field(description="with conversation_id or everything: only messages older than this "
                              "ISO 8601 time with its offset, e.g. 2025-01-31T00:00:00+00:00"),
        ] = None,
        owner_id: OwnerArg = None,
    ) -> ForgetAnswer:
        """Delete messages for good (a hard delete, not a flag): one message, one
        conversation, or everything of the owner. Name exactly one of them. Use only when
        the user asks to forget."""
        with _tool_errors("forget"):
            owner = s.owner(owner_id)
            if (msg_id is not None) + (conversation_id is not None) + everything != 1:
                raise InvalidInputError("name exactly one of msg_id, conversation_id, everything=true")
            if msg_id is not None:
                if before is not None:
                    raise InvalidInputError("before goes with conversation_id or everything, not msg_id")
                found = memory.get(msg_id)
                if found is None or found.owner_id != owner:  # another owner's message is not there
                    return {"deleted": 0, "complete": True, "pending": []}
                return {"deleted": int(memory.delete(msg_id)), "complete": True, "pending": []}
            report = memory.forget(owner_id=owner, conversation_id=conversation_id, before=parse_time(before, "before"))
            return {"deleted": report.messages, "complete": report.complete, "pending": list(report.pending)}

    @server.tool(annotations=READ_ONLY.model_copy(update={"title": "Memory statistics"}))
    def stats(owner_id: OwnerArg = None) -> StatsAnswer:
        """What the memory holds: the owner's conversations, and the whole file's counts
        (messages, conversations and owners of every owner, vectors, messages waiting for
        one, bytes)."""
        with _tool_errors("stats"):
            owner = s.owner(owner_id)
            counts = memory.stats()
            embedder = counts.get("embedder")
            return {
                "owner_id": owner,
                "conversations": list(memory.conversations(owner)),
                "database": {**counts, "embedder": None if embedder is None else embedder.get("name")},
            }

    return server


def _client_gone(exc: BaseException) -> bool:
    """A broken pipe to the client, alone or in anyio's exception groups."""
    inner = getattr(exc, "exceptions", None)
    if inner is not None:
        return all(_client_gone(e) for e in inner)
    return isinstance(exc, (BrokenPipeError, ConnectionResetError))


def serve(path: str, *, owner_id: str | None = None, conversation_id: str | None = None,
          keywords_only: bool = False, **options: Any) -> int:
    """Serve the memory at ``path`` over stdio until the client goes away; returns the
    exit code. ``owner_id``/``conversation_id``: the settings (None: $LOCALMEM_OWNER,
    $LOCALMEM_CONVERSATION); ``keywords_only``: no embedding model (``embed="off"``:
    new messages wait for their vectors, searches use keywords); ``options`` go to
    ``Memory``."""
    settings = Settings(
        owner_id if owner_id is not None else (os.environ.get("LOCALMEM_OWNER") or None),
        conversation_id or os.environ.get("LOCALMEM_CONVERSATION") or DEFAULT_CONVERSATION,
        dense=not keywords_only,
    )
    if keywords_only:
        options["embed"] = "off"
    a_file = path != ":memory:" and not is_postgres_url(path)
    if a_file:
        # Said plainly here: a client sees only that the server closed.
        folder = os.path.dirname(os.path.abspath(path))
        if os.path.isdir(path):
            raise InvalidInputError(f"{path} is a folder; name the database file, e.g. {os.path.join(path, 'memory.db')}")
        if not os.path.isdir(folder):
            raise InvalidInputError(f"the folder {folder} does not exist: create it, or name a file in another one")
    if a_file and os.path.exists(path) and not can_write(path):
        # As the other commands read such a file: remember and forget answer with an error.
        print(f"localmem mcp: note: {path} cannot be written here; serving it read-only", file=sys.stderr)
        options["read_only"] = True
    with Memory(path, **options) as memory:
        server = build_server(memory, settings)
        try:
            server.run("stdio")
        except KeyboardInterrupt:
            return 130
        except BaseException as exc:
            if not _client_gone(exc):
                raise
            print("localmem mcp: the client went away", file=sys.stderr)
    return 0
