"""OpenTelemetry tracing: a server span per request, optional child spans per stage, a client
span around each upstream exchange, and W3C trace context in and out.

This module (and with it the OpenTelemetry SDK) is imported only when ``[tracing]`` is enabled;
otherwise the engine builds no tracing stage, the proxy forwards without a client span, and no
request pays for any of it.

- :class:`TracingStage` sits outside the request-id stage, so the server span covers the whole
  exchange and the access-log line written at its end carries the trace ids. Its name is
  ``{method} {http.route}`` (the matched route's path pattern, never the raw path).
- The incoming ``traceparent``/``tracestate`` becomes the parent only when the peer is trusted
  (``tracing.trust_incoming``); otherwise the span starts from an empty context (neither the
  client nor an ambient span chooses its trace ids or sampling), ``tracestate`` is never parsed,
  and a well-formed ``traceparent`` (checked here, W3C format) is kept as a link of bare ids.
- The wrapped app sees the server span's ``traceparent`` (and ``tracestate``) in place of the
  client's, as an upstream does behind the gateway.
- A request Bastion refuses gets ``bastion.decision`` (the problem code) on the server span, plus
  the policy or the inspection categories and rules that decided it; with ``stage_spans``, the
  refusing stage's span carries it too (``bastion.decision.stage``).
- :class:`TracedForwarder` and :class:`TracedRelay` wrap the gateway's HTTP forwarder and
  WebSocket relay in a client span and send that span's context upstream as ``traceparent``
  (and ``tracestate``), replacing whatever the client sent.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SpanExporter,
)
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased
from opentelemetry.trace import Link, Span, SpanContext, SpanKind, Status, StatusCode, TraceFlags
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from bastion import __version__
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.problems import BastionError
from bastion.http.state import RequestState
from bastion.observe.config import TracingConfig
from bastion.observe.logging import TRACE_IDS
from bastion.pipeline.errors import PROBLEM_KEY

if TYPE_CHECKING:
    from bastion.deps import Deps
    from bastion.proxy.http import HttpForwarder
    from bastion.proxy.upstream import UpstreamTarget
    from bastion.proxy.websocket import WebSocketRelay

__all__ = [
    "DECISION_STAGE_KEY",
    "StageSpan",
    "TracedForwarder",
    "TracedRelay",
    "Tracing",
    "TracingStage",
    "decision_attributes",
    "stage_name",
    "traceparent",
    "untrusted_link",
]

DECISION_STAGE_KEY = "bastion.decision.stage"
"""``scope["state"]`` key: the stage a refusal passed first (set by :class:`StageSpan`)."""

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)
_RATELIMIT_REPORT = "bastion.ratelimit.report"
_INSPECT_VERDICT = "bastion.inspect"
_BANS_POLICY = "_bans"
_MAX_NAMES = 4096
"""Span names kept ready (method x route: bounded by configuration, but capped anyway)."""
_CAMEL = re.compile(r"(?<!^)(?=[A-Z])")
_MAX_ATTRIBUTE = 2048
"""Characters kept of a string attribute (a path as long as the server allows is cut)."""
_TRACEPARENT = re.compile(
    rb"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-[\x21-\x7e]*)?"
)
"""W3C ``traceparent``: version, trace id, parent id, flags (later versions may append fields)."""
_MAX_TRACEPARENT = 512
_UNTRUSTED_LINK = {"bastion.link": "untrusted_parent"}
_NOISY_LOGGERS = ("opentelemetry.trace.span", "opentelemetry.trace.propagation.tracecontext")
"""They warn about each malformed ``tracestate``, quoting it: client text on every request."""
_TRACE_HEADERS = (b"traceparent", b"tracestate")


def stage_name(app: object) -> str:
    """A stage's span name part from its class: ``SecurityHeadersStage`` → ``security_headers``."""
    name = type(app).__name__.lstrip("_")
    if name.endswith("Stage") and name != "Stage":
        name = name[: -len("Stage")]
    return _CAMEL.sub("_", name).lower()


def traceparent(span_context: SpanContext) -> bytes:
    """The W3C ``traceparent`` value of ``span_context``."""
    return b"00-%032x-%016x-%02x" % (
        span_context.trace_id,
        span_context.span_id,
        span_context.trace_flags,
    )


def untrusted_link(value: bytes) -> Link | None:
    """A link to the context of a client's ``traceparent`` when it is well formed (W3C Trace
    Context §3.2: lower-case hex, version not ``ff``, version ``00`` with exactly four fields,
    ids not all zero); only the ids are kept (no flags, no ``tracestate``)."""
    if len(value) > _MAX_TRACEPARENT:
        return None
    match = _TRACEPARENT.fullmatch(value.strip(b" \t"))
    if match is None:
        return None
    version, trace_hex, span_hex, _flags, rest = match.groups()
    if version == b"ff" or (version == b"00" and rest is not None):
        return None
    trace_id, span_id = int(trace_hex, 16), int(span_hex, 16)
    if not trace_id or not span_id:
        return None
    context = SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(0))
    return Link(context, _UNTRUSTED_LINK)


