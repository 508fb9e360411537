"""LLaVA-OneVision specifics: pooled grid, the re-appended image_newline, timestamps as text."""

from __future__ import annotations

import numpy as np
import torch

from vlm.base import VideoLLM

TIMES = [0.0, 0.5, 1.0, 12.5]


def test_encode_when_frames_given_then_block_has_pooled_grid(llava: VideoLLM, frames: np.ndarray) -> None:
    block = llava.encode(frames, TIMES, frame_offset=7)
    assert block.features.shape == (4, 4, 64), block.features.shape
    assert block.grid == (2, 2)
    assert block.frame_offset == 7
    assert block.timestamps.dtype == torch.float64 and block.timestamps.tolist() == TIMES


def test_build_prompt_when_tokens_kept_then_newline_follows_them(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset().gather(torch.tensor([1, 14]))
    prompt = llava.build_prompt("when?", tokens)
    assert torch.equal(prompt.visual[-1], llava.image_newline.detach())
    assert prompt.visual.shape[0] == 3


def test_build_prompt_when_timestamps_then_each_kept_frame_is_labelled(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset().gather(torch.tensor([0, 1, 13]))
    text = llava.tokenizer.decode(llava.build_prompt("when?", tokens).input_ids)
    assert "0.0s" in text and "12.5s" in text and "0.5s" not in text, text
