"""``RateLimit-Policy`` and ``RateLimit`` headers (draft-ietf-httpapi-ratelimit-headers).

Both are RFC 8941 structured-field lists whose items are policy names as sf-strings:

- ``RateLimit-Policy: "global";q=1200;w=60, "api";q=100;w=60`` — every enforced policy that
  applied to the request: ``q`` its quota, ``w`` its window in seconds; a concurrency policy
  has no window and says ``qu="concurrent-requests"`` instead.
- ``RateLimit: "api";r=0;t=17`` — the most restrictive decision only (lowest remaining, then
  the longest wait): ``r`` units remaining, ``t`` seconds until the quota is back.

Shadow policies are never reported to clients: they are an operator's experiment. Legacy
``X-RateLimit-Limit/-Remaining/-Reset`` describe the same most restrictive decision.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Protocol

from bastion.ratelimit.core import Check, Decision
from bastion.ratelimit.policies import PolicySet, RequestPlan

__all__ = [
    "REPORT_KEY",
    "HeaderRenderer",
    "RateLimitReport",
    "SlotHolder",
    "retry_after_seconds",
]

REPORT_KEY = "bastion.ratelimit.report"
"""Key under ``scope["state"]`` of the request's :class:`RateLimitReport`."""

_POLICY = b"ratelimit-policy"
_RATELIMIT = b"ratelimit"
_LEGACY_LIMIT = b"x-ratelimit-limit"
_LEGACY_REMAINING = b"x-ratelimit-remaining"
_LEGACY_RESET = b"x-ratelimit-reset"


class SlotHolder(Protocol):
    """A store that gives back concurrency slots."""

    async def release(self, checks: Sequence[Check]) -> None: ...


def retry_after_seconds(seconds: float) -> int:
    """Whole seconds for ``Retry-After``: rounded up, at least 1."""
    return max(1, math.ceil(seconds))


class RateLimitReport:
    """What the rate-limit stages (and the ``rate_limit`` dependency) decided for one request.

    The first of them to run creates it and renders the headers when the response starts, so
    decisions made further in (after authentication, in a route) are included."""

    __slots__ = ("batches", "held", "plan", "rendered")

    def __init__(self) -> None:
        self.batches: list[tuple[Sequence[Check], Sequence[Decision]]] = []
        """Each store call's checks and their decisions (one per check), in the order made;
        shadow ones included."""
        self.plan: RequestPlan | None = None
        """The plan whose checks are the first batch, when a stage decided them from one (its
        headers are then encoded from what the plan keeps)."""
        self.held: list[tuple[SlotHolder, list[Check]]] = []
        """Concurrency slots to give back when the response completes."""
        self.rendered = False
        """Set when a refusal already carried the headers (they are not added twice)."""

    def add(self, checks: Sequence[Check], decisions: Sequence[Decision]) -> None:
        """Record one store call: ``decisions[i]`` is the outcome of ``checks[i]``."""
        self.batches.append((checks, decisions))

    @property
    def entries(self) -> list[tuple[Check, Decision]]:
        """Enforced checks and their decisions, in the order they were made."""
        return [
            (check, decision)
            for checks, decisions in self.batches
            for check, decision in zip(checks, decisions, strict=False)
            if check.enforce
        ]

    def applied(self, policy: str) -> bool:
        """Whether ``policy`` already counted this request."""
        return any(check.rule.policy == policy for checks, _ in self.batches for check in checks)


def _more_restrictive(decision: Decision, than: Decision) -> bool:
    """Whether ``decision`` is the one the headers report over ``than``: fewer requests
    remaining, or as many and a longer wait."""
    return decision.remaining < than.remaining or (
        decision.remaining == than.remaining and decision.reset > than.reset
    )


