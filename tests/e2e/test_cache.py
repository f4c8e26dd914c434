"""The response cache across real processes: ``bastion serve`` in front of the demo upstream,
whose ``/cache/{n}`` counts the requests it served (``X-Demo-Hits``). A cached response is
answered without the upstream, compressed and given security headers per request; a second
gateway sharing Redis answers from the first one's entry; ``bastion cache purge`` empties both."""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import AsyncIterator

import httpx
import pytest

from e2e.processes import _BIN, Processes, ServerProcess, clean_env

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

SITE = {"host": "api.example"}


@pytest.fixture
async def gateways(
    processes: Processes, clean_redis_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    demo = processes.demo()
    env = {
        "BASTION_STORE__REDIS_URL": clean_redis_url,
        "BASTION_CACHE__HTTP__ENABLED": "true",
        "BASTION_CACHE__HTTP__X_CACHE_HEADER": "true",
    }
    first = processes.bastion("--upstream", demo.url, env=env)
    second = processes.bastion("--upstream", demo.url, env=env)
    async with (
        # One site name, as behind a load balancer: the key includes the Host.
        httpx.AsyncClient(base_url=first.url, timeout=10, headers=SITE) as a,
        httpx.AsyncClient(base_url=second.url, timeout=10, headers=SITE) as b,
    ):
        yield a, b
    _stopped_cleanly(first, second)


def _stopped_cleanly(*gateways: ServerProcess) -> None:
    for gateway in gateways:
        output = gateway.stop()
        assert "Traceback" not in output, output


async def test_the_gateway_serves_from_the_cache(
    gateways: tuple[httpx.AsyncClient, httpx.AsyncClient], clean_redis_url: str
) -> None:
    a, b = gateways
    first = await a.get("/cache/3", headers={"accept-encoding": "identity"})
    assert (first.status_code, first.headers["x-cache"]) == (200, "MISS")
    assert first.headers["x-demo-hits"] == "1"

    hit = await a.get("/cache/3", headers={"accept-encoding": "identity"})
    assert hit.headers["x-cache"] == "HIT"
    assert hit.headers["x-demo-hits"] == "1"  # the stored response: the demo was not asked
    assert int(hit.headers["age"]) >= 0
    assert hit.headers["x-content-type-options"] == "nosniff"
    assert hit.headers["x-request-id"] != first.headers["x-request-id"]
    assert hit.json() == first.json()

    revalidate = await a.get("/cache/3", headers={"if-none-match": first.headers["etag"]})
    assert revalidate.status_code == 304

    shared = await b.get("/cache/3")
    assert (shared.headers["x-cache"], shared.headers["x-demo-hits"]) == ("HIT", "1")

    head = await b.head("/cache/3")
    assert (head.status_code, head.content, head.headers["x-cache"]) == (200, b"", "HIT")

    purge = await asyncio.to_thread(
        subprocess.run,
        [str(_BIN / "bastion"), "cache", "purge", "--url", "/cache/3"],
        env=clean_env({"BASTION_STORE__REDIS_URL": clean_redis_url}),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert purge.returncode == 0, purge.stderr
    # The purge reaches the gateway's L1 by a Redis message: awaited for up to 30 s.
    deadline = time.monotonic() + 30
    while (again := await b.get("/cache/3")).headers["x-cache"] != "MISS":
        assert time.monotonic() < deadline, "the purge did not reach the gateway"
        await asyncio.sleep(0.05)
    assert again.headers["x-demo-hits"] == "2"


async def test_the_key_holds_what_the_upstream_answers_by(
    processes: Processes, clean_redis_url: str
) -> None:
    """Behind a trusted proxy the scheme and public host it states are keyed; a method override
    keeps a request away from the cache."""
    demo = processes.demo()
    env = {
        "BASTION_STORE__REDIS_URL": clean_redis_url,
        "BASTION_CACHE__HTTP__ENABLED": "true",
        "BASTION_CACHE__HTTP__X_CACHE_HEADER": "true",
        "BASTION_CLIENT_IP__TRUSTED_PROXIES": '["127.0.0.1/32"]',
    }
    gateway = processes.bastion("--upstream", demo.url, env=env)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10, headers=SITE) as client:

        async def fetch(path: str, **headers: str) -> tuple[str, str]:
            response = await client.get(path, headers=headers)
            assert response.status_code == 200
            return response.headers["x-cache"], response.headers["x-demo-hits"]

        # What the trusted proxy (the test client's loopback address) states for its client.
        https = {"x-forwarded-for": "203.0.113.5", "x-forwarded-proto": "https"}
        other_site = {"x-forwarded-for": "203.0.113.5", "x-forwarded-host": "other.example"}
        assert await fetch("/cache/7") == ("MISS", "1")
        assert await fetch("/cache/7", **https) == ("MISS", "2")
        assert await fetch("/cache/7", **other_site) == ("MISS", "3")
        assert await fetch("/cache/7") == ("HIT", "1")
        assert await fetch("/cache/7", **https) == ("HIT", "2")

        assert await fetch("/cache/8", **{"x-http-method-override": "DELETE"}) == ("MISS", "1")
        assert await fetch("/cache/8") == ("MISS", "2")
        assert await fetch("/cache/8", **{"x-http-method-override": "DELETE"}) == ("MISS", "3")
        assert await fetch("/cache/8") == ("HIT", "2")
    _stopped_cleanly(gateway)
