"""``bastion users``, ``roles`` and ``keys`` over a real database: outputs, exit codes, and that
what they change is what the identity service then enforces."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest
import structlog
from typer.testing import CliRunner, Result

from bastion.auth.errors import AuthError
from bastion.auth.service import IdentityService, RequestContext
from bastion.cli.app import app
from bastion.cli.identity import open_identity
from bastion.settings import Settings

T = TypeVar("T")

runner = CliRunner()

PASSWORD = "correct horse battery staple"
CONTEXT = RequestContext(client_ip="198.51.100.7", user_agent="pytest")


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    yield
    # The commands point structlog at standard error; later tests expect the defaults.
    structlog.reset_defaults()


def write_config(path: Path, database_url: str) -> Path:
    path.write_text(
        f"""
[store]
database_url = "{database_url}"

[auth.passwords]
time_cost = 1
memory_cost_kib = 8192

[logging]
level = "warning"
""",
        encoding="utf-8",
    )
    return path


@pytest.fixture
def config(tmp_path: Path) -> Path:
    """A configuration over a new SQLite database with cheap password hashing."""
    return write_config(tmp_path / "bastion.toml", f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")


def cli(config: Path, *args: str, input: str | None = None) -> Result:
    return runner.invoke(app, [*args, "--config", str(config)], input=input)


def ok(config: Path, *args: str, input: str | None = None) -> Result:
    result = cli(config, *args, input=input)
    assert result.exit_code == 0, result.output
    return result


def create_user(config: Path, email: str, *roles: str, password: str = PASSWORD) -> str:
    flags = [part for role in roles for part in ("--role", role)]
    result = ok(config, "users", "create", email, *flags, "--password-stdin", input=password + "\n")
    return result.stdout.strip()


def with_service(config: Path, operation: Callable[[IdentityService], Awaitable[T]]) -> T:
    """Run ``operation`` against an identity service over the configured database."""

    async def run() -> T:
        async with open_identity(Settings.from_file(config)) as service:
            return await operation(service)

    return asyncio.run(run())


def login_code(config: Path, email: str, password: str = PASSWORD) -> str:
    """``ok`` when the login succeeds, else the problem code it failed with."""

    async def attempt(service: IdentityService) -> str:
        try:
            await service.login(email, password, None, CONTEXT)
        except AuthError as exc:
            return exc.code
        return "ok"

    return with_service(config, attempt)


def as_json(result: Result) -> Any:
    return orjson.loads(result.stdout)


# -- users -----------------------------------------------------------------------------------------


def test_create_prints_the_id_and_list_shows_the_account(config: Path) -> None:
    user_id = create_user(config, "Alice@Example.com", "admin", "viewer")
    rows = as_json(ok(config, "users", "list", "--json"))
    assert rows == [
        {
            "id": user_id,
            "username": "alice@example.com",
            "status": "active",
            "roles": ["admin", "viewer"],
            "mfa": False,
            "created_at": rows[0]["created_at"],
        }
    ]
    assert datetime.fromisoformat(rows[0]["created_at"]) > datetime.now(UTC) - timedelta(minutes=5)
    table = ok(config, "users", "list").stdout
    assert "alice@example.com" in table
    assert user_id in table
    assert "admin, viewer" in table
    assert login_code(config, "alice@example.com") == "ok"


def test_create_asks_for_the_password_twice(config: Path) -> None:
    result = ok(config, "users", "create", "bob@example.com", input=f"{PASSWORD}\n{PASSWORD}\n")
    assert result.stdout.count("Password") == 1
    assert PASSWORD not in result.output
    assert login_code(config, "bob@example.com") == "ok"


def test_password_stdin_keeps_everything_but_the_line_ending(config: Path) -> None:
    create_user(config, "carol@example.com", password="  spaced out phrase  ")
    assert login_code(config, "carol@example.com", "  spaced out phrase  ") == "ok"
    assert login_code(config, "carol@example.com", "spaced out phrase") == "invalid_credentials"


def test_weak_password_is_a_usage_error_listing_each_reason(config: Path) -> None:
    result = cli(config, "users", "create", "dave@example.com", "--password-stdin", input="aaaa\n")
    assert result.exit_code == 2
    assert "Use at least 8 characters." in result.output
    assert "Do not use a single character repeated." in result.output
    assert as_json(ok(config, "users", "list", "--json")) == []


def test_empty_standard_input_is_a_usage_error(config: Path) -> None:
    result = cli(config, "users", "create", "erin@example.com", "--password-stdin", input="")
    assert result.exit_code == 2
    assert "standard input" in result.output


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["users", "create", "x@example.com", "--role", "wizard"], "unknown role(s): wizard"),
        (["users", "create", "two words", "--role", "viewer"], "must not contain spaces"),
        (["users", "create", "alice@example.com"], "already exists"),
    ],
    ids=["unknown-role", "bad-username", "duplicate"],
)
def test_create_usage_errors(config: Path, args: list[str], message: str) -> None:
    create_user(config, "alice@example.com")
    result = cli(config, *args, "--password-stdin", input=PASSWORD + "\n")
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "args",
    [
        ["users", "disable", "ghost@example.com"],
        ["users", "enable", "ghost@example.com"],
        ["users", "suspend", "ghost@example.com"],
        ["users", "revoke-sessions", "ghost@example.com"],
        ["roles", "grant", "ghost@example.com", "viewer"],
        ["roles", "revoke", "ghost@example.com", "viewer"],
        ["keys", "create", "--user", "ghost@example.com"],
        ["keys", "list", "--user", "ghost@example.com"],
    ],
)
def test_unknown_user_is_a_usage_error(config: Path, args: list[str]) -> None:
    result = cli(config, *args)
    assert result.exit_code == 2
    assert "no user ghost@example.com" in result.output


def test_set_password_of_unknown_user_is_a_usage_error(config: Path) -> None:
    result = cli(
        config, "users", "set-password", "ghost@example.com", "--password-stdin", input="x\n"
    )
    assert result.exit_code == 2
    assert "no user ghost@example.com" in result.output


def test_disable_suspend_enable(config: Path) -> None:
    create_user(config, "alice@example.com")
    assert ok(config, "users", "disable", "alice@example.com").stdout.startswith("disabled")
    assert login_code(config, "alice@example.com") == "account_disabled"
    ok(config, "users", "suspend", "alice@example.com")
    assert login_code(config, "alice@example.com") == "account_suspended"
    assert [row["status"] for row in as_json(ok(config, "users", "list", "--json"))] == [
        "suspended"
    ]
    ok(config, "users", "enable", "alice@example.com")
    assert login_code(config, "alice@example.com") == "ok"


def test_revoke_sessions_ends_every_session_and_token(config: Path) -> None:
    create_user(config, "alice@example.com")

    async def two_logins(service: IdentityService) -> str:
        await service.login("alice@example.com", PASSWORD, None, CONTEXT)
        return (await service.login("alice@example.com", PASSWORD, None, CONTEXT)).access_token

    token = with_service(config, two_logins)
    assert ok(config, "users", "revoke-sessions", "alice@example.com").stdout == (
        "2 sessions ended\n"
    )
    assert with_service(config, lambda service: _bearer_code(service, token)) == "invalid_token"
    again = ok(config, "users", "revoke-sessions", "alice@example.com")
    assert again.stdout == "0 sessions ended\n"


async def _bearer_code(service: IdentityService, token: str) -> str:
    try:
        await service.authenticate_bearer(token)
    except AuthError as exc:
        return exc.code
    return "ok"


def test_set_password_replaces_it_and_ends_sessions(config: Path) -> None:
    create_user(config, "alice@example.com")
    pair = with_service(
        config, lambda service: service.login("alice@example.com", PASSWORD, None, CONTEXT)
    )
    new = "another long passphrase"
    ok(config, "users", "set-password", "alice@example.com", input=f"{new}\n{new}\n")
    assert login_code(config, "alice@example.com") == "invalid_credentials"
    assert login_code(config, "alice@example.com", new) == "ok"
    code = with_service(config, lambda service: _bearer_code(service, pair.access_token))
    assert code == "invalid_token"
    weak = cli(
        config, "users", "set-password", "alice@example.com", "--password-stdin", input="password\n"
    )
    assert weak.exit_code == 2
    assert "most commonly used" in weak.output


# -- roles -----------------------------------------------------------------------------------------


def test_roles_list_grant_and_revoke(config: Path) -> None:
    create_user(config, "alice@example.com", "viewer")
    listing = as_json(ok(config, "roles", "list", "--json"))
    assert listing["roles"]["admin"] == ["*"]
    assert listing["roles"]["viewer"] == ["*:read"]
    assert listing["grants"] == [
        {"username": "alice@example.com", "role": "viewer", "resource": ""}
    ]

    granted = ok(config, "roles", "grant", "alice@example.com", "operator", "--resource", "p:42")
    assert granted.stdout == "granted operator on p:42 to alice@example.com\n"
    repeated = ok(config, "roles", "grant", "alice@example.com", "operator", "--resource", "p:42")
    assert "already has operator on p:42" in repeated.stdout
    grants = as_json(ok(config, "roles", "list", "--json"))["grants"]
    assert {"username": "alice@example.com", "role": "operator", "resource": "p:42"} in grants
    table = ok(config, "roles", "list").stdout
    assert "*:read *:write" in table
    assert "p:42" in table

    async def resource_roles(service: IdentityService) -> Any:
        user = await service.store.user_by_name("alice@example.com")
        assert user is not None
        return await service.store.grants(user.id)

    assert sorted(with_service(config, resource_roles)) == [("operator", "p:42"), ("viewer", "")]

    ok(config, "roles", "revoke", "alice@example.com", "viewer")
    again = ok(config, "roles", "revoke", "alice@example.com", "viewer")
    assert again.stdout == "alice@example.com had no viewer\n"
    assert with_service(config, resource_roles) == [("operator", "p:42")]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["grant", "alice@example.com", "wizard"], "unknown role 'wizard'"),
        (["revoke", "alice@example.com", "wizard"], "unknown role 'wizard'"),
        (["grant", "alice@example.com", "viewer", "--resource", "42"], "RESOURCE:ID"),
        (["grant", "alice@example.com", "viewer", "--resource", "*:42"], "RESOURCE:ID"),
        (["revoke", "alice@example.com", "viewer", "--resource", "p:"], "RESOURCE:ID"),
    ],
)
def test_roles_usage_errors(config: Path, args: list[str], message: str) -> None:
    create_user(config, "alice@example.com")
    result = cli(config, "roles", *args)
    assert result.exit_code == 2
    assert message in result.output


# -- API keys and signing keys -------------------------------------------------------------------


def test_key_authenticates_until_revoked(config: Path) -> None:
    create_user(config, "alice@example.com", "operator")
    created = ok(
        config, "keys", "create", "--user", "alice@example.com", "--scope", "items:read",
        "--scope", "orders:*", "--name", "ci",
    )  # fmt: skip
    key = created.stdout.splitlines()[-1]
    assert created.stdout == key + "\n"
    assert key.startswith("bst_")
    assert "expires never" in created.stderr

    principal = with_service(config, lambda service: service.authenticate_api_key(key))
    assert principal.username == "alice@example.com"
    assert principal.roles == ("operator",)
    assert principal.scopes == ("items:read", "orders:*")

    listed = as_json(ok(config, "keys", "list", "--json"))
    assert len(listed) == 1
    row = listed[0]
    assert row["owner"] == "alice@example.com"
    assert (row["name"], row["scopes"], row["expires_at"]) == (
        "ci",
        ["items:read", "orders:*"],
        None,
    )
    assert row["last_used_at"] is not None  # stamped when the service above closed
    assert row["revoked_at"] is None
    assert key not in ok(config, "keys", "list").output
    assert key[4:] not in orjson.dumps(listed).decode()

    assert ok(config, "keys", "revoke", row["id"]).stdout == f"revoked {row['id']}\n"
    code = with_service(config, lambda service: _key_code(service, key))
    assert code == "invalid_token"
    assert "already revoked" in ok(config, "keys", "revoke", row["id"]).stdout
    revoked = as_json(ok(config, "keys", "list", "--user", "alice@example.com", "--json"))
    assert revoked[0]["revoked_at"] is not None


async def _key_code(service: IdentityService, key: str) -> str:
    try:
        await service.authenticate_api_key(key)
    except AuthError as exc:
        return exc.code
    return "ok"


def test_key_create_json_with_expiry(config: Path) -> None:
    create_user(config, "alice@example.com")
    result = ok(
        config, "keys", "create", "--user", "alice@example.com", "--expires", "30d", "--json"
    )
    created = as_json(result)
    assert set(created) == {"id", "key", "user", "name", "scopes", "expires_at"}
    expires = datetime.fromisoformat(created["expires_at"])
    assert abs(expires - (datetime.now(UTC) + timedelta(days=30))) < timedelta(minutes=1)
    assert with_service(config, lambda service: _key_code(service, created["key"])) == "ok"
    listed = as_json(ok(config, "keys", "list", "--json"))
    assert [row["id"] for row in listed] == [created["id"]]
    assert listed[0]["expires_at"] is not None


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--scope", "items:read", "--scope", "Items Write"], "invalid permission 'Items Write'"),
        (["--expires", "soon"], "--expires: invalid duration 'soon'"),
        (["--expires", "0s"], "longer than zero"),
    ],
)
def test_key_create_usage_errors(config: Path, args: list[str], message: str) -> None:
    create_user(config, "alice@example.com")
    result = cli(config, "keys", "create", "--user", "alice@example.com", *args)
    assert result.exit_code == 2
    assert message in result.output
    assert as_json(ok(config, "keys", "list", "--json")) == []


def test_revoking_an_unknown_key_is_a_usage_error(config: Path) -> None:
    result = cli(config, "keys", "revoke", "key_doesnotexist")
    assert result.exit_code == 2
    assert "no API key with id 'key_doesnotexist'" in result.output


def test_rotate_signing_changes_the_kid_and_keeps_the_previous_key(config: Path) -> None:
    before = with_service(config, _kids)
    kid = ok(config, "keys", "rotate-signing").stdout.strip()
    after = with_service(config, _kids)
    assert kid not in before[1]
    assert after == (kid, before[1] | {kid})


def test_keys_wrap_adopts_keys_created_before_the_key_encryption_key(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = with_service(config, _kids)  # signing keys created in the clear
    assert cli(config, "keys", "wrap").exit_code == 2  # nothing to wrap with yet
    monkeypatch.setenv(
        "BASTION_STORE__KEY_ENCRYPTION_KEY", base64.b64encode(b"k" * 32).decode("ascii")
    )
    # Until the operator adopts them, keys in the clear are refused: one could be planted.
    assert cli(config, "keys", "rotate-signing").exit_code == 1
    assert ok(config, "keys", "wrap").stdout.strip().startswith("wrapped ")
    assert ok(config, "keys", "wrap").stdout.strip() == "wrapped 0 key(s)"
    assert with_service(config, _kids) == before


async def _kids(service: IdentityService) -> tuple[str, frozenset[str]]:
    ring = service.signing.ring
    return ring.signing.kid, ring.kids


async def test_changes_reach_a_running_service(config: Path) -> None:
    """A running gateway's cached verification of a key ends when the CLI revokes it."""
    # Each command runs its own event loop: off this test's loop, in a thread.
    await asyncio.to_thread(create_user, config, "alice@example.com")
    created = await asyncio.to_thread(ok, config, "keys", "create", "--user", "alice@example.com")
    key = created.stdout.strip()
    async with open_identity(Settings.from_file(config)) as service:
        await service.authenticate_api_key(key)  # now cached
        key_id = as_json(await asyncio.to_thread(ok, config, "keys", "list", "--json"))[0]["id"]
        await asyncio.to_thread(ok, config, "keys", "revoke", key_id)
        # The service polls the database twice a second; a slow machine may take far longer.
        deadline = time.monotonic() + 30
        while await _key_code(service, key) != "invalid_token":
            assert time.monotonic() < deadline, "the revocation did not reach the service"
            await asyncio.sleep(0.1)


