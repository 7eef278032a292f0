"""Running summaries (localmem/summaries.py): what slides out of the window is folded in
the background, stored in the file, versioned, kept honest by deletes and backdated
writes, and never in add()'s way."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from forking import fork, wait_child

from localmem import InvalidInputError, Memory, SummaryError, SummaryPolicy
from localmem.store import Store
from localmem.summaries import Folder
from localmem.tokens import MESSAGE_OVERHEAD, count_tokens

T0 = datetime(2024, 5, 1, tzinfo=timezone.utc)
IDS = {"conversation_id": "c1", "owner_id": "u1"}


class Recorder:
    """A summariser that keeps one line per message ("<msg_id>") and records its calls."""

    def __init__(self):
        self.calls: list[tuple[str, list[str]]] = []
        self.lock = threading.Lock()

    def __call__(self, previous, messages):
        with self.lock:
            self.calls.append((previous, [m.msg_id for m in messages]))
        return "\n".join([*filter(None, previous.split("\n")), *(m.msg_id for m in messages)])


def policy(summarizer=None, **kw):
    settings = {"window_tokens": 60, "fold_tokens": 20, **kw}
    return SummaryPolicy(summarizer=summarizer, **settings)


def add_turns(mem, n, start=0, **ids):
    """n messages of 8 tokens (+ overhead 4 = 12 each), an hour apart."""
    prefix = f"{ids['conversation_id']}-" if ids else ""  # (msg_ids are unique in a file)
    for i in range(start, start + n):
        mem.add("user" if i % 2 == 0 else "assistant", f"turn number {i:03d} about Lisbon",
                msg_id=f"{prefix}m{i:03d}", created_at=T0 + timedelta(hours=i), **(ids or IDS))


def test_cost_of_the_fixture_turns():
    assert count_tokens("turn number 007 about Lisbon") + MESSAGE_OVERHEAD == 12


def test_messages_beyond_the_window_are_folded_oldest_first(tmp_path):
    rec = Recorder()
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(rec)) as mem:
        add_turns(mem, 12)  # 144 tokens: the window holds the newest 5 (60), 7 lie beyond (84)
        mem.flush()
        summary = mem.get_conversation_summary(**IDS)
    folded = [i for _, ids in rec.calls for i in ids]
    assert folded == [f"m{i:03d}" for i in range(7)]  # each once, in order, the window untouched
    assert summary.text.splitlines() == folded
    assert summary.folded == 7 and summary.version == len(rec.calls)
    assert summary.covers_until == T0 + timedelta(hours=6)
    assert summary.summarizer.endswith("Recorder")


def test_a_look_folds_only_once_fold_tokens_lie_beyond_the_window_and_flush_folds_all(tmp_path):
    path = tmp_path / "m.db"
    with Memory(path, embed="off", summaries=None) as mem:
        add_turns(mem, 6)  # 72 tokens: one message (12) beyond the 60-token window, under 20
    rec = Recorder()
    store = Store(str(path))
    try:
        folder = Folder(store, policy(rec), rec, "rec")
        assert folder.fold("u1", "c1") == 0 and rec.calls == []
        with Memory(path, embed="off", summaries=None) as mem:
            add_turns(mem, 1, start=6)  # 24 beyond: a look folds
        assert folder.fold("u1", "c1") == 2
        with Memory(path, embed="off", summaries=None) as mem:
            add_turns(mem, 1, start=7)  # 12 beyond again: a look leaves it, flush (complete) folds it
        assert folder.fold("u1", "c1") == 0
        assert folder.fold("u1", "c1", complete=True) == 1
        assert rec.calls == [("", ["m000", "m001"]), ("m000\nm001", ["m002"])]
    finally:
        store.close()


def test_folding_is_incremental_and_versioned(tmp_path):
    rec = Recorder()
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(rec)) as mem:
        add_turns(mem, 8)
        mem.flush()
        first = mem.get_conversation_summary(**IDS)
        calls = len(rec.calls)
        add_turns(mem, 4, start=8)
        mem.flush()
        second = mem.get_conversation_summary(**IDS)
    assert second.version > first.version
    assert rec.calls[calls][0] == first.text  # the previous summary is handed back
    assert second.text.startswith(first.text) and second.folded == 7


def test_chunks_keep_to_chunk_tokens(tmp_path):
    rec = Recorder()
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(rec, chunk_tokens=25)) as mem:
        add_turns(mem, 30)
        mem.flush()
    assert all(1 <= len(ids) <= 2 for _, ids in rec.calls)  # 2 x 12 <= 25 < 3 x 12
    assert [i for _, ids in rec.calls for i in ids] == [f"m{i:03d}" for i in range(25)]


def test_add_does_not_wait_for_a_slow_summariser(tmp_path):
    started, release = threading.Event(), threading.Event()

    def slow(previous, messages):
        started.set()
        assert release.wait(30)
        return "slow summary"

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(slow)) as mem:
        add_turns(mem, 8)
        assert started.wait(30)  # the fold is running, in the worker
        add_turns(mem, 5, start=8)  # returns while the summariser still runs
        assert mem.get_conversation_summary(**IDS) is None
        release.set()
        mem.flush()
        assert mem.get_conversation_summary(**IDS).text == "slow summary"


@pytest.mark.parametrize("bad", ["raises", "returns None"])
def test_a_failing_summariser_loses_nothing_and_flush_says_so(tmp_path, bad):
    state = {"fail": True}

    def flaky(previous, messages):
        if state["fail"]:
            if bad == "raises":
                raise RuntimeError("LLM unreachable")
            return None
        return f"{len(messages)} messages"

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(flaky)) as mem:
        add_turns(mem, 8)
        with pytest.raises(SummaryError) as caught:
            mem.flush()
        if bad == "raises":
            assert isinstance(caught.value.__cause__, RuntimeError) and "LLM unreachable" in str(caught.value)
        else:
            assert "NoneType, not a str" in str(caught.value)
        assert mem.get_conversation_summary(**IDS) is None  # unchanged
        state["fail"] = False
        mem.flush()  # retried at once
        assert mem.get_conversation_summary(**IDS).text == "3 messages"


def test_deleting_a_covered_message_empties_the_summary_and_it_is_rebuilt(tmp_path):
    rec = Recorder()
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(rec)) as mem:
        add_turns(mem, 12)
        mem.flush()
        before = mem.get_conversation_summary(**IDS)
        assert "m002" in before.text
        assert mem.delete("m002")
        assert mem.get_conversation_summary(**IDS) is None  # at once: no text outlives its message
        ctx = mem.build_context(**IDS, strategy="session_only", max_tokens=500)
        assert ctx.summary == "" and ctx.summary_version == before.version + 1
        mem.flush()  # delete() asked for the rebuild
        after = mem.get_conversation_summary(**IDS)
    assert "m002" not in after.text.splitlines()
    assert after.text.splitlines() == [f"m{i:03d}" for i in range(7) if i != 2]
    assert after.version > before.version


def test_deleting_a_message_in_the_window_keeps_the_summary(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 12)
        mem.flush()
        before = mem.get_conversation_summary(**IDS)
        assert mem.delete("m011")
        assert mem.get_conversation_summary(**IDS) == before


def test_a_backdated_message_empties_the_summary_and_is_folded_in(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 12)
        mem.flush()
        mem.add("user", "a late import", msg_id="late", created_at=T0 - timedelta(days=1), **IDS)
        mem.flush()
        text = mem.get_conversation_summary(**IDS).text.splitlines()
    assert text[0] == "late" and text[1:] == [f"m{i:03d}" for i in range(len(text) - 1)]


def test_messages_written_without_summaries_are_folded_after_a_reopen(tmp_path):
    path = tmp_path / "m.db"
    with Memory(path, embed="off", summaries=None) as mem:
        add_turns(mem, 20)
        with pytest.raises(Exception, match="nothing to flush"):
            mem.flush()
    rec = Recorder()
    with Memory(path, embed="off", summaries=policy(rec)) as mem:
        ctx = mem.build_context(**IDS, strategy="session_only", max_tokens=100)
        assert any(d.reason == "not_summarized" for d in ctx.dropped)
        mem.flush()
        assert mem.get_conversation_summary(**IDS).folded == 15


def test_two_memories_on_one_file_never_fold_a_message_twice(tmp_path):
    path = tmp_path / "m.db"
    recs = [Recorder(), Recorder()]
    mems = [Memory(path, embed="off", summaries=policy(r, fold_tokens=1)) for r in recs]
    try:
        def write(k):
            for i in range(k, 80, 2):
                mems[k].add("user", f"turn number {i:03d} about Lisbon", msg_id=f"m{i:03d}",
                            created_at=T0 + timedelta(hours=i), **IDS)

        threads = [threading.Thread(target=write, args=(k,)) for k in (0, 1)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for m in mems:
            m.flush()
        summary = mems[0].get_conversation_summary(**IDS)
    finally:
        for m in mems:
            m.close()
    lines = summary.text.splitlines()
    assert len(lines) == len(set(lines)) == summary.folded  # none twice
    # Every message up to the covered time is in it (a backdated arrival empties and rebuilds).
    covered = [f"m{i:03d}" for i in range(80) if T0 + timedelta(hours=i) <= summary.covers_until]
    assert sorted(lines) == covered and len(covered) >= 70


def test_a_forked_child_folds_in_its_own_flush(tmp_path):
    path = tmp_path / "m.db"
    with Memory(path, embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 3)

        def child():
            add_turns(mem, 9, start=3)
            mem.flush()
            return 0 if mem.get_conversation_summary(**IDS).folded == 7 else 3

        assert wait_child(fork(child), 60) == 0
        assert mem.get_conversation_summary(**IDS).folded == 7


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"window_tokens": 0}, "window_tokens"),
        ({"fold_tokens": 1.5}, "fold_tokens"),
        ({"chunk_tokens": True}, "chunk_tokens"),
        ({"max_tokens": 10**8}, "max_tokens"),
        ({"summarizer": "gpt"}, "summarizer"),
        ({"name": ""}, "name"),
        ({"count_tokens": 3}, "count"),
    ],
)
def test_bad_policies_are_refused(kwargs, match):
    with pytest.raises(InvalidInputError, match=match):
        SummaryPolicy(**kwargs)


def test_memory_refuses_a_summaries_value_that_is_not_a_policy(tmp_path):
    with pytest.raises(InvalidInputError, match="SummaryPolicy"):
        Memory(tmp_path / "m.db", embed="off", summaries={"window_tokens": 5})


def test_the_default_summariser_keeps_facts_offline(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=SummaryPolicy(window_tokens=40, fold_tokens=10)) as mem:
        mem.add("user", "Thanks! That's cool.", created_at=T0, **IDS)
        mem.add("user", "Caroline moved to Lisbon on 3 May 2023 with her dog Max.", created_at=T0 + timedelta(hours=1), **IDS)
        for i in range(6):
            mem.add("assistant", "Okay, great, sounds good to me.", created_at=T0 + timedelta(hours=2 + i), **IDS)
        mem.flush()
        summary = mem.get_conversation_summary(**IDS)
    assert "Caroline moved to Lisbon on 3 May 2023 with her dog Max." in summary.text
    assert "Thanks" not in summary.text
    assert summary.summarizer == "localmem.summarize.ExtractiveSummarizer"


def test_the_worker_folds_by_itself_once_writes_pause(tmp_path):
    """No flush(): the background worker folds once the conversation settles."""
    import time

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 12)
        deadline = time.monotonic() + 60
        while mem.get_conversation_summary(**IDS) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        summary = mem.get_conversation_summary(**IDS)
    assert summary is not None and summary.text.startswith("m000\nm001")


def test_fork_waits_while_the_summary_worker_is_inside_sqlite(tmp_path):
    """fork() while the worker held SQLite's locks would give the child a file it finds
    locked (or mutexes held by a thread it does not have): fork waits for the worker's
    store call instead, as for the embedding worker. (Only the worker touches SQLite in
    the parent meanwhile: the flushing thread just waits for it.)"""
    path = tmp_path / "m.db"
    with Memory(path, embed="off", summaries=None) as mem:
        mem.add_many(({"role": "user", "content": f"turn number {i:03d} about Lisbon",
                       "conversation_id": f"c{i % 300}", "created_at": T0 + timedelta(hours=i)}
                      for i in range(9000)), owner_id="u1")
    with Memory(path, embed="off", summaries=policy(Recorder(), fold_tokens=1, window_tokens=12)) as mem:
        for k in range(300):
            mem.build_context(conversation_id=f"c{k}", owner_id="u1", strategy="session_only", max_tokens=50)
        folding = threading.Thread(target=mem.flush)
        folding.start()
        try:
            for round_ in range(15):
                def child(round_=round_) -> int:
                    mem.add("user", f"child {round_}", conversation_id="other", owner_id="u1")
                    with Memory(path, embed="off", summaries=None) as again:
                        again.get_memory("recent_history", conversation_id="c1", owner_id="u1")
                    return 0

                assert wait_child(fork(child), timeout=30) == 0, f"forked child {round_} hung or failed"
        finally:
            folding.join()
        assert all(mem.get_conversation_summary(conversation_id=f"c{k}", owner_id="u1").folded == 29
                   for k in range(300))


# -- found in review ----------------------------------------------------------------------


def test_a_delete_and_a_backdated_write_during_a_fold_make_it_read_again(tmp_path):
    """A fold that read messages m000..m006 must not be saved when, meanwhile, one of them
    was deleted and another written into its span: as many messages, but not the same."""
    path = tmp_path / "m.db"
    other = Memory(path, embed="off", summaries=None)
    rec = Recorder()
    state = {"done": False}

    def meddling(previous, messages):
        if not state["done"]:
            state["done"] = True
            other.delete("m002")  # not covered yet: no trigger empties anything
            other.add("user", "backdated about Lisbon", msg_id="late",
                      created_at=T0 + timedelta(hours=3, minutes=30), **IDS)
        return rec(previous, messages)

    try:
        with Memory(path, embed="off", summaries=policy(meddling)) as mem:
            add_turns(mem, 12)
            mem.flush()
            lines = mem.get_conversation_summary(**IDS).text.splitlines()
    finally:
        other.close()
    assert "m002" not in lines and "late" in lines
    assert lines == ["m000", "m001", "m003", "late", "m004", "m005", "m006"]


def test_a_token_counter_that_fails_never_fails_the_write(tmp_path):
    def picky(text):
        if "<|endoftext|>" in text:
            raise ValueError("disallowed special token")
        return len(text.split())

    with Memory(tmp_path / "m.db", embed="off",
                summaries=SummaryPolicy(count_tokens=picky, window_tokens=5, fold_tokens=2)) as mem:
        stored = mem.add("user", "the end <|endoftext|>", **IDS)  # stored, and add() says so
        assert mem.add_many([{"role": "user", "content": "again <|endoftext|>"}], **IDS) == 1
        assert mem.stats()["messages"] == 2 and mem.get(stored.msg_id) == stored
        with pytest.raises(SummaryError, match="token counter failed"):
            mem.flush()


def test_flush_during_a_fold_folds_what_that_fold_left(tmp_path):
    started, release = threading.Event(), threading.Event()
    rec = Recorder()

    def slow(previous, messages):
        started.set()
        assert release.wait(30)
        return rec(previous, messages)

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(slow)) as mem:
        add_turns(mem, 8)  # 36 beyond the window: the worker folds m000..m002 once settled
        assert started.wait(30)
        add_turns(mem, 1, start=8)  # one more (12 tokens) beyond the window, under fold_tokens
        flushing = threading.Thread(target=mem.flush)
        flushing.start()
        release.set()
        flushing.join(30)
        assert not flushing.is_alive()
        assert mem.get_conversation_summary(**IDS).text.splitlines() == [f"m{i:03d}" for i in range(4)]


def test_flush_returns_while_other_writes_keep_arriving(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 12)
        stop = threading.Event()

        def chatter():
            i = 0
            while not stop.is_set():
                mem.add("user", f"other conversation {i} about Porto", conversation_id="busy", owner_id="u1")
                i += 1

        writer = threading.Thread(target=chatter)
        writer.start()
        try:
            mem.flush(timeout=60)  # waits for what was there when it began, not for "busy"
        finally:
            stop.set()
            writer.join()
        assert mem.get_conversation_summary(**IDS).folded == 7


def test_a_short_write_that_pushes_a_long_message_out_gets_a_look(tmp_path):
    """The window counts whole messages: 'hi' (6 tokens) pushes out a 50-token message, so
    the worker must look although far fewer than fold_tokens were written."""
    with Memory(tmp_path / "m.db", embed="off",
                summaries=policy(Recorder(), window_tokens=60, fold_tokens=40)) as mem:
        mem.add("user", " ".join(["word"] * 46), msg_id="long", created_at=T0, **IDS)  # 46 + 4 = 50
        mem.add("user", "ok", msg_id="ok", created_at=T0 + timedelta(hours=1), **IDS)  # 5
        import time

        time.sleep(0.6)  # the worker has looked: nothing beyond the window yet
        assert mem.get_conversation_summary(**IDS) is None
        mem.add("user", "hi there", msg_id="hi", created_at=T0 + timedelta(hours=2), **IDS)  # 6: 'long' goes
        deadline = time.monotonic() + 60
        while mem.get_conversation_summary(**IDS) is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert mem.get_conversation_summary(**IDS).text == "long"


def test_the_newest_message_is_never_folded_however_long(tmp_path):
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder(), window_tokens=20)) as mem:
        add_turns(mem, 2)
        mem.add("user", " ".join(["word"] * 100), msg_id="big", created_at=T0 + timedelta(days=1), **IDS)
        mem.flush()
        assert mem.get_conversation_summary(**IDS).text.splitlines() == ["m000", "m001"]


def test_a_child_forked_after_the_open_folds_in_the_background(tmp_path):
    import time

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        def child():
            add_turns(mem, 12)
            deadline = time.monotonic() + 30
            while mem.get_conversation_summary(**IDS) is None and time.monotonic() < deadline:
                time.sleep(0.05)
            return 0 if mem.get_conversation_summary(**IDS) is not None else 4

        assert wait_child(fork(child), 60) == 0


def test_fold_summary_folds_now_for_a_process_that_did_not_write(tmp_path):
    path = tmp_path / "m.db"
    with Memory(path, embed="off", summaries=None) as mem:
        add_turns(mem, 12)
    with Memory(path, embed="off", summaries=policy(Recorder())) as mem:
        mem.flush()  # this Memory wrote nothing and asked about nothing: nothing to do
        assert mem.get_conversation_summary(**IDS) is None
        assert mem.fold_summary(**IDS) == 7
        assert mem.get_conversation_summary(**IDS).folded == 7
        assert mem.fold_summary(**IDS) == 0
    with Memory(path, embed="off", summaries=None) as mem, pytest.raises(Exception, match="summaries=None"):
        mem.fold_summary(**IDS)


def test_one_failing_conversation_does_not_hold_the_others_back(tmp_path):
    def fussy(previous, messages):
        if messages[0].conversation_id == "bad":
            raise RuntimeError("LLM refused")
        return "\n".join(m.msg_id for m in messages)

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(fussy)) as mem:
        add_turns(mem, 12, conversation_id="bad", owner_id="u1")
        add_turns(mem, 12, conversation_id="good", owner_id="u1")
        with pytest.raises(SummaryError, match="LLM refused"):
            mem.flush()
        assert mem.get_conversation_summary(conversation_id="good", owner_id="u1").folded == 7
        assert mem.get_conversation_summary(conversation_id="bad", owner_id="u1") is None


# -- found in the second review -------------------------------------------------------------


def wait_for_summary(mem, deadline_s=30.0, **ids):
    import time

    deadline = time.monotonic() + deadline_s
    while mem.get_conversation_summary(**(ids or IDS)) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return mem.get_conversation_summary(**(ids or IDS))


def counted_by_len(previous, messages):
    return "\n".join([*filter(None, previous.split("\n")), *(m.msg_id for m in messages)])


def test_short_writes_after_a_message_longer_than_the_window_get_a_look(tmp_path):
    """The window holds one message longer than itself (a pasted document): two short
    writes push it and the first of them out, fold_tokens in all."""
    pol = SummaryPolicy(summarizer=counted_by_len, window_tokens=20, fold_tokens=150, count_tokens=len)
    with Memory(tmp_path / "m.db", embed="off", summaries=pol) as mem:
        mem.add("user", "d" * 116, msg_id="doc", created_at=T0, **IDS)  # cost 120 > 20
        mem.flush()  # a look, done: nothing beyond; the next writes are counted against it
        mem.add("assistant", "a" * 26, msg_id="a", created_at=T0 + timedelta(hours=1), **IDS)  # 30
        mem.add("user", "b", msg_id="b", created_at=T0 + timedelta(hours=2), **IDS)  # 5: doc + a = 150
        assert wait_for_summary(mem).text == "doc\na"


def test_a_backdated_write_beyond_the_window_gets_a_look(tmp_path):
    """A write older than the newest message may land beyond the window at once: 20
    tokens beyond (fold_tokens 10) from a write of 20, where 21 were due."""
    pol = SummaryPolicy(summarizer=counted_by_len, window_tokens=20, fold_tokens=10, count_tokens=len)
    with Memory(tmp_path / "m.db", embed="off", summaries=pol) as mem:
        mem.add("user", "a", msg_id="a", created_at=T0 + timedelta(hours=5), **IDS)  # cost 5
        mem.flush()  # a look, done: nothing beyond; the next writes are counted against it
        mem.add("user", "b" * 16, msg_id="b", created_at=T0 + timedelta(hours=1), **IDS)  # 20, older
        assert wait_for_summary(mem).text == "b"


def test_flush_during_a_failing_background_fold_retries_at_once(tmp_path):
    """A flush() asked while a background fold runs must not sleep out that fold's
    back-off when it fails (with an LLM down, up to a minute)."""
    import time

    inside, calls = threading.Event(), []

    def down(previous, messages):
        calls.append(time.monotonic())
        inside.set()
        time.sleep(0.3)
        raise RuntimeError("LLM 503")

    with Memory(tmp_path / "m.db", embed="off", summaries=policy(down)) as mem:
        mem._folder._attempts[("u1", "c1")] = 6  # as after earlier failures: a 32 s back-off next
        add_turns(mem, 12)
        assert inside.wait(30)
        with pytest.raises(SummaryError, match="LLM 503"):
            mem.flush(timeout=20)
        assert len(calls) == 2  # the background attempt, then the flush's own, at once


def test_a_worker_that_cannot_start_never_fails_the_write(tmp_path, monkeypatch):
    started = {"refuse": True}
    real_start = threading.Thread.start

    def start(thread):
        if started["refuse"] and thread.name == "localmem-summaries":
            raise RuntimeError("can't start new thread")
        return real_start(thread)

    monkeypatch.setattr(threading.Thread, "start", start)
    with Memory(tmp_path / "m.db", embed="off", summaries=policy(Recorder())) as mem:
        add_turns(mem, 12)  # stored, and add() says so
        assert mem.stats()["messages"] == 12
        with pytest.raises(SummaryError, match="could not be started"):
            mem.flush(timeout=10)
        started["refuse"] = False
        mem.flush(timeout=30)  # tried again: the next request starts one
        assert mem.get_conversation_summary(**IDS).folded == 7
