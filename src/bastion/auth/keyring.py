"""JWT signing keys: generation, the in-memory ring of prepared keys, and its KeyStore backing.

Keys live in ``bastion_keys`` under :data:`SIGNING_PURPOSE`, so every instance signs and verifies
with the same keys. A :class:`KeyRing` is an immutable snapshot: the newest key signs, every
active key verifies, and all key objects are parsed once when the ring is built so the request
path never touches DER or PEM. :class:`SigningKeys` owns the current ring and swaps it on
rotation or reload.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import Algorithm, ECAlgorithm, HMACAlgorithm, OKPAlgorithm, RSAAlgorithm

from bastion.auth.config import SigningAlgorithm, TokenConfig
from bastion.store.keys import KeyFactory, KeyStore, NewKey, StoredKey

__all__ = [
    "SIGNING_PURPOSE",
    "KeyRing",
    "SigningKey",
    "SigningKeys",
    "new_signing_key",
]

SIGNING_PURPOSE = "jwt_signing"
"""``purpose`` of JWT signing keys in the key store."""

RSA_KEY_BITS = 3072
"""Modulus size of generated RS256 keys (NIST SP 800-57: 128-bit security beyond 2030)."""
RSA_MIN_BITS = 2048
"""Smallest RSA modulus a stored key may have (RFC 7518 §3.3)."""
HMAC_KEY_BYTES = 32
"""Size of generated HS256 secrets: the hash output size (RFC 7518 §3.2)."""

_ACCESS_TYPE = "at+jwt"
_REFRESH_TYPE = "refresh+jwt"

_PRIVATE_DER = (
    serialization.Encoding.DER,
    serialization.PrivateFormat.PKCS8,
    serialization.NoEncryption(),
)
_PUBLIC_DER = (serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _uint(value: int, size: int | None = None) -> str:
    """An unsigned big-endian integer as base64url: fixed-size for EC coordinates (RFC 7518
    §6.2.1.2), minimal for RSA parameters (§6.3.1.1)."""
    length = size if size is not None else max(1, (value.bit_length() + 7) // 8)
    return _b64url(value.to_bytes(length, "big"))


def new_signing_key(algorithm: SigningAlgorithm) -> NewKey:
    """Generate one signing key for ``algorithm`` (a JWS ``alg`` name).

    Asymmetric keys are stored as PKCS#8 DER with their SubjectPublicKeyInfo DER alongside (the
    public half is what JWKS consumers need without unwrapping anything); HS256 keys are 32
    random bytes with no public half.
    """
    private: ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey
    if algorithm == "HS256":
        return NewKey(algorithm=algorithm, material=os.urandom(HMAC_KEY_BYTES))
    if algorithm == "EdDSA":
        private = ed25519.Ed25519PrivateKey.generate()
    elif algorithm == "ES256":
        private = ec.generate_private_key(ec.SECP256R1())
    elif algorithm == "RS256":
        private = rsa.generate_private_key(public_exponent=65537, key_size=RSA_KEY_BITS)
    else:
        raise ValueError(f"unsupported signing algorithm {algorithm!r}")
    return NewKey(
        algorithm=algorithm,
        material=private.private_bytes(*_PRIVATE_DER),
        public=private.public_key().public_bytes(*_PUBLIC_DER),
    )


def _factory(algorithm: SigningAlgorithm) -> KeyFactory:
    return lambda: new_signing_key(algorithm)


@dataclass(frozen=True, slots=True)
class SigningKey:
    """One prepared key of a ring.

    ``jws`` is the PyJWT algorithm object for this key's ``algorithm``; ``private_key`` signs and
    ``public_key`` verifies (both the same secret for HS256). ``signature_size`` is the exact
    length every valid signature has, so malformed signatures are refused before any crypto.
    ``headers`` maps each token type to its base64url-encoded protected header, built once.
    """

    kid: str
    algorithm: str
    jws: Algorithm = field(repr=False)
    private_key: Any = field(repr=False)
    public_key: Any = field(repr=False)
    signature_size: int
    headers: Mapping[str, str] = field(repr=False)
    jwk: Mapping[str, str] | None = None
    not_after: float | None = None
    """Unix time after which the key must no longer verify (a rotation grace deadline)."""

    def sign(self, signing_input: bytes) -> bytes:
        """The raw JWS signature of ``signing_input`` (``header.payload`` bytes)."""
        return self.jws.sign(signing_input, self.private_key)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        """Whether ``signature`` is valid for ``signing_input`` under this key."""
        return bool(self.jws.verify(signing_input, self.public_key, signature))


def _header(algorithm: str, typ: str, kid: str) -> str:
    return _b64url(orjson.dumps({"alg": algorithm, "typ": typ, "kid": kid}))


def _prepare(stored: StoredKey) -> SigningKey:
    """Parse a stored key once into the objects signing and verification use."""
    kid, algorithm = stored.id, stored.algorithm
    jws: Algorithm
    jwk: dict[str, str] | None
    if algorithm == "HS256":
        if len(stored.material) < HMAC_KEY_BYTES:
            raise ValueError(f"signing key {kid}: HS256 secret shorter than {HMAC_KEY_BYTES} bytes")
        jws = HMACAlgorithm(HMACAlgorithm.SHA256)
        secret = jws.prepare_key(stored.material)
        private_key: Any = secret
        public_key: Any = secret
        signature_size = 32
        jwk = None  # a shared secret is never published
    else:
        private = serialization.load_der_private_key(stored.material, password=None)
        if algorithm == "EdDSA" and isinstance(private, ed25519.Ed25519PrivateKey):
            jws = OKPAlgorithm()
            public_ed = private.public_key()
            signature_size = 64
            raw = public_ed.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
            jwk = {"kty": "OKP", "crv": "Ed25519", "x": _b64url(raw)}
            public_key = public_ed
        elif (
            algorithm == "ES256"
            and isinstance(private, ec.EllipticCurvePrivateKey)
            and isinstance(private.curve, ec.SECP256R1)
        ):
            jws = ECAlgorithm(ECAlgorithm.SHA256, ec.SECP256R1)
            public_ec = private.public_key()
            numbers = public_ec.public_numbers()
            signature_size = 64
            jwk = {
                "kty": "EC",
                "crv": "P-256",
                "x": _uint(numbers.x, 32),
                "y": _uint(numbers.y, 32),
            }
            public_key = public_ec
        elif (
            algorithm == "RS256"
            and isinstance(private, rsa.RSAPrivateKey)
            and private.key_size >= RSA_MIN_BITS
        ):
            jws = RSAAlgorithm(RSAAlgorithm.SHA256)
            public_rsa = private.public_key()
            rsa_numbers = public_rsa.public_numbers()
            signature_size = (private.key_size + 7) // 8
            jwk = {"kty": "RSA", "n": _uint(rsa_numbers.n), "e": _uint(rsa_numbers.e)}
            public_key = public_rsa
        else:
            raise ValueError(f"signing key {kid}: material does not fit algorithm {algorithm!r}")
        # The stored public half is what other tools may read; a mismatch means corruption.
        derived = public_key.public_bytes(*_PUBLIC_DER)
        if stored.public is not None and stored.public != derived:
            raise ValueError(f"signing key {kid}: stored public key does not match private key")
        private_key = private
        jwk = {**jwk, "kid": kid, "alg": algorithm, "use": "sig"}
    not_after = stored.not_after.timestamp() if stored.not_after is not None else None
    return SigningKey(
        kid=kid,
        algorithm=algorithm,
        jws=jws,
        private_key=private_key,
        public_key=public_key,
        signature_size=signature_size,
        headers={typ: _header(algorithm, typ, kid) for typ in (_ACCESS_TYPE, _REFRESH_TYPE)},
        jwk=jwk,
        not_after=not_after,
    )


class KeyRing:
    """An immutable set of prepared signing keys: the first (newest) signs, all verify."""

    __slots__ = ("_by_header", "_by_kid", "_jwks", "_kids", "_signing")

    def __init__(self, keys: Sequence[StoredKey]) -> None:
        if not keys:
            raise ValueError("a key ring needs at least one signing key")
        prepared = [_prepare(key) for key in keys]
        self._signing = prepared[0]
        self._by_kid: dict[str, SigningKey] = {key.kid: key for key in prepared}
        self._kids = frozenset(self._by_kid)
        # Exact header segments this ring issues, so verifying Bastion's own tokens can skip
        # parsing the header; any other header text takes the strict parsing path.
        self._by_header: dict[str, tuple[SigningKey, str]] = {
            segment: (key, typ) for key in prepared for typ, segment in key.headers.items()
        }
        self._jwks = tuple(key.jwk for key in prepared if key.jwk is not None)

    @property
    def signing(self) -> SigningKey:
        """The key new tokens are signed with."""
        return self._signing

    def get(self, kid: str) -> SigningKey | None:
        """The key with id ``kid``, or ``None``."""
        return self._by_kid.get(kid)

    def by_header(self, segment: str) -> tuple[SigningKey, str] | None:
        """The key and token type of a header segment exactly as this ring issues it."""
        return self._by_header.get(segment)

    @property
    def kids(self) -> frozenset[str]:
        """Ids of every key that verifies."""
        return self._kids

    def jwks(self) -> dict[str, Any]:
        """The public keys as an RFC 7517 JWK Set; HMAC secrets are never included."""
        return {"keys": [dict(jwk) for jwk in self._jwks]}


class SigningKeys:
    """The current :class:`KeyRing`, loaded from and rotated in the :class:`KeyStore`.

    Another instance may rotate at any time; a token with an unknown ``kid`` then triggers
    :meth:`reload_for`, which reads the store at most once per ``reload_interval`` so forged
    kids cannot turn into a database load.
    """

    def __init__(
        self,
        store: KeyStore,
        config: TokenConfig,
        *,
        reload_interval: float = 5.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._config = config
        self._factory = _factory(config.algorithm)
        self._reload_interval = reload_interval
        self._clock = clock
        self._ring: KeyRing | None = None
        self._reloaded_at: float | None = None
        self._lock = asyncio.Lock()

    async def load(self) -> KeyRing:
        """Read the active keys, generating the first one (``config.algorithm``) if none exist."""
        keys = await self._store.get_or_create(SIGNING_PURPOSE, self._factory)
        return self._install(keys)

    @property
    def ring(self) -> KeyRing:
        """The current ring; :meth:`load` must have run."""
        if self._ring is None:
            raise RuntimeError("signing keys are not loaded: await SigningKeys.load() first")
        return self._ring

    async def rotate(self) -> KeyRing:
        """Add a new signing key; the ``keep_signing_keys`` newest keys stay valid."""
        keys = await self._store.rotate(
            SIGNING_PURPOSE, self._factory, keep=self._config.keep_signing_keys
        )
        return self._install(keys)

    async def refresh(self) -> KeyRing:
        """Reload the active keys from the store."""
        self._reloaded_at = self._clock()
        keys = await self._store.get_or_create(SIGNING_PURPOSE, self._factory)
        return self._install(keys)

    async def reload_for(self, kid: str) -> bool:
        """Reload because ``kid`` is unknown, unless a reload happened within the interval.

        Returns whether ``kid`` is known afterwards. Concurrent callers share one reload.
        """
        if kid in self.ring.kids:
            return True
        async with self._lock:
            if kid in self.ring.kids:  # a caller we waited for already reloaded
                return True
            last = self._reloaded_at
            if last is not None and self._clock() - last < self._reload_interval:
                return False
            await self.refresh()
        return kid in self.ring.kids

    def _install(self, keys: Sequence[StoredKey]) -> KeyRing:
        ring = KeyRing(keys)
        self._ring = ring
        return ring
