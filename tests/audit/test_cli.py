"""``bastion audit verify | export | tail`` over a real chain in SQLite.

Exit codes are the contract (DESIGN.md §2): 0 ok, 1 database failure, 2 usage, 3 broken chain
with the first bad ``seq`` printed. Standard output carries only the answer (events, the
verdict); log lines go to standard error.
"""

from __future__ import annotations

import asyncio
import csv
import io
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest
from typer.testing import CliRunner

from audit.chain_harness import execute, fill, sample_event, started_stores
from bastion.audit.config import AuditConfig
from bastion.audit.log import AuditLog
from bastion.audit.reader import FIELDS, AuditFilter, AuditReader
from bastion.cli import audit_cmd

runner = CliRunner()
EVENTS = 30


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    for name in ("BASTION_CONFIG", "BASTION_STORE__DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def _url(tmp_path: Path) -> str:
    return f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"


def _config(tmp_path: Path, url: str | None = None) -> str:
    path = tmp_path / "bastion.toml"
    path.write_text(f'[store]\ndatabase_url = "{url or _url(tmp_path)}"\ntimeout = "2s"\n')
    return str(path)


def _invoke(tmp_path: Path, *args: str, url: str | None = None) -> Any:
    return runner.invoke(audit_cmd.app, [*args, "--config", _config(tmp_path, url)])


@pytest.fixture
def chain(tmp_path: Path) -> Path:
    """A database holding a chain of :data:`EVENTS` sample events."""

    async def build() -> None:
        async with started_stores(_url(tmp_path)) as stores:
            await fill(stores, EVENTS)

    asyncio.run(build())
    return tmp_path


def _tamper(tmp_path: Path, *statements: str) -> None:
    async def run() -> None:
        async with started_stores(_url(tmp_path)) as stores:
            await execute(stores, statements)

    asyncio.run(run())


def _jsonl(output: str) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in output.splitlines()]


# ---------------------------------------------------------------- verify


