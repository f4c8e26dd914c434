"""Keep-alive connection pools per upstream origin, and the deadline ticker of the client.

Idle connections are reused last-in first-out (the warmest first); the oldest idle ones are
closed once they exceed the keep-alive timeout. At most ``pool_size`` idle connections are kept
per origin; busy connections are not bounded here (load shedding bounds the requests in flight).
A connection the upstream closes while idle leaves the pool at once, so a stale connection is
only met in the short race between the upstream's close and its arrival.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl

from bastion.proxy.client import UpstreamConnection, UpstreamError

__all__ = ["ConnectionPool", "UpstreamClient"]

_SWEEP_INTERVAL = 1.0
"""Seconds between sweeps of expired idle connections."""


class ConnectionPool:
    """Connections to one origin (scheme, host, port)."""

    __slots__ = (
        "_client",
        "_host",
        "_idle",
        "_port",
        "_server_hostname",
        "_ssl",
        "connections_opened",
    )

    def __init__(
        self,
        client: UpstreamClient,
        host: str,
        port: int,
        ssl_context: ssl.SSLContext | None,
    ) -> None:
        self._client = client
        self._host = host
        self._port = port
        self._ssl = ssl_context
        self._server_hostname = host if ssl_context is not None else None
        self._idle: list[UpstreamConnection] = []
        self.connections_opened = 0
        """Connections opened over the pool's life (reuse shows as a low number)."""

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    def acquire_idle(self) -> UpstreamConnection | None:
        """The most recently released live connection, or ``None``."""
        idle = self._idle
        while idle:
            conn = idle.pop()
            transport = conn.transport
            if transport is None or transport.is_closing() or conn.error is not None:
                continue
            conn.busy = True
            conn.reused = True
            self._client.busy.add(conn)
            return conn
        return None

    async def connect(self, connect_timeout: float) -> UpstreamConnection:
        """Open a new connection within ``connect_timeout`` seconds (``0``: no limit); failures
        raise ``UpstreamError("connect")``."""
        loop = self._client.loop
        try:
            async with asyncio.timeout(connect_timeout or None):
                _, conn = await loop.create_connection(
                    lambda: UpstreamConnection(self, loop),
                    self._host,
                    self._port,
                    ssl=self._ssl,
                    server_hostname=self._server_hostname,
                )
        except TimeoutError:
            raise UpstreamError("connect", "connect timed out") from None
        except (OSError, ssl.SSLError) as exc:
            raise UpstreamError("connect", f"connect failed: {exc}") from None
        self.connections_opened += 1
        conn.busy = True
        conn.reused = False
        self._client.busy.add(conn)
        return conn

    def release(self, conn: UpstreamConnection) -> None:
        """Return ``conn`` after its exchange: kept idle when reusable, else closed."""
        conn.busy = False
        self._client.busy.discard(conn)
        if conn.reusable and len(self._idle) < self._client.pool_size and not self._client.closed:
            conn.idle_since = self._client.loop.time()
            self._idle.append(conn)
            return
        if conn.complete and conn.error is None:
            conn.close()
        else:
            conn.fail(UpstreamError("reset", "exchange abandoned"))

    def discard(self, conn: UpstreamConnection) -> None:
        """Drop ``conn`` whatever its state (failed or abandoned exchange)."""
        conn.busy = False
        self._client.busy.discard(conn)
        conn.fail(UpstreamError("reset", "exchange abandoned"))

    def forget(self, conn: UpstreamConnection) -> None:
        """Called by a connection that closed: it must never be handed out again."""
        if not conn.busy:
            with contextlib.suppress(ValueError):
                self._idle.remove(conn)

    def sweep(self, now: float) -> None:
        """Close idle connections past the keep-alive timeout (the oldest sit first)."""
        idle = self._idle
        limit = self._client.keepalive_timeout
        while idle and now - idle[0].idle_since >= limit:
            idle.pop(0).close()

    def close(self) -> None:
        idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class UpstreamClient:
    """Every pool of the gateway, plus one ticker that enforces read deadlines.

    The ticker scans the busy connections a few times per read timeout instead of arming a
    timer per wait, which keeps timer churn off the request path.
    """

    __slots__ = (
        "_ca_file",
        "_handle",
        "_last_sweep",
        "_loop",
        "_pools",
        "_tick",
        "_tls",
        "busy",
        "closed",
        "keepalive_timeout",
        "pool_size",
    )

    def __init__(
        self,
        *,
        pool_size: int,
        keepalive_timeout: float,
        tick: float,
        ca_file: str | None = None,
    ) -> None:
        self.pool_size = pool_size
        self._ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self.keepalive_timeout = keepalive_timeout
        self._tick = tick
        self._pools: dict[tuple[str, str, int], ConnectionPool] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._handle: asyncio.TimerHandle | None = None
        self._last_sweep = 0.0
        self.busy: set[UpstreamConnection] = set()
        self.closed = False

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        if self._loop is None:
            raise RuntimeError("the upstream client is not started")
        return self._loop

    @property
    def tls_context(self) -> ssl.SSLContext:
        """The client TLS context for ``https://`` upstreams (verifying, HTTP/1.1 by ALPN)."""
        if self._tls is None:
            context = ssl.create_default_context(cafile=self._ca_file)
            context.set_alpn_protocols(["http/1.1"])
            self._tls = context
        return self._tls

    def pool(self, scheme: str, host: str, port: int) -> ConnectionPool:
        """The pool of one origin (shared by every route pointing at it)."""
        key = (scheme, host, port)
        pool = self._pools.get(key)
        if pool is None:
            context = self.tls_context if scheme == "https" else None
            pool = self._pools[key] = ConnectionPool(self, host, port, context)
        return pool

    def start(self) -> None:
        """Bind to the running loop and start the deadline ticker."""
        self._loop = asyncio.get_running_loop()
        self.closed = False
        self._last_sweep = self._loop.time()
        self._handle = self._loop.call_later(self._tick, self._on_tick)

    def close(self) -> None:
        """Stop the ticker and close every connection."""
        self.closed = True
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        for pool in self._pools.values():
            pool.close()
        for conn in list(self.busy):
            conn.fail(UpstreamError("reset", "gateway shutting down"))
        self.busy.clear()

    def _on_tick(self) -> None:
        loop = self.loop
        now = loop.time()
        expired = [c for c in self.busy if c.deadline and now >= c.deadline]
        for conn in expired:
            conn.fail(UpstreamError("timeout", "upstream read timed out", received=conn.received))
        if now - self._last_sweep >= _SWEEP_INTERVAL:
            self._last_sweep = now
            for pool in self._pools.values():
                pool.sweep(now)
        if not self.closed:
            self._handle = loop.call_later(self._tick, self._on_tick)
