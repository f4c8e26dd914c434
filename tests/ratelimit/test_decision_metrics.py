"""``bastion_ratelimit_decisions_total{policy,result}``: plain counts exported when scraped in
one process, shared-file counters with ``PROMETHEUS_MULTIPROC_DIR``."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from bastion.observe.metrics import Metrics


def samples(metrics: Metrics) -> dict[tuple[str, str], float]:
    found: dict[tuple[str, str], float] = {}
    for family in text_string_to_metric_families(metrics.exposition().decode()):
        for sample in family.samples:
            if sample.name == "bastion_ratelimit_decisions_total":
                found[(sample.labels["policy"], sample.labels["result"])] = sample.value
    return found


def test_single_process_counts_are_exported_under_the_contract_name() -> None:
    metrics = Metrics()
    assert metrics.ratelimit_counts is not None
    for _ in range(3):
        metrics.ratelimit_decision("global", "allowed")
    metrics.ratelimit_decision("global", "limited")
    metrics.ratelimit_counts[("api", "shadow_limited")] = 2  # as the limiter increments
    assert samples(metrics) == {
        ("global", "allowed"): 3.0,
        ("global", "limited"): 1.0,
        ("api", "shadow_limited"): 2.0,
    }
    value = metrics.registry.get_sample_value(
        "bastion_ratelimit_decisions_total", {"policy": "global", "result": "allowed"}
    )
    assert value == 3.0


_WORKER = """
import sys
from bastion.observe.metrics import Metrics

metrics = Metrics()
assert metrics.ratelimit_counts is None
for _ in range(int(sys.argv[1])):
    metrics.ratelimit_decision("global", "allowed")
sys.stdout.write(metrics.exposition().decode())
"""


def test_multiprocess_mode_keeps_real_counters(tmp_path: Path) -> None:
    # prometheus_client picks its file-backed values when imported: a process of its own.
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for count in (2, 1):
        done = subprocess.run(
            [sys.executable, "-c", _WORKER, str(count)],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=60,
        )
    # The second worker's exposition sums both workers' files.
    found = [
        sample
        for family in text_string_to_metric_families(done.stdout)
        for sample in family.samples
        if sample.name == "bastion_ratelimit_decisions_total"
    ]
    assert [(s.labels, s.value) for s in found] == [
        ({"policy": "global", "result": "allowed"}, 3.0)
    ]
