"""``/ws/echo``: a WebSocket echo whose close code the client chooses."""

from __future__ import annotations

from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

__all__ = ["CLOSE_PREFIX", "routes", "sendable_close_code", "ws_echo"]

CLOSE_PREFIX = "close:"
MAX_REASON_BYTES = 123
"""A close frame's payload is at most 125 bytes, two of which are the code (RFC 6455 §5.5)."""


def sendable_close_code(code: int) -> bool:
    """Whether an endpoint may send ``code`` in a close frame (RFC 6455 §7.4)."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


def _parse_close(command: str) -> tuple[int, str] | None:
    code_text, _, reason = command.partition(":")
    if not (code_text.isascii() and code_text.isdigit()):
        return None
    code = int(code_text)
    if not sendable_close_code(code) or len(reason.encode()) > MAX_REASON_BYTES:
        return None
    return code, reason


async def ws_echo(websocket: WebSocket) -> None:
    """Echo text and binary messages; ``close:<code>[:<reason>]`` closes with that code.

    The first subprotocol the client offers is accepted. An unusable close command (a reserved
    code such as 1005, a reason over 123 bytes) is answered with an ``error:`` text message and
    the connection stays open.
    """
    offered: list[str] = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=offered[0] if offered else None)
    while True:
        message = await websocket.receive()
        if message["type"] == "websocket.disconnect":
            return
        text: str | None = message.get("text")
        if text is None:
            await websocket.send_bytes(message.get("bytes") or b"")
        elif text.startswith(CLOSE_PREFIX):
            close = _parse_close(text.removeprefix(CLOSE_PREFIX))
            if close is None:
                await websocket.send_text(f"error: cannot close with {text!r}")
                continue
            await websocket.close(*close)
            return
        else:
            await websocket.send_text(text)


def routes() -> list[WebSocketRoute]:
    """The WebSocket route."""
    return [WebSocketRoute("/ws/echo", ws_echo)]
