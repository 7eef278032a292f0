"""Turns caller input into checked values, or raises InvalidInputError.

Everything a caller passes to ``Memory.add``/``add_many``/``get_memory`` goes through here
before any SQL runs, so a rejected call changes nothing. What is accepted round-trips
byte-identical: content and ids are stored as given, metadata as the JSON of exactly the
types JSON can give back (dict with str keys, list, str, int, float, bool, None).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any
from urllib.parse import unquote, urlsplit

from .errors import CorruptDatabaseError, InvalidInputError
from .records import Strategy

ROLES = ("user", "assistant", "system")
MAX_ID_CHARS = 255
DEFAULT_MAX_CONTENT_BYTES = 1024 * 1024
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 8
MAX_LIMIT = 4096
METADATA_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,63}\Z")
# The lowest limit Python lets a process set on int <-> str conversion
# (sys.int_info.str_digits_check_threshold): an int of at most this many digits can be
# written and read back as JSON by every process, whatever its limit.
MAX_METADATA_INT_DIGITS = 640
_MAX_METADATA_INT = 10**MAX_METADATA_INT_DIGITS

_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _us_since_epoch(value: datetime) -> int:
    delta = value - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


# The instants a datetime can hold in UTC, as microseconds since the epoch. An aware
# datetime inside its own zone's range can fall outside this one (year 1 at +01:00 is
# year 0 in UTC): it could be stored, but never read back as a datetime.
MIN_US = _us_since_epoch(datetime.min.replace(tzinfo=timezone.utc))
MAX_US = _us_since_epoch(datetime.max.replace(tzinfo=timezone.utc))
# A lookback window this long reaches before the earliest instant a message can have:
# it is all time.
MAX_LOOKBACK_DAYS = (MAX_US - MIN_US) // (86_400 * 1_000_000)
_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_DIGIT_PAIRS = [a + b for a in _CROCKFORD for b in _CROCKFORD]  # index: 10-bit value
_PAIR_SHIFTS = range(120, -1, -10)


@dataclass(frozen=True, slots=True)
class NewMessage:
    """A validated message, ready for the store. ``created_us``: µs since the epoch, UTC."""

    msg_id: str
    conversation_id: str
    owner_id: str
    feature: str | None
    role: str
    content: str
    metadata_json: str | None
    created_us: int
    explicit_msg_id: bool
    explicit_created_at: bool


def new_msg_id(now_ms: int | None = None) -> str:
    """A ULID: 48-bit millisecond time + 80 random bits, 26 Crockford base32 characters.

    Ids generated later sort after earlier ones (to the millisecond), which keeps
    ``msg_id`` order close to insertion order without any shared counter.
    """
    ms = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    value = (ms << 80) | int.from_bytes(os.urandom(10), "big")
    # 130 bits = 13 pairs of base32 digits, taken 10 bits at a time from the top.
    return "".join([_DIGIT_PAIRS[(value >> shift) & 1023] for shift in _PAIR_SHIFTS])


def _check_utf8(text: str, what: str, *, nul: bool = False) -> None:
    """Refuse a lone surrogate (not valid Unicode text), and NUL unless ``nul``."""
    if not nul and "\x00" in text:
        raise InvalidInputError(f"{what} must not contain NUL characters")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidInputError(
            f"{what} holds a lone surrogate at index {exc.start}: it is not valid Unicode text"
        ) from None


def check_id(value: Any, what: str) -> str:
    """An id: a non-blank str of at most 255 characters, valid UTF-8, no NUL."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError(f"{what} must not be empty or blank")
    if len(value) > MAX_ID_CHARS:
        raise InvalidInputError(f"{what} is {len(value)} characters; the limit is {MAX_ID_CHARS}")
    _check_utf8(value, what)
    return value


def check_role(value: Any) -> str:
    if type(value) is not str or value not in ROLES:
        raise InvalidInputError(f"role must be one of {', '.join(ROLES)}; got {value!r}")
    return value


def check_content(value: Any, max_bytes: int) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"content must be a str, not {type(value).__name__}")
    if not value.strip():
        raise InvalidInputError("content must not be empty or only whitespace")
    _check_utf8(value, "content")
    size = len(value.encode("utf-8"))
    if size > max_bytes:
        raise InvalidInputError(f"content is {size} bytes of UTF-8; the limit is {max_bytes}")
    return value


