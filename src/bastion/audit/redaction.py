"""Secrets never reach the audit log: redaction by field name and by value pattern.

Applied to every event before it is hashed and written. A field whose *name* says it holds a
secret (``password``, ``api_key``, ``Authorization``, ``backup_codes``… at any depth, any case,
any of ``_ - .`` separators) is replaced whole by ``[REDACTED]``. Every other string is scanned
for secret *shapes* (bearer credentials, JWTs, ``bst_`` keys, card numbers passing the Luhn
check, private-key blocks, ``password=`` parameters, header lines and JSON members, URL
passwords, well-known token formats) and only the secret part is replaced, so
``"Bearer eyJ…"`` becomes ``"Bearer [REDACTED]"``. Every scan is linear in the text's length.

The walk also makes the detail plain JSON: mapping keys become strings, tuples and sets become
lists, anything else not JSON-native becomes its ``str``, and text is made storable everywhere
(:func:`clean_text`: control characters and lone surrogates escaped).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

__all__ = ["REDACTED", "Redactor", "clean_text", "is_secret_name", "luhn_valid", "redact_text"]

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
_SCAN_FACTOR = 4
"""Text is redacted up to this many times the length it is cut to: redaction comes before the
cut (so a secret straddling the cut is still recognised), and the bound keeps a huge string from
costing more than it can show."""


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


_CARD_MIN = 13
_CARD_MAX = 19


_DOUBLED = (0, 2, 4, 6, 8, 1, 3, 5, 7, 9)
"""A digit doubled by the Luhn check, its two digits summed."""
_SEPARATORS_ONLY = str.maketrans("", "", " -")


def _card(match: re.Match[str]) -> str:
    """Every card number in a run of digit groups (``12 4111 1111 1111 1111 123``) replaced.

    A card number starts and ends on a group boundary: from each group, the longest window of
    13 to 19 digits passing the Luhn check is redacted. Prefix sums make each window's check
    one subtraction, and at most 19 groups are tried from each one: linear in the run's length.
    """
    run = match.group(0)
    digits = run.translate(_SEPARATORS_ONLY)
    # The Luhn sum of digits[a:b] doubles the digits whose distance from b - 1 is odd: ``even``
    # sums digits as weighted when b - 1 is even, ``odd`` when it is odd.
    even = [0]
    odd = [0]
    total_even = total_odd = 0
    for position, char in enumerate(digits):
        value = ord(char) - 48
        if position & 1:
            total_even += _DOUBLED[value]
            total_odd += value
        else:
            total_even += value
            total_odd += _DOUBLED[value]
        even.append(total_even)
        odd.append(total_odd)
    spans = [group.span() for group in _DIGIT_GROUP.finditer(run)]
    bounds: list[tuple[int, int]] = []
    offset = 0
    for start, end in spans:
        bounds.append((offset, offset + end - start))
        offset += end - start
    pieces: list[str] = []
    kept = 0
    first = 0
    while first < len(bounds):
        low = bounds[first][0]
        found = -1
        for last in range(first, len(bounds)):
            high = bounds[last][1]
            length = high - low
            if length > _CARD_MAX:
                break
            if length >= _CARD_MIN:
                sums = even if (high - 1) % 2 == 0 else odd
                if (sums[high] - sums[low]) % 10 == 0:
                    found = last
        if found < 0:
            first += 1
            continue
        pieces.append(run[kept : spans[first][0]])
        pieces.append(REDACTED)
        kept = spans[found][1]
        first = found + 1
    if not pieces:
        return run
    pieces.append(run[kept:])
    return "".join(pieces)


def _keep_prefix(match: re.Match[str]) -> str:
    return match.group(1) + REDACTED


_PEM = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.S
)
"""PEM private keys, possibly cut short by truncation."""
_SCHEME = re.compile(
    r"(?i)(\b(?:bearer|basic|digest|token|apikey|api-key)\s+)[A-Za-z0-9._~+/=-]{8,}"
)
"""Authorization schemes followed by a credential: the scheme name is kept."""
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_.-]*")
"""JSON Web Tokens (JWS/JWE compact forms): a base64url header starting with ``{"``."""
_BASTION_KEY = re.compile(r"\bbst_[A-Za-z0-9_]{8,}")
"""Bastion API keys and refresh tokens."""
_KNOWN_TOKENS = re.compile(
    r"\b(?:(?:AKIA|ASIA)[0-9A-Z]{16}|gh[pousr]_[A-Za-z0-9]{30,}|github_pat_[A-Za-z0-9_]{30,}"
    r"|xox[abposr]-[A-Za-z0-9-]{10,}|[rs]k_(?:live|test)_[A-Za-z0-9]{16,}|AIza[0-9A-Za-z_-]{35})"
)
"""AWS access key ids, GitHub, Slack, Stripe and Google API keys."""
_PARAMETER = re.compile(r"(?<![A-Za-z0-9_.-])(\\?[\"']?)([A-Za-z0-9_.-]+)\1\s*[=:]\s*")
"""The start of ``name=value`` (query strings, form bodies, cookies), ``name: value`` (header
lines), ``"name": value`` (JSON) and ``name='value'`` (object reprs): the name, possibly quoted,
and its separator. The lookbehind starts a match only at the beginning of a name, and the value
is matched separately (:data:`_VALUE`), only after a secret name: the scan stays linear."""
_VALUE = re.compile(
    r'\\"(?:[^"\\]|\\[^"])*(?:\\")?'  # inside JSON that is itself a JSON string: \"…\"
    r'|"(?:[^"\\]|\\.)*"?'  # a JSON string, escapes included, or the rest when unterminated
    r"|'(?:[^'\\]|\\.)*'?"  # a quoted repr
    r"|[^&;,\s#\"']+"  # a bare value, up to the next separator
)
"""The value after a secret name; quotes, when present, are kept around ``[REDACTED]``."""
_SCHEME_WORDS = frozenset({"bearer", "basic", "digest", "token", "apikey", "api-key", "negotiate"})
"""A header value starting with one of these keeps it: ``Authorization: Bearer [REDACTED]``."""
_WORD = re.compile(r"\s+[^&;,\s#\"']+")
_URL_PASSWORD = re.compile(r"(://[^/\s:@]*:)[^/\s@]+(?=@)")
"""The password of ``scheme://user:password@host``."""
_CARD = re.compile(r"(?<![\d-])\d(?:[ -]?\d){12,}")
"""Runs of at least 13 digits in groups separated by one space or dash, where card numbers are
looked for (shorter runs, version numbers and the like, never reach Python code)."""
_DIGIT_GROUP = re.compile(r"\d+")
_NO_DIGITS = str.maketrans("", "", "0123456789")
_SESSION_PARAMETERS = frozenset({"sid", "sessid", "sessionid", "phpsessid", "jsessionid"})
"""Cookie and query names that carry a session credential (``connect.sid``, ``PHPSESSID``)."""


def _secret_parameter(name: str) -> bool:
    normal = name.lower().translate(_SEPARATORS)
    return is_secret_name(name) or normal in _SESSION_PARAMETERS or normal.endswith("sid")


def _redact_value(value: str) -> str:
    quote = '\\"' if value.startswith('\\"') else value[0] if value[0] in "\"'" else ""
    if quote:
        closed = len(value) > len(quote) and value.endswith(quote)
        return quote + REDACTED + (quote if closed else "")
    return REDACTED


def _redact_parameters(text: str) -> str:
    """Every value following a secret name replaced (see :data:`_PARAMETER`)."""
    pieces: list[str] = []
    kept = 0
    position = 0
    search = _PARAMETER.search
    while True:
        found = search(text, position)
        if found is None:
            break
        position = found.end()
        if not _secret_parameter(found.group(2)):
            continue  # the value may itself hold ``name=value``: scan on from its start
        value = _VALUE.match(text, position)
        if value is None:
            continue
        start, end = value.span()
        if value.group(0).lower() in _SCHEME_WORDS:
            # ``Authorization: Bearer <credential>``: the scheme stays, the credential goes.
            credential = _WORD.match(text, end)
            if credential is not None:
                start = end + len(credential.group(0)) - len(credential.group(0).lstrip())
                end = credential.end()
        pieces.append(text[kept:start])
        pieces.append(_redact_value(text[start:end]))
        kept = position = end
    if not pieces:
        return text
    pieces.append(text[kept:])
    return "".join(pieces)


def redact_text(text: str) -> str:
    """``text`` with every secret shape replaced by ``[REDACTED]``.

    Each shape is searched for only when the text holds a substring every instance of it
    contains: a few ``in`` tests instead of eight regular expressions for most text.
    """
    if len(text) < _MIN_SECRET_TEXT:
        return text
    low = text.lower()
    if "-----begin" in low:
        text = _PEM.sub(REDACTED, text)
    if (
        "bearer" in low
        or "basic" in low
        or "digest" in low
        or "token" in low
        or "apikey" in low
        or "api-key" in low
    ):
        text = _SCHEME.sub(_keep_prefix, text)
    if "eyj" in low:
        text = _JWT.sub(REDACTED, text)
    if "bst_" in low:
        text = _BASTION_KEY.sub(REDACTED, text)
    if (
        "akia" in low
        or "asia" in low
        or "gh" in low
        or "xox" in low
        or "k_" in low
        or "aiza" in low
    ):
        text = _KNOWN_TOKENS.sub(REDACTED, text)
    if "=" in text or ":" in text:
        text = _redact_parameters(text)
        if "://" in text and "@" in text:
            text = _URL_PASSWORD.sub(_keep_prefix, text)
    if len(text) - len(text.translate(_NO_DIGITS)) >= _CARD_MIN:
        text = _CARD.sub(_card, text)
    return text


_UNSTORABLE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
"""Control characters (PostgreSQL refuses NUL in text; the others forge lines in log copies),
line and paragraph separators, and lone surrogates (undecodable bytes; not valid UTF-8)."""


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group(0))
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def clean_text(text: str) -> str:
    """``text`` with control characters, line separators and lone surrogates escaped as
    ``\\xNN`` or ``\\uNNNN``: storable by every database, encodable as UTF-8, one line in a log.
    Printable text (nearly all of it) is returned as is after one C-speed check."""
    if text.isprintable():
        return text
    return _UNSTORABLE.sub(_escape, text)


