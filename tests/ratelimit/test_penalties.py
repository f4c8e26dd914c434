"""One penalty record per client (DESIGN.md §1, step 5): rate-limit bans and inspection strike
blocks share it, in every store, and the gate answers each with its own refusal.

The table runs every source of a record (a ban, a strike block) on every backend (memory, memory
with the SQL ban ledger, Redis) through every gate path (the rate-limit gate with bans on, the
same gate with bans off but strikes on, the strike gate of a pipeline without rate limiting).
On the ledger and Redis the record is written by another store over the same database or Redis,
as another worker or instance would, so the test also shows it is shared. Then: strikes never
raise the escalation level, and with Redis a request still costs exactly one script call.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from bastion.deps import Deps
from bastion.engine import Bastion
from bastion.http.asgi import ASGIApp
from bastion.inspect.config import InspectConfig, StrikesConfig
from bastion.inspect.stage import StrikeGate
from bastion.inspect.strikes import MemoryStrikes, StrikeStore
from bastion.inspect.strikes_redis import RedisStrikes
from bastion.ratelimit.config import BansConfig, PolicyConfig, RateLimitConfig
from bastion.ratelimit.core import PENALTIES_ONLY, BanRule, Check, Rule
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.limiter import Limiter
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.policies import PolicySet
from bastion.ratelimit.redis_store import RedisStore
from bastion.ratelimit.stage import GateStage
from bastion.ratelimit.wiring import REDIS_KEY_PREFIX
from bastion.settings import Settings
from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.migrate import upgrade
from bastion.store.redis import RedisConnector
from problem_assertions import assert_problem
from ratelimit.clocks import FakeTime, ManualClock, RedisClock
from ratelimit.redis_helpers import RedisServer
from stage_harness import RecordingApp, around, make_deps

CLIENT = "203.0.113.7"
STRIKES = StrikesConfig(threshold=1, window=60.0, duration=300.0)
BAN = BanRule(threshold=1, window=60.0, durations=(120.0, 240.0), reset_after=3600.0)
ONE = Rule("seed", "fixed_window", 1, 60.0, 1)
"""A policy of one request a minute: the second request is refused and (``BAN``) banned."""


@dataclass
class Backend:
    """The store a gate reads and the store another process or instance writes."""

    name: str
    store: MemoryStore | RedisStore
    """The gate's."""
    writer: MemoryStore | RedisStore
    """Another worker's or instance's (the same store for plain memory)."""
    sync: Any = None
    """For the ledger: makes the other process's write visible to the gate's process."""
    ledger: SqlBanLedger | None = None
    """For the ledger: the gate's process's."""
    clock: FakeTime | None = None
    """The stores' time (epoch seconds at ``clock.now``), moved only by the test."""

    def strikes(
        self, store: MemoryStore | RedisStore, config: StrikesConfig = STRIKES
    ) -> StrikeStore:
        if isinstance(store, RedisStore):
            return RedisStrikes(store, config)
        assert isinstance(self.clock, ManualClock)
        return MemoryStrikes(config, store, clock=self.clock)

    async def poll(self) -> None:
        """For the ledger: one poll of the gate's process, its own writes still queued."""
        if self.ledger is not None:
            await self.ledger.refresh()

    async def flush(self) -> None:
        """For the ledger: the gate's process writes what it queued, as its writer soon
        would."""
        if self.ledger is not None:
            await self.ledger.flush()

    async def written(self, expected: list[tuple[int, str]]) -> None:
        """For the ledger: once the queued writes land, the table holds ``expected`` (level,
        source) and a full read of it gives the mirror the same."""
        if self.ledger is None:
            return
        await self.ledger.flush()
        assert [(ban.level, ban.source) for ban in await self.ledger.active()] == expected
        self.ledger._watermark = None
        await self.ledger.refresh()
        penalty = self.ledger.penalty(CLIENT)
        assert [(penalty.level, penalty.source)] == expected

    async def penalize(self, source: str) -> None:
        """Give ``CLIENT`` a record of ``source`` through the other store."""
        if source == "inspect":
            assert await self.strikes(self.writer).strike([CLIENT]) == [CLIENT]
        else:
            check = Check(ONE, f"seed|{CLIENT}")
            assert (await self.writer.evaluate([check], client=CLIENT, bans=BAN)).allowed
            refused = await self.writer.evaluate([check], client=CLIENT, bans=BAN)
            assert (refused.new_ban, refused.ban_level) == (120.0, 1)
        if self.sync is not None:
            await self.sync()


