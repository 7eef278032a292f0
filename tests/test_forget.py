"""Memory.forget: what it forgets leaves no byte in any file; nothing else changes.

Each scenario writes unique marker strings (in message text, as an owner id, as a
conversation id), spreads them everywhere a message can go (vectors, keyword index,
summaries, hot windows, cached answers and vectors, the strategy log with query text),
checks a byte scan finds them, forgets, and scans every file again: no trace. Everything
of the other owners (every field, the vector bytes, summaries, counts) is compared before
and after.
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from byte_scan import scan, summary
from hash_embedder import HashEmbedder

from localmem import InvalidInputError, Memory, Strategy, SummaryPolicy
from localmem import store as store_module
from localmem.indexer import check_vectors

OLD = datetime(2024, 1, 1, tzinfo=timezone.utc)
NEW = datetime(2025, 6, 1, tzinfo=timezone.utc)
CUT = datetime(2025, 1, 1, tzinfo=timezone.utc)
FILLER = "we talked about the weather and the trip to the mountains again today"


class DenseEmbedder(HashEmbedder):
    """HashEmbedder plus deterministic noise: dense vectors, so each one's bytes are
    distinctive enough for the scan to find (a bag-of-words vector is mostly zeros)."""

    name = "test-dense-embedder"

    def _vector(self, text: str) -> np.ndarray:
        seed = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little")
        v = super()._vector(text) + np.random.default_rng(seed).standard_normal(self.dim).astype(np.float32) * 0.05
        return (v / np.linalg.norm(v)).astype(np.float32)


def stored_forms(embedder, texts) -> list[np.ndarray]:
    """Each text's vector as the embedder gives it and as localmem stores it (normalised
    again in float32, which can move the last bit of some components): the scan looks
    for both."""
    raw = [embedder._vector(t) for t in texts]
    unit = check_vectors(np.stack(raw), len(raw), embedder.dim, "test")
    return raw + list(unit)


def marker(prefix: str) -> str:
    return prefix + secrets.token_hex(6).replace("0", "g").replace("1", "h")  # letters and digits only


class World:
    """A database holding a target scope with markers and two other owners."""

    def __init__(self, tmp_path, *, old_target: bool = False, log_queries: bool = True, **options):
        self.db = str(tmp_path / "mem.db")
        self.word = marker("Zq") + "ifications"  # in message text (FTS5 stems the suffix)
        self.owner = marker("owner")
        self.conversation = marker("conv")
        self.embedder = DenseEmbedder(dim=384)
        self.mem = Memory(self.db, embedder=self.embedder, log_queries=log_queries,
                          summaries=SummaryPolicy(window_tokens=60, fold_tokens=30), **options)
        self.marked: list[str] = []
        items = []
        for i in range(14):
            text = f"message {i} {FILLER}"
            if i in (3, 9, 12):
                text += f" my secret word is {self.word} remember it"
                self.marked.append(text)
            # old_target: all but the newest are older than CUT (forget by age)
            when = (OLD if old_target and i < 13 else NEW) + timedelta(minutes=i)
            items.append({"role": "user" if i % 2 == 0 else "assistant", "content": text, "msg_id": f"t{i}",
                              "conversation_id": self.conversation, "owner_id": self.owner, "created_at": when})
        for i in range(8):  # the same owner's other conversation
            items.append({"role": "user", "content": f"other talk {i} {FILLER}", "conversation_id": "side",
                              "owner_id": self.owner, "created_at": NEW + timedelta(minutes=i)})
        for other in ("bob", "carol"):
            for i in range(20):
                items.append({"role": "user" if i % 2 == 0 else "assistant", "content": f"{other} says {i} {FILLER}",
                                  "conversation_id": f"{other}-c{i % 2}", "owner_id": other,
                                  "created_at": NEW + timedelta(minutes=i)})
        self.mem.add_many(items)
        self.mem.flush()
        self.use()

    def use(self) -> None:
        """Fill every cache tier, the summaries and the strategy log."""
        mem = self.mem
        mine = f"what was the secret word {self.word}"  # other owners never quote it
        for owner, conversation, query in ((self.owner, self.conversation, mine),
                                           ("bob", "bob-c0", "what about the weather")):
            for strategy in Strategy:
                if strategy is not Strategy.SESSION_ONLY:
                    mem.get_memory(strategy, query=query, conversation_id=conversation, owner_id=owner)
            mem.fold_summary(conversation_id=conversation, owner_id=owner)
            mem.build_context(conversation_id=conversation, owner_id=owner, query=query, max_tokens=500)
        mem.flush()

    def vectors(self) -> list[np.ndarray]:
        return stored_forms(self.embedder, self.marked)

    def others(self, keep) -> list:
        """Every stored fact about the rows ``keep(owner, conversation)`` selects."""
        with self.mem._store.read() as conn:
            messages = [r for r in conn.execute(
                "SELECT m.id, m.msg_id, m.conversation_id, m.owner_id, m.role, m.content, m.created_at, m.feature,"
                " m.metadata, v.embedding, f.content, f.prev, f.next FROM messages m"
                " LEFT JOIN message_vectors v ON v.rowid = m.id JOIN messages_fts f ON f.rowid = m.id ORDER BY m.id"
            ) if keep(r[3], r[2])]
            summaries = [r for r in conn.execute("SELECT * FROM summaries ORDER BY 1, 2") if keep(r[0], r[1])]
            conversations = [r for r in conn.execute("SELECT * FROM conversations ORDER BY 1, 2") if keep(r[0], r[1])]
            owners = [r for r in conn.execute("SELECT * FROM owners ORDER BY 1") if keep(r[0], None)]
        return [messages, summaries, conversations, owners]


def _clean(world: World, markers: list[str]) -> None:
    hits = scan(world.db, markers, world.vectors())
    assert not hits, "forgotten bytes found:\n" + summary(hits)


SCENARIOS = {
    # name: (forget arguments, markers that must vanish, rows of the target that may change,
    #        messages forgotten)
    "owner": (lambda w: {"owner_id": w.owner}, lambda w: [w.word, w.owner, w.conversation],
              lambda w, o, c: o == w.owner, 22),
    "conversation": (lambda w: {"owner_id": w.owner, "conversation_id": w.conversation},
                     lambda w: [w.word, w.conversation], lambda w, o, c: o == w.owner and c in (None, w.conversation),
                     14),
    "owner_before": (lambda w: {"owner_id": w.owner, "before": CUT}, lambda w: [w.word],
                     lambda w, o, c: o == w.owner, 13),
    "before": (lambda w: {"before": CUT}, lambda w: [w.word], lambda w, o, c: o == w.owner, 13),
}


@pytest.mark.parametrize("rebuild", [False, True], ids=["row_deletes", "vector_rebuild"])
@pytest.mark.parametrize("scenario", list(SCENARIOS))
def test_forget_leaves_no_trace_and_changes_nothing_else(tmp_path, monkeypatch, scenario, rebuild):
    """(``vector_rebuild``: the path a large forget takes, the vector table made anew.)"""
    monkeypatch.setattr(store_module, "_REBUILD_MIN", 1 if rebuild else 10**9)
    monkeypatch.setattr(store_module, "_REBUILD_SHARE", 0.0)
    args, markers, target, count = SCENARIOS[scenario]
    by_age = "before" in scenario
    # With log_queries=True a query made after `before` that quotes an old message is an
    # entry of its own (later) time: forgetting by age does not reach it (documented).
    world = World(tmp_path, old_target=by_age, log_queries=not by_age)
    words = markers(world)
    assert scan(world.db, words), "the markers must be on disk before the forget"
    assert scan(world.db, [], world.vectors()), "and the vectors"
    keep = lambda o, c: not target(world, o, c)
    before = world.others(keep)
    exports = {o: world.mem.export(tmp_path / f"{o}-before.jsonl", owner_id=o, vectors=True) for o in ("bob", "carol")}

    report = world.mem.forget(**args(world))

    assert report.complete, report.pending
    assert report.messages == count
    _clean(world, words)
    assert world.others(keep) == before
    for o, first in exports.items():  # and their exports, byte for byte
        again = world.mem.export(tmp_path / f"{o}-after.jsonl", owner_id=o, vectors=True)
        assert again.messages == first.messages == 20
        assert Path(again.path).read_bytes() == Path(first.path).read_bytes()
    assert world.mem.check_integrity() == "ok"
    # the memory goes on working: the survivors' caches fill again
    world.mem.get_memory(Strategy.HYBRID, query="the weather", conversation_id="bob-c0", owner_id="bob")
    world.mem.close()
    _clean(world, words)
    # (a search for the word itself is a new trace: the query cache and log would keep it)
    with Memory(world.db, embedder=world.embedder, strategy_log=False, query_cache_ttl=0) as mem:
        got = mem.get_memory(Strategy.CROSS_CONVERSATION, query=world.word, owner_id=world.owner,
                             conversation_id=world.conversation)
        assert all(world.word not in m.content for m in got.messages)


def test_forgetting_an_owner_empties_its_rows_and_it_can_come_back(tmp_path):
    world = World(tmp_path)
    mem = world.mem
    report = mem.forget(owner_id=world.owner)
    assert (report.conversations, report.emptied) == (2, 2)
    assert mem.stats()["owners"] == 2
    assert mem.get_conversation_summary(conversation_id=world.conversation, owner_id=world.owner) is None
    mem.add("user", "hello again", conversation_id=world.conversation, owner_id=world.owner)
    got = mem.get_memory(Strategy.RECENT_HISTORY, conversation_id=world.conversation, owner_id=world.owner,
                         lookback_days=None)
    assert [m.content for m in got.messages] == ["hello again"]
    assert mem.forget(owner_id="nobody").messages == 0
    mem.close()


def test_forget_by_age_keeps_the_newer_messages_and_rebuilds_the_summary(tmp_path):
    world = World(tmp_path, old_target=True, log_queries=False)
    mem = world.mem
    mem.forget(owner_id=world.owner, before=CUT)
    got = mem.get_memory(Strategy.RECENT_HISTORY, conversation_id=world.conversation, owner_id=world.owner,
                         lookback_days=None)
    assert [m.msg_id for m in got.messages] == ["t13"]
    mem.flush()  # the summary of what is left is rebuilt in the background
    summary_now = mem.get_conversation_summary(conversation_id=world.conversation, owner_id=world.owner)
    assert summary_now is None or world.word not in summary_now.text
    mem.close()


def test_a_file_written_without_secure_delete_is_vacuumed_once(tmp_path, monkeypatch):
    """A file from before secure_delete was on keeps stale copies of deleted text in live
    pages: its first forget rewrites it (VACUUM) and marks it clean."""
    opened = store_module.Store._open

    def insecure(self, *, reader=False):
        conn = opened(self, reader=reader)
        conn.execute("PRAGMA secure_delete = OFF")
        return conn

    monkeypatch.setattr(store_module.Store, "_open", insecure)
    world = World(tmp_path)
    with world.mem._store.write() as conn:  # as written by an older localmem
        conn.execute("DELETE FROM meta WHERE key = ?", (store_module.SECURE_SINCE,))
    world.mem.close()
    monkeypatch.undo()
    world.mem = Memory(world.db, embedder=world.embedder, log_queries=True)

    report = world.mem.forget(owner_id=world.owner)

    assert report.complete and "vacuum" in report.seconds
    _clean(world, [world.word, world.owner, world.conversation])
    assert world.mem._store.meta(store_module.SECURE_SINCE) == "vacuumed"
    assert "vacuum" not in world.mem.forget(owner_id="bob").seconds
    world.mem.close()


def test_a_reader_holding_an_old_snapshot_leaves_the_forget_pending(tmp_path):
    """Another process's open read keeps the old pages in the WAL: forget says so instead
    of blocking or claiming success, and close() finishes the job once the reader is gone."""
    import sqlean

    world = World(tmp_path)
    reader = sqlean.connect(world.db, isolation_level=None, check_same_thread=False)
    reader.execute("BEGIN")
    reader.execute("SELECT count(*) FROM messages").fetchone()  # holds this snapshot

    added: list[str] = []
    stop = threading.Event()

    def writer() -> None:  # writers are not held up by the forget's retries
        while not stop.is_set():
            added.append(world.mem.add("user", "still writing", conversation_id="w", owner_id="bob").msg_id)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        report = world.mem.forget(owner_id=world.owner, wait=0.5)
    finally:
        stop.set()
        thread.join()
    assert not report.complete
    assert any("database" in p and "reader" in p for p in report.pending), report.pending
    assert report.messages == 22 and added
    reader.execute("COMMIT")
    reader.close()
    world.mem.close()
    _clean(world, [world.word, world.owner, world.conversation])


def test_an_expired_hot_window_entry_is_deleted_too(tmp_path):
    """diskcache's delete() skips expired entries (their bytes stay): delete() and forget()
    remove them anyway."""
    db = str(tmp_path / "mem.db")
    word = marker("Hw")
    with Memory(db, embed="off", hot_window_ttl=0.05, query_cache_ttl=0) as mem:
        mem.add("user", f"the code is {word}", conversation_id="c", owner_id="o", msg_id="m1")
        mem.get_memory(Strategy.RECENT_HISTORY, conversation_id="c", owner_id="o")  # fills the window
        assert [h for h in scan(db, [word]) if "-cache" in h.file]
        time.sleep(0.2)  # the entry expires, and stays on disk until culled
        assert mem.delete("m1")
        assert not [h for h in scan(db, [word]) if "-cache" in h.file]


@pytest.mark.parametrize(("args", "message"), [
    ({}, "needs owner_id, before, or both"),
    ({"conversation_id": "c"}, "needs its owner_id"),
    ({"owner_id": ""}, "owner_id"),
    ({"owner_id": 3}, "owner_id"),
    ({"before": datetime(2025, 1, 1)}, "naive"),
    ({"before": "2025-01-01"}, "datetime"),
    ({"owner_id": "o", "wait": -1}, "wait"),
])
def test_bad_arguments_forget_nothing(db_path, args, message):
    with Memory(db_path, embed="off") as mem:
        mem.add("user", "keep me", conversation_id="c", owner_id="o")
        with pytest.raises(InvalidInputError, match=message):
            mem.forget(**args)
        assert mem.stats()["messages"] == 1


def test_forget_in_memory_database():
    with Memory(":memory:", embedder=HashEmbedder()) as mem:
        mem.add("user", "secret", conversation_id="c", owner_id="o")
        mem.add("user", "kept", conversation_id="c", owner_id="p")
        report = mem.forget(owner_id="o")
        assert report.complete and report.messages == 1
        assert mem.stats()["messages"] == 1


class SlowQueries(DenseEmbedder):
    """Embeds a query slowly: a search is then mid-way (rows read, answer not yet cached)
    for long enough that a forget can start meanwhile."""

    def __init__(self) -> None:
        super().__init__(dim=384)
        self.searching = threading.Event()

    def embed_query(self, texts):
        self.searching.set()
        time.sleep(0.4)
        return self.embed(texts)


def test_a_search_in_flight_cannot_put_forgotten_text_back_in_a_cache(tmp_path):
    """The search read the owner's messages before the forget and caches its answer (and
    logs its query) after: the forget waits for it, so its purge comes last."""
    db = str(tmp_path / "mem.db")
    word = marker("Zq")
    embedder = SlowQueries()
    with Memory(db, embedder=embedder, log_queries=True) as mem:
        for i in range(6):
            mem.add("user", f"note {i} the code is {word}", conversation_id="c", owner_id="o")
        mem.add("user", "unrelated", conversation_id="k", owner_id="keep")
        mem.flush()
        found: list = []
        search = threading.Thread(target=lambda: found.append(mem.get_memory(
            Strategy.HYBRID, query=f"what is the code {word}", conversation_id="c", owner_id="o")))
        search.start()
        assert embedder.searching.wait(10)
        report = mem.forget(owner_id="o")
        search.join()
        assert report.complete and report.messages == 6 and found and found[0].messages
        hits = scan(db, [word], stored_forms(embedder, [f"note {i} the code is {word}" for i in range(6)]))
        assert not hits, summary(hits)


# -- regressions found in review ---------------------------------------------------------


def test_the_cached_query_vector_of_a_forgotten_message_goes_too(tmp_path):
    """build_context with no query embeds the latest user message as a query: that cached
    vector is forgotten with the message."""
    db = str(tmp_path / "mem.db")
    embedder = DenseEmbedder(dim=384)
    secret = f"my passport number is {marker('Zq')} keep it safe"
    with Memory(db, embedder=embedder, strategy_log=False) as mem:
        mem.add("user", "hello there friend", conversation_id="c", owner_id="alice")
        mem.add("user", secret, conversation_id="c", owner_id="alice")
        mem.add("user", "bob talk", conversation_id="b", owner_id="bob")
        mem.flush()
        mem.build_context(conversation_id="c", owner_id="alice")
        assert mem.forget(owner_id="alice").complete
    hits = scan(db, [secret.split()[4]], stored_forms(embedder, [secret]))
    assert not hits, summary(hits)


def test_a_fold_in_flight_cannot_save_a_summary_of_forgotten_text(tmp_path):
    """The background fold read the summary (quoting what is then forgotten) before the
    forget and saves after it, while another fold rebuilt the summary meanwhile: the
    summary's version never repeats, so the stale fold's save is refused."""
    secret = marker("Zq")
    gate, folding = threading.Event(), threading.Event()

    def summarizer(previous, messages):
        if threading.current_thread().name == "localmem-summaries" and not gate.is_set():
            folding.set()
            gate.wait(30)  # a slow LLM call of the background fold
        return (previous + " | " + " ".join(m.content for m in messages)).strip(" |")

    db = str(tmp_path / "mem.db")
    policy = SummaryPolicy(window_tokens=20, fold_tokens=10, chunk_tokens=100000, summarizer=summarizer, name="cat")
    with Memory(db, embed="off", strategy_log=False, summaries=policy) as mem:
        for i in range(4):
            mem.add("user", f"old note {i} the code is {secret}", conversation_id="c", owner_id="o",
                    created_at=OLD + timedelta(minutes=i))
        for i in range(4):
            mem.add("user", f"new note {i} about the weather", conversation_id="c", owner_id="o",
                    created_at=NEW + timedelta(minutes=i))
        mem.fold_summary(conversation_id="c", owner_id="o")
        assert secret in mem.get_conversation_summary(conversation_id="c", owner_id="o").text
        for i in range(4, 12):
            mem.add("user", f"new note {i} about the weather", conversation_id="c", owner_id="o",
                    created_at=NEW + timedelta(minutes=i))
        assert folding.wait(10)
        mem.forget(owner_id="o", before=CUT)
        mem.fold_summary(conversation_id="c", owner_id="o")  # a second folder rebuilds it
        gate.set()
        mem.flush()
        assert secret not in mem.get_conversation_summary(conversation_id="c", owner_id="o").text
    assert not scan(db, [secret])


def test_close_waits_for_a_maintenance_run_before_closing_the_caches(tmp_path, monkeypatch):
    """close() during a retention run of the maintenance thread: the run finishes with the
    caches still open, so its purge is not skipped."""
    from localmem import RetentionPolicy

    forgetting = threading.Event()
    original = store_module.Store.forget

    def slow_forget(self, *args, **kwargs):  # a large forget
        forgetting.set()
        time.sleep(0.5)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(store_module.Store, "forget", slow_forget)
    db = str(tmp_path / "mem.db")
    secret = marker("Zq")
    mem = Memory(db, embedder=HashEmbedder(), retention=RetentionPolicy(max_age_days=7), maintenance_interval=0.2)
    mem.add("user", f"old message the code is {secret}", conversation_id="c", owner_id="o",
            created_at=datetime.now(timezone.utc) - timedelta(days=30))
    mem.add("user", "new message about the code", conversation_id="c", owner_id="o")
    mem.flush()
    mem.get_memory(Strategy.SEMANTIC_SEARCH, query="the code", conversation_id="c", owner_id="o", lookback_days=None)
    assert [h for h in scan(db, [secret]) if "queries" in h.file]
    assert forgetting.wait(10)
    mem.close()
    assert mem._maintainer.runs == 1 and mem._maintainer.failures == 0
    hits = scan(db, [secret])
    assert not hits, summary(hits)


def test_a_locked_strategy_log_leaves_the_forget_pending_not_failed(tmp_path):
    """Another process holding the log: the messages are forgotten, the report says the
    log's entries are not, and the database is still checkpointed."""
    import sqlean

    db = str(tmp_path / "mem.db")
    with Memory(db, embedder=HashEmbedder()) as mem:
        mem.add("user", "the code is secret", conversation_id="c", owner_id="o")
        mem.get_memory(Strategy.RECENT_HISTORY, conversation_id="c", owner_id="o")
        mem._log.flush()
        other = sqlean.connect(db + "-log", isolation_level=None, check_same_thread=False)
        other.execute("BEGIN IMMEDIATE")
        try:
            report = mem.forget(owner_id="o")
        finally:
            other.execute("ROLLBACK")
            other.close()
        assert report.messages == 1 and not report.complete
        assert any("strategy log" in p and "locked" in p for p in report.pending), report.pending
        assert "checkpoint" in report.seconds
        assert mem.forget(owner_id="o").complete  # again, once the log is free: done


