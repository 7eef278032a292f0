"""Opt-in Prometheus metrics: what a Memory did (queries, automatic selections, errors,
embedding cache, embedding and rerank time, how much reranking reorders, messages added)
and how many conversations are active, as Prometheus's text exposition.

prometheus_client is an optional dependency (the ``metrics`` extra): ``import localmem``
never imports it; ``Metrics()`` does, and says which extra to install when it is missing.
No label carries an owner, user or conversation id: those are unbounded, and every label
value is a time series of its own in Prometheus (and ids would leak into dashboards).

Two modes, chosen the way prometheus_client chooses them, by ``PROMETHEUS_MULTIPROC_DIR``
as it was when prometheus_client was imported (set it before the processes start and
empty the directory at each deployment, as its documentation requires):

- One process (the variable unset). Each ``Metrics`` has its own ``CollectorRegistry``,
  so two ``Memory`` objects in one process never collide on metric names and count apart;
  ``text()`` shows this object's values only.
- Multiprocess (the variable set). Values go to the per-process files in that directory,
  and ``text()`` adds up every process's files with ``MultiProcessCollector``, dead
  processes' included (a counter must not go down, or ``rate()`` would see a reset). The
  files are keyed by metric name and labels, so two sets of metrics in one process would
  overwrite each other's values: here all ``Metrics`` of a process share one set, and
  their counts add up. Everything then describes the directory, not one object.

``localmem_active_conversations`` is computed at scrape time, by the scraping process,
from the callable given (a count over the database): it is not one of the per-process
values. prometheus_client's multiprocess mode cannot serve ``Gauge.set_function`` (the
collector reads only the files), and writing the count into a file-backed gauge would be
wrong in each of its modes: a count of the shared database summed (``sum``) or listed
(``all``) once per process, stale between writes (``mostrecent``), or needing
``mark_process_dead`` hooks in the process manager (``live*``). So the gauge is a small
collector on the scrape registry itself, in both modes: one fresh value of the database
per scrape, no ``pid`` label, and no gauge files (``mark_process_dead`` is not needed for
localmem's metrics). When several processes use different database files with one
directory, the gauge is that of the scraped process's database.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING

from .errors import InvalidInputError

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry, Counter, Histogram
    from prometheus_client.metrics_core import Metric

__all__ = ["CONTENT_TYPE", "Metrics", "exposition", "rank_changes"]

INSTALL = "pip install 'localmem-engine[metrics]'"
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# What an HTTP handler serving text() sends as Content-Type: the classic text format
# that generate_latest writes (kept here so that a caller needs no prometheus_client import).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

QUERY_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
EMBEDDING_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0)
# Reranking 10-50 candidates measured 6-25 ms with TinyBERT-L-2 and 40-300 ms with
# MiniLM-L-6 (README, "Reranking latency"). 5 ms is below the fastest; 30 ms and 100 ms
# are the two models' goals at 30 candidates, so the share of reranks within goal is one
# bucket's count; past 2 s (+Inf) no interactive prompt can wait.
RERANK_BUCKETS = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0)
RANK_CHANGE_BUCKETS = (0, 1, 2, 3, 5, 10, 20, 50)

ACTIVE_CONVERSATIONS = "localmem_active_conversations"
_ACTIVE_HELP = "Conversations with a message in the last hour (computed at scrape time)."


def _require_prometheus_client() -> None:
    """Import prometheus_client, or say which extra brings it. Called first by everything
    that needs it, so the imports after it cannot fail."""
    try:
        import prometheus_client  # noqa: F401
    except ImportError as exc:
        raise InvalidInputError(
            f"metrics need the prometheus_client package, which could not be imported "
            f"({exc}); it comes with the metrics extra: {INSTALL}"
        ) from exc


def _multiprocess_dir() -> str | None:
    """The multiprocess directory, or None in one-process mode.

    prometheus_client decides when it is imported (values.ValueClass), from the
    environment of that moment; the directory is read again when its files are opened.
    A variable set or removed after the import would leave values in memory while
    text() reads the files, or files with no directory: refused with what to do.
    """
    from prometheus_client import values

    # The lower-case spelling is deprecated, but prometheus_client still obeys it.
    path = os.environ.get(MULTIPROC_ENV) or os.environ.get(MULTIPROC_ENV.lower())
    if values.ValueClass is values.MutexValue:
        if path:
            raise InvalidInputError(
                f"{MULTIPROC_ENV} is set, but prometheus_client was imported before it was "
                "and keeps values in this process only; set it before the process starts"
            )
        return None
    if not path or not os.path.isdir(path):
        raise InvalidInputError(
            f"prometheus_client is in multiprocess mode, but {MULTIPROC_ENV}={path!r} is "
            "not a directory; create it (empty) before the processes start"
        )
    return path


class _Instruments:
    """The counters and histograms, registered with ``registry`` (None: with none, as
    multiprocess mode needs, its values being read back from the files)."""

    def __init__(self, registry: CollectorRegistry | None) -> None:
        from prometheus_client import Counter, Histogram

        # Counter names without "_total": prometheus_client appends it to the sample
        # (and strips a given one), so the exposed series is localmem_queries_total.
        self.queries: Counter = Counter(
            "localmem_queries", "Memory queries, by strategy and whether the query cache answered.",
            ["strategy", "cache_hit"], registry=registry,
        )
        self.auto_selections: Counter = Counter(
            "localmem_auto_selections", "Strategies chosen by the automatic selector.",
            ["strategy"], registry=registry,
        )
        self.errors: Counter = Counter(
            "localmem_errors", "Errors, by operation and exception class name.",
            ["operation", "error_type"], registry=registry,
        )
        self.cache_hits: Counter = Counter(
            "localmem_embedding_cache_hits", "Texts whose embedding came from the cache.",
            registry=registry,
        )
        self.cache_misses: Counter = Counter(
            "localmem_embedding_cache_misses", "Texts the model had to embed.",
            registry=registry,
        )
        self.messages_added: Counter = Counter(
            "localmem_messages_added", "Messages stored.", registry=registry,
        )
        self.query_seconds: Histogram = Histogram(
            "localmem_query_duration_seconds", "Time of a Memory query, by strategy.",
            ["strategy"], registry=registry, buckets=QUERY_BUCKETS,
        )
        self.embedding_seconds: Histogram = Histogram(
            "localmem_embedding_duration_seconds", "Time of one call to the embedding model.",
            registry=registry, buckets=EMBEDDING_BUCKETS,
        )
        self.rerank_seconds: Histogram = Histogram(
            "localmem_rerank_duration_seconds", "Time of one reranking (cross-encoder) call.",
            registry=registry, buckets=RERANK_BUCKETS,
        )
        self.rank_changes: Histogram = Histogram(
            "localmem_rerank_rank_changes",
            "Per reranking, how many of the returned messages changed position against "
            "the first stage.",
            registry=registry, buckets=RANK_CHANGE_BUCKETS,
        )


# Multiprocess mode: the one set of instruments of this process (see the module docstring).
_shared: _Instruments | None = None
_shared_lock = threading.Lock()


def _process_instruments() -> _Instruments:
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = _Instruments(None)
        return _shared


class _ActiveConversations:
    """A collector that calls ``count`` when scraped. ``on_error``: what to do with its
    exception (the gauge is then left out of that scrape); None lets it propagate."""

    def __init__(self, count: Callable[[], int],
                 on_error: Callable[[Exception], None] | None) -> None:
        self._count = count
        self._on_error = on_error

    def describe(self) -> Iterable[Metric]:
        # The name only, for the registry's duplicate check: no call to count here.
        from prometheus_client.core import GaugeMetricFamily

        return [GaugeMetricFamily(ACTIVE_CONVERSATIONS, _ACTIVE_HELP)]

    def collect(self) -> Iterable[Metric]:
        from prometheus_client.core import GaugeMetricFamily

        try:
            value = float(self._count())
        except Exception as exc:
            if self._on_error is None:
                raise
            self._on_error(exc)
            return []
        return [GaugeMetricFamily(ACTIVE_CONVERSATIONS, _ACTIVE_HELP, value=value)]


def _collect_files(registry: CollectorRegistry, path: str) -> None:
    """Make ``registry`` show the aggregate of the files in ``path``. The instruments are
    never registered with it: that would export this process's values twice."""
    from prometheus_client.multiprocess import MultiProcessCollector

    MultiProcessCollector(registry, path=path)  # type: ignore[no-untyped-call]


