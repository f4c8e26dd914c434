"""The ``auth`` stage: resolves the principal a request's Bastion credential proves and enforces
``[[auth.rules]]`` (DESIGN.md §1, step 10).

- A Bastion credential (its JWT, a ``bst_`` key) is verified wherever it appears; one that
  fails is a 401 even on a route no rule protects. Any other ``Authorization`` value passes to
  the upstream untouched, except on protected routes, where it cannot authenticate.
- 401 ``authentication_required`` (no credential) and 403 ``permission_denied`` (a principal
  without the permission) are distinct; every 401 carries an RFC 6750 challenge.
- Bastion's own identity endpoints (``<prefix>/auth/*`` and the JWKS locations) are outside the
  rules: they authenticate for themselves, and login must stay reachable under ``protect``.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from bastion.audit.events import AuditEvent
from bastion.auth.api_keys import looks_like_api_key
from bastion.auth.config import AuthConfig
from bastion.auth.dependencies import IDENTITY_STATE_KEY
from bastion.auth.errors import AuthError
from bastion.auth.rbac import AccessRules, RuleDecision
from bastion.auth.service import IdentityService
from bastion.auth.tokens import looks_like_bastion_jwt
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Receive, Scope, Send
from bastion.http.paths import path_spellings
from bastion.http.principal import Principal
from bastion.http.state import state_of

__all__ = ["AuthStage", "Credential", "CredentialResolver", "extract_credential"]

_SLASHES = re.compile(r"/{2,}")
_NOTHING: tuple[str, ...] = ()
_EVERYTHING = ("*",)
_REQUIREMENTS: dict[str, Callable[[RuleDecision], tuple[bool, tuple[str, ...]]]] = {
    "none": lambda _: (False, _NOTHING),
    "public": lambda _: (False, _NOTHING),
    "authenticated": lambda _: (True, _NOTHING),
    "require": lambda decision: (True, (decision.permission or "*",)),
    # Default deny under ``protect``: only a principal holding ``*`` passes.
    "deny": lambda _: (True, _EVERYTHING),
}


_AUTHORIZATION = b"authorization"
_BEARER = "bearer"
_B64TOKEN = re.compile(r"[A-Za-z0-9\-._~+/]+=*")
"""RFC 6750 ``b64token``; a compiled match runs in C (a Python set test cost 3 µs per JWT)."""
_OURS_INSIDE = re.compile(r"(?:^|[\s,])(?:eyJ|bst_)")


@dataclass(frozen=True, slots=True)
class Credential:
    """What a request presents: a bearer token, or an API key (in ``X-API-Key`` or as a bearer
    token starting with ``bst_``)."""

    kind: Literal["bearer", "api_key"]
    value: str


def extract_credential(
    headers: list[tuple[bytes, bytes]], api_key_header: bytes
) -> Credential | None:
    """The one credential a request presents, or ``None``.

    Refused with 401 ``invalid_token``: several ``Authorization`` headers, several tokens in
    one (``a.b.c d.e.f``), or a bearer token and an API key together — ambiguity is never
    resolved by guessing which one counts.
    """
    bearer: str | None = None
    api_key: str | None = None
    seen_authorization = False
    for name, raw in headers:
        if name == _AUTHORIZATION:
            if seen_authorization:
                raise AuthError("invalid_token", "Send one Authorization header")
            seen_authorization = True
            # Any whitespace after the scheme: "Bearer<TAB>bst_…" must not pass as foreign.
            parts = raw.decode("latin-1").split(None, 1)
            if len(parts) != 2 or parts[0].lower() != _BEARER:
                continue
            token = parts[1].strip()
            if _B64TOKEN.fullmatch(token) is None:
                # Not RFC 6750 syntax. Several tokens in one header, one of them Bastion's, is
                # ambiguous and refused; anything else is someone else's credential.
                if _OURS_INSIDE.search(token):
                    raise AuthError("invalid_token", "Send exactly one bearer token")
                continue
            bearer = token
        elif name == api_key_header:
            value = raw.decode("latin-1").strip()
            if not looks_like_api_key(value):
                # An upstream's own key scheme in the same header: not Bastion's to judge.
                continue
            if api_key is not None:
                raise AuthError("invalid_token", "Send one API key")
            api_key = value
    if bearer is not None and api_key is not None:
        raise AuthError("invalid_token", "Send either a bearer token or an API key, not both")
    if api_key is not None:
        return Credential("api_key", api_key)
    if bearer is not None:
        if looks_like_api_key(bearer):
            return Credential("api_key", bearer)
        return Credential("bearer", bearer)
    return None


class CredentialResolver:
    """Verifies the Bastion credential a request carries (``Deps.principal_resolver``), for
    stages that run before ``auth`` and must know the verified principal (CSRF exemption)."""

    def __init__(self, service: IdentityService, config: AuthConfig) -> None:
        self._service = service
        self._header = config.api_key_header.lower().encode("latin-1")
        self._issuer = config.tokens.issuer

    def ours(self, credential: Credential) -> bool:
        """Whether ``credential`` looks like Bastion's own (and so must verify)."""
        if credential.kind == "api_key" or self._service.credentials.get(credential.value):
            return True
        kids = self._service.signing.ring.kids
        return looks_like_bastion_jwt(credential.value, issuer=self._issuer, kids=kids)

    async def verify(self, credential: Credential) -> Principal:
        if credential.kind == "api_key":
            return await self._service.authenticate_api_key(credential.value)
        return await self._service.authenticate_bearer(credential.value)

    async def __call__(self, scope: Scope) -> Principal | None:
        try:
            credential = extract_credential(scope["headers"], self._header)
            if credential is None or not self.ours(credential):
                return None
            return await self.verify(credential)
        except AuthError:
            return None


