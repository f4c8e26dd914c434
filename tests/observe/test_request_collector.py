"""The request series kept in plain numbers expose exactly what ``prometheus_client``'s own
Counter and Histogram would for the same requests."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bastion.observe.config import DEFAULT_LATENCY_BUCKETS
from bastion.observe.metrics import Metrics, PlainHistogram

_NAMES = ("bastion_http_requests_total", "bastion_http_request_duration_seconds")

Requests = list[tuple[str, str, int, float]]


def _samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    found = {}
    for family in text_string_to_metric_families(text):
        if family.name.removesuffix("_total") not in {n.removesuffix("_total") for n in _NAMES}:
            continue
        for sample in family.samples:
            if sample.name.endswith("_created"):
                continue  # creation times differ, and only prometheus_client has them
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def _reference(requests: Requests, buckets: tuple[float, ...]) -> str:
    registry = CollectorRegistry()
    counter = Counter(
        "bastion_http_requests_total", "x", ("route", "method", "status"), registry=registry
    )
    histogram = Histogram(
        "bastion_http_request_duration_seconds",
        "x",
        ("route", "method"),
        buckets=buckets,
        registry=registry,
    )
    known = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
    for route, method, status, seconds in requests:
        label = method if method in known else "OTHER"
        counter.labels(route, label, str(status)).inc()
        histogram.labels(route, label).observe(seconds)
    return generate_latest(registry).decode()


def _observed(requests: Requests, buckets: tuple[float, ...]) -> str:
    metrics = Metrics(buckets)
    for route, method, status, seconds in requests:
        metrics.begin_request()
        metrics.observe_request(route, method, status, seconds)
    return metrics.exposition().decode()


def test_same_exposition_as_prometheus_client_for_random_traffic() -> None:
    rng = random.Random(7)
    requests: Requests = []
    for _ in range(5000):
        route = rng.choice(["api", "_none", "static"])
        method = rng.choice(["GET", "POST", "DELETE", "BREW", "PROPFIND"])
        status = rng.choice([200, 201, 304, 404, 429, 500, 0])
        seconds = rng.choice([rng.uniform(0, 0.002), rng.uniform(0, 20), 0.0])
        requests.append((route, method, status, seconds))
    # Values exactly on a bound belong to that bound's bucket (le is inclusive).
    requests += [("api", "GET", 200, bound) for bound in DEFAULT_LATENCY_BUCKETS]
    expected = _samples(_reference(requests, DEFAULT_LATENCY_BUCKETS))
    assert _samples(_observed(requests, DEFAULT_LATENCY_BUCKETS)) == expected
    assert len(expected) > 100


@pytest.mark.parametrize("buckets", [(0.5,), (0.001, 0.01, 1.0, 60.0)])
def test_configured_buckets_are_kept(buckets: tuple[float, ...]) -> None:
    requests: Requests = [("r", "GET", 200, s) for s in (0.0001, 0.5, 0.75, 2.0, 100.0)]
    assert _samples(_observed(requests, buckets)) == _samples(_reference(requests, buckets))


def test_in_flight_gauge_follows_begin_and_observe() -> None:
    metrics = Metrics()
    metrics.begin_request()
    metrics.begin_request()
    metrics.observe_request("r", "GET", 200, 0.01)
    families = {f.name: f for f in text_string_to_metric_families(metrics.exposition().decode())}
    assert families["bastion_inflight_requests"].samples[0].value == 1.0


# -- the plain histogram (rate-limit store time) ------------------------------------------------

_STORE = "bastion_ratelimit_store_seconds"


def _store_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        if family.name == _STORE
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_plain_histogram_exposes_what_prometheus_client_would() -> None:
    metrics = Metrics()
    plain = metrics.ratelimit_store_seconds
    assert isinstance(plain, PlainHistogram)  # one process: no shared files
    bounds = plain.bounds
    registry = CollectorRegistry()
    reference = Histogram(_STORE, "x", buckets=bounds, registry=registry)
    rng = random.Random(11)
    values = [rng.choice([rng.uniform(0, 0.003), rng.uniform(0, 2), 0.0]) for _ in range(3000)]
    values += list(bounds)  # each bound belongs to its own bucket (le is inclusive)
    for value in values:
        plain.observe(value)
        reference.observe(value)
    expected = _store_samples(generate_latest(registry).decode())
    assert _store_samples(metrics.exposition().decode()) == expected
    assert len(expected) == len(bounds) + 3  # buckets with +Inf, count, sum
