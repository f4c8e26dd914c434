"""Secrets never reach the audit log: redaction by field name and by value pattern.

Applied to every event before it is hashed and written. A field whose *name* says it holds a
secret (``password``, ``api_key``, ``Authorization``, ``backup_codes``… at any depth, any case,
any of ``_ - .`` separators) is replaced whole by ``[REDACTED]``. Every other string is scanned
for secret *shapes* (bearer credentials, JWTs, ``bst_`` keys, card numbers passing the Luhn
check, private-key blocks, ``password=`` parameters, URL passwords, well-known token formats)
and only the secret part is replaced, so ``"Bearer eyJ…"`` becomes ``"Bearer [REDACTED]"``.

The walk also makes the detail plain JSON: mapping keys become strings, tuples and sets become
lists, anything else not JSON-native becomes its ``str``, and text is made valid UTF-8.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "Redactor", "is_secret_name", "luhn_valid", "redact_text"]

REDACTED = "[REDACTED]"

_NAME_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "authorization",
    "cookie",
    "credential",
    "privatekey",
    "backupcode",
    "recoverycode",
    "cardnumber",
    "creditcard",
    "otpcode",
    "mfacode",
    "signature",
)
"""A field whose normalised name contains one of these holds a secret."""
_NAME_EXACT = frozenset(
    {"otp", "totp", "hotp", "pin", "pan", "cvv", "cvc", "cvv2", "csc", "pwd", "ssn", "auth"}
)
"""Short names matched whole (as parts they would hit innocent words: ``footprint``)."""
_NAME_EXEMPT_SUFFIXES = ("id", "ids", "type", "count", "family")
"""Names about a secret rather than holding one: ``token_id``, ``token_type``, ``api_key_id``."""
_SEPARATORS = str.maketrans("", "", "_-. ")

_NAME_CACHE: dict[str, bool] = {}
_NAME_CACHE_MAX = 4096

_MIN_SECRET_TEXT = 8
"""Shorter strings cannot hold any of the secret shapes below."""
_MAX_INT = 2**63


def is_secret_name(name: str) -> bool:
    """Whether a field called ``name`` holds a secret (case and separators ignored)."""
    cached = _NAME_CACHE.get(name)
    if cached is not None:
        return cached
    normal = name.lower().translate(_SEPARATORS)
    secret = normal in _NAME_EXACT or (
        any(part in normal for part in _NAME_PARTS) and not normal.endswith(_NAME_EXEMPT_SUFFIXES)
    )
    if len(_NAME_CACHE) < _NAME_CACHE_MAX:
        _NAME_CACHE[name] = secret
    return secret


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) check of a payment card number given as digits only."""
    total = 0
    for index, char in enumerate(reversed(digits)):
        value = ord(char) - 48
        if index % 2:
            value *= 2
            if value > 9:
                value -= 9
        total += value
    return total % 10 == 0


def _card(match: re.Match[str]) -> str:
    digits = re.sub(r"[ -]", "", match.group(0))
    if 13 <= len(digits) <= 19 and luhn_valid(digits):
        return REDACTED
    return match.group(0)


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


def _whole(_match: re.Match[str]) -> str:
    return REDACTED


_PATTERNS: tuple[tuple[re.Pattern[str], Any], ...] = (
    # PEM private keys, possibly cut short by truncation.
    (
        re.compile(
            r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)",
            re.S,
        ),
        _whole,
    ),
    # Authorization schemes followed by a credential: keep the scheme name.
    (
        re.compile(
            r"(?i)(\b(?:bearer|basic|digest|token|apikey|api-key)\s+)[A-Za-z0-9._~+/=-]{8,}"
        ),
        _keep_prefix,
    ),
    # JSON Web Tokens (and JWS/JWE compact forms): base64url header starting with {".
    (re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_.-]*"), _whole),
    # Bastion API keys and refresh tokens.
    (re.compile(r"\bbst_[A-Za-z0-9_]{8,}"), _whole),
    # Well-known token formats: AWS access key ids, GitHub, Slack, Stripe, Google API keys.
    (
        re.compile(
            r"\b(?:(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
            r"|xox[abposr]-[A-Za-z0-9-]{10,}|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}"
            r"|AIza[0-9A-Za-z_-]{35})"
        ),
        _whole,
    ),
    # name=value parameters in query strings, form bodies, logs and cookies.
    (
        re.compile(
            r"(?i)((?:^|[?&;,\s])(?:[a-z0-9_.-]*(?:password|passwd|pwd|secret|token|api_?key"
            r"|apikey|auth|session|sess(?:ion)?_?id|sid|otp|signature|sig))\s*[=:]\s*)([^&;,\s#\"']+)"
        ),
        _keep_prefix,
    ),
    # Passwords in URLs: scheme://user:password@host.
    (re.compile(r"(?i)(\b[a-z][a-z0-9+.-]*://[^/\s:@]*:)[^/\s@]+(?=@)"), _keep_prefix),
    # Payment card numbers: 13-19 digits, optionally grouped by spaces or dashes, Luhn-valid.
    (re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,18}(?![\d])"), _card),
)


def redact_text(text: str) -> str:
    """``text`` with every secret shape replaced by ``[REDACTED]``."""
    if len(text) < _MIN_SECRET_TEXT:
        return text
    for pattern, replace in _PATTERNS:
        if pattern.search(text) is not None:
            text = pattern.sub(replace, text)
    return text


def _valid_text(text: str) -> str:
    """Text every JSON encoder accepts: lone surrogates (from undecodable bytes) replaced."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "replace").decode("utf-8")
    return text


class Redactor:
    """Redacts and normalises event fields; ``max_depth`` bounds the walk of nested detail."""

    def __init__(self, *, max_depth: int = 16, max_string: int = 4096) -> None:
        self._max_depth = max_depth
        self._max_string = max_string

    def text(self, value: str | None, limit: int) -> str | None:
        """A free-text column (actor, target): secret shapes redacted, cut to ``limit``."""
        if value is None:
            return None
        return _valid_text(redact_text(value))[:limit]

    def detail(self, detail: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted, JSON-native copy of ``detail``."""
        return self._mapping(detail, 0)

    def _mapping(self, mapping: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in mapping.items():
            name = key if isinstance(key, str) else str(key)
            name = _valid_text(name)
            if is_secret_name(name):
                result[name] = REDACTED if value is not None else None
            else:
                result[name] = self._value(value, depth + 1)
        return result

    def _value(self, value: Any, depth: int) -> Any:
        if value is None or value is True or value is False:
            return value
        kind = type(value)
        if kind is str:
            return _valid_text(redact_text(value[: self._max_string]))
        if kind is int:
            return value if -_MAX_INT <= value < _MAX_INT else str(value)
        if kind is float:
            return value
        if depth >= self._max_depth:
            return "[TRUNCATED]"
        if isinstance(value, Mapping):
            return self._mapping(value, depth)
        if isinstance(value, list | tuple | set | frozenset):
            items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
            return [self._value(item, depth + 1) for item in items]
        # Subclasses (enums, numpy-like scalars) become the plain type they extend.
        if isinstance(value, bool):
            return bool(value)
        if isinstance(value, int):
            return self._value(int(value), depth)
        if isinstance(value, float):
            return float(value)
        if isinstance(value, bytes):
            return REDACTED
        return _valid_text(redact_text(str(value)[: self._max_string]))
