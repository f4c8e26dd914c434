"""``bastion db upgrade``: apply pending migrations; ``bastion db advise``: PostgreSQL advisor."""

from __future__ import annotations

import asyncio
from enum import StrEnum
from typing import Annotated

import orjson
import typer
from rich.console import Console

from bastion.cli.common import EXIT_CONFIG, EXIT_RUNTIME, ConfigOption, fail, load_settings
from bastion.observe.advisor import AdvisorUrlError, Thresholds, advise
from bastion.observe.advisor_text import render_text
from bastion.store.database import Database, StoreError
from bastion.store.migrate import upgrade as apply_migrations

app = typer.Typer(help="Database migrations and the PostgreSQL advisor.", no_args_is_help=True)


_DEFAULTS = Thresholds()


class ReportFormat(StrEnum):
    text = "text"
    json = "json"


async def _upgrade(database: Database) -> list[str]:
    await database.start()
    try:
        return await apply_migrations(database)
    finally:
        await database.close()


@app.command("upgrade")
def upgrade(config: ConfigOption = None) -> None:
    """Apply pending migrations to store.database_url (safe to run from several hosts)."""
    settings = load_settings(config)
    try:
        applied = asyncio.run(_upgrade(Database(settings.store)))
    except StoreError as exc:
        fail(f"migration failed: {exc}", EXIT_RUNTIME)
    typer.echo("applied: " + ", ".join(applied) if applied else "database is up to date")


@app.command("advise")
def advise_command(
    database_url: Annotated[
        str | None,
        typer.Argument(
            help="PostgreSQL URL (postgresql://, postgres:// or postgresql+asyncpg://); "
            "default: store.database_url.",
            metavar="DATABASE_URL",
            show_default=False,
        ),
    ] = None,
    output_format: Annotated[
        ReportFormat, typer.Option("--format", help="text (tables) or json.")
    ] = ReportFormat.text,
    top: Annotated[
        int, typer.Option(min=1, max=1000, help="Rows of the ranked sections.")
    ] = _DEFAULTS.top,
    min_rows: Annotated[
        int, typer.Option(min=0, help="Smallest table reported for sequential scans.")
    ] = _DEFAULTS.min_rows,
    timeout: Annotated[
        float, typer.Option(min=0.1, help="Seconds allowed for connecting and for each query.")
    ] = 10.0,
    config: ConfigOption = None,
) -> None:
    """Report what to fix in a PostgreSQL database: top statements, unused and duplicate
    indexes, tables needing an index, unindexed foreign keys, cache hit ratio, bloat."""
    url = database_url if database_url is not None else load_settings(config).store.database_url
    thresholds = Thresholds(top=top, min_rows=min_rows)
    try:
        report = asyncio.run(advise(url, thresholds=thresholds, query_timeout=timeout))
    except AdvisorUrlError as exc:
        fail(str(exc), EXIT_CONFIG)
    except StoreError as exc:
        fail(f"cannot advise on the database: {exc}", EXIT_RUNTIME)
    if output_format is ReportFormat.json:
        typer.echo(orjson.dumps(report.to_dict(), option=orjson.OPT_INDENT_2).decode())
        return
    render_text(report, Console(highlight=False))
