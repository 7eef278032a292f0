"""Downloading a registered model from the Hugging Face Hub, bounded in time.

huggingface_hub's ``snapshot_download`` first asks the Hub for the repository's metadata
with no timeout at all: measured with huggingface_hub 2.4, a network that accepts a
connection and never answers (a stalling proxy or firewall) holds it forever, silently.
A model is a handful of known files, so localmem fetches them itself, over plain HTTP(S)
from the Hub's ``resolve`` URLs (``hf_hub_url`` and ``HF_ENDPOINT`` as huggingface_hub
builds and reads them):

- every connect and every read waits at most ``timeout`` seconds
  (``LOCALMEM_DOWNLOAD_TIMEOUT``, default 15);
- a file is tried ``attempts`` times (``LOCALMEM_DOWNLOAD_ATTEMPTS``, default 3), resuming
  where the last attempt stopped, after 1 s, then 2 s...; only failures that may pass are
  retried (timeouts, dropped connections, 429 and 5xx), never a 404 or a refusal;
- it says what it fetches on stderr: the repository and folder, each file's size, and
  progress (a bar on a terminal, a line every ``PROGRESS_EVERY`` seconds elsewhere);
- each file's size is checked, and its sha256 where the Hub gives one (``X-Linked-Etag``,
  every LFS file, which includes the ONNX weights);
- the files land in a staging folder beside the target, which is renamed into place only
  once all are complete, with a manifest written last: a crash or a failure never leaves a
  half model where ``resolve()`` looks.

Registry models are public: no token is sent (nor leaked to the CDN a download redirects
to). ``fetch()`` raises ``ModelError`` with a one-line reason; ``models.resolve()`` puts that
line in its list of every place tried.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import math
import os
import platform
import re
import shutil
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from ._version import __version__
from .errors import ModelError
from .progress import ProgressCallback, Reporter

__all__ = ["DEFAULT_ATTEMPTS", "DEFAULT_TIMEOUT", "MANIFEST", "Settings", "downloaded", "fetch", "settings"]

TIMEOUT_ENV = "LOCALMEM_DOWNLOAD_TIMEOUT"
ATTEMPTS_ENV = "LOCALMEM_DOWNLOAD_ATTEMPTS"
DEFAULT_TIMEOUT = 15.0  # seconds without a byte, at connect or read (pip's default too)
DEFAULT_ATTEMPTS = 3
MAX_ATTEMPTS = 100
REVISION = "main"
MANIFEST = ".localmem-download.json"  # written last: its presence means complete
PROGRESS_EVERY = 10.0  # seconds between progress lines when stderr is not a terminal
STALE_STAGING = 24 * 3600.0  # a staging folder this old is a crashed download's: removed
_CHUNK = 1 << 20
_SHA256 = re.compile(r"[0-9a-f]{64}")
_RETRY_STATUS = frozenset({408, 425, 429, 500, 502, 503, 504})


@dataclass(frozen=True, slots=True)
class Settings:
    """How patient a download is: ``timeout`` seconds per connect or read, ``attempts``
    tries per file, ``backoff`` seconds before the second (doubling after)."""

    timeout: float = DEFAULT_TIMEOUT
    attempts: int = DEFAULT_ATTEMPTS
    backoff: float = 1.0

    def __post_init__(self) -> None:
        if (isinstance(self.timeout, bool) or not isinstance(self.timeout, (int, float))
                or not math.isfinite(self.timeout) or self.timeout <= 0):
            raise ModelError(f"download timeout must be a positive number of seconds; got {self.timeout!r}")
        if type(self.attempts) is not int or not 1 <= self.attempts <= MAX_ATTEMPTS:
            raise ModelError(f"download attempts must be an int from 1 to {MAX_ATTEMPTS}; got {self.attempts!r}")
        if not math.isfinite(self.backoff) or self.backoff < 0:
            raise ModelError(f"download backoff must be >= 0 seconds; got {self.backoff!r}")


def settings(timeout: float | None = None, attempts: int | None = None) -> Settings:
    """The settings: the arguments given, else the environment, else the defaults.
    A malformed environment value is a ``ModelError`` naming the variable."""
    if timeout is None:
        timeout = _env_number(TIMEOUT_ENV, float, DEFAULT_TIMEOUT)
    if attempts is None:
        attempts = _env_number(ATTEMPTS_ENV, int, DEFAULT_ATTEMPTS)
    try:
        return Settings(timeout=timeout, attempts=attempts)
    except ModelError as exc:
        raise ModelError(f"{exc} (from the argument, or {TIMEOUT_ENV} / {ATTEMPTS_ENV})") from None


def _env_number(name: str, kind: type, default: Any) -> Any:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ModelError(f"{name}={raw!r} is not a{'n int' if kind is int else ' number'}") from None


def downloaded(folder: Path) -> bool:
    """Whether ``folder`` holds a download that completed (its manifest is there)."""
    return (folder / MANIFEST).is_file()


def _endpoint() -> str:
    from huggingface_hub import constants

    return (os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def _size(n: int | None) -> str:
    if n is None:
        return "size unknown"
    return f"{n / 1e6:.1f} MB" if n >= 100_000 else f"{n / 1e3:.1f} kB"


class _Failed(Exception):
    """An attempt failed; ``retry`` says whether another attempt may do better."""

    def __init__(self, reason: str, *, retry: bool):
        super().__init__(reason)
        self.retry = retry


class _Missing(Exception):
    """The repository does not publish this file (HTTP 404)."""


class _Redirects(urllib.request.HTTPRedirectHandler):
    """Follows redirects, keeping the headers of each hop: the Hub's ``resolve`` answer
    carries the file's sha256 and size (X-Linked-Etag / X-Linked-Size), which the CDN it
    redirects to does not repeat."""

    def __init__(self) -> None:
        self.hops: list[Any] = []

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        self.hops.append(headers)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


class _Progress:
    """What a file's download shows on ``out``: a tqdm bar on a terminal, else a line
    every ``PROGRESS_EVERY`` seconds (a log stays readable)."""

    def __init__(self, out: IO[str], label: str, reporter: Reporter | None = None):
        self.out = out
        self.label = label
        self.reporter = reporter  # the caller's progress callback, if any
        self.bar: Any = None
        self.total: int | None = None
        self.done = 0
        self.last_line = time.monotonic()
        self.tty = bool(getattr(out, "isatty", lambda: False)()) and not os.environ.get(
            "HF_HUB_DISABLE_PROGRESS_BARS")

    def start(self, total: int | None, done: int) -> None:
        self.total, self.done = total, done
        if self.reporter is not None:
            self.reporter.stage(self.label, total, unit="bytes")
            self.reporter.update(done)
        if self.tty and self.bar is None:
            from tqdm.auto import tqdm  # type: ignore[import-untyped]  # tqdm ships no stubs

            self.bar = tqdm(total=total, initial=done, unit="B", unit_scale=True, unit_divisor=1024,
                            desc=f"  {self.label}", file=self.out, leave=True, dynamic_ncols=True)
        elif self.tty:
            self.bar.reset(total=total)
            self.bar.update(done)
        elif done == 0:
            self.say(f"  {self.label}: {_size(total)}")
        else:
            self.say(f"  {self.label}: resuming at {_size(done)} of {_size(total)}")

    def update(self, n: int) -> None:
        self.done += n
        if self.reporter is not None:
            self.reporter.update(self.done)
        if self.bar is not None:
            self.bar.update(n)
        elif time.monotonic() - self.last_line >= PROGRESS_EVERY:
            share = f" ({100 * self.done / self.total:.0f} %)" if self.total else ""
            self.say(f"  {self.label}: {_size(self.done)}{share}")

    def say(self, line: str) -> None:
        if self.bar is not None:
            self.bar.write(line, file=self.out)
        else:
            print(line, file=self.out, flush=True)
        self.last_line = time.monotonic()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def fetch(spec: Any, target: Path, *, config: Settings | None = None, out: IO[str] | None = None,
          progress: ProgressCallback | None = None) -> Path:
    """Download ``spec``'s files from its Hub repo into the folder ``target`` (which must
    not exist yet, or hold a complete download, which is then returned as it is).

    The ONNX file and the tokenizer are required; the other files are fetched where the
    repo publishes them. Returns ``target``; raises ``ModelError`` with a one-line reason.
    ``progress``: a callback that gets each file's bytes (task "download", the file name
    as the stage), besides what ``out`` shows.
    """
    if spec.repo is None:
        raise ModelError(f"{spec.name} has no Hub repo to download from")
    config = config or settings()
    out = out if out is not None else sys.stderr
    if downloaded(target):
        return target
    parent = target.parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _remove_stale_staging(parent)
        staging = parent / f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.partial"
        staging.mkdir(mode=0o700)
    except OSError as exc:
        raise ModelError(f"cannot create a folder in {parent}: {exc}") from exc
    endpoint = _endpoint()
    required = (spec.onnx_file, spec.tokenizer_file)
    names = list(dict.fromkeys((*required, *spec.extra_files)))
    print(f"localmem: downloading {spec.name} ({spec.repo}, up to {len(names)} files) from "
          f"{endpoint} into {target}", file=out, flush=True)
    began = time.monotonic()
    reporter = None if progress is None else Reporter(progress, "download", None, unit="bytes")
    try:
        manifest: dict[str, Any] = {"name": spec.name, "repo": spec.repo, "revision": REVISION,
                                    "endpoint": endpoint, "commit": None, "files": {}}
        for name in names:
            try:
                record = _fetch_file(endpoint, spec.repo, name, staging / name, config, out, reporter)
            except _Missing:
                if name in required:
                    raise ModelError(
                        f"{spec.repo} has no {name} at {endpoint} (HTTP 404); the registry entry "
                        f"for {spec.name} may be out of date"
                    ) from None
                print(f"  {name}: not published by {spec.repo}, skipped (optional)", file=out, flush=True)
                continue
            commit = record.pop("commit")
            manifest["commit"] = manifest["commit"] or commit
            manifest["files"][name] = record
        _write_manifest(staging, manifest)
        _place(staging, target)
        if reporter is not None:
            reporter.finish()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    total = sum(f["size"] for f in manifest["files"].values())
    print(f"localmem: downloaded {spec.name}: {len(manifest['files'])} files, {_size(total)} in "
          f"{time.monotonic() - began:.1f} s", file=out, flush=True)
    return target


def _remove_stale_staging(parent: Path) -> None:
    """Staging folders a crashed download left behind, once old enough that no live
    download can own them."""
    now = time.time()
    for entry in parent.glob(".*.partial"):
        try:
            if now - entry.stat().st_mtime > STALE_STAGING:
                shutil.rmtree(entry, ignore_errors=True)
        except OSError:
            pass


def _write_manifest(staging: Path, manifest: dict[str, Any]) -> None:
    path = staging / MANIFEST
    try:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(manifest, f, indent=1, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise ModelError(f"cannot write {path}: {exc}") from exc


def _place(staging: Path, target: Path) -> None:
    """Rename the staging folder to ``target``. Another process may have finished the same
    download first: its complete copy is kept, ours dropped. An incomplete folder in the
    way (not made by this module: it would have a manifest) is moved aside and removed."""
    if target.exists() and not downloaded(target):
        aside = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old.partial")
        try:
            os.replace(target, aside)
        except OSError:
            pass
        shutil.rmtree(aside, ignore_errors=True)
    try:
        os.replace(staging, target)
    except OSError as exc:
        if downloaded(target):
            return  # another process placed a complete copy a moment ago
        raise ModelError(f"cannot move the download into {target}: {exc}") from exc


def _fetch_file(endpoint: str, repo: str, name: str, dest: Path, config: Settings,
                out: IO[str], reporter: Reporter | None = None) -> dict[str, Any]:
    """One file, into ``dest``, tried ``config.attempts`` times (resuming); returns its
    manifest record ``{"size", "sha256", "commit"}``."""
    from huggingface_hub import hf_hub_url

    url = hf_hub_url(repo, name, revision=REVISION, endpoint=endpoint)
    headers = {
        "User-Agent": f"localmem/{__version__}; python/{platform.python_version()}",
        "Accept-Encoding": "identity",  # the size and the hash are those of the bytes
    }
    try:
        dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        file = dest.open("w+b")
    except OSError as exc:
        raise ModelError(f"cannot write {dest}: {exc}") from exc
    progress = _Progress(out, name, reporter)
    state = _FileState()
    with file:
        try:
            for attempt in range(1, config.attempts + 1):
                try:
                    _attempt(url, headers, file, state, config.timeout, progress)
                    return {"size": state.written, "sha256": state.digest.hexdigest(), "commit": state.commit}
                except _Failed as exc:
                    if not exc.retry or attempt == config.attempts:
                        tries = f"{attempt} attempt{'s' if attempt > 1 else ''}"
                        raise ModelError(f"{url}: {exc} ({tries}, timeout {config.timeout:g} s)") from None
                    wait = config.backoff * 2 ** (attempt - 1)
                    progress.say(f"  {name}: attempt {attempt} of {config.attempts} failed ({exc}); "
                                 f"trying again in {wait:g} s")
                    time.sleep(wait)
        finally:
            progress.close()
    raise AssertionError("unreachable")  # the loop returns or raises


class _FileState:
    """What the attempts at one file have gathered so far."""

    def __init__(self) -> None:
        self.written = 0
        self.digest = hashlib.sha256()
        self.expected_size: int | None = None
        self.expected_sha256: str | None = None
        self.commit: str | None = None

    def restart(self, file: IO[bytes]) -> None:
        file.seek(0)
        file.truncate()
        self.written = 0
        self.digest = hashlib.sha256()


def _attempt(url: str, headers: dict[str, str], file: IO[bytes], state: _FileState, timeout: float,
             progress: _Progress) -> None:
    """One GET of ``url`` into ``file``, from ``state.written`` on (a Range request)."""
    redirects = _Redirects()
    opener = urllib.request.build_opener(redirects)
    request = urllib.request.Request(url, headers=dict(headers))
    if state.written:
        request.add_header("Range", f"bytes={state.written}-")
    try:
        with opener.open(request, timeout=timeout) as response:
            _learn(state, [*redirects.hops, response.headers])
            if state.written and response.status != 206:
                state.restart(file)  # the server ignored the Range: start over
            elif state.written and not _resumes_at(response.headers, state.written):
                raise _Failed(f"the server resumed at the wrong offset "
                              f"({response.headers.get('Content-Range')!r})", retry=False)
            length = response.headers.get("Content-Length")
            if state.expected_size is None and response.status == 200 and length and length.isdigit():
                state.expected_size = int(length)
            progress.start(state.expected_size, state.written)
            while chunk := response.read(_CHUNK):
                try:
                    file.write(chunk)
                except OSError as exc:
                    raise ModelError(f"cannot write the download to {file.name}: {exc}") from exc
                state.digest.update(chunk)
                state.written += len(chunk)
                progress.update(len(chunk))
    except urllib.error.HTTPError as exc:
        if exc.code == 404:
            raise _Missing() from None
        if exc.code == 416 and state.written:  # nothing left past our offset: check below
            pass
        else:
            raise _Failed(f"HTTP {exc.code} {exc.reason}", retry=exc.code in _RETRY_STATUS) from None
    except TimeoutError:  # socket.timeout is TimeoutError since Python 3.10
        raise _Failed(f"no data for {timeout:g} s", retry=True) from None
    except urllib.error.URLError as exc:
        reason = exc.reason
        if isinstance(reason, TimeoutError):
            raise _Failed(f"no answer to connect within {timeout:g} s", retry=True) from None
        raise _Failed(f"cannot connect: {reason}", retry=True) from None
    except (http.client.HTTPException, OSError) as exc:  # reset, refused mid-body, IncompleteRead...
        raise _Failed(f"connection lost: {type(exc).__name__}: {exc}", retry=True) from None
    _check(state)


def _learn(state: _FileState, hops: list[Any]) -> None:
    """The size, sha256 and commit the Hub states, from any hop of the redirect chain."""
    for headers in hops:
        size = headers.get("X-Linked-Size")
        if size and size.strip().isdigit():
            state.expected_size = int(size)
        etag = (headers.get("X-Linked-Etag") or "").strip().strip('"').removeprefix("W/").strip('"')
        if _SHA256.fullmatch(etag):
            state.expected_sha256 = etag
        commit = headers.get("X-Repo-Commit")
        if commit:
            state.commit = commit.strip()


def _resumes_at(headers: Any, offset: int) -> bool:
    match = re.match(r"\s*bytes\s+(\d+)-", headers.get("Content-Range") or "")
    return match is not None and int(match.group(1)) == offset


def _check(state: _FileState) -> None:
    if state.expected_size is not None and state.written < state.expected_size:
        raise _Failed(f"the connection ended at {state.written} of {state.expected_size} bytes", retry=True)
    if state.expected_size is not None and state.written != state.expected_size:
        raise _Failed(f"got {state.written} bytes where the Hub announced {state.expected_size}", retry=False)
    if state.expected_sha256 is not None and state.digest.hexdigest() != state.expected_sha256:
        got = state.digest.hexdigest()
        raise _Failed(f"sha256 {got[:12]}... differs from the Hub's {state.expected_sha256[:12]}...; the "
                      "download is damaged (a proxy rewriting it?)", retry=False)
