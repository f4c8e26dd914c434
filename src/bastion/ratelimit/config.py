"""``[ratelimit]``: policies, bans and how decisions are stored (DESIGN.md §3-4)."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bastion.config_types import Cidr, ConfigModel, Duration
from bastion.http.paths import check_globs

__all__ = [
    "BUILTIN_POLICIES",
    "Algorithm",
    "BansConfig",
    "MatchConfig",
    "PolicyConfig",
    "RateLimitConfig",
    "TarpitConfig",
    "parse_key",
]

Algorithm = Literal["gcra", "sliding_window", "fixed_window", "sliding_log", "concurrency", "quota"]
Mode = Literal["enforce", "shadow"]
OnStoreError = Literal["open", "closed", "local"]

_KEY_PART = re.compile(
    r"^(ip|user|api_key|tenant|route|header:[A-Za-z0-9-]{1,64}|claim:[A-Za-z0-9_.-]{1,64})$"
)
_IDENTITY_PARTS = ("user", "api_key", "tenant", "claim:")


def parse_key(key: str) -> tuple[str, ...]:
    """The parts of a policy key (``"ip+user"`` → ``("ip", "user")``); ``ValueError`` if any
    part is not one of ip, user, api_key, tenant, route, header:<Name>, claim:<name>."""
    parts = tuple(part.strip() for part in key.split("+"))
    for part in parts:
        if not _KEY_PART.match(part):
            raise ValueError(
                f"invalid key part {part!r}: use ip, user, api_key, tenant, route, "
                "header:<Name> or claim:<name>, joined with '+'"
            )
    if len(set(parts)) != len(parts):
        raise ValueError(f"key {key!r} repeats a part")
    return parts


class MatchConfig(ConfigModel):
    """Which requests a policy applies to; every given criterion must match."""

    paths: list[str] = Field(default_factory=list)
    """Path globs; empty: every path."""
    methods: list[str] = Field(default_factory=list)
    """Methods; empty: every method."""
    routes: list[str] = Field(default_factory=list)
    """Gateway route names (``[[routes]] name``); empty: every route."""

    @field_validator("paths")
    @classmethod
    def _globs(cls, patterns: list[str]) -> list[str]:
        return check_globs(patterns)

    @field_validator("methods")
    @classmethod
    def _upper(cls, methods: list[str]) -> list[str]:
        return [method.upper() for method in methods]


class PolicyConfig(ConfigModel):
    """One ``[[ratelimit.policies]]`` entry."""

    name: str
    """Names the policy in headers, metrics and logs; a built-in's name replaces it."""
    match: MatchConfig = Field(default_factory=MatchConfig)
    """Requests the policy applies to."""
    key: str = "ip"
    """What is counted: ip, user, api_key, tenant, route, header:<Name>, claim:<name>, or
    several joined with '+' (``ip+user``). Policies keyed only by ip (and route/header) run in
    the early gate, before authentication (so they cannot have ``exempt_roles``); the others
    after it."""
    algorithm: Algorithm = "gcra"
    """gcra, sliding_window, fixed_window, sliding_log, concurrency or quota."""
    limit: int = Field(ge=1)
    """Requests (cost units) allowed per period; for concurrency, requests in flight."""
    period: Duration = Field(default=60.0, gt=0)
    """Length of the period (ignored by quota, which uses ``calendar``)."""
    burst: int | None = Field(default=None, ge=1)
    """gcra only: requests allowed at once (default: ``limit``)."""
    cost: int = Field(default=1, ge=1)
    """Units each request costs (an expensive export may cost 10); at most ``burst`` (gcra) or
    ``limit`` (the others), or no request could ever pass."""
    mode: Mode = "enforce"
    """``enforce`` refuses over the limit; ``shadow`` counts and reports but never refuses."""
    on_store_error: OnStoreError = "local"
    """When the shared store fails: ``open`` allows, ``closed`` refuses (503), ``local`` limits
    with this process's memory until the store is back."""
    exempt_cidrs: list[Cidr] = Field(default_factory=list)
    """Client networks the policy never applies to."""
    exempt_roles: list[str] = Field(default_factory=list)
    """Roles whose holders the policy never applies to; needs a key with a user, api_key,
    tenant or claim part (roles are known only after authentication)."""
    calendar: Literal["day", "month"] = "day"
    """quota only: the calendar period that resets the count."""
    timezone: str = "UTC"
    """quota only: IANA time zone of the calendar (``Europe/Paris``)."""

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not re.fullmatch(r"[a-z0-9][a-z0-9_.-]{0,63}", value):
            raise ValueError("a policy name is 1-64 of a-z, 0-9, '_', '.', '-'")
        return value

    @field_validator("key")
    @classmethod
    def _key(cls, value: str) -> str:
        parse_key(value)
        return value

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}") from None
        return value

    @model_validator(mode="after")
    def _coherent(self) -> PolicyConfig:
        capacity, what = (
            (self.burst or self.limit, "burst" if self.burst else "limit")
            if self.algorithm == "gcra"
            else (self.limit, "limit")
        )
        if self.cost > capacity:
            # Such a request is refused every time, and each refusal counts toward a ban.
            raise ValueError(
                f"policy {self.name!r}: cost {self.cost} is more than its {what} ({capacity}), "
                "so every request it applies to would be refused (and its client banned); "
                f"lower cost or raise {what}"
            )
        if self.exempt_roles and self.early:
            raise ValueError(
                f"policy {self.name!r}: exempt_roles needs the principal's roles, known only "
                f"after authentication, but key {self.key!r} (only ip, route or header parts) "
                "makes it a per-client policy, decided in the gate before authentication so "
                "floods are refused before any authentication work; exempt networks with "
                "exempt_cidrs, or key the policy by user, api_key, tenant or claim:<name> "
                '(e.g. "ip+user") to exempt roles'
            )
        return self

    @property
    def key_parts(self) -> tuple[str, ...]:
        """The key's parts (``"ip+user"`` → ``("ip", "user")``)."""
        return parse_key(self.key)

    @property
    def early(self) -> bool:
        """Whether the policy is decided before authentication, in the gate: its key has no
        user, api_key, tenant or claim part. Such a policy cannot exempt roles (validation
        refuses ``exempt_roles`` on it), so ``early`` never depends on them."""
        return not any(part.startswith(_IDENTITY_PARTS) for part in self.key_parts)


