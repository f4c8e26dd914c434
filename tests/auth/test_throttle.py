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


async def _fail(throttle: LoginThrottle, times: int, username: str = "alice", ip: str = IP) -> None:
    """Record ``times`` failures that each went through :meth:`check` first, as logins do."""
    for _ in range(times):
        assert await throttle.check(username, ip, known_ip=False) is None
        assert await throttle.failure(username, ip, known_ip=False) is None


async def test_pair_is_refused_after_the_fifth_failure(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    # Failures 1 to 5 are ordinary wrong passwords: the login answers 401 for each.
    await _fail(throttle, DEFAULTS.pair_failures)

    # The 6th attempt is refused before any password check, for base_delay.
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")
    # The same user from another address, and another user from this one, are not affected.
    assert await throttle.check("alice", "198.51.100.1", known_ip=False) is None
    assert await throttle.check("bob", IP, known_ip=False) is None


async def test_each_further_failure_doubles_the_wait_up_to_the_cap(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    await _fail(throttle, DEFAULTS.pair_failures)
    waits = []
    for _ in range(12):
        verdict = await throttle.check("alice", IP, known_ip=False)
        assert verdict is not None
        waits.append(verdict.retry_after)
        # Waiting out the block lets exactly one more attempt through; its failure blocks again.
        clock.advance(verdict.retry_after - 0.5)
        assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")
        clock.advance(0.5)
        assert await throttle.check("alice", IP, known_ip=False) is None
        assert await throttle.failure("alice", IP, known_ip=False) is None
    assert waits == [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 900, 900]


async def test_remaining_wait_is_rounded_up(migrated: Database, clock: FakeClock) -> None:
    config = ThrottleConfig(base_delay=10.0)
    throttle = _throttle(migrated, clock, config)
    await _fail(throttle, config.pair_failures)
    clock.advance(6.25)
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(4, "pair")
    clock.advance(3.7)
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")


async def test_failure_that_raced_past_the_check_is_refused_too(
    migrated: Database, clock: FakeClock
) -> None:
    throttle = _throttle(migrated, clock)
    await _fail(throttle, DEFAULTS.pair_failures)
    # A concurrent attempt checked before the 5th failure was written, then failed: it is the
    # 6th attempt, so it gets the (now doubled) wait instead of a 401.
    assert await throttle.failure("alice", IP, known_ip=False) == ThrottleVerdict(2, "pair")
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(2, "pair")


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
        address = addresses[n % len(addresses)]
        assert await throttle.check(f"user{n}", address, known_ip=False) is None
        assert await throttle.failure(f"user{n}", address, known_ip=False) is None

    # Any account, even one never tried, and even a known address of it, must wait.
    assert await throttle.check("fresh", other_host, known_ip=False) == ThrottleVerdict(1, "ip")
    assert await throttle.check("fresh", other_host, known_ip=True) == ThrottleVerdict(1, "ip")
    assert await throttle.check("fresh", "2001:db8:5:7::1", known_ip=False) is None
    assert await throttle.check("fresh", "198.51.100.1", known_ip=False) is None


async def test_many_addresses_against_one_account(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    for n in range(DEFAULTS.username_failures):
        address = f"10.0.{n // 250}.{n % 250 + 1}"
        assert await throttle.check("alice", address, known_ip=False) is None
        assert await throttle.failure("alice", address, known_ip=False) is None

    # Every further unknown address waits for this username...
    refused = ThrottleVerdict(1, "username")
    assert await throttle.check("alice", "198.51.100.1", known_ip=False) == refused
    assert await throttle.check("alice", "2001:db8::1", known_ip=False) == refused
    # ...but the real user's own address is exempt, and other accounts are not affected.
    assert await throttle.check("alice", "192.0.2.10", known_ip=True) is None
    assert await throttle.check("bob", "198.51.100.1", known_ip=False) is None


async def test_failures_from_known_addresses_do_not_use_up_the_ceiling(
    migrated: Database, clock: FakeClock
) -> None:
    config = ThrottleConfig(username_failures=3)
    throttle = _throttle(migrated, clock, config)
    for n in range(10):
        assert await throttle.failure("alice", f"192.0.2.{n + 1}", known_ip=True) is None
    assert await _failures(migrated, throttle_key("user", "alice")) is None
    assert await throttle.check("alice", "198.51.100.1", known_ip=False) is None


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
            refused = await throttle.check(username, ip, known_ip=False)
            verdicts.append(refused)
            if refused is None:
                # Only attempts the throttle let through reach the password check.
                verdicts.append(await throttle.failure(username, ip, known_ip=False))
            clock.advance(1.5)
        return verdicts

    real = await sequence("alice", "198.51.100.1")
    unknown = await sequence("nobody-by-this-name", "198.51.100.2")
    assert real == unknown
    assert any(verdict is not None for verdict in real)


async def test_success_clears_the_pair_only(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    bucket = ip_bucket(IP)
    await _fail(throttle, 4)
    await throttle.success("alice", IP)

    assert await _failures(migrated, throttle_key("pair", "alice", bucket)) is None
    assert await _failures(migrated, throttle_key("ip", bucket)) == 4
    assert await _failures(migrated, throttle_key("user", "alice")) == 4
    # The pair starts again from zero: five more failures before it is refused.
    await _fail(throttle, DEFAULTS.pair_failures)
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")
    assert await _failures(migrated, throttle_key("ip", bucket)) == 9


async def test_success_does_not_lift_an_address_block(migrated: Database, clock: FakeClock) -> None:
    config = ThrottleConfig(ip_failures=3)
    throttle = _throttle(migrated, clock, config)
    for username in ("a", "b", "c"):
        await throttle.failure(username, IP, known_ip=False)
    await throttle.success("alice", IP)
    assert await throttle.check("alice", IP, known_ip=True) == ThrottleVerdict(1, "ip")


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
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")

    # ...longer than that, the count starts again at 1 (and the expired block is cleared).
    clock.advance(DEFAULTS.window + 1)
    await _fail(throttle, 1)
    assert await _failures(migrated, pair) == 1
    await _fail(throttle, DEFAULTS.pair_failures - 2)
    assert await throttle.check("alice", IP, known_ip=False) is None
    await _fail(throttle, 1)
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(1, "pair")


async def test_concurrent_failures_are_all_counted(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    verdicts = await asyncio.gather(
        *(throttle.failure("alice", IP, known_ip=False) for _ in range(20))
    )

    bucket = ip_bucket(IP)
    assert await _failures(migrated, throttle_key("pair", "alice", bucket)) == 20
    assert await _failures(migrated, throttle_key("ip", bucket)) == 20
    assert await _failures(migrated, throttle_key("user", "alice")) == 20
    # Increments are serialised: five are ordinary failures, the other fifteen found the pair
    # already blocked, and the block ends where the 20th failure put it (2 ** 15 s, capped).
    assert sum(verdict is None for verdict in verdicts) == DEFAULTS.pair_failures
    assert await throttle.check("alice", IP, known_ip=False) == ThrottleVerdict(900, "pair")


async def test_prune_removes_only_forgotten_unblocked_rows(
    migrated: Database, clock: FakeClock
) -> None:
    # A block longer than the window, so an old row can still be blocking.
    config = ThrottleConfig(window=60.0, base_delay=600.0, pair_failures=2)
    throttle = _throttle(migrated, clock, config)
    await throttle.failure("old", "192.0.2.1", known_ip=True)
    await throttle.failure("blocked", "192.0.2.2", known_ip=True)
    await throttle.failure("blocked", "192.0.2.2", known_ip=True)
    clock.advance(61)
    await throttle.failure("recent", "192.0.2.3", known_ip=True)

    # Both rows of "old" and the address row of "blocked"; its pair row is still blocking.
    assert await throttle.prune() == 3
    assert await _failures(migrated, throttle_key("pair", "old", "192.0.2.1")) is None
    assert await _failures(migrated, throttle_key("pair", "blocked", "192.0.2.2")) == 2
    assert await _failures(migrated, throttle_key("pair", "recent", "192.0.2.3")) == 1
    assert await throttle.check("blocked", "192.0.2.2", known_ip=True) is not None

    clock.advance(600)
    assert await throttle.prune() == 3
    assert await throttle.prune() == 0


async def test_keys_are_hashed_and_fit_the_column(migrated: Database, clock: FakeClock) -> None:
    throttle = _throttle(migrated, clock)
    username = "mistyped-password-" + "x" * 1000
    address = "not an address " * 40
    await throttle.failure(username, address, known_ip=False)
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
    for _ in range(3):
        assert await throttle.failure("alice", IP, known_ip=False) is None
    assert await throttle.check("alice", IP, known_ip=False) is None
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
