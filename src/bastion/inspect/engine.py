"""The inspection engine: every detector over every location, the protocol checks once, and an
anomaly score as in the OWASP CRS.

Each rule adds its severity once per request however many locations it matched (as a CRS rule's
``setvar`` runs once), so repeated weak signals in a long form do not add up to a block on their
own. Exclusions, per-route overrides and sensitive fields are compiled once, at construction.
"""

from __future__ import annotations

import logging
import posixpath
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import re2

from bastion.http.paths import GlobMatcher, compile_glob
from bastion.inspect.config import ExclusionConfig, InspectConfig, InspectMode
from bastion.inspect.core import Detector, Location, LocationKind, Match, Normalized, Severity
from bastion.inspect.locations import AUTH_PATH_PREFIX, Budget, location_of, raw_values
from bastion.inspect.request import InspectionRequest

__all__ = ["ERROR_RULE", "InspectionVerdict", "Inspector", "ProtocolCheck"]

logger = logging.getLogger("bastion.inspect")

ProtocolCheck = Callable[[InspectionRequest, int], list[Match]]
"""Request-level checks: ``(request, paranoia) -> matches``."""

ERROR_RULE = "protocol-inspection-error"
"""Rule id of the match recorded when a detector fails on a value: the value went uninspected,
so the request is scored as a critical finding rather than let through (fail closed)."""


@dataclass(frozen=True, slots=True)
class InspectionVerdict:
    """The outcome of inspecting one request."""

    blocked: bool
    """Refuse the request: the score reached the threshold in ``block`` mode (403), or a limit
    was exceeded under ``over_limit = "reject"`` (then ``too_large`` is set: 413)."""
    score: int
    """Sum of the severities of the rules that matched (each rule counted once)."""
    matches: tuple[Match, ...]
    """Every finding, in inspection order (a rule may appear at several locations)."""
    flagged: bool = False
    """The score reached the threshold, whatever the mode (what ``monitor`` reports)."""
    too_large: bool = False
    """The request exceeded an inspection limit and the policy is ``reject``."""
    truncated: bool = False
    """Part of the request was not inspected (``inspect-prefix`` let it through)."""
    mode: InspectMode = "block"
    """The mode that applied to this request (after per-route overrides)."""


_PASS = InspectionVerdict(False, 0, (), mode="off")
_MEMO_SIZE = 8192
"""Values whose detector results are remembered (oldest forgotten first)."""
_MEMO_VALUE_MAX = 512
"""Longer values are inspected every time (and never held in memory)."""
_MemoKey = tuple[str, LocationKind, str, int]
"""Value, location kind and name, paranoia level."""


@dataclass(frozen=True, slots=True)
class _Policy:
    mode: InspectMode
    paranoia: int
    threshold: int


class _Exclusion:
    """One ``[[inspect.exclusions]]`` entry, compiled."""

    __slots__ = ("categories", "kind", "name", "name_given", "path", "prefixes", "rules")

    def __init__(self, config: ExclusionConfig) -> None:
        self.path: GlobMatcher = compile_glob(config.path)
        kind, _, name = config.location.partition(":")
        self.kind = kind
        self.name: Any = re2.compile(
            "(?s)" + ".*".join(re2.escape(part) for part in name.lower().split("*")) + "$"
        )
        self.name_given = bool(name)
        self.rules = frozenset(rule for rule in config.rules if not rule.endswith("*"))
        self.prefixes = tuple(rule[:-1] for rule in config.rules if rule.endswith("*"))
        self.categories = frozenset(config.categories)

    def covers(self, location: Location) -> bool:
        if self.kind and location.kind != self.kind:
            return False
        return not self.name_given or self.name.match(location.name.lower()) is not None

    @property
    def whole_location(self) -> bool:
        return not self.rules and not self.prefixes and not self.categories

    def drops(self, match: Match) -> bool:
        return (
            match.rule in self.rules
            or match.category in self.categories
            or (bool(self.prefixes) and match.rule.startswith(self.prefixes))
        )


def routing_path(raw_path: str) -> str:
    """The path an upstream most likely routes ``raw_path`` to: decoded once, ``\\`` as ``/``,
    dot segments resolved; per-route policies and exclusions are chosen by it."""
    path = unquote(raw_path, errors="replace").replace("\\", "/")
    normal = posixpath.normpath("/" + path.lstrip("/"))
    return "/" + normal.lstrip("/")


