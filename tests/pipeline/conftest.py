"""Fixtures for the stage tests."""

from __future__ import annotations

import pytest
from starlette.applications import Starlette

from stage_harness import make_echo_app


@pytest.fixture
def echo_app() -> Starlette:
    """A small app: GET /hello, POST /echo, GET /boom (raises)."""
    return make_echo_app()
