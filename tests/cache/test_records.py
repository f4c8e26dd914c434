"""What the cache finds in Redis may be damaged or foreign: it is ignored, never raised."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import redis

from bastion.cache import SerializationError

MakeTiered = Callable[..., Any]

DAMAGED = [
    ("empty", b""),
    ("short_header", b"\x01\x00\x00"),
    ("unknown_version", b"\x07" + b"\x00" * 26),
    ("tags_not_json", b"\x01" + b"\x00" * 24 + b"\x00\x03abc" + b"\x01null"),
    ("tags_not_strings", b"\x01" + b"\x00" * 24 + b"\x00\x03[1]" + b"\x01null"),
    (
        "value_corrupt",
        b"\x01" + b"\x7f\xef" + b"\xff" * 6 + b"\x7f\xef" + b"\xff" * 14 + b"\x00\x00\x01{",
    ),
]


@pytest.mark.parametrize(("name", "record"), DAMAGED, ids=[case[0] for case in DAMAGED])
async def test_damaged_records_read_as_misses(
    make_tiered: MakeTiered, clean_redis_url: str, name: str, record: bytes
) -> None:
    cache = await make_tiered()
    client = redis.Redis.from_url(clean_redis_url)
    try:
        client.set(cache.config.key_prefix + "v:k", record)
    finally:
        client.close()
    assert await cache.get("k", "default") == "default"
    assert await cache.get_entry("k") is None

    async def loader() -> str:
        return "reloaded"

    assert await cache.get_or_set("k", loader) == "reloaded"
    assert await cache.get("k") == "reloaded"


async def test_tags_beyond_the_record_bound_are_refused(make_tiered: MakeTiered) -> None:
    cache = await make_tiered()
    await cache.set("k", "old")
    with pytest.raises(SerializationError, match="tags"):
        await cache.set("k", "v", tags=[f"tag-{index:06d}" for index in range(7000)])
    assert await cache.get("k") == "old"
