"""Passwords: username normalisation, the rules a new password must meet, argon2id hashing.

Rules follow NIST SP 800-63B §3.1.1.2: a length range counted in characters, no composition rules
(no "one digit, one symbol"), a check against a list of commonly used passwords, and refusal of
passwords derived from the account name. Every message :meth:`PasswordPolicy.problems` returns
is safe to show to the person choosing the password.

Passwords are NFKC-normalised before they are checked, hashed or verified, as SP 800-63B
§5.1.1.2 recommends. The same password typed on different keyboards or input methods (a
precomposed "é" or "e" plus a combining accent, full-width Latin letters from an East Asian
input method) then hashes to the same value and the user is not locked out by their device.
NFKC rather than NFC, because compatibility variants are exactly what input methods differ by;
the price, a few look-alike characters (the "ﬁ" ligature and "fi") counting as one, removes
negligible entropy. Case is kept: passwords stay case-sensitive.

Hashing runs in a small thread pool (argon2-cffi releases the GIL), so a login never stalls the
event loop; the pool size bounds how much memory concurrent hashes take
(``threads * memory_cost_kib``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import secrets
import sys
import unicodedata
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from importlib import resources

from argon2 import PasswordHasher as Argon2Hasher
from argon2 import Type
from argon2.exceptions import Argon2Error, InvalidHashError, VerifyMismatchError

from bastion.auth.config import PasswordConfig

__all__ = [
    "USERNAME_MAX_LENGTH",
    "HasherBusy",
    "PasswordHasher",
    "PasswordPolicy",
    "common_passwords",
    "normalize_password",
    "normalize_username",
]

USERNAME_MAX_LENGTH = 320
"""Longest username after normalisation: the longest valid e-mail address (RFC 3696 erratum)."""

# NFKC can expand a character up to 18 times; anything this long cannot normalise to a valid
# username, so it is refused before the normalisation work is spent on it.
_USERNAME_RAW_LIMIT = 4 * USERNAME_MAX_LENGTH
_HASH_LENGTH = 32
_HASHING_NICENESS = 10
"""Niceness of the hashing threads (0 is normal; higher yields the CPU to the event loop)."""
_SALT_LENGTH = 16


def normalize_username(raw: str) -> str:
    """The canonical form of a username, used to store and to look up accounts.

    NFKC, then ``str.casefold`` (locale-independent full case folding: "ß" becomes "ss"), then
    NFKC again (case folding can leave a string that is no longer in NFKC), then surrounding
    whitespace is removed; full-width letters become ASCII. Raises :class:`ValueError`, with a
    message that can be shown to the user, for an empty name, one longer than 320 characters,
    one containing whitespace, or one containing control, format (zero-width, bidirectional),
    surrogate, private-use or unassigned characters: characters that make two different names
    look alike, or that a later Unicode version could normalise differently.
    """
    if len(raw) > _USERNAME_RAW_LIMIT:
        raise ValueError(f"the username is longer than {USERNAME_MAX_LENGTH} characters")
    folded = unicodedata.normalize("NFKC", raw)
    folded = unicodedata.normalize("NFKC", folded.casefold()).strip()
    if not folded:
        raise ValueError("the username is empty")
    if len(folded) > USERNAME_MAX_LENGTH:
        raise ValueError(f"the username is longer than {USERNAME_MAX_LENGTH} characters")
    for char in folded:
        if char.isspace():
            raise ValueError("the username must not contain spaces")
        if unicodedata.category(char).startswith("C"):
            raise ValueError("the username contains an invisible or control character")
    return folded


def normalize_password(password: str) -> str:
    """The form a password is checked and hashed in: NFKC (see the module documentation)."""
    return unicodedata.normalize("NFKC", password)


@functools.cache
def common_passwords() -> frozenset[str]:
    """The shipped list of common passwords, lowercase; read from the package once, on first
    use. Lines starting with ``#`` are comments (the first one names the list's source)."""
    text = (
        resources.files("bastion.auth")
        .joinpath("data", "common_passwords.txt")
        .read_text(encoding="utf-8")
    )
    return frozenset(
        normalize_password(line.strip()).casefold()
        for line in text.splitlines()
        if line.strip() and not line.startswith("#")
    )


class PasswordPolicy:
    """The rules a new password must meet, from ``[auth.passwords]``."""

    def __init__(self, config: PasswordConfig) -> None:
        self._min = config.min_length
        self._max = config.max_length
        self._reject_common = config.reject_common

    def problems(self, password: str, *, username: str | None = None) -> list[str]:
        """Why ``password`` is not acceptable, as messages for the user; empty when it is.

        ``username`` (raw or normalised) is the account the password is for: the password must
        not equal it, nor the local part of an e-mail address used as username, in any case.
        """
        normalized = normalize_password(password)
        length = len(normalized)
        found: list[str] = []
        if length < self._min:
            found.append(f"Use at least {self._min} characters.")
        elif length > self._max:
            found.append(f"Use at most {self._max} characters.")
        if length and len(set(normalized)) == 1:
            found.append("Do not use a single character repeated.")
        folded = normalized.casefold()
        if self._reject_common and folded in common_passwords():
            found.append("This password is one of the most commonly used; choose another.")
        if username is not None and folded in _name_forms(username):
            found.append("Do not use your username as your password.")
        return found


