"""The model registry and resolution (localmem.models) and `localmem models`. No network:
every test runs with HF_HUB_OFFLINE=1 unless it says otherwise, and a guard fails any test
that lets huggingface_hub try the network."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from real_model import HAVE_MINILM, MINILM, needs_minilm

from localmem import ModelError, models
from localmem import download as downloads
from localmem.models import (
    DEFAULT_EMBEDDER,
    DEFAULT_RERANKER,
    REGISTRY,
    ModelSpec,
    check_onnx,
    file_sha256,
    folder_spec,
    get_spec,
    int8_path,
    model_identity,
    quantize,
    resolve,
)

SHARED_MODELS = MINILM.parent
MINILM_SHA256 = "2c367d107dda7923d11ff52aa572a01aa5cfdde9639578bd3841c9122c345732"
COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture(autouse=True)
def offline(tmp_path, monkeypatch):
    """Every test: its own empty HF cache and localmem cache, HF_HUB_OFFLINE=1, no
    LOCALMEM_MODELS_DIR, and snapshot_download refusing anything but local lookups, and
    localmem's own download failing the test."""
    import huggingface_hub
    from huggingface_hub import constants

    hf_cache = tmp_path / "hf-cache"
    monkeypatch.setenv("HF_HUB_CACHE", str(hf_cache))
    # huggingface_hub reads HF_HUB_CACHE / HF_HUB_OFFLINE once, at import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hf_cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # platformdirs' cache
    monkeypatch.delenv("LOCALMEM_MODELS_DIR", raising=False)

    real = huggingface_hub.snapshot_download

    def guarded(*args, **kwargs):
        if not kwargs.get("local_files_only"):
            pytest.fail(f"snapshot_download tried the network: {args} {kwargs}")
        return real(*args, **kwargs)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", guarded)

    def no_fetch(spec, *args, **kwargs):
        pytest.fail(f"a download was tried: {spec.name} (tests/test_download.py serves one locally)")

    monkeypatch.setattr(downloads, "fetch", no_fetch)
    return hf_cache


def online(monkeypatch) -> None:
    """Undo HF_HUB_OFFLINE for a test that fakes the download itself."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)


def tiny_folder(folder: Path, *, onnx: str = "model.onnx", config: dict | None = None) -> Path:
    """A folder with placeholder files: enough for resolution (which never loads them)."""
    (folder / onnx).parent.mkdir(parents=True, exist_ok=True)
    (folder / onnx).write_bytes(b"not really onnx")
    (folder / "tokenizer.json").write_text("{}")
    (folder / "config.json").write_text(json.dumps(config or {"hidden_size": 384}))
    return folder


def link_copy(source: Path, target: Path) -> Path:
    """A writable folder whose files are symlinks to ``source``'s (no 90 MB copies)."""
    target.mkdir(parents=True)
    for item in source.iterdir():
        (target / item.name).symlink_to(item)
    return target


def fake_hub_repo(cache: Path, repo: str, files: dict[str, Path | bytes], commit: str = COMMIT) -> Path:
    """The Hugging Face cache layout: models--org--name/{refs/main, blobs/, snapshots/<commit>/}.

    Each snapshot file is a relative symlink to its blob, as huggingface_hub writes them; a
    blob of a real file is itself a symlink to it.
    """
    storage = cache / ("models--" + repo.replace("/", "--"))
    (storage / "refs").mkdir(parents=True)
    (storage / "refs" / "main").write_text(commit)  # no newline, like huggingface_hub
    (storage / "blobs").mkdir()
    snapshot = storage / "snapshots" / commit
    for rel, content in files.items():
        blob = storage / "blobs" / hashlib.sha1(rel.encode()).hexdigest()
        if isinstance(content, Path):
            blob.symlink_to(content)
        else:
            blob.write_bytes(content)
        target = snapshot / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.symlink_to(os.path.relpath(blob, target.parent))
    return snapshot


