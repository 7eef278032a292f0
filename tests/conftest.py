from __future__ import annotations

import pytest

from localmem import Memory


@pytest.fixture
def db_path(tmp_path):
    """A fresh database path (nothing created yet) in this test's own directory."""
    return tmp_path / "memory.db"


@pytest.fixture
def mem(db_path):
    with Memory(db_path) as m:
        yield m
