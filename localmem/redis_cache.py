"""The Redis tiers: the hot window and the query cache in a Redis server that every process
on every machine sharing one database (the PostgreSQL backend) reads and fills.

``RedisHotWindow`` and ``RedisQueryCache`` stand in for ``cache.HotWindow`` and
``cache.QueryCache`` (the ``cache.HotTier`` and ``cache.QueryTier`` protocols), with the
same rule: Redis only accelerates, the database decides.

* A hot-window entry carries the conversation version it was built at and is served only
  while the database reports that version; a query answer carries its scope token and is
  served only for that exact token. A write by any process on any machine moves the
  version (or token) in its own transaction, so nothing stale is ever served, whatever
  Redis holds or however late an old writer's entry lands.
* Keys are ``localmem:<namespace>:h:<sha256>`` (hot window), ``...:q:<sha256>`` (query
  answers) and ``...:g:<sha256>`` (a Redis set per group, naming its answers' keys, for
  ``forget_group``). The namespace is the database's instance id, so two databases
  sharing one Redis never see each other's entries. Every entry and set has a TTL,
  counted from when it was written (a read does not renew it, as on disk): the hot
  window's ``ttl``, the query cache's ``ttl`` (a group's set lives as long as its
  longest-lived answer).
* Values are JSON, written and read as bytes; nothing is pickled or unpickled. Nothing
  read from Redis is trusted: an entry is checked field by field (it must also name the
  key it was stored under), and anything malformed is a miss. ``forget_group`` deletes
  only the keys of this namespace's answers that a group's set names.
* Redis trouble (no server, a timeout, a key of the wrong type, a refused command) is
  logged, rate-limited like the disk tiers (``cache.WARN_EVERY``), and is a miss: the
  answer then comes from the database, never an exception. Each command waits at most
  ``timeout`` seconds (REDIS_TIMEOUT, 0.25 s: connecting and each reply), with no retry;
  after a connection failure or a timeout the tier stays off for ``RETRY_AFTER`` seconds
  (every read a miss, every write skipped), so a Redis that is down costs nothing per
  call. ``erase_conversations`` and ``erase_groups`` always try, and report what they
  could not do (``Memory.forget`` puts it in its report) instead of logging it.
* An erased entry is gone from Redis's keyspace at once (``DEL``, not the lazy
  ``UNLINK``). Redis does not zero the memory it frees, and with RDB or AOF persistence
  on, older copies stay in those files until they are rewritten: a cache Redis is best
  run without persistence (``--save '' --appendonly no``), on a host as private as the
  database's.
* An answer is stored by a short Lua script (EVALSHA), which also names it in its
  group's set, atomically; the server must allow scripts (Redis and Valkey do).
* The ``redis`` package (the ``redis`` extra) is imported when a tier is made, never by
  ``import localmem`` nor by importing this module. After ``fork()`` the child makes a
  client of its own on first use and never touches the parent's sockets.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from .cache import (
    DEFAULT_HOT_TTL,
    DEFAULT_HOT_WINDOW,
    DEFAULT_QUERY_TTL,
    TierWarnings,
    Window,
    _json,
    _utf8,
)
from .errors import InvalidInputError
from .records import Row
from .validate import redact_url

if TYPE_CHECKING:
    import redis

    from .backend import ConversationState
    from .cache import HotTier, QueryTier

__all__ = ["REDIS_TIMEOUT", "RETRY_AFTER", "SCHEMES", "RedisHotWindow", "RedisQueryCache", "open_tiers"]

log = logging.getLogger(__name__)

INSTALL = "pip install 'localmem-engine[redis]'"
SCHEMES = ("redis", "rediss", "unix")
# The longest a Redis command waits (connecting, then for its reply): past it, a miss.
REDIS_TIMEOUT = 0.25
# After a connection failure or a timeout, the tier is off (a miss) this many seconds.
RETRY_AFTER = 5.0
KEY_PREFIX = "localmem"
_FORMAT = 1  # the layout of the entries below; another one is a miss
_NAMESPACE = re.compile(r"[A-Za-z0-9_.-]{1,128}\Z")  # no glob characters: SCAN patterns stay exact
_BATCH = 500  # keys per DEL
_T = TypeVar("_T")
# A query answer and its group's set, in one atomic step: first the set names the answer
# and lives at least as long as it (never less than the longest-lived answer it names),
# then the answer is stored. A set of another type stops the script before the answer is
# stored: no answer is ever stored that forget_group could not find.
_PUT = """
local ms = tonumber(ARGV[2])
redis.call('SADD', KEYS[2], KEYS[1])
if redis.call('PTTL', KEYS[2]) < ms then redis.call('PEXPIRE', KEYS[2], ms) end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ms)
return 1
"""


def redact(url: str) -> str:
    """``url`` without its password (in ``user:pw@`` or a ``password=`` query parameter,
    which redis-py also takes): what messages and logs may show."""
    return redact_url(url)


def check_url(url: Any) -> str:
    """``url`` if it is a ``redis://``, ``rediss://`` (TLS) or ``unix://`` URL; else
    InvalidInputError, naming the URL without its password."""
    if type(url) is not str:
        raise InvalidInputError(f"a Redis URL must be a str; got {type(url).__name__}")
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as exc:
        raise InvalidInputError(f"not a usable Redis URL: {redact(url)!r} ({exc})") from exc
    if parts.scheme not in SCHEMES:  # (urlsplit lower-cases it)
        raise InvalidInputError(
            f"a Redis URL starts with redis://, rediss:// or unix://; got {redact(url)!r}"
        )
    if parts.scheme == "unix" and not parts.path:
        raise InvalidInputError(f"a unix:// Redis URL names the socket's path; got {redact(url)!r}")
    return parts.scheme + url[len(parts.scheme):]  # (redis-py reads only a lower-case scheme)


def _check_namespace(namespace: Any) -> str:
    if type(namespace) is not str or not _NAMESPACE.match(namespace):
        raise InvalidInputError(
            "namespace must be the database's instance id (1-128 letters, digits, '_', '.', '-'), "
            f"which keeps the entries of databases sharing one Redis apart; got {namespace!r}"
        )
    return namespace


def _check_seconds(value: Any, name: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < 10**10:
        raise InvalidInputError(f"{name} must be seconds > 0; got {value!r}")
    return float(value)


def _ms(seconds: float) -> int:
    return max(1, math.ceil(seconds * 1000))


def _sha(text: str) -> str:
    return hashlib.sha256(_utf8(text)).hexdigest()


class _RedisTier(TierWarnings):
    """One Redis client and what every Redis tier shares: the key prefix, the timeout,
    the pause after a connection failure, the rate-limited warnings."""

    _what = "cache"

    def __init__(self, url: str, *, namespace: str, timeout: float) -> None:
        self._url = check_url(url)
        self.url = redact(url)
        self._prefix = f"{KEY_PREFIX}:{_check_namespace(namespace)}:"
        self._timeout = _check_seconds(timeout, "timeout")
        self._label = f"Redis {self._what} at {self.url}"
        self._closed = False
        self._retry_at = 0.0
        self._pid = os.getpid()
        self._client = self._make_client()

    def _make_client(self) -> redis.Redis:
        try:
            import redis
            from redis.backoff import NoBackoff
            from redis.retry import Retry
        except ImportError as exc:
            raise InvalidInputError(
                f"a Redis tier needs the redis package, which could not be imported ({exc}); "
                f"it comes with the redis extra: {INSTALL}"
            ) from exc
        try:
            return redis.Redis.from_url(
                self._url, socket_timeout=self._timeout, socket_connect_timeout=self._timeout,
                retry=Retry(NoBackoff(), 0), health_check_interval=0,
            )
        except ValueError as exc:  # (connects on first use: only the URL is checked here)
            raise InvalidInputError(f"not a usable Redis URL: {self.url!r} ({exc})") from exc

    def _current(self, *, even_if_paused: bool = False) -> redis.Redis | None:
        """This process's client (a forked child makes its own), or None when closed or
        paused after a connection failure."""
        if self._closed or (not even_if_paused and time.monotonic() < self._retry_at):
            return None
        if self._pid != os.getpid():  # the parent's connections are never used here
            self._client, self._pid = self._make_client(), os.getpid()
        return self._client

    def _pause_if_down(self, exc: BaseException) -> bool:
        import redis

        if isinstance(exc, (redis.ConnectionError, redis.TimeoutError, OSError)):
            self._retry_at = time.monotonic() + RETRY_AFTER
            return True
        return False

    def _run(self, what: str, op: Callable[[redis.Redis], _T]) -> _T | None:
        """``op(client)``, or None on any trouble (logged, saying ``what`` happens instead)."""
        client = self._current()
        if client is None:
            return None
        try:
            return op(client)
        except Exception as exc:  # noqa: BLE001 - cache trouble is a miss, never the caller's error
            if self._pause_if_down(exc):
                what += f"; Redis not tried again for {RETRY_AFTER:g} s"
            self._warn(what, exc)
            return None

    def _read(self, key: str, fallback: str) -> Any:
        """The JSON value stored under ``key``, or None (absent, unreadable: a miss)."""

        def read(client: redis.Redis) -> Any:
            raw = client.get(key)
            return None if raw is None else json.loads(raw)

        return self._run(f"unreadable, {fallback}", read)

    def _erase(self, op: Callable[[redis.Redis], None]) -> str | None:
        """Run ``op``, even while paused; None when done, else what was left undone."""
        client = self._current(even_if_paused=True)
        if client is None:
            return f"{self._label}: closed, entries not erased"
        try:
            op(client)
        except Exception as exc:  # noqa: BLE001 - reported to the caller (Memory.forget's report)
            self._pause_if_down(exc)
            return f"{self._label}: entries not erased: {type(exc).__name__}: {exc}"
        return None

    @staticmethod
    def _delete(client: redis.Redis, keys: Sequence[str | bytes]) -> None:
        for start in range(0, len(keys), _BATCH):
            client.delete(*keys[start : start + _BATCH])

    def erase(self) -> str | None:
        """What ``maintain()`` asks of every tier: drop expired entries and make deletions
        final. Redis drops expired keys itself and a deleted key is gone at once, so there
        is nothing to do (None: nothing left undone)."""
        return None

    def close(self) -> None:
        """Close this process's connections (idempotent); every call after it is a miss."""
        self._closed = True
        if self._pid == os.getpid():  # a forked child leaves the parent's sockets alone
            with contextlib.suppress(Exception):
                self._client.close()


