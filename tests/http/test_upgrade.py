"""WebSocket upgrade requests are checked before the WebSocket library parses them."""

from __future__ import annotations

import pytest

from bastion.http.upgrade import MAX_LINE, upgrade_problem

KEY = (b"sec-websocket-key", b"dGhlIHNhbXBsZSBub25jZQ==")
VERSION = (b"sec-websocket-version", b"13")
BASE = [(b"host", b"x"), (b"upgrade", b"websocket"), (b"connection", b"Upgrade"), KEY, VERSION]

CASES = [
    # id, extra or replaced headers, expected code (None: accepted)
    ("plain", [], None),
    ("subprotocols", [(b"sec-websocket-protocol", b"chat, superchat")], None),
    (
        "extensions",
        [
            (
                b"sec-websocket-extensions",
                b'permessage-deflate; client_max_window_bits, x-foo; a="b c"',
            )
        ],
        None,
    ),
    ("subprotocol-space-separated", [(b"sec-websocket-protocol", b"a b")], "bad_request"),
    ("subprotocol-empty", [(b"sec-websocket-protocol", b"")], "bad_request"),
    ("subprotocol-trailing-comma", [(b"sec-websocket-protocol", b"a,")], "bad_request"),
    ("extension-garbage", [(b"sec-websocket-extensions", b"deflate; =x")], "bad_request"),
    ("non-ascii", [(b"sec-websocket-protocol", "chät".encode())], "bad_request"),
    ("long-line", [(b"x-pad", b"p" * MAX_LINE)], "request_header_too_large"),
    ("version-12", [(b"sec-websocket-version", b"12")], "upgrade_required"),
    ("bad-key", [(b"sec-websocket-key", b"not base64!")], "bad_request"),
    ("short-key", [(b"sec-websocket-key", b"AAAA")], "bad_request"),
]


@pytest.mark.parametrize(
    ("extra", "code"), [case[1:] for case in CASES], ids=[case[0] for case in CASES]
)
def test_upgrade_requests(extra: list[tuple[bytes, bytes]], code: str | None) -> None:
    replaced = {name for name, _ in extra}
    headers = [pair for pair in BASE if pair[0] not in replaced] + extra
    problem = upgrade_problem(headers)
    assert (problem.code if problem else None) == code


def test_missing_or_repeated_key() -> None:
    without = [pair for pair in BASE if pair is not KEY]
    assert upgrade_problem(without).code == "bad_request"  # type: ignore[union-attr]
    assert upgrade_problem([*BASE, KEY]).code == "bad_request"  # type: ignore[union-attr]


def test_426_names_the_supported_version() -> None:
    problem = upgrade_problem([KEY, (b"sec-websocket-version", b"8")])
    assert problem is not None
    assert problem.status == 426
    assert problem.headers == {"Sec-WebSocket-Version": "13"}


@pytest.mark.parametrize(
    "value",
    [b"a," * 4000, b"a; " * 2700, b'x; a="' + b"\\" * 8000, b"a ;" * 2700 + b"="],
)
def test_adversarial_values_are_answered(value: bytes) -> None:
    # Linear-time patterns: long, nearly valid values are refused without backtracking.
    for name in (b"sec-websocket-protocol", b"sec-websocket-extensions"):
        assert upgrade_problem([KEY, VERSION, (name, value[: MAX_LINE - 40])]) is not None
