"""A private redis-server for the tests: Debian's ``redis-server`` package, started in a
temporary directory on a unix socket only (``--port 0``: no TCP), with persistence off,
and stopped at the end. A missing binary or a server that does not answer is a test
failure with what to do, never a skip: CI must install the package (apt-get install
redis-server).
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

START_WITHIN = 20.0  # seconds a fresh server has to answer PING


def _pong(sock_path: Path) -> bool:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(1.0)
            s.connect(str(sock_path))
            s.sendall(b"PING\r\n")
            return s.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server process of this test session's own."""

    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail(
                "redis-server is not installed: the Redis tier's tests need a real server "
                "(Debian: apt-get install -y redis-server), or LOCALMEM_TEST_REDIS=<url> of one",
                pytrace=False,
            )
        self.binary = binary
        # A short path: a unix socket's path has at most about 100 bytes.
        self.directory = Path(tempfile.mkdtemp(prefix="lm-redis-"))
        self.socket = self.directory / "redis.sock"
        self.log = self.directory / "redis.log"
        self.start()

    def start(self) -> None:
        """Start the server (again, at the same socket, empty, after ``kill``)."""
        self.process = subprocess.Popen(
            [self.binary, "--port", "0", "--unixsocket", str(self.socket), "--unixsocketperm", "700",
             "--save", "", "--appendonly", "no", "--dir", str(self.directory),
             "--logfile", str(self.log), "--daemonize", "no"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + START_WITHIN
        while not _pong(self.socket):
            if self.process.poll() is not None or time.monotonic() > deadline:
                stderr = self.process.stderr.read().decode(errors="replace") if self.process.stderr else ""
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                self.stop()
                pytest.fail(f"redis-server did not start (exit code {self.process.returncode}):\n"
                            f"{stderr}{log[-2000:]}", pytrace=False)
            time.sleep(0.02)

    @property
    def url(self) -> str:
        return f"unix://{self.socket}"

    def pause(self) -> None:
        """Freeze the server (SIGSTOP): connections stay open, replies never come."""
        os.kill(self.process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        os.kill(self.process.pid, signal.SIGCONT)

    def kill(self) -> None:
        """Kill it at once (SIGKILL), as a crash would."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=30)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def stop(self) -> None:
        """Stop it and remove its directory (idempotent)."""
        if self.process.poll() is None:
            self.resume()  # (a paused server would hold SIGTERM back)
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.kill()
        if self.process.stderr is not None:
            self.process.stderr.close()
        shutil.rmtree(self.directory, ignore_errors=True)
