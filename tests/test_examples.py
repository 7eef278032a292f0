from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from real_model import needs_minilm

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def test_quickstart_runs_and_shows_a_hot_window_hit(tmp_path):
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / "quickstart.py")],
        capture_output=True, text=True, encoding="utf-8", timeout=120, cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "retry returned the stored message: True msg-0003" in out
    assert "call 1: strategy=recent_history cache_hit=False" in out
    assert "call 2: strategy=recent_history cache_hit=True" in out
    assert out.count("context_summary: Loaded 3 recent messages from last 7 days") == 2
    assert "latency_ms=" in out and "feature=hotel_search" in out
    # The example cleans up after itself. (onnxruntime 1.2x+ writes its own telemetry
    # session file, .ses, into TMPDIR whenever it creates a session; that one is not ours.)
    assert [p.name for p in tmp_path.iterdir() if p.name != ".ses"] == []


@needs_minilm
def test_the_readme_example_runs_and_finds_the_pizza_messages(tmp_path):
    readme = (EXAMPLES.parent / "README.md").read_text()
    code = re.search(r"```python\n(from localmem import Memory.*?)```", readme, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8",
        timeout=300, cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("recent user Weather is nice today")
    assert sorted(line.split(" ", 2)[2].rsplit(" ", 1)[0] for line in lines[1:3]) == [
        "Best pizza in town", "I love pizza napolitana",
    ]
    assert lines[3].startswith("Loaded 1 recent + 2 semantic messages")


def run_example(tmp_path, script: str, *args: str) -> str:
    """examples/<script>'s output (it must succeed), run in its own temporary folder."""
    done = subprocess.run(
        [sys.executable, str(EXAMPLES / script), *args], capture_output=True, text=True,
        encoding="utf-8", timeout=300, cwd=tmp_path, env={**os.environ, "TMPDIR": str(tmp_path)}, check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_auto_example_without_a_model(tmp_path):
    out = run_example(tmp_path, "auto_strategy.py", "--no-model")
    assert '"thanks, that helps!" -> session_only (small_talk' in out
    assert '"what did you just suggest?" -> recent_history (recent_reference' in out
    assert '"Hang on, what about my allergy?" -> cross_conversation' in out
    assert "[meal-prep] I'm pescatarian, and I have a severe peanut allergy." in out
    assert "4 calls logged; chosen by auto: 75%" in out and "('recent_history', 'caller', 1)" in out


@needs_minilm
def test_auto_example_with_the_model(tmp_path):
    out = run_example(tmp_path, "auto_strategy.py")
    assert '"Hang on, what about my allergy?" -> cross_conversation (closer_elsewhere, confident)' in out
    assert "why auto chose:" in out and "closer_elsewhere (1)" in out


def check_chat_loop(out: str) -> None:
    turns = re.findall(r"^turn +(\d+): +(\d+)/700 tokens", out, re.MULTILINE)
    assert [int(n) for n, _ in turns] == list(range(1, 11))
    assert all(0 < int(total) <= 700 for _, total in turns)  # never over the budget
    assert int(turns[-1][1]) > 600  # and the budget is used once the chat is long
    folded = int(re.search(r"running summary v\d+, (\d+) messages folded in", out).group(1))
    assert folded >= 8
    assert "user: Flights from Berlin to Lisbon cost 180 euros in May" in out.split("running summary", 1)[1]
    assert "alternating turns, first user, last user" in out
    assert out.rstrip().endswith('{"role": "user", "content": "Where can I stay in Porto?"}')


def test_chat_loop_example_without_a_model(tmp_path):
    out = run_example(tmp_path, "chat_loop.py", "--no-model")
    check_chat_loop(out)


@needs_minilm
def test_chat_loop_example_with_the_model_recalls_the_earlier_chat(tmp_path):
    out = run_example(tmp_path, "chat_loop.py")
    check_chat_loop(out)
    turn9 = out.split("turn  9:", 1)[1].split("turn 10:", 1)[0]
    assert "by cross_conversation" in turn9 and "a free place to stay in Porto" in turn9


@pytest.mark.parametrize("heading", ["### LangChain", "### LlamaIndex"])
def test_the_readme_integration_snippets_run_as_written(tmp_path, heading):
    readme = (EXAMPLES.parent / "README.md").read_text()
    section = readme.split(heading + "\n", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    done = subprocess.run(
        [sys.executable, "-c", code + "\nprint('ran')"],
        capture_output=True, text=True, encoding="utf-8", timeout=120, cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert done.returncode == 0 and done.stdout.endswith("ran\n"), done.stderr
    assert (tmp_path / "agent.db").exists()
