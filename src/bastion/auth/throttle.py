"""The built-in ``login`` policy: a failure-based throttle on password logins.

Failures are counted in ``bastion_login_throttle``, shared by every worker and instance, under
three keys:

- ``pair``: one username from one client address. After ``pair_failures`` failures the next
  attempt of that pair is refused (429 ``login_throttled``) without checking the password.
- ``ip``: one client address across usernames, so one source cannot try one password against
  many accounts (``ip_failures``).
- ``username``: one username from addresses it never logged in from, the ceiling against
  guessing spread over many addresses (``username_failures``).

Once a key reaches its threshold it is blocked for ``base_delay``, and each further failure
doubles the wait up to ``max_delay``. Nothing sleeps on the server: a blocked attempt is refused
at once with ``Retry-After``. Failures more than ``window`` after the previous one start again
at 1. A successful login clears its pair and takes back its own attempt from the address and
username counts; every other failure stays, so they keep recording what an attacker did around
it.

Concurrent attempts cannot slip past the count: :meth:`LoginThrottle.reserve` counts an
attempt as a failure *before* its password is checked, in the same statement that reads whether
a key is blocked, and :meth:`LoginThrottle.succeeded` takes the count back when the password was
right. Sixty simultaneous guesses for one pair therefore get five password checks, not sixty.

The throttle never learns whether a username exists: unknown usernames are counted exactly like
real ones, so its answers cannot be used to enumerate accounts.

The username ceiling is the trade-off. Enforced everywhere, an attacker spreading guesses over
many addresses would lock the real user out. So it applies only to addresses the user has not
recently logged in from (``known_ip``, decided by the caller from the user's sessions): the real
user at home or at the office keeps getting in while the ceiling slows everyone else. An attacker
who shares such an address (the same NAT, the same office) is exempt from the ceiling too, but
is still limited by the pair and address keys. Only failures from unknown addresses are counted
on the username key, so the ceiling measures exactly the traffic it governs, and the real user's
own typos at home never use up the allowance that protects them when they travel.

IPv6 clients are counted per /64 (:func:`ip_bucket`), since one host usually owns a whole /64
and could otherwise use a fresh address for every attempt.

Keys are stored as ``<scope>:<SHA-256>`` of the username and address, never in clear text:
failed logins routinely carry a password typed into the username field, and the throttle table
has no reason to keep those, nor client addresses, readable at rest.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import case, delete, or_, update
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Executable

from bastion.auth.config import ThrottleConfig
from bastion.auth.models import ThrottleRecord
from bastion.store.database import Database

__all__ = ["LoginThrottle", "Reservation", "ThrottleVerdict", "ip_bucket", "throttle_key"]

_IPV6_HOST_BITS = 64


@dataclass(frozen=True, slots=True)
class ThrottleVerdict:
    """A refused login attempt: how long to wait, and which key refused it."""

    retry_after: int
    """Whole seconds until the attempt may be repeated (rounded up, at least 1)."""
    scope: str
    """``"pair"``, ``"ip"`` or ``"username"``: for logs and metrics only. Never shown to the
    client: telling which key refused would help an attacker map accounts and addresses."""


def ip_bucket(client_ip: str) -> str:
    """The address the throttle counts ``client_ip`` under.

    IPv4 addresses as they are; IPv6 addresses as their /64 network (``2001:db8:1:2::/64``)
    whatever their notation; IPv4-mapped IPv6 addresses as the IPv4 address. Strings that are
    not an address are returned unchanged, so they are still counted, each as its own bucket.
    """
    try:
        address = ipaddress.ip_address(client_ip)
    except ValueError:
        return client_ip
    if isinstance(address, ipaddress.IPv4Address):
        return str(address)
    if address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    # Built from the integer, so a zone id (``fe80::1%eth0``) is dropped with the host bits.
    network = int(address) >> _IPV6_HOST_BITS << _IPV6_HOST_BITS
    return f"{ipaddress.IPv6Address(network).compressed}/{128 - _IPV6_HOST_BITS}"


def throttle_key(scope: str, *parts: str) -> str:
    """The stored key of ``scope`` (``pair``, ``ip``, ``user``) over ``parts``.

    ``throttle_key("pair", username, ip_bucket(ip))``, ``throttle_key("ip", ip_bucket(ip))``,
    ``throttle_key("user", username)``; operators' tools use it to find or clear a row. Each
    part is length-prefixed before hashing, so no username or address can forge another key.
    """
    digest = hashlib.sha256()
    for part in parts:
        encoded = part.encode("utf-8", "surrogatepass")
        digest.update(f"{len(encoded)}:".encode())
        digest.update(encoded)
    return f"{scope}:{digest.hexdigest()}"


@dataclass(frozen=True, slots=True)
class Reservation:
    """An attempt counted in advance by :meth:`LoginThrottle.reserve`.

    ``verdict`` is set when the attempt is refused (nothing was counted then). Otherwise the
    attempt went ahead as a presumed failure; :meth:`LoginThrottle.succeeded` undoes it."""

    verdict: ThrottleVerdict | None
    username: str = ""
    client_ip: str = ""
    blocks: tuple[tuple[str, datetime], ...] = ()
    """``(stored key, blocked_until)`` this attempt set by reaching a threshold."""
    counted: tuple[str, ...] = ()
    """Stored keys this attempt added a failure to."""


_NOT_THROTTLED = Reservation(None)


@dataclass(frozen=True, slots=True)
class _Key:
    stored: str
    scope: str
    threshold: int


class LoginThrottle:
    """Counts login failures in the SQL store and says when an attempt must wait.

    The login service calls :meth:`reserve` before verifying a password: the attempt is counted
    as a failure up front (or refused without counting), and :meth:`succeeded` takes it back
    when the password was right. An unknown username is counted like a wrong password. Store errors
    propagate as :class:`~bastion.store.errors.StoreError`; whether a login then proceeds is the
    caller's decision. With ``enabled = false`` nothing is counted or refused.
    """

    def __init__(
        self,
        database: Database,
        config: ThrottleConfig,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._database = database
        self._config = config
        self._clock = clock
        self._window = timedelta(seconds=config.window)

    async def reserve(self, username: str, client_ip: str, *, known_ip: bool) -> Reservation:
        """Count this attempt as a failure before its password is checked, unless a key is
        blocked, in which case nothing is counted and the reservation carries the verdict.

        One transaction: the increment locks the rows and returns each key's block as it was,
        so of many simultaneous attempts exactly those under the threshold go ahead.
        """
        if not self._config.enabled:
            return _NOT_THROTTLED
        now = self._now()
        keys = self._keys(username, client_ip, known_ip=known_ip)
        by_stored = {key.stored: key for key in keys}
        async with self._database.session() as session:
            rows = (await session.execute(self._increment(sorted(by_stored), now))).all()
            active = [
                (by_stored[stored].scope, until)
                for stored, _, blocked_until in rows
                if (until := _active(blocked_until, now)) is not None
            ]
            if active:
                # Refused attempts do not count: only attempts that reach a password check do.
                await session.rollback()
                return Reservation(_longest(active, now))
            blocks = []
            for stored, failures, blocked_until in rows:
                until = self._block(by_stored[stored], failures, now)
                if until is not None and until != blocked_until:
                    await session.execute(
                        update(ThrottleRecord)
                        .where(ThrottleRecord.key == stored)
                        .values(blocked_until=until)
                    )
                    blocks.append((stored, until))
            await session.commit()
        return Reservation(None, username, client_ip, tuple(blocks), tuple(sorted(by_stored)))

    async def succeeded(self, reservation: Reservation) -> None:
        """The reserved attempt was right: forget the pair, and take back the failure (and any
        block it set) from the address and username keys."""
        if reservation.verdict is not None or not reservation.counted:
            return
        pair = throttle_key("pair", reservation.username, ip_bucket(reservation.client_ip))
        blocks = dict(reservation.blocks)
        async with self._database.session() as session:
            await session.execute(delete(ThrottleRecord).where(ThrottleRecord.key == pair))
            for stored in reservation.counted:
                if stored == pair:
                    continue
                values: dict[str, object] = {
                    "failures": case(
                        (ThrottleRecord.failures > 0, ThrottleRecord.failures - 1), else_=0
                    )
                }
                set_by_us = blocks.get(stored)
                if set_by_us is not None:
                    values["blocked_until"] = case(
                        (ThrottleRecord.blocked_until == set_by_us, None),
                        else_=ThrottleRecord.blocked_until,
                    )
                await session.execute(
                    update(ThrottleRecord).where(ThrottleRecord.key == stored).values(**values)
                )
            await session.commit()

    async def prune(self) -> int:
        """Delete the rows whose failures are forgotten (last one older than ``window``) and
        that block nothing; returns how many were deleted."""
        now = self._now()
        statement = delete(ThrottleRecord).where(
            ThrottleRecord.last_failure < now - self._window,
            or_(ThrottleRecord.blocked_until.is_(None), ThrottleRecord.blocked_until <= now),
        )
        async with self._database.session() as session:
            result = await session.execute(statement)
            await session.commit()
        return int(getattr(result, "rowcount", 0))

    def _now(self) -> datetime:
        return datetime.fromtimestamp(self._clock(), UTC)

    def _keys(self, username: str, client_ip: str, *, known_ip: bool) -> list[_Key]:
        bucket = ip_bucket(client_ip)
        config = self._config
        keys = [
            _Key(throttle_key("pair", username, bucket), "pair", config.pair_failures),
            _Key(throttle_key("ip", bucket), "ip", config.ip_failures),
        ]
        if not known_ip:
            keys.append(_Key(throttle_key("user", username), "username", config.username_failures))
        return keys

    def _increment(self, stored_keys: list[str], now: datetime) -> Executable:
        """``INSERT … ON CONFLICT DO UPDATE … RETURNING`` adding one failure to each key.

        ``blocked_until`` is returned as it was before this attempt (the statement does not
        touch it): a key already blocked refuses the attempt, and the caller rolls back.
        """
        insert = postgresql_insert if self._database.dialect == "postgresql" else sqlite_insert
        statement = insert(ThrottleRecord).values(
            [{"key": key, "failures": 1, "last_failure": now} for key in stored_keys]
        )
        # In DO UPDATE, the table's columns are the existing row, before this statement.
        forgotten = ThrottleRecord.last_failure < now - self._window
        return statement.on_conflict_do_update(
            index_elements=[ThrottleRecord.key],
            set_={
                "failures": case((forgotten, 1), else_=ThrottleRecord.failures + 1),
                "last_failure": now,
            },
        ).returning(ThrottleRecord.key, ThrottleRecord.failures, ThrottleRecord.blocked_until)

    def _block(self, key: _Key, failures: int, now: datetime) -> datetime | None:
        """``blocked_until`` after ``failures``: ``None`` below the threshold, ``base_delay`` at
        it, doubling with each further failure up to ``max_delay``."""
        if failures < key.threshold:
            return None
        # The exponent is capped so a long run of failures cannot overflow the float.
        doublings = min(failures - key.threshold, 64)
        delay = min(self._config.max_delay, self._config.base_delay * 2.0**doublings)
        return now + timedelta(seconds=delay)


def _active(blocked_until: datetime | None, now: datetime) -> datetime | None:
    """``blocked_until`` if it is still in the future, else ``None``."""
    return blocked_until if blocked_until is not None and blocked_until > now else None


def _longest(blocks: Iterable[tuple[str, datetime]], now: datetime) -> ThrottleVerdict | None:
    """The verdict of the block that ends last, or ``None`` when there is none."""
    latest = max(blocks, key=lambda block: block[1], default=None)
    if latest is None:
        return None
    scope, until = latest
    seconds = (until - now).total_seconds()
    return ThrottleVerdict(retry_after=max(1, math.ceil(seconds)), scope=scope)
