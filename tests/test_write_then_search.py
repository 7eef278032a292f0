"""The background embedder lets the searches in flight finish before a batch (issue 14:
an agent writes its user's turn, then searches; the turn's embedding and its commit
landed in the middle of that search)."""

from __future__ import annotations

import threading

import pytest
from hash_embedder import HashEmbedder

from localmem import Memory, Strategy
from localmem.indexer import YIELD_TO_SEARCHES, Searches

OK = {"conversation_id": "c1", "owner_id": "u1"}


def test_wait_idle_waits_for_the_searches_in_flight():
    searches = Searches()
    assert searches.wait_idle(0)  # none in flight
    with searches.running(), searches.running():
        assert not searches.wait_idle(0)
    assert searches.wait_idle(0)
    done = threading.Event()
    with searches.running():
        waiter = threading.Thread(target=lambda: searches.wait_idle(60) and done.set())
        waiter.start()
        assert not done.is_set()
    waiter.join(60)
    assert done.is_set()  # woken when the last search ended, not at its timeout


def test_a_search_that_raises_is_no_longer_in_flight():
    searches = Searches()
    with pytest.raises(RuntimeError), searches.running():
        raise RuntimeError("boom")
    assert searches.wait_idle(0)


class _Watched(Searches):
    """Searches whose ``wait_idle`` says when the worker began waiting."""

    def __init__(self) -> None:
        super().__init__()
        self.waiting = threading.Event()

    def wait_idle(self, timeout: float) -> bool:
        self.waiting.set()
        return super().wait_idle(timeout)


def _watched(mem: Memory) -> _Watched:
    watched = _Watched()
    mem._searches = mem._indexer.searches = watched
    return watched


def test_the_embedder_starts_a_batch_after_the_search_in_flight(db_path):
    embedder = HashEmbedder()
    with Memory(db_path, embedder=embedder) as mem:
        assert mem._indexer.yield_to_searches == YIELD_TO_SEARCHES > 0
        mem._indexer.yield_to_searches = 3600  # (so that only the search's end lets it go)
        watched = _watched(mem)
        with watched.running():  # a search in another thread, say
            mem.add("user", "pizza tonight", **OK)
            assert watched.waiting.wait(60)
            assert embedder.calls == 0 and mem.stats()["pending_vectors"] == 1
        mem.flush(timeout=60)
        assert embedder.calls == 1 and mem.stats()["vectors"] == 1


def test_the_embedder_waits_for_searches_no_longer_than_its_limit(db_path):
    with Memory(db_path, embedder=HashEmbedder()) as mem:
        mem._indexer.yield_to_searches = 0.01
        watched = _watched(mem)
        with watched.running():  # a search that does not end: the batch runs anyway
            mem.add("user", "pizza tonight", **OK)
            mem.flush(timeout=60)
            assert mem.stats()["vectors"] == 1


def test_with_no_yield_the_embedder_does_not_wait(db_path):
    with Memory(db_path, embedder=HashEmbedder()) as mem:
        mem._indexer.yield_to_searches = 0
        watched = _watched(mem)
        with watched.running():
            mem.add("user", "pizza tonight", **OK)
            mem.flush(timeout=60)
        assert not watched.waiting.is_set() and mem.stats()["vectors"] == 1


def test_sync_embedding_does_not_wait_for_searches(db_path):
    with Memory(db_path, embedder=HashEmbedder(), embed="sync") as mem:
        mem._indexer.yield_to_searches = 3600
        watched = _watched(mem)
        with watched.running():
            mem.add("user", "pizza tonight", **OK)  # embedded before add() returns
        assert mem.stats()["vectors"] == 1 and not watched.waiting.is_set()


@pytest.mark.parametrize("strategy", [Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION,
                                      Strategy.RECENT_HISTORY, Strategy.AUTO])
def test_get_memory_and_explain_count_as_searches_in_flight(db_path, strategy):
    seen: list[bool] = []

    class Probing(HashEmbedder):
        def embed(self, texts):
            seen.append(mem._searches.wait_idle(0))
            return super().embed(texts)

    with Memory(db_path, embedder=Probing(), embed="sync", query_cache_ttl=0) as mem:
        mem.add("user", "pizza tonight", **OK)
        seen.clear()  # (the document's embedding, outside any search)
        mem.get_memory(strategy, query="pizza at eight", **OK)
        if strategy in (Strategy.SEMANTIC_SEARCH, Strategy.HYBRID, Strategy.CROSS_CONVERSATION):
            mem.explain(strategy, query="pizza at nine", **OK)
            assert seen == [False, False]  # each query embedded while its search was in flight
        assert mem._searches.wait_idle(0)  # and none is once they returned
