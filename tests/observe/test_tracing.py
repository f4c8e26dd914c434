"""Tracing: the span tree of a request, its attributes, refusal decisions, trace context in and
out, and nothing at all when tracing is off."""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import aiohttp
import httpx
import orjson
import pytest
from bench.micro import pipeline_chain
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from bastion import Bastion, BastionError, Settings
from bastion.engine import BastionApp
from bastion.inspect.core import Location, Match
from bastion.inspect.engine import InspectionVerdict
from bastion.observe.tracing import (
    DECISION_STAGE_KEY,
    StageSpan,
    TracingStage,
    decision_attributes,
    stage_name,
)
from problem_assertions import assert_problem
from proxy.harness import serve_asgi, upstream_app

TRACE_ID = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT_ID = "00f067aa0ba902b7"
TRACEPARENT = f"00-{TRACE_ID}-{PARENT_ID}-01"


async def hello(request: Request) -> Response:
    return PlainTextResponse("hello")


async def unavailable(request: Request) -> Response:
    raise BastionError("upstream_timeout", "took too long")


APP = Starlette(
    routes=[
        Route("/hello", hello),
        Route("/api/items/{item}", hello),
        Route("/api/fail", unavailable),
    ]
)


def settings(tmp_path: Path, **overrides: Any) -> Settings:
    tracing = {"enabled": True, "exporter": "none", **overrides.pop("tracing", {})}
    base: dict[str, Any] = {
        "store": {"database_url": f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"},
        "tracing": tracing,
    }
    base.update(overrides)
    return Settings(**base)


class Traced:
    """An engine with an in-memory span exporter and an HTTP client for its app."""

    def __init__(self, engine: Bastion, app: BastionApp, client_ip: str) -> None:
        self.engine = engine
        self.app = app
        self.exporter = InMemorySpanExporter()
        assert engine.deps.tracing is not None
        engine.deps.tracing.provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.client = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app, client=(client_ip, 40000)),
            base_url="http://testserver",
        )

    def spans(self) -> list[ReadableSpan]:
        return list(self.exporter.get_finished_spans())

    def server_span(self) -> ReadableSpan:
        servers = [s for s in self.spans() if s.kind == SpanKind.SERVER]
        assert len(servers) == 1, [s.name for s in self.spans()]
        return servers[0]

    async def close(self) -> None:
        await self.client.aclose()
        await self.engine.shutdown()


MakeTraced = Callable[..., Traced]


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[MakeTraced]:
    made: list[Traced] = []

    def make(peer: str = "203.0.113.9", gateway: bool = False, **overrides: Any) -> Traced:
        engine = Bastion(settings(tmp_path, **overrides))
        app = engine.gateway() if gateway else engine.wrap(APP)
        result = Traced(engine, app, peer)
        made.append(result)
        return result

    yield make
    for item in made:
        await item.close()


async def test_server_span_per_request_with_its_attributes(traced: MakeTraced) -> None:
    t = traced(routes=[{"name": "api", "prefix": "/api", "upstream": "http://127.0.0.1:9"}])
    response = await t.client.get("/api/items/12345?token=secret", headers={"X-Request-ID": "r-1"})
    assert response.status_code == 200
    span = t.server_span()
    assert span.name == "GET /api/**"  # the route's pattern, never the raw path with its id
    assert span.parent is None
    attributes = dict(span.attributes or {})
    assert attributes["http.request.method"] == "GET"
    assert attributes["http.route"] == "/api/**"
    assert attributes["bastion.route"] == "api"
    assert attributes["http.response.status_code"] == 200
    assert attributes["client.address"] == "203.0.113.9"
    assert attributes["bastion.request_id"] == "r-1"
    assert attributes["url.path"] == "/api/items/12345"
    assert not any("secret" in str(value) for value in attributes.values())
    assert "bastion.decision" not in attributes
    assert span.status.status_code == StatusCode.UNSET


