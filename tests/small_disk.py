"""A small disk of the tests' own: a tmpfs that really fills up, or turns read-only.

Mounting needs root (CI runs as root); elsewhere the tests that use it skip, saying so.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest


class SmallDisk:
    """A mounted tmpfs at ``path``."""

    def __init__(self, path: Path):
        self.path = path

    def fill(self) -> Path:
        """Write a file until the disk has not one byte left; returns the file's path."""
        filler = self.path / f"filler-{uuid.uuid4().hex}"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
        try:
            for size in (1 << 16, 1 << 10, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * size)
                except OSError:
                    pass
        finally:
            os.close(fd)
        return filler

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)


@contextmanager
def small_disk(path: Path, size: str = "4m") -> Iterator[SmallDisk]:
    """Mount a tmpfs of ``size`` at ``path`` (created) for the block; skip the test if
    mounting is not permitted here."""
    path.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"needs permission to mount a tmpfs (root, as in CI): {done.stderr.strip()}")
    try:
        yield SmallDisk(path)
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)
