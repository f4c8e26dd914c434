"""Request size limits: header block → 431, URL → 414, body → 413.

A declared ``Content-Length`` over the limit is refused before a byte of the body is read. A body
without one (chunked) is counted while it streams: the read that crosses the limit raises
``payload_too_large`` into whoever is reading (the proxy aborts its upstream request), and any
response the app then tries to send is replaced by the 413 problem. Nothing is buffered here.
"""

from __future__ import annotations

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.paths import compile_glob
from bastion.http.problems import BastionError, send_problem
from bastion.http.state import state_of
from bastion.pipeline.config import LimitsConfig
from bastion.pipeline.errors import PROBLEM_KEY

__all__ = ["LimitsStage"]

_HTTP1 = frozenset({"1.0", "1.1"})


def _media_type(headers: list[tuple[bytes, bytes]]) -> str:
    for name, value in headers:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower().decode("latin-1")
    return ""


def _too_large(limit: int) -> BastionError:
    # The unread rest of the body makes the connection unusable for another request.
    return BastionError(
        "payload_too_large", f"The body exceeds {limit} bytes", headers={"Connection": "close"}
    )


def _has_dot_segment(path: str) -> bool:
    return any(segment in (".", "..") for segment in path.split("/"))


class LimitsStage:
    """Refuses requests whose header block, URL or body exceeds the configured sizes."""

    def __init__(self, app: ASGIApp, *, config: LimitsConfig, deps: Deps) -> None:
        self.app = app
        self._max_header = config.max_header_bytes
        self._max_url = config.max_url_bytes
        self._default_body = config.max_body_bytes
        self._rules = tuple(
            (compile_glob(rule.path).match, frozenset(rule.content_types), rule.max_bytes)
            for rule in config.body
        )

    def _body_limit(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> int:
        if self._rules:
            path = scope["path"]
            media = None
            for match, types, max_bytes in self._rules:
                if match(path) is None:
                    continue
                if types:
                    if media is None:
                        media = _media_type(headers)
                    if media not in types:
                        continue
                return max_bytes
        route = state_of(scope).route
        if route is not None and route.config.max_body_bytes is not None:
            return route.config.max_body_bytes
        return self._default_body

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" and scope["type"] != "websocket":
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if "/." in path and _has_dot_segment(path):
            # Routes, exemptions and body rules match the decoded path while the raw one is
            # forwarded: `/public/../admin` (or `%2e%2e`) would match one thing and reach
            # another. Browsers never send dot segments; refusing them removes the ambiguity.
            raise BastionError("bad_request", "The path contains '.' or '..' segments")
        raw_path = scope.get("raw_path") or path.encode("utf-8")
        if len(raw_path) + len(scope.get("query_string", b"")) + 1 > self._max_url:
            raise BastionError("uri_too_long", f"The URL exceeds {self._max_url} bytes")
        headers = scope["headers"]
        size = 0
        declared: int | None = None
        chunked = False
        hosts = 0
        for name, value in headers:
            size += len(name) + len(value) + 4
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    raise BastionError("bad_request", "Invalid Content-Length") from None
            elif name == b"transfer-encoding":
                chunked = True
            elif name == b"host":
                hosts += 1
        if hosts > 1:
            # RFC 9112 §3.2: routing on one Host and forwarding another must never happen.
            raise BastionError("bad_request", "More than one Host header")
        if size > self._max_header:
            raise BastionError(
                "request_header_too_large", f"The header block exceeds {self._max_header} bytes"
            )
        if scope["type"] != "http" or (
            # HTTP/1.x framing: without Content-Length or Transfer-Encoding there is no body.
            declared is None and not chunked and scope.get("http_version", "1.1") in _HTTP1
        ):
            await self.app(scope, receive, send)
            return
        limit = self._body_limit(scope, headers)
        if limit == 0 or (declared is not None and declared <= limit):
            await self.app(scope, receive, send)
            return
        if declared is not None:
            raise _too_large(limit)
        await self._stream_counted(scope, receive, send, limit)

    async def _stream_counted(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        received = 0
        exceeded: BastionError | None = None
        started = False
        answered = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            if exceeded is not None:
                raise exceeded
            message = await receive()
            body = message.get("body")
            if body:
                received += len(body)
                if received > limit:
                    exceeded = _too_large(limit)
                    raise exceeded
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started, answered
            if exceeded is None:
                started = started or message["type"] == "http.response.start"
                await send(message)
                return
            # The body crossed the limit: whatever the app answers is replaced by the 413 (or,
            # when its response had already begun, dropped so the connection is aborted).
            if not answered and not started:
                answered = True
                scope["state"][PROBLEM_KEY] = exceeded.code
                await send_problem(send, exceeded, state_of(scope).request_id)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except BastionError as error:
            if error is not exceeded or not answered:
                raise
        if exceeded is not None and not answered:
            raise exceeded
