"""localmem.progress: the Reporter's reports and the CLI bar."""

import io

import pytest

from localmem import InvalidInputError, Progress, progress


def test_reporter_sends_first_stage_and_last(monkeypatch):
    seen: list[Progress] = []
    r = progress.Reporter(seen.append, "export", 10)
    monkeypatch.setattr(progress, "EVERY", 3600.0)  # no timed report in between
    for _ in range(10):
        r.advance()
    r.stage("vectors", 4, unit="vectors")
    r.advance(4)
    r.finish()
    r.finish()  # once only
    assert seen == [
        Progress("export", 0, 10),
        Progress("export", 10, 10),  # the step's last count, held back by EVERY, goes before the next
        Progress("export", 0, 4, "vectors", "vectors"),
        Progress("export", 4, 4, "vectors", "vectors", finished=True),
    ]


def test_reporter_reports_while_work_is_done(monkeypatch):
    seen: list[Progress] = []
    monkeypatch.setattr(progress, "EVERY", 0.0)
    r = progress.Reporter(seen.append, "import", None)
    r.advance(2)
    r.advance(3)
    assert [p.done for p in seen] == [0, 2, 5] and seen[-1].total is None


def test_a_failing_callback_stops_the_operation():
    def boom(p: Progress) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        progress.Reporter(boom, "export", 1)


def test_check_callback():
    assert progress.check_callback(None) is None
    assert progress.check_callback(print) is print
    with pytest.raises(InvalidInputError, match="progress must be a callable"):
        progress.check_callback("yes")


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_bar_draws_on_a_terminal_only():
    quiet = io.StringIO()
    progress.bar(quiet)(Progress("export", 1, 2))
    assert quiet.getvalue() == ""
    tty = _Tty()
    draw = progress.bar(tty)
    draw(Progress("export", 0, 4))
    draw(Progress("export", 4, 4, finished=True))
    assert "export" in tty.getvalue()


def test_flush_reports_the_queue_as_it_empties(tmp_path):
    from hash_embedder import HashEmbedder

    from localmem import Memory

    seen: list[Progress] = []
    with Memory(tmp_path / "m.db", embedder=HashEmbedder(delay=0.05)) as mem:
        mem._indexer.batch_size = 16  # several batches, so the bar moves
        mem.add_many({"role": "user", "content": f"message {i}", "conversation_id": "c", "owner_id": "o"}
                     for i in range(300))
        mem.flush(progress=seen.append)
        assert mem.stats()["pending_vectors"] == 0
    assert seen[0].task == "flush" and seen[0].unit == "vectors"
    assert seen[-1].finished and seen[-1].done == seen[-1].total == 300
    assert [p.done for p in seen] == sorted(p.done for p in seen)
    with pytest.raises(InvalidInputError, match="progress must be"):
        Memory(":memory:", embed="off", summaries=None).flush(progress=3)
