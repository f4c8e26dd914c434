"""FastAPI dependencies for per-route rules inside a wrapped app.

``current_principal`` gives the verified principal (401 without one); ``require("orders:write")``
also checks a permission, and ``require("projects:edit", resource_param="project_id")`` checks it
against the roles granted on the resource named by that path parameter (``projects:<id>``) as
well as the global roles. They read what the ``auth`` stage established, so they only work in an
app wrapped by ``Bastion(settings).wrap(app)`` with auth enabled; used elsewhere they fail
loudly rather than let every request through.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request

from bastion.audit.events import AuditEvent
from bastion.auth.config import check_permission
from bastion.auth.errors import AuthError
from bastion.auth.rbac import resource_key
from bastion.auth.service import IdentityService
from bastion.http.principal import Principal

__all__ = ["IDENTITY_STATE_KEY", "current_principal", "require"]

IDENTITY_STATE_KEY = "bastion.identity"
"""Key under ``scope["state"]`` where the ``auth`` stage leaves the identity service."""


def _service(request: Request) -> IdentityService:
    service = request.scope.get("state", {}).get(IDENTITY_STATE_KEY)
    if not isinstance(service, IdentityService):
        raise RuntimeError(
            "bastion.require/current_principal need an app wrapped by Bastion with auth enabled"
        )
    return service


async def current_principal(request: Request) -> Principal:
    """The verified principal of the request; 401 ``authentication_required`` without one."""
    _service(request)
    state = request.scope["state"].get("bastion")
    principal = getattr(state, "principal", None)
    if not isinstance(principal, Principal):
        raise AuthError("authentication_required", "This route requires authentication")
    return principal


def require(
    permission: str, *, resource_param: str | None = None
) -> Callable[[Request], Awaitable[Principal]]:
    """A dependency that admits principals holding ``permission`` (globally, or on the resource
    named by the path parameter ``resource_param``) and returns the principal.

    Raises ``ValueError`` at once for a malformed permission, or for a ``resource_param`` with a
    permission that names no single resource (``*:edit``), which no grant could cover."""
    check_permission(permission)
    if resource_param is not None:
        # Refused here, at import time, rather than as a 500 on every request.
        resource_key(permission, "id")

    async def dependency(request: Request) -> Principal:
        service = _service(request)
        principal = await current_principal(request)
        resource_roles: tuple[str, ...] = ()
        if resource_param is not None:
            value = request.path_params.get(resource_param)
            if value is None:
                raise RuntimeError(f"route has no path parameter {resource_param!r}")
            account = await service.account(principal.subject)
            if account is not None:
                resource_roles = account.roles_on(resource_key(permission, str(value)))
        if service.authorizer.allows(
            roles=principal.roles,
            required=permission,
            scopes=principal.scopes,
            resource_roles=resource_roles,
        ):
            return principal
        state = request.scope["state"].get("bastion")
        service.metrics.auth_attempt(principal.method, "denied")
        await service.audit.emit(
            AuditEvent(
                kind="access.denied",
                outcome="denied",
                actor=principal.subject,
                target=request.url.path[:256],
                client_ip=getattr(state, "client_ip", None),
                request_id=getattr(state, "request_id", None),
                detail={"permission": permission, "resource_param": resource_param},
            )
        )
        raise AuthError("permission_denied", "You do not have the permission this route requires")

    return dependency
