"""The Redis store beyond the shared algorithm suite: one command per request, agreement
between processes and clocks, failures and recovery, the script cache, cluster key layout,
pipelining."""

from __future__ import annotations

import asyncio
import multiprocessing
import time
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ProcessPoolExecutor
from typing import Any

import pytest
import redis
from redis.asyncio.connection import AbstractConnection

from bastion.ratelimit import redis_store
from bastion.ratelimit.core import BanRule, Check, RateLimitStoreError, Rule
from bastion.ratelimit.redis_store import CLUSTER_UNSUPPORTED, RedisStore
from bastion.store.redis import RedisConnector
from ratelimit.redis_helpers import (
    RedisServer,
    crc16_slot,
    free_port,
    hammer,
    skewed_requests,
)

pytestmark = pytest.mark.redis

PREFIX = "bastion:rl:t:"
CLIENT = "ip:203.0.113.7"
BANS = BanRule(threshold=3, window=60.0, durations=(30.0, 120.0), reset_after=600.0)


def rule(algorithm: str, limit: int = 5, period: float = 3600.0, burst: int | None = None) -> Rule:
    """A rule; by default over an hour, so a test counting in a window (these stores are on real
    time) does not cross into the next one halfway, as it could a minute's on a slow machine."""
    return Rule(algorithm, algorithm, limit, period, burst if burst is not None else limit)  # type: ignore[arg-type]


def command_calls(client: redis.Redis) -> dict[str, int]:
    """Calls per command since the server started (``INFO commandstats``)."""
    stats: dict[str, Any] = client.info("commandstats")
    return {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}


SCRIPT_CALLS = {"time", "get", "set", "del", "pexpire", "zadd", "zcard", "zrange"}
SCRIPT_CALLS |= {"zremrangebyscore", "zpopmin", "zrem", "zrangebyscore", "pttl", "zscore", "incr"}
"""What the script calls inside Redis: ``INFO commandstats`` counts those too."""


def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """Commands clients sent between two ``command_calls`` (not those the script made)."""
    changed = {name: calls - before.get(name, 0) for name, calls in after.items()}
    ignored = SCRIPT_CALLS | {"info"}
    return {name: calls for name, calls in changed.items() if calls and name not in ignored}


def stored_keys(client: redis.Redis) -> list[bytes]:
    """The store's keys on the Redis ``client`` talks to."""
    return [key for key in client.keys(f"{PREFIX}*") if isinstance(key, bytes)]


@pytest.fixture
def admin(clean_redis_url: str) -> Iterator[redis.Redis]:
    """A plain client on the test Redis, to look behind the store's back."""
    client = redis.Redis.from_url(clean_redis_url)
    try:
        yield client
    finally:
        client.close()


@pytest.fixture
async def connector(clean_redis_url: str) -> AsyncIterator[RedisConnector]:
    connector = RedisConnector.from_url(clean_redis_url)
    try:
        yield connector
    finally:
        await connector.close()


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
async def store(
    request: pytest.FixtureRequest, connector: RedisConnector
) -> AsyncIterator[RedisStore]:
    store = RedisStore(connector, prefix=PREFIX, batch=request.param)
    try:
        yield store
    finally:
        await store.close()


@pytest.fixture
def server() -> Iterator[RedisServer]:
    """A Redis of this test's own, which it may kill, freeze and restart, and whose keys and
    command statistics no other test run touches (the shared one may be flushed meanwhile)."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(params=[True, False], ids=["batched", "unbatched"])
async def private(
    request: pytest.FixtureRequest, server: RedisServer
) -> AsyncIterator[tuple[RedisStore, redis.Redis]]:
    """A store on this test's own Redis, and a plain client on that Redis."""
    connector = RedisConnector.from_url(server.url)
    store = RedisStore(connector, prefix=PREFIX, batch=request.param)
    admin = redis.Redis.from_url(server.url)
    try:
        yield store, admin
    finally:
        admin.close()
        await store.close()
        await connector.close()


# -- one command per request ---------------------------------------------------------------


