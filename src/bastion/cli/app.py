"""Root of the ``bastion`` command line."""

from __future__ import annotations

import typer

from bastion.cli import (
    audit_cmd,
    bans_cmd,
    cache_cmd,
    config_cmd,
    db_cmd,
    demo_cmd,
    keys_cmd,
    roles_cmd,
    serve_cmd,
    users_cmd,
    waf_cmd,
)

app = typer.Typer(
    name="bastion",
    help="Security and performance layer for web APIs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("serve")(serve_cmd.serve)
app.command("demo")(demo_cmd.demo)
app.add_typer(config_cmd.app, name="config")
app.add_typer(db_cmd.app, name="db")
app.add_typer(users_cmd.app, name="users")
app.add_typer(roles_cmd.app, name="roles")
app.add_typer(keys_cmd.app, name="keys")
app.add_typer(bans_cmd.app, name="bans")
app.add_typer(cache_cmd.app, name="cache")
app.add_typer(waf_cmd.app, name="waf")
app.add_typer(audit_cmd.app, name="audit")


def main() -> None:
    """Console-script entry point."""
    app()
