"""Upstream request targets: prefix stripping on the raw path, base paths, query strings."""

from __future__ import annotations

import pytest

from bastion.http.routes import RouteTable
from bastion.proxy import RouteConfig
from bastion.proxy.pool import UpstreamClient
from bastion.proxy.upstream import UpstreamTarget, strip_raw_prefix, upstream_path


@pytest.mark.parametrize(
    ("raw", "prefix", "rest"),
    [
        (b"/api/users", b"/api", b"/users"),
        (b"/api", b"/api", b""),
        (b"/api/a%2Fb", b"/api", b"/a%2Fb"),
        (b"/%61pi/x", b"/api", b"/x"),
        (b"/api%2Fx", b"/api", b"/api%2Fx"),
        (b"/apix", b"/api", b"/apix"),
        (b"/other", b"/api", b"/other"),
        (b"/caf%C3%A9/menu", "/café".encode(), b"/menu"),
        (b"/ap", b"/api", b"/ap"),
    ],
)
def test_strip_raw_prefix(raw: bytes, prefix: bytes, rest: bytes) -> None:
    assert strip_raw_prefix(raw, prefix) == rest


@pytest.mark.parametrize(
    ("base", "raw", "query", "target"),
    [
        (b"", b"/users", b"", b"/users"),
        (b"", b"", b"", b"/"),
        (b"/v1", b"", b"", b"/v1"),
        (b"/v1", b"/users", b"a=1&b=%20", b"/v1/users?a=1&b=%20"),
        (b"", b"/a%2Fb", b"x=%2F", b"/a%2Fb?x=%2F"),
    ],
)
def test_upstream_path(base: bytes, raw: bytes, query: bytes, target: bytes) -> None:
    assert upstream_path(base, raw, query) == target


def _target(config: RouteConfig) -> UpstreamTarget:
    route = next(iter(RouteTable([config])))
    client = UpstreamClient(pool_size=4, keepalive_timeout=30.0, tick=0.5)
    return UpstreamTarget(
        route,
        client=client,
        connect_timeout=5.0,
        read_timeout=60.0,
        request_id_header="X-Request-ID",
        resolver=None,
    )


def test_target_combines_base_path_stripped_raw_path_and_query() -> None:
    target = _target(
        RouteConfig(prefix="/api", upstream="http://svc.internal:9000/base/", strip_prefix=True)
    )
    scope = {"path": "/api/a/b", "raw_path": b"/api/a%2Fb", "query_string": b"q=%C3%A9"}
    assert target.target(scope) == b"/base/a%2Fb?q=%C3%A9"
    assert target.websocket_url(scope) == "ws://svc.internal:9000/base/a%2Fb?q=%C3%A9"


def test_target_without_raw_path_encodes_the_decoded_path() -> None:
    target = _target(RouteConfig(prefix="/", upstream="https://svc.internal"))
    assert target.target({"path": "/a b/é", "query_string": b""}) == b"/a%20b/%C3%A9"
    assert target.websocket_base == "wss://svc.internal"


def test_route_timeouts_override_the_proxy_defaults() -> None:
    target = _target(
        RouteConfig(prefix="/", upstream="http://svc", connect_timeout="250ms", read_timeout="2s")
    )
    assert (target.connect_timeout, target.read_timeout) == (0.25, 2.0)


def test_a_route_without_upstream_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match="has no upstream"):
        _target(RouteConfig(prefix="/", upstream=""))
