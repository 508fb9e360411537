"""Which sources the API accepts (re-exported from workers, which owns the policy)."""

from workers.sources import SourceRejected, check_source, redact_text, redact_url, register_stream

__all__ = ["SourceRejected", "check_source", "redact_text", "redact_url", "register_stream"]
