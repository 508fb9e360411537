"""Qwen2-VL / Qwen2.5-VL: M-RoPE positions from the unpruned prompt really matter."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from tests.vlm.conftest import folder_of
from vlm.base import VideoLLM
from vlm.loader import load_model

TIMES = [0.0, 0.5, 1.0, 1.5]


@pytest.fixture(params=["qwen2_vl", "qwen2_5_vl"])
def sharp_qwen(request: pytest.FixtureRequest, model_cache: Path) -> VideoLLM:
    """A tiny Qwen whose q/k projections are scaled x40, so attention (and RoPE) is far from uniform."""
    model = load_model(f"tiny-random:{request.param}", device="cpu", dtype="float32", cache_dir=str(model_cache))
    with torch.no_grad():
        for layer in model.language_model.layers:
            layer.self_attn.q_proj.weight.mul_(40)
            layer.self_attn.k_proj.weight.mul_(40)
    return model


def last_logits(model: VideoLLM, embeds: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.model(inputs_embeds=embeds, position_ids=positions[:, None]).logits[0, -1]


def test_positions_when_tokens_dropped_then_kept_tokens_keep_unpruned_positions(sharp_qwen: VideoLLM,
                                                                                frames: np.ndarray) -> None:
    tokens = sharp_qwen.encode(frames, TIMES).to_tokenset()
    full = sharp_qwen.build_prompt("where?", tokens)
    keep = torch.tensor([1, 4, 8, 11])
    pruned = sharp_qwen.build_prompt("where?", tokens.gather(keep))
    assert full.position_ids is not None and pruned.position_ids is not None
    assert torch.equal(pruned.position_ids[:, pruned.token_rows], full.position_ids[:, full.token_rows[keep]])
    assert torch.equal(pruned.position_ids[:, -5:], full.position_ids[:, -5:]), "text after the video keeps its ids"


def test_positions_when_wrong_then_output_changes(sharp_qwen: VideoLLM, frames: np.ndarray) -> None:
    tokens = sharp_qwen.encode(frames, TIMES).to_tokenset().gather(torch.arange(0, 12, 2))
    prompt = sharp_qwen.build_prompt("where is the square?", tokens)
    assert prompt.position_ids is not None
    embeds = sharp_qwen.embed(prompt)
    right = last_logits(sharp_qwen, embeds, prompt.position_ids)
    shifted = prompt.position_ids.clone()
    shifted[0, prompt.token_rows] += 3  # visual tokens three temporal steps later
    flat = torch.arange(len(prompt))[None].expand(3, -1)  # plain 1D positions
    for wrong in (shifted, flat):
        assert (right - last_logits(sharp_qwen, embeds, wrong)).abs().max() > 0.05
    ours, _, _ = sharp_qwen.generate(prompt, 6)
    with torch.no_grad():
        flat_out = sharp_qwen.model.generate(
            inputs_embeds=embeds, position_ids=flat[:, None], max_new_tokens=6, do_sample=False,
            eos_token_id=sharp_qwen._eos_ids, pad_token_id=0)[0].tolist()
    assert ours != flat_out, "greedy output must depend on the M-RoPE positions"


def test_encode_when_odd_frame_count_then_last_frame_repeated(model_cache: Path, frames: np.ndarray) -> None:
    model = load_model("tiny-random:qwen2_vl", device="cpu", dtype="float32", cache_dir=str(model_cache))
    block = model.encode(frames[:3], TIMES[:3], frame_offset=4)
    assert block.features.shape[0] == 2 and block.timestamps.tolist() == [0.0, 1.0]
    assert block.grid[0] * block.grid[1] == block.features.shape[1]
    assert folder_of(model, model_cache).is_dir()
