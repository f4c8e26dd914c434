"""Security headers on every response, Bastion's own errors included.

Applied on the way out (so a cached response never freezes per-request values such as the CSP
nonce or HSTS-by-scheme). Upstream ``Server`` and ``X-Powered-By`` are removed. Headers the
upstream already set are kept unless ``override`` is configured.
"""

from __future__ import annotations

import secrets
from collections.abc import Iterable

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.state import state_of
from bastion.pipeline.config import HeadersConfig

__all__ = ["SecurityHeadersStage"]

_NONCE_MARK = "{nonce}"


def _hsts_value(config: HeadersConfig) -> bytes:
    value = f"max-age={int(config.hsts.max_age)}"
    if config.hsts.include_subdomains:
        value += "; includeSubDomains"
    if config.hsts.preload:
        value += "; preload"
    return value.encode("latin-1")


class SecurityHeadersStage:
    """Adds the configured security headers and strips server-identifying ones."""

    def __init__(self, app: ASGIApp, *, config: HeadersConfig, deps: Deps) -> None:
        self.app = app
        fixed: list[tuple[bytes, bytes]] = []
        csp = config.content_security_policy
        self._csp_template: tuple[bytes, bytes] | None = None
        if csp and _NONCE_MARK in csp:
            head, _, tail = csp.partition(_NONCE_MARK)
            self._csp_template = (head.encode("latin-1"), tail.encode("latin-1"))
        elif csp:
            fixed.append((b"content-security-policy", csp.encode("latin-1")))
        if config.content_type_options:
            fixed.append((b"x-content-type-options", b"nosniff"))
        for name, value in (
            (b"referrer-policy", config.referrer_policy),
            (b"permissions-policy", config.permissions_policy),
            (b"cross-origin-opener-policy", config.cross_origin_opener_policy),
            (b"x-frame-options", config.frame_options),
        ):
            if value:
                fixed.append((name, value.encode("latin-1")))
        self._fixed = tuple(fixed)
        self._hsts = (
            (b"strict-transport-security", _hsts_value(config)) if config.hsts.enabled else None
        )
        self._remove = frozenset(
            h.lower().encode("latin-1") for h in config.remove_response_headers
        )
        self._override = config.override
        managed = {name for name, _ in fixed}
        if self._csp_template is not None:
            managed.add(b"content-security-policy")
        if self._hsts is not None:
            managed.add(b"strict-transport-security")
        # Headers dropped from the response before ours are added: removed ones always, and
        # ours too when overriding what the upstream set.
        self._drop = self._remove | (frozenset(managed) if self._override else frozenset())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            await self.app(scope, receive, self._websocket_send(scope, send))
            return
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        nonce_header: tuple[bytes, bytes] | None = None
        if self._csp_template is not None:
            nonce = secrets.token_urlsafe(16)
            state.csp_nonce = nonce
            head, tail = self._csp_template
            nonce_header = (b"content-security-policy", head + nonce.encode("ascii") + tail)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = self._apply(
                    message.get("headers", ()), state.scheme, nonce_header
                )
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _websocket_send(self, scope: Scope, send: Send) -> Send:
        """Handshakes refused with an HTTP response (the denial extension) get the headers too."""
        state = state_of(scope)

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "websocket.http.response.start":
                scheme = "https" if state.scheme == "wss" else "http"
                message["headers"] = self._apply(message.get("headers", ()), scheme, None)
            await send(message)

        return send_with_headers

    def _apply(
        self,
        original: Iterable[tuple[bytes, bytes]],
        scheme: str,
        nonce_header: tuple[bytes, bytes] | None,
    ) -> list[tuple[bytes, bytes]]:
        # The scheme is read at response time: the client-IP stage, inside this one, may have
        # learnt from a trusted proxy that the client used HTTPS.
        additions = list(self._fixed)
        if nonce_header is not None:
            additions.append(nonce_header)
        if self._hsts is not None and scheme == "https":
            additions.append(self._hsts)
        drop = self._drop
        headers = [(k, v) for k, v in original if k.lower() not in drop]
        if self._override:
            headers.extend(additions)
        else:
            present = {k.lower() for k, _ in headers}
            headers.extend(h for h in additions if h[0] not in present)
        return headers