class HeaderRenderer:
    """Turns a report into header pairs. The ``RateLimit-Policy`` value of each combination of
    policies is encoded once (a quota's window length changes with the calendar, so a
    combination holding a quota is encoded when used)."""

    def __init__(self, policies: PolicySet, *, legacy: bool) -> None:
        self._policies = policies
        self._legacy = legacy
        self._items: dict[str, bytes] = {}
        self._quotas = frozenset(
            name for name, policy in policies.by_name.items() if policy.rule.algorithm == "quota"
        )
        for name, policy in policies.by_name.items():
            rule = policy.rule
            if rule.algorithm != "quota":
                self._items[name] = self._item(name, rule.algorithm, rule.limit, rule.period)
        self._values: dict[tuple[str, ...], bytes] = {}
        """Policy names in report order → the ``RateLimit-Policy`` value."""
        self._prefixes = {name: f'"{name}";r='.encode("ascii") for name in policies.by_name}
        """The start of each policy's ``RateLimit`` item."""

    @staticmethod
    def _item(name: str, algorithm: str, quota: int, window: float) -> bytes:
        if algorithm == "concurrency":
            return f'"{name}";q={quota};qu="concurrent-requests"'.encode("ascii")
        return f'"{name}";q={quota};w={math.ceil(window)}'.encode("ascii")

    def _policy_item(self, check: Check) -> bytes:
        item = self._items.get(check.rule.policy)
        if item is None:
            window = self._policies.window_length(check)
            item = self._item(check.rule.policy, "quota", check.rule.limit, window)
        return item

    def _policy_value(self, names: tuple[str, ...], report: RateLimitReport) -> bytes:
        items: dict[str, bytes] = {}
        for checks, _ in report.batches:
            for check in checks:
                if check.enforce and check.rule.policy not in items:
                    items[check.rule.policy] = self._policy_item(check)
        value = b", ".join(items.values())
        if self._quotas.isdisjoint(names):
            if len(self._values) >= 1024:
                self._values.clear()
            self._values[names] = value
        return value

    def _plan_rendering(self, plan: RequestPlan) -> tuple[bytes, tuple[tuple[int, bytes], ...]]:
        """What :attr:`RequestPlan.rendering` keeps: the ``RateLimit-Policy`` value of the
        plan's enforced checks and, per enforced check, its index and ``RateLimit`` prefix."""
        items: dict[str, bytes] = {}
        enforced: list[tuple[int, bytes]] = []
        for index, check in enumerate(plan.checks):
            if check.enforce:
                name = check.rule.policy
                enforced.append((index, self._prefix(name)))
                if name not in items:
                    items[name] = self._policy_item(check)
        rendering = (b", ".join(items.values()), tuple(enforced))
        plan.rendering = rendering
        return rendering

    def render(self, report: RateLimitReport) -> list[tuple[bytes, bytes]]:
        """The header pairs for ``report``; empty when no enforced policy applied."""
        plan = report.plan
        if plan is not None and len(report.batches) == 1:
            # One stage decided every check, from a plan: its encoding is made once.
            rendering = plan.rendering
            if rendering is None:
                rendering = self._plan_rendering(plan)
            encoded, enforced = rendering
            if not enforced:
                return []
            decisions = report.batches[0][1]
            index, prefix = enforced[0]
            top = decisions[index]
            for index, start in enforced:
                decision = decisions[index]
                if _more_restrictive(decision, top):
                    top, prefix = decision, start
            return self._pairs(encoded, prefix, top)
        names: list[str] = []
        best_name = ""
        best: Decision | None = None
        for checks, decisions in report.batches:
            for check, decision in zip(checks, decisions, strict=False):
                if check.enforce:
                    name = check.rule.policy
                    names.append(name)
                    if best is None or _more_restrictive(decision, best):
                        best_name, best = name, decision
        if best is None:
            return []
        key = tuple(names)
        policy = self._values.get(key)
        if policy is None:
            policy = self._policy_value(key, report)
        return self._pairs(policy, self._prefix(best_name), best)

    def _prefix(self, name: str) -> bytes:
        """The start of a ``RateLimit`` item for policy ``name``, up to its ``r=``."""
        return self._prefixes.get(name) or f'"{name}";r='.encode("ascii")

    def _pairs(self, policy: bytes, prefix: bytes, best: Decision) -> list[tuple[bytes, bytes]]:
        reset = math.ceil(best.reset)
        remaining = best.remaining
        value = prefix + b"%d;t=%d" % (remaining if remaining > 0 else 0, reset if reset > 0 else 0)
        headers = [(_POLICY, policy), (_RATELIMIT, value)]
        if self._legacy:
            headers += [
                (_LEGACY_LIMIT, b"%d" % best.limit),
                (_LEGACY_REMAINING, b"%d" % max(0, remaining)),
                (_LEGACY_RESET, b"%d" % max(0, reset)),
            ]
        return headers

    def render_text(self, report: RateLimitReport) -> dict[str, str]:
        """:meth:`render` as the ``headers`` of a problem response."""
        return {name.decode("ascii"): value.decode("ascii") for name, value in self.render(report)}