def minilm_hub_files() -> dict[str, Path | bytes]:
    """all-MiniLM-L6-v2 as its Hub repo lays it out (onnx/model.onnx): the real files when
    the shared folder is here, placeholders otherwise."""
    if HAVE_MINILM:
        return {
            "onnx/model.onnx": MINILM / "model.onnx",
            "tokenizer.json": MINILM / "tokenizer.json",
            "config.json": MINILM / "config.json",
            "sentence_bert_config.json": MINILM / "sentence_bert_config.json",
            "special_tokens_map.json": MINILM / "special_tokens_map.json",
            "tokenizer_config.json": MINILM / "tokenizer_config.json",
        }
    return {"onnx/model.onnx": b"placeholder onnx", "tokenizer.json": b"{}", "config.json": b"{}"}


# -- registry --------------------------------------------------------------------------------


EXPECTED = [
    # name, repo, kind, dim, pooling, max_length, query_prefix, document_prefix, license
    ("all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2", "embedder", 384, "mean", 256,
     "", "", "Apache-2.0"),
    ("bge-small-en-v1.5", "BAAI/bge-small-en-v1.5", "embedder", 384, "cls", 512,
     "Represent this sentence for searching relevant passages: ", "", "MIT"),
    ("multilingual-e5-small", "intfloat/multilingual-e5-small", "embedder", 384, "mean", 512,
     "query: ", "passage: ", "MIT"),
    ("paraphrase-multilingual-MiniLM-L12-v2",
     "sentence-transformers/paraphrase-multilingual-MiniLM-L12-v2", "embedder", 384, "mean", 128,
     "", "", "Apache-2.0"),
    ("ms-marco-MiniLM-L-6-v2", "cross-encoder/ms-marco-MiniLM-L-6-v2", "reranker", None, None, 512,
     "", "", "Apache-2.0"),
    ("ms-marco-TinyBERT-L-2-v2", "cross-encoder/ms-marco-TinyBERT-L-2-v2", "reranker", None, None,
     512, "", "", "Apache-2.0"),
    ("mmarco-mMiniLMv2-L12-H384-v1", "cross-encoder/mmarco-mMiniLMv2-L12-H384-v1", "reranker", None,
     None, 512, "", "", "Apache-2.0"),
]


@pytest.mark.parametrize("row", EXPECTED, ids=[r[0] for r in EXPECTED])
def test_registry_entry(row):
    name, repo, kind, dim, pooling, max_length, query_prefix, document_prefix, license = row
    spec = get_spec(name)
    assert (spec.name, spec.repo, spec.kind, spec.dim, spec.pooling, spec.max_length) == (
        name, repo, kind, dim, pooling, max_length)
    assert (spec.query_prefix, spec.document_prefix, spec.license) == (
        query_prefix, document_prefix, license)
    assert spec.onnx_file == "onnx/model.onnx" and spec.tokenizer_file == "tokenizer.json"
    assert "config.json" in spec.extra_files and spec.description
    assert spec.normalize and not spec.prefer_int8


def test_registry_is_exactly_the_table_and_names_are_unique():
    assert list(REGISTRY) == [r[0] for r in EXPECTED]
    assert all(key == spec.name for key, spec in REGISTRY.items())
    assert len({s.repo for s in REGISTRY.values()}) == len(REGISTRY)
    assert REGISTRY["all-MiniLM-L6-v2"].extra_files == (
        "config.json", "sentence_bert_config.json", "special_tokens_map.json", "tokenizer_config.json")


def test_defaults_exist_with_their_kinds():
    assert get_spec(DEFAULT_EMBEDDER).kind == "embedder"
    assert get_spec(DEFAULT_RERANKER).kind == "reranker"


def test_get_spec_unknown_lists_every_known_name():
    with pytest.raises(ModelError) as info:
        get_spec("all-MiniLM-L12-v9")
    assert "all-MiniLM-L12-v9" in str(info.value)
    for name in REGISTRY:
        assert name in str(info.value)


