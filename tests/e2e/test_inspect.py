"""Inspection across real processes: two ``bastion serve`` instances sharing one Redis in front
of the demo upstream. An attack blocked on one never reaches the upstream; once a client's
blocked requests reach the strike threshold on one instance, the other's gate refuses it too
(the block is the client's penalty record in Redis), and ``bastion bans`` lists and lifts it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import orjson
import pytest

import bastion.inspect.stage  # noqa: F401  (registers the problem codes the assertions look up)
from e2e.processes import Processes, ServerProcess, clean_env
from problem_assertions import assert_problem

pytestmark = [pytest.mark.e2e, pytest.mark.redis]

ATTACK = {"q": "1' union select password from users--"}
THRESHOLD = 5
_BIN = Path(sys.executable).parent


def _bans(*args: str, redis_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env({"BASTION_STORE__REDIS_URL": redis_url})
    return subprocess.run(
        [str(_BIN / "bastion"), "bans", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
async def gateways(
    processes: Processes, clean_redis_url: str
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    demo = processes.demo()
    env = {"BASTION_STORE__REDIS_URL": clean_redis_url}
    first = processes.bastion("--upstream", demo.url, env=env)
    second = processes.bastion("--upstream", demo.url, env=env)
    async with (
        httpx.AsyncClient(base_url=first.url, timeout=10) as a,
        httpx.AsyncClient(base_url=second.url, timeout=10) as b,
    ):
        yield a, b
    _stopped_cleanly(first, second)


def _stopped_cleanly(*gateways: ServerProcess) -> None:
    for gateway in gateways:
        output = gateway.stop()
        assert "Traceback" not in output, output


async def test_blocked_attacks_never_reach_the_upstream_and_strikes_are_shared(
    gateways: tuple[httpx.AsyncClient, httpx.AsyncClient], clean_redis_url: str, tmp_path: Path
) -> None:
    a, b = gateways
    blocked = await a.get("/cache/7", params=ATTACK)
    data = assert_problem(blocked, 403, "request_blocked")
    assert set(data) == {"type", "title", "status", "detail", "code", "request_id"}
    for leaked in ("union", "password", "sqli", "query:q"):
        assert leaked not in blocked.text.lower()

    # The demo counts the requests it served for /cache/7: the attack was not one of them.
    served = await a.get("/cache/7")
    assert served.status_code == 200
    assert served.headers["x-demo-hits"] == "1"

    for _ in range(THRESHOLD - 1):
        assert_problem(await a.get("/cache/7", params=ATTACK), 403, "request_blocked")
    refused = await b.get("/cache/8")
    data = assert_problem(refused, 403, "client_blocked")
    assert 0 < int(refused.headers["retry-after"]) <= 900
    assert data["retry_after"] == int(refused.headers["retry-after"])
    assert_problem(await a.get("/cache/7"), 403, "client_blocked")
    assert (await b.get("/_bastion/health")).status_code == 200

    listed = _bans("list", "--json", redis_url=clean_redis_url, workdir=tmp_path)
    assert listed.returncode == 0, listed.stderr
    [row] = orjson.loads(listed.stdout)
    assert (row["client"], row["source"], row["level"]) == ("strike:127.0.0.1", "inspect", 0)
    lifted = _bans("lift", "strike:127.0.0.1", redis_url=clean_redis_url, workdir=tmp_path)
    assert lifted.returncode == 0, lifted.stderr
    # Lifted in Redis: both gateways serve the client again at once.
    assert (await a.get("/cache/7")).status_code == 200
    assert (await b.get("/cache/8")).status_code == 200
