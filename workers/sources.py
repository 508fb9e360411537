"""Which video sources a user may register, checked before anything is stored.

Schemes are configurable; local files and capture devices are refused unless enabled. The
stored URL keeps its credentials (ingest needs them); everything shown or logged is redacted.
"""

from __future__ import annotations

from pathlib import Path
from urllib.parse import urlsplit

from vidmem.settings import Settings

DEVICE_PREFIXES = ("/dev/video", "v4l2://", "device://")


class SourceRejected(ValueError):
    """The source is not allowed or cannot exist; the message says why."""


def redact_url(url: str) -> str:
    """``rtsp://user:secret@host/x`` -> ``rtsp://***@host/x``; other strings unchanged."""
    parts = urlsplit(url)
    if not parts.netloc or "@" not in parts.netloc:
        return url
    host = parts.netloc.rsplit("@", 1)[1]
    return parts._replace(netloc=f"***@{host}").geturl()


def check_source(source: str, settings: Settings) -> str:
    """The normalised source if ``settings`` allow it, else SourceRejected with the reason."""
    source = source.strip()
    if source.startswith(DEVICE_PREFIXES):
        if not settings.allow_devices:
            raise SourceRejected("capture devices are disabled (VIDMEM_ALLOW_DEVICES=true enables them)")
        return source
    scheme = urlsplit(source).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path (one letter: a Windows drive)
        return _check_file(source, settings)
    if scheme not in settings.allowed_schemes:
        allowed = ", ".join(s for s in settings.allowed_schemes if s != "file")
        raise SourceRejected(f"scheme {scheme!r} is not allowed; allowed: {allowed}")
    if not urlsplit(source).hostname:
        raise SourceRejected(f"{redact_url(source)!r} has no host")
    return source


def _check_file(source: str, settings: Settings) -> str:
    if not settings.allow_files or "file" not in settings.allowed_schemes:
        raise SourceRejected("local files are disabled (VIDMEM_ALLOW_FILES=true enables them)")
    path = Path(source.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise SourceRejected(f"no such file: {path}")
    return str(path.resolve())