def _check_json_value(value: Any, depth: int, path: str) -> None:
    """``depth``: how many dicts and lists hold ``value``, the metadata dict counting one."""
    # bool is an int subclass; both are fine. Exact types only: a subclass (an IntEnum, a
    # str subclass) would not come back as itself.
    kind = type(value)
    if value is None or kind is bool:
        return
    if kind is int:
        if -_MAX_METADATA_INT < value < _MAX_METADATA_INT:
            return
        raise InvalidInputError(
            f"metadata int at {path} has more than {MAX_METADATA_INT_DIGITS} digits; "
            "store a number that large as a str"
        )
    if kind is float:
        if not math.isfinite(value):
            raise InvalidInputError(f"metadata value at {path} is {value!r}; JSON has no NaN or infinity")
        return
    if kind is str:
        _check_utf8(value, f"metadata value at {path}")
        return
    if kind in (list, dict) and depth >= MAX_METADATA_DEPTH:
        raise InvalidInputError(f"metadata is nested deeper than {MAX_METADATA_DEPTH} levels at {path}")
    if kind is list:
        for i, item in enumerate(value):
            _check_json_value(item, depth + 1, f"{path}[{i}]")
        return
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or not METADATA_KEY.match(key):
                raise InvalidInputError(
                    f"metadata key {key!r} at {path} must match [A-Za-z_][A-Za-z0-9_.]{{0,63}}"
                )
            _check_json_value(item, depth + 1, f"{path}.{key}")
        return
    raise InvalidInputError(
        f"metadata value at {path} is a {kind.__name__}; only dict, list, str, int, float, "
        "bool and None round-trip through JSON"
    )


def check_metadata(value: Any) -> str | None:
    """Metadata as canonical JSON text, or None."""
    if value is None:
        return None
    if type(value) is not dict:
        raise InvalidInputError(f"metadata must be a dict or None, not {type(value).__name__}")
    _check_json_value(value, 0, "metadata")
    text = json.dumps(value, ensure_ascii=False, allow_nan=False, separators=(",", ":"))
    size = len(text.encode("utf-8"))
    if size > MAX_METADATA_BYTES:
        raise InvalidInputError(f"metadata is {size} bytes as JSON; the limit is {MAX_METADATA_BYTES}")
    return text


def parse_time(text: str | None, what: str) -> datetime | None:
    """A time given as text (a command's ``--before``, an MCP tool's ``before``): ISO 8601
    with its UTC offset, so that it is never read in some local zone; None stays None."""
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{what} must be an ISO 8601 time, e.g. 2024-05-01T00:00:00+00:00; got {text!r}") from None
    if value.utcoffset() is None:
        raise InvalidInputError(f"{what} needs its UTC offset, e.g. {text}+00:00; got {text!r}")
    return value


def to_utc_us(value: Any, what: str = "created_at") -> int:
    """An aware datetime as integer microseconds since the epoch (exact, no float); it
    must be an instant a UTC datetime can hold, so that it can be read back."""
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{what} must be a datetime, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(
            f"{what} is a naive datetime; pass an aware one, e.g. datetime.now(timezone.utc)"
        )
    us = _us_since_epoch(value)
    if not MIN_US <= us <= MAX_US:
        raise InvalidInputError(
            f"{what} {value.isoformat()} is outside the years 1 to 9999 once converted to UTC"
        )
    return us


def check_selection(owner_id: Any, conversation_id: Any, before: Any) -> tuple[str | None, str | None, int | None]:
    """Which messages (export, forget): an owner's (or everyone's), one of its
    conversations, those created before an aware datetime; as (owner_id,
    conversation_id, before in µs)."""
    owner = None if owner_id is None else check_id(owner_id, "owner_id")
    conversation = None if conversation_id is None else check_id(conversation_id, "conversation_id")
    if conversation is not None and owner is None:
        raise InvalidInputError(
            "conversation_id needs owner_id (each conversation needs its owner_id: it belongs to one owner)"
        )
    return owner, conversation, None if before is None else to_utc_us(before, "before")


def from_utc_us(us: int) -> datetime:
    """Microseconds since the epoch as an aware UTC datetime. A stored value outside the
    range (written by a localmem that did not check it) is a CorruptDatabaseError."""
    if not MIN_US <= us <= MAX_US:
        raise CorruptDatabaseError(
            f"a stored created_at ({us} µs since 1970) is outside the years 1 to 9999 in UTC; "
            "delete that message (check_integrity() counts them)"
        )
    return _EPOCH + timedelta(microseconds=us)


def now_us() -> int:
    return time.time_ns() // 1_000


def new_message(
    role: Any,
    content: Any,
    *,
    conversation_id: Any,
    owner_id: Any,
    feature: Any = None,
    msg_id: Any = None,
    metadata: Any = None,
    created_at: Any = None,
    max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
) -> NewMessage:
    """Check every field of one message; the first problem raises InvalidInputError."""
    return NewMessage(
        msg_id=new_msg_id() if msg_id is None else check_id(msg_id, "msg_id"),
        conversation_id=check_id(conversation_id, "conversation_id"),
        owner_id=check_id(owner_id, "owner_id"),
        feature=None if feature is None else check_id(feature, "feature"),
        role=check_role(role),
        content=check_content(content, max_content_bytes),
        metadata_json=check_metadata(metadata),
        created_us=now_us() if created_at is None else to_utc_us(created_at),
        explicit_msg_id=msg_id is not None,
        explicit_created_at=created_at is not None,
    )


