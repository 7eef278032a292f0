from __future__ import annotations

import argparse
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from real_model import needs_minilm

import localmem
from localmem import Memory, Strategy
from localmem.cli import _parser, main
from localmem.store import SCHEMA_VERSION

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def temp_dir(tmp_path, monkeypatch):
    """Make tempfile (the demo's default database) land in this test's own directory."""
    folder = tmp_path / "tmp"
    folder.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(folder))
    return folder


def script(*argv: str, stdin: bytes = b"", env: dict[str, str] | None = None):
    """The installed console script when on PATH, else ``python -m localmem.cli``."""
    exe = shutil.which("localmem", path=os.path.dirname(sys.executable)) or shutil.which("localmem")
    cmd = [exe] if exe else [sys.executable, "-m", "localmem.cli"]
    return subprocess.run(
        [*cmd, *argv], check=False, input=stdin, capture_output=True, timeout=120,
        env={**os.environ, **(env or {})},
    )


def add(run, db, *argv: str) -> tuple[int, str, str]:
    return run("--db", str(db), "add", "--conversation", "c1", "--owner", "u1", *argv)


# -- demo --------------------------------------------------------------------------------


def answers(out: str) -> list[tuple[str, list[str]]]:
    """The demo's answers: each "== strategy · ..." header with the lines under it (up to
    the next blank line)."""
    found = []
    for block in out.split("\n== ")[1:]:
        header, *body = block.split("\n\n")[0].splitlines()
        found.append(("== " + header, body))
    return found


def scene(out: str, number: int) -> str:
    """The demo's output from "<number>. " to the next scene."""
    return out.split(f"\n{number}. ")[1].split(f"\n{number + 1}. ")[0]


def answer(out: str, *parts: str) -> list[str]:
    """The lines of the one answer whose header holds every one of ``parts``."""
    (body,) = [body for header, body in answers(out) if all(p in header for p in parts)]
    return body


def no_model_env(tmp_path) -> dict[str, str]:
    """A fresh offline machine: no models folder, empty home and caches, no Hub."""
    home = tmp_path / "home"
    home.mkdir()
    return {"LOCALMEM_MODELS_DIR": "", "HF_HUB_OFFLINE": "1", "HOME": str(home),
            "XDG_CACHE_HOME": str(home / ".cache"), "HF_HOME": str(home / ".cache" / "hf"),
            "HF_HUB_CACHE": str(home / ".cache" / "hf" / "hub")}


