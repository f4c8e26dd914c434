"""The identity service: logins, token pairs, refresh rotation, sessions and the verification of
presented credentials on the request path.

One instance per engine. It owns the parts (hasher, throttle, signing keys, verifier, caches,
change feed) and is the only thing the stage, the endpoints and the CLI talk to.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NoReturn

import structlog

from bastion.audit.events import AuditEvent, AuditSink
from bastion.auth.accounts import AccountCache, AccountSnapshot, CachedCredential, CredentialCache
from bastion.auth.api_keys import hash_api_key, well_formed_api_key
from bastion.auth.changes import ChangeFeed
from bastion.auth.config import AuthConfig
from bastion.auth.errors import AuthError
from bastion.auth.keyring import SigningKeys
from bastion.auth.mfa import BackupCodes, MfaSecretError, SecretCipher, Totp
from bastion.auth.models import SessionRecord, User
from bastion.auth.passwords import (
    HasherBusy,
    PasswordHasher,
    PasswordPolicy,
    normalize_username,
)
from bastion.auth.rbac import Authorizer, RoleBook
from bastion.auth.repository import ChangeKind, IdentityStore
from bastion.auth.throttle import LoginThrottle, ThrottleVerdict
from bastion.auth.tokens import REFRESH_TYPE, TokenError, TokenIssuer, TokenVerifier
from bastion.http.principal import Principal
from bastion.http.problems import BastionError
from bastion.observe.metrics import Metrics
from bastion.store.errors import StoreError
from bastion.store.keys import NewKey
from bastion.store.stores import Stores

__all__ = ["IdentityService", "RequestContext", "TokenPair"]

_log: Any = structlog.get_logger("bastion.auth")

_STATUS_CODES = {"suspended": "account_suspended", "disabled": "account_disabled"}
_REFRESH_PREFIX = "bst_rt_"
_BACKUP_CODE_PURPOSE = "mfa_backup_codes"
_KEY_REFRESH = 60.0
"""Seconds between reloads of the signing keys."""
_LIVE_SESSIONS_MAX = 100_000
"""Live sessions remembered; the oldest entry goes first beyond this."""
_THROTTLE_PRUNE = 3600.0
"""Seconds between removals of forgotten throttle rows."""


@dataclass(frozen=True, slots=True)
class RequestContext:
    """Where a request came from, for sessions, throttling and audit events."""

    client_ip: str = ""
    user_agent: str = ""
    request_id: str | None = None


@dataclass(frozen=True, slots=True)
class TokenPair:
    """The answer of a login or refresh."""

    access_token: str
    refresh_token: str
    expires_in: int
    session_id: str

    def body(self) -> dict[str, Any]:
        return {
            "access_token": self.access_token,
            "refresh_token": self.refresh_token,
            "token_type": "Bearer",
            "expires_in": self.expires_in,
        }


class IdentityService:
    """Everything identity does at run time, for one engine."""

    def __init__(
        self,
        config: AuthConfig,
        *,
        stores: Stores,
        metrics: Metrics,
        audit: AuditSink,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.metrics = metrics
        self.audit = audit
        self.clock = clock
        self.store = IdentityStore(stores.database)
        self.hasher = PasswordHasher(config.passwords)
        self.policy = PasswordPolicy(config.passwords)
        self.throttle = LoginThrottle(stores.database, config.throttle, clock=clock)
        self.signing = SigningKeys(stores.keys, config.tokens)
        self.issuer = TokenIssuer(config.tokens, self.signing, clock=clock)
        self.verifier = TokenVerifier(config.tokens, self.signing, clock=clock)
        self.totp = Totp(config.mfa)
        self.cipher = SecretCipher(stores.keys)
        self._keys = stores.keys
        self._backup_key = b""
        self.backup_codes = BackupCodes(config.mfa.backup_codes)
        self.roles = RoleBook(config.role_table())
        self.authorizer = Authorizer(self.roles)
        self.accounts = AccountCache(self.store, ttl=config.status_cache_ttl)
        self.credentials = CredentialCache(size=config.tokens.cache_size)
        self.feed = ChangeFeed(
            self.store,
            self._on_change,
            interval=config.revocation_poll,
            redis=stores.redis,
            metrics=metrics,
        )
        self._status_ttl = config.status_cache_ttl
        # Epoch seconds by session / key id, written in batches by the upkeep task.
        self._seen_sessions: dict[str, float] = {}
        self._used_keys: dict[str, float] = {}
        self._epoch = 0
        """Bumped by every change the feed delivers: a verification that read the stores while
        a change arrived is answered but not cached (it may have read the old state)."""
        self._live_sessions: dict[str, tuple[str, float, float]] = {}
        """Live sessions: id → (user id, expiry epoch, monotonic time to re-read)."""
        self._flusher: asyncio.Task[None] | None = None
        self._started = False

    # -- life cycle ------------------------------------------------------------------------------

    async def start(self) -> None:
        """Load (or create) the signing and MFA keys and follow the change feed."""
        if self._started:
            return
        await self.signing.load()
        await self.cipher.load()
        keys = await self._keys.get_or_create(_BACKUP_CODE_PURPOSE, _new_backup_code_key)
        self._backup_key = keys[0].material
        await self.feed.start()
        self._flusher = asyncio.create_task(self._flush_forever(), name="bastion-auth-usage")
        self._started = True

    async def close(self) -> None:
        """Stop background work, writing the last batch of usage stamps."""
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
            self._flusher = None
        await self.feed.close()
        with contextlib.suppress(StoreError):
            await self.flush_usage()
        self.hasher.close()
        self._started = False

    def _on_change(self, kind: str, subject: str) -> None:
        self._epoch += 1
        if kind == "session":
            self._live_sessions.pop(subject, None)
            self.credentials.drop_session(subject)
        elif kind == "user":
            self.accounts.drop(subject)
            self.credentials.drop_user(subject)
        elif kind == "api_key":
            self.credentials.drop_key(subject)

    async def announce(self, kind: ChangeKind, subject: str) -> None:
        """Apply a change here and tell the other instances (the row is already written)."""
        await self.feed.publish(kind, subject)

    # -- the request path ------------------------------------------------------------------------

    async def authenticate_bearer(self, token: str) -> Principal:
        """The principal a Bastion access token proves; :class:`AuthError` when it proves none."""
        entry = self.credentials.get(token)
        if entry is not None:
            now = self.clock()
            if entry.expires > now and entry.fresh_until > time.monotonic():
                if entry.session_id is not None:
                    self._seen_sessions[entry.session_id] = now
                return entry.principal
            self.credentials.discard(token)
        epoch = self._epoch
        try:
            claims = await self.verifier.verify(token)
        except TokenError as exc:
            self.metrics.auth_attempt("bearer", "failure")
            raise AuthError("invalid_token", "The access token is not valid") from exc
        account = await self._active_account(str(claims["sub"]), "bearer")
        issued = float(claims["iat"])
        if account.tokens_valid_after is not None and issued < account.tokens_valid_after:
            self.metrics.auth_attempt("bearer", "failure")
            raise AuthError("invalid_token", "The access token was revoked")
        session_id = str(claims.get("sid") or "") or None
        if session_id is not None and not await self._session_live(session_id, account.user_id):
            self.metrics.auth_attempt("bearer", "failure")
            raise AuthError("invalid_token", "The session of this token has ended")
        scope = claims.get("scope")
        principal = Principal(
            subject=account.user_id,
            method="bearer",
            username=account.username,
            roles=account.roles,
            scopes=tuple(scope.split()) if isinstance(scope, str) else (),
            session_id=session_id,
            extra={"mfa": "otp" in (claims.get("amr") or ()), "jti": claims.get("jti")},
        )
        self._remember(
            epoch, token, principal, float(claims["exp"]), account.user_id, session_id, None
        )
        if session_id is not None:
            self._seen_sessions[session_id] = self.clock()
        return principal

    async def authenticate_api_key(self, key: str) -> Principal:
        """The principal an API key proves; :class:`AuthError` when it proves none."""
        entry = self.credentials.get(key)
        now = self.clock()
        if entry is not None:
            if entry.expires > now and entry.fresh_until > time.monotonic():
                if entry.key_id is not None:
                    self._used_keys[entry.key_id] = now
                return entry.principal
            self.credentials.discard(key)
        epoch = self._epoch
        if not well_formed_api_key(key):
            self.metrics.auth_attempt("api_key", "failure")
            raise AuthError("invalid_token", "The API key is not valid")
        stored = await self.store.api_key_by_hash(hash_api_key(key))
        if stored is None or stored.revoked_at is not None:
            self.metrics.auth_attempt("api_key", "failure")
            raise AuthError("invalid_token", "The API key is not valid")
        expires = stored.expires_at.timestamp() if stored.expires_at is not None else math.inf
        if expires <= now:
            self.metrics.auth_attempt("api_key", "failure")
            raise AuthError("invalid_token", "The API key has expired")
        account = await self._active_account(stored.user_id, "api_key")
        principal = Principal(
            subject=account.user_id,
            method="api_key",
            username=account.username,
            roles=account.roles,
            scopes=stored.scopes,
            extra={"key_id": stored.id},
        )
        self._remember(epoch, key, principal, expires, account.user_id, None, stored.id)
        self._used_keys[stored.id] = now
        return principal

    def _remember(
        self,
        epoch: int,
        credential: str,
        principal: Principal,
        expires: float,
        user_id: str,
        session_id: str | None,
        key_id: str | None,
    ) -> None:
        self.metrics.auth_attempt(principal.method, "success")
        if epoch != self._epoch:
            return
        self.credentials.put(
            credential,
            CachedCredential(
                principal=principal,
                expires=expires,
                fresh_until=time.monotonic() + self._status_ttl,
                user_id=user_id,
                session_id=session_id,
                key_id=key_id,
            ),
        )

    async def _active_account(self, user_id: str, method: str) -> AccountSnapshot:
        account = await self.accounts.get(user_id)
        if account is None:
            self.metrics.auth_attempt(method, "failure")
            raise AuthError("invalid_token", "The credential's account does not exist")
        code = _STATUS_CODES.get(account.status)
        if code is not None:
            self.metrics.auth_attempt(method, "denied")
            raise AuthError(code)
        return account

    async def _session_live(self, session_id: str, user_id: str) -> bool:
        """Whether the session is live, from a cache of live sessions: a revocation drops the
        entry through the change feed, and entries are re-read after ``status_cache_ttl``."""
        now = self.clock()
        cached = self._live_sessions.get(session_id)
        if cached is not None and cached[2] > time.monotonic():
            return cached[0] == user_id and cached[1] > now
        epoch = self._epoch
        record = await self.store.session(session_id)
        if record is None or record.revoked_at is not None:
            self._live_sessions.pop(session_id, None)
            return False
        if epoch != self._epoch:
            return record.user_id == user_id and record.expires_at.timestamp() > now
        if len(self._live_sessions) >= _LIVE_SESSIONS_MAX:
            self._live_sessions.pop(next(iter(self._live_sessions)))
        expires = record.expires_at.timestamp()
        self._live_sessions[session_id] = (
            record.user_id,
            expires,
            time.monotonic() + self._status_ttl,
        )
        return record.user_id == user_id and expires > now

    async def account(self, user_id: str) -> AccountSnapshot | None:
        """The cached account of ``user_id`` (roles and per-resource grants)."""
        return await self.accounts.get(user_id)

    # -- login, refresh, logout ------------------------------------------------------------------

    async def login(
        self, username: str, password: str, otp: str | None, context: RequestContext
    ) -> TokenPair:
        """Check the credentials and open a session.

        The attempt is counted by the throttle before any password work (and taken back when it
        succeeds), so a throttled attempt costs one query and simultaneous guesses cannot slip
        past the count. Unknown usernames go through the same steps (a dummy hash, the same
        counters), so neither the answer, its timing nor the throttle tells them apart.
        """
        try:
            name = normalize_username(username)
        except ValueError:
            name = username.strip().casefold()[:320]
        since = datetime.now(UTC) - timedelta(days=self.config.throttle.known_ip_days)
        known = await self.store.known_address(name, context.client_ip, since=since)
        reservation = await self.throttle.reserve(name, context.client_ip, known_ip=known)
        if reservation.verdict is not None:
            await self._throttled(name, None, context, reservation.verdict)
        user = await self.store.user_by_name(name)
        stored_hash = user.password_hash if user is not None else None
        if not await self.verify_password(stored_hash, password) or user is None:
            await self._login_failed(name, None, context, reason="password")
        # The password was right: whatever follows, this was not a guess to count.
        await self.throttle.succeeded(reservation)
        code = _STATUS_CODES.get(user.status)
        if code is not None:
            self.metrics.auth_attempt("password", "denied")
            await self.emit("auth.login.denied", context, actor=user.id, outcome="denied")
            raise AuthError(code)
        mfa = False
        if user.mfa_enabled:
            if not otp:
                self.metrics.auth_attempt("password", "mfa_required")
                raise AuthError("mfa_required", "This account requires a one-time code (otp)")
            second = await self.throttle.reserve(name, context.client_ip, known_ip=known)
            if second.verdict is not None:
                await self._throttled(name, user.id, context, second.verdict)
            if not await self.check_second_factor(user.id, otp):
                await self._login_failed(name, user.id, context, reason="otp", method="otp")
            await self.throttle.succeeded(second)
            mfa = True
        if stored_hash is not None and self.hasher.needs_rehash(stored_hash):
            with contextlib.suppress(HasherBusy):  # the next login rehashes instead
                await self.store.set_password(user.id, await self.hasher.hash(password))
        pair = await self._open_session(user.id, mfa=mfa, context=context)
        self.metrics.auth_attempt("password", "success")
        await self.emit(
            "auth.login.succeeded", context, actor=user.id, detail={"session": pair.session_id}
        )
        return pair

    async def verify_password(self, stored_hash: str | None, password: str) -> bool:
        try:
            return await self.hasher.verify(stored_hash, password)
        except HasherBusy:
            # The attempt stays counted by the throttle: a flood cannot turn this into free
            # guesses, and the client is told to come back shortly.
            raise BastionError(
                "overloaded",
                "Too many logins in progress; retry shortly",
                headers={"Retry-After": "1"},
                extensions={"retry_after": 1},
            ) from None

    async def _throttled(
        self,
        name: str,
        user_id: str | None,
        context: RequestContext,
        verdict: ThrottleVerdict,
    ) -> NoReturn:
        self.metrics.auth_attempt("password", "throttled")
        await self.emit(
            "auth.login.lockout",
            context,
            actor=user_id,
            outcome="denied",
            detail={
                "username_hash": _name_hash(name),
                "scope": verdict.scope,
                "retry_after": verdict.retry_after,
            },
        )
        raise AuthError(
            "login_throttled",
            "Too many failed logins; try again later",
            retry_after=verdict.retry_after,
        )

    async def _login_failed(
        self,
        name: str,
        user_id: str | None,
        context: RequestContext,
        *,
        reason: str,
        method: str = "password",
    ) -> NoReturn:
        # The attempt was already counted by the throttle's reservation.
        self.metrics.auth_attempt(method, "failure")
        await self.emit(
            "auth.login.failed",
            context,
            actor=user_id,
            outcome="failure",
            # Never the typed name itself: it is often a password typed into the wrong field.
            detail={"username_hash": _name_hash(name), "reason": reason},
        )
        raise AuthError("invalid_credentials", "Invalid username or password")

    async def check_second_factor(self, user_id: str, code: str) -> bool:
        """A TOTP code (each time step once) or an unused backup code."""
        user = await self.store.user(user_id)
        if user is None or user.mfa_secret is None or user.mfa_key_id is None:
            return False
        normalized = self.backup_codes.normalize(code)
        compact = "".join(code.split()).replace("-", "")
        if normalized is not None and len(compact) != self.config.mfa.digits:
            return await self.store.use_backup_code(user_id, self.backup_code_hash(user_id, code))
        secret = await self.read_secret(user)
        if secret is None:
            return False
        step = self.totp.matching_step(secret, code, at=self.clock())
        if step is None or not await self.store.accept_step(user_id, step):
            return False
        if self.cipher.needs_reencrypt(user.mfa_key_id):
            key_id, blob = self.cipher.encrypt(secret, user_id=user_id)
            await self.store.rewrap_mfa_secret(user_id, key_id=key_id, blob=blob)
        return True

    def backup_code_hash(self, user_id: str, code: str) -> str:
        """The stored form of a backup code: HMAC-SHA256 under a key kept in ``bastion_keys``
        over the user id and the normalised code, so a copy of the table alone cannot be
        searched offline for the codes' 50 bits."""
        return self.backup_codes.hash(self._backup_key, user_id, code)

    async def read_secret(self, user: User) -> str | None:
        """The user's decrypted TOTP secret; ``None`` (logged) when it cannot be decrypted, so
        a damaged secret fails the second factor instead of failing the request."""
        if user.mfa_secret is None or user.mfa_key_id is None:
            return None
        try:
            await self.cipher.ensure_key(user.mfa_key_id)
            return self.cipher.decrypt(user.mfa_key_id, user.mfa_secret, user_id=user.id)
        except MfaSecretError as exc:
            _log.error("cannot decrypt a TOTP secret", user=user.id, error=str(exc))
            return None

    async def _open_session(self, user_id: str, *, mfa: bool, context: RequestContext) -> TokenPair:
        now = self.clock()
        session_id = secrets.token_urlsafe(18)
        refresh_id = secrets.token_urlsafe(32)
        refresh_expires = _utc(now + self.config.tokens.refresh_ttl)
        record = SessionRecord(
            id=session_id,
            user_id=user_id,
            created_at=_utc(now),
            last_seen_at=_utc(now),
            expires_at=refresh_expires,
            client_ip=context.client_ip[:64],
            user_agent=context.user_agent[:512],
            mfa=mfa,
        )
        await self.store.create_session(
            record, refresh_hash=_digest(refresh_id), refresh_expires=refresh_expires
        )
        return await self._pair(user_id, session_id, refresh_id, mfa=mfa)

    async def _pair(
        self, user_id: str, session_id: str, refresh_id: str, *, mfa: bool
    ) -> TokenPair:
        account = await self.accounts.get(user_id)
        roles = account.roles if account is not None else ()
        access, _ = self.issuer.access_token(
            subject=user_id, session_id=session_id, roles=roles, scopes=(), mfa=mfa
        )
        if self.config.tokens.refresh_format == "jwt":
            refresh = self.issuer.refresh_token(
                subject=user_id, session_id=session_id, token_id=refresh_id
            )
        else:
            refresh = _REFRESH_PREFIX + refresh_id
        return TokenPair(access, refresh, int(self.config.tokens.access_ttl), session_id)

    async def refresh(self, token: str, context: RequestContext) -> TokenPair:
        """Rotate a refresh token. A token already rotated is a reuse (RFC 9700 §4.14.2): the
        whole session dies, on every instance, and the client must log in again."""
        refresh_id = await self._refresh_id(token)
        now = self.clock()
        outcome = await self.store.use_refresh(_digest(refresh_id), now=_utc(now))
        if outcome.status == "reused" and outcome.session_id is not None:
            revoked = await self.store.revoke_sessions([outcome.session_id], reason="token_reused")
            for session_id in revoked:
                await self.announce("session", session_id)
            self.metrics.auth_attempt("refresh", "reused")
            await self.emit(
                "auth.token.reused",
                context,
                actor=outcome.user_id,
                target=outcome.session_id,
                outcome="denied",
            )
            raise AuthError("token_reused", "This refresh token was already used")
        if outcome.status != "rotated" or outcome.user_id is None or outcome.session_id is None:
            self.metrics.auth_attempt("refresh", "failure")
            raise AuthError("invalid_token", "The refresh token is not valid")
        account = await self._active_account(outcome.user_id, "refresh")
        session = await self.store.session(outcome.session_id)
        if session is None:
            raise AuthError("invalid_token", "The refresh token is not valid")
        # Rotation renews the refresh token, never the session beyond its absolute lifetime.
        ends = session.created_at.timestamp() + self.config.tokens.session_max_age
        if ends <= now:
            self.metrics.auth_attempt("refresh", "failure")
            raise AuthError("invalid_token", "The session has reached its maximum age")
        next_id = secrets.token_urlsafe(32)
        expires = _utc(min(now + self.config.tokens.refresh_ttl, ends))
        await self.store.add_refresh(
            token_hash=_digest(next_id),
            session_id=outcome.session_id,
            expires_at=expires,
            session_expires=expires,
        )
        self.metrics.auth_attempt("refresh", "success")
        mfa = bool(session.mfa)
        return await self._pair(account.user_id, outcome.session_id, next_id, mfa=mfa)

    async def _refresh_id(self, token: str) -> str:
        if self.config.tokens.refresh_format == "jwt" and token.startswith("ey"):
            try:
                claims = await self.verifier.verify(token, typ=REFRESH_TYPE)
            except TokenError as exc:
                self.metrics.auth_attempt("refresh", "failure")
                raise AuthError("invalid_token", "The refresh token is not valid") from exc
            return str(claims["jti"])
        if token.startswith(_REFRESH_PREFIX) and 40 <= len(token) <= 80:
            return token[len(_REFRESH_PREFIX) :]
        self.metrics.auth_attempt("refresh", "failure")
        raise AuthError("invalid_token", "The refresh token is not valid")

    async def logout(self, principal: Principal, context: RequestContext) -> None:
        """End the principal's session (its refresh family and every access token of it)."""
        if principal.session_id is None:
            raise BastionError("bad_request", "Only a session's access token can log out")
        revoked = await self.store.revoke_sessions(
            [principal.session_id], reason="logout", user_id=principal.subject
        )
        for session_id in revoked:
            await self.announce("session", session_id)
        await self.emit(
            "auth.logout", context, actor=principal.subject, target=principal.session_id
        )

    async def sessions(self, principal: Principal) -> list[dict[str, Any]]:
        """The principal's live sessions, for ``GET /_bastion/auth/sessions``."""
        records = await self.store.sessions(principal.subject)
        return [
            {
                "id": record.id,
                "created_at": record.created_at.isoformat(),
                "last_seen_at": record.last_seen_at.isoformat(),
                "expires_at": record.expires_at.isoformat(),
                "client_ip": record.client_ip,
                "user_agent": record.user_agent,
                "mfa": record.mfa,
                "current": record.id == principal.session_id,
            }
            for record in records
        ]

    async def revoke_session(
        self, principal: Principal, session_id: str, context: RequestContext
    ) -> bool:
        """Revoke one of the principal's own sessions; False when it has no such session."""
        revoked = await self.store.revoke_sessions(
            [session_id], reason="revoked_by_user", user_id=principal.subject
        )
        for revoked_id in revoked:
            await self.announce("session", revoked_id)
        if revoked:
            await self.emit(
                "auth.session.revoked", context, actor=principal.subject, target=session_id
            )
        return bool(revoked)

    # -- usage stamps ----------------------------------------------------------------------------

    async def flush_usage(self) -> None:
        """Write the batched session "last seen" and key "last used" stamps."""
        seen, self._seen_sessions = self._seen_sessions, {}
        used, self._used_keys = self._used_keys, {}
        await self.store.touch_sessions({key: _utc(at) for key, at in seen.items()})
        await self.store.touch_api_keys({key: _utc(at) for key, at in used.items()})

    async def _flush_forever(self) -> None:
        """Periodic upkeep: usage stamps; the signing keys (so a rotation made by another
        instance is signed with here too); expired throttle rows."""
        elapsed = 0.0
        while True:
            await asyncio.sleep(self.config.usage_flush)
            elapsed += self.config.usage_flush
            try:
                await self.flush_usage()
                if elapsed % _KEY_REFRESH < self.config.usage_flush:
                    before = self.signing.ring.kids
                    await self.signing.refresh()
                    if not before <= self.signing.ring.kids:
                        # A key left the ring: tokens it signed must not live on in the cache.
                        self.credentials.clear()
                if elapsed % _THROTTLE_PRUNE < self.config.usage_flush:
                    await self.throttle.prune()
            except StoreError as exc:
                self.metrics.store_error("database", "auth_upkeep")
                _log.warning("identity upkeep failed; retrying", error=str(exc))

    # -- audit -----------------------------------------------------------------------------------

    async def emit(
        self,
        kind: str,
        context: RequestContext,
        *,
        actor: str | None = None,
        target: str | None = None,
        outcome: str = "success",
        detail: dict[str, Any] | None = None,
    ) -> None:
        await self.audit.emit(
            AuditEvent(
                kind=kind,
                outcome=outcome,
                actor=actor,
                target=target,
                client_ip=context.client_ip or None,
                request_id=context.request_id,
                detail=detail or {},
            )
        )


def _new_backup_code_key() -> NewKey:
    return NewKey(algorithm="HMAC-SHA256", material=secrets.token_bytes(32))


def _name_hash(name: str) -> str:
    """A short, stable pseudonym of a typed username for audit events: the same name always
    maps to the same value (failures can be correlated) without storing the name itself."""
    return hashlib.sha256(
        b"bastion-username\0" + name.encode("utf-8", "surrogatepass")
    ).hexdigest()[:16]


def _digest(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def _utc(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)