def check_strategy(value: Any) -> Strategy:
    try:
        return Strategy(value)
    except ValueError:
        names = ", ".join(s.value for s in Strategy)
        raise InvalidInputError(f"unknown strategy {value!r}; use one of: {names}") from None


def check_limit(value: Any) -> int:
    if type(value) is not int or not 1 <= value <= MAX_LIMIT:
        raise InvalidInputError(f"limit must be an int from 1 to {MAX_LIMIT}; got {value!r}")
    return value


def check_lookback_days(value: Any) -> float | None:
    """None means all time; else a positive, finite number of days. A window longer than
    datetime's whole range (``MAX_LOOKBACK_DAYS``) is all time too: None."""
    if value is None:
        return None
    if type(value) is int:  # compared as an int: 10**400 has no float
        valid = value > 0
    else:
        valid = type(value) is float and math.isfinite(value) and value > 0
    if not valid:
        raise InvalidInputError(f"lookback_days must be a positive number or None; got {value!r}")
    return None if value >= MAX_LOOKBACK_DAYS else float(value)


def check_min_relevance(value: Any) -> float | str | None:
    """The relevance floor: None (off), "auto" (the embedder's calibrated floor), or a
    cosine similarity from -1 to 1."""
    if value is None or value == "auto" and isinstance(value, str):
        return value
    if type(value) is int and not isinstance(value, bool):
        value = float(value)
    if type(value) is not float or not math.isfinite(value) or not -1.0 <= value <= 1.0:
        raise InvalidInputError(
            f"min_relevance must be None, 'auto' or a cosine similarity from -1 to 1; got {value!r}"
        )
    return value


def check_flag(value: Any, name: str) -> bool:
    """True or False, nothing truthy in their place."""
    if type(value) is not bool:
        raise InvalidInputError(f"{name} must be True or False; got {value!r}")
    return value


def check_positive(value: Any, name: str, *, below: float | None = None, none: bool = False) -> float | None:
    """A number > 0 (under ``below`` when given; None too when ``none``), as a float."""
    if value is None and none:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0
            or (below is not None and not value < below)):
        raise InvalidInputError(f"{name} must be a number > 0{' or None' if none else ''}; got {value!r}")
    return float(value)


def check_count(value: Any, name: str, *, low: int, high: int) -> int:
    """An int from ``low`` to ``high``."""
    if type(value) is not int or not low <= value <= high:
        raise InvalidInputError(f"{name} must be an int from {low} to {high}; got {value!r}")
    return value


def check_share(value: Any, name: str) -> float:
    """A share of something: a number from 0 to 1, as a float."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"{name} must be a number from 0 to 1; got {value!r}")
    return float(value)


def check_threshold(value: Any) -> float | None:
    """A rerank threshold: None (none) or a score from 0 to 1."""
    if value is None:
        return None
    if type(value) is int:
        value = float(value)
    if type(value) is not float or not 0.0 <= value <= 1.0:
        raise InvalidInputError(f"rerank_threshold must be None or a score from 0 to 1; got {value!r}")
    return value


def check_text(value: Any, name: str) -> str | None:
    """None or a str that is valid Unicode (no lone surrogate, no NUL)."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"{name} must be a str or None, not {type(value).__name__}")
    _check_utf8(value, name, nul=True)
    return value


def check_query(value: Any) -> str | None:
    """A search query: None or a str that is valid Unicode (no lone surrogate), so that
    any tokenizer can take it."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise InvalidInputError(f"query must be a str or None, not {type(value).__name__}")
    _check_utf8(value, "query", nul=True)
    return value


def redact_url(url: str, secret_keys: Sequence[str] = ("password",)) -> str:
    """``url`` with its secrets replaced by ``***``: the password of ``user:pw@`` and the
    values of the query parameters named in ``secret_keys`` (a server URL, as messages and
    logs may show it). A URL that does not parse shows as its scheme only."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc
        if "@" in netloc:
            user, host = netloc.rsplit("@", 1)
            if user.partition(":")[2]:
                netloc = f"{user.split(':', 1)[0]}:***@{host}"
        keys = {k.lower() for k in secret_keys}
        query = "&".join(f"{pair.split('=', 1)[0]}=***" if unquote(pair.split("=", 1)[0]).lower() in keys else pair
                         for pair in parts.query.split("&")) if parts.query else ""
    except ValueError:
        return f"{url.partition(':')[0]}://..."
    if (netloc, query) == (parts.netloc, parts.query):
        return url
    return (f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")
            + (f"#{parts.fragment}" if parts.fragment else ""))
