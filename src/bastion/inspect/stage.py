"""The ``inspect`` stage (DESIGN.md §1, step 12) and the strike check of a pipeline without the
rate limiter's gate.

:class:`InspectStage` inspects each HTTP request and WebSocket handshake before any of it reaches
the terminal. A body is read up to ``max_request_bytes`` (plus the one message that crosses it:
memory stays bounded), inspected, then replayed to the terminal message by message, unchanged,
followed by the rest of the original stream, which flows through uninspected under
``over_limit = "inspect-prefix"`` (``reject`` refuses the request with 413 instead). A request
without a body costs no read at all.

Outcomes: ``block`` refuses a request reaching the threshold with 403 ``request_blocked``, whose
body carries the request id and nothing about the rules or the payload; ``monitor`` forwards it.
Either way an audit event (:mod:`bastion.inspect.findings`) and a metric record it, and in
``block`` mode it is a strike against the client (:mod:`bastion.inspect.strikes`).

Struck addresses are refused (403 ``client_blocked``) by the rate limiter's gate, which checks
their penalty record with its own (:mod:`bastion.inspect.strikes`); with rate limiting off,
:class:`StrikeGate` does it in the gate's place. A blocked principal is refused here, once auth
has run, before anything else: from allow-listed addresses and on routes not inspected too.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Callable, Sequence

from bastion.audit.events import AuditSink
from bastion.deps import Deps
from bastion.http.asgi import ASGIApp, Message, Receive, Scope, Send
from bastion.http.problems import BastionError, register
from bastion.http.state import RequestState, state_of
from bastion.inspect.config import InspectConfig
from bastion.inspect.engine import InspectionVerdict, Inspector, routing_path
from bastion.inspect.findings import finding_event, strike_event
from bastion.inspect.request import InspectionRequest
from bastion.inspect.strikes import StrikeStore
from bastion.observe.metrics import Metrics
from bastion.ratelimit.limiter import client_blocked

__all__ = ["AUTH_SENSITIVE_FIELDS", "INSPECT_KEY", "InspectStage", "StrikeGate"]

register("request_blocked", 403, "Request blocked")

INSPECT_KEY = "bastion.inspect"
"""Key under ``scope["state"]`` where the stage leaves the request's :class:`InspectionVerdict`
when it forwards a request it inspected (a monitor-mode detection, for the app to read)."""
AUTH_SENSITIVE_FIELDS = ("otp", "refresh_token")
"""Fields of Bastion's own auth bodies never inspected nor excerpted, besides every field named
like a password (which the engine skips under the auth prefix itself)."""

_HTTP1 = frozenset({"1.0", "1.1"})
_NETWORK_CACHE = 4096

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


class StrikeGate:
    """Refuses clients whose address (the rate limiter's bucket of it) is blocked by strikes,
    where rate limiting is off (otherwise its gate does, in the same store call)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: InspectConfig,
        deps: Deps,
        strikes: StrikeStore,
        bucket: Callable[[str], str],
    ) -> None:
        self.app = app
        self._strikes = strikes
        self._bucket = bucket
        self._metrics = deps.metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        left = await self._strikes.blocked_for(self._bucket(state_of(scope).client_ip))
        if left > 0:
            self._metrics.inspect_refusal("strike")
            raise client_blocked(left)
        await self.app(scope, receive, send)


class _Replay:
    """``receive`` for the terminal: the messages already read, then the original stream."""

    __slots__ = ("_messages", "_receive")

    def __init__(self, messages: list[Message], receive: Receive) -> None:
        self._messages = messages
        self._receive = receive

    async def __call__(self) -> Message:
        if self._messages:
            return self._messages.pop(0)
        return await self._receive()


def _body_framing(scope: Scope) -> tuple[bool, int | None]:
    """Whether the request may have a body, and its declared length."""
    for name, value in scope["headers"]:
        if name == b"content-length":
            try:
                declared = int(value)
            except ValueError:
                return True, None
            return declared > 0, declared
        if name == b"transfer-encoding":
            return True, None
    # HTTP/1.x framing: without Content-Length or Transfer-Encoding there is no body.
    return scope.get("http_version", "1.1") not in _HTTP1, None


