"""Helpers for HTTP field values that several stages edit on the way out."""

from __future__ import annotations

__all__ = ["merge_vary"]


def merge_vary(headers: list[tuple[bytes, bytes]], token: bytes) -> None:
    """Add ``token`` (a field name) to the response's ``Vary`` unless it is already covered."""
    wanted = token.lower()
    first = -1
    for index, (name, value) in enumerate(headers):
        if name.lower() == b"vary":
            listed = {item.strip().lower() for item in value.split(b",")}
            if wanted in listed or b"*" in listed:
                return
            if first < 0:
                first = index
    if first < 0:
        headers.append((b"vary", token))
    else:
        name, value = headers[first]
        headers[first] = (name, value + b", " + token if value.strip() else token)