def _name_forms(username: str) -> frozenset[str]:
    """The forms of a username a password must not equal: the whole name and, for an e-mail
    address, its local part (both case-folded)."""
    try:
        name = normalize_username(username)
    except ValueError:
        # An invalid name cannot be registered anyway; compare with its plain folded form so
        # the check still applies.
        name = normalize_password(username).casefold().strip()
    forms = {name}
    local, at, _ = name.rpartition("@")
    if at and local:
        forms.add(local)
    forms.discard("")
    return frozenset(forms)


class HasherBusy(Exception):
    """More password checks are queued than ``passwords.max_pending`` allows."""


def _lower_priority() -> None:
    """Run hashing threads at a lower scheduling priority than the event loop.

    argon2 releases the GIL, so hashing never blocks the loop, but on a small machine the
    hashing threads compete with the loop thread for the CPUs: measured on 2 cores, requests
    waited several milliseconds behind concurrent logins. Linux applies ``setpriority`` to the
    calling thread only, so this lowers the hashing threads and nothing else.
    """
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, 0, _HASHING_NICENESS)


class PasswordHasher:
    """argon2id hashing and verification off the event loop.

    :meth:`verify` takes the same time whether the account exists or not: an unknown user is
    verified against a dummy hash made with the same parameters, so response timing does not
    reveal which usernames exist.
    """

    def __init__(self, config: PasswordConfig, *, max_threads: int | None = None) -> None:
        if max_threads is None:
            max_threads = config.hash_threads or max(1, (os.cpu_count() or 2) - 1)
        if max_threads < 1:
            raise ValueError("max_threads must be at least 1")
        self._hasher = Argon2Hasher(
            time_cost=config.time_cost,
            memory_cost=config.memory_cost_kib,
            parallelism=config.parallelism,
            hash_len=_HASH_LENGTH,
            salt_len=_SALT_LENGTH,
            type=Type.ID,
        )
        self._executor = ThreadPoolExecutor(
            max_workers=max_threads,
            thread_name_prefix="bastion-argon2",
            initializer=_lower_priority,
        )
        self._max_pending = config.max_pending
        self._pending = 0
        # Made once, at start-up, so that verifying an unknown user costs exactly what a wrong
        # password for a known user costs.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(24))

    async def hash(self, password: str) -> str:
        """The argon2id hash (PHC string) of the NFKC form of ``password``, with a fresh salt."""
        with self._slot():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._hash_sync, password)

    @contextlib.contextmanager
    def _slot(self) -> Iterator[None]:
        # A bounded backlog: each queued hash holds ~20 ms of CPU, so an unbounded queue turns a
        # burst of logins into seconds of waiting for everyone. Beyond the bound, refuse at once.
        if self._pending >= self._max_pending:
            raise HasherBusy("too many password checks in progress")
        self._pending += 1
        try:
            yield
        finally:
            self._pending -= 1

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether ``password`` matches ``stored``.

        ``stored`` is ``None`` for an unknown user: the work of a verification is done anyway
        and the answer is ``False``. A stored value that is not a readable argon2 hash (an
        account without a password, a corrupted row) is treated the same way. Never raises for
        a mismatch or a malformed hash.
        """
        with self._slot():
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._executor, self._verify_sync, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """Whether ``stored`` was made with other parameters than the configured ones, so it
        should be replaced by a new hash of the password that was just verified. A value this
        hasher cannot read needs replacing too."""
        try:
            return self._hasher.check_needs_rehash(stored)
        except (InvalidHashError, ValueError):
            return True

    def close(self) -> None:
        """Stop the worker threads: queued hashes are cancelled, running ones finish in the
        background. Hashing after this raises :class:`RuntimeError`."""
        self._executor.shutdown(wait=False, cancel_futures=True)

    def _hash_sync(self, password: str) -> str:
        return self._hasher.hash(normalize_password(password))

    def _verify_sync(self, stored: str | None, password: str) -> bool:
        normalized = normalize_password(password)
        if stored is not None:
            try:
                return self._hasher.verify(stored, normalized)
            except VerifyMismatchError:
                return False
            except (InvalidHashError, Argon2Error, ValueError):
                # Unreadable hash: fall through to the dummy so the timing matches a mismatch.
                pass
        with contextlib.suppress(VerifyMismatchError):
            self._hasher.verify(self._dummy, normalized)
        return False
