"""The one exception type of the store package."""

from __future__ import annotations

__all__ = ["StoreConflictError", "StoreError", "describe"]

_MAX_DETAIL = 200


class StoreError(Exception):
    """A database or Redis call failed; the driver's exception is the ``__cause__``.

    Messages name the operation and the driver error, never a URL or a credential, so they can be
    logged and shown in ``/_bastion/ready`` as they are.
    """


class StoreConflictError(StoreError):
    """A write broke a uniqueness or foreign-key constraint (someone else wrote first)."""


def describe(exc: BaseException) -> str:
    """A short single-line description of a driver error: its class and first line."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    name = type(exc).__name__
    if isinstance(exc, TimeoutError) and not text:
        return "timed out"
    detail = f"{name}: {text}" if text else name
    if len(detail) > _MAX_DETAIL:
        detail = detail[: _MAX_DETAIL - 1] + "…"
    return detail
