"""Which SQLite driver localmem uses, and the rules for its connections.

The standard library's ``sqlite3`` is used where it can load extensions (sqlite-vec) and has
FTS5. Many Python builds (pyenv, python.org macOS, this project's CI) compile ``sqlite3``
without ``enable_load_extension``; there ``sqlean`` (the sqlean.py package, a drop-in
``sqlite3`` built with extension loading and FTS5) is used instead. ``LOCALMEM_SQLITE_DRIVER``
(``sqlite3`` or ``sqlean``) forces one, which the tests use to exercise both.

A connection must never cross ``fork()``: SQLite's POSIX locks are not inherited, so a child
that used, or even closed, its parent's connection could checkpoint and delete a WAL the
parent still relies on. ``abandon()`` keeps such inherited objects referenced forever so that
garbage collection does not close them in the child.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import weakref
from types import ModuleType
from typing import Any

_ABANDONED: list[Any] = []
_FORK_AWARE: weakref.WeakSet[Any] = weakref.WeakSet()


def _usable(module: ModuleType) -> bool:
    if not hasattr(module.Connection, "enable_load_extension"):
        return False
    try:
        conn = module.connect(":memory:")
        try:
            conn.execute("CREATE VIRTUAL TABLE t USING fts5(x)")
        finally:
            conn.close()
    except module.Error:
        return False
    return True


@functools.cache
def dbapi() -> ModuleType:
    """The DB-API module in use (``sqlite3`` or ``sqlean``)."""
    forced = os.environ.get("LOCALMEM_SQLITE_DRIVER", "").strip()
    if forced == "sqlite3":
        if not _usable(sqlite3):
            raise ImportError(
                "LOCALMEM_SQLITE_DRIVER=sqlite3, but this Python's sqlite3 cannot load "
                "extensions or lacks FTS5"
            )
        return sqlite3
    if forced not in ("", "sqlean"):
        raise ImportError(f"LOCALMEM_SQLITE_DRIVER must be 'sqlite3' or 'sqlean', not {forced!r}")
    if not forced and _usable(sqlite3):
        return sqlite3
    import sqlean  # the sqlean.py distribution

    return sqlean


def connect(path: str) -> Any:
    """A connection in autocommit mode (transactions are explicit), usable from any thread,
    with sqlite-vec loaded.

    Callers serialise access themselves (``Store`` holds a lock around every use).
    """
    import sqlite_vec

    conn = dbapi().connect(path, isolation_level=None, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)  # nothing else may load code into this process
    except BaseException:
        conn.close()
        raise
    return conn


def abandon(obj: Any) -> None:
    """Keep an object inherited across fork() alive, unused, so it is never closed here."""
    _ABANDONED.append(obj)


def reset_locks_after_fork(obj: Any) -> None:
    """Call ``obj.reset_locks_after_fork()`` in every child forked while ``obj`` lives.

    A thread of the parent that held one of ``obj``'s locks at ``fork()`` time does not
    exist in the child, but the lock is copied as held: without a reset, the child's
    first call would wait for it forever.
    """
    _FORK_AWARE.add(obj)


def _reset_in_child() -> None:
    for obj in list(_FORK_AWARE):
        obj.reset_locks_after_fork()


# fork() while a background worker is inside SQLite or ONNX Runtime would copy their
# internal mutexes (and SQLite's record of the locks this process holds on a file) held,
# and the child's first open would wait forever or find the file locked. So fork() first
# waits for each worker registered here to leave its gate (an RLock it holds whenever it is
# inside SQLite or a model) and holds the gates until the fork is done.
_GATED: weakref.WeakSet[Any] = weakref.WeakSet()
_HELD: list[Any] = []


def gate_fork(worker: Any) -> None:
    """Have fork() wait for ``worker._gate`` (read at fork time: a worker may replace it)."""
    _GATED.add(worker)


def _before_fork() -> None:
    for worker in list(_GATED):
        gate = worker._gate
        gate.acquire()
        _HELD.append(gate)


def _after_fork_in_parent() -> None:
    while _HELD:
        _HELD.pop().release()


def _after_fork_in_child() -> None:
    _HELD.clear()  # the child's workers get fresh gates (their reset_locks_after_fork)
    _reset_in_child()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_before_fork, after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child
    )
