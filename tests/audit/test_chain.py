"""The chain: a third party can recompute it, and any single-row tampering is found by
``verify`` at the right ``seq`` (SQLite and PostgreSQL)."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import dataclass
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from audit.chain_harness import audit_store, execute, fill, rows, started_stores
from bastion.audit.chain import canonical_bytes, chain_hash, to_micros
from bastion.audit.config import AuditConfig
from bastion.audit.models import GENESIS_HASH
from bastion.audit.query import query_events
from bastion.audit.verify import verify_chain
from bastion.store.errors import StoreError

EVENTS = 8


def third_party_hash(row: dict[str, object], key: bytes | None) -> str:
    """docs/audit.md's recipe with the standard library only."""
    ts = row["ts"]
    assert isinstance(ts, datetime)
    canonical = json.dumps(
        [
            "bastion.audit.v1",
            row["seq"],
            to_micros(ts),
            row["kind"],
            row["outcome"],
            row["actor"],
            row["target"],
            row["client_ip"],
            row["request_id"],
            row["key_id"],
            row["detail_json"],
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    prev = row["prev_hash"]
    assert isinstance(prev, str)
    message = bytes.fromhex(prev) + canonical
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@pytest.mark.parametrize("use_hmac", [True, False], ids=["hmac", "sha256"])
async def test_a_third_party_recomputes_every_hash(database_url: str, use_hmac: bool) -> None:
    config = AuditConfig(hmac=use_hmac)
    async with started_stores(database_url) as stores:
        await fill(stores, EVENTS, config)
        events, _ = await query_events(stores.database, limit=100)
        store = audit_store(stores, config)
        prev = GENESIS_HASH
        for number, event in enumerate(events, start=1):
            row = {
                "seq": event.seq,
                "ts": event.ts,
                "kind": event.kind,
                "outcome": event.outcome,
                "actor": event.actor,
                "target": event.target,
                "client_ip": event.client_ip,
                "request_id": event.request_id,
                "key_id": event.key_id,
                "detail_json": event.detail_json,
                "prev_hash": event.prev_hash,
            }
            key = await store.keyring.lookup(event.key_id) if event.key_id else None
            assert (event.key_id is not None) is use_hmac
            assert event.seq == number
            assert event.prev_hash == prev
            assert third_party_hash(row, key) == event.hash
            prev = event.hash
        head = await store.head()
        assert (head.seq, head.hash) == (EVENTS, prev)


@pytest.mark.parametrize(
    "text",
    [
        'quote " backslash \\ slash /',
        "controls \x00 \x01 \x1f \x7f \t \n \r \b \f",
        "unicode é ß 漢字 🙂 \u2028 \u2029",
    ],
)
def test_canonical_bytes_are_standard_compact_json(text: str) -> None:
    encoded = canonical_bytes(
        1, 1_700_000_000_000_000, text, "success", None, text, None, None, None, '{"a":1}'
    )
    expected = json.dumps(
        [
            "bastion.audit.v1",
            1,
            1_700_000_000_000_000,
            text,
            "success",
            None,
            text,
            None,
            None,
            None,
            '{"a":1}',
        ],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")
    assert encoded == expected


def test_chain_hash_refuses_a_malformed_prev_hash() -> None:
    with pytest.raises(ValueError, match="non-hexadecimal"):
        chain_hash("zz" * 32, b"[]", None)
    with pytest.raises(ValueError, match="not a SHA-256 hex digest"):
        chain_hash("00", b"[]", None)


def test_timestamps_round_trip_exactly_in_microseconds() -> None:
    moment = datetime(2026, 12, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    from bastion.audit.chain import from_micros

    assert from_micros(to_micros(moment)) == moment


@dataclass(frozen=True)
class Tamper:
    id: str
    statements: tuple[str, ...]
    bad_seq: int
    reason: str


_COPY_COLUMNS = "ts, kind, outcome, actor, target, client_ip, request_id, detail, key_id"

TAMPERING = [
    *(
        Tamper(
            f"edit-{column}",
            (f"UPDATE audit_events SET {column} = 'forged' WHERE seq = 4",),
            4,
            "hash_mismatch",
        )
        for column in ("kind", "outcome", "actor", "target", "client_ip", "request_id")
    ),
    Tamper(
        "edit-detail",
        ("""UPDATE audit_events SET detail = '[40]' WHERE seq = 4""",),
        4,
        "hash_mismatch",
    ),
    Tamper(
        "edit-ts",
        ("UPDATE audit_events SET ts = (SELECT ts FROM audit_events WHERE seq = 1) WHERE seq = 4",),
        4,
        "hash_mismatch",
    ),
    Tamper(
        "null-actor", ("UPDATE audit_events SET actor = NULL WHERE seq = 4",), 4, "hash_mismatch"
    ),
    Tamper(
        "edit-hash", ("UPDATE audit_events SET hash = prev_hash WHERE seq = 4",), 4, "hash_mismatch"
    ),
    Tamper(
        "edit-prev-hash",
        ("UPDATE audit_events SET prev_hash = hash WHERE seq = 4",),
        4,
        "prev_hash_mismatch",
    ),
    Tamper(
        "malformed-prev-hash",
        ("UPDATE audit_events SET prev_hash = 'not hex' WHERE seq = 4",),
        4,
        "prev_hash_mismatch",
    ),
    Tamper(
        "forged-key-id",
        ("UPDATE audit_events SET key_id = 'forged' WHERE seq = 4",),
        4,
        "unknown_key",
    ),
    Tamper(
        "dropped-key-id", ("UPDATE audit_events SET key_id = NULL WHERE seq = 4",), 4, "unkeyed"
    ),
    Tamper("renumber", ("UPDATE audit_events SET seq = 1000 WHERE seq = 4",), 4, "gap"),
    Tamper("delete-middle", ("DELETE FROM audit_events WHERE seq = 4",), 4, "gap"),
    Tamper("delete-first", ("DELETE FROM audit_events WHERE seq = 1",), 1, "gap"),
    Tamper(
        "swap-two-rows",
        (
            "UPDATE audit_events SET seq = 1000003 WHERE seq = 3",
            "UPDATE audit_events SET seq = 3 WHERE seq = 5",
            "UPDATE audit_events SET seq = 5 WHERE seq = 1000003",
        ),
        3,
        "prev_hash_mismatch",
    ),
    Tamper(
        "swap-contents",
        (
            # Everything but seq and the hashes changes places: each row then fails its hash.
            "UPDATE audit_events SET kind = 'x' || kind WHERE seq IN (3, 5)",
            f"UPDATE audit_events SET ({_COPY_COLUMNS}) = "
            f"(SELECT {_COPY_COLUMNS} FROM audit_events WHERE seq = 5) WHERE seq = 3",
        ),
        3,
        "hash_mismatch",
    ),
    Tamper(
        "insert-in-the-middle",
        (
            "UPDATE audit_events SET seq = seq + 1000001 WHERE seq > 4",
            "UPDATE audit_events SET seq = seq - 1000000 WHERE seq > 1000000",
            "INSERT INTO audit_events (seq, prev_hash, hash, " + _COPY_COLUMNS + ") "
            "SELECT 5, hash, hash, " + _COPY_COLUMNS + " FROM audit_events WHERE seq = 4",
            "UPDATE audit_events SET prev_hash = (SELECT hash FROM audit_events WHERE seq = 5) "
            "WHERE seq = 6",
            "UPDATE bastion_audit_chain SET seq = seq + 1",
        ),
        5,
        "hash_mismatch",
    ),
    Tamper(
        "append-past-the-head",
        (
            "INSERT INTO audit_events (seq, prev_hash, hash, " + _COPY_COLUMNS + ") "
            "SELECT 9, hash, hash, " + _COPY_COLUMNS + " FROM audit_events WHERE seq = 8",
        ),
        9,
        "outside_chain",
    ),
    Tamper("truncate-tail", ("DELETE FROM audit_events WHERE seq >= 7",), 7, "head_mismatch"),
    Tamper(
        "edit-head-hash",
        ("UPDATE bastion_audit_chain SET hash = prev_hash_placeholder",),
        8,
        "head_mismatch",
    ),
]


@pytest.mark.parametrize("tamper", TAMPERING, ids=lambda tamper: tamper.id)
async def test_tampering_is_found_at_the_right_seq(database_url: str, tamper: Tamper) -> None:
    async with started_stores(database_url) as stores:
        await fill(stores, EVENTS)
        store = audit_store(stores)
        assert (await store.verify()).ok
        statements = tuple(
            statement.replace("prev_hash_placeholder", f"'{GENESIS_HASH}'")
            for statement in tamper.statements
        )
        await execute(stores, statements)
        report = await store.verify()
    assert not report.ok
    assert (report.first_bad_seq, report.reason) == (tamper.bad_seq, tamper.reason)
    assert report.detail


async def test_a_chain_recomputed_without_the_key_is_found(database_url: str) -> None:
    """Someone who can write the database but has no key recomputes every hash with plain
    SHA-256 (dropping key ids), or with an HMAC key of their own under the real key id."""
    async with started_stores(database_url) as stores:
        await fill(stores, EVENTS)
        store = audit_store(stores)
        original, _ = await query_events(stores.database, limit=100)
        real_key_ids = {event.seq: event.key_id for event in original}
        for forged_key in (b"k" * 32, None):
            events, _ = await query_events(stores.database, limit=100)
            prev = GENESIS_HASH
            for event in events:
                key_id = real_key_ids[event.seq] if forged_key is not None else None
                digest = third_party_hash(
                    {
                        "seq": event.seq,
                        "ts": event.ts,
                        "kind": event.kind,
                        "outcome": event.outcome,
                        "actor": "mallory",
                        "target": event.target,
                        "client_ip": event.client_ip,
                        "request_id": event.request_id,
                        "key_id": key_id,
                        "detail_json": event.detail_json,
                        "prev_hash": prev,
                    },
                    forged_key,
                )
                await execute(
                    stores,
                    [
                        "UPDATE audit_events SET actor = 'mallory', key_id = :key_id, "
                        "prev_hash = :prev, hash = :hash WHERE seq = :seq"
                    ],
                    key_id=key_id,
                    prev=prev,
                    hash=digest,
                    seq=event.seq,
                )
                prev = digest
            await execute(stores, ["UPDATE bastion_audit_chain SET hash = :hash"], hash=prev)
            report = await store.verify()
            expected = "unkeyed" if forged_key is None else "hash_mismatch"
            assert (report.ok, report.first_bad_seq, report.reason) == (False, 1, expected)
        # Unless HMAC is required, a plain SHA-256 recomputation is a valid chain: the reason
        # [audit] hmac exists and verification requires it when it is on (docs/audit.md).
        plain = await verify_chain(stores.database, store.keyring.lookup, require_hmac=False)
        assert (plain.ok, plain.checked) == (True, EVENTS)


async def test_tail_truncation_that_also_moves_the_head_is_not_detectable(
    database_url: str,
) -> None:
    """The documented limit: deleting the newest events and rewinding the head row leaves a
    valid shorter chain. Only a copy outside the database (log_events, exports) shows it."""
    async with started_stores(database_url) as stores:
        await fill(stores, EVENTS)
        store = audit_store(stores)
        await execute(
            stores,
            [
                "DELETE FROM audit_events WHERE seq > 6",
                "UPDATE bastion_audit_chain SET seq = 6, "
                "hash = (SELECT hash FROM audit_events WHERE seq = 6)",
            ],
        )
        report = await store.verify()
    assert (report.ok, report.checked, report.head_seq) == (True, 6, 6)


async def test_verify_walks_in_pages_and_an_empty_chain_is_sound(database_url: str) -> None:
    async with started_stores(database_url) as stores:
        store = audit_store(stores)
        empty = await store.verify()
        assert (empty.ok, empty.checked, empty.head_seq) == (True, 0, 0)
        await fill(stores, 25)
        report = await store.verify(page_size=4)
        assert (report.ok, report.checked, report.head_seq) == (True, 25, 25)
        await execute(stores, ["DELETE FROM audit_events WHERE seq = 17"])
        broken = await store.verify(page_size=4)
    assert (broken.first_bad_seq, broken.reason, broken.checked) == (17, "gap", 16)
    assert broken.as_dict()["reason"] == "gap"


async def test_rows_of_rotated_keys_keep_verifying(database_url: str) -> None:
    async with started_stores(database_url) as stores:
        await fill(stores, 3)
        store = audit_store(stores)
        first = (await rows(stores, "SELECT key_id FROM audit_events WHERE seq = 1"))[0][0]
        rotated = await store.rotate_key()
        assert rotated != first
        await fill(stores, 3, start=4)
        key_ids = [
            row[0] for row in await rows(stores, "SELECT key_id FROM audit_events ORDER BY seq")
        ]
        report = await store.verify()
    # Event 4 is the rotation itself (admin.key.audit_rotated), hashed with the new key.
    assert key_ids == [first] * 3 + [rotated] * 4
    assert (report.ok, report.checked) == (True, 7)


KEY_ENCRYPTION_KEY = base64.b64encode(b"k" * 32).decode()


@pytest.mark.parametrize("key_encryption_key", [KEY_ENCRYPTION_KEY, None], ids=["kek", "no-kek"])
async def test_a_key_inserted_into_bastion_keys_cannot_forge_the_chain(
    database_url: str, key_encryption_key: str | None
) -> None:
    """Someone who can write the database inserts an unwrapped audit key of their own as the
    newest generation and recomputes the chain with it. Bound to the key-encryption key (never
    in the database) it verifies nothing; without one, the database holds everything needed
    (docs/audit.md says so)."""
    async with started_stores(database_url, key_encryption_key=key_encryption_key) as stores:
        await fill(stores, EVENTS)
        store = audit_store(stores)
        assert (await store.verify()).ok
        forged_key = b"m" * 32
        await execute(
            stores,
            [
                "INSERT INTO bastion_keys (id, purpose, generation, algorithm, material, wrapped, "
                "created_at) VALUES ('mallory', 'audit_hmac', 99, 'HMAC-SHA256', :material, "
                "false, (SELECT created_at FROM bastion_keys LIMIT 1))"
            ],
            material=forged_key,
        )
        events, _ = await query_events(stores.database, limit=100)
        prev = GENESIS_HASH
        for event in events:
            row = {
                "seq": event.seq,
                "ts": event.ts,
                "kind": event.kind,
                "outcome": event.outcome,
                "actor": "mallory",
                "target": event.target,
                "client_ip": event.client_ip,
                "request_id": event.request_id,
                "key_id": "mallory",
                "detail_json": event.detail_json,
                "prev_hash": prev,
            }
            digest = third_party_hash(row, forged_key)
            await execute(
                stores,
                [
                    "UPDATE audit_events SET actor = 'mallory', key_id = 'mallory', "
                    "prev_hash = :prev, hash = :hash WHERE seq = :seq"
                ],
                prev=prev,
                hash=digest,
                seq=event.seq,
            )
            prev = digest
        await execute(stores, ["UPDATE bastion_audit_chain SET hash = :hash"], hash=prev)
        if key_encryption_key is None:
            report = await audit_store(stores).verify()
            assert (report.ok, report.checked) == (True, EVENTS)
        else:
            # With a key-encryption key the planted key, stored in the clear, is refused
            # outright: verification stops with an error naming it rather than trusting it.
            with pytest.raises(StoreError, match=r"mallory .* stored in the clear"):
                await audit_store(stores).verify()


_TEXT = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60)


@settings(max_examples=300, deadline=None)
@given(
    seq=st.integers(min_value=1, max_value=2**62),
    ts_us=st.integers(min_value=0, max_value=2**62),
    texts=st.lists(st.one_of(st.none(), _TEXT), min_size=6, max_size=6),
    kind=_TEXT,
    detail=_TEXT,
)
def test_canonical_bytes_match_the_standard_library_for_any_values(
    seq: int, ts_us: int, texts: list[str | None], kind: str, detail: str
) -> None:
    outcome, actor, target, client_ip, request_id, key_id = texts
    encoded = canonical_bytes(
        seq, ts_us, kind, outcome or "", actor, target, client_ip, request_id, key_id, detail
    )
    expected = json.dumps(
        ["bastion.audit.v1", seq, ts_us, kind, outcome or "", actor, target, client_ip,
         request_id, key_id, detail],
        ensure_ascii=False,
        separators=(",", ":"),
    ).encode("utf-8")  # fmt: skip
    assert encoded == expected