async def test_a_request_with_three_policies_and_bans_is_one_redis_command(
    private: tuple[RedisStore, redis.Redis],
) -> None:
    store, admin = private
    checks = [
        Check(rule("gcra", burst=3), f"gcra|{CLIENT}"),
        Check(rule("sliding_window"), f"sliding_window|{CLIENT}"),
        Check(rule("fixed_window"), "fixed_window|user:42"),
    ]
    await store.evaluate(checks, client=CLIENT, bans=BANS)  # loads the script, connects
    before = command_calls(admin)
    sent = store.commands_sent

    verdict = await store.evaluate(checks, client=CLIENT, bans=BANS)

    assert verdict.allowed
    assert len(verdict.decisions) == 3
    assert delta(before, command_calls(admin)) == {"evalsha": 1}
    assert store.commands_sent == sent + 1


async def test_a_refused_request_that_starts_a_ban_is_one_command_too(
    private: tuple[RedisStore, redis.Redis],
) -> None:
    store, admin = private
    check = Check(rule("fixed_window", limit=1), f"fixed_window|{CLIENT}")
    await store.evaluate([check], client=CLIENT, bans=BANS)
    for _ in range(BANS.threshold - 1):
        assert not (await store.evaluate([check], client=CLIENT, bans=BANS)).allowed
    before = command_calls(admin)

    verdict = await store.evaluate([check], client=CLIENT, bans=BANS)

    assert verdict.new_ban == 30.0
    assert verdict.ban_level == 1
    assert delta(before, command_calls(admin)) == {"evalsha": 1}
    banned = await store.evaluate([check], client=CLIENT, bans=BANS)
    assert banned.decisions == ()
    assert 29.0 < banned.banned_for <= 30.0


# -- several processes, several clocks -----------------------------------------------------


def _spawn_pool(workers: int) -> ProcessPoolExecutor:
    return ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"))


def _hammer_from_processes(url: str, limit_rule: Rule, key: str) -> list[dict[str, Any]]:
    processes = 4
    with _spawn_pool(processes) as pool:
        # Far enough ahead for every spawned interpreter to be up before the first request.
        start_at = time.time() + 4.0
        futures = [
            pool.submit(hammer, url, PREFIX, limit_rule, key, start_at, 150, 10)
            for _ in range(processes)
        ]
        return [future.result(timeout=120) for future in futures]


@pytest.mark.parametrize("algorithm", ["fixed_window", "sliding_log"])
def test_four_processes_sharing_a_bucket_allow_exactly_the_limit(
    server: RedisServer, algorithm: str
) -> None:
    period = 3600.0
    # A fixed window's count restarts at its end: keep the test away from one.
    left = period - time.time() % period
    if left < 30:
        time.sleep(left + 0.1)

    results = _hammer_from_processes(server.url, rule(algorithm, 50, period), "shared|k")

    assert sum(result["allowed"] for result in results) == 50


def test_four_processes_sharing_a_gcra_bucket_keep_to_its_emission_interval(
    server: RedisServer,
) -> None:
    limit_rule = rule("gcra", limit=200, period=1.0, burst=5)  # one request per 5 ms, 5 at once
    interval = limit_rule.period / limit_rule.limit

    results = _hammer_from_processes(server.url, limit_rule, "shared|g")

    allowed = sum(result["allowed"] for result in results)
    elapsed = max(r["last"] for r in results) - min(r["first"] for r in results)
    assert allowed <= limit_rule.burst + elapsed / interval + 1
    assert allowed >= limit_rule.burst


