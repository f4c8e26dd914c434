"""``GET {prefix}/admin/audit``: the audit log for administrators (DESIGN.md §5).

Query parameters, all optional: ``kind`` (exact, or a family ending in ``.*``: ``auth.*``),
``actor``, ``since`` and ``until`` (RFC 3339 with an offset, or a duration back from now:
``15m``, ``1h``, ``7d``; ``since`` inclusive, ``until`` exclusive), ``limit`` (1 to 500, default
100) and ``cursor`` (the ``next_cursor`` of the previous page). Events come newest first; a page
ends with ``next_cursor`` (``null`` on the last page), so a client walks back through the log
without ever seeing an event twice, even while new ones are appended.

The caller must be authenticated (401 ``authentication_required`` otherwise) and hold
``admin:audit``: the built-in ``admin`` role does, ``viewer`` and ``operator`` do not (their
``*:read`` names no ``admin`` action). Without it: 403 ``permission_denied``, audited as
``access.denied``. Malformed parameters are a 400 ``invalid_query`` whose ``errors`` member
names each offending parameter.
"""

from __future__ import annotations

import re
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

import orjson

from bastion.audit.events import AuditEvent, AuditSink
from bastion.audit.reader import DEFAULT_LIMIT, MAX_LIMIT, AuditFilter, AuditPage, AuditReader
from bastion.auth.errors import AuthError
from bastion.auth.rbac import Authorizer
from bastion.config_types import parse_duration
from bastion.deps import Deps
from bastion.http.asgi import Receive, Scope, Send
from bastion.http.principal import Principal
from bastion.http.problems import BastionError, register
from bastion.http.state import state_of

__all__ = [
    "AUDIT_PERMISSION",
    "DEFAULT_LIMIT",
    "MAX_LIMIT",
    "AuditEndpoint",
    "admin_audit_endpoint",
    "check_actor",
    "check_kind",
    "parse_filter",
    "parse_time",
]

register("invalid_query", 400, "Invalid query parameters")

AUDIT_PERMISSION = "admin:audit"
"""The permission the audit query needs: held by ``admin`` (``*``), not covered by the
``*:read`` of the built-in ``viewer`` and ``operator`` roles."""
_PARAMETERS = frozenset({"kind", "actor", "since", "until", "cursor", "limit"})
_KIND = re.compile(r"[a-z0-9_]+(\.[a-z0-9_]+)*(\.\*)?\Z")
_KIND_MAX = 64
_ACTOR_MAX = 128
_TIME_MAX = 64
_CURSOR = re.compile(r"[1-9][0-9]{0,18}\Z")
_CURSOR_MAX = 2**63
"""Cursors are ``seq`` values: a 64-bit signed column (as :func:`query.decode_cursor` bounds)."""
_PLAIN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,32}\Z")
_NO_STORE = [(b"cache-control", b"no-store"), (b"content-type", b"application/json")]


Reader = Callable[[AuditFilter], Awaitable[AuditPage]]
"""Runs one query against the log."""


def _problem(errors: list[dict[str, str]]) -> BastionError:
    names = ", ".join(sorted({e["field"] for e in errors}))
    return BastionError(
        "invalid_query", f"Invalid query parameters: {names}", extensions={"errors": errors}
    )


def parse_time(value: str, *, now: float | None = None) -> datetime:
    """An instant from RFC 3339 (with an offset) or a duration back from ``now`` (``1h``);
    ``ValueError`` saying what is accepted otherwise."""
    text = value.strip()
    if not text or len(text) > _TIME_MAX:
        raise ValueError("must be an RFC 3339 time with an offset or a duration such as 1h")
    if text[-1] in "smhd" and text[0].isdigit() and "T" not in text.upper():
        try:
            seconds = parse_duration(text)
        except ValueError:
            raise ValueError("must be a duration such as 30m, 1h or 7d") from None
        moment = datetime.fromtimestamp(now if now is not None else time.time(), UTC)
        try:
            return moment - timedelta(seconds=seconds)
        except OverflowError:
            raise ValueError("reaches too far back") from None
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(
            "must be an RFC 3339 time with an offset (2026-01-31T12:00:00Z) or a duration "
            "such as 1h"
        ) from None
    if parsed.tzinfo is None:
        raise ValueError("needs a UTC offset (Z or +hh:mm)")
    try:
        return parsed.astimezone(UTC)
    except OverflowError:  # 0001-01-01T00:00:00+14:00 is before the first instant there is
        raise ValueError("is out of range") from None


def check_kind(value: str) -> str:
    """A kind filter: a dotted kind (``auth.login.failed``) or a family (``auth.*``)."""
    if len(value) > _KIND_MAX or not _KIND.match(value):
        raise ValueError("must be a kind such as auth.login.failed or auth.*")
    return value


def check_actor(value: str) -> str:
    """An actor filter: at most 128 printable characters."""
    if len(value) > _ACTOR_MAX or not value.isprintable():
        raise ValueError("must be at most 128 printable characters")
    return value


