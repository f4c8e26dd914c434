"""Several instances sharing one Redis: L1 invalidation, cross-instance single flight, purges
from a short-lived process, and two OS processes."""

from __future__ import annotations

import asyncio
import json
import random
import subprocess
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from bastion.cache import Cache, Uncacheable
from bastion.cache.invalidation import decode, encode_all, encode_keys, encode_prefix, encode_tag
from bastion.cache.wiring import purge
from bastion.settings import Settings

MakeTiered = Callable[..., Any]

PATIENCE = 30.0
"""How long a test waits for a message to land: far beyond the 100 ms contract, so that only a
message that never comes fails a test, not a slow machine."""


async def two(make_tiered: MakeTiered) -> tuple[Cache, Cache]:
    return await make_tiered(), await make_tiered()


def held(cache: Cache, key: str) -> bool:
    assert cache.l1 is not None
    return key in cache.l1


async def until(check: Callable[[], bool]) -> None:
    """Wait until ``check`` holds, failing after :data:`PATIENCE`."""
    async with asyncio.timeout(PATIENCE):
        while not check():
            await asyncio.sleep(0.01)


def marker_key() -> str:
    return f"settle:{uuid.uuid4().hex}"


async def settled(sender: Cache, *receivers: Cache) -> None:
    """Wait until every receiver has handled each message ``sender`` published so far.

    A subscriber gets messages in the order Redis ran their PUBLISH, so once a receiver drops a
    marker key the sender deletes after its other writes, it has handled those writes too: an
    assertion after this sees their effect, where one after a fixed pause could run before a
    slow machine delivered them. Each receiver holds its own marker (a receiver's write of
    its marker evicts that key, not another receiver's)."""
    pairs = [(receiver, marker_key()) for receiver in receivers]
    for receiver, marker in pairs:
        await receiver.set(marker, "marker", ttl=60)
    await sender.delete_many([marker for _, marker in pairs])
    await until(lambda: not any(held(receiver, marker) for receiver, marker in pairs))


async def test_a_write_evicts_the_other_instances_l1(make_tiered: MakeTiered) -> None:
    a, b = await two(make_tiered)
    await a.set("k", "v1", ttl=60)
    await settled(a, b)  # else the write's own message could evict the copy read next
    assert await b.get("k") == "v1"
    assert held(b, "k")
    await a.set("k", "v2", ttl=60)
    await settled(a, b)
    assert not held(b, "k")
    assert await b.get("k") == "v2"


async def test_the_writer_keeps_its_own_entry(make_tiered: MakeTiered) -> None:
    """Self-echo suppression: an instance does not evict what it has just written."""
    a, b = await two(make_tiered)
    await a.set("k", "v", ttl=60)
    await settled(b, a)  # a's echo of its write came before b's marker
    assert held(a, "k")


@pytest.mark.parametrize("operation", ["delete", "tag", "prefix", "namespace_prefix"])
async def test_invalidations_reach_the_other_instance(
    make_tiered: MakeTiered, operation: str
) -> None:
    a, b = await two(make_tiered)
    await a.namespace("ns").set("user:1", "x", tags=["user:1"])
    await a.set("keep", "y")
    await settled(a, b)
    assert await b.namespace("ns").get("user:1") == "x"
    assert await b.get("keep") == "y"
    if operation == "delete":
        await a.namespace("ns").delete("user:1")
    elif operation == "tag":
        assert await a.namespace("ns").invalidate_tag("user:1") == 1
    elif operation == "prefix":
        assert await a.invalidate_prefix("ns:user") == 1
    else:
        assert await a.namespace("ns").invalidate_prefix("") == 1
    await settled(a, b)
    assert not held(b, "ns:user:1")
    assert held(b, "keep")
    assert await b.namespace("ns").get("user:1") is None


