"""fork() helpers for tests: run a body in a child that leaves through os._exit only, and
wait for it with a deadline (a hung child is killed and reported as None)."""

from __future__ import annotations

import faulthandler
import os
import time
import traceback


def fork(body, dump_after: float = 20.0) -> int:
    """Fork; in the child run ``body() -> exit code`` and leave through os._exit only.

    A child still running after ``dump_after`` seconds prints every thread's stack to
    stderr and exits, so a hang shows where it hung.
    """
    pid = os.fork()
    if pid == 0:  # child: never return into pytest
        faulthandler.dump_traceback_later(dump_after, exit=True)
        code = 1
        try:
            code = body()
        except BaseException:  # noqa: BLE001 - the child reports through its exit code
            traceback.print_exc()
            code = 1
        finally:
            os._exit(code)
    return pid


def wait_child(pid: int, timeout: float) -> int | None:
    """The child's exit code, or None (after killing it) if it is still running at timeout."""
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            return None
        time.sleep(0.01)