def _span_line(span: ReadableSpan) -> str:
    line: str = span.to_json(indent=None)
    return line + "\n"


def _route_pattern(prefix: str) -> str:
    """A route's ``http.route``: its prefix as the path pattern it matches."""
    return "/**" if prefix == "/" else prefix + "/**"


class Tracing:
    """The tracer of one engine: provider, sampler, exporter and propagator, built from
    ``[tracing]``. More span processors can be added to :attr:`provider`."""

    def __init__(self, config: TracingConfig) -> None:
        self.config = config
        for name in _NOISY_LOGGERS:
            logging.getLogger(name).setLevel(logging.ERROR)
        self.provider = TracerProvider(
            resource=Resource.create(
                {"service.name": config.service_name, "service.version": __version__}
            ),
            sampler=ParentBased(TraceIdRatioBased(config.sample_ratio)),
            # The path is recorded before the size limits run: no attribute may carry more.
            span_limits=SpanLimits(max_attribute_length=_MAX_ATTRIBUTE),
        )
        processor = self._processor(config)
        if processor is not None:
            self.provider.add_span_processor(processor)
        self.tracer = self.provider.get_tracer("bastion", __version__)
        self.propagator = TraceContextTextMapPropagator()

    @staticmethod
    def _processor(config: TracingConfig) -> SpanProcessor | None:
        if config.exporter == "none":
            return None
        if config.exporter == "console":
            # One line per span, on standard error: standard output carries the JSON log lines
            # through its own buffer, and a span written there could split one of them.
            chosen: SpanExporter = ConsoleSpanExporter(
                service_name=config.service_name, out=sys.stderr, formatter=_span_line
            )
        else:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

            chosen = OTLPSpanExporter(
                endpoint=config.endpoint,
                headers={k: v.get_secret_value() for k, v in config.headers.items()},
                timeout=config.timeout,
            )
        return BatchSpanProcessor(
            chosen,
            max_queue_size=config.max_queue,
            max_export_batch_size=min(512, config.max_queue),
        )

    def server_stage(self, app: ASGIApp, deps: Deps) -> TracingStage:
        """The outermost stage: one server span per request."""
        return TracingStage(app, tracing=self, deps=deps)

    def stage_span(self, app: ASGIApp, name: str | None = None) -> ASGIApp:
        """``app`` in a child span per request when ``stage_spans`` is on; else ``app``."""
        if not self.config.stage_spans:
            return app
        return StageSpan(app, name=name or stage_name(app), tracing=self)

    def forwarder(self, inner: HttpForwarder) -> TracedForwarder:
        """The gateway's HTTP forwarder with a client span and ``traceparent`` injection."""
        return TracedForwarder(inner, tracing=self)

    def relay(self, inner: WebSocketRelay) -> TracedRelay:
        """The gateway's WebSocket relay with a client span and ``traceparent`` injection."""
        return TracedRelay(inner, tracing=self)

    def flush(self) -> None:
        """Export what is still queued (the provider itself shuts down at process exit)."""
        self.provider.force_flush(int(self.config.timeout * 1000))


