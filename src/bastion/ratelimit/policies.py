"""Which policies apply to a request, and the bucket each one counts it in.

:class:`PolicySet` compiles ``[[ratelimit.policies]]`` (plus the built-in ones) once into two
lists: *early* policies, whose keys need only the client address, the route and headers (decided
by the gate before anything expensive runs), and *late* ones, which need the principal (decided
after authentication). Per request it turns the matching policies into :class:`Check` s.

Key parts:

- ``ip``: the client address the client-IP stage resolved (forwarding headers are believed only
  from trusted proxies, there, never here), counted per ``ipv4_prefix`` / ``ipv6_prefix``
  network: one IPv6 site usually holds a whole /56, so per-address buckets would be free to dodge.
- ``user``: the principal's subject; ``api_key``: the key id when the principal authenticated
  with an API key; ``tenant``: ``principal.extra["tenant"]``; ``claim:<name>``: that entry of
  ``principal.extra`` (or of ``principal.extra["claims"]``).
- ``route``: the gateway route's name; Bastion's own endpoints count as the route ``_bastion``.
- ``header:<Name>``: the header's value (long or unusual values are hashed).

A policy's ``match.paths`` holds for a request when the path, or any other spelling of it an
upstream may route the same way (:func:`~bastion.http.paths.path_spellings`: trailing slash,
case, backslashes, encoded separators), matches: a spelling is never a way around a limit. A
policy listing ``GET`` also counts ``HEAD``, which every router answers like ``GET``.

A policy whose key part is missing for a request (an anonymous request on a ``user`` policy,
an absent header) does not apply to it: there is nothing to count. Combine such parts with
``ip`` (``ip+user``), or add an ``ip`` policy, where leaving the part out must not escape limits.
"""

from __future__ import annotations

import hashlib
import ipaddress
import itertools
import re
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal
from zoneinfo import ZoneInfo

from bastion.http.asgi import Scope
from bastion.http.client_ip import IPAddress, IPNetwork
from bastion.http.paths import PathGlob, path_spellings
from bastion.http.principal import Principal
from bastion.http.state import RequestState
from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.ratelimit.core import Check, Rule
from bastion.ratelimit.memory import GcraBatch

__all__ = ["CompiledPolicy", "PolicySet", "RequestPlan", "StageName"]

StageName = Literal["gate", "late"]

_CACHE_LIMIT = 4096
_CHECKS_LIMIT = 16384
"""Most (request shape, client) entries of the check cache; beyond, it starts over."""
_VALUE_LIMIT = 64
_PLAIN_VALUE = re.compile(r"[A-Za-z0-9._:@/=+-]{1,64}")
_SLASHES = re.compile(r"/{2,}")
_OWN_ROUTE = "_bastion"
_STATIC_PARTS = frozenset({"ip", "route"})
_PROCESS = secrets.token_hex(6)
"""Makes lease tokens unique across processes sharing a store (request ids may come from
clients, so they cannot be trusted to be unique)."""
_LEASES = itertools.count(1)

_MatchKey = tuple[StageName, str, str, str | None, bytes | None]
_ChecksKey = tuple[StageName, str, str, str | None, bytes | None, str]
_ALLOWED = "allowed"
_SHADOW_LIMITED = "shadow_limited"


def _bounded(value: str) -> str:
    """``value`` itself when short and plain; else a digest, so a client cannot grow keys
    without bound or smuggle the separator ``|`` into them."""
    if len(value) <= _VALUE_LIMIT and _PLAIN_VALUE.fullmatch(value):
        return value
    return "#" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:32]


def _claim(principal: Principal, name: str) -> str | None:
    value = principal.extra.get(name)
    if value is None:
        claims = principal.extra.get("claims")
        value = claims.get(name) if isinstance(claims, dict) else None
    if value is None or isinstance(value, dict | list):
        return None
    return _bounded(str(value))


@dataclass(frozen=True, slots=True)
class CompiledPolicy:
    """One policy made ready for the request path."""

    config: PolicyConfig
    rule: Rule
    parts: tuple[str, ...]
    header_names: tuple[bytes | None, ...]
    """Per key part: the lower-case header name for ``header:`` parts, else ``None``."""
    paths: PathGlob | None
    methods: frozenset[str]
    routes: frozenset[str]
    exempt: tuple[IPNetwork, ...]
    exempt_roles: frozenset[str]
    zone: ZoneInfo | None
    """quota only: the calendar's time zone."""
    static: bool
    """Whether the check depends only on the client address and the route (no header, no
    principal, no calendar window, no per-request lease), so it can be reused."""

    def matches(self, method: str, path: str, route: str | None) -> bool:
        """Whether ``match`` selects a request (``path`` only, not its other spellings)."""
        if self.methods and method not in self.methods:
            return False
        if self.routes and route not in self.routes:
            return False
        return self.paths is None or self.paths.matches(path)

    def matches_any(
        self, method: str, path: str, route: str | None, spellings: Sequence[str]
    ) -> bool:
        """Whether ``match`` selects a request by its path or any other spelling of it."""
        if self.methods and method not in self.methods:
            return False
        if self.routes and route not in self.routes:
            return False
        paths = self.paths
        if paths is None or paths.matches(path):
            return True
        return any(paths.matches(spelling) for spelling in spellings)


