"""The atheris fuzz target runs briefly with the suite (``make fuzz`` runs it for longer)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

TARGET = Path(__file__).parents[1] / "fuzz" / "fuzz_inspection.py"


def test_inspection_survives_a_short_fuzzing_run(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            str(TARGET),
            "-runs=20000",
            "-max_len=4096",
            f"-artifact_prefix={tmp_path}/",
        ],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert "Done 20000 runs" in result.stderr
    assert not list(tmp_path.glob("crash-*"))
