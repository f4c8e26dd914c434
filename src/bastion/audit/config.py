"""Configuration of the audit log (``[audit]``)."""

from __future__ import annotations

from bastion.config_types import ConfigModel

__all__ = ["AuditConfig"]


class AuditConfig(ConfigModel):
    """``[audit]``: the hash-chained audit log in the main database (table ``audit_events``)."""

    enabled: bool = True
    """Record security-relevant events durably; off: events are only logged."""
