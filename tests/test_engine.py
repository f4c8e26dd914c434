"""The engine: pipeline order, middleware mode, lifespan, built-in routes."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route
from starlette.testclient import TestClient

from bastion import Bastion, BastionError, Settings
from bastion.auth.config import AuthConfig
from bastion.inspect.config import InspectConfig, InspectRouteConfig, StrikesConfig
from bastion.pipeline.compression import CompressionStage
from bastion.pipeline.config import (
    ClientIpConfig,
    CorsConfig,
    CsrfConfig,
    LimitsConfig,
    SheddingConfig,
)
from bastion.pipeline.cors import CorsStage
from bastion.pipeline.csrf import CsrfStage
from bastion.pipeline.headers import SecurityHeadersStage
from bastion.pipeline.request_id import RequestIdStage
from bastion.ratelimit.config import PolicyConfig, RateLimitConfig
from bastion.store.config import StoreConfig
from problem_assertions import assert_problem


@pytest.fixture
def store(tmp_path: Path) -> StoreConfig:
    return StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}")


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello " * 400)  # above the compression threshold


async def echo(request: Request) -> Response:
    return Response(await request.body())


async def fail(request: Request) -> Response:
    raise BastionError("upstream_timeout", "took too long")


def starlette_app(events: list[str] | None = None) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        if events is not None:
            events.append("app-startup")
        yield
        if events is not None:
            events.append("app-shutdown")

    return Starlette(
        routes=[
            Route("/hello", hello),
            Route("/echo", echo, methods=["POST"]),
            Route("/fail", fail),
        ],
        lifespan=lifespan,
    )


def chain(app: Any) -> list[str]:
    """Class names of the stages, outermost first."""
    names = []
    node = app.pipeline
    while hasattr(node, "app") and not isinstance(node, Starlette):
        names.append(type(node).__name__)
        node = node.app
    return names


def test_default_chain_and_disabled_stages_absent(store: StoreConfig) -> None:
    app = Bastion(Settings(store=store)).wrap(starlette_app())
    assert chain(app) == [
        "RequestIdStage",
        "SecurityHeadersStage",
        "ErrorStage",
        "ProbeStage",
        "GateStage",
        "SheddingStage",
        "LimitsStage",
        "AuthStage",
        "InspectStage",
        "CompressionStage",
        "OwnRoutes",
    ]
    without_auth = Settings(store=store, auth=AuthConfig(enabled=False))
    assert "AuthStage" not in chain(Bastion(without_auth).wrap(starlette_app()))
    everything = Settings(
        store=store,
        client_ip=ClientIpConfig(trusted_proxies=["10.0.0.0/8"]),
        cors=CorsConfig(origins=["https://app.example.com"]),
        csrf=CsrfConfig(enabled=True, secrets=["s" * 32]),
        ratelimit=RateLimitConfig(policies=[PolicyConfig(name="users", key="user", limit=10)]),
    )
    full = chain(Bastion(everything).wrap(starlette_app()))
    assert full.index("ClientIpStage") == full.index("ErrorStage") + 1
    assert full.index("GateStage") == full.index("ProbeStage") + 1
    assert full.index("RateLimitStage") == full.index("AuthStage") + 1
    assert full.index("InspectStage") == full.index("RateLimitStage") + 1
    assert full.index("CompressionStage") == full.index("InspectStage") + 1
    no_strikes = Settings(store=store, inspect=InspectConfig(strikes=StrikesConfig(enabled=False)))
    assert "StrikeGate" not in chain(Bastion(no_strikes).wrap(starlette_app()))
    inspect_off = Settings(store=store, inspect=InspectConfig(mode="off"))
    assert not {"StrikeGate", "InspectStage"} & set(
        chain(Bastion(inspect_off).wrap(starlette_app()))
    )
    one_route = InspectConfig(mode="off", routes=[InspectRouteConfig(path="/api/**", mode="block")])
    assert "InspectStage" in chain(
        Bastion(Settings(store=store, inspect=one_route)).wrap(starlette_app())
    )
    without_ratelimit = Settings(store=store, ratelimit=RateLimitConfig(enabled=False))
    alone = chain(Bastion(without_ratelimit).wrap(starlette_app()))
    assert not {"GateStage", "RateLimitStage"} & set(alone)
    # Strike blocks are the rate-limit gate's to check; without it, the strike gate's.
    assert alone.index("StrikeGate") == alone.index("ProbeStage") + 1
    assert full.index("CorsStage") < full.index("CsrfStage") < full.index("AuthStage")
    assert full.index("AuthStage") < full.index("CompressionStage")
    assert isinstance(Bastion(everything).wrap(starlette_app()).pipeline, RequestIdStage)
    _ = (CorsStage, CsrfStage, CompressionStage, SecurityHeadersStage)


@pytest.mark.parametrize(
    ("id_", "settings", "request_args", "status", "code"),
    [
        (
            "413",
            {"limits": LimitsConfig(max_body_bytes=10)},
            ("POST", "/echo", {"content": b"x" * 100}),
            413,
            "payload_too_large",
        ),
        (
            "414",
            {"limits": LimitsConfig(max_url_bytes=64)},
            ("GET", "/hello?" + "q" * 100, {}),
            414,
            "uri_too_long",
        ),
        (
            "431",
            {"limits": LimitsConfig(max_header_bytes=256)},
            ("GET", "/hello", {"headers": {"x-pad": "p" * 300}}),
            431,
            "request_header_too_large",
        ),
        ("app-raised", {}, ("GET", "/fail", {}), 504, "upstream_timeout"),
        ("own-prefix", {}, ("GET", "/_bastion/nothing", {}), 404, "not_found"),
    ],
)
def test_bastion_errors_carry_headers_and_request_id(
    store: StoreConfig,
    id_: str,
    settings: dict[str, Any],
    request_args: tuple[str, str, dict],  # type: ignore[type-arg]
    status: int,
    code: str,
) -> None:
    app = Bastion(Settings(store=store, **settings)).wrap(starlette_app())
    method, url, kwargs = request_args
    with TestClient(app) as client:
        response = client.request(
            method, url, headers={"X-Request-ID": "order-1", **kwargs.pop("headers", {})}, **kwargs
        )
    data = assert_problem(response, status, code)
    assert data["request_id"] == "order-1"
    assert response.headers["x-content-type-options"] == "nosniff"
    assert response.headers["content-security-policy"]


async def test_shed_response_carries_headers(store: StoreConfig) -> None:
    import asyncio

    import httpx

    gate = asyncio.Event()
    entered = asyncio.Event()

    async def slow(scope: Any, receive: Any, send: Any) -> None:
        entered.set()
        await gate.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})

    engine = Bastion(
        Settings(store=store, shedding=SheddingConfig(max_inflight=1, queue_timeout=0))
    )
    app = engine.wrap(slow)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        first = asyncio.create_task(client.get("/"))
        # The first request holds the only slot before the second is sent (after a fixed
        # pause, a slow start of the stores could let the second take it and wait forever).
        async with asyncio.timeout(30):
            await entered.wait()
        refused = await client.get("/", headers={"X-Request-ID": "shed-1"})
        gate.set()
        assert (await first).status_code == 200
    await engine.shutdown()
    data = assert_problem(refused, 503, "overloaded")
    assert data["request_id"] == "shed-1"
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-frame-options"] == "DENY"


def test_lifespan_order_and_store_started(tmp_path: Path, store: StoreConfig) -> None:
    events: list[str] = []
    app = Bastion(Settings(store=store)).wrap(starlette_app(events))
    with TestClient(app) as client:
        assert events == ["app-startup"]
        assert (tmp_path / "bastion.db").exists()
        ready = client.get("/_bastion/ready")
        assert ready.status_code == 200
        assert ready.json()["checks"]["database"]["status"] == "ok"
    assert events == ["app-startup", "app-shutdown"]


async def test_lazy_start_without_lifespan(tmp_path: Path, store: StoreConfig) -> None:
    import httpx

    engine = Bastion(Settings(store=store))
    transport = httpx.ASGITransport(app=engine.wrap(starlette_app()))  # sends no lifespan events
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/_bastion/ready")).status_code == 200
    assert (tmp_path / "bastion.db").exists()
    await engine.shutdown()


async def test_failing_store_reports_not_ready_and_requests_still_served() -> None:
    import httpx

    settings = Settings(
        store=StoreConfig(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none", timeout=0.5)
    )
    engine = Bastion(settings)
    transport = httpx.ASGITransport(app=engine.wrap(starlette_app()))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/hello")).status_code == 200
        ready = await client.get("/_bastion/ready")
    data = assert_problem(ready, 503, "not_ready")
    assert data["checks"]
    assert "nobody" not in str(data)
    await engine.shutdown()


def test_failing_app_startup_is_reported(store: StoreConfig) -> None:
    @contextlib.asynccontextmanager
    async def broken(app: Starlette) -> AsyncIterator[None]:
        raise RuntimeError("cannot start")
        yield

    app = Bastion(Settings(store=store)).wrap(Starlette(lifespan=broken))
    with pytest.raises(RuntimeError), TestClient(app):
        pass


def test_fastapi_app(store: StoreConfig) -> None:
    api = FastAPI()

    @api.get("/items/{item_id}")
    async def item(item_id: int) -> dict[str, int]:
        if item_id == 0:
            raise BastionError("not_found", "no item 0")
        return {"id": item_id}

    @api.get("/crash")
    async def crash() -> dict[str, str]:
        raise ValueError("secret")

    app = Bastion(Settings(store=store)).wrap(api)
    with TestClient(app) as client:
        ok = client.get("/items/3", headers={"accept-encoding": "gzip"})
        assert ok.json() == {"id": 3}
        assert ok.headers["x-request-id"]
        assert ok.headers["referrer-policy"] == "no-referrer"
        assert_problem(client.get("/items/0"), 404, "not_found")
        crashed = client.get("/crash")
        assert_problem(crashed, 500, "internal_error")
        assert "secret" not in crashed.text
        # FastAPI's own validation errors are the app's business and pass through unchanged.
        assert client.get("/items/abc").status_code == 422


def test_compression_in_middleware_mode(store: StoreConfig) -> None:
    app = Bastion(Settings(store=store)).wrap(starlette_app())
    with TestClient(app) as client:
        response = client.get("/hello", headers={"accept-encoding": "gzip"})
    assert response.headers["content-encoding"] == "gzip"
    assert response.text.startswith("hello ")
    assert "accept-encoding" in response.headers["vary"].lower()


def test_csrf_keys_come_from_the_shared_store(store: StoreConfig) -> None:
    settings = Settings(store=store, csrf=CsrfConfig(enabled=True, cookie_secure=False))
    first = Bastion(settings)
    second = Bastion(settings)
    for engine in (first, second):
        with TestClient(engine.wrap(starlette_app())) as client:
            client.get("/hello")
    assert first.csrf_keys.keys
    assert first.csrf_keys.keys == second.csrf_keys.keys


def test_gateway_requires_a_route(store: StoreConfig) -> None:
    with pytest.raises(ValueError, match="at least one route"):
        Bastion(Settings(store=store)).gateway()


def test_json_response_untouched(store: StoreConfig) -> None:
    async def data(request: Request) -> Response:
        return JSONResponse({"a": 1}, headers={"Server": "gunicorn"})

    app = Bastion(Settings(store=store)).wrap(Starlette(routes=[Route("/d", data)]))
    with TestClient(app) as client:
        response = client.get("/d")
    assert response.json() == {"a": 1}
    assert "server" not in response.headers