# -- failures and help -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args",
    [["users", "list"], ["roles", "list"], ["keys", "list"], ["keys", "rotate-signing"]],
)
def test_unreachable_database_is_a_runtime_failure(tmp_path: Path, args: list[str]) -> None:
    path = tmp_path / "down.toml"
    path.write_text(
        "[store]\ndatabase_url = 'postgresql+asyncpg://u:pw@127.0.0.1:1/x'\ntimeout = '500ms'\n"
    )
    result = cli(path, *args)
    assert result.exit_code == 1
    assert "database failure" in result.output
    assert "Traceback" not in result.output
    assert ":pw@" not in result.output


def test_bad_configuration_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[auth.passwords]\ntime_cost = 0\n")
    result = cli(path, "users", "list")
    assert result.exit_code == 2
    assert "auth.passwords.time_cost" in result.output


@pytest.mark.postgres
def test_over_postgresql(tmp_path: Path, postgres_database_url: str) -> None:
    config = write_config(tmp_path / "pg.toml", postgres_database_url)
    create_user(config, "alice@example.com", "viewer")
    ok(config, "roles", "grant", "alice@example.com", "operator", "--resource", "projects:7")
    key = ok(config, "keys", "create", "--user", "alice@example.com").stdout.strip()
    principal = with_service(config, lambda service: service.authenticate_api_key(key))
    assert principal.roles == ("viewer",)
    ok(config, "users", "disable", "alice@example.com")
    assert with_service(config, lambda service: _key_code(service, key)) == "account_disabled"
    assert login_code(config, "alice@example.com") == "account_disabled"
    rows = as_json(ok(config, "users", "list", "--json"))
    assert [(row["username"], row["status"]) for row in rows] == [("alice@example.com", "disabled")]


@pytest.mark.parametrize(
    "command",
    [
        ["users"],
        ["users", "create"],
        ["users", "list"],
        ["users", "disable"],
        ["users", "enable"],
        ["users", "suspend"],
        ["users", "revoke-sessions"],
        ["users", "set-password"],
        ["roles"],
        ["roles", "list"],
        ["roles", "grant"],
        ["roles", "revoke"],
        ["keys"],
        ["keys", "create"],
        ["keys", "list"],
        ["keys", "revoke"],
        ["keys", "rotate-signing"],
    ],
)
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
    if len(command) > 1:
        assert "--config" in result.output
