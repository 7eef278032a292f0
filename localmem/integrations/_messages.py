"""What the chat-history adapters share: storing a framework's message as a localmem
message without losing anything, and reading it back.

localmem stores ``user``, ``assistant`` and ``system`` messages with non-blank text. A
framework's message can be more: a tool result, a tool call with no text, text in blocks,
a name, provider fields. Each adapter maps it to the nearest localmem role with its text
(or a readable stand-in such as ``[tool call] get_weather {"city": "Paris"}``, so search
and summaries see something true), and when that loses anything it keeps the framework's
own serialised form of the message in ``metadata[<carrier key>]`` as one JSON string (a
string, so that deep tool arguments do not meet the metadata depth limit), marked with
``CARRIER_FORMAT`` so that a caller's own metadata under that key is never mistaken for
it. Reading back rebuilds the original from it. The carrier leaves out the text when it
equals the stored content, so a long tool result is not stored twice; what it holds is
bounded by localmem's metadata limit (64 KiB): an image or artifact larger than that is
refused with an error that says so (keep large files by reference, e.g. a URL).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from ..errors import InvalidInputError, LocalMemError
from ..records import Message
from ..validate import MAX_METADATA_BYTES, check_id, check_metadata

# How much of a tool call's arguments the stand-in text shows (the carrier has them all).
MAX_ARGS_CHARS = 1000
# The mark of a carrier (its "format"): what an adapter wrote, in this layout.
CARRIER_FORMAT = "localmem.integrations/1"


# A framework's role names -> localmem's. Any other (tool and function results, custom
# roles) is "assistant": what the agent obtained, not what the user said (the selector and
# the summaries read user messages as the user's own words).
_ROLES = {"human": "user", "user": "user", "system": "system", "developer": "system",
          "ai": "assistant", "assistant": "assistant", "chatbot": "assistant", "model": "assistant"}


def role_for(name: str) -> str:
    """The localmem role of a framework's role name (case and spaces ignored)."""
    return _ROLES.get(name.strip().lower(), "assistant")


def msg_id_for(framework_id: object) -> str | None:
    """The framework's message id as the localmem ``msg_id`` when it can be one
    (``validate.check_id``: a non-blank str of at most 255 characters, valid text, no
    NUL); else None: a new one is made and the original is kept in the carrier."""
    try:
        return check_id(framework_id, "msg_id")
    except InvalidInputError:
        return None


def tool_calls_text(calls: Iterable[tuple[str, Any]]) -> str:
    """The stand-in text of tool calls: one ``[tool call] name {args}`` line each."""
    lines = []
    for name, args in calls:
        shown = args if isinstance(args, str) else json.dumps(args, ensure_ascii=False, sort_keys=True, default=str)
        if len(shown) > MAX_ARGS_CHARS:
            shown = shown[:MAX_ARGS_CHARS] + "…"
        lines.append(f"[tool call] {name} {shown}".rstrip())
    return "\n".join(lines)


def stored_text(text: str | None, *stand_ins: str) -> str:
    """``text`` when it has a non-blank character, else the first non-blank stand-in,
    else ``[empty message]`` (localmem keeps no blank message). A NUL character, which
    localmem does not store, shows as U+FFFD (the carrier keeps the text as it was)."""
    for candidate in (text, *stand_ins):
        if candidate and candidate.strip():
            return candidate.replace("\0", "\ufffd")
    return "[empty message]"


def _json(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))


def carry(key: str, data: Mapping[str, Any]) -> dict[str, str]:
    """The metadata that carries a message's serialised form under ``key``, checked as
    ``Memory.add`` will check it (``validate.check_metadata``). ``InvalidInputError`` when
    it is not JSON, holds what localmem does not store (a lone surrogate), or is larger
    than localmem keeps."""
    try:
        metadata = {key: _json({"format": CARRIER_FORMAT, "message": data})}
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"the message cannot be stored as JSON ({exc})") from exc
    try:
        check_metadata(metadata)
    except InvalidInputError as exc:
        size = len(_json(metadata).encode("utf-8", "surrogatepass"))
        if size <= MAX_METADATA_BYTES:
            raise
        raise InvalidInputError(
            f"this message's parts beyond its text (images, tool data, provider fields...) take {size} "
            f"bytes as JSON; localmem keeps at most {MAX_METADATA_BYTES} beside the text: keep large "
            "files by reference (e.g. a URL)"
        ) from exc
    return metadata


def _unwrap(value: Any) -> dict[str, Any] | None:
    """The carrier a metadata value is (its parsed wrapper), or None when it is not one."""
    if not isinstance(value, str) or CARRIER_FORMAT not in value:
        return None
    try:
        wrapper = json.loads(value)
    except ValueError:
        return None
    return wrapper if isinstance(wrapper, dict) and wrapper.get("format") == CARRIER_FORMAT else None


def is_carrier(value: Any) -> bool:
    """Whether a metadata value is marked as a carrier (what only the adapters write)."""
    return _unwrap(value) is not None


def carried(message: Message, key: str) -> dict[str, Any] | None:
    """The serialised form an adapter stored under ``key``; None when the message was
    stored plain, or the value there is not a carrier (a caller's own metadata under that
    name). A carrier that is damaged is an error, never ignored: the message would come
    back as something it was not."""
    wrapper = _unwrap((message.metadata or {}).get(key))
    if wrapper is None:
        return None
    data = wrapper.get("message")
    if not isinstance(data, dict):
        raise LocalMemError(
            f"message {message.msg_id}: metadata[{key!r}] is a damaged {key} carrier (no message in it), "
            "so the message cannot be rebuilt"
        )
    return data
