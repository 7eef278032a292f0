"""localmem: conversation memory for AI agents, in-process, offline, in one SQLite file."""

from typing import TYPE_CHECKING

from ._version import __version__ as __version__
from .analytics import StrategyStats, StrategyUsage
from .context import Context
from .errors import (
    ClosedError,
    CorruptDatabaseError,
    InvalidInputError,
    LocalMemError,
    LockTimeoutError,
    ModelError,
    ModelMismatchError,
    ModelNotFoundError,
    NotEmbeddedError,
    ReadOnlyError,
    StorageFullError,
    StoreError,
    StrategyUnavailableError,
    SummaryError,
)
from .lifecycle import MaintenanceReport, MaintenanceStep, RetentionPolicy
from .memory import Memory
from .progress import Progress
from .records import (
    ConversationSummary,
    ForgetReport,
    MemoryResult,
    Message,
    RetrievedMessage,
    SearchStages,
    Selection,
    Strategy,
)
from .summaries import SummaryPolicy
from .transfer import BadLine, ExportReport, ImportReport

if TYPE_CHECKING:  # what __getattr__ returns for these, so type checkers know them
    from .embed import load_embedder
    from .rerank import load_reranker

_LAZY = {"load_embedder": "embed", "load_reranker": "rerank"}


def __getattr__(name: str) -> object:
    # The model loaders pull in numpy, and their models pull in onnxruntime: import them
    # on first use so that `import localmem` stays light (PEP 562).
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = [
    "BadLine",
    "ClosedError",
    "Context",
    "ConversationSummary",
    "CorruptDatabaseError",
    "ExportReport",
    "ForgetReport",
    "ImportReport",
    "InvalidInputError",
    "LocalMemError",
    "LockTimeoutError",
    "MaintenanceReport",
    "MaintenanceStep",
    "Memory",
    "MemoryResult",
    "Message",
    "ModelError",
    "ModelMismatchError",
    "ModelNotFoundError",
    "NotEmbeddedError",
    "Progress",
    "ReadOnlyError",
    "RetentionPolicy",
    "RetrievedMessage",
    "SearchStages",
    "Selection",
    "StorageFullError",
    "StoreError",
    "Strategy",
    "StrategyStats",
    "StrategyUnavailableError",
    "StrategyUsage",
    "SummaryError",
    "SummaryPolicy",
    "load_embedder",
    "load_reranker",
]
