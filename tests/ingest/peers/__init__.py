"""Real peers for the ingest tests: an RTSP server process, a headless browser."""

from __future__ import annotations

import os

import pytest


def skip_or_fail(reason: str) -> None:
    """Skip when a real peer cannot run here; in CI (CI=1, where it is installed) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)
