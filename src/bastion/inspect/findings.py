"""What an inspection finding leaves behind: one audit event with the rule ids, categories,
locations, score and a short redacted excerpt of each matched value (DESIGN.md §9). None of it
ever reaches the response (§6): the client only learns its request id.

Excerpts are cut from the values the engine inspected, found again by location (the engine's
matches carry none, and computing them only for the rare blocked request keeps the request path
free of it). Sensitive fields never have a location, so they can never be excerpted.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Any

import re2

from bastion.audit.events import AuditEvent
from bastion.http.state import RequestState
from bastion.inspect.core import Location
from bastion.inspect.engine import InspectionVerdict, Inspector
from bastion.inspect.locations import locations
from bastion.inspect.request import InspectionRequest

__all__ = ["EXCERPT_CHARS", "MAX_REPORTED", "REDACTED", "excerpt", "finding_event", "strike_event"]

EXCERPT_CHARS = 64
"""Longest excerpt of a matched value in an audit event."""
MAX_REPORTED = 16
"""Matches listed one by one in an event (rules, categories and locations are always whole)."""
REDACTED = "[redacted]"
_MAX_TARGET = 256

# Field names whose values are credentials whatever they contain: shown as REDACTED.
_SECRET_NAME = re2.compile(
    r"(?i)pass|secret|token|session|auth|api[-_]?key|otp|csrf|cookie|bearer|jwt|signature"
)
# Credential shapes inside any value: JWTs, Bastion API keys, long opaque tokens.
_SECRET_VALUE = re2.compile(
    r"eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*\.?[A-Za-z0-9_-]*|bst_[A-Za-z0-9_-]{8,}"
    r"|[A-Za-z0-9+/_-]{40,}={0,2}"
)
_UNPRINTABLE = re2.compile(r"[\x00-\x1f\x7f]")


def excerpt(location: Location, value: str) -> str:
    """At most :data:`EXCERPT_CHARS` characters of ``value`` for an audit event: credentials
    replaced by :data:`REDACTED`, control characters by ``?``, a cut marked with ``…``."""
    if location.name and _SECRET_NAME.search(location.name) is not None:
        return REDACTED
    # Redact before cutting, so a cut can never leave a credential's recognisable prefix out.
    text = str(_SECRET_VALUE.sub(REDACTED, value[: EXCERPT_CHARS * 8]))
    text = str(_UNPRINTABLE.sub("?", text))
    if len(text) > EXCERPT_CHARS or len(value) > EXCERPT_CHARS * 8:
        text = text[: EXCERPT_CHARS - 1] + "…"
    return text


def _excerpts(
    request: InspectionRequest, inspector: Inspector, wanted: Collection[Location]
) -> dict[Location, str]:
    found: dict[Location, str] = {}
    for location, value in locations(request, inspector.config, auth_prefix=inspector.auth_prefix):
        if location in wanted and location not in found:
            found[location] = excerpt(location, value.raw)
            if len(found) == len(wanted):
                break
    return found


def finding_event(
    request: InspectionRequest,
    verdict: InspectionVerdict,
    inspector: Inspector,
    state: RequestState,
) -> AuditEvent:
    """``inspect.blocked`` (refused) or ``inspect.detected`` (monitor mode: forwarded)."""
    listed = verdict.matches[:MAX_REPORTED]
    texts = _excerpts(request, inspector, {match.location for match in listed})
    matches: list[dict[str, Any]] = []
    for match in listed:
        item: dict[str, Any] = {
            "rule": match.rule,
            "category": match.category,
            "location": match.location.label(),
        }
        shown = texts.get(match.location)
        if shown is not None:
            item["excerpt"] = shown
        matches.append(item)
    detail: dict[str, Any] = {
        "mode": verdict.mode,
        "score": verdict.score,
        "method": request.method,
        "rules": sorted({match.rule for match in verdict.matches}),
        "categories": sorted({match.category for match in verdict.matches}),
        "locations": sorted({match.location.label() for match in verdict.matches}),
        "matches": matches,
    }
    if verdict.truncated:
        detail["truncated"] = True
    return AuditEvent(
        kind="inspect.blocked" if verdict.blocked else "inspect.detected",
        outcome="denied" if verdict.blocked else "success",
        actor=state.user,
        target=request.path[:_MAX_TARGET],
        client_ip=state.client_ip,
        request_id=state.request_id,
        detail=detail,
    )


def strike_event(
    client: str, state: RequestState, *, threshold: int, window: float, duration: float
) -> AuditEvent:
    """``inspect.strike.blocked``: ``client`` reached the strike threshold and is refused."""
    return AuditEvent(
        kind="inspect.strike.blocked",
        outcome="denied",
        actor=state.user,
        target=f"strike:{client}",
        client_ip=state.client_ip,
        request_id=state.request_id,
        detail={"threshold": threshold, "window": window, "duration": duration},
    )
