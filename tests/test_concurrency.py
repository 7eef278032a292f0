"""Several independent processes writing into one database file at the same moment.

Children are fresh interpreters (``subprocess`` + ``sys.executable``), started together by a
start file that the parent creates once every child has opened its ``Memory``. Each child
reports the msg_ids that ``add()`` acknowledged; the parent then checks that nothing was
lost, nothing duplicated, each writer's order survived, and the file is intact.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest

import localmem
from localmem import Memory, Strategy, driver

PROCS = 4
PER_PROC = 250
OWNER = "owner-1"
CHILD_TIMEOUT = 120  # seconds; a hung child fails the test instead of hanging it

# argv: db_path start_file proc n conversation_id explicit_ids(0/1) open_after_start(0/1)
CHILD = textwrap.dedent(
    """
    import json, os, sys, time
    from localmem import Memory, Strategy

    path, start_file = sys.argv[1], sys.argv[2]
    proc, n, conv = int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    explicit_ids, open_after_start = sys.argv[6] == "1", sys.argv[7] == "1"
    own_conversation = conv == f"conv-{proc}"

    def wait_for_start():
        deadline = time.monotonic() + 60
        while not os.path.exists(start_file):
            if time.monotonic() > deadline:
                sys.exit("start file never appeared")
            time.sleep(0.0005)

    if open_after_start:
        print("ready", flush=True)
        wait_for_start()
        m = Memory(path, lock_timeout=30)
    else:
        m = Memory(path, lock_timeout=30)
        print("ready", flush=True)
        wait_for_start()

    acked = []
    for i in range(n):
        msg = m.add(
            "user" if i % 2 == 0 else "assistant",
            f"p{proc}-{i}",
            conversation_id=conv,
            owner_id="owner-1",
            msg_id=f"p{proc}-{i:04d}" if explicit_ids else None,
            metadata={"proc": proc, "seq": i},
        )
        acked.append(msg.msg_id)
        # Read-your-writes through the hot window while the other processes keep writing.
        if own_conversation and i % 25 == 24:
            got = m.get_memory(Strategy.RECENT_HISTORY, conversation_id=conv, owner_id="owner-1",
                               limit=5, lookback_days=None)
            seen = [x.content for x in got.messages]
            want = [f"p{proc}-{j}" for j in range(i - 4, i + 1)]
            if seen != want:
                sys.exit(f"proc {proc} after add {i}: recent_history gave {seen}, want {want}")
    m.close()
    print(json.dumps(acked), flush=True)
    """
)


def _child_env() -> dict[str, str]:
    """Children import the same localmem as this test process."""
    env = dict(os.environ)
    root = str(Path(localmem.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run_writers(
    tmp_path: Path,
    db_path: Path,
    conversations: list[str],
    *,
    explicit_ids: bool,
    open_after_start: bool = False,
    per_proc: int = PER_PROC,
) -> dict[int, list[str]]:
    """Start one child per conversation entry at the same moment; return proc -> acked ids."""
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    start_file = tmp_path / "start"
    procs: list[subprocess.Popen] = []
    errs = []
    try:
        for proc, conv in enumerate(conversations):
            err = open(tmp_path / f"child-{proc}.err", "w+")
            errs.append(err)
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(script), str(db_path), str(start_file), str(proc),
                     str(per_proc), conv, "1" if explicit_ids else "0",
                     "1" if open_after_start else "0"],
                    stdout=subprocess.PIPE, stderr=err, text=True, env=_child_env(),
                )
            )
        for proc, p in enumerate(procs):
            line = p.stdout.readline()
            if line.strip() != "ready":
                errs[proc].seek(0)
                pytest.fail(f"child {proc} did not get ready: {line!r}\n{errs[proc].read()}")
        start_file.touch()  # all children go at once

        acked: dict[int, list[str]] = {}
        for proc, p in enumerate(procs):
            try:
                out, _ = p.communicate(timeout=CHILD_TIMEOUT)
            except subprocess.TimeoutExpired:
                p.kill()
                p.communicate()
                pytest.fail(f"child {proc} still running after {CHILD_TIMEOUT}s")
            errs[proc].seek(0)
            stderr = errs[proc].read()
            assert p.returncode == 0, f"child {proc} exited {p.returncode}:\n{stderr}"
            acked[proc] = json.loads(out.strip().splitlines()[-1])
        return acked
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
        for err in errs:
            err.close()


def _raw_rows(db_path: Path) -> list[tuple]:
    conn = driver.connect(str(db_path))
    try:
        return conn.execute(
            "SELECT msg_id, conversation_id, owner_id, content, metadata, created_at, id"
            " FROM messages ORDER BY created_at, id"
        ).fetchall()
    finally:
        conn.close()


def _check_no_loss_no_dup(rows: list[tuple], acked: dict[int, list[str]]) -> None:
    total = PROCS * PER_PROC
    assert len(rows) == total, f"expected exactly {total} rows, found {len(rows)}"
    for proc, ids in acked.items():
        assert len(ids) == PER_PROC, f"child {proc} reported {len(ids)} acks"
    all_acked = [i for ids in acked.values() for i in ids]
    assert len(set(all_acked)) == total, "children were handed duplicate msg_ids"
    stored_ids = Counter(r[0] for r in rows)
    dup_ids = [k for k, c in stored_ids.items() if c != 1]
    assert not dup_ids, f"duplicated msg_ids: {dup_ids[:10]}"
    lost = set(all_acked) - set(stored_ids)
    assert not lost, f"{len(lost)} acknowledged messages lost, e.g. {sorted(lost)[:10]}"
    contents = Counter(r[3] for r in rows)
    want = Counter(f"p{p}-{i}" for p in range(PROCS) for i in range(PER_PROC))
    assert contents == want, (
        f"content multiset differs: missing {list((want - contents).elements())[:10]},"
        f" extra {list((contents - want).elements())[:10]}"
    )
    # Each acknowledged id carries the content its child wrote under that id.
    by_id = {r[0]: r for r in rows}
    for proc, ids in acked.items():
        for seq, msg_id in enumerate(ids):
            assert by_id[msg_id][3] == f"p{proc}-{seq}", f"{msg_id} holds {by_id[msg_id][3]!r}"


def _seqs_of(rows: list[tuple], proc: int) -> list[int]:
    """The sequence numbers child ``proc`` wrote, in stored (created_at, id) order."""
    out = []
    for r in rows:
        meta = json.loads(r[4])
        if meta["proc"] == proc:
            out.append(meta["seq"])
    return out


def test_four_processes_each_own_conversation(tmp_path, db_path):
    Memory(db_path).close()  # create the file first; the race on a fresh file is tested below
    conversations = [f"conv-{p}" for p in range(PROCS)]
    acked = _run_writers(tmp_path, db_path, conversations, explicit_ids=False)

    rows = _raw_rows(db_path)
    _check_no_loss_no_dup(rows, acked)

    with Memory(db_path) as m:
        for proc, conv in enumerate(conversations):
            # Stored order (created_at, id) within the conversation is the writer's order.
            conv_rows = [r for r in rows if r[1] == conv]
            assert _seqs_of(conv_rows, proc) == list(range(PER_PROC)), f"order broken in {conv}"
            # ... and recent_history returns the same order, oldest first.
            result = m.get_memory(
                Strategy.RECENT_HISTORY, conversation_id=conv, owner_id=OWNER,
                limit=PER_PROC, lookback_days=None,
            )
            assert [x.content for x in result.messages] == [
                f"p{proc}-{i}" for i in range(PER_PROC)
            ], f"recent_history order wrong for {conv}"
            assert [x.msg_id for x in result.messages] == acked[proc]
            # The default-sized window (hot cache path) agrees with the tail.
            tail = m.get_memory("recent_history", conversation_id=conv, owner_id=OWNER)
            assert [x.msg_id for x in tail.messages] == acked[proc][-10:]
        stats = m.stats()
        assert stats["messages"] == PROCS * PER_PROC
        assert stats["conversations"] == PROCS
        assert stats["owners"] == 1
        assert m.check_integrity() == "ok"


def test_four_processes_one_shared_conversation(tmp_path, db_path):
    Memory(db_path).close()
    acked = _run_writers(tmp_path, db_path, ["shared"] * PROCS, explicit_ids=True)
    for proc, ids in acked.items():
        assert ids == [f"p{proc}-{i:04d}" for i in range(PER_PROC)]

    rows = _raw_rows(db_path)
    _check_no_loss_no_dup(rows, acked)
    assert {r[1] for r in rows} == {"shared"}

    with Memory(db_path) as m:
        result = m.get_memory(
            Strategy.RECENT_HISTORY, conversation_id="shared", owner_id=OWNER,
            limit=PROCS * PER_PROC, lookback_days=None,
        )
        assert [x.msg_id for x in result.messages] == [r[0] for r in rows]
        owners_in_order = [json.loads(r[4])["proc"] for r in rows]
        blocks = 1 + sum(a != b for a, b in zip(owners_in_order, owners_in_order[1:]))
        assert blocks > PROCS, "the writers never overlapped, so this test tested nothing"
        for proc in range(PROCS):
            # Interleaved with the others, but each writer's own messages in its order.
            assert _seqs_of(rows, proc) == list(range(PER_PROC)), f"order of child {proc} broken"
            mine = [x.content for x in result.messages if x.msg_id.startswith(f"p{proc}-")]
            assert mine == [f"p{proc}-{i}" for i in range(PER_PROC)]
        stats = m.stats()
        assert stats["messages"] == PROCS * PER_PROC
        assert stats["conversations"] == 1
        assert m.check_integrity() == "ok"


def test_simultaneous_first_open_of_a_new_file(tmp_path, db_path):
    """Four processes create and migrate the same new file at once, then write."""
    assert not db_path.exists()
    n = 20
    acked = _run_writers(
        tmp_path, db_path, [f"conv-{p}" for p in range(PROCS)],
        explicit_ids=True, open_after_start=True, per_proc=n,
    )
    rows = _raw_rows(db_path)
    assert sorted(r[0] for r in rows) == sorted(i for ids in acked.values() for i in ids)
    assert len(rows) == PROCS * n
    conn = driver.connect(str(db_path))
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
        # Migrated exactly once: one instance_id, one set of tables.
        assert conn.execute("SELECT count(*) FROM meta WHERE key = 'instance_id'").fetchone()[0] == 1
    finally:
        conn.close()
    with Memory(db_path) as m:
        assert m.stats()["messages"] == PROCS * n
        assert m.check_integrity() == "ok"
