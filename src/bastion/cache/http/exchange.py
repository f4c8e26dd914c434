"""One trip to the terminal on behalf of the cache: a miss, or the revalidation of a stale entry.

The terminal's response streams to the client as it arrives while its body is copied, up to
``max_object_size`` (past it the copy is dropped and the response only streams through). While
the response may be stored, the client's copy is sent by a task of its own, so a client that
reads slowly never holds the terminal: the entry is published (``ready``) as soon as the
terminal's body is complete, and only then does the exchange wait for the client to take it. The
client's own preconditions (``If-None-Match``, ``If-Modified-Since``) are kept from the terminal,
so the cache gets a whole response it can store, and are evaluated here: the client still gets
its 304. A stale entry with a validator is revalidated by a conditional request; the terminal's
304 freshens it (RFC 9111 §4.3.4) and the client is answered from it. A 5xx or a failure of the
terminal within ``stale-if-error`` is answered with the stale entry instead.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from bastion.cache.http.directives import CacheControl
from bastion.cache.http.entry import (
    Entry,
    build_entry,
    entry_headers,
    not_modified_headers,
    refreshed_entry,
)
from bastion.cache.http.keys import path_tag, upstream_tag, vary_source
from bastion.cache.http.policy import (
    Conditional,
    Freshness,
    Header,
    evaluate_conditional,
    freshen_headers,
    freshness,
    initial_age,
    read_response,
    refusal,
    stale_allowed,
    vary_values,
)
from bastion.cache.http.respond import send_entry
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send

__all__ = ["Exchange", "Outcome", "RequestFacts"]

_CLIENT_CONDITIONS = frozenset({b"if-none-match", b"if-modified-since"})
_PASS, _STORE, _FRESHENED, _STALE = range(4)
_RESPONSE_REFUSALS = frozenset({"no-store", "private", "set-cookie", "vary-star", "status"})
"""Refusals the response itself states: the resource no longer gives a storable response, so a
stored one is forgotten. Refusals for the request's sake (its ``no-store``, its credentials), a
partial response or a body over the size limit say nothing about what others may be served."""


@dataclass(slots=True)
class RequestFacts:
    """What the stage learnt about a cacheable ``GET`` before asking the terminal."""

    path: str
    headers: list[Header]
    cache_control: CacheControl
    authenticated: bool
    keyed: str
    """``"user"``/``"tenant"``: the key includes the principal's subject/tenant."""
    ttl: float | None
    default_ttl: float
    has_conditions: bool


@dataclass(slots=True)
class Outcome:
    """What the exchange left in the cache: the entry stored (``None``: nothing), whether the
    client was answered from a stored entry (a freshened or stale one), and whether the
    response itself forbids storing (``forget``: a stored one is no longer to be served)."""

    entry: Entry | None
    from_cache: str | None = None
    forget: bool = False


def _forbids(reason: str | None, status: int) -> bool:
    """Whether a refusal is the response's own word (a 5xx is a failure, not a new answer)."""
    return reason in _RESPONSE_REFUSALS and status < 500


def _observed(task: asyncio.Task[None]) -> None:
    """Marks a relay's failure as seen: it is raised by ``drain``, or the exchange has failed
    already and the client's copy no longer matters."""
    if not task.cancelled():
        task.exception()


class _Relay:
    """Sends the client's copy of a response being stored from a task of its own (at most
    ``max_object_size`` of body is queued), so the terminal never waits for the client."""

    __slots__ = ("_queue", "_send", "_task")

    def __init__(self, send: Send) -> None:
        self._send = send
        self._queue: asyncio.Queue[Message | None] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def push(self, message: Message) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())
            self._task.add_done_callback(_observed)
        self._queue.put_nowait(message)

    async def _run(self) -> None:
        while (message := await self._queue.get()) is not None:
            await self._send(message)

    async def drain(self) -> None:
        """Wait until the client has taken everything pushed (a failure of its ``send`` is
        raised here)."""
        task, self._task = self._task, None
        if task is not None:
            self._queue.put_nowait(None)
            await task

    def cancel(self) -> None:
        if self._task is not None:
            self._task.cancel()
            self._task = None


