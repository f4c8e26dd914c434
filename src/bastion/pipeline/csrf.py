"""CSRF protection for cookie-authenticated unsafe requests.

A request is cookie-authenticated when it carries the session cookie; only those can be forged
cross-site, so requests without it pass. For unsafe methods on the configured paths the stage
checks, in order: ``Sec-Fetch-Site: cross-site`` (refused unless the origin is trusted), ``Origin``
(the request's own or a trusted one; ``null`` refused), then a signed double-submit token: the
header must equal the token cookie, and the token must verify — HMAC-SHA256 over a random nonce,
its issue time and the SHA-256 of the session cookie, so a token is worthless for any other
session and after ``token_ttl``. Keys rotate: tokens are signed with the newest and verified
with all. Requests whose bearer token or API key verifies are exempt (the decision is made on the
verified principal, never on a header's presence). Failures raise ``csrf_failed`` (403).

Tokens are issued as a script-readable cookie on responses to requests that have a session but
no valid token for it, and on responses that set a new session cookie (so SPAs can send unsafe
requests right after login).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable
from email.utils import parsedate_to_datetime

from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.paths import PathGlob
from bastion.http.problems import BastionError
from bastion.http.state import state_of
from bastion.pipeline.config import CsrfConfig

__all__ = ["CsrfKeyRing", "CsrfStage"]

_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS", "TRACE"})
_EXEMPT_METHODS = frozenset({"bearer", "api_key"})
_DEFAULT_PORTS = {"http": ":80", "https": ":443"}
_HTTP_SCHEMES = {"ws": "http", "wss": "https"}
"""Origins are HTTP origins, also for WebSocket handshakes."""
_CLOCK_SKEW = 60
"""Seconds a token's issue time may lie in the future (clocks of several instances differ)."""


class CsrfKeyRing:
    """CSRF signing keys, newest first; filled from configuration or the shared key store."""

    __slots__ = ("_keys",)

    def __init__(self, keys: Iterable[bytes] = ()) -> None:
        self._keys: tuple[bytes, ...] = ()
        self.set(keys)

    def set(self, keys: Iterable[bytes]) -> None:
        """Replace the keys; each is derived for CSRF use only, so sharing material is safe."""
        self._keys = tuple(
            hmac.new(key, b"bastion.csrf.v1", hashlib.sha256).digest() for key in keys
        )

    @property
    def keys(self) -> tuple[bytes, ...]:
        """The derived keys, newest first; empty until configured or loaded."""
        return self._keys


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _mac(key: bytes, nonce: str, issued: str, session: bytes) -> str:
    message = b"%s.%s.%s" % (
        nonce.encode("ascii"),
        issued.encode("ascii"),
        hashlib.sha256(session).digest(),
    )
    return _b64(hmac.new(key, message, hashlib.sha256).digest())


def _cookies(
    headers: list[tuple[bytes, bytes]], wanted: tuple[bytes, bytes]
) -> tuple[list[bytes], list[bytes]]:
    """Values of the two ``wanted`` cookies (every occurrence, in order) from ``Cookie`` headers."""
    found: tuple[list[bytes], list[bytes]] = ([], [])
    for name, value in headers:
        if name == b"cookie":
            for pair in value.split(b";"):
                key, _, item = pair.partition(b"=")
                key = key.strip()
                if key == wanted[0]:
                    found[0].append(item.strip())
                elif key == wanted[1]:
                    found[1].append(item.strip())
    return found


