"""``make waf-eval``'s report over a tiny corpus: targets with met/not met, per-level and
per-rule tables, the checks that could not be imported, worst-case timings."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from bastion.inspect import detectors, report, worstcase
from bastion.inspect.request import InspectionRequest


def record(rid: str, category: str, attack: bool, uri: str, rule: int | None = 1) -> bytes:
    data = {
        "id": rid,
        "category": category,
        "attack": attack,
        "rule_id": rule,
        "method": "GET",
        "uri": uri,
        "headers": {},
        "body": None,
        "raw": None,
    }
    return orjson.dumps(data)


def missing_protocol() -> object:
    raise ImportError("no protocol checks")


def test_report_over_a_tiny_corpus(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    # Only the XSS detector is available: the others and the protocol checks are "missing".
    monkeypatch.setattr(detectors, "DETECTOR_MODULES", ("xss", "nonexistent"))
    monkeypatch.setattr(detectors, "default_protocol_check", missing_protocol)
    monkeypatch.setattr(report, "SIZES", (1024, 2048, 4096, 8192, 8192, 8192))
    monkeypatch.setattr(
        worstcase,
        "_shapes",
        lambda size: iter([("plain", InspectionRequest("GET", "/?q=" + "a" * size, (), b""))]),
    )
    (tmp_path / "crs_regression.jsonl").write_bytes(
        b"\n".join(
            [
                record("x1", "xss", True, "/?q=%3Cscript%3Ealert(1)%3C/script%3E", 941100),
                record("x2", "xss", True, "/?q=harmless", 941101),
                record("s1", "sqli", True, "/?id=1", 942100),
                record("n1", "xss", False, "/?q=hello", 941100),
            ]
        )
    )
    (tmp_path / "benign_requests.jsonl").write_bytes(
        record("b1", "benign", False, "/products?page=2", None)
    )
    out = tmp_path / "waf.md"
    logged: list[str] = []
    report.main(["--corpus", str(tmp_path), "--out", str(out), "--paranoia", "1,2"], logged.append)
    text = out.read_text()
    assert "| xss detection ≥ 95% | 50.0% | **not met** |" in text
    assert "| sqli detection ≥ 75% | 0.0% | **not met** |" in text
    assert "| false positives ≤ 0.5% (benign set) | 0.0% | met |" in text
    assert "Detectors: `detect_xss`." in text
    assert "`detect_nonexistent`, `check_protocol`" in text
    assert "## Paranoia 1" in text
    assert "## Paranoia 2" in text
    assert "| xss | 50.0% (1/2) | 50.0% | 0.0% (0/1) |" in text
    assert "- **xss**: 941100 100.0% (1/1), 941101 0.0% (0/1)" in text
    assert "| plain |" in text
    assert "target ≤ 50 ms: met" in text
    assert "| latency p50 ≤ 100 µs (requests < 1 KiB, steady state) |" in text
    assert "Latency per request, steady state (second pass, fresh inspector): p50 " in text
    assert "; first pass of the process: p50 " in text
    assert "under 1 KiB p50 " in text
    assert logged[-1] == f"wrote {out}"


def test_both_passes_are_timed_and_must_agree(tmp_path: Path) -> None:
    (tmp_path / "crs_regression.jsonl").write_bytes(
        b"\n".join(
            [
                record("x1", "xss", True, "/?q=%3Cscript%3Ealert(1)%3C/script%3E", 941100),
                record("big", "xss", False, "/?q=" + "a" * 2000, 941100),
            ]
        )
    )
    (tmp_path / "benign_requests.jsonl").write_bytes(record("b1", "benign", False, "/p", None))
    checks = report.Checks()
    tally = report.evaluate(checks, tmp_path, 1)
    assert len(tally.latencies) == len(tally.steady_latencies) == 3
    assert len(tally.small_latencies) == len(tally.steady_small_latencies) == 2

    calls: list[str] = []

    def fickle(value: object, location: object, paranoia: int) -> list[object]:
        # Flags everything the first time the report runs it, nothing afterwards.
        calls.append("x")
        if len(calls) <= 5:
            return [report.Match("fickle-1", "xss", 5, location)]  # type: ignore[arg-type]
        return []

    checks.detectors = [fickle]
    with pytest.raises(RuntimeError, match="second pass"):
        report.evaluate(checks, tmp_path, 1)


def test_worst_case_shapes_are_about_the_size_asked() -> None:
    shapes = list(worstcase._shapes(4096))
    assert len(shapes) == 8
    for name, request in shapes:
        size = len(request.target) + len(request.body) + sum(len(v) for _, v in request.headers)
        assert 3000 < size < 8300, name