class Inspector:
    """Inspects requests with ``detectors`` (default: every built-in one) under ``config``."""

    def __init__(
        self,
        config: InspectConfig,
        detectors: Sequence[Detector] | None = None,
        protocol: ProtocolCheck | None = None,
        *,
        auth_prefix: str = AUTH_PATH_PREFIX,
    ) -> None:
        if detectors is None or protocol is None:
            from bastion.inspect import detectors as builtin

            detectors = builtin.default_detectors() if detectors is None else detectors
            protocol = builtin.default_protocol_check() if protocol is None else protocol
        self.config = config
        self.detectors = tuple(detectors)
        self.protocol = protocol
        self.auth_prefix = auth_prefix
        self._default = _Policy(config.mode, config.paranoia, config.threshold)
        self._routes = [
            (compile_glob(route.path), route.mode, route.paranoia, route.threshold)
            for route in config.routes
        ]
        self._exclusions = [_Exclusion(item) for item in config.exclusions]
        self._failed: set[str] = set()
        # Ordered so that the oldest entry goes in O(1): deleting a plain dict's first key
        # leaves a hole its next first-key look-up walks past, thousands once the memo is full.
        self._memo: OrderedDict[_MemoKey, tuple[Match, ...]] = OrderedDict()
        modes: tuple[InspectMode, ...] = ("block", "monitor")
        # The verdict of a request with no finding, shared (verdicts are immutable).
        self._clean = {mode: InspectionVerdict(False, 0, (), mode=mode) for mode in modes}

    def policy(self, path: str) -> _Policy:
        """Mode, paranoia and threshold for a (routing) path: the first matching route's."""
        for matcher, mode, paranoia, threshold in self._routes:
            if matcher.match(path) is not None:
                base = self._default
                return _Policy(
                    mode or base.mode, paranoia or base.paranoia, threshold or base.threshold
                )
        return self._default

    def inspect(self, request: InspectionRequest) -> InspectionVerdict:
        """Score ``request``; never raises."""
        policy = self._default
        exclusions: list[_Exclusion] = []
        if self._routes or self._exclusions:
            # Decoding and normalising the path is only needed to choose a policy.
            raw_path = request.path
            path = routing_path(raw_path)
            if self._routes:
                policy = self.policy(path)
            exclusions = [
                item
                for item in self._exclusions
                if item.path.match(path) is not None and item.path.match(raw_path) is not None
            ]
        if policy.mode == "off":
            return _PASS
        config = self.config
        reject = config.over_limit == "reject"
        if reject and len(request.body) > config.max_request_bytes:
            return InspectionVerdict(True, 0, (), too_large=True, truncated=True, mode=policy.mode)
        paranoia = policy.paranoia
        found: list[Match] = []
        budget = Budget(config.max_request_bytes, config.max_locations)
        memo = self._memo
        for kind, name, raw in raw_values(request, config, budget, auth_prefix=self.auth_prefix):
            # Keyed on the strings themselves (their hashes are cached): a value seen before
            # costs one look-up and builds no object.
            key = (raw, kind, name, paranoia)
            if exclusions:
                location = location_of(kind, name)
                applicable = [item for item in exclusions if item.covers(location)]
                if applicable:
                    if not any(item.whole_location for item in applicable):
                        found += [
                            match
                            for match in self._matches(key)
                            if not any(item.drops(match) for item in applicable)
                        ]
                    continue
            matches = memo.get(key)
            if matches is None:
                matches = self._detect(key)
            found += matches
        try:
            request_matches = self.protocol(request, paranoia)
        except Exception:
            request_matches = [self._failure(self.protocol, Location("method"))]
        for match in request_matches:
            if match.paranoia <= paranoia and not _excluded(match, exclusions):
                found.append(match)
        if not found and not budget.truncated:
            return self._clean[policy.mode]
        return self._verdict(found, policy, budget.truncated and reject, budget.truncated)

    def _matches(self, key: _MemoKey) -> tuple[Match, ...]:
        cached = self._memo.get(key)
        return cached if cached is not None else self._detect(key)

    def _detect(self, key: _MemoKey) -> tuple[Match, ...]:
        """Every detector's matches enabled at the key's paranoia level for one value,
        remembered for short values.

        Detectors are pure functions of (value, location, paranoia), and real traffic repeats
        the same values (user agents, accept headers, paths, ids) over and over: a bounded
        memo turns those into one dictionary look-up. Values a client varies gain nothing but
        cost nothing extra either; long values are never kept.
        """
        raw, kind, name, paranoia = key
        location = location_of(kind, name)
        value = Normalized(raw)
        found: list[Match] = []
        failed = False
        for detector in self.detectors:
            try:
                found.extend(detector(value, location, paranoia))
            except Exception:  # a detector bug must not let the value through uninspected
                found.append(self._failure(detector, location))
                failed = True
        result = tuple(match for match in found if match.paranoia <= paranoia)
        if len(raw) <= _MEMO_VALUE_MAX and not failed:
            memo = self._memo
            if len(memo) >= _MEMO_SIZE:
                memo.popitem(last=False)
            memo[key] = result
        return result

    def _failure(self, check: Callable[..., Any], location: Location) -> Match:
        name = getattr(check, "__qualname__", repr(check))
        if name not in self._failed:
            self._failed.add(name)
            logger.exception("inspection check %s failed; scoring the value as critical", name)
        return Match(ERROR_RULE, "protocol", Severity.CRITICAL, location)

    def _verdict(
        self, found: list[Match], policy: _Policy, too_large: bool, truncated: bool
    ) -> InspectionVerdict:
        severities: dict[str, int] = {}
        # Keyed by the location's strings, whose hashes are cached (a Location hashes in Python).
        unique: dict[tuple[str, str, str], Match] = {}
        for match in found:
            location = match.location
            unique.setdefault((match.rule, location.kind, location.name), match)
            if match.severity > severities.get(match.rule, 0):
                severities[match.rule] = match.severity
        score = sum(severities.values())
        flagged = score >= policy.threshold
        blocked = too_large or (flagged and policy.mode == "block")
        return InspectionVerdict(
            blocked, score, tuple(unique.values()), flagged, too_large, truncated, policy.mode
        )


def _excluded(match: Match, exclusions: list[_Exclusion]) -> bool:
    for item in exclusions:
        if item.covers(match.location) and (item.whole_location or item.drops(match)):
            return True
    return False
