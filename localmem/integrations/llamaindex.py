"""localmem as a LlamaIndex chat store: ``LocalmemChatStore`` (extra ``llamaindex``).

``LocalmemChatStore(memory, owner_id="alice")`` is a
``llama_index.core.storage.chat_store.BaseChatStore`` over a localmem ``Memory``, for one
owner; a chat store ``key`` is a localmem ``conversation_id``. Give it to the objects that
take a ``BaseChatStore``, such as ``ChatMemoryBuffer`` (and through it a chat engine)::

    from llama_index.core.memory import ChatMemoryBuffer
    store = LocalmemChatStore(Memory("agent.db"), owner_id="alice")
    memory = ChatMemoryBuffer.from_defaults(chat_store=store, chat_store_key="conv-1")

The same file serves localmem's own retrieval (``Memory.get_memory``, ``build_context``),
the ``localmem`` command and the MCP server. LlamaIndex's newer ``Memory`` class takes an
``AsyncDBChatStore`` (another interface), not a ``BaseChatStore``: this module does not
offer one.

Mapping (``ChatMessage`` -> localmem message):

- role: ``user`` -> user; ``assistant``, ``chatbot``, ``model`` -> assistant;
  ``system``, ``developer`` -> system; ``tool`` and ``function`` (tool results) ->
  assistant: a tool's output is what the agent obtained, not something the user said.
- content: the message's text (``ChatMessage.content``: its text blocks joined). When
  that is blank: the tool calls it makes as ``[tool call] name {args}`` lines (OpenAI-style
  ``additional_kwargs["tool_calls"]`` or ``ToolCallBlock`` blocks), else its other blocks
  as ``[image]``, ``[audio]``... (``localmem.integrations._messages``). A NUL character
  (which localmem does not store) becomes U+FFFD there, and the carrier keeps the text.
- When ``ChatMessage(role=<stored role>, content=<stored text>)`` would not equal the
  message (another role, ``additional_kwargs``, non-text blocks, blank text...), its
  ``model_dump(mode="json")`` is kept in ``metadata["llama_index"]`` (as one JSON string,
  without the text when that equals the stored content) and the message is rebuilt from
  it with ``ChatMessage.model_validate``. Plain user, assistant and system text messages
  are stored plain, and messages written by anything else (``Memory.add``, the MCP server)
  read back as plain ``ChatMessage`` objects.
- ``ChatMessage`` has no id: each message gets a new localmem ``msg_id``.

The store holds the ``Memory`` (it does not close it) in a private attribute, so the
store serialises to ``{"owner_id": ...}`` (``ChatMemoryBuffer.to_dict()`` works);
LlamaIndex's ``load_chat_store`` only knows its own stores, so ``ChatMemoryBuffer.from_dict``
cannot rebuild this one: build it again over the opened ``Memory``. The async methods run
the sync ones in a worker thread (``asyncio.to_thread``); ``Memory`` is thread-safe.

Errors are localmem's: a message localmem cannot store (over ``max_content_bytes``, a
carrier over the 64 KiB metadata limit) raises ``InvalidInputError``, an invalid key (a
conversation_id must be a non-blank str of at most 255 characters) too.

Tested with llama-index-core 0.14.25.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from llama_index.core.base.llms.types import (
    ChatMessage,
    MessageRole,
    TextBlock,
    ToolCallBlock,
)
from llama_index.core.bridge.pydantic import PrivateAttr
from llama_index.core.storage.chat_store.base import BaseChatStore
from pydantic import ValidationError

from ..errors import InvalidInputError, LocalMemError
from ..memory import Memory
from ..records import Message
from ..validate import check_id, new_message
from . import _messages

__all__ = ["CARRIER_KEY", "LocalmemChatStore"]

CARRIER_KEY = "llama_index"
"""The metadata key that keeps a message's ``model_dump(mode="json")``."""

_ONE_US = timedelta(microseconds=1)


