"""What the alert rules measure: sliding windows, per-rule readings and episodes.

Windows are rings of 60 slots (a slot is a sixtieth of the window, at least a second), so memory
is fixed per rule whatever the traffic. ``latency_p95`` keeps a fixed-bucket histogram per slot
with the rule's threshold as a bucket edge, so "p95 above the threshold" is decided exactly and
the reported p95 is the upper edge of its bucket. ``per = "ip"`` rules keep a smaller ring (12
slots) per client address in a table of at most ``max_tracked_ips``; an address idle for a whole
window makes room for a new one, and when none is idle new addresses are counted together under
``other``, so rotating addresses neither grows memory nor erases the counts of an active one.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bastion.auth.throttle import ip_bucket
from bastion.observe.config import UNROUTED, AlertRuleConfig

__all__ = [
    "BUILTIN_RULES",
    "EVENT_KINDS",
    "OTHER",
    "UNROUTED",
    "Alert",
    "AnyRule",
    "Client",
    "CountRule",
    "Episode",
    "ErrorRateRule",
    "LatencyRule",
    "PerIpRule",
    "Reading",
    "RequestRule",
    "Rule",
    "SlidingCount",
]

OTHER = "other"
"""The key under which ``per = "ip"`` rules count addresses beyond ``max_tracked_ips``."""

_SLOTS = 60
_IP_SLOTS = 12

EVENT_KINDS: dict[str, tuple[str, ...]] = {
    "auth_failures": (
        "auth.login.failed",
        "auth.login.lockout",
        "auth.mfa.verify_failed",
        "auth.mfa.disable_failed",
        "auth.mfa.reauthentication_failed",
        "auth.token.reused",
    ),
    "bans": ("ratelimit.banned", "inspect.strike.blocked"),
    "waf_blocks": ("inspect.blocked",),
}
"""Audit event kinds counted by each event rule kind."""

_UNITS = {"error_rate": "percent", "latency_p95": "ms"}

_LATENCY_EDGES_MS = (
    1, 2, 5, 10, 20, 50, 100, 150, 200, 300, 400, 500, 750,
    1000, 1500, 2000, 3000, 5000, 7500, 10000, 20000, 30000, 60000,
)  # fmt: skip
"""Histogram bucket edges of ``latency_p95`` rules; the rule's threshold is added to them."""

BUILTIN_RULES: tuple[AlertRuleConfig, ...] = (
    AlertRuleConfig(name="error-rate", kind="error_rate", threshold=5, window=300, min_requests=50),
    AlertRuleConfig(
        name="latency-p95", kind="latency_p95", threshold=1000, window=300, min_requests=50
    ),
    AlertRuleConfig(name="auth-failures-ip", kind="auth_failures", threshold=20, per="ip"),
    AlertRuleConfig(name="auth-failures", kind="auth_failures", threshold=100),
    AlertRuleConfig(name="bans", kind="bans", threshold=10, window=300),
    AlertRuleConfig(name="waf-blocks", kind="waf_blocks", threshold=50, window=300),
    AlertRuleConfig(name="store-errors", kind="store_errors", threshold=5),
)
"""The rules used when ``[alerts]`` is enabled without any ``[[alerts.rules]]``."""


def _slot_count(window: float, slots: int) -> int:
    """Slots of a window: ``slots``, fewer when that would make a slot shorter than a second."""
    return max(1, min(slots, int(window)))


class SlidingCount:
    """Events in a sliding window, kept as a ring of per-slot counts."""

    __slots__ = ("_counts", "_size", "_stamps", "_width", "last")

    def __init__(self, window: float, slots: int) -> None:
        self._size = _slot_count(window, slots)
        self._width = window / self._size
        self._counts = [0] * self._size
        self._stamps = [-1] * self._size
        self.last = -(2**62)
        """Slot of the latest event."""

    def add(self, now: float, amount: int = 1) -> None:
        slot = int(now / self._width)
        index = slot % self._size
        if self._stamps[index] != slot:
            self._stamps[index] = slot
            self._counts[index] = amount
        else:
            self._counts[index] += amount
        self.last = slot

    def total(self, now: float) -> int:
        """Events of the last window (to within one slot)."""
        oldest = int(now / self._width) - self._size
        return sum(c for c, s in zip(self._counts, self._stamps, strict=True) if s > oldest)

    def idle(self, now: float) -> bool:
        """No event for a whole window."""
        return int(now / self._width) - self.last >= self._size


