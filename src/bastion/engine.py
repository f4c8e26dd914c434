"""Builds the protection pipeline from :class:`Settings` and owns start-up and shut-down.

Reading :func:`build_pipeline` top to bottom tells the whole request path (DESIGN.md §1).
Stages a configuration disables are not in the chain at all.
"""

from __future__ import annotations

import asyncio
import gc
import time
from collections.abc import Callable
from typing import Any

from bastion.audit.api import admin_audit_endpoint
from bastion.audit.events import AuditSink, LoggingAuditSink
from bastion.audit.log import AuditLog
from bastion.audit.sinks import AuditCopies
from bastion.auth.wiring import Identity
from bastion.cache.http.wiring import http_cache_enabled, http_cache_stage
from bastion.cache.tiered import Cache
from bastion.cache.wiring import build_cache
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.framework import adopt_error_handling
from bastion.http.principal import PrincipalResolver
from bastion.http.problems import BastionError
from bastion.http.routes import RouteTable
from bastion.inspect.wiring import Inspection
from bastion.observe.access import RequestObserver
from bastion.observe.alerts import AlertEngine
from bastion.observe.logging import access_output, get_logger
from bastion.observe.metrics import Metrics
from bastion.pipeline.client_ip import ClientIpStage
from bastion.pipeline.compression import CompressionStage
from bastion.pipeline.cors import CorsStage
from bastion.pipeline.csrf import CsrfKeyRing, CsrfStage
from bastion.pipeline.errors import ErrorStage
from bastion.pipeline.headers import SecurityHeadersStage
from bastion.pipeline.limits import LimitsStage
from bastion.pipeline.probes import ProbeStage
from bastion.pipeline.request_id import RequestIdStage
from bastion.pipeline.shedding import SheddingStage
from bastion.ratelimit.wiring import RateLimiting
from bastion.settings import Settings
from bastion.store.stores import Stores

__all__ = ["Bastion", "BastionApp", "build_pipeline"]

_log: Any = get_logger("bastion.engine")

Stage = Callable[[ASGIApp], ASGIApp]

_LAZY_START_RETRY = 5.0
"""Seconds between attempts of a lazy start that failed."""


