"""Qwen2-VL and Qwen2.5-VL adapters (``Qwen2VLForConditionalGeneration``,
``Qwen2_5_VLForConditionalGeneration``, transformers 5.23).

encode: frames -> smart_resize (multiples of 28, pixel limits from the folder's
preprocessor_config.json) -> Qwen patch layout -> vision tower + 2x2 merger. One TokenBlock frame
is one *temporal patch* (2 video frames; an odd last frame is repeated, as the HF processor does),
its timestamp the first frame's; grid = merged (rows, cols).

Prompt (Qwen chat template)::

    <|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\n[Frames at 0.0s, 2.0s.\\n]
    <|vision_start|><|video_pad|>*K<|vision_end|>{question}<|im_end|>\\n<|im_start|>assistant\\n

M-RoPE positions: the frames that still have tokens are laid out as one unpruned virtual video
(T' temporal patches of rows x cols); ``get_rope_index`` runs on that full prompt, then the
columns of dropped tokens are removed. Kept tokens keep their (t, h, w), the text after the video
keeps its original positions, and frames without tokens close their gap.
Qwen2.5-VL's temporal spacing uses ``second_per_grid_ts = SECONDS_PER_GRID`` for every patch.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compression.tokens import TokenBlock, TokenSet
from vlm.base import Prompt, PromptBuilder, VideoLLM, time_order
from vlm.preprocess import CLIP_MEAN, CLIP_STD, as_uint8_frames, normalize, pil_resize, qwen_patchify, smart_resize

SYSTEM = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
FRAME_BATCH = 16  # frames per vision call (even: temporal patches never straddle two calls)
SECONDS_PER_GRID = 1.0
DEFAULT_PIXELS = (56 * 56, 392 * 392)  # min, max pixels per frame when the folder does not say


def read_pixel_limits(folder: str | Path | None) -> tuple[int, int, tuple, tuple]:
    """(min_pixels, max_pixels, mean, std) from the folder's preprocessor config, else defaults."""
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = Path(folder) / name if folder is not None else None
        if path is not None and path.is_file():
            cfg = json.loads(path.read_text())
            size = cfg.get("size") or {}
            low = cfg.get("min_pixels") or size.get("shortest_edge") or DEFAULT_PIXELS[0]
            high = cfg.get("max_pixels") or size.get("longest_edge") or DEFAULT_PIXELS[1]
            return int(low), int(high), tuple(cfg.get("image_mean", CLIP_MEAN)), tuple(cfg.get("image_std", CLIP_STD))
    return DEFAULT_PIXELS[0], DEFAULT_PIXELS[1], CLIP_MEAN, CLIP_STD


