"""The audit log's own throughput: events per second committed to SQLite and PostgreSQL.

One process, one event loop, the default ``[audit]`` (HMAC chain, group commit, batches of up to
500, ``loss_window = 0``): ``CONCURRENCY`` producer tasks, each standing for a request that
emits an event and waits for its commit, as a busy gateway's requests do. Throughput is events
committed per second of wall time over the whole run; each run starts on an empty chain, runs
alternate between the databases and the median run is reported, with the mean batch size and
the p50/p99 time an ``emit()`` waited. After each run the chain is verified.

SQLite is a file in a temporary directory (WAL, ``synchronous=NORMAL``: what Bastion configures).
PostgreSQL is a throwaway server started for the run with its durable defaults (``fsync`` and
``synchronous_commit`` on), pinned to another CPU as a database server would be another machine;
``--postgres-url`` uses an existing server instead (a new database in it).

``python -m bench.audit_log [--quick] [--postgres-url URL] [--postgres-cpu N]`` prints JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import logging
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import asyncpg
import structlog
from sqlalchemy.engine import make_url

from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditLog
from bastion.audit.store import AuditStore
from bastion.store.config import StoreConfig
from bastion.store.stores import Stores

__all__ = [
    "AUDIT_EVENTS_TARGET",
    "AuditLogResult",
    "BackendRun",
    "audit_log_goals",
    "audit_log_section",
    "run_audit_log",
]

AUDIT_EVENTS_TARGET = 20_000.0
"""Events per second the audit log must commit, to SQLite and to PostgreSQL."""
CONCURRENCY = 512
"""Producers emitting at once: requests in flight, each waiting for its event's commit."""
FULL = {"events": 100_000, "runs": 3}
QUICK = {"events": 10_000, "runs": 1}
_PG_OS_USER = "bastion-pg"
"""The system user PostgreSQL runs as when the benchmark runs as root (as scripts/services.sh)."""


@dataclass
class BackendRun:
    """One run against one database."""

    backend: str
    events: int
    seconds: float
    events_per_s: float
    transactions: int
    emit_p50_ms: float
    emit_p99_ms: float
    cpu_us_per_event: float
    """This process's CPU time (every thread: the event loop and the database driver's) per
    event: steadier than wall time on a shared machine."""


