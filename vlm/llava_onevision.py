"""LLaVA-OneVision adapter (``LlavaOnevisionForConditionalGeneration``, transformers 5.23).

encode: frames -> SigLIP -> projector -> 2x bilinear pooling, i.e. ``LlavaOnevisionModel.
get_video_features`` without the single ``image_newline`` it appends per video; the adapter keeps
that newline and re-appends it after the visual tokens of every prompt, as the native path does.

Prompt (the llava-hf chat template for one video)::

    <|im_start|>user [<t>s ]<video>*k_1 [<t>s ]<video>*k_2 ... <video>(newline)\\n{question}
    <|im_end|><|im_start|>assistant\\n          (one line; split here for width)

Tokens are placed in time order; positions are plain 0..L-1, so kept tokens keep their relative
order with the gaps of dropped tokens closed and stay within the range the model was trained on.
With ``with_timestamps`` each frame's run of tokens is preceded by its media time as text.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from compression.tokens import TokenBlock, TokenSet
from vlm.base import Prompt, PromptBuilder, VideoLLM, time_order
from vlm.preprocess import ImageSpec, read_image_spec, resize_normalize

FRAME_BATCH = 16  # frames per vision-tower call: bounds activation memory on long chunks


class LlavaOneVision(VideoLLM):
    """LLaVA-OneVision behind the VideoLLM interface."""

    family = "llava_onevision"

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 trained: bool = True, folder: str | Path | None = None) -> None:
        super().__init__(model, tokenizer, name=name, trained=trained)
        vision = model.config.vision_config
        side = math.ceil(vision.image_size // vision.patch_size / 2)
        self.grid = (side, side)
        size = (vision.image_size, vision.image_size)
        self.image_spec = read_image_spec(folder, ImageSpec(size=size))
        self.video_token_id = int(model.config.video_token_id)

    def pixel_values(self, frames: np.ndarray) -> Tensor:
        """uint8 [F, H, W, 3] -> normalised float32 [F, 3, S, S]."""
        spec = self.image_spec
        return resize_normalize(frames, spec.size, spec.mean, spec.std, spec.resample)

    @torch.no_grad()
    def encode(self, frames: np.ndarray, timestamps: Sequence[float], frame_offset: int = 0) -> TokenBlock:
        """frames uint8 [F, H, W, 3] -> TokenBlock features [F, N, D] (N = rows * cols after pooling)."""
        if len(timestamps) != len(frames):
            raise ValueError(f"{len(timestamps)} timestamps for {len(frames)} frames")
        pixels = self.pixel_values(frames)
        feats = [self.video_features(pixels[i:i + FRAME_BATCH]) for i in range(0, pixels.shape[0], FRAME_BATCH)]
        return TokenBlock(features=torch.cat(feats).cpu(), timestamps=torch.tensor(timestamps, dtype=torch.float64),
                          grid=self.grid, frame_offset=frame_offset)

    def video_features(self, pixels: Tensor) -> Tensor:
        """pixels [F, 3, S, S] -> features [F, N, D] exactly as the native video path computes them."""
        cfg = self.model.config
        out = self.model.model.get_video_features(
            pixel_values_videos=pixels[None].to(device=self.device, dtype=self.dtype),
            vision_feature_layer=cfg.vision_feature_layer,
            vision_feature_select_strategy=cfg.vision_feature_select_strategy)
        feats = out.pooler_output[0, :-1]  # the last row is the per-video image_newline
        return feats.reshape(pixels.shape[0], -1, feats.shape[-1])

    @property
    def image_newline(self) -> Tensor:
        """The learned newline row [D] appended once after the video."""
        return self.model.model.image_newline

    def build_prompt(self, question: str, tokens: TokenSet, with_timestamps: bool = True,
                     answer_text: str | None = None) -> Prompt:
        """Prompt with exactly ``tokens`` (time order) + the newline; no video at all when empty."""
        builder = PromptBuilder(self.text_config.hidden_size)
        builder.text(self.text_ids("<|im_start|>user "))
        if len(tokens):
            self._add_video(builder, tokens, with_timestamps)
        builder.question(self.text_ids(f"\n{question}", specials=False))
        builder.text(self.text_ids("<|im_end|><|im_start|>assistant\n"))
        builder.answer(self._answer_ids(answer_text))
        return builder.build(len(tokens))

    def _add_video(self, builder: PromptBuilder, tokens: TokenSet, with_timestamps: bool) -> None:
        order = time_order(tokens)  # [K]
        feats = tokens.features[order]  # [K, D]
        _, counts = torch.unique_consecutive(tokens.frame[order], return_counts=True)
        start = 0
        for count in counts.tolist():
            if with_timestamps:
                builder.text(self.text_ids(f"{float(tokens.time[order[start]]):.1f}s "))
            builder.visual(self.video_token_id, feats[start:start + count], order[start:start + count])
            start += count
        newline = self.image_newline.detach()[None].to(feats.dtype)  # [1, D]
        builder.visual(self.video_token_id, newline, torch.tensor([-1]))
