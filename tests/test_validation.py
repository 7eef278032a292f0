"""Bad input gets a clear InvalidInputError and changes nothing; good input round-trips."""

from __future__ import annotations

import json
import math
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from localmem import InvalidInputError, Memory, Strategy

OK = dict(conversation_id="c1", owner_id="u1")


def nested(depth: int) -> dict:
    value: dict = {"leaf": 1}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


BAD_ADD = [
    # (case id, args, kwargs overriding OK, expected words in the message)
    ("unknown role", ("robot", "hi"), {}, "role"),
    ("role not str", (1, "hi"), {}, "role"),
    ("content not str", ("user", b"hi"), {}, "content must be a str"),
    ("content None", ("user", None), {}, "content must be a str"),
    ("content empty", ("user", ""), {}, "empty"),
    ("content whitespace", ("user", " \t\n\u3000"), {}, "whitespace"),
    ("content over cap", ("user", "x" * (1024 * 1024 + 1)), {}, "limit"),
    ("content over cap in UTF-8", ("user", "é" * (512 * 1024 + 1)), {}, "bytes"),
    ("content NUL", ("user", "a\x00b"), {}, "NUL"),
    ("content lone surrogate", ("user", "a\ud800b"), {}, "surrogate"),
    ("conversation_id empty", ("user", "hi"), {"conversation_id": ""}, "conversation_id"),
    ("conversation_id blank", ("user", "hi"), {"conversation_id": "  "}, "conversation_id"),
    ("conversation_id too long", ("user", "hi"), {"conversation_id": "c" * 256}, "255"),
    ("conversation_id NUL", ("user", "hi"), {"conversation_id": "c\x001"}, "NUL"),
    ("conversation_id not str", ("user", "hi"), {"conversation_id": 7}, "str"),
    ("owner_id empty", ("user", "hi"), {"owner_id": ""}, "owner_id"),
    ("owner_id too long", ("user", "hi"), {"owner_id": "u" * 256}, "255"),
    ("owner_id NUL", ("user", "hi"), {"owner_id": "\x00"}, "NUL"),
    ("owner_id surrogate", ("user", "hi"), {"owner_id": "\udfff"}, "surrogate"),
    ("msg_id empty", ("user", "hi"), {"msg_id": ""}, "msg_id"),
    ("msg_id too long", ("user", "hi"), {"msg_id": "m" * 256}, "255"),
    ("msg_id NUL", ("user", "hi"), {"msg_id": "m\x00"}, "NUL"),
    ("feature empty", ("user", "hi"), {"feature": ""}, "feature"),
    ("feature too long", ("user", "hi"), {"feature": "f" * 256}, "255"),
    ("metadata not dict", ("user", "hi"), {"metadata": [1, 2]}, "dict"),
    ("metadata set value", ("user", "hi"), {"metadata": {"a": {1, 2}}}, "set"),
    ("metadata tuple value", ("user", "hi"), {"metadata": {"a": (1, 2)}}, "tuple"),
    ("metadata bytes value", ("user", "hi"), {"metadata": {"a": b"x"}}, "bytes"),
    ("metadata datetime value", ("user", "hi"), {"metadata": {"a": datetime.now(timezone.utc)}}, "datetime"),
    ("metadata NaN", ("user", "hi"), {"metadata": {"a": math.nan}}, "NaN"),
    ("metadata inf", ("user", "hi"), {"metadata": {"a": math.inf}}, "infinity"),
    ("metadata -inf nested", ("user", "hi"), {"metadata": {"a": [1, {"b": -math.inf}]}}, "infinity"),
    ("metadata key with space", ("user", "hi"), {"metadata": {"a b": 1}}, "key"),
    ("metadata key SQL", ("user", "hi"), {"metadata": {"a'); DROP TABLE messages;--": 1}}, "key"),
    ("metadata key leading digit", ("user", "hi"), {"metadata": {"1a": 1}}, "key"),
    ("metadata key empty", ("user", "hi"), {"metadata": {"": 1}}, "key"),
    ("metadata key too long", ("user", "hi"), {"metadata": {"k" * 65: 1}}, "key"),
    ("metadata key not str", ("user", "hi"), {"metadata": {1: 1}}, "key"),
    ("metadata nested key bad", ("user", "hi"), {"metadata": {"a": {"b-c": 1}}}, "key"),
    ("metadata too deep", ("user", "hi"), {"metadata": nested(9)}, "deeper"),
    ("metadata NUL in value", ("user", "hi"), {"metadata": {"a": "x\x00"}}, "NUL"),
    ("metadata surrogate in value", ("user", "hi"), {"metadata": {"a": "\ud800"}}, "surrogate"),
    ("metadata too big", ("user", "hi"), {"metadata": {"a": "x" * 70_000}}, "limit"),
    ("created_at naive", ("user", "hi"), {"created_at": datetime(2024, 1, 1)}, "naive"),
    ("created_at str", ("user", "hi"), {"created_at": "2024-01-01T00:00:00Z"}, "datetime"),
    ("created_at float", ("user", "hi"), {"created_at": 1700000000.0}, "datetime"),
    # Valid in their own zone, outside datetime's range once in UTC (year 0, year 10000).
    ("created_at year 1 at +01:00", ("user", "hi"),
     {"created_at": datetime(1, 1, 1, 0, 30, tzinfo=timezone(timedelta(hours=1)))}, "years 1 to 9999"),
    ("created_at year 9999 at -05:00", ("user", "hi"),
     {"created_at": datetime(9999, 12, 31, 22, tzinfo=timezone(timedelta(hours=-5)))}, "years 1 to 9999"),
    ("metadata int over 640 digits", ("user", "hi"), {"metadata": {"a": 10**640}}, "640 digits"),
    ("metadata int over 4300 digits", ("user", "hi"), {"metadata": {"a": [-(10**5000)]}}, "640 digits"),
]


