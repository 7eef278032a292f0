"""The errors localmem raises.

Every error is a ``LocalMemError``; catch that to catch them all::

    LocalMemError
    ├── InvalidInputError (also a ValueError)   bad argument; nothing was written
    ├── StoreError                              the SQLite file could not do what was asked
    │   ├── LockTimeoutError                    another writer held the lock past lock_timeout
    │   ├── CorruptDatabaseError                not a localmem database, or damaged
    │   ├── ModelMismatchError                  vectors in the file come from another model
    │   └── StorageFullError                    the disk (or a size limit) is full
    ├── ModelError                              a model could not be found or loaded
    ├── StrategyUnavailableError                the strategy needs a layer this build lacks
    └── ClosedError                             the Memory was used after close()

A raw ``sqlite3`` error never escapes: the store maps it to one of the above and chains it
(``raise ... from exc``), so the original is always in ``__cause__``.
"""

from __future__ import annotations

__all__ = [
    "LocalMemError",
    "InvalidInputError",
    "StoreError",
    "LockTimeoutError",
    "CorruptDatabaseError",
    "ModelMismatchError",
    "StorageFullError",
    "ModelError",
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


class ModelError(LocalMemError):
    """A model could not be resolved or loaded."""


class StrategyUnavailableError(LocalMemError):
    """The strategy exists in the API but needs a layer this build does not provide."""


class ClosedError(LocalMemError):
    """The ``Memory`` was used after ``close()``."""