async def test_long_path_is_cut_in_the_span(traced: MakeTraced) -> None:
    t = traced()
    assert_problem(await t.client.get("/" + "a" * 9000), 414, "uri_too_long")
    path = dict(t.server_span().attributes or {})["url.path"]
    assert len(path) == 2048
    assert path.startswith("/aaa")


async def test_unrouted_request_is_named_by_its_method_only(traced: MakeTraced) -> None:
    t = traced()
    await t.client.request("PURGE", "/hello")
    span = t.server_span()
    assert span.name == "HTTP"
    assert dict(span.attributes or {})["http.request.method"] == "_OTHER"
    assert "http.route" not in (span.attributes or {})


async def test_upstream_failure_marks_server_and_client_spans(traced: MakeTraced) -> None:
    # Nothing listens on port 9 of loopback: the connection is refused.
    t = traced(
        gateway=True, routes=[{"name": "api", "prefix": "/", "upstream": "http://127.0.0.1:9"}]
    )
    assert_problem(await t.client.get("/things/1"), 502, "upstream_unavailable")
    server = t.server_span()
    assert server.status.status_code == StatusCode.ERROR
    assert dict(server.attributes or {})["bastion.decision"] == "upstream_unavailable"
    [client] = [s for s in t.spans() if s.kind == SpanKind.CLIENT]
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert client.status.status_code == StatusCode.ERROR
    attributes = dict(client.attributes or {})
    assert attributes["error.type"] == "upstream_unavailable"
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == 9
    assert attributes["bastion.route"] == "api"


@pytest.mark.parametrize(
    ("case", "overrides", "request_args", "status", "code", "expected"),
    [
        (
            "rate limit policy",
            {
                "ratelimit": {
                    "policies": [
                        {
                            "name": "tight",
                            "key": "ip",
                            "algorithm": "fixed_window",
                            "limit": 1,
                            "period": "1h",  # both requests in one window, however slow
                        }
                    ]
                }
            },
            {"url": "/hello"},
            429,
            "rate_limited",
            {"bastion.decision.policy": ("tight",), "bastion.decision.stage": "gate"},
        ),
        (
            "inspection rule",
            {},
            {"url": "/hello", "params": {"q": "1' OR '1'='1' UNION SELECT password FROM users--"}},
            403,
            "request_blocked",
            {"bastion.decision.stage": "inspect", "bastion.decision.categories": ("sqli",)},
        ),
        (
            "size limit",
            {},
            {"url": "/hello?" + "a" * 9000},
            414,
            "uri_too_long",
            {"bastion.decision.stage": "limits"},
        ),
        (
            "CIDR deny list",
            {"inspect": {"deny_cidrs": ["203.0.113.0/24"]}},
            {"url": "/hello"},
            403,
            "request_blocked",
            {"bastion.decision.stage": "inspect"},
        ),
    ],
)
async def test_refusal_records_the_decision(
    traced: MakeTraced,
    case: str,
    overrides: dict[str, Any],
    request_args: dict[str, Any],
    status: int,
    code: str,
    expected: dict[str, Any],
) -> None:
    t = traced(tracing={"stage_spans": True}, **overrides)
    if code == "rate_limited":
        assert (await t.client.get("/hello")).status_code == 200
        t.exporter.clear()
    assert_problem(await t.client.get(**request_args), status, code)
    server = dict(t.server_span().attributes or {})
    assert server["bastion.decision"] == code, case
    assert server["http.response.status_code"] == status
    for key, value in expected.items():
        assert server[key] == value, (case, key)
    deciding = [s for s in t.spans() if dict(s.attributes or {}).get("bastion.decision") == code]
    stage_spans = [s for s in deciding if s.kind == SpanKind.INTERNAL]
    assert [s.name for s in stage_spans] == ["bastion." + expected["bastion.decision.stage"]]


