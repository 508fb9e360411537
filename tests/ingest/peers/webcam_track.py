"""A synthetic aiortc webcam track for tests that need a WebRTC peer but no browser."""

from __future__ import annotations

import av
import numpy as np
from aiortc import VideoStreamTrack


class HalvesTrack(VideoStreamTrack):
    """A 160x120 webcam whose left half is red and right half blue."""

    async def recv(self) -> av.VideoFrame:
        pts, time_base = await self.next_timestamp()
        image = np.zeros((120, 160, 3), np.uint8)
        image[:, :80] = (220, 20, 20)
        image[:, 80:] = (20, 20, 220)
        frame = av.VideoFrame.from_ndarray(image, format="rgb24")
        frame.pts, frame.time_base = pts, time_base
        return frame
