"""Issuing and verifying access and refresh tokens: round trips, claims, leeway, clocks."""

from __future__ import annotations

import base64
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bastion.auth.config import SigningAlgorithm, TokenConfig
from bastion.auth.keyring import SigningKeys
from bastion.auth.tokens import (
    ACCESS_TYPE,
    REFRESH_TYPE,
    TokenError,
    TokenIssuer,
    TokenVerifier,
    _decode_segment,
    looks_like_bastion_jwt,
)
from bastion.store.database import Database
from bastion.store.keys import KeyStore
from bastion.store.migrate import upgrade

NOW = 1_700_000_000.0


class Clock:
    """A settable wall clock."""

    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[KeyStore]:
    database = Database.from_url(f"sqlite+aiosqlite:///{tmp_path / 'keys.db'}")
    await database.start()
    try:
        await upgrade(database)
        yield KeyStore(database)
    finally:
        await database.close()


async def loaded(store: KeyStore, config: TokenConfig) -> SigningKeys:
    keys = SigningKeys(store, config)
    await keys.load()
    return keys


def decode(segment: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(
        base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    )
    return value


def issue(issuer: TokenIssuer, **changes: Any) -> tuple[str, dict[str, Any]]:
    arguments: dict[str, Any] = {
        "subject": "user-1",
        "session_id": "session-1",
        "roles": ["viewer", "operator"],
        "scopes": ["orders:read", "orders:write"],
        "mfa": False,
    }
    arguments.update(changes)
    return issuer.access_token(**arguments)


@pytest.mark.parametrize("algorithm", ["EdDSA", "ES256", "RS256", "HS256"])
async def test_access_token_round_trip(store: KeyStore, algorithm: SigningAlgorithm) -> None:
    config = TokenConfig(algorithm=algorithm)
    keys = await loaded(store, config)
    clock = Clock()
    token, claims = issue(TokenIssuer(config, keys, clock=clock))
    verifier = TokenVerifier(config, keys, clock=clock)
    assert await verifier.verify(token) == claims
    assert verifier.verify_now(token) == claims
    header = decode(token.split(".")[0])
    assert header == {"alg": algorithm, "typ": ACCESS_TYPE, "kid": keys.ring.signing.kid}


async def test_access_claims_follow_rfc_9068(store: KeyStore) -> None:
    config = TokenConfig(issuer="https://id.example", audience="api", client_id="web")
    keys = await loaded(store, config)
    token, claims = issue(TokenIssuer(config, keys, clock=Clock(NOW + 0.75)), mfa=True)
    assert decode(token.split(".")[1]) == claims
    jti = claims.pop("jti")
    assert len(base64.urlsafe_b64decode(jti + "==")) >= 16
    assert claims == {
        "iss": "https://id.example",
        "sub": "user-1",
        "aud": "api",
        "exp": int(NOW) + 900,
        "iat": int(NOW),
        "nbf": int(NOW),
        "client_id": "web",
        "sid": "session-1",
        "roles": ["viewer", "operator"],
        "scope": "orders:read orders:write",
        "amr": ["pwd", "otp"],
    }


async def test_scope_is_omitted_without_scopes_and_jti_is_unique(store: KeyStore) -> None:
    config = TokenConfig()
    issuer = TokenIssuer(config, await loaded(store, config))
    _, first = issue(issuer, scopes=[])
    _, second = issue(issuer, scopes=[])
    assert "scope" not in first
    assert first["amr"] == ["pwd"]
    assert first["jti"] != second["jti"]


async def test_extra_claims_are_added_but_cannot_replace_registered_ones(store: KeyStore) -> None:
    config = TokenConfig()
    keys = await loaded(store, config)
    issuer = TokenIssuer(config, keys)
    token, claims = issue(issuer, extra={"tenant": "acme"})
    assert TokenVerifier(config, keys).verify_now(token)["tenant"] == "acme"
    assert claims["tenant"] == "acme"
    with pytest.raises(ValueError, match="sub"):
        issue(issuer, extra={"sub": "admin"})
    with pytest.raises(ValueError, match="scope"):
        issue(issuer, scopes=["orders:read admin:*"])
    with pytest.raises(ValueError, match="subject"):
        issue(issuer, subject="")


async def test_refresh_token_round_trip(store: KeyStore) -> None:
    config = TokenConfig(issuer="bastion-issuer", audience="api")
    keys = await loaded(store, config)
    clock = Clock()
    token = TokenIssuer(config, keys, clock=clock).refresh_token(
        subject="user-1", session_id="session-1", token_id="rt-1"
    )
    header, payload, _ = token.split(".")
    assert decode(header)["typ"] == REFRESH_TYPE
    claims = await TokenVerifier(config, keys, clock=clock).verify(token, typ=REFRESH_TYPE)
    assert claims == decode(payload)
    assert claims["jti"] == "rt-1"
    assert claims["aud"] == "bastion-issuer"
    assert claims["exp"] == int(NOW) + 7 * 86400
    assert claims["sid"] == "session-1"
    with pytest.raises(TokenError) as caught:
        TokenVerifier(config, keys, clock=clock).verify_now(token)
    assert caught.value.reason == "wrong_type"


async def test_expiry_honours_leeway_with_an_injected_clock(store: KeyStore) -> None:
    config = TokenConfig(access_ttl=60, leeway=10)
    keys = await loaded(store, config)
    token, _ = issue(TokenIssuer(config, keys, clock=Clock()))
    clock = Clock()
    verifier = TokenVerifier(config, keys, clock=clock)
    clock.now = NOW + 60 + 9.9  # past exp, within leeway
    assert verifier.verify_now(token)["sub"] == "user-1"
    clock.now = NOW + 60 + 10
    with pytest.raises(TokenError) as caught:
        verifier.verify_now(token)
    assert caught.value.reason == "expired"


async def test_token_from_the_future_honours_leeway(store: KeyStore) -> None:
    config = TokenConfig(leeway=5)
    keys = await loaded(store, config)
    token, _ = issue(TokenIssuer(config, keys, clock=Clock(NOW + 5)))
    assert TokenVerifier(config, keys, clock=Clock(NOW)).verify_now(token)["sub"] == "user-1"
    late, _ = issue(TokenIssuer(config, keys, clock=Clock(NOW + 6)))
    with pytest.raises(TokenError) as caught:
        TokenVerifier(config, keys, clock=Clock(NOW)).verify_now(late)
    assert caught.value.reason == "not_yet_valid"


async def test_default_size_cap_refuses_before_decoding(store: KeyStore) -> None:
    config = TokenConfig()
    keys = await loaded(store, config)
    token, _ = issue(TokenIssuer(config, keys), extra={"pad": "x" * config.max_token_bytes})
    with pytest.raises(TokenError) as caught:
        TokenVerifier(config, keys).verify_now(token)
    assert caught.value.reason == "too_large"
    with pytest.raises(TokenError) as caught:
        TokenVerifier(config, keys).verify_now("!" * (config.max_token_bytes + 1))
    assert caught.value.reason == "too_large"


async def test_verifier_needs_loaded_keys(store: KeyStore) -> None:
    config = TokenConfig()
    with pytest.raises(RuntimeError, match="load"):
        TokenVerifier(config, SigningKeys(store, config)).verify_now("a.b.c")


async def test_unknown_type_is_a_programming_error(store: KeyStore) -> None:
    config = TokenConfig()
    keys = await loaded(store, config)
    token, _ = issue(TokenIssuer(config, keys))
    with pytest.raises(ValueError, match="token type"):
        TokenVerifier(config, keys).verify_now(token, typ="id+jwt")


async def test_looks_like_bastion_jwt(store: KeyStore) -> None:
    config = TokenConfig(issuer="bastion-test")
    keys = await loaded(store, config)
    token, _ = issue(TokenIssuer(config, keys))
    kids = keys.ring.kids

    def unsigned(header: dict[str, Any], payload: dict[str, Any]) -> str:
        parts = [json.dumps(header).encode(), json.dumps(payload).encode()]
        return (
            ".".join(base64.urlsafe_b64encode(part).rstrip(b"=").decode() for part in parts) + "."
        )

    cases = {
        "ours": (token, True),
        "our-issuer-foreign-kid": (unsigned({"kid": "other"}, {"iss": "bastion-test"}), True),
        "our-kid-no-payload-json": (unsigned({"kid": next(iter(kids))}, {}), True),
        "foreign": (unsigned({"kid": "other"}, {"iss": "https://other.example"}), False),
        "opaque-bearer": ("bst_0123456789abcdef", False),
        "too-large": (token + "A" * 20000, False),
        "garbage-base64": ("eyJ!.eyJ.x", False),
        "header-not-json": ("AAAA.AAAA.AAAA", False),
        "kid-unhashable": (unsigned({"kid": ["a"]}, {"iss": 1}), False),
        "empty": ("", False),
    }
    for name, (candidate, expected) in cases.items():
        assert looks_like_bastion_jwt(candidate, issuer="bastion-test", kids=kids) is expected, name
    assert looks_like_bastion_jwt(None, issuer="x", kids=kids) is False  # type: ignore[arg-type]


@given(st.binary(max_size=64))
def test_canonical_segments_decode(data: bytes) -> None:
    text = base64.urlsafe_b64encode(data).rstrip(b"=").decode()
    assert _decode_segment(text) == data


def _re_encodes_to_itself(text: str) -> bool:
    if len(text) % 4 == 1:
        return False
    decoded = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    return base64.urlsafe_b64encode(decoded).rstrip(b"=").decode() == text


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"))
def test_segment_accepted_only_when_it_re_encodes_to_itself(text: str) -> None:
    if _re_encodes_to_itself(text):
        assert base64.urlsafe_b64encode(_decode_segment(text)).rstrip(b"=").decode() == text
    else:
        with pytest.raises(TokenError, match="malformed"):
            _decode_segment(text)
