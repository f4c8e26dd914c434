"""What every command shares: the ``--config`` option, loading settings, exit codes."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer

from bastion.audit.events import AuditEvent, LoggingAuditSink
from bastion.settings import ConfigError, Settings

__all__ = [
    "EXIT_CONFIG",
    "EXIT_RUNTIME",
    "EXIT_VERIFY",
    "ConfigOption",
    "fail",
    "load_settings",
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
