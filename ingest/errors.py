"""The ingest package's domain errors. Messages never contain credentials (see ``redact_url``)."""

from __future__ import annotations


class IngestError(Exception):
    """Base class of everything ingest raises on purpose."""


class SourceRefused(IngestError):
    """The URL is not allowed by the configuration (scheme, local file, device); never retried."""


class SourceUnavailable(IngestError):
    """The source could not be opened or read (refused, timed out, corrupt); may be retried."""


class SourceInvalid(SourceRefused):
    """The source string itself is malformed (control characters, whitespace, not a URL); never retried."""


class DestinationRefused(SourceRefused):
    """The source points where the destination policy does not allow; the message never says more than that."""
