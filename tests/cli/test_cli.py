"""The command line: config check/show, db upgrade, argument errors with exit code 2."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bastion.cli.app import app

runner = CliRunner()


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_check_ok(tmp_path: Path) -> None:
    path = write(tmp_path / "ok.toml", "[server]\nport = 9001\n")
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 0
    assert "ok" in result.output


def test_config_check_example_file() -> None:
    example = Path(__file__).resolve().parents[2] / "examples" / "bastion.toml"
    assert runner.invoke(app, ["config", "check", str(example)]).exit_code == 0


@pytest.mark.parametrize(
    ("toml", "named"),
    [
        ("[server]\nprot = 1\n", "server.prot"),
        ("[limits]\nmax_body_bytes = 'lots'\n", "limits.max_body_bytes"),
        ("[[routes]]\nupstream = 'gopher://x'\n", "routes.0.upstream"),
        ("not toml at all [", "TOML syntax error"),
    ],
)
def test_config_check_names_offending_key(tmp_path: Path, toml: str, named: str) -> None:
    path = write(tmp_path / "bad.toml", toml)
    result = runner.invoke(app, ["config", "check", str(path)])
    assert result.exit_code == 2
    assert named in result.output


def test_config_check_missing_file(tmp_path: Path) -> None:
    result = runner.invoke(app, ["config", "check", str(tmp_path / "nope.toml")])
    assert result.exit_code == 2


def test_config_show_redacts_secrets(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MY_CSRF_SECRET", "super-secret-value-123456")
    path = write(tmp_path / "c.toml", "[csrf]\nenabled = true\nsecrets = ['env:MY_CSRF_SECRET']\n")
    result = runner.invoke(app, ["config", "show", "--config", str(path)])
    assert result.exit_code == 0
    shown = orjson.loads(result.output)
    assert shown["csrf"]["secrets"] == ["**********"]
    assert "super-secret" not in result.output
    assert shown["limits"]["max_body_bytes"] == 10 * 1024 * 1024


def test_config_show_reads_env_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write(tmp_path / "env.toml", "[server]\nport = 9333\n")
    monkeypatch.setenv("BASTION_CONFIG", str(path))
    result = runner.invoke(app, ["config", "show"])
    assert orjson.loads(result.output)["server"]["port"] == 9333


def test_db_upgrade_sqlite(tmp_path: Path) -> None:
    db = tmp_path / "data" / "b.db"
    path = write(tmp_path / "db.toml", f"[store]\ndatabase_url = 'sqlite+aiosqlite:///{db}'\n")
    first = runner.invoke(app, ["db", "upgrade", "--config", str(path)])
    assert first.exit_code == 0, first.output
    assert "applied" in first.output
    tables = {row[0] for row in sqlite3.connect(db).execute("select name from sqlite_master")}
    assert "bastion_keys" in tables
    second = runner.invoke(app, ["db", "upgrade", "--config", str(path)])
    assert "up to date" in second.output


def test_db_upgrade_unreachable_is_runtime_failure(tmp_path: Path) -> None:
    path = write(
        tmp_path / "pg.toml",
        "[store]\ndatabase_url = 'postgresql+asyncpg://u:pw@127.0.0.1:1/x'\ntimeout = '500ms'\n",
    )
    result = runner.invoke(app, ["db", "upgrade", "--config", str(path)])
    assert result.exit_code == 1
    assert "pw" not in result.output


def test_serve_without_upstream_is_usage_error() -> None:
    result = runner.invoke(app, ["serve"])
    assert result.exit_code == 2
    assert "--upstream" in result.output


def test_serve_bad_upstream_is_usage_error() -> None:
    result = runner.invoke(app, ["serve", "--upstream", "ftp://example"])
    assert result.exit_code == 2
    assert "upstream" in result.output


def test_serve_upstream_that_leaves_a_rule_naming_a_missing_route_is_usage_error(
    tmp_path: Path,
) -> None:
    # The configured route "api" is replaced by --upstream's catch-all; an alert rule still
    # names it, which the whole configuration check catches before anything starts.
    path = tmp_path / "bastion.toml"
    path.write_text(
        """
[[routes]]
name = "api"
prefix = "/api"
upstream = "http://127.0.0.1:9"

[alerts]
enabled = true

[[alerts.rules]]
name = "api errors"
kind = "error_rate"
threshold = 5
window = "1m"
routes = ["api"]
"""
    )
    result = runner.invoke(
        app, ["serve", "--config", str(path), "--upstream", "http://127.0.0.1:9"]
    )
    assert result.exit_code == 2, result.output
    assert "alerts.rules" in result.output
    assert "Traceback" not in result.output


@pytest.mark.parametrize(
    "command",
    [
        [],
        ["serve"],
        ["demo"],
        ["config"],
        ["config", "check"],
        ["config", "show"],
        ["db"],
        ["db", "upgrade"],
    ],
)
def test_help(command: list[str]) -> None:
    result = runner.invoke(app, [*command, "--help"])
    assert result.exit_code == 0
    assert "Usage" in result.output
