"""Problem details: one schema, registered codes, no leaks."""

from __future__ import annotations

import pytest

from bastion.http.problems import PROBLEMS, BastionError, problem_body, problem_headers, register
from problem_assertions import assert_problem_body


@pytest.mark.parametrize("code", sorted(PROBLEMS))
def test_every_code_renders_valid_problem(code: str) -> None:
    error = BastionError(code)
    assert_problem_body(problem_body(error, "rid-1"), PROBLEMS[code].status, code)


def test_extensions_and_headers() -> None:
    error = BastionError(
        "overloaded", "busy", headers={"Retry-After": "3"}, extensions={"retry_after": 3}
    )
    body = assert_problem_body(problem_body(error, None), 503, "overloaded")
    assert body["retry_after"] == 3
    assert body["request_id"] is None
    headers = dict(problem_headers(error, b"{}"))
    assert headers[b"retry-after"] == b"3"
    assert headers[b"content-type"] == b"application/problem+json"


def test_extensions_cannot_override_core_members() -> None:
    error = BastionError("not_found", extensions={"status": 200, "code": "ok"})
    assert_problem_body(problem_body(error, "x"), 404, "not_found")


def test_unknown_code_rejected() -> None:
    with pytest.raises(ValueError, match="unknown problem code"):
        BastionError("no_such_code")


def test_register_is_idempotent_but_not_conflicting() -> None:
    register("test_only_code", 418, "Teapot")
    register("test_only_code", 418, "Teapot")
    with pytest.raises(ValueError, match="already registered"):
        register("test_only_code", 400, "Other")
    del PROBLEMS["test_only_code"]
