"""The audit interface every capability emits through.

Capabilities build an :class:`AuditEvent` and hand it to the :class:`AuditSink` on ``Deps``.
Until the durable hash-chained log exists, :class:`LoggingAuditSink` writes each event as one
structured log line; the interface stays the same when the durable sink replaces it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog

__all__ = ["AuditEvent", "AuditSink", "LoggingAuditSink", "MemoryAuditSink"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    """One security-relevant event (DESIGN.md §9). ``detail`` must never carry secrets."""

    kind: str
    """Dotted kind: ``auth.login.failed``, ``auth.token.reused``, ``access.denied``…"""
    outcome: str = "success"
    """``success``, ``failure`` or ``denied``."""
    actor: str | None = None
    """Who acted: a user id, ``cli`` for operator commands, ``None`` when unknown."""
    target: str | None = None
    """What was acted on: a user id, key id, session id…"""
    client_ip: str | None = None
    request_id: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)


class AuditSink(Protocol):
    """Where audit events go. ``emit`` returns once the event is accepted."""

    async def emit(self, event: AuditEvent) -> None: ...


class LoggingAuditSink:
    """Writes every event as one structured log line on the ``bastion.audit`` logger."""

    def __init__(self) -> None:
        self._log: Any = structlog.get_logger("bastion.audit")

    async def emit(self, event: AuditEvent) -> None:
        self._log.info(
            "audit",
            kind=event.kind,
            outcome=event.outcome,
            actor=event.actor,
            target=event.target,
            client_ip=event.client_ip,
            audit_request_id=event.request_id,
            detail=event.detail,
        )


class MemoryAuditSink:
    """Keeps events in a list: for tests and for embedding code that inspects them."""

    def __init__(self) -> None:
        self.events: list[AuditEvent] = []

    async def emit(self, event: AuditEvent) -> None:
        self.events.append(event)

    def kinds(self) -> list[str]:
        """The kinds emitted so far, in order."""
        return [event.kind for event in self.events]