@dataclass(slots=True)
class Alert:
    """One transition of an episode, as delivered."""

    state: str
    """``firing`` or ``resolved``."""
    rule: AlertRuleConfig
    value: float
    episode: str
    started_at: float
    """Wall-clock time the episode fired (Unix seconds)."""
    client_ip: str | None = None
    resolved_at: float | None = None
    requests: int | None = None

    def payload(self, instance: str) -> dict[str, Any]:
        """The webhook body: ``type``, ``timestamp`` and ``data`` (Standard Webhooks shape)."""
        rule = self.rule
        when = self.resolved_at if self.resolved_at is not None else self.started_at
        data: dict[str, Any] = {
            "id": self.episode,
            "rule": rule.name,
            "kind": rule.kind,
            "severity": rule.severity,
            "per": rule.per,
            "value": round(self.value, 3),
            "threshold": rule.threshold,
            "unit": _UNITS.get(rule.kind, "events"),
            "window_seconds": rule.window,
            "started_at": _iso(self.started_at),
            "instance": instance,
        }
        if self.client_ip is not None:
            data["client_ip"] = self.client_ip
        if self.requests is not None:
            data["requests"] = self.requests
        if self.resolved_at is not None:
            data["resolved_at"] = _iso(self.resolved_at)
        return {"type": f"alert.{self.state}", "timestamp": _iso(when), "data": data}


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat().replace("+00:00", "Z")


@dataclass(slots=True)
class Episode:
    """Where one rule (for one address) stands: idle, pending, firing or clearing."""

    pending_since: float | None = None
    firing: bool = False
    episode: str = ""
    started_at: float = 0.0
    clear_since: float | None = None

    @property
    def active(self) -> bool:
        """Pending, firing or clearing: the episode can still change without new events."""
        return self.firing or self.pending_since is not None or self.clear_since is not None


@dataclass(slots=True)
class Reading:
    value: float
    holds: bool
    requests: int | None = None


class Rule:
    """A rule's configuration and its episode (``per = "ip"`` rules keep one per client)."""

    __slots__ = ("config", "episode")

    def __init__(self, config: AlertRuleConfig) -> None:
        self.config = config
        self.episode = Episode()


class CountRule(Rule):
    """Events over the window, all clients together."""

    __slots__ = ("counts",)

    def __init__(self, config: AlertRuleConfig) -> None:
        super().__init__(config)
        self.counts = SlidingCount(config.window, _SLOTS)

    def read(self, now: float) -> Reading:
        total = self.counts.total(now)
        return Reading(total, total > self.config.threshold)


class RequestRule(Rule):
    """A ring of per-slot rows of counters over answered requests. The row of the current
    slot is kept at hand, so a request in the same slot as the previous one costs a comparison
    and an increment."""

    __slots__ = ("buckets", "row", "rows", "size", "slot_end", "stamps", "width")

    def __init__(self, config: AlertRuleConfig, buckets: int) -> None:
        super().__init__(config)
        self.buckets = buckets
        self.size = _slot_count(config.window, _SLOTS)
        self.width = config.window / self.size
        self.rows = [[0] * buckets for _ in range(self.size)]
        self.stamps = [-1] * self.size
        self.row = self.rows[0]
        self.slot_end = -math.inf
        """When the current slot ends: the next request after it moves to a fresh row."""

    def roll(self, now: float) -> None:
        slot = int(now / self.width)
        index = slot % self.size
        if self.stamps[index] != slot:
            self.stamps[index] = slot
            self.rows[index] = [0] * self.buckets
        self.row = self.rows[index]
        self.slot_end = (slot + 1) * self.width

    def merged(self, now: float) -> list[int]:
        """The rows of the last window, added up."""
        oldest = int(now / self.width) - self.size
        total = [0] * self.buckets
        for row, stamp in zip(self.rows, self.stamps, strict=True):
            if stamp > oldest:
                for bucket, count in enumerate(row):
                    total[bucket] += count
        return total


class ErrorRateRule(RequestRule):
    """Percent of answered requests with a 5xx status: per slot ``[answered, errors]``."""

    __slots__ = ()

    def __init__(self, config: AlertRuleConfig) -> None:
        super().__init__(config, 2)

    def observe(self, now: float, status: int, seconds: float) -> None:
        if now >= self.slot_end:
            self.roll(now)
        row = self.row
        row[0] += 1
        if status >= 500:
            row[1] += 1

    def read(self, now: float) -> Reading:
        answered, errors = self.merged(now)
        if answered == 0:
            return Reading(0.0, False, 0)
        rate = 100.0 * errors / answered
        holds = answered >= self.config.min_requests and rate > self.config.threshold
        return Reading(rate, holds, answered)