class RedisHotWindow(_RedisTier):
    """``cache.HotWindow`` in Redis: the newest ``size`` messages of each conversation,
    each entry served only at the conversation version it was built at. An entry lives
    ``ttl`` seconds after it was written."""

    _what = "hot window"

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        size: int = DEFAULT_HOT_WINDOW,
        ttl: float = DEFAULT_HOT_TTL,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        if type(size) is not int or size < 1:
            raise InvalidInputError(f"size must be a positive int; got {size!r}")
        self.size = size
        self.ttl = _check_seconds(ttl, "ttl")
        super().__init__(url, namespace=namespace, timeout=timeout)

    def _key(self, owner_id: str, conversation_id: str) -> tuple[str, str]:
        """(the Redis key, the JSON the entry must name)."""
        named = _json([owner_id, conversation_id])
        return f"{self._prefix}h:{_sha(named)}", named

    def get(self, owner_id: str, conversation_id: str, state: ConversationState) -> Window | None:
        """The cached window if it was built at ``state``'s version, else None."""
        key, named = self._key(owner_id, conversation_id)
        entry = self._read(key, "using the database")
        if (
            type(entry) is not dict or entry.get("f") != _FORMAT or entry.get("k") != named
            or type(entry.get("v")) is not int or entry["v"] != state.version
        ):
            return None
        return Window.from_json(entry.get("rows"), entry.get("complete"))

    def put(
        self,
        owner_id: str,
        conversation_id: str,
        state: ConversationState,
        rows: Sequence[Row],
    ) -> Window:
        """Remember the newest rows (oldest first) of a conversation at ``state``; returns
        the window as stored (even when Redis could not take it)."""
        window = Window.newest(rows, self.size, state)
        key, named = self._key(owner_id, conversation_id)
        value = _utf8(_json(
            {"f": _FORMAT, "k": named, "v": state.version, "complete": window.complete, "rows": window.rows},
            canonical=False,
        ))
        self._run("not updated (hot window)", lambda client: client.set(key, value, px=_ms(self.ttl)))
        return window

    def forget(self, owner_id: str, conversation_id: str) -> None:
        """Drop the conversation's entry (its messages must not outlive a delete here)."""
        problem = self.erase_conversations([(owner_id, conversation_id)])
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase_conversations(self, scopes: Iterable[tuple[str, str]]) -> str | None:
        """Delete the entries of these (owner, conversation) pairs; None when done, else
        what was left undone."""
        keys = [self._key(o, c)[0] for o, c in scopes]
        return self._erase(lambda client: self._delete(client, keys)) if keys else None


