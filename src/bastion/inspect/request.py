"""The request as the inspection engine sees it: method, target, headers and body, undecoded.

One immutable value built either from an ASGI scope (in the pipeline) or from a corpus record
(``bastion waf scan``), so detectors and the protocol checks never depend on where it came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

__all__ = ["FORM_URLENCODED", "InspectionRequest", "media_type"]

FORM_URLENCODED = "application/x-www-form-urlencoded"


def media_type(content_type: str) -> str:
    """The lower-cased media type of a ``Content-Type`` value, without parameters."""
    return content_type.partition(";")[0].strip().lower()


class InspectionRequest(NamedTuple):
    """One HTTP request, exactly as received (nothing percent-decoded). A named tuple: as
    immutable as a frozen dataclass, and built in a fraction of its time (one per request)."""

    method: str
    target: str
    """Request target as sent: path + ``?`` + query, not decoded."""
    headers: tuple[tuple[str, str], ...]
    """Header fields in order, names as sent (ASGI gives them lower-cased)."""
    body: bytes
    raw: bytes | None = None
    """The complete request as sent on the wire, when known (some corpus records)."""

    def split_target(self) -> tuple[str, str]:
        """The undecoded path (before ``?``) and query string (after the first ``?``), each
        without a fragment."""
        path, _, query = self.target.partition("?")
        if "#" in path or "#" in query:
            return path.partition("#")[0], query.partition("#")[0]
        return path, query

    @property
    def path(self) -> str:
        """The undecoded path part of the target (before ``?``; a fragment is dropped)."""
        return self.split_target()[0]

    @property
    def query(self) -> str:
        """The undecoded query string (after the first ``?``, without a fragment)."""
        return self.split_target()[1]

    def header(self, name: str) -> str | None:
        """The first value of header ``name`` (case-insensitive), or ``None``."""
        wanted = name.lower()
        for key, value in self.headers:
            if key.lower() == wanted:
                return value
        return None

    def header_values(self, name: str) -> list[str]:
        """Every value of header ``name`` (case-insensitive), in order."""
        wanted = name.lower()
        return [value for key, value in self.headers if key.lower() == wanted]

    @property
    def content_type(self) -> str:
        """The lower-cased media type of ``Content-Type`` without parameters (``""`` if none)."""
        value = self.header("content-type")
        return "" if value is None else media_type(value)

    @classmethod
    def from_scope(cls, scope: Mapping[str, Any], body: bytes) -> InspectionRequest:
        """Build from an ASGI HTTP scope and the (already bounded) body bytes.

        ``raw_path`` is used when the server provides it, because ``path`` is already
        percent-decoded and decoding is the inspector's job (double encoding is an evasion).
        """
        raw_path = scope.get("raw_path")
        if isinstance(raw_path, bytes) and raw_path:
            path = raw_path.decode("latin-1")
        else:
            path = str(scope.get("path", "/"))
        query = scope.get("query_string", b"")
        target = path
        if query:
            target += "?" + (query.decode("latin-1") if isinstance(query, bytes) else str(query))
        fields = scope.get("headers", ())
        headers = tuple([(key.decode("latin-1"), value.decode("latin-1")) for key, value in fields])
        return cls(str(scope.get("method", "GET")), target, headers, body)

    @classmethod
    def from_record(cls, record: Mapping[str, Any]) -> InspectionRequest:
        """Build from a corpus record (schema: ``shared/corpus/waf/README.md``).

        Records with ``raw`` are parsed from those bytes (latin-1, authoritative). A body without
        ``Content-Type`` is sent as form-urlencoded by the CRS test runner, so the header is
        added here to inspect it the way the rules under test saw it.
        """
        raw_text = record.get("raw")
        if isinstance(raw_text, str) and raw_text:
            request = cls.from_raw(raw_text.encode("latin-1"))
        else:
            headers_obj = record.get("headers") or {}
            headers = tuple((str(k), str(v)) for k, v in dict(headers_obj).items())
            body_text = record.get("body")
            body = body_text.encode("utf-8") if isinstance(body_text, str) else b""
            request = cls(
                str(record.get("method") or "GET"), str(record.get("uri") or "/"), headers, body
            )
        if request.body and request.header("content-type") is None:
            headers = (*request.headers, ("Content-Type", FORM_URLENCODED))
            request = cls(request.method, request.target, headers, request.body, request.raw)
        return request

    @classmethod
    def from_raw(cls, data: bytes) -> InspectionRequest:
        """Parse an HTTP/1.x request as sent on the wire, leniently: never raises.

        The request line and header fields may end in CRLF or LF; whatever follows the first
        blank line is the body, as is (no chunked decoding: smuggling checks want it raw).
        """
        text = data.decode("latin-1")
        head, sep, body = text.partition("\r\n\r\n")
        if not sep:
            head, sep, body = text.partition("\n\n")
        lines = head.replace("\r\n", "\n").split("\n")
        parts = lines[0].split(" ") if lines else []
        method = parts[0] if parts and parts[0] else "GET"
        target = parts[1] if len(parts) > 1 and parts[1] else "/"
        headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if colon:
                headers.append((name.strip(), value.strip()))
            elif headers and line[:1] in (" ", "\t"):
                # obs-fold: a continuation line belongs to the previous field's value.
                last_name, last_value = headers[-1]
                headers[-1] = (last_name, f"{last_value} {line.strip()}")
        return cls(method, target, tuple(headers), body.encode("latin-1"), data)
