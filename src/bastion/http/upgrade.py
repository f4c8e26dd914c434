"""Checks of a WebSocket upgrade request before the WebSocket library sees it.

The library answers what it cannot parse with its own plain-text 400 (echoing parser detail), and
a header line longer than its line limit gets no answer at all. The server refuses such
handshakes itself, as problem+json, before handing the connection over.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable

from bastion.http.problems import BastionError

__all__ = ["upgrade_problem"]

MAX_LINE = 8190
"""Longest header line (``name: value``) the WebSocket library reads (8192 with CRLF)."""

_TCHARS = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_QUOTED = r'"(?:[^"\\]|\\.)*"'
_OWS = r"[ \t]*"
_TOKEN_LIST = re.compile(rf"{_OWS}{_TCHARS}(?:{_OWS},{_OWS}{_TCHARS})*{_OWS}\Z")
_PARAM = rf"{_TCHARS}(?:{_OWS}={_OWS}(?:{_TCHARS}|{_QUOTED}))?"
_EXTENSION = rf"{_TCHARS}(?:{_OWS};{_OWS}{_PARAM})*"
_EXTENSION_LIST = re.compile(rf"{_OWS}{_EXTENSION}(?:{_OWS},{_OWS}{_EXTENSION})*{_OWS}\Z")


def _valid_key(value: bytes) -> bool:
    try:
        return len(base64.b64decode(value.strip(), validate=True)) == 16
    except (binascii.Error, ValueError):
        return False


def upgrade_problem(headers: Iterable[tuple[bytes, bytes]]) -> BastionError | None:
    """The refusal a WebSocket upgrade request deserves, or ``None`` when it is well-formed."""
    keys = 0
    for name, value in headers:
        if len(name) + len(value) + 2 > MAX_LINE:
            return BastionError(
                "request_header_too_large", f"A handshake header line exceeds {MAX_LINE} bytes"
            )
        try:
            text = value.decode("ascii")
        except UnicodeDecodeError:
            return BastionError("bad_request", "Handshake headers must be ASCII")
        if name == b"sec-websocket-protocol" and not _TOKEN_LIST.match(text):
            return BastionError("bad_request", "Malformed Sec-WebSocket-Protocol")
        if name == b"sec-websocket-extensions" and not _EXTENSION_LIST.match(text):
            return BastionError("bad_request", "Malformed Sec-WebSocket-Extensions")
        if name == b"sec-websocket-key":
            keys += 1
            if not _valid_key(value):
                return BastionError("bad_request", "Malformed Sec-WebSocket-Key")
        if name == b"sec-websocket-version" and value.strip() != b"13":
            return BastionError(
                "upgrade_required",
                "Only WebSocket version 13 is supported",
                headers={"Sec-WebSocket-Version": "13"},
            )
    if keys != 1:
        return BastionError("bad_request", "A handshake carries exactly one Sec-WebSocket-Key")
    return None
