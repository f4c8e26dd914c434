"""``bastion waf scan``: one verdict per record, the summary, options and errors."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from bastion.cli.app import app
from bastion.inspect import detectors
from bastion.inspect.core import Location, Match, Normalized, Severity
from bastion.inspect.request import InspectionRequest

runner = CliRunner()


def detect_script(value: Normalized, location: Location, paranoia: int) -> list[Match]:
    found = []
    if "<script" in value.folded:
        found.append(Match("xss-script", "xss", Severity.CRITICAL, location))
    if paranoia >= 2 and "alert" in value.folded:
        found.append(Match("xss-alert", "xss", Severity.CRITICAL, location, paranoia=2))
    return found


def check_nothing(request: InspectionRequest, paranoia: int) -> list[Match]:
    return []


@pytest.fixture(autouse=True)
def _test_detectors(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BASTION_CONFIG", raising=False)
    monkeypatch.setattr(detectors, "default_detectors", lambda: [detect_script])
    monkeypatch.setattr(detectors, "default_protocol_check", lambda: check_nothing)


RECORDS = [
    {
        "id": "a1",
        "category": "xss",
        "attack": True,
        "rule_id": 941100,
        "method": "GET",
        "uri": "/?q=%3Cscript%3Ex",
        "headers": {},
        "body": None,
        "raw": None,
    },
    {
        "id": "a2",
        "category": "xss",
        "attack": True,
        "rule_id": 941101,
        "method": "POST",
        "uri": "/",
        "headers": {},
        "body": "q=alert(1)",
        "raw": None,
    },
    {
        "id": "n1",
        "category": "xss",
        "attack": False,
        "rule_id": 941100,
        "method": "GET",
        "uri": "/?q=hello",
        "headers": {},
        "body": None,
        "raw": None,
    },
    {
        "id": "b1",
        "category": "benign",
        "attack": False,
        "rule_id": None,
        "method": "GET",
        "uri": "/search?q=%3Cscript",
        "headers": {"User-Agent": "x"},
        "body": None,
        "raw": None,
    },
]


@pytest.fixture
def corpus(tmp_path: Path) -> Path:
    path = tmp_path / "corpus.jsonl"
    path.write_bytes(b"\n".join(orjson.dumps(record) for record in RECORDS) + b"\n\n")
    return path


def test_one_verdict_per_line(corpus: Path) -> None:
    result = runner.invoke(app, ["waf", "scan", str(corpus)])
    assert result.exit_code == 0, result.output
    verdicts = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert verdicts[0] == {
        "id": "a1",
        "blocked": True,
        "score": 5,
        "matches": [{"rule": "xss-script", "category": "xss", "location": "query:q"}],
    }
    assert [v["blocked"] for v in verdicts] == [True, False, False, True]


def test_paranoia_option(corpus: Path) -> None:
    result = runner.invoke(app, ["waf", "scan", "--paranoia", "2", str(corpus)])
    verdicts = [orjson.loads(line) for line in result.stdout.splitlines()]
    assert verdicts[1]["matches"] == [
        {"rule": "xss-alert", "category": "xss", "location": "form:q"}
    ]


def test_monitor_mode_in_the_configuration_still_reports_what_would_block(
    corpus: Path, tmp_path: Path
) -> None:
    config = tmp_path / "bastion.toml"
    config.write_text('[inspect]\nmode = "monitor"\n')
    result = runner.invoke(app, ["waf", "scan", "--config", str(config), str(corpus)])
    assert orjson.loads(result.stdout.splitlines()[0])["blocked"] is True


def test_summary(corpus: Path) -> None:
    result = runner.invoke(app, ["waf", "scan", "--summary", str(corpus)])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["category", "detected", "rule", "avg", "false", "pos"]
    assert lines[1].split() == ["xss", "1/2", "50.0%", "50.0%", "0/1", "0.0%"]
    assert lines[2].split() == ["benign", "-", "-", "1/1", "100.0%"]
    assert lines[3].startswith("latency p50")


@pytest.mark.parametrize(
    "args",
    [["waf", "scan", "missing.jsonl"], ["waf", "scan", "--paranoia", "5", "x.jsonl"]],
)
def test_argument_errors_exit_2(args: list[str]) -> None:
    assert runner.invoke(app, args).exit_code == 2


def test_an_invalid_corpus_line_fails_cleanly(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text("{not json\n")
    result = runner.invoke(app, ["waf", "scan", str(path)])
    assert result.exit_code == 1
    assert "cannot read the corpus" in result.output