def _stale_error_allowed(entry: Entry, request_cc: CacheControl) -> bool:
    staleness = time.time() - entry["received"] + entry["age"] - entry["lifetime"]
    window = Freshness(
        lifetime=entry["lifetime"],
        stale_while_revalidate=entry["swr"],
        stale_if_error=entry["sie"],
        strict=entry["strict"],
        explicit=True,
    )
    return stale_allowed(window, staleness, request_cc, error=True)


class Exchange:
    """The terminal exchange of one cacheable ``GET`` (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        statuses: frozenset[int],
        max_size: int,
        tag_headers: frozenset[bytes],
        label: Callable[[str], bytes | None],
    ) -> None:
        self.app = app
        self._statuses = statuses
        self._max = max_size
        self._tag_headers = tag_headers
        self._label = label

    def _tags(self, path: str, headers: list[Header]) -> list[str]:
        tags = [path_tag(path)]
        for name, value in headers:
            if name.lower() in self._tag_headers:
                text = value.decode("latin-1").replace(",", " ")
                tags.extend(upstream_tag(tag) for tag in text.split() if tag)
        return tags

    def client_headers(self, headers: list[Header], label: str) -> list[Header]:
        """The terminal's headers as the client gets them: without tag headers, with
        ``X-Cache`` when configured."""
        if self._tag_headers:
            headers = [(n, v) for n, v in headers if n.lower() not in self._tag_headers]
        mark = self._label(label)
        return [*headers, (b"x-cache", mark)] if mark is not None else headers

    async def run(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        request: RequestFacts,
        stale: Entry | None,
        *,
        unstorable: Callable[[], None] = lambda: None,
        ready: Callable[[Entry], Awaitable[None]] | None = None,
    ) -> Outcome:
        """Ask the terminal, answer the client, and say what was stored; ``unstorable`` is
        called as soon as it is known that nothing will be (a private response, a body over
        the size limit), and ``ready`` with the entry to store as soon as it is complete,
        before the client has read its copy, so requests waiting for this one can go on."""
        headers = [(n, v) for n, v in request.headers if n not in _CLIENT_CONDITIONS]
        validating = stale is not None and (stale["etag"] or stale["modified_raw"])
        if validating:
            assert stale is not None
            if stale["etag"]:
                headers.append((b"if-none-match", stale["etag"]))
            if stale["modified_raw"]:
                headers.append((b"if-modified-since", stale["modified_raw"]))
        upstream = dict(scope)
        upstream["headers"] = headers
        request_time = time.time()
        mode = _PASS
        started = False
        client_body = True
        chunks: list[bytes] = []
        size = 0
        status = 0
        response_headers: list[Header] = []
        complete = forget = False
        relay = _Relay(send)

        async def capture(message: Message) -> None:
            nonlocal mode, started, client_body, size, status, response_headers, complete, chunks
            nonlocal forget
            if message["type"] == "http.response.start":
                status = message["status"]
                response_headers = list(message.get("headers", ()))
                if validating and status == 304:
                    mode = _FRESHENED
                    return
                if (
                    stale is not None
                    and status >= 500
                    and _stale_error_allowed(stale, request.cache_control)
                ):
                    mode = _STALE
                    return
                facts = read_response(status, response_headers)
                reason = refusal(
                    facts,
                    statuses=self._statuses,
                    request_cc=request.cache_control,
                    authenticated=request.authenticated,
                    keyed=request.keyed,
                )
                length = next(
                    (v for n, v in response_headers if n.lower() == b"content-length"), None
                )
                if length is not None and (not length.isdigit() or int(length) > self._max):
                    reason = "size"
                mode = _STORE if reason is None else _PASS
                if reason is not None:
                    forget = _forbids(reason, status)
                    unstorable()
                out = self.client_headers(response_headers, "MISS")
                if request.has_conditions and status == 200:
                    condition = evaluate_conditional(
                        request.headers, etag=facts.etag, last_modified=facts.last_modified
                    )
                    if condition == Conditional.NOT_MODIFIED:
                        client_body = False
                        kept = [(n.lower(), v) for n, v in out]
                        cookies = [(n, v) for n, v in kept if n == b"set-cookie"]
                        out = [*not_modified_headers({"headers": kept}), *cookies]
                        mark = self._label("MISS")
                        if mark is not None:
                            out.append((b"x-cache", mark))
                        await send({"type": "http.response.start", "status": 304, "headers": out})
                        started = True
                        return
                await send({**message, "headers": out})
                started = True
                return
            if mode in (_FRESHENED, _STALE):
                return
            body = message.get("body", b"")
            more = message.get("more_body", False)
            if mode == _STORE:
                size += len(body)
                if size > self._max:
                    mode, chunks = _PASS, []
                    unstorable()
                    # Streaming through from here: the client sets the pace again.
                    await relay.drain()
                else:
                    if body:
                        chunks.append(body)
                    if not more:
                        complete = True
                    if client_body:
                        relay.push(message)
                    elif not more:
                        relay.push({"type": "http.response.body", "body": b""})
                    return
            if client_body:
                await send(message)
            elif not more:
                await send({"type": "http.response.body", "body": b""})

        try:
            try:
                await self.app(upstream, receive, capture)
            except Exception:
                if started or stale is None:
                    raise
                if not _stale_error_allowed(stale, request.cache_control):
                    raise
                mode = _STALE
            response_time = time.time()
            outcome = await self._conclude(
                scope,
                send,
                request,
                stale,
                mode=mode,
                status=status,
                response_headers=response_headers,
                chunks=chunks if complete else None,
                times=(request_time, response_time),
                ready=ready,
            )
            await relay.drain()
        finally:
            relay.cancel()
        if forget:
            outcome.forget = True
        return outcome

    async def _conclude(
        self,
        scope: Scope,
        send: Send,
        request: RequestFacts,
        stale: Entry | None,
        *,
        mode: int,
        status: int,
        response_headers: list[Header],
        chunks: list[bytes] | None,
        times: tuple[float, float],
        ready: Callable[[Entry], Awaitable[None]] | None,
    ) -> Outcome:
        """What the terminal's answer leaves: a stale or freshened entry answered, or a
        complete response (``chunks``) published to ``ready``."""
        request_time, response_time = times
        if mode == _STALE:
            assert stale is not None
            await self._answer(send, stale, request, "STALE")
            return Outcome(None, "stale")
        if mode == _FRESHENED:
            assert stale is not None
            facts = read_response(304, response_headers)
            merged = freshen_headers(
                stale["headers"], entry_headers(response_headers, facts, self._tag_headers)
            )
            entry = refreshed_entry(
                stale,
                merged,
                received=response_time,
                age=initial_age(facts, request_time=request_time, response_time=response_time),
                default_ttl=request.default_ttl,
                ttl_override=request.ttl,
            )
            merged_facts = read_response(entry["status"], merged)
            if list(merged_facts.vary) != entry["vary"]:
                # The 304 names other varied fields: the entry is this request's variant now.
                entry["vary"] = list(merged_facts.vary)
                entry["varies"] = vary_values(vary_source(scope), merged_facts.vary)
            refused = refusal(
                merged_facts,
                statuses=self._statuses,
                request_cc=request.cache_control,
                authenticated=request.authenticated,
                keyed=request.keyed,
            )
            if refused is None and ready is not None:
                await ready(entry)
            await self._answer(send, entry, request, "HIT")
            if refused is not None:
                # The 304 made the response unstorable (a Set-Cookie meant for this client, a
                # no-store): this client has its answer, the stored one is forgotten when the
                # response itself says so.
                return Outcome(None, forget=_forbids(refused, 200))
            return Outcome(entry, "revalidated")
        if mode != _STORE or chunks is None:
            return Outcome(None)
        facts = read_response(status, response_headers)
        fresh = freshness(
            facts,
            response_time=response_time,
            default_ttl=request.default_ttl,
            ttl_override=request.ttl,
        )
        entry = build_entry(
            status=status,
            headers=entry_headers(response_headers, facts, self._tag_headers),
            body=b"".join(chunks),
            facts=facts,
            fresh=fresh,
            received=response_time,
            age=initial_age(facts, request_time=request_time, response_time=response_time),
            vary_values=vary_values(vary_source(scope), facts.vary) if facts.vary else [],
            tags=self._tags(request.path, response_headers),
        )
        if ready is not None:
            await ready(entry)
        return Outcome(entry)

    async def _answer(self, send: Send, entry: Entry, request: RequestFacts, label: str) -> None:
        age = entry["age"] + max(time.time() - entry["received"], 0.0)
        await send_entry(
            send,
            entry,
            request.headers,
            head=False,
            age=age,
            label=self._label(label),
            conditional=request.has_conditions,
        )