def _text(registry: CollectorRegistry) -> str:
    from prometheus_client import generate_latest

    return generate_latest(registry).decode("utf-8")


class Metrics:
    """One Memory's metrics, in a registry of its own (one-process mode) or in the
    multiprocess directory (see the module docstring).

    ``active_conversations``: a callable giving the number of conversations with a
    message in the last hour; it is called at each scrape (``text()``), never before,
    in the scraping thread.
    When it raises, that scrape leaves the gauge out and counts the error (operation
    ``active_conversations``): a scrape racing ``close()`` or a locked database still
    shows every other metric. Without it there is no gauge (a 0 would be a false count).

    Raises InvalidInputError when prometheus_client is not installed, or when
    ``PROMETHEUS_MULTIPROC_DIR`` does not agree with the mode prometheus_client chose.
    """

    def __init__(self, *, active_conversations: Callable[[], int] | None = None) -> None:
        _require_prometheus_client()
        from prometheus_client import CollectorRegistry

        path = _multiprocess_dir()
        self._registry = CollectorRegistry()
        # The gauge first: a registry collects in order, so the error a failing count
        # records is in the same scrape.
        if active_conversations is not None:
            self._registry.register(_ActiveConversations(active_conversations, self._gauge_failed))
        if path is None:
            self._m = _Instruments(self._registry)
        else:
            _collect_files(self._registry, path)
            self._m = _process_instruments()

    @property
    def registry(self) -> CollectorRegistry:
        """What ``text()`` exposes, for serving with prometheus_client's own servers
        (``make_wsgi_app(registry=...)``, ``start_http_server(port, registry=...)``)."""
        return self._registry

    def _gauge_failed(self, exc: Exception) -> None:
        self.error("active_conversations", exc)

    def query(self, strategy: str, cache_hit: bool, seconds: float) -> None:
        """One answered query: its strategy (the one run, after automatic selection),
        whether the query cache answered it, and how long it took."""
        name = str(strategy)  # a Strategy's str() is its value
        self._m.queries.labels(strategy=name, cache_hit="true" if cache_hit else "false").inc()
        self._m.query_seconds.labels(strategy=name).observe(seconds)

    def auto_selected(self, strategy: str) -> None:
        """The automatic selector chose ``strategy``."""
        self._m.auto_selections.labels(strategy=str(strategy)).inc()

    def error(self, operation: str, error: BaseException) -> None:
        """``operation`` failed with ``error``; its class name is the label, never its
        message (which can hold ids and user text)."""
        self._m.errors.labels(operation=operation, error_type=type(error).__name__).inc()

    def embedding_cache(self, hits: int, misses: int) -> None:
        """Of the texts an embedding needed, ``hits`` came from the cache and ``misses``
        went to the model (both >= 0)."""
        self._m.cache_hits.inc(hits)
        self._m.cache_misses.inc(misses)

    def embedding(self, seconds: float) -> None:
        """One call to the embedding model took ``seconds``."""
        self._m.embedding_seconds.observe(seconds)

    def rerank(self, seconds: float, rank_changes: int) -> None:
        """One reranking took ``seconds`` and moved ``rank_changes`` of the returned
        messages (see ``rank_changes()``)."""
        self._m.rerank_seconds.observe(seconds)
        self._m.rank_changes.observe(rank_changes)

    def messages_added(self, n: int) -> None:
        """``n`` (>= 0) messages were stored."""
        self._m.messages_added.inc(n)

    def text(self) -> str:
        """The Prometheus text exposition of this object's metrics (one-process mode) or
        of every process's (multiprocess mode), with the gauge computed now."""
        return _text(self._registry)


