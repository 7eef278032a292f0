"""Prometheus metrics (localmem/metrics.py): the exposition parses with prometheus_client's
own parser and says what was recorded, under the documented names, types, labels and
buckets; each Metrics counts apart; no label can carry an id; multiprocess mode adds up
real processes; without the extra, a clear error names it."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap

import pytest

parser = pytest.importorskip(
    "prometheus_client.parser", reason="prometheus_client is the optional [metrics] extra"
)

from localmem import ClosedError, InvalidInputError
from localmem.metrics import Metrics, exposition, rank_changes

INF = math.inf
COUNTERS = [
    "localmem_queries", "localmem_auto_selections", "localmem_errors",
    "localmem_embedding_cache_hits", "localmem_embedding_cache_misses", "localmem_messages_added",
]
HISTOGRAMS = {
    "localmem_query_duration_seconds": [0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, INF],
    "localmem_embedding_duration_seconds": [0.05, 0.1, 0.25, 0.5, 1.0, 2.0, INF],
    "localmem_rerank_duration_seconds":
        [0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, INF],
    "localmem_rerank_rank_changes": [0, 1, 2, 3, 5, 10, 20, 50, INF],
}
LABELS = {
    "localmem_queries": {"strategy", "cache_hit"},
    "localmem_auto_selections": {"strategy"},
    "localmem_errors": {"operation", "error_type"},
    "localmem_query_duration_seconds": {"strategy"},
}


def families(text: str) -> dict:
    """name -> MetricFamily, without the per-process ``*_created`` timestamps."""
    found = {f.name: f for f in parser.text_string_to_metric_families(text)}
    return {name: f for name, f in found.items() if not name.endswith("_created")}


def value(text: str, sample: str, **labels: str) -> float:
    """The value of the one sample named ``sample`` with exactly ``labels``."""
    hits = [s.value for f in parser.text_string_to_metric_families(text)
            for s in f.samples if s.name == sample and s.labels == labels]
    assert len(hits) == 1, f"{sample}{labels}: {len(hits)} samples in\n{text}"
    return hits[0]


def buckets(text: str, histogram: str, **labels: str) -> dict[float, float]:
    """upper bound -> cumulative count of one histogram series."""
    fam = families(text)[histogram]
    return {float(s.labels["le"]): s.value for s in fam.samples
            if s.name == histogram + "_bucket"
            and {k: v for k, v in s.labels.items() if k != "le"} == labels}


def exercise(m: Metrics) -> None:
    """One call of every recording method."""
    m.query("hybrid", True, 0.02)
    m.auto_selected("semantic_search")
    m.error("get_memory", ClosedError("closed"))
    m.embedding_cache(hits=2, misses=1)
    m.embedding(0.07)
    m.rerank(0.03, rank_changes=3)
    m.messages_added(4)


def test_every_metric_has_its_name_type_and_labels():
    m = Metrics(active_conversations=lambda: 2)
    exercise(m)
    fams = families(m.text())
    expected = {name: "counter" for name in COUNTERS}
    expected |= {name: "histogram" for name in HISTOGRAMS}
    expected["localmem_active_conversations"] = "gauge"
    assert {name: f.type for name, f in fams.items()} == expected
    for name in COUNTERS:  # the exposed series carries the _total suffix
        assert {s.name for s in fams[name].samples} == {name + "_total"}
    for name, fam in fams.items():
        names = {k for s in fam.samples for k in s.labels} - {"le"}
        assert names == LABELS.get(name, set()), name


def test_no_label_can_carry_an_id():
    m = Metrics(active_conversations=lambda: 1)
    exercise(m)
    m.query("cross_conversation", False, 0.3)
    names = {k for f in families(m.text()).values() for s in f.samples for k in s.labels}
    assert names <= {"strategy", "cache_hit", "operation", "error_type", "le"}
    assert not [n for n in names if any(w in n for w in ("owner", "user", "conversation", "id"))]


@pytest.mark.parametrize("histogram", sorted(HISTOGRAMS))
def test_histogram_bucket_boundaries(histogram):
    m = Metrics()
    exercise(m)
    labels = {"strategy": "hybrid"} if histogram == "localmem_query_duration_seconds" else {}
    assert sorted(buckets(m.text(), histogram, **labels)) == HISTOGRAMS[histogram]


def test_counts_after_calls():
    m = Metrics()
    m.query("hybrid", False, 0.2)
    m.query("hybrid", False, 0.25)  # on a bound: counted in that bucket (le is <=)
    m.query("hybrid", True, 0.001)
    m.query("recent_history", False, 7.0)  # past the last bound: only +Inf
    m.auto_selected("hybrid")
    m.auto_selected("hybrid")
    m.error("add", InvalidInputError("bad"))
    m.error("add", InvalidInputError("worse"))
    m.error("get_memory", TimeoutError())
    m.embedding_cache(hits=3, misses=0)
    m.embedding_cache(hits=0, misses=5)
    m.embedding(0.3)
    m.rerank(0.004, rank_changes=0)
    m.rerank(0.1, rank_changes=4)
    m.rerank(3.0, rank_changes=60)
    m.messages_added(1)
    m.messages_added(10)
    text = m.text()

    assert value(text, "localmem_queries_total", strategy="hybrid", cache_hit="false") == 2
    assert value(text, "localmem_queries_total", strategy="hybrid", cache_hit="true") == 1
    assert value(text, "localmem_queries_total", strategy="recent_history", cache_hit="false") == 1
    assert value(text, "localmem_auto_selections_total", strategy="hybrid") == 2
    assert value(text, "localmem_errors_total", operation="add", error_type="InvalidInputError") == 2
    assert value(text, "localmem_errors_total", operation="get_memory", error_type="TimeoutError") == 1
    assert value(text, "localmem_embedding_cache_hits_total") == 3
    assert value(text, "localmem_embedding_cache_misses_total") == 5
    assert value(text, "localmem_messages_added_total") == 11

    hybrid = buckets(text, "localmem_query_duration_seconds", strategy="hybrid")
    assert (hybrid[0.01], hybrid[0.1], hybrid[0.25], hybrid[INF]) == (1, 1, 3, 3)
    recent = buckets(text, "localmem_query_duration_seconds", strategy="recent_history")
    assert (recent[5.0], recent[INF]) == (0, 1)
    assert value(text, "localmem_query_duration_seconds_count", strategy="hybrid") == 3
    assert value(text, "localmem_query_duration_seconds_sum", strategy="hybrid") == pytest.approx(0.451)
    assert buckets(text, "localmem_embedding_duration_seconds")[0.25] == 0
    assert buckets(text, "localmem_embedding_duration_seconds")[0.5] == 1
    rerank = buckets(text, "localmem_rerank_duration_seconds")
    assert (rerank[0.005], rerank[0.1], rerank[2.0], rerank[INF]) == (1, 2, 2, 3)
    moved = buckets(text, "localmem_rerank_rank_changes")
    assert (moved[0], moved[3], moved[5], moved[50], moved[INF]) == (1, 1, 2, 2, 3)
    assert value(text, "localmem_rerank_rank_changes_sum") == 64


def test_a_strategy_enum_is_labelled_by_its_value():
    from localmem import Strategy

    m = Metrics()
    m.query(Strategy.SEMANTIC_SEARCH, False, 0.1)
    m.auto_selected(Strategy.HYBRID)
    text = m.text()
    assert value(text, "localmem_queries_total", strategy="semantic_search", cache_hit="false") == 1
    assert value(text, "localmem_auto_selections_total", strategy="hybrid") == 1


def test_two_metrics_in_one_process_are_independent():
    a, b = Metrics(), Metrics()
    a.query("hybrid", False, 0.1)
    a.query("hybrid", False, 0.1)
    b.query("hybrid", False, 0.1)
    a.messages_added(5)
    b.error("add", ValueError())
    ta, tb = a.text(), b.text()
    assert value(ta, "localmem_queries_total", strategy="hybrid", cache_hit="false") == 2
    assert value(tb, "localmem_queries_total", strategy="hybrid", cache_hit="false") == 1
    assert value(ta, "localmem_messages_added_total") == 5
    assert value(tb, "localmem_messages_added_total") == 0
    assert families(ta)["localmem_errors"].samples == []
    assert a.registry is not b.registry


def test_the_gauge_is_computed_at_each_scrape_and_only_then():
    counts = [3, 5]
    calls = []

    def active() -> int:
        calls.append(1)
        return counts[len(calls) - 1]

    m = Metrics(active_conversations=active)
    m.query("hybrid", False, 0.1)
    assert calls == []
    assert value(m.text(), "localmem_active_conversations") == 3
    assert value(m.text(), "localmem_active_conversations") == 5


def test_without_a_callable_there_is_no_gauge():
    assert "localmem_active_conversations" not in Metrics().text()


def test_a_failing_gauge_is_left_out_and_counted():
    def active() -> int:
        raise ClosedError("the Memory was closed")

    m = Metrics(active_conversations=active)
    m.messages_added(2)
    text = m.text()  # the scrape still answers
    assert "localmem_active_conversations" not in families(text)
    assert value(text, "localmem_messages_added_total") == 2
    assert value(text, "localmem_errors_total",  # counted in the same scrape
                 operation="active_conversations", error_type="ClosedError") == 1
    assert value(m.text(), "localmem_errors_total",
                 operation="active_conversations", error_type="ClosedError") == 2


def test_exposition_in_one_process_is_the_gauge_and_zeros():
    fams = families(exposition(lambda: 4))
    assert value(exposition(lambda: 4), "localmem_active_conversations") == 4
    assert fams["localmem_messages_added"].samples[0].value == 0
    assert fams["localmem_queries"].samples == []  # labelled: no series until a call
    assert "localmem_active_conversations" not in exposition(None)


def test_exposition_lets_the_gauge_error_through():
    def active() -> int:
        raise ClosedError("no database")

    with pytest.raises(ClosedError):
        exposition(active)


@pytest.mark.parametrize(("before", "after", "changed"), [
    ([], [], 0),
    (["a", "b", "c"], ["a", "b", "c"], 0),
    (["a", "b", "c", "d"], ["a", "b"], 0),  # cut to the limit, order kept
    (["a", "b", "c"], ["b", "a", "c"], 2),  # one swap moves two
    (["a", "b", "c"], ["c", "b", "a"], 2),  # reversed: the middle stays
    (["a", "b", "c"], ["c", "a", "b"], 3),
    (["a", "b", "c"], ["x", "b"], 1),  # absent from before: changed
    ([], ["x", "y"], 2),
    (["a", "b", "c"], ["b", "c"], 2),  # the first dropped: everything moved up
    (["a", "b"], [], 0),
])
def test_rank_changes(before, after, changed):
    assert rank_changes(before, after) == changed
    assert rank_changes(tuple(before), tuple(after)) == changed


def test_a_multiproc_dir_set_after_import_is_refused(tmp_path, monkeypatch):
    # This process imported prometheus_client without the variable: its values live in
    # memory, where text() in multiprocess mode would never read them.
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    with pytest.raises(InvalidInputError, match="before the process starts"):
        Metrics()
    with pytest.raises(InvalidInputError, match="before the process starts"):
        exposition(None)


def test_without_prometheus_client_the_error_names_the_extra(monkeypatch):
    # None in sys.modules makes an import raise ImportError, as when it is not installed.
    for name in [n for n in sys.modules if n.split(".")[0] == "prometheus_client"]:
        monkeypatch.setitem(sys.modules, name, None)
    for make in (Metrics, lambda: exposition(None)):
        with pytest.raises(InvalidInputError) as info:
            make()
        assert "pip install 'localmem-engine[metrics]'" in str(info.value)
        assert isinstance(info.value.__cause__, ImportError)


def python(code: str, **env: str) -> str:
    """Run ``code`` in a new interpreter (its own prometheus_client import, which reads
    PROMETHEUS_MULTIPROC_DIR then); its stdout."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True,
        timeout=300, check=False, env={**os.environ, **env},
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_import_localmem_does_not_import_prometheus_client():
    out = python("""
        import sys
        import localmem, localmem.metrics
        print(sorted(n for n in sys.modules if n.startswith("prometheus_client")))
    """)
    assert out.strip() == "[]"