@needs_minilm  # the demo searches by meaning with the default model
def test_demo_tells_its_story_on_a_temporary_database(run, temp_dir):
    code, out, err = run("demo")
    assert code == 0, err
    for strategy in Strategy:
        assert f"== {strategy.value} · " in out
    assert "no embedding model" not in out
    assert "wrote 32 new of 32 messages" in out and "vectors: 32 messages embedded by all-MiniLM-L6-v2" in out
    assert "My sister Inês and I" in out  # accents intact
    # Weeks of chats, backdated: the listing says how old each is.
    assert "44 days ago  meal-prep" in out and "min ago  dinner-party" in out

    # 1. The answer is in a 44-day-old chat: recency misses it, cross_conversation finds it
    # once the lookback reaches it.
    first = scene(out, 1)
    recent = answer(first, "recent_history", "'dinner-party', last 4 messages")
    assert len(recent) == 5 and not any("allergy" in line for line in recent[:4])
    assert recent[4] == "   -> the allergy: not found in this chat's recent window"
    week = answer(first, "cross_conversation", "last 7 days", "fused: meaning + keywords")
    assert not any("peanut allergy" in line for line in week)
    everything = answer(first, "cross_conversation", "all time", "fused: meaning + keywords")
    assert re.match(r"   \d\.\d{3} fused \(meaning #1, keywords #1\) · meal-prep, 44 days ago · \[user\]", everything[0])
    assert "severe peanut allergy" in everything[0]
    assert everything[-1] == "   -> the allergy: #1; it was said 44 days ago in 'meal-prep'"

    # 2. Keywords only, meaning only and fused differ as the demo says, scores labelled.
    paraphrase = '"joint pain when jogging"'
    assert answer(out, paraphrase, "keywords only (BM25)") == [
        "   nothing found: no stored message shares a word with the question"]
    dense = answer(out, paraphrase, "meaning only (dense)")
    assert " cosine · half-marathon" in dense[0] and "My left knee gets sore" in dense[0]
    fused = answer(out, paraphrase, "fused: meaning + keywords")
    assert "fused (meaning #1, keywords -)" in fused[0] and "My left knee" in fused[0]
    assert fused[-1] == "   -> the message asked about: keywords not found, meaning #1, fused #1"
    keywords = answer(out, '"TP1327"', "keywords only (BM25)")
    assert " BM25 · lisbon-weekend" in keywords[0] and "Outbound: TP1327" in keywords[0]
    assert "Return: TP1330" in answer(out, '"TP1327"', "meaning only (dense)")[0]  # the wrong flight
    fused = answer(out, '"TP1327"', "fused: meaning + keywords")
    assert "fused (meaning #2, keywords #1)" in fused[0] and "Outbound: TP1327" in fused[0]
    assert fused[-1] == "   -> the message asked about: keywords #1, meaning #2, fused #1"

    # 3. The same calls again: from the caches, and saying so.
    again = scene(out, 3)
    assert "fused: meaning + keywords · from the query cache (cache_hit=True)" in again
    assert "recent window · from the hot window (cache_hit=True)" in again
    assert again.count("the same ones in the same order") == 2

    # 4. hybrid: the recent window, then matches from this conversation only: none here
    # reaches the relevance floor (the allergy was another chat), and it says so.
    hybrid = answer(scene(out, 4), "== hybrid")
    assert [line.split(" · ")[0] for line in hybrid[:2]] == ["   recent window"] * 2
    assert hybrid[2].startswith("   and nothing relevant by meaning: none of ")
    assert "reached the relevance floor (min_relevance 0.35)" in hybrid[2]

    # 5. A question no chat answers: no memory with the floor, the least bad without it.
    floor = scene(out, 5)
    assert answer(floor, '"What is 15% of 240?"', "meaning + keywords · computed")[0].startswith(
        "   nothing relevant: none of ")
    unfloored = answer(floor, "min_relevance=None", "no relevance floor")
    assert len(unfloored) == 4 and all(" fused " in line for line in unfloored[:3])
    # It wrote to a fresh file under the temp dir, and said where.
    (db,) = temp_dir.glob("localmem-demo-*/memory.db")
    assert str(db) in out


def test_demo_without_a_model_says_so_and_labels_keyword_answers_honestly(tmp_path):
    """A fresh offline machine has no model: the demo still runs, says what it lacks and
    how to get it, and runs only recency and keyword search, labelled as such."""
    done = script("--db", str(tmp_path / "demo.db"), "demo", env=no_model_env(tmp_path))
    out, err = done.stdout.decode(), done.stderr.decode()
    assert done.returncode == 0, err[-2000:]
    assert "Traceback" not in err and "Traceback" not in out
    lines = out.splitlines()
    notice = lines.index(next(line for line in lines if line.startswith("no embedding model: ")))
    assert lines[notice].startswith("no embedding model: cannot find model 'all-MiniLM-L6-v2'")
    assert "`localmem models download all-MiniLM-L6-v2` fetches it" in lines[notice + 1]
    for header, _ in answers(out):
        if header.split(" · ")[0] in ("== semantic_search", "== hybrid", "== cross_conversation"):
            assert " · keywords only (BM25) · " in header, header
    # Nothing is labelled as found by meaning.
    for word in ("meaning", "fused", "cosine", "dense"):
        assert word not in out, word
    assert "semantic" not in out.replace("== semantic_search", "")
    # The old answer is still found, by its keyword, and recency still misses it.
    first = scene(out, 1)
    assert not any("allergy" in line for line in answer(first, "recent_history", "last 4 messages")[:4])
    everything = answer(first, "cross_conversation", "all time")
    assert " BM25 · meal-prep, 44 days ago" in everything[0] and "peanut allergy" in everything[0]
    assert answer(out, '"joint pain when jogging"')[0].startswith("   nothing found")
    assert "from the hot window (cache_hit=True)" in out


