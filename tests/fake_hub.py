"""A local HTTP server that answers like the Hugging Face Hub's ``resolve`` URLs.

``GET /<repo>/resolve/main/<file>`` answers a published file: an LFS file (``lfs=``) with a
302 to ``/cdn/<file>`` carrying X-Linked-Size and X-Linked-Etag (its sha256), as the Hub
does, and the CDN serves the bytes with Range support; any other file directly. Faults are
scripted per file, each used once, in order: ``"stall"`` (accept, read the request, never
answer), ``"drop"`` (send half the body, then close), a status code such as 503, or
``"bad-sha"`` (announce a wrong sha256). ``requests`` records (path, Range header) pairs.
"""

from __future__ import annotations

import hashlib
import threading
from collections import defaultdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class FakeHub:
    def __init__(self, repo: str, files: dict[str, bytes], *, lfs: set[str] = frozenset(),
                 stall_everything: bool = False):
        self.repo = repo
        self.files = files
        self.lfs = set(lfs)
        self.stall_everything = stall_everything
        self.faults: dict[str, list[Any]] = defaultdict(list)
        self.requests: list[tuple[str, str | None]] = []
        self.released = threading.Event()
        self._lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def fault(self, name: str, *faults: Any) -> None:
        self.faults[name].extend(faults)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.released.set()  # stalled handlers return
        self.server.shutdown()
        self.server.server_close()

    def paths(self, name: str) -> list[tuple[str, str | None]]:
        """The requests made for file ``name`` (resolve and CDN)."""
        return [r for r in self.requests if r[0].endswith("/" + name)]

    def _next_fault(self, name: str) -> Any:
        with self._lock:
            return self.faults[name].pop(0) if self.faults[name] else None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def do_GET(self) -> None:
                with hub._lock:
                    hub.requests.append((self.path, self.headers.get("Range")))
                if hub.stall_everything:
                    hub.released.wait()
                    return
                resolve = f"/{hub.repo}/resolve/main/"
                if self.path.startswith(resolve):
                    self._resolve(self.path[len(resolve):])
                elif self.path.startswith("/cdn/"):
                    self._serve(self.path[len("/cdn/"):], fault=None)
                else:
                    self._status(404)

            def _status(self, code: int) -> None:
                self.send_response(code)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def _resolve(self, name: str) -> None:
                fault = hub._next_fault(name)
                if fault == "stall":
                    hub.released.wait()
                    return
                if isinstance(fault, int):
                    self._status(fault)
                    return
                if name not in hub.files:
                    self._status(404)
                    return
                if name in hub.lfs:
                    body = hub.files[name]
                    sha = hashlib.sha256(body).hexdigest()
                    if fault == "bad-sha":
                        sha = hashlib.sha256(b"something else").hexdigest()
                    self.send_response(302)
                    self.send_header("Location", f"/cdn/{name}")
                    self.send_header("X-Linked-Size", str(len(body)))
                    self.send_header("X-Linked-Etag", f'"{sha}"')
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    if fault == "drop":
                        hub.fault(name, "drop")  # the drop happens on the CDN hop
                    return
                self._serve(name, fault=fault)

            def _serve(self, name: str, fault: Any) -> None:
                if name not in hub.files:
                    self._status(404)
                    return
                if fault is None and name in hub.lfs and hub.faults[name][:1] == ["drop"]:
                    fault = hub._next_fault(name)
                body = hub.files[name]
                start = 0
                wanted = self.headers.get("Range")
                if wanted and wanted.startswith("bytes=") and wanted.endswith("-"):
                    start = int(wanted[len("bytes="):-1])
                    self.send_response(206)
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                else:
                    self.send_response(200)
                self.send_header("Content-Length", str(len(body) - start))
                self.send_header("X-Repo-Commit", COMMIT)
                self.end_headers()
                part = body[start:]
                if fault == "drop":
                    self.wfile.write(part[: len(part) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(part)

        return Handler
