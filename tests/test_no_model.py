"""A fresh, offline machine with no model: writes and recency work, messages stay queued,
searching by meaning raises one clear error (or runs on keywords when asked), and the
background worker says so in one log line, not a paragraph per retry."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest
from real_model import MINILM, needs_minilm

from localmem import Memory, ModelError, ModelNotFoundError, Strategy
from localmem import download as downloads

ROOT = Path(__file__).resolve().parent.parent
IDS = {"conversation_id": "c1", "owner_id": "u1"}


def no_model_env(tmp_path: Path) -> dict[str, str]:
    """The environment of a fresh offline machine: empty caches, no models dir."""
    env = {k: v for k, v in os.environ.items() if k not in ("LOCALMEM_MODELS_DIR", "HF_ENDPOINT")}
    env.update(HF_HUB_OFFLINE="1", HOME=str(tmp_path / "home"), XDG_CACHE_HOME=str(tmp_path / "cache"),
               XDG_DATA_HOME=str(tmp_path / "data"), HF_HUB_CACHE=str(tmp_path / "hf"), HF_HOME=str(tmp_path / "hf"))
    return env


@pytest.fixture
def no_model(tmp_path, monkeypatch):
    from huggingface_hub import constants

    for key, value in no_model_env(tmp_path).items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("LOCALMEM_MODELS_DIR", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(downloads, "fetch", lambda *a, **k: pytest.fail("a download was tried offline"))


def test_the_quickstart_runs_and_says_one_line_about_the_model(tmp_path):
    done = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py")], capture_output=True, check=False,
                          text=True, timeout=120, env=no_model_env(tmp_path))
    assert done.returncode == 0, done.stderr
    assert "cache_hit=True" in done.stdout
    # At most the worker's one line: none when the script closes the Memory before the
    # worker has tried to load the model (the once-only warning itself is tested below).
    lines = done.stderr.splitlines()
    assert len(lines) <= 1, done.stderr
    assert all("no embedding model 'all-MiniLM-L6-v2'" in line and "recent history works" in line
               for line in lines)
    assert "Traceback" not in done.stderr


def test_without_a_model_writes_and_recency_work_and_search_says_why(no_model, tmp_path, caplog):
    caplog.set_level(logging.DEBUG, logger="localmem")
    with Memory(tmp_path / "m.db") as mem:
        for text in ("I love pizza napolitana", "Best pizza in town", "Weather is nice today"):
            mem.add("user", text, **IDS)
        recent = mem.get_memory(Strategy.RECENT_HISTORY, limit=10, **IDS)
        assert [m.content for m in recent.messages][-1] == "Weather is nice today"
        for _ in range(2):  # flush() retries at once, and fails the same way
            with pytest.raises(ModelNotFoundError, match="Looked in:") as info:
                mem.flush()
        assert info.value.model == "all-MiniLM-L6-v2" and isinstance(info.value, ModelError)
        for strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
            with pytest.raises(ModelNotFoundError, match="LOCALMEM_MODELS_DIR"):
                mem.get_memory(strategy, query="pizza", **IDS)
            keywords = mem.get_memory(strategy, query="pizza", dense=False, **IDS)
            assert {"I love pizza napolitana", "Best pizza in town"} <= {m.content for m in keywords.messages}
        assert mem.stats()["pending_vectors"] == 3  # queued, nothing lost
    warnings = [r for r in caplog.records if r.name == "localmem.indexer" and r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]  # once, not per retry
    assert "\n" not in warnings[0].getMessage()


def test_the_advice_names_options_that_exist(no_model, tmp_path):
    with Memory(tmp_path / "m.db") as mem:
        mem.add("user", "hello", **IDS)
        with pytest.raises(ModelNotFoundError) as info:
            mem.get_memory(Strategy.SEMANTIC_SEARCH, query="hello", **IDS)
    text = str(info.value)
    assert "--path" not in text  # neither Memory nor `localmem search`/`demo` has one
    assert 'embedder=localmem.load_embedder(path="FOLDER")' in text
    assert "LOCALMEM_MODELS_DIR=DIR" in text and "localmem models download all-MiniLM-L6-v2" in text
    import localmem

    assert callable(localmem.load_embedder)  # the advice's API exists


@needs_minilm
def test_queued_messages_are_embedded_once_a_model_appears(no_model, tmp_path, monkeypatch):
    with Memory(tmp_path / "m.db") as mem:
        mem.add("user", "I love pizza napolitana", **IDS)
        mem.add("user", "Weather is nice today", **IDS)
        with pytest.raises(ModelNotFoundError):
            mem.flush()
        monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(MINILM.parent))
        mem.flush()
        assert mem.stats()["pending_vectors"] == 0
        found = mem.get_memory(Strategy.SEMANTIC_SEARCH, query="favourite food", keyword=False, limit=1, **IDS)
        assert found.messages[0].content == "I love pizza napolitana"
