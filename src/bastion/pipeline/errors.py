"""The one place errors become responses.

A :class:`BastionError` raised by any inner stage, the proxy or Bastion's own routes becomes its
RFC 9457 problem response; any other exception becomes a 500 ``internal_error`` without detail,
logged with the request id. Sits just inside the security-headers stage, so error responses carry
the security headers and the request id like any other.
"""

from __future__ import annotations

from typing import Any

from redis.exceptions import RedisError

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.problems import BastionError, send_problem
from bastion.http.state import state_of
from bastion.observe.logging import get_logger
from bastion.store.errors import StoreError

__all__ = ["PROBLEM_KEY", "ErrorStage"]

PROBLEM_KEY = "bastion.problem"
"""``scope["state"]`` key: the code of the problem Bastion answered the request with (set only
on refusals, so it costs nothing otherwise); tracing reads it as the request's decision."""

# RFC 6455 close codes used when a WebSocket handshake fails before acceptance.
_WS_POLICY_VIOLATION = 1008
_WS_INTERNAL_ERROR = 1011


class ErrorStage:
    """Turns exceptions from inner stages into problem responses."""

    def __init__(self, app: ASGIApp, *, deps: Deps) -> None:
        self.app = app
        self._log: Any = get_logger("bastion.errors")
        self._metrics = deps.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "websocket":
            await self._websocket(scope, receive, send)
            return
        if kind != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BastionError as error:
            if started:
                self._log.info("error after response started", code=error.code)
                return
            scope["state"][PROBLEM_KEY] = error.code
            await send_problem(send, error, state_of(scope).request_id)
        except Exception as exc:
            if isinstance(exc, StoreError):
                self._count_store_error(exc)
            self._log.exception("unhandled error", path=scope.get("path"))
            if not started:
                await send_problem(send, BastionError("internal_error"), state_of(scope).request_id)

    def _count_store_error(self, exc: StoreError) -> None:
        """A store failure no capability handled reached the request (a credential or audit
        write against an unavailable database): ``bastion_store_errors_total{op="request"}``.
        Capabilities with a fallback count their own failures under their own ``op``."""
        store = "redis" if isinstance(exc.__cause__, RedisError) else "database"
        self._metrics.store_error(store, "request")

    async def _websocket(self, scope: Scope, receive: Receive, send: Send) -> None:
        accepted = False

        async def tracking_send(message: Message) -> None:
            nonlocal accepted
            if message["type"] in ("websocket.accept", "websocket.http.response.start"):
                accepted = True
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except BastionError as error:
            if not accepted:
                scope["state"][PROBLEM_KEY] = error.code
                await self._refuse(scope, send, error)
        except Exception as exc:
            if isinstance(exc, StoreError):
                self._count_store_error(exc)
            self._log.exception("unhandled websocket error", path=scope.get("path"))
            if not accepted:
                await send({"type": "websocket.close", "code": _WS_INTERNAL_ERROR})

    @staticmethod
    async def _refuse(scope: Scope, send: Send, error: BastionError) -> None:
        """Refuse a handshake: a problem response where the server supports it, else a close."""
        request_id = state_of(scope).request_id
        if "websocket.http.response" in scope.get("extensions", {}):
            await send_problem(_WebSocketDenialSend(send), error, request_id)
            return
        code = _WS_INTERNAL_ERROR if error.status >= 500 else _WS_POLICY_VIOLATION
        await send({"type": "websocket.close", "code": code, "reason": error.code})


class _WebSocketDenialSend:
    """Maps an HTTP response onto the ASGI WebSocket denial-response extension."""

    __slots__ = ("_send",)

    def __init__(self, send: Send) -> None:
        self._send = send

    async def __call__(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.response.start":
            message["type"] = "websocket.http.response.start"
        elif kind == "http.response.body":
            message["type"] = "websocket.http.response.body"
        await self._send(message)
