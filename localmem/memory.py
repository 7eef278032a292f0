"""``Memory``: the one entry point. Validates, owns the store and caches, wires strategies."""

from __future__ import annotations

import itertools
import os
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import platformdirs

from . import driver, strategies
from .cache import DEFAULT_HOT_TTL, DEFAULT_HOT_WINDOW, HotWindow
from .errors import ClosedError, InvalidInputError, StrategyUnavailableError
from .records import MemoryResult, Message, Strategy
from .store import Store, model_mismatch
from .validate import (
    DEFAULT_MAX_CONTENT_BYTES,
    check_id,
    check_limit,
    check_lookback_days,
    check_strategy,
    new_message,
)

_ADD_MANY_KEYS = frozenset(
    ("role", "content", "conversation_id", "owner_id", "feature", "msg_id", "metadata", "created_at")
)


def _model_arg(value: Any, what: str, method: str) -> Any:
    """None, a registry name, or an object with the model's method."""
    if value is None or isinstance(value, str):
        if isinstance(value, str) and not value.strip():
            raise InvalidInputError(f"{what} name must not be blank")
        return value
    if not callable(getattr(value, method, None)):
        raise InvalidInputError(
            f"{what} must be a model name or an object with a {method}() method; "
            f"got {type(value).__name__}"
        )
    return value


def _model_name(value: Any) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return getattr(value, "name", None)


def default_path() -> Path:
    """``memory.db`` in the platform's user data directory (created if missing)."""
    return platformdirs.user_data_path("localmem", appauthor=False, ensure_exists=True) / "memory.db"


