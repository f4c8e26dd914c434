"""``bastion db advise``: exit codes (0 report, 1 unreachable, 2 usage), the JSON document against
its published schema, the text report, and the password never shown."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import jsonschema
import orjson
import pytest
from typer.testing import CliRunner

from advisor_seed import seed
from bastion.cli import db_cmd

runner = CliRunner()

SCHEMA = orjson.loads(
    (Path(__file__).resolve().parents[2] / "docs" / "db-advise.schema.json").read_bytes()
)
PASSWORD = "s3cr3t-Pa55"


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.delenv("BASTION_STORE__DATABASE_URL", raising=False)
    # Wide enough that rich never folds a name across lines.
    monkeypatch.setenv("COLUMNS", "250")


@pytest.fixture
def closed_port() -> int:
    """A loopback TCP port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def seeded(postgres_database_url: str) -> str:
    asyncio.run(seed(postgres_database_url))
    return postgres_database_url


def invoke(*args: str) -> tuple[int, str, str]:
    result = runner.invoke(db_cmd.app, ["advise", *args])
    return result.exit_code, result.stdout, result.stderr


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("sqlite+aiosqlite:///./bastion.db", "needs a PostgreSQL URL"),
        (f"mysql://root:{PASSWORD}@127.0.0.1/app", "needs a PostgreSQL URL"),
        (f"postgresql://u:{PASSWORD}@db:notaport/app", "not a database URL"),
        ("not a url", "not a database URL"),
        (f"postgresql://u:{PASSWORD}@127.0.0.1:99999/app", "port is out of range"),
        (f"postgresql://u:{PASSWORD}@127.0.0.1/app?options=-c", "unsupported URL parameter"),
        (f"postgresql://u:{PASSWORD}@127.0.0.1/app?ssl=bogus", "'ssl' must be one of"),
        (f"postgresql://u:{PASSWORD}@127.0.0.1/app?sslmode=on", "'sslmode' must be one of"),
        (
            f"postgresql://u:{PASSWORD}@127.0.0.1/app?ssl=require&sslmode=require",
            "not both",
        ),
        (f"postgresql://u:{PASSWORD}@127.0.0.1/app?ssl=require&ssl=disable", "more than once"),
        (f"postgresql://u:{PASSWORD}@/app?host=/tmp&host=/run", "more than once"),
        (f"postgresql://u:{PASSWORD}@/app?host=db:abc", "not a host[:port] list"),
        (f"postgresql://u:{PASSWORD}@/app?host=db:99999", "not 1-65535"),
        (f"postgresql://u:{PASSWORD}@/app?host=db:0", "not 1-65535"),
        (f"postgresql://u:{PASSWORD}@/app?host=db1:5432,db2", "the driver refused the URL"),
    ],
)
def test_non_postgres_url_is_a_usage_error(url: str, message: str) -> None:
    code, out, err = invoke(url)
    assert code == 2
    assert out == ""
    assert message in err
    assert PASSWORD not in err
    assert "Traceback" not in err


@pytest.mark.parametrize("scheme", ["postgresql", "postgres", "postgresql+asyncpg"])
def test_unreachable_server_exits_1_without_the_password(scheme: str, closed_port: int) -> None:
    url = f"{scheme}://bastion:{PASSWORD}@127.0.0.1:{closed_port}/app"
    code, out, err = invoke(url, "--timeout", "2")
    assert code == 1
    assert out == ""
    assert err.startswith("bastion: cannot advise on the database:")
    assert PASSWORD not in err
    assert "Traceback" not in err


def test_default_database_url_must_be_postgres() -> None:
    code, _, err = invoke()  # no URL, no configuration: the SQLite default
    assert code == 2
    assert "not sqlite+aiosqlite://" in err


@pytest.mark.parametrize(
    "args",
    [["--format", "yaml"], ["--top", "0"], ["--min-rows", "-1"], ["--timeout", "0"]],
)
def test_bad_options_are_usage_errors(args: list[str], closed_port: int) -> None:
    code, _, _ = invoke(f"postgresql://u@127.0.0.1:{closed_port}/app", *args)
    assert code == 2


@pytest.mark.postgres
def test_json_report_matches_the_schema(seeded: str) -> None:
    code, out, err = invoke(seeded, "--format", "json", "--top", "2")
    assert (code, err) == (0, "")
    document = orjson.loads(out)
    jsonschema.validate(document, SCHEMA)
    assert document["thresholds"]["top"] == 2
    assert len(document["cache"]["tables"]) <= 2
    assert len(document["bloat"]["tables"]) == 2
    assert "events_kind_idx" in {index["index"] for index in document["unused_indexes"]}
    assert [table["table"] for table in document["seq_scan_tables"]] == ["orders"]
    assert [key["constraint"] for key in document["unindexed_foreign_keys"]] == [
        "orders_customer_id_fkey"
    ]


@pytest.mark.postgres
def test_min_rows_option(seeded: str) -> None:
    code, out, _ = invoke(seeded, "--format", "json", "--min-rows", "100000")
    assert code == 0
    assert orjson.loads(out)["seq_scan_tables"] == []


@pytest.mark.postgres
def test_text_report_names_every_finding(seeded: str) -> None:
    code, out, err = invoke(seeded.replace("postgresql+asyncpg://", "postgres://"))
    assert (code, err) == (0, "")
    for heading in (
        "Top statements by total time",
        "Unused indexes",
        "Duplicate indexes",
        "Prefix-redundant indexes",
        "Tables read mostly by sequential scans",
        "Foreign keys without an index",
        "Buffer cache hit ratio",
        "Table bloat",
    ):
        assert heading in out
    assert "events_kind_idx" in out
    assert "customer_id (foreign key); reference (~15,000 distinct)" in out
    assert "CREATE INDEX CONCURRENTLY ON public.orders (customer_id)" in out
    assert "statistics-based estimate" in out


@pytest.mark.postgres
def test_url_from_the_configuration(seeded: str, tmp_path: Path) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text(f"[store]\ndatabase_url = '{seeded}'\n")
    code, out, _ = invoke("--config", str(config), "--format", "json")
    assert code == 0
    assert orjson.loads(out)["database"]["name"] == seeded.rsplit("/", 1)[1]
