"""``Memory``: the one entry point. Validates, owns the store and caches, wires strategies."""

from __future__ import annotations

import contextlib
import functools
import itertools
import logging
import os
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar, cast

import platformdirs

from . import analytics, context, driver, selector, strategies, transfer
from .backend import (
    EXACT_SEARCH_MAX,
    NO_MARK,
    Backend,
    SummaryRow,
    is_postgres_url,
    model_mismatch,
    open_backend,
    row_to_message,
)
from .cache import (
    CACHE_TIMEOUT,
    DEFAULT_HOT_TTL,
    DEFAULT_HOT_WINDOW,
    HotTier,
    HotWindow,
    QueryCache,
    QueryTier,
    private_dir,
)
from .embedding import Embeddings, load_model, model_arg, model_name
from .errors import (
    ClosedError,
    InvalidInputError,
    LocalMemError,
    NotEmbeddedError,
    ReadOnlyError,
    StrategyUnavailableError,
    as_localmem_error,
)
from .explain import Explanation, explain
from .indexer import Indexer, Searches
from .lifecycle import (
    ForgetGate,
    Lifecycle,
    Maintainer,
    MaintenanceReport,
    RetentionPolicy,
    Target,
    check_retention,
)
from .progress import ProgressCallback, Reporter, check_callback
from .records import (
    ConversationSummary,
    ForgetReport,
    MemoryResult,
    Message,
    Selection,
    Strategy,
)
from .redis_cache import check_url as check_redis_url
from .retrieval import Rerank, Searcher, keyword_query, keyword_terms
from .strategy_log import LogEntry, StrategyLog, log_path
from .summaries import Folder, SummaryPolicy, Written, summarizer_name
from .tokens import MESSAGE_OVERHEAD, check_counter
from .transfer import ExportReport, ImportReport
from .validate import (
    DEFAULT_MAX_CONTENT_BYTES,
    check_count,
    check_flag,
    check_id,
    check_limit,
    check_lookback_days,
    check_min_relevance,
    check_positive,
    check_query,
    check_selection,
    check_share,
    check_strategy,
    check_text,
    check_threshold,
    from_utc_us,
    new_message,
    now_us,
)

EMBED_MODES = ("background", "sync", "off")
_PROGRESS_WAIT = 0.5  # flush(progress=): seconds between two looks at the queue
DEFAULT_EMBEDDING_TTL = 90 * 86_400.0
DEFAULT_QUERY_CACHE_TTL = 300.0
DEFAULT_RERANK_CANDIDATES = 30  # what the reranker sees (never fewer than the limit)
DEFAULT_RERANK_THRESHOLD = 0.5  # the original design's minimum rerank score
DEFAULT_RERANK_MIN_KEEP = 3  # kept when fewer pass the threshold (the original design's)
DEFAULT_LOG_RETENTION_DAYS = 90.0
DEFAULT_SUMMARIES = SummaryPolicy()
DEFAULT_MEMORY_SHARE = 0.35  # of a context's budget reserved for the summary and retrieved history
_CONTEXT_PAGE = 64  # messages read at a time by build_context
DEFAULT_SUMMARY_SHARE = 0.6  # of the memory block the summary may take when history competes
_US_PER_DAY = 86_400 * 1_000_000
_MAX_RERANK = 4096  # rerank_candidates / rerank_min_keep: sqlite-vec's largest k
_MEMORY_SETTING: Any = object()  # a get_memory() setting not given: the Memory's is used
# Scopes from this many messages run their BM25 search on a second connection, in
# parallel with the KNN scan; below it a thread costs more than it saves.
PARALLEL_KEYWORD_FROM = 5_000

log = logging.getLogger(__name__)

_ADD_MANY_KEYS = frozenset(
    ("role", "content", "conversation_id", "owner_id", "feature", "msg_id", "metadata", "created_at")
)


_F = TypeVar("_F", bound=Callable[..., Any])


def _gated(method: _F) -> _F:
    """Run a Memory method that reads messages and may put them in a cache (or the
    strategy log) inside the forget gate's shared side: see ``lifecycle.ForgetGate``."""

    @functools.wraps(method)
    def gated(self: Memory, *args: Any, **kwargs: Any) -> Any:
        self._check_open()
        with self._gate.shared():
            return method(self, *args, **kwargs)

    return cast(_F, gated)


def default_path(*, create: bool = True) -> Path:
    """``memory.db`` in the platform's user data directory (``create``: the directory is
    created if missing)."""
    return platformdirs.user_data_path("localmem", appauthor=False, ensure_exists=create) / "memory.db"


