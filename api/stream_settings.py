"""Checking a stream's own settings from a request (``StreamSettingsBody``) before they are stored.

The schema checks types and ranges; here the compression specs are checked against the method
registry (``workers.stream_settings.check_spec``) and the frames one chunk would hold are bounded,
each failure a 422 naming its field (``body.settings.stage1``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from api.deps import field_error
from api.schemas import StreamSettingsBody
from vidmem.settings import Settings
from workers import stream_settings

MAX_FRAMES_PER_CHUNK = 300
"""sample_fps x chunk_seconds: a chunk is one encoder batch on a worker; more frames would not fit its memory."""


def checked_changes(body: StreamSettingsBody, settings: Settings) -> dict[str, Any]:
    """The fields the caller sent (null included: back to the default), specs normalised; 422 naming a bad one."""
    changes = body.model_dump(include=body.model_fields_set)
    for name, stage in stream_settings.SPEC_STAGES.items():
        if changes.get(name) is not None:
            try:
                changes[name] = stream_settings.check_spec(changes[name], stage, settings)
            except ValueError as exc:
                raise field_error(("body", "settings", name), f"invalid stage-{stage} spec: {exc}") from None
    return changes


def checked_settings(stored: Mapping[str, Any] | None, changes: Mapping[str, Any],
                     settings: Settings) -> dict[str, Any] | None:
    """``stored`` with ``changes`` applied, refused (422) if a chunk would then hold too many frames."""
    result = stream_settings.merged(stored, changes)
    own = stream_settings.effective(settings, result)
    frames = own.sample_fps * own.chunk_seconds
    if frames > MAX_FRAMES_PER_CHUNK:
        field = "chunk_seconds" if "chunk_seconds" in changes else "sample_fps"
        raise field_error(("body", "settings", field),
                          f"sample_fps x chunk_seconds = {frames:g} frames per chunk; at most {MAX_FRAMES_PER_CHUNK}")
    return result


def public_settings(stored: Mapping[str, Any] | None, settings: Settings) -> tuple[StreamSettingsBody, dict]:
    """(the stream's own settings, the effective ones) as shown in ``StreamPublic``."""
    own = {k: v for k, v in (stored or {}).items() if k in stream_settings.FIELDS}
    return StreamSettingsBody(**own), stream_settings.effective(settings, stored).as_dict()