async def test_decision_without_stage_spans(traced: MakeTraced) -> None:
    t = traced()
    assert_problem(await t.client.get("/hello?" + "a" * 9000), 414, "uri_too_long")
    assert [s.kind for s in t.spans()] == [SpanKind.SERVER]
    attributes = dict(t.server_span().attributes or {})
    assert attributes["bastion.decision"] == "uri_too_long"
    assert "bastion.decision.stage" not in attributes


async def test_stage_spans_form_one_tree_under_the_server_span(traced: MakeTraced) -> None:
    t = traced(tracing={"stage_spans": True})
    assert (await t.client.get("/hello")).status_code == 200
    spans = t.spans()
    server = t.server_span()
    by_id = {s.context.span_id: s for s in spans}
    assert {s.context.trace_id for s in spans} == {server.context.trace_id}
    # Each stage span's parent is the stage outside it; the outermost one's is the server span.
    chain = []
    current = next(s for s in spans if s.name == "bastion.terminal")
    while current.parent is not None:
        chain.append(current.name)
        current = by_id[current.parent.span_id]
    assert current is server
    chain.reverse()
    assert chain[0] == "bastion.request_id"
    assert chain[-1] == "bastion.terminal"
    assert {"bastion.security_headers", "bastion.error", "bastion.limits"} <= set(chain)
    assert len(chain) == len(spans) - 1


@pytest.mark.parametrize(
    ("trust", "client_ip", "trusted_proxies", "continued"),
    [
        ("all", "203.0.113.9", [], True),
        ("proxies", "10.0.0.2", ["10.0.0.0/8"], True),
        ("proxies", "203.0.113.9", ["10.0.0.0/8"], False),
        ("none", "10.0.0.2", ["10.0.0.0/8"], False),
    ],
)
async def test_incoming_trace_context_is_continued_only_when_trusted(
    traced: MakeTraced, trust: str, client_ip: str, trusted_proxies: list[str], continued: bool
) -> None:
    t = traced(
        peer=client_ip,
        tracing={"trust_incoming": trust},
        client_ip={"trusted_proxies": trusted_proxies},
    )
    response = await t.client.get(
        "/hello", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
    )
    assert response.status_code == 200
    span = t.server_span()
    if continued:
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert span.parent is not None
        assert f"{span.parent.span_id:016x}" == PARENT_ID
        assert span.context.trace_state.get("vendor") == "abc"
        assert not span.links
    else:
        assert f"{span.context.trace_id:032x}" != TRACE_ID
        assert span.parent is None
        # The client's context stays visible as a link, never as the parent.
        [link] = span.links
        assert f"{link.context.trace_id:032x}" == TRACE_ID


@pytest.mark.parametrize(
    ("case", "headers"),
    [
        ("version ff", [("traceparent", f"ff-{TRACE_ID}-{PARENT_ID}-01")]),
        ("zero trace id", [("traceparent", f"00-{'0' * 32}-{PARENT_ID}-01")]),
        ("zero span id", [("traceparent", f"00-{TRACE_ID}-{'0' * 16}-01")]),
        ("upper case", [("traceparent", f"00-{TRACE_ID.upper()}-{PARENT_ID}-01")]),
        ("short trace id", [("traceparent", f"00-{TRACE_ID[:30]}-{PARENT_ID}-01")]),
        ("extra field in version 00", [("traceparent", TRACEPARENT + "-extra")]),
        ("garbage", [("traceparent", "'; DROP TABLE spans; --")]),
        ("non-ascii", [("traceparent", "00-" + "é" * 32 + f"-{PARENT_ID}-01")]),
        ("huge", [("traceparent", TRACEPARENT + " " * 8000)]),
        ("two parents", [("traceparent", TRACEPARENT), ("traceparent", TRACEPARENT)]),
        ("tracestate only", [("tracestate", "vendor=abc")]),
        ("huge tracestate", [("traceparent", TRACEPARENT), ("tracestate", "k=v," * 2000)]),
        (
            "split tracestate",
            [("traceparent", TRACEPARENT), ("tracestate", "a=1"), ("tracestate", "b=2")],
        ),
    ],
)
async def test_incoming_trace_context_edge_cases(
    traced: MakeTraced, case: str, headers: list[tuple[str, str]]
) -> None:
    t = traced(tracing={"trust_incoming": "all"})
    encoded = [(k.encode(), v.encode("utf-8")) for k, v in headers]
    response = await t.client.get("/hello", headers=encoded)
    assert response.status_code == 200, case
    span = t.server_span()
    if case == "huge tracestate":
        # A valid parent with an unusable tracestate: continued, without the state.
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert not span.context.trace_state
        return
    if case == "split tracestate":
        # A list split over two fields is one list (RFC 9110 §5.3).
        assert f"{span.context.trace_id:032x}" == TRACE_ID
        assert dict(span.context.trace_state) == {"a": "1", "b": "2"}
        return
    assert span.parent is None, case
    assert f"{span.context.trace_id:032x}" != TRACE_ID, case