def test_instances_with_skewed_clocks_agree_because_redis_time_decides(
    server: RedisServer,
) -> None:
    limit_rule = rule("gcra", limit=5, period=60.0)
    with _spawn_pool(1) as ahead, _spawn_pool(1) as on_time:
        first = ahead.submit(
            skewed_requests, server.url, PREFIX, limit_rule, "skew|k", 3600.0, 3
        ).result(timeout=60)
        second = on_time.submit(
            skewed_requests, server.url, PREFIX, limit_rule, "skew|k", 0.0, 3
        ).result(timeout=60)

    # One bucket of 5: the process an hour ahead took 3, the other gets the last 2.
    assert [outcome[0] for outcome in first + second] == [True, True, True, True, True, False]
    assert [outcome[1] for outcome in first + second] == [4, 3, 2, 1, 0, 0]
    # The same time line: each allowed request backs the bucket up by one interval (12 s), less
    # the real time since the first request (the second process may take a while to start).
    start = first[0][4]
    for index, outcome in enumerate(first + second[:2]):
        assert outcome[2] == pytest.approx(12.0 * (index + 1) - (outcome[4] - start), abs=0.5)
    assert second[2][3] == pytest.approx(12.0 - (second[2][4] - start), abs=0.5)


# -- failures and recovery -----------------------------------------------------------------


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
async def test_a_killed_redis_fails_fast_and_a_restarted_one_is_used_again(
    server: RedisServer, batch: bool
) -> None:
    timeout = 0.5
    connector = RedisConnector.from_url(server.url, timeout=timeout)
    store = RedisStore(connector, prefix=PREFIX, batch=batch)
    check = Check(rule("gcra", limit=1000), f"gcra|{CLIENT}")
    try:
        assert (await store.evaluate([check], client=CLIENT, bans=BANS)).allowed

        server.kill()
        started = time.monotonic()
        outcomes = await asyncio.gather(
            *(store.evaluate([check], client=CLIENT, bans=BANS) for _ in range(20)),
            return_exceptions=True,
        )
        # Together, not one timeout after another (a bound far above what a slow machine takes
        # for the few timeouts the calls share).
        assert time.monotonic() - started < 20 * timeout
        assert all(isinstance(outcome, RateLimitStoreError) for outcome in outcomes)

        server.start()  # same port, empty: the script is gone too
        assert (await store.evaluate([check], client=CLIENT, bans=BANS)).allowed
    finally:
        await store.close()
        await connector.close()


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
async def test_a_redis_that_stops_answering_times_out_then_recovers(
    server: RedisServer, batch: bool
) -> None:
    timeout = 0.3
    connector = RedisConnector.from_url(server.url, timeout=timeout)
    store = RedisStore(connector, prefix=PREFIX, batch=batch)
    check = Check(rule("fixed_window", limit=1000), f"fixed_window|{CLIENT}")
    try:
        await store.evaluate([check], client=CLIENT)
        server.pause()
        try:
            # The store's timeout ends the wait (the error says so; without one the wait would
            # not end), however slow the machine.
            with pytest.raises(RateLimitStoreError, match=r"timed out|Timeout"):
                async with asyncio.timeout(30):
                    await store.evaluate([check], client=CLIENT)
        finally:
            server.resume()
        verdict = await store.evaluate([check], client=CLIENT)
        assert verdict.allowed
    finally:
        await store.close()
        await connector.close()


