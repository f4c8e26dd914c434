"""Configuration of the audit log (``[audit]``)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from bastion.audit.sink_config import FileSinkConfig, SyslogSinkConfig
from bastion.config_types import ConfigModel, Duration

__all__ = ["AuditConfig"]


class AuditConfig(ConfigModel):
    """``[audit]``: the hash-chained audit log in the main database (table ``audit_events``)."""

    enabled: bool = True
    """Record security-relevant events durably; off: events are only logged."""
    hmac: bool = True
    """Chain hashes are HMAC-SHA256 with a key kept in ``bastion_keys`` (rotated by
    ``bastion keys rotate-audit``), so a database writer cannot recompute the chain; off: plain
    SHA-256. Wrap the keys with ``store.key_encryption_key`` for the HMAC to protect anything
    against someone who can read the database."""
    batch_size: int = Field(default=500, ge=1, le=10_000)
    """Most events committed by one transaction (group commit)."""
    max_wait: Duration = Field(default=0.0, le=1.0)
    """How long the writer waits for more events before committing a batch that is not full;
    ``0``: no timer, the writer commits as soon as an event-loop turn adds no event (events
    arriving during a commit still share the next one)."""
    queue_size: int = Field(default=10_000, ge=1)
    """Events waiting for their commit, at most; beyond it ``on_full`` applies."""
    on_full: Literal["wait", "shed"] = "wait"
    """A full queue makes the emitting request ``wait`` for room (back-pressure), or ``shed``: the
    request fails with 503 ``overloaded``. Events are never dropped silently."""
    commit_timeout: Duration = Field(default=5.0, gt=0)
    """How long a request waits for its event's commit (or for room in the queue) before it fails
    with 503 ``overloaded``; the event itself stays queued and is still committed. Must be longer
    than ``max_wait`` and ``loss_window``."""
    loss_window: Duration = Field(default=0.0, le=60.0)
    """``0`` (default): a request completes only after its events are committed. Above zero,
    events are acknowledged when queued and committed at least this often, so a crash can lose
    at most this much."""
    retention: Duration = 0.0
    """Events older than this are pruned, leaving a signed checkpoint that verification starts
    from; ``0``: keep every event."""
    prune_interval: Duration = Field(default=3600.0, gt=0)
    """How often a process prunes when ``retention`` is set."""
    key_refresh: Duration = Field(default=60.0, gt=0)
    """How often a running writer reloads the HMAC keys, so a rotation made by another process
    takes effect everywhere within this time."""
    log_events: bool = False
    """Also write every committed event as a ``bastion.audit`` log line carrying its ``seq`` and
    ``hash`` (a copy outside the database, which makes truncation of the chain's tail visible)."""
    file: FileSinkConfig = Field(default_factory=FileSinkConfig)
    """A copy of every event in a JSON-lines file (the SQL log stays the record)."""
    syslog: SyslogSinkConfig = Field(default_factory=SyslogSinkConfig)
    """A copy of every event sent to syslog (RFC 5424)."""

    @model_validator(mode="after")
    def _coherent(self) -> AuditConfig:
        # A batch may wait max_wait (loss_window when set) before its commit even starts: a
        # commit_timeout no longer than that would fail requests the log is about to serve.
        for name, wait in (("max_wait", self.max_wait), ("loss_window", self.loss_window)):
            if wait > 0 and self.commit_timeout <= wait:
                raise ValueError(
                    f"commit_timeout ({self.commit_timeout:g}s) must be longer than {name} "
                    f"({wait:g}s): requests would time out waiting for commits that have not "
                    "started yet"
                )
        return self