class Qwen2VL(VideoLLM):
    """Qwen2-VL behind the VideoLLM interface (Qwen2.5-VL subclasses it)."""

    family = "qwen2_vl"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 trained: bool = True, folder: str | Path | None = None) -> None:
        super().__init__(model, tokenizer, name=name, trained=trained)
        vision = model.config.vision_config
        self.patch = int(vision.patch_size)
        self.merge = int(vision.spatial_merge_size)
        self.temporal = int(vision.temporal_patch_size)
        self.min_pixels, self.max_pixels, self.mean, self.std = read_pixel_limits(folder)
        cfg = model.config
        self.video_token_id = int(cfg.video_token_id)
        self.vision_start_id = int(cfg.vision_start_token_id)
        self.vision_end_id = int(cfg.vision_end_token_id)

    def frame_size(self, height: int, width: int) -> tuple[int, int]:
        return smart_resize(height, width, self.patch * self.merge, self.min_pixels, self.max_pixels)

    def pixel_values(self, frames: np.ndarray) -> tuple[Tensor, Tensor]:
        """uint8 [F, H, W, 3] -> (patches [T*h*w, 3*temporal*patch*patch], grid_thw [1, 3])."""
        frames_t = as_uint8_frames(frames)
        size = self.frame_size(frames_t.shape[1], frames_t.shape[2])
        pixels = normalize(pil_resize(frames_t, size), self.mean, self.std)  # [F, 3, h, w]
        return qwen_patchify(pixels, self.patch, self.temporal, self.merge)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, timestamps: Sequence[float], frame_offset: int = 0) -> TokenBlock:
        """frames uint8 [F, H, W, 3] -> TokenBlock [ceil(F/2), rows*cols, D], one frame per temporal patch."""
        if len(timestamps) != len(frames):
            raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
        feats, grid = [], (0, 0)
        for i in range(0, len(frames), FRAME_BATCH):
            block, grid = self.video_features(frames[i:i + FRAME_BATCH])
            feats.append(block)
        times = torch.tensor(timestamps, dtype=torch.float64)[:: self.temporal]
        return TokenBlock(features=torch.cat(feats).cpu(), timestamps=times, grid=grid, frame_offset=frame_offset)

    def video_features(self, frames: np.ndarray) -> tuple[Tensor, tuple[int, int]]:
        """frames uint8 [F, H, W, 3] -> (features [T, rows*cols, D], (rows, cols))."""
        patches, thw = self.pixel_values(frames)
        out = self.model.model.get_video_features(pixel_values_videos=patches.to(self.device, self.dtype),
                                                  video_grid_thw=thw.to(self.device))
        feats = out.pooler_output[0]  # [T*rows*cols, D] in (t, row, col) order
        t, h, w = thw[0].tolist()
        rows, cols = h // self.merge, w // self.merge
        return feats.reshape(t, rows * cols, feats.shape[-1]), (rows, cols)

    def _rope_kwargs(self, slots: int) -> dict:
        return {}

    def build_prompt(self, question: str, tokens: TokenSet, with_timestamps: bool = True,
                     answer_text: str | None = None) -> Prompt:
        """Prompt with exactly ``tokens`` in time order and their unpruned-prompt M-RoPE positions."""
        builder = PromptBuilder(self.text_config.hidden_size)
        builder.text(self.text_ids(SYSTEM))
        order = time_order(tokens)
        slots, columns = self._video_layout(tokens, order)
        if len(tokens) and with_timestamps:
            times = ", ".join(f"{t:.1f}s" for t in self._slot_times(tokens, order).tolist())
            builder.text(self.text_ids(f"Frames at {times}.\n"))
        video_at = len(builder.ids)
        if len(tokens):
            builder.text([self.vision_start_id])
            builder.visual(self.video_token_id, tokens.features[order], order)
            builder.text([self.vision_end_id])
        builder.text(self.text_ids(question, specials=False))
        builder.text(self.text_ids("<|im_end|>\n<|im_start|>assistant\n"))
        builder.answer(self._answer_ids(answer_text))
        return builder.build(len(tokens), self._positions(builder.ids, video_at, slots, columns, tokens.grid))

    def _video_layout(self, tokens: TokenSet, order: Tensor) -> tuple[int, Tensor]:
        """(T' frames that keep tokens, column [K] of each time-ordered token in the unpruned video)."""
        frames = tokens.frame[order]
        unique, slot = torch.unique_consecutive(frames, return_inverse=True)
        rows, cols = tokens.grid
        return len(unique), slot * rows * cols + tokens.row[order] * cols + tokens.col[order]

    @staticmethod
    def _slot_times(tokens: TokenSet, order: Tensor) -> Tensor:
        _, counts = torch.unique_consecutive(tokens.frame[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        return tokens.time[order][starts]

    def _positions(self, ids: list[int], video_at: int, slots: int, columns: Tensor,
                   grid: tuple[int, int]) -> Tensor:
        """[3, L] positions of the pruned prompt, taken from the unpruned prompt's rope index."""
        if slots == 0:
            return torch.arange(len(ids))[None].expand(3, -1).clone()
        rows, cols = grid
        full_video = [self.vision_start_id] + [self.video_token_id] * (slots * rows * cols) + [self.vision_end_id]
        k = columns.shape[0]
        full_ids = torch.tensor(ids[:video_at] + full_video + ids[video_at + k + 2:])[None]
        thw = torch.tensor([[slots, rows * self.merge, cols * self.merge]])
        full_pos, _ = self.model.model.get_rope_index(full_ids, mm_token_type_ids=(full_ids == self.video_token_id)
                                                      .int() * 2, video_grid_thw=thw, **self._rope_kwargs(slots))
        full_pos = full_pos[:, 0].cpu()  # [3, L_full]
        first_pad = video_at + 1
        keep = torch.cat([torch.arange(first_pad), first_pad + columns,
                          torch.arange(first_pad + slots * rows * cols, full_ids.shape[1])])
        return full_pos[:, keep]


class Qwen25VL(Qwen2VL):
    """Qwen2.5-VL: Qwen2-VL plus absolute temporal spacing (second_per_grid_ts)."""

    family = "qwen2_5_vl"

    def _rope_kwargs(self, slots: int) -> dict:
        return {"second_per_grid_ts": torch.tensor([SECONDS_PER_GRID])}
