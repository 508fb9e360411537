"""Open a stream source with PyAV: network URLs, local files and capture devices.

Every open has explicit open and read timeouts. FFmpeg fires a read timeout at about twice the
configured value, so ``IngestConfig.read_timeout`` defaults to half the stall time. Credentials in
URLs never reach a log line, an exception message or a status: ``redact_text`` is the one
redaction function for everything that leaves the process.

A source string is data from a caller: it is parsed by ``urllib.parse``, refused when it holds a
control, whitespace or non-printable character (FFmpeg would send them raw: CRLF in an RTSP URL
writes commands to whatever listens), and checked against the destination policy
(``ingest.destinations``) when registered and again before every connect.
"""

from __future__ import annotations

import logging
import re
import time
import unicodedata
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import SplitResult, unquote, urlsplit

import av
import av.container

from ingest.entities import IngestConfig
from ingest.errors import SourceInvalid, SourceRefused, SourceUnavailable

log = logging.getLogger(__name__)

DEVICE_PREFIXES = ("device://", "v4l2://")
WEBRTC_PREFIX = "webrtc://"
# User-info: everything from "scheme://" to the last "@" on the line that does not cross another "scheme://",
# so passwords with "@", "/", ":" or spaces are hidden whole (a path with "@" is over-redacted, never leaked).
_USERINFO = re.compile(r"(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*://)(?:(?!://)[^\r\n])*@")
# Query-string and fragment parameters whose name says they carry a secret (case-insensitive).
_SECRET_PARAM = re.compile(
    r"(?P<key>[?&;#][^=&#;\s]*(?:pass|pwd|token|key|secret|auth|user|login|sig|cred|session)[^=&#;\s]*=)"
    r"[^&#;\s'\"]*",
    re.IGNORECASE,
)
CONNECT_FAILED = "could not open the source (the service log has the detail)"
HTTP_PROTOCOLS = "http,https,tcp,tls,crypto,httpproxy"
# Low probing: the RTSP SDP already names the codec and size, so the first frame comes in ~0.1 s, not ~1 s.
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
    path: str  # what av.open gets: the URL, a resolved file path or a device name
    host: str | None = None  # network sources: the host name the policy checks before every connect
    port: int | None = None

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
    """Hide credentials of every URL inside ``text``: user-info, and secret-named query or fragment parameters.

    The one redaction function for API fields, status reasons, logs and metrics.
    """
    text = _SECRET_PARAM.sub(r"\g<key>***", text)
    return _USERINFO.sub(r"\g<scheme>***@", text)


def has_credentials(url: str) -> bool:
    """True when ``redact_text`` would hide something in ``url``."""
    return redact_text(url) != url


def check_characters(text: str) -> None:
    """Refuse control (C0, C1, DEL), whitespace and non-printable characters, also percent-encoded controls.

    Never stripped: a URL that needs cleaning is not the URL the caller meant.
    """
    for index, char in enumerate(text):
        if char.isspace() or not char.isprintable():
            raise SourceInvalid(
                f"must not contain control, whitespace or non-printable characters "
                f"(U+{ord(char):04X} {unicodedata.name(char, 'control')} at position {index})"
            )
    decoded = unquote(text, errors="replace")
    if any(unicodedata.category(char) == "Cc" for char in decoded):
        raise SourceInvalid("must not contain percent-encoded control characters")


def check_source(url: str, config: IngestConfig) -> Source:
    """The parsed source if ``config`` allows it, else SourceRefused saying why (credentials never included)."""
    check_characters(url)
    if url.startswith(DEVICE_PREFIXES):
        return _check_device(url, config)
    if url.startswith(WEBRTC_PREFIX):
        name = url.removeprefix(WEBRTC_PREFIX).strip("/")
        if not name:
            raise SourceInvalid(f"{redact_url(url)!r} names no stream (webrtc://<name>)")
        return Source(url, SourceKind.WEBRTC, "webrtc", name)
    parts = _split(url)
    scheme = parts.scheme.lower()
    if scheme in ("", "file") or len(scheme) == 1:  # a path (one letter: a Windows drive)
        return _check_file(url, parts, config)
    if scheme not in config.allowed_schemes:
        allowed = ", ".join(config.allowed_schemes) or "none"
        raise SourceRefused(f"scheme {scheme!r} is not allowed (allowed: {allowed})")
    host, port = _host_port(url, parts)
    source = Source(url, SourceKind.NETWORK, scheme, url, host, port)
    check_destination(source, config)
    return source


