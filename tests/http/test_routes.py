"""Route matching and path globs."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.http.paths import PathGlob, compile_glob
from bastion.http.routes import RouteTable, request_host
from bastion.proxy.config import RouteConfig


def table(*specs: tuple[str, str, str | None]) -> RouteTable:
    return RouteTable(
        [RouteConfig(name=n, prefix=p, host=h, upstream="http://127.0.0.1:1") for n, p, h in specs]
    )


ROUTES = table(
    ("root", "/", None),
    ("api", "/api", None),
    ("api-v2", "/api/v2", None),
    ("admin-host", "/", "admin.example.com"),
    ("tenant", "/api", "*.tenants.example.com"),
)


@pytest.mark.parametrize(
    ("path", "host", "expected"),
    [
        ("/", None, "root"),
        ("/api", None, "api"),
        ("/api/", None, "api"),
        ("/api/items", None, "api"),
        ("/apix", None, "root"),
        ("/api/v2/x", None, "api-v2"),
        ("/api/v20", None, "api"),
        ("/anything", "admin.example.com", "admin-host"),
        ("/api/x", "acme.tenants.example.com", "tenant"),
        ("/api/x", "a.b.tenants.example.com", "api"),
        ("/api/x", "tenants.example.com", "api"),
    ],
)
def test_most_specific_route(path: str, host: str | None, expected: str) -> None:
    route = ROUTES.match(path, host)
    assert route is not None
    assert route.name == expected


def test_no_match() -> None:
    assert table(("api", "/api", None)).match("/other", None) is None


def test_single_catch_all_fast_path() -> None:
    single = table(("default", "/", None))
    assert single.match("/x/y", "whatever").name == "default"  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("headers", "host"),
    [
        ([(b"host", b"Example.COM:8080")], "example.com"),
        ([(b"host", b"[::1]:80")], "[::1]"),
        ([(b"host", b"plain")], "plain"),
        ([], None),
    ],
)
def test_request_host(headers: list[tuple[bytes, bytes]], host: str | None) -> None:
    assert request_host(headers) == host


@pytest.mark.parametrize(
    ("pattern", "path", "matches"),
    [
        ("/api/**", "/api", True),
        ("/api/**", "/api/a/b/c", True),
        ("/api/**", "/apix", False),
        ("/users/*/orders", "/users/42/orders", True),
        ("/users/*/orders", "/users/4/2/orders", False),
        ("/files/*.txt", "/files/a.txt", True),
        ("/files/*.txt", "/files/a.txtx", False),
        ("/a/**/z", "/a/b/c/z", True),
        ("/exact", "/exact", True),
        ("/exact", "/exact/", False),
        ("/dot.path", "/dotxpath", False),
    ],
)
def test_globs(pattern: str, path: str, matches: bool) -> None:
    assert (compile_glob(pattern).match(path) is not None) is matches
    assert PathGlob([pattern]).matches(path) is matches


def test_glob_must_be_absolute() -> None:
    with pytest.raises(ValueError, match="must start with"):
        compile_glob("api/**")


def test_empty_globset_matches_nothing() -> None:
    assert not PathGlob([]).matches("/")


@given(st.text(alphabet="/ab*.", max_size=30), st.text(alphabet="/ab.", max_size=40))
def test_glob_never_raises(pattern: str, path: str) -> None:
    pattern = "/" + pattern
    compile_glob(pattern).match(path)