def parse_filter(query_string: bytes, *, now: float | None = None) -> AuditFilter:
    """The filter of a query string; :class:`BastionError` ``invalid_query`` naming every
    offending parameter otherwise."""
    try:
        pairs = urllib.parse.parse_qsl(
            query_string.decode("ascii"),
            keep_blank_values=True,
            strict_parsing=False,
            errors="strict",
            max_num_fields=len(_PARAMETERS) * 2,
        )
    except (UnicodeDecodeError, ValueError):
        raise _problem([{"field": "query", "message": "is not a valid query string"}]) from None
    errors: list[dict[str, str]] = []
    values: dict[str, str] = {}
    for name, value in pairs:
        if name not in _PARAMETERS:
            # Named back only when it is a plain name: the problem body never echoes payloads.
            shown = name if _PLAIN_NAME.match(name) else "query"
            errors.append({"field": shown, "message": "is not a parameter of this query"})
        elif name in values:
            errors.append({"field": name, "message": "is given more than once"})
        else:
            values[name] = value
    checked: dict[str, str | None] = {"kind": None, "actor": None}
    for name, check in (("kind", check_kind), ("actor", check_actor)):
        raw = values.get(name)
        if raw:
            try:
                checked[name] = check(raw)
            except ValueError as exc:
                errors.append({"field": name, "message": str(exc)})
    kind, actor = checked["kind"], checked["actor"]
    moments: dict[str, datetime | None] = {"since": None, "until": None}
    for name in moments:
        raw = values.get(name)
        if raw:
            try:
                moments[name] = parse_time(raw, now=now)
            except ValueError as exc:
                errors.append({"field": name, "message": str(exc)})
    since, until = moments["since"], moments["until"]
    if since is not None and until is not None and since >= until:
        errors.append({"field": "until", "message": "must be later than since"})
    before_seq: int | None = None
    cursor = values.get("cursor")
    if cursor:
        if _CURSOR.match(cursor) and int(cursor) < _CURSOR_MAX:
            before_seq = int(cursor)
        else:
            errors.append({"field": "cursor", "message": "is not a cursor this endpoint gave"})
    limit = DEFAULT_LIMIT
    raw_limit = values.get("limit")
    if raw_limit:
        if raw_limit.isascii() and raw_limit.isdigit() and 1 <= int(raw_limit) <= MAX_LIMIT:
            limit = int(raw_limit)
        else:
            errors.append(
                {"field": "limit", "message": f"must be an integer from 1 to {MAX_LIMIT}"}
            )
    if errors:
        raise _problem(errors)
    return AuditFilter(
        kind=kind, actor=actor, since=since, until=until, before_seq=before_seq, limit=limit
    )


class AuditEndpoint:
    """``GET {prefix}/admin/audit`` (and ``HEAD``): one page of the audit log as JSON."""

    def __init__(
        self,
        reader: Reader,
        *,
        prefix: str,
        authorizer: Authorizer,
        audit: AuditSink | None = None,
    ) -> None:
        self.path = prefix + "/admin/audit"
        self._read = reader
        self._authorizer = authorizer
        self._audit = audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != self.path:
            raise BastionError("not_found", "No such Bastion endpoint")
        method: str = scope["method"]
        if method not in ("GET", "HEAD"):
            raise BastionError("method_not_allowed", "Use GET", headers={"Allow": "GET, HEAD"})
        await self._authorize(scope)
        query = parse_filter(scope.get("query_string", b""))
        page = await self._read(query)
        body = orjson.dumps(
            {
                "events": list(page.events),
                "next_cursor": str(page.next_seq) if page.next_seq is not None else None,
            }
        )
        headers = [*_NO_STORE, (b"content-length", str(len(body)).encode("ascii"))]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        await send({"type": "http.response.body", "body": b"" if method == "HEAD" else body})

    async def _authorize(self, scope: Scope) -> None:
        state = state_of(scope)
        principal = state.principal
        if not isinstance(principal, Principal):
            raise AuthError("authentication_required", "Reading the audit log needs a sign-in")
        if self._authorizer.allows(
            roles=principal.roles, required=AUDIT_PERMISSION, scopes=principal.scopes
        ):
            return
        if self._audit is not None:
            await self._audit.emit(
                AuditEvent(
                    kind="access.denied",
                    outcome="denied",
                    actor=principal.subject,
                    target=scope["path"][:256],
                    client_ip=state.client_ip,
                    request_id=state.request_id,
                    detail={"permission": AUDIT_PERMISSION, "method": scope["method"]},
                )
            )
        raise AuthError("permission_denied", f"Reading the audit log needs {AUDIT_PERMISSION}")


def admin_audit_endpoint(deps: Deps, authorizer: Authorizer) -> AuditEndpoint:
    """The endpoint over the engine's database, checking ``admin:audit`` with ``authorizer``."""
    if deps.stores is None:
        raise ValueError("the audit query needs the stores")
    reader = AuditReader(deps.stores.database)
    return AuditEndpoint(reader.page, prefix=deps.prefix, authorizer=authorizer, audit=deps.audit)
