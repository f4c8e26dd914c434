"""Response compression: zstd, br and gzip negotiated by ``Accept-Encoding`` q-values.

Negotiation follows RFC 9110 §12.5.3: the highest q wins, ties go to the configured order, ``q=0``
excludes a coding, ``*`` covers unlisted ones; when nothing is acceptable the response is sent
uncompressed (never 406). Untouched: HEAD, requests without ``Accept-Encoding``, statuses below
200, 204, 206 and 304, responses already carrying ``Content-Encoding`` or ``Cache-Control:
no-transform``, responses without a ``Content-Type`` or of an excluded type, and bodies smaller
than ``min_size``. Compressible responses get ``Vary: Accept-Encoding`` whether compressed or not;
compressed ones lose ``Content-Length`` (re-set for single-message bodies) and a strong ``ETag``
becomes weak. A body sent in several messages is compressed incrementally and every chunk is
flushed, so streams arrive as they are produced. Large bodies are compressed in a worker thread.
"""

from __future__ import annotations

import asyncio
import re
import zlib
from collections.abc import Callable, Sequence
from functools import partial

import brotli
import zstandard

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.fields import merge_vary
from bastion.pipeline.config import CompressionConfig

__all__ = ["CompressionStage", "negotiate"]

_QVALUE = re.compile(r"0(?:\.\d{0,3})?|1(?:\.0{0,3})?")
_CACHE_LIMIT = 256
"""Distinct ``Accept-Encoding`` values (and content types) whose decision is remembered."""
_PASS, _VARY, _VARY_MERGE, _STREAM, _HOLD, _HOLD_LONG = range(6)
"""Per-response modes: untouched; only ``Vary`` added (or merged into the response's own);
compressing a stream; start held until the first body message (length unknown, or known to
reach ``min_size``)."""
_VARY_HEADER = (b"vary", b"Accept-Encoding")
_UNTOUCHED_STATUSES = frozenset({204, 206, 304})


def negotiate(accept_encoding: str, algorithms: Sequence[str]) -> str | None:
    """The coding of ``algorithms`` (in preference order) to use, or ``None`` for identity."""
    qualities: dict[str, float] = {}
    for item in accept_encoding.lower().split(","):
        coding, *params = item.split(";")
        coding = coding.strip()
        quality: float | None = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                value = value.strip()
                quality = float(value) if _QVALUE.fullmatch(value) else None
        if coding and quality is not None:
            qualities.setdefault("gzip" if coding == "x-gzip" else coding, quality)
    wildcard = qualities.get("*", 0.0)
    best, best_quality = None, 0.0
    for name in algorithms:
        quality = qualities.get(name, wildcard)
        if quality > best_quality:
            best, best_quality = name, quality
    return best


class _Encoder:
    """One compressed stream: ``chunk`` compresses and flushes (the client can decode everything
    sent so far), ``finish`` compresses and ends the stream."""

    __slots__ = ("_end", "_flush", "_process")

    def __init__(
        self,
        process: Callable[[bytes], bytes],
        flush: Callable[[], bytes],
        end: Callable[[], bytes],
    ) -> None:
        self._process, self._flush, self._end = process, flush, end

    def chunk(self, data: bytes) -> bytes:
        return bytes(self._process(data) + self._flush())

    def finish(self, data: bytes) -> bytes:
        return bytes(self._process(data) + self._end())


def _gzip(level: int, size: int) -> _Encoder:
    z = zlib.compressobj(level, zlib.DEFLATED, 31)
    return _Encoder(z.compress, partial(z.flush, zlib.Z_SYNC_FLUSH), z.flush)


def _brotli(quality: int, size: int) -> _Encoder:
    b = brotli.Compressor(quality=quality)
    return _Encoder(b.process, b.flush, b.finish)


def _zstd(level: int, size: int) -> _Encoder:
    # One compressor per stream: a ZstdCompressor runs a single operation at a time. A known
    # size goes into the frame header, which some one-shot decoders require.
    z = zstandard.ZstdCompressor(level=level).compressobj(size=size)
    return _Encoder(z.compress, partial(z.flush, zstandard.COMPRESSOBJ_FLUSH_BLOCK), z.flush)


_ENCODERS: dict[str, Callable[[int, int], _Encoder]] = {"gzip": _gzip, "br": _brotli, "zstd": _zstd}
"""Encoder of each coding, made from (level, body size or -1 when unknown)."""