class RedisQueryCache(_RedisTier):
    """``cache.QueryCache`` in Redis: strategy answers for ``ttl`` seconds, each served only
    for the exact ``key`` and ``scope`` (as canonical JSON) it was stored with, each in a
    ``group`` (the owner) that ``forget_group`` drops at once. A stored None is a miss."""

    _what = "query cache"

    def __init__(
        self,
        url: str,
        *,
        namespace: str,
        ttl: float = DEFAULT_QUERY_TTL,
        timeout: float = REDIS_TIMEOUT,
    ) -> None:
        self.ttl = _check_seconds(ttl, "ttl")
        super().__init__(url, namespace=namespace, timeout=timeout)
        # EVALSHA, loading the script again when the server does not know it (a restart)
        self._put_script = self._client.register_script(_PUT)

    def _key(self, key_json: str) -> str:
        return f"{self._prefix}q:{_sha(key_json)}"

    def _group_key(self, group: str) -> str:
        return f"{self._prefix}g:{_sha(_json(group))}"

    def get(self, key: Sequence[Any], scope: Any) -> Any | None:
        """The value stored for ``key`` at exactly ``scope``, else None."""
        try:
            key_json, scope_json = _json(list(key)), _json(scope)
        except (TypeError, ValueError) as exc:
            self._warn("key unusable, running the query", exc)
            return None
        entry = self._read(self._key(key_json), "running the query")
        if (
            type(entry) is not dict or entry.get("f") != _FORMAT
            or entry.get("k") != key_json or entry.get("s") != scope_json
        ):
            return None
        return entry.get("v")

    def put(self, key: Sequence[Any], scope: Any, value: Any, *, group: str) -> None:
        """Remember ``value`` (JSON-able) as the answer for ``key`` at ``scope``."""
        try:
            key_json = _json(list(key))
            entry = {"f": _FORMAT, "k": key_json, "s": _json(scope), "v": value}
            raw = _utf8(_json(entry, canonical=False))  # the value's own key order is kept
            group_key = self._group_key(group)
        except (TypeError, ValueError) as exc:
            self._warn("key or value unusable, not cached", exc)
            return
        keys, args = [self._key(key_json), group_key], (raw, _ms(self.ttl))
        self._run("not updated (query)", lambda client: self._put_script(keys=keys, args=args, client=client))

    def forget_group(self, group: str) -> None:
        """Drop every answer stored for ``group``."""
        problem = self.erase_groups([group])
        if problem is not None:
            log.warning("localmem %s", problem)

    def erase_groups(self, groups: Iterable[str] | None) -> str | None:
        """Delete every answer of these groups (None: every answer of this namespace);
        None when done, else what was left undone."""
        if groups is None:
            return self._erase(self._erase_all)
        group_keys = [self._group_key(g) for g in groups]
        return self._erase(lambda client: self._erase_sets(client, group_keys)) if group_keys else None

    def _erase_sets(self, client: redis.Redis, group_keys: Sequence[str]) -> None:
        """Delete the answers the sets name, and those names from the sets. (An answer
        stored meanwhile keeps its name in its set.) A name outside this namespace's
        answers, which only a planted set can hold, is removed from the set, nothing more."""
        ours = f"{self._prefix}q:".encode()
        with client.pipeline(transaction=False) as pipe:
            for group_key in group_keys:
                pipe.smembers(group_key)
            named: list[Any] = pipe.execute(raise_on_error=False)
        unreadable = [found for found in named if isinstance(found, Exception)]
        with client.pipeline(transaction=True) as pipe:
            for group_key, found in zip(group_keys, named):
                if isinstance(found, Exception):  # (a key of another type: the others go on)
                    continue
                members = sorted(found)
                entries = [m for m in members if type(m) is bytes and m.startswith(ours)]
                for start in range(0, len(members), _BATCH):
                    pipe.srem(group_key, *members[start : start + _BATCH])
                for start in range(0, len(entries), _BATCH):
                    pipe.delete(*entries[start : start + _BATCH])
            pipe.execute()
        if unreadable:
            raise unreadable[0]

    def _erase_all(self, client: redis.Redis) -> None:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"{self._prefix}[qg]:*", count=1000):
            batch.append(key)
            if len(batch) >= _BATCH:
                self._delete(client, batch)
                batch = []
        self._delete(client, batch)