class OwnRoutes:
    """Terminal dispatch: Bastion's own endpoints under the reserved prefix, everything else to
    the wrapped app or the proxy. Capabilities mount their endpoints here: ``mounts`` maps a
    path below the prefix (``/auth``: that path and everything under it) to an ASGI app;
    ``exact`` maps full paths outside the prefix (a second JWKS location) to one."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        prefix: str,
        mounts: dict[str, ASGIApp] | None = None,
        exact: dict[str, ASGIApp] | None = None,
    ) -> None:
        self.app = app
        self._prefix = prefix
        self._prefix_slash = prefix + "/"
        self._mounts = [
            (prefix + path, prefix + path + "/", app) for path, app in (mounts or {}).items()
        ]
        self._exact = dict(exact or {})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            path: str = scope["path"]
            if path == self._prefix or path.startswith(self._prefix_slash):
                for whole, below, mounted in self._mounts:
                    if path == whole or path.startswith(below):
                        await mounted(scope, receive, send)
                        return
                raise BastionError("not_found", "No such Bastion endpoint")
            if self._exact:
                mounted_app = self._exact.get(path)
                if mounted_app is not None:
                    await mounted_app(scope, receive, send)
                    return
        await self.app(scope, receive, send)


def build_pipeline(
    terminal: ASGIApp,
    deps: Deps,
    *,
    observer: RequestObserver,
    readiness: Callable[[], Any],
    csrf_keys: CsrfKeyRing,
    identity: Identity | None = None,
    ratelimit: RateLimiting | None = None,
    inspection: Inspection | None = None,
) -> ASGIApp:
    """Wrap ``terminal`` in the stages ``deps.settings`` enables, outermost first."""
    s = deps.settings
    mounts, exact = identity.endpoints(deps.prefix) if identity is not None else ({}, {})
    if identity is not None and deps.stores is not None:
        mounts["/admin/audit"] = admin_audit_endpoint(deps, identity.service.authorizer)
    stages: list[tuple[bool, Stage]] = [
        (True, lambda a: RequestIdStage(a, config=s.request_id, deps=deps, observer=observer)),
        (s.headers.enabled, lambda a: SecurityHeadersStage(a, config=s.headers, deps=deps)),
        (True, lambda a: ErrorStage(a, deps=deps)),
        (
            bool(s.client_ip.trusted_proxies),
            lambda a: ClientIpStage(a, config=s.client_ip, deps=deps),
        ),
        (True, lambda a: ProbeStage(a, config=s.metrics, deps=deps, readiness=readiness)),
        (
            ratelimit is not None and ratelimit.has_gate,
            lambda a: ratelimit.gate(a, deps) if ratelimit else a,
        ),
        (
            inspection is not None and inspection.has_gate,
            lambda a: inspection.gate(a, deps) if inspection else a,
        ),
        (s.shedding.enabled, lambda a: SheddingStage(a, config=s.shedding, deps=deps)),
        (s.limits.enabled, lambda a: LimitsStage(a, config=s.limits, deps=deps)),
        (s.cors.enabled, lambda a: CorsStage(a, config=s.cors, deps=deps)),
        (s.csrf.enabled, lambda a: CsrfStage(a, config=s.csrf, deps=deps, keyring=csrf_keys)),
        (identity is not None, lambda a: identity.stage(a, deps) if identity else a),
        (
            ratelimit is not None and ratelimit.has_late,
            lambda a: ratelimit.stage(a, deps) if ratelimit else a,
        ),
        (inspection is not None, lambda a: inspection.stage(a, deps) if inspection else a),
        (s.compression.enabled, lambda a: CompressionStage(a, config=s.compression, deps=deps)),
        # Inside compression: entries hold the terminal's own bytes, compressed per request.
        (http_cache_enabled(s.cache.http), lambda a: http_cache_stage(a, deps)),
        (True, lambda a: OwnRoutes(a, prefix=deps.prefix, mounts=mounts, exact=exact)),
    ]
    tracing = deps.tracing
    app = terminal if tracing is None else tracing.stage_span(terminal, "terminal")
    for enabled, stage in reversed(stages):
        if enabled:
            app = stage(app)
            if tracing is not None:
                app = tracing.stage_span(app)
    if tracing is not None:
        # Outside the request-id stage: the span covers the whole exchange, and the access-log
        # line written when it ends carries the trace ids.
        app = tracing.server_stage(app, deps)
    return app


class Bastion:
    """The engine: ``Bastion(settings).wrap(app)`` protects an ASGI app; ``.gateway()`` builds
    the reverse proxy of ``bastion serve``."""

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        principal_resolver: PrincipalResolver | None = None,
        audit: AuditSink | None = None,
    ) -> None:
        """``principal_resolver`` replaces Bastion's own credential verification for the stages
        that need a principal before ``auth`` (an app with its own identity system); ``audit``
        receives security events (default: the durable audit log when ``[audit] enabled``,
        else structured log lines on ``bastion.audit``)."""
        self.settings = settings if settings is not None else Settings()
        self.metrics = Metrics(self.settings.metrics.latency_buckets)
        self.stores = Stores(self.settings.store, on_slow_query=self.metrics.store_slow_query)
        self.audit_log: AuditLog | None = None
        if audit is None and self.settings.audit.enabled:
            self.audit_log = AuditLog.from_stores(
                self.settings.audit, self.stores, metrics=self.metrics
            )
            audit = self.audit_log
        copies = AuditCopies.wrap(
            audit or LoggingAuditSink(),
            file=self.settings.audit.file,
            syslog=self.settings.audit.syslog,
            metrics=self.metrics,
        )
        self.audit_copies = copies if isinstance(copies, AuditCopies) else None
        audit = copies
        self.deps = Deps(
            settings=self.settings,
            metrics=self.metrics,
            routes=RouteTable(self.settings.routes),
            prefix=self.settings.server.prefix,
            stores=self.stores,
            principal_resolver=principal_resolver,
            audit=audit,
        )
        if self.settings.tracing.enabled:
            # Imported only when enabled: with tracing off, the OpenTelemetry SDK never loads.
            from bastion.observe.tracing import Tracing

            self.deps.tracing = Tracing(self.settings.tracing)
        self.alerts: AlertEngine | None = None
        if self.settings.alerts.enabled:
            # Before the capabilities take ``deps.audit``: they keep the sink they were given.
            self.alerts = AlertEngine(self.settings.alerts, self.metrics, routes=self.deps.routes)
            if self.deps.audit is not None:
                self.deps.audit = self.alerts.audit_sink(self.deps.audit)
            if self.alerts.watches_store_errors:
                self.metrics.store_error_listener = self.alerts.store_error
        self.identity: Identity | None = None
        if self.settings.auth.enabled:
            self.identity = Identity(self.settings.auth, self.deps)
            if principal_resolver is None:
                self.deps.principal_resolver = self.identity.resolver
        self.ratelimit: RateLimiting | None = None
        if self.settings.ratelimit.enabled:
            self.ratelimit = RateLimiting(self.settings.ratelimit, self.deps)
        self.inspection: Inspection | None = None
        if Inspection.enabled(self.settings.inspect):
            self.inspection = Inspection(self.settings.inspect, self.deps, ratelimit=self.ratelimit)
        self.cache: Cache = build_cache(self.settings, self.stores, self.metrics)
        """The tiered cache (``[cache]``), for the HTTP cache stage and the application."""
        self.deps.cache = self.cache
        self.csrf_keys = CsrfKeyRing(
            [secret.get_secret_value().encode("utf-8") for secret in self.settings.csrf.secrets]
        )
        access_log = self.settings.logging.access_log
        self._observer = (
            self.alerts.observer(self.metrics, access_log=access_log)
            if self.alerts is not None
            else RequestObserver(self.metrics, access_log=access_log)
        )
        self._observer.configure(self.settings.logging, traced=self.deps.tracing is not None)
        self._started = False
        self._start_lock: asyncio.Lock | None = None
        self._closers: list[Callable[[], Any]] = []

    def _pipeline(self, terminal: ASGIApp) -> ASGIApp:
        return build_pipeline(
            terminal,
            self.deps,
            observer=self._observer,
            readiness=self.readiness,
            csrf_keys=self.csrf_keys,
            identity=self.identity,
            ratelimit=self.ratelimit,
            inspection=self.inspection,
        )

    def wrap(self, app: ASGIApp) -> BastionApp:
        """Protect an ASGI app (Starlette, FastAPI, …) with the configured stages."""
        adopt_error_handling(app)
        return BastionApp(self, self._pipeline(app), inner_lifespan=app)

    def gateway(self) -> BastionApp:
        """The reverse-proxy gateway: the configured stages in front of ``[[routes]]``."""
        from bastion.proxy.gateway import Proxy

        if not self.settings.routes:
            raise ValueError("the gateway needs at least one route (--upstream URL or [[routes]])")
        proxy = Proxy(config=self.settings.proxy, deps=self.deps)
        self._closers.append(proxy.close)
        return BastionApp(self, self._pipeline(proxy), inner_lifespan=None, on_start=proxy.start)

    async def startup(self) -> None:
        """Start the stores (applying migrations when ``store.auto_migrate``) and load keys."""
        if self._started:
            return
        if self._start_lock is None:
            self._start_lock = asyncio.Lock()
        async with self._start_lock:
            if self._started:
                return
            await self.stores.start(migrate=self.settings.store.auto_migrate)
            if self.audit_log is not None:
                await self.audit_log.start()
            if self.audit_copies is not None:
                await self.audit_copies.start()
            if self.settings.csrf.enabled and not self.csrf_keys.keys:
                self.csrf_keys.set(await self.stores.csrf_keys())
            if self.identity is not None:
                await self.identity.service.start()
            if self.ratelimit is not None:
                await self.ratelimit.start()
            if self.inspection is not None:
                await self.inspection.start()
            if self.alerts is not None:
                await self.alerts.start()
            await self.cache.start()
            self._started = True

    async def shutdown(self) -> None:
        """Close what :meth:`startup` and the terminal opened."""
        for close in reversed(self._closers):
            await close()
        if self.alerts is not None:
            try:
                await self.alerts.close()
            except Exception as exc:
                # Alerting must not keep the stores below from closing.
                _log.error("alerts close failed", error=repr(exc))
        if self.identity is not None:
            await self.identity.service.close()
        if self.inspection is not None:
            await self.inspection.close()
        if self.ratelimit is not None:
            await self.ratelimit.close()
        await self.cache.close()
        if self.audit_log is not None:
            # After everything that may still emit, before the database closes.
            await self.audit_log.close()
        if self.audit_copies is not None:
            # Last: an event refused by the closed log above still reaches its copies.
            await self.audit_copies.close()
        await self.stores.close()
        if self.deps.tracing is not None:
            # The export blocks on the network (up to tracing.timeout): off the event loop.
            await asyncio.to_thread(self.deps.tracing.flush)
        output = access_output()
        if output is not None:
            output.flush()
        self._started = False

    async def readiness(self) -> dict[str, dict[str, Any]]:
        """Per-store readiness checks for ``/_bastion/ready``."""
        try:
            await self.startup()
        except Exception as exc:
            _log.warning("start-up failed during readiness check", error=str(exc))
            return {"startup": {"status": "error", "error": type(exc).__name__}}
        return await self.stores.checks()


def settle_heap() -> None:
    """Move everything alive after start-up out of the cyclic collector's view.

    Modules, settings, compiled patterns and pools live for the whole process; without this,
    every collection of the older generations walks them again, which cost a sixth of the
    gateway's CPU per request (measured with perf). Allocation-heavy request paths then trigger
    collections that only see per-request garbage.
    """
    gc.collect()
    gc.freeze()


class BastionApp:
    """The ASGI application Bastion hands to the server: the pipeline plus lifespan handling.

    On ``lifespan.startup`` Bastion starts first, then the wrapped app's own lifespan runs;
    shut-down happens in reverse, and a start-up failure stops the server from starting. A
    server that sends no lifespan events gets a lazy start on the first request instead; if that
    fails, requests are still served (``/_bastion/ready`` reports the failure) and the start is
    retried at most every few seconds.
    """

    def __init__(
        self,
        engine: Bastion,
        pipeline: ASGIApp,
        *,
        inner_lifespan: ASGIApp | None,
        on_start: Callable[[], Any] | None = None,
    ) -> None:
        self.engine = engine
        self.pipeline = pipeline
        self._inner = inner_lifespan
        self._on_start = on_start
        self._ready = False
        self._retry_at = 0.0

    async def _start(self) -> None:
        await self.engine.startup()
        if self._on_start is not None:
            await self._on_start()
        self._ready = True

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        if not self._ready and time.monotonic() >= self._retry_at:
            try:
                await self._start()
            except Exception as exc:
                self._retry_at = time.monotonic() + _LAZY_START_RETRY
                _log.error("start-up failed; serving without it", error=str(exc))
        await self.pipeline(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        if message["type"] != "lifespan.startup":
            return
        try:
            await self._start()
        except Exception as exc:
            _log.error("start-up failed", error=str(exc))
            await send({"type": "lifespan.startup.failed", "message": str(exc)})
            raise
        inner = _InnerLifespan(self._inner, scope) if self._inner is not None else None
        if inner is not None:
            failure = await inner.startup()
            if failure is not None:
                await self.engine.shutdown()
                await send({"type": "lifespan.startup.failed", "message": failure})
                # Like Starlette's router: the server learns of the failure from the message and
                # the exception both (uvicorn then exits without logging it twice).
                raise RuntimeError(failure)
        settle_heap()
        await send({"type": "lifespan.startup.complete"})
        message = await receive()
        failure = await inner.shutdown() if inner is not None else None
        await self.engine.shutdown()
        if failure is not None:
            await send({"type": "lifespan.shutdown.failed", "message": failure})
        else:
            await send({"type": "lifespan.shutdown.complete"})


class _InnerLifespan:
    """Drives the wrapped app's lifespan protocol from Bastion's own."""

    def __init__(self, app: ASGIApp, scope: Scope) -> None:
        self._app = app
        self._scope = scope
        self._to_app: asyncio.Queue[Message] = asyncio.Queue()
        self._from_app: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None
        self._unsupported = False

    async def _run(self) -> None:
        try:
            await self._app(self._scope, self._to_app.get, self._from_app.put)
        except Exception as exc:
            # An app without lifespan support raises on the lifespan scope: that is allowed.
            self._unsupported = True
            _log.debug("wrapped app does not support lifespan", error=str(exc))
        finally:
            await self._from_app.put({"type": "_ended"})

    async def _exchange(self, message: Message) -> Message:
        await self._to_app.put(message)
        return await self._from_app.get()

    async def startup(self) -> str | None:
        self._task = asyncio.create_task(self._run())
        reply = await self._exchange({"type": "lifespan.startup"})
        if reply["type"] == "lifespan.startup.failed":
            return str(reply.get("message", "the wrapped app failed to start"))
        return None

    async def shutdown(self) -> str | None:
        if self._unsupported or self._task is None or self._task.done():
            return None
        reply = await self._exchange({"type": "lifespan.shutdown"})
        await self._task
        if reply["type"] == "lifespan.shutdown.failed":
            return str(reply.get("message", "the wrapped app failed to shut down"))
        return None
