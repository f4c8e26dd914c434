"""The example apps under examples/ run as their docstrings say."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest
from starlette.testclient import TestClient

from problem_assertions import assert_problem

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(autouse=True)
def _tmp_cwd(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)  # the default SQLite store is created in the working directory
    monkeypatch.delenv("BASTION_CONFIG", raising=False)


def test_starlette_example() -> None:
    with TestClient(load("starlette_app").app) as client:
        hello = client.get("/hello", headers={"X-Request-ID": "ex-1"})
        assert hello.json()["request_id"] == "ex-1"
        assert client.post("/upload", content=b"x" * 1000).json() == {"received": 1000}
        assert_problem(
            client.post("/upload", content=iter([b"x" * 600_000] * 2)), 413, "payload_too_large"
        )
        preflight = client.options(
            "/hello",
            headers={"Origin": "http://localhost:3000", "Access-Control-Request-Method": "GET"},
        )
        assert preflight.headers["access-control-allow-origin"] == "http://localhost:3000"


def test_fastapi_example() -> None:
    with TestClient(load("fastapi_app").app) as client:
        assert client.get("/items/1").json() == {"id": 1, "name": "lamp"}
        assert_problem(client.get("/items/0"), 404, "not_found")
