"""How the engine builds, starts and stops its cache from the settings."""

from __future__ import annotations

from pathlib import Path

import pytest
from structlog.testing import capture_logs

from bastion import Bastion
from bastion.cache import Cache
from bastion.cache.config import CacheConfig
from bastion.cache.wiring import build_cache, purge
from bastion.observe.metrics import Metrics
from bastion.settings import ConfigError, Settings
from bastion.store.config import StoreConfig
from bastion.store.errors import StoreError
from bastion.store.stores import Stores
from ratelimit.redis_helpers import free_port


def store(tmp_path: Path, redis_url: str = "") -> StoreConfig:
    return StoreConfig(
        database_url=f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}", redis_url=redis_url
    )


async def test_engine_owns_an_l1_cache_without_redis(tmp_path: Path) -> None:
    engine = Bastion(Settings(store=store(tmp_path)))
    assert isinstance(engine.cache, Cache)
    assert engine.cache.tiers == ("l1",)
    assert engine.deps.cache is engine.cache
    await engine.startup()
    try:
        await engine.cache.set("k", "v")
        assert await engine.cache.get("k") == "v"
    finally:
        await engine.shutdown()


async def test_engine_shares_the_store_redis(tmp_path: Path, clean_redis_url: str) -> None:
    engine = Bastion(Settings(store=store(tmp_path, clean_redis_url)))
    assert engine.cache.tiers == ("l1", "l2")
    await engine.startup()
    try:
        await engine.cache.set("k", b"bytes")
        other = Cache.from_url(clean_redis_url)
        try:
            assert await other.get("k") == b"bytes"
        finally:
            await other.close()
    finally:
        await engine.shutdown()


def test_memory_store_ignores_redis(tmp_path: Path) -> None:
    settings = Settings(
        store=store(tmp_path, "redis://127.0.0.1:1/0"), cache=CacheConfig(store="memory")
    )
    assert build_cache(settings, Stores(settings.store), Metrics()).tiers == ("l1",)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"store": "redis"}, "needs store.redis_url"),
        ({"l1_max_entries": 0}, "needs Redis"),
    ],
    ids=["redis_without_url", "no_tier_at_all"],
)
def test_impossible_shapes_fail_at_start_up(
    tmp_path: Path, config: dict[str, object], message: str
) -> None:
    settings = Settings(store=store(tmp_path), cache=CacheConfig(**config))
    with pytest.raises(ValueError, match=message):
        Bastion(settings)


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("store", "disk"),
        ("l1_max_entries", -1),
        ("default_ttl", "0s"),
        ("key_prefix", ""),
        ("compress_level", 30),
        ("timeout", "soon"),
    ],
)
def test_invalid_settings_name_the_key(tmp_path: Path, key: str, value: object) -> None:
    path = tmp_path / "bastion.toml"
    path.write_text(f"[cache]\n{key} = {value!r}\n".replace("'", '"'), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Settings.from_file(path)
    assert f"cache.{key}" in [name for name, _ in info.value.errors]


async def test_purge_reports_a_redis_that_does_not_answer() -> None:
    settings = Settings(store={"redis_url": f"redis://127.0.0.1:{free_port()}/0"})
    with pytest.raises(StoreError, match="did not answer"):
        await purge(settings, tag="anything")


@pytest.mark.parametrize(("workers", "warned"), [(4, True), (1, False)])
def test_workers_without_redis_are_warned_of(tmp_path: Path, workers: int, warned: bool) -> None:
    settings = Settings(store=store(tmp_path), server={"workers": workers})
    with capture_logs() as logs:
        build_cache(settings, Stores(settings.store), Metrics())
    events = [entry["event"] for entry in logs if entry.get("log_level") == "warning"]
    assert any("per worker" in event for event in events) == warned


def test_workers_with_redis_are_not_warned_of(tmp_path: Path) -> None:
    settings = Settings(store=store(tmp_path, "redis://127.0.0.1:1/0"), server={"workers": 4})
    with capture_logs() as logs:
        cache = build_cache(settings, Stores(settings.store), Metrics())
    assert cache.tiers == ("l1", "l2")
    assert not [entry for entry in logs if "per worker" in entry["event"]]
