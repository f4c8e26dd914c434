"""The metrics contract in process: latency buckets fine enough for a gateway, and store failures
that reach a request counted."""

from __future__ import annotations

import pytest
from prometheus_client.parser import text_string_to_metric_families
from redis.exceptions import ConnectionError as RedisConnectionError
from sqlalchemy.exc import OperationalError
from starlette.testclient import TestClient

from bastion.http.asgi import Receive, Scope, Send
from bastion.observe.config import DEFAULT_LATENCY_BUCKETS, MetricsConfig
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError
from problem_assertions import assert_problem
from stage_harness import around, make_deps


def _value(metrics: Metrics, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return float(sample.value)
    return 0.0


def test_default_buckets_resolve_a_tenth_of_a_millisecond() -> None:
    assert DEFAULT_LATENCY_BUCKETS[:5] == (0.0001, 0.0002, 0.0003, 0.0004, 0.0005)
    assert DEFAULT_LATENCY_BUCKETS[-1] == 10.0
    assert list(DEFAULT_LATENCY_BUCKETS) == sorted(set(DEFAULT_LATENCY_BUCKETS))
    assert MetricsConfig().latency_buckets == list(DEFAULT_LATENCY_BUCKETS)


def test_sub_millisecond_requests_land_in_distinct_buckets() -> None:
    metrics = Metrics()
    for seconds in (0.00005, 0.00015, 0.00025, 0.00045):
        metrics.begin_request()
        metrics.observe_request("api", "GET", 200, seconds)
    name = "bastion_http_request_duration_seconds_bucket"
    assert _value(metrics, name, route="api", le="0.0001") == 1
    assert _value(metrics, name, route="api", le="0.0002") == 2
    assert _value(metrics, name, route="api", le="0.0003") == 3
    assert _value(metrics, name, route="api", le="0.0005") == 4


@pytest.mark.parametrize(
    ("case", "buckets"),
    [
        ("empty", []),
        ("unsorted", [0.001, 0.0005]),
        ("repeated", [0.001, 0.001]),
        ("zero", [0.0, 0.001]),
        ("negative", [-0.001, 0.001]),
    ],
)
def test_invalid_buckets_are_a_config_error(case: str, buckets: list[float]) -> None:
    with pytest.raises(ValueError, match="latency"):
        MetricsConfig(latency_buckets=buckets)


@pytest.mark.parametrize(
    ("case", "cause", "store"),
    [
        ("database down", OperationalError("SELECT 1", {}, Exception("gone")), "database"),
        ("redis down", RedisConnectionError("refused"), "redis"),
        ("no cause", None, "database"),
    ],
)
def test_store_failure_reaching_a_request_is_counted(
    case: str, cause: BaseException | None, store: str
) -> None:
    deps = make_deps()

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        if cause is None:
            raise StoreError("the database is not started")
        raise StoreError("database call failed") from cause

    client = TestClient(around(lambda app, d: app, failing, deps), raise_server_exceptions=False)
    assert_problem(client.get("/x"), 500, "internal_error")
    assert _value(deps.metrics, "bastion_store_errors_total", store=store, op="request") == 1, case


def test_other_failures_are_not_store_errors() -> None:
    deps = make_deps()

    async def failing(scope: Scope, receive: Receive, send: Send) -> None:
        raise RuntimeError("a bug")

    client = TestClient(around(lambda app, d: app, failing, deps), raise_server_exceptions=False)
    assert_problem(client.get("/x"), 500, "internal_error")
    assert "bastion_store_errors_total{" not in deps.metrics.exposition().decode()