@pytest.mark.parametrize("args, overrides, words", [c[1:] for c in BAD_ADD], ids=[c[0] for c in BAD_ADD])
def test_bad_add_raises_clearly_and_writes_nothing(mem, args, overrides, words):
    before = mem.stats()
    with pytest.raises(InvalidInputError) as info:
        mem.add(*args, **{**OK, **overrides})
    assert words.lower() in str(info.value).lower()
    assert isinstance(info.value, ValueError)
    assert mem.stats() == before
    assert mem.check_integrity() == "ok"


def test_metadata_at_max_depth_and_key_length_is_accepted(mem):
    meta = {"k" * 64: nested(7), "a.b_c": [None, True, 0, -1.5, "s"]}
    assert mem.add("user", "hi", metadata=meta, **OK).metadata == meta


def test_content_exactly_at_cap_is_accepted(db_path):
    with Memory(db_path, max_content_bytes=10) as m:
        assert m.add("user", "é" * 5, **OK).content == "é" * 5
        with pytest.raises(InvalidInputError, match="limit is 10"):
            m.add("user", "é" * 5 + "x", **OK)


def test_metadata_keys_and_values_never_reach_sql(mem):
    hostile = "'; DROP TABLE messages; --"
    stored = mem.add("user", hostile, metadata={"note": hostile, "x.y": [hostile]}, feature=hostile, **OK)
    assert mem.get(stored.msg_id).metadata == {"note": hostile, "x.y": [hostile]}
    assert mem.stats()["messages"] == 1


def test_retry_with_same_fields_returns_stored_and_different_fields_raise(mem):
    when = datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc)
    first = mem.add("user", "hello", msg_id="m-1", metadata={"a": 1}, created_at=when, **OK)
    assert mem.add("user", "hello", msg_id="m-1", metadata={"a": 1}, created_at=when, **OK) == first
    # No created_at on the retry: the stored time stands (a retry cannot know it).
    assert mem.add("user", "hello", msg_id="m-1", metadata={"a": 1}, **OK) == first
    for change in ({"content": "hello!"}, {"role": "assistant"}, {"metadata": {"a": 2}},
                   {"conversation_id": "c2"}, {"owner_id": "u2"}, {"feature": "f"},
                   {"created_at": when + timedelta(seconds=1)}):
        fields = {"role": "user", "content": "hello", "metadata": {"a": 1}, "created_at": when, **OK, **change}
        with pytest.raises(InvalidInputError, match="already exists"):
            mem.add(fields.pop("role"), fields.pop("content"), msg_id="m-1", **fields)
    assert mem.stats()["messages"] == 1