@pytest.mark.parametrize(
    ("value", "linked"),
    [
        (TRACEPARENT, True),
        (f"  {TRACEPARENT}\t", True),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-future", True),
        (f"ff-{TRACE_ID}-{PARENT_ID}-01", False),
        (f"00-{'0' * 32}-{PARENT_ID}-01", False),
        (f"00-{TRACE_ID}-{'0' * 16}-01", False),
        (f"00-{TRACE_ID.upper()}-{PARENT_ID}-01", False),
        (f"00-{TRACE_ID[:30]}-{PARENT_ID}-01", False),
        (f"00-{TRACE_ID}-{PARENT_ID}-1", False),
        (TRACEPARENT + "-extra", False),
        ("'; DROP TABLE spans; --", False),
        ("00-" + "é" * 32 + f"-{PARENT_ID}-01", False),
        (f"01-{TRACE_ID}-{PARENT_ID}-01-" + "x" * 8000, False),
    ],
)
async def test_untrusted_traceparent_is_checked_before_it_becomes_a_link(
    traced: MakeTraced, value: str, linked: bool
) -> None:
    t = traced(tracing={"trust_incoming": "none"})
    headers = [(b"traceparent", value.encode()), (b"tracestate", b"vendor=abc")]
    assert (await t.client.get("/hello", headers=headers)).status_code == 200
    span = t.server_span()
    assert span.parent is None
    assert f"{span.context.trace_id:032x}" != TRACE_ID
    assert not span.context.trace_state  # the client's tracestate is never taken
    if not linked:
        assert not span.links, value
        return
    [link] = span.links
    assert (f"{link.context.trace_id:032x}", f"{link.context.span_id:016x}") == (
        TRACE_ID,
        PARENT_ID,
    )
    assert not link.context.trace_state
    assert dict(link.attributes or {}) == {"bastion.link": "untrusted_parent"}


@pytest.mark.parametrize("trust", ["all", "none"])
async def test_malformed_tracestate_logs_nothing(
    traced: MakeTraced, trust: str, caplog: pytest.LogCaptureFixture
) -> None:
    t = traced(tracing={"trust_incoming": trust})
    caplog.set_level(logging.DEBUG)
    for state in ("=,,=", "k=v," * 100, "UPPER=x", "a=1,a=2"):
        headers = {"traceparent": TRACEPARENT, "tracestate": state + " attacker"}
        response = await t.client.get("/hello", headers=headers)
        assert response.status_code == 200
    assert [r for r in caplog.records if r.name.startswith("opentelemetry")] == []


@pytest.mark.parametrize(("trust", "nested"), [("all", True), ("none", False)])
async def test_ambient_span_is_the_parent_only_for_a_trusted_peer(
    traced: MakeTraced, trust: str, nested: bool
) -> None:
    t = traced(tracing={"trust_incoming": trust})
    outer = TracerProvider().get_tracer("host-server")
    with outer.start_as_current_span("host") as ambient:
        assert (await t.client.get("/hello")).status_code == 200
    span = t.server_span()
    if nested:
        assert span.parent is not None
        assert span.parent.span_id == ambient.get_span_context().span_id
    else:
        assert span.parent is None
        assert span.context.trace_id != ambient.get_span_context().trace_id


