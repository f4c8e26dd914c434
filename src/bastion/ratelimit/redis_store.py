"""Rate-limit counters and bans in Redis: one script call per request, pipelined.

:class:`RedisStore` implements :class:`~bastion.ratelimit.core.RateLimitStore` with the
script ``lua/ratelimit.lua``, which mirrors :mod:`bastion.ratelimit.algorithms` and the ban
rules of :mod:`bastion.ratelimit.memory`. Everything a request needs — all its checks and its
client's penalty record (a rate-limit ban or an inspection strike block) — is one
``EVALSHA``, so the decision is atomic across every instance sharing the Redis, and an
anonymous request costs exactly one Redis command.

**Clock.** The script reads Redis ``TIME``, so instances whose clocks disagree still agree on
every decision; all times it handles are integer microseconds.

**Call format.** ``EVALSHA sha numkeys KEYS... ARGV...`` with, for ``n`` checks:

- ``KEYS``: one bucket per check, then (with bans) the client's ban record, its refusal log,
  the ban index and the client's block mark;
- ``ARGV``: ``"e"``, ``n``, then per check seven values: algorithm code (1 gcra,
  2 sliding_window, 3 fixed_window, 4 sliding_log, 5 concurrency, 6 quota), limit, period (µs),
  burst, cost, enforce (1/0), and the quota window id or the concurrency lease token (empty
  otherwise); then with bans: the client, threshold, window (µs), reset_after (µs) and the ban
  durations (µs); last, a token unique to the call (names sorted-set members). Everything
  before that token is the same for every request of one client whose checks have the same
  keys and rules, so it is encoded once and cached (not for quota or leased concurrency
  checks, whose window id or token change per request).

**Reply format.** A flat array of integers, so hiredis parses it and nothing parses a float:
``[now_us, allowed, banned_for_us, new_ban_us, ban_level, source]`` (source 0 ``ratelimit``,
1 ``inspect``) followed, unless the client is banned or blocked, by
``[allowed, remaining, reset_us, retry_after_us]`` per check in the order given. ``allowed`` is
1 or 0; microseconds are rounded to the nearest integer.

**Keys.** ``<prefix><check.key>`` per bucket (``Check.key`` starts with the policy name);
per client ``<prefix>ban:{<client>}``, its penalty record ``"until level"``, which rate-limit
bans and inspection strike blocks share (:meth:`RedisStore.strike` writes the blocks),
``<prefix>block:{<client>}``, the block mark (the ``until`` of the record a strike block
set: while it equals the record's, the record's source is ``inspect``),
``<prefix>refusals:{<client>}`` and ``<prefix>strikes:{<client>}`` (its strike count); and
the ban index ``<prefix>bans`` (a sorted set of banned or blocked clients scored by
their penalty's end, which :meth:`RedisStore.active_bans` reads instead of scanning the
keyspace). Every key carries an expiry just long enough for its state: GCRA until its
``tat``; fixed and sliding windows until the end of the window (sliding: the next one, while it
still weighs); the log and the leases one period after their newest entry; a quota until its
calendar window ends; refusals one ban window; strike counts one strike window; a ban record
until the ban ends plus ``reset_after`` (so the next offence is known), a block's until it
ends (plus ``reset_after`` when the record has a level), the block mark until the block ends;
the index until its latest penalty ends.

**Rolling upgrades.** The record keeps the two-field value of releases before strike blocks
shared it, and the source lives in the block mark, a key of the same hash slot that the
previous script never reads: an instance still running it reads every record, a strike block
included, as a ban (429 ``client_banned`` instead of 403), and never fails on one.

**Concurrency leases.** A granted slot is a member of the bucket's sorted set scored by its
expiry and named by the request's token (``Check.lease``): ``token#1`` … ``token#cost``.
:meth:`RedisStore.release` removes exactly those members, so a request whose lease lapsed (it
ran longer than the period) frees nothing that later requests hold. A caller cancelled while
its call was on its way cannot release what the call granted, so the store does it: when the
reply of a cancelled caller allowed leased checks, a release of its tokens is sent in the
background. Without a token a release removes the bucket's oldest members.

**Redis Cluster is not supported.** The store's connections talk to one Redis node: a single
Redis, or the primary of a Sentinel or managed (one-primary) deployment. Against a Redis Cluster
every call would fail with ``MOVED``/``CROSSSLOT``, so the store asks the server
(``INFO cluster``) on its first exchange, and when ``cluster_enabled:1`` every call fails with a
:class:`~bastion.ratelimit.core.RateLimitStoreError` saying so (:meth:`RedisStore.check_server`
does the same at start-up). ``cluster=True`` only chooses a key layout a cluster-aware client
could use later: every bucket of a call is tagged with the client,
``<prefix>{<client>}<check.key>`` (the ban keys already are), so a call's keys share one hash
slot — except the ban index, one key of its own, written when a ban starts or is lifted. The
consequence of the tags: a bucket that is not per client — a per-user, per-key, per-tenant or
per-route policy — is counted *separately for each client address* the requests come from
(``{203.0.113.7}api|user:42`` and ``{198.51.100.9}api|user:42`` are two counters), so a user
spreading requests over ``k`` addresses gets up to ``k`` times its limit; per-IP policies are
exact. Releasing a concurrency slot needs the client's tag, which :meth:`RedisStore.release`
is not given: with ``cluster=True`` the store remembers the key of each slot it granted (by
check object) until its release.

**Pipelining** (``batch=True``). Calls made while a batch is being prepared or is in flight are
queued and sent together as one pipeline on one of the store's own connections (still one
``EVALSHA`` per request): one round trip serves every request that arrived during the previous
one. At most :data:`MAX_BATCHES_IN_FLIGHT` batches travel at once. ``batch=False`` sends each
call alone on a connection of its own.

**Errors.** Every call is bounded by ``timeout`` (default: the connector's); an unreachable
Redis, a timeout, a script or protocol error raise
:class:`~bastion.ratelimit.core.RateLimitStoreError`, which the limiter turns into each
policy's ``on_store_error``. A failed batch fails each of its callers; a caller cancelled while
it waits leaves the others untouched. A broken connection is closed and reopened by the next
call, so the store recovers by itself when Redis is back. When Redis lost the script (restart,
``SCRIPT FLUSH``, failover) the calls that met ``NOSCRIPT`` are retried once after a
``SCRIPT LOAD``; the script body is never sent with a request.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import itertools
import math
import os
from collections.abc import Sequence
from importlib import resources
from typing import Any

from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError, RedisError, ResponseError

from bastion.ratelimit.core import (
    INSPECT,
    RATELIMIT,
    BanRecord,
    BanRule,
    Check,
    Decision,
    RateLimitStoreError,
    Rule,
    Verdict,
)
from bastion.store.errors import describe
from bastion.store.redis import RedisConnector

try:  # redis-py's "reply incomplete" marker of its hiredis parser (see _read_replies)
    from redis._parsers.hiredis import NOT_ENOUGH_DATA as _NOT_ENOUGH_DATA
except ImportError:  # pragma: no cover - hiredis is a dependency
    _NOT_ENOUGH_DATA = None

__all__ = ["CLUSTER_UNSUPPORTED", "MAX_BATCHES_IN_FLIGHT", "SCRIPT", "RedisStore"]

SCRIPT: bytes = resources.files("bastion.ratelimit").joinpath("lua/ratelimit.lua").read_bytes()
"""The Lua script every call runs (by its SHA-1)."""

MAX_BATCHES_IN_FLIGHT = 2
"""Pipelines one store sends at once, each on its own connection (more calls wait for one)."""

CLUSTER_UNSUPPORTED = (
    "store.redis_url points at a Redis Cluster (INFO cluster: cluster_enabled:1), which the "
    "rate-limit store does not support: its connections talk to one node, so every call would "
    "fail with MOVED or CROSSSLOT. Use a single Redis, or Sentinel or a managed Redis with one "
    "primary"
)
"""The message of the error every call raises once the store found a Redis Cluster."""

_CODES = {
    "gcra": b"1",
    "sliding_window": b"2",
    "fixed_window": b"3",
    "sliding_log": b"4",
    "concurrency": b"5",
    "quota": b"6",
}
_MAX_IDLE = 16
"""Connections kept for reuse; more are opened only by unbatched calls made concurrently."""
_MAX_CACHED = 4096
"""Encoded rules, command prefixes and cluster-mode slot keys kept (all bounded caches)."""
_US = 1_000_000
_EMPTY = b"$0\r\n\r\n"
_INFO_CLUSTER = b"*2\r\n$4\r\nINFO\r\n$7\r\ncluster\r\n"
_SOURCES = (RATELIMIT, INSPECT)
"""Penalty sources by the code the script replies with."""
# Decision and Verdict are named tuples: tuple.__new__ skips their generated __new__.
_tuple_new = tuple.__new__

_Leased = tuple[Sequence[Check], str | None]
"""The checks and client of a call that holds concurrency leases under tokens."""
_Pending = tuple[bytes, "asyncio.Future[Any]", _Leased | None]
"""A queued call: its command, its caller's waiter, and its leases."""


