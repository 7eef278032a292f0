"""localmem for LangChain: a chat message history and a retriever (extra ``langchain``).

``LocalmemChatMessageHistory(memory, conversation_id=..., owner_id=...)`` is a
``langchain_core.chat_history.BaseChatMessageHistory`` over one conversation of one owner
in a ``localmem.Memory``:

- ``messages``: every message of the conversation, oldest first (``Memory.messages``: by
  ``created_at``, then the order they were stored in, so the messages of one
  ``add_messages`` call come back in their order even when stored in the same microsecond).
- ``add_messages(messages)``: all of them are mapped and checked first, then stored in one
  ``Memory.add_many`` transaction (up to 100,000 messages a call): a message that cannot
  be stored (content over ``max_content_bytes``, metadata over its limits, an artifact
  that is not JSON) raises ``InvalidInputError`` and nothing of the call is written.
- ``clear()``: ``Memory.forget`` of the conversation, a hard delete (no byte left; other
  conversations and owners untouched).
- ``aget_messages``, ``aadd_messages``, ``aclear``: the same in a worker thread
  (``asyncio.to_thread``), so the event loop is never blocked.

Mapping (the policy in ``localmem.integrations._messages``):

=====================================  ==========================================
LangChain message                      localmem role
=====================================  ==========================================
``HumanMessage``                       ``user``
``AIMessage``                          ``assistant``
``SystemMessage``                      ``system``
``ToolMessage``, ``FunctionMessage``   ``assistant`` (what the agent obtained)
``ChatMessage(role=...)``              human/user: ``user``; system/developer:
                                       ``system``; any other role: ``assistant``
chunks (``AIMessageChunk``...)         as the message they are a chunk of
=====================================  ==========================================

The stored content is the message's text (``message.text``: its text blocks joined); when
that is blank, a readable stand-in: ``[tool call] name {args}`` lines for tool calls,
``[tool result] <tool_call_id>``, the kinds of the blocks (``[image]``), else
``[empty message]``. A NUL character is stored as U+FFFD (localmem refuses NUL; the
carrier keeps the original). A ``HumanMessage``, ``AIMessage`` or ``SystemMessage`` that is only
its text (and id) is stored as it is, with no metadata, so other readers of the file (the
MCP server, the command line) see clean messages. Anything more (a name, tool calls,
``additional_kwargs``, ``response_metadata``, ``usage_metadata``, list-of-blocks content,
a ``ToolMessage``'s ``tool_call_id``/``artifact``/``status``, a ``ChatMessage``'s role, a
``FunctionMessage``, a chunk class) is kept whole: ``langchain_core.messages.message_to_dict``
of the message, as one JSON string in ``metadata["langchain"]`` (its text left out when
it equals the stored content). Reading rebuilds it with ``messages_from_dict``, equal to
the message added. Artifacts and kwargs must be JSON (a tuple comes back as a list).

Ids: a message's ``id`` becomes its localmem ``msg_id`` (when it is a usable id: a
non-blank str of at most 255 characters), so adding the same messages again stores them
once (a different message under an id stored in this conversation raises
``InvalidInputError``). An id already taken by a message of another conversation or
owner (a thread copied with ``b.add_messages(a.messages)``, two users' clients that
number messages alike) is stored under a msg_id derived from this conversation and the
id, so a retry is still a no-op. A message added without an id gets a new ``msg_id``;
messages read back carry their ``msg_id`` as ``id``. An id that cannot be the
``msg_id`` is kept in the carrier and given back as it was.
Messages stored by something else are read as ``HumanMessage``/``AIMessage``/
``SystemMessage`` by role (their localmem metadata is not shown).

``LocalmemRetriever(memory=..., owner_id=..., conversation_id=..., strategy="auto", k=4,
lookback_days=None, keyword=True, dense=True[, min_relevance=...])`` is a
``langchain_core.retrievers.BaseRetriever`` that answers with ``Memory.get_memory(strategy, query=..., limit=k)`` as ``Document``\\s:
``page_content`` is the message's content, ``id`` its ``msg_id``, and ``metadata`` has
``msg_id``, ``conversation_id``, ``owner_id``, ``role``, ``created_at`` (ISO 8601, UTC),
``feature``, ``metadata`` (the message's, as stored), ``score``, ``source``,
``first_rank``, ``rerank_score`` (when a reranker ran), ``strategy`` (the one that ran)
and, when ``auto`` chose it, ``selection_reason``. ``invoke(query, k=2)`` overrides ``k``
for one call. ``keyword``/``dense`` are ``get_memory``'s (``dense=False``: keyword search
only, no model needed, as with ``Memory(..., embed="off")``); ``min_relevance`` is passed
on only when given (else the Memory's). A bad ``strategy``, ``k`` or id raises
``InvalidInputError`` at construction.

Tested with langchain-core 1.7.7 and 1.8.3, langchain-tests 1.1.9 (the retriever passes
``RetrieversIntegrationTests``; LangChain has no standard suite for chat histories).
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.chat_history import BaseChatMessageHistory
from langchain_core.documents import Document
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
    message_to_dict,
    messages_from_dict,
)
from langchain_core.retrievers import BaseRetriever

from ..errors import InvalidInputError, LocalMemError
from ..memory import Memory
from ..records import Message, RetrievedMessage, Strategy
from ..validate import check_id, check_strategy
from . import _messages

__all__ = ["CARRIER_KEY", "LocalmemChatMessageHistory", "LocalmemRetriever", "from_localmem", "to_localmem"]

CARRIER_KEY = "langchain"
"""The metadata key that carries a message's ``message_to_dict`` form."""

