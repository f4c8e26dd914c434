"""The audit log as commands and the admin API use it: verify, query, rotate, prune.

``async with open_audit(settings) as audit:`` starts the stores of ``settings`` (applying
migrations when ``store.auto_migrate``) for the length of the block.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta

from bastion.audit.chain import AuditChain, ChainHead
from bastion.audit.config import AuditConfig
from bastion.audit.events import AuditEvent
from bastion.audit.keys import AuditKeyring, binding_secret
from bastion.audit.log import AuditLog
from bastion.audit.query import StoredEvent, query_events
from bastion.audit.verify import VerifyReport, verify_chain
from bastion.settings import Settings
from bastion.store.database import Database
from bastion.store.keys import KeyStore
from bastion.store.stores import Stores

__all__ = ["AuditStore", "open_audit"]


class AuditStore:
    """Read and maintenance operations on the audit log of one database."""

    def __init__(
        self,
        config: AuditConfig,
        database: Database,
        keys: KeyStore,
        *,
        binding: bytes | None = None,
    ) -> None:
        self.config = config
        self.database = database
        self.keyring = AuditKeyring(keys, binding=binding)
        self.chain = AuditChain(database)
        self._keys = keys
        self._binding = binding

    @classmethod
    def from_stores(cls, config: AuditConfig, stores: Stores) -> AuditStore:
        """The audit store over started :class:`Stores`."""
        return cls(config, stores.database, stores.keys, binding=binding_secret(stores.config))

    async def verify(self, *, page_size: int = 1000) -> VerifyReport:
        """:func:`verify_chain` with this database's keys; HMAC is required when
        ``[audit] hmac`` is on."""
        return await verify_chain(
            self.database,
            self.keyring.lookup,
            require_hmac=self.config.hmac,
            page_size=page_size,
        )

    async def query(
        self,
        *,
        kind: str | None = None,
        actor: str | None = None,
        since: datetime | None = None,
        until: datetime | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> tuple[list[StoredEvent], str | None]:
        """:func:`~bastion.audit.query.query_events` on this database."""
        return await query_events(
            self.database,
            kind=kind,
            actor=actor,
            since=since,
            until=until,
            cursor=cursor,
            limit=limit,
        )

    async def head(self) -> ChainHead:
        """The chain's head row: last ``seq`` and ``hash``, and the pruning checkpoint."""
        return await self.chain.head()

    async def rotate_key(self, *, actor: str = "cli") -> str:
        """Make a new audit HMAC key, record ``admin.key.audit_rotated`` (hashed with the new
        key) and return the key's id. Running writers switch to it within
        ``[audit] key_refresh``; rows hashed with older keys keep verifying."""
        key_id = (await self.keyring.rotate()).id
        await self.record(AuditEvent(kind="admin.key.audit_rotated", actor=actor, target=key_id))
        return key_id

    async def record(self, *events: AuditEvent) -> None:
        """Append ``events`` durably (redacted, chained) through a short-lived
        :class:`AuditLog`: for commands that act outside a running gateway."""
        log = AuditLog(self.config, self.database, self._keys, binding=self._binding)
        await log.start()
        try:
            for event in events:
                await log.emit(event)
        finally:
            await log.close()

    async def prune(self, now: datetime | None = None) -> int:
        """Delete events older than ``[audit] retention`` (nothing when it is 0), leaving a
        checkpoint; returns how many were deleted."""
        if self.config.retention <= 0:
            return 0
        key = await self.keyring.load() if self.config.hmac else None
        cutoff = (now or datetime.now(UTC)) - timedelta(seconds=self.config.retention)
        return await self.chain.prune(cutoff, key)


@asynccontextmanager
async def open_audit(settings: Settings) -> AsyncIterator[AuditStore]:
    """An :class:`AuditStore` over started stores of ``settings``, closed on exit.

    Raises :class:`~bastion.store.errors.StoreError` when the database cannot be reached or
    migrated.
    """
    stores = Stores(settings.store)
    try:
        await stores.start()
        yield AuditStore.from_stores(settings.audit, stores)
    finally:
        await stores.close()
