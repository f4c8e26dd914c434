"""``/ws/echo``: text and binary echo, client-chosen close codes."""

from __future__ import annotations

import pytest
from starlette.websockets import WebSocketDisconnect

from bastion.demo.websocket import sendable_close_code


def test_echoes_text_and_binary(client):
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text("hello")
        assert ws.receive_text() == "hello"
        ws.send_bytes(b"\x00\x01\xff")
        assert ws.receive_bytes() == b"\x00\x01\xff"
        ws.send_text("")
        assert ws.receive_text() == ""


@pytest.mark.parametrize(
    ("command", "code", "reason"),
    [
        ("close:1000", 1000, ""),
        ("close:1001:going away", 1001, "going away"),
        ("close:1011:boom", 1011, "boom"),
        ("close:4001:bye", 4001, "bye"),
        ("close:3000:a:b", 3000, "a:b"),
        ("close:4999:" + "r" * 123, 4999, "r" * 123),
    ],
)
def test_close_command_closes_with_that_code_and_reason(client, command, code, reason):
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text(command)
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()

    assert closed.value.code == code
    assert closed.value.reason == reason


@pytest.mark.parametrize(
    "command",
    [
        "close:",
        "close:abc",
        "close:999",
        "close:1005",
        "close:1006",
        "close:1015",
        "close:2000",
        "close:5000",
        "close:-1",
        "close:\u00b2",
        "close:\u0664\u0660\u0660\u0660",
        "close:4000:" + "r" * 124,
    ],
)
def test_unusable_close_command_is_reported_and_the_connection_stays_open(client, command):
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text(command)
        assert ws.receive_text().startswith("error: cannot close with")
        ws.send_text("still here")
        assert ws.receive_text() == "still here"


def test_close_prefix_must_be_exact(client):
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text("CLOSE:1000")
        assert ws.receive_text() == "CLOSE:1000"


def test_first_offered_subprotocol_is_accepted(client):
    with client.websocket_connect("/ws/echo", subprotocols=["chat.v2", "chat.v1"]) as ws:
        assert ws.accepted_subprotocol == "chat.v2"


def test_no_subprotocol_when_none_offered(client):
    with client.websocket_connect("/ws/echo") as ws:
        assert ws.accepted_subprotocol is None


def test_client_close_ends_the_session(client):
    with client.websocket_connect("/ws/echo") as ws:
        ws.send_text("one")
        assert ws.receive_text() == "one"
        ws.close(1000)


@pytest.mark.parametrize(
    ("code", "sendable"),
    [
        (999, False),
        (1000, True),
        (1003, True),
        (1004, False),
        (1006, False),
        (1007, True),
        (1014, True),
        (1015, False),
        (2999, False),
        (3000, True),
        (4999, True),
        (5000, False),
    ],
)
def test_sendable_close_codes_follow_rfc_6455(code, sendable):
    assert sendable_close_code(code) is sendable