@dataclass
class AuditLogResult:
    runs: list[BackendRun] = field(default_factory=list)
    events: int = 0
    concurrency: int = CONCURRENCY
    postgres: str = ""
    """How PostgreSQL was provided (version and settings)."""
    quick: bool = False

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> AuditLogResult:
        result = cls(**{k: v for k, v in data.items() if k != "runs"})
        result.runs = [BackendRun(**run) for run in data.get("runs", [])]
        return result

    def median(self, backend: str) -> BackendRun | None:
        """The run of ``backend`` with the median throughput."""
        runs = sorted(
            (run for run in self.runs if run.backend == backend), key=lambda r: r.events_per_s
        )
        return runs[len(runs) // 2] if runs else None


class _CountingAppend:
    """Counts the transactions (batches) an :class:`AuditLog` commits."""

    def __init__(self, log: AuditLog) -> None:
        self._append = log.chain.append
        self.transactions = 0
        log.chain.append = self  # type: ignore[method-assign]

    async def __call__(self, events: Any, key: Any) -> Any:
        self.transactions += 1
        return await self._append(events, key)


async def _one_run(backend: str, url: str, events: int) -> BackendRun:
    stores = Stores(StoreConfig(database_url=url, timeout=30.0, pool_size=4))
    await stores.start()
    config = AuditConfig()
    log = AuditLog(config, stores.database, stores.keys)
    await log.start()
    counter = _CountingAppend(log)
    waits: list[float] = []
    numbers = iter(range(events))

    async def producer() -> None:
        for number in numbers:
            event = AuditEvent(
                kind="inspect.detected",
                outcome="success",
                actor=None,
                target="/hello",
                client_ip="127.0.0.1",
                request_id=f"bench-{number}",
                detail={"mode": "monitor", "score": 5, "method": "GET", "rules": ["942100"]},
            )
            started = time.perf_counter()
            await log.emit(event)
            waits.append(time.perf_counter() - started)

    try:
        cpu = time.process_time()
        started = time.perf_counter()
        await asyncio.gather(*(producer() for _ in range(CONCURRENCY)))
        seconds = time.perf_counter() - started
        cpu = time.process_time() - cpu
    finally:
        await log.close()
    report = await AuditStore.from_stores(config, stores).verify()
    await stores.close()
    if not report.ok or report.checked != events:
        raise RuntimeError(f"{backend}: the chain did not verify after the run: {report}")
    waits.sort()
    return BackendRun(
        backend=backend,
        events=events,
        seconds=round(seconds, 4),
        events_per_s=round(events / seconds, 1),
        transactions=counter.transactions,
        emit_p50_ms=round(waits[len(waits) // 2] * 1000, 3),
        emit_p99_ms=round(waits[int(len(waits) * 0.99)] * 1000, 3),
        cpu_us_per_event=round(cpu / events * 1e6, 2),
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _pg_bindir() -> Path:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).resolve().parent
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not candidates:
        raise RuntimeError("PostgreSQL is not installed (pg_ctl not found)")
    return Path(candidates[-1]).parent


def _ensure_server_user() -> None:
    """Create the system user PostgreSQL runs as under root, as scripts/services.sh does."""
    if subprocess.run(["id", "-u", _PG_OS_USER], capture_output=True, check=False).returncode:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--home-dir", "/nonexistent",
             "--shell", "/usr/sbin/nologin", _PG_OS_USER],
            check=True,
        )  # fmt: skip


def _as_server_user(argv: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root: under root, run it as :data:`_PG_OS_USER`."""
    return ["runuser", "-u", _PG_OS_USER, "--", *argv] if os.geteuid() == 0 else argv


@contextlib.contextmanager
def postgres_server(cpu: str | None) -> Iterator[tuple[str, str]]:
    """A throwaway PostgreSQL with durable commits; yields its URL and a description."""
    bindir = _pg_bindir()
    port = _free_port()
    directory = Path(tempfile.mkdtemp(prefix="bastion-bench-pg."))
    if os.geteuid() == 0:
        _ensure_server_user()
        shutil.chown(directory, _PG_OS_USER)
    directory.chmod(0o700)
    data = directory / "pg"
    subprocess.run(
        _as_server_user([str(bindir / "initdb"), f"--pgdata={data}", "--username=bastion",
                         "--auth=trust", "--encoding=UTF8", "--locale=C.UTF-8", "--no-sync"]),
        cwd="/",
        check=True,
        capture_output=True,
    )  # fmt: skip
    options = f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={directory}"
    start = [str(bindir / "pg_ctl"), f"--pgdata={data}", f"--log={directory / 'pg.log'}",
             "--wait", "--timeout=60", f"--options={options}", "start"]  # fmt: skip
    if cpu is not None:
        start = ["taskset", "-c", cpu, *start]
    # From / so that an unreadable working directory does not trouble the server's user.
    subprocess.run(_as_server_user(start), cwd="/", check=True, capture_output=True)
    try:
        version = subprocess.run(
            [str(bindir / "postgres"), "--version"], capture_output=True, text=True, check=False
        ).stdout.strip()
        where = f" on CPU {cpu}" if cpu is not None else ""
        yield (
            f"postgresql+asyncpg://bastion@127.0.0.1:{port}/postgres",
            f"{version}, throwaway server{where}, default fsync and synchronous_commit (on)",
        )
    finally:
        subprocess.run(
            _as_server_user([str(bindir / "pg_ctl"), f"--pgdata={data}", "--mode=fast",
                             "--wait", "stop"]),
            cwd="/", capture_output=True, check=False,
        )  # fmt: skip
        shutil.rmtree(directory, ignore_errors=True)


async def _new_database(server_url: str) -> tuple[str, str]:
    url = make_url(server_url)
    name = f"bastion_bench_{uuid.uuid4().hex[:12]}"
    dsn = url.set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'CREATE DATABASE "{name}"')
    finally:
        await connection.close()
    return url.set(database=name).render_as_string(hide_password=False), name


async def _drop_database(server_url: str, name: str) -> None:
    dsn = make_url(server_url).set(drivername="postgresql").render_as_string(hide_password=False)
    connection = await asyncpg.connect(dsn)
    try:
        await connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await connection.close()


async def run_audit_log(postgres_url: str, *, events: int, runs: int) -> AuditLogResult:
    """``runs`` rounds of SQLite then PostgreSQL, each on an empty chain."""
    result = AuditLogResult(events=events)
    for _ in range(runs):
        with tempfile.TemporaryDirectory(prefix="bastion-bench-audit.") as tmp:
            url = f"sqlite+aiosqlite:///{Path(tmp) / 'audit.db'}"
            result.runs.append(await _one_run("sqlite", url, events))
        database_url, name = await _new_database(postgres_url)
        try:
            result.runs.append(await _one_run("postgresql", database_url, events))
        finally:
            await _drop_database(postgres_url, name)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.audit_log", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="one short run per database")
    parser.add_argument("--postgres-url", default="", help="use this server instead")
    parser.add_argument("--postgres-cpu", default=None, help="pin the throwaway server here")
    args = parser.parse_args(argv)
    params = QUICK if args.quick else FULL
    # Standard output carries the JSON result only.
    structlog.configure(
        wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
    )
    with contextlib.ExitStack() as stack:
        if args.postgres_url:
            url, described = args.postgres_url, "existing server (--postgres-url)"
        else:
            url, described = stack.enter_context(postgres_server(args.postgres_cpu))
        result = asyncio.run(run_audit_log(url, events=params["events"], runs=params["runs"]))
    result.postgres = described
    result.quick = args.quick
    json.dump(result.to_json(), sys.stdout)
    sys.stdout.write("\n")


def _met(ok: bool) -> str:
    return "yes" if ok else "**no**"


def audit_log_goals(result: AuditLogResult) -> list[list[str]]:
    """Rows of the audit-log targets: (goal, measured, target, met)."""
    rows = []
    for backend, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        run = result.median(backend)
        if run is not None:
            rows.append(
                [
                    f"audit log: events/s committed to {label} (group commit, HMAC chain)",
                    f"{run.events_per_s:,.0f}",
                    f"≥ {AUDIT_EVENTS_TARGET:,.0f}",
                    _met(run.events_per_s >= AUDIT_EVENTS_TARGET),
                ]
            )
    return rows


def audit_log_section(result: AuditLogResult, commands: list[str], number: int) -> list[str]:
    """The audit-log throughput section of the benchmark page."""
    lines = [
        f"## {number}. Audit log throughput",
        "",
        f"In process (`bench/audit_log.py`): {result.concurrency} tasks emit "
        f"{result.events:,} events through one `AuditLog` with the default `[audit]` (HMAC-SHA256 "
        "chain, batches of up to 500, `loss_window = 0`: every `emit()` returns only once its "
        "event is committed); runs alternate between the databases on an empty chain, the "
        "median run is shown, and each run's chain is verified afterwards. SQLite: a file with "
        f"WAL and `synchronous=NORMAL`. PostgreSQL: {result.postgres}.",
        "",
        "| database | events/s | CPU µs per event | transactions | events per transaction | "
        "emit() p50 | emit() p99 |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for backend, label in (("sqlite", "SQLite"), ("postgresql", "PostgreSQL")):
        run = result.median(backend)
        if run is None:
            continue
        per_batch = run.events / run.transactions if run.transactions else 0.0
        lines.append(
            f"| {label} | {run.events_per_s:,.0f} | {run.cpu_us_per_event:.1f} | "
            f"{run.transactions:,} | {per_batch:.0f} | "
            f"{run.emit_p50_ms:.1f} ms | {run.emit_p99_ms:.1f} ms |"
        )
    all_runs = ", ".join(f"{run.backend} {run.events_per_s:,.0f}" for run in result.runs)
    lines += ["", f"Every run (events/s): {all_runs}.", ""]
    if commands:
        lines += ["```sh", *commands, "```", ""]
    return lines


if __name__ == "__main__":
    main()
