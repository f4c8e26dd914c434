"""LoginThrottle: pair, address and username keys, doubling waits, forgetting, concurrency, on
SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from sqlalchemy import select

from bastion.auth.config import ThrottleConfig
from bastion.auth.models import ThrottleRecord, User
from bastion.auth.throttle import (
    LoginThrottle,
    Reservation,
    ThrottleVerdict,
    ip_bucket,
    throttle_key,
)
from bastion.store.database import Database

DEFAULTS = ThrottleConfig()
IP = "203.0.113.7"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _throttle(
    database: Database, clock: FakeClock, config: ThrottleConfig = DEFAULTS
) -> LoginThrottle:
    return LoginThrottle(database, config, clock=clock)


async def _failures(database: Database, key: str) -> int | None:
    """The failure count stored under ``key``, or ``None`` when there is no row."""
    async with database.session() as session:
        count = await session.scalar(
            select(ThrottleRecord.failures).where(ThrottleRecord.key == key)
        )
    return count


async def _fail(
    throttle: LoginThrottle,
    times: int,
    username: str = "alice",
    ip: str = IP,
    *,
    known_ip: bool = False,
) -> None:
    """``times`` attempts the throttle lets through whose passwords then turn out wrong: each
    is counted by :meth:`reserve` and never taken back."""
    for _ in range(times):
        assert (await throttle.reserve(username, ip, known_ip=known_ip)).verdict is None


async def _refused(
    throttle: LoginThrottle, username: str = "alice", ip: str = IP, *, known_ip: bool = False
) -> ThrottleVerdict | None:
    """The verdict refusing an attempt now, or ``None`` when one would go ahead. An attempt
    that goes ahead is taken back at once (as a correct password would), so probing leaves the
    address and username counts as they were."""
    reservation = await throttle.reserve(username, ip, known_ip=known_ip)
    if reservation.verdict is None:
        await throttle.succeeded(reservation)
    return reservation.verdict


async def test_pair_is_refused_after_the_fifth_failure(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    # Attempts 1 to 5 reach a password check: the login answers 401 for each wrong one.
    await _fail(throttle, DEFAULTS.pair_failures)

    # The 6th attempt is refused before any password check, for base_delay, and not counted.
    assert await throttle.reserve("alice", IP, known_ip=False) == Reservation(
        ThrottleVerdict(1, "pair")
    )
    assert await _failures(migrated, throttle_key("pair", "alice", ip_bucket(IP))) == 5
    # The same user from another address, and another user from this one, are not affected.
    assert await _refused(throttle, "alice", "198.51.100.1") is None
    assert await _refused(throttle, "bob", IP) is None


async def test_each_further_failure_doubles_the_wait_up_to_the_cap(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    await _fail(throttle, DEFAULTS.pair_failures)
    waits = []
    for _ in range(12):
        verdict = await _refused(throttle)
        assert verdict is not None
        waits.append(verdict.retry_after)
        # Waiting out the block lets exactly one more attempt through; its failure blocks again.
        clock.advance(verdict.retry_after - 0.5)
        assert await _refused(throttle) == ThrottleVerdict(1, "pair")
        clock.advance(0.5)
        await _fail(throttle, 1)
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


async def test_remaining_wait_is_rounded_up(migrated: Database, clock: FakeClock) -> None:
    config = ThrottleConfig(base_delay=10.0)
    throttle = _throttle(migrated, clock, config)
    await _fail(throttle, config.pair_failures)
    clock.advance(6.25)
    assert await _refused(throttle) == ThrottleVerdict(4, "pair")
    clock.advance(3.7)
    assert await _refused(throttle) == ThrottleVerdict(1, "pair")


@pytest.mark.parametrize(
    ("addresses", "other_host"),
    [
        pytest.param([IP], IP, id="ipv4"),
        pytest.param(
            [f"2001:db8:5:6::{n:x}" for n in range(1, 300)], "2001:db8:5:6:ffff::1", id="ipv6-/64"
        ),
    ],
)
async def test_one_address_against_many_accounts(
    migrated: Database, clock: FakeClock, addresses: list[str], other_host: str
) -> None:
    throttle = _throttle(migrated, clock)
    for n in range(DEFAULTS.ip_failures):
        await _fail(throttle, 1, f"user{n}", addresses[n % len(addresses)])

    # Any account, even one never tried, and even a known address of it, must wait.
    assert await _refused(throttle, "fresh", other_host) == ThrottleVerdict(1, "ip")
    assert await _refused(throttle, "fresh", other_host, known_ip=True) == ThrottleVerdict(1, "ip")
    assert await _refused(throttle, "fresh", "2001:db8:5:7::1") is None
    assert await _refused(throttle, "fresh", "198.51.100.1") is None


async def test_many_addresses_against_one_account(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    for n in range(DEFAULTS.username_failures):
        await _fail(throttle, 1, "alice", f"10.0.{n // 250}.{n % 250 + 1}")

    # Every further unknown address waits for this username...
    refused = ThrottleVerdict(1, "username")
    assert await _refused(throttle, "alice", "198.51.100.1") == refused
    assert await _refused(throttle, "alice", "2001:db8::1") == refused
    # ...but the real user's own address is exempt, and other accounts are not affected.
    assert await _refused(throttle, "alice", "192.0.2.10", known_ip=True) is None
    assert await _refused(throttle, "bob", "198.51.100.1") is None


async def test_failures_from_known_addresses_do_not_use_up_the_ceiling(
    migrated: Database, clock: FakeClock
) -> None:
    config = ThrottleConfig(username_failures=3)
    throttle = _throttle(migrated, clock, config)
    for n in range(10):
        await _fail(throttle, 1, "alice", f"192.0.2.{n + 1}", known_ip=True)
    assert await _failures(migrated, throttle_key("user", "alice")) is None
    assert await _refused(throttle, "alice", "198.51.100.1") is None


async def test_unknown_and_real_usernames_get_the_same_verdicts(
    migrated: Database, clock: FakeClock
) -> None:
    async with migrated.session() as session:
        session.add(User(id=str(uuid.uuid4()), username="alice", password_hash="$argon2id$x"))
        await session.commit()
    throttle = _throttle(migrated, clock)

    async def sequence(username: str, ip: str) -> list[ThrottleVerdict | None]:
        verdicts: list[ThrottleVerdict | None] = []
        for _ in range(8):
            # Attempts the throttle lets through reach the password check and fail.
            verdicts.append((await throttle.reserve(username, ip, known_ip=False)).verdict)
            clock.advance(1.5)
        return verdicts

    real = await sequence("alice", "198.51.100.1")
    unknown = await sequence("nobody-by-this-name", "198.51.100.2")
    assert real == unknown
    assert any(verdict is not None for verdict in real)


async def test_success_clears_the_pair_and_takes_back_its_own_attempt(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    bucket = ip_bucket(IP)
    await _fail(throttle, 4)
    # The 5th attempt reaches the pair's threshold and blocks it, but its password is right.
    reservation = await throttle.reserve("alice", IP, known_ip=False)
    assert reservation.verdict is None
    await throttle.succeeded(reservation)

    assert await _failures(migrated, throttle_key("pair", "alice", bucket)) is None
    # The four real failures stay on the address and the username.
    assert await _failures(migrated, throttle_key("ip", bucket)) == 4
    assert await _failures(migrated, throttle_key("user", "alice")) == 4
    # The pair starts again from zero: five more failures before it is refused.
    await _fail(throttle, DEFAULTS.pair_failures)
    assert await _refused(throttle) == ThrottleVerdict(1, "pair")
    assert await _failures(migrated, throttle_key("ip", bucket)) == 9


async def test_success_does_not_lift_a_block_set_by_other_failures(
    migrated: Database, clock: FakeClock
) -> None:
    config = ThrottleConfig(ip_failures=3)
    throttle = _throttle(migrated, clock, config)
    alice = await throttle.reserve("alice", IP, known_ip=True)
    # Two failures against other accounts while alice's password is checked: the address
    # reaches its threshold through them.
    await _fail(throttle, 1, "a")
    await _fail(throttle, 1, "b")
    await throttle.succeeded(alice)
    assert await _failures(migrated, throttle_key("ip", ip_bucket(IP))) == 2
    assert await _refused(throttle, "alice", IP, known_ip=True) == ThrottleVerdict(1, "ip")


async def test_failures_older_than_the_window_are_forgotten(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    pair = throttle_key("pair", "alice", ip_bucket(IP))
    await _fail(throttle, 4)
    # Exactly one window after the last failure it still counts...
    clock.advance(DEFAULTS.window)
    await _fail(throttle, 1)
    assert await _failures(migrated, pair) == 5
    assert await _refused(throttle) == ThrottleVerdict(1, "pair")

    # ...longer than that, the count starts again at 1 (and the expired block is cleared).
    clock.advance(DEFAULTS.window + 1)
    await _fail(throttle, 1)
    assert await _failures(migrated, pair) == 1
    await _fail(throttle, DEFAULTS.pair_failures - 1)
    assert await _failures(migrated, pair) == DEFAULTS.pair_failures
    assert await _refused(throttle) == ThrottleVerdict(1, "pair")


async def test_concurrent_attempts_only_the_allowed_number_go_ahead(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    reservations = await asyncio.gather(
        *(throttle.reserve("alice", IP, known_ip=False) for _ in range(20))
    )

    # Increments are serialised: five attempts went ahead (and were counted), the other
    # fifteen found the pair blocked and counted nothing.
    assert sum(r.verdict is None for r in reservations) == DEFAULTS.pair_failures
    assert {r.verdict for r in reservations if r.verdict is not None} == {
        ThrottleVerdict(1, "pair")
    }
    bucket = ip_bucket(IP)
    for key in (
        throttle_key("pair", "alice", bucket),
        throttle_key("ip", bucket),
        throttle_key("user", "alice"),
    ):
        assert await _failures(migrated, key) == DEFAULTS.pair_failures


async def test_prune_removes_only_forgotten_unblocked_rows(
    migrated: Database, clock: FakeClock
) -> None:
    # A block longer than the window, so an old row can still be blocking.
    config = ThrottleConfig(window=60.0, base_delay=600.0, pair_failures=2)
    throttle = _throttle(migrated, clock, config)
    await _fail(throttle, 1, "old", "192.0.2.1", known_ip=True)
    await _fail(throttle, 2, "blocked", "192.0.2.2", known_ip=True)
    clock.advance(61)
    await _fail(throttle, 1, "recent", "192.0.2.3", known_ip=True)

    # Both rows of "old" and the address row of "blocked"; its pair row is still blocking.
    assert await throttle.prune() == 3
    assert await _failures(migrated, throttle_key("pair", "old", "192.0.2.1")) is None
    assert await _failures(migrated, throttle_key("pair", "blocked", "192.0.2.2")) == 2
    assert await _failures(migrated, throttle_key("pair", "recent", "192.0.2.3")) == 1
    assert await _refused(throttle, "blocked", "192.0.2.2", known_ip=True) is not None

    clock.advance(600)
    assert await throttle.prune() == 3
    assert await throttle.prune() == 0


async def test_keys_are_hashed_and_fit_the_column(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    username = "mistyped-password-" + "x" * 1000
    address = "not an address " * 40
    await _fail(throttle, 1, username, address)
    async with migrated.session() as session:
        keys = (await session.scalars(select(ThrottleRecord.key))).all()
    assert sorted(key.split(":")[0] for key in keys) == ["ip", "pair", "user"]
    assert all(len(key) <= 512 and "mistyped" not in key and "address" not in key for key in keys)


def test_keys_cannot_be_forged_by_moving_the_separator() -> None:
    assert throttle_key("pair", "a|b", "c") != throttle_key("pair", "a", "b|c")
    assert throttle_key("pair", "ab", "c") != throttle_key("pair", "a", "bc")
    assert throttle_key("ip", "192.0.2.1") != throttle_key("user", "192.0.2.1")


async def test_disabled_throttle_counts_and_refuses_nothing(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock, ThrottleConfig(enabled=False, pair_failures=1))
    await _fail(throttle, 3)
    assert await _refused(throttle) is None
    assert await _failures(migrated, throttle_key("ip", IP)) is None


@pytest.mark.parametrize(
    ("client_ip", "bucket"),
    [
        pytest.param("203.0.113.7", "203.0.113.7", id="ipv4"),
        pytest.param("2001:db8:1:2::5", "2001:db8:1:2::/64", id="ipv6-compressed"),
        pytest.param(
            "2001:0db8:0001:0002:aaaa:bbbb:cccc:dddd", "2001:db8:1:2::/64", id="ipv6-expanded"
        ),
        pytest.param("2001:DB8:1:2:FFFF::1", "2001:db8:1:2::/64", id="ipv6-upper-case"),
        pytest.param("2001:db8:1:3::5", "2001:db8:1:3::/64", id="ipv6-next-64"),
        pytest.param("fe80::1%eth0", "fe80::/64", id="ipv6-zone-id"),
        pytest.param("::1", "::/64", id="ipv6-loopback"),
        pytest.param("::ffff:203.0.113.7", "203.0.113.7", id="ipv4-mapped"),
        pytest.param("::ffff:cb00:7107", "203.0.113.7", id="ipv4-mapped-hex"),
        pytest.param("unknown", "unknown", id="garbage"),
        pytest.param("", "", id="empty"),
        pytest.param("203.0.113.007", "203.0.113.007", id="ipv4-leading-zero"),
        pytest.param("[2001:db8::1]", "[2001:db8::1]", id="bracketed"),
    ],
)
def test_ip_bucket(client_ip: str, bucket: str) -> None:
    assert ip_bucket(client_ip) == bucket