@pytest.mark.parametrize("bad", [
    {"kind": "encoder"}, {"pooling": "max"}, {"max_length": 0}, {"dim": -1}, {"name": "a/b"},
    {"extra_files": ["config.json"]},
])
def test_model_spec_rejects_bad_fields(bad):
    fields = {"name": "m", "kind": "embedder", "repo": None, **bad}
    with pytest.raises(ModelError):
        ModelSpec(**fields)


def test_specs_are_frozen():
    with pytest.raises(dataclasses.FrozenInstanceError):
        get_spec(DEFAULT_EMBEDDER).dim = 1


# -- resolution: the Hugging Face cache -----------------------------------------------------


def test_resolves_from_an_offline_hugging_face_cache(offline):
    snapshot = fake_hub_repo(offline, "sentence-transformers/all-MiniLM-L6-v2", minilm_hub_files())
    files = resolve("all-MiniLM-L6-v2")
    assert files.source == "hf_cache"
    assert files.spec is get_spec("all-MiniLM-L6-v2")
    assert files.directory == snapshot
    assert files.onnx_path == snapshot / "onnx" / "model.onnx"
    assert files.tokenizer_path == snapshot / "tokenizer.json"
    assert resolve() == files  # the default embedder
    if not HAVE_MINILM:
        pytest.skip(f"check_onnx needs the real model, not in {MINILM}")
    session = check_onnx(files.onnx_path)
    assert {i.name for i in session.get_inputs()} >= {"input_ids", "attention_mask"}
    assert model_identity(files)["sha256"] == MINILM_SHA256


def test_resolves_from_localmem_own_hub_cache():
    hub = models.cache_dir() / "hub"
    snapshot = fake_hub_repo(hub, "cross-encoder/ms-marco-MiniLM-L-6-v2", {
        "onnx/model.onnx": b"placeholder", "tokenizer.json": b"{}", "config.json": b"{}"})
    files = resolve(kind="reranker")
    assert (files.source, files.directory, files.spec.name) == ("hf_cache", snapshot, DEFAULT_RERANKER)


def test_incomplete_snapshot_is_reported_not_used(offline):
    fake_hub_repo(offline, "sentence-transformers/all-MiniLM-L6-v2", {"tokenizer.json": b"{}"})
    with pytest.raises(ModelError) as info:
        resolve("all-MiniLM-L6-v2")
    assert "no onnx/model.onnx or model.onnx in" in str(info.value)


def test_empty_onnx_in_the_cache_is_reported(offline):
    fake_hub_repo(offline, "BAAI/bge-small-en-v1.5", {"onnx/model.onnx": b"", "tokenizer.json": b"{}"})
    with pytest.raises(ModelError, match=r"empty \(0 bytes\)"):
        resolve("bge-small-en-v1.5")


# -- resolution: LOCALMEM_MODELS_DIR and path ---------------------------------------------------


@needs_minilm
def test_models_dir_finds_the_shared_flat_folder(monkeypatch):
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(SHARED_MODELS))
    files = resolve("all-MiniLM-L6-v2")
    assert files.source == "models_dir"
    assert files.directory == MINILM
    assert files.onnx_path == MINILM / "model.onnx"
    assert files.tokenizer_path == MINILM / "tokenizer.json"


def test_models_dir_comes_before_the_hf_cache(tmp_path, monkeypatch, offline):
    fake_hub_repo(offline, "sentence-transformers/all-MiniLM-L6-v2", minilm_hub_files())
    tiny_folder(tmp_path / "models" / "all-MiniLM-L6-v2")
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "models"))
    assert resolve().source == "models_dir"
    # A broken folder there is skipped (and would be reported), the cache still answers.
    (tmp_path / "models" / "all-MiniLM-L6-v2" / "model.onnx").write_bytes(b"")
    assert resolve().source == "hf_cache"


