"""Open a stream source with PyAV: network URLs, local files and capture devices.

Every open has explicit open and read timeouts. FFmpeg fires a read timeout at about twice the
configured value, so ``IngestConfig.read_timeout`` defaults to half the stall time. Credentials in
URLs never reach a log line, an exception message or a status: use ``redact_url``/``redact_text``.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import urlsplit

import av
import av.container

from ingest.entities import IngestConfig
from ingest.errors import SourceRefused, SourceUnavailable

log = logging.getLogger(__name__)

DEVICE_PREFIXES = ("device://", "v4l2://")
WEBRTC_PREFIX = "webrtc://"
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)[^/\s@]+@")
# Low probing: the RTSP SDP already names the codec and size, so the first frame comes in ~0.1 s, not ~1 s.
HTTP_PROTOCOLS = "http,https,tcp,tls,crypto,httpproxy"
RTSP_OPTIONS = {"fflags": "nobuffer", "flags": "low_delay", "analyzeduration": "0", "probesize": "32"}


class SourceKind(StrEnum):
    NETWORK = "network"
    FILE = "file"
    DEVICE = "device"
    WEBRTC = "webrtc"  # a browser pushes its webcam to us (ingest.webrtc); nothing is fetched


@dataclass(frozen=True)
class Source:
    """A checked source: what to hand to ``av.open`` and how to show it."""

    url: str  # with credentials: only ever passed to av.open
    kind: SourceKind
    scheme: str
    path: str  # what av.open gets: the URL, a file path or a device name

    @property
    def is_live(self) -> bool:
        return self.kind is not SourceKind.FILE

    def __str__(self) -> str:
        return redact_url(self.url)

    def __repr__(self) -> str:
        return f"Source({redact_url(self.url)!r}, {self.kind})"


def redact_url(url: str) -> str:
    """``rtsp://user:secret@cam/x`` -> ``rtsp://***@cam/x``; strings without credentials unchanged."""
    return redact_text(url)


def redact_text(text: str) -> str:
    """Replace the user-info part of every URL inside ``text`` (e.g. an FFmpeg error message)."""
    return _USERINFO.sub(r"\g<scheme>***@", text)


def check_source(url: str, config: IngestConfig) -> Source:
    """The parsed source if ``config`` allows it, else SourceRefused saying why."""
    url = url.strip()
    if url.startswith(DEVICE_PREFIXES):
        return _check_device(url, config)
    if url.startswith(WEBRTC_PREFIX):
        name = url.removeprefix(WEBRTC_PREFIX).strip("/")
        if not name:
            raise SourceRefused(f"{url!r} names no stream (webrtc://<name>)")
        return Source(url, SourceKind.WEBRTC, "webrtc", name)
    scheme = urlsplit(url).scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path (one letter: a Windows drive)
        return _check_file(url, config)
    if scheme not in config.allowed_schemes:
        allowed = ", ".join(config.allowed_schemes) or "none"
        raise SourceRefused(f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    if not urlsplit(url).hostname:
        raise SourceRefused(f"{redact_url(url)!r} has no host")
    return Source(url, SourceKind.NETWORK, scheme, url)


def _check_device(url: str, config: IngestConfig) -> Source:
    if not config.allow_devices:
        raise SourceRefused("capture devices are disabled in the settings")
    name = url.split("://", 1)[1]
    return Source(url, SourceKind.DEVICE, url.split("://", 1)[0], name)


def _check_file(url: str, config: IngestConfig) -> Source:
    if not config.allow_files or "file" not in config.allowed_schemes:
        raise SourceRefused("local files are disabled in the settings")
    path = Path(url.removeprefix("file://")).expanduser()
    if not path.is_file():
        raise SourceRefused(f"no such file: {path}")
    return Source(url, SourceKind.FILE, "file", str(path))


def av_options(source: Source, config: IngestConfig) -> dict[str, str]:
    """FFmpeg options for this source: transport and socket timeout (microseconds) for network URLs."""
    options: dict[str, str] = {}
    read_us = str(int(config.read_timeout * 1e6))
    if source.scheme in ("rtsp", "rtsps"):
        options = {**RTSP_OPTIONS, "rtsp_transport": config.rtsp_transport, "timeout": read_us}
    elif source.kind is SourceKind.NETWORK:
        # a playlist must not pull segments from local files (FFmpeg refuses by default; say it here too)
        options = {"rw_timeout": read_us, "protocol_whitelist": HTTP_PROTOCOLS}
    return {**options, **config.extra_options}


def open_source(source: Source, config: IngestConfig) -> av.container.InputContainer:
    """``av.open`` with explicit timeouts; failures become SourceUnavailable with a redacted reason."""
    fmt = config.device_format if source.kind is SourceKind.DEVICE else None
    started = time.monotonic()
    try:
        container = av.open(
            source.path, mode="r", format=fmt, options=av_options(source, config),
            timeout=(config.open_timeout_s, config.read_timeout),
        )
    except (av.FFmpegError, OSError) as exc:
        reason = describe_error(exc)
        if time.monotonic() - started >= 0.9 * min(config.open_timeout_s, 2 * config.read_timeout):
            reason = f"no answer within {time.monotonic() - started:.1f} s ({reason})"  # FFmpeg's error hides it
        raise SourceUnavailable(reason) from None
    if not container.streams.video:
        container.close()
        raise SourceUnavailable(f"{source} has no video stream")
    return container


def describe_error(exc: BaseException) -> str:
    """A one-line, credential-free description of a PyAV/OS error."""
    if isinstance(exc, av.FFmpegError):
        text = f"{type(exc).__name__}: {exc.strerror or exc}"
        if exc.filename:
            text += f" ({exc.filename})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(text)
