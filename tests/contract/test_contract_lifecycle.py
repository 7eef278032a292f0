"""The contract, part 5: deleting and forgetting, summaries, export and import, read-only.

What is deleted or forgotten is gone from every way of reading (get, messages,
conversations, every strategy, export, the summary) and nothing else changes. An export
imported into a fresh memory of the same backend gives back the same messages, and with
``vectors=True`` the same vectors (nothing is embedded again).
"""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest
from hash_embedder import HashEmbedder

from localmem import InvalidInputError, ReadOnlyError, Strategy, SummaryPolicy

UTC = timezone.utc
NOW = datetime.now(UTC)
OLD = NOW - timedelta(days=3)
CUT = NOW - timedelta(days=2)
SEARCHES = (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION, Strategy.AUTO)


def seed(mem) -> None:
    """ana: "trip" (3 old messages, 2 new), "food" (2 new); bob: "trip" (2 new). Every
    message holds the word "pizza", the old ones "zanzibar" too."""
    items = []
    for i in range(5):
        old = i < 3
        items.append({"role": "user" if i % 2 == 0 else "assistant", "msg_id": f"trip-{i}",
                      "content": f"pizza {'zanzibar ' if old else ''}trip note {i}",
                      "conversation_id": "trip", "owner_id": "ana",
                      "created_at": (OLD if old else NOW - timedelta(hours=1)) + timedelta(minutes=i)})
    for i in range(2):
        items.append({"role": "user", "content": f"pizza food note {i}", "msg_id": f"food-{i}",
                      "conversation_id": "food", "owner_id": "ana", "created_at": NOW - timedelta(minutes=30 - i)})
        items.append({"role": "user", "content": f"pizza bob note {i}", "msg_id": f"bob-{i}",
                      "conversation_id": "trip", "owner_id": "bob", "created_at": NOW - timedelta(minutes=20 - i)})
    mem.add_many(items)
    mem.flush()


def visible(mem, tmp_path, owner="ana", query="pizza zanzibar") -> set[str]:
    """Every msg_id of ``owner`` reachable through the public reads (filling the caches as
    it goes: a later read must not be served a forgotten message from them)."""
    seen = set()
    for conversation in ("trip", "food", "gone"):
        seen |= {m.msg_id for m in mem.messages(conversation_id=conversation, owner_id=owner)}
        for strategy in (Strategy.RECENT_HISTORY, *SEARCHES):
            for dense in (True, False):
                result = mem.get_memory(strategy, conversation_id=conversation, owner_id=owner, query=query,
                                        limit=100, lookback_days=None, dense=dense)
                seen |= {m.msg_id for m in result.messages}
    path = tmp_path / f"visible-{len(list(tmp_path.glob('visible-*')))}.jsonl"
    mem.export(path, owner_id=owner)
    seen |= {json.loads(line)["msg_id"] for line in path.read_text().splitlines()[1:]}
    return seen


ANA = {f"trip-{i}" for i in range(5)} | {"food-0", "food-1"}
BOB = {"bob-0", "bob-1"}


def test_delete_removes_a_message_from_every_read(mem, tmp_path):
    seed(mem)
    assert visible(mem, tmp_path) == ANA  # and the caches are warm
    assert mem.delete("trip-1") is True
    assert mem.delete("trip-1") is False  # already gone
    assert mem.get("trip-1") is None
    assert visible(mem, tmp_path) == ANA - {"trip-1"}
    assert visible(mem, tmp_path, owner="bob") == BOB
    assert mem.stats()["messages"] == 8 and mem.stats()["vectors"] == 8
    mem.delete("food-0")
    mem.delete("food-1")
    assert mem.conversations("ana") == ("trip",)


@pytest.mark.parametrize("scope, forgotten", [
    ({"owner_id": "ana"}, ANA),
    ({"owner_id": "ana", "conversation_id": "trip"}, {f"trip-{i}" for i in range(5)}),
    ({"owner_id": "ana", "before": CUT}, {"trip-0", "trip-1", "trip-2"}),
    ({"before": CUT}, {"trip-0", "trip-1", "trip-2"}),
], ids=["owner", "conversation", "owner-before", "before"])
def test_forget_removes_its_scope_from_every_read_and_nothing_else(mem, tmp_path, scope, forgotten):
    seed(mem)
    assert visible(mem, tmp_path) == ANA
    bob_before = [mem.messages(conversation_id="trip", owner_id="bob")]
    report = mem.forget(**scope)
    assert report.messages == len(forgotten)
    assert visible(mem, tmp_path) == ANA - forgotten
    for msg_id in forgotten:
        assert mem.get(msg_id) is None
    for msg_id in ANA - forgotten:
        assert mem.get(msg_id) is not None
    assert [mem.messages(conversation_id="trip", owner_id="bob")] == bob_before
    assert visible(mem, tmp_path, owner="bob") == BOB
    # none of what was forgotten is found by its words
    for strategy in SEARCHES:
        found = mem.get_memory(strategy, conversation_id="trip", owner_id="ana", query="zanzibar", dense=False,
                               lookback_days=None)
        assert "zanzibar" not in " ".join(m.content for m in found.messages)
    assert mem.stats()["messages"] == 9 - len(forgotten)
    assert mem.stats()["vectors"] == 9 - len(forgotten)


