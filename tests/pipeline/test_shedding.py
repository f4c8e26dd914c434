"""Load shedding: bounded in-flight requests, bounded waiting, 503 with Retry-After."""

from __future__ import annotations

import asyncio

import orjson

from bastion.http.asgi import Message, Receive, Scope, Send
from bastion.pipeline.config import SheddingConfig
from bastion.pipeline.shedding import SheddingStage
from bastion.settings import Settings
from problem_assertions import assert_problem_body
from stage_harness import around, make_deps


def http_scope() -> Scope:
    return {
        "type": "http",
        "method": "GET",
        "path": "/work",
        "raw_path": b"/work",
        "query_string": b"",
        "headers": [],
        "client": ("127.0.0.1", 9),
        "scheme": "http",
        "state": {},
    }


class Gate:
    """An app whose requests block until released."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.entered = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self.entered += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


async def call(
    app,
) -> list[Message]:  # type: ignore[no-untyped-def]
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(http_scope(), receive, send)
    return sent


def build(config: SheddingConfig, gate: Gate):  # type: ignore[no-untyped-def]
    deps = make_deps(Settings(shedding=config))
    holder: list[SheddingStage] = []

    def factory(app, d):  # type: ignore[no-untyped-def]
        holder.append(SheddingStage(app, config=config, deps=d))
        return holder[0]

    return around(factory, gate, deps), holder[0], deps


async def test_excess_requests_shed_with_retry_after() -> None:
    gate = Gate()
    app, stage, deps = build(SheddingConfig(max_inflight=2, max_queue=1, queue_timeout=0.05), gate)
    tasks = [asyncio.create_task(call(app)) for _ in range(5)]
    # Two run, one waits and times out, two are refused at once: the gate opens only once all
    # three were refused (after a fixed pause, a slow start could still have the waiter queued
    # and hand it the freed slot).
    async with asyncio.timeout(30):
        while deps.metrics.shed._value.get() < 3:
            await asyncio.sleep(0.01)
    gate.release.set()
    results = await asyncio.gather(*tasks)
    statuses = sorted(r[0]["status"] for r in results)
    assert statuses == [200, 200, 503, 503, 503]
    refused = next(r for r in results if r[0]["status"] == 503)
    headers = dict(refused[0]["headers"])
    assert headers[b"retry-after"] == b"1"
    assert_problem_body(orjson.loads(refused[1]["body"]), 503, "overloaded")
    assert stage.inflight == 0
    assert deps.metrics.shed._value.get() == 3


async def test_waiter_gets_slot_when_one_frees() -> None:
    gate = Gate()
    # A wait far longer than the test: only the freed slot can end it.
    app, stage, _ = build(SheddingConfig(max_inflight=1, max_queue=5, queue_timeout=60.0), gate)
    first = asyncio.create_task(call(app))
    second = asyncio.create_task(call(app))
    await asyncio.sleep(0.05)
    assert gate.entered == 1
    gate.release.set()
    results = await asyncio.gather(first, second)
    assert [r[0]["status"] for r in results] == [200, 200]
    assert stage.inflight == 0


async def test_cancelled_waiter_does_not_leak_slot() -> None:
    gate = Gate()
    app, stage, _ = build(SheddingConfig(max_inflight=1, max_queue=5, queue_timeout=60.0), gate)
    first = asyncio.create_task(call(app))
    await asyncio.sleep(0.01)
    waiting = asyncio.create_task(call(app))
    await asyncio.sleep(0.01)
    waiting.cancel()
    gate.release.set()  # the freed slot may be handed to the waiter being cancelled
    await first
    await asyncio.gather(waiting, return_exceptions=True)
    assert stage.inflight == 0
    assert not stage._waiters


async def test_zero_timeout_refuses_immediately() -> None:
    gate = Gate()
    app, stage, _ = build(SheddingConfig(max_inflight=1, queue_timeout=0), gate)
    first = asyncio.create_task(call(app))
    await asyncio.sleep(0.01)
    refused = await call(app)
    assert refused[0]["status"] == 503
    gate.release.set()
    await first
    assert stage.inflight == 0
