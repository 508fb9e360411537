"""Which video sources a user may register: ingest's policy, fed from the settings.

Checked before anything is stored, so a refused source never becomes a stream. The stored URL
keeps its credentials (ingest needs them); everything shown or logged is redacted.
"""

from __future__ import annotations

from ingest.entities import IngestConfig, SkipMode
from ingest.errors import SourceRefused
from ingest.sources import check_source as check_ingest_source
from ingest.sources import redact_url
from vidmem.settings import Settings

SourceRejected = SourceRefused

__all__ = ["SourceRejected", "check_source", "ingest_config", "redact_url"]


def ingest_config(settings: Settings, *, loop: bool = False) -> IngestConfig:
    """The ingest configuration of one stream under ``settings``."""
    return IngestConfig(
        sample_fps=settings.sample_fps, chunk_seconds=settings.chunk_seconds, frame_size=settings.frame_size,
        loop=loop, allowed_schemes=tuple(settings.allowed_schemes), allow_files=settings.allow_files,
        allow_devices=settings.allow_devices, stall_seconds=settings.stall_seconds,
        queue_chunks=settings.max_pending_chunks, rtsp_transport=settings.rtsp_transport,
        open_timeout_s=settings.open_timeout_s, skip=SkipMode(settings.decode_skip),
        export_motion=settings.wants_motion, ice_hosts=tuple(settings.ice_hosts),
        first_connect_retries=settings.first_connect_retries,
    )


def check_source(source: str, settings: Settings) -> str:
    """The source as it will be stored if ``settings`` allow it, else SourceRejected saying why."""
    return check_ingest_source(source, ingest_config(settings)).url
