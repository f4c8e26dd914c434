"""The documentation names every problem code and every metric series Bastion defines."""

from __future__ import annotations

from pathlib import Path

from bastion.http.problems import PROBLEMS
from bastion.observe.metrics import Metrics

ROOT = Path(__file__).resolve().parent.parent


def test_every_problem_code_documented() -> None:
    text = (ROOT / "docs" / "errors.md").read_text()
    missing = [
        code for code, spec in PROBLEMS.items() if f"| `{code}` | {spec.status} |" not in text
    ]
    assert not missing, f"docs/errors.md lacks rows for {missing}"


def test_every_metric_documented() -> None:
    text = (ROOT / "docs" / "metrics.md").read_text()
    names = {metric.name for metric in Metrics().registry.collect()}
    missing = [name for name in sorted(names) if f"`{name}" not in text]
    assert not missing, f"docs/metrics.md lacks {missing}"
