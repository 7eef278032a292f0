"""Model downloads against a local server that answers like the Hub, stalls, drops the
connection, fails or lies about a hash: the download is bounded in time, retried a bounded
number of times, says what it fetches, and never leaves half a model where resolve() looks."""

from __future__ import annotations

import json
import threading
from pathlib import Path

import pytest
from fake_hub import COMMIT, FakeHub

from localmem import ModelError, models
from localmem import download as downloads
from localmem.models import resolve

REPO = "sentence-transformers/all-MiniLM-L6-v2"
ONNX = "onnx/model.onnx"


@pytest.fixture(autouse=True)
def online(tmp_path, monkeypatch):
    """Own empty caches, downloads allowed, no LOCALMEM_MODELS_DIR; HF_ENDPOINT is set by
    each test to its local server."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf-cache"))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    monkeypatch.delenv("LOCALMEM_MODELS_DIR", raising=False)
    monkeypatch.delenv(downloads.TIMEOUT_ENV, raising=False)
    monkeypatch.delenv(downloads.ATTEMPTS_ENV, raising=False)
    monkeypatch.setattr(downloads.Settings, "__init__", _fast_backoff(downloads.Settings.__init__))


def _fast_backoff(init):
    """Settings with a 10 ms back-off: the tests count attempts, they do not wait them out."""
    def __init__(self, timeout=downloads.DEFAULT_TIMEOUT, attempts=downloads.DEFAULT_ATTEMPTS, backoff=0.01):
        init(self, timeout=timeout, attempts=attempts, backoff=backoff)
    return __init__


@pytest.fixture
def repo_files(tiny_models) -> dict[str, bytes]:
    """The tiny test embedder laid out as all-MiniLM-L6-v2's Hub repo (some optional files
    left out: the repo does not have to publish them)."""
    folder = tiny_models.embedder
    return {
        ONNX: (folder / "model.onnx").read_bytes(),
        "tokenizer.json": (folder / "tokenizer.json").read_bytes(),
        "config.json": (folder / "config.json").read_bytes(),
    }


def serve(monkeypatch, files: dict[str, bytes], **options) -> FakeHub:
    hub = FakeHub(REPO, files, lfs={ONNX}, **options)
    monkeypatch.setenv("HF_ENDPOINT", hub.url)
    return hub


def guarded(call, what: str):
    """``call()`` in a thread, so a hang fails the test instead of stopping the suite;
    returns what it returns, raises what it raises."""
    outcome: dict = {}

    def run():
        try:
            outcome["value"] = call()
        except BaseException as exc:  # noqa: BLE001 - handed to the test
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(120)
    assert not thread.is_alive(), f"{what} hung"
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def resolve_guarded(**kwargs):
    return guarded(lambda: resolve("all-MiniLM-L6-v2", **kwargs), "resolve()")


def target() -> Path:
    return models.cache_dir() / "models" / "all-MiniLM-L6-v2"


def leftovers() -> list[Path]:
    root = models.cache_dir() / "models"
    return sorted(root.iterdir()) if root.exists() else []


# -- it never hangs ----------------------------------------------------------------------------


def test_a_server_that_accepts_and_never_answers_times_out(monkeypatch, capsys):
    with serve(monkeypatch, {}, stall_everything=True) as hub, pytest.raises(ModelError) as info:
        resolve_guarded(timeout=0.3, attempts=2)
    text = str(info.value)
    # One error listing every place tried, the download's reason, and the settings to change.
    for needle in ["LOCALMEM_MODELS_DIR: not set", "Hugging Face cache", "localmem downloads",
                   f"download of {REPO} into {target()}: failed", "no data for 0.3 s",
                   "2 attempts, timeout 0.3 s", "LOCALMEM_DOWNLOAD_TIMEOUT", "LOCALMEM_DOWNLOAD_ATTEMPTS"]:
        assert needle in text, needle
    assert len(hub.paths(ONNX)) == 2  # tried exactly `attempts` times, then gave up
    err = capsys.readouterr().err
    assert f"localmem: downloading all-MiniLM-L6-v2 ({REPO}" in err and hub.url in err
    assert "attempt 1 of 2 failed (no data for 0.3 s)" in err
    assert leftovers() == []  # nothing half-made where resolve() looks, no staging left


def test_settings_come_from_the_environment_and_are_checked(monkeypatch):
    monkeypatch.setenv(downloads.TIMEOUT_ENV, "0.2")
    monkeypatch.setenv(downloads.ATTEMPTS_ENV, "1")
    with (serve(monkeypatch, {}, stall_everything=True) as hub,
          pytest.raises(ModelError, match=r"1 attempt, timeout 0.2 s")):
        resolve_guarded()
    assert len(hub.requests) == 1
    for name, value, message in [
        (downloads.TIMEOUT_ENV, "soon", "is not a number"), (downloads.TIMEOUT_ENV, "0", "positive"),
        (downloads.TIMEOUT_ENV, "-1", "positive"), (downloads.TIMEOUT_ENV, "inf", "positive"),
        (downloads.TIMEOUT_ENV, "nan", "positive"), (downloads.ATTEMPTS_ENV, "0", "from 1 to"),
        (downloads.ATTEMPTS_ENV, "2.5", "is not an int"),
    ]:
        monkeypatch.setenv(name, value)
        with pytest.raises(ModelError, match=message):
            resolve()
        monkeypatch.delenv(name)
    with pytest.raises(ModelError, match="positive"):
        resolve(timeout=0)
    with pytest.raises(ModelError, match="from 1 to"):
        resolve(attempts=True)


# -- it downloads, checks, and places atomically ---------------------------------------------


def test_download_places_checked_files_and_the_next_resolve_finds_them(monkeypatch, capsys, repo_files):
    with serve(monkeypatch, repo_files) as hub:
        files = resolve_guarded(timeout=5)
        assert files.source == "download" and files.directory == target()
        assert files.onnx_path.read_bytes() == repo_files[ONNX]
        assert files.tokenizer_path.read_bytes() == repo_files["tokenizer.json"]
        manifest = json.loads((target() / downloads.MANIFEST).read_text())
        assert manifest["repo"] == REPO and manifest["commit"] == COMMIT
        assert set(manifest["files"]) == set(repo_files)  # optional files it lacks: skipped
        asked = len(hub.requests)
        again = resolve("all-MiniLM-L6-v2")
        assert again.source == "localmem_cache" and again.directory == target()
        assert len(hub.requests) == asked  # no second download
    err = capsys.readouterr().err
    size = len(repo_files[ONNX])
    assert f"  {ONNX}: {downloads._size(size)}" in err  # what it fetches, with its size
    assert "sentence_bert_config.json: not published" in err
    assert "localmem: downloaded all-MiniLM-L6-v2: 3 files" in err
    assert leftovers() == [target()]
    assert models.check_onnx(files.onnx_path) is not None  # what it downloaded loads


def test_download_reports_progress_to_a_callback(monkeypatch, repo_files):
    seen = []
    with serve(monkeypatch, repo_files):
        resolve_guarded(timeout=5, progress=seen.append)
    assert {p.task for p in seen} == {"download"} and seen[-1].finished
    last = {}
    for p in seen:  # the last report of each file counts all its bytes
        if p.stage is not None:
            last[p.stage] = p
    assert last[ONNX].done == last[ONNX].total == len(repo_files[ONNX]) and last[ONNX].unit == "bytes"


def test_a_dropped_connection_resumes_where_it_stopped(monkeypatch, repo_files, capsys):
    with serve(monkeypatch, repo_files) as hub:
        hub.fault(ONNX, "drop")
        files = resolve_guarded(timeout=5, attempts=2)
    assert files.onnx_path.read_bytes() == repo_files[ONNX]  # and its sha256 was checked
    ranges = [r for _, r in hub.paths(ONNX) if r]
    assert ranges and ranges[-1] != "bytes=0-"  # the second attempt asked for the rest only
    assert "attempt 1 of 2 failed" in capsys.readouterr().err


def test_a_server_error_is_retried(monkeypatch, repo_files):
    with serve(monkeypatch, repo_files) as hub:
        hub.fault("tokenizer.json", 503, 429)
        files = resolve_guarded(timeout=5, attempts=3)
    assert files.tokenizer_path.read_bytes() == repo_files["tokenizer.json"]
    assert len(hub.paths("tokenizer.json")) == 3


def test_retries_are_bounded(monkeypatch, repo_files):
    with serve(monkeypatch, repo_files) as hub:
        hub.fault("tokenizer.json", 503, 503, 503)
        with pytest.raises(ModelError, match=r"HTTP 503 .*3 attempts"):
            resolve_guarded(timeout=5, attempts=3)
    assert len(hub.paths("tokenizer.json")) == 3
    assert leftovers() == []


def test_a_damaged_download_is_refused_and_not_retried(monkeypatch, repo_files):
    with serve(monkeypatch, repo_files) as hub:
        hub.fault(ONNX, "bad-sha")
        with pytest.raises(ModelError, match="sha256 .* differs from the Hub's"):
            resolve_guarded(timeout=5, attempts=3)
    assert len([p for p, _ in hub.paths(ONNX) if "/resolve/" in p]) == 1
    assert leftovers() == []


def test_a_required_file_the_repo_lacks_fails_at_once(monkeypatch, repo_files):
    del repo_files["tokenizer.json"]
    with (serve(monkeypatch, repo_files) as hub,
          pytest.raises(ModelError, match=r"has no tokenizer.json .*HTTP 404")):
        resolve_guarded(timeout=5, attempts=3)
    assert len(hub.paths("tokenizer.json")) == 1
    assert leftovers() == []


def test_an_incomplete_folder_in_the_way_is_replaced(monkeypatch, repo_files):
    """A folder without the manifest (a copy interrupted by hand, say) is not a model."""
    target().mkdir(parents=True)
    (target() / "tokenizer.json").write_text("{}")
    with serve(monkeypatch, repo_files):
        files = resolve_guarded(timeout=5)
    assert files.source == "download"
    assert files.tokenizer_path.read_bytes() == repo_files["tokenizer.json"]


def test_offline_an_earlier_download_is_still_found(monkeypatch, repo_files):
    with serve(monkeypatch, repo_files):
        resolve_guarded(timeout=5)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert resolve("all-MiniLM-L6-v2").source == "localmem_cache"


# -- the command line ------------------------------------------------------------------------


def test_cli_models_download_prints_the_folder(monkeypatch, repo_files, run):
    with serve(monkeypatch, repo_files):
        code, out, err = run("models", "download", "all-MiniLM-L6-v2", "--timeout", "5")
    assert code == 0, err
    assert Path(out.strip()) == target() and (target() / downloads.MANIFEST).is_file()
    assert "localmem: downloading all-MiniLM-L6-v2" in err and f"{ONNX}:" in err


def test_cli_models_download_against_a_stalling_server_fails_with_the_error(monkeypatch, run):
    with serve(monkeypatch, {}, stall_everything=True) as hub:
        code, out, err = run("models", "download", "all-MiniLM-L6-v2", "--timeout", "0.2",
                             "--attempts", "1")
    assert code == 1 and out == ""
    assert "localmem: error: cannot find model 'all-MiniLM-L6-v2'" in err
    assert "no data for 0.2 s (1 attempt, timeout 0.2 s)" in err
    assert len(hub.requests) == 1


def test_flush_on_a_stalling_network_ends_with_the_error(monkeypatch, tmp_path):
    """The quickstart's flush(): the worker's download gives up, and flush() says why."""
    from localmem import Memory, ModelNotFoundError

    monkeypatch.setenv(downloads.TIMEOUT_ENV, "0.2")
    monkeypatch.setenv(downloads.ATTEMPTS_ENV, "2")
    with serve(monkeypatch, {}, stall_everything=True) as hub, Memory(tmp_path / "m.db") as mem:
        mem.add("user", "hello", conversation_id="c", owner_id="u")
        with pytest.raises(ModelNotFoundError, match=r"no data for 0.2 s \(2 attempts"):
            guarded(mem.flush, "flush()")
    assert len(hub.requests) >= 2
