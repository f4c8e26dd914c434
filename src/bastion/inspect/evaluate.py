"""Running the inspector over a request corpus and scoring it (schema and scoring rules:
``shared/corpus/waf/README.md``).

``bastion waf scan`` prints one verdict per record; :class:`Tally` turns verdicts into detection
rates per category (per stage, and averaged per CRS rule id so that rules with hundreds of tests
do not dominate) and false-positive rates, which ``make waf-eval`` writes into ``docs/waf.md``.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from bastion.inspect.engine import InspectionVerdict, Inspector
from bastion.inspect.request import InspectionRequest

__all__ = [
    "ATTACK_CATEGORIES",
    "Record",
    "Tally",
    "percentile",
    "read_records",
    "scan",
    "verdict_json",
]

ATTACK_CATEGORIES = ("sqli", "xss", "rce", "lfi", "ssrf")
"""The categories with targets; the others are reported too, ``other`` apart."""


@dataclass(frozen=True, slots=True)
class Record:
    """One corpus line: its labels and the request it describes."""

    id: str
    category: str
    attack: bool
    rule_id: int | None
    request: InspectionRequest
    size: int
    """Bytes on the wire, roughly: target, header fields and body."""


def read_records(path: Path) -> Iterator[Record]:
    """The records of a JSONL corpus file, in order (blank lines skipped)."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield _record(orjson.loads(line))


def _record(data: dict[str, Any]) -> Record:
    request = InspectionRequest.from_record(data)
    size = (
        len(request.target)
        + sum(len(name) + len(value) + 4 for name, value in request.headers)
        + len(request.body)
    )
    return Record(
        str(data.get("id", "")),
        str(data.get("category") or "benign"),
        bool(data.get("attack")),
        data.get("rule_id"),
        request,
        size,
    )


def scan(
    inspector: Inspector, records: Iterable[Record]
) -> Iterator[tuple[Record, InspectionVerdict, float]]:
    """Each record with its verdict and the inspection time in seconds."""
    clock = time.perf_counter
    for record in records:
        started = clock()
        verdict = inspector.inspect(record.request)
        yield record, verdict, clock() - started


def verdict_json(record_id: str, verdict: InspectionVerdict) -> bytes:
    """``{"id", "blocked", "score", "matches": [{"rule", "category", "location"}]}``."""
    return orjson.dumps(
        {
            "id": record_id,
            "blocked": verdict.flagged,
            "score": verdict.score,
            "matches": [
                {"rule": m.rule, "category": m.category, "location": m.location.label()}
                for m in verdict.matches
            ],
        }
    )


def percentile(values: list[float], fraction: float) -> float:
    """The ``fraction`` quantile of ``values`` (nearest rank); 0 for no values."""
    if not values:
        return 0.0
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * len(ordered)) - 1))
    return ordered[index]


@dataclass(frozen=True, slots=True)
class Rate:
    """``hits`` of ``total``."""

    hits: int
    total: int

    @property
    def value(self) -> float:
        """The rate in [0, 1]; 0 when there is nothing to count."""
        return self.hits / self.total if self.total else 0.0


@dataclass
class Tally:
    """Detection and false-positive counts, built one verdict at a time."""

    flagged: dict[tuple[str, bool], int] = field(default_factory=lambda: defaultdict(int))
    counted: dict[tuple[str, bool], int] = field(default_factory=lambda: defaultdict(int))
    by_rule: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    small_latencies: list[float] = field(default_factory=list)
    steady_latencies: list[float] = field(default_factory=list)
    """Latencies of a second pass (see :mod:`bastion.inspect.report`)."""
    steady_small_latencies: list[float] = field(default_factory=list)

    def add(self, record: Record, verdict: InspectionVerdict, seconds: float) -> None:
        """Count one verdict (``flagged``: the score reached the threshold)."""
        key = (record.category, record.attack)
        self.counted[key] += 1
        self.flagged[key] += verdict.flagged
        if record.attack and record.rule_id is not None:
            hits = self.by_rule.setdefault((record.category, record.rule_id), [0, 0])
            hits[0] += verdict.flagged
            hits[1] += 1
        self.latencies.append(seconds)
        if record.size < 1024:
            self.small_latencies.append(seconds)

    def add_steady(self, record: Record, seconds: float) -> None:
        """Count one second-pass latency."""
        self.steady_latencies.append(seconds)
        if record.size < 1024:
            self.steady_small_latencies.append(seconds)

    def categories(self) -> list[str]:
        """Categories seen, the attack categories first, ``benign`` and ``other`` last."""
        seen = {category for category, _ in self.counted}
        rest = sorted(seen - set(ATTACK_CATEGORIES) - {"benign", "other"})
        tail = [name for name in ("other", "benign") if name in seen]
        return [name for name in ATTACK_CATEGORIES if name in seen] + rest + tail

    def detection(self, category: str) -> Rate:
        """Attack records of ``category`` flagged, per stage."""
        key = (category, True)
        return Rate(self.flagged.get(key, 0), self.counted.get(key, 0))

    def rule_averaged(self, category: str) -> float:
        """Mean over the category's rule ids of each rule's detection rate."""
        rates = [
            hits / total for (cat, _), (hits, total) in self.by_rule.items() if cat == category
        ]
        return sum(rates) / len(rates) if rates else 0.0

    def rules(self, category: str) -> list[tuple[int, Rate]]:
        """Each rule id of ``category`` with its detection, sorted by id."""
        return sorted(
            (rule, Rate(hits, total))
            for (cat, rule), (hits, total) in self.by_rule.items()
            if cat == category
        )

    def false_positives(self, category: str | None = None) -> Rate:
        """Non-attack records flagged: of one category, or of every CRS category (not the
        synthetic ``benign`` set) when ``category`` is None."""
        if category is not None:
            key = (category, False)
            return Rate(self.flagged.get(key, 0), self.counted.get(key, 0))
        keys = [key for key in self.counted if not key[1] and key[0] != "benign"]
        return Rate(sum(self.flagged.get(k, 0) for k in keys), sum(self.counted[k] for k in keys))

    def summary(self) -> str:
        """A plain-text table for ``bastion waf scan --summary``."""
        lines = [f"{'category':<18}{'detected':>16}{'rule avg':>10}{'false pos':>16}"]
        for category in self.categories():
            found, fp = self.detection(category), self.false_positives(category)
            detected = f"{found.hits}/{found.total} {found.value:6.1%}" if found.total else "-"
            averaged = f"{self.rule_averaged(category):6.1%}" if found.total else "-"
            false_pos = f"{fp.hits}/{fp.total} {fp.value:6.1%}" if fp.total else "-"
            lines.append(f"{category:<18}{detected:>16}{averaged:>10}{false_pos:>16}")
        lines.append(
            f"latency p50 {percentile(self.latencies, 0.5) * 1e6:.0f} µs, "
            f"p99 {percentile(self.latencies, 0.99) * 1e6:.0f} µs over {len(self.latencies)}"
        )
        return "\n".join(lines)
