"""Alert webhooks: which URLs are allowed, what is sent, how it is signed, and one delivery attempt.

A webhook URL is data from a caller, like a source URL, so it passes the same destination policy
(``ingest.destinations``): http(s) only, no control characters, every address its host resolves to
allowed (no loopback or private targets unless ``VIDMEM_ALLOWED_NETWORKS`` opens them). It is checked
when the alert is made or changed and again before every attempt, since a name can re-resolve
elsewhere; redirects are never followed (a 3xx is a failed attempt), so a receiver cannot bounce the
request into the service's own network.

Each request body is JSON without secrets; ``X-Vidmem-Signature: sha256=<hex>`` is the HMAC-SHA256 of
the exact body bytes with the alert's signing secret, and the body carries ``sent_at`` (also in
``X-Vidmem-Timestamp``) so a receiver can refuse replays of an old signed body.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from ingest.destinations import DestinationPolicy
from ingest.errors import SourceRefused
from ingest.sources import check_characters, redact_text
from vidmem.settings import Settings

SCHEMES = ("http", "https")
SIGNATURE_HEADER = "X-Vidmem-Signature"
TIMESTAMP_HEADER = "X-Vidmem-Timestamp"
EVENT_HEADER = "X-Vidmem-Event"
USER_AGENT = "vidmem-webhook/1"
REFUSED = "webhook URL refused by the destination policy (VIDMEM_ALLOWED_NETWORKS opens a network)"
PERMANENT_STATUSES = frozenset(range(400, 500)) - {408, 425, 429}
"""Client errors other than timeouts and rate limits: the receiver refuses this request for good, so no retry."""


class WebhookRefused(SourceRefused):
    """The URL is malformed or points where the destination policy does not allow."""


def webhook_policy(settings: Settings) -> DestinationPolicy:
    """The networks webhooks may reach: the same allowed and denied networks as sources."""
    return DestinationPolicy.build(settings.allowed_networks, settings.denied_networks, None)


def check_webhook_url(url: str, settings: Settings) -> str:
    """``url`` if it is an http(s) URL whose host resolves only to allowed addresses; else WebhookRefused."""
    try:
        check_characters(url)
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except (SourceRefused, ValueError) as exc:
        raise WebhookRefused(f"is not a valid URL: {exc}" if isinstance(exc, SourceRefused) else
                             "is not a valid URL") from None
    if parts.scheme.lower() not in SCHEMES:
        raise WebhookRefused(f"must be an http or https URL, not {parts.scheme or 'a path'!r}")
    if not host:
        raise WebhookRefused("has no host")
    try:
        webhook_policy(settings).check_host(host, port)
    except SourceRefused:
        raise WebhookRefused(REFUSED) from None  # generic, as for sources: says nothing about the host
    return url


def sign(body: bytes, secret: str) -> str:
    """The signature header's value: ``sha256=`` and the hex HMAC-SHA256 of ``body``."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def verify(body: bytes, secret: str, header: str) -> bool:
    """What a receiver does (tests too): compare in constant time."""
    return hmac.compare_digest(sign(body, secret), header)


def backoff_s(attempt: int, settings: Settings) -> float:
    """The wait after failed attempt ``attempt`` (1-based): base, 2 x base, 4 x base ... up to the maximum."""
    return min(settings.alert_webhook_backoff_s * 2 ** (attempt - 1), settings.alert_webhook_backoff_max_s)


def encode_body(payload: dict[str, Any], sent_at: datetime) -> bytes:
    """The exact bytes sent and signed (compact, key order kept)."""
    return json.dumps({**payload, "sent_at": sent_at.isoformat()}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class Attempt:
    """The outcome of one POST: ``ok`` on a 2xx; ``permanent`` when trying again cannot help."""

    ok: bool
    status_code: int | None
    error: str | None
    duration_ms: float
    permanent: bool = False


def post(url: str, body: bytes, *, secret: str, sent_at: datetime, event_id: str, settings: Settings) -> Attempt:
    """POST ``body`` to ``url`` once, signed, after checking the destination policy again; never raises."""
    start = time.perf_counter()
    try:
        check_webhook_url(url, settings)
    except WebhookRefused as exc:
        return Attempt(False, None, f"refused: {exc}", 0.0)  # a name that failed to resolve may resolve later
    headers = {
        "Content-Type": "application/json", "User-Agent": USER_AGENT, SIGNATURE_HEADER: sign(body, secret),
        TIMESTAMP_HEADER: str(int(sent_at.timestamp())), EVENT_HEADER: event_id,
    }
    try:
        with httpx.Client(timeout=settings.alert_webhook_timeout_s, follow_redirects=False, trust_env=False) as client:
            response = client.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return Attempt(False, None, redact_text(f"{type(exc).__name__}: {exc}")[:500], _ms(start))
    code = response.status_code
    if 200 <= code < 300:
        return Attempt(True, code, None, _ms(start))
    redirect = 300 <= code < 400  # the same request would be redirected again
    reason = "redirects are not followed" if redirect else response.reason_phrase
    return Attempt(False, code, f"HTTP {code}: {reason}"[:500], _ms(start),
                   permanent=redirect or code in PERMANENT_STATUSES)


def _ms(start: float) -> float:
    return (time.perf_counter() - start) * 1e3
