"""Which video sources a user may register: ingest's policy, fed from the settings.

Checked before anything is stored, so a refused source never becomes a stream. The row keeps the
redacted URL; credentials are stored only encrypted (``store.credentials``) and decrypted by the
ingest right before it connects, where the destination policy is checked again.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from ingest.destinations import DestinationPolicy
from ingest.entities import IngestConfig, SkipMode
from ingest.errors import SourceInvalid, SourceRefused
from ingest.sources import WEBRTC_PREFIX, redact_text, redact_url
from ingest.sources import check_source as check_ingest_source
from store import repo
from store.credentials import CredentialsUnavailable, seal
from store.models import DEFAULT_TENANT, Stream
from vidmem.settings import Settings

SourceRejected = SourceRefused
NAME_MAX_CHARS = Stream.__table__.c.name.type.length  # a default name (the URL) may be longer

__all__ = [
    "SourceInvalid", "SourceRejected", "check_source", "destination_policy", "ingest_config", "redact_text",
    "redact_url", "register_stream",
]


def destination_policy(settings: Settings) -> DestinationPolicy:
    """Networks and the file folder sources may point to, from the settings."""
    folder = settings.file_dir if settings.allow_files else None
    return DestinationPolicy.build(settings.allowed_networks, settings.denied_networks, folder)


def ingest_config(settings: Settings, *, loop: bool = False) -> IngestConfig:
    """The ingest configuration of one stream under ``settings``."""
    return IngestConfig(
        sample_fps=settings.sample_fps, chunk_seconds=settings.chunk_seconds, frame_size=settings.frame_size,
        loop=loop, allowed_schemes=tuple(settings.allowed_schemes), allow_files=settings.allow_files,
        allow_devices=settings.allow_devices, stall_seconds=settings.stall_seconds,
        queue_chunks=settings.max_pending_chunks, rtsp_transport=settings.rtsp_transport,
        open_timeout_s=settings.open_timeout_s, skip=SkipMode(settings.decode_skip),
        export_motion=settings.wants_motion, ice_hosts=tuple(settings.ice_hosts),
        ice_servers=tuple(settings.ice_servers), ice_username=settings.ice_username,
        ice_credential=settings.ice_credential,
        first_connect_retries=settings.first_connect_retries, destinations=destination_policy(settings),
    )


def check_source(source: str, settings: Settings) -> str:
    """The source if ``settings`` allow it, else SourceRejected saying why (never with credentials).

    ``webrtc://`` streams are not registered here: ``POST /streams/{id}/webrtc`` creates them with the offer.
    """
    if source.startswith(WEBRTC_PREFIX):
        raise SourceInvalid("WebRTC streams are created by POST /streams/{id}/webrtc with the browser's offer")
    return check_ingest_source(source, ingest_config(settings)).url


def register_stream(
    session: Session, settings: Settings, *, source: str, name: str | None, loop: bool,
    tenant_id: str = DEFAULT_TENANT,
) -> Stream:
    """Check ``source`` and add ``tenant_id``'s stream: redacted URL and name in the row, credentials encrypted.

    SourceRejected when the policy refuses it or credentials cannot be encrypted (no key in distributed mode).
    """
    url = check_source(source, settings)
    try:
        sealed = seal(url, settings)
    except CredentialsUnavailable as exc:
        raise SourceRefused(str(exc)) from None
    shown = (redact_text(name) if name else sealed.display)[:NAME_MAX_CHARS]
    stream = repo.create_stream(session, name=shown, source_url=sealed.display, loop=loop, tenant_id=tenant_id)
    stream.source_secret = sealed.secret
    return stream