def _bulk(value: bytes) -> bytes:
    """``value`` as a RESP bulk string."""
    return b"$%d\r\n%b\r\n" % (len(value), value)


_COUNTS = [_bulk(b"%d" % count) for count in range(16)]
"""``0`` to ``15`` as bulk strings: the check counts of nearly every call."""


def _command(*parts: bytes) -> bytes:
    """A whole RESP command."""
    return b"*%d\r\n%b" % (len(parts), b"".join(_bulk(part) for part in parts))


def _us(seconds: float) -> bytes:
    return b"%d" % round(seconds * _US)


def _per_request(check: Check) -> bool:
    """Whether ``check`` carries a value of its own request (a quota window id, a lease
    token), which keeps its call's command out of the prefix cache."""
    return check.window is not None or bool(check.lease)


async def _read_replies(connection: AbstractConnection, count: int) -> list[Any]:
    """The next ``count`` replies on ``connection``; error replies are returned as their
    exceptions, not raised.

    The pipeline's replies come in one pass over the connection's hiredis reader, with a socket
    read only when it runs short: no ``read_response`` coroutine per reply, which cost about
    1.5 µs of CPU per reply (measured, 8 replies per pipeline). A parser other than redis-py's
    hiredis one (hiredis missing, or a redis-py that reorganised its parsers) is read through
    ``read_response``, one reply at a time."""
    parser = getattr(connection, "_parser", None)
    reader = getattr(parser, "_reader", None)
    if _NOT_ENOUGH_DATA is None or reader is None or not hasattr(parser, "read_from_socket"):
        replies: list[Any] = []
        for _ in range(count):
            try:
                replies.append(await connection.read_response(timeout=math.inf))
            except ResponseError as exc:
                replies.append(exc)
        return replies
    replies = []
    while len(replies) < count:
        reply = reader.gets()
        if reply is _NOT_ENOUGH_DATA:
            await parser.read_from_socket()  # type: ignore[union-attr]
        elif isinstance(reply, RedisConnectionError):
            raise reply
        else:
            replies.append(reply)
    return replies