class CsrfStage:
    """Verifies CSRF tokens and origins on unsafe cookie-authenticated requests; issues tokens.

    ``keyring`` is the engine's ring, filled at start-up from ``secrets`` or the shared key store;
    without one the stage makes its own from ``secrets``, which must then be set.
    """

    def __init__(
        self, app: ASGIApp, *, config: CsrfConfig, deps: Deps, keyring: CsrfKeyRing | None = None
    ) -> None:
        self.app = app
        if keyring is None:
            if not config.secrets:
                raise ValueError("CSRF needs csrf.secrets or a key ring filled from the key store")
            keyring = CsrfKeyRing(s.get_secret_value().encode("utf-8") for s in config.secrets)
        self._keyring = keyring
        self._names = (
            config.session_cookie.encode("latin-1"),
            config.cookie_name.encode("latin-1"),
        )
        self._session_prefix = config.session_cookie.encode("latin-1") + b"="
        self._token_prefix = config.cookie_name.encode("latin-1") + b"="
        self._header = config.header_name.lower().encode("latin-1")
        self._paths = PathGlob(config.paths)
        self._exempt = PathGlob(config.exempt_paths)
        self._trusted = frozenset(config.trusted_origins)
        self._ttl = int(config.token_ttl)
        attributes = f"; Path=/; Max-Age={self._ttl}; SameSite={config.cookie_samesite.title()}"
        self._cookie_attributes = attributes + ("; Secure" if config.cookie_secure else "")
        self._resolver = deps.principal_resolver

    def issue(self, session: bytes) -> str:
        """A new token bound to the session cookie value ``session``."""
        keys = self._keys()
        nonce = _b64(secrets.token_bytes(16))
        issued = str(int(time.time()))
        return f"{nonce}.{issued}.{_mac(keys[0], nonce, issued, session)}"

    def verify(self, token: bytes, session: bytes) -> str | None:
        """Why ``token`` is not valid for ``session`` (a short reason), or ``None`` when it is."""
        parts = token.decode("latin-1").split(".")
        if not token.isascii() or len(parts) != 3 or not parts[1].isdigit():
            return "Malformed CSRF token"
        nonce, issued, mac = parts
        if not any(hmac.compare_digest(_mac(k, nonce, issued, session), mac) for k in self._keys()):
            return "Invalid CSRF token"
        age = time.time() - int(issued)
        if age > self._ttl or age < -_CLOCK_SKEW:
            return "Expired CSRF token"
        return None

    def _keys(self) -> tuple[bytes, ...]:
        keys = self._keyring.keys
        if not keys:
            raise RuntimeError(
                "CSRF signing keys are not loaded (the engine loads them at start-up)"
            )
        return keys

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            self._check_websocket(scope)
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = scope["headers"]
        sessions, tokens = _cookies(headers, self._names)
        session = sessions[0] if len(set(sessions)) == 1 else None
        valid = session is not None and any(self.verify(t, session) is None for t in tokens)
        if (
            sessions
            and scope["method"] not in _SAFE_METHODS
            and self._paths.matches(scope["path"])
            and not self._exempt.matches(scope["path"])
        ):
            failure = self._check(scope, headers, session, tokens)
            if failure is not None and not await self._exempt_principal(scope, headers):
                extra = {} if valid or session is None else {"Set-Cookie": self._cookie(session)}
                raise BastionError("csrf_failed", failure, headers=extra)
        # Every response is watched: any of them may set the session cookie (a login).
        await self.app(scope, receive, self._issuing(send, None if valid else session))

    def _check(
        self,
        scope: Scope,
        headers: list[tuple[bytes, bytes]],
        session: bytes | None,
        tokens: list[bytes],
    ) -> str | None:
        origin: str | None = None
        fetch_site = b""
        sent: bytes | None = None
        host: bytes | None = None
        for name, value in headers:
            if name == b"origin":
                origin = value.decode("latin-1").strip().lower()
            elif name == b"sec-fetch-site":
                fetch_site = value.strip().lower()
            elif name == self._header:
                sent = value.strip()
            elif name == b"host":
                host = value
        if fetch_site == b"cross-site" and origin not in self._trusted:
            return "Cross-site request"
        if origin is not None and origin not in self._trusted:
            if origin == "null":
                return "Opaque origin"
            if origin != self._own_origin(scope, host):
                return "Origin not allowed"
        if session is None:
            return "Ambiguous session cookie"
        if sent is None:
            return "Missing CSRF token header"
        if not any(hmac.compare_digest(sent, token) for token in tokens):
            return "CSRF token does not match its cookie"
        return self.verify(sent, session)

    def _check_websocket(self, scope: Scope) -> None:
        """Refuse cross-site WebSocket hijacking: a handshake carrying the session cookie must
        come from the request's own origin (or a trusted one). Browsers always send ``Origin``
        on handshakes and scripts cannot forge it; handshakes without it are not a browser's."""
        headers = scope["headers"]
        sessions, _ = _cookies(headers, self._names)
        if not sessions or not self._paths.matches(scope["path"]):
            return
        if self._exempt.matches(scope["path"]):
            return
        origin: str | None = None
        host: bytes | None = None
        for name, value in headers:
            if name == b"origin":
                origin = value.decode("latin-1").strip().lower()
            elif name == b"host":
                host = value
        if origin is None or origin in self._trusted:
            return
        if origin == "null" or origin != self._own_origin(scope, host):
            raise BastionError("csrf_failed", "Cross-origin WebSocket handshake")

    @staticmethod
    def _own_origin(scope: Scope, host: bytes | None) -> str | None:
        state = state_of(scope)
        authority = state.forwarded_host or (host.decode("latin-1") if host is not None else None)
        if not authority:
            return None
        authority = authority.strip().lower()
        scheme = _HTTP_SCHEMES.get(state.scheme, state.scheme)
        default = _DEFAULT_PORTS.get(scheme, "")
        if default and authority.endswith(default):
            authority = authority[: -len(default)]
        return f"{scheme}://{authority}"

    async def _exempt_principal(self, scope: Scope, headers: list[tuple[bytes, bytes]]) -> bool:
        """Whether a verified bearer token or API key authenticates the request."""
        if self._resolver is None:
            return False
        if not any(name in (b"authorization", b"x-api-key") for name, _ in headers):
            return False
        principal = await self._resolver(scope)
        return principal is not None and principal.method in _EXEMPT_METHODS

    def _cookie(self, session: bytes) -> str:
        return f"{self._names[1].decode('latin-1')}={self.issue(session)}{self._cookie_attributes}"

    def _issuing(self, send: Send, session: bytes | None) -> Send:
        """``send`` adding a token cookie for ``session`` (``None``: the token is valid), or for
        a session cookie the response sets."""

        async def send_with_token(message: Message) -> None:
            if message["type"] == "http.response.start":
                bound = session
                for name, value in message.get("headers", ()):
                    if name.lower() != b"set-cookie":
                        continue
                    if value.startswith(self._token_prefix):
                        bound = None  # the app manages the token cookie itself
                        break
                    if value.startswith(self._session_prefix):
                        bound = _new_session(value, len(self._session_prefix))
                if bound is not None:
                    cookie = (b"set-cookie", self._cookie(bound).encode("latin-1"))
                    message["headers"] = [*message.get("headers", ()), cookie]
            await send(message)

        return send_with_token


def _new_session(set_cookie: bytes, start: int) -> bytes | None:
    """The session value a ``Set-Cookie`` header sets, or ``None`` when it deletes the cookie."""
    value, *attributes = set_cookie[start:].split(b";")
    for attribute in attributes:
        key, _, argument = attribute.decode("latin-1").strip().partition("=")
        key = key.lower()
        try:
            if key == "max-age" and int(argument) <= 0:
                return None
            if key == "expires" and parsedate_to_datetime(argument).timestamp() <= time.time():
                return None
        except (TypeError, ValueError):
            continue  # an unparsable attribute is ignored, as browsers do
    return value.strip() or None
