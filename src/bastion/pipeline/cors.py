"""Cross-origin resource sharing, strict.

Origins are allowed by exact match or by an explicit pattern where ``*`` is exactly one DNS label
(scheme and port must match exactly, the host case-insensitively); ``"*"`` allows any origin only
without credentials, and an arbitrary origin is never reflected. ``null`` never matches.

Preflights (``OPTIONS`` with ``Origin`` and ``Access-Control-Request-Method``) are answered here
with 204, or refused with ``cors_rejected`` (403) when the origin, method or a requested header is
not allowed. Other requests carrying ``Origin`` always proceed (browsers enforce CORS); responses
to allowed origins get the CORS headers, every response gets ``Vary: Origin``. CORS headers set by
the upstream are removed: Bastion alone decides who may read responses.
"""

from __future__ import annotations

import re

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.fields import merge_vary
from bastion.http.problems import BastionError
from bastion.pipeline.config import CorsConfig

__all__ = ["CorsStage"]

_SAFELISTED_HEADERS = frozenset({"accept", "accept-language", "content-language", "content-type"})
"""CORS-safelisted request headers: always allowed when a preflight names them."""
_UPSTREAM_CORS_HEADERS = frozenset(
    {
        b"access-control-allow-origin",
        b"access-control-allow-credentials",
        b"access-control-allow-methods",
        b"access-control-allow-headers",
        b"access-control-allow-private-network",
        b"access-control-expose-headers",
        b"access-control-max-age",
    }
)
_PREFLIGHT_VARY = "Origin, Access-Control-Request-Method, Access-Control-Request-Headers"
_LABEL = "[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?"


def _pattern_source(pattern: str) -> str:
    scheme, _, rest = pattern.partition("://")
    host, colon, port = rest.partition(":")
    labels = (_LABEL if label == "*" else re.escape(label) for label in host.split("."))
    return re.escape(scheme + "://") + r"\.".join(labels) + re.escape(colon + port)


class CorsStage:
    """Answers preflights and adds CORS headers for allowed origins."""

    def __init__(self, app: ASGIApp, *, config: CorsConfig, deps: Deps) -> None:
        self.app = app
        self._any = config.origins == ["*"]
        self._origins = frozenset() if self._any else frozenset(config.origins)
        self._pattern = (
            re.compile("|".join(f"(?:{_pattern_source(p)})" for p in config.origin_patterns))
            if config.origin_patterns
            else None
        )
        self._methods = frozenset(config.allow_methods)
        self._allowed_headers = frozenset(config.allow_headers) | _SAFELISTED_HEADERS
        credentials = [(b"access-control-allow-credentials", b"true")]
        self._credentials = credentials if config.allow_credentials else []
        self._expose = (
            [(b"access-control-expose-headers", ", ".join(config.expose_headers).encode("latin-1"))]
            if config.expose_headers
            else []
        )
        self._preflight_fixed = [
            (b"access-control-allow-methods", ", ".join(config.allow_methods).encode("latin-1")),
            (b"access-control-max-age", str(int(config.max_age)).encode("latin-1")),
            (b"vary", _PREFLIGHT_VARY.encode("latin-1")),
            *self._credentials,
        ]
        self._private_network = config.allow_private_network

    def allows(self, origin: str) -> bool:
        """Whether ``origin`` (as sent in the ``Origin`` header) may read responses."""
        origin = origin.lower()
        if origin == "null":
            return False
        if self._any or origin in self._origins:
            return True
        return self._pattern is not None and self._pattern.fullmatch(origin) is not None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        origin: bytes | None = None
        for name, value in scope["headers"]:
            if name == b"origin":
                origin = value
                break
        # Without Origin the response still gets Vary: Origin (so a shared cache never serves
        # this CORS-less answer to a cross-origin caller) and loses the upstream's CORS headers.
        allowed = origin is not None and self.allows(origin.decode("latin-1"))
        if origin is not None and scope["method"] == "OPTIONS":
            requested = _preflight_request(scope["headers"])
            if requested is not None:
                await self._preflight(send, origin, allowed, *requested)
                return
        additions: list[tuple[bytes, bytes]] = []
        if allowed and origin is not None:
            acao = b"*" if self._any else origin
            additions = [(b"access-control-allow-origin", acao), *self._credentials, *self._expose]

        async def send_with_cors(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", ())
                    if k.lower() not in _UPSTREAM_CORS_HEADERS
                ]
                merge_vary(headers, b"Origin")
                headers.extend(additions)
                message["headers"] = headers
            await send(message)

        await self.app(scope, receive, send_with_cors)

    async def _preflight(
        self, send: Send, origin: bytes, allowed: bool, method: str, names: list[str], pna: bool
    ) -> None:
        refusal = {"Vary": _PREFLIGHT_VARY}
        if not allowed:
            raise BastionError("cors_rejected", "Origin not allowed", headers=refusal)
        if method not in self._methods:
            raise BastionError("cors_rejected", "Method not allowed for CORS", headers=refusal)
        if any(name not in self._allowed_headers for name in names):
            raise BastionError("cors_rejected", "Request header not allowed", headers=refusal)
        headers = [
            (b"access-control-allow-origin", b"*" if self._any else origin),
            *self._preflight_fixed,
        ]
        if names:
            headers.append((b"access-control-allow-headers", ", ".join(names).encode("latin-1")))
        if pna and self._private_network:
            headers.append((b"access-control-allow-private-network", b"true"))
        await send({"type": "http.response.start", "status": 204, "headers": headers})
        await send({"type": "http.response.body", "body": b""})


def _preflight_request(headers: list[tuple[bytes, bytes]]) -> tuple[str, list[str], bool] | None:
    """``(method, header names, private network)`` asked by a preflight; ``None`` if not one."""
    method: str | None = None
    names: list[str] = []
    pna = False
    for name, value in headers:
        if name == b"access-control-request-method":
            method = value.decode("latin-1").strip()
        elif name == b"access-control-request-headers":
            text = value.decode("latin-1").lower()
            names.extend(item for item in (part.strip() for part in text.split(",")) if item)
        elif name == b"access-control-request-private-network":
            pna = value.strip().lower() == b"true"
    return None if method is None else (method, names, pna)