class InspectStage:
    """Step 12: inspection of every request before the terminal sees it (module docstring)."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        config: InspectConfig,
        deps: Deps,
        inspector: Inspector,
        strikes: StrikeStore | None = None,
        bucket: Callable[[str], str] | None = None,
    ) -> None:
        self.app = app
        self._inspector = inspector
        auth_config = config.model_copy(
            update={"sensitive_fields": [*config.sensitive_fields, *AUTH_SENSITIVE_FIELDS]}
        )
        self._auth_inspector = Inspector(
            auth_config, inspector.detectors, inspector.protocol, auth_prefix=inspector.auth_prefix
        )
        self._auth_path = deps.prefix + "/auth/"
        self._limit = config.max_request_bytes
        self._reject = config.over_limit == "reject"
        # The policy is looked up before reading a body only when some path may be off.
        self._may_be_off = config.mode == "off" or any(r.mode == "off" for r in config.routes)
        self._allow: tuple[Network, ...] = tuple(config.allow_cidrs)
        self._deny: tuple[Network, ...] = tuple(config.deny_cidrs)
        self._networks: dict[str, bool | None] = {}
        self._strikes = strikes if config.strikes.enabled else None
        self._bucket = bucket or (lambda ip: ip)
        self._strike_rule = config.strikes
        self._metrics: Metrics = deps.metrics
        self._audit: AuditSink | None = deps.audit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind != "http" and kind != "websocket":
            await self.app(scope, receive, send)
            return
        state = state_of(scope)
        if self._strikes is not None and state.user is not None:
            # Before the allow list and "off" routes: a blocked principal is refused wherever
            # this stage runs, from any address.
            left = await self._strikes.blocked_for("user:" + state.user)
            if left > 0:
                self._metrics.inspect_refusal("strike")
                raise client_blocked(left)
        if self._allow or self._deny:
            listed = self._listed(state.client_ip)
            if listed is True:
                await self.app(scope, receive, send)
                return
            if listed is False:
                self._metrics.inspect_refusal("deny_cidr")
                raise BastionError("request_blocked", "The request was refused")
        if self._may_be_off:
            raw = scope.get("raw_path") or scope["path"].encode("utf-8")
            if self._inspector.policy(routing_path(raw.decode("latin-1"))).mode == "off":
                await self.app(scope, receive, send)
                return
        path: str = scope["path"]
        inspector = self._auth_inspector if path.startswith(self._auth_path) else self._inspector
        has_body, declared = _body_framing(scope) if kind == "http" else (False, None)
        if not has_body:
            request = InspectionRequest.from_scope(scope, b"")
            verdict = inspector.inspect(request)
            if verdict.flagged or verdict.blocked:
                # Recorded first: a refusal raises, and its span reads the verdict.
                scope["state"][INSPECT_KEY] = verdict
                await self._act(request, verdict, inspector, state, complete=True)
            await self.app(scope, receive, send)
            return
        if self._reject and declared is not None and declared > self._limit:
            self._too_large()
        messages: list[Message] = []
        size = 0
        more = True
        while more and size <= self._limit:
            message = await receive()
            messages.append(message)
            if message["type"] != "http.request":
                return  # the client left before its body was complete: nothing to answer
            size += len(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join([message.get("body", b"") for message in messages])
        request = InspectionRequest.from_scope(scope, body[: self._limit + 1])
        verdict = inspector.inspect(request)
        if verdict.flagged or verdict.blocked:
            scope["state"][INSPECT_KEY] = verdict
            await self._act(request, verdict, inspector, state, complete=not more)
        await self.app(scope, _Replay(messages, receive), send)

    def _listed(self, ip: str) -> bool | None:
        """True: allow-listed (not inspected); False: deny-listed; None: neither."""
        cached = self._networks.get(ip, 0)
        if cached != 0:
            return cached  # type: ignore[return-value]
        try:
            address = ipaddress.ip_address(ip)
        except ValueError:
            result: bool | None = None
        else:
            if any(address in network for network in self._deny):
                result = False
            elif any(address in network for network in self._allow):
                result = True
            else:
                result = None
        if len(self._networks) >= _NETWORK_CACHE:
            self._networks.clear()
        self._networks[ip] = result
        return result

    def _too_large(self) -> None:
        self._metrics.inspect_refusal("over_limit")
        # The unread rest of the body makes the connection unusable for another request.
        raise BastionError(
            "payload_too_large",
            f"The request exceeds what can be inspected ({self._limit} bytes of body)",
            headers={"Connection": "close"},
        )

    async def _act(
        self,
        request: InspectionRequest,
        verdict: InspectionVerdict,
        inspector: Inspector,
        state: RequestState,
        *,
        complete: bool,
    ) -> None:
        """Record a finding; raise the refusal when the verdict blocks."""
        if verdict.too_large:
            self._too_large()
        categories = sorted({match.category for match in verdict.matches})
        self._metrics.inspect_outcome(categories, blocked=verdict.blocked)
        if self._audit is not None:
            await self._audit.emit(finding_event(request, verdict, inspector, state))
        if not verdict.blocked:
            return
        if self._strikes is not None:
            await self._strike(state)
        headers = None if complete else {"Connection": "close"}
        raise BastionError("request_blocked", "The request was refused", headers=headers)

    async def _strike(self, state: RequestState) -> None:
        assert self._strikes is not None
        clients: Sequence[str] = (self._bucket(state.client_ip),)
        if state.user is not None:
            clients = (*clients, "user:" + state.user)
        rule = self._strike_rule
        for client in await self._strikes.strike(clients):
            if self._audit is not None:
                event = strike_event(
                    client,
                    state,
                    threshold=rule.threshold,
                    window=rule.window,
                    duration=rule.duration,
                )
                await self._audit.emit(event)