def test_a_forget_that_gives_up_lets_the_work_it_held_back_go_on():
    from localmem import LockTimeoutError
    from localmem.lifecycle import ForgetGate

    gate = ForgetGate()
    reading, release, got_in = threading.Event(), threading.Event(), threading.Event()

    def long_reader():
        with gate.shared():
            reading.set()
            release.wait(10)

    def search():
        with gate.shared():
            got_in.set()

    gave_up: list[BaseException] = []

    def forget() -> None:
        try:
            with gate.exclusive(0.5):
                pass
        except LockTimeoutError as exc:
            gave_up.append(exc)

    threads = [threading.Thread(target=long_reader)]
    threads[0].start()
    assert reading.wait(5)
    threads.append(threading.Thread(target=forget))
    threads[1].start()
    while not gate._waiting:  # the forget waits for the reader
        time.sleep(0.001)
    threads.append(threading.Thread(target=search))
    threads[2].start()  # and the search waits behind the forget
    assert got_in.wait(5)  # once the forget gives up, the search goes on (the reader still reads)
    assert gave_up and not release.is_set()
    release.set()
    for t in threads:
        t.join()


def test_vectors_an_earlier_model_cached_are_forgotten_too(tmp_path):
    """After a re-embed with another model the cache still holds the first model's
    vectors of each text: forget erases a text's vectors under every model that cached
    some in the folder."""
    db = str(tmp_path / "mem.db")
    secret = f"the vault code is {marker('Zq')}"
    first = DenseEmbedder(dim=384, name="first-model")
    with Memory(db, embedder=first, strategy_log=False) as mem:
        mem.add("user", secret, conversation_id="c", owner_id="o")
        mem.add("user", "keep this", conversation_id="k", owner_id="keep")
        mem.flush()

    class Second(DenseEmbedder):
        name = "second-model"

        def _vector(self, text):  # a different vector space
            return super()._vector(text + " (second)")

    second = Second(dim=384)
    with Memory(db, embedder=second, reembed=True, strategy_log=False) as mem:
        mem.flush()
        vectors = stored_forms(first, [secret]) + stored_forms(second, [secret])
        found = {h.pattern.split(" @")[0] for h in scan(db, [], vectors)}
        assert found & {"vector 0", "vector 1"} and found & {"vector 2", "vector 3"}  # both models' vectors
        assert mem.forget(owner_id="o").complete
    hits = scan(db, [secret.split()[-1]], vectors)
    assert not hits, summary(hits)