class RedisStore:
    """:class:`~bastion.ratelimit.core.RateLimitStore` shared through Redis (module docstring:
    script, key layout, leases, cluster, pipelining and errors)."""

    def __init__(
        self,
        connector: RedisConnector,
        *,
        prefix: str = "bastion:rl:",
        timeout: float | None = None,
        batch: bool = True,
        cluster: bool = False,
    ) -> None:
        self._connector = connector
        self._pool = connector.client.connection_pool
        self._timeout = connector.timeout if timeout is None else timeout
        if self._timeout <= 0:
            raise ValueError("timeout must be positive")
        self._batch = batch
        self._cluster = cluster
        self.prefix = prefix
        """Start of every key this store writes."""
        self.sha = hashlib.sha1(SCRIPT, usedforsecurity=False).hexdigest()
        """The script's SHA-1, as ``EVALSHA`` names it."""
        self.commands_sent = 0
        """``EVALSHA`` commands issued (retries after ``NOSCRIPT`` included), for tests and
        benchmarks."""
        self._prefix = prefix.encode()
        self._sha_part = _bulk(self.sha.encode())
        self._load = _command(b"SCRIPT", b"LOAD", SCRIPT)
        # Unique per call across processes and instances: members of the sorted sets.
        self._token = b"%s%x." % (os.urandom(4).hex().encode(), os.getpid())
        self._sequence = itertools.count()
        # id(rule) -> (rule, cost, enforce, encoded first six ARGV values of the check); the
        # rule is kept so its id cannot be reused while the entry lives.
        self._encoded: dict[int, tuple[Rule, int, bool, bytes]] = {}
        self._ban_args: dict[int, tuple[BanRule, int, bytes]] = {}
        # (tag, check key) or client -> its keys as RESP bulk strings.
        self._parts: dict[tuple[str | None, str] | str, bytes] = {}
        # Shape of a call (client, bans, and each check's key, rule, cost, mode; or a static
        # plan standing for them, and bans) -> the command up to its call token, and the plan,
        # rules and bans whose ids the shape holds (kept alive so those ids are not reused
        # while the entry lives).
        self._prefixes: dict[tuple[Any, ...], tuple[bytes, tuple[object, ...]]] = {}
        # Cluster layout: id(check) -> (check, key) of the concurrency slots granted.
        self._held: dict[int, tuple[Check, bytes]] = {}
        self._idle: list[AbstractConnection] = []
        # Queued calls: command, waiter, and the checks and client of a call holding leases
        # (released if its caller is cancelled and the call allowed it).
        self._pending: list[_Pending] = []
        self._pending_since = 0.0
        self._senders = 0
        self._armed = False
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self._server_checked = False
        self._unsupported: str | None = None

    # -- the store interface ----------------------------------------------------------------

    async def evaluate(
        self,
        checks: Sequence[Check],
        *,
        client: str | None = None,
        bans: BanRule | None = None,
        shape: object | None = None,
    ) -> Verdict:
        """Decide and count one request's checks atomically (rules in
        :mod:`bastion.ratelimit.core`); one ``EVALSHA``. Under a ``shape`` the command's
        prefix is found without reading the checks."""
        if self._cluster and client is None and checks:
            # Without a client the first bucket's key is the tag: all keys share one slot.
            client = checks[0].key
        command = self._evaluate_command(checks, client, bans, shape)
        leased = None
        for check in checks:
            if check.lease and check.rule.algorithm == "concurrency":
                leased = (checks, client)
                break
        if self._batch:
            reply = await self._submit(command, leased)
        else:
            reply = await self._call(command, leased)
        verdict = self._verdict(checks, reply)
        if self._cluster and verdict.allowed:
            for check in checks:
                if check.rule.algorithm == "concurrency":
                    self._remember(check, self._bucket(check, client))
        return verdict

    async def release(self, checks: Sequence[Check]) -> None:
        """Give back the slots of ``concurrency`` checks an allowed request held: the leases
        named by each check's token, or without one the bucket's oldest leases (as the memory
        store does)."""
        command = self._release_command(checks, None, forget=True)
        if command is not None:
            await (self._submit(command) if self._batch else self._call(command))

    async def active_bans(self) -> list[BanRecord]:
        """Clients banned now, by the server's clock: the ban index (pruned of ended bans as it
        is read), then each ban record for its offence number."""
        command = self._script_command([self._prefix + b"bans"], [b"b"])
        reply = await self._call(command)
        now = reply[0]
        clients = [reply[at] for at in range(1, len(reply), 2)]
        if not clients:
            return []
        keys = [b"%sban:{%s}" % (self._prefix, client) for client in clients]
        keys += [b"%sblock:{%s}" % (self._prefix, client) for client in clients]
        try:
            async with asyncio.timeout(self._timeout * 4):
                values = await self._connector.client.mget(keys)
        except (RedisError, OSError, TimeoutError) as exc:
            raise RateLimitStoreError(f"redis: {describe(exc)}") from exc
        records: list[BanRecord] = []
        marks = values[len(clients) :]
        for client, value, mark in zip(clients, values[: len(clients)], marks, strict=True):
            if value is None:
                continue  # lifted since the index was read
            until, level, *source = value.split()
            if float(until) > now:
                name = client.decode(errors="replace")
                block = source == [INSPECT.encode()] or (
                    mark is not None and float(mark) == float(until)
                )
                kind = INSPECT if block else RATELIMIT
                records.append(BanRecord(name, float(until) / _US, int(level), kind))
        return records

    async def lift(self, client: str) -> bool:
        """End ``client``'s ban or strike block and forget its refusals, strikes and offence
        number; False when it had none in force."""
        keys = [
            *self._ban_keys(client),
            self._prefix + b"bans",
            self._strike_key(client),
            self._mark_key(client),
        ]
        command = self._script_command(keys, [b"l", client.encode()])
        reply = await self._call(command)
        return bool(reply)

    async def strike(
        self, clients: Sequence[str], *, threshold: int, window: float, duration: float
    ) -> list[str]:
        """Count one inspection strike against each client (one ``EVALSHA``); a client
        reaching ``threshold`` strikes within ``window`` seconds is blocked for ``duration``
        in its penalty record, which the gate's evaluation checks. The clients it blocked."""
        keys: list[bytes] = []
        for client in clients:
            keys += (self._strike_key(client), self._ban_keys(client)[0], self._mark_key(client))
        keys.append(self._prefix + b"bans")
        args = [b"s", b"%d" % threshold, _us(window), _us(duration)]
        args += (client.encode() for client in clients)
        command = self._script_command(keys, args)
        reply = await (self._submit(command) if self._batch else self._call(command))
        return [name.decode(errors="replace") for name in reply]

    async def penalty(self, client: str) -> tuple[float, str]:
        """Seconds left of ``client``'s ban or strike block (0.0: none) and what started it,
        by the server's clock (one ``EVALSHA``)."""
        keys = [self._ban_keys(client)[0], self._mark_key(client)]
        command = self._script_command(keys, [b"p"])
        left, source = await (self._submit(command) if self._batch else self._call(command))
        return left / _US, _SOURCES[source]

    async def check_server(self) -> None:
        """Fail with :class:`~bastion.ratelimit.core.RateLimitStoreError` when the server is a
        Redis Cluster (unsupported) or cannot be reached: for start-up, so a misconfiguration
        is reported once and clearly instead of by every request."""
        connection = self._connection()
        try:
            async with asyncio.timeout(self._timeout * 4):
                await self._check_server(connection)
        except (RedisError, OSError, TimeoutError) as exc:
            await self._drop(connection)
            raise RateLimitStoreError(f"redis: {describe(exc)}") from exc
        except BaseException:
            await self._drop(connection)
            raise
        self._reuse(connection)

    async def close(self) -> None:
        """Fail the calls still queued, stop the senders and close the store's connections (the
        connector's client is the caller's to close)."""
        self._closed = True
        pending, self._pending = self._pending, []
        for _, waiter, _ in pending:
            if not waiter.done():
                waiter.set_exception(RateLimitStoreError("the rate-limit store is closed"))
        while self._tasks:
            tasks = list(self._tasks)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        idle, self._idle = self._idle, []
        for connection in idle:
            with contextlib.suppress(RedisError, OSError):
                await connection.disconnect()

    # -- encoding ---------------------------------------------------------------------------

    def _bucket(self, check: Check, client: str | None) -> bytes:
        if self._cluster and client is not None:
            return b"%s{%s}%s" % (self._prefix, client.encode(), check.key.encode())
        return self._prefix + check.key.encode()

    def _ban_keys(self, client: str) -> list[bytes]:
        name = client.encode()
        return [
            b"%sban:{%s}" % (self._prefix, name),
            b"%srefusals:{%s}" % (self._prefix, name),
        ]

    def _mark_key(self, client: str) -> bytes:
        return b"%sblock:{%s}" % (self._prefix, client.encode())

    def _strike_key(self, client: str) -> bytes:
        return b"%sstrikes:{%s}" % (self._prefix, client.encode())

    def _check_args(self, check: Check) -> bytes:
        """The seven ARGV values of ``check``; the first six encoded once per rule, cost and
        mode."""
        rule = check.rule
        cached = self._encoded.get(id(rule))
        if (
            cached is not None
            and cached[0] is rule
            and cached[1] == check.cost
            and cached[2] == check.enforce
        ):
            encoded = cached[3]
        else:
            encoded = b"".join(
                _bulk(part)
                for part in (
                    _CODES[rule.algorithm],
                    b"%d" % rule.limit,
                    _us(rule.period),
                    b"%d" % rule.burst,
                    b"%d" % check.cost,
                    b"1" if check.enforce else b"0",
                )
            )
            # A quota's rule is made per request (its period is the time left), so caching it
            # would only churn the cache.
            if rule.algorithm != "quota":
                if len(self._encoded) >= _MAX_CACHED:
                    self._encoded.clear()
                self._encoded[id(rule)] = (rule, check.cost, check.enforce, encoded)
        if rule.algorithm == "quota":
            if check.window is None:
                raise ValueError(f"policy {rule.policy!r}: a quota check needs Check.window")
            return encoded + _bulk(b"%d" % check.window)
        if check.lease and rule.algorithm == "concurrency":
            return encoded + _bulk(check.lease.encode())
        return encoded + _EMPTY

    def _bans_args(self, bans: BanRule) -> tuple[int, bytes]:
        cached = self._ban_args.get(id(bans))
        if cached is None or cached[0] is not bans:
            parts = [
                b"%d" % bans.threshold,
                _us(bans.window),
                _us(bans.reset_after),
                *(_us(duration) for duration in bans.durations),
            ]
            if len(self._ban_args) >= _MAX_CACHED:
                self._ban_args.clear()
            encoded = b"".join(_bulk(part) for part in parts)
            cached = self._ban_args[id(bans)] = (bans, len(parts), encoded)
        return cached[1], cached[2]

    def _evaluate_command(
        self,
        checks: Sequence[Check],
        client: str | None,
        bans: BanRule | None,
        plan: object | None = None,
    ) -> bytes:
        # Hot path: a request of a known client and shape is its cached prefix and a new call
        # token. The key holds ids of rules and bans, or of the static ``plan`` that stands for
        # the checks and client (one look-up, no key built from the checks); the entry keeps
        # those objects alive, so an id in a live entry's key is always the same object.
        key: tuple[Any, ...] | None
        if plan is not None:
            key = (id(plan), id(bans))
            cached = self._prefixes.get(key)
            if cached is not None:
                return self._with_token(cached[0])
            if any(_per_request(check) for check in checks):
                key = None
        else:
            key = (client, id(bans))
            for check in checks:
                if _per_request(check):
                    key = None
                    break
                key += (check.key, id(check.rule), check.cost, check.enforce)
            cached = self._prefixes.get(key) if key is not None else None
            if cached is not None:
                return self._with_token(cached[0])
        prefix = self._command_prefix(checks, client, bans)
        if key is not None:
            if len(self._prefixes) >= _MAX_CACHED:
                self._prefixes.clear()
            self._prefixes[key] = (prefix, (plan, bans, *(check.rule for check in checks)))
        return self._with_token(prefix)

    def _with_token(self, prefix: bytes) -> bytes:
        """The command of ``prefix`` ended with a new call token."""
        token = b"%s%x" % (self._token, next(self._sequence))
        return b"%b$%d\r\n%b\r\n" % (prefix, len(token), token)

    def _command_prefix(
        self, checks: Sequence[Check], client: str | None, bans: BanRule | None
    ) -> bytes:
        """The ``EVALSHA`` command of ``checks`` up to its last argument, the call token."""
        cache = self._parts
        if len(cache) >= _MAX_CACHED:
            cache.clear()
        tag = client if self._cluster else None
        parts = [b"", b"", b""]
        for check in checks:
            name = (tag, check.key)
            part = cache.get(name)
            if part is None:
                part = cache[name] = _bulk(self._bucket(check, tag))
            parts.append(part)
        nkeys = nargs = len(checks)
        if bans is not None and client is not None:
            part = cache.get(client)
            if part is None:
                keys = [*self._ban_keys(client), self._prefix + b"bans", self._mark_key(client)]
                part = cache[client] = b"".join(_bulk(key) for key in keys)
            parts.append(part)
            nkeys += 4
            count, encoded_bans = self._bans_args(bans)
            # "e", n, the checks', the client, the ban rule's, the call token.
            nargs = 4 + 7 * nargs + count
            encoded_bans = _bulk(client.encode()) + encoded_bans
        else:
            encoded_bans = b""
            nargs = 3 + 7 * nargs
        parts.append(b"$1\r\ne\r\n")
        parts.append(_COUNTS[len(checks)] if len(checks) < 16 else _bulk(b"%d" % len(checks)))
        for check in checks:
            parts.append(self._check_args(check))
        parts.append(encoded_bans)
        parts[0] = b"*%d\r\n$7\r\nEVALSHA\r\n" % (3 + nkeys + nargs)
        parts[1] = self._sha_part
        parts[2] = _bulk(b"%d" % nkeys)
        return b"".join(parts)

    def _release_command(
        self, checks: Sequence[Check], client: str | None, *, forget: bool
    ) -> bytes | None:
        """The release of ``checks``' concurrency slots; None when there is none. ``forget``:
        a release by the caller (cluster layout: the slot's key is looked up, and forgotten);
        else one by the store for a cancelled caller (the key is derived from ``client``)."""
        keys: list[bytes] = []
        args: list[bytes] = [b"r"]
        for check in checks:
            if check.rule.algorithm != "concurrency":
                continue
            if not forget and not check.lease:
                continue  # anonymous slots: a release would free the oldest, maybe not these
            key = self._bucket(check, client)
            if self._cluster and forget:
                held = self._held.pop(id(check), None)
                if held is None or held[0] is not check:
                    # Unknown slot (granted by another process): it lapses after its period.
                    continue
                key = held[1]
            keys.append(key)
            args.append(b"%d" % check.cost)
            args.append(check.lease.encode())
        if not keys:
            return None
        return self._script_command(keys, args)

    def _script_command(self, keys: list[bytes], args: list[bytes]) -> bytes:
        return _command(b"EVALSHA", self.sha.encode(), b"%d" % len(keys), *keys, *args)

    def _remember(self, check: Check, key: bytes) -> None:
        held = self._held
        if len(held) >= _MAX_CACHED:
            # Releases that never came (a request that failed before releasing): forget the
            # oldest; their slots lapse after the policy's period.
            del held[next(iter(held))]
        held[id(check)] = (check, key)

    @staticmethod
    def _verdict(checks: Sequence[Check], reply: list[int]) -> Verdict:
        if reply[2]:
            return _tuple_new(
                Verdict, (False, (), reply[2] / _US, 0.0, reply[4], _SOURCES[reply[5]])
            )
        if len(checks) == 1:
            # Most requests: no list, no loop.
            decisions: tuple[Decision, ...] = (
                _tuple_new(
                    Decision,
                    (reply[6] == 1, checks[0].rule.limit, reply[7], reply[8] / _US, reply[9] / _US),
                ),
            )
        else:
            built = []
            at = 6
            for check in checks:
                built.append(
                    _tuple_new(
                        Decision,
                        (
                            reply[at] == 1,
                            check.rule.limit,
                            reply[at + 1],
                            reply[at + 2] / _US,
                            reply[at + 3] / _US,
                        ),
                    )
                )
                at += 4
            decisions = tuple(built)
        return _tuple_new(
            Verdict, (reply[1] == 1, decisions, 0.0, reply[3] / _US, reply[4], RATELIMIT)
        )

    # -- cancelled callers ------------------------------------------------------------------

    def _cancelled(self, reply: Any, leased: _Leased | None) -> None:
        """The caller of a call that holds leases was cancelled and ``reply`` is its outcome
        (None: unknown): release its leases in the background unless the call refused them.
        Releasing by token is safe even when the call never ran: it frees only its own."""
        if leased is None or self._closed:
            return
        if isinstance(reply, list) and (reply[1] != 1 or reply[2]):
            return  # refused or banned: nothing was granted
        checks, client = leased
        command = self._release_command(checks, client, forget=False)
        if command is None:
            return
        task = asyncio.get_running_loop().create_task(self._release_quietly(command))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _release_quietly(self, command: bytes) -> None:
        # Nobody waits for it: a failure leaves the slots to lapse after their period.
        with contextlib.suppress(RateLimitStoreError):
            await self._call(command)

    # -- transport --------------------------------------------------------------------------
    #
    # Commands are written as RESP bytes on connections made from the connector's pool settings
    # and a pipeline's replies are taken from its hiredis reader in one pass (_read_replies).
    # CPU time of the whole process per evaluate
    # (one GCRA check with bans, loopback Redis 7.0, 2-core host, 20,000 calls, ranges over
    # runs):
    #   this transport, batched, 100 concurrent callers       11-13 µs
    #   this transport, unbatched, 100 concurrent callers     36-48 µs
    #   redis-py Pipeline(transaction=False), 100 per execute 22-27 µs
    #   redis-py Redis.evalsha, 100 concurrent callers        63-77 µs
    # One caller at a time costs 40-60 µs either way (a loop iteration and a socket wait per
    # call dominate; batched pays one task more). The pipeline machinery (command stack, option
    # dicts, response callbacks) and the pool's per-call checkout (lock, health probe,
    # connection-count bookkeeping) make most of the difference, hence the store's own few
    # connections and pre-encoded command pieces.

    def _connection(self) -> AbstractConnection:
        if self._idle:
            return self._idle.pop()
        pool = self._pool
        # socket_timeout off: each exchange is bounded as a whole by asyncio.timeout, which is
        # cheaper than redis-py's per-read timeout (a wait_for task per write).
        kwargs = {**pool.connection_kwargs, "socket_timeout": None}
        connection: AbstractConnection = pool.connection_class(**kwargs)
        return connection

    def _reuse(self, connection: AbstractConnection) -> None:
        if len(self._idle) < _MAX_IDLE or self._closed:
            # Once closed, close() disconnects whatever is returned here.
            self._idle.append(connection)
            return
        task = asyncio.get_running_loop().create_task(self._drop(connection))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _drop(connection: AbstractConnection) -> None:
        with contextlib.suppress(RedisError, OSError):
            await connection.disconnect()

    async def _check_server(self, connection: AbstractConnection) -> None:
        """Refuse a Redis Cluster (module docstring), once per store; a server that does not
        answer ``INFO`` (some managed services disable it) is taken as a single node."""
        await connection.send_packed_command([_INFO_CLUSTER], check_health=False)
        try:
            info = await connection.read_response(timeout=math.inf)
        except ResponseError:
            info = b""
        text = info.decode(errors="replace") if isinstance(info, bytes) else str(info)
        self._server_checked = True
        if "cluster_enabled:1" in text:
            self._unsupported = CLUSTER_UNSUPPORTED
            raise RateLimitStoreError(CLUSTER_UNSUPPORTED)

    async def _exchange(self, connection: AbstractConnection, commands: list[bytes]) -> list[Any]:
        """Send ``commands`` in one write and read their replies; a reply that is a script
        error is returned as the exception. Commands that met ``NOSCRIPT`` are retried once,
        after loading the script, on the same connection."""
        if not self._server_checked:
            await self._check_server(connection)
        self.commands_sent += len(commands)
        await connection.send_packed_command(commands, check_health=False)
        replies = await _read_replies(connection, len(commands))
        missing = [index for index, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
        if missing:
            retried = [commands[index] for index in missing]
            self.commands_sent += len(retried)
            await connection.send_packed_command([self._load, *retried], check_health=False)
            loaded, *again = await _read_replies(connection, 1 + len(retried))
            if isinstance(loaded, Exception):
                raise loaded
            for index, reply in zip(missing, again, strict=True):
                replies[index] = reply
        return replies

    def _refuse_if_unusable(self) -> None:
        if self._closed:
            raise RateLimitStoreError("the rate-limit store is closed")
        if self._unsupported is not None:
            raise RateLimitStoreError(self._unsupported)

    async def _call(self, command: bytes, leased: _Leased | None = None) -> Any:
        """One command alone on a connection of its own, within ``timeout``."""
        self._refuse_if_unusable()
        connection = self._connection()
        try:
            async with asyncio.timeout(self._timeout):
                (reply,) = await self._exchange(connection, [command])
        except RateLimitStoreError:
            await self._drop(connection)
            raise
        except (RedisError, OSError, TimeoutError) as exc:
            await self._drop(connection)
            raise RateLimitStoreError(f"redis: {describe(exc)}") from exc
        except asyncio.CancelledError:
            # Cancelled mid-exchange: the replies still due would answer the next caller, and
            # whether the call ran is unknown.
            await self._drop(connection)
            self._cancelled(None, leased)
            raise
        except BaseException:
            await self._drop(connection)
            raise
        self._reuse(connection)
        if isinstance(reply, Exception):
            raise RateLimitStoreError(f"redis: {describe(reply)}") from reply
        return reply

    async def _submit(self, command: bytes, leased: _Leased | None = None) -> Any:
        """Queue ``command`` for the next pipeline and wait for its reply."""
        self._refuse_if_unusable()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Any] = loop.create_future()
        if not self._pending:
            self._pending_since = loop.time()
        self._pending.append((command, waiter, leased))
        if not self._armed and self._senders < MAX_BATCHES_IN_FLIGHT:
            self._start_sender(loop)
        try:
            return await waiter
        except asyncio.CancelledError:
            # The reply may have come just before the cancellation reached this task; a
            # waiter cancelled earlier is handled when its batch's replies come.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self._cancelled(waiter.result(), leased)
            raise

    def _start_sender(self, loop: asyncio.AbstractEventLoop) -> None:
        self._armed = True
        self._senders += 1
        task = loop.create_task(self._send())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self) -> None:
        """Send what is queued as one pipeline, again until nothing is queued. The task starts
        one loop iteration after the call that armed it, so every call made meanwhile rides
        in the same pipeline."""
        connection = self._connection()
        try:
            while self._pending:
                self._armed = False
                batch, self._pending = self._pending, []
                # The oldest call's deadline bounds the batch: no caller waits longer than
                # ``timeout``, queueing included.
                deadline = self._pending_since + self._timeout
                await self._send_batch(connection, batch, deadline)
        finally:
            self._senders -= 1
            self._armed = False
            self._reuse(connection)
            if self._pending and not self._closed:
                self._start_sender(asyncio.get_running_loop())

    async def _send_batch(
        self, connection: AbstractConnection, batch: list[_Pending], deadline: float
    ) -> None:
        try:
            async with asyncio.timeout_at(deadline):
                replies = await self._exchange(connection, [command for command, _, _ in batch])
        except Exception as exc:
            # Anything, not only Redis errors: every waiter must hear back.
            await self._drop(connection)
            for _, waiter, _ in batch:
                if not waiter.done():
                    if isinstance(exc, RateLimitStoreError):
                        error = RateLimitStoreError(str(exc))
                    else:
                        error = RateLimitStoreError(f"redis: {describe(exc)}")
                    error.__cause__ = exc
                    waiter.set_exception(error)
            return
        except BaseException:
            await self._drop(connection)
            for _, waiter, _ in batch:
                if not waiter.done():
                    waiter.set_exception(RateLimitStoreError("the rate-limit store is closed"))
            raise
        for (_, waiter, leased), reply in zip(batch, replies, strict=True):
            if waiter.done():
                # Its caller was cancelled; the request was counted all the same, so the
                # leases it was granted are given back here.
                if not isinstance(reply, Exception):
                    self._cancelled(reply, leased)
                continue
            if isinstance(reply, Exception):
                error = RateLimitStoreError(f"redis: {describe(reply)}")
                error.__cause__ = reply
                waiter.set_exception(error)
            else:
                waiter.set_result(reply)
