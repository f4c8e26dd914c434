"""``bastion keys``: API keys of users, and rotation of the JWT signing and audit HMAC keys."""

from __future__ import annotations

import asyncio
from typing import Annotated, Any

import typer
from rich.table import Table

from bastion.audit.store import open_audit
from bastion.auth.admin import IdentityAdmin
from bastion.auth.config import check_permission
from bastion.cli.common import (
    EXIT_CONFIG,
    EXIT_RUNTIME,
    ConfigOption,
    fail,
    load_settings,
    log_to_stderr,
)
from bastion.cli.identity import JsonOption, echo_json, run_admin, table_console
from bastion.config_types import parse_duration
from bastion.http.problems import BastionError
from bastion.settings import Settings
from bastion.store.errors import StoreError
from bastion.store.stores import Stores

__all__ = ["app"]

app = typer.Typer(help="API keys, JWT signing keys and the audit HMAC key.", no_args_is_help=True)


@app.command("create")
def create(
    user: Annotated[str, typer.Option("--user", help="Owner of the key (username).")],
    scope: Annotated[
        list[str] | None,
        typer.Option(
            "--scope",
            help="Permission the key is limited to (repeatable, e.g. orders:read); "
            "default: everything its owner may do.",
        ),
    ] = None,
    expires: Annotated[
        str | None, typer.Option("--expires", help="Lifetime such as 30d or 12h; default: never.")
    ] = None,
    name: Annotated[str, typer.Option("--name", help="A label shown in listings.")] = "",
    json_output: Annotated[
        bool, typer.Option("--json", help="Print the key, its id and expiry as JSON.")
    ] = False,
    config: ConfigOption = None,
) -> None:
    """Create an API key and print it once: it is stored only as a hash.

    The key is the last line of standard output (its id and expiry go to standard error), so
    scripts can capture it with `| tail -1`, or use --json.
    """
    settings = load_settings(config)
    scopes = list(dict.fromkeys(scope or ()))
    for value in scopes:
        try:
            check_permission(value)
        except ValueError as exc:
            fail(f"--scope: {exc}", EXIT_CONFIG)
    lifetime: float | None = None
    if expires is not None:
        try:
            lifetime = parse_duration(expires)
        except ValueError as exc:
            fail(f"--expires: {exc}", EXIT_CONFIG)
        if lifetime <= 0:
            fail("--expires: the lifetime must be longer than zero", EXIT_CONFIG)
    created = run_admin(
        settings,
        lambda admin: admin.create_api_key(user, name=name, scopes=scopes, expires_in=lifetime),
    )
    expires_at = created.expires_at.isoformat() if created.expires_at is not None else None
    if json_output:
        echo_json(
            {
                "id": created.id,
                "key": created.key,
                "user": user,
                "name": name,
                "scopes": scopes,
                "expires_at": expires_at,
            }
        )
        return
    typer.echo(f"key id {created.id}, expires {expires_at or 'never'}", err=True)
    typer.echo("Store the key now: it cannot be shown again.", err=True)
    typer.echo(created.key)


async def _keys(admin: IdentityAdmin, user: str | None) -> list[dict[str, Any]]:
    rows = []
    for key, owner in await admin.api_keys(user):
        rows.append(
            {
                "id": key.id,
                "owner": owner,
                "name": key.name,
                "scopes": list(key.scopes),
                "created_at": key.created_at.isoformat(),
                "expires_at": key.expires_at.isoformat() if key.expires_at else None,
                "last_used_at": key.last_used_at.isoformat() if key.last_used_at else None,
                "revoked_at": key.revoked_at.isoformat() if key.revoked_at else None,
            }
        )
    return rows


@app.command("list")
def list_keys(
    user: Annotated[str | None, typer.Option("--user", help="Only this user's keys.")] = None,
    json_output: JsonOption = False,
    config: ConfigOption = None,
) -> None:
    """List API keys: id, owner, name, scopes, created, expires, last used, revoked.
    Never the key itself."""
    settings = load_settings(config)
    rows = run_admin(settings, lambda admin: _keys(admin, user))
    if json_output:
        echo_json(rows)
        return
    table = Table("id", "owner", "name", "scopes", "created", "expires", "last used", "revoked")
    for row in rows:
        table.add_row(
            row["id"],
            row["owner"],
            row["name"],
            " ".join(row["scopes"]) or "(all of owner's)",
            _short(row["created_at"]),
            _short(row["expires_at"], "never"),
            _short(row["last_used_at"], "never"),
            _short(row["revoked_at"], "no"),
        )
    table_console().print(table)


def _short(iso: str | None, empty: str = "") -> str:
    return iso[:19].replace("T", " ") if iso else empty


async def _revoke(admin: IdentityAdmin, key_id: str) -> bool:
    if not any(key.id == key_id for key, _ in await admin.api_keys()):
        raise BastionError("not_found", f"no API key with id {key_id!r} (see `bastion keys list`)")
    return await admin.revoke_api_key(key_id)


@app.command("revoke")
def revoke(
    key_id: Annotated[str, typer.Argument(metavar="ID", help="Key id (see `bastion keys list`).")],
    config: ConfigOption = None,
) -> None:
    """Revoke an API key; every gateway refuses it from the next request on."""
    revoked = run_admin(load_settings(config), lambda admin: _revoke(admin, key_id))
    typer.echo(f"revoked {key_id}" if revoked else f"{key_id} was already revoked")


@app.command("rotate-signing")
def rotate_signing(config: ConfigOption = None) -> None:
    """Make a new JWT signing key and print its kid; the previous keys keep verifying."""
    kid = run_admin(load_settings(config), IdentityAdmin.rotate_signing)
    typer.echo(kid)


async def _rotate_audit(settings: Settings) -> str:
    async with open_audit(settings) as audit:
        return await audit.rotate_key()


@app.command("rotate-audit")
def rotate_audit(config: ConfigOption = None) -> None:
    """Make a new audit HMAC key and print its id. Running gateways hash new events with it
    within [audit] key_refresh; events hashed with earlier keys keep verifying."""
    settings = load_settings(config)
    # Standard output carries only the key id, as for the other commands of this group.
    log_to_stderr(settings.logging)
    try:
        key_id = asyncio.run(_rotate_audit(settings))
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)
    typer.echo(key_id)


async def _wrap_stored(settings: Settings) -> int:
    stores = Stores(settings.store)
    try:
        # Migrations only: reading keys would refuse the very rows this command adopts.
        await stores.start()
        return await stores.keys.wrap_stored()
    finally:
        await stores.close()


@app.command("wrap")
def wrap(config: ConfigOption = None) -> None:
    """Wrap the keys stored in the clear with store.key_encryption_key (run once after setting
    it); prints how many were wrapped. Until then, gateways refuse keys stored in the clear."""
    settings = load_settings(config)
    if settings.store.key_encryption_key is None:
        fail("store.key_encryption_key is not set: there is nothing to wrap with", EXIT_CONFIG)
    log_to_stderr(settings.logging)
    try:
        wrapped = asyncio.run(_wrap_stored(settings))
    except StoreError as exc:
        fail(f"database failure: {exc}", EXIT_RUNTIME)
    typer.echo(f"wrapped {wrapped} key(s)")
