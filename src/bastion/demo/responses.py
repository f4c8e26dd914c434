"""The demo's JSON responses: rendered by orjson, errors in one small shape.

The demo stands for an ordinary upstream API, so its errors are plain ``application/json``
(``{"error", "detail", "errors"?}``), deliberately not Bastion's ``problem+json``: tests that go
through the gateway can tell an upstream answer from one Bastion generated.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import orjson
from starlette.responses import Response

from bastion.demo.validation import FieldError

__all__ = ["OrjsonResponse", "error_response"]


class OrjsonResponse(Response):
    """JSON response rendered by orjson (dataclasses and UTC datetimes render natively)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_UTC_Z)


def error_response(
    status: int,
    code: str,
    detail: str,
    *,
    errors: Sequence[FieldError] | None = None,
    headers: Mapping[str, str] | None = None,
) -> OrjsonResponse:
    """An error answer: ``{"error": code, "detail": detail}`` plus ``errors`` for 422s."""
    body: dict[str, Any] = {"error": code, "detail": detail}
    if errors is not None:
        body["errors"] = errors
    return OrjsonResponse(body, status_code=status, headers=headers)
