"""Outermost stage: request id, per-request state, route match, and end-of-request accounting.

The id is taken from the client when it is 1-128 characters of ``[A-Za-z0-9._-]`` (and trusting
it is configured), otherwise generated; it is echoed on every response, bound to every log line
and later audit events. The :class:`RequestState` created here is what every other stage reads.
"""

from __future__ import annotations

import random
import time

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.routes import request_host
from bastion.http.state import RequestState
from bastion.observe.access import RequestObserver
from bastion.observe.logging import REQUEST_ID
from bastion.pipeline.config import RequestIdConfig

__all__ = ["RequestIdStage", "valid_request_id"]

_START_MESSAGES = frozenset(
    {"http.response.start", "websocket.accept", "websocket.http.response.start"}
)
_BODY_HEADERS = frozenset({b"content-length", b"transfer-encoding"})
_ALLOWED = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")


def valid_request_id(value: bytes) -> bool:
    """Whether a client-supplied id is acceptable: 1-128 characters of ``[A-Za-z0-9._-]``."""
    return 0 < len(value) <= 128 and _ALLOWED.issuperset(value)


def _new_id() -> str:
    """32 random hex digits. Request ids must be unique, not secret: the process-wide PRNG
    (seeded from the OS, reseeded in forked children) avoids a system call per request, which
    cost more than any other step of this stage (measured)."""
    return f"{random.getrandbits(128):032x}"


class RequestIdStage:
    """Creates the request state, assigns the request id and records the finished request."""

    def __init__(
        self, app: ASGIApp, *, config: RequestIdConfig, deps: Deps, observer: RequestObserver
    ) -> None:
        self.app = app
        self._header = config.header.lower().encode("latin-1")
        self._trust = config.trust_incoming
        self._routes = deps.routes
        self._needs_host = any(route.host is not None for route in deps.routes)
        self._peers = deps.client_ips
        self._observer = observer
        self._metrics = deps.metrics

    def _scan(self, headers: list[tuple[bytes, bytes]]) -> tuple[str, bool]:
        """The request id to use, and whether the request has a body (one pass over headers)."""
        request_id = None
        has_body = False
        for name, value in headers:
            if name == self._header:
                if request_id is None and self._trust and valid_request_id(value):
                    request_id = value.decode("ascii")
            elif name in _BODY_HEADERS:
                has_body = True
        return request_id or _new_id(), has_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        request_id, has_body = self._scan(headers)
        client = scope.get("client")
        peer, _ = self._peers.peer(client[0] if client else None)
        state = RequestState(request_id, time.perf_counter(), peer, scope.get("scheme", "http"))
        host = request_host(headers) if self._needs_host else None
        state.route = self._routes.match(scope["path"], host)
        scope_state = scope.get("state")
        if scope_state is None:
            scope["state"] = scope_state = {}
        scope_state["bastion"] = state
        id_header = (self._header, request_id.encode("ascii"))
        status = 0
        bytes_in = 0
        bytes_out = 0

        async def counting_receive() -> Message:
            nonlocal bytes_in
            message = await receive()
            body = message.get("body")
            if body:
                bytes_in += len(body)
            return message

        async def send_with_id(message: Message) -> None:
            nonlocal status, bytes_out
            kind = message["type"]
            if kind == "http.response.body":
                body = message.get("body")
                if body:
                    bytes_out += len(body)
            elif kind in _START_MESSAGES:
                status = message.get("status", 101)
                message["headers"] = [*message.get("headers", ()), id_header]
            await send(message)

        self._metrics.begin_request()
        token = REQUEST_ID.set(request_id)
        try:
            await self.app(scope, counting_receive if has_body else receive, send_with_id)
        finally:
            REQUEST_ID.reset(token)
            state.status = status
            self._observer.finish(scope, state, status, bytes_in, bytes_out)