class AuthStage:
    """Resolves ``state.principal`` and enforces the route rules."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: AuthConfig,
        deps: Deps,
        service: IdentityService,
        resolver: CredentialResolver,
    ) -> None:
        self.app = app
        self._service = service
        self._resolver = resolver
        self._rules = AccessRules(config.rules, config.protect)
        self._no_rules = self._rules.empty
        self._header = config.api_key_header.lower().encode("latin-1")
        # Bastion's own identity endpoints authenticate for themselves: a rule or ``protect``
        # glob covering them (``protect = ["/**"]``) must not lock everyone out of logging in.
        # Matched on the raw path, exactly as the terminal dispatches them.
        self._own_below = deps.prefix + "/auth/"
        self._credential_free = frozenset(
            [
                deps.prefix + "/auth/login",
                deps.prefix + "/auth/refresh",
                deps.prefix + "/.well-known/jwks.json",
                *config.tokens.jwks_paths,
            ]
        )
        self._own_exact = frozenset(
            [
                deps.prefix + "/auth",
                deps.prefix + "/.well-known/jwks.json",
                *config.tokens.jwks_paths,
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        scope["state"][IDENTITY_STATE_KEY] = self._service
        path: str = scope["path"]
        if path in self._credential_free:
            # Login, refresh and the JWKS take no credential: a stale access token a client
            # attaches to every call must not stop it from refreshing or logging in again.
            await self.app(scope, receive, send)
            return
        credential = extract_credential(scope["headers"], self._header)
        if path in self._own_exact or path.startswith(self._own_below):
            needs_auth, required = False, _NOTHING
        else:
            needs_auth, required = self._requirements(scope, path)
        principal: Principal | None = None
        if credential is not None and (needs_auth or self._resolver.ours(credential)):
            principal = await self._resolver.verify(credential)
            state.principal = principal
            state.user = principal.subject
        if not needs_auth:
            await self.app(scope, receive, send)
            return
        if principal is None:
            raise AuthError("authentication_required", "This route requires authentication")
        for permission in required:
            if not self._service.authorizer.allows(
                roles=principal.roles, required=permission, scopes=principal.scopes
            ):
                await self._denied(scope, principal, permission)
        await self.app(scope, receive, send)

    def _requirements(self, scope: Scope, path: str) -> tuple[bool, tuple[str, ...]]:
        """Whether the request needs a principal, and the permissions it needs.

        The rules see every spelling of the path that an upstream might resolve to a different
        resource than Bastion's decoded path: repeated slashes merged, an encoded ``/`` or
        ``\\`` kept inside its segment, a trailing slash dropped, backslashes as slashes, and
        lower case (case-insensitive routers). The strictest answer among them applies, so no
        spelling is a way around a rule.
        """
        if self._no_rules:
            return False, _NOTHING
        method: str = scope.get("method", "GET")
        if "//" in path:
            path = _SLASHES.sub("/", path)
        decide = self._rules.decide
        decision = decide(method, path)
        variants = path_spellings(scope, path)
        if not variants:
            return _REQUIREMENTS[decision.kind](decision)
        needs_auth, required = _REQUIREMENTS[decision.kind](decision)
        for variant in variants:
            other = decide(method, variant)
            more_auth, more = _REQUIREMENTS[other.kind](other)
            needs_auth = needs_auth or more_auth
            required = required + tuple(p for p in more if p not in required)
        return needs_auth, required

    async def _denied(self, scope: Scope, principal: Principal, required: str) -> None:
        state = state_of(scope)
        self._service.metrics.auth_attempt(principal.method, "denied")
        await self._service.audit.emit(
            AuditEvent(
                kind="access.denied",
                outcome="denied",
                actor=principal.subject,
                target=scope["path"][:256],
                client_ip=state.client_ip,
                request_id=state.request_id,
                detail={"permission": required, "method": scope.get("method", "GET")},
            )
        )
        raise AuthError("permission_denied", "You do not have the permission this route requires")
