"""Memory.maintain(): its steps, retention policies, space given back, a background runner."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta, timezone

import pytest
from byte_scan import scan
from hash_embedder import HashEmbedder

from localmem import InvalidInputError, Memory, Progress, RetentionPolicy, Strategy

NOW = datetime.now(timezone.utc)
STEPS = ["caches", "retention", "keyword_index", "strategy_log", "vectors", "vector_index", "checkpoint", "space",
         "integrity"]


def _fill(mem: Memory, owners=("alice", "bob", "carol"), days=(1, 40, 400), per_day: int = 5) -> None:
    items = []
    for owner in owners:
        for age in days:
            for i in range(per_day):
                items.append({"role": "user", "content": f"{owner} said {i} about day {age}",
                              "conversation_id": f"{owner}-c", "owner_id": owner,
                              "created_at": NOW - timedelta(days=age, minutes=i)})
    mem.add_many(items)


def _ages(mem: Memory, owner: str) -> list[int]:
    got = mem.get_memory(Strategy.RECENT_HISTORY, conversation_id=f"{owner}-c", owner_id=owner,
                         limit=100, lookback_days=None)
    return sorted({(NOW - m.created_at).days for m in got.messages})


def test_maintain_reports_each_step(tmp_path):
    seen: list[Progress] = []
    with Memory(tmp_path / "m.db", embedder=HashEmbedder()) as mem:
        _fill(mem)
        mem.flush()
        report = mem.maintain(progress=seen.append)
    assert [s.name for s in report.steps] == STEPS
    assert report.complete and report.pending == () and report.integrity == "ok"
    assert report.forgotten == report.archived == 0 and report.bytes_after > 0
    assert all(s.seconds >= 0 and s.detail for s in report.steps)
    assert {p.stage for p in seen} >= set(STEPS) and seen[-1].finished


def test_retention_per_owner_and_for_everyone_else(tmp_path):
    policies = [RetentionPolicy(max_age_days=30), RetentionPolicy(max_age_days=365, owner_id="bob")]
    with Memory(tmp_path / "m.db", embed="off", retention=policies) as mem:
        _fill(mem)
        report = mem.maintain()
        assert report.forgotten == 2 * 2 * 5 + 5 and report.complete  # alice, carol: 40 and 400 days; bob: 400
        assert _ages(mem, "alice") == _ages(mem, "carol") == [1]
        assert _ages(mem, "bob") == [1, 40]


@pytest.mark.parametrize(("old", "batch"), [(1, 5000), (45, 10), (40, 10)])
def test_retention_leaves_no_trace_of_what_it_removes(tmp_path, monkeypatch, old, batch):
    """Also in batches (a transaction each, the FTS5 scrub once at the end), the last
    one partly full or empty."""
    from localmem import lifecycle

    monkeypatch.setattr(lifecycle, "RETENTION_BATCH", batch)
    db = str(tmp_path / "m.db")
    word = "Zqretainedmarker42"
    with Memory(db, embedder=HashEmbedder(), retention=RetentionPolicy(max_age_days=10)) as mem:
        items = []
        for i in range(old):  # one import: one index segment, old and new messages together
            items.append({"role": "user", "content": f"old secret {i} {word}", "conversation_id": "c",
                          "owner_id": "o", "created_at": NOW - timedelta(days=20 + i)})
            items += [{"role": "user", "content": f"new talk {i} {j}", "conversation_id": "c",
                       "owner_id": "o"} for j in range(3)]
        mem.add_many(items)
        mem.flush()
        mem.get_memory(Strategy.HYBRID, query="old secret", conversation_id="c", owner_id="o")
        assert scan(db, [word])
        report = mem.maintain()
        assert report.forgotten == old and report.complete
        assert not scan(db, [word])
        assert mem.stats()["messages"] == 3 * old


def test_vacuum_gives_back_the_space_of_deleted_rows(tmp_path):
    # The two conversations written one after the other: the forgotten one's rows fill
    # whole pages, which the delete frees. (Interleaved, each page would lose half its
    # rows and stay: the free-page count would not see that space; vacuum=True would.)
    with Memory(tmp_path / "m.db", embed="off", hot_window=0) as mem:
        mem.add_many({"role": "user", "content": f"message {i} " + "padding words " * 40,
                      "conversation_id": f"c{i * 2 // 3000}", "owner_id": "o"} for i in range(3000))
        mem.forget(owner_id="o", conversation_id="c0")
        kept = mem.maintain(vacuum=False)
        assert kept.steps[7].detail.endswith("no VACUUM (vacuum=False)")
        assert kept.bytes_after >= 0.9 * kept.bytes_before
        report = mem.maintain()
        assert "gave them back" in report.steps[7].detail
        assert report.bytes_after < 0.7 * report.bytes_before
        assert mem.stats()["messages"] == 1500 and report.integrity == "ok"


def test_maintain_while_another_connection_writes(tmp_path):
    """As from cron: a second Memory on the same file maintains (VACUUM included) while
    the agent's Memory keeps adding; no write fails and none is lost."""
    path = tmp_path / "m.db"
    agent = Memory(path, embed="off")
    _fill(agent)
    stop, added, errors = threading.Event(), [], []

    def write() -> None:
        while not stop.is_set():
            try:
                added.append(agent.add("user", "still here", conversation_id="w", owner_id="o").msg_id)
            except Exception as exc:  # noqa: BLE001 - collected for the assertion
                errors.append(exc)

    thread = threading.Thread(target=write)
    thread.start()
    try:
        with Memory(path, embed="off", retention=RetentionPolicy(max_age_days=30)) as cron:
            report = cron.maintain(vacuum=True)
    finally:
        stop.set()
        thread.join()
    assert not errors and added
    assert report.integrity == "ok" and report.forgotten == 30
    assert all(agent.get(i) is not None for i in added)
    agent.close()