def test_forget_by_owner_lists_nothing_and_the_owner_can_come_back(mem, tmp_path):
    seed(mem)
    report = mem.forget(owner_id="ana")
    assert (report.messages, report.conversations, report.emptied) == (7, 2, 2)
    assert mem.conversations("ana") == ()
    assert mem.stats()["owners"] == 1
    assert mem.forget(owner_id="nobody").messages == 0
    mem.add("user", "hello again", conversation_id="trip", owner_id="ana")
    got = mem.get_memory(Strategy.RECENT_HISTORY, conversation_id="trip", owner_id="ana", lookback_days=None)
    assert [m.content for m in got.messages] == ["hello again"]


def test_forget_needs_a_scope_and_a_before_that_is_aware(mem):
    seed(mem)
    with pytest.raises(InvalidInputError):
        mem.forget()
    with pytest.raises(InvalidInputError):
        mem.forget(conversation_id="trip")  # a conversation needs its owner
    with pytest.raises(InvalidInputError):
        mem.forget(before=datetime(2030, 1, 1))  # naive
    assert mem.stats()["messages"] == 9


# -- summaries --------------------------------------------------------------------------------


def concatenate(previous: str, messages) -> str:
    """A summariser that keeps every word: what it folded is in the summary verbatim."""
    return " | ".join([previous] * bool(previous) + [m.content for m in messages])


@pytest.fixture
def summarized(target, open_memory):
    mem = open_memory(target, embed="sync",
                      summaries=SummaryPolicy(window_tokens=30, fold_tokens=5, summarizer=concatenate, name="cat"))
    for i in range(12):
        text = f"note {i} " + ("the vault code is okapi" if i == 2 else "about the weather and the mountains")
        mem.add("user" if i % 2 == 0 else "assistant", text, conversation_id="c", owner_id="u",
                msg_id=f"m{i}", created_at=NOW - timedelta(minutes=60 - i))
    mem.add("user", "another conversation, okapi too", conversation_id="other", owner_id="u")
    mem.fold_summary(conversation_id="c", owner_id="u")  # (the background worker may have folded some)
    summary = mem.get_conversation_summary(conversation_id="c", owner_id="u")
    assert summary is not None and "okapi" in summary.text and summary.summarizer == "cat"
    assert summary.folded > 3
    assert summary.covers_until.utcoffset() == timedelta(0)
    return mem


def test_deleting_a_summarized_message_takes_it_out_of_the_summary(summarized):
    assert summarized.delete("m2")
    summary = summarized.get_conversation_summary(conversation_id="c", owner_id="u")
    assert summary is None or "okapi" not in summary.text
    summarized.flush(timeout=60)  # the summary is rebuilt without it
    summarized.fold_summary(conversation_id="c", owner_id="u")
    summary = summarized.get_conversation_summary(conversation_id="c", owner_id="u")
    assert summary is not None and "okapi" not in summary.text and "note 1 " in summary.text


@pytest.mark.parametrize("scope", [{"owner_id": "u"}, {"owner_id": "u", "conversation_id": "c"}],
                         ids=["owner", "conversation"])
def test_forgetting_a_conversation_forgets_its_summary(summarized, scope):
    summarized.forget(**scope)
    assert summarized.get_conversation_summary(conversation_id="c", owner_id="u") is None
    assert summarized.messages(conversation_id="c", owner_id="u") == ()
    left = summarized.messages(conversation_id="other", owner_id="u")
    assert [m.content for m in left] == ([] if "conversation_id" not in scope else ["another conversation, okapi too"])
    context = summarized.build_context(conversation_id="c", owner_id="u", max_tokens=2000)
    assert "okapi" not in context.to_text()