async def _ledger(stack: AsyncExitStack, url: str, clock: ManualClock) -> SqlBanLedger:
    database = Database.from_url(url)
    await database.start()
    stack.push_async_callback(database.close)
    await upgrade(database)
    ledger = SqlBanLedger(database, clock=clock)
    await ledger.refresh()
    return ledger


@pytest.fixture(
    params=["memory", "ledger", pytest.param("redis", marks=pytest.mark.redis)],
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    # Every backend on a clock the test moves: penalties of a fraction of a second end when the
    # test says, not earlier on a slow machine (whose steps could also outlast reset_after). It
    # starts on a whole second: the ledger keeps an end in microseconds, and a frozen clock
    # would otherwise see a hair over 300 s left (Retry-After 301).
    start = float(int(time.time()))
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            clock = ManualClock(start)
            store = MemoryStore(clock=clock)
            yield Backend("memory", store, store, clock=clock)
        elif request.param == "ledger":
            clock = ManualClock(start)
            url = f"sqlite+aiosqlite:///{tmp_path / 'bans.db'}"
            mine, theirs = await _ledger(stack, url, clock), await _ledger(stack, url, clock)

            async def sync() -> None:
                await theirs.flush()
                await mine.refresh()

            yield Backend(
                "ledger",
                MemoryStore(ledger=mine, clock=clock),
                MemoryStore(ledger=theirs, clock=clock),
                sync,
                mine,
                clock,
            )
        else:
            url = request.getfixturevalue("clean_redis_url")
            stores = []
            redis_clock: RedisClock | None = None
            for _ in range(2):
                connector = RedisConnector.from_url(url)
                stack.push_async_callback(connector.close)
                if redis_clock is None:
                    redis_clock = RedisClock(
                        connector.client, "bastion:test-clock", REDIS_KEY_PREFIX
                    )
                    await redis_clock.start()
                store = redis_clock.store(connector, prefix=REDIS_KEY_PREFIX)
                stack.push_async_callback(store.close)
                stores.append(store)
            yield Backend("redis", stores[0], stores[1], clock=redis_clock)


def gate_path(path: str, backend: Backend, app: ASGIApp) -> tuple[ASGIApp, Deps]:
    """The pipeline's gate over the backend's store, in the request-id and error stages."""
    bans = BansConfig(enabled=path == "gate")
    config = RateLimitConfig(bans=bans)
    deps = make_deps(Settings(ratelimit=config))
    store = backend.store

    def stage(inner: ASGIApp, deps: Deps) -> ASGIApp:
        if path == "strike gate":
            inspect = InspectConfig(strikes=STRIKES)
            strikes = backend.strikes(store)
            return StrikeGate(
                inner, config=inspect, deps=deps, strikes=strikes, bucket=lambda ip: ip
            )
        limiter = Limiter(
            store,
            config=config,
            policies=PolicySet(config, prefix=deps.prefix),
            metrics=deps.metrics,
            audit=None,
            store_name=backend.name,
        )
        return GateStage(inner, config=config, deps=deps, limiter=limiter, strikes=True)

    return around(stage, app, deps), deps


# (source of the record, gate path) -> (status, code); the same on every backend. With rate
# limiting off, a ban is nobody's to enforce: only strike blocks are refused.
CASES = [
    ("ratelimit", "gate", 429, "client_banned"),
    ("inspect", "gate", 403, "client_blocked"),
    ("ratelimit", "gate, bans off", 429, "client_banned"),
    ("inspect", "gate, bans off", 403, "client_blocked"),
    ("ratelimit", "strike gate", 200, None),
    ("inspect", "strike gate", 403, "client_blocked"),
]


@pytest.mark.parametrize(
    ("source", "path", "status", "code"),
    CASES,
    ids=[f"{source}-{path.replace(' ', '-').replace(',', '')}" for source, path, *_ in CASES],
)
async def test_the_gate_answers_each_kind_of_record(
    backend: Backend, source: str, path: str, status: int, code: str | None
) -> None:
    await backend.penalize(source)
    app = RecordingApp()
    pipeline, deps = gate_path(path, backend, app)
    transport = httpx.ASGITransport(app=pipeline, client=(CLIENT, 50000))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/items")
        other = httpx.ASGITransport(app=pipeline, client=("198.51.100.1", 50000))
        async with httpx.AsyncClient(transport=other, base_url="http://test") as neighbour:
            assert (await neighbour.get("/items")).status_code == 200

    registry = deps.metrics.registry
    strike_refusals = registry.get_sample_value(
        "bastion_inspect_refused_total", {"reason": "strike"}
    )
    ban_refusals = registry.get_sample_value(
        "bastion_ratelimit_decisions_total", {"policy": "_bans", "result": "limited"}
    )
    if code is None:
        assert response.status_code == status
        assert app.calls == 2
        return
    body = assert_problem(response, status, code)
    expected = 300 if source == "inspect" else 120
    assert expected - 2 <= body["retry_after"] <= expected
    assert response.headers["retry-after"] == str(body["retry_after"])
    assert app.calls == 1  # the neighbour only
    if code == "client_blocked":
        assert (strike_refusals, ban_refusals or 0.0) == (1.0, 0.0)
    else:
        assert (strike_refusals or 0.0, ban_refusals) == (0.0, 1.0)


# -- escalation: only bans raise the level, and every penalty keeps it reset_after ---------
#
# Durations of a fraction of a second, on the backend's clock. On the ledger a poll runs after
# every block, before the writer would, and a ban and the blocks after it are written together
# (the ways a block used to lower the stored level).

ESCALATION = BanRule(threshold=1, window=60.0, durations=(0.5, 1.0, 2.0), reset_after=1.5)
HOURLY = Rule("hourly", "gcra", 1, 3600.0, 1)
"""One request an hour: every request after the first is refused (and, with bans, banned)."""


async def _left(backend: Backend) -> float:
    """Seconds left of ``CLIENT``'s penalty, whatever its source."""
    store = backend.store
    if isinstance(store, RedisStore):
        return (await store.penalty(CLIENT))[0]
    assert backend.clock is not None
    return max(store.penalty(CLIENT).until - backend.clock.now, 0.0)


async def _wait_out(backend: Backend) -> None:
    assert backend.clock is not None
    await backend.clock.advance(await _left(backend) + 0.05)
    assert await _left(backend) == 0.0


async def _ban(backend: Backend) -> int:
    """One more refused request, which bans ``CLIENT``: the ban's level."""
    verdict = await backend.store.evaluate(
        [Check(HOURLY, f"hourly|{CLIENT}")], client=CLIENT, bans=ESCALATION
    )
    assert verdict.new_ban == ESCALATION.durations[verdict.ban_level - 1]
    return verdict.ban_level


async def _strike(backend: Backend, strikes: StrikeStore) -> None:
    assert await strikes.strike([CLIENT]) == [CLIENT]
    await backend.poll()


async def _record(backend: Backend) -> tuple[int, str]:
    """The level and source of ``CLIENT``'s record where the gate reads it (Redis: as
    ``bastion bans list`` shows it)."""
    store = backend.store
    if isinstance(store, RedisStore):
        [record] = await store.active_bans()
        return record.level, record.source
    penalty = store.penalty(CLIENT)
    return penalty.level, penalty.source


async def test_a_strike_never_raises_the_escalation_level(backend: Backend) -> None:
    strikes = backend.strikes(backend.store, StrikesConfig(threshold=1, duration=3.0))
    check = Check(HOURLY, f"hourly|{CLIENT}")
    assert (await backend.store.evaluate([check], client=CLIENT, bans=ESCALATION)).allowed
    assert await _ban(backend) == 1
    await backend.flush()
    await _wait_out(backend)
    assert await _ban(backend) == 2
    # A block outlasting the ban and its reset_after, queued with the ban: its end and source,
    # the ban's level.
    await _strike(backend, strikes)
    assert await _record(backend) == (2, "inspect")
    await _strike(backend, strikes)
    assert await _record(backend) == (2, "inspect")
    await backend.flush()
    await backend.poll()
    assert await _record(backend) == (2, "inspect")
    await _wait_out(backend)
    # Within reset_after of the block's end: the third offence.
    assert await _ban(backend) == 3
    assert await _record(backend) == (3, "ratelimit")
    await backend.written([(3, "ratelimit")])


async def test_a_strike_only_client_starts_at_the_first_offence(backend: Backend) -> None:
    strikes = backend.strikes(backend.store, StrikesConfig(threshold=2, duration=1.0))
    assert await strikes.strike([CLIENT]) == []
    await _strike(backend, strikes)
    assert await _record(backend) == (0, "inspect")
    await backend.flush()
    await _wait_out(backend)
    check = Check(HOURLY, f"hourly|{CLIENT}")
    assert (await backend.store.evaluate([check], client=CLIENT, bans=ESCALATION)).allowed
    assert await _ban(backend) == 1
    await backend.flush()
    # A block longer than the ban keeps level 1: the next ban is the second offence.
    assert await strikes.strike([CLIENT]) == []
    await _strike(backend, strikes)
    assert await _record(backend) == (1, "inspect")
    await _wait_out(backend)
    assert await _ban(backend) == 2
    await backend.written([(2, "ratelimit")])


async def test_in_memory_a_block_keeps_the_level_reset_after_past_its_end() -> None:
    """The memory store drops client records nothing depends on as others come; a record with
    a level depends on it until reset_after past its penalty's end, a block's too."""
    now = [1_800_000_000.0]
    store = MemoryStore(clock=lambda: now[0])
    config = StrikesConfig(threshold=1, duration=10_000.0)
    strikes = MemoryStrikes(config, store, clock=lambda: now[0])
    check = Check(HOURLY, f"hourly|{CLIENT}")
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).allowed
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).ban_level == 1
    store.block(CLIENT, now[0] + 10_000.0)  # long after the ban's end plus reset_after
    now[0] += 10_100.0
    for other in ("198.51.100.1", "198.51.100.2"):  # each refusal sweeps idle records
        other_check = Check(HOURLY, f"hourly|{other}")
        store.evaluate_now([other_check], client=other, bans=PENALTIES_ONLY)
        store.evaluate_now([other_check], client=other, bans=BAN)
    assert await strikes.blocked_for(CLIENT) == 0.0
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).allowed  # a new hour
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).ban_level == 2


