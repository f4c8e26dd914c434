"""Problem codes of the identity capability and the one exception type its parts raise."""

from __future__ import annotations

from collections.abc import Mapping

from bastion.http.problems import BastionError, register

__all__ = ["AuthError", "bearer_challenge"]

register("authentication_required", 401, "Authentication required")
register("invalid_token", 401, "Invalid token")
register("invalid_credentials", 401, "Invalid credentials")
register("mfa_required", 401, "Second factor required")
register("token_reused", 401, "Refresh token reused")
register("permission_denied", 403, "Permission denied")
register("account_suspended", 403, "Account suspended")
register("account_disabled", 403, "Account disabled")
register("login_throttled", 429, "Too many failed logins")
register("password_rejected", 422, "Password rejected")
register("conflict", 409, "Conflict")
register("reauthentication_required", 403, "Recent login required")

_REALM = "bastion"


def bearer_challenge(error: str | None = None, description: str | None = None) -> str:
    """An RFC 6750 ``WWW-Authenticate`` value: ``Bearer realm="bastion"`` plus ``error`` (and
    ``error_description``) when the request carried a token that failed."""
    value = f'Bearer realm="{_REALM}"'
    if error:
        value += f', error="{error}"'
        if description:
            value += f', error_description="{description}"'
    return value


class AuthError(BastionError):
    """An identity failure with its stable code. Every 401 carries an RFC 6750 challenge:
    ``invalid_token`` for tokens that failed, a bare challenge otherwise."""

    def __init__(
        self,
        code: str,
        detail: str | None = None,
        *,
        headers: Mapping[str, str] | None = None,
        retry_after: int | None = None,
    ) -> None:
        merged = dict(headers) if headers else {}
        extensions: dict[str, object] = {}
        if retry_after is not None:
            merged["Retry-After"] = str(retry_after)
            extensions["retry_after"] = retry_after
        super().__init__(code, detail, headers=merged, extensions=extensions)
        if self.status == 401 and "WWW-Authenticate" not in merged:
            challenge = (
                bearer_challenge("invalid_token", "the access token is not valid")
                if code in ("invalid_token", "token_reused")
                else bearer_challenge()
            )
            self.headers["WWW-Authenticate"] = challenge