BUILTIN_POLICIES: tuple[PolicyConfig, ...] = (
    PolicyConfig(name="global", key="ip", algorithm="gcra", limit=1200, period=60.0, burst=200),
)
"""Policies every installation has unless one of the same name is configured (DESIGN.md §4).
``login`` is the identity capability's failure throttle (``[auth.throttle]``)."""


class BansConfig(ConfigModel):
    """``[ratelimit.bans]``: progressive temporary bans of clients that keep hitting limits."""

    enabled: bool = True
    """Ban clients whose requests are refused too often."""
    threshold: int = Field(default=50, ge=1)
    """Refusals within ``window`` that start a ban."""
    window: Duration = Field(default=300.0, gt=0)
    """Period over which refusals are counted."""
    durations: list[Duration] = Field(default_factory=lambda: [60.0, 300.0, 1800.0])
    """Ban lengths, one per repeated offence; the last repeats."""
    reset_after: Duration = Field(default=86400.0, gt=0)
    """A client without a ban for this long starts again at the first duration."""

    @field_validator("durations")
    @classmethod
    def _durations(cls, values: list[float]) -> list[float]:
        if not values or any(value <= 0 for value in values):
            raise ValueError("durations must list at least one positive duration")
        return values


class TarpitConfig(ConfigModel):
    """``[ratelimit.tarpit]``: delay requests over the limit instead of refusing them at once."""

    enabled: bool = False
    """Hold a request over the limit for its retry time (bounded), then decide again."""
    max_delay: Duration = Field(default=2.0, gt=0, le=30)
    """Longest a request is held; longer waits are refused at once."""
    max_waiting: int = Field(default=100, ge=1)
    """Requests held at once by this process; beyond, refused at once."""


class RateLimitConfig(ConfigModel):
    """``[ratelimit]``: layered request limits, shared through Redis when configured."""

    enabled: bool = True
    """Apply the built-in and configured policies."""
    policies: list[PolicyConfig] = Field(default_factory=list)
    """Policies added to the built-in ones (a policy named like a built-in replaces it)."""
    ipv6_prefix: int = Field(default=56, ge=32, le=128)
    """IPv6 clients are counted per network of this prefix length (one site, one bucket)."""
    ipv4_prefix: int = Field(default=32, ge=8, le=32)
    """IPv4 clients are counted per network of this prefix length."""
    headers: bool = True
    """Send ``RateLimit-Policy`` and ``RateLimit`` on limited routes."""
    legacy_headers: bool = False
    """Also send ``X-RateLimit-Limit``, ``-Remaining`` and ``-Reset``."""
    store: Literal["auto", "memory", "redis"] = "auto"
    """Where counters live: ``auto`` is Redis when ``store.redis_url`` is set, else memory."""
    max_keys: int = Field(default=200_000, ge=1000)
    """Memory store, per process: most buckets kept. Idle buckets (back to full) are dropped as
    new ones come; past the bound a policy holding more than its share (``max_keys`` divided
    among the policies) evicts its own least recently used bucket, so a flood of new keys on
    one policy never resets other policies' counts. Memory per bucket, measured on CPython
    3.11 with 20-character keys: about 190 B for gcra, 300 B for the window algorithms, 0.7 KB
    for concurrency and 1.1 KB for sliding_log (one entry; more entries add ~30 B each). The
    default bounds gcra buckets to about 40 MB per process (sliding_log to about 220 MB) and
    still holds every client active within the period at 3,000 new clients per second over
    a one-minute period."""
    error_log_interval: Duration = Field(default=60.0, gt=0)
    """At most one log line per interval while the shared store fails."""
    bans: BansConfig = Field(default_factory=BansConfig)
    tarpit: TarpitConfig = Field(default_factory=TarpitConfig)

    @field_validator("policies")
    @classmethod
    def _unique(cls, policies: list[PolicyConfig]) -> list[PolicyConfig]:
        names = [policy.name for policy in policies]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"policy names must be unique: {', '.join(duplicates)}")
        return policies

    @model_validator(mode="after")
    def _login(self) -> RateLimitConfig:
        if any(policy.name == "login" for policy in self.policies):
            raise ValueError(
                "'login' is the identity failure throttle: configure it in [auth.throttle]"
            )
        return self

    def effective_policies(self) -> list[PolicyConfig]:
        """Built-in policies not replaced by a configured one, then the configured ones."""
        configured = {policy.name for policy in self.policies}
        builtins = [policy for policy in BUILTIN_POLICIES if policy.name not in configured]
        return [*builtins, *self.policies]
