"""``bastion db upgrade``: apply pending migrations."""

from __future__ import annotations

import asyncio

import typer

from bastion.cli.common import EXIT_RUNTIME, ConfigOption, fail, load_settings
from bastion.store.database import Database, StoreError
from bastion.store.migrate import upgrade as apply_migrations

app = typer.Typer(help="Database migrations.", no_args_is_help=True)


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