def test_models_dir_holds_an_unregistered_model(tmp_path, monkeypatch):
    tiny_folder(tmp_path / "models" / "my-model", config={"hidden_size": 48})
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "models"))
    files = resolve("my-model")
    assert (files.source, files.spec.name, files.spec.dim, files.spec.repo) == (
        "models_dir", "my-model", 48, None)
    with pytest.raises(ModelError, match="unknown model 'other'.*all-MiniLM-L6-v2"):
        resolve("other")


def test_path_forms(tmp_path, monkeypatch):
    flat = tiny_folder(tmp_path / "flat")
    hub_like = tiny_folder(tmp_path / "hub-like", onnx="onnx/model.onnx")
    for given, folder, onnx in [
        (flat, flat, flat / "model.onnx"),
        (str(flat / "model.onnx"), flat, flat / "model.onnx"),
        (hub_like, hub_like, hub_like / "onnx" / "model.onnx"),
        (hub_like / "onnx" / "model.onnx", hub_like, hub_like / "onnx" / "model.onnx"),
    ]:
        files = resolve(path=given)
        assert (files.source, files.directory, files.onnx_path) == ("path", folder, onnx)
        assert files.tokenizer_path == folder / "tokenizer.json"
        assert files.spec.repo is None and files.spec.name == folder.name  # folder_spec
    # A registered name with a path keeps the registry spec (prefixes, pooling, license).
    files = resolve("bge-small-en-v1.5", path=flat)
    assert files.spec is get_spec("bge-small-en-v1.5") and files.directory == flat
    # So does a folder named after a registered model of the kind asked for.
    named = tiny_folder(tmp_path / "multilingual-e5-small")
    assert resolve(path=named).spec is get_spec("multilingual-e5-small")
    assert resolve(path=named, kind="reranker").spec.repo is None
    # An unregistered name names the folder spec.
    assert resolve("mine", path=flat).spec.name == "mine"


def test_path_is_final_even_when_elsewhere_would_work(tmp_path, monkeypatch):
    tiny_folder(tmp_path / "models" / "all-MiniLM-L6-v2")
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelError, match="does not exist"):
        resolve(path=tmp_path / "nowhere")
    empty = tiny_folder(tmp_path / "empty")
    (empty / "model.onnx").write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty \(0 bytes\)"):
        resolve(path=empty)
    (empty / "model.onnx").write_bytes(b"x")
    (empty / "tokenizer.json").unlink()
    with pytest.raises(ModelError, match="no tokenizer.json"):
        resolve(path=empty)


def test_kind_mismatch_is_an_error():
    with pytest.raises(ModelError, match="is a reranker, not an embedder"):
        resolve("ms-marco-MiniLM-L-6-v2")
    with pytest.raises(ModelError, match="kind must be one of"):
        resolve(kind="generator")


# -- resolution: nothing anywhere ------------------------------------------------------------


def test_missing_everywhere_names_every_place_and_fix(offline, tmp_path, monkeypatch):
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "models"))
    with pytest.raises(ModelError) as info:
        resolve("all-MiniLM-L6-v2")  # the autouse guard fails the test on a network try
    text = str(info.value)
    for needle in [
        "LOCALMEM_MODELS_DIR", str(tmp_path / "models" / "all-MiniLM-L6-v2"),
        str(offline), str(models.cache_dir() / "hub"),
        "sentence-transformers/all-MiniLM-L6-v2", "path=",
        "localmem models download all-MiniLM-L6-v2", "unset HF_HUB_OFFLINE",
    ]:
        assert needle in text, needle


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_hf_hub_offline_env_is_read_like_huggingface_hub(monkeypatch, value):
    online(monkeypatch)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    with pytest.raises(ModelError, match="not tried, HF_HUB_OFFLINE is set"):
        resolve()


def test_download_false_never_reaches_the_network(monkeypatch):
    online(monkeypatch)
    with pytest.raises(ModelError, match=r"not tried \(download=False\)") as info:
        resolve(download=False)
    assert "LOCALMEM_MODELS_DIR: not set" in str(info.value)


