"""Decode only what the sampler will use.

An H.264/HEVC frame can be decoded only after every reference frame back to its keyframe, so the
unit of skipping is the group of pictures (GOP). For each demuxed packet, ``DecodePlanner`` asks:
does the next frame the sampler wants lie in this GOP (before the next keyframe)? If not, the rest
of the GOP is never sent to the decoder. With a keyframe every second and 1 fps sampling only the
keyframes are decoded; with longer GOPs the frames up to each sample are decoded and the tail of
the GOP is skipped. Non-reference frames (most B-frames) are dropped by the decoder itself
(``skip_frame = "NONREF"``). The next keyframe is predicted from the longest of the last few
keyframe intervals, which errs on the side of decoding more.
"""

from __future__ import annotations

import math
from collections import deque

from ingest.entities import SkipMode

GOP_HISTORY = 4  # keyframe intervals remembered
TIME_EPS = 1e-3  # seconds


class DecodePlanner:
    """Per-packet decode decisions for one connection (call ``reset`` on a new one)."""

    def __init__(self, mode: SkipMode) -> None:
        self.mode = mode
        self._intervals: deque[float] = deque(maxlen=GOP_HISTORY)
        self.reset()

    def reset(self) -> None:
        self._last_key: float | None = None
        self._last_packet: float | None = None
        self._step = 0.0  # seconds between two packets (frames), from the latest pair
        self._gop_skipped = False  # part of this GOP was not decoded: nothing after it decodes cleanly

    def prime(self, keyframe_times: list[float]) -> None:
        """Learn the keyframe interval before decoding (e.g. from a file's packets), so the first
        GOP need not be decoded in full."""
        for a, b in zip(keyframe_times, keyframe_times[1:], strict=False):
            if b - a > TIME_EPS:
                self._intervals.append(b - a)

    @property
    def skip_frame(self) -> str:
        """The value for ``codec_context.skip_frame``."""
        return {SkipMode.NONE: "DEFAULT", SkipMode.KEYFRAMES: "NONKEY"}.get(self.mode, "NONREF")

    @property
    def gop_seconds(self) -> float | None:
        return max(self._intervals) if self._intervals else None

    def should_decode(self, seconds: float, is_key: bool, next_due: float) -> bool:
        """Whether the packet at media time ``seconds`` must go to the decoder."""
        if self.mode is SkipMode.NONE:
            return True
        if self._last_packet is not None and seconds - self._last_packet > TIME_EPS:
            self._step = seconds - self._last_packet
        self._last_packet = seconds
        if is_key:
            return self._on_key(seconds, next_due)
        if self._last_key is None or self._gop_skipped or self.mode is SkipMode.KEYFRAMES:
            return False  # no reference yet, or a reference of this frame was skipped
        if self._target_in_gop(next_due) or seconds >= next_due - TIME_EPS:
            return True
        self._gop_skipped = True
        return False

    def can_decode(self, is_key: bool) -> bool:
        """Whether a packet the plan did not ask for could still decode cleanly (its references were)."""
        return is_key or (self._last_key is not None and not self._gop_skipped)

    def _on_key(self, seconds: float, next_due: float) -> bool:
        if self._last_key is not None and seconds - self._last_key > TIME_EPS:
            self._intervals.append(seconds - self._last_key)
        self._last_key = seconds
        self._gop_skipped = False
        if self.mode is SkipMode.KEYFRAMES:
            decode = seconds >= next_due - TIME_EPS
        else:
            decode = self._target_in_gop(next_due)
        self._gop_skipped = not decode
        return decode

    def _target_in_gop(self, next_due: float) -> bool:
        """True when the sampler's next frame (the first at or after ``next_due``) is in this GOP,
        i.e. ``next_due`` is not later than the last frame before the predicted next keyframe."""
        gop = self.gop_seconds
        if gop is None or self._last_key is None or math.isinf(next_due):
            return True
        return next_due < self._last_key + gop - max(self._step / 2, TIME_EPS)
