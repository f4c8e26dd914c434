"""RFC 9457 problem details: the one place Bastion's errors become HTTP responses.

Every capability raises (or sends) a :class:`BastionError` carrying a stable ``code``; this module
maps codes to statuses and titles and renders ``application/problem+json`` bodies. Bodies never
contain stack traces, rule ids, payload excerpts, SQL or key material.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from bastion.http.asgi import Send

__all__ = [
    "PROBLEMS",
    "PROBLEM_CONTENT_TYPE",
    "PROBLEM_TYPE_BASE",
    "BastionError",
    "ProblemSpec",
    "problem_body",
    "send_problem",
]

PROBLEM_CONTENT_TYPE = b"application/problem+json"
PROBLEM_TYPE_BASE = "https://bastion.dev/problems/"


PROBLEM_SCHEMA: dict[str, Any] = {
    "$schema": "https://json-schema.org/draft/2020-12/schema",
    "title": "Bastion problem details (RFC 9457)",
    "type": "object",
    "required": ["type", "title", "status", "detail", "code", "request_id"],
    "properties": {
        "type": {"type": "string", "pattern": "^https://bastion\\.dev/problems/[a-z][a-z0-9_]*$"},
        "title": {"type": "string", "minLength": 1},
        "status": {"type": "integer", "minimum": 400, "maximum": 599},
        "detail": {"type": "string", "minLength": 1},
        "code": {"type": "string", "pattern": "^[a-z][a-z0-9_]*$"},
        "request_id": {"type": ["string", "null"], "pattern": "^[A-Za-z0-9._-]{1,128}$"},
        "retry_after": {"type": "integer", "minimum": 0},
        "errors": {"type": "array"},
        "checks": {"type": "object"},
    },
}
"""JSON schema every problem body Bastion sends validates against (docs/errors.md)."""


@dataclass(frozen=True, slots=True)
class ProblemSpec:
    """Status and title of one stable problem code."""

    status: int
    title: str


PROBLEMS: dict[str, ProblemSpec] = {
    "bad_request": ProblemSpec(400, "Bad request"),
    "not_found": ProblemSpec(404, "Not found"),
    "method_not_allowed": ProblemSpec(405, "Method not allowed"),
    "forbidden": ProblemSpec(403, "Forbidden"),
    "request_timeout": ProblemSpec(408, "Request timeout"),
    "upgrade_required": ProblemSpec(426, "Upgrade required"),
    "request_header_too_large": ProblemSpec(431, "Request header fields too large"),
    "uri_too_long": ProblemSpec(414, "URI too long"),
    "payload_too_large": ProblemSpec(413, "Payload too large"),
    "overloaded": ProblemSpec(503, "Service overloaded"),
    "upstream_unavailable": ProblemSpec(502, "Upstream unavailable"),
    "upstream_timeout": ProblemSpec(504, "Upstream timeout"),
    "cors_rejected": ProblemSpec(403, "Cross-origin request rejected"),
    "csrf_failed": ProblemSpec(403, "CSRF check failed"),
    "not_ready": ProblemSpec(503, "Not ready"),
    "internal_error": ProblemSpec(500, "Internal server error"),
}
"""Problem codes owned by the foundation; capabilities register theirs with :func:`register`."""


def register(code: str, status: int, title: str) -> None:
    """Register a capability's problem code (idempotent for identical definitions)."""
    spec = ProblemSpec(status, title)
    existing = PROBLEMS.get(code)
    if existing is not None and existing != spec:
        raise ValueError(f"problem code {code!r} is already registered as {existing}")
    PROBLEMS[code] = spec


class BastionError(Exception):
    """An error with a stable problem ``code``; rendered as problem+json in one place.

    ``detail`` is shown to the client and must never contain secrets or payload excerpts.
    ``headers`` are extra response headers (``Retry-After``, ``WWW-Authenticate``);
    ``extensions`` are extra members of the problem body (``retry_after``, ``errors``, ``checks``).
    """

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        extensions: Mapping[str, Any] | None = None,
        status: int | None = None,
    ) -> None:
        spec = PROBLEMS.get(code)
        if spec is None:
            raise ValueError(f"unknown problem code {code!r}")
        super().__init__(detail or spec.title)
        self.code = code
        self.status = status if status is not None else spec.status
        self.title = spec.title
        self.detail = detail or spec.title
        self.headers = dict(headers) if headers else {}
        self.extensions = dict(extensions) if extensions else {}


def problem_body(error: BastionError, request_id: str | None) -> bytes:
    """Render the RFC 9457 JSON body of ``error``."""
    body: dict[str, Any] = {
        "type": PROBLEM_TYPE_BASE + error.code,
        "title": error.title,
        "status": error.status,
        "detail": error.detail,
        "code": error.code,
        "request_id": request_id,
    }
    for key, value in error.extensions.items():
        body.setdefault(key, value)
    return orjson.dumps(body)


def problem_headers(error: BastionError, body: bytes) -> list[tuple[bytes, bytes]]:
    """Response headers of a problem response: type, length, no caching, and the error's own."""
    headers = [
        (b"content-type", PROBLEM_CONTENT_TYPE),
        (b"content-length", str(len(body)).encode("latin-1")),
        (b"cache-control", b"no-store"),
    ]
    for name, value in error.headers.items():
        headers.append((name.lower().encode("latin-1"), value.encode("latin-1")))
    return headers


async def send_problem(send: Send, error: BastionError, request_id: str | None) -> None:
    """Send ``error`` as a complete problem+json response on an HTTP scope."""
    body = problem_body(error, request_id)
    await send(
        {
            "type": "http.response.start",
            "status": error.status,
            "headers": problem_headers(error, body),
        }
    )
    await send({"type": "http.response.body", "body": body})
