"""``bastion bans``: list and lift the bans of rate limiting and inspection strikes.

Both kinds are one penalty record per client, whose source says which started it; a strike
block is shown as ``strike:<client>``. Where the records live follows ``ratelimit.store``: in
Redis when the gateways count there (``auto`` with ``store.redis_url`` set, or ``redis``), else
in the ``bastion_bans`` table every process mirrors
(:class:`~bastion.ratelimit.ledger.SqlBanLedger`). Either way a lift reaches every running
gateway: Redis at once, the ledger on the gateways' next poll.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, Protocol, TypeVar

import orjson
import typer
from rich.console import Console
from rich.table import Table

from bastion.audit.events import AuditEvent
from bastion.cli.common import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    ConfigOption,
    fail,
    load_settings,
    log_to_stderr,
    record_operator_event,
)
from bastion.inspect.strikes import STRIKE_PREFIX, strike_name
from bastion.ratelimit.core import INSPECT, BanRecord, RateLimitStore, RateLimitStoreError
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.settings import Settings
from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.migrate import upgrade
from bastion.store.redis import RedisConnector

__all__ = ["app"]

T = TypeVar("T")

app = typer.Typer(help="Client bans: rate-limit bans and inspection strikes.", no_args_is_help=True)

JsonOption = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]
KeyArgument = Annotated[
    str,
    typer.Argument(
        help="The banned client, as `bastion bans list` shows it (`strike:<client>` too)."
    ),
]


class _Bans(Protocol):
    """Where the bans are: the SQL ledger or the Redis store."""

    async def active(self) -> list[BanRecord]: ...

    async def lift(self, client: str) -> bool: ...


class _StoreBans:
    """The bans of a rate-limit store that shares them itself (Redis)."""

    def __init__(self, store: RateLimitStore) -> None:
        self._store = store

    async def active(self) -> list[BanRecord]:
        return await self._store.active_bans()

    async def lift(self, client: str) -> bool:
        return await self._store.lift(client)


def _in_redis(settings: Settings) -> bool:
    """Whether the gateways keep bans in Redis (the rule of ``ratelimit.store``)."""
    return bool(settings.store.redis_url) and settings.ratelimit.store != "memory"


async def _with_redis(settings: Settings, operation: Callable[[_Bans], Awaitable[T]]) -> T:
    # Imported here: commands over the SQL ledger never load the Redis store.
    from bastion.ratelimit.redis_store import RedisStore
    from bastion.ratelimit.wiring import REDIS_KEY_PREFIX

    redis = RedisConnector.from_url(settings.store.redis_url, timeout=settings.store.timeout)
    try:
        store = RedisStore(redis, prefix=REDIS_KEY_PREFIX, timeout=settings.store.timeout)
        try:
            return await operation(_StoreBans(store))
        finally:
            await store.close()
    finally:
        await redis.close()


async def _with_bans(settings: Settings, operation: Callable[[_Bans], Awaitable[T]]) -> T:
    if _in_redis(settings):
        return await _with_redis(settings, operation)
    database = Database(settings.store)
    try:
        await database.start()
        if settings.store.auto_migrate:
            await upgrade(database)
        return await operation(SqlBanLedger(database))
    finally:
        await database.close()


def _run(settings: Settings, operation: Callable[[_Bans], Awaitable[T]]) -> T:
    """Run one operation; exit 1 with the reason when the database or Redis fails."""
    log_to_stderr()
    try:
        return asyncio.run(_with_bans(settings, operation))
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)
    except RateLimitStoreError as exc:
        fail(f"redis failure: {exc}", EXIT_RUNTIME)


def _row(ban: BanRecord, now: float) -> dict[str, Any]:
    return {
        "client": strike_name(ban.client) if ban.source == INSPECT else ban.client,
        "until": datetime.fromtimestamp(ban.until, UTC).isoformat(timespec="seconds"),
        "remaining": max(math.ceil(ban.until - now), 0),
        "level": ban.level,
        "source": ban.source,
    }


@app.command("list")
def list_bans(json_output: JsonOption = False, config: ConfigOption = None) -> None:
    """List the clients banned now: client, end (UTC), seconds left, offence level, source."""
    bans = _run(load_settings(config), lambda source: source.active())
    now = time.time()
    # Longest remaining first, whichever store answered.
    rows = [_row(ban, now) for ban in sorted(bans, key=lambda ban: (-ban.until, ban.client))]
    if json_output:
        typer.echo(orjson.dumps(rows, option=orjson.OPT_INDENT_2).decode())
        return
    if not rows:
        typer.echo("no active bans")
        return
    table = Table("client", "until (UTC)", "remaining", "level", "source")
    for row in rows:
        table.add_row(
            row["client"],
            row["until"].replace("T", " ").removesuffix("+00:00"),
            f"{row['remaining']}s",
            str(row["level"]),
            row["source"],
        )
    console = Console(highlight=False)
    if not console.is_terminal:
        # Piped output is read by scripts: never fold a row.
        console = Console(highlight=False, width=400)
    console.print(table)


async def _lift(settings: Settings, source: _Bans, client: str) -> bool:
    # ``strike:<client>`` names the client's one record; a ledger row written under that name
    # by an earlier version is found by the name itself.
    lifted = await source.lift(client.removeprefix(STRIKE_PREFIX))
    if not lifted and client.startswith(STRIKE_PREFIX):
        lifted = await source.lift(client)
    if lifted:
        await record_operator_event(
            settings, AuditEvent(kind="admin.ban.lifted", actor="cli", target=client)
        )
    return lifted


@app.command("lift")
def lift(key: KeyArgument, config: ConfigOption = None) -> None:
    """End a client's ban or strike block (and forget its offences) in every process; exit 2
    if it has none."""
    settings = load_settings(config)
    if not _run(settings, lambda source: _lift(settings, source, key)):
        fail(f"no active ban for {key!r}", EXIT_CONFIG)
    typer.echo(f"lifted the ban of {key}")
