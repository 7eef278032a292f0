"""Progress of long operations: one record, one callback type, and a terminal bar.

Long operations (export, import, flush of a large queue, re-embed, maintenance) take a
``progress=`` callback. It receives a ``Progress`` record at the start, every
``EVERY`` seconds at most while work is done, and once at the end (``finished=True``), so a
callback may redraw on every call. A callback that raises stops the operation with its
error, as any caller code would: progress is never swallowed silently.

``bar()`` makes a callback that draws a tqdm bar on a terminal (the CLI's), and prints
nothing elsewhere.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TextIO

from .errors import InvalidInputError

EVERY = 0.1  # seconds between two reports of one operation (the first and last always go)


@dataclass(frozen=True, slots=True)
class Progress:
    """Where a long operation stands.

    ``task``: what runs (``"export"``, ``"import"``, ``"flush"``, ``"maintain"`` ...);
    ``stage``: the step inside it, if it has steps; ``done`` of ``total`` units (``total``
    None: unknown in advance); ``unit``: what is counted; ``finished``: the last report.
    """

    task: str
    done: int
    total: int | None
    unit: str = "messages"
    stage: str | None = None
    finished: bool = False


ProgressCallback = Callable[[Progress], Any]


def check_callback(progress: Any) -> ProgressCallback | None:
    """``progress`` as given, once checked: None or a callable."""
    if progress is not None and not callable(progress):
        raise InvalidInputError(f"progress must be a callable taking a Progress, or None; got {progress!r}")
    return progress


class Reporter:
    """Reports one operation to a callback (or to nobody), at most every ``EVERY`` seconds.

    ``reporter.advance(n)`` counts work done; ``reporter.stage(name, total)`` starts a step
    (reported at once); ``reporter.finish()`` sends the last report. A Reporter for None
    costs a comparison per call.
    """

    def __init__(self, callback: ProgressCallback | None, task: str, total: int | None = None,
                 *, unit: str = "messages", stage: str | None = None) -> None:
        self._callback = callback
        self.task, self.total, self.unit, self._stage = task, total, unit, stage
        self.done = 0
        self._last = 0.0
        self._sent: tuple[str | None, int] | None = None  # (stage, done) last reported
        self._finished = False
        self._send()

    def _send(self, *, finished: bool = False) -> None:
        if self._callback is None:
            return
        self._last = time.monotonic()
        self._sent = (self._stage, self.done)
        self._callback(Progress(self.task, self.done, self.total, self.unit, self._stage, finished))

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._callback is not None and time.monotonic() - self._last >= EVERY:
            self._send()

    def update(self, done: int, total: int | None = None) -> None:
        """Set the count (and the total, when it changed) outright."""
        self.done = done
        if total is not None:
            self.total = total
        if self._callback is not None and time.monotonic() - self._last >= EVERY:
            self._send()

    def stage(self, name: str, total: int | None = None, *, unit: str | None = None, done: int = 0) -> None:
        """Start step ``name`` of ``total`` units: the count starts again from ``done``
        (the step before ends with a report of its last count, if it was held back)."""
        if self._sent != (self._stage, self.done):
            self._send()
        self._stage, self.total, self.done = name, total, done
        if unit is not None:
            self.unit = unit
        self._send()

    def finish(self) -> None:
        """The last report (once; later calls do nothing)."""
        if not self._finished:
            self._finished = True
            self._send(finished=True)


def bar(out: TextIO | None = None) -> ProgressCallback:
    """A callback drawing a tqdm bar on ``out`` (default stderr) when it is a terminal; on
    anything else it draws nothing. One bar per task and stage."""
    stream = sys.stderr if out is None else out
    if not (hasattr(stream, "isatty") and stream.isatty()):
        return _silent
    state: dict[str, Any] = {"bar": None, "key": None}

    def draw(p: Progress) -> None:
        from tqdm.auto import tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs

        key = (p.task, p.stage)
        if state["key"] != key:
            if state["bar"] is not None:
                state["bar"].close()
            label = p.task if p.stage is None else f"{p.task}: {p.stage}"
            state["bar"] = tqdm(total=p.total, desc=label, unit=f" {p.unit}", file=stream, leave=False)
            state["key"] = key
        b = state["bar"]
        if p.total is not None and b.total != p.total:
            b.total = p.total
        b.update(p.done - b.n)
        if p.finished:
            b.close()
            state["bar"], state["key"] = None, None

    return draw


def _silent(progress: Progress) -> None:
    """The callback for a stream that is not a terminal: nothing to draw."""
