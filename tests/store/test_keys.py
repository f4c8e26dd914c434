"""KeyStore: first-start creation, race safety across engines, wrapping, rotation."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, update

from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.keys import KeyStore, NewKey, StoredKey
from bastion.store.migrate import upgrade
from bastion.store.models import KeyRecord, utc_now

KEK = base64.b64encode(bytes(range(32))).decode()
OTHER_KEK = base64.b64encode(bytes(range(1, 33))).decode()


class CountingFactory:
    """A key factory that numbers the secrets it makes."""

    def __init__(self, algorithm: str = "HS256") -> None:
        self.algorithm = algorithm
        self.calls = 0

    def __call__(self) -> NewKey:
        self.calls += 1
        return NewKey(self.algorithm, f"secret-{self.calls}-{os.urandom(4).hex()}".encode())


@pytest.fixture
async def second_database(migrated: Database, database_url: str) -> AsyncIterator[Database]:
    """Another engine (its own pool) over the same database, like a second instance."""
    other = Database.from_url(database_url)
    await other.start()
    try:
        yield other
    finally:
        await other.close()


async def _rows(database: Database, purpose: str) -> int:
    async with database.session() as session:
        count = await session.scalar(
            select(func.count()).select_from(KeyRecord).where(KeyRecord.purpose == purpose)
        )
    return int(count or 0)


async def test_first_key_is_created_once(migrated: Database) -> None:
    keys = KeyStore(migrated)
    factory = CountingFactory()
    assert await keys.active("jwt_signing") == []

    first = await keys.get_or_create("jwt_signing", factory)
    again = await keys.get_or_create("jwt_signing", factory)

    assert factory.calls == 1
    assert first == again
    [key] = first
    assert (key.purpose, key.algorithm, key.generation) == ("jwt_signing", "HS256", 1)
    assert key.material.startswith(b"secret-1-")
    assert key.created_at.tzinfo is not None
    assert key.not_after is None
    assert await keys.get_or_create("audit_hmac", factory) != first


async def test_creation_races_across_instances_end_with_one_key(
    migrated: Database, second_database: Database
) -> None:
    stores = [KeyStore(migrated), KeyStore(second_database)]
    purposes = [f"purpose_{n}" for n in range(5)]
    results = await asyncio.gather(
        *(
            store.get_or_create(purpose, CountingFactory())
            for purpose in purposes
            for store in stores
        )
    )
    by_purpose: dict[str, set[str]] = {}
    for keys in results:
        [key] = keys
        by_purpose.setdefault(key.purpose, set()).add(key.id)
    assert all(len(ids) == 1 for ids in by_purpose.values())
    assert sorted(by_purpose) == purposes
    for purpose in purposes:
        assert await _rows(migrated, purpose) == 1


async def test_public_material_is_kept(migrated: Database) -> None:
    keys = KeyStore(migrated, key_encryption_key=KEK)

    def factory() -> NewKey:
        return NewKey("EdDSA", b"private-bytes", public=b"public-bytes")

    [key] = await keys.get_or_create("jwt_signing", factory)
    assert (key.algorithm, key.material, key.public) == ("EdDSA", b"private-bytes", b"public-bytes")


async def test_wrapped_material_round_trips_and_is_encrypted_at_rest(
    migrated: Database,
) -> None:
    keys = KeyStore(migrated, key_encryption_key=KEK)
    assert keys.encrypted
    [key] = await keys.get_or_create("mfa_encryption", CountingFactory("AES-256-GCM"))

    async with migrated.session() as session:
        record = await session.get(KeyRecord, key.id)
    assert record is not None
    assert record.wrapped
    assert key.material not in record.material
    assert len(record.material) == len(key.material) + 1 + 12 + 16

    [reread] = await KeyStore(migrated, key_encryption_key=KEK).active("mfa_encryption")
    assert reread.material == key.material


async def test_wrong_or_missing_key_encryption_key_fails_clearly(migrated: Database) -> None:
    [key] = await KeyStore(migrated, key_encryption_key=KEK).get_or_create(
        "audit_hmac", CountingFactory()
    )
    with pytest.raises(StoreError, match=f"key {key.id} \\(audit_hmac\\): cannot unwrap") as exc:
        await KeyStore(migrated, key_encryption_key=OTHER_KEK).active("audit_hmac")
    assert "is not the key that wrapped it" in str(exc.value)
    with pytest.raises(StoreError, match=r"is wrapped: configure the store\.key_encryption_key"):
        await KeyStore(migrated).active("audit_hmac")


async def test_wrapped_material_is_bound_to_its_row(migrated: Database) -> None:
    keys = KeyStore(migrated, key_encryption_key=KEK)
    [first] = await keys.get_or_create("csrf", CountingFactory())
    [second] = await keys.get_or_create("audit_hmac", CountingFactory())
    async with migrated.session() as session:
        stolen = await session.scalar(select(KeyRecord.material).where(KeyRecord.id == first.id))
        await session.execute(
            update(KeyRecord).where(KeyRecord.id == second.id).values(material=stolen)
        )
        await session.commit()
    with pytest.raises(StoreError, match="cannot unwrap"):
        await keys.active("audit_hmac")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (base64.b64encode(b"short").decode(), "must decode to 32 bytes, not 5"),
        ("not base64 at all!", "is not valid base64"),
    ],
)
def test_invalid_key_encryption_key_is_refused(value: str, message: str) -> None:
    database = Database.from_url("sqlite+aiosqlite://")
    with pytest.raises(StoreError, match=message) as caught:
        KeyStore(database, key_encryption_key=value)
    assert "os.urandom(32)" in str(caught.value)


def test_url_safe_base64_is_accepted() -> None:
    value = base64.urlsafe_b64encode(b"\xfb" * 32).decode()
    assert "-" in value or "_" in value
    assert KeyStore(Database.from_url("sqlite+aiosqlite://"), key_encryption_key=value).encrypted


def test_without_key_encryption_key_the_store_says_so() -> None:
    assert not KeyStore(Database.from_url("sqlite+aiosqlite://")).encrypted


async def test_rotation_signs_with_the_newest_and_retires_beyond_keep(
    migrated: Database,
) -> None:
    keys = KeyStore(migrated)
    factory = CountingFactory()
    [first] = await keys.get_or_create("jwt_signing", factory)

    rotated = await keys.rotate("jwt_signing", factory)
    assert [key.generation for key in rotated] == [2, 1]
    assert rotated[1] == first

    rotated = await keys.rotate("jwt_signing", factory, keep=2)
    assert [key.generation for key in rotated] == [3, 2]
    async with migrated.session() as session:
        retired = await session.get(KeyRecord, first.id)
    assert retired is not None
    assert retired.retired_at is not None

    rotated = await keys.rotate("jwt_signing", factory, keep=1)
    assert [key.generation for key in rotated] == [4]
    assert await keys.active("jwt_signing") == rotated
    assert await keys.get_or_create("jwt_signing", factory) == rotated


async def test_rotation_grace_bounds_the_previous_keys(migrated: Database) -> None:
    keys = KeyStore(migrated)
    factory = CountingFactory()
    await keys.get_or_create("jwt_signing", factory)

    before = utc_now()
    newest, previous = await keys.rotate("jwt_signing", factory, grace=3600)
    assert newest.not_after is None
    assert previous.not_after is not None
    assert timedelta(seconds=3599) < previous.not_after - before < timedelta(seconds=3601)

    # A later, shorter grace shortens it; the key drops out once past its not_after.
    active = await keys.rotate("jwt_signing", factory, keep=3, grace=0)
    assert [key.generation for key in active] == [3]


async def test_rotation_of_an_empty_purpose_creates_the_first_key(migrated: Database) -> None:
    [key] = await KeyStore(migrated).rotate("csrf", CountingFactory())
    assert key.generation == 1


async def test_concurrent_rotations_converge_on_one_new_key(
    migrated: Database, second_database: Database
) -> None:
    factory = CountingFactory()
    await KeyStore(migrated).get_or_create("jwt_signing", factory)
    first, second = await asyncio.gather(
        KeyStore(migrated).rotate("jwt_signing", factory),
        KeyStore(second_database).rotate("jwt_signing", factory),
    )
    assert first == second
    assert [key.generation for key in first] == [2, 1]
    assert await _rows(migrated, "jwt_signing") == 2


async def test_keep_must_leave_the_new_key(migrated: Database) -> None:
    with pytest.raises(ValueError, match="keep must be at least 1"):
        await KeyStore(migrated).rotate("csrf", CountingFactory(), keep=0)


async def test_keys_stored_in_the_clear_can_be_wrapped_later(migrated: Database) -> None:
    clear = KeyStore(migrated)
    assert await clear.wrap_stored() == 0
    [csrf] = await clear.get_or_create("csrf", CountingFactory())
    [audit] = await clear.get_or_create("audit_hmac", CountingFactory())

    wrapping = KeyStore(migrated, key_encryption_key=KEK)
    # Refused until the operator adopts them: a key in the clear could have been planted.
    with pytest.raises(StoreError, match=r"stored in the clear.*bastion keys wrap"):
        await wrapping.active("csrf")
    assert await wrapping.wrap_stored() == 2
    assert await wrapping.wrap_stored() == 0
    assert await wrapping.active("csrf") == [csrf]
    assert await wrapping.active("audit_hmac") == [audit]
    with pytest.raises(StoreError, match="is wrapped"):
        await clear.active("csrf")


def test_stored_key_repr_hides_the_material() -> None:
    key = StoredKey(
        id="kid",
        purpose="csrf",
        algorithm="HS256",
        material=b"top-secret",
        public=None,
        created_at=utc_now(),
        not_after=None,
        generation=1,
    )
    assert "top-secret" not in repr(key)
    assert "top-secret" not in repr(NewKey("HS256", b"top-secret"))


async def test_key_store_needs_migrations(database: Database) -> None:
    keys = KeyStore(database)
    with pytest.raises(StoreError, match="database call failed"):
        await keys.active("csrf")
    await upgrade(database)
    assert await keys.active("csrf") == []


@pytest.mark.parametrize("purpose", ["jwt_signing", "csrf", "mfa", "audit_hmac"])
async def test_a_key_planted_in_the_clear_is_refused_with_a_key_encryption_key(
    migrated: Database, purpose: str
) -> None:
    wrapping = KeyStore(migrated, key_encryption_key=KEK)
    [genuine] = await wrapping.get_or_create(purpose, CountingFactory())
    # Someone who can write the table but does not hold the key-encryption key adds a newer
    # generation in the clear, hoping it becomes the key that signs.
    async with migrated.session() as session:
        session.add(
            KeyRecord(
                id="planted",
                purpose=purpose,
                generation=genuine.generation + 1,
                algorithm=genuine.algorithm,
                material=b"attacker-chosen",
                wrapped=False,
                created_at=utc_now(),
            )
        )
        await session.commit()
    with pytest.raises(StoreError, match=r"planted.*stored in the clear"):
        await wrapping.active(purpose)
