"""Camera credentials at rest: a stream row keeps the redacted URL, the full URL only encrypted.

``streams.source_url`` is what anyone may see (``rtsp://***@cam/x``); when the URL carries
credentials (user-info or a secret-named query parameter) the full URL is in
``streams.source_secret``, encrypted with Fernet (AES-128-CBC plus HMAC-SHA256, from the
``cryptography`` package) under ``VIDMEM_SECRET_KEY``. Only the ingest decrypts it, right before
it connects.

The key: ``VIDMEM_SECRET_KEY`` (one Fernet key, or several separated by commas: the first
encrypts, all decrypt, for rotation). Unset in embedded mode (SQLite under the data folder), a
key is generated once into ``<data_dir>/secret.key`` with mode 0600. Unset in distributed mode
(``VIDMEM_DATABASE_URL`` set), API and ingest may run on different machines, so no key is
guessed: a source with credentials is refused at registration, and a stored one fails its
stream with a reason naming the setting instead of starting.
"""

from __future__ import annotations

import logging
import os
import uuid
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from ingest.sources import has_credentials, redact_url
from store.models import Stream
from vidmem.settings import Settings

log = logging.getLogger(__name__)

KEY_FILE = "secret.key"


class CredentialsUnavailable(RuntimeError):
    """Credentials cannot be encrypted or decrypted: no key (distributed mode) or the wrong one."""


@dataclass(frozen=True)
class SealedSource:
    """A source URL as stored: ``display`` in ``source_url``, ``secret`` (or None) in ``source_secret``."""

    display: str
    secret: str | None


def seal(url: str, settings: Settings) -> SealedSource:
    """The stored form of ``url``: redacted, and encrypted in full when it carries credentials."""
    display = redact_url(url)
    if display == url:
        return SealedSource(url, None)
    return SealedSource(display, _fernet(settings).encrypt(url.encode()).decode())


def unseal(stream: Stream, settings: Settings) -> str:
    """The full URL of ``stream`` for the ingest; CredentialsUnavailable when it cannot be decrypted."""
    if stream.source_secret is None:
        return stream.source_url
    try:
        return _fernet(settings).decrypt(stream.source_secret.encode()).decode()
    except InvalidToken:
        raise CredentialsUnavailable(
            "the stored camera credentials cannot be decrypted: VIDMEM_SECRET_KEY differs from the key they were "
            "stored with"
        ) from None


def seal_plaintext(streams: list[Stream], settings: Settings) -> int:
    """Encrypt credentials of rows stored in plain text (before migration 0002); the number sealed.

    Migrations have no key, so rows are sealed by the first ingest manager that reads them.
    """
    sealed = 0
    for stream in streams:
        if stream.source_secret is not None or not has_credentials(stream.source_url):
            continue
        try:
            stored = seal(stream.source_url, settings)
        except CredentialsUnavailable as exc:
            log.warning("stream %s keeps credentials in plain text: %s", stream.id, exc)
            continue
        stream.source_url, stream.source_secret = stored.display, stored.secret
        sealed += 1
    return sealed


def _fernet(settings: Settings) -> MultiFernet:
    if settings.secret_key:
        return _from_keys(settings.secret_key)
    if not settings.is_embedded_db:
        raise CredentialsUnavailable(
            "sources with credentials need VIDMEM_SECRET_KEY in distributed mode (one Fernet key, the same on "
            "API and ingest machines)"
        )
    return _from_keys(key_file(settings.data_dir).read_text().strip())


@lru_cache(maxsize=8)
def _from_keys(keys: str) -> MultiFernet:
    try:
        return MultiFernet([Fernet(key.strip()) for key in keys.split(",") if key.strip()])
    except ValueError:
        raise CredentialsUnavailable(
            "VIDMEM_SECRET_KEY must be Fernet keys (32 url-safe base64 bytes), separated by commas"
        ) from None


def key_file(data_dir: Path) -> Path:
    """``<data_dir>/secret.key``, created once with mode 0600 (never rewritten: that would lose the credentials).

    Written to a private temporary file first and linked into place, so no process reads a half-written key.
    """
    path = data_dir / KEY_FILE
    if path.exists():
        return path
    data_dir.mkdir(parents=True, exist_ok=True)
    temporary = data_dir / f".{KEY_FILE}.{os.getpid()}.{uuid.uuid4().hex}"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(Fernet.generate_key().decode() + "\n")
    try:
        os.link(temporary, path)
    except FileExistsError:  # another process made it first: theirs is the key
        pass
    finally:
        temporary.unlink()
    return path


def encrypt_text(text: str, settings: Settings) -> str:
    """Any other secret at rest (an alert's webhook signing key or URL), with the same key as camera credentials."""
    return _fernet(settings).encrypt(text.encode()).decode()


def decrypt_text(token: str, settings: Settings) -> str:
    """The text ``encrypt_text`` stored; CredentialsUnavailable when the key differs or is missing."""
    try:
        return _fernet(settings).decrypt(token.encode()).decode()
    except InvalidToken:
        raise CredentialsUnavailable(
            "a stored secret cannot be decrypted: VIDMEM_SECRET_KEY differs from the key it was stored with"
        ) from None
