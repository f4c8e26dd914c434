"""Strikes: counting and blocking in memory, through the SQL ban ledger (shared by processes,
listed and lifted by ``bastion bans``) and in Redis (shared by instances at once), always in the
rate limiter's penalty record of the client; the refusals (403 ``client_blocked`` by address at
the gate and by principal in the inspect stage) and their audit events."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import httpx
import orjson
import pytest
import redis
from typer.testing import CliRunner

from bastion.auth.admin import IdentityAdmin
from bastion.cli import bans_cmd
from bastion.inspect.config import InspectConfig, InspectRouteConfig, StrikesConfig
from bastion.inspect.strikes import MemoryStrikes, strike_name
from bastion.inspect.strikes_redis import RedisStrikes
from bastion.observe.metrics import Metrics
from bastion.ratelimit.config import RateLimitConfig
from bastion.ratelimit.core import BanRecord, BanRule, Check, Penalty, Rule
from bastion.ratelimit.ledger import SqlBanLedger
from bastion.ratelimit.memory import MemoryStore
from bastion.ratelimit.redis_store import RedisStore
from bastion.ratelimit.wiring import REDIS_KEY_PREFIX
from bastion.store.config import StoreConfig
from bastion.store.database import Database
from bastion.store.migrate import upgrade
from bastion.store.redis import RedisConnector
from inspection_harness import CLIENT_IP, XSS, protected
from problem_assertions import assert_problem

RULE = StrikesConfig(threshold=3, window=60.0, duration=300.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def in_memory(
    rule: StrikesConfig, clock: Clock, ledger: SqlBanLedger | None = None
) -> tuple[MemoryStrikes, MemoryStore]:
    """Strikes over a memory store (its penalty records, and the ledger's when given)."""
    store = MemoryStore(clock=clock, ledger=ledger)
    return MemoryStrikes(rule, store, clock=clock), store


async def test_threshold_within_the_window_blocks_for_the_duration() -> None:
    clock = Clock()
    strikes, _ = in_memory(RULE, clock)
    assert await strikes.strike(["a", "b"]) == []
    assert await strikes.strike(["a"]) == []
    assert await strikes.blocked_for("a") == 0.0
    assert await strikes.strike(["a", "b"]) == ["a"]
    assert await strikes.blocked_for("a") == 300.0
    assert await strikes.blocked_for("b") == 0.0
    clock.now += 299.0
    assert await strikes.blocked_for("a") == pytest.approx(1.0)
    clock.now += 1.0
    assert await strikes.blocked_for("a") == 0.0


async def test_strikes_older_than_the_window_are_forgotten() -> None:
    clock = Clock()
    strikes, _ = in_memory(RULE, clock)
    await strikes.strike(["a"])
    await strikes.strike(["a"])
    clock.now += 61.0
    assert await strikes.strike(["a"]) == []  # a new window: one strike
    assert await strikes.strike(["a"]) == []
    assert await strikes.strike(["a"]) == ["a"]


async def test_a_block_is_the_clients_penalty_record_listed_and_lifted_by_the_store() -> None:
    clock = Clock()
    strikes, store = in_memory(StrikesConfig(threshold=1, duration=300.0), clock)
    await strikes.strike(["203.0.113.9"])
    assert await store.active_bans() == [BanRecord("203.0.113.9", clock.now + 300.0, 0, "inspect")]
    assert await store.lift("203.0.113.9")
    assert await strikes.blocked_for("203.0.113.9") == 0.0
    assert not await store.lift("203.0.113.9")
    assert strike_name("x") == strike_name("strike:x") == "strike:x"


async def test_a_rate_limit_ban_is_not_a_strike_block() -> None:
    clock = Clock()
    strikes, store = in_memory(RULE, clock)
    rule = Rule("p", "fixed_window", 1, 60.0, 1)
    bans = BanRule(threshold=1, window=60.0, durations=(600.0,), reset_after=60.0)
    check = Check(rule, "p|203.0.113.9")
    store.evaluate_now([check], client="203.0.113.9", bans=bans)
    assert store.evaluate_now([check], client="203.0.113.9", bans=bans).new_ban == 600.0
    # The inspect stage and the strike gate answer for strikes only.
    assert await strikes.blocked_for("203.0.113.9") == 0.0


async def _ledger(database_url: str) -> tuple[Database, SqlBanLedger]:
    database = Database.from_url(database_url)
    await database.start()
    await upgrade(database)
    ledger = SqlBanLedger(database)
    await ledger.start()
    return database, ledger


async def test_a_block_reaches_every_process_through_the_ledger(database_url: str) -> None:
    first_db, first = await _ledger(database_url)
    second_db, second = await _ledger(database_url)
    try:
        here = MemoryStrikes(RULE, MemoryStore(ledger=first))
        there = MemoryStrikes(RULE, MemoryStore(ledger=second))
        for _ in range(RULE.threshold):
            blocked = await here.strike([CLIENT_IP])
        assert blocked == [CLIENT_IP]
        await first.flush()
        await second.refresh()
        assert await there.blocked_for(CLIENT_IP) == pytest.approx(RULE.duration, abs=5)
        # One record per client: the one the rate limiter's gate reads.
        until, level, source = second.penalty(CLIENT_IP)
        assert (level, source) == (0, "inspect")
        assert until == pytest.approx(time.time() + RULE.duration, abs=5)
        (record,) = await second.active()
        assert (record.client, record.source) == (CLIENT_IP, "inspect")
        assert await second.lift(CLIENT_IP)
        await first.refresh()
        assert await here.blocked_for(CLIENT_IP) == 0.0
        assert first.penalty(CLIENT_IP) == Penalty(0.0, 0, "ratelimit")
    finally:
        for ledger, database in ((first, first_db), (second, second_db)):
            await ledger.close()
            await database.close()


def test_bans_cli_lists_and_lifts_strikes(
    tmp_path: Path, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.delenv("BASTION_STORE__REDIS_URL", raising=False)

    async def strike() -> None:
        database, ledger = await _ledger(database_url)
        try:
            strikes = MemoryStrikes(StrikesConfig(threshold=1), MemoryStore(ledger=ledger))
            await strikes.strike([CLIENT_IP])
        finally:
            await ledger.close()
            await database.close()

    asyncio.run(strike())
    config = tmp_path / "bastion.toml"
    config.write_text(f"[store]\ndatabase_url = '{database_url}'\n")
    runner = CliRunner()
    listed = runner.invoke(bans_cmd.app, ["list", "--json", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    (row,) = orjson.loads(listed.stdout)
    assert (row["client"], row["source"], row["level"]) == (f"strike:{CLIENT_IP}", "inspect", 0)
    assert 290 < row["remaining"] <= 900
    lifted = runner.invoke(bans_cmd.app, ["lift", f"strike:{CLIENT_IP}", "--config", str(config)])
    assert lifted.exit_code == 0, lifted.output
    after = runner.invoke(bans_cmd.app, ["list", "--json", "--config", str(config)])
    assert orjson.loads(after.stdout) == []


@pytest.mark.redis
async def test_redis_strikes_are_shared_by_instances(clean_redis_url: str) -> None:
    one = RedisConnector.from_url(clean_redis_url)
    two = RedisConnector.from_url(clean_redis_url)
    first = RedisStore(one, prefix=REDIS_KEY_PREFIX, timeout=1.0)
    second = RedisStore(two, prefix=REDIS_KEY_PREFIX, timeout=1.0)
    try:
        a, b = RedisStrikes(first, RULE), RedisStrikes(second, RULE)
        assert await a.strike([CLIENT_IP, "user:u1"]) == []
        assert await b.strike([CLIENT_IP]) == []
        assert await a.blocked_for(CLIENT_IP) == 0.0
        assert await b.strike([CLIENT_IP, "user:u1"]) == [CLIENT_IP]
        assert await a.blocked_for(CLIENT_IP) == pytest.approx(RULE.duration, abs=1)
        assert await a.blocked_for("user:u1") == 0.0
        count_ttl = await one.client.pttl(REDIS_KEY_PREFIX + "strikes:{user:u1}")
        assert 0 < count_ttl <= RULE.window * 1000
        # The block is the client's penalty record: the rate-limit store lists and lifts it.
        (record,) = await second.active_bans()
        assert (record.client, record.source, record.level) == (CLIENT_IP, "inspect", 0)
        assert record.until == pytest.approx(time.time() + RULE.duration, abs=5)
        assert await first.lift(CLIENT_IP)
        assert not await first.lift(CLIENT_IP)
        assert await b.blocked_for(CLIENT_IP) == 0.0
        assert await second.active_bans() == []
    finally:
        for store, connector in ((first, one), (second, two)):
            await store.close()
            await connector.close()


async def test_an_unreachable_redis_lets_requests_through() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    connector = RedisConnector.from_url(f"redis://127.0.0.1:{port}/0", timeout=0.2)
    store = RedisStore(connector, timeout=0.2)
    metrics = Metrics()
    try:
        strikes = RedisStrikes(store, RULE, metrics=metrics)
        assert await strikes.strike([CLIENT_IP]) == []
        assert await strikes.blocked_for(CLIENT_IP) == 0.0
    finally:
        await store.close()
        await connector.close()
    text = metrics.exposition().decode()
    assert 'bastion_store_errors_total{op="strike",store="redis"} 1.0' in text
    assert 'bastion_store_errors_total{op="strike_check",store="redis"} 1.0' in text


async def _attack(
    client: httpx.AsyncClient, times: int, headers: dict[str, str] | None = None
) -> None:
    for _ in range(times):
        response = await client.get("/search", params={"q": XSS}, headers=headers)
        assert_problem(response, 403, "request_blocked")


async def test_a_struck_address_is_refused_until_the_block_ends(tmp_path: Path) -> None:
    async with protected(tmp_path) as p:
        async with p.client() as client:
            await _attack(client, 5)
            refused = await client.get("/clean")
            data = assert_problem(refused, 403, "client_blocked")
            assert data["retry_after"] == int(refused.headers["retry-after"])
            assert 890 <= data["retry_after"] <= 900
        async with p.client("198.51.100.1") as other:
            assert (await other.get("/clean")).status_code == 200
        assert p.recorder.calls[0].scope["path"] == "/clean"
        assert len(p.recorder.calls) == 1
        (event,) = p.events("inspect.strike.blocked")
        assert (event.target, event.client_ip) == (f"strike:{CLIENT_IP}", CLIENT_IP)
        assert p.metric('bastion_inspect_refused_total{reason="strike"}') == 1.0


async def test_ipv6_clients_are_aggregated_like_the_gate(tmp_path: Path) -> None:
    async with protected(tmp_path) as p:
        async with p.client("2001:db8:1:2::1") as client:
            await _attack(client, 5)
        async with p.client("2001:db8:1:ff::9") as neighbour:  # same /56
            assert_problem(await neighbour.get("/clean"), 403, "client_blocked")
        assert p.events("inspect.strike.blocked")[0].target == "strike:2001:db8:1::/56"


@pytest.mark.parametrize("where", ["ledger", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_struck_principal_is_refused_from_any_address(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    strikes = InspectConfig(strikes=StrikesConfig(threshold=2))
    store = StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}",
        redis_url=request.getfixturevalue("clean_redis_url") if where == "redis" else "",
    )
    async with protected(tmp_path, inspect=strikes, store=store) as p:
        assert p.engine.identity is not None
        service = p.engine.identity.service
        user = await IdentityAdmin(service).create_user("carol", "correct horse battery staple")
        async with p.client("192.0.2.10") as first, p.client("192.0.2.20") as second:
            login = await second.post(
                "/_bastion/auth/login",
                json={"username": "carol", "password": "correct horse battery staple"},
            )
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
            await _attack(first, 2, headers=bearer)
            # The inspect stage refuses the principal (the gate only knows the address).
            assert_problem(await second.get("/clean", headers=bearer), 403, "client_blocked")
            assert (await second.get("/clean")).status_code == 200
            assert_problem(await first.get("/clean"), 403, "client_blocked")  # at the gate
        targets = sorted(event.target or "" for event in p.events("inspect.strike.blocked"))
        assert targets == ["strike:192.0.2.10", f"strike:user:{user}"]
        assert p.metric('bastion_inspect_refused_total{reason="strike"}') == 2.0


@pytest.mark.parametrize("where", ["ledger", pytest.param("redis", marks=pytest.mark.redis)])
async def test_a_struck_principal_is_refused_where_inspection_does_not_look(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    inspect = InspectConfig(
        strikes=StrikesConfig(threshold=2),
        allow_cidrs=["192.0.2.30/32"],
        routes=[InspectRouteConfig(path="/open/**", mode="off")],
    )
    store = StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}",
        redis_url=request.getfixturevalue("clean_redis_url") if where == "redis" else "",
    )
    async with protected(tmp_path, inspect=inspect, store=store) as p:
        assert p.engine.identity is not None
        service = p.engine.identity.service
        await IdentityAdmin(service).create_user("dave", "correct horse battery staple")
        async with p.client("192.0.2.10") as attacker, p.client("192.0.2.30") as listed:
            login = await listed.post(
                "/_bastion/auth/login",
                json={"username": "dave", "password": "correct horse battery staple"},
            )
            bearer = {"Authorization": f"Bearer {login.json()['access_token']}"}
            await _attack(attacker, 2, headers=bearer)
            calls = len(p.recorder.calls)
            # An allow-listed address is not inspected, a route with mode "off" neither: the
            # principal is refused all the same.
            assert_problem(await listed.get("/clean", headers=bearer), 403, "client_blocked")
            assert_problem(await listed.get("/open/x", headers=bearer), 403, "client_blocked")
            assert len(p.recorder.calls) == calls
            # Anonymous, the same address and route pass (the address itself is not struck).
            assert (await listed.get("/open/x")).status_code == 200
            assert (await listed.get("/clean")).status_code == 200
        assert p.metric('bastion_inspect_refused_total{reason="strike"}') == 2.0


@pytest.mark.parametrize("where", ["ledger", pytest.param("redis", marks=pytest.mark.redis)])
async def test_without_rate_limiting_the_strike_gate_refuses_alone(
    tmp_path: Path, where: str, request: pytest.FixtureRequest
) -> None:
    store = StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}",
        redis_url=request.getfixturevalue("clean_redis_url") if where == "redis" else "",
    )
    off = RateLimitConfig(enabled=False)
    async with protected(tmp_path, store=store, ratelimit=off) as p:
        assert p.engine.ratelimit is None
        async with p.client() as client:
            await _attack(client, 5)
            refused = await client.get("/clean")
            data = assert_problem(refused, 403, "client_blocked")
            assert 890 <= data["retry_after"] <= 900
        async with p.client("198.51.100.1") as other:
            assert (await other.get("/clean")).status_code == 200
        assert p.metric('bastion_inspect_refused_total{reason="strike"}') == 1.0
        assert p.recorder.calls[0].scope["path"] == "/clean"
        assert len(p.recorder.calls) == 1  # the neighbour's: the blocked client never got in
    # Where `bastion bans` looks: the same record a rate-limited gateway would write.
    if where == "redis":
        connector = RedisConnector.from_url(request.getfixturevalue("clean_redis_url"))
        listing = RedisStore(connector, prefix=REDIS_KEY_PREFIX)
        try:
            (record,) = await listing.active_bans()
        finally:
            await listing.close()
            await connector.close()
    else:
        database, ledger = await _ledger(store.database_url)
        try:
            (record,) = await ledger.active()
        finally:
            await ledger.close()
            await database.close()
    assert (record.client, record.source) == (CLIENT_IP, "inspect")


async def test_without_strikes_nobody_is_refused_for_past_attacks(tmp_path: Path) -> None:
    config = InspectConfig(strikes=StrikesConfig(enabled=False))
    async with protected(tmp_path, inspect=config) as p, p.client() as client:
        await _attack(client, 8)
        assert (await client.get("/clean")).status_code == 200


@pytest.mark.redis
async def test_engines_sharing_redis_share_blocks(tmp_path: Path, clean_redis_url: str) -> None:
    def store(name: str) -> StoreConfig:
        url = f"sqlite+aiosqlite:///{tmp_path / name}"
        return StoreConfig(database_url=url, redis_url=clean_redis_url)

    async with (
        protected(tmp_path, store=store("a.db")) as a,
        protected(tmp_path, store=store("b.db")) as b,
        a.client() as on_a,
        b.client() as on_b,
    ):
        await _attack(on_a, 5)
        assert_problem(await on_b.get("/clean"), 403, "client_blocked")
        assert b.recorder.calls == []
    direct = redis.Redis.from_url(clean_redis_url)
    try:
        record = direct.get(REDIS_KEY_PREFIX + "ban:{" + CLIENT_IP + "}")
        mark = direct.get(REDIS_KEY_PREFIX + "block:{" + CLIENT_IP + "}")
        index = direct.zrange(REDIS_KEY_PREFIX + "bans", 0, -1)
        leftovers = direct.keys("bastion:rl:strikes:*") + direct.keys("bastion:strike:*")
    finally:
        direct.close()
    # The rate limiter's record of the client ("until level", as every release reads it) and
    # its block mark (the same until), indexed for `bastion bans`; the count is gone.
    assert record is not None
    until, level = record.split()
    assert (level, mark) == (b"0", until)
    assert index == [CLIENT_IP.encode()]
    assert leftovers == []


@pytest.mark.redis
def test_bans_cli_lists_and_lifts_redis_strikes_beside_bans(
    tmp_path: Path, clean_redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.delenv("BASTION_STORE__REDIS_URL", raising=False)
    banned = "198.51.100.7"

    async def penalize() -> None:
        connector = RedisConnector.from_url(clean_redis_url)
        store = RedisStore(connector, prefix=REDIS_KEY_PREFIX)
        try:
            await RedisStrikes(store, StrikesConfig(threshold=1)).strike([CLIENT_IP])
            # An hour-long window on Redis's real clock: both calls fall in it.
            check = Check(Rule("t", "fixed_window", 1, 3600.0, 1), f"t|{banned}")
            bans = BanRule(threshold=1, window=60.0, durations=(120.0,), reset_after=3600.0)
            await store.evaluate([check], client=banned, bans=bans)
            assert (await store.evaluate([check], client=banned, bans=bans)).new_ban == 120.0
        finally:
            await store.close()
            await connector.close()

    asyncio.run(penalize())
    config = tmp_path / "bastion.toml"
    # The database is never opened (audit off, else a lift is committed to its chain): the
    # records are in Redis.
    config.write_text(
        f"[store]\ndatabase_url = 'sqlite+aiosqlite:///{tmp_path}'\n"
        f"redis_url = '{clean_redis_url}'\n[audit]\nenabled = false\n"
    )
    runner = CliRunner()
    listed = runner.invoke(bans_cmd.app, ["list", "--json", "--config", str(config)])
    assert listed.exit_code == 0, listed.output
    rows = orjson.loads(listed.stdout)
    assert [(row["client"], row["source"], row["level"]) for row in rows] == [
        (f"strike:{CLIENT_IP}", "inspect", 0),
        (banned, "ratelimit", 1),
    ]
    for key in (f"strike:{CLIENT_IP}", banned):
        lifted = runner.invoke(bans_cmd.app, ["lift", key, "--config", str(config)])
        assert lifted.exit_code == 0, lifted.output
        again = runner.invoke(bans_cmd.app, ["lift", key, "--config", str(config)])
        assert again.exit_code == 2
    after = runner.invoke(bans_cmd.app, ["list", "--json", "--config", str(config)])
    assert orjson.loads(after.stdout) == []