def test_verify_an_intact_chain(chain: Path) -> None:
    result = _invoke(chain, "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout == f"audit chain intact: {EVENTS} events verified (seq 1 to {EVENTS})\n"


def test_verify_an_empty_log(tmp_path: Path) -> None:
    result = _invoke(tmp_path, "verify")
    assert result.exit_code == 0, result.output
    assert result.stdout == "audit chain intact: 0 events verified (no events)\n"


@pytest.mark.parametrize(
    ("statements", "bad_seq", "reason"),
    [
        (["UPDATE audit_events SET detail = '{}' WHERE seq = 7"], 7, "hash_mismatch"),
        (["UPDATE audit_events SET actor = 'someone-else' WHERE seq = 12"], 12, "hash_mismatch"),
        (["UPDATE audit_events SET ts = '2020-01-01 00:00:00' WHERE seq = 3"], 3, "hash_mismatch"),
        (["DELETE FROM audit_events WHERE seq = 9"], 9, "gap"),
        (["DELETE FROM audit_events WHERE seq >= 28"], 28, "head_mismatch"),
        (["UPDATE audit_events SET prev_hash = hash WHERE seq = 15"], 15, "prev_hash_mismatch"),
        (["UPDATE audit_events SET key_id = 'no-such-key' WHERE seq = 4"], 4, "unknown_key"),
        (["UPDATE audit_events SET key_id = NULL WHERE seq = 20"], 20, "unkeyed"),
    ],
    ids=[
        "detail",
        "actor",
        "ts",
        "deleted",
        "tail-truncated",
        "relinked",
        "foreign-key",
        "unkeyed",
    ],
)
def test_verify_finds_the_first_bad_seq(
    chain: Path, statements: list[str], bad_seq: int, reason: str
) -> None:
    _tamper(chain, *statements)
    result = _invoke(chain, "verify")
    assert result.exit_code == 3, result.output
    assert result.stdout.startswith(f"audit chain broken at seq {bad_seq}: {reason}")
    as_json = _invoke(chain, "verify", "--json")
    assert as_json.exit_code == 3
    report = orjson.loads(as_json.stdout)
    assert (report["ok"], report["first_bad_seq"], report["reason"]) == (False, bad_seq, reason)


def test_verify_json_of_an_intact_chain(chain: Path) -> None:
    result = _invoke(chain, "verify", "--json")
    assert result.exit_code == 0
    report = orjson.loads(result.stdout)
    assert report["ok"] is True
    assert report["checked"] == EVENTS


@pytest.mark.parametrize("command", [["verify"], ["export"], ["tail"]])
def test_database_failure_exits_1(tmp_path: Path, command: list[str]) -> None:
    # Nothing listens on port 1: the connection is refused at once.
    url = "postgresql+asyncpg://bastion@127.0.0.1:1/bastion"
    result = _invoke(tmp_path, *command, url=url)
    assert result.exit_code == 1, result.output
    assert "bastion: database failure:" in result.stderr
    assert result.stdout == ""


def test_bad_configuration_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[audit]\nsyslog = { address = 'nowhere' }\n")
    result = runner.invoke(audit_cmd.app, ["verify", "--config", str(path)])
    assert result.exit_code == 2
    assert "audit.syslog" in result.stderr


# ---------------------------------------------------------------- export


def test_export_jsonl_streams_every_event_oldest_first(chain: Path) -> None:
    result = _invoke(chain, "export")
    assert result.exit_code == 0, result.stderr
    records = _jsonl(result.stdout)
    assert [r["seq"] for r in records] == list(range(1, EVENTS + 1))
    assert tuple(records[0]) == FIELDS
    assert records[0]["detail"]["number"] == 1
    assert records[0]["request_id"] == "req-1"


def test_export_csv(chain: Path) -> None:
    result = _invoke(chain, "export", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert tuple(rows[0]) == FIELDS
    assert [int(r["seq"]) for r in rows] == list(range(1, EVENTS + 1))
    assert orjson.loads(rows[4]["detail"])["nested"] == {"list": [1, "two", None]}


FORMULAS = ['=HYPERLINK("http://x")', "+1+1", "-2+3", "@SUM(A1)", "\tx", "\rx", "plain"]


def test_export_csv_keeps_formulas_as_text(tmp_path: Path) -> None:
    async def build() -> None:
        async with started_stores(_url(tmp_path)) as stores:
            log = AuditLog.from_stores(AuditConfig(), stores)
            await log.start()
            try:
                for number, value in enumerate(FORMULAS, start=1):
                    await log.emit(sample_event(number, actor=value, target=value))
            finally:
                await log.close()

    asyncio.run(build())
    result = _invoke(tmp_path, "export", "--format", "csv")
    assert result.exit_code == 0, result.stderr
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    # Stored escaped (a tab or CR is a control character), then shown as text, never a formula.
    expected = ['\'=HYPERLINK("http://x")', "'+1+1", "'-2+3", "'@SUM(A1)", "\\x09x", "\\x0dx"]
    assert [row["target"] for row in rows] == [*expected, "plain"]
    assert [row["actor"] for row in rows] == [*expected, "plain"]
    assert all(not row["ts"].startswith("'") for row in rows)


def test_export_filters(chain: Path) -> None:
    result = _invoke(chain, "export", "--kind", "auth.*", "--actor", "user-1")
    assert result.exit_code == 0, result.stderr
    expected = [n for n in range(1, EVENTS + 1) if n % 2 == 1 and n % 3 == 1]
    assert [r["seq"] for r in _jsonl(result.stdout)] == expected
    recent = _invoke(chain, "export", "--since", "1h")
    assert len(_jsonl(recent.stdout)) == EVENTS
    future = _invoke(chain, "export", "--since", "2999-01-01T00:00:00Z")
    assert future.exit_code == 0
    assert future.stdout == ""
    past = _invoke(chain, "export", "--until", "2000-01-01T00:00:00+00:00", "--format", "csv")
    assert past.stdout.splitlines() == [",".join(FIELDS)]


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["--since", "yesterday"], "--since"),
        (["--until", "2026-01-01T00:00:00"], "--until"),
        (["--since", "1h", "--until", "2h"], "--until"),
        (["--kind", "Auth.Failed"], "--kind"),
        (["--actor", "a\tb"], "--actor"),
        (["--since", "0001-01-01T00:00:00+14:00"], "--since"),
        (["--until", "9999-12-31T23:59:59-14:00"], "--until"),
        (["--format", "xml"], "--format"),
    ],
)
def test_export_usage_errors_exit_2(tmp_path: Path, args: list[str], named: str) -> None:
    result = _invoke(tmp_path, "export", *args)
    assert result.exit_code == 2, result.output
    assert named in result.stderr