@needs_minilm  # the demo searches by meaning with the default model
def test_demo_with_db_uses_that_file_and_a_rerun_adds_nothing(run, db_path, temp_dir):
    code, out, _ = run("demo", "--db", str(db_path))
    assert code == 0 and str(db_path) in out
    assert "wrote 32 new of 32" in out
    assert not list(temp_dir.iterdir())
    code, out, _ = run("--db", str(db_path), "demo")
    assert code == 0
    assert "wrote 0 new of 32 messages: they are already here (fixed msg_ids), so this run adds nothing" in out
    assert "vectors: every message already has one (all-MiniLM-L6-v2)" in out
    assert "44 days ago  meal-prep" in out  # the first run's dates are kept
    with Memory(db_path) as mem:
        assert mem.stats()["messages"] == 32


def test_demo_stops_quietly_when_its_reader_goes_away(tmp_path):
    """`localmem demo | head` must not end in a traceback."""
    exe = shutil.which("localmem", path=os.path.dirname(sys.executable)) or shutil.which("localmem")
    cmd = [exe] if exe else [sys.executable, "-m", "localmem.cli"]
    proc = subprocess.Popen(
        [*cmd, "--db", str(tmp_path / "demo.db"), "demo"], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, env={**os.environ, **no_model_env(tmp_path)},
    )
    proc.stdout.close()  # before the first line is written
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1
    assert "Traceback" not in err and "Exception ignored" not in err


# -- add / recent ------------------------------------------------------------------------


def test_add_then_recent_round_trips_text(run, db_path):
    code, out, _ = add(run, db_path, "Olá! Quero uma pizza sem cebola 🍕")
    assert code == 0
    msg_id, created_at = out.split()
    assert "T" in created_at and created_at.endswith("+00:00")

    code, out, _ = add(run, db_path, "--role", "assistant", "Claro, já anotei.")
    assert code == 0

    code, out, _ = run("recent", "--db", str(db_path), "--conversation", "c1", "--owner", "u1")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].endswith("  [user] Olá! Quero uma pizza sem cebola 🍕")
    assert lines[1].endswith("  [assistant] Claro, já anotei.")
    assert lines[2] == "Loaded 2 recent messages from last 7 days"
    with Memory(db_path) as mem:
        assert mem.get(msg_id).content == "Olá! Quero uma pizza sem cebola 🍕"


def test_add_reads_stdin_and_prints_json(run, db_path, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO("ação via stdin\n".encode())))
    code, out, _ = add(
        run, db_path, "--role", "system", "--feature", "onboarding", "--msg-id", "m-1",
        "--metadata", '{"lang": "pt", "n": 2}', "--json", "-",
    )
    assert code == 0
    message = json.loads(out)
    assert message["msg_id"] == "m-1"
    assert message["content"] == "ação via stdin"  # the trailing newline is dropped
    assert message["role"] == "system"
    assert message["feature"] == "onboarding"
    assert message["metadata"] == {"lang": "pt", "n": 2}
    assert message["created_at"].endswith("+00:00")

    code, out, _ = run(
        "recent", "--db", str(db_path), "--conversation", "c1", "--owner", "u1", "--all", "--json"
    )
    assert code == 0
    result = json.loads(out)
    assert result["strategy"] == "recent_history"
    assert result["context_summary"] == "Loaded 1 recent messages from all time"
    assert isinstance(result["cache_hit"], bool) and result["latency_ms"] >= 0
    assert [m["content"] for m in result["messages"]] == ["ação via stdin"]
    assert result["messages"][0]["metadata"] == {"lang": "pt", "n": 2}