async def test_an_invalidation_during_an_l2_read_keeps_the_result_out_of_l1(
    make_tiered: MakeTiered, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The read may have fetched the very value being invalidated: it is returned to its
    caller but not kept, so the next read goes to Redis again."""
    a, b = await two(make_tiered)
    await a.set("k", "old")
    await settled(a, b)
    l2 = b._core.l2
    assert l2 is not None
    read_started = asyncio.Event()
    release = asyncio.Event()
    real_get = l2.get

    async def slow_get(key: str) -> bytes | None:
        record = await real_get(key)
        read_started.set()
        await release.wait()
        return record

    monkeypatch.setattr(l2, "get", slow_get)
    reader = asyncio.create_task(b.get("k"))
    await read_started.wait()
    await a.set("k", "new")
    await settled(a, b)  # the invalidation landed while the read was still in progress
    release.set()
    assert await reader == "old"
    assert not held(b, "k")
    monkeypatch.setattr(l2, "get", real_get)
    assert await b.get("k") == "new"


async def test_single_flight_across_instances(make_tiered: MakeTiered) -> None:
    # The waiting instance keeps waiting however long the callers take to line up.
    a = await make_tiered(lock_ttl=60)
    b = await make_tiered(lock_ttl=60)
    calls = 0
    gate = asyncio.Event()

    async def loader() -> str:
        nonlocal calls
        calls += 1
        await gate.wait()
        return "shared"

    callers = [asyncio.create_task(c.get_or_set("k", loader)) for c in (a, b) for _ in range(50)]
    await asyncio.sleep(0.1)
    gate.set()
    assert await asyncio.gather(*callers) == ["shared"] * 100
    assert calls == 1


@pytest.mark.parametrize("outcome", ["raises", "uncacheable"])
async def test_when_the_lock_holder_stores_nothing_the_next_instance_loads_at_once(
    make_tiered: MakeTiered, outcome: str
) -> None:
    """A waiting instance notices the lock go away instead of waiting out ``lock_ttl``."""
    a = await make_tiered(lock_ttl=60)
    b = await make_tiered(lock_ttl=60)
    gate = asyncio.Event()
    order: list[str] = []

    async def first() -> Any:
        order.append("a started")
        await gate.wait()
        order.append("a done")
        if outcome == "raises":
            raise RuntimeError("upstream failed")
        return Uncacheable("private")

    async def second() -> str:
        order.append("b started")
        return "b's value"

    holder = asyncio.create_task(a.get_or_set("k", first))
    await until(lambda: order == ["a started"])  # a holds the lock
    waiter = asyncio.create_task(b.get_or_set("k", second))
    await until(lambda: "k" in b._core.waiters)  # b found the lock taken and waits
    assert order == ["a started"]
    gate.set()
    async with asyncio.timeout(10):  # far below lock_ttl: the wait ended with the lock
        assert await waiter == "b's value"
        results = await asyncio.gather(holder, return_exceptions=True)
    assert order == ["a started", "a done", "b started"]
    if outcome == "raises":
        assert isinstance(results[0], RuntimeError)
    else:
        assert results == ["private"]


async def test_a_purge_from_a_short_lived_process_reaches_running_instances(
    make_tiered: MakeTiered, clean_redis_url: str
) -> None:
    a, _ = await two(make_tiered)
    await a.set("page:/a", "A", tags=["pages"])
    await a.set("page:/b", "B", tags=["pages"])
    await a.set("other", "O")
    settings = Settings(store={"redis_url": clean_redis_url})
    assert await purge(settings, tag="pages") == 2
    await until(lambda: not held(a, "page:/a") and not held(a, "page:/b"))
    assert held(a, "other")
    assert await purge(settings, key="other") == 1
    assert await purge(settings, prefix="nothing") == 0
    with pytest.raises(ValueError, match="exactly one"):
        await purge(settings, key="a", tag="b")


async def test_purge_without_redis_has_nothing_to_do() -> None:
    assert await purge(Settings(), tag="x") == 0


MESSAGES = [
    ("keys", encode_keys("s", ["a", "b"]), {"keys": ["a", "b"]}),
    ("tag", encode_tag("s", "t"), {"tag": "t"}),
    ("prefix", encode_prefix("s", "p:"), {"prefix": "p:"}),
    ("all", encode_all("s"), {"everything": True}),
]


@pytest.mark.parametrize(("name", "data", "fields"), MESSAGES, ids=[m[0] for m in MESSAGES])
def test_messages_round_trip(name: str, data: bytes, fields: dict[str, Any]) -> None:
    message = decode(data)
    assert message is not None
    assert message.sender == "s"
    for field, value in fields.items():
        assert getattr(message, field) == value


MALFORMED = [
    ("not_json", b"{"),
    ("not_object", b"[1]"),
    ("no_sender", b'{"k": ["a"]}'),
    ("sender_not_str", b'{"s": 1, "k": ["a"]}'),
    ("keys_not_str", b'{"s": "x", "k": [1]}'),
    ("nothing", b'{"s": "x"}'),
    ("all_not_one", b'{"s": "x", "a": true}'),
]


@pytest.mark.parametrize(("name", "data"), MALFORMED, ids=[m[0] for m in MALFORMED])
def test_malformed_messages_are_ignored(name: str, data: bytes) -> None:
    assert decode(data) is None


async def test_malformed_messages_on_the_channel_change_nothing(
    make_tiered: MakeTiered, clean_redis_url: str
) -> None:
    a, b = await two(make_tiered)
    await a.set("k", "v")
    client = redis.Redis.from_url(clean_redis_url)
    try:
        for _, data in MALFORMED:
            client.publish(a.config.invalidation_channel, data)
    finally:
        client.close()
    await settled(b, a)  # published after the malformed ones, so handled after them
    assert held(a, "k")


class Peer:
    """A cache instance in another OS process (``peer.py``)."""

    def __init__(self, url: str) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("peer.py")), url],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        assert self.process.stdout.readline().strip() == "ready"

    def ask(self, *command: Any) -> Any:
        assert self.process.stdin is not None
        assert self.process.stdout is not None
        self.process.stdin.write(json.dumps(command) + "\n")
        self.process.stdin.flush()
        return json.loads(self.process.stdout.readline())

    async def settled(self, sender: Cache) -> None:
        """Wait until this process has handled each message ``sender`` published so far (the
        marker of :func:`settled`, held here)."""
        marker = marker_key()
        assert self.ask("set", marker, "marker", []) is True
        await sender.delete(marker)
        async with asyncio.timeout(PATIENCE):
            while self.ask("held", marker):
                await asyncio.sleep(0.01)

    async def reached(self, receiver: Cache) -> None:
        """Wait until ``receiver`` has handled each message this process published so far:
        this process writes a marker ``receiver`` holds, after its other writes."""
        marker = marker_key()
        await receiver.set(marker, "marker", ttl=60)
        assert self.ask("set", marker, "marker", []) is True
        await until(lambda: not held(receiver, marker))

    def stop(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()
        self.process.wait(timeout=10)
        if self.process.stdout is not None:
            self.process.stdout.close()


@pytest.fixture
def peers(clean_redis_url: str) -> Iterator[list[Peer]]:
    started: list[Peer] = []
    try:
        started.extend(Peer(clean_redis_url) for _ in range(2))
        yield started
    finally:
        for peer in started:
            peer.stop()


async def test_two_processes_see_each_others_invalidations(
    make_tiered: MakeTiered, peers: list[Peer]
) -> None:
    here = await make_tiered()
    peer = peers[0]
    await here.set("k", "v1", tags=["t"])
    await peer.settled(here)  # else the write's own message could evict the copy read next
    assert peer.ask("get", "k") == {"value": "v1", "in_l1": False}
    assert peer.ask("held", "k") is True
    await here.set("k", "v2", tags=["t"])
    await peer.settled(here)
    assert peer.ask("held", "k") is False
    assert peer.ask("get", "k")["value"] == "v2"
    assert peer.ask("held", "k") is True
    await here.invalidate_tag("t")
    await peer.settled(here)
    assert peer.ask("held", "k") is False
    # And the other way round.
    assert peer.ask("set", "from-peer", "p1", []) is True
    await peer.reached(here)
    assert await here.get("from-peer") == "p1"
    assert peer.ask("set", "from-peer", "p2", []) is True
    await peer.reached(here)
    assert not held(here, "from-peer")
    assert await here.get("from-peer") == "p2"


def test_two_processes_load_a_key_once(peers: list[Peer], clean_redis_url: str) -> None:
    for peer in peers:
        assert peer.process.stdin is not None
        peer.process.stdin.write(json.dumps(["load", "k"]) + "\n")
        peer.process.stdin.flush()
    replies = []
    for peer in peers:
        assert peer.process.stdout is not None
        replies.append(json.loads(peer.process.stdout.readline()))
    assert replies == ["loaded k", "loaded k"]
    client = redis.Redis.from_url(clean_redis_url)
    try:
        assert client.get("loads:k") == b"1"
    finally:
        client.close()


@pytest.mark.parametrize("seed", [5, 17, 2026])
async def test_instances_agree_with_redis_after_racing_writes(
    make_tiered: MakeTiered, clean_redis_url: str, seed: int
) -> None:
    """Three instances write, delete, invalidate and read the same few keys at once; once the
    messages have landed every instance answers what Redis holds (no L1 keeps a value that was
    overwritten or invalidated meanwhile)."""
    caches = [await make_tiered() for _ in range(3)]
    keys = [f"k{index}" for index in range(4)]
    rng = random.Random(seed)

    async def worker(cache: Cache, seed: int) -> None:
        local = random.Random(seed)
        for step in range(150):
            key = local.choice(keys)
            action = local.random()
            if action < 0.35:
                await cache.set(key, f"{seed}:{step}", tags=[f"tag-{key}"])
            elif action < 0.45:
                await cache.delete(key)
            elif action < 0.5:
                await cache.invalidate_tag(f"tag-{key}")
            else:
                await cache.get(key)
            if local.random() < 0.3:
                await asyncio.sleep(0)

    await asyncio.gather(*(worker(cache, rng.randrange(1000)) for cache in caches))
    for sender in caches:
        await settled(sender, *(cache for cache in caches if cache is not sender))
    redis_only = caches[0].config.model_copy(update={"l1_max_entries": 0})
    truth = Cache.from_url(clean_redis_url, redis_only)
    try:
        for key in keys:
            expected = await truth.get(key)
            assert [await cache.get(key) for cache in caches] == [expected] * 3, key
    finally:
        await truth.close()
