"""Answering a request from a stored response: whole, ``HEAD``, 304 or a single byte range.

A ``Range`` request is served from a stored complete 200 as a 206 of that one range (or 416
``range_not_satisfiable`` when it lies beyond the body); ``If-Range`` that does not match the
stored validator gets the whole response, as does a ``Range`` the cache does not serve (several
ranges, other units). Stored 206 responses do not exist: a partial response is never stored.
"""

from __future__ import annotations

from collections.abc import Sequence

from bastion.cache.http.directives import http_date
from bastion.cache.http.entry import Entry, not_modified_headers
from bastion.cache.http.policy import Conditional, Header, byte_range, evaluate_conditional
from bastion.http.asgi import Send
from bastion.http.problems import BastionError, register

__all__ = ["XCACHE", "send_entry"]

register("range_not_satisfiable", 416, "Range not satisfiable")

XCACHE = {
    "HIT": (b"x-cache", b"HIT"),
    "MISS": (b"x-cache", b"MISS"),
    "STALE": (b"x-cache", b"STALE"),
}


def _if_range_holds(value: bytes, entry: Entry) -> bool:
    """RFC 9110 §13.1.5: a strong ETag equal to the stored one, or the stored Last-Modified."""
    value = value.strip()
    if value.startswith((b'"', b"W/")):
        etag = entry["etag"]
        return etag is not None and not value.startswith(b"W/") and value == etag
    moment = http_date(value)
    return moment is not None and moment == entry["modified"]


async def send_entry(
    send: Send,
    entry: Entry,
    request_headers: Sequence[Header],
    *,
    head: bool,
    age: float,
    label: bytes | None,
    range_header: bytes | None = None,
    conditional: bool = True,
) -> None:
    """Send ``entry`` as the answer to a request with ``request_headers`` (``conditional``:
    they may carry ``If-None-Match``/``If-Modified-Since``)."""
    extra: list[Header] = [(b"age", str(int(age)).encode("ascii"))]
    if label is not None:
        extra.append((b"x-cache", label))
    if (
        conditional
        and entry["status"] == 200
        and evaluate_conditional(
            request_headers, etag=entry["etag"], last_modified=entry["modified"]
        )
        == Conditional.NOT_MODIFIED
    ):
        await send(
            {
                "type": "http.response.start",
                "status": 304,
                "headers": [*not_modified_headers(entry), *extra],
            }
        )
        await send({"type": "http.response.body", "body": b""})
        return
    body: bytes = entry["body"]
    if range_header is not None and entry["status"] == 200:
        if_range = next((v for n, v in request_headers if n == b"if-range"), None)
        if if_range is None or _if_range_holds(if_range, entry):
            span = byte_range(range_header, len(body))
            if span is not None:
                await _send_range(send, entry, span, extra, head=head)
                return
    await send(
        {
            "type": "http.response.start",
            "status": entry["status"],
            "headers": [*entry["headers"], *extra],
        }
    )
    await send({"type": "http.response.body", "body": b"" if head else body})


async def _send_range(
    send: Send, entry: Entry, span: tuple[int, int], extra: list[Header], *, head: bool
) -> None:
    body: bytes = entry["body"]
    first, last = span
    if first < 0:
        raise BastionError(
            "range_not_satisfiable",
            "The requested range lies beyond the representation",
            headers={"Content-Range": f"bytes */{len(body)}"},
        )
    headers = [(name, value) for name, value in entry["headers"] if name != b"content-length"]
    part = body[first : last + 1]
    headers.append((b"content-range", f"bytes {first}-{last}/{len(body)}".encode("ascii")))
    headers.append((b"content-length", str(len(part)).encode("ascii")))
    await send({"type": "http.response.start", "status": 206, "headers": [*headers, *extra]})
    await send({"type": "http.response.body", "body": b"" if head else part})
