"""``bastion users``: create, list, enable, suspend and disable accounts; end their sessions."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from bastion.auth.admin import IdentityAdmin
from bastion.cli.common import EXIT_CONFIG, ConfigOption, fail, load_settings
from bastion.cli.identity import JsonOption, echo_json, password_from, run_admin, table_console

__all__ = ["app"]

app = typer.Typer(help="User accounts.", no_args_is_help=True)

EmailArgument = Annotated[str, typer.Argument(help="The account's username (an e-mail address).")]
PasswordStdinOption = Annotated[
    bool,
    typer.Option(
        "--password-stdin",
        help="Read the password from one line of standard input instead of asking for it.",
    ),
]


@app.command("create")
def create(
    email: EmailArgument,
    role: Annotated[
        list[str] | None, typer.Option("--role", help="Global role to grant (repeatable).")
    ] = None,
    password_stdin: PasswordStdinOption = False,
    config: ConfigOption = None,
) -> None:
    """Create an account and print its id. The password must pass the password rules."""
    settings = load_settings(config)
    roles = list(dict.fromkeys(role or ()))
    # Checked before asking for a password, so a typo does not cost typing it twice.
    unknown = [name for name in roles if name not in settings.auth.role_table()]
    if unknown:
        fail(f"unknown role(s): {', '.join(unknown)}", EXIT_CONFIG)
    password = password_from(password_stdin)
    user_id = run_admin(settings, lambda admin: admin.create_user(email, password, roles=roles))
    typer.echo(user_id)


@app.command("list")
def list_users(json_output: JsonOption = False, config: ConfigOption = None) -> None:
    """List every account: username, id, status, roles, MFA and creation time."""
    rows = run_admin(load_settings(config), IdentityAdmin.users)
    if json_output:
        echo_json(rows)
        return
    table = Table("username", "id", "status", "roles", "mfa", "created")
    for row in rows:
        table.add_row(
            row["username"],
            row["id"],
            row["status"],
            ", ".join(row["roles"]),
            "yes" if row["mfa"] else "no",
            row["created_at"][:19].replace("T", " "),
        )
    table_console().print(table)


def _set_status(email: str, status: str, config: ConfigOption, done: str) -> None:
    run_admin(load_settings(config), lambda admin: admin.set_status(email, status))
    typer.echo(f"{done} {email}")


@app.command("disable")
def disable(email: EmailArgument, config: ConfigOption = None) -> None:
    """Disable an account: logins fail with account_disabled and every session ends."""
    _set_status(email, "disabled", config, "disabled")


@app.command("suspend")
def suspend(email: EmailArgument, config: ConfigOption = None) -> None:
    """Suspend an account: its credentials are refused (account_suspended) until enabled."""
    _set_status(email, "suspended", config, "suspended")


@app.command("enable")
def enable(email: EmailArgument, config: ConfigOption = None) -> None:
    """Make a suspended or disabled account active again."""
    _set_status(email, "active", config, "enabled")


@app.command("revoke-sessions")
def revoke_sessions(email: EmailArgument, config: ConfigOption = None) -> None:
    """End every session and access token of an account; prints how many sessions ended."""
    count = run_admin(load_settings(config), lambda admin: admin.revoke_sessions(email))
    typer.echo(f"{count} session{'' if count == 1 else 's'} ended")


@app.command("set-password")
def set_password(
    email: EmailArgument, password_stdin: PasswordStdinOption = False, config: ConfigOption = None
) -> None:
    """Replace an account's password; every session and access token of the account ends."""
    settings = load_settings(config)
    password = password_from(password_stdin)
    run_admin(settings, lambda admin: admin.set_password(email, password))
    typer.echo(f"password set for {email}; its sessions ended")
