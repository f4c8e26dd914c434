"""One OS process appending to the audit chain: ``python append_worker.py URL NAME COUNT``.

Used by test_concurrency.py; waits for ``URL``'s database to be migrated by the parent.
"""

from __future__ import annotations

import asyncio
import sys

from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.log import AuditLog
from bastion.store.config import StoreConfig
from bastion.store.stores import Stores

_CONCURRENCY = 20


async def main(url: str, name: str, count: int) -> None:
    stores = Stores(StoreConfig(database_url=url, timeout=30.0, auto_migrate=False))
    await stores.start()
    # Small batches: many transactions per process, so the processes' appends interleave.
    log = AuditLog(AuditConfig(batch_size=25), stores.database, stores.keys)
    await log.start()
    try:
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
    asyncio.run(main(sys.argv[1], sys.argv[2], int(sys.argv[3])))