# -- export and import ------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["jsonl", "parquet"])
def test_export_then_import_into_a_fresh_memory_gives_the_same_messages_and_vectors(
        mem, make_target, open_memory, tmp_path, fmt):
    seed(mem)
    mem.add("assistant", "Olá! 😀 coração\nnew line", conversation_id="food", owner_id="ana", msg_id="uni",
            metadata={"channel": "web", "n": [1, 2.5, None]}, feature="chat",
            created_at=datetime(1999, 12, 31, 21, 0, 0, 1, tzinfo=timezone(timedelta(hours=-3))))
    path = tmp_path / f"export.{fmt}"
    report = mem.export(path, vectors=True)
    assert (report.messages, report.vectors, report.format) == (10, 10, fmt)

    embedder = HashEmbedder()
    copy = open_memory(make_target(), embedder=embedder, embed="sync", cache_dir=tmp_path / "copy-cache")
    assert copy.stats()["messages"] == 0
    got = copy.import_(path)
    assert (got.lines, got.imported, got.unchanged, got.invalid, got.vectors) == (10, 10, 0, (), 10)
    assert embedder.calls == 0  # the file's vectors were taken as they are
    stats = copy.stats()
    assert (stats["messages"], stats["vectors"], stats["pending_vectors"]) == (10, 10, 0)
    for msg_id in ANA | BOB | {"uni"}:
        assert copy.get(msg_id) == mem.get(msg_id)
    for owner, conversation in (("ana", "trip"), ("ana", "food"), ("bob", "trip")):
        assert copy.messages(conversation_id=conversation, owner_id=owner) == \
            mem.messages(conversation_id=conversation, owner_id=owner)
        args = {"conversation_id": conversation, "owner_id": owner, "query": "pizza trip note 3", "limit": 20,
                "lookback_days": None, "keyword": False}
        original = mem.get_memory(Strategy.CROSS_CONVERSATION, **args)
        imported = copy.get_memory(Strategy.CROSS_CONVERSATION, **args)
        assert [m.msg_id for m in imported.messages] == [m.msg_id for m in original.messages]
        assert [m.score for m in imported.messages] == pytest.approx([m.score for m in original.messages])
    again = copy.import_(path)  # importing the file again changes nothing
    assert (again.imported, again.unchanged) == (0, 10)
    assert copy.stats()["messages"] == 10
    round_trip = tmp_path / f"again.{fmt}"
    copy.export(round_trip, vectors=True)
    assert round_trip.read_bytes() == path.read_bytes()  # nothing in an export depends on where it was


def test_export_selects_an_owner_a_conversation_or_what_is_older(mem, tmp_path):
    seed(mem)

    def exported(name, **scope):
        path = tmp_path / f"{name}.jsonl"
        report = mem.export(path, **scope)
        lines = path.read_text().splitlines()
        assert report.messages == len(lines) - 1
        return {json.loads(line)["msg_id"] for line in lines[1:]}

    assert exported("all") == ANA | BOB
    assert exported("bob", owner_id="bob") == BOB
    assert exported("food", owner_id="ana", conversation_id="food") == {"food-0", "food-1"}
    assert exported("old", before=CUT) == {"trip-0", "trip-1", "trip-2"}
    with pytest.raises(InvalidInputError):
        mem.export(tmp_path / "all.jsonl")  # exists, no overwrite


def test_an_import_with_a_bad_line_imports_nothing(mem, make_target, open_memory, tmp_path):
    seed(mem)
    path = tmp_path / "export.jsonl"
    mem.export(path)
    lines = path.read_text().splitlines()
    broken = json.loads(lines[3])
    broken["role"] = "robot"
    lines[3] = json.dumps(broken)
    path.write_text("\n".join(lines) + "\n")
    copy = open_memory(make_target(), embed="sync", cache_dir=tmp_path / "copy-cache")
    with pytest.raises(InvalidInputError):
        copy.import_(path)
    assert copy.stats()["messages"] == 0
    report = copy.import_(path, skip_invalid=True)
    assert report.imported == 8 and [bad.line for bad in report.invalid] == [4]
    assert copy.get(broken["msg_id"]) is None and copy.stats()["messages"] == 8


# -- read-only --------------------------------------------------------------------------------


def test_read_only_reads_everything_and_refuses_every_write(target, open_memory, tmp_path):
    """Where a backend offers read_only=True (SQLite: a file on read-only media, or a
    reader that must not write), every read works and every write raises ReadOnlyError,
    changing nothing. A PostgreSQL backend is held to the same: opened read-only it
    refuses writes with ReadOnlyError, whatever the database user may do."""
    writer = open_memory(target, embed="sync")
    seed(writer)
    before = writer.stats()
    reader = open_memory(target, read_only=True)
    assert reader.get("trip-0") == writer.get("trip-0")
    assert reader.messages(conversation_id="trip", owner_id="ana") == \
        writer.messages(conversation_id="trip", owner_id="ana")
    assert reader.conversations("ana") == ("food", "trip")
    found = reader.get_memory(Strategy.SEMANTIC_SEARCH, conversation_id="trip", owner_id="ana",
                              query="pizza zanzibar trip note 1", lookback_days=None)
    assert found.messages[0].msg_id == "trip-1"
    recent = reader.get_memory(Strategy.RECENT_HISTORY, conversation_id="trip", owner_id="ana", lookback_days=None)
    assert [m.msg_id for m in recent.messages] == [f"trip-{i}" for i in range(5)]
    assert reader.stats()["messages"] == before["messages"]
    reader.export(tmp_path / "from-reader.jsonl")  # a read, written elsewhere
    for write in (
        lambda: reader.add("user", "no", conversation_id="trip", owner_id="ana"),
        lambda: reader.add_many([{"role": "user", "content": "no"}], conversation_id="trip", owner_id="ana"),
        lambda: reader.delete("trip-0"),
        lambda: reader.forget(owner_id="ana"),
        lambda: reader.import_(tmp_path / "from-reader.jsonl"),
        lambda: reader.reembed(),
    ):
        with pytest.raises(ReadOnlyError):
            write()
    assert writer.stats() == before and writer.get("trip-0") is not None
    writer.add("user", "written after the reader opened", conversation_id="trip", owner_id="ana", msg_id="late")
    assert reader.get("late") is not None  # a reader sees later writes