# Largest add_messages call written in one transaction (Memory.add_many's chunk limit).
_MAX_CHUNK = 100_000

_PLAIN: dict[str, type[BaseMessage]] = {"user": HumanMessage, "assistant": AIMessage, "system": SystemMessage}


def _role(message: BaseMessage) -> str:
    """The localmem role of a LangChain message (the module docstring's table)."""
    if isinstance(message, HumanMessage):
        return "user"
    if isinstance(message, SystemMessage):
        return "system"
    if isinstance(message, ChatMessage):
        return _messages.role_for(str(message.role))
    return "assistant"  # AIMessage, ToolMessage, FunctionMessage, anything else


def _stand_in(message: BaseMessage) -> str:
    """What to store for a message whose text is blank."""
    calls: list[tuple[str, Any]] = []
    if isinstance(message, AIMessage):
        calls += [(c["name"], c["args"]) for c in message.tool_calls]
        calls += [(c.get("name") or "?", c.get("args") or "") for c in message.invalid_tool_calls]
    if calls:
        return _messages.tool_calls_text(calls)
    if isinstance(message, ToolMessage):
        return f"[tool result] {message.tool_call_id}".rstrip()
    if isinstance(message.content, list):
        kinds = [b.get("type", "block") if isinstance(b, dict) else "block" for b in message.content]
        return " ".join(f"[{kind}]" for kind in kinds if kind != "text")
    return ""


def to_localmem(message: BaseMessage, *, msg_id: str | None = None) -> dict[str, Any]:
    """The ``Memory.add_many`` item for a LangChain message: role, content, and when
    needed ``msg_id`` and ``metadata`` (the carrier). ``msg_id``: store it under this id
    instead of the message's own (which the carrier then keeps). Raises
    ``InvalidInputError`` for what is not a message or cannot be stored as JSON."""
    if not isinstance(message, BaseMessage):
        raise InvalidInputError(f"expected a LangChain BaseMessage, not {type(message).__name__}")
    role = _role(message)
    content = _messages.stored_text(message.text, _stand_in(message))
    if msg_id is None:
        msg_id = _messages.msg_id_for(message.id)
    item: dict[str, Any] = {"role": role, "content": content}
    if msg_id is not None:
        item["msg_id"] = msg_id
    # Read back, a message's id is its msg_id: the original when it became the msg_id,
    # or when it had none (it then gets the new msg_id).
    id_given_back = message.id is None or message.id == msg_id
    if id_given_back and _PLAIN[role](content=content, id=message.id) == message:
        return item  # rebuilt from role, content and id alone: no carrier
    data = message_to_dict(message)
    fields = dict(data["data"])
    if fields.get("content") == content:
        del fields["content"]  # the stored content: not twice
    if id_given_back:
        fields.pop("id", None)
    item["metadata"] = _messages.carry(CARRIER_KEY, {"type": data["type"], "data": fields})
    return item


