"""Alert delivery to a webhook: a JSON POST signed per the Standard Webhooks scheme.

Each message carries ``webhook-id`` (the same on every attempt, an idempotency key),
``webhook-timestamp`` (Unix seconds of the attempt) and ``webhook-signature``: ``v1,`` and the
base64 HMAC-SHA256 of ``"{id}.{timestamp}.{body}"``, once per configured secret (space
separated), so a receiver keeps verifying while secrets rotate.

Delivery runs in one background task fed by a bounded queue: a request never waits for it. A
connection error, a timeout, a 5xx or a 429 is retried with exponential backoff and jitter
(``Retry-After`` honoured up to ``max_backoff``); other statuses end the attempts; 410 Gone turns
the webhook off, as the scheme asks. When the receiver stays away long enough for the queue to
fill, the oldest alert is dropped: alerts are notifications, not records (the audit log and the
metrics are the records).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import email.utils
import hashlib
import hmac
import random
import secrets
import time
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC
from typing import Any

import aiohttp
import orjson

from bastion.observe.config import AlertWebhookConfig, webhook_key
from bastion.observe.logging import get_logger
from bastion.observe.metrics import Metrics

__all__ = [
    "WebhookSender",
    "WebhookVerificationError",
    "new_message_id",
    "sign",
    "verify",
]

_log: Any = get_logger("bastion.alerts")

DEFAULT_TOLERANCE = 300.0
"""Seconds a receiver should accept between ``webhook-timestamp`` and its own clock."""

_DRAIN = 2.0
"""Seconds :meth:`WebhookSender.close` waits for queued alerts to go out."""


class WebhookVerificationError(Exception):
    """A delivery failed verification; ``reason`` says which check."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def new_message_id() -> str:
    """A fresh ``webhook-id``: ``msg_`` and 24 URL-safe characters (never a ``.``)."""
    return "msg_" + secrets.token_urlsafe(18)


def _signature(key: bytes, msg_id: str, timestamp: int, body: bytes) -> bytes:
    signed = b"%s.%d.%s" % (msg_id.encode("ascii"), timestamp, body)
    return hmac.new(key, signed, hashlib.sha256).digest()


