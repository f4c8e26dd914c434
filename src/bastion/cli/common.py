"""What every command shares: the ``--config`` option, loading settings, exit codes."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import structlog
import typer

from bastion.audit.events import AuditEvent, LoggingAuditSink
from bastion.observe.config import LoggingConfig
from bastion.settings import ConfigError, Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_RUNTIME",
    "EXIT_VERIFY",
    "ConfigOption",
    "fail",
    "load_settings",
    "log_to_stderr",
    "record_operator_event",
]

EXIT_RUNTIME = 1
EXIT_CONFIG = 2
EXIT_VERIFY = 3

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        "-c",
        help="Configuration file (default: $BASTION_CONFIG, else ./bastion.toml if present).",
        dir_okay=False,
    ),
]


_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
}


def log_to_stderr(config: LoggingConfig | None = None) -> None:
    """Send log lines (audit events, migrations applied, key warnings) to standard error, so
    standard output carries only the command's answer: tables, JSON, events and keys that
    scripts capture. ``config`` chooses the format and level (default: JSON, info)."""
    config = config if config is not None else LoggingConfig()
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if config.format == "json"
        else structlog.dev.ConsoleRenderer(colors=False)
    )
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(_LEVELS[config.level]),
        logger_factory=_stderr_logger,
        # Not cached: each logger writes to the standard error of the moment (tests replace it).
        cache_logger_on_first_use=False,
    )


def _stderr_logger(*_: Any) -> structlog.PrintLogger:
    return structlog.PrintLogger(sys.stderr)


def fail(message: str, code: int) -> NoReturn:
    """Print ``message`` to standard error and exit with ``code``."""
    typer.echo(f"bastion: {message}", err=True)
    raise typer.Exit(code)


def load_settings(config: Path | None, **overrides: Any) -> Settings:
    """Settings from ``config`` (or the default file) and the environment; exit 2 naming the
    offending key when they are invalid."""
    try:
        return Settings.load(config, **overrides)
    except ConfigError as exc:
        fail(str(exc), EXIT_CONFIG)


async def record_operator_event(settings: Settings, event: AuditEvent) -> None:
    """Record an operator's change like any other audit event: committed to the audit chain when
    ``[audit] enabled`` (the database migrated first when ``store.auto_migrate``), and always
    as a log line, so the operator sees it on standard error.

    Raises :class:`~bastion.store.errors.StoreError` when the database fails.
    """
    await LoggingAuditSink().emit(event)
    if not settings.audit.enabled:
        return
    # Imported here: commands that record nothing never load the audit log.
    from bastion.audit.log import AuditLog
    from bastion.store.stores import Stores

    stores = Stores(settings.store)
    try:
        await stores.start()
        audit_log = AuditLog.from_stores(settings.audit, stores)
        await audit_log.start()
        try:
            await audit_log.emit(event)
        finally:
            await audit_log.close()
    finally:
        await stores.close()
