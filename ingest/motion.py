"""Per-block motion from the decoder's motion vectors (FFmpeg ``flags2=+export_mvs``).

The H.264 decoder already knows where each macroblock came from; exporting those vectors costs
almost nothing, unlike optical flow. They are averaged onto a (rows, cols) grid of the frame so a
token grid can use them directly (motion-based token merging).
"""

from __future__ import annotations

import av
import numpy as np


def enable_motion_vectors(codec_context: av.codec.context.CodecContext) -> None:
    """Ask the decoder to attach motion vectors to every inter frame (before the first decode)."""
    codec_context.flags2 |= av.codec.context.Flags2.export_mvs


def motion_grid(frame: av.VideoFrame, rows: int, cols: int) -> np.ndarray:
    """float32 [rows, cols]: mean motion magnitude (source pixels per reference step) per cell.

    Cells not covered by any vector, and intra frames (keyframes carry no vectors), are 0.
    """
    grid = np.zeros((rows, cols), np.float32)
    side = frame.side_data.get("MOTION_VECTORS")
    if side is None or len(side) == 0:
        return grid
    mvs = side.to_ndarray()
    scale = np.maximum(mvs["motion_scale"].astype(np.float32), 1.0)
    magnitude = np.hypot(mvs["motion_x"] / scale, mvs["motion_y"] / scale)
    row = np.clip(mvs["dst_y"].astype(np.int64) * rows // max(frame.height, 1), 0, rows - 1)
    col = np.clip(mvs["dst_x"].astype(np.int64) * cols // max(frame.width, 1), 0, cols - 1)
    weight = (mvs["w"].astype(np.float32) * mvs["h"].astype(np.float32))  # block area in pixels
    total = np.zeros(rows * cols, np.float64)
    area = np.zeros(rows * cols, np.float64)
    np.add.at(total, row * cols + col, magnitude * weight)
    np.add.at(area, row * cols + col, weight)
    np.divide(total, area, out=total, where=area > 0)
    return total.reshape(rows, cols).astype(np.float32)
