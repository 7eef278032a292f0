"""The contract suite's fixtures: every test runs once per storage backend.

``target`` is what ``Memory(...)`` is given: a file path for SQLite, a URI for PostgreSQL
(a fresh database of a private server, or of ``LOCALMEM_TEST_POSTGRES``'s; see
``tests/postgres_server.py``). It is parametrised through ``backend``, so every test that
uses it (or ``make_target``, or ``open_memory``) shows up as ``test_x[sqlite]`` and
``test_x[postgres]``; ``-k sqlite`` runs one half, and the PostgreSQL server is started
only when a ``postgres`` test runs. A PostgreSQL that cannot be had FAILS those tests
(an error at setup): the suite never skips a backend.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hash_embedder import HashEmbedder

from localmem import Memory

BACKENDS = ("sqlite", "postgres")


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    """The backend under test: ``"sqlite"`` or ``"postgres"``."""
    return str(request.param)


@pytest.fixture
def make_target(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Callable[[], str]]:
    """A factory of fresh, empty targets of this test's backend: another file beside the
    first, or another database on the same server (each dropped after the test). For a
    test that needs two memories of the same kind (export, then import into a new one)."""
    made: list[str] = []
    extra: list[str] = []
    # Asked for here, at set-up (never from the test's body), and only for PostgreSQL, so
    # that a SQLite test starts no server. Their teardown runs after this fixture's.
    server = request.getfixturevalue("postgres_server") if backend == "postgres" else None
    first = request.getfixturevalue("postgres_url") if backend == "postgres" else None

    def make() -> str:
        if server is None:
            target = str(tmp_path / ("memory.db" if not made else f"memory-{len(made)}.db"))
        elif not made:
            target = first
        else:
            from postgres_server import create_database

            target = create_database(server)
            extra.append(target)
        made.append(target)
        return target

    yield make
    if extra:
        from postgres_server import drop_database

        for target in extra:
            drop_database(target, server_uri=server)


@pytest.fixture
def target(make_target: Callable[[], str]) -> str:
    """``Memory(target)``: ``str(tmp_path / "memory.db")`` for SQLite; for PostgreSQL the
    URI of a fresh database (``postgres_url``)."""
    return make_target()


@pytest.fixture
def open_memory(make_target: Callable[[], str], tmp_path: Path) -> Iterator[Callable[..., Memory]]:
    """``open_memory(target, **kwargs)``: ``Memory(target, embedder=HashEmbedder(),
    cache_dir=tmp_path / "cache", **kwargs)`` (``kwargs`` may replace those two). The
    cache folder is always given: a URI has no folder beside it to default to. Whatever is
    still open at the end of the test is closed, before its databases are dropped (this
    fixture depends on ``make_target`` for that order)."""
    opened: list[Memory] = []

    def open_(target: Any, **kwargs: Any) -> Memory:
        kwargs.setdefault("embedder", HashEmbedder())
        kwargs.setdefault("cache_dir", tmp_path / "cache")
        mem = Memory(target, **kwargs)
        opened.append(mem)
        return mem

    yield open_
    for mem in reversed(opened):
        mem.close()


@pytest.fixture
def mem(target: str, open_memory: Callable[..., Memory]) -> Memory:
    """A Memory on ``target`` that embeds as it writes (``embed="sync"``): what was added
    is searchable by meaning at once."""
    return open_memory(target, embed="sync")