def test_add_many_bad_item_names_its_index_and_leaves_its_chunk_unwritten(mem):
    items = [{"role": "user", "content": f"m{i}"} for i in range(10)]
    items[7]["role"] = "robot"
    with pytest.raises(InvalidInputError, match="item 7"):
        mem.add_many(items, chunk_size=5, **OK)
    assert mem.stats()["messages"] == 5  # the first chunk (0-4) committed; 5-9 did not
    with pytest.raises(InvalidInputError, match="unknown keys"):
        mem.add_many([{"role": "user", "content": "x", "colour": "red"}], **OK)
    with pytest.raises(InvalidInputError, match="mapping"):
        mem.add_many(["just text"], **OK)


def test_add_many_conflicting_duplicate_inside_one_chunk(mem):
    items = [{"role": "user", "content": "a", "msg_id": "x"}, {"role": "user", "content": "b", "msg_id": "x"}]
    with pytest.raises(InvalidInputError, match="already exists"):
        mem.add_many(items, **OK)
    assert mem.stats()["messages"] == 0
    items[1]["content"] = "a"  # an identical retry inside the chunk is fine
    assert mem.add_many(items, **OK) == 1
    assert mem.add_many(items, **OK) == 0  # re-running an import adds nothing


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"strategy": "telepathy"}, "unknown strategy"),
        ({"limit": 0}, "limit"),
        ({"limit": 5000}, "limit"),
        ({"limit": 2.5}, "limit"),
        ({"limit": True}, "limit"),
        ({"lookback_days": 0}, "lookback_days"),
        ({"lookback_days": -1}, "lookback_days"),
        ({"lookback_days": math.nan}, "lookback_days"),
        ({"lookback_days": "7"}, "lookback_days"),
        ({"conversation_id": ""}, "conversation_id"),
        ({"owner_id": "\x00"}, "owner_id"),
        ({"query": 12}, "query"),
        ({"query": "a\ud800b", "strategy": Strategy.SEMANTIC_SEARCH}, "surrogate"),
        ({"query": "\udfff", "strategy": Strategy.CROSS_CONVERSATION, "dense": False}, "surrogate"),
    ],
)
def test_bad_get_memory_arguments(mem, kwargs, words):
    args = {"strategy": Strategy.RECENT_HISTORY, **OK, **kwargs}
    with pytest.raises(InvalidInputError, match=words):
        mem.get_memory(args.pop("strategy"), **args)


def test_the_edges_of_the_utc_range_round_trip(mem):
    earliest = datetime(1, 1, 1, tzinfo=timezone.utc)
    latest = datetime(9999, 12, 31, 23, 59, 59, 999_999, tzinfo=timezone.utc)
    for when in (earliest, latest, datetime(1, 1, 1, 1, tzinfo=timezone(timedelta(hours=1)))):
        stored = mem.add("user", "edge", **OK, created_at=when)
        assert mem.get(stored.msg_id).created_at == when
    got = mem.get_memory("recent_history", **OK, lookback_days=None)
    assert [m.created_at for m in got.messages] == [earliest, earliest, latest]


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    when=st.one_of(  # the ends of the calendar, where offsets matter, and everything between
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(1, 1, 2)),
        st.datetimes(min_value=datetime(9999, 12, 30), max_value=datetime(9999, 12, 31, 23, 59, 59)),
        st.datetimes(min_value=datetime(1, 1, 1), max_value=datetime(9999, 12, 31, 23, 59, 59)),
    ),
    minutes=st.integers(min_value=-(24 * 60 - 1), max_value=24 * 60 - 1),
)
def test_any_aware_datetime_is_stored_and_read_back_or_refused(mem, when, minutes):
    """Near the ends of the calendar, an offset can carry an instant out of datetime's
    range in UTC: such a created_at is refused before anything is written, and every
    accepted one reads back, so the conversation never becomes unreadable."""
    aware = when.replace(tzinfo=timezone(timedelta(minutes=minutes)))
    try:
        stored = mem.add("user", "t", **OK, created_at=aware)
    except InvalidInputError as exc:
        assert "years 1 to 9999" in str(exc)
        with pytest.raises(OverflowError):
            aware.astimezone(timezone.utc)  # refused exactly when UTC cannot hold it
    else:
        assert mem.get(stored.msg_id).created_at == aware
    mem.get_memory("recent_history", **OK, limit=4096, lookback_days=None)


