"""The ``cache`` stage (DESIGN.md §1, step 13): RFC 9111 shared caching of the terminal's
responses, inside compression and security headers, so entries hold the terminal's own bytes and
every answer is compressed and given its security headers per request.

``GET`` requests are looked up; a fresh entry is answered without running the terminal, a stale
one within ``stale-while-revalidate`` is answered while one background request revalidates it,
and otherwise the terminal is asked (:mod:`bastion.cache.http.exchange`) by one request per key
at a time: concurrent misses of the same key wait for it (up to ``coalesce_wait``) and are
answered from what it stored when that is fresh for their own request (its ``Vary`` fields, its
directives, and for a request with credentials, no entry that must be revalidated on each use),
else they ask the terminal themselves. ``HEAD`` is answered from a stored ``GET``; a ``HEAD`` or
``Range`` miss goes to the terminal unchanged and stores nothing, as does a ``GET`` whose
meaning may hang on what the key leaves out (a body, a method override, a rewritten URL). A
successful unsafe request (2xx/3xx) invalidates its path and the same-origin paths of its
``Location``/``Content-Location`` in every instance.
"""

from __future__ import annotations

import asyncio
import copy
import dataclasses
import re
import time
from typing import Any
from urllib.parse import unquote, urljoin, urlsplit

from bastion.cache.http.config import HttpCacheConfig
from bastion.cache.http.directives import EMPTY, CacheControl, parse_cache_control
from bastion.cache.http.entry import Entry
from bastion.cache.http.exchange import Exchange, RequestFacts
from bastion.cache.http.keys import KeyBuilder, public_host
from bastion.cache.http.policy import Header
from bastion.cache.http.respond import send_entry
from bastion.cache.http.routes import CacheRoutes
from bastion.cache.http.storage import ResponseEntries, ResponseStore, selects
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.problems import BastionError, register
from bastion.http.state import state_of
from bastion.observe.logging import get_logger

__all__ = ["HttpCacheStage"]

register("not_in_cache", 504, "Not in cache")

_log: Any = get_logger("bastion.cache.http")
_SAFE_UNCACHED = frozenset({"OPTIONS", "TRACE"})
_UNKEYED = (
    b"x-http-method-override",
    b"x-method-override",
    b"x-http-method",
    b"x-original-url",
    b"x-rewrite-url",
    b"transfer-encoding",
)
_BYPASS = frozenset(
    {
        b"if-match",
        b"if-unmodified-since",
        # The key does not hold them, but an upstream may answer by them: never from or into
        # the cache (CGI-style upstreams read "_" as "-").
        *_UNKEYED,
        *(name.replace(b"-", b"_") for name in _UNKEYED),
    }
)
_CONDITIONS = frozenset({b"if-none-match", b"if-modified-since"})
_RESULTS = ("hit", "miss", "stale")
_NO_STORE = CacheControl(no_store=True)
_SLASHES = re.compile(r"/{2,}")
"""Repeated slashes: a path's tag and its invalidation merge them, as most upstreams do."""
_INVALIDATIONS_KEPT = 4096
"""Paths whose invalidations this process tracks (for responses in flight) before starting over."""