class Memory:
    """Conversation memory in one SQLite file.

    ``path``: a file path, ``":memory:"``, or None for ``default_path()``.
    ``durability``: ``"normal"`` (WAL + synchronous=NORMAL: a returned ``add()`` survives a
    crash of the process) or ``"full"`` (also survives power loss, slower).
    ``lock_timeout``: seconds a write waits for another writer before ``LockTimeoutError``.
    ``hot_window``: messages per conversation kept in the hot window (0 turns it off);
    ``hot_window_ttl``: seconds an unused window lives.
    ``cache_dir``: where the diskcache tiers live; default ``<path>-cache`` beside the file.
    ``max_content_bytes``: the largest message accepted, in UTF-8 bytes.
    ``embedder``: a registry name, or any object with ``embed(texts) -> float32 array``
    (and optionally ``embed_query``, ``name``, ``dim``). None: the model recorded in the
    file, else all-MiniLM-L6-v2. A name other than the recorded one raises
    ``ModelMismatchError`` here, at open. ``reranker``: a name or any object with
    ``score(query, documents) -> array``. Both load lazily, on first use.

    Thread-safe; after ``fork()`` the child opens its own connections on first use.
    """

    def __init__(
        self,
        path: str | os.PathLike[str] | None = None,
        *,
        durability: str = "normal",
        lock_timeout: float = 5.0,
        hot_window: int = DEFAULT_HOT_WINDOW,
        hot_window_ttl: float = DEFAULT_HOT_TTL,
        cache_dir: str | os.PathLike[str] | None = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        embedder: Any = None,
        reranker: Any = None,
    ):
        if type(hot_window) is not int or not 0 <= hot_window <= 4096:
            raise InvalidInputError(f"hot_window must be an int from 0 to 4096; got {hot_window!r}")
        if type(max_content_bytes) is not int or max_content_bytes < 1:
            raise InvalidInputError(f"max_content_bytes must be a positive int; got {max_content_bytes!r}")
        if path is None:
            path = default_path()
        self.path = os.fspath(path)
        self.max_content_bytes = max_content_bytes
        self._closed = False
        self._close_lock = threading.Lock()
        driver.reset_locks_after_fork(self)
        self._store = Store(self.path, durability=durability, lock_timeout=lock_timeout)
        try:
            self._embedder_arg = _model_arg(embedder, "embedder", "embed")
            self._reranker_arg = _model_arg(reranker, "reranker", "score")
            self._embedder: Any = None
            self._reranker: Any = None
            self._models_lock = threading.Lock()
            recorded = self._store.embedder_identity()
            wanted = _model_name(self._embedder_arg)
            if recorded and wanted and wanted != recorded.get("name"):
                raise model_mismatch(self.path, recorded, repr(wanted))
            self._hot = None
            if hot_window:
                in_memory = self._store.path == ":memory:"
                if cache_dir is None and not in_memory:
                    cache_dir = self.path + "-cache"
                self._hot = HotWindow(
                    None if cache_dir is None else Path(cache_dir),
                    namespace=self._store.instance_id or "",
                    size=hot_window,
                    ttl=hot_window_ttl,
                )
        except BaseException:
            self._store.close()
            raise

    # -- lifecycle --------------------------------------------------------------------

    def reset_locks_after_fork(self) -> None:
        self._close_lock = threading.Lock()
        self._models_lock = threading.Lock()

    def close(self) -> None:
        """Release the file and caches. Safe to call more than once."""
        with self._close_lock:
            if self._closed:
                return
            self._closed = True
            try:
                if self._hot is not None:
                    self._hot.close()
            finally:
                self._store.close()

    @property
    def closed(self) -> bool:
        return self._closed

    # -- models -----------------------------------------------------------------------

    @property
    def embedder(self) -> Any:
        """The embedder (resolved on first access; the ONNX session on first embed).
        Unset, it is the model recorded in the file, else the registry default."""
        arg = self._embedder_arg
        if arg is None and self._embedder is None:
            recorded = self._store.embedder_identity()
            arg = recorded["name"] if recorded else None
        return self._model("_embedder", arg, "load_embedder")

    @property
    def reranker(self) -> Any:
        """The cross-encoder reranker (resolved on first access)."""
        return self._model("_reranker", self._reranker_arg, "load_reranker")

    def _model(self, attr: str, arg: Any, loader: str) -> Any:
        """The object in ``attr``, made once from ``arg``: a name (or None, the default)
        goes to ``localmem.<loader>``; an object of the caller's is used as it is."""
        self._check_open()
        with self._models_lock:
            if getattr(self, attr) is None:
                if arg is None or isinstance(arg, str):
                    import localmem

                    arg = getattr(localmem, loader)(arg)
                setattr(self, attr, arg)
            return getattr(self, attr)

    def __enter__(self) -> Memory:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Memory {self.path!r} {state}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"Memory({self.path!r}) is closed")

    # -- writes -----------------------------------------------------------------------

    def add(
        self,
        role: str,
        content: str,
        *,
        conversation_id: str,
        owner_id: str,
        feature: str | None = None,
        msg_id: str | None = None,
        metadata: dict[str, Any] | None = None,
        created_at: Any = None,
    ) -> Message:
        """Store one message; durable when this returns.

        Re-adding a ``msg_id`` with identical fields returns the stored message (a safe
        retry); with different fields it raises ``InvalidInputError``.
        """
        self._check_open()
        m = new_message(
            role, content, conversation_id=conversation_id, owner_id=owner_id, feature=feature,
            msg_id=msg_id, metadata=metadata, created_at=created_at,
            max_content_bytes=self.max_content_bytes,
        )
        return self._store.insert(m)

    def add_many(
        self,
        messages: Iterable[Mapping[str, Any]],
        *,
        conversation_id: str | None = None,
        owner_id: str | None = None,
        chunk_size: int = 1000,
    ) -> int:
        """Store many messages (mappings with ``add``'s argument names); returns how many
        were new. ``conversation_id``/``owner_id`` fill in items that omit them.

        Reads the iterable lazily and commits one transaction per ``chunk_size`` items, so
        memory stays bounded for any number of messages. A chunk is checked whole before it
        is written: a bad item raises ``InvalidInputError`` naming its index, and that
        chunk and everything after it is left unwritten (earlier chunks stay committed;
        re-running the same import is safe, since retries of a msg_id are skipped).
        """
        self._check_open()
        if type(chunk_size) is not int or not 1 <= chunk_size <= 100_000:
            raise InvalidInputError(f"chunk_size must be an int from 1 to 100000; got {chunk_size!r}")
        defaults = {"conversation_id": conversation_id, "owner_id": owner_id}
        items = iter(messages)
        index = added = 0
        while chunk := list(itertools.islice(items, chunk_size)):
            checked = []
            for item in chunk:
                checked.append(self._check_item(item, index, defaults))
                index += 1
            added += self._store.insert_many(checked)
        return added

    def _check_item(self, item: Any, index: int, defaults: dict[str, Any]) -> Any:
        if not isinstance(item, Mapping):
            raise InvalidInputError(f"add_many item {index} is a {type(item).__name__}, not a mapping")
        unknown = set(item) - _ADD_MANY_KEYS
        if unknown:
            raise InvalidInputError(f"add_many item {index} has unknown keys: {sorted(map(str, unknown))}")
        fields = {**{k: v for k, v in defaults.items() if v is not None}, **item}
        try:
            return new_message(
                fields.get("role"), fields.get("content"),
                conversation_id=fields.get("conversation_id"), owner_id=fields.get("owner_id"),
                feature=fields.get("feature"), msg_id=fields.get("msg_id"),
                metadata=fields.get("metadata"), created_at=fields.get("created_at"),
                max_content_bytes=self.max_content_bytes,
            )
        except InvalidInputError as exc:
            raise InvalidInputError(f"add_many item {index}: {exc}") from None

    # -- reads ------------------------------------------------------------------------

    def get(self, msg_id: str) -> Message | None:
        """The stored message with this msg_id, or None."""
        self._check_open()
        return self._store.get(check_id(msg_id, "msg_id"))

    def get_memory(
        self,
        strategy: Strategy | str,
        *,
        conversation_id: str,
        owner_id: str,
        query: str | None = None,
        limit: int = 10,
        lookback_days: float | None = 7,
    ) -> MemoryResult:
        """The messages worth putting in the prompt, chosen by ``strategy``.

        ``recent_history``: the last ``limit`` messages of the conversation created inside
        the last ``lookback_days`` days (None: all time), oldest first.
        ``session_only``: no stored messages.
        """
        started = time.perf_counter()
        self._check_open()
        strategy = check_strategy(strategy)
        conversation_id = check_id(conversation_id, "conversation_id")
        owner_id = check_id(owner_id, "owner_id")
        limit = check_limit(limit)
        lookback = check_lookback_days(lookback_days)
        if query is not None and not isinstance(query, str):
            raise InvalidInputError(f"query must be a str or None, not {type(query).__name__}")
        if strategy is Strategy.SESSION_ONLY:
            recall = strategies.session_only()
        elif strategy is Strategy.RECENT_HISTORY:
            recall = strategies.recent_history(
                self._store, self._hot, owner_id=owner_id, conversation_id=conversation_id,
                limit=limit, lookback_days=lookback,
            )
        else:
            raise StrategyUnavailableError(
                f"{strategy.value} needs the semantic retrieval layer, which this build of "
                f"localmem does not have yet; available: {', '.join(s.value for s in self.strategies())}"
            )
        return MemoryResult(
            messages=recall.messages,
            strategy=strategy,
            cache_hit=recall.cache_hit,
            context_summary=recall.context_summary,
            latency_ms=(time.perf_counter() - started) * 1000,
        )

    @staticmethod
    def strategies() -> tuple[Strategy, ...]:
        """The strategies this build can answer."""
        return (Strategy.SESSION_ONLY, Strategy.RECENT_HISTORY)

    def stats(self) -> dict[str, Any]:
        """Path, schema version and counts of messages, conversations and owners."""
        self._check_open()
        counts = self._store.counts()
        size = 0
        if self.path != ":memory:":
            size = sum(
                os.path.getsize(p) for p in (self.path, self.path + "-wal") if os.path.exists(p)
            )
        return {"path": self.path, **counts, "bytes": size}

    def check_integrity(self) -> str:
        """"ok", or what SQLite's and FTS5's integrity checks found.

        The FTS5 check needs the write lock: ``LockTimeoutError`` if another writer holds it.
        """
        self._check_open()
        return self._store.check_integrity()