def test_maintenance_interval_runs_in_the_background(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", maintenance_interval=0.05,
                retention=RetentionPolicy(max_age_days=30)) as mem:
        _fill(mem)
        deadline = time.monotonic() + 30
        while mem._maintainer.runs < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert mem._maintainer.runs >= 2 and mem._maintainer.failures == 0
        assert _ages(mem, "alice") == [1]
    assert not mem._maintainer._thread.is_alive()


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"retention": 30}, "retention must be"),
    ({"retention": [RetentionPolicy(30), RetentionPolicy(40)]}, "one policy per owner"),
    ({"maintenance_interval": 0}, "maintenance_interval"),
])
def test_bad_options(tmp_path, kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        Memory(tmp_path / "m.db", embed="off", **kwargs)


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"max_age_days": 0}, "max_age_days"),
    ({"max_age_days": True}, "max_age_days"),
    ({"max_age_days": 1, "owner_id": ""}, "owner_id"),
    ({"max_age_days": 1, "archive": 3}, "archive"),
])
def test_bad_policies(kwargs, message):
    with pytest.raises(InvalidInputError, match=message):
        RetentionPolicy(**kwargs)


def test_archive_path_fills_in_time_and_owner():
    policy = RetentionPolicy(30, owner_id="bob", archive="/a/{owner}-{time}.jsonl")
    at = int(datetime(2026, 11, 29, 9, 30, tzinfo=timezone.utc).timestamp() * 1e6)
    assert policy.archive_path(at) == "/a/bob-20261129T093000Z.jsonl"
    assert RetentionPolicy(30).archive_path(at) is None


def test_cli_maintain_and_forget(tmp_path, run):
    db = str(tmp_path / "m.db")
    with Memory(db, embed="off") as mem:
        _fill(mem)
    code, out, _ = run("--db", db, "maintain", "--max-age-days", "30")
    assert code == 0, out
    assert [line.split()[0] for line in out.splitlines()][:len(STEPS)] == STEPS
    assert "everyone: 30 older than 30 days removed" in out
    code, out, _ = run("--db", db, "forget", "--owner", "alice")
    assert code == 0 and '"messages": 5' in out
    code, out, _ = run("--db", db, "forget", "--before", "2025-01-01T00:00:00+00:00")
    assert code == 0 and '"messages": 0' in out
    code, _, err = run("--db", db, "forget", "--before", "2025-01-01")
    assert code == 1 and "needs its UTC offset" in err
    code, _, err = run("--db", db, "forget", "--conversation", "c")
    assert code == 1 and "--conversation needs --owner" in err
    code, out, _ = run("--db", db, "maintain", "--json", "--no-vacuum", "--no-integrity")
    assert code == 0 and '"integrity": null' in out
    with Memory(db, embed="off") as mem:
        assert mem.stats()["messages"] == 10  # bob and carol's newest day