def check_destination(source: Source, config: IngestConfig) -> None:
    """Re-check a checked source against the destination policy: its host's addresses now, its file's target now.

    Called at registration and before every connect; raises DestinationRefused with a generic message.
    """
    policy = config.destinations
    if policy is None:
        return
    if source.kind is SourceKind.NETWORK and source.host is not None:
        policy.check_host(source.host, source.port)
    elif source.kind is SourceKind.FILE:
        policy.check_file(source.path)


def _split(url: str) -> SplitResult:
    try:
        return urlsplit(url)
    except ValueError:  # e.g. an unbalanced IPv6 bracket
        raise SourceInvalid(f"{redact_url(url)!r} is not a valid URL") from None


def _host_port(url: str, parts: SplitResult) -> tuple[str, int | None]:
    try:
        host, port = parts.hostname, parts.port
    except ValueError:  # a port that is not a number, or out of range
        raise SourceInvalid(f"{redact_url(url)!r} has an invalid port") from None
    if not host:
        raise SourceInvalid(f"{redact_url(url)!r} has no host")
    return host, port


def _check_device(url: str, config: IngestConfig) -> Source:
    if not config.allow_devices:
        raise SourceRefused("capture devices are disabled in the settings")
    name = url.split("://", 1)[1]
    return Source(url, SourceKind.DEVICE, url.split("://", 1)[0], name)


def _check_file(url: str, parts: SplitResult, config: IngestConfig) -> Source:
    """A local file: only where the policy allows, never with ``~`` expansion, same refusal whether it exists or not."""
    if not config.allow_files or "file" not in config.allowed_schemes:
        raise SourceRefused("local files are disabled in the settings")
    raw = url
    if parts.scheme.lower() == "file":
        if parts.netloc not in ("", "localhost"):
            raise SourceInvalid("file URLs must not name a host (file:///path)")
        raw = unquote(parts.path)
    if config.destinations is None:
        path = raw if Path(raw).is_file() else None
        if path is None:
            raise SourceRefused("no such file")
        return Source(url, SourceKind.FILE, "file", path)
    return Source(url, SourceKind.FILE, "file", str(config.destinations.check_file(raw)))


def av_options(source: Source, config: IngestConfig) -> dict[str, str]:
    """FFmpeg options for this source: transport and socket timeout (microseconds) for network URLs."""
    options: dict[str, str] = {}
    read_us = str(int(config.read_timeout * 1e6))
    if source.scheme in ("rtsp", "rtsps"):
        options = {**RTSP_OPTIONS, "rtsp_transport": config.rtsp_transport, "timeout": read_us}
    elif source.kind is SourceKind.NETWORK:
        # a playlist must not pull segments from local files (FFmpeg refuses by default; say it here too), and a
        # redirect is not followed: its target would bypass the destination policy checked for this host
        options = {"rw_timeout": read_us, "protocol_whitelist": HTTP_PROTOCOLS, "max_redirects": "0"}
    elif source.kind is SourceKind.FILE:
        options = {"protocol_whitelist": "file"}  # a playlist file must not reach out to the network
    return {**options, **config.extra_options}


def open_source(source: Source, config: IngestConfig) -> av.container.InputContainer:
    """``av.open`` with explicit timeouts, after re-checking the destination policy (a name may now resolve elsewhere).

    Failures become SourceUnavailable with a redacted reason; under a destination policy a network source's
    reason is generic (an open, closed or silent port look alike to the caller) and the detail goes to the log.
    A refusal by the policy raises DestinationRefused, which is final.
    """
    check_destination(source, config)
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
        raise SourceUnavailable(_shown_reason(source, config, reason)) from None
    if not container.streams.video:
        container.close()
        raise SourceUnavailable(_shown_reason(source, config, f"{source} has no video stream"))
    return container


def _shown_reason(source: Source, config: IngestConfig, reason: str) -> str:
    """The reason callers see: the detail, or for a policed network source a generic one (the detail is logged)."""
    if config.destinations is None or source.kind is not SourceKind.NETWORK:
        return reason
    log.warning("source %s could not be opened: %s", source, reason)
    return CONNECT_FAILED


def describe_error(exc: BaseException) -> str:
    """A one-line, credential-free description of a PyAV/OS error."""
    if isinstance(exc, av.FFmpegError):
        text = f"{type(exc).__name__}: {exc.strerror or exc}"
        if exc.filename:
            text += f" ({exc.filename})"
    else:
        text = f"{type(exc).__name__}: {exc}"
    return redact_text(text)