def from_localmem(message: Message) -> BaseMessage:
    """The LangChain message for a stored one: rebuilt from the carrier when there is
    one, else the plain message of its role; its ``id`` is the ``msg_id`` (or the
    original id that could not be one)."""
    data = _messages.carried(message, CARRIER_KEY)
    if data is None:
        return _PLAIN.get(message.role, AIMessage)(content=message.content, id=message.msg_id)
    kind, fields = data.get("type"), data.get("data")
    if not isinstance(kind, str) or not isinstance(fields, dict):
        raise LocalMemError(
            f"message {message.msg_id}: metadata[{CARRIER_KEY!r}] has no message type and data, "
            "so the message cannot be rebuilt"
        )
    fields = {**fields}
    fields.setdefault("content", message.content)
    fields.setdefault("id", message.msg_id)
    try:
        return messages_from_dict([{"type": kind, "data": fields}])[0]
    except (ValueError, TypeError, KeyError) as exc:
        raise LocalMemError(
            f"message {message.msg_id}: metadata[{CARRIER_KEY!r}] does not rebuild a LangChain message ({exc})"
        ) from exc


def _check_memory(memory: Any) -> Memory:
    if not isinstance(memory, Memory):
        raise InvalidInputError(f"memory must be a localmem.Memory, not {type(memory).__name__}")
    return memory


class LocalmemChatMessageHistory(BaseChatMessageHistory):
    """One conversation of one owner in a ``localmem.Memory``, as LangChain's chat
    message history (see the module docstring for the mapping). Several histories (and
    threads) may share one Memory; two Memory objects on the same file see each other's
    writes."""

    def __init__(self, memory: Memory, *, conversation_id: str, owner_id: str) -> None:
        self.memory = _check_memory(memory)
        self.conversation_id = check_id(conversation_id, "conversation_id")
        self.owner_id = check_id(owner_id, "owner_id")

    def __repr__(self) -> str:
        return (f"LocalmemChatMessageHistory({self.memory.path!r}, conversation_id={self.conversation_id!r}, "
                f"owner_id={self.owner_id!r})")

    @property
    def messages(self) -> list[BaseMessage]:  # type: ignore[override]
        """Every message of the conversation, oldest first."""
        stored = self.memory.messages(conversation_id=self.conversation_id, owner_id=self.owner_id)
        return [from_localmem(m) for m in stored]

    def add_messages(self, messages: Sequence[BaseMessage]) -> None:
        """Store the messages in their order, all or none (up to 100,000 a call). Messages
        whose ids are stored already with the same content are skipped (a safe retry)."""
        items = []
        for index, message in enumerate(messages):
            try:
                item = to_localmem(message)
                if "msg_id" in item:
                    # Stored here under the derived id once (its own id was taken then, and
                    # may be free now): that one again, never a second copy.
                    scoped = self._scoped_id(item["msg_id"])
                    if self.memory.get(scoped) is not None or self._stored_elsewhere(item["msg_id"]):
                        item = to_localmem(message, msg_id=scoped)
                items.append(item)
            except InvalidInputError as exc:
                raise InvalidInputError(f"message {index}: {exc}") from exc
        if not items:
            return
        self.memory.add_many(
            items, conversation_id=self.conversation_id, owner_id=self.owner_id,
            chunk_size=min(len(items), _MAX_CHUNK),
        )

    def _stored_elsewhere(self, msg_id: str) -> bool:
        """Whether ``msg_id`` names a message of another conversation or owner: a thread
        copied into this one (``b.add_messages(a.messages)``), or another user's client
        that numbers its messages the same way."""
        stored = self.memory.get(msg_id)
        return stored is not None and (stored.owner_id, stored.conversation_id) != (self.owner_id, self.conversation_id)

    def _scoped_id(self, framework_id: str) -> str:
        """The msg_id of a message whose id is taken elsewhere: derived from this
        conversation and the id, so adding it again is still a no-op."""
        key = f"{self.owner_id}\0{self.conversation_id}\0{framework_id}".encode("utf-8", "surrogatepass")
        return "lc-" + hashlib.sha256(key).hexdigest()[:40]

    def clear(self) -> None:
        """Delete the conversation for good (``Memory.forget``)."""
        self.memory.forget(owner_id=self.owner_id, conversation_id=self.conversation_id)

    async def aget_messages(self) -> list[BaseMessage]:
        return await asyncio.to_thread(lambda: self.messages)

    async def aadd_messages(self, messages: Sequence[BaseMessage]) -> None:
        await asyncio.to_thread(self.add_messages, list(messages))

    async def aclear(self) -> None:
        await asyncio.to_thread(self.clear)