def exposition(active_conversations: Callable[[], int] | None) -> str:
    """What a scrape would show, for a command with no live Memory.

    Multiprocess mode: every process's values in the directory (this process adds none)
    and the gauge. One-process mode: no other process's values can be reached, so only
    the gauge and this process's zeros (the counters and histograms without labels).
    Unlike ``Metrics``, an exception of ``active_conversations`` propagates: a one-shot
    command should say why it has no count.
    """
    _require_prometheus_client()
    from prometheus_client import CollectorRegistry

    path = _multiprocess_dir()
    registry = CollectorRegistry()
    if active_conversations is not None:
        registry.register(_ActiveConversations(active_conversations, None))
    if path is None:
        _Instruments(registry)
    else:
        _collect_files(registry, path)
    return _text(registry)


def rank_changes(before: Sequence[str], after: Sequence[str]) -> int:
    """How many ids of ``after`` are at another index than in ``before``; an id absent
    from ``before`` counts as changed. ``after`` being a prefix of ``before`` (the first
    stage's order, cut to the limit) is 0; two messages swapped is 2."""
    first: dict[str, int] = {}
    for index, msg_id in enumerate(before):
        first.setdefault(msg_id, index)
    return sum(1 for index, msg_id in enumerate(after) if first.get(msg_id) != index)