def sign(keys: Sequence[bytes], msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` value: one ``v1,<base64>`` per key, space separated."""
    return " ".join(
        "v1," + base64.b64encode(_signature(key, msg_id, timestamp, body)).decode("ascii")
        for key in keys
    )


def verify(
    secret: str | bytes,
    headers: Mapping[str, str],
    body: bytes,
    *,
    now: float | None = None,
    tolerance: float = DEFAULT_TOLERANCE,
) -> None:
    """Check a delivery as a receiver should; raise :class:`WebhookVerificationError` if it
    fails. ``secret`` is the configured ``whsec_…`` string (or the decoded key); ``headers``
    are matched case-insensitively; ``body`` is the raw request body, before any JSON parsing."""
    key = webhook_key(secret) if isinstance(secret, str) else secret
    lowered = {name.lower(): value for name, value in headers.items()}
    msg_id = lowered.get("webhook-id", "")
    stamp = lowered.get("webhook-timestamp", "")
    signatures = lowered.get("webhook-signature", "")
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook headers")
    if "." in msg_id or not msg_id.isascii():
        raise WebhookVerificationError("malformed webhook-id")
    if not stamp.isascii() or not stamp.isdigit() or len(stamp) > 12:
        raise WebhookVerificationError("malformed webhook-timestamp")
    timestamp = int(stamp)
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp outside the tolerance")
    expected = _signature(key, msg_id, timestamp, body)
    for item in signatures.split(" "):
        version, _, encoded = item.partition(",")
        if version != "v1":
            continue
        try:
            candidate = base64.b64decode(encoded, validate=True)
        except ValueError:
            continue
        if hmac.compare_digest(expected, candidate):
            return
    raise WebhookVerificationError("no matching signature")


def _retry_after(value: str | None, now: float) -> float | None:
    """Seconds from a ``Retry-After`` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value) if len(value) <= 12 else None
    try:
        when = email.utils.parsedate_to_datetime(value)
        if when.tzinfo is None:
            # RFC 5322 "-0000": a time in UTC whose source zone is unknown.
            when = when.replace(tzinfo=UTC)
        return max(0.0, when.timestamp() - now)
    except (TypeError, ValueError, OverflowError, IndexError):
        return None


Sleep = Callable[[float], Awaitable[Any]]


class WebhookSender:
    """Posts queued alert payloads to ``[alerts.webhook].url`` from one background task."""

    def __init__(
        self,
        config: AlertWebhookConfig,
        metrics: Metrics,
        *,
        sleep: Sleep = asyncio.sleep,
        jitter: Callable[[], float] = random.random,
        wall: Callable[[], float] = time.time,
    ) -> None:
        if not config.url or config.secret is None:
            raise ValueError("the alert webhook needs a url and a secret")
        self._config = config
        self._url = config.url
        self._keys = [
            webhook_key(s.get_secret_value()) for s in (config.secret, *config.previous_secrets)
        ]
        self._metrics = metrics
        self._sleep = sleep
        self._jitter = jitter
        self._wall = wall
        self._queue: deque[tuple[str, bytes]] = deque()
        # Events are bound to the loop they are first awaited on: made in start(), once per run.
        self._wake: asyncio.Event | None = None
        self._idle: asyncio.Event | None = None
        self._session: aiohttp.ClientSession | None = None
        self._task: asyncio.Task[None] | None = None
        self.enabled = True
        """False once the receiver answered 410 Gone: alerts then go to the log only."""

    @property
    def pending(self) -> int:
        """Alerts waiting in the queue (not counting one being delivered)."""
        return len(self._queue)

    def submit(self, payload: Mapping[str, Any]) -> None:
        """Queue one payload; never waits. A full queue drops its oldest alert."""
        if not self.enabled:
            return
        if len(self._queue) >= self._config.queue_size:
            dropped_id, _ = self._queue.popleft()
            self._metrics.alert_delivery("dropped")
            _log.warning("alert webhook queue full; oldest alert dropped", webhook_id=dropped_id)
        self._queue.append((new_message_id(), orjson.dumps(payload)))
        if self._idle is not None and self._wake is not None:
            self._idle.clear()
            self._wake.set()

    async def start(self) -> None:
        if self._task is not None:
            return
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        if self._queue:
            self._wake.set()
        else:
            self._idle.set()
        self._session = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=self._config.timeout),
            headers={"User-Agent": "bastion-alerts"},
        )
        self._task = asyncio.create_task(self._run(), name="bastion-alert-webhook")

    async def close(self, drain: float = _DRAIN) -> None:
        """Give queued alerts ``drain`` seconds to go out, then stop."""
        task, self._task = self._task, None
        if task is not None and not task.done():
            idle = self._idle
            try:
                if idle is not None:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(idle.wait(), drain)
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            except RuntimeError as exc:
                # The task belongs to an event loop that has already ended.
                _log.warning("alert webhook task was left on a closed event loop", error=repr(exc))
        self._wake = self._idle = None
        if self._queue:
            _log.warning("alerts not delivered at shut-down", count=len(self._queue))
            for _ in self._queue:
                self._metrics.alert_delivery("dropped")
            self._queue.clear()
        if self._session is not None:
            session, self._session = self._session, None
            try:
                await session.close()
            except RuntimeError as exc:
                _log.warning(
                    "alert webhook session was left on a closed event loop", error=repr(exc)
                )

    async def _run(self) -> None:
        while True:
            if not self._queue:
                assert self._idle is not None
                assert self._wake is not None
                self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            msg_id, body = self._queue.popleft()
            try:
                await self._deliver(msg_id, body)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # The task must outlive any surprise, or every later alert would be lost.
                self._metrics.alert_delivery("failed")
                _log.error("alert webhook delivery crashed", webhook_id=msg_id, error=repr(exc))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Exponential backoff with jitter (between half and all of the doubled delay)."""
        config = self._config
        ceiling = min(config.max_backoff, config.backoff * 2.0 ** (attempt - 1))
        delay = ceiling * (0.5 + 0.5 * self._jitter())
        if retry_after is not None:
            delay = max(delay, retry_after)
        return min(delay, config.max_backoff)

    async def _attempt(self, msg_id: str, body: bytes) -> tuple[int | None, str | None, str]:
        """One POST: ``(status, Retry-After, error)``; status ``None`` when none came back."""
        assert self._session is not None
        stamp = int(self._wall())
        headers = {
            "Content-Type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": sign(self._keys, msg_id, stamp, body),
        }
        try:
            async with self._session.post(
                self._url, data=body, headers=headers, allow_redirects=False
            ) as response:
                return response.status, response.headers.get("Retry-After"), ""
        except TimeoutError:
            return None, None, "timeout"
        except aiohttp.ClientError as exc:
            return None, None, type(exc).__name__

    async def _deliver(self, msg_id: str, body: bytes) -> None:
        attempts = self._config.max_attempts
        for attempt in range(1, attempts + 1):
            status, retry_header, error = await self._attempt(msg_id, body)
            if status is not None and 200 <= status < 300:
                self._metrics.alert_delivery("delivered")
                return
            if status == 410:
                self.enabled = False
                for _ in self._queue:
                    self._metrics.alert_delivery("dropped")
                self._queue.clear()
                self._metrics.alert_delivery("failed")
                _log.error("alert webhook answered 410 Gone; webhook delivery turned off")
                return
            retryable = status is None or status == 429 or status >= 500
            if not retryable or attempt == attempts:
                self._metrics.alert_delivery("failed")
                _log.warning(
                    "alert webhook delivery failed",
                    webhook_id=msg_id,
                    status=status,
                    error=error or None,
                    attempts=attempt,
                )
                return
            self._metrics.alert_delivery("retried")
            await self._sleep(self._delay(attempt, _retry_after(retry_header, self._wall())))