def test_cache_dir_is_private():
    path = models.cache_dir()
    assert path.is_dir() and (path.stat().st_mode & 0o777) == 0o700
    assert path.name == "localmem"


# -- loading: check_onnx ---------------------------------------------------------------------


def test_corrupt_onnx_is_a_model_error(tmp_path):
    bad = tmp_path / "model.onnx"
    bad.write_bytes(os.urandom(4096))
    with pytest.raises(ModelError) as info:
        check_onnx(bad)
    assert str(bad) in str(info.value) and "delete it" in str(info.value)
    assert type(info.value.__cause__).__module__.startswith("onnxruntime")


def test_empty_and_missing_onnx_are_model_errors(tmp_path):
    empty = tmp_path / "model.onnx"
    empty.write_bytes(b"")
    with pytest.raises(ModelError, match=r"empty \(0 bytes\)"):
        check_onnx(empty)
    with pytest.raises(ModelError, match="does not exist"):
        check_onnx(tmp_path / "missing.onnx")


def test_check_onnx_loads_a_tiny_model(tiny_models):
    session = check_onnx(tiny_models.embedder / "model.onnx")
    assert session.get_outputs()[0].name == "last_hidden_state"


# -- folder_spec ------------------------------------------------------------------------------


def test_folder_spec_reads_the_config_files(tmp_path):
    folder = tiny_folder(tmp_path / "mine", config={"hidden_size": 48, "max_position_embeddings": 64})
    spec = folder_spec(folder, kind="embedder")
    assert (spec.name, spec.kind, spec.repo, spec.dim, spec.max_length, spec.pooling) == (
        "mine", "embedder", None, 48, 64, "mean")
    assert spec.onnx_file == "model.onnx" and spec.extra_files == ("config.json",)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 40}')
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text('{"pooling_mode_cls_token": true}')
    (folder / "config_sentence_transformers.json").write_text(
        '{"prompts": {"query": "query: ", "document": "passage: "}}')
    spec = folder_spec(folder, kind="embedder", name="renamed", normalize=False)
    assert (spec.name, spec.max_length, spec.pooling, spec.normalize) == ("renamed", 40, "cls", False)
    assert (spec.query_prefix, spec.document_prefix) == ("query: ", "passage: ")
    assert folder_spec(folder, kind="embedder", dim=7, max_length=9).dim == 7
    reranker = folder_spec(folder, kind="reranker")
    assert (reranker.dim, reranker.pooling) == (None, None)


def test_folder_spec_roberta_positions_and_default(tmp_path):
    roberta = tiny_folder(tmp_path / "r", config={
        "hidden_size": 384, "max_position_embeddings": 514, "model_type": "xlm-roberta"})
    assert folder_spec(roberta, kind="reranker").max_length == 512
    bare = tiny_folder(tmp_path / "b", config={"hidden_size": 8})
    assert folder_spec(bare, kind="embedder").max_length == 512


