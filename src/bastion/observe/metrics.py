"""Prometheus metrics; the series names are part of the public contract (DESIGN.md §8).

Each :class:`Metrics` owns its registry, so several Bastion instances (and tests) never clash.
With ``PROMETHEUS_MULTIPROC_DIR`` set (``bastion serve --workers N`` sets it), values live in
shared files and the exposition merges every worker. Labelled children are cached in plain dicts
because ``labels()`` costs more than the increment itself on the request path.
"""

from __future__ import annotations

import os
from bisect import bisect_left
from collections.abc import Callable, Iterable, Iterator, Sequence

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from bastion.observe.config import DEFAULT_LATENCY_BUCKETS

__all__ = ["CONTENT_TYPE", "Metrics"]

CONTENT_TYPE = CONTENT_TYPE_LATEST.encode("latin-1")

_KNOWN_METHODS = frozenset(
    {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"}
)


_STORE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)
"""Rate-limit store calls take microseconds in memory and well under a millisecond to Redis."""

_LOADER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
"""Cache loaders run queries and upstream calls: from under a millisecond to seconds."""


_MAX_REQUEST_KEYS = 10_000
"""Distinct (route, method, status) keys remembered for the request path's look-up."""


def _method_label(method: str) -> str:
    return method if method in _KNOWN_METHODS else "OTHER"


_DECISIONS = "bastion_ratelimit_decisions_total"
_DECISIONS_HELP = (
    "Rate-limit decisions, by policy and result (allowed, limited, shadow_limited, "
    "store_error); refusals of banned clients count under the policy _bans."
)
_DECISION_LABELS = ("policy", "result")


class CountCollector(Collector):
    """A counter whose values are plain ints in a dict, read when scraped.

    ``Counter.labels(...).inc()`` takes a lock and goes through a value object; a decision made
    several times per request only needs ``counts[key] += 1``. In one process that is safe
    (the event loop is single-threaded); several workers need the shared files instead."""

    def __init__(self, name: str, documentation: str, labels: Sequence[str]) -> None:
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.counts: dict[tuple[str, ...], int] = {}
        """Label values → count; incremented directly by the request path."""
        self.before_collect: list[Callable[[], None]] = []
        """Called when scraped, before :attr:`counts` is read: for owners that keep counts of
        their own between scrapes (cheaper per request) and add them here."""

    def _family(self) -> CounterMetricFamily:
        return CounterMetricFamily(self.name, self.documentation, labels=self.labels)

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield self._family()

    def collect(self) -> Iterator[CounterMetricFamily]:
        for flush in self.before_collect:
            flush()
        family = self._family()
        for values, count in list(self.counts.items()):
            family.add_metric(list(values), count)
        yield family


_REQUESTS = "bastion_http_requests_total"
_REQUESTS_HELP = "HTTP requests answered, by route, method and status."
_DURATION = "bastion_http_request_duration_seconds"
_DURATION_HELP = "Time from request arrival to the end of the response, by route and method."


class _RequestSeries:
    """One (route, method, status): its answered count, and the duration histogram of its
    (route, method), shared with the other statuses: ``[sum, bucket 0, ..., bucket +Inf]``,
    each bucket counting the observations that fall in it alone (cumulated when scraped)."""

    __slots__ = ("count", "histogram")

    def __init__(self, histogram: list[float]) -> None:
        self.count = 0
        self.histogram = histogram


class RequestCollector(Collector):
    """``bastion_http_requests_total`` and ``bastion_http_request_duration_seconds`` in plain
    numbers, read when scraped.

    Every request updates both. Through ``prometheus_client`` that is a locked counter increment
    plus a histogram observation that scans its 22 bucket bounds in Python and takes two more
    locks: about 3.7 µs per request, measured, a tenth of the whole default pipeline. Here it is
    an integer increment, one C ``bisect`` and two list updates. One process only (the event
    loop is single-threaded); several workers use ``prometheus_client``'s shared files instead.
    """

    def __init__(self, buckets: Sequence[float]) -> None:
        self.bounds = tuple(buckets)
        self._labels = _bucket_labels(self.bounds)
        self.series: dict[tuple[str, str, int], _RequestSeries] = {}
        self.histograms: dict[tuple[str, str], list[float]] = {}

    def series_for(self, route: str, method: str, status: int) -> _RequestSeries:
        """The series of a (route, method label, status), created on first use. Labels are
        bounded: routes come from the configuration, methods are folded into ten labels and
        statuses are three digits."""
        series = self.series.get((route, method, status))
        if series is None:
            histogram = self.histograms.get((route, method))
            if histogram is None:
                histogram = self.histograms[(route, method)] = [0.0] * (len(self.bounds) + 2)
            series = self.series[(route, method, status)] = _RequestSeries(histogram)
        return series

    def observe(self, series: _RequestSeries, seconds: float) -> None:
        series.count += 1
        histogram = series.histogram
        histogram[0] += seconds
        histogram[bisect_left(self.bounds, seconds) + 1] += 1

    def describe(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        yield CounterMetricFamily(_REQUESTS, _REQUESTS_HELP, labels=("route", "method", "status"))
        yield HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=("route", "method"))

    def collect(self) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        requests = CounterMetricFamily(
            _REQUESTS, _REQUESTS_HELP, labels=("route", "method", "status")
        )
        for (route, method, status), series in list(self.series.items()):
            requests.add_metric([route, method, str(status)], series.count)
        yield requests
        duration = HistogramMetricFamily(_DURATION, _DURATION_HELP, labels=("route", "method"))
        for (route, method), histogram in list(self.histograms.items()):
            duration.add_metric(
                [route, method], _cumulated(self._labels, histogram[1:]), histogram[0]
            )
        yield duration


