"""Crash safety of the audit log with a real ``bastion serve``: the process is killed with
SIGKILL while concurrent clients make it emit events (failed logins, denied access, blocked
attacks). Every event whose request got its response is in ``audit_events`` afterwards, and
``bastion audit verify`` finds the chain intact: an event is committed before the response of
its request completes, and a kill never leaves a half-written chain.

Then the same database through the other surfaces: ``bastion audit export`` and the admin API
of a restarted gateway see the same events.
"""

from __future__ import annotations

import asyncio
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson
import pytest

import bastion.inspect.stage  # noqa: F401  (registers the problem codes the assertions look up)
from auth.http_harness import bearer
from auth.service_harness import PASSWORD, auth_config, make_user, running_service
from e2e.processes import Processes, clean_env

pytestmark = [pytest.mark.e2e]

_BIN = Path(sys.executable).parent
ATTACK = {"q": "1' union select password from users--"}
VIEWER = "viewer@example.com"
ADMIN = "root@example.com"
CLIENTS = 12
KILL_AFTER = 150
"""Responses with events seen before the kill: enough that the writer is mid-traffic."""

# Fast hashing (the flows are under test, not the hash); no login throttle, no strikes and the
# global rate limit in shadow mode, so one client address can keep failing for the whole run.
CONFIG = """
[auth.passwords]
time_cost = 1
memory_cost_kib = 8192

[auth.throttle]
enabled = false

[[auth.rules]]
path = "/admin/**"
require = "admin:*"

[inspect.strikes]
enabled = false

[ratelimit.bans]
enabled = false

[[ratelimit.policies]]
name = "global"
key = "ip"
algorithm = "gcra"
limit = 1200
period = "1m"
burst = 200
mode = "shadow"
"""

# What each request is, and the problem code its response carries when its event was emitted.
EXPECTED = {
    "login": "invalid_credentials",
    "denied": "permission_denied",
    "attack": "request_blocked",
}


@dataclass
class Traffic:
    """What the clients saw: request id → kind, for every response that carries an event."""

    answered: dict[str, str] = field(default_factory=dict)
    unexpected: list[str] = field(default_factory=list)
    overloaded: int = 0
    errors: int = 0


async def _client(
    base_url: str, token: str, index: int, traffic: Traffic, stop: asyncio.Event
) -> None:
    kinds = list(EXPECTED)
    number = 0
    async with httpx.AsyncClient(base_url=base_url, timeout=10) as client:
        while not stop.is_set():
            number += 1
            kind = kinds[(index + number) % len(kinds)]
            request_id = f"crash-{index}-{number}"
            headers = {"X-Request-ID": request_id}
            try:
                if kind == "login":
                    response = await client.post(
                        "/_bastion/auth/login",
                        json={"username": f"nobody-{index}@example.com", "password": "wrong"},
                        headers=headers,
                    )
                elif kind == "denied":
                    response = await client.get(
                        "/admin/users", headers={**headers, **bearer(token)}
                    )
                else:
                    response = await client.get("/items", params=ATTACK, headers=headers)
            except httpx.HTTPError:
                # The gateway is gone (or going): this request got no response.
                traffic.errors += 1
                return
            code = response.json().get("code") if response.status_code >= 400 else None
            if code == EXPECTED[kind] and response.headers.get("x-request-id") == request_id:
                traffic.answered[request_id] = kind
            elif code == "overloaded":
                # A machine too busy for the commit within commit_timeout: the request failed,
                # so nothing is promised about its event.
                traffic.overloaded += 1
            else:
                traffic.unexpected.append(f"{kind}: {response.status_code} {response.text[:200]}")


