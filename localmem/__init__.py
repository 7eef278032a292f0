"""localmem: conversation memory for AI agents, in-process, offline, in one SQLite file."""

from .errors import (
    ClosedError,
    CorruptDatabaseError,
    InvalidInputError,
    LocalMemError,
    LockTimeoutError,
    ModelError,
    ModelMismatchError,
    StorageFullError,
    StoreError,
    StrategyUnavailableError,
)
from .memory import Memory
from .records import MemoryResult, Message, RetrievedMessage, Strategy

__version__ = "0.1.0"

__all__ = [
    "Memory",
    "Strategy",
    "Message",
    "RetrievedMessage",
    "MemoryResult",
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
