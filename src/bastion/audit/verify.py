"""Verification of the chain: every row recomputed, in ``seq`` order, a page at a time.

The walk starts at the checkpoint left by pruning (or at ``seq`` 1 with the genesis hash) and
stops at the head row read when it began, so appends made meanwhile are not in its way. It
reports the first ``seq`` where the chain breaks and why:

- ``gap``: the row with that ``seq`` is missing (deleted, or renumbered);
- ``prev_hash_mismatch``: the row does not follow the one before it (reordered or inserted);
- ``hash_mismatch``: the row's content is not what was hashed (edited), or its hash was
  recomputed without the HMAC key;
- ``unknown_key``: the row names an HMAC key that does not exist;
- ``unkeyed``: HMAC is required and the row has none (a chain recomputed with plain SHA-256);
- ``anchor_invalid``: the pruning checkpoint is not signed by a known key;
- ``head_mismatch``: rows are missing at the tail (the head row records more), or the last row
  is not the head's;
- ``outside_chain``: a row lies outside the chain, at or below the pruning checkpoint (``seq``
  0 or less included) or past the head: a forged row the walk would never reach, which the
  readers never serve either.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, replace
from typing import Any, cast

from sqlalchemy import Table, func, select
from sqlalchemy.exc import SQLAlchemyError

from bastion.audit.chain import AuditChain, ChainHead, anchor_mac, canonical_bytes, chain_hash
from bastion.audit.chain import to_micros as _to_micros
from bastion.audit.keys import KeyLookup
from bastion.audit.models import CHAIN_ID, AuditChainRow, AuditEventRow
from bastion.store.database import Database
from bastion.store.errors import StoreError, describe

__all__ = ["VerifyReport", "verify_chain"]

_EVENTS = cast(Table, AuditEventRow.__table__)
_CHAIN = cast(Table, AuditChainRow.__table__)
_PAGE = 1000
_DRIVER_ERRORS = (SQLAlchemyError, OSError, TimeoutError)


@dataclass(frozen=True, slots=True)
class VerifyReport:
    """The outcome of :func:`verify_chain`."""

    ok: bool
    checked: int
    """Rows recomputed and found sound."""
    first_bad_seq: int | None = None
    """The first ``seq`` where the chain breaks (``None`` when ``ok``)."""
    reason: str | None = None
    """``gap``, ``prev_hash_mismatch``, ``hash_mismatch``, ``unknown_key``, ``unkeyed``,
    ``anchor_invalid``, ``head_mismatch`` or ``outside_chain``."""
    detail: str | None = None
    """One human-readable sentence about the break."""
    anchor_seq: int = 0
    """The checkpoint the walk started after (0: the chain was never pruned)."""
    head_seq: int = 0
    """The head the walk verified up to."""

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready form, for ``bastion audit verify --json`` and the admin API."""
        return {
            "ok": self.ok,
            "checked": self.checked,
            "first_bad_seq": self.first_bad_seq,
            "reason": self.reason,
            "detail": self.detail,
            "anchor_seq": self.anchor_seq,
            "head_seq": self.head_seq,
        }


class _Walk:
    def __init__(self, head: ChainHead, key_lookup: KeyLookup | None, require_hmac: bool) -> None:
        self.head = head
        self.key_lookup = key_lookup
        self.require_hmac = require_hmac
        self.keys: dict[str, bytes | None] = {}
        self.checked = 0
        self.expected_seq = head.anchor_seq + 1
        self.prev = head.anchor_hash

    def fail(self, seq: int, reason: str, detail: str) -> VerifyReport:
        return VerifyReport(
            ok=False,
            checked=self.checked,
            first_bad_seq=seq,
            reason=reason,
            detail=detail,
            anchor_seq=self.head.anchor_seq,
            head_seq=self.head.seq,
        )

    async def key(self, key_id: str) -> bytes | None:
        if key_id not in self.keys:
            self.keys[key_id] = (
                await self.key_lookup(key_id) if self.key_lookup is not None else None
            )
        return self.keys[key_id]

    async def check_anchor(self) -> VerifyReport | None:
        head = self.head
        if head.anchor_seq == 0:
            return None
        seq = head.anchor_seq + 1
        if head.anchor_key_id is None or head.anchor_mac is None:
            if self.require_hmac:
                return self.fail(seq, "anchor_invalid", "the pruning checkpoint is not signed")
            return None
        key = await self.key(head.anchor_key_id)
        if key is None:
            return self.fail(
                seq, "anchor_invalid", f"the checkpoint names unknown key {head.anchor_key_id}"
            )
        expected = anchor_mac(key, head.anchor_seq, head.anchor_hash)
        if not hmac.compare_digest(expected, head.anchor_mac):
            return self.fail(seq, "anchor_invalid", "the pruning checkpoint's HMAC is wrong")
        return None

    def moved_on(self, latest: ChainHead) -> bool:
        """Whether pruning (by another process, during the walk) moved the checkpoint past
        the row the walk expects next; if so the walk continues after the new checkpoint."""
        if latest.anchor_seq < self.expected_seq:
            return False
        self.head = replace(
            self.head,
            anchor_seq=latest.anchor_seq,
            anchor_hash=latest.anchor_hash,
            anchor_key_id=latest.anchor_key_id,
            anchor_mac=latest.anchor_mac,
        )
        self.expected_seq = latest.anchor_seq + 1
        self.prev = latest.anchor_hash
        return True

    async def check(self, row: Any) -> VerifyReport | None:
        seq = int(row.seq)
        if seq != self.expected_seq:
            return self.fail(
                self.expected_seq,
                "gap",
                f"event {self.expected_seq} is missing (the next one is {seq})",
            )
        key: bytes | None = None
        if row.key_id is not None:
            key = await self.key(row.key_id)
            if key is None:
                return self.fail(seq, "unknown_key", f"event {seq} names unknown key {row.key_id}")
        elif self.require_hmac:
            return self.fail(seq, "unkeyed", f"event {seq} has no HMAC")
        if row.prev_hash != self.prev:
            return self.fail(
                seq, "prev_hash_mismatch", f"event {seq} does not follow event {seq - 1}"
            )
        canonical = canonical_bytes(
            seq,
            _to_micros(row.ts),
            row.kind,
            row.outcome,
            row.actor,
            row.target,
            row.client_ip,
            row.request_id,
            row.key_id,
            row.detail,
        )
        try:
            expected = chain_hash(row.prev_hash, canonical, key)
        except ValueError:
            return self.fail(seq, "hash_mismatch", f"event {seq} has a malformed prev_hash")
        if not hmac.compare_digest(expected, str(row.hash)):
            return self.fail(seq, "hash_mismatch", f"event {seq} does not match its hash")
        self.checked += 1
        self.expected_seq = seq + 1
        self.prev = row.hash
        return None


