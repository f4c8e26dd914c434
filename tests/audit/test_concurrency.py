"""Several OS processes append to one database: one gapless chain that verifies, every
event present once."""

from __future__ import annotations

import asyncio
import itertools
import sys
from pathlib import Path

import pytest

from audit.chain_harness import audit_store, rows, started_stores

WORKER = Path(__file__).with_name("append_worker.py")
EVENTS_PER_PROCESS = 400


async def run_processes(url: str, processes: int, barrier: Path) -> None:
    """Start the workers, release them together once all are ready, wait for them."""
    workers = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            str(WORKER),
            url,
            f"process-{index}",
            str(EVENTS_PER_PROCESS),
            str(barrier),
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        for index in range(processes)
    ]
    finished = asyncio.gather(*(worker.communicate() for worker in workers))
    while len(list(barrier.glob("*.ready"))) < processes and not finished.done():
        await asyncio.sleep(0.01)
    (barrier / "go").touch()
    results = await finished
    for worker, (_, stderr) in zip(workers, results, strict=True):
        assert worker.returncode == 0, stderr.decode()[-2000:]


async def check_one_chain(url: str, processes: int, barrier: Path, *, fair_lock: bool) -> None:
    async with started_stores(url) as stores:
        await run_processes(url, processes, barrier)
        total = processes * EVENTS_PER_PROCESS
        seqs = [row[0] for row in await rows(stores, "SELECT seq FROM audit_events ORDER BY seq")]
        assert seqs == list(range(1, total + 1))
        per_actor = await rows(
            stores, "SELECT actor, count(*) FROM audit_events GROUP BY actor ORDER BY actor"
        )
        assert per_actor == [(f"process-{index}", EVENTS_PER_PROCESS) for index in range(processes)]
        # Every number of every process exactly once: nothing lost, nothing written twice.
        distinct = await rows(
            stores, "SELECT count(DISTINCT actor || ':' || detail) FROM audit_events"
        )
        assert distinct == [(total,)]
        if fair_lock:
            # PostgreSQL queues the waiters of a row lock: started together, the processes'
            # appends interleave rather than run one after the other. (SQLite's busy handler
            # sleeps and retries, so whether a waiter gets in between decides timing alone.)
            actors = [
                row[0] for row in await rows(stores, "SELECT actor FROM audit_events ORDER BY seq")
            ]
            switches = sum(1 for before, after in itertools.pairwise(actors) if before != after)
            assert switches > processes
        report = await audit_store(stores).verify()
        assert (report.ok, report.checked, report.head_seq) == (True, total, total)


@pytest.mark.postgres
async def test_four_processes_append_one_chain_to_postgresql(
    postgres_database_url: str, tmp_path: Path
) -> None:
    await check_one_chain(postgres_database_url, 4, tmp_path, fair_lock=True)


async def test_two_processes_append_one_chain_to_sqlite(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'audit.db'}"
    await check_one_chain(url, 2, tmp_path, fair_lock=False)
