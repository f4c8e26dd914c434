"""Generated keys shared by every instance: JWT signing keys, the MFA secret key, the audit HMAC
key, the CSRF secret. Created on first start, rotated by ``bastion keys rotate-signing``.

Keys are kept in ``bastion_keys``, wrapped with AES-256-GCM when ``store.key_encryption_key`` is
set; then a key stored in the clear is refused until ``bastion keys wrap`` adopts it, so someone
who can write the table but does not hold the key-encryption key cannot plant a key. A purpose's
keys are numbered by ``generation``; the newest active one signs, every active one verifies.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import or_, select, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.models import KeyRecord, utc_now
from bastion.store.wrapping import KeyWrapper

__all__ = ["KeyFactory", "KeyStore", "NewKey", "StoredKey"]


@dataclass(frozen=True, slots=True)
class NewKey:
    """What a key factory returns: freshly generated material for one purpose."""

    algorithm: str
    material: bytes = field(repr=False)
    public: bytes | None = None


KeyFactory = Callable[[], NewKey]
"""Generates one key; called only when a key is actually created."""


@dataclass(frozen=True, slots=True)
class StoredKey:
    """A key as the application uses it: ``material`` is unwrapped."""

    id: str
    purpose: str
    algorithm: str
    material: bytes = field(repr=False)
    public: bytes | None
    created_at: datetime
    not_after: datetime | None
    generation: int


class KeyStore:
    """Keys by purpose in the database, race-safe across processes.

    Creating a purpose's first key and rotating both insert "generation N+1" under a unique
    ``(purpose, generation)`` constraint: when several instances do it at once, one insert wins
    and every instance then reads that same key.
    """

    def __init__(self, database: Database, *, key_encryption_key: str | None = None) -> None:
        self._database = database
        try:
            self._wrapper = (
                KeyWrapper.from_base64(key_encryption_key) if key_encryption_key else None
            )
        except ValueError as exc:
            raise StoreError(str(exc)) from None

    @classmethod
    def from_config(cls, database: Database, config: StoreConfig) -> KeyStore:
        """The key store of ``[store]``."""
        secret = config.key_encryption_key
        return cls(database, key_encryption_key=secret.get_secret_value() if secret else None)

    @property
    def encrypted(self) -> bool:
        """Whether new keys are wrapped; start-up warns when they are not."""
        return self._wrapper is not None

    async def active(self, purpose: str) -> list[StoredKey]:
        """Keys neither retired nor past ``not_after``, newest first (the first one signs)."""
        records, _ = await self._snapshot(purpose)
        return [self._unwrap(record) for record in records]

    async def get_or_create(self, purpose: str, factory: KeyFactory) -> list[StoredKey]:
        """The active keys of ``purpose``, generating the first one if there is none.

        The active keys and the latest generation come from one statement, so one snapshot:
        every instance that finds no active key targets the same next generation, and the
        unique (purpose, generation) constraint lets exactly one of them create it.
        """
        records, latest = await self._snapshot(purpose)
        if records:
            return [self._unwrap(record) for record in records]
        await self._insert_generation(purpose, latest + 1, factory)
        return await self._require_active(purpose)

    async def rotate(
        self,
        purpose: str,
        factory: KeyFactory,
        *,
        keep: int = 2,
        grace: float | None = None,
    ) -> list[StoredKey]:
        """Add a new newest key and return the active keys, newest first.

        The ``keep`` newest keys stay active (the new one signs, the previous ones still
        verify); older ones are retired. With ``grace`` (seconds), the previous keys also stop
        verifying that long after the rotation. Concurrent rotations of one purpose converge on a
        single new key.
        """
        if keep < 1:
            raise ValueError("keep must be at least 1: the new key itself")
        _, latest = await self._snapshot(purpose)
        newest = latest + 1
        await self._insert_generation(purpose, newest, factory)
        now = utc_now()
        retire = (
            update(KeyRecord)
            .where(
                KeyRecord.purpose == purpose,
                KeyRecord.retired_at.is_(None),
                KeyRecord.generation <= newest - keep,
            )
            .values(retired_at=now)
        )
        async with self._database.session() as session:
            await session.execute(retire)
            if grace is not None:
                deadline = now + timedelta(seconds=grace)
                await session.execute(
                    update(KeyRecord)
                    .where(
                        KeyRecord.purpose == purpose,
                        KeyRecord.retired_at.is_(None),
                        KeyRecord.generation < newest,
                        or_(KeyRecord.not_after.is_(None), KeyRecord.not_after > deadline),
                    )
                    .values(not_after=deadline)
                )
            await session.commit()
        return await self._require_active(purpose)

    async def wrap_stored(self) -> int:
        """Wrap keys stored in the clear (created before a key-encryption key was configured).

        Returns how many this call wrapped; a no-op without a key-encryption key. Each row is
        rewritten only if it is still unwrapped, so concurrent calls never wrap a key twice.
        """
        if self._wrapper is None:
            return 0
        wrapped = 0
        async with self._database.session() as session:
            records = (await session.execute(_CLEAR_KEYS)).all()
            for key_id, purpose, material in records:
                result = await session.execute(
                    update(KeyRecord)
                    .where(KeyRecord.id == key_id, KeyRecord.wrapped.is_(False))
                    .values(
                        material=self._wrapper.wrap(material, context=_context_of(key_id, purpose)),
                        wrapped=True,
                    )
                    .execution_options(synchronize_session=False)
                )
                wrapped += _rowcount(result)
            await session.commit()
        return wrapped

    async def _require_active(self, purpose: str) -> list[StoredKey]:
        keys = await self.active(purpose)
        if not keys:
            raise StoreError(f"no active {purpose} key after creating one")
        return keys

    async def _snapshot(self, purpose: str) -> tuple[list[KeyRecord], int]:
        """The active records of ``purpose`` (newest first) and its latest generation, read by
        a single statement."""
        query = (
            select(KeyRecord)
            .where(KeyRecord.purpose == purpose)
            .order_by(KeyRecord.generation.desc())
        )
        async with self._database.session() as session:
            records = (await session.scalars(query)).all()
        now = utc_now()
        active = [
            record
            for record in records
            if record.retired_at is None and (record.not_after is None or record.not_after > now)
        ]
        return active, records[0].generation if records else 0

    async def _insert_generation(self, purpose: str, generation: int, factory: KeyFactory) -> None:
        new = factory()
        key_id = secrets.token_urlsafe(12)
        material = new.material
        if self._wrapper is not None:
            material = self._wrapper.wrap(material, context=_context_of(key_id, purpose))
        values: dict[str, Any] = {
            "id": key_id,
            "purpose": purpose,
            "generation": generation,
            "algorithm": new.algorithm,
            "material": material,
            "public": new.public,
            "wrapped": self._wrapper is not None,
            "created_at": utc_now(),
        }
        insert = postgresql_insert if self._database.dialect == "postgresql" else sqlite_insert
        statement = (
            insert(KeyRecord)
            .values(**values)
            .on_conflict_do_nothing(index_elements=["purpose", "generation"])
        )
        async with self._database.session() as session:
            await session.execute(statement)
            await session.commit()

    def _unwrap(self, record: KeyRecord) -> StoredKey:
        material = record.material
        if not record.wrapped and self._wrapper is not None:
            # With a key-encryption key, every key Bastion writes is wrapped: a row in the clear
            # predates the key-encryption key, or was written by someone who can write the
            # database but does not hold it (a signing key of their choosing would forge
            # tokens). Only the operator's explicit `bastion keys wrap` adopts such rows.
            raise StoreError(
                f"key {record.id} ({record.purpose}) is stored in the clear while "
                "store.key_encryption_key is set: run `bastion keys wrap` once to wrap the keys "
                "created before it"
            )
        if record.wrapped:
            if self._wrapper is None:
                raise StoreError(
                    f"key {record.id} ({record.purpose}) is wrapped: configure the "
                    "store.key_encryption_key that wrapped it"
                )
            try:
                material = self._wrapper.unwrap(material, context=_context(record))
            except StoreError as exc:
                raise StoreError(f"key {record.id} ({record.purpose}): {exc}") from None
        return StoredKey(
            id=record.id,
            purpose=record.purpose,
            algorithm=record.algorithm,
            material=material,
            public=record.public,
            created_at=record.created_at,
            not_after=record.not_after,
            generation=record.generation,
        )


def _context_of(key_id: str, purpose: str) -> bytes:
    return f"bastion_keys:{key_id}:{purpose}".encode()


def _context(record: KeyRecord) -> bytes:
    return _context_of(record.id, record.purpose)


def _rowcount(result: Any) -> int:
    return int(result.rowcount)


_CLEAR_KEYS = select(KeyRecord.id, KeyRecord.purpose, KeyRecord.material).where(
    KeyRecord.wrapped.is_(False)
)