class TracingStage:
    """Opens the server span of each request, binds its ids for the logs, and completes it with
    the route, status, client and decision when the request is over."""

    def __init__(self, app: ASGIApp, *, tracing: Tracing, deps: Deps) -> None:
        self.app = app
        self._tracer = tracing.tracer
        self._propagator = tracing.propagator
        self._trust = tracing.config.trust_incoming
        self._peers = deps.client_ips
        self._names: dict[tuple[str, str | None], tuple[str, str | None]] = {}

    def _trusted(self, scope: Scope) -> bool:
        if self._trust == "all":
            return True
        if self._trust == "none":
            return False
        client = scope.get("client")
        return self._peers.peer(client[0] if client else None)[1]

    def _incoming(self, scope: Scope) -> tuple[otel_context.Context | None, list[Link] | None]:
        """The parent context and links of a request's server span.

        Trust is decided first: a trusted peer's ``traceparent``/``tracestate`` become the parent
        (``None``, the ambient context, when it sent none or two); for anyone else the span
        starts from an empty context and a well-formed ``traceparent`` becomes a bare link."""
        parents: list[bytes] = []
        states: list[bytes] = []
        for name, value in scope["headers"]:
            if name == b"traceparent":
                parents.append(value)
            elif name == b"tracestate":
                states.append(value)
        if not self._trusted(scope):
            link = untrusted_link(parents[0]) if len(parents) == 1 else None
            return otel_context.Context(), [link] if link is not None else None
        if len(parents) != 1:
            return None, None  # none, or two parents: neither is believed
        carrier = {"traceparent": parents[0].decode("latin-1")}
        if states:
            # A list split over several fields is one list (RFC 9110 §5.3).
            carrier["tracestate"] = b",".join(states).decode("latin-1")
        extracted = self._propagator.extract(carrier)
        if not trace.get_current_span(extracted).get_span_context().is_valid:
            return None, None
        return extracted, None

    def _name(self, method: str, state: RequestState | None) -> tuple[str, str | None]:
        """Span name and ``http.route`` of a request (cached per method and route)."""
        route = state.route if state is not None else None
        label = method if method in _KNOWN_METHODS else "HTTP"
        key = (label, route.name if route is not None else None)
        cached = self._names.get(key)
        if cached is None:
            pattern = _route_pattern(route.prefix) if route is not None else None
            cached = (f"{label} {pattern}" if pattern else label, pattern)
            if len(self._names) < _MAX_NAMES:
                self._names[key] = cached
        return cached

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        method: str = scope.get("method", "GET")
        parent, links = self._incoming(scope)
        span = self._tracer.start_span(
            method if method in _KNOWN_METHODS else "HTTP",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={
                "http.request.method": method if method in _KNOWN_METHODS else "_OTHER",
                "url.path": scope["path"],
                "url.scheme": scope.get("scheme", "http"),
                "network.protocol.version": scope.get("http_version", "1.1"),
            },
            links=links,
            record_exception=False,
            set_status_on_exception=False,
        )
        span_context = span.get_span_context()
        # The app behind sees this span's context, never the client's (as an upstream does).
        headers = [(n, v) for n, v in scope["headers"] if n not in _TRACE_HEADERS]
        headers.append((b"traceparent", traceparent(span_context)))
        if span_context.trace_state:
            headers.append((b"tracestate", span_context.trace_state.to_header().encode("latin-1")))
        scope["headers"] = headers
        token = otel_context.attach(trace.set_span_in_context(span, parent))
        ids = TRACE_IDS.set(
            (
                f"{span_context.trace_id:032x}",
                f"{span_context.span_id:016x}",
                span_context.trace_flags.sampled,
            )
        )
        try:
            await self.app(scope, receive, send)
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            TRACE_IDS.reset(ids)
            otel_context.detach(token)
            if span.is_recording():
                self._complete(span, scope, method)
            span.end()

    def _complete(self, span: Span, scope: Scope, method: str) -> None:
        shared: dict[str, Any] = scope.get("state") or {}
        state: RequestState | None = shared.get("bastion")
        name, pattern = self._name(method, state)
        span.update_name(name)
        if state is None:
            return
        attributes: dict[str, Any] = {
            "http.response.status_code": state.status,
            "client.address": state.client_ip,
            "bastion.request_id": state.request_id,
        }
        if pattern is not None and state.route is not None:
            attributes["http.route"] = pattern
            attributes["bastion.route"] = state.route.name
        code = shared.get(PROBLEM_KEY)
        if code is not None:
            attributes.update(decision_attributes(shared, code))
        span.set_attributes(attributes)
        if state.status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(state.status))


def decision_attributes(shared: Mapping[str, Any], code: str) -> dict[str, Any]:
    """Span attributes of a refusal: the problem code, and the policy, inspection rules or
    stage that decided it when the request's state tells."""
    attributes: dict[str, Any] = {"bastion.decision": code}
    stage = shared.get(DECISION_STAGE_KEY)
    if stage is not None:
        attributes["bastion.decision.stage"] = stage
    if code == "rate_limited":
        report = shared.get(_RATELIMIT_REPORT)
        if report is not None:
            policies = sorted(
                {
                    check.rule.policy
                    for checks, decisions in report.batches
                    for check, decision in zip(checks, decisions, strict=False)
                    if check.enforce and not decision.allowed
                }
            )
            if policies:
                attributes["bastion.decision.policy"] = policies
    elif code == "client_banned":
        attributes["bastion.decision.policy"] = [_BANS_POLICY]
    elif code == "request_blocked":
        verdict = shared.get(_INSPECT_VERDICT)
        if verdict is not None and verdict.matches:
            attributes["bastion.decision.categories"] = sorted(
                {match.category for match in verdict.matches}
            )
            attributes["bastion.decision.rules"] = sorted({match.rule for match in verdict.matches})
            attributes["bastion.decision.score"] = verdict.score
    return attributes