def test_recent_limit_and_retry_of_msg_id(run, db_path):
    for i in range(3):
        assert add(run, db_path, "--msg-id", f"id-{i}", f"message {i}")[0] == 0
    assert add(run, db_path, "--msg-id", "id-0", "message 0")[0] == 0  # a retry: no-op
    code, out, _ = run(
        "--db", str(db_path), "recent", "--conversation", "c1", "--owner", "u1", "--limit", "2"
    )
    assert code == 0
    assert [line.split("] ")[1] for line in out.splitlines()[:-1]] == ["message 1", "message 2"]
    code, _, err = add(run, db_path, "--msg-id", "id-0", "something else")
    assert code == 1 and "localmem: error:" in err


def test_recent_of_an_unknown_conversation_is_empty(run, db_path):
    add(run, db_path, "hello")
    code, out, _ = run("recent", "--db", str(db_path), "--conversation", "nope", "--owner", "u1")
    assert code == 0
    assert out == "Loaded 0 recent messages from last 7 days\n"


# -- context -----------------------------------------------------------------------------


def context(run, db, *argv: str) -> tuple[int, str, str]:
    return run("--db", str(db), "context", "--conversation", "c1", "--owner", "u1",
               "--strategy", "recent_history", *argv)


def test_context_prints_the_turns_and_the_budget(run, db_path):
    for i, role in enumerate(["user", "assistant", "user"]):
        add(run, db_path, "--role", role, f"message number {i} about the trip")
    code, out, _ = context(run, db_path, "--max-tokens", "100")
    assert code == 0
    blocks = out.split("\n\n")
    assert blocks[:3] == [f"{role}: message number {i} about the trip"
                          for i, role in enumerate(["user", "assistant", "user"])]
    assert re.search(r"-- (\d+) of 100 tokens: system 0 .*turns \1 \(3\); 0 left out or cut", out)


def test_context_formats_are_the_chat_payloads(run, db_path):
    for i, role in enumerate(["user", "assistant", "assistant", "user", "assistant"]):
        add(run, db_path, "--role", role, f"turn {i}")
    code, out, _ = context(run, db_path, "--format", "openai", "--instructions", "Be brief.")
    assert code == 0
    assert json.loads(out)[0] == {"role": "system", "content": "Be brief."}
    assert [m["role"] for m in json.loads(out)[1:]] == ["user", "assistant", "assistant", "user", "assistant"]
    code, out, _ = context(run, db_path, "--format", "anthropic")
    payload = json.loads(out)
    assert code == 0 and "system" not in payload  # nothing to say there: no instructions, no memory
    assert payload["messages"] == [
        {"role": "user", "content": "turn 0"}, {"role": "assistant", "content": "turn 1\n\nturn 2"},
        {"role": "user", "content": "turn 3"}, {"role": "assistant", "content": "turn 4"},
    ]


def test_context_refuses_a_budget_the_instructions_do_not_fit(run, db_path):
    add(run, db_path, "hello")
    code, _, err = context(run, db_path, "--max-tokens", "3", "--instructions", "You are a careful assistant.")
    assert code == 1 and "the instructions alone take" in err
    assert context(run, db_path, "--memory-share", "1.5")[0] == 1


# -- info --------------------------------------------------------------------------------


