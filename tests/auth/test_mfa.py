"""MFA primitives: RFC 6238 codes, step matching and the caller's replay rule, enrolment URIs and
QR codes, encryption of secrets at rest, backup codes."""

from __future__ import annotations

import base64
import re
import xml.etree.ElementTree as ElementTree
from typing import Literal
from urllib.parse import parse_qs, unquote, urlsplit

import pytest
from sqlalchemy import update

from bastion.auth.config import MfaConfig
from bastion.auth.mfa import (
    MFA_KEY_PURPOSE,
    BackupCodes,
    MfaSecretError,
    SecretCipher,
    Totp,
    qr_codes,
)
from bastion.store.database import Database
from bastion.store.keys import KeyStore
from bastion.store.models import KeyRecord, utc_now

Algorithm = Literal["SHA1", "SHA256", "SHA512"]


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii")


# RFC 6238 Appendix B: the seed is the ASCII digits repeated to the HMAC's block of key bytes.
RFC_SEEDS: dict[Algorithm, str] = {
    "SHA1": _b32(b"12345678901234567890"),
    "SHA256": _b32(b"12345678901234567890123456789012"),
    "SHA512": _b32(b"1234567890" * 6 + b"1234"),
}

RFC_6238_VECTORS: list[tuple[int, Algorithm, str]] = [
    (59, "SHA1", "94287082"),
    (59, "SHA256", "46119246"),
    (59, "SHA512", "90693936"),
    (1111111109, "SHA1", "07081804"),
    (1111111109, "SHA256", "68084774"),
    (1111111109, "SHA512", "25091201"),
    (1111111111, "SHA1", "14050471"),
    (1111111111, "SHA256", "67062674"),
    (1111111111, "SHA512", "99943326"),
    (1234567890, "SHA1", "89005924"),
    (1234567890, "SHA256", "91819424"),
    (1234567890, "SHA512", "93441116"),
    (2000000000, "SHA1", "69279037"),
    (2000000000, "SHA256", "90698825"),
    (2000000000, "SHA512", "38618901"),
    (20000000000, "SHA1", "65353130"),
    (20000000000, "SHA256", "77737706"),
    (20000000000, "SHA512", "47863826"),
]


@pytest.mark.parametrize(
    ("at", "algorithm", "expected"),
    RFC_6238_VECTORS,
    ids=[f"{algorithm}-{at}" for at, algorithm, _ in RFC_6238_VECTORS],
)
def test_rfc_6238_vectors(at: int, algorithm: Algorithm, expected: str) -> None:
    totp = Totp(MfaConfig(digits=8, period=30, algorithm=algorithm))
    assert totp.code_at(RFC_SEEDS[algorithm], at) == expected
    step = at // 30
    assert totp.matching_step(RFC_SEEDS[algorithm], expected, at=at) == step


# --- matching_step --------------------------------------------------------------------------