class CompressionStage:
    """Compresses responses with the best coding the client accepts."""

    def __init__(self, app: ASGIApp, *, config: CompressionConfig, deps: Deps) -> None:
        self.app = app
        self._algorithms = tuple(config.algorithms)
        self._min_size = config.min_size
        self._thread_min = config.thread_min_size
        self._levels: dict[str, int] = {
            "gzip": config.gzip_level,
            "br": config.brotli_quality,
            "zstd": config.zstd_level,
        }
        # Shared by whole bodies compressed on the event loop (each call runs to completion);
        # streams and worker threads get their own compressor.
        self._zstd = zstandard.ZstdCompressor(level=config.zstd_level)
        self._excluded = frozenset(t for t in config.excluded_types if not t.endswith("/*"))
        self._excluded_kinds = frozenset(t[:-2] for t in config.excluded_types if t.endswith("/*"))
        self._negotiated: dict[bytes, str | None] = {}
        self._types: dict[bytes, bool] = {}

    def _negotiate(self, accept_encoding: bytes) -> str | None:
        """Negotiate and remember the coding for an ``Accept-Encoding`` value."""
        coding = negotiate(accept_encoding.decode("latin-1"), self._algorithms)
        if len(self._negotiated) >= _CACHE_LIMIT:
            self._negotiated.clear()
        self._negotiated[accept_encoding] = coding
        return coding

    def _compressible(self, content_type: bytes) -> bool:
        known = self._types.get(content_type)
        if known is None:
            media = content_type.split(b";", 1)[0].strip().lower().decode("latin-1")
            kind = media.partition("/")[0]
            known = media not in self._excluded and kind not in self._excluded_kinds
            if len(self._types) >= _CACHE_LIMIT:
                self._types.clear()
            self._types[content_type] = known
        return known

    def _plan(self, message: Message, coding: str | None) -> int:
        """What to do with a response, decided from its start message (``_VARY_MERGE`` when
        ``_VARY`` applies and the response already has a ``Vary`` header)."""
        status = message["status"]
        if status < 200 or status in _UNTOUCHED_STATUSES:
            return _PASS
        content_type: bytes | None = None
        length: bytes | None = None
        vary = False
        for name, value in message.get("headers", ()):
            name = name.lower()
            if name == b"content-type":
                content_type = value
            elif name == b"content-length":
                length = value
            elif name == b"vary":
                vary = True
            elif name == b"content-encoding" or (
                name == b"cache-control" and b"no-transform" in value.lower()
            ):
                return _PASS
        if content_type is None or not self._compressible(content_type):
            return _PASS
        if coding is not None:
            if length is None:
                return _HOLD
            if length.isdigit() and int(length) >= self._min_size:
                return _HOLD_LONG
        return _VARY_MERGE if vary else _VARY

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] == "HEAD":
            await self.app(scope, receive, send)
            return
        accept: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"accept-encoding":
                accept = value
                break
        if accept is None:
            await self.app(scope, receive, send)
            return
        coding = self._negotiated.get(accept, "")
        if coding == "":
            coding = self._negotiate(accept)
        mode = _PASS
        start: Message = {}
        encoder: _Encoder | None = None

        async def compressing_send(message: Message) -> None:
            nonlocal mode, start, encoder
            kind = message["type"]
            if kind == "http.response.start":
                mode = self._plan(message, coding)
                if mode >= _HOLD:
                    start = message  # sent with the first body message, once its size is known
                    return
                if mode == _VARY:
                    message["headers"] = [*message.get("headers", ()), _VARY_HEADER]
                elif mode == _VARY_MERGE:
                    message["headers"] = _with_vary(message.get("headers", ()))
            elif mode == _STREAM and kind == "http.response.body":
                assert encoder is not None
                body, more = message.get("body", b""), message.get("more_body", False)
                if more and not body:
                    return
                data = await self._encode(encoder.chunk if more else encoder.finish, body)
                message = {"type": kind, "body": data, "more_body": more}
            elif mode >= _HOLD:
                body, more = message.get("body", b""), message.get("more_body", False)
                if kind != "http.response.body" or (
                    mode == _HOLD and not more and len(body) < self._min_size
                ):
                    start["headers"] = _with_vary(start.get("headers", ()))
                    mode = _PASS
                else:
                    assert coding is not None
                    if more:
                        encoder = _ENCODERS[coding](self._levels[coding], -1)
                        data = await self._encode(encoder.chunk, body) if body else b""
                        mode = _STREAM
                    else:
                        data = await self._whole(coding, body)
                        mode = _PASS
                    length = None if more else len(data)
                    start["headers"] = _encoded_headers(start.get("headers", ()), coding, length)
                    message = {"type": kind, "body": data, "more_body": more}
                await send(start)
                if more and not body:
                    return  # the stream has begun; its first data comes with the next message
            await send(message)

        await self.app(scope, receive, compressing_send)

    async def _encode(self, step: Callable[[bytes], bytes], body: bytes) -> bytes:
        if len(body) >= self._thread_min:
            return await asyncio.to_thread(step, body)
        return step(body)

    async def _whole(self, coding: str, body: bytes) -> bytes:
        """``body`` compressed as one complete stream."""
        if coding == "zstd" and len(body) < self._thread_min:
            return bytes(self._zstd.compress(body))
        return await self._encode(_ENCODERS[coding](self._levels[coding], len(body)).finish, body)


def _with_vary(headers: Sequence[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    result = list(headers)
    merge_vary(result, b"Accept-Encoding")
    return result


def _encoded_headers(
    headers: Sequence[tuple[bytes, bytes]], coding: str, length: int | None
) -> list[tuple[bytes, bytes]]:
    """Response headers for a body encoded with ``coding`` (``length``: its size, if final)."""
    result: list[tuple[bytes, bytes]] = []
    for name, value in headers:
        lowered = name.lower()
        if lowered == b"content-length":
            continue
        if lowered == b"etag" and value.startswith(b'"'):
            value = b"W/" + value
        result.append((name, value))
    result.append((b"content-encoding", coding.encode("ascii")))
    if length is not None:
        result.append((b"content-length", str(length).encode("ascii")))
    merge_vary(result, b"Accept-Encoding")
    return result
