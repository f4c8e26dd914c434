"""What the ``users``, ``roles`` and ``keys`` commands share: an identity service over the
configured database for the length of one command, and one mapping of failures to exit codes.

Each command opens the stores (applying pending migrations when ``store.auto_migrate``), runs
one :class:`~bastion.auth.admin.IdentityAdmin` operation and closes everything. Admin
operations write the change feed and publish on Redis, so running gateways drop what they cached.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Annotated, Any, TypeVar

import orjson
import typer
from rich.console import Console

from bastion.audit.events import LoggingAuditSink
from bastion.audit.log import AuditLog
from bastion.auth.admin import IdentityAdmin
from bastion.auth.service import IdentityService
from bastion.cli.common import EXIT_CONFIG, EXIT_RUNTIME, fail, log_to_stderr
from bastion.http.problems import BastionError
from bastion.observe.metrics import Metrics
from bastion.settings import Settings
from bastion.store.errors import StoreError
from bastion.store.stores import Stores

__all__ = [
    "JsonOption",
    "echo_json",
    "open_identity",
    "password_from",
    "run_admin",
    "table_console",
]

T = TypeVar("T")

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


@asynccontextmanager
async def open_identity(settings: Settings) -> AsyncIterator[IdentityService]:
    """A started identity service over ``settings.store``, closed (with its stores) on exit.

    Raises :class:`StoreError` when the database cannot be reached or migrated.
    """
    stores = Stores(settings.store)
    try:
        await stores.start()
        # Operator changes are audit events like any other: in the chain when it is enabled.
        audit_log = AuditLog.from_stores(settings.audit, stores) if settings.audit.enabled else None
        if audit_log is not None:
            await audit_log.start()
        try:
            service = IdentityService(
                settings.auth,
                stores=stores,
                metrics=Metrics(),
                audit=audit_log if audit_log is not None else LoggingAuditSink(),
            )
            try:
                await service.start()
                yield service
            finally:
                await service.close()
        finally:
            if audit_log is not None:
                await audit_log.close()
    finally:
        await stores.close()


async def _run(settings: Settings, operation: Callable[[IdentityAdmin], Awaitable[T]]) -> T:
    async with open_identity(settings) as service:
        return await operation(IdentityAdmin(service, actor="cli"))


def run_admin(settings: Settings, operation: Callable[[IdentityAdmin], Awaitable[T]]) -> T:
    """Run one admin operation; exit 2 with the reason on a usage error (unknown user or role,
    rejected password, duplicate), exit 1 when the database fails."""
    log_to_stderr(settings.logging)
    try:
        return asyncio.run(_run(settings, operation))
    except BastionError as exc:
        errors = exc.extensions.get("errors")
        if exc.code == "password_rejected" and isinstance(errors, list) and errors:
            fail(
                "password rejected:\n" + "\n".join(f"  - {reason}" for reason in errors),
                EXIT_CONFIG,
            )
        fail(exc.detail, EXIT_CONFIG)
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)


def password_from(stdin: bool) -> str:
    """The new password: one line of standard input (its line ending removed, nothing else), or
    asked for twice without echo."""
    if not stdin:
        password: str = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
        return password
    line = sys.stdin.readline()
    if not line:
        fail("--password-stdin: nothing on standard input", EXIT_CONFIG)
    return line.removesuffix("\n").removesuffix("\r")


def echo_json(value: Any) -> None:
    """Print ``value`` as indented JSON."""
    typer.echo(orjson.dumps(value, option=orjson.OPT_INDENT_2).decode())


def table_console() -> Console:
    """A console for tables; wide when not a terminal, so piped rows are never folded."""
    console = Console(highlight=False)
    if not console.is_terminal:
        console = Console(highlight=False, width=400)
    return console