async def test_stream_holds_one_batch_at_a_time(tmp_path: Path) -> None:
    async with started_stores(_url(tmp_path)) as stores:
        await fill(stores, 25)
        reader = AuditReader(stores.database)
        seqs = [r["seq"] async for r in reader.stream(AuditFilter(), batch=7)]
        assert seqs == list(range(1, 26))
        later = [r["seq"] async for r in reader.stream(AuditFilter(), after_seq=20, batch=7)]
        assert later == [21, 22, 23, 24, 25]


# ---------------------------------------------------------------- tail


def test_tail_prints_the_last_events_oldest_first(chain: Path) -> None:
    result = _invoke(chain, "tail", "-n", "5")
    assert result.exit_code == 0, result.stderr
    assert [r["seq"] for r in _jsonl(result.stdout)] == [26, 27, 28, 29, 30]
    default = _invoke(chain, "tail")
    assert len(_jsonl(default.stdout)) == 10
    filtered = _invoke(chain, "tail", "-n", "3", "--kind", "access.denied")
    assert [r["seq"] for r in _jsonl(filtered.stdout)] == [26, 28, 30]


@pytest.mark.parametrize("lines", ["0", "501", "many"])
def test_tail_line_count_is_bounded(tmp_path: Path, lines: str) -> None:
    assert _invoke(tmp_path, "tail", "-n", lines).exit_code == 2


class _Collected:
    """Stands in for standard output: what ``tail --follow`` printed."""

    def __init__(self) -> None:
        self.closed = False
        self.lines: list[dict[str, Any]] = []

    def write(self, text: str) -> None:
        self.lines += _jsonl(text)


async def printed(out: _Collected, count: int) -> None:
    """Wait until ``tail --follow`` printed ``count`` lines: it polls the database, which a slow
    disk can hold up, so it is given up to 30 s."""
    async with asyncio.timeout(30):
        while len(out.lines) < count:
            await asyncio.sleep(0.02)


async def test_tail_follow_prints_new_events_as_they_are_committed(tmp_path: Path) -> None:
    async with started_stores(_url(tmp_path)) as stores:
        await fill(stores, 4)
        out = _Collected()
        reader = AuditReader(stores.database)
        follow = asyncio.create_task(
            audit_cmd._tail(reader, AuditFilter(), 2, True, 0.05, out)  # type: ignore[arg-type]
        )
        # New events only once the last two are printed: else they could be among the last two.
        await printed(out, 2)
        log = AuditLog(AuditConfig(), stores.database, stores.keys)
        await log.start()
        try:
            for number in range(5, 9):
                await log.emit(sample_event(number))
            await printed(out, 6)
        finally:
            follow.cancel()
            await asyncio.gather(follow, return_exceptions=True)
            await log.close()
    assert [r["seq"] for r in out.lines] == [3, 4, 5, 6, 7, 8]


async def test_tail_follow_on_an_empty_log_prints_every_new_event(tmp_path: Path) -> None:
    async with started_stores(_url(tmp_path)) as stores:
        out = _Collected()
        follow = asyncio.create_task(
            audit_cmd._tail(  # type: ignore[arg-type]
                AuditReader(stores.database), AuditFilter(), 10, True, 0.05, out
            )
        )
        await fill(stores, 3)
        await printed(out, 3)
        follow.cancel()
        await asyncio.gather(follow, return_exceptions=True)
    assert [r["seq"] for r in out.lines] == [1, 2, 3]


def test_export_into_a_reader_that_goes_away_ends_quietly(tmp_path: Path) -> None:
    async def build() -> None:
        async with started_stores(_url(tmp_path)) as stores:
            log = AuditLog(AuditConfig(), stores.database, stores.keys)
            await log.start()
            try:
                # Concurrent emits share commits: quick to fill, and far more than a pipe holds.
                await asyncio.gather(*(log.emit(sample_event(n)) for n in range(1, 2001)))
            finally:
                await log.close()

    asyncio.run(build())
    export = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "bastion"),
            "audit",
            "export",
            "--config",
            _config(tmp_path),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={k: v for k, v in os.environ.items() if not k.startswith("BASTION_")},
    )
    assert export.stdout is not None
    assert export.stderr is not None
    first = export.stdout.readline()
    export.stdout.close()
    errors = export.stderr.read().decode()
    export.stderr.close()
    assert export.wait(60) == 0, errors
    assert orjson.loads(first)["seq"] == 1
    assert "Traceback" not in errors, errors
    assert "BrokenPipe" not in errors, errors
