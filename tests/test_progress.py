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
