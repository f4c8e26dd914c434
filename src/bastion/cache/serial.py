"""How cached values become bytes and back: orjson with a type tag, never pickle.

What round-trips exactly (the same value comes back from L1 and from Redis):

- ``None``, ``bool``, ``int`` (64-bit signed or unsigned), ``float`` (finite), ``str``;
- ``bytes`` (``bytearray`` and ``memoryview`` come back as ``bytes``);
- ``list``, ``tuple`` and ``dict`` with ``str`` keys, nested in any way, holding any of the above.

Anything else (sets, dataclasses, ``datetime``, non-``str`` keys, NaN and infinities) is refused
with :class:`SerializationError` when stored, so no value changes type on its way through Redis.

Layout: one tag byte, then the body. The tag's low bits say how the body is encoded; its high
bit says the body is zstd-compressed (values above the compression threshold).

- ``0x01``: orjson JSON of a value without bytes or tuples (the common case: one C call).
- ``0x02``: raw bytes (a ``bytes`` value as it is).
- ``0x03``: a value holding bytes or tuples: 4-byte JSON length, the JSON, then every bytes
  value concatenated. In the JSON, bytes are ``{"\\u0000b": [offset, length]}``, tuples
  ``{"\\u0000t": [...]}`` and a dict with a key starting with NUL is escaped as
  ``{"\\u0000d": [[key, value], ...]}``, so no user dict is ever mistaken for a marker.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson
import zstandard

__all__ = ["SerializationError", "Serializer"]

_JSON = 0x01
_RAW = 0x02
_TREE = 0x03
_COMPRESSED = 0x80
_KIND = 0x7F

_BYTES_MARK = "\x00b"
_TUPLE_MARK = "\x00t"
_DICT_MARK = "\x00d"
_LENGTH = struct.Struct(">I")

_MAX_DECOMPRESSED = 512 * 1024 * 1024
"""A compressed value that claims more than this is refused rather than allocated."""


class SerializationError(ValueError):
    """A value cannot be cached (its type does not round-trip), or stored bytes are corrupt."""


def _plain(value: Any) -> bool:
    """Whether ``value`` is JSON as it is: no bytes, no tuples anywhere inside."""
    kind = type(value)
    if kind is str or kind is int or kind is bool or value is None:
        return True
    if kind is float:
        return math.isfinite(value)
    if kind is list:
        return all(_plain(item) for item in value)
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str or key.startswith("\x00") or not _plain(item):
                return False
        return True
    return False


class _TreeEncoder:
    """Turns a value with bytes and tuples into marker JSON plus a side buffer of bytes."""

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.offset = 0

    def encode(self, value: Any) -> Any:
        kind = type(value)
        if kind is str or kind is int or kind is bool or value is None:
            return value
        if kind is float:
            if not math.isfinite(value):
                raise SerializationError("NaN and infinities cannot be cached")
            return value
        if kind is bytes or kind is bytearray or kind is memoryview:
            data = bytes(value)
            start = self.offset
            self.chunks.append(data)
            self.offset += len(data)
            return {_BYTES_MARK: [start, len(data)]}
        if kind is list:
            return [self.encode(item) for item in value]
        if kind is tuple:
            return {_TUPLE_MARK: [self.encode(item) for item in value]}
        if kind is dict:
            if any(type(key) is not str for key in value):
                raise SerializationError("only dicts with str keys can be cached")
            if any(key.startswith("\x00") for key in value):
                return {_DICT_MARK: [[key, self.encode(item)] for key, item in value.items()]}
            return {key: self.encode(item) for key, item in value.items()}
        raise SerializationError(f"values of type {kind.__name__} cannot be cached")


def _decode_tree(node: Any, blob: memoryview) -> Any:
    kind = type(node)
    if kind is list:
        return [_decode_tree(item, blob) for item in node]
    if kind is not dict:
        return node
    if len(node) == 1:
        ((key, inner),) = node.items()
        if key == _BYTES_MARK:
            start, length = inner
            if type(start) is not int or type(length) is not int:
                raise SerializationError("corrupt cached value: bytes reference")
            if start < 0 or length < 0 or start + length > len(blob):
                raise SerializationError("corrupt cached value: bytes out of range")
            return bytes(blob[start : start + length])
        if key == _TUPLE_MARK:
            if type(inner) is not list:
                raise SerializationError("corrupt cached value: tuple")
            return tuple(_decode_tree(item, blob) for item in inner)
        if key == _DICT_MARK:
            if type(inner) is not list or not all(
                type(pair) is list and len(pair) == 2 and type(pair[0]) is str for pair in inner
            ):
                raise SerializationError("corrupt cached value: escaped dict")
            return {pair[0]: _decode_tree(pair[1], blob) for pair in inner}
    return {key: _decode_tree(item, blob) for key, item in node.items()}


class Serializer:
    """Encodes values for Redis (and for L1's byte accounting), compressing large ones."""

    def __init__(self, *, compress_threshold: int = 1024, level: int = 3) -> None:
        self.compress_threshold = compress_threshold
        self._compressor = zstandard.ZstdCompressor(level=level)
        self._decompressor = zstandard.ZstdDecompressor()

    def dumps(self, value: Any) -> bytes:
        """The tagged bytes of ``value``; :class:`SerializationError` when it cannot be cached."""
        try:
            if type(value) is bytes:
                tag, body = _RAW, value
            elif _plain(value):
                tag, body = _JSON, orjson.dumps(value)
            else:
                encoder = _TreeEncoder()
                tree = orjson.dumps(encoder.encode(value))
                tag, body = _TREE, _LENGTH.pack(len(tree)) + tree + b"".join(encoder.chunks)
        except orjson.JSONEncodeError as exc:
            # Integers beyond 64 bits are the one case the type checks above let through.
            raise SerializationError(f"value cannot be cached: {exc}") from None
        if len(body) > self.compress_threshold:
            return bytes((tag | _COMPRESSED,)) + self._compressor.compress(body)
        return bytes((tag,)) + body

    def loads(self, data: bytes) -> Any:
        """The value of :meth:`dumps` output; :class:`SerializationError` when it is corrupt."""
        if not data:
            raise SerializationError("corrupt cached value: empty")
        tag = data[0]
        body: bytes | memoryview = memoryview(data)[1:]
        try:
            if tag & _COMPRESSED:
                body = self._decompressor.decompress(body, max_output_size=_MAX_DECOMPRESSED)
            kind = tag & _KIND
            if kind == _JSON:
                return orjson.loads(body)
            if kind == _RAW:
                return bytes(body)
            if kind == _TREE:
                view = memoryview(body)
                (length,) = _LENGTH.unpack_from(view)
                if 4 + length > len(view):
                    raise SerializationError("corrupt cached value: truncated")
                tree = orjson.loads(view[4 : 4 + length])
                return _decode_tree(tree, view[4 + length :])
        except (orjson.JSONDecodeError, zstandard.ZstdError, struct.error, TypeError) as exc:
            raise SerializationError(f"corrupt cached value: {exc}") from None
        except ValueError as exc:
            raise SerializationError(f"corrupt cached value: {exc}") from None
        raise SerializationError(f"corrupt cached value: unknown tag {tag:#x}")
