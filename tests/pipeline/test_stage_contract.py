"""What every stage promises: scopes it does not handle pass straight through, untouched."""

from __future__ import annotations

from typing import Any

import pytest

from bastion.engine import Bastion
from bastion.http.asgi import Message, Receive, Scope, Send
from bastion.pipeline.config import ClientIpConfig, CorsConfig, CsrfConfig
from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.settings import Settings
from bastion.store.config import StoreConfig


def every_stage() -> list[Any]:
    """The stages of a pipeline with every optional stage enabled, outermost first."""
    settings = Settings(
        store=StoreConfig(database_url="sqlite+aiosqlite:///unused.db"),
        client_ip=ClientIpConfig(trusted_proxies=["10.0.0.0/8"]),
        cors=CorsConfig(origins=["https://app.example.com"]),
        csrf=CsrfConfig(enabled=True, secrets=["k" * 32]),
        ratelimit=RateLimitConfig(policies=[PolicyConfig(name="users", key="user", limit=10)]),
    )

    async def terminal(scope: Scope, receive: Receive, send: Send) -> None:
        return None

    stages = []
    node: Any = Bastion(settings).wrap(terminal).pipeline
    while node is not terminal:
        stages.append(node)
        node = node.app
    return stages


STAGES = every_stage()


@pytest.mark.parametrize("stage", STAGES, ids=[type(s).__name__ for s in STAGES])
@pytest.mark.parametrize("scope_type", ["lifespan"])
async def test_unhandled_scopes_pass_through(stage: Any, scope_type: str) -> None:
    seen: list[Scope] = []
    original = stage.app

    async def inner(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)

    async def receive() -> Message:
        raise AssertionError("a stage must not read a scope it does not handle")

    async def send(message: Message) -> None:
        raise AssertionError("a stage must not answer a scope it does not handle")

    stage.app = inner
    try:
        scope: Scope = {"type": scope_type, "asgi": {"version": "3.0"}, "state": {}}
        await stage(scope, receive, send)
    finally:
        stage.app = original
    assert seen == [scope]
    assert scope == {"type": scope_type, "asgi": {"version": "3.0"}, "state": {}}


def test_all_stages_covered() -> None:
    names = {type(stage).__name__ for stage in STAGES}
    assert names == {
        "RequestIdStage",
        "SecurityHeadersStage",
        "ErrorStage",
        "ClientIpStage",
        "ProbeStage",
        "GateStage",
        "SheddingStage",
        "LimitsStage",
        "CorsStage",
        "CsrfStage",
        "AuthStage",
        "RateLimitStage",
        "InspectStage",
        "CompressionStage",
        "OwnRoutes",
    }
