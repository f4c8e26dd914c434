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
from bastion.ratelimit.policies import PolicySet

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

    __slots__ = ("applied_policies", "entries", "held", "rendered")

    def __init__(self) -> None:
        self.entries: list[tuple[Check, Decision]] = []
        """Enforced checks and their decisions, in the order they were made."""
        self.applied_policies: set[str] = set()
        """Every policy that counted the request, shadow ones included."""
        self.held: list[tuple[SlotHolder, list[Check]]] = []
        """Concurrency slots to give back when the response completes."""
        self.rendered = False
        """Set when a refusal already carried the headers (they are not added twice)."""

    def add(self, checks: Sequence[Check], decisions: Sequence[Decision]) -> None:
        for check, decision in zip(checks, decisions, strict=False):
            self.applied_policies.add(check.rule.policy)
            if check.enforce:
                self.entries.append((check, decision))

    def applied(self, policy: str) -> bool:
        """Whether ``policy`` already counted this request."""
        return policy in self.applied_policies


class HeaderRenderer:
    """Turns a report into header pairs; each policy's ``RateLimit-Policy`` item is encoded
    once (a quota's window length changes with the calendar, so it is encoded when used)."""

    def __init__(self, policies: PolicySet, *, legacy: bool) -> None:
        self._policies = policies
        self._legacy = legacy
        self._items: dict[str, bytes] = {}
        for name, policy in policies.by_name.items():
            rule = policy.rule
            if rule.algorithm != "quota":
                self._items[name] = self._item(name, rule.algorithm, rule.limit, rule.period)

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

    def render(self, report: RateLimitReport) -> list[tuple[bytes, bytes]]:
        """The header pairs for ``report``; empty when no enforced policy applied."""
        entries = report.entries
        if not entries:
            return []
        seen: set[str] = set()
        items: list[bytes] = []
        for check, _ in entries:
            if check.rule.policy not in seen:
                seen.add(check.rule.policy)
                items.append(self._policy_item(check))
        check, decision = min(entries, key=lambda entry: (entry[1].remaining, -entry[1].reset))
        reset = max(0, math.ceil(decision.reset))
        remaining = max(0, decision.remaining)
        headers = [
            (_POLICY, b", ".join(items)),
            (_RATELIMIT, f'"{check.rule.policy}";r={remaining};t={reset}'.encode("ascii")),
        ]
        if self._legacy:
            headers += [
                (_LEGACY_LIMIT, str(decision.limit).encode("ascii")),
                (_LEGACY_REMAINING, str(remaining).encode("ascii")),
                (_LEGACY_RESET, str(reset).encode("ascii")),
            ]
        return headers

    def render_text(self, report: RateLimitReport) -> dict[str, str]:
        """:meth:`render` as the ``headers`` of a problem response."""
        return {name.decode("ascii"): value.decode("ascii") for name, value in self.render(report)}