@pytest.mark.slow
def test_multiprocess_mode_adds_up_every_process(tmp_path):
    folder = tmp_path / "prom"
    folder.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(folder)}
    first = python("""
        import os
        from localmem.metrics import Metrics
        m = Metrics()
        m.query("hybrid", False, 0.2)
        m.query("hybrid", True, 0.02)
        m.messages_added(3)
        m.embedding_cache(hits=2, misses=1)
        m.rerank(0.03, rank_changes=2)
        m.error("get_memory", ValueError("x"))
        print(os.getpid())
    """, **env)
    # Two Metrics in this one: they share the process's values, which add up.
    second = python("""
        import json, os
        from localmem.metrics import Metrics
        a = Metrics(active_conversations=lambda: 5)
        b = Metrics()
        a.query("hybrid", False, 0.2)
        b.query("hybrid", False, 0.2)
        a.messages_added(4)
        b.messages_added(4)
        print(json.dumps([os.getpid(), a.text(), b.text()]))
    """, **env)
    scraped = python("""
        from localmem.metrics import exposition
        print(exposition(lambda: 7), end="")
    """, **env)

    pid_second, text_a, text_b = json.loads(second)
    files = sorted(p.name for p in folder.iterdir())
    assert f"counter_{first.strip()}.db" in files and f"counter_{pid_second}.db" in files
    assert not [f for f in files if f.startswith("gauge_")]  # the gauge has no files
    for text in (text_a, text_b, scraped):  # every scrape: both processes' values
        assert value(text, "localmem_queries_total", strategy="hybrid", cache_hit="false") == 3
        assert value(text, "localmem_queries_total", strategy="hybrid", cache_hit="true") == 1
        assert value(text, "localmem_messages_added_total") == 11
        assert value(text, "localmem_embedding_cache_hits_total") == 2
        assert value(text, "localmem_errors_total",
                     operation="get_memory", error_type="ValueError") == 1
        hybrid = buckets(text, "localmem_query_duration_seconds", strategy="hybrid")
        assert (hybrid[0.01], hybrid[0.05], hybrid[0.25], hybrid[INF]) == (0, 1, 4, 4)
        assert value(text, "localmem_query_duration_seconds_count", strategy="hybrid") == 4
        assert buckets(text, "localmem_rerank_rank_changes")[2] == 1
    # The gauge: once, computed by the scraping process, no pid label.
    assert value(text_a, "localmem_active_conversations") == 5
    assert "localmem_active_conversations" not in text_b
    assert value(scraped, "localmem_active_conversations") == 7


@pytest.mark.slow
def test_multiprocess_mode_needs_the_directory(tmp_path):
    code = """
        from localmem import InvalidInputError
        from localmem.metrics import Metrics
        try:
            Metrics()
        except InvalidInputError as exc:
            print(exc)
    """
    out = python(code, PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "missing"))
    assert "not a directory" in out
