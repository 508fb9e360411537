"""Start, kill, hang and restart the GStreamer RTSP server of ``gst_rtsp_server.py``."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
from pathlib import Path

from tests.ingest.peers import skip_or_fail

SYSTEM_PYTHON = "/usr/bin/python3"  # Debian's interpreter: it has python3-gi, the venv does not
SCRIPT = Path(__file__).with_name("gst_rtsp_server.py")
DEBIAN_PACKAGES = "python3-gst-1.0 gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-{base,good,bad,ugly}"


def gst_rtsp_missing() -> str | None:
    """Why the GStreamer RTSP server cannot run here, or None when it can."""
    if not os.path.exists(SYSTEM_PYTHON):
        return f"{SYSTEM_PYTHON} is missing"
    probe = "import gi; gi.require_version('GstRtspServer', '1.0'); from gi.repository import GstRtspServer"
    done = subprocess.run([SYSTEM_PYTHON, "-c", probe], capture_output=True, timeout=30)
    if done.returncode != 0:
        return f"gst-rtsp-server is not importable by {SYSTEM_PYTHON} (install: {DEBIAN_PACKAGES})"
    return None


def need_gst_rtsp() -> None:
    """Skip (locally) or fail (CI=1) when the Debian packages are absent."""
    missing = gst_rtsp_missing()
    if missing is not None:
        skip_or_fail(missing)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RtspServer:
    """One server process on a fixed port, so it can be killed and started again at the same URL."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        self.args = args
        self.proc: subprocess.Popen[str] | None = None

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.port}/live"

    def start(self) -> RtspServer:
        self.proc = subprocess.Popen(
            [SYSTEM_PYTHON, str(SCRIPT), "--port", str(self.port), *self.args],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()  # blocks until READY (or EOF if it crashed)
        assert line.startswith("READY"), f"RTSP server did not start: {line!r}"
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.kill()
            self.proc.wait(5)

    def pause(self) -> None:
        """SIGSTOP: the sockets stay open and nothing more is sent, like a hung camera."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)