def test_info_shows_counts_and_schema_version(run, db_path):
    add(run, db_path, "one")
    add(run, db_path, "two")
    run("--db", str(db_path), "add", "--conversation", "c2", "--owner", "u2", "three")

    code, out, _ = run("info", "--db", str(db_path))
    assert code == 0
    fields = dict(line.split(None, 1) for line in out.splitlines())
    assert fields["path"] == str(db_path)
    assert fields["schema_version"] == str(SCHEMA_VERSION)
    assert fields["messages"] == "3"
    assert fields["conversations"] == "2"
    assert fields["owners"] == "2"
    assert fields["size"].endswith(" bytes") and int(fields["size"].split()[0]) > 0

    code, out, _ = run("--db", str(db_path), "info", "--json")
    assert code == 0
    stats = json.loads(out)
    assert stats["schema_version"] == SCHEMA_VERSION
    assert (stats["messages"], stats["conversations"], stats["owners"]) == (3, 2, 2)


@needs_minilm  # search embeds with the recorded (default) model
def test_add_then_search_then_reembed(run, db_path):
    for text in ("I love pizza napolitana", "Best pizza in town", "Weather is nice today"):
        assert run("--db", str(db_path), "add", "--conversation", "c", "--owner", "u", text)[0] == 0
    code, out, err = run("--db", str(db_path), "info", "--json")
    assert json.loads(out)["pending_vectors"] == 3  # add queues; it does not load a model
    code, out, err = run("--db", str(db_path), "search", "--conversation", "c", "--owner", "u",
                         "--strategy", "semantic_search", "--limit", "2", "tell me about pizza")
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == 3 and all("pizza" in line for line in lines[:2])
    assert lines[2] == "Found 2 semantically relevant messages"
    code, out, err = run("--db", str(db_path), "search", "--conversation", "c", "--owner", "u",
                         "--strategy", "semantic_search", "--json", "--dense-only", "weather")
    assert json.loads(out)["messages"][0]["content"] == "Weather is nice today"
    code, out, err = run("--db", str(db_path), "reembed")
    assert code == 0, err
    assert "re-embedding 3 messages with all-MiniLM-L6-v2" in out and "done: 3 vectors" in out
    code, out, err = run("--db", str(db_path), "info")
    assert "'all-MiniLM-L6-v2' (dim 384" in out


def test_reembed_with_a_model_that_cannot_load_drops_nothing(run, db_path):
    from hash_embedder import HashEmbedder

    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:
        for text in ("pizza", "rain"):
            mem.add("user", text, conversation_id="c", owner_id="u")
    code, out, err = run("--db", str(db_path), "reembed", "--embedder", "no-such-model")
    assert code == 1 and "unknown model 'no-such-model'" in err
    code, out, err = run("--db", str(db_path), "info", "--json")
    info = json.loads(out)
    assert (info["vectors"], info["pending_vectors"]) == (2, 0)
    assert info["embedder"]["name"] == HashEmbedder.name


def test_db_after_the_subcommand_wins_over_the_global_one(run, tmp_path):
    a, b = tmp_path / "a.db", tmp_path / "b.db"
    run("--db", str(a), "add", "--db", str(b), "--conversation", "c", "--owner", "u", "x")
    assert b.exists() and not a.exists()


def test_localmem_db_names_the_file_when_no_db_is_given(run, tmp_path, monkeypatch, temp_dir):
    env_db, flag_db = tmp_path / "env.db", tmp_path / "flag.db"
    monkeypatch.setenv("LOCALMEM_DB", str(env_db))
    assert run("add", "--conversation", "c", "--owner", "u", "from the environment")[0] == 0
    assert env_db.exists()
    code, out, _ = run("recent", "--conversation", "c", "--owner", "u")
    assert code == 0 and "from the environment" in out
    run("--db", str(flag_db), "add", "--conversation", "c", "--owner", "u", "x")  # --db wins
    assert flag_db.exists()
    with Memory(env_db, read_only=True) as mem:
        assert mem.stats()["messages"] == 1
    # "~" is the home folder (MCP clients start commands without a shell to expand it).
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("LOCALMEM_DB", "~/tilde.db")
    assert run("add", "--conversation", "c", "--owner", "u", "x")[0] == 0
    assert (tmp_path / "tilde.db").exists()
    assert run("--db", "~/tilde2.db", "add", "--conversation", "c", "--owner", "u", "x")[0] == 0
    assert (tmp_path / "tilde2.db").exists()
    monkeypatch.setenv("LOCALMEM_DB", str(env_db))
    # The tour never writes into the file the environment names.
    assert run("demo")[0] == 0
    with Memory(env_db, read_only=True) as mem:
        assert mem.stats()["messages"] == 1