def _cli(*args: str, database_url: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    env = clean_env({"BASTION_STORE__DATABASE_URL": database_url})
    return subprocess.run(
        [str(_BIN / "bastion"), "audit", *args],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


async def test_sigkill_mid_traffic_loses_no_answered_event(
    processes: Processes, database_url: str, tmp_path: Path
) -> None:
    async with running_service(database_url, config=auth_config()) as service:
        await make_user(service, VIEWER, roles=("viewer",))
        await make_user(service, ADMIN, roles=("admin",))
    demo = processes.demo()
    env = {"BASTION_STORE__DATABASE_URL": database_url}
    gateway = processes.bastion("--upstream", demo.url, config=CONFIG, env=env)
    async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
        login = await client.post(
            "/_bastion/auth/login", json={"username": VIEWER, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        token = login.json()["access_token"]

    traffic = Traffic()
    stop = asyncio.Event()
    clients = [
        asyncio.create_task(_client(gateway.url, token, index, traffic, stop))
        for index in range(CLIENTS)
    ]
    deadline = time.monotonic() + 60
    while len(traffic.answered) < KILL_AFTER and time.monotonic() < deadline:
        if all(task.done() for task in clients):
            break
        await asyncio.sleep(0.01)
    gateway.popen.kill()
    gateway.popen.wait(10)
    stop.set()
    await asyncio.gather(*clients)
    assert not traffic.unexpected, traffic.unexpected[:5]
    assert len(traffic.answered) >= KILL_AFTER, gateway.output()[-3000:]
    assert traffic.errors > 0, "the kill landed after the traffic, not in the middle of it"

    verify = _cli("verify", database_url=database_url, workdir=tmp_path)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert verify.stdout.startswith("audit chain intact:")

    export = _cli("export", database_url=database_url, workdir=tmp_path)
    assert export.returncode == 0, export.stderr
    stored: dict[str, set[str]] = {}
    for line in export.stdout.splitlines():
        event = orjson.loads(line)
        stored.setdefault(event["request_id"], set()).add(event["kind"])
    kinds = {"login": "auth.login.failed", "denied": "access.denied", "attack": "inspect.blocked"}
    missing = [
        rid for rid, kind in traffic.answered.items() if kinds[kind] not in stored.get(rid, ())
    ]
    assert not missing, f"{len(missing)} answered events lost, e.g. {missing[:5]}"

    # A restarted gateway appends after the crash, and its admin API sees the same log.
    restarted = processes.bastion("--upstream", demo.url, config=CONFIG, env=env)
    async with httpx.AsyncClient(base_url=restarted.url, timeout=10) as client:
        login = await client.post(
            "/_bastion/auth/login", json={"username": ADMIN, "password": PASSWORD}
        )
        assert login.status_code == 200, login.text
        admin = bearer(login.json()["access_token"])
        probe = await client.get("/items", params=ATTACK, headers={"X-Request-ID": "after-crash"})
        assert probe.status_code == 403
        page = await client.get(
            "/_bastion/admin/audit", params={"kind": "inspect.*", "limit": 1}, headers=admin
        )
        assert page.status_code == 200, page.text
        assert page.json()["events"][0]["request_id"] == "after-crash"
    output = restarted.stop()
    assert "Traceback" not in output, output
    again = _cli("verify", database_url=database_url, workdir=tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr


async def test_a_served_gateway_copies_events_to_a_file_and_syslog(
    processes: Processes, tmp_path: Path
) -> None:
    path = tmp_path / "copies" / "audit.jsonl"
    path.parent.mkdir()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as collector:
        collector.bind(("127.0.0.1", 0))
        collector.settimeout(10)
        port = collector.getsockname()[1]
        config = (
            CONFIG
            + f'\n[audit.file]\npath = "{path}"\n'
            + f'\n[audit.syslog]\naddress = "udp://127.0.0.1:{port}"\n'
        )
        demo = processes.demo()
        gateway = processes.bastion("--upstream", demo.url, config=config)
        async with httpx.AsyncClient(base_url=gateway.url, timeout=10) as client:
            response = await client.get(
                "/items", params=ATTACK, headers={"X-Request-ID": "copied-1"}
            )
        assert response.status_code == 403
        message = collector.recv(65536)
        output = gateway.stop()
    assert "Traceback" not in output, output
    assert b" bastion " in message
    assert b'"request_id":"copied-1"' in message
    copied = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert [(e["kind"], e["request_id"]) for e in copied] == [("inspect.blocked", "copied-1")]
