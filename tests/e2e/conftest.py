"""Fixtures of the end-to-end tests: real processes (helpers in :mod:`e2e.processes`)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from e2e.processes import Processes


@pytest.fixture
def processes(tmp_path: Path) -> Iterator[Processes]:
    """Processes started by one test, stopped after it."""
    started = Processes(tmp_path)
    yield started
    started.stop_all()


@pytest.fixture(scope="module")
def module_processes(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Processes]:
    """Processes shared by the tests of one module, stopped after the last of them."""
    started = Processes(tmp_path_factory.mktemp("processes"))
    yield started
    started.stop_all()