def test_the_largest_metadata_int_accepted_round_trips(mem):
    big = {"n": 10**640 - 1, "m": -(10**640 - 1)}
    assert mem.get(mem.add("user", "hi", **OK, metadata=big).msg_id).metadata == big


@pytest.mark.parametrize("days", [1e9, 1e300, 10**400, 3_652_059, 10**6 * 4])
def test_a_lookback_longer_than_the_calendar_is_all_time(db_path, days):
    with Memory(db_path, embed="off") as mem:
        mem.add("user", "ancient", **OK, created_at=datetime(1, 1, 1, tzinfo=timezone.utc))
        mem.add("user", "today", **OK)
        for strategy in (Strategy.RECENT_HISTORY, Strategy.HYBRID):
            got = mem.get_memory(strategy, **OK, lookback_days=days, dense=False, query="today")
            assert {m.content for m in got.messages} == {"ancient", "today"}
        got = mem.get_memory(Strategy.CROSS_CONVERSATION, **OK, lookback_days=days, dense=False, query="ancient")
        assert got.messages[0].content == "ancient"
        assert "all time" in mem.get_memory(Strategy.RECENT_HISTORY, **OK, lookback_days=days).context_summary


# -- round-trips over unrestricted input ------------------------------------------------

valid_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1
).filter(lambda s: s.strip() != "")
ids = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"),
    min_size=1, max_size=255,
).filter(lambda s: s.strip() != "")
keys = st.from_regex(r"[A-Za-z_][A-Za-z0-9_.]{0,63}", fullmatch=True)
json_leaves = (
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"))
)
json_values = st.recursive(
    json_leaves,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(keys, inner, max_size=4),
    max_leaves=12,
)
metadata = st.none() | st.dictionaries(keys, json_values, max_size=5)
aware_times = st.datetimes(
    min_value=datetime(1900, 1, 1), max_value=datetime(2200, 1, 1),
    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=-3)), timezone(timedelta(hours=5, minutes=30))]),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(content=valid_text, conversation=ids, owner=ids, meta=metadata, when=aware_times,
       role=st.sampled_from(["user", "assistant", "system"]))
def test_anything_accepted_round_trips_byte_identical(mem, content, conversation, owner, meta, when, role):
    stored = mem.add(role, content, conversation_id=conversation, owner_id=owner, metadata=meta, created_at=when)
    for got in (mem.get(stored.msg_id), stored):
        assert got.content.encode("utf-8") == content.encode("utf-8")
        assert got.conversation_id == conversation and got.owner_id == owner and got.role == role
        assert json.dumps(got.metadata, sort_keys=True) == json.dumps(meta, sort_keys=True)
        assert got.metadata == meta
        assert got.created_at == when and got.created_at.utcoffset() == timedelta(0)
    recent = mem.get_memory("recent_history", conversation_id=conversation, owner_id=owner,
                            limit=1, lookback_days=None)
    assert recent.messages[-1].content == content or recent.messages[-1].created_at >= when


@given(ms=st.integers(min_value=0, max_value=2**48 - 1))
def test_generated_msg_id_is_a_ulid_of_its_time(ms):
    from localmem.validate import new_msg_id

    crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    ulid = new_msg_id(ms)
    assert len(ulid) == 26 and set(ulid) <= set(crockford)
    value = 0
    for ch in ulid:
        value = value * 32 + crockford.index(ch)
    assert value >> 80 == ms
