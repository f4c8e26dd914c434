"""``bastion bans list|lift`` over the SQL ban ledger (SQLite and PostgreSQL): tables, JSON,
exit codes, migrations applied first, failures without tracebacks."""

from __future__ import annotations

import asyncio
import socket
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from bastion.audit.query import StoredEvent, query_events
from bastion.cli import bans_cmd
from bastion.ratelimit.core import BanRule, Check, Rule
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.redis_store import RedisStore
from bastion.ratelimit.wiring import REDIS_KEY_PREFIX
from bastion.store.database import Database
from bastion.store.migrate import upgrade
from bastion.store.redis import RedisConnector

runner = CliRunner()

CLIENT = "ip:203.0.113.7"
OTHER = "ip:2001:db8:1200::/56"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.delenv("BASTION_STORE__REDIS_URL", raising=False)


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def config_file(tmp_path: Path, database_url: str, extra: str = "") -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(f"[store]\ndatabase_url = '{database_url}'\n{extra}")
    return path


def logged_events(stderr: str) -> list[dict[str, Any]]:
    """The audit log lines among a command's standard error lines."""
    lines = [orjson.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    return [line for line in lines if line.get("event") == "audit"]


def recorded_events(database_url: str, kind: str) -> list[StoredEvent]:
    """The events of ``kind`` committed to the audit chain."""

    async def read() -> list[StoredEvent]:
        database = Database.from_url(database_url)
        try:
            await database.start()
            await upgrade(database)
            events, _ = await query_events(database, kind=kind)
            return events
        finally:
            await database.close()

    return asyncio.run(read())


def seed(database_url: str, *bans: tuple[str, float, int, str]) -> None:
    """Record ``(client, seconds from now, level, source)`` bans as a gateway would."""

    async def record() -> None:
        database = Database.from_url(database_url)
        await database.start()
        try:
            await upgrade(database)
            ledger = SqlBanLedger(database)
            for client, seconds, level, source in bans:
                ledger.record(client, until=time.time() + seconds, level=level, source=source)
            await ledger.close()
            assert ledger.pending == 0
        finally:
            await database.close()

    asyncio.run(record())


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(bans_cmd.app, list(args))
    return result.exit_code, result.stdout, result.stderr


def test_list_empty_applies_migrations_first(tmp_path: Path, database_url: str) -> None:
    # A new database: no table yet. The slow-query log is off: on a slow machine the
    # migration's statements pass its 100 ms and their warnings would be on standard error.
    config = config_file(tmp_path, database_url, "slow_query = 0\n")
    code, out, err = invoke("list", "--config", str(config))
    assert (code, out.strip(), err) == (0, "no active bans", "")
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert (code, orjson.loads(out)) == (0, [])


def test_list_shows_active_bans(tmp_path: Path, database_url: str) -> None:
    seed(
        database_url,
        (CLIENT, 60, 1, "ratelimit"),
        (OTHER, 600, 3, "ratelimit"),
        (OTHER, 1800, 0, "inspect"),  # a strike block outlasting the ban: one record
        ("ip:192.0.2.1", -10, 1, "ratelimit"),  # over: not listed
    )
    config = config_file(tmp_path, database_url)
    code, out, _ = invoke("list", "--config", str(config))
    assert code == 0
    lines = out.splitlines()
    assert any(CLIENT in line and "ratelimit" in line for line in lines)
    assert any(f"strike:{OTHER}" in line and "inspect" in line and " 3 " in line for line in lines)
    assert "192.0.2.1" not in out


def test_list_json(tmp_path: Path, database_url: str) -> None:
    seed(database_url, (CLIENT, 60, 1, "ratelimit"), (OTHER, 1800, 0, "inspect"))
    code, out, _ = invoke("list", "--json", "--config", str(config_file(tmp_path, database_url)))
    assert code == 0
    rows = orjson.loads(out)
    assert [(row["client"], row["level"], row["source"]) for row in rows] == [
        (f"strike:{OTHER}", 0, "inspect"),
        (CLIENT, 1, "ratelimit"),
    ]
    assert 1790 <= rows[0]["remaining"] <= 1800
    assert 50 <= rows[1]["remaining"] <= 60
    until = datetime.fromisoformat(rows[1]["until"])
    assert until.utcoffset() == timedelta(0)
    assert abs(until.timestamp() - (time.time() + 60)) < 10


def test_lift_existing_ban(tmp_path: Path, database_url: str) -> None:
    seed(database_url, (CLIENT, 300, 2, "ratelimit"))
    config = config_file(tmp_path, database_url)
    code, out, err = invoke("lift", CLIENT, "--config", str(config))
    assert code == 0
    assert f"lifted the ban of {CLIENT}" in out
    [audit] = logged_events(err)
    assert (audit["kind"], audit["actor"], audit["target"]) == ("admin.ban.lifted", "cli", CLIENT)
    # The operator's change is in the audit chain too, like every other admin action.
    recorded = recorded_events(database_url, "admin.ban.lifted")
    assert [(event.actor, event.target) for event in recorded] == [("cli", CLIENT)]
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert (code, orjson.loads(out)) == (0, [])


def test_lift_without_audit_only_logs(tmp_path: Path, database_url: str) -> None:
    seed(database_url, (CLIENT, 300, 2, "ratelimit"))
    config = config_file(tmp_path, database_url, "[audit]\nenabled = false\n")
    code, _, err = invoke("lift", CLIENT, "--config", str(config))
    assert code == 0
    assert [event["kind"] for event in logged_events(err)] == ["admin.ban.lifted"]
    assert recorded_events(database_url, "admin.ban.lifted") == []


@pytest.mark.parametrize(
    ("stored", "key"),
    [
        ("203.0.113.9", "strike:203.0.113.9"),  # a block is the client's record
        ("203.0.113.9", "203.0.113.9"),  # either name lifts it
        ("strike:203.0.113.9", "strike:203.0.113.9"),  # a row named so by an earlier version
    ],
)
def test_lift_a_strike_block_by_either_name(
    tmp_path: Path, database_url: str, stored: str, key: str
) -> None:
    seed(database_url, (stored, 300, 0, "inspect"))
    config = config_file(tmp_path, database_url)
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert [row["client"] for row in orjson.loads(out)] == ["strike:203.0.113.9"]
    code, out, err = invoke("lift", key, "--config", str(config))
    assert (code, out.strip()) == (0, f"lifted the ban of {key}"), err
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert (code, orjson.loads(out)) == (0, [])


def test_lift_missing_ban_is_a_usage_error(tmp_path: Path, database_url: str) -> None:
    seed(database_url, ("ip:192.0.2.1", -10, 1, "ratelimit"))  # ended: nothing to lift
    config = config_file(tmp_path, database_url)
    for key in (CLIENT, "ip:192.0.2.1"):
        code, out, err = invoke("lift", key, "--config", str(config))
        assert code == 2
        assert out == ""
        assert f"no active ban for '{key}'" in err


def test_unreachable_database_is_a_runtime_failure(tmp_path: Path, closed_port: int) -> None:
    url = f"postgresql+asyncpg://bastion:secret-pw@127.0.0.1:{closed_port}/bastion"
    config = config_file(tmp_path, url, "timeout = '500ms'\n")
    for args in (["list"], ["list", "--json"], ["lift", CLIENT]):
        result = runner.invoke(bans_cmd.app, [*args, "--config", str(config)])
        assert result.exit_code == 1
        assert result.exception is None or isinstance(result.exception, SystemExit)
        assert "bastion: database failure:" in result.stderr
        assert "Traceback" not in result.output
        assert "secret-pw" not in result.output


def test_missing_table_without_auto_migrate_is_a_runtime_failure(
    tmp_path: Path, database_url: str
) -> None:
    config = config_file(tmp_path, database_url, "auto_migrate = false\n")
    code, out, err = invoke("list", "--config", str(config))
    assert code == 1
    assert out == ""
    assert "bastion: database failure:" in err


def test_invalid_config_is_a_usage_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[store]\nauto_migrat = true\n")
    code, _, err = invoke("list", "--config", str(path))
    assert code == 2
    assert "store.auto_migrat" in err


@pytest.mark.parametrize("command", [[], ["list"], ["lift"]])
def test_help(command: list[str]) -> None:
    result = runner.invoke(bans_cmd.app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output


# -- bans in Redis (the gateways count there) --------------------------------------------------


def redis_ban(redis_url: str, client: str) -> None:
    """Ban ``client`` in Redis the way a gateway does: refused once with a threshold of one."""
    # An hour-long window on Redis's real clock: both calls fall in it, however slow the run.
    rule = Rule(policy="t", algorithm="fixed_window", limit=1, period=3600.0, burst=1)
    check = Check(rule=rule, key=f"t|{client}")
    bans = BanRule(threshold=1, window=60.0, durations=(120.0,), reset_after=3600.0)

    async def ban() -> None:
        connector = RedisConnector.from_url(redis_url)
        store = RedisStore(connector, prefix=REDIS_KEY_PREFIX)
        try:
            assert (await store.evaluate([check], client=client, bans=bans)).allowed
            refused = await store.evaluate([check], client=client, bans=bans)
            assert refused.new_ban == 120.0
        finally:
            await store.close()
            await connector.close()

    asyncio.run(ban())


def redis_config(tmp_path: Path, redis_url: str, database_url: str) -> Path:
    return config_file(tmp_path, database_url, f"redis_url = '{redis_url}'\n")


def test_redis_bans_are_listed_and_lifted(tmp_path: Path, clean_redis_url: str) -> None:
    # The database is never opened: a directory cannot be an SQLite file.
    config = redis_config(tmp_path, clean_redis_url, f"sqlite+aiosqlite:///{tmp_path}")
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert (code, orjson.loads(out)) == (0, [])

    redis_ban(clean_redis_url, CLIENT)
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert code == 0
    [row] = orjson.loads(out)
    assert (row["client"], row["level"], row["source"]) == (CLIENT, 1, "ratelimit")
    assert 110 <= row["remaining"] <= 120

    # Lifting is an operator's change: recorded in the audit chain, in the database.
    database_url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    audited = tmp_path / "audited"
    audited.mkdir()
    with_database = redis_config(audited, clean_redis_url, database_url)
    code, out, _ = invoke("lift", CLIENT, "--config", str(with_database))
    assert (code, out.strip()) == (0, f"lifted the ban of {CLIENT}")
    assert [event.target for event in recorded_events(database_url, "admin.ban.lifted")] == [CLIENT]
    code, _, err = invoke("lift", CLIENT, "--config", str(config))
    assert code == 2
    assert "no active ban" in err
    code, out, _ = invoke("list", "--config", str(config))
    assert (code, out.strip()) == (0, "no active bans")


def test_memory_counters_keep_bans_in_the_database_even_with_redis(
    tmp_path: Path, clean_redis_url: str, database_url: str
) -> None:
    seed(database_url, (CLIENT, 60, 1, "ratelimit"))
    redis_ban(clean_redis_url, OTHER)
    config = config_file(
        tmp_path,
        database_url,
        f"redis_url = '{clean_redis_url}'\n[ratelimit]\nstore = 'memory'\n",
    )
    code, out, _ = invoke("list", "--json", "--config", str(config))
    assert code == 0
    assert [row["client"] for row in orjson.loads(out)] == [CLIENT]


def test_unreachable_redis_is_a_runtime_failure(tmp_path: Path, closed_port: int) -> None:
    config = redis_config(
        tmp_path, f"redis://127.0.0.1:{closed_port}/0", f"sqlite+aiosqlite:///{tmp_path}"
    )
    for args in (["list"], ["lift", CLIENT]):
        result = runner.invoke(bans_cmd.app, [*args, "--config", str(config)])
        assert result.exit_code == 1
        assert "bastion: redis failure:" in result.stderr
        assert "Traceback" not in result.output
