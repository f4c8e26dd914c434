"""Streaming endpoints: a large body in chunks, a slow trickle, and a streaming echo."""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from bastion.demo.validation import InvalidInput, query_float, query_int

__all__ = ["CHUNK_SIZE", "MAX_CHUNKS", "MAX_INTERVAL", "MAX_LARGE", "BodyEcho", "routes"]

MAX_LARGE = 64 * 1024 * 1024
"""Largest ``/large`` body in bytes (422 above)."""

MAX_CHUNKS = 1000
MAX_INTERVAL = 10.0

_LINE = b"0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ-\n"
TEXT_BLOCK = _LINE * 1024
"""64 KiB of printable lines: the ``/large`` chunk, made once."""
JSON_BLOCK = TEXT_BLOCK.replace(b"\n", b" ")
CHUNK_SIZE = len(TEXT_BLOCK)

JSON_PREFIX = b'{"data":"'
JSON_SUFFIX = b'"}'
JSON_OVERHEAD = len(JSON_PREFIX) + len(JSON_SUFFIX)


async def _filler(block: bytes, size: int) -> AsyncIterator[bytes]:
    while size > 0:
        yield block if size >= len(block) else block[:size]
        size -= len(block)


async def _json_document(size: int) -> AsyncIterator[bytes]:
    yield JSON_PREFIX
    async for chunk in _filler(JSON_BLOCK, size - JSON_OVERHEAD):
        yield chunk
    yield JSON_SUFFIX


async def large(request: Request) -> Response:
    """``GET /large?size=1048576&format=text|json``: exactly ``size`` bytes, in 64 KiB chunks.

    ``json`` is one object ``{"data": "…"}`` padded to the size (at least 11 bytes).
    """
    size = query_int(request, "size", default=1024 * 1024, minimum=0, maximum=MAX_LARGE)
    kind = request.query_params.get("format", "text")
    headers = {"content-length": str(size)}
    if kind == "text":
        return StreamingResponse(
            _filler(TEXT_BLOCK, size), headers=headers, media_type="text/plain"
        )
    if kind == "json" and size >= JSON_OVERHEAD:
        return StreamingResponse(
            _json_document(size), headers=headers, media_type="application/json"
        )
    if kind == "json":
        msg, error = f"A JSON body needs at least {JSON_OVERHEAD} bytes", "out_of_range"
        raise InvalidInput([{"loc": ["query", "size"], "msg": msg, "type": error}])
    msg = "Format should be 'text' or 'json'"
    raise InvalidInput([{"loc": ["query", "format"], "msg": msg, "type": "enum"}])


async def _ticks(chunks: int, interval: float) -> AsyncIterator[bytes]:
    for index in range(1, chunks + 1):
        if index > 1:
            await anyio.sleep(interval)
        yield f"chunk {index}/{chunks}\n".encode()


async def stream(request: Request) -> Response:
    """``GET /stream?chunks=5&interval=0.1``: ``chunks`` lines, ``interval`` seconds apart."""
    chunks = query_int(request, "chunks", default=5, minimum=1, maximum=MAX_CHUNKS)
    interval = query_float(request, "interval", default=0.1, minimum=0.0, maximum=MAX_INTERVAL)
    return StreamingResponse(
        _ticks(chunks, interval), headers={"cache-control": "no-store"}, media_type="text/plain"
    )


class BodyEcho:
    """``POST /echo``: the request body streamed back chunk by chunk as it arrives.

    Same ``Content-Type`` as the request (``application/octet-stream`` when it has none); no
    ``Content-Length``, so the answer is chunked. Raw ASGI: nothing buffers the body.
    """

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        content_type = b"application/octet-stream"
        for key, value in scope["headers"]:
            if key == b"content-type":
                content_type = value
        started = False
        more_body = True
        while more_body:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            body: bytes = message.get("body", b"")
            more_body = message.get("more_body", False)
            if not started:
                headers = [(b"content-type", content_type)]
                await send({"type": "http.response.start", "status": 200, "headers": headers})
                started = True
            if body or not more_body:
                await send({"type": "http.response.body", "body": body, "more_body": more_body})


def routes() -> list[Route]:
    """Routes for ``/large``, ``/stream`` and ``/echo``."""
    return [
        Route("/large", large),
        Route("/stream", stream),
        Route("/echo", BodyEcho(), methods=["POST"]),
    ]
