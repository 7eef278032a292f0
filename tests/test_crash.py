"""SIGKILL a writer at random moments; every acknowledged message must survive.

A child interpreter adds messages in a loop (single ``add`` calls and small ``add_many``
batches, contents of varied size so the WAL grows and checkpoints happen) and prints each
msg_id only after the call that stored it has returned. The parent kills it with SIGKILL,
sometimes after a random number of acknowledgements, sometimes after a random short delay
(which can land during import, open or migration). Twenty rounds accumulate in one file;
after each, the file must hold every message ever acknowledged, pass the integrity checks and
accept a new write.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import localmem
from localmem import Memory, driver

SEED = 20261124
ROUNDS = 20
OWNER = "crash-owner"

# Shared by the child script and the parent's checks: the content stored under a msg_id.
CONTENT_FN = textwrap.dedent(
    """
    import zlib

    def content_for(msg_id):
        n = zlib.crc32(msg_id.encode()) % 6000
        return msg_id + "|" + ("ação-" * (n // 5 + 1))[:n]
    """
)
_ns: dict = {}
exec(CONTENT_FN, _ns)
content_for = _ns["content_for"]

# argv: db_path round seed
CHILD = CONTENT_FN + textwrap.dedent(
    """
    import random, sys
    from localmem import Memory

    path, rnd, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    rng = random.Random(seed)
    m = Memory(path, embed="off")  # the message log; vectors: test_semantic.py
    seq = 0
    while seq < 20000:  # the parent kills us long before this
        conv = f"conv-{rnd}-{seq // 50}"
        if rng.random() < 0.2:
            ids = [f"r{rnd}-{seq + k}" for k in range(rng.randint(2, 8))]
            m.add_many(
                [{"role": "user", "content": content_for(i), "msg_id": i} for i in ids],
                conversation_id=conv, owner_id="crash-owner",
            )
            sys.stdout.write("".join(i + "\\n" for i in ids))
            sys.stdout.flush()
            seq += len(ids)
        else:
            msg_id = f"r{rnd}-{seq}"
            m.add("assistant", content_for(msg_id), conversation_id=conv,
                  owner_id="crash-owner", msg_id=msg_id)
            sys.stdout.write(msg_id + "\\n")
            sys.stdout.flush()
            seq += 1
    """
)


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    root = str(Path(localmem.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _complete_lines(text: str) -> list[str]:
    """Lines the child finished writing (a torn last line is not an acknowledgement)."""
    lines = text.split("\n")
    return [line for line in lines[:-1] if line]


def _one_round(script: Path, db_path: Path, rnd: int, rng: random.Random, ctx: str) -> list[str]:
    """Run a child until killed; return the msg_ids it acknowledged."""
    proc = subprocess.Popen(
        [sys.executable, str(script), str(db_path), str(rnd), str(rng.randrange(2**32))],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_child_env(),
    )
    acked_text = b""
    try:
        if rng.random() < 0.3:
            # Kill after a random short delay: possibly during import, open or migration.
            time.sleep(rng.uniform(0.0, 0.4))
            how = "delay"
        else:
            want = rng.randint(1, 200)
            how = f"after {want} acks"
            got = 0
            while got < want:
                line = proc.stdout.readline()
                if not line:
                    proc.wait(timeout=10)
                    pytest.fail(
                        f"{ctx}: child died on its own (rc={proc.returncode}) after {got} acks:\n"
                        + proc.stderr.read().decode(errors="replace")
                    )
                acked_text += line
                got += 1
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        rest, err = proc.communicate(timeout=30)
        acked_text += rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    if alive:
        assert proc.returncode == -signal.SIGKILL, f"{ctx}: child rc {proc.returncode}"
    else:
        pytest.fail(f"{ctx} ({how}): child exited by itself, rc={proc.returncode}:\n"
                    + err.decode(errors="replace"))
    return _complete_lines(acked_text.decode("utf-8"))


@pytest.mark.slow
@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs SIGKILL (POSIX)")
def test_sigkill_loses_no_acknowledged_message(tmp_path, db_path):
    script = tmp_path / "writer.py"
    script.write_text(CHILD)
    rng = random.Random(SEED)
    acked: list[str] = []
    killed_with_acks = 0
    probes = 0

    for rnd in range(ROUNDS):
        ctx = f"seed={SEED} round={rnd}"
        new = _one_round(script, db_path, rnd, rng, ctx)
        assert len(set(new)) == len(new), f"{ctx}: child acknowledged an id twice"
        acked += new
        killed_with_acks += bool(new)
        if not db_path.exists():
            assert not new, f"{ctx}: acknowledged {len(new)} messages but no database file"
            continue

        with Memory(db_path, embed="off") as m:
            for msg_id in acked:
                got = m.get(msg_id)
                assert got is not None, f"{ctx}: acknowledged message {msg_id} is missing"
                assert got.content == content_for(msg_id), f"{ctx}: {msg_id} content differs"
                assert got.owner_id == OWNER
            assert m.check_integrity() == "ok", f"{ctx}: integrity check failed"

            # The per-conversation counters agree with the rows actually there.
            conn = driver.connect(str(db_path))
            try:
                rows = conn.execute("SELECT count(*) FROM messages").fetchone()[0]
                # Only the child's ids and the parent's own probe messages are in the file.
                stray = conn.execute(
                    "SELECT count(*) FROM messages WHERE msg_id NOT LIKE 'r%-%'"
                    " AND msg_id NOT LIKE 'after-kill-%'"
                ).fetchone()[0]
            finally:
                conn.close()
            assert stray == 0, f"{ctx}: unexpected rows"
            assert m.stats()["messages"] == rows, f"{ctx}: conversation counters drifted"
            assert rows >= len(acked) + probes, f"{ctx}: fewer rows than acknowledged messages"

            # The file takes new writes, and they are readable at once.
            probe = f"after-kill-{rnd}"
            m.add("user", f"probe {rnd}", conversation_id="probe", owner_id=OWNER, msg_id=probe)
            probes += 1
            assert m.get(probe).content == f"probe {rnd}"
            recent = m.get_memory("recent_history", conversation_id="probe", owner_id=OWNER, limit=1)
            assert [x.msg_id for x in recent.messages] == [probe], ctx

    # The run must actually have killed writers mid-stream, not only before they started.
    assert killed_with_acks >= ROUNDS // 2, f"seed={SEED}: only {killed_with_acks} rounds had acks"
    assert len(acked) > 100, f"seed={SEED}: only {len(acked)} acknowledged messages in total"