def test_folder_spec_errors(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        folder_spec(tmp_path / "nowhere", kind="embedder")
    (tmp_path / "no-onnx").mkdir()
    with pytest.raises(ModelError, match="no ONNX model"):
        folder_spec(tmp_path / "no-onnx", kind="embedder")
    folder = tiny_folder(tmp_path / "bad-json")
    (folder / "config.json").write_text("{not json")
    with pytest.raises(ModelError, match="cannot read"):
        folder_spec(folder, kind="embedder")
    folder = tiny_folder(tmp_path / "ok")
    with pytest.raises(ModelError, match="ModelSpec fields are"):
        folder_spec(folder, kind="embedder", dimension=3)
    with pytest.raises(ModelError, match="kind must be"):
        folder_spec(folder, kind="classifier")


@needs_minilm
def test_folder_spec_on_a_copy_of_the_real_model(tmp_path):
    copy = link_copy(MINILM, tmp_path / "my-minilm")
    spec = folder_spec(copy, kind="embedder")
    assert (spec.name, spec.dim, spec.max_length, spec.pooling) == ("my-minilm", 384, 256, "mean")
    assert "sentence_bert_config.json" in spec.extra_files


def test_folder_spec_on_the_tiny_models(tiny_models):
    spec = folder_spec(tiny_models.embedder, kind="embedder")
    assert (spec.dim, spec.pooling) == (32, "mean") and spec.max_length > 0


# -- hashing and identity ----------------------------------------------------------------------


def test_file_sha256_matches_hashlib_and_follows_changes(tmp_path):
    path = tmp_path / "f.bin"
    data = os.urandom(3 * (1 << 20) + 17)  # crosses chunk boundaries
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()
    path.write_bytes(data + b"!")  # new size: the in-process cache must not answer
    assert file_sha256(path) == hashlib.sha256(data + b"!").hexdigest()
    with pytest.raises(ModelError):
        file_sha256(tmp_path / "missing")


@needs_minilm
def test_file_sha256_of_the_real_model_is_the_published_one_and_cached():
    path = MINILM / "model.onnx"
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    expected = digest.hexdigest()
    assert expected == MINILM_SHA256
    assert file_sha256(path) == expected
    started = time.perf_counter()
    assert file_sha256(path) == expected
    assert time.perf_counter() - started < 0.01  # remembered, not re-read


def test_model_identity(tmp_path):
    folder = tiny_folder(tmp_path / "all-MiniLM-L6-v2")
    files = resolve(path=folder)
    assert model_identity(files) == {
        "name": "all-MiniLM-L6-v2", "dim": 384,
        "sha256": hashlib.sha256(b"not really onnx").hexdigest(),
    }


# -- int8 --------------------------------------------------------------------------------------


def test_int8_path_rule(tmp_path, offline):
    writable = tiny_folder(tmp_path / "writable")
    assert int8_path(writable / "model.onnx") == writable / "model.int8.onnx"
    shared = tiny_folder(tmp_path / "shared" / "all-MiniLM-L6-v2")
    shared.chmod(0o555)
    try:
        fallback = int8_path(shared / "model.onnx")
        assert fallback.parent.parent == models.cache_dir() / "int8"
        assert fallback.parent.name.startswith("all-MiniLM-L6-v2-") and fallback.name == "model.int8.onnx"
        # Two read-only folders of the same name do not share a copy.
        other = tiny_folder(tmp_path / "elsewhere" / "all-MiniLM-L6-v2")
        other.chmod(0o555)
        assert int8_path(other / "model.onnx") != fallback
        # An existing copy beside the model wins over the rule.
        shared.chmod(0o755)
        (shared / "model.int8.onnx").write_bytes(b"x")
        shared.chmod(0o555)
        assert int8_path(shared / "model.onnx") == shared / "model.int8.onnx"
    finally:
        shared.chmod(0o755)
        if (tmp_path / "elsewhere" / "all-MiniLM-L6-v2").exists():
            (tmp_path / "elsewhere" / "all-MiniLM-L6-v2").chmod(0o755)
    # A Hugging Face snapshot belongs to huggingface_hub: the copy goes to localmem's cache.
    snapshot = fake_hub_repo(offline, "BAAI/bge-small-en-v1.5", {"onnx/model.onnx": b"x"})
    in_cache = int8_path(snapshot / "onnx" / "model.onnx")
    assert in_cache.parent.name.startswith("BAAI--bge-small-en-v1.5-")


def test_int8_requested_but_missing_says_how_to_make_it(tmp_path):
    folder = tiny_folder(tmp_path / "mine")
    with pytest.raises(ModelError) as info:
        resolve(path=folder, int8=True)
    assert f"localmem models quantize mine --path {folder}" in str(info.value)
    spec = dataclasses.replace(get_spec(DEFAULT_EMBEDDER), prefer_int8=True)
    with pytest.raises(ModelError, match="localmem models quantize all-MiniLM-L6-v2"):
        resolve(spec=spec, path=folder)
    assert resolve(spec=spec, path=folder, int8=False).onnx_path == folder / "model.onnx"
    (folder / "model.int8.onnx").write_bytes(b"int8")
    assert resolve(spec=spec, path=folder).onnx_path == folder / "model.int8.onnx"
    assert resolve(path=folder).onnx_path == folder / "model.onnx"  # folder_spec: prefer_int8 False


def test_quantize_without_onnx_says_what_to_install(tmp_path, monkeypatch, tiny_models):
    monkeypatch.setitem(sys.modules, "onnxruntime.quantization", None)  # import fails
    folder = shutil.copytree(tiny_models.embedder, tmp_path / "tiny")
    with pytest.raises(ModelError, match=r"pip install 'onnx>=1.15' \(the extra localmem-engine\[quantize\]\)"):
        quantize(resolve(path=folder))


def test_quantize_tiny_model_into_read_only_folder_goes_to_cache(tmp_path, tiny_models):
    folder = shutil.copytree(tiny_models.cross_encoder, tmp_path / "ce")
    folder.chmod(0o555)
    try:
        files = resolve(path=folder, kind="reranker")
        out = quantize(files)
        assert out.parent.parent == models.cache_dir() / "int8" and out.is_file()
        assert (out.parent.stat().st_mode & 0o777) == 0o700
        assert resolve(path=folder, kind="reranker", int8=True).onnx_path == out
        check_onnx(out)
    finally:
        folder.chmod(0o755)


def test_quantize_keeps_an_existing_copy_unless_forced(tmp_path, tiny_models):
    folder = shutil.copytree(tiny_models.embedder, tmp_path / "tiny")
    out = quantize(Path(folder))  # a path works too
    assert out == folder / "model.int8.onnx"
    out.write_bytes(b"stale")
    assert quantize(resolve(path=folder)) == out and out.read_bytes() == b"stale"
    quantize(resolve(path=folder, int8=False), force=True)
    check_onnx(out)
    # Quantizing from the int8 ModelFiles re-reads the fp32 file, not the copy.
    assert quantize(resolve(path=folder, int8=True), force=True) == out
    assert not list(folder.glob(".*tmp*"))  # no temporary file left behind


@needs_minilm
def test_quantize_the_real_model(tmp_path):
    copy = link_copy(MINILM, tmp_path / "all-MiniLM-L6-v2")
    started = time.perf_counter()
    out = quantize(resolve(path=copy))
    took = time.perf_counter() - started
    assert out == copy / "model.int8.onnx"
    assert out.stat().st_size < 0.35 * (MINILM / "model.onnx").stat().st_size
    files = resolve(path=copy, int8=True)
    assert files.onnx_path == out and files.spec is get_spec("all-MiniLM-L6-v2")
    assert check_onnx(out).get_outputs()[0].name == "last_hidden_state"
    assert model_identity(files)["sha256"] != MINILM_SHA256
    assert took < 30, f"quantize took {took:.1f}s"


# -- import weight -------------------------------------------------------------------------------


def test_import_localmem_loads_neither_onnxruntime_nor_huggingface_hub():
    code = ("import localmem, localmem.models, localmem.cli, sys; "
            "assert 'onnxruntime' not in sys.modules and 'huggingface_hub' not in sys.modules, "
            "sorted(m for m in sys.modules if m.startswith(('onnx', 'huggingface')))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 0, done.stderr


# -- CLI -------------------------------------------------------------------------------------------


def test_cli_models_list_shows_every_model_and_where(run, tmp_path, monkeypatch):
    tiny_folder(tmp_path / "models" / "bge-small-en-v1.5")
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(tmp_path / "models"))
    code, out, err = run("models", "list")
    assert code == 0, err
    for name in REGISTRY:
        assert name in out
    [bge] = [line for line in out.splitlines() if line.startswith("bge-small-en-v1.5")]
    assert f"models_dir: {tmp_path / 'models' / 'bge-small-en-v1.5'}" in bge
    code, out, err = run("models", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert rows["bge-small-en-v1.5"]["local"]["source"] == "models_dir"
    assert rows["all-MiniLM-L6-v2"]["local"] is None and rows["all-MiniLM-L6-v2"]["default"]


@needs_minilm
def test_cli_models_info_on_the_shared_model(run, monkeypatch):
    monkeypatch.setenv("LOCALMEM_MODELS_DIR", str(SHARED_MODELS))
    code, out, err = run("models", "info", "all-MiniLM-L6-v2")
    assert code == 0, err
    assert MINILM_SHA256 in out and "models_dir" in out and "90.4 MB" in out
    assert "localmem models quantize all-MiniLM-L6-v2" in out  # no int8 copy in this cache
    code, out, err = run("models", "info", "all-MiniLM-L6-v2", "--json")
    info = json.loads(out)
    assert (info["sha256"], info["dim"], info["max_length"], info["int8"]) == (MINILM_SHA256, 384, 256, None)


def test_cli_models_info_with_path_and_kind(run, tiny_models):
    code, out, err = run("models", "info", "tiny-ce", "--kind", "reranker",
                         "--path", str(tiny_models.cross_encoder))
    assert code == 0, err
    assert file_sha256(tiny_models.cross_encoder / "model.onnx") in out
    assert "reranker" in out and "source            path" in out


def test_cli_models_download_offline_fails_with_the_error(run):
    code, out, err = run("models", "download", "bge-small-en-v1.5")
    assert code == 1 and out == ""
    assert err.startswith("localmem: error: cannot find model 'bge-small-en-v1.5'")
    assert "HF_HUB_OFFLINE" in err and "LOCALMEM_MODELS_DIR" in err


def test_cli_models_unknown_name(run):
    code, _, err = run("models", "info", "nope")
    assert code == 1 and "unknown model 'nope'" in err and "all-MiniLM-L6-v2" in err


@pytest.mark.parametrize("which, kind, quality", [
    ("embedder", "embedder", "mean cosine int8 vs fp32"),
    ("embedder_no_token_types", "embedder", "mean cosine int8 vs fp32"),
    ("cross_encoder", "reranker", "same top document for"),
])
def test_cli_models_quantize_tiny(run, tmp_path, tiny_models, which, kind, quality):
    folder = shutil.copytree(getattr(tiny_models, which), tmp_path / which)
    code, out, err = run("models", "quantize", "tiny", "--kind", kind, "--path", str(folder))
    assert code == 0, err
    assert f"int8 copy {folder / 'model.int8.onnx'}" in out
    assert "size      fp32" in out and "speed     fp32" in out and quality in out
    code, out, err = run("models", "quantize", "tiny", "--kind", kind, "--path", str(folder))
    assert code == 0 and "already there; --force rewrites it" in out
    code, out, err = run("models", "quantize", "tiny", "--kind", kind, "--path", str(folder), "--force")
    assert code == 0 and "already there" not in out


@needs_minilm
def test_cli_models_quantize_the_real_model(run, tmp_path):
    copy = link_copy(MINILM, tmp_path / "minilm")
    code, out, err = run("models", "quantize", "all-MiniLM-L6-v2", "--path", str(copy))
    assert code == 0, err
    assert (copy / "model.int8.onnx").is_file()
    [line] = [x for x in out.splitlines() if x.startswith("quality")]
    assert float(line.split("fp32 ")[1].split()[0]) > 0.98  # mean cosine


def test_cli_models_quantize_missing_model_fails_cleanly(run):
    code, _, err = run("models", "quantize", "all-MiniLM-L6-v2")
    assert code == 1 and err.startswith("localmem: error: cannot find model")