def test_half_empty_vector_chunks_are_packed(tmp_path):
    """Deletes spread over time leave each vector chunk half empty, and sqlite-vec never
    refills them: maintain() writes the owner's vectors again, into as few chunks as
    they need, and every search answers as before."""
    import random

    rng = random.Random(3)
    ages = list(range(2000))
    rng.shuffle(ages)  # written in no time order, as an import of old chats
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(dim=64), hot_window=0, query_cache_ttl=0) as mem:
        mem.add_many({"role": "user", "content": f"note {age} about {rng.choice(['tea', 'rain', 'jazz'])}",
                      "conversation_id": "c", "owner_id": "o", "created_at": NOW - timedelta(hours=age)}
                     for age in ages)
        mem.add("user", "another owner", conversation_id="c", owner_id="p")
        mem.flush()
        mem.forget(owner_id="o", before=NOW - timedelta(hours=1000))
        assert mem._store.vector_waste() == [("o", 1)]  # 2 chunks of 1024 slots for 1001 vectors

        query = HashEmbedder(dim=64).embed(["jazz"])[0].tobytes()

        def search():  # every vector's similarity, nearest first: exact search
            return [round(score, 5) for _, score in mem._store.knn(query, 1500, owner_id="o")]

        answer = search()
        report = mem.maintain(vacuum=False)
        assert report.steps[4].detail == "1 half-empty vector chunks of 1 owners packed"
        assert mem._store.vector_waste() == [] and mem.stats()["vectors"] == 1002
        # the same similarities (messages that tie may swap: equal distances come in the
        # order the vectors sit in)
        assert search() == answer and len(answer) == 1001
        assert report.integrity == "ok"


def test_read_only_memory_neither_forgets_nor_maintains(tmp_path):
    from localmem import ReadOnlyError

    path = tmp_path / "m.db"
    with Memory(path, embed="off") as mem:
        _fill(mem)
    with pytest.raises(InvalidInputError, match="maintenance_interval"):
        Memory(path, read_only=True, maintenance_interval=60)
    with Memory(path, read_only=True) as mem:
        for call in (lambda: mem.forget(owner_id="alice"), mem.maintain):
            with pytest.raises(ReadOnlyError, match="read_only=True"):
                call()
        assert mem.stats()["messages"] == 45


@pytest.mark.parametrize("suffix", ["jsonl", "parquet"])
def test_retention_archives_what_it_removes_and_import_brings_it_back(tmp_path, suffix):
    path = tmp_path / "m.db"
    archive = str(tmp_path / f"archive-{{owner}}-{{time}}.{suffix}")
    policies = [RetentionPolicy(max_age_days=30, archive=archive),
                RetentionPolicy(max_age_days=365, owner_id="bob", archive=archive)]
    with Memory(path, embed="off", retention=policies) as mem:
        _fill(mem)
        before = {m.msg_id: m for o in ("alice", "bob", "carol") for m in mem.get_memory(
            Strategy.RECENT_HISTORY, conversation_id=f"{o}-c", owner_id=o, limit=100, lookback_days=None).messages}
        report = mem.maintain()
        assert report.archived == report.forgotten == 25 and len(report.archives) == 2
        assert sorted(p.rsplit("/", 1)[1].split("-")[1] for p in report.archives) == ["all", "bob"]
        assert mem.maintain().archives == ()  # nothing old is left: no empty archive
        for file in report.archives:
            assert mem.import_(file).imported > 0
        after = {m.msg_id: m for o in ("alice", "bob", "carol") for m in mem.get_memory(
            Strategy.RECENT_HISTORY, conversation_id=f"{o}-c", owner_id=o, limit=100, lookback_days=None).messages}
        assert after.keys() == before.keys()
        assert all((a.content, a.created_at, a.role) == (before[k].content, before[k].created_at, before[k].role)
                   for k, a in after.items())


def test_an_archive_without_time_in_its_name_is_never_overwritten(tmp_path):
    archive = tmp_path / "old.jsonl"
    with Memory(tmp_path / "m.db", embed="off", retention=RetentionPolicy(30, archive=archive)) as mem:
        _fill(mem)
        assert mem.maintain().archived == 30
        mem.add("user", "old again", conversation_id="c", owner_id="alice", created_at=NOW - timedelta(days=90))
        with pytest.raises(InvalidInputError, match="exists"):
            mem.maintain()
        assert mem.stats()["messages"] == 16  # the old message stays: it was not archived