class LocalmemChatStore(BaseChatStore):
    """A LlamaIndex chat store over a localmem ``Memory``, for one owner: each key is a
    conversation_id of ``owner_id``. The module docstring has the mapping."""

    owner_id: str
    _memory: Memory = PrivateAttr()

    def __init__(self, memory: Memory, owner_id: str, **data: Any) -> None:
        if not isinstance(memory, Memory):
            raise InvalidInputError(f"memory must be a localmem Memory, not {type(memory).__name__}")
        check_id(owner_id, "owner_id")  # an InvalidInputError of its own, not pydantic's
        data["owner_id"] = owner_id
        super().__init__(**data)
        self._memory = memory

    @classmethod
    def class_name(cls) -> str:
        return "LocalmemChatStore"

    @property
    def memory(self) -> Memory:
        """The ``Memory`` the messages are stored in."""
        return self._memory

    # -- reading -------------------------------------------------------------------------

    def _stored(self, key: str) -> list[tuple[Message, ChatMessage]]:
        """The conversation's stored messages with their rebuilt ChatMessage, oldest first."""
        stored = self._memory.messages(conversation_id=key, owner_id=self.owner_id)
        return [(m, to_chat_message(m)) for m in stored]

    def get_messages(self, key: str, **kwargs: Any) -> list[ChatMessage]:
        """The conversation's messages, oldest first ([] for a key with none).
        ``kwargs`` are accepted and unused: ``BaseChatStoreMemory.get`` passes its own on."""
        return [chat for _, chat in self._stored(key)]

    def get_keys(self) -> list[str]:
        """The owner's conversations that hold at least one message, sorted."""
        return list(self._memory.conversations(self.owner_id))

    # -- writing -------------------------------------------------------------------------

    def add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        """Append a message, durable when this returns. ``idx`` (as ``SimpleChatStore``
        takes it, with ``list.insert``'s meaning) inserts it before that position instead:
        stored with a time just before the message it goes before; when that message and
        the one before it share a microsecond, the messages of that microsecond from
        ``idx`` on are deleted and stored again after it (same msg_id and time, one at a
        time: a crash in between loses at most the one being moved)."""
        fields = to_fields(message)
        if idx is None:
            self._add(key, fields)
            return
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise InvalidInputError(f"idx must be an int or None; got {idx!r}")
        stored = self._memory.messages(conversation_id=key, owner_id=self.owner_id)
        pos = max(0, min(len(stored), idx + len(stored) if idx < 0 else idx))
        if pos == len(stored):
            self._add(key, fields)
            return
        after = stored[pos].created_at
        if pos == 0 or stored[pos - 1].created_at < after:
            # Later than its predecessor (or equal to it, and then stored after it).
            self._add(key, {**fields, "created_at": after - _ONE_US})
            return
        self._add(key, {**fields, "created_at": after})
        for moved in stored[pos:]:
            if moved.created_at != after:
                break
            self._memory.delete(moved.msg_id)
            self._memory.add(
                moved.role, moved.content, conversation_id=key, owner_id=self.owner_id,
                feature=moved.feature, msg_id=moved.msg_id, metadata=moved.metadata,
                created_at=moved.created_at,
            )

    def _add(self, key: str, fields: Mapping[str, Any]) -> None:
        self._memory.add(conversation_id=key, owner_id=self.owner_id, **fields)

    def set_messages(self, key: str, messages: list[ChatMessage]) -> None:
        """Make the conversation hold exactly ``messages``.

        What is stored and what is given are compared message by message: the longest
        common prefix stays as it is, the stored messages after it are deleted (newest
        first), then the rest of ``messages`` is added in one transaction. So the usual
        call, the stored list plus new messages, only appends. Not atomic: a crash between
        the deletes and the add leaves the common prefix (plus any stored messages not yet
        deleted), never a message that was not in one of the two lists.
        """
        stored = self._stored(key)
        given = list(messages)
        keep = 0
        while keep < min(len(stored), len(given)) and stored[keep][1] == given[keep]:
            keep += 1
        rest = [to_fields(m) for m in given[keep:]]
        for fields in rest:  # each checked as localmem will, before anything is deleted
            new_message(conversation_id=key, owner_id=self.owner_id,
                        max_content_bytes=self._memory.max_content_bytes, **fields)
        for message, _ in reversed(stored[keep:]):
            self._memory.delete(message.msg_id)
        if rest:
            self._memory.add_many(rest, conversation_id=key, owner_id=self.owner_id)

    def delete_messages(self, key: str) -> list[ChatMessage] | None:
        """Delete the conversation for good (``Memory.forget``: its messages, index rows,
        summary and cache entries); returns its messages, or None when it had none."""
        stored = self.get_messages(key)
        if not stored:
            return None
        self._memory.forget(owner_id=self.owner_id, conversation_id=key)
        return stored

    def delete_message(self, key: str, idx: int) -> ChatMessage | None:
        """Delete the message at ``idx`` and return it. As ``SimpleChatStore``: None for a
        key with no messages or ``idx >= len``; a negative ``idx`` counts from the end, and
        below ``-len`` raises IndexError (``list.pop``'s)."""
        stored = self._stored(key)
        if not stored or idx >= len(stored):
            return None
        try:
            message, chat = stored[idx]
        except IndexError:
            raise IndexError(f"delete_message index {idx} out of range: {key!r} has {len(stored)} messages") from None
        return chat if self._memory.delete(message.msg_id) else None

    def delete_last_message(self, key: str) -> ChatMessage | None:
        """Delete the newest message and return it; None when there is none."""
        return self.delete_message(key, -1)

    # -- async: the sync methods in a worker thread --------------------------------------

    async def aset_messages(self, key: str, messages: list[ChatMessage]) -> None:
        await asyncio.to_thread(self.set_messages, key, messages)

    async def aget_messages(self, key: str, **kwargs: Any) -> list[ChatMessage]:
        return await asyncio.to_thread(self.get_messages, key, **kwargs)

    async def async_add_message(self, key: str, message: ChatMessage, idx: int | None = None) -> None:
        await asyncio.to_thread(self.add_message, key, message, idx)

    async def adelete_messages(self, key: str) -> list[ChatMessage] | None:
        return await asyncio.to_thread(self.delete_messages, key)

    async def adelete_message(self, key: str, idx: int) -> ChatMessage | None:
        return await asyncio.to_thread(self.delete_message, key, idx)

    async def adelete_last_message(self, key: str) -> ChatMessage | None:
        return await asyncio.to_thread(self.delete_last_message, key)

    async def aget_keys(self) -> list[str]:
        return await asyncio.to_thread(self.get_keys)


