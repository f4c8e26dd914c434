"""Helpers of the Redis store tests: throwaway Redis servers, and the work done in other
processes (importable by name, as ``multiprocessing``'s spawn start method needs)."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import redis

from bastion.ratelimit.core import Check, Rule
from bastion.ratelimit.redis_store import RedisStore
from bastion.store.redis import RedisConnector

__all__ = [
    "RedisServer",
    "crc16_slot",
    "free_port",
    "hammer",
    "skewed_requests",
]


def free_port() -> int:
    """A TCP port on 127.0.0.1 nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


class RedisServer:
    """A ``redis-server`` of the test's own, on a fixed port so it can come back on it."""

    def __init__(self, port: int | None = None, *, options: tuple[str, ...] = ()) -> None:
        self.port = port if port is not None else free_port()
        self.options = options
        """More ``redis-server`` arguments (``("--cluster-enabled", "yes")``)."""
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self._directory = Path(tempfile.mkdtemp(prefix="bastion-redis-"))
        self._process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        """Start it and wait until it answers."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server is not installed")
        self._process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self._directory),
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.port, socket_timeout=1, socket_connect_timeout=1)
        deadline = time.monotonic() + 10
        try:
            while True:
                try:
                    client.ping()
                    return
                except (redis.RedisError, OSError):
                    if time.monotonic() > deadline or self._process.poll() is not None:
                        raise RuntimeError(f"redis-server on {self.port} did not start") from None
                    time.sleep(0.02)
        finally:
            client.close()

    def kill(self) -> None:
        """Kill it at once (no shutdown: as a crash would)."""
        if self._process is not None:
            self._process.kill()
            self._process.wait(timeout=10)
            self._process = None

    def pause(self) -> None:
        """Freeze it (SIGSTOP): connections stay open and nothing answers."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGSTOP)

    def resume(self) -> None:
        """Thaw a paused server."""
        assert self._process is not None
        os.kill(self._process.pid, signal.SIGCONT)

    def stop(self) -> None:
        """Kill it and remove its directory."""
        if self._process is not None:
            self.resume()
        self.kill()
        shutil.rmtree(self._directory, ignore_errors=True)


def crc16_slot(key: bytes) -> int:
    """The Redis Cluster hash slot of ``key`` (CRC16/XMODEM of its hash tag, mod 16384)."""
    start = key.find(b"{")
    if start != -1:
        end = key.find(b"}", start + 1)
        if end > start + 1:
            key = key[start + 1 : end]
    crc = 0
    for byte in key:
        crc ^= byte << 8
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1021) if crc & 0x8000 else crc << 1
            crc &= 0xFFFF
    return crc % 16384


def hammer(
    url: str,
    prefix: str,
    rule: Rule,
    key: str,
    start_at: float,
    requests: int,
    concurrency: int,
) -> dict[str, Any]:
    """In a process of its own: from ``start_at`` (epoch seconds), ``requests`` evaluations of
    one bucket by ``concurrency`` tasks; the allowed count and when the first and last ran."""

    async def run() -> dict[str, Any]:
        connector = RedisConnector.from_url(url)
        store = RedisStore(connector, prefix=prefix)
        check = Check(rule, key)
        allowed = 0
        await asyncio.sleep(max(0.0, start_at - time.time()))
        first = time.time()

        async def worker(count: int) -> None:
            nonlocal allowed
            for _ in range(count):
                verdict = await store.evaluate([check], client="ip:192.0.2.1")
                allowed += verdict.allowed

        share, extra = divmod(requests, concurrency)
        await asyncio.gather(*(worker(share + (i < extra)) for i in range(concurrency)))
        last = time.time()
        await store.close()
        await connector.close()
        return {"allowed": allowed, "first": first, "last": last}

    return asyncio.run(run())


def skewed_requests(
    url: str, prefix: str, rule: Rule, key: str, skew: float, requests: int
) -> list[tuple[bool, int, float, float, float]]:
    """In a process of its own whose ``time.time`` is off by ``skew`` seconds: ``requests``
    evaluations of one bucket, as ``(allowed, remaining, reset, retry_after, sent)``, ``sent``
    being when the call was made by the host's real clock (to compare the processes' calls)."""
    real_time = time.time
    time.time = lambda: real_time() + skew

    async def run() -> list[tuple[bool, int, float, float, float]]:
        connector = RedisConnector.from_url(url)
        store = RedisStore(connector, prefix=prefix)
        outcomes = []
        for _ in range(requests):
            sent = real_time()
            verdict = await store.evaluate([Check(rule, key)])
            (decision,) = verdict.decisions
            outcomes.append(
                (decision.allowed, decision.remaining, decision.reset, decision.retry_after, sent)
            )
        await store.close()
        await connector.close()
        return outcomes

    try:
        return asyncio.run(run())
    finally:
        time.time = real_time