SECRET = RFC_SEEDS["SHA1"]
NOW = 1_700_000_015.0  # half-way through a step
STEP = int(NOW // 30)


@pytest.fixture
def totp() -> Totp:
    return Totp(MfaConfig(digits=6, period=30, window=1))


@pytest.mark.parametrize(
    ("id", "offset", "accepted"),
    [
        ("current", 0, True),
        ("previous", -1, True),
        ("next", 1, True),
        ("two-behind", -2, False),
        ("two-ahead", 2, False),
        ("far-past", -100, False),
    ],
)
def test_window(totp: Totp, id: str, offset: int, accepted: bool) -> None:
    code = totp.code_at(SECRET, NOW + offset * 30)
    expected = STEP + offset if accepted else None
    assert totp.matching_step(SECRET, code, at=NOW) == expected


def test_window_zero_accepts_only_the_current_step() -> None:
    strict = Totp(MfaConfig(window=0))
    assert strict.matching_step(SECRET, strict.code_at(SECRET, NOW), at=NOW) == STEP
    assert strict.matching_step(SECRET, strict.code_at(SECRET, NOW - 30), at=NOW) is None
    assert strict.matching_step(SECRET, strict.code_at(SECRET, NOW + 30), at=NOW) is None


def test_step_boundaries(totp: Totp) -> None:
    start = STEP * 30.0
    code = totp.code_at(SECRET, start)
    assert totp.code_at(SECRET, start + 29.999) == code
    assert totp.matching_step(SECRET, code, at=start) == STEP
    assert totp.matching_step(SECRET, code, at=start - 0.001) == STEP  # the next step for "now"


def test_equal_codes_in_the_window_return_the_latest_step(totp: Totp) -> None:
    # Found by search: with the RFC's SHA-1 seed, these two consecutive steps share their code.
    first, second = 50424280, 50424281
    assert totp.code_at(SECRET, first * 30) == totp.code_at(SECRET, second * 30) == "070562"
    # Returning the later step means the replay rule then refuses the code in both steps.
    assert totp.matching_step(SECRET, "070562", at=first * 30) == second
    assert totp.matching_step(SECRET, "070562", at=second * 30) == second


def test_steps_before_the_epoch_are_skipped(totp: Totp) -> None:
    assert totp.matching_step(SECRET, totp.code_at(SECRET, 0), at=5) == 0
    assert totp.matching_step(SECRET, totp.code_at(SECRET, 30), at=5) == 1


def _full_width(digits: str) -> str:
    return "".join(chr(0xFF10 + int(digit)) for digit in digits)


def _arabic_indic(digits: str) -> str:
    return "".join(chr(0x0660 + int(digit)) for digit in digits)


@pytest.mark.parametrize(
    ("id", "mangle", "accepted"),
    [
        ("as-given", lambda code: code, True),
        ("grouped-with-space", lambda code: f"{code[:3]} {code[3:]}", True),
        ("surrounding-spaces", lambda code: f"  {code} ", True),
        ("too-short", lambda code: code[:-1], False),
        ("too-long", lambda code: code + "0", False),
        ("empty", lambda code: "", False),
        ("letter", lambda code: code[:-1] + "a", False),
        ("sign", lambda code: "+" + code[1:], False),
        ("hyphen", lambda code: f"{code[:3]}-{code[3:]}", False),
        ("tab", lambda code: f"{code[:3]}\t{code[3:]}", False),
        ("newline", lambda code: code + "\n", False),
        ("full-width-digits", _full_width, False),
        ("arabic-indic-digits", _arabic_indic, False),
    ],
)
def test_code_format(totp: Totp, id: str, mangle: object, accepted: bool) -> None:
    code = totp.code_at(SECRET, NOW)
    given = mangle(code)  # type: ignore[operator]
    assert totp.matching_step(SECRET, given, at=NOW) == (STEP if accepted else None)


def test_eight_digit_codes() -> None:
    totp = Totp(MfaConfig(digits=8))
    code = totp.code_at(SECRET, NOW)
    assert re.fullmatch(r"[0-9]{8}", code)
    assert totp.matching_step(SECRET, code, at=NOW) == STEP
    assert totp.matching_step(SECRET, code[2:], at=NOW) is None


def test_period_changes_the_step() -> None:
    totp = Totp(MfaConfig(period=60))
    assert totp.matching_step(SECRET, totp.code_at(SECRET, NOW), at=NOW) == int(NOW // 60)


# --- the caller's replay rule ---------------------------------------------------------------


class ReplayGuard:
    """The contract callers implement in SQL: per user, the highest accepted step; a code is
    accepted only if its step is greater, and that step becomes the highest."""

    def __init__(self, totp: Totp) -> None:
        self.totp = totp
        self.last_step: dict[str, int] = {}

    def accept(self, user_id: str, secret: str, code: str, *, at: float) -> bool:
        step = self.totp.matching_step(secret, code, at=at)
        if step is None or step <= self.last_step.get(user_id, -1):
            return False
        self.last_step[user_id] = step
        return True


def test_a_code_is_accepted_once(totp: Totp) -> None:
    guard = ReplayGuard(totp)
    code = totp.code_at(SECRET, NOW)
    assert guard.accept("u1", SECRET, code, at=NOW) is True
    assert guard.accept("u1", SECRET, code, at=NOW) is False
    # Still refused later in the window, where the code is still valid.
    assert guard.accept("u1", SECRET, code, at=NOW + 30) is False
    # Another user's state is separate.
    assert guard.accept("u2", SECRET, code, at=NOW) is True


def test_an_older_code_is_refused_after_a_newer_one(totp: Totp) -> None:
    guard = ReplayGuard(totp)
    assert guard.accept("u1", SECRET, totp.code_at(SECRET, NOW), at=NOW) is True
    previous = totp.code_at(SECRET, NOW - 30)
    assert totp.matching_step(SECRET, previous, at=NOW) == STEP - 1  # valid on its own
    assert guard.accept("u1", SECRET, previous, at=NOW) is False
    assert guard.accept("u1", SECRET, totp.code_at(SECRET, NOW + 30), at=NOW + 30) is True


# --- secrets and enrolment ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("algorithm", "size"),
    [("SHA1", 20), ("SHA256", 32), ("SHA512", 64)],
)
def test_new_secret(algorithm: Algorithm, size: int) -> None:
    totp = Totp(MfaConfig(algorithm=algorithm))
    secrets = {totp.new_secret() for _ in range(20)}
    assert len(secrets) == 20
    for secret in secrets:
        assert re.fullmatch(r"[A-Z2-7]+", secret)  # base32, no padding
        assert len(base64.b32decode(secret + "=" * (-len(secret) % 8))) == size
        assert totp.matching_step(secret, totp.code_at(secret, NOW), at=NOW) == STEP


def test_provisioning_uri_names_every_parameter() -> None:
    totp = Totp(MfaConfig(issuer="Acme Corp: Staging", digits=8, period=60, algorithm="SHA256"))
    secret = totp.new_secret()
    uri = totp.provisioning_uri(secret, account="alice@example.com")
    parts = urlsplit(uri)
    assert (parts.scheme, parts.netloc) == ("otpauth", "totp")
    issuer, account = parts.path.removeprefix("/").split(":")
    assert (unquote(issuer), unquote(account)) == ("Acme Corp: Staging", "alice@example.com")
    query = {name: values[0] for name, values in parse_qs(parts.query, strict_parsing=True).items()}
    assert query == {
        "secret": secret,
        "issuer": "Acme Corp: Staging",
        "algorithm": "SHA256",
        "digits": "8",
        "period": "60",
    }


def test_provisioning_uri_with_defaults() -> None:
    totp = Totp(MfaConfig())
    uri = totp.provisioning_uri(RFC_SEEDS["SHA1"], account="bob")
    assert uri == (
        f"otpauth://totp/Bastion:bob?secret={RFC_SEEDS['SHA1']}&issuer=Bastion"
        "&algorithm=SHA1&digits=6&period=30"
    )


def test_qr_codes() -> None:
    uri = Totp(MfaConfig()).provisioning_uri(RFC_SEEDS["SHA1"], account="alice@example.com")
    svg, png = qr_codes(uri)
    root = ElementTree.fromstring(svg)
    assert root.tag == "{http://www.w3.org/2000/svg}svg"
    assert int(root.attrib["width"]) > 0
    decoded = base64.b64decode(png, validate=True)
    assert decoded.startswith(b"\x89PNG\r\n\x1a\n")


# --- secrets at rest ------------------------------------------------------------------------

TOTP_SECRET = RFC_SEEDS["SHA1"]


async def test_cipher_round_trip(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    key_id, blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    assert key_id == cipher.key_ids[0]
    assert TOTP_SECRET.encode() not in blob
    assert cipher.decrypt(key_id, blob, user_id="user-1") == TOTP_SECRET
    assert cipher.needs_reencrypt(key_id) is False
    # A fresh nonce each time.
    assert cipher.encrypt(TOTP_SECRET, user_id="user-1")[1] != blob


async def test_cipher_keys_live_in_the_key_store(migrated: Database) -> None:
    store = KeyStore(migrated)
    cipher = SecretCipher(store)
    await cipher.load()
    await cipher.load()  # loading again reuses the key
    keys = await store.active(MFA_KEY_PURPOSE)
    assert [key.id for key in keys] == list(cipher.key_ids)
    assert len(keys) == 1
    assert len(keys[0].material) == 32


async def test_cipher_binds_the_user(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    key_id, blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    for other in ("user-2", "user-1 ", "USER-1", ""):
        with pytest.raises(MfaSecretError, match="does not authenticate") as caught:
            cipher.decrypt(key_id, blob, user_id=other)
        assert caught.value.key_id == key_id


@pytest.mark.parametrize(
    ("id", "tamper", "message"),
    [
        ("flipped-bit", lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]), "does not authenticate"),
        ("flipped-nonce", lambda blob: blob[:1] + bytes([blob[1] ^ 1]) + blob[2:], "authenticate"),
        ("unknown-version", lambda blob: b"\x02" + blob[1:], "unknown format"),
        ("truncated", lambda blob: blob[:13], "unknown format"),
        ("empty", lambda blob: b"", "unknown format"),
    ],
)
async def test_cipher_detects_tampering(
    migrated: Database, id: str, tamper: object, message: str
) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    key_id, blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    with pytest.raises(MfaSecretError, match=message):
        cipher.decrypt(key_id, tamper(blob), user_id="user-1")  # type: ignore[operator]


async def test_cipher_refuses_an_unknown_key(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    _, blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    with pytest.raises(MfaSecretError, match="not active"):
        cipher.decrypt("no-such-key", blob, user_id="user-1")


async def test_rotation_keeps_old_ciphertexts_readable(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    old_key, old_blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")

    await cipher.rotate()

    new_key, new_blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    assert new_key != old_key
    assert cipher.key_ids == (new_key, old_key)
    assert cipher.decrypt(old_key, old_blob, user_id="user-1") == TOTP_SECRET
    assert cipher.decrypt(new_key, new_blob, user_id="user-1") == TOTP_SECRET
    assert cipher.needs_reencrypt(old_key) is True
    assert cipher.needs_reencrypt(new_key) is False

    moved_key, moved_blob = cipher.reencrypt(old_key, old_blob, user_id="user-1")
    assert moved_key == new_key
    assert cipher.decrypt(moved_key, moved_blob, user_id="user-1") == TOTP_SECRET


async def test_keys_beyond_keep_stop_decrypting(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    first_key, first_blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    await cipher.rotate(keep=3)
    await cipher.rotate(keep=3)
    assert cipher.decrypt(first_key, first_blob, user_id="user-1") == TOTP_SECRET
    await cipher.rotate(keep=2)
    assert len(cipher.key_ids) == 2
    with pytest.raises(MfaSecretError, match="not active"):
        cipher.decrypt(first_key, first_blob, user_id="user-1")


async def test_rotation_must_keep_a_previous_key(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    await cipher.load()
    with pytest.raises(ValueError, match="keep must be at least 2"):
        await cipher.rotate(keep=1)


async def test_cipher_must_be_loaded_before_use(migrated: Database) -> None:
    cipher = SecretCipher(KeyStore(migrated))
    with pytest.raises(RuntimeError, match="load"):
        cipher.encrypt(TOTP_SECRET, user_id="user-1")


async def test_another_instance_reads_the_ciphertexts(
    migrated: Database, database_url: str
) -> None:
    first = SecretCipher(KeyStore(migrated))
    await first.load()
    key_id, blob = first.encrypt(TOTP_SECRET, user_id="user-1")

    other_database = Database.from_url(database_url)
    await other_database.start()
    try:
        second = SecretCipher(KeyStore(other_database))
        await second.load()
        assert second.key_ids == first.key_ids
        assert second.decrypt(key_id, blob, user_id="user-1") == TOTP_SECRET

        # After the first instance rotates, the second meets a key it has not read yet.
        await first.rotate()
        rotated_key, rotated_blob = first.encrypt(TOTP_SECRET, user_id="user-2")
        with pytest.raises(MfaSecretError, match="not active"):
            second.decrypt(rotated_key, rotated_blob, user_id="user-2")
        await second.ensure_key(rotated_key)
        assert second.decrypt(rotated_key, rotated_blob, user_id="user-2") == TOTP_SECRET
        assert second.needs_reencrypt(key_id) is True
        assert second.encrypt(TOTP_SECRET, user_id="user-3")[0] == rotated_key
    finally:
        await other_database.close()


async def test_ensure_key_reloads_only_for_unknown_keys(migrated: Database) -> None:
    store = KeyStore(migrated)
    cipher = SecretCipher(store)
    await cipher.load()
    key_id = cipher.key_ids[0]
    await cipher.ensure_key(key_id)
    assert cipher.key_ids == (key_id,)

    async with migrated.session() as session:
        await session.execute(
            update(KeyRecord)
            .where(KeyRecord.purpose == MFA_KEY_PURPOSE)
            .values(retired_at=utc_now())
        )
        await session.commit()
    await cipher.ensure_key(key_id)  # known: no reload, the retirement is not seen yet
    with pytest.raises(MfaSecretError, match="no active MFA key"):
        await cipher.ensure_key("rotated-elsewhere")


async def test_cipher_with_wrapped_keys(migrated: Database) -> None:
    kek = base64.b64encode(bytes(range(32))).decode()
    cipher = SecretCipher(KeyStore(migrated, key_encryption_key=kek))
    await cipher.load()
    key_id, blob = cipher.encrypt(TOTP_SECRET, user_id="user-1")
    again = SecretCipher(KeyStore(migrated, key_encryption_key=kek))
    await again.load()
    assert again.decrypt(key_id, blob, user_id="user-1") == TOTP_SECRET


# --- backup codes ---------------------------------------------------------------------------

_CODE_FORMAT = re.compile(r"[0-9abcdefghjkmnpqrstvwxyz]{5}-[0-9abcdefghjkmnpqrstvwxyz]{5}")


def test_backup_codes_generate() -> None:
    codes = BackupCodes(10).generate()
    assert len(codes) == 10
    assert len(set(codes)) == 10
    for code in codes:
        assert _CODE_FORMAT.fullmatch(code)
        assert BackupCodes.normalize(code) == code.replace("-", "")
    assert BackupCodes(10).generate() != codes
    assert BackupCodes(0).generate() == []


def test_backup_code_count_is_not_negative() -> None:
    with pytest.raises(ValueError, match="negative"):
        BackupCodes(-1)


@pytest.mark.parametrize(
    ("id", "typed", "expected"),
    [
        ("as-shown", "abcde-fghjk", "abcdefghjk"),
        ("upper-case", "ABCDE-FGHJK", "abcdefghjk"),
        ("no-hyphen", "abcdefghjk", "abcdefghjk"),
        ("spaces", " abcde fghjk ", "abcdefghjk"),
        ("groups-of-two", "ab-cd-ef-gh-jk", "abcdefghjk"),
        ("o-read-as-zero", "oOoOo-12345", "0000012345"),
        ("i-and-l-read-as-one", "iIlL1-23456", "1111123456"),
        ("too-short", "abcde-fghj", None),
        ("too-long", "abcde-fghjkm", None),
        ("empty", "", None),
        ("only-separators", " - - ", None),
        ("letter-u", "abcde-fghju", None),
        ("underscore", "abcde_fghjk", None),
        ("full-width", "\uff41\uff42\uff43\uff44\uff45-\uff46\uff47\uff48\uff4a\uff4b", None),
        ("non-ascii-letter", "abcdé-fghjk", None),
    ],
)
def test_backup_code_normalize(id: str, typed: str, expected: str | None) -> None:
    assert BackupCodes.normalize(typed) == expected


KEY = b"k" * 32


def test_backup_code_hash() -> None:
    digest = BackupCodes.hash(KEY, "user-1", "abcde-fghjk")
    assert re.fullmatch(r"[0-9a-f]{64}", digest)
    # Every way of typing the code hashes alike, so the caller can look it up by hash.
    assert BackupCodes.hash(KEY, "user-1", " ABCDE FGHJK ") == digest
    # Bound to the user: the same code for another account is another hash.
    assert BackupCodes.hash(KEY, "user-2", "abcde-fghjk") != digest
    assert BackupCodes.hash(KEY, "user-1", "abcde-fghjm") != digest
    # Keyed: without the key the stored value cannot be recomputed.
    assert BackupCodes.hash(b"x" * 32, "user-1", "abcde-fghjk") != digest


def test_backup_code_hash_refuses_malformed_codes_and_missing_keys() -> None:
    with pytest.raises(ValueError, match="not a backup code"):
        BackupCodes.hash(KEY, "user-1", "abcde")
    with pytest.raises(ValueError, match="key"):
        BackupCodes.hash(b"", "user-1", "abcde-fghjk")