@pytest.mark.redis
async def test_redis_records_stay_readable_by_the_previous_release(clean_redis_url: str) -> None:
    """The previous release's script matches a record with ``^(%S+) (%S+)$`` and fails on
    anything else; during a rolling upgrade it must read every record the new one writes."""
    connector = RedisConnector.from_url(clean_redis_url)
    store = RedisStore(connector, prefix=REDIS_KEY_PREFIX)
    admin = redis.Redis.from_url(clean_redis_url)
    banned, both = "198.51.100.8", "198.51.100.9"
    try:
        rule = BanRule(threshold=1, window=60.0, durations=(120.0,), reset_after=3600.0)
        for client in (banned, both):
            check = Check(HOURLY, f"hourly|{client}")
            assert (await store.evaluate([check], client=client, bans=rule)).allowed
            assert (await store.evaluate([check], client=client, bans=rule)).new_ban == 120.0
        strikes = RedisStrikes(store, STRIKES)
        assert await strikes.strike([CLIENT, both]) == [CLIENT, both]
        previous_parse = "return {string.match(redis.call('GET', KEYS[1]), '^(%S+) (%S+)$')}"
        for client, level in ((CLIENT, b"0"), (banned, b"1"), (both, b"1")):
            key = f"{REDIS_KEY_PREFIX}ban:{{{client}}}"
            until, parsed_level = admin.eval(previous_parse, 1, key)
            assert parsed_level == level
            assert int(until) / 1e6 > time.time() + 100
        listed = {(ban.client, ban.level, ban.source) for ban in await store.active_bans()}
        assert listed == {(CLIENT, 0, "inspect"), (banned, 1, "ratelimit"), (both, 1, "inspect")}

        # A ban the previous release writes once the block is over ("until level", no mark)
        # is a ban, though the block's mark is still there.
        until = int((time.time() + 600) * 1e6)
        admin.set(f"{REDIS_KEY_PREFIX}ban:{{{CLIENT}}}", f"{until} 1", px=600_000)
        assert (await store.penalty(CLIENT))[1] == "ratelimit"
        check = Check(HOURLY, f"hourly|{CLIENT}")
        verdict = await store.evaluate([check], client=CLIENT, bans=rule)
        assert (verdict.banned_for > 500, verdict.ban_source) == (True, "ratelimit")
        # A record of the merged format's first draft ("until level inspect") is still read.
        admin.set(f"{REDIS_KEY_PREFIX}ban:{{{banned}}}", f"{until} 1 inspect", px=600_000)
        assert (await store.penalty(banned))[1] == "inspect"
    finally:
        admin.close()
        await store.close()
        await connector.close()


