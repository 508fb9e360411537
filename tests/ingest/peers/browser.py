"""Headless Debian Chromium with a fake webcam fed from a y4m file, and the files it needs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import av
import numpy as np

CHROMIUM_FLAGS = (
    "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync", "--disable-quic",
    "--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
    "--allow-loopback-in-peer-connection",  # offer 127.0.0.1 host candidates
    "--disable-features=WebRtcHideLocalIpsWithMdns",  # and no mDNS .local ones
)
# left half red, right half blue: easy to recognise after a lossy VP8 round trip
LEFT_RGB, RIGHT_RGB = (220, 20, 20), (20, 20, 220)


def chromium_path() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def write_halves_y4m(path: Path, *, width: int = 320, height: int = 240, fps: int = 15, seconds: float = 2.0) -> Path:
    """A raw YUV4MPEG2 clip (what Chromium's fake capture reads): red left half, blue right half."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 2] = LEFT_RGB
    image[:, width // 2 :] = RIGHT_RGB
    planes = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p").to_ndarray()
    with path.open("wb") as out:
        out.write(f"YUV4MPEG2 W{width} H{height} F{fps}:1 Ip A1:1 C420jpeg\n".encode())
        for _ in range(int(seconds * fps)):
            out.write(b"FRAME\n")
            out.write(planes.tobytes())
    return path


def launch_chromium(url: str, y4m: Path, profile: Path, log: Path) -> subprocess.Popen[bytes]:
    """Start headless Chromium on ``url`` with ``y4m`` as its webcam (stop it with ``.kill()``)."""
    binary = chromium_path()
    assert binary is not None, "chromium is not installed"
    args = [binary, *CHROMIUM_FLAGS, f"--use-file-for-fake-video-capture={y4m}", f"--user-data-dir={profile}", url]
    with log.open("wb") as sink:
        return subprocess.Popen(args, stdout=sink, stderr=subprocess.STDOUT)