class Memory:
    """Conversation memory in one SQLite file, or in a PostgreSQL database shared by many
    processes and machines.

    ``path``: a file path, ``":memory:"``, None for ``default_path()``, or a
    ``postgresql://`` URL (the ``postgres`` extra; ``localmem.postgres`` says what it keeps
    there). Every method behaves the same on both (tests/contract runs one suite against
    each); on PostgreSQL, ``durability`` changes nothing (a commit is durable), the caches
    and the strategy log are this machine's (``cache_dir``, default a folder named after the
    database's instance id in the user cache directory), and embedding workers on every
    machine share the database's queue.
    ``durability``: ``"normal"`` (WAL + synchronous=NORMAL: a returned ``add()`` survives a
    crash of the process) or ``"full"`` (also survives power loss, slower).
    ``lock_timeout``: seconds a write waits for another writer before ``LockTimeoutError``.
    ``hot_window``: messages per conversation kept in the hot window (0 turns it off);
    ``hot_window_ttl``: seconds an unused window lives.
    ``cache_dir``: where the diskcache tiers live; default ``<path>-cache`` beside the file.
    ``cache``: a Redis URL (``redis://``, ``rediss://``, ``unix://``; the ``redis`` extra)
    for the hot window and the query cache, shared by every process and machine that uses
    the database (``localmem.redis_cache``); the embedding cache stays in ``cache_dir``.
    An entry is served only for the version the database reports, as on disk; Redis down
    or slow (0.25 s) is a miss, logged, never an error.
    ``max_content_bytes``: the largest message accepted, in UTF-8 bytes.
    ``embedder``: a registry name, or any object with ``embed(texts) -> float32 array``
    (and optionally ``embed_query``, ``name``, ``dim``). None: the model recorded in the
    file, else all-MiniLM-L6-v2. A name other than the recorded one raises
    ``ModelMismatchError`` here, at open. ``reranker``: a name or any object with
    ``score(query, documents) -> array``. Both load lazily, on first use.
    ``embed``: when messages get their vectors. ``"background"`` (default): ``add()``
    returns once the message is durable and a worker thread embeds it soon after
    (``flush()`` waits for it); ``"sync"``: ``add()`` also embeds and stores the vector
    before returning; ``"off"``: nothing is embedded (messages stay queued for a later
    open with embedding on) and the semantic strategies are unavailable. Messages left
    without a vector by a crash are embedded again after the next open.
    ``reembed``: open with a different embedder than the one recorded: every vector is
    dropped and rebuilt with the new model (in the background; ``flush()`` waits). With the
    recorded model it does nothing (``Memory.reembed()`` rebuilds with the same model).
    ``embedding_cache_ttl``: seconds an unused cached embedding lives on disk (each hit
    renews it). ``query_cache_ttl``: seconds a cached strategy answer may be reused
    (0: no query cache); a new message in its scope voids it at once.
    ``exact_search_max``: scopes of up to this many messages are searched exactly; larger
    ones scan sign-bit codes and re-score the best candidates with their float vectors
    (faster, approximate: recall@10 0.98 at 10k, 0.94 at 100k in benchmarks/semantic_speed.py).

    ``strategy_log``: log every ``get_memory`` call (strategy, who chose it and why,
    counts, latency, cache hit, rerank figures; the query as a keyed hash, its text only
    with ``log_queries=True``) to ``<path>-log`` for ``strategy_stats()``, ``analytics()``
    and the automatic selector's per-owner pattern; entries older than
    ``log_retention_days`` are dropped (None: kept).
    ``summaries``: how each conversation's running summary is kept (a ``SummaryPolicy``:
    its recent window, when to fold, the summariser; None: no summaries). The messages
    that slide out of the window are folded into it in the background
    (``localmem.summaries``); ``build_context`` shows it, ``get_conversation_summary``
    returns it.
    ``retention``: how long messages are kept (a ``RetentionPolicy``, or one per owner
    plus one for everyone else), applied by ``maintain()``, which can archive them to a
    file first. ``maintenance_interval``: seconds between ``maintain()`` runs on a
    background thread (None: only when called, or from cron with ``localmem maintain``).
    ``metrics``: record Prometheus metrics (``metrics_text()``; needs the ``metrics``
    extra, prometheus_client). Off by default, and then nothing is recorded.

    ``read_only``: open an existing file for reading only, on read-only media or without
    write permission too. Every strategy, ``build_context`` (with the summary as stored),
    ``get``, ``stats``, ``check_integrity``, ``strategy_stats`` and ``analytics`` (an
    existing ``<path>-log``; none reads as empty) work; every write (``add``, ``add_many``,
    ``delete``, ``reembed``, ``fold_summary``, ``cleanup_expired``) raises ``ReadOnlyError``
    and writes nothing. Nothing is created or changed beside the file either: no cache
    folder (query vectors are computed and kept in this process only, so
    ``cache_dir``, ``hot_window`` and ``query_cache_ttl`` have no effect), no strategy-log
    entries, no background embedding or summary folding (messages still waiting for a
    vector are found by keywords only; ``flush()`` returns at once), and the -wal/-shm
    files SQLite makes to read a WAL file in a writable folder are removed at ``close()``
    when no other connection uses them. ``embedder`` is still the model for query vectors
    (a different one than the file records is a ``ModelMismatchError``). A file of an
    older schema raises ``ReadOnlyError`` (open it once read-write to upgrade it), a
    missing one ``StoreError``. On read-only media a file closed cleanly (no -wal) is read
    without locks (SQLite's ``immutable``): it must not change while open; a writer
    making a -wal meanwhile switches the next reads back to locked ones
    (``localmem.driver`` has the rules).

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
        cache: str | None = None,
        max_content_bytes: int = DEFAULT_MAX_CONTENT_BYTES,
        embedder: Any = None,
        reranker: Any = None,
        embed: str = "background",
        reembed: bool = False,
        embedding_cache_ttl: float = DEFAULT_EMBEDDING_TTL,
        query_cache_ttl: float = DEFAULT_QUERY_CACHE_TTL,
        exact_search_max: int = EXACT_SEARCH_MAX,
        min_relevance: float | str | None = "auto",
        rerank_candidates: int = DEFAULT_RERANK_CANDIDATES,
        rerank_threshold: float | None = DEFAULT_RERANK_THRESHOLD,
        rerank_min_keep: int = DEFAULT_RERANK_MIN_KEEP,
        rerank_adaptive: bool = False,
        strategy_log: bool = True,
        log_queries: bool = False,
        log_retention_days: float | None = DEFAULT_LOG_RETENTION_DAYS,
        summaries: SummaryPolicy | None = DEFAULT_SUMMARIES,
        retention: RetentionPolicy | Sequence[RetentionPolicy] | None = None,
        maintenance_interval: float | None = None,
        metrics: bool = False,
        read_only: bool = False,
    ):
        if type(hot_window) is not int or not 0 <= hot_window <= 4096:
            raise InvalidInputError(f"hot_window must be an int from 0 to 4096; got {hot_window!r}")
        if type(max_content_bytes) is not int or max_content_bytes < 1:
            raise InvalidInputError(f"max_content_bytes must be a positive int; got {max_content_bytes!r}")
        if type(exact_search_max) is not int or exact_search_max < 0:
            raise InvalidInputError(f"exact_search_max must be an int >= 0; got {exact_search_max!r}")
        self.exact_search_max = exact_search_max
        self.min_relevance = check_min_relevance(min_relevance)
        self.rerank_candidates = check_count(rerank_candidates, "rerank_candidates", low=1, high=_MAX_RERANK)
        self.rerank_threshold = check_threshold(rerank_threshold)
        self.rerank_min_keep = check_count(rerank_min_keep, "rerank_min_keep", low=0, high=_MAX_RERANK)
        self.rerank_adaptive = check_flag(rerank_adaptive, "rerank_adaptive")
        check_flag(strategy_log, "strategy_log")
        check_flag(metrics, "metrics")
        self.log_queries = check_flag(log_queries, "log_queries")
        log_retention = check_positive(log_retention_days, "log_retention_days", below=10**6, none=True)
        self.retention = check_retention(retention)
        interval = check_positive(maintenance_interval, "maintenance_interval", below=10**8, none=True)
        if summaries is not None and not isinstance(summaries, SummaryPolicy):
            raise InvalidInputError(f"summaries must be a SummaryPolicy or None; got {summaries!r}")
        if embed not in EMBED_MODES:
            raise InvalidInputError(f"embed must be one of {EMBED_MODES}; got {embed!r}")
        check_flag(reembed, "reembed")
        check_flag(read_only, "read_only")
        if read_only and reembed:
            raise InvalidInputError("reembed=True rewrites every vector: it cannot be combined with read_only=True")
        if read_only and interval is not None:
            raise InvalidInputError("maintenance_interval runs maintain(), which writes: not with read_only=True")
        for name, value in (("embedding_cache_ttl", embedding_cache_ttl), ("query_cache_ttl", query_cache_ttl)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 <= value < 10**10:
                raise InvalidInputError(f"{name} must be seconds >= 0; got {value!r}")
        if cache is not None:
            check_redis_url(cache)  # (imports no Redis client: that waits for the first tier)
        if path is None:
            path = default_path(create=not read_only)
        self.path = os.fspath(path)
        self.read_only = read_only
        self.max_content_bytes = max_content_bytes
        self._closed = False
        self._close_lock = threading.Lock()
        driver.reset_locks_after_fork(self)
        # (an in-memory read_only store is refused there: it would be empty)
        self._store: Backend = open_backend(self.path, durability=durability, lock_timeout=lock_timeout,
                                           read_only=read_only)
        shared = is_postgres_url(self.path)  # a server's database: no folder beside it
        self.path = self._store.path  # (a URL without its secrets, for every message from here on)
        try:
            embedder = model_arg(embedder, "embedder", "embed")
            self._reranker_arg = model_arg(reranker, "reranker", "score")
            self._reranker: Any = None
            self._examples: Any = None  # selector's example vectors (see _likeness)
            self._models_lock = threading.Lock()
            recorded = self._store.embedder_identity()
            wanted = model_name(embedder)
            switch = False  # to another model: re-embed everything (once it is proven)
            if recorded and wanted and wanted != recorded.get("name"):
                if not reembed:
                    raise model_mismatch(self.path, recorded, repr(wanted))
                switch = True
            # reembed=True with the recorded model (or none yet) has nothing to switch: it is
            # a no-op, so start-up code that passes it stays safe to run again.
            self.embed_mode = embed
            in_memory = self._store.in_memory
            if cache_dir is None and shared:
                # This machine's tiers of that database, found again by its instance id.
                cache_dir = platformdirs.user_cache_path("localmem", appauthor=False) / f"db-{self._store.instance_id}"
            elif cache_dir is None and not in_memory:
                cache_dir = self.path + "-cache"
            # A shared database's log is this machine's, in its cache folder (read even read-only).
            log_file = str(Path(cache_dir) / "strategy-log") if shared and cache_dir is not None else log_path(self.path)
            if shared and cache_dir is not None and strategy_log and not read_only:
                # (no disk tier may make it: hot_window=0, or cache= Redis); a folder that
                # cannot be had leaves the log to say so, as a cache tier would.
                with contextlib.suppress(OSError):
                    private_dir(Path(cache_dir))
            if read_only:
                cache_dir, hot_window, query_cache_ttl = None, 0, 0  # no cache folder: nothing created
            self._cache_dir = None if cache_dir is None else Path(cache_dir)
            namespace = self._store.instance_id or ""
            self._hot: HotTier | None = None
            self._queries: QueryTier | None = None
            # A lock on a cache file is waited out no longer than a cache is worth.
            self._cache_timeout = min(CACHE_TIMEOUT, float(lock_timeout))
            self._embedding = Embeddings(
                embedder, path=self.path, recorded=self._store.embedder_identity,
                cache_dir=self._cache_dir, ttl=float(embedding_cache_ttl), timeout=self._cache_timeout,
                disk_cache=not read_only,
            )
            if cache is not None and not read_only:
                from .redis_cache import open_tiers

                self._hot, self._queries = open_tiers(cache, namespace=namespace, hot_size=hot_window,
                                                      hot_ttl=hot_window_ttl, query_ttl=float(query_cache_ttl))
            else:
                if hot_window:
                    self._hot = HotWindow(
                        self._cache_dir, namespace=namespace, size=hot_window, ttl=hot_window_ttl,
                        timeout=self._cache_timeout,
                    )
                if query_cache_ttl:
                    self._queries = QueryCache(
                        self._cache_dir, namespace=namespace, ttl=float(query_cache_ttl),
                        timeout=self._cache_timeout,
                    )
            self._log = StrategyLog(
                log_file, keep_queries=self.log_queries,
                retention_days=log_retention, read_only=read_only,
            ) if strategy_log else None
            self._metrics: Any = None
            if metrics:
                from .metrics import Metrics

                self._metrics = Metrics(active_conversations=self.active_conversations)
                self._embedding.observe = self._observe_embedding
            self._gate = ForgetGate()
            self._searches = Searches()  # the embedder lets them finish first (indexer.py)
            self._indexer = Indexer(
                self._store, None if in_memory else self._open_store,
                self._embedding.documents, self._embedding.identity,
                thread_exit=self._embedding.release_thread, guard=self._gate.shared,
                searches=self._searches,
            )
            self._folder: Folder | None = None
            if summaries is not None and not read_only:  # (read-only: the summaries as stored)
                self._folder = self._make_folder(summaries)
            self._lifecycle = Lifecycle(
                self._store, hot=self._hot, queries=self._queries, embeddings=self._embedding, log=self._log,
                refold=None if self._folder is None else self._folder.request, gate=self._gate,
            )
            self._maintainer = None if interval is None else Maintainer(interval, self.maintain)
            if switch:
                self._embedding.prove()  # before dropping a single vector of the old model
                self._store.reset_vectors()
            if embed != "off" and not read_only and self._store.pending_count():
                self._indexer.notify()  # left over from a crash, a reembed, or embed="off"
        except BaseException:
            self._close_parts()
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
            self._close_parts()

    def _close_parts(self) -> None:
        """Stop the background work (maintenance first, then a forget or maintenance run in
        progress is waited for, then the workers), close caches and log, then the store
        (whatever was opened)."""
        lifecycle = getattr(self, "_lifecycle", None)
        with contextlib.ExitStack() as stack:  # closes in reverse order, each even if one fails
            stack.callback(self._store.close)
            for name in ("_lifecycle", "_log", "_embedding", "_queries", "_hot", "_indexer", "_folder"):
                part = getattr(self, name, None)
                if part is not None:
                    stack.callback(part.close)
            if lifecycle is not None:
                stack.callback(lifecycle.drain)
            maintainer = getattr(self, "_maintainer", None)
            if maintainer is not None:
                stack.callback(maintainer.close)

    @property
    def closed(self) -> bool:
        return self._closed

    # -- models -----------------------------------------------------------------------

    @property
    def embedder(self) -> Any:
        """The embedder (resolved on first access; the ONNX session on first embed).
        Unset, it is the model recorded in the file, else the registry default."""
        self._check_open()
        return self._embedding.model()

    @property
    def reranker(self) -> Any:
        """The cross-encoder reranker (resolved on first access)."""
        self._check_open()
        with self._models_lock:
            if self._reranker is None:
                self._reranker = load_model(self._reranker_arg, "reranker")
            return self._reranker

    def _open_store(self) -> Backend:
        """Another handle on the database, with this Memory's settings (the embedding
        worker's: its own connections)."""
        return self._store.reopen()

    def __enter__(self) -> Memory:
        self._check_open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "open"
        return f"<Memory {self.path!r} {state}{' read-only' if self.read_only else ''}>"

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError(f"Memory({self.path!r}) is closed")

    def _check_writable(self, what: str) -> None:
        """Open, and allowed to write: ``what`` names the write in the error."""
        self._check_open()
        if self.read_only:
            raise ReadOnlyError(f"Memory({self.path!r}) was opened with read_only=True: cannot {what}")

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
        self._check_writable("add a message")
        try:
            m = new_message(
                role, content, conversation_id=conversation_id, owner_id=owner_id, feature=feature,
                msg_id=msg_id, metadata=metadata, created_at=created_at,
                max_content_bytes=self.max_content_bytes,
            )
            stored, new = self._store.insert(m)
            if new:
                if self._metrics is not None:
                    self._metrics.messages_added(1)
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("message added", extra={"event": "message_added", "msg_id": stored.msg_id,
                                                      "conversation_id": stored.conversation_id, "role": stored.role})
            if new and self._folder is not None:
                self._folder.written({(stored.owner_id, stored.conversation_id): [(stored.content, m.created_us)]})
            self._after_write(message=stored, added=1)
        except LocalMemError as exc:
            self._count_error("add", exc)
            raise
        return stored

    def _after_write(self, *, message: Message | None = None, added: int = 0) -> None:
        """Embed what was just queued: now (``embed="sync"``) or in the background."""
        if self.embed_mode == "sync":
            try:
                self._embed_now()
            except LocalMemError as exc:
                # The messages are committed and stay queued: a distinct error, so that a
                # caller does not store them again by retrying add() without a msg_id.
                raise NotEmbeddedError(
                    f"stored, but not embedded (embed='sync'): {exc}. The message stays "
                    "queued for its vector; flush() or the next open embeds it. Do not add it again",
                    message=message, added=added,
                ) from exc
        elif self.embed_mode == "background":
            self._indexer.notify()

    def _make_folder(self, policy: SummaryPolicy) -> Folder:
        summarizer = policy.summarizer
        if summarizer is None:
            from .summarize import ExtractiveSummarizer

            summarizer = ExtractiveSummarizer(policy.max_tokens, count_tokens=policy.count_tokens)
        return Folder(self._store, policy, summarizer, policy.name or summarizer_name(summarizer))

    def _embed_now(self) -> None:
        """Embed everything queued before returning (``embed="sync"``)."""
        try:
            while self._indexer.run_batch():
                pass
        except Exception as exc:
            raise as_localmem_error(exc, "embedding failed") from exc

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
        self._check_writable("add messages")
        if type(chunk_size) is not int or not 1 <= chunk_size <= 100_000:
            raise InvalidInputError(f"chunk_size must be an int from 1 to 100000; got {chunk_size!r}")
        defaults = {"conversation_id": conversation_id, "owner_id": owner_id}
        items = iter(messages)
        index = added = 0
        with self._bulk_write("add_many") as committed:
            while chunk := list(itertools.islice(items, chunk_size)):
                checked = []
                for item in chunk:
                    checked.append(self._check_item(item, index, defaults))
                    index += 1
                added = committed(checked, self._store.insert_many(checked))
        return added

    @contextlib.contextmanager
    def _bulk_write(self, operation: str) -> Iterator[Callable[[list[Any], int], int]]:
        """A write of many chunks (``add_many``, ``import_``): yields ``committed(chunk,
        new)``, to call once each chunk is committed with how many of its messages were
        new; it counts them, embeds or queues them, gathers them for the summary worker,
        and returns how many were added so far. The summary worker is told once the write
        ends (told chunk by chunk, it would fold while the write runs), after an error too:
        the chunks before it stay committed. An error is counted under ``operation``."""
        written: dict[tuple[str, str], Written] = {}
        added = 0

        def committed(chunk: list[Any], new: int) -> int:
            nonlocal added
            added += new
            if new and self._folder is not None:
                self._gather_writes(chunk, written)
            if self._metrics is not None:
                self._metrics.messages_added(new)
            if new and log.isEnabledFor(logging.DEBUG):
                log.debug("messages added", extra={"event": "message_added", "count": new})
            self._after_write(added=added)
            return added

        try:
            yield committed
        except LocalMemError as exc:
            self._count_error(operation, exc)
            raise
        finally:
            if written and self._folder is not None:
                self._folder.noted(written)

    def _gather_writes(self, chunk: list[Any], written: dict[tuple[str, str], Written]) -> None:
        """Add a committed chunk's tokens per conversation to ``written`` (for the summary
        worker: retries of stored messages count too, which only makes a look likelier)."""
        assert self._folder is not None
        writes: dict[tuple[str, str], list[tuple[str, int]]] = {}
        for m in chunk:
            writes.setdefault((m.owner_id, m.conversation_id), []).append((m.content, m.created_us))
        for key, new in self._folder.measure(writes).items():
            before = written.get(key)
            if before is not None:
                tokens = -1 if new.tokens < 0 or before.tokens < 0 else before.tokens + new.tokens
                new = Written(tokens, min(new.oldest_us, before.oldest_us))
            written[key] = new
        if len(written) >= 10_000:
            self._folder.noted(written)
            written.clear()

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

    # -- export / import --------------------------------------------------------------

    def export(
        self,
        path: str | os.PathLike[str],
        *,
        owner_id: str | None = None,
        conversation_id: str | None = None,
        before: datetime | None = None,
        vectors: bool = False,
        format: str | None = None,
        overwrite: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ExportReport:
        """Write messages to ``path``: every message, or an owner's (``owner_id``), one of
        its conversations (``conversation_id`` too), those created before ``before`` (an
        aware datetime); with ``vectors=True``, each with its vector. Returns an
        ``ExportReport``.

        ``format``: ``"jsonl"`` (one message a line, after a header line; see
        ``localmem.transfer`` for the format) or ``"parquet"`` (through DuckDB); None picks
        Parquet for a name ending in ``.parquet``, else JSONL. The messages are read in one
        snapshot (writes meanwhile are not in the file), in insertion order, a batch at a
        time (memory stays bounded). The file is written beside ``path`` and renamed into
        place once complete and on disk: ``path`` never holds half an export. It is
        created readable by its owner only (mode 0600 on POSIX). An existing ``path``
        raises ``InvalidInputError`` unless ``overwrite=True``; so does the database's own
        file. Nothing in the file depends on when it was written: exporting what an
        import of it stored into an empty file gives the same bytes.

        ``progress``: a callable given a ``Progress`` at the start, as batches are written
        and at the end (``localmem.progress``).
        """
        self._check_open()
        return transfer.export(
            self._store, path, database=self.path, owner_id=owner_id, conversation_id=conversation_id,
            before=before, vectors=vectors, format=format, overwrite=overwrite, progress=progress,
        )

    def import_(
        self,
        path: str | os.PathLike[str],
        *,
        skip_invalid: bool = False,
        progress: ProgressCallback | None = None,
    ) -> ImportReport:
        """Store the messages of an export file (JSONL or Parquet, told apart by content).
        Returns an ``ImportReport``.

        Two passes. The first reads every line and checks it with the rules of ``add()``
        (``msg_id`` and ``created_at`` required), the header, each vector's size, and each
        msg_id against the file's earlier lines and the database: a msg_id with other
        fields than it has there is refused. If any line is bad, ``InvalidInputError``
        lists the first ones by line number and nothing is imported; with
        ``skip_invalid=True`` the other lines are, and the report lists the bad ones.
        The second pass stores the messages in chunks of 1,000, each chunk one
        transaction. Messages stored already with the same fields are left as they are
        (``unchanged``): importing a file again changes nothing. A crash (or a full
        disk) during the second pass leaves the chunks before it committed; importing
        the file again finishes the job.

        Vectors in the file are stored as they are, with no embedding, when they come from
        the model whose vectors the database holds, or (none yet) when this Memory was not
        given another embedder; else their messages are queued for this Memory's
        embedder, and ``vectors_skipped`` says why. Raises ``ReadOnlyError`` on a Memory
        opened read-only, and ``OSError`` (``FileNotFoundError``...) when the file
        cannot be read. ``progress``: as for ``export``, in two stages: ``"validate"``
        (bytes, or rows of a Parquet file) then ``"write"`` (messages).
        """
        self._check_writable("import")
        wanted = {"name": self._embedding.name, "dim": getattr(self._embedding.arg, "dim", None)}
        with self._bulk_write("import") as committed:
            return transfer.import_(
                self._store, path, max_content_bytes=self.max_content_bytes, wanted=wanted,
                skip_invalid=skip_invalid, progress=progress, committed=committed,
            )

    # -- reads ------------------------------------------------------------------------

    def get(self, msg_id: str) -> Message | None:
        """The stored message with this msg_id, or None."""
        self._check_open()
        return self._store.get(check_id(msg_id, "msg_id"))

    def messages(self, *, conversation_id: str, owner_id: str) -> tuple[Message, ...]:
        """Every message of the conversation, oldest first (by ``created_at``, then the
        order they were stored in): the whole chat history, as the chat-history adapters
        (``localmem.integrations``) read it. Empty for an unknown conversation."""
        self._check_open()
        owner, conversation = check_id(owner_id, "owner_id"), check_id(conversation_id, "conversation_id")
        rows = self._store.conversation_rows(owner, conversation)
        return tuple(row_to_message(r) for r in rows)

    def conversations(self, owner_id: str) -> tuple[str, ...]:
        """The ids of the owner's conversations that hold at least one message, sorted."""
        self._check_open()
        return tuple(self._store.owner_conversations(check_id(owner_id, "owner_id")))

    @_gated
    def get_memory(
        self,
        strategy: Strategy | str,
        *,
        conversation_id: str,
        owner_id: str,
        query: str | None = None,
        limit: int = 10,
        lookback_days: float | None = 7,
        keyword: bool = True,
        dense: bool = True,
        min_relevance: Any = _MEMORY_SETTING,
        rerank: bool = True,
        rerank_threshold: Any = _MEMORY_SETTING,
        rerank_min_keep: Any = _MEMORY_SETTING,
    ) -> MemoryResult:
        """The messages worth putting in the prompt, chosen by ``strategy``.

        * ``session_only``: no stored messages.
        * ``recent_history``: the last ``limit`` messages of the conversation created inside
          the last ``lookback_days`` days (None: all time), oldest first.
        * ``semantic_search``: the conversation's ``limit`` messages most related to
          ``query``, best first, from all time (as in the original design).
        * ``hybrid``: ``recent_history`` for ``max(1, limit // 2)`` messages
          (``source="recent"``), then ``semantic_search`` results not among them
          (``source="semantic"``), ``limit`` in all.
        * ``cross_conversation``: the owner's messages from every conversation inside the
          lookback window most related to ``query``, best first.
        * ``auto``: one of the five, chosen for this query (``localmem.selector``: the
          text, then where the closest stored messages are); ``result.strategy`` is the
          one that ran and ``result.selection`` says why, with the scores and
          ``choose_ms``. The query's vector and the owner's ranking the choice read are
          reused by the search it chooses. Without an embedding (``dense=False``, or a
          Memory opened with ``embed="off"``, where auto searches by keywords alone) it
          reads the text, then where the query's words are (other conversations: cross_conversation).

        Searching by meaning fuses the dense (cosine) ranking with FTS5 BM25 by score
        fusion (``localmem.retrieval``: 0.6 x BM25 / the best BM25 + 0.4 x cosine / the
        best cosine among the candidates), then adds the signals (``localmem.signals``: a
        question passes part of its score to its answer, a time or a name the query gives
        favours the messages that match, and length counts); ``score`` is then that sum
        (mostly 0 to 2; never negative). ``keyword=False`` searches by vectors alone and
        ``score`` is the cosine similarity; ``dense=False`` by BM25 alone and ``score`` is ``-bm25`` (higher
        is better; no model is needed). ``query=None`` searches with the conversation's latest user
        message (the original design's "user input"); with none, the semantic part is empty.
        Messages whose vectors are still being computed are found by keywords only: call
        ``flush()`` first (or open with ``embed="sync"``) to include them by meaning.

        ``min_relevance`` (default: the Memory's, itself ``"auto"`` by default) is the
        relevance floor of the searching strategies, a cosine similarity: when the query's
        best dense match is below it, nothing in the scope answers the query and the
        answer is empty (its summary says "no relevant memory"); otherwise messages below
        it are dropped unless BM25 matched them or they answer a question that stayed (the
        message after it: its question is the evidence). ``"auto"`` is the floor measured
        for the embedder (0.35 for all-MiniLM-L6-v2; none for a model not measured),
        ``None`` turns it off. ``dense=False`` searches have no similarity to judge by,
        hence no floor; in ``hybrid`` it applies to the semantic part only.

        With a ``reranker``, the searching strategies reorder their answer with it (the
        semantic part of ``hybrid``): it scores the first ``rerank_candidates`` messages
        that passed the floor, those under ``rerank_threshold`` are dropped unless fewer
        than ``rerank_min_keep`` pass (then the best ``rerank_min_keep`` stay).
        ``rerank=False`` skips it for this call; ``rerank_threshold`` and
        ``rerank_min_keep`` default to the Memory's. ``stages`` on the result says what
        each stage did (None on a cache hit).

        A repeated call with the same arguments on an unchanged scope is answered from the
        query cache (``cache_hit=True``); any message added to the scope voids it.
        """
        started = time.perf_counter()
        try:
            strategy, request, recall, selection = self._recall(
                strategy, conversation_id, owner_id, query, limit, lookback_days, keyword, dense,
                min_relevance, rerank, rerank_threshold, rerank_min_keep, use_cache=True,
            )
        except LocalMemError as exc:
            self._count_error("get_memory", exc)
            raise
        result = MemoryResult(
            messages=recall.messages,
            strategy=strategy,
            cache_hit=recall.cache_hit,
            context_summary=recall.context_summary,
            latency_ms=(time.perf_counter() - started) * 1000,
            stages=recall.stages,
            selection=selection,
        )
        if self._log is not None:
            self._log_call(request, result, query)
        if self._metrics is not None:
            self._measure_call(result)
        if log.isEnabledFor(logging.DEBUG):
            self._log_event(result)
        return result

    def _measure_call(self, result: MemoryResult) -> None:
        metrics = self._metrics
        metrics.query(result.strategy.value, result.cache_hit, result.latency_ms / 1000)
        if result.selection is not None:
            metrics.auto_selected(result.strategy.value)
        stages = result.stages
        if stages is not None and stages.reranked:
            from .metrics import rank_changes

            searched = [m for m in result.messages if m.first_rank is not None]
            before = [m.msg_id for m in sorted(searched, key=lambda m: m.first_rank or 0)]
            metrics.rerank(stages.rerank_ms / 1000, rank_changes(before, [m.msg_id for m in searched]))

    @staticmethod
    def _log_event(result: MemoryResult) -> None:
        """The structured events of one call (DEBUG): the strategy used or auto-selected,
        a cache hit or miss, and the rerank when it ran."""
        selection = result.selection
        log.debug("strategy %s", "auto-selected" if selection else "used", extra={
            "event": "strategy_auto_selected" if selection else "strategy_used",
            "strategy": result.strategy.value, "reason": selection.reason if selection else None,
            "results": len(result.messages), "latency_ms": result.latency_ms})
        if result.strategy is not Strategy.SESSION_ONLY:
            tier = "hot_window" if result.strategy is Strategy.RECENT_HISTORY else "query_cache"
            log.debug("cache %s", "hit" if result.cache_hit else "miss", extra={
                "event": "cache_hit" if result.cache_hit else "cache_miss", "tier": tier})
        stages = result.stages
        if stages is not None and stages.reranked:
            log.debug("rerank done", extra={"event": "rerank_done", "reranked": stages.reranked,
                                            "below_threshold": stages.below_threshold, "rerank_ms": stages.rerank_ms})

    def _count_error(self, operation: str, exc: BaseException) -> None:
        if self._metrics is not None:
            self._metrics.error(operation, exc)

    def _observe_embedding(self, hits: int, misses: int, seconds: float | None) -> None:
        if seconds is None:
            self._metrics.embedding_cache(hits, misses)
        else:
            self._metrics.embedding(seconds)

    def active_conversations(self, hours: float = 1.0) -> int:
        """How many conversations have a message created in the last ``hours`` hours
        (the metrics' ``localmem_active_conversations`` gauge: the last hour)."""
        self._check_open()
        span = check_positive(hours, "hours", below=10**7)
        assert span is not None
        return self._store.active_conversations(now_us() - int(span * 3_600_000_000))

    def metrics_text(self) -> str:
        """The Prometheus text exposition of this Memory's metrics (of every process's,
        with ``PROMETHEUS_MULTIPROC_DIR``). Needs ``Memory(metrics=True)``."""
        self._check_open()
        if self._metrics is None:
            raise StrategyUnavailableError("metrics are off: open the Memory with metrics=True")
        text: str = self._metrics.text()
        return text

    def _log_call(self, request: strategies.Request, result: MemoryResult, query: str | None) -> None:
        """One strategy-log entry for an answered call (a few µs: the log writes, and
        hashes the query, later). ``query`` is the caller's own (None: none given), never
        the message a search used in its place."""
        log = self._log
        assert log is not None
        selection = result.selection
        reranked = result.stages if result.stages is not None and result.stages.reranked else None
        log.append(LogEntry(
            now_us(), request.owner_id, request.conversation_id, result.strategy.value,
            "caller" if selection is None else "auto", None if selection is None else selection.reason,
            len(result.messages), result.latency_ms, result.cache_hit,
            None if selection is None else selection.choose_ms,
            None if reranked is None else reranked.rerank_ms,
            None if reranked is None else reranked.reranked,
            None if reranked is None else reranked.below_threshold,
            None, query if query is not None and query.strip() else None,
        ))

    @_gated
    def explain(
        self,
        strategy: Strategy | str,
        *,
        conversation_id: str,
        owner_id: str,
        query: str | None = None,
        limit: int = 10,
        lookback_days: float | None = 7,
        keyword: bool = True,
        dense: bool = True,
        min_relevance: Any = _MEMORY_SETTING,
        rerank: bool = True,
        rerank_threshold: Any = _MEMORY_SETTING,
        rerank_min_keep: Any = _MEMORY_SETTING,
    ) -> Explanation:
        """How ``get_memory`` with these arguments chooses its answer, stage by stage: the
        first stage's ranking, what the relevance floor and the rerank threshold dropped,
        the order after reranking and how each message moved (``Explanation.render()``
        prints it). A searching strategy only (for ``hybrid``, its semantic part; with
        ``auto``, the one it chooses, if it searches); the query cache is neither read nor
        written."""
        strategy = check_strategy(strategy)
        if strategy not in strategies.SEARCHING and strategy is not Strategy.AUTO:
            raise InvalidInputError(f"explain needs a strategy that searches; {strategy.value} does not")
        strategy, request, recall, selection = self._recall(
            strategy, conversation_id, owner_id, query, limit, lookback_days, keyword, dense,
            min_relevance, rerank, rerank_threshold, rerank_min_keep, use_cache=False,
        )
        if selection is not None and strategy not in strategies.SEARCHING:
            raise InvalidInputError(
                f"auto chose {strategy.value} ({selection.reason}: {selection.detail}), which does not "
                "search: there is no ranking to explain")
        searched = [m.msg_id for m in recall.messages if m.source != "recent"]
        return explain(self._store, strategy, request.query, request.limit, recall.stages, recall.trace, searched)

    def _recall(
        self, strategy: Strategy | str, conversation_id: str, owner_id: str, query: str | None,
        limit: int, lookback_days: float | None, keyword: bool, dense: bool, min_relevance: Any,
        rerank: bool, rerank_threshold: Any, rerank_min_keep: Any, *, use_cache: bool,
    ) -> tuple[Strategy, strategies.Request, strategies.Recall, Selection | None]:
        """Validate a call and answer it: (the strategy that ran, the request as searched,
        the recall, how AUTO chose or None)."""
        self._check_open()
        strategy = check_strategy(strategy)
        conversation_id = check_id(conversation_id, "conversation_id")
        owner_id = check_id(owner_id, "owner_id")
        limit = check_limit(limit)
        lookback = check_lookback_days(lookback_days)
        query = check_query(query)
        check_flag(keyword, "keyword")
        check_flag(dense, "dense")
        if not (keyword or dense):
            raise InvalidInputError("keyword=False and dense=False leave nothing to search with")
        floor = self.min_relevance if min_relevance is _MEMORY_SETTING else check_min_relevance(min_relevance)
        check_flag(rerank, "rerank")
        threshold = self.rerank_threshold if rerank_threshold is _MEMORY_SETTING else check_threshold(rerank_threshold)
        min_keep = (self.rerank_min_keep if rerank_min_keep is _MEMORY_SETTING
                    else check_count(rerank_min_keep, "rerank_min_keep", low=0, high=_MAX_RERANK))
        # The window's start, once: the selector's probe and the search it chooses then
        # scan the same scope (the Searcher's memo matches), and every part agrees.
        request = strategies.Request(owner_id, conversation_id, query, limit, lookback,
                                     since_us=strategies.since_us(lookback))
        with self._searches.running():  # the background embedder lets it finish first
            return self._answer(strategy, request, keyword, dense, floor, rerank, threshold, min_keep,
                                use_cache=use_cache)

    def _answer(
        self, strategy: Strategy, request: strategies.Request, keyword: bool, dense: bool, floor: Any,
        rerank: bool, threshold: float | None, min_keep: int, *, use_cache: bool,
    ) -> tuple[Strategy, strategies.Request, strategies.Recall, Selection | None]:
        """``_recall``'s answer to a validated call."""
        selection = searcher = None
        if strategy is Strategy.AUTO:
            # Without an embedder auto chooses only what can run: searches by keywords.
            dense = dense and self.embed_mode != "off"
            selection, searcher = self._choose(request, keyword, dense, floor)
            strategy = selection.strategy
        if strategy not in strategies.SEARCHING:
            recall = strategies.REGISTRY[strategy](strategies.Sources(self._store, self._hot), request)
            return strategy, request, recall, selection
        plan = self._rerank_plan(threshold, min_keep) if rerank else None
        request, recall = self._search(strategy, request, keyword, dense, floor, plan, use_cache=use_cache,
                                       searcher=searcher)
        return strategy, request, recall, selection

    def _search_query(self, request: strategies.Request) -> str | None:
        """The text a search uses: the query, else the conversation's latest user message."""
        query = request.query
        if query is not None and not query.strip():
            query = None
        if query is None:
            query = self._store.latest_user_message(request.owner_id, request.conversation_id)
        return query

    def _searcher(self, keyword: bool, dense: bool) -> Searcher:
        return Searcher(self._store, self._embedding.query_vector, keyword=keyword, dense=dense,
                        exact_max=self.exact_search_max)

    def _choose(
        self, request: strategies.Request, keyword: bool, dense: bool, floor: float | str | None,
    ) -> tuple[Selection, Searcher | None]:
        """Strategy.AUTO: the selection stage (``localmem.selector``), and the searcher
        holding what its probe computed (the query's vector and dense rankings), for the
        chosen search to reuse. ``choose_ms`` excludes embedding: the query's, and the
        selector's examples (once per Memory)."""
        started = time.perf_counter()
        query = self._search_query(request)
        cues = selector.read_cues(query or "")
        searcher: Searcher | None = None
        embedding_ms = 0.0

        def probe() -> selector.Probe | None:
            nonlocal searcher, embedding_ms
            if not dense or self.embed_mode == "off" or query is None:
                return None
            searcher = self._searcher(keyword, dense)
            before = time.perf_counter()
            searcher.vector(query)
            calibrated = self._embedding.calibrated_floor()
            if calibrated is not None:
                self._examples_ready()  # once per Memory: embedding work, not choosing
            embedding_ms = (time.perf_counter() - before) * 1000
            close = floor if isinstance(floor, float) else calibrated
            found = self._probe(searcher, query, request, close)
            if calibrated is not None:  # a measured model: its similarities to the examples mean something
                small_talk, recent = self._likeness(searcher.vector(query))
                found = replace(found, like_small_talk=small_talk, like_recent=recent)
            if cues.impersonal and cues.content and keyword:
                match = keyword_query(" ".join(cues.content))
                since = request.since_us
                shares = False if match is None else self._store.any_keyword_match(match, request.owner_id, since)
                found = replace(found, shares_words=shares)
            return found

        def pattern() -> Strategy | None:
            if self._log is None:
                return None
            since = now_us() - selector.PATTERN_DAYS * _US_PER_DAY
            return selector.habit(self._log.explicit_counts(request.owner_id, since))

        def words() -> selector.Where | None:
            """No embedding: where the query's content words are (selector.choose's
            ``words``): in another of the owner's conversations ("elsewhere":
            cross_conversation, whose scope holds this one too), else only in this one
            ("here"), else nowhere (None)."""
            terms = keyword_terms(" ".join(cues.content)) if keyword else []
            if not terms:
                return None
            here, elsewhere = self._store.keyword_presence(
                terms, owner_id=request.owner_id, conversation_id=request.conversation_id,
                since_us=request.since_us, skip_text=query,
            )
            return "elsewhere" if elsewhere else ("here" if here else None)

        chosen = selector.choose(cues, probe, pattern, has_query=query is not None, words=words)
        choose_ms = (time.perf_counter() - started) * 1000 - embedding_ms
        return replace(chosen, choose_ms=choose_ms), searcher

    def _examples_ready(self) -> Any:
        """The selector's example vectors, unit length (made once per Memory, through the
        embedding cache)."""
        if self._examples is not None:
            return self._examples
        with self._models_lock:
            if self._examples is None:
                import numpy as np

                def unit(texts: tuple[str, ...]) -> Any:
                    m = self._embedding.embed(texts, "query")
                    return m / np.maximum(np.linalg.norm(m, axis=1, keepdims=True), 1e-12)

                self._examples = (unit(selector.SMALL_TALK_EXAMPLES), unit(selector.RECENT_EXAMPLES))
            return self._examples

    def _likeness(self, vector: bytes) -> tuple[float, float]:
        """The query's cosine to the closest small-talk and to the closest follow-up example."""
        import numpy as np

        q = np.frombuffer(vector, dtype="<f4")
        q = q / max(float(np.linalg.norm(q)), 1e-12)
        small, recent = self._examples_ready()
        return float((small @ q).max()), float((recent @ q).max())

    def _probe(
        self, searcher: Searcher, query: str, request: strategies.Request, close: float | None,
    ) -> selector.Probe:
        """Where the owner's messages nearest ``query`` are: the owner-wide dense ranking
        in the lookback window (the one cross_conversation searches with, at its depth),
        split by conversation. When nothing there is close and the window hides older
        messages of this conversation, its all-time ranking too (semantic_search's)."""
        owner, conversation = request.owner_id, request.conversation_id
        depth = searcher.depth(request.limit, None)
        since = request.since_us
        ranked = searcher.knn(query, depth, {"owner_id": owner, "conversation_id": None, "since_us": since})
        homes = self._store.conversation_ids([row_id for row_id, _ in ranked])
        here = max((cos for row_id, cos in ranked if homes.get(row_id) == conversation), default=None)
        elsewhere = max((cos for row_id, cos in ranked if homes.get(row_id, conversation) != conversation), default=None)
        recent = self._store.recent_similarity(searcher.vector(query), owner, conversation, selector.RECENT_TURNS)
        if since is not None and close is not None and (here is None or here < close) \
                and (elsewhere is None or elsewhere < close):
            own = searcher.knn(query, depth, {"owner_id": owner, "conversation_id": conversation, "since_us": None})
            here = max((cos for _, cos in own), default=here)
        return selector.Probe(here, elsewhere, close, recent=recent)

    def _rerank_plan(self, threshold: float | None, min_keep: int) -> Rerank | None:
        """The reranking settings of a call, or None without a reranker (the model is
        loaded here, so a reranker that cannot load fails the call, never skipped)."""
        if self._reranker_arg is None:
            return None
        model = self.reranker
        name = model_name(self._reranker_arg) or getattr(model, "name", None) or type(model).__qualname__
        return Rerank(model, str(name), self.rerank_candidates, threshold, min_keep, self.rerank_adaptive)

    def _search(
        self, strategy: Strategy, request: strategies.Request, keyword: bool, dense: bool,
        floor: float | str | None, rerank: Rerank | None, *, use_cache: bool = True,
        searcher: Searcher | None = None,
    ) -> tuple[strategies.Request, strategies.Recall]:
        """A searching strategy's answer: from the query cache when the scope is unchanged,
        else computed (and cached, unless vectors are pending). ``floor`` as given
        (``"auto"``: the embedder's calibrated one); it needs the dense similarity, so
        ``dense=False`` searches have none."""
        if dense:
            if self.embed_mode == "off":
                raise StrategyUnavailableError(
                    f"{strategy.value} searches by meaning, and this Memory was opened with "
                    "embed='off'; open it with embed='background' or 'sync' (or search with dense=False)"
                )
            self._indexer.raise_error()
        query = self._search_query(request)
        if not dense:
            floor = None
        elif floor == "auto":
            floor = self._embedding.calibrated_floor()
        assert floor is None or isinstance(floor, float)
        request = replace(request, query=query, min_relevance=floor, rerank=rerank)
        cross = strategy is Strategy.CROSS_CONVERSATION
        scope = self._store.scope(request.owner_id, None if cross else request.conversation_id)
        reranking = None if rerank is None else [
            rerank.name, rerank.candidates, rerank.threshold, rerank.min_keep, rerank.adaptive]
        key = [strategy.value, request.owner_id, request.conversation_id, query, request.limit,
               request.lookback_days, keyword, dense, floor, reranking]
        # An answer computed while vectors are pending would be outdated by the vectors
        # alone, which change no version: such a scope is neither read nor cached.
        queries = self._queries if use_cache and not scope.pending else None
        if queries is not None:
            cached = queries.get(key, scope.token)
            if cached is not None:
                recall = strategies.recall_from_json(cached, request.lookback_days)
                if recall is not None:
                    return request, recall
        parallel = keyword and scope.size >= PARALLEL_KEYWORD_FROM and not self._store.in_memory
        # A searcher the selector used keeps its vector and rankings (replace() shares them).
        searcher = replace(searcher or self._searcher(keyword, dense), parallel=parallel)
        sources = strategies.Sources(self._store, self._hot, lambda: searcher)
        recall = strategies.REGISTRY[strategy](sources, request)
        if queries is not None:
            queries.put(key, scope.token, strategies.recall_to_json(recall), group=request.owner_id)
        return request, recall

    @staticmethod
    def strategies() -> tuple[Strategy, ...]:
        """The strategies this build can answer (``AUTO`` chooses among the others)."""
        return tuple(Strategy)

    # -- the strategy log -------------------------------------------------------------

    def _strategy_log(self) -> StrategyLog:
        self._check_open()
        if self._log is None:
            raise StrategyUnavailableError("this Memory was opened with strategy_log=False: no log to read")
        return self._log

    def strategy_stats(self, owner_id: str | None = None, days: float | None = 7) -> analytics.StrategyStats:
        """Usage of each strategy over the last ``days`` days (None: all the log), for one
        owner or all: calls, share, latency p50/p95/average, average results, cache hit
        rate, share chosen by ``auto``, and why ``auto`` chose (the original design's
        ``get_strategy_stats`` and ``get_global_stats``). Computed with DuckDB."""
        log = self._strategy_log()
        if owner_id is not None:
            owner_id = check_id(owner_id, "owner_id")
        check_positive(days, "days", none=True)
        if days is not None and days >= 10**6:
            days = None  # longer than any log: all of it
        log.flush()
        since = None if days is None else now_us() - int(days * _US_PER_DAY)
        columns = log.columns(since_us=since, owner_id=owner_id, names=analytics.STATS_COLUMNS)
        return analytics.strategy_stats(columns, owner_id=owner_id, days=days)

    def analytics(self) -> Any:
        """A DuckDB connection (in memory) holding the strategy log as the table
        ``strategy_log``, for your own SQL: ``mem.analytics().sql("SELECT ...")``. A
        snapshot: later calls are not in it; close it when done."""
        log = self._strategy_log()
        log.flush()
        return analytics.connect(log.columns())

    # -- background work --------------------------------------------------------------

    def flush(self, timeout: float | None = None, *, progress: ProgressCallback | None = None) -> None:
        """Wait until every message in the file has its vector, and all that lies beyond
        the windows of the conversations this Memory wrote to or built a context for is
        folded into their summaries (``fold_summary`` folds any one).

        Raises the background worker's error if embedding failed (the messages stay
        queued), ``SummaryError`` if the summariser failed, ``TimeoutError`` after
        ``timeout`` seconds, and ``StrategyUnavailableError`` when opened with
        ``embed="off"`` and ``summaries=None`` (nothing to wait for). ``progress``: a
        callback that gets a ``Progress`` of the vectors written as they are. Read-only, it
        returns at once: nothing runs in the background.
        """
        self._check_open()
        check_callback(progress)
        if self.read_only:
            return
        if self.embed_mode == "off" and self._folder is None:
            raise StrategyUnavailableError("this Memory was opened with embed='off' and no summaries: nothing to flush")
        deadline = None if timeout is None else time.monotonic() + timeout
        if self.embed_mode != "off":
            if progress is None:
                self._indexer.flush(timeout)
            else:
                self._flush_vectors(deadline, progress)
        if self._folder is not None:
            self._folder.flush(None if deadline is None else max(0.0, deadline - time.monotonic()))

    def _flush_vectors(self, deadline: float | None, progress: ProgressCallback) -> None:
        """``Indexer.flush`` in short waits, reporting the queue as it empties."""
        total = self._store.pending_count()
        reporter = Reporter(progress, "flush", total, unit="vectors")
        while True:
            left = None if deadline is None else deadline - time.monotonic()
            try:
                self._indexer.flush(_PROGRESS_WAIT if left is None else max(0.0, min(_PROGRESS_WAIT, left)))
                break
            except TimeoutError:
                if left is not None and left <= _PROGRESS_WAIT:
                    raise
            pending = self._store.pending_count()
            total = max(total, pending)  # (other writers may queue more meanwhile)
            reporter.update(total - pending, total)
        reporter.update(total, total)
        reporter.finish()

    # -- context ----------------------------------------------------------------------

    @_gated
    def build_context(
        self,
        *,
        conversation_id: str,
        owner_id: str,
        query: str | None = None,
        max_tokens: int = 4000,
        count_tokens: Any = None,
        strategy: Strategy | str = Strategy.AUTO,
        instructions: str | None = None,
        memory_share: float = DEFAULT_MEMORY_SHARE,
        history_limit: int = 10,
        lookback_days: float | None = None,
    ) -> context.Context:
        """The prompt's memory for the conversation's next reply, within ``max_tokens``.

        Returns a ``Context``: the system text (``instructions``, then a memory block with
        the conversation's running summary and the messages ``strategy`` retrieved for
        ``query``, each labelled with its time and where it comes from), the recent turns
        as chat messages, the tokens of each part, and what was left out and why.
        ``ctx.to_openai()``, ``ctx.to_anthropic()`` and ``ctx.to_text()`` render it.

        The whole never exceeds ``max_tokens`` as counted by ``count_tokens`` (any
        ``callable(str) -> int``; None: ``localmem.tokens.count_tokens``, an offline
        estimate that errs high; see its docstring for its error against real
        tokenizers), each chat message costing ``MESSAGE_OVERHEAD`` more. The budget
        policy (``localmem.context``): ``memory_share`` of it is reserved for the memory
        block; the recent turns are the newest run that fits and start on a user turn; a
        newest turn too long for the budget is cut at its beginning, with a marker.

        ``strategy`` (default ``auto``), ``query`` (None: the conversation's latest user
        message), ``history_limit`` and ``lookback_days`` (None: all time) are passed to
        ``get_memory`` for the retrieved history (by keywords alone when opened with
        ``embed="off"``); retrieved messages already among the recent turns are not
        repeated. ``history_limit=0`` or ``session_only`` retrieves nothing. To have the
        user's new message counted in the budget, ``add()`` it first; else pass it to
        ``to_openai``/``to_anthropic`` as ``user_message``.

        The summary shown is the one stored: folding runs in the background
        (``flush()`` or ``fold_summary()`` bring it up to date first). Messages older than
        the turns shown and not yet in the summary are listed in ``dropped`` as
        ``"not_summarized"`` (see ``SummaryPolicy`` for when that happens).
        """
        self._check_open()
        conversation_id = check_id(conversation_id, "conversation_id")
        owner_id = check_id(owner_id, "owner_id")
        max_tokens = check_count(max_tokens, "max_tokens", low=1, high=10**7)
        count = check_counter(count_tokens)
        memory_share = check_share(memory_share, "memory_share")
        history_limit = check_count(history_limit, "history_limit", low=0, high=1000)
        instructions = check_text(instructions, "instructions")
        strategy = check_strategy(strategy)
        query = check_query(query)
        lookback_days = check_lookback_days(lookback_days)
        summary = self._store.summary(owner_id, conversation_id)
        candidates, uncovered = self._context_candidates(owner_id, conversation_id, summary, count, max_tokens)
        result = None
        if history_limit and strategy is not Strategy.SESSION_ONLY and candidates:
            result = self.get_memory(
                strategy, conversation_id=conversation_id, owner_id=owner_id, query=query,
                limit=history_limit, lookback_days=lookback_days,
                dense=self.embed_mode != "off",  # no vectors: retrieve by keywords
            )
        built = context.assemble(
            max_tokens=max_tokens, count=count, instructions=instructions, candidates=candidates,
            summary=summary.text if summary else "", summary_version=summary.version if summary else None,
            history=context.best_first(result.messages) if result else (), conversation_id=conversation_id,
            memory_share=memory_share, summary_share=DEFAULT_SUMMARY_SHARE, unsummarized=uncovered,
            strategy=result.strategy if result else None, selection=result.selection if result else None,
        )
        if self._folder is not None and candidates:
            if summary is not None and not summary.text:  # emptied by a delete or a backdated write
                self._folder.request(owner_id, conversation_id)
            else:  # looks if not written to since the open (a restart may have left a fold due)
                self._folder.note(owner_id, conversation_id, 0)
        return built

    def _context_candidates(
        self, owner_id: str, conversation_id: str, summary: SummaryRow | None, count: Any, max_tokens: int,
    ) -> tuple[list[context.Candidate], int]:
        """The conversation's newest messages, newest first, until they cost more than the
        whole budget (none older could be shown), each with its cost; and how many older
        ones the summary does not cover."""
        mark = NO_MARK if summary is None else (summary.through_us, summary.through_id)
        candidates: list[context.Candidate] = []
        used = 0
        before: tuple[int, int] | None = None
        more = True
        while more and used <= max_tokens:
            rows = self._store.rows_after(owner_id, conversation_id, NO_MARK, before=before,
                                          newest_first=True, limit=_CONTEXT_PAGE)
            more = len(rows) == _CONTEXT_PAGE
            for row_id, row in rows:
                cost = count(row.content) + MESSAGE_OVERHEAD
                candidates.append(context.Candidate(
                    row.role, row.content, row.msg_id, from_utc_us(row.created_us),
                    summarized=(row.created_us, row_id) <= mark, cost=cost,
                ))
                used += cost
                before = (row.created_us, row_id)
                if used > max_tokens:
                    break
        if before is None:
            return candidates, 0
        return candidates, self._store.count_between(owner_id, conversation_id, mark, before)

    def fold_summary(self, *, conversation_id: str, owner_id: str) -> int:
        """Fold all that lies beyond the conversation's window into its summary now, in
        this thread, however little (``flush()`` does it in the background worker for the
        conversations this Memory wrote to or built a context for). Returns how many
        messages were folded. For a script or a command that starts, asks and ends before
        the worker would look. Raises ``SummaryError`` if the summariser fails and
        ``StrategyUnavailableError`` when opened with ``summaries=None``."""
        self._check_writable("fold a summary")
        conversation_id = check_id(conversation_id, "conversation_id")
        owner_id = check_id(owner_id, "owner_id")
        if self._folder is None:
            raise StrategyUnavailableError("this Memory was opened with summaries=None")
        return self._folder.fold(owner_id, conversation_id, complete=True)

    def get_conversation_summary(self, *, conversation_id: str, owner_id: str) -> ConversationSummary | None:
        """The conversation's running summary, or None before its first fold (and while
        a deletion's rebuild is due). Folding runs in the background: ``flush()`` first
        for one that includes the latest messages."""
        self._check_open()
        conversation_id = check_id(conversation_id, "conversation_id")
        owner_id = check_id(owner_id, "owner_id")
        row = self._store.summary(owner_id, conversation_id)
        if row is None or not row.text:
            return None
        return ConversationSummary(
            conversation_id=conversation_id, owner_id=owner_id, text=row.text, version=row.version,
            covers_until=from_utc_us(row.through_us), folded=row.folded, summarizer=row.summarizer,
            updated_at=from_utc_us(row.updated_us),
        )

    def reembed(self) -> int:
        """Drop every vector and rebuild them all with this Memory's embedder, in the
        background (``flush()`` waits). Returns how many messages are queued."""
        self._check_writable("re-embed")
        if self.embed_mode == "off":
            raise StrategyUnavailableError("this Memory was opened with embed='off': cannot re-embed")
        self._embedding.prove()  # the reset forgets the recorded model: have the new one first
        queued = self._store.reset_vectors()
        if self.embed_mode == "sync":
            self._embed_now()
        else:
            self._indexer.notify(retry=True)  # asked for now: not held back by an earlier failure
        return queued

    def delete(self, msg_id: str) -> bool:
        """Delete one message with its keyword and vector index rows; False if absent.

        Cache entries that could hold its text go too: its conversation's hot window, the
        cached answers of its owner, and the cached vector of its text. To be sure no byte
        of it stays in any file (the write-ahead logs included), use ``forget``.
        """
        self._check_writable("delete a message")
        deleted = self._store.delete(check_id(msg_id, "msg_id"))
        if deleted is None:
            return False
        if self._hot is not None:
            self._hot.forget(deleted.owner_id, deleted.conversation_id)
        if self._queries is not None:
            self._queries.forget_group(deleted.owner_id)
        self._embedding.forget(deleted.content)
        if self._folder is not None:  # a summary that covered it was emptied: rebuild it
            self._folder.request(deleted.owner_id, deleted.conversation_id)
        return True

    def forget(
        self,
        *,
        owner_id: str | None = None,
        conversation_id: str | None = None,
        before: datetime | None = None,
        wait: float | None = None,
    ) -> ForgetReport:
        """Delete messages for good: an owner's (``owner_id``), one conversation's
        (``owner_id`` and ``conversation_id``), those older than ``before`` (an aware
        datetime; with ``owner_id``, only that owner's), leaving no byte of them behind.

        In one transaction on the file go the messages, their keyword rows, vectors,
        queued embeddings and summaries; then every cache tier entry that could hold them
        (hot windows, cached answers, cached vectors) and their strategy-log entries; then
        the write-ahead logs are copied back and truncated. secure_delete zeroes what was
        freed, so a byte scan of every file under the path and the cache folder finds no
        trace (tests/test_forget.py). Other owners' messages are untouched.

        A reader that holds an older snapshot of the file (an open read in another
        process) keeps the old pages in the -wal until it ends: forget retries for up to
        ``wait`` seconds (default ``lock_timeout``) without blocking writers, then returns
        with ``complete=False`` and says so in ``pending``; ``maintain()`` or ``close()``
        finish it. Returns a ``ForgetReport``.
        """
        self._check_writable("forget")
        owner_id, conversation_id, before_us = check_selection(owner_id, conversation_id, before)
        if owner_id is None and before_us is None:
            raise InvalidInputError("forget needs owner_id, before, or both (nothing is forgotten by default)")
        report = self._lifecycle.forget(Target(owner_id, conversation_id, before_us), wait=self._wait(wait))
        if report.messages:
            log.info("forgot %d messages", report.messages,
                     extra={"event": "forgot", "messages": report.messages, "complete": report.complete})
        return report

    def maintain(
        self,
        *,
        vacuum: bool | None = None,
        integrity: bool = True,
        wait: float | None = None,
        progress: ProgressCallback | None = None,
    ) -> MaintenanceReport:
        """Keep the file healthy; safe to run (from cron, ``localmem maintain``) while agents
        use it: every step takes the write lock briefly, as any write does, except VACUUM,
        which holds it while it rewrites the file (about 1 s per 200 MB).

        In order: expired cache entries; the ``retention`` policies (archive, then forget
        what is older, 5000 messages a transaction); the keyword index's segments merged
        (and what deletes left in them dropped); the strategy log's retention; half-empty
        vector chunks packed; a WAL checkpoint (finishing a forget that a reader held up);
        the space of deleted rows given back by VACUUM when at least ``VACUUM_FREE_SHARE``
        of the pages are free (``vacuum=True``: always; ``False``: never); an integrity
        check (``integrity``). A step that cannot finish is listed in ``pending``
        (``complete=False``); ``LockTimeoutError`` when the file stays locked.
        ``wait``: how long a checkpoint waits for readers (default ``lock_timeout``).
        Returns a ``MaintenanceReport`` of each step, its time and what it did.
        """
        self._check_writable("maintain")
        check_flag(integrity, "integrity")
        if vacuum is not None:
            check_flag(vacuum, "vacuum")
        return self._lifecycle.maintain(
            self.retention, archive=self._archive, vacuum=vacuum, integrity=integrity, wait=self._wait(wait),
            progress=check_callback(progress),
        )

    def _wait(self, wait: float | None) -> float:
        """forget's and maintain's ``wait``: seconds a checkpoint waits for readers
        (None: ``lock_timeout``)."""
        checked = check_positive(wait, "wait", below=3601, none=True)
        return self._store.lock_timeout if checked is None else checked

    def _archive(self, path: str, owner_id: str | None, before_us: int, exclude_owners: Sequence[str],
                 through_id: int) -> int:
        """Retention's archive: what a policy is about to remove, exported to ``path``
        (without vectors: an import embeds them again)."""
        report = transfer.export(
            self._store, path, database=self.path, owner_id=owner_id, before=from_utc_us(before_us),
            exclude_owners=exclude_owners, through_id=through_id,
        )
        return report.messages

    def embedding_cache_stats(self) -> dict[str, Any]:
        """Entries, hits, misses and hit rate of the embedding cache (loads the embedder's
        identity: the cache is per model)."""
        self._check_open()
        return self._embedding.cache().stats()

    def cleanup_expired(self) -> int:
        """Remove expired embedding-cache entries; returns how many."""
        self._check_writable("remove expired cache entries")
        return self._embedding.cache().cleanup_expired()

    def stats(self) -> dict[str, Any]:
        """Path, schema version, counts of messages, conversations and owners, the
        recorded embedder (name, dim, sha256; None before the first vector), how many
        vectors are stored and how many messages still wait for one, and the file size."""
        self._check_open()
        counts = self._store.counts()
        size = self._store.file_bytes()
        vectors = {
            "embedder": self._store.embedder_identity(),
            "vectors": self._store.vector_count(),
            "pending_vectors": self._store.pending_count(),
        }
        return {"path": self.path, **counts, **vectors, "bytes": size}

    def check_integrity(self) -> str:
        """"ok", or what SQLite's and FTS5's integrity checks found.

        The FTS5 check needs the write lock: ``LockTimeoutError`` if another writer holds it.
        Read-only, FTS5's check is the one ``PRAGMA integrity_check`` runs (SQLite 3.44+;
        with an older SQLite the result says it was skipped).
        """
        self._check_open()
        return self._store.check_integrity()
