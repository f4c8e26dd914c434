"""``rate_limit("policy")`` for FastAPI and ``limited(endpoint, "policy")`` for Starlette."""

from __future__ import annotations

from pathlib import Path

import http_sfv
import pytest
from fastapi import Depends, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion import Bastion, Settings, rate_limit
from bastion.ratelimit.config import BansConfig, MatchConfig, PolicyConfig, RateLimitConfig
from bastion.ratelimit.dependencies import limited
from bastion.store.config import StoreConfig
from problem_assertions import assert_problem

# A route name no [[routes]] entry has: the stages never select the policy by itself.
MANUAL = MatchConfig(routes=["manual"])


def settings(tmp_path: Path, *, enabled: bool = True) -> Settings:
    return Settings(
        store=StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"),
        ratelimit=RateLimitConfig(
            enabled=enabled,
            bans=BansConfig(enabled=False),
            # Hour-long windows on the real clock: a test's requests all fall in one, where a
            # slow run could cross from one minute's window into the next.
            policies=[
                PolicyConfig(
                    name="exports", algorithm="fixed_window", limit=1, period=3600, match=MANUAL
                ),
                PolicyConfig(
                    name="twice",
                    algorithm="fixed_window",
                    limit=2,
                    period=3600,
                    match=MatchConfig(paths=["/twice"]),
                ),
            ],
        ),
    )


def policy_names(response: object) -> list[str]:
    parsed = http_sfv.List()
    parsed.parse(response.headers["ratelimit-policy"].encode())  # type: ignore[attr-defined]
    return [item.value for item in parsed]  # type: ignore[union-attr]


def fastapi_app() -> FastAPI:
    api = FastAPI()

    @api.get("/export", dependencies=[Depends(rate_limit("exports"))])
    async def export() -> dict[str, str]:
        return {"status": "ready"}

    @api.get("/export-raw", dependencies=[Depends(rate_limit("exports"))])
    async def export_raw() -> Response:
        return PlainTextResponse("raw")

    @api.get("/twice", dependencies=[Depends(rate_limit("twice"))])
    async def twice() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/free")
    async def free() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/typo", dependencies=[Depends(rate_limit("exprots"))])
    async def typo() -> dict[str, str]:
        return {"status": "ok"}

    return api


def test_fastapi_dependency_applies_the_policy_to_its_route(tmp_path: Path) -> None:
    with TestClient(Bastion(settings(tmp_path)).wrap(fastapi_app())) as client:
        first = client.get("/export")
        assert first.json() == {"status": "ready"}
        assert policy_names(first) == ["global", "exports"]
        assert first.headers["ratelimit"].startswith('"exports";r=0;t=')
        refused = client.get("/export")
        body = assert_problem(refused, 429, "rate_limited")
        assert body["retry_after"] == int(refused.headers["retry-after"])
        # The stage does not add the headers a second time to the refusal.
        assert refused.headers.get_list("ratelimit") == [refused.headers["ratelimit"]]
        # The same policy, the same bucket, whatever the route returns.
        assert_problem(client.get("/export-raw"), 429, "rate_limited")
        free = client.get("/free")
        assert free.status_code == 200
        assert policy_names(free) == ["global"]


def test_a_policy_the_stage_applied_is_not_counted_twice(tmp_path: Path) -> None:
    with TestClient(Bastion(settings(tmp_path)).wrap(fastapi_app())) as client:
        assert [client.get("/twice").status_code for _ in range(3)] == [200, 200, 429]


def test_unknown_policy_or_disabled_rate_limiting_fail_loudly(tmp_path: Path) -> None:
    with TestClient(Bastion(settings(tmp_path)).wrap(fastapi_app())) as client:
        assert_problem(client.get("/typo"), 500, "internal_error")
    with TestClient(Bastion(settings(tmp_path, enabled=False)).wrap(fastapi_app())) as client:
        assert_problem(client.get("/export"), 500, "internal_error")


async def export_endpoint(request: Request) -> Response:
    return PlainTextResponse("exported")


def sync_endpoint(request: Request) -> Response:
    return PlainTextResponse("sync")


@pytest.mark.parametrize("endpoint", [export_endpoint, sync_endpoint])
def test_starlette_endpoint_wrapper(tmp_path: Path, endpoint: object) -> None:
    app = Starlette(routes=[Route("/export", limited(endpoint, "exports"))])  # type: ignore[arg-type]
    with TestClient(Bastion(settings(tmp_path)).wrap(app)) as client:
        first = client.get("/export")
        assert first.status_code == 200
        assert "exports" in policy_names(first)
        assert_problem(client.get("/export"), 429, "rate_limited")
