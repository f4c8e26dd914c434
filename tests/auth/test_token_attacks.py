"""Forged and malformed tokens (RFC 8725): every row must be refused with ``invalid_token``.

Each forgery is built by hand (base64url, JSON text, HMAC or ``cryptography`` signatures) so a
row is exactly the attack it names; only the positive table uses the issuer.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from bastion.auth.config import TokenConfig
from bastion.auth.keyring import SigningKey, SigningKeys
from bastion.auth.tokens import ACCESS_TYPE, REFRESH_TYPE, TokenError, TokenIssuer, TokenVerifier
from bastion.store.database import Database
from bastion.store.keys import KeyStore
from bastion.store.migrate import upgrade

NOW = 1_700_000_000.0
ALGORITHMS = ("EdDSA", "ES256", "RS256", "HS256")
# Room for the 10 KB kid row to reach the kid check; the 3 MB row is still far beyond it.
CONFIG = TokenConfig(max_token_bytes=16384)


@dataclass
class Context:
    """One ring holding a key of every algorithm, plus what only setup could mint."""

    keys: SigningKeys
    rotated_out: str
    foreign: str
    foreign_key: SigningKey

    def key(self, algorithm: str) -> SigningKey:
        return next(
            key
            for kid in self.keys.ring.kids
            if (key := self.keys.ring.get(kid)) is not None and key.algorithm == algorithm
        )

    def verifier(self) -> TokenVerifier:
        return TokenVerifier(CONFIG, self.keys, clock=lambda: NOW)


def _mint(keys: SigningKeys) -> str:
    issuer = TokenIssuer(CONFIG, keys, clock=lambda: NOW)
    return issuer.access_token(subject="u1", session_id="s1", roles=[], scopes=[], mfa=False)[0]


async def _build(directory: Path) -> Context:
    main = Database.from_url(f"sqlite+aiosqlite:///{directory / 'main.db'}")
    other = Database.from_url(f"sqlite+aiosqlite:///{directory / 'other.db'}")
    for database in (main, other):
        await database.start()
        await upgrade(database)
    try:
        store = KeyStore(main)
        first = SigningKeys(store, CONFIG.model_copy(update={"keep_signing_keys": 1}))
        await first.load()
        rotated_out = _mint(first)
        await first.rotate()  # keep=1: generation 1 is retired
        # An algorithm change per rotation leaves one active key of each algorithm.
        for algorithm in ALGORITHMS[1:]:
            config = CONFIG.model_copy(update={"algorithm": algorithm, "keep_signing_keys": 4})
            await SigningKeys(store, config).rotate()
        keys = SigningKeys(store, CONFIG)
        await keys.load()
        foreign = SigningKeys(KeyStore(other), CONFIG)
        await foreign.load()
        return Context(
            keys=keys,
            rotated_out=rotated_out,
            foreign=_mint(foreign),
            foreign_key=foreign.ring.signing,
        )
    finally:
        await main.close()
        await other.close()


@pytest.fixture(scope="module")
def ctx(tmp_path_factory: pytest.TempPathFactory) -> Context:
    return asyncio.run(_build(tmp_path_factory.mktemp("attack-keys")))


def test_ring_holds_every_algorithm(ctx: Context) -> None:
    algorithms = {key.algorithm for kid in ctx.keys.ring.kids if (key := ctx.keys.ring.get(kid))}
    assert algorithms == set(ALGORITHMS)
    assert ctx.keys.ring.signing.algorithm == "HS256"


# --- building tokens by hand -------------------------------------------------------------------


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(part: dict[str, Any] | list[Any] | str | bytes) -> str:
    """A JSON value, raw JSON text, or raw bytes as a base64url segment."""
    if isinstance(part, bytes):
        return b64(part)
    if isinstance(part, str):
        return b64(part.encode())
    return b64(json.dumps(part).encode())


def header(key: SigningKey, **changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {"alg": key.algorithm, "typ": ACCESS_TYPE, "kid": key.kid}
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def claims(**changes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {
        "iss": CONFIG.issuer,
        "sub": "user-1",
        "aud": CONFIG.audience,
        "exp": NOW + 600,
        "iat": NOW - 10,
        "nbf": NOW - 10,
        "jti": "jti-1",
        "client_id": CONFIG.client_id,
        "sid": "session-1",
        "roles": ["viewer"],
        "amr": ["pwd"],
    }
    values.update(changes)
    return {name: value for name, value in values.items() if value is not None}


def signature_of(key: SigningKey, message: bytes) -> bytes:
    """A genuine signature, computed with ``cryptography``/``hmac`` directly."""
    private = key.private_key
    if isinstance(private, bytes):
        return hmac.new(private, message, hashlib.sha256).digest()
    if isinstance(private, ed25519.Ed25519PrivateKey):
        return private.sign(message)
    if isinstance(private, ec.EllipticCurvePrivateKey):
        r, s = decode_dss_signature(private.sign(message, ec.ECDSA(hashes.SHA256())))
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")
    assert isinstance(private, rsa.RSAPrivateKey)
    return private.sign(message, padding.PKCS1v15(), hashes.SHA256())


def forge(
    key: SigningKey,
    head: dict[str, Any] | list[Any] | str | bytes | None = None,
    body: dict[str, Any] | list[Any] | str | bytes | None = None,
    signature: bytes | Callable[[bytes], bytes] | None = None,
) -> str:
    """``head.body.signature``; signed with ``key`` unless ``signature`` is given."""
    signing_input = (
        segment(header(key) if head is None else head)
        + "."
        + segment(claims() if body is None else body)
    )
    if signature is None:
        raw = signature_of(key, signing_input.encode())
    elif callable(signature):
        raw = signature(signing_input.encode())
    else:
        raw = signature
    return signing_input + "." + b64(raw)


def hs256_with(secret: bytes) -> Callable[[bytes], bytes]:
    return lambda message: hmac.new(secret, message, hashlib.sha256).digest()


def public_bytes(key: SigningKey, encoding: serialization.Encoding) -> bytes:
    data: bytes = key.public_key.public_bytes(
        encoding, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return data


def confusion(target: str, encoding: serialization.Encoding) -> Callable[[Context], str]:
    """HS256 keyed with the asymmetric key's public bytes, naming that key's kid."""

    def build(c: Context) -> str:
        key = c.key(target)
        secret = public_bytes(key, encoding)
        return forge(key, header(key, alg="HS256"), signature=hs256_with(secret))

    return build


def none_alg(spelling: str, *, signed: bool) -> Callable[[Context], str]:
    def build(c: Context) -> str:
        key = c.key("EdDSA")
        token = forge(key, header(key, alg=spelling), signature=b"")
        return token + (b64(secrets.token_bytes(64)) if signed else "")

    return build


def with_alphabet_signature(c: Context) -> str:
    """A genuine token whose signature is written in the '+/' base64 alphabet."""
    key = c.key("EdDSA")
    for attempt in range(1000):
        token = forge(key, body=claims(jti=f"jti-{attempt}"))
        head, body, sig = token.split(".")
        if "-" in sig or "_" in sig:
            return ".".join([head, body, sig.replace("-", "+").replace("_", "/")])
    raise AssertionError("no signature with '-' or '_' in 1000 attempts")


def with_noncanonical_tail(c: Context) -> str:
    """A genuine signature whose last character sets the unused trailing bits: it decodes to
    the very same bytes, yet is a different string (a cache-key and replay-list bypass)."""
    token = forge(c.key("EdDSA"))
    head, body, sig = token.split(".")
    assert len(sig) % 4 == 2  # 64 bytes: the last character carries 4 unused bits
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    tail = alphabet[alphabet.index(sig[-1]) | 1]
    forged = sig[:-1] + tail
    assert base64.urlsafe_b64decode(forged + "==") == base64.urlsafe_b64decode(sig + "==")
    return ".".join([head, body, forged])


def with_padding(c: Context) -> str:
    token = forge(c.key("EdDSA"))
    return token + "=" * (-len(token.rsplit(".", 1)[1]) % 4)


def with_tampered_payload(c: Context) -> str:
    key = c.key("EdDSA")
    genuine = forge(key)
    promoted = forge(key, body=claims(roles=["admin"]), signature=b"\x01" * 64)
    head, _, sig = genuine.split(".")
    return ".".join([head, promoted.split(".")[1], sig])


def header_text(c: Context, text: str) -> str:
    key = c.key("EdDSA")
    return forge(key, text.replace("KID", key.kid))


def body_text(c: Context, text: str) -> str:
    return forge(c.key("EdDSA"), body=text)


FULL = json.dumps(claims())[1:-1]  # every valid claim as JSON members, for duplicate-key rows
BUT_EXP = json.dumps(claims(exp=None))[1:-1]  # the same without exp, to spell exp by hand


def row(row_id: str, build: Callable[[Context], str], reason: str, typ: str = ACCESS_TYPE) -> Any:
    return pytest.param(build, reason, typ, id=row_id)


ATTACKS = [
    # alg "none" in every spelling, with and without a signature
    *(
        row(
            f"alg-{spelling}-{'signed' if signed else 'unsigned'}",
            none_alg(spelling, signed=signed),
            "bad_algorithm",
        )
        for spelling in ("none", "None", "NONE", "nOnE")
        for signed in (False, True)
    ),
    row("missing-signature", lambda c: forge(c.key("EdDSA"), signature=b""), "missing_signature"),
    row("two-segments", lambda c: forge(c.key("EdDSA")).rsplit(".", 1)[0], "malformed"),
    # algorithm confusion: HS256 keyed with the public key, in PEM and DER
    *(
        row(
            f"hs256-with-{target}-public-{label}",
            confusion(target, encoding),
            "bad_algorithm",
        )
        for target in ("EdDSA", "ES256", "RS256")
        for label, encoding in (
            ("pem", serialization.Encoding.PEM),
            ("der", serialization.Encoding.DER),
        )
    ),
    row(
        "alg-of-another-family",
        lambda c: forge(
            c.key("EdDSA"), header(c.key("EdDSA"), alg="ES256"), signature=b"\x01" * 64
        ),
        "bad_algorithm",
    ),
    row(
        "alg-lowercase",
        lambda c: forge(c.key("HS256"), header(c.key("HS256"), alg="hs256")),
        "bad_algorithm",
    ),
    row(
        "alg-unknown-HS1024",
        lambda c: forge(c.key("HS256"), header(c.key("HS256"), alg="HS1024")),
        "bad_algorithm",
    ),
    row(
        "alg-unknown-ES999",
        lambda c: forge(c.key("ES256"), header(c.key("ES256"), alg="ES999")),
        "bad_algorithm",
    ),
    row(
        "alg-missing",
        lambda c: forge(c.key("EdDSA"), {"typ": ACCESS_TYPE, "kid": c.key("EdDSA").kid}),
        "bad_algorithm",
    ),
    # kid
    row(
        "kid-path-traversal",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), kid="../../etc/passwd")),
        "bad_kid",
    ),
    row(
        "kid-sql",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), kid="' OR 1=1 --")),
        "bad_kid",
    ),
    row(
        "kid-10kb",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), kid="k" * 10240)),
        "bad_kid",
    ),
    row(
        "kid-not-string", lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), kid=1)), "bad_kid"
    ),
    row(
        "kid-missing",
        lambda c: forge(c.key("EdDSA"), {"alg": "EdDSA", "typ": ACCESS_TYPE}),
        "bad_kid",
    ),
    row(
        "kid-unknown-random",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), kid=secrets.token_urlsafe(12))),
        "unknown_kid",
    ),
    row("kid-rotated-out", lambda c: c.rotated_out, "unknown_kid"),
    row("kid-from-another-store", lambda c: c.foreign, "unknown_kid"),
    # header parameters that would name their own key, or that we do not understand
    *(
        row(
            f"header-{name}",
            lambda c, name=name, value=value: forge(
                c.key("EdDSA"), header(c.key("EdDSA"), **{name: value})
            ),
            "untrusted_key_source",
        )
        for name, value in (
            ("jku", "https://attacker.example/jwks.json"),
            ("x5u", "https://attacker.example/cert.pem"),
            ("jwk", {"kty": "oct", "k": "c2VjcmV0"}),
            ("x5c", ["MIIB"]),
            ("x5t", "AAAA"),
            ("x5t#S256", "AAAA"),
        )
    ),
    row(
        "header-cty",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), cty="JWT")),
        "unexpected_header",
    ),
    row(
        "crit-unknown",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), crit=["exp"], exp=1)),
        "unexpected_header",
    ),
    row(
        "crit-unknown-alone",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), crit=["b64"])),
        "unsupported_crit",
    ),
    row(
        "crit-empty",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), crit=[])),
        "unsupported_crit",
    ),
    row(
        "typ-missing",
        lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), typ=None)),
        "wrong_type",
    ),
    row(
        "typ-jwt", lambda c: forge(c.key("EdDSA"), header(c.key("EdDSA"), typ="JWT")), "wrong_type"
    ),
    row(
        "header-duplicate-kid",
        lambda c: header_text(c, '{"alg":"EdDSA","typ":"at+jwt","kid":"KID","kid":"KID"}'),
        "malformed",
    ),
    row(
        "header-duplicate-alg",
        lambda c: header_text(c, '{"alg":"none","typ":"at+jwt","kid":"KID","alg":"EdDSA"}'),
        "malformed",
    ),
    row("header-array", lambda c: forge(c.key("EdDSA"), ["EdDSA"]), "malformed"),
    row("header-not-utf8", lambda c: forge(c.key("EdDSA"), b'{"alg":"\xff"}'), "malformed"),
    # type confusion between access and refresh tokens
    row(
        "refresh-as-access",
        lambda c: forge(
            c.key("EdDSA"), header(c.key("EdDSA"), typ=REFRESH_TYPE), claims(aud=CONFIG.issuer)
        ),
        "wrong_type",
    ),
    row("access-as-refresh", lambda c: forge(c.key("EdDSA")), "wrong_type", REFRESH_TYPE),
    # claims
    row("exp-missing", lambda c: forge(c.key("EdDSA"), body=claims(exp=None)), "missing_claim"),
    row(
        "exp-expired-beyond-leeway",
        lambda c: forge(c.key("EdDSA"), body=claims(exp=NOW - CONFIG.leeway - 1)),
        "expired",
    ),
    row(
        "exp-at-leeway-edge",
        lambda c: forge(c.key("EdDSA"), body=claims(exp=NOW - CONFIG.leeway)),
        "expired",
    ),
    row("exp-string", lambda c: forge(c.key("EdDSA"), body=claims(exp="9999999999")), "bad_claim"),
    row("exp-true", lambda c: forge(c.key("EdDSA"), body=claims(exp=True)), "bad_claim"),
    row(
        "exp-null",
        lambda c: forge(c.key("EdDSA"), body=claims(exp=None) | {"exp": None}),
        "bad_claim",
    ),
    row(
        "exp-overflow-to-infinity",
        lambda c: body_text(c, '{"exp":1e400,' + BUT_EXP + "}"),
        "bad_claim",
    ),
    row("exp-nan", lambda c: body_text(c, '{"exp":NaN,' + BUT_EXP + "}"), "malformed"),
    row(
        "nbf-in-future",
        lambda c: forge(c.key("EdDSA"), body=claims(nbf=NOW + CONFIG.leeway + 60)),
        "not_yet_valid",
    ),
    row("nbf-string", lambda c: forge(c.key("EdDSA"), body=claims(nbf="0")), "bad_claim"),
    row(
        "iat-in-future",
        lambda c: forge(c.key("EdDSA"), body=claims(iat=NOW + CONFIG.leeway + 60)),
        "issued_in_future",
    ),
    row("iat-missing", lambda c: forge(c.key("EdDSA"), body=claims(iat=None)), "missing_claim"),
    row(
        "iss-wrong",
        lambda c: forge(c.key("EdDSA"), body=claims(iss="https://attacker.example")),
        "bad_issuer",
    ),
    row("iss-missing", lambda c: forge(c.key("EdDSA"), body=claims(iss=None)), "missing_claim"),
    row(
        "aud-wrong", lambda c: forge(c.key("EdDSA"), body=claims(aud="another-api")), "bad_audience"
    ),
    row(
        "aud-list-without-ours",
        lambda c: forge(c.key("EdDSA"), body=claims(aud=["a", "b"])),
        "bad_audience",
    ),
    row(
        "aud-list-not-strings",
        lambda c: forge(c.key("EdDSA"), body=claims(aud=[CONFIG.audience, 1])),
        "bad_audience",
    ),
    row("aud-missing", lambda c: forge(c.key("EdDSA"), body=claims(aud=None)), "missing_claim"),
    row("sub-missing", lambda c: forge(c.key("EdDSA"), body=claims(sub=None)), "missing_claim"),
    row("sub-empty", lambda c: forge(c.key("EdDSA"), body=claims(sub="")), "bad_claim"),
    row("sub-number", lambda c: forge(c.key("EdDSA"), body=claims(sub=42)), "bad_claim"),
    row("jti-missing", lambda c: forge(c.key("EdDSA"), body=claims(jti=None)), "missing_claim"),
    row(
        "client-id-missing",
        lambda c: forge(c.key("EdDSA"), body=claims(client_id=None)),
        "missing_claim",
    ),
    row("roles-string", lambda c: forge(c.key("EdDSA"), body=claims(roles="admin")), "bad_claim"),
    row("duplicate-sub", lambda c: body_text(c, "{" + FULL + ',"sub":"admin"}'), "malformed"),
    row("duplicate-exp", lambda c: body_text(c, "{" + FULL + ',"exp":9999999999}'), "malformed"),
    row(
        "duplicate-nested",
        lambda c: body_text(c, "{" + FULL + ',"ext":{"a":1,"a":2}}'),
        "malformed",
    ),
    row("payload-array", lambda c: forge(c.key("EdDSA"), body=[claims()]), "malformed"),
    row("payload-not-json", lambda c: forge(c.key("EdDSA"), body="not json"), "malformed"),
    row("payload-deeply-nested", lambda c: body_text(c, "[" * 5000 + "]" * 5000), "malformed"),
    # signatures
    row("signature-tampered-payload", with_tampered_payload, "bad_signature"),
    *(
        row(
            f"signature-zeros-{alg}",
            lambda c, alg=alg: forge(c.key(alg), signature=bytes(c.key(alg).signature_size)),
            "bad_signature",
        )
        for alg in ALGORITHMS
    ),
    row(
        "signature-ecdsa-r-zero-s-one",
        lambda c: forge(c.key("ES256"), signature=bytes(32) + (1).to_bytes(32, "big")),
        "bad_signature",
    ),
    row(
        "signature-short",
        lambda c: forge(c.key("EdDSA"), signature=lambda m: signature_of(c.key("EdDSA"), m)[:-1]),
        "bad_signature",
    ),
    row(
        "signature-of-another-key",
        lambda c: forge(c.key("EdDSA"), signature=lambda m: signature_of(c.foreign_key, m)),
        "bad_signature",
    ),
    # encoding
    row(
        "too-large-3mb",
        lambda c: forge(c.key("EdDSA"), body=claims(pad="x" * 3_000_000)),
        "too_large",
    ),
    row("base64-padded", with_padding, "malformed"),
    row("base64-plus-slash", with_alphabet_signature, "malformed"),
    row("base64-noncanonical-tail", with_noncanonical_tail, "malformed"),
    row("whitespace-inside", lambda c: forge(c.key("EdDSA")).replace(".", " .", 1), "malformed"),
    row("trailing-newline", lambda c: forge(c.key("EdDSA")) + "\n", "malformed"),
    row(
        "two-tokens-space",
        lambda c: forge(c.key("EdDSA")) + " " + forge(c.key("EdDSA")),
        "malformed",
    ),
    row(
        "two-tokens-comma",
        lambda c: forge(c.key("EdDSA")) + "," + forge(c.key("EdDSA")),
        "malformed",
    ),
    row(
        "two-tokens-dot", lambda c: forge(c.key("EdDSA")) + "." + forge(c.key("EdDSA")), "malformed"
    ),
    row("empty", lambda c: "", "malformed"),
]


@pytest.mark.parametrize(("build", "reason", "typ"), ATTACKS)
def test_attack_is_refused(
    ctx: Context, build: Callable[[Context], str], reason: str, typ: str
) -> None:
    token = build(ctx)
    with pytest.raises(TokenError) as caught:
        ctx.verifier().verify_now(token, typ=typ)
    assert caught.value.code == "invalid_token"
    assert caught.value.reason == reason


VALID = [
    *(
        pytest.param(lambda c, alg=alg: forge(c.key(alg)), ACCESS_TYPE, id=f"valid-{alg}")
        for alg in ALGORITHMS
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(exp=NOW - CONFIG.leeway + 1)),
        ACCESS_TYPE,
        id="expired-within-leeway",
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(nbf=NOW + CONFIG.leeway)),
        ACCESS_TYPE,
        id="nbf-within-leeway",
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(iat=NOW + CONFIG.leeway)),
        ACCESS_TYPE,
        id="iat-within-leeway",
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(nbf=None)), ACCESS_TYPE, id="nbf-absent"
    ),
    pytest.param(
        lambda c: forge(c.key("ES256"), header(c.key("ES256"), typ="AT+JWT")),
        ACCESS_TYPE,
        id="typ-uppercase",
    ),
    pytest.param(
        lambda c: forge(c.key("RS256"), header(c.key("RS256"), typ="application/at+jwt")),
        ACCESS_TYPE,
        id="typ-media-type",
    ),
    pytest.param(
        lambda c: forge(
            c.key("HS256"), {"kid": c.key("HS256").kid, "typ": ACCESS_TYPE, "alg": "HS256"}
        ),
        ACCESS_TYPE,
        id="header-reordered",
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(aud=["other", CONFIG.audience])),
        ACCESS_TYPE,
        id="aud-list",
    ),
    pytest.param(
        lambda c: forge(c.key("EdDSA"), body=claims(exp=NOW + 600.5, iat=NOW - 0.5)),
        ACCESS_TYPE,
        id="fractional-times",
    ),
    pytest.param(
        lambda c: forge(
            c.key("EdDSA"),
            header(c.key("EdDSA"), typ=REFRESH_TYPE),
            claims(aud=CONFIG.issuer, client_id=None),
        ),
        REFRESH_TYPE,
        id="refresh",
    ),
]


@pytest.mark.parametrize(("build", "typ"), VALID)
def test_valid_token_is_accepted(ctx: Context, build: Callable[[Context], str], typ: str) -> None:
    token = build(ctx)
    verified = ctx.verifier().verify_now(token, typ=typ)
    payload = token.split(".")[1]
    assert verified == json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