# -- errors ------------------------------------------------------------------------------


def test_invalid_role_is_error_1(run, db_path):
    code, out, err = add(run, db_path, "--role", "robot", "hi")
    assert code == 1 and out == ""
    assert err.startswith("localmem: error:") and "role" in err


@pytest.mark.parametrize("metadata", ["{not json", "[1, 2]", '{"bad key": 1}'])
def test_bad_metadata_is_error_1(run, db_path, metadata):
    code, _, err = add(run, db_path, "--metadata", metadata, "hi")
    assert code == 1
    assert err.startswith("localmem: error:") and "metadata" in err


@pytest.mark.parametrize("argv", [
    ["info"],
    ["info", "--json"],
    ["recent", "--conversation", "c1", "--owner", "u1"],
    ["search", "--conversation", "c1", "--owner", "u1", "pizza"],
    ["reembed"],
])
def test_reading_a_missing_database_creates_nothing(run, tmp_path, argv):
    missing = tmp_path / "missing.db"
    code, out, err = run("--db", str(missing), *argv)
    assert code == 1 and out == ""
    assert err.startswith("localmem: error: no database at")
    assert list(tmp_path.iterdir()) == []


def test_bad_limit_and_lookback_are_error_1(run, db_path):
    add(run, db_path, "hi")
    base = ["recent", "--db", str(db_path), "--conversation", "c1", "--owner", "u1"]
    assert run(*base, "--limit", "0")[0] == 1
    assert run(*base, "--lookback-days", "-1")[0] == 1


@pytest.mark.parametrize("argv", [
    [],
    ["add", "--owner", "u1", "text"],
    ["add", "--conversation", "c1", "--owner", "u1"],
    ["recent", "--conversation", "c1"],
    ["recent", "--conversation", "c1", "--owner", "u1", "--all", "--lookback-days", "3"],
    ["recent", "--conversation", "c1", "--owner", "u1", "--limit", "many"],
    ["context", "--conversation", "c1", "--owner", "u1", "--format", "yaml"],
    ["context", "--conversation", "c1", "--owner", "u1", "--max-tokens", "lots"],
    ["nonsense"],
])
def test_usage_errors_exit_2(capsys, tmp_path, argv):
    with pytest.raises(SystemExit) as exc:
        main(["--db", str(tmp_path / "m.db"), *argv])
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


# -- the installed command ---------------------------------------------------------------


def test_console_script_exit_codes(tmp_path):
    db = str(tmp_path / "m.db")
    ids = ["--conversation", "c1", "--owner", "u1"]
    done = script("--db", db, "add", *ids, "-", stdin="Olá do stdin\n".encode())
    assert done.returncode == 0, done.stderr
    done = script("--db", db, "recent", *ids)
    assert done.returncode == 0
    assert "[user] Olá do stdin" in done.stdout.decode("utf-8")

    done = script("--db", db, "add", *ids, "--role", "robot", "hi")
    assert done.returncode == 1 and done.stderr.startswith(b"localmem: error:")
    done = script("--db", db, "add", *ids, "--metadata", "{nope", "hi")
    assert done.returncode == 1 and done.stderr.startswith(b"localmem: error:")
    done = script("--db", str(tmp_path / "missing.db"), "info")
    assert done.returncode == 1 and not (tmp_path / "missing.db").exists()
    assert script("add", "--owner", "u1", "hi").returncode == 2
    assert script("--help").returncode == 0
    done = script("--version")
    assert done.returncode == 0 and done.stdout == f"localmem {localmem.__version__}\n".encode()