@pytest.mark.parametrize(("trust", "continued"), [("all", True), ("none", False)])
async def test_wrapped_app_sees_the_server_span_context(
    tmp_path: Path, trust: str, continued: bool
) -> None:
    seen: list[tuple[list[str], list[str]]] = []

    async def handler(request: Request) -> Response:
        seen.append((request.headers.getlist("traceparent"), request.headers.getlist("tracestate")))
        return PlainTextResponse("ok")

    engine = Bastion(settings(tmp_path, tracing={"trust_incoming": trust}))
    app = engine.wrap(Starlette(routes=[Route("/read", handler)]))
    t = Traced(engine, app, "203.0.113.9")
    try:
        headers = [
            (b"traceparent", TRACEPARENT.encode()),
            (b"tracestate", b"vendor=abc"),
        ]
        assert (await t.client.get("/read", headers=headers)).status_code == 200
    finally:
        await t.close()
    server = t.server_span().context
    [(parents, states)] = seen
    assert parents == [f"00-{server.trace_id:032x}-{server.span_id:016x}-{server.trace_flags:02x}"]
    assert (server.trace_id == int(TRACE_ID, 16)) is continued
    assert states == (["vendor=abc"] if continued else [])


async def test_shutdown_flushes_spans_off_the_event_loop(tmp_path: Path) -> None:
    engine = Bastion(settings(tmp_path))
    engine.wrap(APP)
    tracing = engine.deps.tracing
    assert tracing is not None
    threads: list[int] = []
    tracing.flush = lambda: threads.append(threading.get_ident())  # type: ignore[method-assign]
    await engine.shutdown()
    assert threads
    assert threading.get_ident() not in threads


async def test_sample_ratio_zero_exports_nothing(traced: MakeTraced) -> None:
    t = traced(tracing={"sample_ratio": 0.0})
    assert (await t.client.get("/hello")).status_code == 200
    assert t.spans() == []


async def test_sampled_parent_is_followed_even_at_ratio_zero(traced: MakeTraced) -> None:
    t = traced(tracing={"sample_ratio": 0.0, "trust_incoming": "all"})
    await t.client.get("/hello", headers={"traceparent": TRACEPARENT})
    assert f"{t.server_span().context.trace_id:032x}" == TRACE_ID


