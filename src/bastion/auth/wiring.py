"""How the identity capability plugs into the engine: its service, its stage, its endpoints."""

from __future__ import annotations

from bastion.audit.events import AuditSink, LoggingAuditSink
from bastion.auth.config import AuthConfig
from bastion.auth.routes import AuthEndpoints, JwksEndpoint
from bastion.auth.service import IdentityService
from bastion.auth.stage import AuthStage, CredentialResolver
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp

__all__ = ["Identity"]


class Identity:
    """The identity capability of one engine."""

    def __init__(self, config: AuthConfig, deps: Deps) -> None:
        if deps.stores is None:
            raise ValueError("identity needs the stores")
        audit: AuditSink = deps.audit if deps.audit is not None else LoggingAuditSink()
        self.config = config
        self.service = IdentityService(
            config, stores=deps.stores, metrics=deps.metrics, audit=audit
        )
        self.resolver = CredentialResolver(self.service, config)

    def stage(self, app: ASGIApp, deps: Deps) -> ASGIApp:
        """The ``auth`` stage in front of ``app``."""
        return AuthStage(
            app, config=self.config, deps=deps, service=self.service, resolver=self.resolver
        )

    def endpoints(self, prefix: str) -> tuple[dict[str, ASGIApp], dict[str, ASGIApp]]:
        """``(mounts, exact)`` for the terminal: ``/auth/*`` and the JWKS locations."""
        jwks = JwksEndpoint(self.service)
        mounts: dict[str, ASGIApp] = {
            "/auth": AuthEndpoints(self.service, prefix=prefix),
            "/.well-known/jwks.json": jwks,
        }
        exact: dict[str, ASGIApp] = {path: jwks for path in self.config.tokens.jwks_paths}
        return mounts, exact
