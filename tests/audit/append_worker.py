"""One OS process appending to the audit chain:
``python append_worker.py URL NAME COUNT BARRIER_DIR``.

Used by test_concurrency.py. The parent has migrated the database. Once its log is started the
worker writes ``BARRIER_DIR/NAME.ready`` and waits for ``BARRIER_DIR/go``, so every worker
starts appending at the same moment rather than as soon as its interpreter has loaded.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditLog
from bastion.store.config import StoreConfig
from bastion.store.stores import Stores

_CONCURRENCY = 20
_BARRIER_POLL = 0.005


async def main(url: str, name: str, count: int, barrier: Path) -> None:
    stores = Stores(StoreConfig(database_url=url, timeout=30.0, auto_migrate=False))
    await stores.start()
    # Small batches: many transactions per process, so the processes' appends interleave.
    log = AuditLog.from_stores(AuditConfig(batch_size=25), stores)
    await log.start()
    try:
        (barrier / f"{name}.ready").touch()
        while not (barrier / "go").exists():
            await asyncio.sleep(_BARRIER_POLL)
        next_number = iter(range(count))

        async def producer() -> None:
            for number in next_number:
                await log.emit(
                    AuditEvent(kind="access.denied", actor=name, detail={"number": number})
                )

        await asyncio.gather(*(producer() for _ in range(_CONCURRENCY)))
    finally:
        await log.close()
        await stores.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3]), Path(sys.argv[4])))
