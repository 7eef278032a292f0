from __future__ import annotations

from collections.abc import Iterator

import pytest

from localmem import Memory
from localmem.cli import main


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """The URI of a PostgreSQL server with pgvector, for the whole session: the one
    ``LOCALMEM_TEST_POSTGRES`` names, else a private one started here and stopped (its
    directory deleted) at the end of the session."""
    from postgres_server import PostgresUnavailable, open_server

    try:
        server = open_server()
    except PostgresUnavailable as exc:
        pytest.fail(f"no PostgreSQL for the tests that need one: {exc}", pytrace=False)
    try:
        yield server.uri
    finally:
        server.stop()


@pytest.fixture
def postgres_url(postgres_server: str) -> Iterator[str]:
    """A fresh, empty database on ``postgres_server`` (no extension created), dropped
    after the test."""
    from postgres_server import create_database, drop_database

    uri = create_database(postgres_server)
    try:
        yield uri
    finally:
        drop_database(uri, server_uri=postgres_server)


@pytest.fixture(params=("sqlite", "postgres"))
def any_backend(request, tmp_path) -> str:
    """A fresh, empty database of each backend in turn (a test using it runs twice): a
    file, then a PostgreSQL database. For the integrations, which must behave the same on
    both; Memory(any_backend, cache_dir=tmp_path / "cache") needs no folder beside a URL."""
    if request.param == "sqlite":
        return str(tmp_path / "memory.db")
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def db_path(tmp_path):
    """A fresh database path (nothing created yet) in this test's own directory."""
    return tmp_path / "memory.db"


@pytest.fixture
def mem(db_path):
    with Memory(db_path) as m:
        yield m


def _load_model_builder():
    """models/build_test_models.py, loaded by path (models/ is not a package)."""
    import importlib.util
    import sys
    from pathlib import Path

    name = "localmem_test_model_builder"
    if name not in sys.modules:
        path = Path(__file__).resolve().parent.parent / "models" / "build_test_models.py"
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    """Tiny random BERT models in ONNX, built once per session (no downloads).

    A NamedTuple with three model folders (pathlib.Path), each laid out like a real
    download (model.onnx, tokenizer.json, config.json, ...; see models/README.md):
    .embedder (inputs input_ids, attention_mask, token_type_ids -> last_hidden_state
    [batch, seq, 32]), .cross_encoder (same inputs -> logits [batch, 1]) and
    .embedder_no_token_types (no token_type_ids input; same weights as .embedder).
    Their tokenizer.json pads and truncates to 16 tokens until reset (the deliberate
    trap). Treat the folders as read-only: they are shared by the whole session.
    """
    return _load_model_builder().build_all(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture
def tmpfs(tmp_path):
    """A 4 MiB tmpfs (small_disk.SmallDisk): a disk that fills up or turns read-only."""
    from small_disk import small_disk

    with small_disk(tmp_path / "tmpfs") as disk:
        yield disk


@pytest.fixture
def run(capsys):
    """main(argv) in-process: (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main(list(argv))
        out, err = capsys.readouterr()
        return code, out, err

    return run