async def verify_chain(
    database: Database,
    key_lookup: KeyLookup | None = None,
    *,
    require_hmac: bool = False,
    page_size: int = _PAGE,
) -> VerifyReport:
    """Recompute the chain of ``database`` and report the first break.

    ``key_lookup`` resolves the ``key_id`` of HMAC'd rows (e.g.
    :meth:`~bastion.audit.keys.AuditKeyring.lookup`); without it a keyed row is ``unknown_key``.
    ``require_hmac`` makes rows without an HMAC a break (set it when ``[audit] hmac`` is on, so a
    chain recomputed with plain SHA-256 is caught). Memory stays bounded by ``page_size`` rows.
    Raises :class:`StoreError` when the database fails.
    """
    chain = AuditChain(database)
    head = await chain.head()
    walk = _Walk(head, key_lookup, require_hmac)
    broken = await walk.check_anchor()
    if broken is not None:
        return broken
    try:
        async with database.engine.connect() as connection:
            # One statement, so it sees the checkpoint and the rows of the same moment: a prune
            # deletes rows and moves the checkpoint in one transaction.
            below = await connection.scalar(
                select(func.min(_EVENTS.c.seq)).where(
                    _EVENTS.c.seq
                    <= select(_CHAIN.c.anchor_seq).where(_CHAIN.c.id == CHAIN_ID).scalar_subquery()
                )
            )
            await connection.rollback()
            if below is not None:
                return walk.fail(
                    int(below),
                    "outside_chain",
                    f"event {below} lies at or below the checkpoint, outside the chain",
                )
            while walk.expected_seq <= head.seq:
                page = (
                    await connection.execute(
                        select(_EVENTS)
                        .where(_EVENTS.c.seq >= walk.expected_seq, _EVENTS.c.seq <= head.seq)
                        .order_by(_EVENTS.c.seq)
                        .limit(page_size)
                    )
                ).all()
                await connection.rollback()
                if not page:
                    if walk.moved_on(await chain.head()):
                        broken = await walk.check_anchor()
                        if broken is not None:
                            return broken
                        continue
                    break
                for row in page:
                    broken = await walk.check(row)
                    if broken is None:
                        continue
                    if broken.reason == "gap" and walk.moved_on(await chain.head()):
                        broken = await walk.check_anchor()
                        if broken is None:
                            break  # read on from the new checkpoint
                    return broken
            beyond = await connection.scalar(
                select(func.min(_EVENTS.c.seq)).where(
                    _EVENTS.c.seq
                    > select(_CHAIN.c.seq).where(_CHAIN.c.id == CHAIN_ID).scalar_subquery()
                )
            )
    except _DRIVER_ERRORS as exc:
        raise StoreError(f"audit verify: {describe(exc)}") from exc
    if walk.expected_seq <= head.seq:
        return walk.fail(
            walk.expected_seq,
            "head_mismatch",
            f"events {walk.expected_seq} to {head.seq} are missing (tail truncated)",
        )
    if walk.expected_seq == head.seq + 1 and walk.prev != head.hash:
        return walk.fail(head.seq, "head_mismatch", "the last event is not the head's")
    if beyond is not None:
        return walk.fail(int(beyond), "outside_chain", f"event {beyond} lies past the head")
    return VerifyReport(
        ok=True, checked=walk.checked, anchor_seq=walk.head.anchor_seq, head_seq=head.seq
    )
