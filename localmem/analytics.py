"""Analytics over the strategy log, with DuckDB.

The log (``strategy_log.py``) hands its entries over as numpy columns and DuckDB scans
those in place: nothing here needs a DuckDB extension (DuckDB cannot download any offline,
and its sqlite scanner is not bundled), and no row passes through Python one at a time.
``connect()`` gives a user a DuckDB connection with the log as the table
``strategy_log``; ``strategy_stats()`` is the report of the original design's
``get_strategy_stats`` and ``get_global_stats`` in one typed value.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

__all__ = ["LOG_TABLE", "STATS_COLUMNS", "StrategyStats", "StrategyUsage", "connect", "strategy_stats"]

LOG_TABLE = "strategy_log"

# The log's columns as SQL values: "none" markers (NaN, -1, hash 0) become NULL, the
# time a UTC timestamp, the query hash a 16-digit hex string, and every text column
# VARCHAR (a column of None alone would otherwise come out typed NULL).
_SELECT = """
    SELECT make_timestamp(at_us)::TIMESTAMPTZ AS called_at, owner_id::VARCHAR AS owner_id,
           conversation_id::VARCHAR AS conversation_id, strategy::VARCHAR AS strategy,
           chosen_by::VARCHAR AS chosen_by, reason::VARCHAR AS reason, results, latency_ms::DOUBLE AS latency_ms, cache_hit::BOOLEAN AS cache_hit,
           CASE WHEN isnan(selection_ms) THEN NULL ELSE selection_ms::DOUBLE END AS selection_ms,
           CASE WHEN isnan(rerank_ms) THEN NULL ELSE rerank_ms::DOUBLE END AS rerank_ms,
           CASE WHEN reranked < 0 THEN NULL ELSE reranked END AS reranked,
           CASE WHEN rerank_dropped < 0 THEN NULL ELSE rerank_dropped END AS rerank_dropped,
           CASE WHEN query_hash = 0 THEN NULL ELSE lpad(lower(hex(query_hash)), 16, '0') END AS query_hash,
           query::VARCHAR AS query
    FROM {source}
"""


def _duckdb() -> Any:
    import duckdb  # a core dependency; imported here so that `import localmem` stays quick

    return duckdb


def connect(columns: dict[str, np.ndarray]) -> Any:
    """An in-memory DuckDB connection holding the log's entries as the table
    ``strategy_log`` (columns: called_at, owner_id, conversation_id, strategy, chosen_by, reason,
    results, latency_ms, cache_hit, selection_ms, rerank_ms, reranked, rerank_dropped,
    query_hash, query). It is a copy: closing it, or writing to it, changes no log."""
    conn = _duckdb().connect(":memory:")
    conn.execute("SET TimeZone = 'UTC'")
    conn.register("_log_columns", columns)
    conn.execute(f"CREATE TABLE {LOG_TABLE} AS " + _SELECT.format(source="_log_columns"))
    conn.unregister("_log_columns")
    return conn


@dataclass(frozen=True, slots=True)
class StrategyUsage:
    """One strategy's calls in the period. Latencies in ms; ``cache_hit_rate``,
    ``auto_share`` and ``share`` (of all calls) are fractions in [0, 1]."""

    strategy: str
    calls: int
    share: float
    latency_p50_ms: float
    latency_p95_ms: float
    latency_avg_ms: float
    avg_results: float
    cache_hit_rate: float
    auto_share: float


@dataclass(frozen=True, slots=True)
class StrategyStats:
    """The strategy log's report for ``days`` days, of one owner (``owner_id``) or all
    (None): totals, then each strategy by calls (most first), then why the automatic
    selector chose what it chose (``auto_reasons``: (reason, calls), most first)."""

    owner_id: str | None
    days: float | None
    total_calls: int
    latency_avg_ms: float
    latency_p50_ms: float
    latency_p95_ms: float
    cache_hit_rate: float
    auto_share: float
    strategies: tuple[StrategyUsage, ...]
    auto_reasons: tuple[tuple[str, int], ...]

    def as_dict(self) -> dict[str, Any]:
        """As JSON-ready values (``localmem stats --json``)."""
        out = asdict(self)
        out["auto_reasons"] = [{"reason": r, "calls": n} for r, n in self.auto_reasons]
        return out


_PER_STRATEGY = """
    SELECT strategy, count(*) AS calls,
           quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95), avg(latency_ms),
           avg(results), avg(cache_hit::INTEGER), avg((chosen_by = 'auto')::INTEGER)
    FROM d GROUP BY strategy ORDER BY calls DESC, strategy
"""
_TOTALS = """
    SELECT count(*), avg(latency_ms), quantile_cont(latency_ms, 0.5), quantile_cont(latency_ms, 0.95),
           avg(cache_hit::INTEGER), avg((chosen_by = 'auto')::INTEGER)
    FROM d
"""
_REASONS = """
    SELECT reason, count(*) AS calls FROM d WHERE chosen_by = 'auto' AND reason IS NOT NULL
    GROUP BY reason ORDER BY calls DESC, reason
"""


STATS_COLUMNS = ("strategy", "chosen_by", "reason", "results", "latency_ms", "cache_hit")


def strategy_stats(columns: dict[str, np.ndarray], *, owner_id: str | None, days: float | None) -> StrategyStats:
    """The report over ``columns`` (``STATS_COLUMNS`` at least, already limited to the
    period and the owner)."""
    conn = _duckdb().connect(":memory:")
    try:
        conn.register("d", {name: columns[name] for name in STATS_COLUMNS})
        total, avg, p50, p95, hits, auto = conn.execute(_TOTALS).fetchone()
        usage = tuple(
            StrategyUsage(strategy, calls, calls / total, _ms(q50), _ms(q95), _ms(mean), float(results),
                          float(hit_rate), float(auto_share))
            for strategy, calls, q50, q95, mean, results, hit_rate, auto_share in conn.execute(_PER_STRATEGY).fetchall()
        )
        reasons = tuple((str(r), int(n)) for r, n in conn.execute(_REASONS).fetchall())
    finally:
        conn.close()
    return StrategyStats(
        owner_id, days, int(total), _ms(avg), _ms(p50), _ms(p95), float(hits or 0.0), float(auto or 0.0),
        usage, reasons,
    )


def _ms(value: Any) -> float:
    """A latency as stored (float32) rounded to what it can hold: 0.001 ms."""
    return 0.0 if value is None else round(float(value), 3)