async def test_disabled_tracing_adds_no_stage(tmp_path: Path) -> None:
    engine = Bastion(
        Settings(store={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"})
    )
    assert engine.deps.tracing is None
    chain = pipeline_chain(engine.wrap(APP))
    assert chain[0] == "RequestIdStage"
    assert not {"TracingStage", "StageSpan"} & set(chain)


async def test_enabled_tracing_chain(traced: MakeTraced) -> None:
    plain = traced()
    assert isinstance(plain.app.pipeline, TracingStage)
    assert "StageSpan" not in pipeline_chain(plain.app)
    staged = traced(tracing={"stage_spans": True})
    chain = pipeline_chain(staged.app)
    assert chain[:3] == ["TracingStage", "StageSpan", "RequestIdStage"]
    assert isinstance(staged.app.pipeline.app, StageSpan)


def test_disabled_tracing_never_imports_the_sdk(tmp_path: Path) -> None:
    script = (
        "import sys\n"
        "from bastion import Bastion, Settings\n"
        "from starlette.applications import Starlette\n"
        f"s = Settings(store={{'database_url': 'sqlite+aiosqlite:///{tmp_path}/b.db'}})\n"
        "Bastion(s).wrap(Starlette())\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry.sdk.trace')))\n"
        "print('bastion.observe.tracing' in sys.modules)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=60
    )
    assert result.stdout.split("\n")[:2] == ["[]", "False"], result.stdout


@pytest.mark.parametrize(
    ("cls_name", "expected"),
    [
        ("SecurityHeadersStage", "security_headers"),
        ("RequestIdStage", "request_id"),
        ("StrikeGate", "strike_gate"),
        ("_LimitStage", "limit"),
        ("OwnRoutes", "own_routes"),
    ],
)
def test_stage_names(cls_name: str, expected: str) -> None:
    assert stage_name(type(cls_name, (), {})()) == expected


@pytest.mark.parametrize("trust", ["all", "none"])
async def test_upstream_receives_the_client_span_context(traced: MakeTraced, trust: str) -> None:
    async with serve_asgi(upstream_app) as url:
        t = traced(
            gateway=True,
            routes=[{"name": "api", "prefix": "/", "upstream": url}],
            tracing={"trust_incoming": trust},
        )
        response = await t.client.get(
            "/view/1", headers={"traceparent": TRACEPARENT, "tracestate": "vendor=abc"}
        )
    assert response.status_code == 200
    seen = [(n, v) for n, v in response.json()["headers"]]
    parents = [v for n, v in seen if n == "traceparent"]
    states = [v for n, v in seen if n == "tracestate"]
    server = t.server_span()
    [client] = [s for s in t.spans() if s.kind == SpanKind.CLIENT]
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    assert client.context.trace_id == server.context.trace_id
    # Exactly one traceparent upstream: the client span's, whatever the client sent.
    flags = int(client.context.trace_flags)
    assert flags & 1  # sampled
    assert parents == [
        f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-{flags:02x}"
    ]
    if trust == "all":
        assert f"{client.context.trace_id:032x}" == TRACE_ID
        assert states == ["vendor=abc"]
    else:
        assert f"{client.context.trace_id:032x}" != TRACE_ID
        assert states == []
    attributes = dict(client.attributes or {})
    assert attributes["http.response.status_code"] == 200
    assert client.name == "GET"
    assert dict(server.attributes or {})["http.route"] == "/**"


async def test_untraced_gateway_passes_trace_context_through(tmp_path: Path) -> None:
    async with serve_asgi(upstream_app) as url:
        engine = Bastion(
            Settings(
                store={"database_url": f"sqlite+aiosqlite:///{tmp_path / 'bastion.db'}"},
                routes=[{"name": "api", "prefix": "/", "upstream": url}],
            )
        )
        transport = httpx.ASGITransport(app=engine.gateway(), client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
            response = await client.get("/view", headers={"traceparent": TRACEPARENT})
        await engine.shutdown()
    seen = [(n, v) for n, v in response.json()["headers"]]
    assert [v for n, v in seen if n == "traceparent"] == [TRACEPARENT]


async def test_websocket_handshake_carries_the_client_span_context(tmp_path: Path) -> None:
    exporter = InMemorySpanExporter()
    async with serve_asgi(upstream_app) as upstream:
        engine = Bastion(
            settings(tmp_path, routes=[{"name": "ws", "prefix": "/", "upstream": upstream}])
        )
        assert engine.deps.tracing is not None
        engine.deps.tracing.provider.add_span_processor(SimpleSpanProcessor(exporter))
        async with serve_asgi(engine.gateway()) as gateway, aiohttp.ClientSession() as session:
            ws = await session.ws_connect(
                gateway.replace("http", "ws") + "/ws/hello", headers={"traceparent": TRACEPARENT}
            )
            seen = orjson.loads((await ws.receive()).data)
            await ws.close()
        await engine.shutdown()
    [client] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.CLIENT]
    [server] = [s for s in exporter.get_finished_spans() if s.kind == SpanKind.SERVER]
    assert client.parent is not None
    assert client.parent.span_id == server.context.span_id
    flags = int(client.context.trace_flags)
    # The untrusted client's traceparent is replaced by the gateway's own.
    assert seen["traceparent"] == (
        f"00-{client.context.trace_id:032x}-{client.context.span_id:016x}-{flags:02x}"
    )
    assert dict(client.attributes or {})["http.response.status_code"] == 101


async def test_wrapped_app_spans_nest_under_the_server_span(tmp_path: Path) -> None:
    app_exporter = InMemorySpanExporter()
    app_provider = TracerProvider()
    app_provider.add_span_processor(SimpleSpanProcessor(app_exporter))
    app_tracer = app_provider.get_tracer("the-app")

    async def handler(request: Request) -> Response:
        with app_tracer.start_as_current_span("load item"):
            return PlainTextResponse("item")

    engine = Bastion(settings(tmp_path))
    t = Traced(engine, engine.wrap(Starlette(routes=[Route("/item", handler)])), "203.0.113.9")
    try:
        assert (await t.client.get("/item")).status_code == 200
    finally:
        await t.close()
    [inner] = app_exporter.get_finished_spans()
    server = t.server_span()
    assert inner.parent is not None
    assert inner.parent.span_id == server.context.span_id
    assert inner.context.trace_id == server.context.trace_id


class _Collector(BaseHTTPRequestHandler):
    """An OTLP/HTTP traces endpoint that keeps what it receives."""

    received: ClassVar[list[tuple[str, dict[str, str], bytes]]] = []

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, dict(self.headers), body))
        self.send_response(200)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        return