class StageSpan:
    """One pipeline stage in a child span (``stage_spans``); the first span a refusal passes
    through names the stage that raised it."""

    def __init__(self, app: ASGIApp, *, name: str, tracing: Tracing) -> None:
        self.app = app
        self.name = name
        self._span_name = "bastion." + name
        self._tracer = tracing.tracer
        self._attributes = {"bastion.stage": name}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        span = self._tracer.start_span(
            self._span_name,
            attributes=self._attributes,
            record_exception=False,
            set_status_on_exception=False,
        )
        token = otel_context.attach(trace.set_span_in_context(span))
        try:
            await self.app(scope, receive, send)
        except BastionError as error:
            shared = scope.get("state")
            if shared is not None and DECISION_STAGE_KEY not in shared:
                shared[DECISION_STAGE_KEY] = self.name
                span.set_attributes(
                    {"bastion.decision": error.code, "bastion.decision.stage": self.name}
                )
            raise
        except Exception as exc:
            span.record_exception(exc)
            span.set_status(Status(StatusCode.ERROR, type(exc).__name__))
            raise
        finally:
            otel_context.detach(token)
            span.end()


class _UpstreamSpans:
    """Client spans around upstream exchanges, with the attributes of each upstream."""

    __slots__ = ("_targets", "_tracer")

    def __init__(self, tracing: Tracing) -> None:
        self._tracer = tracing.tracer
        self._targets: dict[UpstreamTarget, dict[str, Any]] = {}

    def _target_attributes(self, target: UpstreamTarget) -> dict[str, Any]:
        """``server.address``, ``server.port`` and ``bastion.route`` of an upstream."""
        attributes = self._targets.get(target)
        if attributes is None:
            parts = urlsplit(target.route.config.upstream)
            default_port = 443 if parts.scheme in ("https", "wss") else 80
            attributes = {
                "server.address": parts.hostname or "",
                "server.port": parts.port or default_port,
                "bastion.route": target.name,
            }
            if len(self._targets) < _MAX_NAMES:
                self._targets[target] = attributes
        return attributes

    def _start(self, method: str, target: UpstreamTarget) -> tuple[Span, bytes, bytes | None]:
        """A client span, and the ``traceparent`` and ``tracestate`` values of its context."""
        known = method in _KNOWN_METHODS
        span = self._tracer.start_span(
            method if known else "HTTP",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": method if known else "_OTHER",
                **self._target_attributes(target),
            },
            record_exception=False,
            set_status_on_exception=False,
        )
        span_context = span.get_span_context()
        trace_state = span_context.trace_state
        state = trace_state.to_header().encode("latin-1") if trace_state else None
        return span, traceparent(span_context), state


def _failed(span: Span, exc: BaseException) -> None:
    if isinstance(exc, BastionError):
        span.set_attribute("error.type", exc.code)
        span.set_status(Status(StatusCode.ERROR, exc.code))
    else:
        span.record_exception(exc)
        span.set_status(Status(StatusCode.ERROR, type(exc).__name__))


def _answered(span: Span, status: int) -> None:
    if status:
        span.set_attribute("http.response.status_code", status)
        if status >= 500:
            span.set_status(Status(StatusCode.ERROR))
            span.set_attribute("error.type", str(status))


class TracedForwarder(_UpstreamSpans):
    """The gateway's HTTP forwarder inside a client span whose context goes upstream."""

    __slots__ = ("_inner",)

    def __init__(self, inner: HttpForwarder, *, tracing: Tracing) -> None:
        super().__init__(tracing)
        self._inner = inner

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: RequestState,
        target: UpstreamTarget,
    ) -> None:
        span, parent, trace_state = self._start(scope["method"], target)
        header = b"traceparent: " + parent
        if trace_state is not None:
            header += b"\r\ntracestate: " + trace_state
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._inner(scope, receive, observed_send, state, target, trace_header=header)
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            _answered(span, status)
            span.end()


class TracedRelay(_UpstreamSpans):
    """The gateway's WebSocket relay inside a client span (the whole session) whose context goes
    upstream with the handshake."""

    __slots__ = ("_inner",)

    def __init__(self, inner: WebSocketRelay, *, tracing: Tracing) -> None:
        super().__init__(tracing)
        self._inner = inner

    async def __call__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        state: RequestState,
        target: UpstreamTarget,
    ) -> None:
        span, parent, trace_state = self._start("GET", target)
        headers = [("traceparent", parent.decode("latin-1"))]
        if trace_state is not None:
            headers.append(("tracestate", trace_state.decode("latin-1")))
        status = 0

        async def observed_send(message: Message) -> None:
            nonlocal status
            kind = message["type"]
            if kind == "websocket.accept":
                status = 101
            elif kind == "websocket.http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self._inner(scope, receive, observed_send, state, target, trace_headers=headers)
        except Exception as exc:
            _failed(span, exc)
            raise
        finally:
            _answered(span, status)
            span.end()
