"""Deliver frames at the target rate and resize them once.

The sampler cuts media time into slots of ``1 / sample_fps`` seconds and keeps the first decoded
frame of each slot. Frames are converted to RGB and resized in one swscale pass (area averaging
when shrinking), so no frame is ever converted at full size only to be thrown away.
"""

from __future__ import annotations

import math

import av
import numpy as np

SLOT_EPS = 1e-6  # seconds: a frame stamped 0.9999999 s is in slot 1 at 1 fps, not slot 0


class Sampler:
    """At most one frame per slot of ``1 / sample_fps`` seconds of media time."""

    def __init__(self, sample_fps: float) -> None:
        self.sample_fps = sample_fps
        self._last_slot: int | None = None

    @property
    def period(self) -> float:
        return 1.0 / self.sample_fps

    @property
    def next_due(self) -> float:
        """Media time from which the next frame will be accepted (-inf before the first one)."""
        if self._last_slot is None:
            return -math.inf
        return (self._last_slot + 1) * self.period

    def slot(self, seconds: float) -> int:
        return math.floor(seconds * self.sample_fps + SLOT_EPS)

    def accept(self, seconds: float) -> bool:
        """True (and the slot is taken) when a frame at ``seconds`` opens a new slot."""
        slot = self.slot(seconds)
        if self._last_slot is not None and slot <= self._last_slot:
            return False
        self._last_slot = slot
        return True


def to_image(frame: av.VideoFrame, size_hw: tuple[int, int] | None) -> np.ndarray:
    """RGB uint8 [H, W, 3] at ``size_hw`` (height, width), or at the frame's own size when None."""
    height, width = size_hw if size_hw is not None else (frame.height, frame.width)
    interpolation = "AREA" if height * width < frame.height * frame.width else "BILINEAR"
    rgb = frame.reformat(width=width, height=height, format="rgb24", interpolation=interpolation)
    return rgb.to_ndarray()
