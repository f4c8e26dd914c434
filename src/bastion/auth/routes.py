"""Bastion's own identity endpoints: ``/_bastion/auth/*`` and the JWKS (DESIGN.md §5).

They run as the terminal, after every stage, so logins are rate limited and inspected like
any other request. Bodies are JSON objects with string members; anything else is a 400
``bad_request`` naming the member. Token responses are never cacheable.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from bastion.auth.enrolment import MfaEnrolment
from bastion.auth.errors import AuthError
from bastion.auth.service import IdentityService, RequestContext
from bastion.http.asgi import Receive, Scope, Send
from bastion.http.principal import Principal
from bastion.http.problems import BastionError
from bastion.http.state import state_of

__all__ = ["AuthEndpoints", "JwksEndpoint"]

_MAX_BODY = 64 * 1024
_NO_STORE = [(b"cache-control", b"no-store"), (b"pragma", b"no-cache")]

Handler = Callable[[Scope, Receive], Awaitable[tuple[int, Any]]]


async def _send_json(
    send: Send, status: int, payload: Any, extra: list[tuple[bytes, bytes]]
) -> None:
    body = b"" if status == 204 else orjson.dumps(payload)
    headers = [*extra]
    if status != 204:
        headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode("ascii")),
        ]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _read_json(receive: Receive, *, optional: bool = False) -> dict[str, Any]:
    """The JSON object in the body; with ``optional``, an empty body is an empty object."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise BastionError("bad_request", "The request body was not received")
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > _MAX_BODY:
            raise BastionError("payload_too_large", "The request body is too large")
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    body = b"".join(chunks)
    if optional and not body.strip():
        return {}
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        raise _invalid("body", "must be a JSON object") from None
    if not isinstance(data, dict):
        raise _invalid("body", "must be a JSON object")
    return data


def _invalid(field: str, message: str) -> BastionError:
    """A 400 whose ``errors`` member names what is wrong, for every malformed body alike."""
    subject = "The request body" if field == "body" else f"'{field}'"
    return BastionError(
        "bad_request",
        f"{subject} {message}",
        extensions={"errors": [{"field": field, "message": message}]},
    )


def _required(data: dict[str, Any], name: str) -> str:
    value = data.get(name)
    if not isinstance(value, str) or not value:
        raise _invalid(name, "must be a non-empty string")
    return value


def _optional(data: dict[str, Any], name: str) -> str | None:
    return None if data.get(name) is None else _required(data, name)


def _principal(scope: Scope) -> Principal:
    principal = state_of(scope).principal
    if not isinstance(principal, Principal):
        raise AuthError("authentication_required", "Sign in first")
    return principal


def _signed_in(scope: Scope) -> Principal:
    """The principal of a signed-in session. Changing the account's second factor or ending
    its sessions needs one: an API key (perhaps limited to a few scopes, and held by a service)
    must not be able to enrol an authenticator the user does not have, or turn MFA off."""
    principal = _principal(scope)
    if principal.session_id is None:
        raise AuthError("permission_denied", "This needs a signed-in session, not an API key")
    return principal


def _context(scope: Scope) -> RequestContext:
    state = state_of(scope)
    agent = ""
    for name, value in scope["headers"]:
        if name == b"user-agent":
            agent = value.decode("latin-1")
            break
    return RequestContext(client_ip=state.client_ip, user_agent=agent, request_id=state.request_id)


class AuthEndpoints:
    """``<prefix>/auth/*``: login, refresh, logout, me, sessions and MFA enrolment."""

    def __init__(self, service: IdentityService, *, prefix: str) -> None:
        self._service = service
        self._mfa = MfaEnrolment(service)
        self.base = prefix + "/auth"
        self._routes: dict[str, dict[str, Handler]] = {
            "/login": {"POST": self._login},
            "/refresh": {"POST": self._refresh},
            "/logout": {"POST": self._logout},
            "/me": {"GET": self._me},
            "/sessions": {"GET": self._sessions},
            "/mfa/setup": {"POST": self._mfa_setup},
            "/mfa/verify": {"POST": self._mfa_verify},
            "/mfa/disable": {"POST": self._mfa_disable},
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            raise BastionError("not_found", "No such Bastion endpoint")
        path: str = scope["path"][len(self.base) :]
        method: str = scope["method"]
        if path.startswith("/sessions/") and path.count("/") == 2:
            handlers: dict[str, Handler] = {"DELETE": self._revoke_session}
        else:
            found = self._routes.get(path)
            if found is None:
                raise BastionError("not_found", "No such Bastion endpoint")
            handlers = found
        handler = handlers.get(method)
        if handler is None:
            allowed = ", ".join(sorted(handlers))
            raise BastionError("method_not_allowed", f"Use {allowed}", headers={"Allow": allowed})
        status, payload = await handler(scope, receive)
        await _send_json(send, status, payload, _NO_STORE)

    async def _login(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        data = await _read_json(receive)
        username = _required(data, "username")
        password = _required(data, "password")
        otp = _optional(data, "otp")
        pair = await self._service.login(username, password, otp, _context(scope))
        return 200, pair.body()

    async def _refresh(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        data = await _read_json(receive)
        token = _required(data, "refresh_token")
        pair = await self._service.refresh(token, _context(scope))
        return 200, pair.body()

    async def _logout(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        await self._service.logout(_principal(scope), _context(scope))
        return 204, None

    async def _me(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        principal = _principal(scope)
        return 200, {
            "id": principal.subject,
            "username": principal.username,
            "roles": list(principal.roles),
            "scopes": list(principal.scopes),
            "mfa": bool(principal.extra.get("mfa", False)),
            "session_id": principal.session_id,
            "method": principal.method,
        }

    async def _sessions(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        # Session details (addresses, user agents) are for the user, not for API keys.
        return 200, {"sessions": await self._service.sessions(_signed_in(scope))}

    async def _revoke_session(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        session_id = scope["path"].rsplit("/", 1)[1]
        principal = _signed_in(scope)
        if not await self._service.revoke_session(principal, session_id, _context(scope)):
            raise BastionError("not_found", "No such session")
        return 204, None

    async def _mfa_setup(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        principal = _signed_in(scope)
        data = await _read_json(receive, optional=True)
        password = _optional(data, "password")
        return 200, await self._mfa.setup(principal, _context(scope), password=password)

    async def _mfa_verify(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        principal = _signed_in(scope)
        otp = _required(await _read_json(receive), "otp")
        await self._mfa.verify(principal, otp, _context(scope))
        return 200, {"mfa": True}

    async def _mfa_disable(self, scope: Scope, receive: Receive) -> tuple[int, Any]:
        principal = _signed_in(scope)
        data = await _read_json(receive)
        otp = _required(data, "otp")
        password = _optional(data, "password")
        await self._mfa.disable(principal, otp, _context(scope), password=password)
        return 200, {"mfa": False}


class JwksEndpoint:
    """The public signing keys (RFC 7517), for upstreams that verify tokens themselves."""

    def __init__(self, service: IdentityService) -> None:
        self._service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in ("GET", "HEAD"):
            raise BastionError("method_not_allowed", "Use GET", headers={"Allow": "GET, HEAD"})
        payload = self._service.signing.ring.jwks()
        # Short caching: verifiers refetch soon after a rotation (and on an unknown kid).
        headers = [(b"cache-control", b"public, max-age=300")]
        await _send_json(send, 200, payload, headers)
