"""``bastion roles``: the role table and the grants of roles to users, globally or on one
resource."""

from __future__ import annotations

import re
from typing import Annotated, Any

import typer
from rich.table import Table

from bastion.auth.admin import IdentityAdmin
from bastion.cli.common import EXIT_CONFIG, ConfigOption, fail, load_settings
from bastion.cli.identity import JsonOption, echo_json, run_admin, table_console

__all__ = ["app"]

app = typer.Typer(help="Roles and per-resource grants.", no_args_is_help=True)

# The resource half follows the permission grammar, so ``projects:42`` is what
# ``rbac.resource_key("projects:edit", "42")`` looks up.
_RESOURCE = re.compile(r"^[a-z0-9_.-]+:\S+$")

EmailArgument = Annotated[str, typer.Argument(help="The account's username (an e-mail address).")]
RoleArgument = Annotated[str, typer.Argument(help="Role name (see `bastion roles list`).")]
ResourceOption = Annotated[
    str | None,
    typer.Option(
        "--resource",
        help="Grant on one resource only, as RESOURCE:ID (e.g. projects:42); default: global.",
    ),
]


def _resource(value: str | None) -> str:
    if value is None:
        return ""
    if not _RESOURCE.match(value):
        fail(
            f"--resource {value!r}: use RESOURCE:ID, e.g. projects:42 (resource in lower case)",
            EXIT_CONFIG,
        )
    return value


async def _listing(admin: IdentityAdmin) -> dict[str, Any]:
    grants = await admin.grants()
    return {
        "roles": {name: list(permissions) for name, permissions in admin.roles().items()},
        "grants": [
            {"username": username, "role": role, "resource": resource}
            for username, role, resource in grants
        ],
    }


@app.command("list")
def list_roles(json_output: JsonOption = False, config: ConfigOption = None) -> None:
    """List every role with its permissions, then every grant (username, role, resource)."""
    listing = run_admin(load_settings(config), _listing)
    if json_output:
        echo_json(listing)
        return
    roles = Table("role", "permissions")
    for name, permissions in listing["roles"].items():
        roles.add_row(name, " ".join(permissions))
    grants = Table("username", "role", "resource")
    for grant in listing["grants"]:
        grants.add_row(grant["username"], grant["role"], grant["resource"] or "(global)")
    console = table_console()
    console.print(roles)
    console.print(grants)


@app.command("grant")
def grant(
    email: EmailArgument,
    role: RoleArgument,
    resource: ResourceOption = None,
    config: ConfigOption = None,
) -> None:
    """Grant ROLE to a user, globally or on one resource (--resource projects:42)."""
    on = _resource(resource)
    added = run_admin(load_settings(config), lambda admin: admin.grant(email, role, on))
    where = f" on {on}" if on else ""
    typer.echo(
        f"granted {role}{where} to {email}" if added else f"{email} already has {role}{where}"
    )


@app.command("revoke")
def revoke(
    email: EmailArgument,
    role: RoleArgument,
    resource: ResourceOption = None,
    config: ConfigOption = None,
) -> None:
    """Take ROLE (globally, or on the resource given with --resource) away from a user."""
    settings = load_settings(config)
    on = _resource(resource)
    removed = run_admin(settings, lambda admin: admin.revoke(email, role, on))
    if not removed and role not in settings.auth.role_table():
        # Grants of a role since dropped from [auth.roles] can still be revoked; a name that is
        # neither granted nor defined is a typo.
        fail(f"unknown role {role!r}", EXIT_CONFIG)
    where = f" on {on}" if on else ""
    typer.echo(
        f"revoked {role}{where} from {email}" if removed else f"{email} had no {role}{where}"
    )
