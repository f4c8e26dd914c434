"""Assertions shared by the tests: every problem response validates against one schema."""

from __future__ import annotations

from typing import Any

import jsonschema
import orjson

from bastion.http.problems import PROBLEM_SCHEMA, PROBLEM_TYPE_BASE, PROBLEMS

_VALIDATOR = jsonschema.Draft202012Validator(PROBLEM_SCHEMA)


def assert_problem_body(body: bytes | dict[str, Any], status: int, code: str) -> dict[str, Any]:
    """Validate a problem body and check its status and code; return it parsed."""
    data = orjson.loads(body) if isinstance(body, bytes) else body
    _VALIDATOR.validate(data)
    assert data["status"] == status, data
    assert data["code"] == code, data
    assert data["type"] == PROBLEM_TYPE_BASE + code
    assert code in PROBLEMS, f"{code} is not a registered problem code"
    return data


def assert_problem(response: Any, status: int, code: str) -> dict[str, Any]:
    """Check an httpx/TestClient response is the expected problem+json."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    data = assert_problem_body(response.content, status, code)
    assert data["request_id"] == response.headers["x-request-id"]
    return data
