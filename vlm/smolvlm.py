"""SmolVLM2 adapter (``SmolVLMForConditionalGeneration``, transformers 5.23): the fast CPU choice.

encode: each frame as one image without splitting, prepared like ``SmolVLMImageProcessorPil``
(longest edge to ``size``, then a square ``max_image_size`` resize, Lanczos by default), then
SigLIP + pixel-shuffle connector: ``get_image_features``. grid = (S/patch/scale)^2 tokens per frame.

Prompt (SmolVLM2's video template, ``processing_smolvlm.SmolVLMProcessor._process_video``; the
frame count is written in digits instead of num2words)::

    <|im_start|>User: You are provided the following series of {n} frames from a {H:MM:SS} [H:MM:SS] video.\\n
    [\\nFrame from mm:ss:]<fake_token_around_image><global-img><image>*k_f<fake_token_around_image> ...\\n\\n
    {question}<end_of_utterance>\\nAssistant:

Frames without kept tokens are left out; positions are plain 0..L-1 (gaps closed).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from datetime import timedelta
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compression.tokens import TokenBlock, TokenSet
from vlm.base import Prompt, PromptBuilder, VideoLLM, time_order
from vlm.preprocess import RESAMPLE_NAMES, SIGLIP_MEAN, SIGLIP_STD, as_uint8_frames, normalize, pil_resize

FRAME_BATCH = 16
INTRO = "You are provided the following series of {n} frames from a {duration} [H:MM:SS] video.\n"


def longest_edge_size(height: int, width: int, longest: int) -> tuple[int, int]:
    """``_resize_output_size_rescale_to_max_len`` of the SmolVLM image processor (5.23, copied)."""
    aspect = width / height
    if width >= height:
        width, height = longest, int(longest / aspect)
        height += height % 2
    else:
        height, width = longest, int(longest * aspect)
        width += width % 2
    return max(height, 1), max(width, 1)


class SmolVLM(VideoLLM):
    """SmolVLM2 behind the VideoLLM interface."""

    family = "smolvlm"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 trained: bool = True, folder: str | Path | None = None) -> None:
        super().__init__(model, tokenizer, name=name, trained=trained)
        cfg = model.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size // cfg.scale_factor
        self.grid = (side, side)
        self.image_size = int(cfg.vision_config.image_size)
        self.longest, self.resample = self.image_size, "lanczos"
        self.mean, self.std = SIGLIP_MEAN, SIGLIP_STD
        self._read_processor(folder)
        self.image_token_id = int(cfg.image_token_id)
        self.fake_id = tokenizer.convert_tokens_to_ids("<fake_token_around_image>")
        self.global_id = tokenizer.convert_tokens_to_ids("<global-img>")

    def _read_processor(self, folder: str | Path | None) -> None:
        path = Path(folder) / "preprocessor_config.json" if folder is not None else None
        if path is None or not path.is_file():
            return
        cfg = json.loads(path.read_text())
        self.longest = int((cfg.get("size") or {}).get("longest_edge", self.longest))
        self.image_size = int((cfg.get("max_image_size") or {}).get("longest_edge", self.image_size))
        self.resample = RESAMPLE_NAMES.get(cfg.get("resample", 1), "lanczos")
        self.mean, self.std = tuple(cfg.get("image_mean", self.mean)), tuple(cfg.get("image_std", self.std))

    def pixel_values(self, frames: np.ndarray) -> Tensor:
        """uint8 [F, H, W, 3] -> float32 [F, 3, S, S] (longest-edge resize, then square resize)."""
        x = as_uint8_frames(frames)
        x = pil_resize(x, longest_edge_size(x.shape[1], x.shape[2], self.longest), self.resample)
        x = pil_resize(x, (self.image_size, self.image_size), self.resample)
        return normalize(x, self.mean, self.std)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, timestamps: Sequence[float], frame_offset: int = 0) -> TokenBlock:
        """frames uint8 [F, H, W, 3] -> TokenBlock [F, rows*cols, D]."""
        if len(timestamps) != len(frames):
            raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
        pixels = self.pixel_values(frames)
        feats = [self.image_features(pixels[i:i + FRAME_BATCH]) for i in range(0, pixels.shape[0], FRAME_BATCH)]
        return TokenBlock(features=torch.cat(feats).cpu(), timestamps=torch.tensor(timestamps, dtype=torch.float64),
                          grid=self.grid, frame_offset=frame_offset)

    def image_features(self, pixels: Tensor) -> Tensor:
        """pixels [F, 3, S, S] -> [F, N, D] as the native path computes them."""
        out = self.model.model.get_image_features(pixel_values=pixels[None].to(self.device, self.dtype))
        feats = out.pooler_output
        feats = torch.cat(list(feats)) if isinstance(feats, list | tuple) else feats  # [F*N, D]
        return feats.reshape(pixels.shape[0], -1, feats.shape[-1])

    def _stop_ids(self) -> list[int]:
        ids = set(super()._stop_ids())
        end = self.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
        if end is not None and end != self.tokenizer.unk_token_id:
            ids.add(end)
        return sorted(ids)

    def build_prompt(self, question: str, tokens: TokenSet, with_timestamps: bool = True,
                     answer_text: str | None = None) -> Prompt:
        """Prompt with one image block per frame that keeps tokens, in time order."""
        builder = PromptBuilder(self.text_config.hidden_size)
        builder.text(self.text_ids("<|im_start|>User: "))
        if len(tokens):
            self._add_video(builder, tokens, with_timestamps)
        builder.text(self.text_ids(question, specials=False))
        builder.text(self.text_ids("<end_of_utterance>\nAssistant:"))
        builder.answer(self._answer_ids(answer_text))
        return builder.build(len(tokens))

    def _add_video(self, builder: PromptBuilder, tokens: TokenSet, with_timestamps: bool) -> None:
        order = time_order(tokens)
        feats = tokens.features[order]
        _, counts = torch.unique_consecutive(tokens.frame[order], return_counts=True)
        duration = timedelta(seconds=int(float(tokens.time.max())))
        builder.text(self.text_ids(INTRO.format(n=len(counts), duration=duration)))
        start = 0
        for count in counts.tolist():
            if with_timestamps:
                second = int(float(tokens.time[order[start]]))
                builder.text(self.text_ids(f"\nFrame from {second // 60:02d}:{second % 60:02d}:"))
            builder.text([self.fake_id, self.global_id])
            builder.visual(self.image_token_id, feats[start:start + count], order[start:start + count])
            builder.text([self.fake_id])
            start += count
        builder.text(self.text_ids("\n\n"))
