"""Encode the chunks of several streams in one vision forward pass.

A worker with chunks of several streams waiting encodes them together: the frames of every clip
are stacked and run through the vision tower in calls of up to ``max_frames`` frames, then split
back per clip. For the frame-wise families (LLaVA-OneVision, SmolVLM) every frame is encoded on
its own, so the result equals ``model.encode`` of each clip up to floating-point summation order
(different batch shapes). Qwen-VL encodes temporal patches over a per-clip frame size, so its clips
are encoded one after the other (same result, no gain).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from compression.tokens import TokenBlock
from vlm.base import VideoLLM

MAX_FRAMES = 128  # frames per vision-tower call: bounds activation memory of a large batch


@dataclass(frozen=True)
class Clip:
    """One chunk to encode: frames uint8 [F, H, W, 3], their media times, the stream-wide index of frame 0."""

    frames: np.ndarray
    timestamps: Sequence[float]
    frame_offset: int = 0


def frame_features(model: VideoLLM) -> Callable[[Tensor], Tensor] | None:
    """The family's per-frame feature function ``pixels [F, 3, S, S] -> [F, N, D]``, None when not frame-wise."""
    from vlm.llava_onevision import LlavaOneVision

    if isinstance(model, LlavaOneVision):
        return model.video_features
    try:
        from vlm.smolvlm import SmolVLM
    except ImportError:
        return None
    return model.image_features if isinstance(model, SmolVLM) else None


@torch.no_grad()
def encode_many(model: VideoLLM, clips: Sequence[Clip], max_frames: int = MAX_FRAMES) -> list[TokenBlock]:
    """``[model.encode(c.frames, c.timestamps, c.frame_offset) for c in clips]`` with shared forward passes."""
    features = frame_features(model)
    if features is None or len(clips) < 2:
        return [model.encode(c.frames, c.timestamps, c.frame_offset) for c in clips]
    for clip in clips:
        if len(clip.timestamps) != len(clip.frames):
            raise ValueError(f"{len(clip.timestamps)} timestamps for {len(clip.frames)} frames")
    pixels = _pixels(model, clips)  # [sum F, 3, S, S]
    feats: Tensor = torch.cat([features(pixels[i:i + max_frames]) for i in range(0, pixels.shape[0], max_frames)])
    feats = feats.cpu()
    blocks, start = [], 0
    for clip in clips:
        n = len(clip.frames)
        blocks.append(TokenBlock(features=feats[start:start + n].clone(),  # its own storage, not a view
                                 timestamps=torch.tensor(clip.timestamps, dtype=torch.float64),
                                 grid=model.grid, frame_offset=clip.frame_offset))
        start += n
    return blocks


def _pixels(model: VideoLLM, clips: Sequence[Clip]) -> Tensor:
    """Every clip's preprocessed frames, in order; clips of one frame size are resized in one call (frame-wise too)."""
    if len({np.asarray(c.frames).shape[1:] for c in clips}) == 1:
        return model.pixel_values(np.concatenate([np.asarray(c.frames) for c in clips]))
    return torch.cat([model.pixel_values(c.frames) for c in clips])