class HttpCacheStage:
    """Step 13: the HTTP response cache (module docstring)."""

    def __init__(
        self, app: ASGIApp, *, config: HttpCacheConfig, deps: Deps, store: ResponseStore
    ) -> None:
        self.app = app
        self._entries = ResponseEntries(store, revalidate_window=config.revalidate_window)
        self._routes = CacheRoutes(config)
        self._keys = KeyBuilder(
            include_host=config.key_host,
            ignore_params=config.ignore_query_params,
            sort_query=config.sort_query,
        )
        self._honour = config.honour_request_directives
        self._wait = config.coalesce_wait
        self._x_cache = config.x_cache_header
        self._labels = {label: label.encode("ascii") for label in ("HIT", "MISS", "STALE")}
        self._tag_headers = frozenset(name.encode("latin-1") for name in config.tag_headers)
        self._exchange = Exchange(
            app,
            statuses=frozenset(config.statuses),
            max_size=config.max_object_size,
            tag_headers=self._tag_headers,
            label=self._label,
        )
        self._reserved = deps.prefix + "/"
        self._flights: dict[str, asyncio.Future[Entry | None]] = {}
        # Invalidations per path in this process: a response fetched before one is not stored
        # after it (the epoch moves when the map is cleared, so no invalidation is missed).
        self._invalidations: dict[str, int] = {}
        self._epoch = 0
        self._background: set[asyncio.Task[None]] = set()
        counter = deps.metrics.cache_requests
        self._counters = {result: counter.labels("http", result) for result in _RESULTS}

    def _label(self, label: str) -> bytes | None:
        return self._labels[label] if self._x_cache else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        method = scope["method"]
        if method != "GET" and method != "HEAD":
            if method in _SAFE_UNCACHED or scope["path"].startswith(self._reserved):
                await self.app(scope, receive, send)
            else:
                await self._unsafe(scope, receive, send)
            return
        path: str = scope["path"]
        policy = self._routes.policy(scope, path)
        if not policy.enabled or path.startswith(self._reserved):
            await self.app(scope, receive, send)
            return
        headers: list[Header] = scope["headers"]
        authenticated = has_conditions = False
        cc_values: list[bytes] = []
        range_header = host = None
        for name, value in headers:
            if name == b"authorization" or name == b"cookie":
                authenticated = True
            elif name == b"cache-control":
                cc_values.append(value)
            elif name == b"host":
                host = value
            elif name == b"range":
                range_header = value
            elif name in _CONDITIONS:
                has_conditions = True
            elif name in _BYPASS or (name == b"content-length" and value.strip(b" \t0")):
                await self._forward(scope, receive, send)
                return
        state = state_of(scope)
        if state.forwarded_host:
            host = state.forwarded_host.encode("latin-1")
        principal = state.principal
        key_scope = keyed = ""
        if principal is not None:
            authenticated = True
            if policy.key == "user":
                key_scope, keyed = "u:" + principal.subject, "user"
            elif policy.key == "tenant":
                tenant = principal.extra.get("tenant")
                if tenant:
                    key_scope, keyed = "t:" + str(tenant), "tenant"
        request_cc = parse_cache_control(cc_values) if cc_values else EMPTY
        # Without honour_request_directives, a client's no-store is still kept (its privacy).
        directives = request_cc if self._honour else _NO_STORE if request_cc.no_store else EMPTY
        # The path as the client spelt it, which is what the terminal receives: /a%2Fb and /a/b
        # decode alike but an upstream may answer them differently.
        raw: bytes | None = scope.get("raw_path")
        spelt = raw.split(b"?", 1)[0].decode("latin-1") if raw else path
        primary = self._keys.primary(spelt, scope["query_string"], state.scheme, host, key_scope)
        entry = await self._entries.lookup(primary, scope)
        head = method == "HEAD"
        if entry is not None:
            age = entry["age"] + max(time.time() - entry["received"], 0.0)
            staleness = age - _lifetime(entry, directives)
            if staleness < 0:
                self._counters["hit"].inc()
                await send_entry(
                    send,
                    entry,
                    headers,
                    head=head,
                    age=age,
                    label=self._label("HIT"),
                    range_header=range_header,
                    conditional=has_conditions,
                )
                return
        request = RequestFacts(
            path=_SLASHES.sub("/", path) if "//" in path else path,
            headers=headers,
            cache_control=directives,
            authenticated=authenticated,
            keyed=keyed,
            ttl=policy.ttl,
            default_ttl=policy.default_ttl,
            has_conditions=has_conditions,
        )
        if entry is not None and _serve_stale(entry, staleness, directives):
            self._counters["stale"].inc()
            await send_entry(
                send,
                entry,
                headers,
                head=head,
                age=age,
                label=self._label("STALE"),
                range_header=range_header,
                conditional=has_conditions,
            )
            self._revalidate_later(scope, primary, entry, request)
            return
        if directives.only_if_cached:
            raise BastionError("not_in_cache", "The response is not in the cache")
        self._counters["miss"].inc()
        if head or range_header is not None:
            await self._forward(scope, receive, send)
            return
        flight = self._flights.get(primary)
        if flight is not None:
            shared = await self._await_flight(flight)
            if shared is not None and selects(shared, scope):
                age = shared["age"] + max(time.time() - shared["received"], 0.0)
                if age < _lifetime(shared, directives) and not (
                    # Stored for a request with credentials because every use is revalidated
                    # (RFC 9111 §3.5): never handed to another one without that.
                    authenticated and not keyed and shared["strict"]
                ):
                    label = self._label("HIT")
                    await send_entry(send, shared, headers, head=False, age=age, label=label)
                    return
        await self._fetch(scope, receive, send, primary, request, entry)

    async def _await_flight(self, flight: asyncio.Future[Entry | None]) -> Entry | None:
        """What the request in flight stored, or ``None`` once ``coalesce_wait`` has passed."""
        if self._wait <= 0:
            return None
        try:
            return await asyncio.wait_for(asyncio.shield(flight), self._wait)
        except TimeoutError:
            return None

    async def _fetch(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        primary: str,
        request: RequestFacts,
        stale: Entry | None,
    ) -> None:
        """Ask the terminal as the one request of ``primary`` in flight: the others wait for
        what it stores, or are released as soon as it is known nothing will be."""
        flight: asyncio.Future[Entry | None] | None = None
        if primary not in self._flights:
            flight = asyncio.get_running_loop().create_future()
            self._flights[primary] = flight

        def release(entry: Entry | None = None) -> None:
            if flight is not None and not flight.done():
                if self._flights.get(primary) is flight:
                    del self._flights[primary]
                flight.set_result(entry)

        seen = (self._epoch, self._invalidations.get(request.path, 0))

        async def ready(entry: Entry) -> None:
            if (self._epoch, self._invalidations.get(request.path, 0)) != seen:
                release()  # the path changed while this response was on its way
            elif await self._entries.keep(primary, entry):
                release(entry)
            else:
                release()

        try:
            outcome = await self._exchange.run(
                scope, receive, send, request, stale, unstorable=release, ready=ready
            )
            if outcome.from_cache == "stale":
                self._counters["stale"].inc()
            if outcome.forget and stale is not None:
                # The resource itself no longer gives a storable response: forget the old one.
                await self._entries.forget(primary, stale)
        finally:
            release()

    def _revalidate_later(
        self, scope: Scope, primary: str, entry: Entry, request: RequestFacts
    ) -> None:
        """Revalidate ``entry`` in the background (``stale-while-revalidate``), once per key,
        as a ``GET`` of the request that found it stale, on a copy of its state."""
        if primary in self._flights:
            return
        background = dict(scope)
        background["method"] = "GET"
        background["headers"] = [(n, v) for n, v in scope["headers"] if n != b"range"]
        background["state"] = dict(scope.get("state") or {})
        background["state"]["bastion"] = copy.copy(state_of(scope))
        request = dataclasses.replace(request, headers=background["headers"], has_conditions=False)
        task = asyncio.create_task(self._revalidate(background, primary, request, entry))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _revalidate(
        self, scope: Scope, primary: str, request: RequestFacts, entry: Entry
    ) -> None:
        done = asyncio.Event()

        async def receive() -> Message:
            if not done.is_set():
                done.set()
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.sleep(0)
            return {"type": "http.disconnect"}

        async def discard(message: Message) -> None:
            return None

        try:
            await self._fetch(scope, receive, discard, primary, request, entry)
        except Exception as exc:
            _log.warning("background revalidation failed", path=scope["path"], error=str(exc))

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass a request the cache does not answer to the terminal (tag headers removed)."""

        async def cleaned(message: Message) -> None:
            if message["type"] == "http.response.start":
                message = {
                    **message,
                    "headers": self._exchange.client_headers(
                        list(message.get("headers", ())), "MISS"
                    ),
                }
            await send(message)

        await self.app(scope, receive, cleaned)

    async def _unsafe(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Forward an unsafe request; on success, invalidate what it may have changed."""

        async def watching(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", ()))
                if 200 <= message["status"] < 400:
                    await self._invalidate(scope, headers)
                if self._tag_headers:
                    message = {
                        **message,
                        "headers": [
                            (n, v) for n, v in headers if n.lower() not in self._tag_headers
                        ],
                    }
            await send(message)

        await self.app(scope, receive, watching)

    async def _invalidate(self, scope: Scope, headers: list[Header]) -> None:
        """RFC 9111 §4.4: the request's path, and those of same-origin ``Location`` and
        ``Content-Location``, in every instance (the tiered cache's invalidation)."""
        path: str = scope["path"]
        paths = {_SLASHES.sub("/", path)}
        host = (public_host(scope) or b"").decode("latin-1")
        for name, value in headers:
            if name.lower() in (b"location", b"content-location"):
                try:
                    target = urlsplit(urljoin(path, value.decode("latin-1")))
                except ValueError:
                    continue  # not a URL (an unclosed IPv6 literal): nothing it names
                if not target.netloc or target.netloc.lower() == host.lower():
                    paths.add(_SLASHES.sub("/", unquote(target.path)) or "/")
        if len(self._invalidations) + len(paths) > _INVALIDATIONS_KEPT:
            self._invalidations.clear()
            self._epoch += 1
        for changed in paths:
            self._invalidations[changed] = self._invalidations.get(changed, 0) + 1
        await self._entries.invalidate_paths(paths)


def _lifetime(entry: Entry, directives: CacheControl) -> float:
    """The entry's lifetime as this request accepts it (``no-cache``, ``max-age``,
    ``min-fresh`` of the request shorten it)."""
    lifetime: float = entry["lifetime"]
    if directives is EMPTY:
        return lifetime
    if directives.no_cache:
        return 0.0
    if directives.max_age is not None:
        lifetime = min(lifetime, float(directives.max_age))
    if directives.min_fresh is not None:
        lifetime -= directives.min_fresh
    return lifetime


def _serve_stale(entry: Entry, staleness: float, directives: CacheControl) -> bool:
    if entry["strict"] or directives.no_cache:
        return False
    if directives.max_stale is not None and staleness <= directives.max_stale:
        return True
    window: float = entry["swr"]
    return window > 0 and staleness <= window
