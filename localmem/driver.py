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

import contextlib
import functools
import os
import sqlite3
import threading
import urllib.parse
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


def connect(path: str, *, uri: bool = False) -> Any:
    """A connection in autocommit mode (transactions are explicit), usable from any thread,
    with sqlite-vec loaded. ``uri``: ``path`` is a ``file:`` URI (see ``read_only_uri``).

    Callers serialise access themselves (``Store`` holds a lock around every use).
    """
    import sqlite_vec

    conn = dbapi().connect(path, uri=uri, isolation_level=None, check_same_thread=False)
    try:
        conn.enable_load_extension(True)
        sqlite_vec.load(conn)
        conn.enable_load_extension(False)  # nothing else may load code into this process
    except BaseException:
        conn.close()
        raise
    return conn


# -- read-only opens ---------------------------------------------------------------------
#
# What SQLite 3.50 (sqlean) does with a WAL-mode file opened ``mode=ro``, measured here (a
# reader of uid 65534 in a folder of root's, files 0644; and root on a read-only bind mount):
#
# * file closed cleanly (no -wal, no -shm), folder unwritable: the open succeeds, the first
#   read fails: SQLITE_READONLY "attempt to write a readonly database" (permissions) or
#   SQLITE_CANTOPEN "unable to open database file" (read-only mount). SQLite must create the
#   -shm (the WAL index) and cannot. ``immutable=1`` reads it (SQLite's documented way out,
#   walformat.html: a process that cannot create the WAL and WAL-index files "will not be able
#   to open the database, unless the database is designated as immutable").
# * -wal and -shm present but unwritable (a writer still has the file open, on either side
#   of a read-only mount): ``mode=ro`` works (SQLite builds the WAL index in heap memory) and
#   every read sees the writer's newest commit, across a wal_checkpoint(TRUNCATE) too.
#   ``immutable=1`` there is wrong: it ignores the WAL ("no such table" for a table created
#   in it) and takes no locks.
# * -wal holding commits, no -shm, folder unwritable (a file copied without its -shm):
#   ``mode=ro`` fails (SQLITE_CANTOPEN) and ``immutable=1`` misses the commits: nothing
#   reads it correctly; it must be opened read-write once somewhere writable.
# * folder writable: ``mode=ro`` creates -wal (empty) and -shm, and leaves them when it
#   closes (only a read-write connection removes them at the last close): ``tidy_wal``.
#
# Hence: ``mode=ro``; ``immutable=1`` only when SQLite cannot open the WAL index, the folder
# is not writable and the -wal holds nothing, i.e. no writer can have the file open (one
# that comes later makes a -wal, and ``wal_appeared`` tells the reader to stop being
# immutable for its next connections).

_READONLY, _CANTOPEN = 8, 14  # SQLite primary result codes


def read_only_uri(path: str, *, immutable: bool = False) -> str:
    """The ``file:`` URI opening ``path`` read-only (``mode=ro``), never creating it;
    ``immutable``: also without locks or WAL (see ``immutable_allowed``)."""
    quoted = urllib.parse.quote(os.path.abspath(path))
    return f"file:{quoted}?mode=ro" + ("&immutable=1" if immutable else "")


def _wal_bytes(path: str) -> int | None:
    """Size of ``path``'s -wal: 0 when there is none, None when it cannot be read."""
    try:
        return os.path.getsize(path + "-wal")
    except FileNotFoundError:
        return 0
    except OSError:
        return None


def immutable_allowed(path: str, exc: BaseException) -> bool:
    """After a read-only open of ``path`` failed with ``exc``: may it be read with
    ``immutable=1``? Only when SQLite could not open or make the WAL index (SQLITE_READONLY
    or SQLITE_CANTOPEN), the folder cannot be written (so no -shm can be made), and there is
    no -wal with anything in it (so every commit is in the file itself). The file must then
    not change while it is open: SQLite takes no locks on an immutable file."""
    code = getattr(exc, "sqlite_errorcode", None)
    if code is None or code & 0xFF not in (_READONLY, _CANTOPEN):
        return False
    if os.access(os.path.dirname(os.path.abspath(path)), os.W_OK):
        return False
    return _wal_bytes(path) == 0


def connect_read_only(path: str, *, vec: bool = True) -> tuple[Any, bool]:
    """A read-only connection to ``path`` that has read it once (where SQLite needs the WAL
    index), and whether it is immutable: ``mode=ro``, else ``immutable=1`` when
    ``immutable_allowed``; else the driver's error. ``vec``: with sqlite-vec loaded."""
    def make(uri: str) -> Any:
        if vec:
            return connect(uri, uri=True)
        return dbapi().connect(uri, uri=True, isolation_level=None, check_same_thread=False)

    conn = make(read_only_uri(path))
    try:
        conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return conn, False
    except dbapi().Error as exc:
        conn.close()
        if not immutable_allowed(path, exc):
            raise
    return make(read_only_uri(path, immutable=True)), True


def wal_appeared(path: str) -> bool:
    """Has ``path`` a -wal now? (A reader that opened it immutable then reopens without.)"""
    return os.path.exists(path + "-wal")


def can_write(path: str) -> bool:
    """Could this process write ``path`` and create files beside it (permissions, and a
    read-only mount)?"""
    folder = os.path.dirname(os.path.abspath(path))
    return os.access(path, os.W_OK) and os.access(folder, os.W_OK)


def tidy_wal(path: str) -> None:
    """After this process's read-only connections to ``path`` closed: remove the -wal and
    -shm that a ``mode=ro`` open created in a writable folder (see above), as the last
    read-write connection to close does. Only while the -wal is empty, so that nothing is
    checkpointed into the file; and one ordinary connection, opened and closed, does it, so
    SQLite's own rule applies: the files stay while any other connection has the file open.
    Best effort: a failure leaves the two files, which the next open uses as usual."""
    if _wal_bytes(path) != 0 or not os.path.exists(path + "-wal") or not can_write(path):
        return
    with contextlib.suppress(Exception):
        conn = connect(path)
        try:
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        finally:
            conn.close()


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


def stop_worker(worker: Any, timeout: float) -> None:
    """Stop a background worker (the embedding indexer, the summary folder): set its
    ``_stopping`` under its ``_cond``, wake it, and wait at most ``timeout`` for its
    ``_thread`` to end (not when called from that thread: a close from inside its work)."""
    with worker._cond:
        worker._stopping = True
        worker._cond.notify_all()
        thread = worker._thread
    if thread is not None and thread is not threading.current_thread():
        thread.join(timeout)


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