def open_tiers(
    url: str,
    *,
    namespace: str,
    hot_size: int = DEFAULT_HOT_WINDOW,
    hot_ttl: float = DEFAULT_HOT_TTL,
    query_ttl: float = DEFAULT_QUERY_TTL,
    timeout: float = REDIS_TIMEOUT,
) -> tuple[RedisHotWindow | None, RedisQueryCache | None]:
    """The hot window and the query cache in the Redis at ``url`` (``redis://``,
    ``rediss://`` or ``unix://``; anything else is InvalidInputError), keyed under
    ``namespace`` (the database's instance id). ``hot_size`` 0 means no hot window and
    ``query_ttl`` 0 no query cache (None in their place), as for the disk tiers.

    Nothing is sent to Redis here: a server that is down makes misses, not an error.
    """
    check_url(url)
    _check_namespace(namespace)
    hot = None if type(hot_size) is int and hot_size == 0 else RedisHotWindow(
        url, namespace=namespace, size=hot_size, ttl=hot_ttl, timeout=timeout)
    try:
        queries = None if type(query_ttl) in (int, float) and query_ttl == 0 else RedisQueryCache(
            url, namespace=namespace, ttl=query_ttl, timeout=timeout)
    except BaseException:
        if hot is not None:
            hot.close()
        raise
    return hot, queries


if TYPE_CHECKING:  # (for mypy: the Redis tiers are what the protocols say)

    def _conforms(hot: RedisHotWindow, queries: RedisQueryCache) -> tuple[HotTier, QueryTier]:
        return hot, queries
