"""The errors localmem raises.

Every error is a ``LocalMemError``; catch that to catch them all::

    LocalMemError
    ├── InvalidInputError (also a ValueError)   bad argument; nothing was written
    ├── StoreError                              the SQLite file could not do what was asked
    │   ├── LockTimeoutError                    another writer held the lock past lock_timeout
    │   ├── CorruptDatabaseError                not a localmem database, or damaged
    │   ├── ModelMismatchError                  vectors in the file come from another model
    │   ├── StorageFullError                    the disk (or a size limit) is full
    │   └── ReadOnlyError                       a write to a Memory opened read_only=True
    ├── ModelError                              a model could not be found or loaded
    │   └── ModelNotFoundError                  no copy of the model anywhere it looked
    ├── NotEmbeddedError                        embed="sync": stored, but not embedded
    ├── SummaryError                            the summariser failed; the fold is retried
    ├── StrategyUnavailableError                the strategy needs a layer this build lacks
    └── ClosedError                             the Memory was used after close()

A raw ``sqlite3`` error never escapes: the store maps it to one of the above and chains it
(``raise ... from exc``), so the original is always in ``__cause__``.
"""

from __future__ import annotations

import copy
import errno
from collections.abc import Callable
from typing import Any

__all__ = [
    "LocalMemError",
    "InvalidInputError",
    "StoreError",
    "LockTimeoutError",
    "CorruptDatabaseError",
    "ModelMismatchError",
    "StorageFullError",
    "ReadOnlyError",
    "ModelError",
    "ModelNotFoundError",
    "NotEmbeddedError",
    "SummaryError",
    "StrategyUnavailableError",
    "ClosedError",
]


class LocalMemError(Exception):
    """Base class of every error localmem raises."""


class InvalidInputError(LocalMemError, ValueError):
    """An argument was rejected before anything was written."""


class StoreError(LocalMemError):
    """The SQLite store failed."""


class LockTimeoutError(StoreError):
    """Another connection held the write lock longer than ``lock_timeout``."""


class CorruptDatabaseError(StoreError):
    """The file is not a localmem database, is damaged, or is from a newer localmem."""


class ModelMismatchError(StoreError):
    """The database holds vectors from a different model than the one configured."""


class StorageFullError(StoreError):
    """The disk is full (SQLITE_FULL)."""


class ReadOnlyError(StoreError):
    """A write was asked of a Memory opened with ``read_only=True`` (or of a file it cannot
    write); nothing was written."""


class ModelError(LocalMemError):
    """A model could not be resolved or loaded."""


class ModelNotFoundError(ModelError):
    """No copy of the model was found anywhere localmem looked, and none could be
    downloaded. The message lists every place tried and how to fix it. Writes and the
    recency strategies work without a model; messages stay queued for their vectors.
    ``model`` is the name looked for."""

    def __init__(self, text: str, *, model: str | None = None):
        super().__init__(text)
        self.model = model


class NotEmbeddedError(LocalMemError):
    """``add()``/``add_many()`` with ``embed="sync"`` stored the messages (they are durable)
    but could not embed them. Do not add them again: they stay queued, and ``flush()`` or
    the next open embeds them. ``message`` is the stored message (``add()``; None for
    ``add_many()``), ``added`` how many new messages the call stored; ``__cause__`` says
    why embedding failed (a ``LockTimeoutError``, a ``ModelError``, ...). It is not a
    ``LockTimeoutError`` even when one caused it, so that code retrying writes on lock
    timeouts does not store a message twice.
    """

    def __init__(self, text: str, *, message: Any = None, added: int = 0):
        super().__init__(text)
        self.message = message
        self.added = added


class SummaryError(LocalMemError):
    """Folding messages into a conversation's summary failed: the summariser raised or
    returned something other than a str. Nothing is lost: the summary stays as it was,
    the messages stay unfolded, and the fold is retried (``flush()`` retries at once and
    raises this when it fails again). ``__cause__`` is the summariser's own exception."""


class StrategyUnavailableError(LocalMemError):
    """The strategy exists in the API but needs a layer this build does not provide."""


class ClosedError(LocalMemError):
    """The ``Memory`` was used after ``close()``."""


def call_model(who: str, method: Callable[..., Any], *args: Any) -> Any:
    """``method(*args)``: a model's own exception (an embedder's, a reranker's, the
    caller's objects included) becomes a ModelError naming ``who``, the original chained;
    a localmem error passes as it is."""
    try:
        return method(*args)
    except LocalMemError:
        raise
    except Exception as exc:
        raise ModelError(f"{who} failed: {type(exc).__name__}: {exc}") from exc


def as_localmem_error(exc: BaseException, doing: str) -> LocalMemError:
    """``exc`` as the localmem error that says what failed (for the caller to raise ``from
    exc``): a localmem error as a fresh copy of itself, a full disk as
    StorageFullError, anything else (raised by an embedder, most likely) as ModelError,
    each saying what was being done."""
    if isinstance(exc, LocalMemError):
        fresh = copy.copy(exc)  # its type and attributes (ModelNotFoundError.model...)
        fresh.__traceback__ = fresh.__cause__ = fresh.__context__ = None
        return fresh
    if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return StorageFullError(f"{doing}: the disk is full ({exc})")
    return ModelError(f"{doing}: {type(exc).__name__}: {exc}")