class PlainHistogram(Collector):
    """An unlabelled histogram in plain numbers, read when scraped, for one process.

    ``observe`` is one C ``bisect`` and two list updates where ``prometheus_client``'s
    ``Histogram`` scans its bounds in Python and takes its locks: 0.17 µs against 0.77 µs per
    observation in a loop, measured with the rate-limit store's 11 buckets (the Redis path
    observes once per request). No ``_created`` series. Several workers use
    ``prometheus_client``'s shared files instead."""

    def __init__(self, name: str, documentation: str, buckets: Sequence[float]) -> None:
        self._name = name
        self._documentation = documentation
        self.bounds = tuple(buckets)
        self._labels = _bucket_labels(self.bounds)
        # [sum, bucket 0, ..., bucket +Inf], each bucket counting its own observations.
        self._counts = [0.0] * (len(self.bounds) + 2)

    def observe(self, seconds: float) -> None:
        counts = self._counts
        counts[0] += seconds
        counts[bisect_left(self.bounds, seconds) + 1] += 1

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self._name, self._documentation)

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self._name, self._documentation)
        counts = list(self._counts)
        family.add_metric([], _cumulated(self._labels, counts[1:]), counts[0])
        yield family


def _bucket_labels(bounds: Sequence[float]) -> list[str]:
    """The ``le`` labels of ``bounds`` and ``+Inf``, spelt as ``prometheus_client`` does."""
    return [floatToGoString(b) for b in bounds] + ["+Inf"]  # type: ignore[no-untyped-call]


def _cumulated(labels: Sequence[str], counts: Sequence[float]) -> list[tuple[str, float]]:
    """``(le, cumulative count)`` of per-bucket ``counts``."""
    cumulative = 0.0
    buckets: list[tuple[str, float]] = []
    for label, count in zip(labels, counts, strict=True):
        cumulative += count
        buckets.append((label, cumulative))
    return buckets


