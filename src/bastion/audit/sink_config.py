"""Configuration of the audit log's extra copies: ``[audit.file]`` and ``[audit.syslog]``.

The SQL log stays the record; these sinks hand a copy of every event to a JSON-lines file or a
syslog collector. Both are off until configured.
"""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from bastion.config_types import ConfigModel, Duration

__all__ = ["FileSinkConfig", "SyslogSinkConfig", "SyslogTransport", "syslog_target"]

_APP_NAME = re.compile(r"^[!-~]{1,48}$")
"""RFC 5424 APP-NAME: 1 to 48 printable US-ASCII characters, no spaces."""


class FileSinkConfig(ConfigModel):
    """``[audit.file]``: a copy of every event as one JSON object per line in a file."""

    path: str = ""
    """File the events are appended to; empty: no file copy. Created (mode 0600) if missing;
    reopened when moved or removed, so ``logrotate`` needs no ``copytruncate``."""
    fsync: bool = False
    """Call ``fsync`` after each batch of lines (durable across a power cut, slower); off: the
    lines reach the operating system at once and the disk when it flushes them."""
    queue: int = Field(default=10_000, ge=1, le=1_000_000)
    """Events waiting to be written at most; beyond it events are dropped from this copy (never
    from the SQL log) and counted in ``bastion_store_errors_total{store="audit_file"}``."""

    @property
    def enabled(self) -> bool:
        """Whether a file copy is configured."""
        return bool(self.path)


class SyslogSinkConfig(ConfigModel):
    """``[audit.syslog]``: a copy of every event as an RFC 5424 syslog message."""

    address: str = ""
    """Where to send: ``udp://host:514``, ``tcp://host:601`` (octet-counted framing, RFC 6587)
    or ``unix:///dev/log``; empty: no syslog copy."""
    facility: int = Field(default=13, ge=0, le=23)
    """Syslog facility number (13: log audit)."""
    app_name: str = "bastion"
    """APP-NAME of the messages."""
    timeout: Duration = 2.0
    """Connect and send timeout; a collector that does not answer in time loses that batch."""
    queue: int = Field(default=10_000, ge=1, le=1_000_000)
    """Events waiting to be sent at most; beyond it events are dropped from this copy and counted
    in ``bastion_store_errors_total{store="audit_syslog"}``."""

    @field_validator("app_name")
    @classmethod
    def _app_name(cls, value: str) -> str:
        if not _APP_NAME.match(value):
            raise ValueError("app_name must be 1 to 48 printable ASCII characters, no spaces")
        return value

    @model_validator(mode="after")
    def _address(self) -> SyslogSinkConfig:
        if self.address:
            syslog_target(self.address)
        return self

    @property
    def enabled(self) -> bool:
        """Whether a syslog copy is configured."""
        return bool(self.address)


SyslogTransport = Literal["udp", "tcp", "unix"]


def syslog_target(address: str) -> tuple[SyslogTransport, str, int]:
    """``(transport, host or socket path, port)`` of a syslog address; ``ValueError`` naming
    what is wrong otherwise."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("udp", "tcp", "unix"):
        raise ValueError("address must be udp://host:port, tcp://host:port or unix:///path")
    if scheme == "unix":
        if not rest.startswith("/"):
            raise ValueError("a unix address needs an absolute socket path: unix:///dev/log")
        return "unix", rest, 0
    host, colon, port_text = rest.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not colon or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"a {scheme} address needs a host and a port: {scheme}://host:514")
    transport: SyslogTransport = "udp" if scheme == "udp" else "tcp"
    return transport, host, int(port_text)