@pytest.mark.parametrize("module", ["localmem", "localmem.cli"])
def test_python_dash_m_is_the_same_command(tmp_path, module):
    def run(*argv: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run([sys.executable, "-m", module, *argv], capture_output=True,
                              timeout=120, check=False)

    done = run("--version")
    assert done.returncode == 0 and done.stdout == f"localmem {localmem.__version__}\n".encode()
    done = run("--db", str(tmp_path / "missing.db"), "info")
    assert done.returncode == 1 and done.stderr.startswith(b"localmem: error:")
    done = run("add", "--owner", "u1", "hi")
    assert done.returncode == 2 and done.stderr.startswith(b"usage: localmem add")


def test_version(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"localmem {localmem.__version__}\n"


@needs_minilm  # the demo searches by meaning with the default model
def test_console_script_demo_prints_utf8_whatever_the_locale(tmp_path):
    done = script("demo", env={"TMPDIR": str(tmp_path), "PYTHONIOENCODING": "ascii"})
    assert done.returncode == 0, done.stderr
    out = done.stdout.decode("utf-8")
    assert "Inês" in out and "·" in out and "cache_hit=True" in out
    assert list(tmp_path.glob("localmem-demo-*/memory.db"))


# -- help and the README -----------------------------------------------------------------


def _subcommands(parser: argparse.ArgumentParser) -> list[tuple[str, str, argparse.ArgumentParser]]:
    """(name, one-line help, parser) of each command under ``parser``, in --help's order."""
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not actions:
        return []
    [action] = actions
    helps = {a.dest: a.help for a in action._choices_actions}
    return [(name, helps[name], sub) for name, sub in action.choices.items()]


def _leaf_commands(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """(one-line help, parser) of every command that runs something: ``models`` stands for
    its actions."""
    found = []
    for _, help, sub in _subcommands(parser):
        found += _leaf_commands(sub) if _subcommands(sub) else [(help, sub)]
    return found


def cli_summary(width: int = 90) -> str:
    """The README's summary of the command line, made from the parser: each command's usage
    (less ``-h`` and ``--db PATH``, which the text under the block explains), wrapped at
    ``width`` between its options, then its help indented."""
    lines = []
    for help, sub in _leaf_commands(_parser()):
        usage = " ".join(sub.format_usage().split()).removeprefix(f"usage: {sub.prog}")
        usage = usage.replace(" [-h]", "").replace(" [--db PATH]", "")
        # "[--lookback-days D | --all]" and "--owner ID" are each one piece.
        lines.append(sub.prog)
        for piece in re.findall(r"\[[^]]*\]|--\S+ [A-Z]\w*|\S+", usage):
            if len(lines[-1]) + 1 + len(piece) > width:
                lines.append(" " * len(sub.prog))
            lines[-1] += f" {piece}"
        lines.append(f"    {help}")
    return "\n".join(lines) + "\n"


def test_the_readme_summary_is_made_from_the_parser():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    found = re.search(r"^## Command line\n\n```text\n(.*?)^```$", readme, re.DOTALL | re.MULTILINE)
    assert found, "README.md has no ```text block right under '## Command line'"
    assert found.group(1) == cli_summary(), (
        "README.md's Command line block differs from the parser; the block should read:\n"
        + cli_summary()
    )


@pytest.mark.parametrize("argv", [[], ["models"]])
def test_help_lists_each_command_with_its_help(capsys, argv):
    parser = _parser()
    for name in argv:
        [parser] = [sub for n, _, sub in _subcommands(parser) if n == name]
    with pytest.raises(SystemExit) as exc:
        main([*argv, "--help"])
    assert exc.value.code == 0
    out = " ".join(capsys.readouterr().out.split())  # however argparse wrapped it
    commands = _subcommands(parser)
    assert commands
    for name, help, _ in commands:
        assert f" {name} {help} " in f" {out} "
