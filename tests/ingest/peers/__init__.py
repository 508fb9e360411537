"""Real peers for the ingest tests: an RTSP server process, a headless browser."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[3]


def skip_or_fail(reason: str) -> None:
    """Skip when a real peer cannot run here; in CI (CI=1, where it is installed) fail instead."""
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


def run_browser_driver(module: str, workdir: Path, timeout: float) -> subprocess.CompletedProcess[str]:
    """``python -m module --workdir workdir`` in a network namespace that has only loopback, so that the
    driver's servers and headless Chromium can reach nothing else; skipped without Chromium or namespaces.
    """
    from tests.ingest.peers.browser import chromium_path
    from tests.ingest.test_webrtc import _netns_missing

    missing = ("chromium is missing (Debian: chromium)" if chromium_path() is None else None) or _netns_missing()
    if missing:
        skip_or_fail(missing)
    command = f"{sys.executable} -m {module} --workdir {workdir}"
    return subprocess.run(["unshare", "-n", "sh", "-c", f"ip link set lo up; exec {command}"],
                          cwd=REPO, capture_output=True, text=True, timeout=timeout)
