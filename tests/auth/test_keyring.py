"""Signing keys: generation, sharing through the key store, rotation, reloads and JWKS."""

from __future__ import annotations

import base64
import os
import time
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from bastion.auth.config import SigningAlgorithm, TokenConfig
from bastion.auth.keyring import (
    SIGNING_PURPOSE,
    KeyRing,
    SigningKeys,
    new_signing_key,
)
from bastion.auth.tokens import TokenError, TokenIssuer, TokenVerifier
from bastion.store.database import Database
from bastion.store.errors import StoreError
from bastion.store.keys import KeyFactory, KeyStore, StoredKey

ALGORITHMS: tuple[SigningAlgorithm, ...] = ("EdDSA", "ES256", "RS256", "HS256")


class Ticker:
    """A monotonic clock the test advances."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class CountingStore(KeyStore):
    """A key store that counts reads, to observe reload rate limiting."""

    reads = 0

    async def get_or_create(self, purpose: str, factory: KeyFactory) -> list[StoredKey]:
        self.reads += 1
        return await super().get_or_create(purpose, factory)


def stored(algorithm: str, *, kid: str = "k1", not_after: datetime | None = None) -> StoredKey:
    new = new_signing_key(algorithm)  # type: ignore[arg-type]
    return StoredKey(
        id=kid,
        purpose=SIGNING_PURPOSE,
        algorithm=new.algorithm,
        material=new.material,
        public=new.public,
        created_at=datetime.now(UTC),
        not_after=not_after,
        generation=1,
    )


def access_token(config: TokenConfig, keys: SigningKeys) -> str:
    issuer = TokenIssuer(config, keys)
    return issuer.access_token(subject="u", session_id="s", roles=[], scopes=[], mfa=False)[0]


def b64decode(value: str) -> bytes:
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_new_signing_key_material_loads_back(algorithm: SigningAlgorithm) -> None:
    new = new_signing_key(algorithm)
    assert new.algorithm == algorithm
    if algorithm == "HS256":
        assert len(new.material) == 32
        assert new.public is None
        return
    private = serialization.load_der_private_key(new.material, password=None)
    assert new.public is not None
    public = serialization.load_der_public_key(new.public)
    expected = {
        "EdDSA": ed25519.Ed25519PublicKey,
        "ES256": ec.EllipticCurvePublicKey,
        "RS256": rsa.RSAPublicKey,
    }[algorithm]
    assert isinstance(public, expected)
    spki = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    assert private.public_key().public_bytes(*spki) == new.public
    if isinstance(public, rsa.RSAPublicKey):
        assert public.key_size >= 3072
    if isinstance(public, ec.EllipticCurvePublicKey):
        assert isinstance(public.curve, ec.SECP256R1)


async def test_first_load_generates_one_key_shared_by_instances(migrated: Database) -> None:
    config = TokenConfig()
    first = SigningKeys(KeyStore(migrated), config)
    second = SigningKeys(KeyStore(migrated), config)
    with pytest.raises(RuntimeError, match="load"):
        _ = first.ring
    ring_a, ring_b = await first.load(), await second.load()
    assert ring_a.kids == ring_b.kids
    assert len(ring_a.kids) == 1
    assert ring_a.signing.algorithm == "EdDSA"
    token = access_token(config, first)
    assert TokenVerifier(config, second).verify_now(token)["sub"] == "u"
    assert len(await KeyStore(migrated).active(SIGNING_PURPOSE)) == 1


async def test_rotation_newest_signs_previous_verify_keep_honoured(migrated: Database) -> None:
    config = TokenConfig(keep_signing_keys=2)
    keys = SigningKeys(KeyStore(migrated), config)
    original = (await keys.load()).signing.kid
    old_token = access_token(config, keys)

    ring = await keys.rotate()
    assert ring.signing.kid != original
    assert ring.kids == {original, ring.signing.kid}
    verifier = TokenVerifier(config, keys)
    assert verifier.verify_now(old_token)["sub"] == "u"
    new_token = access_token(config, keys)
    assert verifier.verify_now(new_token)["sub"] == "u"

    third = await keys.rotate()
    assert len(third.kids) == 2
    assert original not in third.kids
    with pytest.raises(TokenError) as caught:
        await verifier.verify(old_token)
    assert caught.value.reason == "unknown_kid"
    assert verifier.verify_now(new_token)["sub"] == "u"


async def test_algorithm_change_keeps_old_keys_verifying(migrated: Database) -> None:
    store = KeyStore(migrated)
    eddsa = TokenConfig(algorithm="EdDSA")
    es256 = TokenConfig(algorithm="ES256")
    old = SigningKeys(store, eddsa)
    await old.load()
    token = access_token(eddsa, old)
    new = SigningKeys(store, es256)
    ring = await new.rotate()
    assert ring.signing.algorithm == "ES256"
    assert TokenVerifier(es256, new).verify_now(token)["sub"] == "u"


async def test_reload_for_picks_up_another_instance_rotation(migrated: Database) -> None:
    config = TokenConfig()
    rotating = SigningKeys(KeyStore(migrated), config)
    ticker = Ticker()
    store = CountingStore(migrated)
    lagging = SigningKeys(store, config, reload_interval=5.0, clock=ticker)
    await rotating.load()
    await lagging.load()
    await rotating.rotate()
    token = access_token(config, rotating)
    verifier = TokenVerifier(config, lagging)

    with pytest.raises(TokenError) as caught:
        verifier.verify_now(token)
    assert caught.value.reason == "unknown_kid"
    reads = store.reads
    assert (await verifier.verify(token))["sub"] == "u"
    assert store.reads == reads + 1
    assert lagging.ring.kids == rotating.ring.kids
    # A known kid never touches the store.
    assert await lagging.reload_for(rotating.ring.signing.kid) is True
    assert store.reads == reads + 1


async def test_reload_for_is_rate_limited(migrated: Database) -> None:
    config = TokenConfig()
    ticker = Ticker()
    store = CountingStore(migrated)
    keys = SigningKeys(store, config, reload_interval=5.0, clock=ticker)
    await keys.load()
    reads = store.reads

    assert await keys.reload_for("unknown-kid-1") is False
    assert store.reads == reads + 1
    for attempt in range(20):  # forged kids within the interval cost nothing
        assert await keys.reload_for(f"forged-{attempt}") is False
    assert store.reads == reads + 1

    other = SigningKeys(KeyStore(migrated), config)
    await other.load()
    new_kid = (await other.rotate()).signing.kid
    ticker.now += 4.9
    assert await keys.reload_for(new_kid) is False
    assert store.reads == reads + 1
    ticker.now += 0.2
    assert await keys.reload_for(new_kid) is True
    assert store.reads == reads + 2

    await keys.refresh()
    assert store.reads == reads + 3
    assert await keys.reload_for("unknown-kid-2") is False  # refresh counts as the reload
    assert store.reads == reads + 3


async def test_grace_deadline_stops_verification(migrated: Database) -> None:
    config = TokenConfig()
    store = KeyStore(migrated)
    keys = SigningKeys(store, config)
    await keys.load()
    token = access_token(config, keys)
    await store.rotate(SIGNING_PURPOSE, lambda: new_signing_key("EdDSA"), keep=2, grace=60)
    await keys.refresh()
    assert TokenVerifier(config, keys).verify_now(token)["sub"] == "u"
    later = TokenVerifier(config, keys, clock=lambda: time.time() + 120)
    with pytest.raises(TokenError) as caught:
        later.verify_now(token)
    assert caught.value.reason == "retired_key"


async def test_wrapped_keys(migrated: Database) -> None:
    config = TokenConfig()
    kek = base64.b64encode(os.urandom(32)).decode()
    keys = SigningKeys(KeyStore(migrated, key_encryption_key=kek), config)
    await keys.load()
    token = access_token(config, keys)
    again = SigningKeys(KeyStore(migrated, key_encryption_key=kek), config)
    await again.load()
    assert TokenVerifier(config, again).verify_now(token)["sub"] == "u"
    with pytest.raises(StoreError, match="wrapped"):
        await SigningKeys(KeyStore(migrated), config).load()


@pytest.mark.parametrize(
    ("algorithm", "members"),
    [
        ("EdDSA", {"kty", "crv", "x", "kid", "alg", "use"}),
        ("ES256", {"kty", "crv", "x", "y", "kid", "alg", "use"}),
        ("RS256", {"kty", "n", "e", "kid", "alg", "use"}),
    ],
)
def test_jwks_publishes_public_keys_only(algorithm: str, members: set[str]) -> None:
    ring = KeyRing([stored(algorithm, kid="new"), stored("HS256", kid="hmac")])
    (jwk,) = ring.jwks()["keys"]
    assert set(jwk) == members  # no d, p, q, dp, dq, qi, k
    assert jwk["kid"] == "new"
    assert jwk["alg"] == algorithm
    assert jwk["use"] == "sig"
    public = ring.signing.public_key
    if algorithm == "EdDSA":
        assert jwk["kty"] == "OKP"
        assert jwk["crv"] == "Ed25519"  # RFC 8037 §2
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        assert b64decode(jwk["x"]) == raw
    elif algorithm == "ES256":
        assert (jwk["kty"], jwk["crv"]) == ("EC", "P-256")  # RFC 7518 §6.2
        numbers = public.public_numbers()
        assert len(b64decode(jwk["x"])) == len(b64decode(jwk["y"])) == 32
        assert int.from_bytes(b64decode(jwk["x"]), "big") == numbers.x
        assert int.from_bytes(b64decode(jwk["y"]), "big") == numbers.y
    else:
        assert jwk["kty"] == "RSA"  # RFC 7518 §6.3
        assert b64decode(jwk["e"]) == b"\x01\x00\x01"
        assert int.from_bytes(b64decode(jwk["n"]), "big") == public.public_numbers().n
    # A standard library verifies our tokens from the published key alone.
    signing_input = b"header.payload"
    signature = ring.signing.sign(signing_input)
    published = jwt.PyJWK(jwk)
    assert published.Algorithm.verify(signing_input, published.key, signature)
    # The dictionary handed out is a copy.
    ring.jwks()["keys"][0]["kid"] = "changed"
    assert ring.jwks()["keys"][0]["kid"] == "new"


def test_jwks_of_hmac_ring_is_empty() -> None:
    assert KeyRing([stored("HS256")]).jwks() == {"keys": []}


def test_ring_refuses_inconsistent_keys() -> None:
    with pytest.raises(ValueError, match="at least one"):
        KeyRing([])
    eddsa = stored("EdDSA")
    with pytest.raises(ValueError, match="does not fit"):
        KeyRing([StoredKey(**{**_fields(eddsa), "algorithm": "ES256"})])
    other = stored("EdDSA")
    with pytest.raises(ValueError, match="does not match"):
        KeyRing([StoredKey(**{**_fields(eddsa), "public": other.public})])
    with pytest.raises(ValueError, match="shorter"):
        KeyRing([StoredKey(**{**_fields(stored("HS256")), "material": b"short"})])
    weak = rsa.generate_private_key(public_exponent=65537, key_size=1024)
    material = weak.private_bytes(
        serialization.Encoding.DER,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    with pytest.raises(ValueError, match="does not fit"):
        KeyRing([StoredKey(**{**_fields(stored("RS256")), "material": material, "public": None})])


def test_ring_lookup_and_signing_order() -> None:
    expiry = datetime.now(UTC) + timedelta(minutes=5)
    ring = KeyRing([stored("ES256", kid="b"), stored("EdDSA", kid="a", not_after=expiry)])
    assert ring.signing.kid == "b"
    assert ring.kids == {"a", "b"}
    previous = ring.get("a")
    assert previous is not None
    assert previous.not_after == pytest.approx(expiry.timestamp())
    assert ring.get("missing") is None
    assert "private" not in repr(ring.signing).lower()


def _fields(key: StoredKey) -> dict[str, object]:
    return {name: getattr(key, name) for name in StoredKey.__dataclass_fields__}