def _compile(policy: PolicyConfig) -> CompiledPolicy:
    burst = policy.burst if policy.algorithm == "gcra" and policy.burst else policy.limit
    parts = policy.key_parts
    methods = set(policy.match.methods)
    if "GET" in methods:
        # Routers answer HEAD with the GET handler: a limit on GET must count it too.
        methods.add("HEAD")
    return CompiledPolicy(
        config=policy,
        rule=Rule(policy.name, policy.algorithm, policy.limit, float(policy.period), burst),
        parts=parts,
        header_names=tuple(
            p[7:].lower().encode("latin-1") if p.startswith("header:") else None for p in parts
        ),
        paths=PathGlob(policy.match.paths) if policy.match.paths else None,
        methods=frozenset(methods),
        routes=frozenset(policy.match.routes),
        exempt=tuple(policy.exempt_cidrs),
        exempt_roles=frozenset(policy.exempt_roles),
        zone=ZoneInfo(policy.timezone) if policy.algorithm == "quota" else None,
        static=(
            policy.algorithm not in ("quota", "concurrency")
            and not policy.exempt_roles
            and _STATIC_PARTS.issuperset(parts)
        ),
    )


def quota_window(zone: ZoneInfo, calendar: str, now: float) -> tuple[int, float, float]:
    """``(window id, seconds until it ends, its whole length)`` of the calendar period holding
    ``now`` (epoch seconds) in ``zone``: ids are ``YYYYMMDD`` or ``YYYYMM``."""
    local = datetime.fromtimestamp(now, zone)
    today = local.date()
    if calendar == "day":
        first = today
        following = today + timedelta(days=1)
        window = today.year * 10000 + today.month * 100 + today.day
    else:
        first = today.replace(day=1)
        following = (first + timedelta(days=32)).replace(day=1)
        window = today.year * 100 + today.month
    # Midnights in the zone, so a period holding a DST change is 23 or 25 hours long.
    begin = datetime(first.year, first.month, first.day, tzinfo=zone).timestamp()
    end = datetime(following.year, following.month, following.day, tzinfo=zone).timestamp()
    return window, max(end - now, 1.0), end - begin


class RequestPlan:
    """The policies of one stage for one request shape and client address, made ready once.

    When every matching policy is static (keyed by address and route only), :attr:`checks` is
    the same tuple for every such request, and what depends on the checks alone is computed
    here once instead of per request: the client's bucket, the metric labels of each outcome,
    and (filled by :class:`~bastion.ratelimit.headers.HeaderRenderer` on first use) the encoded
    headers."""

    __slots__ = (
        "batch",
        "checks",
        "client",
        "enforced_only",
        "items",
        "labels",
        "rendering",
        "static",
    )

    def __init__(self, client: str, items: tuple[Check | CompiledPolicy, ...]) -> None:
        self.client = client
        """The client's bucket (:meth:`PolicySet.client`)."""
        self.items = items
        """In policy order: the static policies' checks and the other matching policies (their
        checks are made per request); exempt static policies left out."""
        self.static = all(isinstance(item, Check) for item in items)
        """Whether :attr:`checks` holds every check of the request."""
        checks = tuple(item for item in items if isinstance(item, Check))
        self.checks: tuple[Check, ...] = checks if self.static else ()
        """The request's checks when :attr:`static`; else empty."""
        self.batch = (
            GcraBatch(checks)
            if len(checks) > 1 and all(check.rule.algorithm == "gcra" for check in checks)
            else None
        )
        """The checks compiled for the memory store when they are several and all GCRA (the
        usual per-address policies); ``None`` otherwise (one GCRA check has a faster path of its
        own: :meth:`~bastion.ratelimit.memory.MemoryStore.evaluate_now`)."""
        self.enforced_only = all(check.enforce for check in checks)
        """Whether no check of :attr:`checks` is in shadow mode (so a request allowed was
        allowed by each of them)."""
        self.labels: tuple[tuple[tuple[str, str], tuple[str, str]], ...] = tuple(
            ((c.rule.policy, _ALLOWED), (c.rule.policy, _SHADOW_LIMITED)) for c in self.checks
        )
        """Per check: its ``bastion_ratelimit_decisions_total`` labels when it allowed the
        request and when it refused a request allowed anyway (shadow)."""
        self.rendering: tuple[bytes, tuple[tuple[int, bytes], ...]] | None = None
        """The ``RateLimit-Policy`` value of :attr:`checks` and, per enforced check, its index
        and the start of its ``RateLimit`` item (set by the header renderer)."""