# -- the mapping ---------------------------------------------------------------------------


def to_fields(message: ChatMessage) -> dict[str, Any]:
    """``Memory.add``'s role, content and metadata for a ChatMessage."""
    if not isinstance(message, ChatMessage):
        raise InvalidInputError(f"a chat store message must be a llama_index ChatMessage, not {type(message).__name__}")
    role = _messages.role_for(MessageRole(message.role).value)
    text = message.content
    content = _messages.stored_text(
        text,
        _messages.tool_calls_text(_tool_calls(message)),
        " ".join(f"[{b.block_type}]" for b in message.blocks if not isinstance(b, (TextBlock, ToolCallBlock))),
    )
    if ChatMessage(role=MessageRole(role), content=content) == message:
        return {"role": role, "content": content}
    data = message.model_dump(mode="json")
    texts = [b for b in data.get("blocks", []) if isinstance(b, dict) and b.get("block_type") == "text"]
    if len(texts) == 1 and texts[0].get("text") == content:
        del texts[0]["text"]  # given back from the stored content
    return {"role": role, "content": content, "metadata": _messages.carry(CARRIER_KEY, data)}


def to_chat_message(message: Message) -> ChatMessage:
    """The ChatMessage a stored localmem message stands for."""
    data = _messages.carried(message, CARRIER_KEY)
    if data is None:
        return ChatMessage(role=MessageRole(message.role), content=message.content)
    for block in data.get("blocks", []):
        if isinstance(block, dict) and block.get("block_type") == "text" and "text" not in block:
            block["text"] = message.content
    try:
        return ChatMessage.model_validate(data)
    except ValidationError as exc:
        raise LocalMemError(
            f"message {message.msg_id}: metadata[{CARRIER_KEY!r}] is not a LlamaIndex ChatMessage ({exc})"
        ) from exc


def _tool_calls(message: ChatMessage) -> list[tuple[str, Any]]:
    """(name, arguments) of the tool calls a message makes: ToolCallBlock blocks and
    OpenAI-style ``additional_kwargs["tool_calls"]`` (dicts or objects)."""
    calls: list[tuple[str, Any]] = [
        (b.tool_name, b.tool_kwargs) for b in message.blocks if isinstance(b, ToolCallBlock)
    ]
    raw = message.additional_kwargs.get("tool_calls")
    if isinstance(raw, Iterable) and not isinstance(raw, (str, bytes, Mapping)):
        for call in raw:
            function = _field(call, "function")
            name = _field(function, "name") or _field(call, "name")
            if name:
                calls.append((str(name), _field(function, "arguments") or ""))
    return calls


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, Mapping) else getattr(value, name, None)