_MEMO_MAX = 4096
"""Redacted strings a :class:`Redactor` remembers, at most (it starts afresh when full)."""
_MEMO_LENGTH = 256
"""Longest string remembered: rule ids, categories, locations, excerpts recur from event to
event; long text rarely does."""


class Redactor:
    """Redacts and normalises event fields; ``max_depth`` bounds the walk of nested detail.

    Redaction is a pure function of the string, so the results for short strings are
    remembered: the names and labels that every event of a kind repeats are scanned once, not
    once per event. The memo is bounded (cleared when full), so strings an attacker varies
    cost memory only up to the bound and time only as much as without it.
    """

    def __init__(self, *, max_depth: int = 16, max_string: int = 4096) -> None:
        self._max_depth = max_depth
        self._max_string = max_string
        self._memo: dict[str, str] = {}

    def text(self, value: str | None, limit: int) -> str | None:
        """A free-text column (actor, target): secret shapes redacted, cut to ``limit``."""
        if value is None:
            return None
        return clean_text(redact_text(value[: limit * _SCAN_FACTOR]))[:limit]

    def detail(self, detail: Mapping[str, Any]) -> dict[str, Any]:
        """A redacted, JSON-native copy of ``detail``."""
        return self._mapping(detail, 0)

    def _mapping(self, mapping: Mapping[Any, Any], depth: int) -> dict[str, Any]:
        result: dict[str, Any] = {}
        memo = self._memo
        for key, value in mapping.items():
            name = key if type(key) is str else str(key)
            secret = _NAME_CACHE.get(name)
            if secret is None:
                name = clean_text(name)
                secret = is_secret_name(name)
            if secret:
                result[name] = REDACTED if value is not None else None
                continue
            kind = type(value)
            # The common values inline: this loop runs for every field of every event.
            if kind is str:
                done = memo.get(value)
                if done is not None:
                    result[name] = done
                elif len(value) < _MIN_SECRET_TEXT and value.isascii() and value.isprintable():
                    result[name] = value
                else:
                    result[name] = self._string(value)
            elif kind is bool or value is None or kind is float:
                result[name] = value
            elif kind is list:
                result[name] = self._list(value, depth + 1)
            else:
                result[name] = self._value(value, depth + 1)
        return result

    def _list(self, items: list[Any], depth: int) -> Any:
        """:meth:`_value` of a list, its strings looked up in the memo first."""
        if depth >= self._max_depth:
            return "[TRUNCATED]"
        memo = self._memo
        result: list[Any] = []
        for item in items:
            if type(item) is str:
                done = memo.get(item)
                result.append(done if done is not None else self._string(item))
            else:
                result.append(self._value(item, depth + 1))
        return result

    def _value(self, value: Any, depth: int) -> Any:
        kind = type(value)
        if kind is str:
            return self._string(value)
        if kind is int:
            return value if -_MAX_INT <= value < _MAX_INT else str(value)
        if value is None or kind is bool or kind is float:
            return value
        if depth >= self._max_depth:
            return "[TRUNCATED]"
        if kind is dict:
            return self._mapping(value, depth)
        if kind is list:
            return self._list(value, depth)
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
        if isinstance(value, bytes | bytearray | memoryview):
            return REDACTED
        return self._string(str(value))

    def _string(self, value: str) -> str:
        """Redacted first, then made storable, then cut: nothing recognisable survives a cut."""
        memo = self._memo
        done = memo.get(value)
        if done is not None:
            return done
        limit = self._max_string
        done = clean_text(redact_text(value[: limit * _SCAN_FACTOR]))[:limit]
        if len(value) <= _MEMO_LENGTH:
            if len(memo) >= _MEMO_MAX:
                memo.clear()
            memo[value] = done
        return done