class LatencyRule(RequestRule):
    """95th percentile of request durations: a fixed-bucket histogram per slot, with the
    threshold as one of the bucket edges."""

    __slots__ = ("edges", "edges_ms", "limit")

    def __init__(self, config: AlertRuleConfig) -> None:
        edges_ms = sorted({*_LATENCY_EDGES_MS, config.threshold})
        super().__init__(config, len(edges_ms) + 1)
        self.edges_ms = edges_ms
        self.edges = [edge / 1000.0 for edge in edges_ms]
        self.limit = edges_ms.index(config.threshold)
        """Buckets up to this index hold durations at or below the threshold."""

    def observe(self, now: float, status: int, seconds: float) -> None:
        if now >= self.slot_end:
            self.roll(now)
        self.row[bisect_left(self.edges, seconds)] += 1

    def read(self, now: float) -> Reading:
        merged = self.merged(now)
        answered = sum(merged)
        if answered == 0:
            return Reading(0.0, False, 0)
        rank = math.ceil(0.95 * answered)
        seen = 0
        bucket = 0
        for bucket, count in enumerate(merged):  # noqa: B007 - the bucket is used below
            seen += count
            if seen >= rank:
                break
        value = float(self.edges_ms[min(bucket, len(self.edges_ms) - 1)])
        holds = answered >= self.config.min_requests and bucket > self.limit
        return Reading(value, holds, answered)


@dataclass(slots=True)
class Client:
    """One address of a ``per = "ip"`` rule: its counts and its episode."""

    key: str
    counts: SlidingCount
    episode: Episode = field(default_factory=Episode)


class PerIpRule(Rule):
    """Events over the window per client network, in a bounded table.

    Addresses are keyed like the login throttle keys them (:func:`ip_bucket`: IPv6 by /64,
    IPv4-mapped IPv6 as IPv4), so one host rotating through its /64 is one client. Clients
    with an active episode (pending, firing or clearing) are kept out of the eviction order,
    so they never stop idle ones from being forgotten; making room looks at one entry.
    """

    __slots__ = ("active", "capacity", "clients", "dirty", "other", "pinned")

    def __init__(self, config: AlertRuleConfig, capacity: int) -> None:
        super().__init__(config)
        self.capacity = capacity
        self.clients: OrderedDict[str, Client] = OrderedDict()
        """Tracked clients without an active episode, least recently seen first."""
        self.pinned: dict[str, Client] = {}
        """Tracked clients with an active episode: never evicted."""
        self.other = Client(OTHER, SlidingCount(config.window, _IP_SLOTS))
        self.dirty: dict[str, Client] = {}
        """Clients with events since the last evaluation."""
        self.active = self.pinned
        """Clients with a pending, firing or clearing episode (the same table as ``pinned``)."""

    def __len__(self) -> int:
        return len(self.clients) + len(self.pinned)

    def add(self, ip: str | None, now: float) -> None:
        key = ip_bucket(ip) if ip is not None else None
        client: Client | None
        if key is None:
            client = self.other
        elif (client := self.pinned.get(key)) is None:
            client = self.clients.get(key)
            if client is not None:
                self.clients.move_to_end(key)  # most recently seen
            elif len(self) < self.capacity or self._evict(now):
                client = Client(key, SlidingCount(self.config.window, _IP_SLOTS))
                self.clients[key] = client
            else:
                client = self.other
        client.counts.add(now)
        self.dirty[client.key] = client

    def _evict(self, now: float) -> bool:
        """Make room by forgetting the least recently seen idle client (one look)."""
        if not self.clients:
            return False
        oldest = next(iter(self.clients.values()))
        if oldest.counts.idle(now):
            self.clients.popitem(last=False)
            return True
        return False

    def settle(self, client: Client) -> None:
        """Move ``client`` between the eviction order and the pinned table after evaluation."""
        if client is self.other:
            return
        if client.episode.active:
            if self.clients.pop(client.key, None) is not None:
                self.pinned[client.key] = client
        elif self.pinned.pop(client.key, None) is not None:
            self.clients[client.key] = client

    def candidates(self) -> list[Client]:
        """The clients whose episode can change at this evaluation."""
        found = {**self.active, **self.dirty}
        self.dirty = {}
        return list(found.values())


AnyRule = CountRule | ErrorRateRule | LatencyRule | PerIpRule
"""Every kind of rule the engine evaluates."""