@pytest.fixture(params=["hiredis", "per-reply"])
def reading(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Replies read in one pass over the hiredis reader, or one ``read_response`` each (the
    path taken when redis-py's hiredis parser is not there)."""
    if request.param == "per-reply":
        monkeypatch.setattr(redis_store, "_NOT_ENOUGH_DATA", None)
    return str(request.param)


async def test_a_pipeline_is_read_without_a_read_response_per_reply(
    connector: RedisConnector, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    calls = 0
    read_response = AbstractConnection.read_response

    async def counted(self: AbstractConnection, *args: Any, **kwargs: Any) -> Any:
        nonlocal calls
        calls += 1
        return await read_response(self, *args, **kwargs)

    try:
        # The first call connects and asks INFO, through read_response.
        await store.evaluate([Check(rule("gcra"), "gcra|warm-up")])
        monkeypatch.setattr(AbstractConnection, "read_response", counted)
        checks = [Check(rule("gcra", limit=1000), f"gcra|ip:198.51.100.{i}") for i in range(30)]
        verdicts = await asyncio.gather(*(store.evaluate([check]) for check in checks))
        assert all(verdict.allowed for verdict in verdicts)
        assert calls == 0
    finally:
        await store.close()


async def test_a_script_error_fails_only_its_own_caller_in_a_batch(
    connector: RedisConnector, admin: redis.Redis, reading: str
) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    try:
        admin.rpush(f"{PREFIX}gcra|broken", "a list where a GCRA bucket belongs")
        good = [Check(rule("gcra", limit=1000), f"gcra|ip:198.51.100.{i}") for i in range(20)]
        broken = Check(rule("gcra", limit=1000), "gcra|broken")

        outcomes = await asyncio.gather(
            *(store.evaluate([check]) for check in [*good[:10], broken, *good[10:]]),
            return_exceptions=True,
        )

        assert isinstance(outcomes[10], RateLimitStoreError)
        assert "WRONGTYPE" in str(outcomes[10])
        rest = outcomes[:10] + outcomes[11:]
        assert all(not isinstance(outcome, BaseException) and outcome.allowed for outcome in rest)
    finally:
        await store.close()


async def test_a_flushed_script_is_loaded_again_once(
    private: tuple[RedisStore, redis.Redis], reading: str
) -> None:
    store, admin = private
    check = Check(rule("gcra", limit=1000), f"gcra|{CLIENT}")
    await store.evaluate([check], client=CLIENT)
    admin.script_flush()
    before = command_calls(admin)
    sent = store.commands_sent

    assert (await store.evaluate([check], client=CLIENT)).allowed
    assert (await store.evaluate([check], client=CLIENT)).allowed

    # NOSCRIPT, load, retry; then the script is there again.
    assert delta(before, command_calls(admin)) == {"evalsha": 3, "script|load": 1}
    assert store.commands_sent - sent == 3


async def test_a_batch_meeting_a_flushed_script_loads_it_once(
    server: RedisServer, reading: str
) -> None:
    connector = RedisConnector.from_url(server.url)
    store = RedisStore(connector, prefix=PREFIX)
    admin = redis.Redis.from_url(server.url)
    check = Check(rule("gcra", limit=1000), f"gcra|{CLIENT}")
    try:
        await store.evaluate([check], client=CLIENT)
        admin.script_flush()
        before = command_calls(admin)

        verdicts = await asyncio.gather(
            *(store.evaluate([check], client=CLIENT) for _ in range(20))
        )

        assert all(verdict.allowed for verdict in verdicts)
        assert delta(before, command_calls(admin)) == {"evalsha": 40, "script|load": 1}
    finally:
        admin.close()
        await store.close()
        await connector.close()


# -- keys: cluster tags and expiry ---------------------------------------------------------


ALL_ALGORITHMS = [
    Check(rule("gcra"), "gcra|user:42"),
    Check(rule("sliding_window"), "sliding_window|user:42"),
    Check(rule("fixed_window"), "fixed_window|user:42"),
    Check(rule("sliding_log"), "sliding_log|user:42"),
    Check(rule("concurrency"), "concurrency|user:42"),
    Check(rule("quota"), "quota|user:42", window=20261201),
]


async def test_cluster_mode_puts_every_key_of_a_call_in_the_clients_slot(
    connector: RedisConnector, admin: redis.Redis
) -> None:
    store = RedisStore(connector, prefix=PREFIX, cluster=True)
    refused = Check(rule("fixed_window", limit=1), f"fixed_window|{CLIENT}")
    try:
        await store.evaluate([*ALL_ALGORITHMS, refused], client=CLIENT, bans=BANS)
        await store.evaluate([refused], client=CLIENT, bans=BANS)  # writes the refusal log
        keys = stored_keys(admin)

        assert len(keys) == len(ALL_ALGORITHMS) + 2  # + the refusal log (no ban record yet)
        assert {crc16_slot(key) for key in keys} == {crc16_slot(CLIENT.encode())}
        assert all(f"{{{CLIENT}}}".encode() in key for key in keys)
    finally:
        await store.close()


async def test_cluster_mode_counts_a_per_user_bucket_per_client_address(
    connector: RedisConnector,
) -> None:
    per_user = Check(rule("fixed_window", limit=1), "fixed_window|user:42")
    clustered = RedisStore(connector, prefix=PREFIX + "c:", cluster=True)
    single = RedisStore(connector, prefix=PREFIX + "s:")
    try:
        for client in ("ip:192.0.2.1", "ip:192.0.2.2"):
            assert (await clustered.evaluate([per_user], client=client)).allowed
        assert (await single.evaluate([per_user], client="ip:192.0.2.1")).allowed
        assert not (await single.evaluate([per_user], client="ip:192.0.2.2")).allowed
    finally:
        await clustered.close()
        await single.close()


@pytest.mark.parametrize("batch", [True, False], ids=["batched", "unbatched"])
async def test_a_redis_cluster_is_refused_with_a_clear_error(batch: bool) -> None:
    """The store's connections are single-node: against a Cluster every call would meet MOVED,
    so the first exchange finds out and every call says why, without asking Redis again."""
    # The cluster bus listens on a port of its own (by default the port + 10000: maybe > 65535).
    server = RedisServer(options=("--cluster-enabled", "yes", "--cluster-port", str(free_port())))
    server.start()
    connector = RedisConnector.from_url(server.url)
    store = RedisStore(connector, prefix=PREFIX, batch=batch, cluster=True)
    check = Check(rule("gcra"), f"gcra|{CLIENT}")
    try:
        with pytest.raises(RateLimitStoreError, match="Redis Cluster") as first:
            await store.evaluate([check], client=CLIENT, bans=BANS)
        assert str(first.value) == CLUSTER_UNSUPPORTED
        with pytest.raises(RateLimitStoreError, match="Redis Cluster"):
            await store.evaluate([check], client=CLIENT, bans=BANS)
        assert store.commands_sent == 0  # no EVALSHA ever reached the cluster
        with pytest.raises(RateLimitStoreError, match="Sentinel or a managed Redis"):
            await RedisStore(connector, prefix=PREFIX).check_server()
    finally:
        await store.close()
        await connector.close()
        server.stop()


async def test_check_server_accepts_a_single_redis(connector: RedisConnector) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    try:
        await store.check_server()
        assert (await store.evaluate([Check(rule("gcra"), "gcra|x")])).allowed
    finally:
        await store.close()


@pytest.mark.parametrize("cluster", [False, True], ids=["single", "cluster"])
async def test_release_gives_back_a_concurrency_slot(
    connector: RedisConnector, cluster: bool
) -> None:
    store = RedisStore(connector, prefix=PREFIX, cluster=cluster)
    slots = rule("concurrency", limit=1, period=30.0)
    try:
        held = Check(slots, "concurrency|user:42")
        assert (await store.evaluate([held], client=CLIENT)).allowed
        refused = await store.evaluate([Check(slots, "concurrency|user:42")], client=CLIENT)
        assert not refused.allowed
        assert refused.decisions[0].retry_after == pytest.approx(30.0, abs=0.5)

        await store.release([held])

        assert (await store.evaluate([Check(slots, "concurrency|user:42")], client=CLIENT)).allowed
    finally:
        await store.close()


async def test_every_key_expires_when_its_state_no_longer_matters(
    store: RedisStore, admin: redis.Redis
) -> None:
    period = 3600.0  # the rules' default
    refused = Check(rule("fixed_window", limit=1, period=period), f"fixed_window|{CLIENT}")
    started = time.time()
    await store.evaluate([*ALL_ALGORITHMS], client=CLIENT, bans=BANS)
    for _ in range(BANS.threshold + 1):
        await store.evaluate([refused], client=CLIENT, bans=BANS)
    now = time.time()

    ttls = {key.decode().removeprefix(PREFIX): admin.pttl(key) / 1000 for key in stored_keys(admin)}
    # A key's life has run down by at most the time the test took so far (a second, or more
    # on a slow machine).
    slack = max(time.time() - started, 1.0)

    window_end = (now // period + 1) * period - now
    expected = {
        "gcra|user:42": period / 5,  # one emission interval
        "sliding_window|user:42": window_end + period,
        "fixed_window|user:42": window_end,
        f"fixed_window|{CLIENT}": window_end,
        "sliding_log|user:42": period,
        "concurrency|user:42": period,
        "quota|user:42": period,
        f"ban:{{{CLIENT}}}": BANS.durations[0] + BANS.reset_after,
        "bans": BANS.durations[0],  # the ban index, until its latest ban ends
    }
    assert set(ttls) == set(expected)  # the refusal log went when the ban started
    for key, seconds in expected.items():
        assert seconds - slack <= ttls[key] <= seconds + 0.01, key


# -- bans ----------------------------------------------------------------------------------


async def test_active_bans_lists_banned_clients_and_lift_ends_a_ban(store: RedisStore) -> None:
    check_of = {
        client: Check(rule("fixed_window", limit=1), f"fixed_window|{client}")
        for client in ("ip:192.0.2.1", "ip:192.0.2.2")
    }
    started = time.time()
    for client, check in check_of.items():
        for _ in range(BANS.threshold + 1):
            await store.evaluate([check], client=client, bans=BANS)

    bans = sorted(await store.active_bans(), key=lambda record: record.client)

    assert [(ban.client, ban.level) for ban in bans] == [("ip:192.0.2.1", 1), ("ip:192.0.2.2", 1)]
    # 30 s from when the ban started, somewhere in the test so far (however long it took; the
    # test Redis's clock is this host's).
    ended = time.time()
    assert all(started + 30.0 - 0.01 <= ban.until <= ended + 30.0 + 0.01 for ban in bans)
    assert await store.lift("ip:192.0.2.1") is True
    assert await store.lift("ip:192.0.2.1") is False
    assert [ban.client for ban in await store.active_bans()] == ["ip:192.0.2.2"]
    # Lifted: refusals and offence number forgotten, so it takes a full threshold again.
    check = check_of["ip:192.0.2.1"]
    verdicts = [
        await store.evaluate([check], client="ip:192.0.2.1", bans=BANS)
        for _ in range(BANS.threshold)
    ]
    assert [verdict.new_ban for verdict in verdicts] == [0.0, 0.0, 30.0]


async def test_a_repeat_offender_gets_the_next_duration(store: RedisStore) -> None:
    short = BanRule(threshold=1, window=60.0, durations=(0.2, 50.0, 90.0), reset_after=600.0)
    check = Check(rule("fixed_window", limit=1), f"fixed_window|{CLIENT}")
    await store.evaluate([check], client=CLIENT, bans=short)

    first = await store.evaluate([check], client=CLIENT, bans=short)
    await asyncio.sleep(0.3)
    second = await store.evaluate([check], client=CLIENT, bans=short)

    assert (first.new_ban, first.ban_level) == (0.2, 1)
    assert (second.new_ban, second.ban_level) == (50.0, 2)


async def test_active_bans_read_the_ban_index_without_scanning(
    private: tuple[RedisStore, redis.Redis],
) -> None:
    store, admin = private
    # Bans of a second: still on when read on a slow machine (0.3 s could end before the read).
    short = BanRule(threshold=1, window=60.0, durations=(1.0,), reset_after=600.0)
    for client in ("ip:192.0.2.1", "ip:192.0.2.2"):
        check = Check(rule("fixed_window", limit=1), f"fixed_window|{client}")
        await store.evaluate([check], client=client, bans=BANS)
        await store.evaluate([check], client=client, bans=short)
    admin.mset({f"{PREFIX}other:{index}": b"x" for index in range(200)})
    before = command_calls(admin)

    bans = await store.active_bans()

    assert sorted(ban.client for ban in bans) == ["ip:192.0.2.1", "ip:192.0.2.2"]
    assert "scan" not in delta(before, command_calls(admin))
    assert admin.zcard(f"{PREFIX}bans") == 2
    await asyncio.sleep(1.0)
    # Both bans ended: the index is pruned as it is read.
    async with asyncio.timeout(30):
        while await store.active_bans():
            await asyncio.sleep(0.05)
    assert admin.zcard(f"{PREFIX}bans") == 0


async def test_a_lift_leaves_the_ban_index(store: RedisStore, admin: redis.Redis) -> None:
    check = Check(rule("fixed_window", limit=1), f"fixed_window|{CLIENT}")
    for _ in range(BANS.threshold + 1):
        await store.evaluate([check], client=CLIENT, bans=BANS)
    assert admin.zrange(f"{PREFIX}bans", 0, -1) == [CLIENT.encode()]
    assert await store.lift(CLIENT) is True
    assert admin.zrange(f"{PREFIX}bans", 0, -1) == []
    assert await store.active_bans() == []


# -- command prefixes ----------------------------------------------------------------------


async def test_cached_prefixes_never_mix_rules_of_one_bucket(store: RedisStore) -> None:
    """A call's command is cached by client and shape; two rules over the same bucket are two
    shapes, each decided with its own limit."""
    strict, loose = rule("fixed_window", limit=1), rule("fixed_window", limit=3)
    key = f"fixed_window|{CLIENT}"
    first = await store.evaluate([Check(strict, key)], client=CLIENT, bans=BANS)
    assert (first.allowed, first.decisions[0].limit) == (True, 1)
    refused = await store.evaluate([Check(strict, key)], client=CLIENT, bans=BANS)
    assert not refused.allowed
    second = await store.evaluate([Check(loose, key)], client=CLIENT, bans=BANS)
    assert (second.allowed, second.decisions[0].remaining) == (True, 1)
    shadow = await store.evaluate([Check(strict, key, enforce=False)], client=CLIENT, bans=BANS)
    assert shadow.allowed  # the mode is part of the shape too
    # Another client with the same checks has its own ban keys in its command.
    other = await store.evaluate([Check(strict, key)], client="ip:192.0.2.9", bans=BANS)
    assert not other.allowed
    assert len(store._prefixes) == 4


def _without_token(command: bytes) -> bytes:
    """A command up to its last argument, the call token (unique per call)."""
    return command[: command.rindex(b"$")]


async def test_a_shaped_call_sends_the_command_of_its_checks(store: RedisStore) -> None:
    """Under a shape (a static request plan) the prefix is found by the shape alone: the same
    command as the call without it, per bans (the gate's and none), and the same decisions."""
    checks = [
        Check(rule("gcra", limit=5), f"gcra|{CLIENT}"),
        Check(rule("fixed_window", limit=2), f"fixed_window|{CLIENT}"),
    ]
    shape = object()
    for bans in (BANS, None, BANS):
        shaped = store._evaluate_command(checks, CLIENT, bans, shape)
        plain = store._evaluate_command(checks, CLIENT, bans)
        assert _without_token(shaped) == _without_token(plain)
        assert shaped != plain  # each call has its own token
    verdicts = [
        await store.evaluate(checks, client=CLIENT, bans=BANS, shape=shape) for _ in range(3)
    ]
    assert [v.allowed for v in verdicts] == [True, True, False]
    assert [v.decisions[1].remaining for v in verdicts[:2]] == [1, 0]


async def test_a_shape_never_caches_a_command_carrying_its_own_request(store: RedisStore) -> None:
    """Quota windows and leases make each call's command its own: a shape does not keep it."""
    quota = Check(rule("quota", limit=3), f"quota|{CLIENT}", window=20261202)
    shape = object()
    cached = len(store._prefixes)
    first = await store.evaluate([quota], client=CLIENT, bans=None, shape=shape)
    assert first.allowed
    assert len(store._prefixes) == cached
    later = Check(rule("quota", limit=3), f"quota|{CLIENT}", window=20261203)
    command = store._evaluate_command([later], CLIENT, None, shape)
    assert b"20261203" in command
    assert b"20261202" not in command


# -- pipelining ----------------------------------------------------------------------------


class _RoundTrips:
    """Counts the pipelines a store sends (each one write and one round trip)."""

    def __init__(self, store: RedisStore) -> None:
        self.count = 0
        exchange = store._exchange

        async def counted(connection: Any, commands: list[bytes]) -> list[Any]:
            self.count += 1
            return await exchange(connection, commands)

        store._exchange = counted  # type: ignore[method-assign]


async def test_concurrent_calls_share_round_trips_and_each_gets_its_own_answer(
    connector: RedisConnector,
) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    check = Check(rule("fixed_window", limit=60, period=3600.0), "fixed_window|shared")
    await store.evaluate([Check(rule("gcra"), "gcra|warm-up")])
    round_trips = _RoundTrips(store)
    sent = store.commands_sent
    try:
        verdicts = await asyncio.gather(*(store.evaluate([check]) for _ in range(100)))
    finally:
        await store.close()

    assert store.commands_sent - sent == 100
    assert round_trips.count <= 3
    assert sum(verdict.allowed for verdict in verdicts) == 60
    remaining = sorted(v.decisions[0].remaining for v in verdicts if v.allowed)
    assert remaining == list(range(60))


async def test_a_caller_cancelled_mid_batch_leaves_the_others_their_answers(
    connector: RedisConnector,
) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    check = Check(rule("gcra", limit=1000), "gcra|shared")
    try:
        tasks = [asyncio.create_task(store.evaluate([check])) for _ in range(50)]
        tasks[0].cancel()  # before the batch is sent
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the batch is on its way
        tasks[25].cancel()

        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        assert isinstance(outcomes[0], asyncio.CancelledError)
        assert isinstance(outcomes[25], asyncio.CancelledError)
        answered = [o for i, o in enumerate(outcomes) if i not in (0, 25)]
        assert all(not isinstance(o, BaseException) and o.allowed for o in answered)
        assert (await store.evaluate([check])).allowed
    finally:
        await store.close()


async def _members(admin: redis.Redis, key: str, expected: int) -> list[bytes]:
    """The bucket's lease members once there are ``expected`` of them (background releases
    take a moment), else after a second."""
    for _ in range(100):
        members = [m for m in admin.zrange(f"{PREFIX}{key}", 0, -1) if isinstance(m, bytes)]
        if len(members) == expected:
            return members
        await asyncio.sleep(0.01)
    return members


async def test_cancelled_callers_leases_are_released(
    connector: RedisConnector, admin: redis.Redis
) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    slots = rule("concurrency", limit=100, period=60.0)

    def request(index: int) -> Check:
        return Check(slots, "concurrency|shared", lease=f"r{index}:concurrency")

    try:
        await store.evaluate([Check(rule("gcra"), "gcra|warm-up")])
        tasks = [asyncio.create_task(store.evaluate([request(i)])) for i in range(10)]
        tasks[0].cancel()  # before the batch is sent: its command still goes
        await asyncio.sleep(0)
        await asyncio.sleep(0)  # the batch is on its way
        tasks[5].cancel()

        outcomes = await asyncio.gather(*tasks, return_exceptions=True)

        assert isinstance(outcomes[0], asyncio.CancelledError)
        assert isinstance(outcomes[5], asyncio.CancelledError)
        members = await _members(admin, "concurrency|shared", 8)
        expected = {f"r{i}:concurrency#1".encode() for i in range(10) if i not in (0, 5)}
        assert set(members) == expected
    finally:
        await store.close()


async def test_an_unbatched_caller_cancelled_mid_call_releases_its_lease(
    connector: RedisConnector, admin: redis.Redis
) -> None:
    store = RedisStore(connector, prefix=PREFIX, batch=False)
    slots = rule("concurrency", limit=5, period=60.0)
    try:
        await store.evaluate([Check(rule("gcra"), "gcra|warm-up")])
        held = Check(slots, "concurrency|solo", lease="kept:concurrency")
        assert (await store.evaluate([held])).allowed
        task = asyncio.create_task(
            store.evaluate([Check(slots, "concurrency|solo", lease="gone:concurrency")])
        )
        await asyncio.sleep(0)  # the command is written; the reply is not read yet
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert await _members(admin, "concurrency|solo", 1) == [b"kept:concurrency#1"]
    finally:
        await store.close()


async def test_a_closed_store_refuses_calls(connector: RedisConnector) -> None:
    store = RedisStore(connector, prefix=PREFIX)
    await store.close()
    with pytest.raises(RateLimitStoreError, match="closed"):
        await store.evaluate([Check(rule("gcra"), "gcra|x")])