class PolicySet:
    """The compiled policies of one ``[ratelimit]`` section.

    ``prefix`` is Bastion's reserved path prefix: requests below it count as route
    ``_bastion`` for ``route`` keys. ``clock`` gives epoch seconds (quota calendars).
    """

    def __init__(
        self, config: RateLimitConfig, *, prefix: str, clock: Callable[[], float] | None = None
    ) -> None:
        self.config = config
        compiled = [_compile(policy) for policy in config.effective_policies()]
        self.early: tuple[CompiledPolicy, ...] = tuple(p for p in compiled if p.config.early)
        self.late: tuple[CompiledPolicy, ...] = tuple(p for p in compiled if not p.config.early)
        self.by_name = {p.config.name: p for p in compiled}
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        self._clock = clock or time.time
        self._v4 = config.ipv4_prefix
        self._v6 = config.ipv6_prefix
        self._clients: dict[str, tuple[str, IPAddress | None]] = {}
        self._matches: dict[_MatchKey, tuple[CompiledPolicy, ...]] = {}
        self._plans: dict[_ChecksKey, RequestPlan] = {}
        """Per request shape and client address: its :class:`RequestPlan`."""

    @property
    def has_concurrency(self) -> bool:
        """Whether any policy holds slots that must be released."""
        return any(p.rule.algorithm == "concurrency" for p in self.by_name.values())

    def client(self, ip: str) -> tuple[str, IPAddress | None]:
        """The bucket of a client address (its network at the configured prefix length) and the
        parsed address (``None`` when the peer is not an IP, e.g. a Unix socket)."""
        cached = self._clients.get(ip)
        if cached is not None:
            return cached
        try:
            address: IPAddress | None = ipaddress.ip_address(ip)
        except ValueError:
            address = None
        result: tuple[str, IPAddress | None]
        if address is None:
            result = (_bounded(ip), None)
        else:
            bits = self._v4 if address.version == 4 else self._v6
            if bits == address.max_prefixlen:
                result = (str(address), address)
            else:
                network = ipaddress.ip_network(f"{address}/{bits}", strict=False)
                result = (str(network), address)
        if len(self._clients) >= _CACHE_LIMIT:
            self._clients.clear()
        self._clients[ip] = result
        return result

    def _route(self, path: str, state: RequestState) -> str | None:
        if path == self._prefix or path.startswith(self._prefix_slash):
            return _OWN_ROUTE
        return state.route.name if state.route is not None else None

    def _shape(self, scope: Scope, state: RequestState, stage: StageName) -> _MatchKey:
        path: str = scope["path"]
        raw: bytes | None = scope.get("raw_path")
        # An encoded separator is a spelling of its own: the decoded path alone does not tell
        # ``/a%2Fb`` from ``/a/b``, so such requests are told apart by their raw path.
        encoded = raw if raw is not None and b"%" in raw else None
        return (stage, scope.get("method", "GET"), path, self._route(path, state), encoded)

    def matching(
        self, scope: Scope, state: RequestState, stage: StageName
    ) -> Sequence[CompiledPolicy]:
        """The policies of ``stage`` whose ``match`` selects this request (cached)."""
        return self._matching(scope, self._shape(scope, state, stage))

    def _matching(self, scope: Scope, shape: _MatchKey) -> tuple[CompiledPolicy, ...]:
        found = self._matches.get(shape)
        if found is None:
            stage, method, path, route, _ = shape
            pool = self.early if stage == "gate" else self.late
            clean = _SLASHES.sub("/", path) if "//" in path else path
            spellings = path_spellings(scope, clean)
            found = tuple(p for p in pool if p.matches_any(method, clean, route, spellings))
            if len(self._matches) >= _CACHE_LIMIT:
                self._matches.clear()
            self._matches[shape] = found
        return found

    def plan_for(self, scope: Scope, state: RequestState, stage: StageName) -> RequestPlan:
        """The :class:`RequestPlan` of this request's shape and client address (cached)."""
        path: str = scope["path"]
        raw: bytes | None = scope.get("raw_path")
        if path == self._prefix or path.startswith(self._prefix_slash):
            route: str | None = _OWN_ROUTE
        else:
            found = state.route
            route = found.name if found is not None else None
        key = (
            stage,
            scope.get("method", "GET"),
            path,
            route,
            raw if raw is not None and b"%" in raw else None,
            state.client_ip,
        )
        plan = self._plans.get(key)
        if plan is None:
            plan = self._prepare(scope, state, key[:5])
            if len(self._plans) >= _CHECKS_LIMIT:
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def checks_for(self, scope: Scope, state: RequestState, *, stage: StageName) -> Sequence[Check]:
        """The checks of the ``stage`` policies that apply to this request.

        Checks of static policies (keyed by address and route only) are made once per request
        shape and client address and reused."""
        return self.plan_checks(self.plan_for(scope, state, stage), scope, state)

    def plan_checks(self, plan: RequestPlan, scope: Scope, state: RequestState) -> Sequence[Check]:
        """The checks of ``plan`` for this request: :attr:`~RequestPlan.checks` when it is
        static, else its static checks and those of its other policies made for this request."""
        if plan.static:
            return plan.checks
        checks: list[Check] = []
        for item in plan.items:
            if isinstance(item, Check):
                checks.append(item)
            else:
                check = self.check(item, scope, state)
                if check is not None:
                    checks.append(check)
        return checks

    def _prepare(self, scope: Scope, state: RequestState, shape: _MatchKey) -> RequestPlan:
        items: list[Check | CompiledPolicy] = []
        for policy in self._matching(scope, shape):
            if not policy.static:
                items.append(policy)
                continue
            check = self.check(policy, scope, state)
            if check is not None:
                items.append(check)
        return RequestPlan(self.client(state.client_ip)[0], tuple(items))

    def check(self, policy: CompiledPolicy, scope: Scope, state: RequestState) -> Check | None:
        """``policy`` applied to this request, ignoring its ``match``; ``None`` when the request
        is exempt or lacks a key part. A concurrency check carries a lease unique to this
        request, so giving its slot back frees this request's slot and no other."""
        bucket, address = self.client(state.client_ip)
        if (
            policy.exempt
            and address is not None
            and any(address in network for network in policy.exempt)
        ):
            return None
        principal = state.principal if isinstance(state.principal, Principal) else None
        if (
            policy.exempt_roles
            and principal is not None
            and not policy.exempt_roles.isdisjoint(principal.roles)
        ):
            return None
        values: list[str] = [policy.config.name]
        for part, header in zip(policy.parts, policy.header_names, strict=True):
            value = self._part(part, header, bucket, scope, state, principal)
            if value is None:
                return None
            values.append(value)
        key = "|".join(values)
        config = policy.config
        enforce = config.mode == "enforce"
        if policy.zone is not None:
            window, remaining, _ = quota_window(policy.zone, config.calendar, self._clock())
            rule = Rule(config.name, "quota", config.limit, remaining, config.limit)
            return Check(rule, key, config.cost, enforce, window)
        if policy.rule.algorithm == "concurrency":
            lease = f"{state.request_id}.{_PROCESS}.{next(_LEASES):x}"
            return Check(policy.rule, key, config.cost, enforce, lease=lease)
        return Check(policy.rule, key, config.cost, enforce)

    def _part(
        self,
        part: str,
        header: bytes | None,
        bucket: str,
        scope: Scope,
        state: RequestState,
        principal: Principal | None,
    ) -> str | None:
        if part == "ip":
            return "ip:" + bucket
        if header is not None:
            for name, raw in scope["headers"]:
                if name == header:
                    return part + "=" + _bounded(raw.decode("latin-1").strip())
            return None
        if part == "route":
            route = self._route(scope["path"], state)
            return None if route is None else "route:" + route
        if principal is None:
            return None
        if part == "user":
            return "user:" + _bounded(principal.subject)
        if part == "api_key":
            key_id = principal.extra.get("key_id") if principal.method == "api_key" else None
            return None if key_id is None else "api_key:" + _bounded(str(key_id))
        if part == "tenant":
            tenant = principal.extra.get("tenant")
            return None if tenant is None else "tenant:" + _bounded(str(tenant))
        claim = _claim(principal, part[6:])
        return None if claim is None else part + "=" + claim

    def window_length(self, check: Check) -> float:
        """The whole period of a check's policy in seconds (a quota's current calendar
        period), for the ``w`` parameter of ``RateLimit-Policy``."""
        policy = self.by_name[check.rule.policy]
        if policy.zone is None:
            return policy.rule.period
        return quota_window(policy.zone, policy.config.calendar, self._clock())[2]