def _document(m: RetrievedMessage, strategy: Strategy, reason: str | None) -> Document:
    metadata: dict[str, Any] = {
        "msg_id": m.msg_id,
        "conversation_id": m.conversation_id,
        "owner_id": m.owner_id,
        "role": m.role,
        "created_at": m.created_at.isoformat(),
        "feature": m.feature,
        "metadata": m.metadata,
        "score": m.score,
        "source": m.source,
        "first_rank": m.first_rank,
        "strategy": strategy.value,
    }
    if m.rerank_score is not None:
        metadata["rerank_score"] = m.rerank_score
    if reason is not None:
        metadata["selection_reason"] = reason
    return Document(page_content=m.content, metadata=metadata, id=m.msg_id)


def _check_k(k: Any) -> int:
    if type(k) is not int or k < 1:
        raise InvalidInputError(f"k must be an int >= 1; got {k!r}")
    return k


class LocalmemRetriever(BaseRetriever):
    """An owner's memory as a LangChain retriever: ``Memory.get_memory`` for the query,
    the ``k`` messages it chose as ``Document``\\s (see the module docstring)."""

    memory: Memory
    owner_id: str
    conversation_id: str
    strategy: Strategy | str = "auto"
    k: int = 4
    lookback_days: float | None = None
    keyword: bool = True
    dense: bool = True
    """False: search by keywords only (no model needed; for a Memory with ``embed="off"``)."""
    min_relevance: float | str | None = None
    """Passed to ``get_memory`` only when given (None then turns the floor off)."""

    def __init__(self, **data: Any) -> None:
        # Checked here, not in a pydantic validator, so that a bad value raises localmem's
        # InvalidInputError (pydantic would wrap it in a ValidationError).
        if "memory" in data:
            _check_memory(data["memory"])
        for name in ("owner_id", "conversation_id"):
            if name in data:
                check_id(data[name], name)
        if "strategy" in data:
            data["strategy"] = check_strategy(data["strategy"])
        if "k" in data:
            _check_k(data["k"])
        super().__init__(**data)

    def _recall(self, query: str, k: int | None) -> list[Document]:
        options: dict[str, Any] = {}
        if "min_relevance" in self.model_fields_set:
            options["min_relevance"] = self.min_relevance
        result = self.memory.get_memory(
            self.strategy, query=query, conversation_id=self.conversation_id, owner_id=self.owner_id,
            limit=_check_k(self.k if k is None else k), lookback_days=self.lookback_days,
            keyword=self.keyword, dense=self.dense, **options,
        )
        reason = None if result.selection is None else result.selection.reason
        return [_document(m, result.strategy, reason) for m in result.messages]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, k: int | None = None,
    ) -> list[Document]:
        return self._recall(query, k)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, k: int | None = None,
    ) -> list[Document]:
        return await asyncio.to_thread(self._recall, query, k)
