"""Request input checks shared by the demo's endpoints: query parameters, bodies, models.

Every refusal of malformed input is an :class:`InvalidInput` (rendered as 422 with one entry per
offending field, ``loc`` prefixed by ``query``, ``path`` or ``body``) or a :class:`BodyTooLarge`
(413). Endpoints raise them; ``app.py`` renders them in one place.
"""

from __future__ import annotations

import math
import re
from typing import Any, TypedDict, TypeVar

import orjson
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

__all__ = [
    "BodyTooLarge",
    "FieldError",
    "InvalidInput",
    "parse_object",
    "query_float",
    "query_int",
    "read_body",
    "validate",
]

ModelT = TypeVar("ModelT", bound=BaseModel)

_DIGITS = re.compile(r"[0-9]{1,19}")
# Plain ASCII decimal only (int() would also take "1_000", " 7 " and other scripts' digits), and
# short of the digit count past which int() refuses to convert.
_INTEGER = re.compile(r"[+-]?[0-9]{1,4000}")


class FieldError(TypedDict):
    """One invalid input: where it is, what is wrong, and a stable machine-readable type."""

    loc: list[str | int]
    msg: str
    type: str


class InvalidInput(Exception):
    """Input that the demo refuses with 422."""

    def __init__(self, errors: list[FieldError]) -> None:
        super().__init__(f"{len(errors)} invalid input(s)")
        self.errors = errors


class BodyTooLarge(Exception):
    """A request body over the endpoint's limit (413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body over {limit} bytes")
        self.limit = limit


def _query_error(name: str, msg: str, kind: str) -> InvalidInput:
    return InvalidInput([{"loc": ["query", name], "msg": msg, "type": kind}])


def query_int(request: Request, name: str, *, default: int, minimum: int, maximum: int) -> int:
    """The integer query parameter ``name`` (``default`` when absent), within bounds."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if _INTEGER.fullmatch(raw) is None:
        raise _query_error(name, "Input should be a valid integer", "int_parsing")
    value = int(raw)
    if not minimum <= value <= maximum:
        msg = f"Input should be between {minimum} and {maximum}"
        raise _query_error(name, msg, "out_of_range")
    return value


def query_float(
    request: Request, name: str, *, default: float, minimum: float, maximum: float
) -> float:
    """The finite number query parameter ``name`` (``default`` when absent), within bounds."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise _query_error(name, "Input should be a valid number", "float_parsing") from None
    if not math.isfinite(value):
        raise _query_error(name, "Input should be a finite number", "finite_number")
    if not minimum <= value <= maximum:
        msg = f"Input should be between {minimum:g} and {maximum:g}"
        raise _query_error(name, msg, "out_of_range")
    return value


async def read_body(request: Request, limit: int) -> bytes:
    """The whole request body, refused with :class:`BodyTooLarge` as soon as it passes ``limit``.

    The declared ``Content-Length`` is checked first so an oversized upload is refused before
    any of it is read.
    """
    declared = request.headers.get("content-length")
    if declared is not None and _DIGITS.fullmatch(declared) and int(declared) > limit:
        raise BodyTooLarge(limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(limit)
        chunks.append(chunk)
    return b"".join(chunks)


def parse_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON body that must be an object."""
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise InvalidInput(
            [{"loc": ["body"], "msg": "Body should be valid JSON", "type": "json_invalid"}]
        ) from None
    if not isinstance(data, dict):
        raise InvalidInput(
            [{"loc": ["body"], "msg": "Body should be a JSON object", "type": "model_type"}]
        )
    return data


def validate(model: type[ModelT], data: dict[str, Any]) -> ModelT:
    """Validate ``data`` against ``model``; every failure becomes a ``body``-located error."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        errors: list[FieldError] = [
            {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
            for error in exc.errors(include_url=False, include_context=False, include_input=False)
        ]
        raise InvalidInput(errors) from None