class Metrics:
    """The registry and every series Bastion exports, with cached labelled children."""

    def __init__(self, latency_buckets: Sequence[float] | None = None) -> None:
        self.multiprocess_dir = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None
        self.registry = CollectorRegistry(auto_describe=True)
        buckets = tuple(latency_buckets) if latency_buckets else DEFAULT_LATENCY_BUCKETS
        reg = self.registry
        self.requests: Counter | None = None
        self.duration: Histogram | None = None
        """The request series in multiprocess mode (``None`` in one process: see
        :class:`RequestCollector`)."""
        self._local_requests: RequestCollector | None = None
        if self.multiprocess_dir is None:
            self._local_requests = RequestCollector(buckets)
            reg.register(self._local_requests)
        else:
            self.requests = Counter(
                _REQUESTS, _REQUESTS_HELP, ("route", "method", "status"), registry=reg
            )
            self.duration = Histogram(
                _DURATION, _DURATION_HELP, ("route", "method"), buckets=buckets, registry=reg
            )
        self.inflight = Gauge(
            "bastion_inflight_requests",
            "Requests being processed.",
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.shed = Counter(
            "bastion_shed_total", "Requests refused with 503 by load shedding.", registry=reg
        )
        self.upstream_errors = Counter(
            "bastion_upstream_errors_total",
            "Failed upstream exchanges, by route and kind (connect, timeout, protocol).",
            ("route", "kind"),
            registry=reg,
        )
        self.store_errors = Counter(
            "bastion_store_errors_total",
            "Failed store operations, by store and operation.",
            ("store", "op"),
            registry=reg,
        )
        self.store_slow_queries = Counter(
            "bastion_store_slow_queries_total",
            "Bastion's own SQL statements slower than store.slow_query, by kind (select, insert, "
            "update, delete, other).",
            ("op",),
            registry=reg,
        )
        self.auth_attempts = Counter(
            "bastion_auth_attempts_total",
            "Authentication attempts, by method (password, refresh, bearer, api_key, otp) and "
            "result (success, failure, throttled, reused, mfa_required, denied).",
            ("method", "result"),
            registry=reg,
        )
        self.ratelimit_decisions: Counter | None = None
        self.ratelimit_counts: dict[tuple[str, ...], int] | None = None
        """Single process: ``(policy, result)`` → decisions, for the request path to increment
        directly (``None`` in multiprocess mode: use :meth:`ratelimit_decision`)."""
        self.ratelimit_collector: CountCollector | None = None
        """Single process: the collector of :attr:`ratelimit_counts`."""
        if self.multiprocess_dir is None:
            decisions = CountCollector(_DECISIONS, _DECISIONS_HELP, _DECISION_LABELS)
            reg.register(decisions)
            self.ratelimit_collector = decisions
            self.ratelimit_counts = decisions.counts
        else:
            self.ratelimit_decisions = Counter(
                _DECISIONS, _DECISIONS_HELP, _DECISION_LABELS, registry=reg
            )
        store_seconds = (
            "bastion_ratelimit_store_seconds",
            "Time of one rate-limit store evaluation (all of a request's checks at once).",
        )
        self.ratelimit_store_seconds: Histogram | PlainHistogram
        if self.multiprocess_dir is None:
            self.ratelimit_store_seconds = PlainHistogram(*store_seconds, _STORE_BUCKETS)
            reg.register(self.ratelimit_store_seconds)
        else:
            self.ratelimit_store_seconds = Histogram(
                *store_seconds, buckets=_STORE_BUCKETS, registry=reg
            )
        self.inspect_blocked = Counter(
            "bastion_inspect_blocked_total",
            "Requests refused by inspection, once per category of the rules they matched.",
            ("category",),
            registry=reg,
        )
        self.inspect_detected = Counter(
            "bastion_inspect_detected_total",
            "Requests that reached the anomaly threshold in monitor mode (forwarded), once per "
            "category of the rules they matched.",
            ("category",),
            registry=reg,
        )
        self.inspect_refused = Counter(
            "bastion_inspect_refused_total",
            "Requests the inspection stages refused without a detection, by reason (deny_cidr, "
            "over_limit, strike).",
            ("reason",),
            registry=reg,
        )
        self.cache_requests = Counter(
            "bastion_cache_requests_total",
            "Cache look-ups, by cache (l1, l2, http) and result (hit, miss, stale; l2 also "
            "error: Redis failed or paused, answered without it).",
            ("cache", "result"),
            registry=reg,
        )
        self.cache_entries = Gauge(
            "bastion_cache_entries",
            "Entries held by an in-process cache tier.",
            ("cache",),
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.cache_bytes = Gauge(
            "bastion_cache_bytes",
            "Serialized bytes of the values held by an in-process cache tier.",
            ("cache",),
            registry=reg,
            multiprocess_mode="livesum",
        )
        self.cache_evictions = Counter(
            "bastion_cache_evictions_total",
            "Entries an in-process cache tier dropped, by reason (size: bounds or admission; "
            "expired).",
            ("cache", "reason"),
            registry=reg,
        )
        self.cache_loader_seconds = Histogram(
            "bastion_cache_loader_seconds",
            "Time of one cache loader call (a miss), by namespace.",
            ("cache",),
            buckets=_LOADER_BUCKETS,
            registry=reg,
        )
        self.cache_l2_up = Gauge(
            "bastion_cache_l2_up",
            "1 while the cache's Redis tier answers, 0 while calls are served without it.",
            registry=reg,
            multiprocess_mode="min",
        )
        self.audit_events_total = Counter(
            "bastion_audit_events_total",
            "Audit events committed to the audit log, by kind.",
            ("kind",),
            registry=reg,
        )
        self._audit_children: dict[str, Counter] = {}
        self.alerts = Counter(
            "bastion_alerts_total",
            "Alert transitions, by rule and state (firing, resolved).",
            ("rule", "state"),
            registry=reg,
        )
        self.alert_deliveries = Counter(
            "bastion_alerts_webhook_deliveries_total",
            "Alert webhook deliveries, by result (delivered, retried, failed, dropped).",
            ("result",),
            registry=reg,
        )
        self.store_error_listener: Callable[[str, str], None] | None = None
        """Also told of every store error (the alert rules over store errors), when set."""
        self._ratelimit_children: dict[tuple[str, str], Counter] = {}
        self._request_children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        # In one process the gauge reads a plain counter when scraped (no lock per request);
        # across workers each process's value lives in the shared files and is summed.
        self._inflight = 0
        if self.multiprocess_dir is None:
            self.inflight.set_function(lambda: self._inflight)

    def begin_request(self) -> None:
        """Count a request as in flight until :meth:`observe_request`."""
        if self.multiprocess_dir is None:
            self._inflight += 1
        else:
            self.inflight.inc()

    def observe_request(self, route: str, method: str, status: int, seconds: float) -> None:
        """Count one answered request and its duration; it is no longer in flight."""
        local = self._local_requests
        if local is not None:
            self._inflight -= 1
            series = local.series.get((route, method, status))
            if series is None:
                # First sight, or a method outside the known ones (all counted as OTHER).
                series = local.series_for(route, _method_label(method), status)
            local.observe(series, seconds)
            return
        self.inflight.dec()
        key = (route, method, status)
        children = self._request_children.get(key)
        if children is None:
            assert self.requests is not None
            assert self.duration is not None
            label = _method_label(method)
            children = (
                self.requests.labels(route, label, str(status)),
                self.duration.labels(route, label),
            )
            if len(self._request_children) < _MAX_REQUEST_KEYS:
                self._request_children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def upstream_error(self, route: str, kind: str) -> None:
        self.upstream_errors.labels(route, kind).inc()

    def auth_attempt(self, method: str, result: str) -> None:
        self.auth_attempts.labels(method, result).inc()

    def ratelimit_decision(self, policy: str, result: str) -> None:
        """Count one policy's decision (policy names come from configuration: bounded)."""
        counts = self.ratelimit_counts
        if counts is not None:
            key = (policy, result)
            counts[key] = counts.get(key, 0) + 1
            return
        child = self._ratelimit_children.get((policy, result))
        if child is None:
            assert self.ratelimit_decisions is not None
            child = self._ratelimit_children[(policy, result)] = self.ratelimit_decisions.labels(
                policy, result
            )
        child.inc()

    def inspect_outcome(self, categories: Iterable[str], *, blocked: bool) -> None:
        """Count one inspected request that reached the threshold: refused (``blocked``) or
        forwarded in monitor mode; once per category (categories are a fixed set)."""
        counter = self.inspect_blocked if blocked else self.inspect_detected
        for category in categories:
            counter.labels(category).inc()

    def inspect_refusal(self, reason: str) -> None:
        """Count a refusal of the inspection stages that is not a detection."""
        self.inspect_refused.labels(reason).inc()

    def cache_request(self, cache: str, result: str, count: int = 1) -> None:
        """Count cache look-ups (the tiered cache batches its counts once a second)."""
        self.cache_requests.labels(cache, result).inc(count)

    def cache_size(self, cache: str, entries: int, size: int) -> None:
        self.cache_entries.labels(cache).set(entries)
        self.cache_bytes.labels(cache).set(size)

    def cache_evicted(self, cache: str, reason: str, count: int = 1) -> None:
        self.cache_evictions.labels(cache, reason).inc(count)

    def audit_events(self, kind: str, count: int = 1) -> None:
        """Count committed audit events of one kind (kinds come from code: bounded)."""
        child = self._audit_children.get(kind)
        if child is None:
            child = self._audit_children[kind] = self.audit_events_total.labels(kind)
        child.inc(count)

    def store_error(self, store: str, op: str) -> None:
        self.store_errors.labels(store, op).inc()
        listener = self.store_error_listener
        if listener is not None:
            listener(store, op)

    def alert_transition(self, rule: str, state: str) -> None:
        """Count an alert that started firing or resolved (rule names come from configuration)."""
        self.alerts.labels(rule, state).inc()

    def alert_delivery(self, result: str) -> None:
        """Count one outcome of an alert webhook delivery."""
        self.alert_deliveries.labels(result).inc()

    def store_slow_query(self, op: str) -> None:
        """Count one slow SQL statement (``op`` is one of a fixed set of statement kinds)."""
        self.store_slow_queries.labels(op).inc()

    def exposition(self) -> bytes:
        """The Prometheus text format of every series (all workers in multiprocess mode)."""
        if self.multiprocess_dir:
            registry = CollectorRegistry()
            prom_multiprocess.MultiProcessCollector(  # type: ignore[no-untyped-call]
                registry, path=self.multiprocess_dir
            )
            return generate_latest(registry)
        return generate_latest(self.registry)
