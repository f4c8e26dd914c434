"""Fixed-rate HTTP/1.1 load generator with coordinated-omission correction.

``python -m bench.loadgen --url http://127.0.0.1:9000/hello --rate 1000 --connections 16
--duration 10`` sends ``GET`` requests at a constant rate over keep-alive connections and prints
one JSON object with latency percentiles.

Request ``k`` is scheduled at ``start + k / rate`` and goes out on connection ``k mod
connections`` (so each connection carries ``rate / connections`` requests per second, as in
wrk2). Its latency is measured from the *scheduled* time, not from when it was actually sent:
a server that stalls delays every request queued behind the stall, and those delays are counted
instead of silently thinning the sample (coordinated omission). Alongside, the report gives the
service time (from the actual send) and the generator's own lag (actual send minus schedule),
which shows how precisely the schedule was kept.

Waiting for a send time sleeps until shortly before it and then polls the event loop, because the
loop's timers have millisecond granularity; the generator is meant to own its CPU.

Every run is bounded: it stops after ``warmup + duration`` seconds of schedule plus a grace period,
whatever the server does.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, cast
from urllib.parse import urlsplit

import httptools

__all__ = ["LoadResult", "percentile", "run_load", "summarize"]

_SPIN_WINDOW = 0.002
"""Seconds before a send time from which the generator polls instead of sleeping."""
_GRACE = 5.0
"""Seconds allowed after the last scheduled send for responses to arrive."""
_PERCENTILES = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0), ("p999", 99.9))


def percentile(sorted_values: Sequence[float], pct: float) -> float:
    """Nearest-rank percentile of already sorted values (``nan`` when empty)."""
    if not sorted_values:
        return math.nan
    rank = max(1, math.ceil(pct / 100.0 * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def summarize(values_s: Sequence[float]) -> dict[str, float]:
    """Percentiles and maximum of durations in seconds, reported in milliseconds."""
    ordered = sorted(values_s)
    summary = {name: percentile(ordered, pct) * 1000.0 for name, pct in _PERCENTILES}
    summary["max"] = (ordered[-1] * 1000.0) if ordered else math.nan
    return summary


@dataclass
class LoadResult:
    """What one fixed-rate run measured (latencies in milliseconds)."""

    url: str
    rate: float
    connections: int
    duration: float
    warmup: float
    scheduled: int = 0
    """Requests scheduled in the measured window."""
    completed: int = 0
    errors: int = 0
    """Requests that failed (connection error or no answer within the run's bound)."""
    non_2xx: int = 0
    achieved_rate: float = 0.0
    latency_ms: dict[str, float] = field(default_factory=dict)
    """From the scheduled send time (coordinated-omission corrected)."""
    service_ms: dict[str, float] = field(default_factory=dict)
    """From the actual send time."""
    lag_ms: dict[str, float] = field(default_factory=dict)
    """Actual send time minus scheduled send time."""


class _Connection(asyncio.Protocol):
    """One keep-alive connection; one request in flight at a time."""

    def __init__(self) -> None:
        self._parser = httptools.HttpResponseParser(self)
        self._transport: asyncio.Transport | None = None
        self._waiter: asyncio.Future[int] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports implement asyncio.Transport without subclassing it.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserError as exc:
            self._fail(exc)

    def on_message_complete(self) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(self._parser.get_status_code())

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._fail(exc or ConnectionResetError("connection closed by the server"))

    def _fail(self, exc: BaseException) -> None:
        waiter, self._waiter = self._waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(exc)
        if self._transport is not None:
            self._transport.close()

    @property
    def open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    async def request(self, data: bytes) -> int:
        if self._transport is None:
            raise ConnectionResetError("connection closed by the server")
        waiter: asyncio.Future[int] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        self._transport.write(data)
        return await waiter

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()


async def _connect(host: str, port: int) -> _Connection:
    loop = asyncio.get_running_loop()
    _, protocol = await loop.create_connection(_Connection, host, port)
    return protocol


async def _wait_until(when: float) -> None:
    delay = when - time.perf_counter()
    if delay > _SPIN_WINDOW:
        await asyncio.sleep(delay - _SPIN_WINDOW)
    while time.perf_counter() < when:
        await asyncio.sleep(0)


class _Recorder:
    __slots__ = ("lag", "latency", "non_2xx", "service")

    def __init__(self) -> None:
        self.latency: list[float] = []
        self.service: list[float] = []
        self.lag: list[float] = []
        self.non_2xx = 0


async def _drive(
    host: str,
    port: int,
    request: bytes,
    *,
    first: int,
    stride: int,
    total: int,
    measured_from: int,
    start: float,
    interval: float,
    recorder: _Recorder,
) -> None:
    conn: _Connection | None = None
    try:
        for k in range(first, total, stride):
            scheduled = start + k * interval
            await _wait_until(scheduled)
            sent = time.perf_counter()
            try:
                if conn is None or not conn.open:
                    conn = await _connect(host, port)
                status = await conn.request(request)
            except (OSError, httptools.HttpParserError):
                # Counted as an error: it never reaches the recorder.
                conn = None
                continue
            done = time.perf_counter()
            if k < measured_from:
                continue
            recorder.latency.append(done - scheduled)
            recorder.service.append(done - sent)
            recorder.lag.append(sent - scheduled)
            if not 200 <= status < 300:
                recorder.non_2xx += 1
    finally:
        if conn is not None:
            conn.close()


async def run_load(
    url: str,
    *,
    rate: float,
    connections: int,
    duration: float,
    warmup: float = 1.0,
    headers: Sequence[tuple[str, str]] = (),
) -> LoadResult:
    """Send ``GET url`` at ``rate`` per second for ``warmup + duration`` seconds; the first
    ``warmup`` seconds are not recorded."""
    parts = urlsplit(url)
    if parts.scheme != "http" or parts.hostname is None:
        raise ValueError(f"only http:// URLs are supported, got {url!r}")
    host, port = parts.hostname, parts.port or 80
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    head = [f"GET {target} HTTP/1.1", f"Host: {parts.netloc}", "User-Agent: bastion-bench"]
    head += [f"{name}: {value}" for name, value in headers]
    request = ("\r\n".join(head) + "\r\n\r\n").encode("latin-1")

    interval = 1.0 / rate
    measured_from = round(warmup * rate)
    total = measured_from + round(duration * rate)
    recorder = _Recorder()
    start = time.perf_counter() + 0.05
    drivers = [
        asyncio.ensure_future(
            _drive(
                host,
                port,
                request,
                first=i,
                stride=connections,
                total=total,
                measured_from=measured_from,
                start=start,
                interval=interval,
                recorder=recorder,
            )
        )
        for i in range(connections)
    ]
    done, pending = await asyncio.wait(drivers, timeout=warmup + duration + _GRACE)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    for task in done:
        task.result()  # a driver's own failure is a bug of the generator: surface it

    scheduled = total - measured_from
    completed = len(recorder.latency)
    return LoadResult(
        url=url,
        rate=rate,
        connections=connections,
        duration=duration,
        warmup=warmup,
        scheduled=scheduled,
        completed=completed,
        errors=scheduled - completed,
        non_2xx=recorder.non_2xx,
        achieved_rate=completed / duration if duration else 0.0,
        latency_ms=summarize(recorder.latency),
        service_ms=summarize(recorder.service),
        lag_ms=summarize(recorder.lag),
    )


def _parse_header(value: str) -> tuple[str, str]:
    name, sep, rest = value.partition(":")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"header must be 'Name: value', got {value!r}")
    return name.strip(), rest.strip()


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__)
    parser.add_argument("--url", required=True)
    parser.add_argument("--rate", type=float, default=1000.0, help="requests per second")
    parser.add_argument("--connections", type=int, default=16)
    parser.add_argument("--duration", type=float, default=10.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="unrecorded seconds first")
    parser.add_argument("-H", "--header", type=_parse_header, action="append", default=[])
    args = parser.parse_args(argv)
    if args.rate <= 0 or args.connections < 1 or args.duration <= 0 or args.warmup < 0:
        parser.error("rate and duration must be positive, connections at least 1")
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    result = runner(
        run_load(
            args.url,
            rate=args.rate,
            connections=args.connections,
            duration=args.duration,
            warmup=args.warmup,
            headers=args.header,
        )
    )
    json.dump(asdict(result), sys.stdout)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