# -- one script call per request with Redis ------------------------------------------------


@pytest.fixture
def private_redis() -> Iterator[RedisServer]:
    """A Redis of this test's own, whose command statistics nothing else touches."""
    server = RedisServer()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def _client_commands(admin: redis.Redis) -> dict[str, int]:
    stats: dict[str, Any] = admin.info("commandstats")
    return {name.removeprefix("cmdstat_"): entry["calls"] for name, entry in stats.items()}


async def test_with_redis_each_request_is_one_script_call_and_strikes_refuse_there(
    private_redis: RedisServer, tmp_path: Path
) -> None:
    store = StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}", redis_url=private_redis.url
    )
    settings = Settings(store=store, inspect=InspectConfig(strikes=StrikesConfig(threshold=2)))
    engine = Bastion(settings)
    app = engine.wrap(RecordingApp())
    await engine.startup()
    admin = redis.Redis.from_url(private_redis.url)
    try:
        assert engine.ratelimit is not None
        gate_store = engine.ratelimit.store
        assert isinstance(gate_store, RedisStore)
        transport = httpx.ASGITransport(app=app, client=(CLIENT, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            await client.get("/warm-up")  # loads the script, opens the connection
            before, sent = _client_commands(admin), gate_store.commands_sent
            for _ in range(10):
                assert (await client.get("/items", params={"page": "2"})).status_code == 200
            after = _client_commands(admin)
            assert gate_store.commands_sent - sent == 10
            # One EVALSHA per request and no PTTL at all: nothing checks strikes apart.
            assert after.get("evalsha", 0) - before.get("evalsha", 0) == 10
            assert after.get("pttl", 0) - before.get("pttl", 0) == 0

            for _ in range(2):
                attack = await client.get("/items", params={"q": "<script>alert(1)</script>"})
                assert_problem(attack, 403, "request_blocked")
            sent = gate_store.commands_sent
            assert_problem(await client.get("/items"), 403, "client_blocked")
            assert gate_store.commands_sent - sent == 1
    finally:
        admin.close()
        await engine.shutdown()


@pytest.mark.parametrize(
    ("on_error", "key", "status"),
    [
        ("local", "ip", 200),
        ("open", "ip", 200),
        ("closed", "ip", 503),
        # A policy keyed by the principal is decided after auth, not at the gate: the gate has
        # no policy of its own to say "closed", and the struck client passes it.
        ("closed", "user", 200),
    ],
)
async def test_with_redis_down_the_gate_follows_on_store_error_for_struck_clients_too(
    private_redis: RedisServer, on_error: str, key: str, status: int
) -> None:
    # A killed Redis refuses at once: the timeouts only need to outlast a slow machine's first
    # call (connecting and loading the script), which 0.3 s did not always.
    connector = RedisConnector.from_url(private_redis.url, timeout=5.0)
    store = RedisStore(connector, prefix=REDIS_KEY_PREFIX, timeout=5.0)
    try:
        assert await RedisStrikes(store, STRIKES).strike([CLIENT]) == [CLIENT]
        config = RateLimitConfig(
            policies=[PolicyConfig(name="global", key=key, limit=100, on_store_error=on_error)]
        )
        deps = make_deps(Settings(ratelimit=config))
        limiter = Limiter(
            store,
            config=config,
            policies=PolicySet(config, prefix=deps.prefix),
            metrics=deps.metrics,
            audit=None,
            store_name="redis",
            local=MemoryStore,
        )
        pipeline = around(
            lambda inner, deps: GateStage(
                inner, config=config, deps=deps, limiter=limiter, strikes=True
            ),
            RecordingApp(),
            deps,
        )
        transport = httpx.ASGITransport(app=pipeline, client=(CLIENT, 50000))
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            assert_problem(await client.get("/items"), 403, "client_blocked")
            private_redis.kill()
            response = await client.get("/items")
        # Strikes add to inspection and fail open; the policy decides the rest.
        if status == 503:
            assert_problem(response, 503, "ratelimit_unavailable")
        assert response.status_code == status
        errors = deps.metrics.registry.get_sample_value(
            "bastion_store_errors_total", {"store": "redis", "op": "ratelimit"}
        )
        assert errors == 1.0
    finally:
        await store.close()
        await connector.close()
