"""``[auth]``: identity and access — passwords, tokens, API keys, MFA, roles and route rules."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bastion.config_types import ConfigModel, Duration
from bastion.http.paths import check_globs, compile_glob

__all__ = [
    "DEFAULT_ROLES",
    "AccessRule",
    "AuthConfig",
    "MfaConfig",
    "PasswordConfig",
    "SigningAlgorithm",
    "ThrottleConfig",
    "TokenConfig",
]

SigningAlgorithm = Literal["EdDSA", "ES256", "RS256", "HS256"]

_PERMISSION = re.compile(r"^(\*|[a-z0-9_.-]+:(\*|[a-z0-9_.-]+)|\*:[a-z0-9_.-]+)$")
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})

DEFAULT_ROLES: dict[str, list[str]] = {
    "admin": ["*"],
    "operator": ["*:read", "*:write"],
    "viewer": ["*:read"],
}
"""Roles every installation has unless ``[auth.roles]`` redefines them."""


def check_permission(value: str) -> str:
    """Validate a ``resource:action`` permission string (``*``, ``orders:*``, ``*:read``)."""
    if not _PERMISSION.match(value):
        raise ValueError(
            f"invalid permission {value!r}: use resource:action with optional '*' "
            "(e.g. orders:write, orders:*, *:read, *)"
        )
    return value


class PasswordConfig(ConfigModel):
    """``[auth.passwords]``: argon2id parameters and password rules (NIST SP 800-63B)."""

    time_cost: int = Field(default=2, ge=1)
    """argon2id iterations (OWASP: 2 iterations with 19 MiB)."""
    memory_cost_kib: int = Field(default=19456, ge=8192)
    """argon2id memory in KiB (OWASP minimum 19 MiB = 19456)."""
    parallelism: int = Field(default=1, ge=1)
    """argon2id lanes."""
    min_length: int = Field(default=8, ge=8)
    """Shortest accepted password, in characters (NIST: at least 8)."""
    max_length: int = Field(default=128, ge=64, le=4096)
    """Longest accepted password, in characters (NIST: allow at least 64)."""
    reject_common: bool = True
    """Refuse passwords found in the shipped list of most common passwords."""
    hash_threads: int = Field(default=0, ge=0)
    """Threads hashing passwords per process; 0: one fewer than the CPUs (at least one), so a
    burst of logins always leaves a CPU to the event loop serving everything else."""
    max_pending: int = Field(default=32, ge=1)
    """Password hashes queued or running at once per process; beyond, logins get 503
    ``overloaded`` at once instead of waiting behind seconds of hashing."""

    @model_validator(mode="after")
    def _lengths(self) -> PasswordConfig:
        if self.min_length > self.max_length:
            raise ValueError("min_length must not exceed max_length")
        return self


class TokenConfig(ConfigModel):
    """``[auth.tokens]``: access and refresh tokens (RFC 9068, RFC 8725, RFC 9700)."""

    issuer: str = "bastion"
    """``iss`` of issued tokens, required on verification."""
    audience: str = "bastion"
    """``aud`` of issued access tokens, required on verification."""
    client_id: str = "bastion"
    """``client_id`` claim of access tokens (RFC 9068)."""
    algorithm: SigningAlgorithm = "EdDSA"
    """Signing algorithm of newly generated keys; each key keeps the one it was made for."""
    access_ttl: Duration = Field(default=900.0, gt=0)
    """Lifetime of an access token."""
    refresh_ttl: Duration = Field(default=7 * 86400.0, gt=0)
    """Lifetime of a refresh token (and of the session it belongs to, unless refreshed)."""
    session_max_age: Duration = Field(default=30 * 86400.0, gt=0)
    """Absolute lifetime of a session: refreshing never extends it beyond this after login."""
    refresh_format: Literal["opaque", "jwt"] = "opaque"
    """``opaque``: random strings only Bastion reads; ``jwt``: signed and typed ``refresh+jwt``."""
    leeway: Duration = Field(default=30.0, ge=0, le=300)
    """Clock skew tolerated on ``exp``/``nbf``/``iat``."""
    max_token_bytes: int = Field(default=8192, ge=1024)
    """Tokens longer than this are refused before any parsing."""
    cache_size: int = Field(default=10000, ge=0)
    """Verified access tokens remembered so a repeated token is not verified again; 0: none."""
    keep_signing_keys: int = Field(default=2, ge=1)
    """Signing keys still accepted after a rotation (the newest signs, all verify)."""
    jwks_paths: list[str] = Field(default_factory=list)
    """Extra paths where the public signing keys are published, besides
    ``<prefix>/.well-known/jwks.json`` (e.g. ``/.well-known/jwks.json``)."""

    @field_validator("jwks_paths")
    @classmethod
    def _paths(cls, paths: list[str]) -> list[str]:
        for path in paths:
            if not path.startswith("/"):
                raise ValueError(f"jwks path {path!r} must start with '/'")
        return paths


class ThrottleConfig(ConfigModel):
    """``[auth.throttle]``: the built-in ``login`` policy, a failure-based throttle."""

    enabled: bool = True
    """Slow down repeated login failures."""
    pair_failures: int = Field(default=5, ge=1)
    """Failures of one username from one client IP before that pair must wait."""
    ip_failures: int = Field(default=20, ge=1)
    """Failures from one client IP, across usernames, before that IP must wait."""
    username_failures: int = Field(default=50, ge=1)
    """Failures against one username from IPs it never logged in from, before such IPs must
    wait for that username (the real user's known addresses are exempt)."""
    base_delay: Duration = Field(default=1.0, gt=0)
    """First wait once a threshold is reached; each further failure doubles it."""
    max_delay: Duration = Field(default=900.0, gt=0)
    """Longest wait (15 minutes)."""
    window: Duration = Field(default=3600.0, gt=0)
    """Failures older than this (counted from the latest failure) are forgotten."""
    known_ip_days: int = Field(default=30, ge=0)
    """An address the user logged in from within this many days is exempt from the
    per-username ceiling."""


class MfaConfig(ConfigModel):
    """``[auth.mfa]``: TOTP (RFC 6238) second factor."""

    issuer: str = "Bastion"
    """Issuer shown by authenticator apps."""
    digits: Literal[6, 8] = 6
    """Code length."""
    period: int = Field(default=30, ge=15, le=120)
    """Seconds per time step."""
    algorithm: Literal["SHA1", "SHA256", "SHA512"] = "SHA1"
    """HMAC of the codes (SHA1 is what nearly every authenticator app supports)."""
    window: int = Field(default=1, ge=0, le=2)
    """Time steps accepted either side of the current one."""
    backup_codes: int = Field(default=10, ge=0, le=20)
    """Single-use backup codes issued at enrolment."""
    reauth_window: Duration = Field(default=600.0, ge=0)
    """Setting up or disabling MFA needs a login at most this old, or the account's
    ``password`` in the request body: a stolen access token alone cannot change the factor."""


class AccessRule(ConfigModel):
    """One ``[[auth.rules]]`` entry: requests matching ``path`` (and ``methods``) need
    ``require`` or are ``public``. The first matching rule decides."""

    path: str
    """Path glob (``*`` within a segment, ``**`` across segments)."""
    methods: list[str] = Field(default_factory=list)
    """Methods the rule applies to; empty: all."""
    require: str | None = None
    """Permission required (``resource:action`` with wildcards); authentication is implied."""
    authenticated: bool = False
    """Any authenticated principal passes (no particular permission)."""
    public: bool = False
    """No authentication required."""

    @field_validator("path")
    @classmethod
    def _glob(cls, value: str) -> str:
        compile_glob(value)
        return value

    @field_validator("methods")
    @classmethod
    def _methods(cls, methods: list[str]) -> list[str]:
        upper = [method.upper() for method in methods]
        for method in upper:
            if method not in _METHODS:
                raise ValueError(f"unknown method {method!r}")
        return upper

    @field_validator("require")
    @classmethod
    def _permission(cls, value: str | None) -> str | None:
        return check_permission(value) if value is not None else None

    @model_validator(mode="after")
    def _one_decision(self) -> AccessRule:
        chosen = sum([self.require is not None, self.authenticated, self.public])
        if chosen != 1:
            raise ValueError("a rule needs exactly one of require, authenticated or public")
        return self


class AuthConfig(ConfigModel):
    """``[auth]``: users, tokens, API keys, MFA, roles and which routes need what."""

    enabled: bool = True
    """Resolve Bastion credentials, serve ``/_bastion/auth/*`` and enforce the rules."""
    rules: list[AccessRule] = Field(default_factory=list)
    """Route rules; nothing is protected until a rule or ``protect`` says so."""
    protect: list[str] = Field(default_factory=list)
    """Path globs under which requests matching no rule are denied (default deny): 401 without
    credentials, 403 ``permission_denied`` unless the principal holds ``*``."""
    roles: dict[str, list[str]] = Field(default_factory=dict)
    """Extra or redefined roles: name → permissions (``admin``, ``operator``, ``viewer`` exist
    unless redefined here)."""
    api_key_header: str = "X-API-Key"
    """Header carrying an API key (``Authorization: Bearer bst_…`` is accepted too)."""
    status_cache_ttl: Duration = Field(default=30.0, ge=0)
    """How long a user's status, roles and grants are cached; changes invalidate at once."""
    revocation_poll: Duration = Field(default=0.5, gt=0, le=1.0)
    """Interval at which each instance reads revocations and account changes from the
    database (Redis pub/sub, when configured, delivers them sooner)."""
    usage_flush: Duration = Field(default=10.0, gt=0)
    """Interval of the batched writes of API-key "last used" and session "last seen"."""
    passwords: PasswordConfig = Field(default_factory=PasswordConfig)
    tokens: TokenConfig = Field(default_factory=TokenConfig)
    throttle: ThrottleConfig = Field(default_factory=ThrottleConfig)
    mfa: MfaConfig = Field(default_factory=MfaConfig)

    @field_validator("protect")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        return check_globs(patterns)

    @field_validator("roles")
    @classmethod
    def _roles(cls, roles: dict[str, list[str]]) -> dict[str, list[str]]:
        for name, permissions in roles.items():
            if not re.fullmatch(r"[a-z][a-z0-9_.-]{0,63}", name):
                raise ValueError(f"invalid role name {name!r}")
            for permission in permissions:
                check_permission(permission)
        return roles

    def role_table(self) -> dict[str, tuple[str, ...]]:
        """Every role and its permissions: the defaults, overridden and extended by ``roles``."""
        table = {name: tuple(perms) for name, perms in DEFAULT_ROLES.items()}
        table.update({name: tuple(perms) for name, perms in self.roles.items()})
        return table