async def test_otlp_exporter_sends_spans_to_the_configured_endpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLLECTOR_KEY", "k-123")
    _Collector.received.clear()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Collector)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        engine = Bastion(
            settings(
                tmp_path,
                tracing={
                    "exporter": "otlp",
                    "endpoint": f"http://127.0.0.1:{server.server_port}/v1/traces",
                    "headers": {"x-api-key": "env:COLLECTOR_KEY"},
                    "service_name": "edge-test",
                },
            )
        )
        transport = httpx.ASGITransport(app=engine.wrap(APP), client=("203.0.113.9", 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await client.get("/hello")).status_code == 200
        await engine.shutdown()  # flushes the batch
        assert engine.deps.tracing is not None
        engine.deps.tracing.provider.shutdown()  # as at process exit: closes the exporter
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    [(path, headers, body)] = _Collector.received
    assert path == "/v1/traces"
    assert headers["x-api-key"] == "k-123"
    export = ExportTraceServiceRequest.FromString(body)
    [resource_spans] = export.resource_spans
    resource = {a.key: a.value.string_value for a in resource_spans.resource.attributes}
    assert resource["service.name"] == "edge-test"
    [span] = [s for scope in resource_spans.scope_spans for s in scope.spans]
    assert span.name == "GET"
    assert {a.key for a in span.attributes} >= {"http.response.status_code", "bastion.request_id"}


def test_decision_attributes_name_the_inspection_rules_and_the_policies() -> None:
    verdict = InspectionVerdict(
        True,
        10,
        (
            Match("sqli-union-select", "sqli", 5, Location("query", "q")),
            Match("sqli-tautology", "sqli", 5, Location("query", "q")),
            Match("xss-script-tag", "xss", 5, Location("body")),
        ),
        flagged=True,
    )
    blocked = decision_attributes(
        {"bastion.inspect": verdict, DECISION_STAGE_KEY: "inspect"}, "request_blocked"
    )
    assert blocked == {
        "bastion.decision": "request_blocked",
        "bastion.decision.stage": "inspect",
        "bastion.decision.categories": ["sqli", "xss"],
        "bastion.decision.rules": ["sqli-tautology", "sqli-union-select", "xss-script-tag"],
        "bastion.decision.score": 10,
    }
    # A CIDR refusal has no verdict: the code alone.
    assert decision_attributes({}, "request_blocked") == {"bastion.decision": "request_blocked"}
    assert decision_attributes({}, "client_banned")["bastion.decision.policy"] == ["_bans"]
