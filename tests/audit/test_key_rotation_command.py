"""``bastion keys rotate-audit``: a new HMAC key, recorded in the chain, older events still
verifying; a database failure exits 1."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog
from typer.testing import CliRunner

from audit.chain_harness import fill, started_stores
from bastion.audit.store import open_audit
from bastion.audit.verify import VerifyReport
from bastion.cli.app import app
from bastion.settings import Settings

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    yield
    structlog.reset_defaults()


def write_config(tmp_path: Path, database_url: str) -> Path:
    path = tmp_path / "bastion.toml"
    path.write_text(f'[store]\ndatabase_url = "{database_url}"\ntimeout = "1s"\n')
    return path


def verify(config: Path) -> VerifyReport:
    async def run() -> VerifyReport:
        async with open_audit(Settings.from_file(config)) as audit:
            return await audit.verify()

    return asyncio.run(run())


def test_rotation_adds_a_key_and_records_itself(tmp_path: Path) -> None:
    database = tmp_path / "b.db"
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{database}")

    async def some_events() -> None:
        async with started_stores(f"sqlite+aiosqlite:///{database}") as stores:
            await fill(stores, 3)

    asyncio.run(some_events())
    first = runner.invoke(app, ["keys", "rotate-audit", "--config", str(config)])
    assert first.exit_code == 0, first.output
    second = runner.invoke(app, ["keys", "rotate-audit", "--config", str(config)])
    assert second.exit_code == 0, second.output
    new_ids = [first.stdout.strip(), second.stdout.strip()]
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT seq, kind, actor, target, key_id FROM audit_events ORDER BY seq"
        ).fetchall()
        generations = connection.execute(
            "SELECT count(*) FROM bastion_keys WHERE purpose = 'audit_hmac' AND retired_at IS NULL"
        ).fetchone()
    original = rows[0][4]
    assert [row[4] for row in rows[:3]] == [original] * 3
    assert rows[3:] == [
        (4, "admin.key.audit_rotated", "cli", new_ids[0], new_ids[0]),
        (5, "admin.key.audit_rotated", "cli", new_ids[1], new_ids[1]),
    ]
    assert len({original, *new_ids}) == 3
    assert generations == (3,)
    report = verify(config)
    assert (report.ok, report.checked) == (True, 5)


def test_an_unreachable_database_exits_1(tmp_path: Path) -> None:
    with socket_closed() as port:
        config = write_config(tmp_path, f"postgresql+asyncpg://bastion@127.0.0.1:{port}/x")
        result = runner.invoke(app, ["keys", "rotate-audit", "--config", str(config)])
    assert result.exit_code == 1
    assert "database failure" in result.output


class socket_closed:
    """A loopback port nothing listens on, for the length of the block."""

    def __enter__(self) -> int:
        import socket

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port: int = sock.getsockname()[1]
        return port

    def __exit__(self, *exc: object) -> None:
        return None


def test_operator_commands_are_recorded_in_the_chain(tmp_path: Path) -> None:
    database = tmp_path / "b.db"
    config = write_config(tmp_path, f"sqlite+aiosqlite:///{database}")
    with config.open("a") as toml:
        toml.write("[auth.passwords]\ntime_cost = 1\nmemory_cost_kib = 8192\n")
    created = runner.invoke(
        app,
        ["users", "create", "ann@example.com", "--password-stdin", "--config", str(config)],
        input="correct horse battery staple\n",
    )
    assert created.exit_code == 0, created.output
    disabled = runner.invoke(app, ["users", "disable", "ann@example.com", "--config", str(config)])
    assert disabled.exit_code == 0, disabled.output
    with sqlite3.connect(database) as connection:
        rows = connection.execute(
            "SELECT kind, actor, detail FROM audit_events ORDER BY seq"
        ).fetchall()
    assert [(kind, actor) for kind, actor, _ in rows] == [
        ("admin.user.created", "cli"),
        ("admin.user.disabled", "cli"),
    ]
    assert "correct horse" not in str(rows)
    assert verify(config).ok
