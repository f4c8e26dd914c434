"""The cache stage in the engine's chain: step 13, between inspection and compression, only when
some path is cached; entries in the ``http`` namespace of the engine's tiered cache."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion.cache.config import CacheConfig
from bastion.cache.http.config import HttpCacheConfig, HttpCacheRouteConfig
from bastion.cache.http.stage import HttpCacheStage
from bastion.cache.http.wiring import http_cache_stage
from bastion.engine import Bastion
from bastion.settings import Settings
from bastion.store.config import StoreConfig
from stage_harness import make_deps


def chain(app: Any) -> list[str]:
    names = []
    node = app.pipeline
    while hasattr(node, "app") and not isinstance(node, Starlette):
        names.append(type(node).__name__)
        node = node.app
    return names


def settings(tmp_path: Path, http: HttpCacheConfig) -> Settings:
    store = StoreConfig(database_url=f"sqlite+aiosqlite:///{tmp_path / 'b.db'}")
    return Settings(store=store, cache=CacheConfig(http=http))


def test_the_stage_sits_right_inside_compression(tmp_path: Path) -> None:
    names = chain(Bastion(settings(tmp_path, HttpCacheConfig(enabled=True))).wrap(Starlette()))
    assert names.index("CompressionStage") == names.index("InspectStage") + 1
    assert names.index("HttpCacheStage") == names.index("CompressionStage") + 1


@pytest.mark.parametrize(
    ("http", "present"),
    [
        (HttpCacheConfig(), False),
        (HttpCacheConfig(routes=[HttpCacheRouteConfig(paths=["/a"], enabled=False)]), False),
        (HttpCacheConfig(routes=[HttpCacheRouteConfig(paths=["/a"], enabled=True)]), True),
    ],
)
def test_the_stage_is_in_the_chain_only_when_some_path_is_cached(
    tmp_path: Path, http: HttpCacheConfig, present: bool
) -> None:
    names = chain(Bastion(settings(tmp_path, http)).wrap(Starlette()))
    assert ("HttpCacheStage" in names) is present


def test_the_stage_needs_the_tiered_cache() -> None:
    with pytest.raises(ValueError, match="tiered cache"):
        http_cache_stage(Starlette(), make_deps())


async def test_a_wrapped_app_is_served_from_the_engine_cache(tmp_path: Path) -> None:
    calls = 0

    async def page(request: Request) -> Response:
        nonlocal calls
        calls += 1
        return PlainTextResponse(
            "x" * 4096, headers={"cache-control": "public, max-age=60", "cache-tag": "pages"}
        )

    engine = Bastion(settings(tmp_path, HttpCacheConfig(enabled=True, x_cache_header=True)))
    app = engine.wrap(Starlette(routes=[Route("/page", page)]))
    await engine.startup()
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            first = await client.get("/page", headers={"accept-encoding": "gzip"})
            second = await client.get("/page", headers={"accept-encoding": "gzip"})
            plain = await client.get("/page", headers={"accept-encoding": "identity"})
        assert calls == 1
        assert (first.headers["x-cache"], second.headers["x-cache"]) == ("MISS", "HIT")
        # Compressed per request on the way out, with security headers added to the hit.
        assert second.headers["content-encoding"] == "gzip"
        assert "content-encoding" not in plain.headers
        assert second.text == plain.text == "x" * 4096
        assert second.headers["x-content-type-options"] == "nosniff"
        assert second.headers["x-request-id"] != first.headers["x-request-id"]
        assert "cache-tag" not in second.headers
        assert isinstance(engine.cache.namespace("http"), type(engine.cache))
        assert await engine.cache.namespace("http").invalidate_tag("t:pages") >= 1
    finally:
        await engine.shutdown()
    assert HttpCacheStage.__name__ in chain(app)
