"""Cross-instance L1 invalidation over Redis pub/sub.

Every write and invalidation publishes one small message (in the same round trip as the write:
see :mod:`bastion.cache.l2`); every instance subscribed to the channel evicts the named keys,
tag or prefix from its own L1. Messages carry the sender's id so an instance ignores its own
(it already evicted locally). Layout, orjson: ``{"s": sender, "k": [keys]}``,
``{"s": sender, "t": tag}``, ``{"s": sender, "p": prefix}`` or ``{"s": sender, "a": 1}`` (all).

Pub/sub delivers at most once: a message sent while an instance's subscription is down is lost.
So when the subscription comes back after a failure the instance clears its whole L1 (the
entries it holds may have been invalidated meanwhile); entries also expire on their own.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Callable, Sequence
from typing import Any

import orjson
from redis.asyncio import Redis
from redis.exceptions import RedisError

from bastion.observe.logging import get_logger
from bastion.store.errors import describe

__all__ = [
    "Invalidation",
    "InvalidationBus",
    "decode",
    "encode_all",
    "encode_keys",
    "encode_prefix",
    "encode_tag",
]

_log: Any = get_logger("bastion.cache")

_POLL = 1.0
"""Seconds one read of the subscription waits for a message before checking it is alive."""
_RETRY_MIN = 0.1
_RETRY_MAX = 5.0


class Invalidation:
    """One decoded message: exactly one of ``keys``, ``tag``, ``prefix`` or ``everything``."""

    __slots__ = ("everything", "keys", "prefix", "sender", "tag")

    def __init__(
        self,
        sender: str,
        *,
        keys: Sequence[str] = (),
        tag: str | None = None,
        prefix: str | None = None,
        everything: bool = False,
    ) -> None:
        self.sender = sender
        self.keys = keys
        self.tag = tag
        self.prefix = prefix
        self.everything = everything


def encode_keys(sender: str, keys: Sequence[str]) -> bytes:
    return orjson.dumps({"s": sender, "k": list(keys)})


def encode_tag(sender: str, tag: str) -> bytes:
    return orjson.dumps({"s": sender, "t": tag})


def encode_prefix(sender: str, prefix: str) -> bytes:
    return orjson.dumps({"s": sender, "p": prefix})


def encode_all(sender: str) -> bytes:
    return orjson.dumps({"s": sender, "a": 1})


def decode(data: bytes) -> Invalidation | None:
    """The message in ``data``, or ``None`` when it is not one of ours (ignored, logged)."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("s"), str):
        return None
    sender = message["s"]
    keys = message.get("k")
    if isinstance(keys, list) and all(isinstance(key, str) for key in keys):
        return Invalidation(sender, keys=keys)
    tag = message.get("t")
    if isinstance(tag, str):
        return Invalidation(sender, tag=tag)
    prefix = message.get("p")
    if isinstance(prefix, str):
        return Invalidation(sender, prefix=prefix)
    everything = message.get("a")
    if type(everything) is int and everything == 1:
        return Invalidation(sender, everything=True)
    return None


class InvalidationBus:
    """The subscription of one instance: hands every foreign message to ``on_message`` and calls
    ``on_resubscribed`` when the subscription is back after a failure."""

    def __init__(
        self,
        client: Redis,
        channel: str,
        *,
        on_message: Callable[[Invalidation], None],
        on_resubscribed: Callable[[], None],
    ) -> None:
        self.client = client
        self.channel = channel
        self.sender = secrets.token_hex(8)
        """This instance's id in the messages it publishes."""
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._task: asyncio.Task[None] | None = None
        self._subscribed = asyncio.Event()
        self._closing = False
        self.connected = False
        """Whether the subscription is live."""

    async def start(self, wait: float) -> None:
        """Subscribe in the background; wait up to ``wait`` seconds for the first
        subscription (a Redis that is down is retried in the background)."""
        if self._task is not None:
            return
        self._closing = False
        self._task = asyncio.create_task(self._run(), name="bastion-cache-invalidation")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(wait):
                await self._subscribed.wait()

    async def close(self) -> None:
        """Stop listening."""
        # Also a flag: a cancellation that arrives while the client closes its connection can
        # be swallowed inside redis-py, and the loop must still end.
        self._closing = True
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self.connected = False

    async def _run(self) -> None:
        delay = _RETRY_MIN
        lost = False
        while not self._closing:
            pubsub = self.client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self.channel)
                self.connected = True
                self._subscribed.set()
                delay = _RETRY_MIN
                if lost:
                    _log.info("cache: invalidation channel subscribed again")
                    self._on_resubscribed()
                    lost = False
                while not self._closing:
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=_POLL
                    )
                    if message is not None and message.get("type") == "message":
                        self._handle(message["data"])
            except (RedisError, OSError, TimeoutError) as exc:
                if not lost:
                    _log.warning(
                        "cache: invalidation channel lost; L1 is cleared when it returns",
                        error=describe(exc),
                    )
                lost = True
                self.connected = False
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError, RuntimeError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
            if self._closing:
                return
            await asyncio.sleep(delay)
            delay = min(delay * 2, _RETRY_MAX)

    def _handle(self, data: Any) -> None:
        if not isinstance(data, bytes | str):
            return
        message = decode(data.encode("utf-8") if isinstance(data, str) else data)
        if message is None:
            _log.debug("cache: ignored a malformed invalidation message")
            return
        if message.sender == self.sender:
            return
        self._on_message(message)
