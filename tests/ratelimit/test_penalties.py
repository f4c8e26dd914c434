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
from bastion.ratelimit.core import BanRecord, BanRule, Check, Rule
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

    def strikes(self, store: MemoryStore | RedisStore) -> StrikeStore:
        if isinstance(store, RedisStore):
            return RedisStrikes(store, STRIKES)
        return MemoryStrikes(STRIKES, store)

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


async def _ledger(stack: AsyncExitStack, url: str) -> SqlBanLedger:
    database = Database.from_url(url)
    await database.start()
    stack.push_async_callback(database.close)
    await upgrade(database)
    ledger = SqlBanLedger(database)
    await ledger.refresh()
    return ledger


@pytest.fixture(
    params=["memory", "ledger", pytest.param("redis", marks=pytest.mark.redis)],
)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            store = MemoryStore()
            yield Backend("memory", store, store)
        elif request.param == "ledger":
            url = f"sqlite+aiosqlite:///{tmp_path / 'bans.db'}"
            mine, theirs = await _ledger(stack, url), await _ledger(stack, url)

            async def sync() -> None:
                await theirs.flush()
                await mine.refresh()

            yield Backend("ledger", MemoryStore(ledger=mine), MemoryStore(ledger=theirs), sync)
        else:
            url = request.getfixturevalue("clean_redis_url")
            stores = []
            for _ in range(2):
                connector = RedisConnector.from_url(url)
                stack.push_async_callback(connector.close)
                store = RedisStore(connector, prefix=REDIS_KEY_PREFIX)
                stack.push_async_callback(store.close)
                stores.append(store)
            yield Backend("redis", stores[0], stores[1])


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


async def test_a_strike_never_raises_the_escalation_level(backend: Backend) -> None:
    await backend.penalize("ratelimit")
    await backend.penalize("inspect")  # longer than the ban: its end and source, the ban's level
    if backend.sync is not None:
        await backend.sync()
    [record] = await (backend.store.active_bans() if backend.name != "ledger" else _listed(backend))
    assert (record.client, record.level, record.source) == (CLIENT, 1, "inspect")
    await backend.penalize("inspect")
    [record] = await (backend.store.active_bans() if backend.name != "ledger" else _listed(backend))
    assert (record.level, record.source) == (1, "inspect")


async def _listed(backend: Backend) -> list[BanRecord]:
    """What ``bastion bans list`` reads on the ledger: the table."""
    store = backend.store
    assert isinstance(store, MemoryStore)
    ledger = store._ledger
    assert isinstance(ledger, SqlBanLedger)
    return await ledger.active()


async def test_a_strike_only_client_starts_at_the_first_offence() -> None:
    now = [1_800_000_000.0]
    store = MemoryStore(clock=lambda: now[0])
    strikes = MemoryStrikes(STRIKES, store, clock=lambda: now[0])
    await strikes.strike([CLIENT])
    await strikes.strike([CLIENT])
    assert store.penalty(CLIENT)[1:] == (0, "inspect")
    now[0] += 301.0  # the block is over
    check = Check(ONE, f"seed|{CLIENT}")
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).allowed
    first = store.evaluate_now([check], client=CLIENT, bans=BAN)
    assert (first.new_ban, first.ban_level) == (120.0, 1)
    # A block now keeps level 1; the ban after it is the second offence, not the third.
    await strikes.strike([CLIENT])
    now[0] += 301.0
    now[0] += 60.0  # a new window of the policy
    assert store.evaluate_now([check], client=CLIENT, bans=BAN).allowed
    second = store.evaluate_now([check], client=CLIENT, bans=BAN)
    assert (second.new_ban, second.ban_level) == (240.0, 2)


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


@pytest.mark.parametrize(("on_error", "status"), [("local", 200), ("open", 200), ("closed", 503)])
async def test_with_redis_down_the_gate_follows_on_store_error_for_struck_clients_too(
    private_redis: RedisServer, on_error: str, status: int
) -> None:
    connector = RedisConnector.from_url(private_redis.url, timeout=0.3)
    store = RedisStore(connector, prefix=REDIS_KEY_PREFIX, timeout=0.3)
    try:
        assert await RedisStrikes(store, STRIKES).strike([CLIENT]) == [CLIENT]
        config = RateLimitConfig(
            policies=[PolicyConfig(name="global", key="ip", limit=100, on_store_error=on_error)]
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
