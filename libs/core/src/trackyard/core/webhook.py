"""LiveKit webhooks: room and participant events POSTed to ``webhook.urls``.

What a receiver sees is LiveKit's: the body is the ``WebhookEvent`` protobuf as JSON (protobuf's
JSON mapping, camelCase, like Go's ``protojson``) with ``id`` (``EV_...``) and ``created_at``
(Unix seconds), ``Content-Type: application/webhook+json``, ``User-Agent: LiveKit``, and an
``Authorization`` header holding an access token of ``webhook.api_key`` whose ``sha256`` claim
is the base64 SHA-256 of the body (what ``livekit-api``'s ``WebhookReceiver`` checks).

Each event is raised by the one process that sees it (the SFU node hosting the room; a room
lives on exactly one node), so the cluster sends it once. :meth:`WebhookNotifier.notify` only
puts the event on a bounded queue (never awaits, never blocks media or signalling); worker tasks
deliver it to every URL, retrying failures with exponential backoff (tenacity). When the queue is
full the new event is dropped and counted (``trackyard_webhook_dropped_total`` and, as LiveKit
does, ``num_dropped`` in the next event sent).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import time
from dataclasses import dataclass

import httpx
import jwt
import structlog
from google.protobuf import json_format
from livekit.protocol import models, webhook
from prometheus_client import Counter
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    stop_after_attempt,
    wait_exponential_jitter,
)

from trackyard.core import ids
from trackyard.core.config import Config, ConfigError, WebhookConfig

log = structlog.get_logger(__name__)

CONTENT_TYPE = "application/webhook+json"
USER_AGENT = "LiveKit"
EVENT_PREFIX = "EV_"
EVENTS = (
    "room_started",
    "room_finished",
    "participant_joined",
    "participant_left",
    "participant_connection_aborted",
    "track_published",
    "track_unpublished",
)

SENT = Counter("trackyard_webhook_sent_total", "Webhook deliveries acknowledged (2xx)", ["event"])
FAILED = Counter(
    "trackyard_webhook_failed_total", "Webhook deliveries given up after all attempts", ["event"]
)
RETRIED = Counter("trackyard_webhook_retries_total", "Webhook delivery attempts that failed")
DROPPED = Counter("trackyard_webhook_dropped_total", "Webhook events dropped: queue full")


class DeliveryError(Exception):
    """The receiver did not answer 2xx."""


def sign(body: bytes, api_key: str, api_secret: str, *, ttl: float = 300) -> str:
    """An access token of ``api_key`` carrying the body's SHA-256 (LiveKit's webhook auth)."""
    now = int(time.time())
    claims = {
        "iss": api_key,
        "nbf": now,
        "exp": now + int(ttl),
        "sha256": base64.b64encode(hashlib.sha256(body).digest()).decode(),
    }
    return jwt.encode(claims, api_secret, algorithm="HS256")


def encode(event: webhook.WebhookEvent) -> bytes:
    return json_format.MessageToJson(event, indent=None).encode()


@dataclass
class _Queued:
    event: webhook.WebhookEvent


class WebhookNotifier:
    """Queue events and deliver them to every configured URL in the background."""

    def __init__(self, config: WebhookConfig, api_key: str, api_secret: str) -> None:
        self.config = config
        self.api_key = api_key
        self.api_secret = api_secret
        size = config.url_notifier.queue_size
        self._queue: asyncio.Queue[_Queued | None] = asyncio.Queue(maxsize=size)
        self._workers: list[asyncio.Task[None]] = []
        self._client: httpx.AsyncClient | None = None
        self._dropped = 0  # reported in the next event, as LiveKit's num_dropped
        self.dropped_total = 0

    @classmethod
    def from_config(cls, config: Config) -> WebhookNotifier | None:
        """A notifier when ``webhook.urls`` is set (``webhook.api_key`` must be a known key)."""
        wh = config.webhook
        if not wh.urls:
            return None
        if not wh.api_key:
            raise ConfigError("webhook.api_key: required with webhook.urls")
        secret = config.keys.get(wh.api_key)
        if secret is None:
            raise ConfigError(f"webhook.api_key: {wh.api_key!r} is not one of the configured keys")
        return cls(wh, wh.api_key, secret)

    def wanted(self, name: str) -> bool:
        f = self.config.filter_params
        if f.include_events and name not in f.include_events:
            return False
        return name not in f.exclude_events

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self._client = httpx.AsyncClient(timeout=self.config.request_timeout)
        self._workers = [
            asyncio.create_task(self._work(), name=f"webhook-{i}")
            for i in range(self.config.url_notifier.num_workers)
        ]

    async def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (bounded by ``timeout``), then stop."""
        for _ in self._workers:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)
        if self._workers:
            _done, pending = await asyncio.wait(self._workers, timeout=timeout)
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
        self._workers = []
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- events ------------------------------------------------------------------------

    def notify(
        self,
        name: str,
        *,
        room: models.Room | None = None,
        participant: models.ParticipantInfo | None = None,
        track: models.TrackInfo | None = None,
    ) -> None:
        """Queue one event; returns at once. Full queue: the event is dropped and counted."""
        if not self.wanted(name):
            return
        event = webhook.WebhookEvent(
            event=name, id=ids.new_id(EVENT_PREFIX), created_at=int(time.time())
        )
        if room is not None:
            event.room.CopyFrom(room)
        if participant is not None:
            event.participant.CopyFrom(participant)
        if track is not None:
            event.track.CopyFrom(track)
        try:
            self._queue.put_nowait(_Queued(event))
        except asyncio.QueueFull:
            self._dropped += 1
            self.dropped_total += 1
            DROPPED.inc()
            log.warning("webhook queue full; event dropped", webhook_event=name, id=event.id)

    async def _work(self) -> None:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            event = item.event
            event.num_dropped, self._dropped = self._dropped, 0
            body = encode(event)
            await asyncio.gather(*(self._deliver(url, event, body) for url in self.config.urls))

    async def _deliver(self, url: str, event: webhook.WebhookEvent, body: bytes) -> None:
        assert self._client is not None
        cfg = self.config
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(cfg.max_attempts),
                wait=wait_exponential_jitter(
                    initial=cfg.retry_wait_min, max=cfg.retry_wait_max, jitter=cfg.retry_wait_min
                ),
                retry=retry_if_exception_type((httpx.HTTPError, DeliveryError)),
                reraise=True,
            ):
                with attempt:
                    if attempt.retry_state.attempt_number > 1:
                        RETRIED.inc()
                    headers = {
                        "Authorization": sign(body, self.api_key, self.api_secret),
                        "Content-Type": CONTENT_TYPE,
                        "User-Agent": USER_AGENT,
                    }
                    resp = await self._client.post(url, content=body, headers=headers)
                    if resp.status_code // 100 != 2:
                        raise DeliveryError(f"{url} answered {resp.status_code}")
        except (httpx.HTTPError, DeliveryError) as exc:
            FAILED.labels(event.event).inc()
            log.warning(
                "webhook not delivered",
                url=url,
                webhook_event=event.event,
                id=event.id,
                error=str(exc),
            )
            return
        SENT.labels(event.event).inc()
        log.debug("webhook delivered", url=url, webhook_event=event.event, id=event.id)
