"""Two gateways sharing the Redis tier: one stores, the other answers from it; an unsafe request
on one invalidates the other's in-process copy; ``bastion cache purge`` reaches both."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
from redis.asyncio import Redis
from typer.testing import CliRunner

from bastion.cache.config import CacheConfig
from bastion.cache.http.config import HttpCacheConfig
from bastion.cache.http.wiring import NAMESPACE, http_cache_stage
from bastion.cache.tiered import Cache
from bastion.cli.app import app as cli
from bastion.observe.metrics import Metrics
from bastion.settings import Settings
from stage_harness import around, make_deps

from .conftest import Client, Origin, PrincipalFromHeader

pytestmark = pytest.mark.redis

runner = CliRunner()
MAX_AGE = [(b"cache-control", b"max-age=600"), (b"cache-tag", b"catalog")]


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.delenv("BASTION_STORE__REDIS_URL", raising=False)


Gateways = Callable[[], Client]


@pytest.fixture
async def gateway(clean_redis_url: str) -> AsyncIterator[Gateways]:
    caches: list[Cache] = []

    def build() -> Client:
        # Patient with the test Redis: a stalled test process is no Redis outage.
        redis = Redis.from_url(clean_redis_url, socket_timeout=15, socket_connect_timeout=15)
        cache = Cache(CacheConfig(timeout=15), redis=redis, metrics=Metrics(), owns_redis=True)
        caches.append(cache)
        settings = Settings(
            cache=CacheConfig(http=HttpCacheConfig(enabled=True, x_cache_header=True))
        )
        deps = make_deps(settings)
        origin = Origin()
        origin.answer(headers=MAX_AGE)
        store = cache.namespace(NAMESPACE)
        stage = around(
            lambda a, d: PrincipalFromHeader(http_cache_stage(a, d, store)), origin, deps
        )
        return Client(stage, origin, cache, deps)

    yield build
    for cache in caches:
        await cache.close()


async def eventually_miss(client: Client, path: str) -> bool:
    """Whether ``path`` becomes a miss once the invalidation message has arrived (awaited for
    up to 30 s: a slow machine may deliver it late)."""
    async with asyncio.timeout(30):
        while client.cache.l1 is not None and len(client.cache.l1):
            await asyncio.sleep(0.01)
    return (await client.get(path)).x_cache == "MISS"


async def test_one_gateway_stores_the_other_answers(gateway: Gateways) -> None:
    first, second = gateway(), gateway()
    await first.cache.start()
    await second.cache.start()
    await first.get("/items")
    hit = await second.get("/items")
    assert (hit.x_cache, hit.body) == ("HIT", b"body")
    assert second.origin.calls == 0


async def test_an_unsafe_request_invalidates_every_gateway(gateway: Gateways) -> None:
    first, second = gateway(), gateway()
    await first.cache.start()
    await second.cache.start()
    await first.get("/items")
    assert (await second.get("/items")).x_cache == "HIT"
    second.origin.answer(201)
    await second.request("POST", "/items")
    assert await eventually_miss(first, "/items")


def invoke(*args: str) -> tuple[int, str]:
    result = runner.invoke(cli, ["cache", "purge", *args])
    return result.exit_code, result.output + (result.stderr if result.stderr_bytes else "")


@pytest.mark.parametrize(
    ("args", "path"),
    [
        (["--url", "http://api.test/items?page=2"], "/items"),
        (["--url", "/items"], "/items"),
        (["--url", "http://api.test//items"], "/items"),  # any spelling of the path
        (["--prefix", "/ite"], "/items"),
        (["--tag", "catalog"], "/items"),
    ],
)
async def test_purge_reaches_the_running_gateways(
    gateway: Gateways,
    clean_redis_url: str,
    monkeypatch: pytest.MonkeyPatch,
    args: list[str],
    path: str,
) -> None:
    running = gateway()
    untagged = running.origin.reply(headers=[(b"cache-control", b"max-age=600")])
    tagged = running.origin.reply(headers=MAX_AGE)
    running.origin.script = lambda scope: tagged if scope["path"] == path else untagged
    await running.cache.start()
    await running.get(path, query=b"page=2")
    await running.get("/other")
    monkeypatch.setenv("BASTION_STORE__REDIS_URL", clean_redis_url)
    code, output = await asyncio.to_thread(invoke, *args)
    assert code == 0, output
    assert "purged" in output
    async with asyncio.timeout(30):  # the purge message, which a slow machine may deliver late
        while len(running.cache.l1 or ()) > 1:
            await asyncio.sleep(0.01)
    assert (await running.get(path, query=b"page=2")).x_cache == "MISS"
    assert (await running.get("/other")).x_cache == "HIT"


@pytest.mark.parametrize(
    "args",
    [[], ["--url", "/a", "--tag", "t"], ["--prefix", "items"], ["--url", "relative/path"]],
)
def test_purge_usage_errors_exit_2(
    clean_redis_url: str, monkeypatch: pytest.MonkeyPatch, args: list[str]
) -> None:
    monkeypatch.setenv("BASTION_STORE__REDIS_URL", clean_redis_url)
    code, output = invoke(*args)
    assert code == 2
    assert "Traceback" not in output


def test_purge_without_redis_exits_2() -> None:
    code, output = invoke("--tag", "catalog")
    assert code == 2
    assert "store.redis_url" in output


def test_purge_with_redis_down_exits_1(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    monkeypatch.setenv("BASTION_STORE__REDIS_URL", f"redis://127.0.0.1:{port}/0")
    code, output = invoke("--tag", "catalog")
    assert code == 1
    assert "redis" in output
    assert "Traceback" not in output
