"""JWT access tokens (RFC 9068) and refresh tokens, issued and verified per RFC 8725.

Verification is a strict, allow-list parser rather than a general JWT library call: the size is
checked before anything is decoded, every segment must be canonical base64url, JSON with
duplicate member names is refused, the header may carry only ``alg``, ``typ`` and ``kid``, and
the key named by ``kid`` alone decides the algorithm. PyJWT contributes only its per-algorithm
signature primitives, applied to keys prepared once by :class:`~bastion.auth.keyring.KeyRing`.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Container, Mapping, Sequence
from typing import Any, NoReturn

import orjson

from bastion.auth.config import TokenConfig
from bastion.auth.keyring import KeyRing, SigningKey, SigningKeys

__all__ = [
    "ACCESS_TYPE",
    "REFRESH_TYPE",
    "TokenError",
    "TokenIssuer",
    "TokenVerifier",
    "looks_like_bastion_jwt",
]

ACCESS_TYPE = "at+jwt"
"""``typ`` of access tokens (RFC 9068 §2.1)."""
REFRESH_TYPE = "refresh+jwt"
"""``typ`` of JWT-format refresh tokens."""

SUPPORTED_ALGORITHMS = frozenset({"EdDSA", "ES256", "RS256", "HS256"})
"""The only ``alg`` values any ring key can have; everything else is refused up front."""

LOOKS_LIKE_MAX_BYTES = 16384
"""Longest string :func:`looks_like_bastion_jwt` inspects (the default header-block limit)."""

_SEGMENTS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]*)")
_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")

# Last character of a canonical base64url segment whose length is 2 or 3 mod 4: the unused low
# bits must be zero, otherwise several strings decode to the same bytes (RFC 4648 §3.5). This is
# exactly "decodes and re-encodes to the same text", without the re-encoding.
_TAIL_4_BITS_ZERO = frozenset("AQgw")
_TAIL_2_BITS_ZERO = frozenset("AEIMQUYcgkosw048")

_HEADER_PARAMETERS = frozenset({"alg", "typ", "kid", "crit"})
_UNTRUSTED_KEY_SOURCES = frozenset({"jku", "x5u", "jwk", "x5c", "x5t", "x5t#S256"})

_REGISTERED = frozenset(
    {"iss", "sub", "aud", "exp", "iat", "nbf", "jti", "client_id", "sid", "roles", "scope", "amr"}
)


class TokenError(Exception):
    """A token that must not be accepted. Always problem code ``invalid_token``; ``reason`` is
    a short snake_case cause for logs and metrics, never shown to clients."""

    code = "invalid_token"

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _UnknownKid(TokenError):
    """An otherwise well-formed token signed by a key this ring does not hold (yet)."""

    def __init__(self, kid: str) -> None:
        super().__init__("unknown_kid")
        self.kid = kid


def _fail(reason: str) -> NoReturn:
    raise TokenError(reason)


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _decode_segment(segment: str) -> bytes:
    """Decode a segment already known to use only the base64url alphabet, refusing every
    non-canonical spelling."""
    remainder = len(segment) % 4
    if remainder == 1:
        _fail("malformed")
    if remainder == 2 and segment[-1] not in _TAIL_4_BITS_ZERO:
        _fail("malformed")
    if remainder == 3 and segment[-1] not in _TAIL_2_BITS_ZERO:
        _fail("malformed")
    try:
        return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except (binascii.Error, ValueError):
        _fail("malformed")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result = dict(pairs)
    if len(result) != len(pairs):
        # Parsers disagree on which duplicate wins; a token must mean one thing (RFC 8725 §3.12).
        raise ValueError("duplicate member name")
    return result


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _json_object(raw: bytes) -> dict[str, Any]:
    """Parse strict UTF-8 JSON that must be an object without duplicate member names."""
    try:
        value = json.loads(
            raw.decode("utf-8"),
            object_pairs_hook=_unique_members,
            parse_constant=_no_constant,
        )
    except (ValueError, RecursionError):  # UnicodeDecodeError and JSONDecodeError included
        _fail("malformed")
    if not isinstance(value, dict):
        _fail("malformed")
    return value


def _number(value: Any) -> float:
    # bool is an int subclass: ``"exp": true`` must not read as 1.
    if isinstance(value, bool) or not isinstance(value, int | float):
        _fail("bad_claim")
    number = float(value)
    if not math.isfinite(number):
        _fail("bad_claim")
    return number


def _time(claims: Mapping[str, Any], name: str) -> float:
    if name not in claims:
        _fail("missing_claim")
    return _number(claims[name])


def _string(claims: Mapping[str, Any], name: str) -> str:
    value = claims.get(name)
    if value is None:
        _fail("missing_claim")
    if not isinstance(value, str) or not value:
        _fail("bad_claim")
    return value


def _strings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(item, str) for item in value)


class _Checks:
    """Everything verification compares against, derived from the configuration once."""

    __slots__ = ("access_types", "audience", "issuer", "leeway", "max_bytes", "refresh_types")

    def __init__(self, config: TokenConfig) -> None:
        self.issuer = config.issuer
        self.audience = config.audience
        self.leeway = float(config.leeway)
        self.max_bytes = config.max_token_bytes
        self.access_types = frozenset({ACCESS_TYPE, "application/" + ACCESS_TYPE})
        self.refresh_types = frozenset({REFRESH_TYPE, "application/" + REFRESH_TYPE})


def _check_header(header: dict[str, Any], ring: KeyRing) -> tuple[SigningKey, str]:
    """The key and ``typ`` of a parsed header, or the reason it is refused."""
    if not header.keys() <= _HEADER_PARAMETERS:
        extra = header.keys() - _HEADER_PARAMETERS
        # Key-source parameters would let the token name its own verification key.
        _fail("untrusted_key_source" if extra & _UNTRUSTED_KEY_SOURCES else "unexpected_header")
    if "crit" in header:
        # No extension is understood, so any crit (even an empty list, which RFC 7515 §4.1.11
        # forbids) makes the token unacceptable.
        _fail("unsupported_crit")
    alg = header.get("alg")
    if not isinstance(alg, str) or alg not in SUPPORTED_ALGORITHMS:
        _fail("bad_algorithm")
    kid = header.get("kid")
    if not isinstance(kid, str) or not _KID.fullmatch(kid):
        _fail("bad_kid")
    key = ring.get(kid)
    if key is None:
        raise _UnknownKid(kid)
    if alg != key.algorithm:
        _fail("bad_algorithm")
    typ = header.get("typ")
    if not isinstance(typ, str):
        _fail("wrong_type")
    return key, typ.lower()  # media type names are case-insensitive (RFC 7515 §4.1.9)


def _verify(token: str, expected_typ: str, ring: KeyRing, checks: _Checks, now: float) -> Any:
    if not isinstance(token, str) or len(token) > checks.max_bytes:
        _fail("too_large" if isinstance(token, str) else "malformed")
    match = _SEGMENTS.fullmatch(token)
    if match is None:
        _fail("malformed")
    header_segment, payload_segment, signature_segment = match.groups()
    if expected_typ == ACCESS_TYPE:
        allowed_types = checks.access_types
    elif expected_typ == REFRESH_TYPE:
        allowed_types = checks.refresh_types
    else:
        raise ValueError(f"unknown token type {expected_typ!r}")

    known = ring.by_header(header_segment)
    if known is not None:
        key, typ = known
    else:
        key, typ = _check_header(_json_object(_decode_segment(header_segment)), ring)
    if typ not in allowed_types:
        _fail("wrong_type")

    if not signature_segment:
        _fail("missing_signature")
    payload_raw = _decode_segment(payload_segment)
    signature = _decode_segment(signature_segment)
    # Exact length and not all zero: an ECDSA r = s = 0 ("psychic") signature is refused here
    # even before the primitive sees it.
    if len(signature) != key.signature_size or not signature.strip(b"\0"):
        _fail("bad_signature")
    if key.not_after is not None and now >= key.not_after:
        _fail("retired_key")
    signing_input = token[: len(header_segment) + 1 + len(payload_segment)].encode("ascii")
    if not key.verify(signing_input, signature):
        _fail("bad_signature")

    claims = _json_object(payload_raw)
    leeway = checks.leeway
    exp = _time(claims, "exp")
    iat = _time(claims, "iat")
    if exp + leeway <= now:
        _fail("expired")
    if "nbf" in claims and _number(claims["nbf"]) > now + leeway:
        _fail("not_yet_valid")
    if iat > now + leeway:
        _fail("issued_in_future")
    if claims.get("iss") != checks.issuer:
        _fail("bad_issuer" if "iss" in claims else "missing_claim")
    audience = checks.audience if expected_typ == ACCESS_TYPE else checks.issuer
    aud = claims.get("aud")
    if aud is None:
        _fail("missing_claim")
    if isinstance(aud, str):
        if aud != audience:
            _fail("bad_audience")
    elif not _strings(aud) or audience not in aud:
        _fail("bad_audience")
    _string(claims, "sub")
    _string(claims, "jti")
    if expected_typ == ACCESS_TYPE:
        _string(claims, "client_id")
        for name in ("roles", "amr"):
            if name in claims and not _strings(claims[name]):
                _fail("bad_claim")
        if "scope" in claims and not isinstance(claims["scope"], str):
            _fail("bad_claim")
    if "sid" in claims and not isinstance(claims["sid"], str):
        _fail("bad_claim")
    return claims


class TokenVerifier:
    """Verifies access and refresh tokens against the current signing keys."""

    def __init__(
        self,
        config: TokenConfig,
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._checks = _Checks(config)
        self._keys = keys
        self._clock = clock

    async def verify(self, token: str, *, typ: str = ACCESS_TYPE) -> dict[str, Any]:
        """The claims of a valid token of type ``typ``, or :class:`TokenError`.

        A token naming a key this instance does not hold yet (another instance rotated) makes
        the key ring reload, rate-limited, and is then verified once more. A store failure
        during that reload propagates as :class:`~bastion.store.errors.StoreError`.
        """
        try:
            return self.verify_now(token, typ=typ)
        except _UnknownKid as exc:
            if not await self._keys.reload_for(exc.kid):
                raise TokenError("unknown_kid") from None
        return self.verify_now(token, typ=typ)

    def verify_now(self, token: str, *, typ: str = ACCESS_TYPE) -> dict[str, Any]:
        """:meth:`verify` without reloading keys: an unknown ``kid`` is simply refused."""
        claims: dict[str, Any] = _verify(token, typ, self._keys.ring, self._checks, self._clock())
        return claims


class TokenIssuer:
    """Signs access tokens (RFC 9068) and JWT refresh tokens with the newest signing key."""

    def __init__(
        self,
        config: TokenConfig,
        keys: SigningKeys,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._config = config
        self._keys = keys
        self._clock = clock
        self._access_ttl = int(config.access_ttl)
        self._refresh_ttl = int(config.refresh_ttl)

    def access_token(
        self,
        *,
        subject: str,
        session_id: str,
        roles: Sequence[str],
        scopes: Sequence[str],
        mfa: bool,
        extra: Mapping[str, Any] | None = None,
    ) -> tuple[str, dict[str, Any]]:
        """A signed access token for ``subject`` and its claims.

        ``extra`` adds private claims; it may not replace a registered one.
        """
        if not subject:
            raise ValueError("an access token needs a subject")
        for scope in scopes:
            # scope is a space-delimited list (RFC 6749 §3.3): a scope cannot contain a space.
            if not scope or " " in scope:
                raise ValueError(f"invalid scope {scope!r}")
        now = int(self._clock())
        config = self._config
        claims: dict[str, Any] = {
            "iss": config.issuer,
            "sub": subject,
            "aud": config.audience,
            "exp": now + self._access_ttl,
            "iat": now,
            "nbf": now,
            "jti": secrets.token_urlsafe(16),
            "client_id": config.client_id,
            "sid": session_id,
            "roles": list(roles),
        }
        if scopes:
            claims["scope"] = " ".join(scopes)
        claims["amr"] = ["pwd", "otp"] if mfa else ["pwd"]
        if extra:
            clash = _REGISTERED.intersection(extra)
            if clash:
                raise ValueError(f"extra claims may not replace {sorted(clash)}")
            claims.update(extra)
        return self._sign(ACCESS_TYPE, claims), claims

    def refresh_token(self, *, subject: str, session_id: str, token_id: str) -> str:
        """A signed ``refresh+jwt`` whose ``jti`` is ``token_id``; its audience is the issuer
        itself, since only Bastion ever accepts it."""
        if not subject or not token_id:
            raise ValueError("a refresh token needs a subject and a token id")
        now = int(self._clock())
        claims = {
            "iss": self._config.issuer,
            "sub": subject,
            "aud": self._config.issuer,
            "exp": now + self._refresh_ttl,
            "iat": now,
            "nbf": now,
            "jti": token_id,
            "sid": session_id,
        }
        return self._sign(REFRESH_TYPE, claims)

    def _sign(self, typ: str, claims: Mapping[str, Any]) -> str:
        key = self._keys.ring.signing
        signing_input = key.headers[typ] + "." + _b64url(orjson.dumps(claims))
        return signing_input + "." + _b64url(key.sign(signing_input.encode("ascii")))


def looks_like_bastion_jwt(token: str, *, issuer: str, kids: Container[str]) -> bool:
    """Whether ``token`` is plausibly a Bastion JWT (so a failure is answered with 401 rather
    than passed upstream): JWT-shaped, and its ``kid`` is one of ``kids`` or its ``iss`` is
    ``issuer``. Nothing is verified; never raises."""
    try:
        if not isinstance(token, str) or len(token) > LOOKS_LIKE_MAX_BYTES:
            return False
        match = _SEGMENTS.fullmatch(token)
        if match is None:
            return False
        header = json.loads(_pad_decode(match.group(1)))
        if isinstance(header, dict):
            kid = header.get("kid")
            if isinstance(kid, str) and kid in kids:
                return True
        payload = json.loads(_pad_decode(match.group(2)))
        return isinstance(payload, dict) and payload.get("iss") == issuer
    except Exception:  # any undecodable input simply is not ours
        return False


def _pad_decode(segment: str) -> bytes:
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
