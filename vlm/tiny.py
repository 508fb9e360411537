"""Tiny models for tests: small configs per family and an offline BPE tokenizer.

``build_tiny(family, folder, seed)`` writes a complete model folder (``config.json``,
``model.safetensors``, tokenizer files, ``preprocessor_config.json``, ``vidmem.json``) with
``save_pretrained``; it is then loaded through the same ``from_pretrained`` path as a real
checkpoint. The tokenizer is a byte-level BPE trained in-process with ``tokenizers`` on a fixed
corpus (deterministic, well under a second) and carries the family's special tokens.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from transformers import (
    LlavaOnevisionConfig,
    PretrainedConfig,
    PreTrainedTokenizerFast,
    Qwen2_5_VLConfig,
    Qwen2VLConfig,
    SmolVLMConfig,
)

log = logging.getLogger(__name__)

BASE_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
FAMILY_SPECIALS: dict[str, list[str]] = {
    "llava_onevision": [*BASE_SPECIALS, "<image>", "<video>"],
    "qwen2_vl": [*BASE_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "qwen2_5_vl": [*BASE_SPECIALS, "<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>"],
    "smolvlm": [*BASE_SPECIALS, "<fake_token_around_image>", "<image>", "<global-img>", "<end_of_utterance>"],
}
CORPUS = [
    "the quick brown fox jumps over the lazy dog", "a video of a person walking in the park",
    "what is happening in this video? describe the scene in detail.",
    "which shape moved left, right, up or down? answer with a letter: A B C D",
    "red green blue yellow white black orange purple circle square triangle star",
    "how many objects are there? when did it appear? where is it now? yes no",
    "0 1 2 3 4 5 6 7 8 9 10 12.5s 0.0s 1.5s seconds frame time first last before after",
]


def tiny_tokenizer(family: str, vocab_size: int = 400) -> PreTrainedTokenizerFast:
    """A byte-level BPE with the family's special tokens; eos '<|im_end|>', pad '<|endoftext|>'."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    specials = FAMILY_SPECIALS[family]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 20, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                   additional_special_tokens=specials[3:])


def _text(vocab: int, ids: dict[str, int], **kw: Any) -> dict[str, Any]:
    cfg = {"vocab_size": vocab, "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2,
           "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 4096,
           "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
           "pad_token_id": ids["<|endoftext|>"]}
    cfg.update(kw)
    return cfg


def llava_onevision_config(vocab: int, ids: dict[str, int], image_size: int = 56, **text: Any) -> PretrainedConfig:
    """SigLIP 2 layers, width 64, 56 px / patch 14 (4x4 patches -> 2x2 pooled = 4 tokens per frame)."""
    vision = {"model_type": "siglip_vision_model", "hidden_size": 64, "intermediate_size": 128,
              "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": image_size, "patch_size": 14,
              "vision_use_head": False}
    return LlavaOnevisionConfig(
        vision_config=vision, text_config={"model_type": "qwen2", **_text(vocab, ids, **text)},
        image_token_index=ids["<image>"], video_token_index=ids["<video>"], vision_feature_layer=-1,
        vision_feature_select_strategy="full", image_grid_pinpoints=[[image_size, image_size]],
        tie_word_embeddings=False)


def _qwen_text(vocab: int, ids: dict[str, int]) -> dict[str, Any]:
    return _text(vocab, ids, rope_parameters={"rope_type": "default", "rope_theta": 10000.0,
                                              "mrope_section": [2, 3, 3]})


def _qwen_ids(ids: dict[str, int]) -> dict[str, int]:
    return {"vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"]}


def qwen2_vl_config(vocab: int, ids: dict[str, int]) -> PretrainedConfig:
    """Qwen2-VL vision 2 blocks, width 64, patch 14, 2x2 merge, temporal patch 2."""
    vision = {"depth": 2, "embed_dim": 64, "hidden_size": 64, "num_heads": 4, "mlp_ratio": 2, "patch_size": 14,
              "spatial_merge_size": 2, "temporal_patch_size": 2}
    return Qwen2VLConfig(vision_config=vision, text_config=_qwen_text(vocab, ids), tie_word_embeddings=False,
                         **_qwen_ids(ids))


def qwen2_5_vl_config(vocab: int, ids: dict[str, int]) -> PretrainedConfig:
    """Qwen2.5-VL vision 2 blocks (block 1 full attention), width 64, patch 14, window 56."""
    vision = {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 4, "out_hidden_size": 64,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 56,
              "fullatt_block_indexes": [1], "tokens_per_second": 2}
    return Qwen2_5_VLConfig(vision_config=vision, text_config=_qwen_text(vocab, ids), tie_word_embeddings=False,
                            **_qwen_ids(ids))


def smolvlm_config(vocab: int, ids: dict[str, int]) -> PretrainedConfig:
    """SigLIP 2 layers, 64 px / patch 16 (4x4 patches), pixel shuffle x2 -> 4 tokens per frame."""
    vision = {"hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
              "image_size": 64, "patch_size": 16}
    return SmolVLMConfig(vision_config=vision, text_config={"model_type": "llama", **_text(vocab, ids)},
                         scale_factor=2, image_token_id=ids["<image>"], tie_word_embeddings=False)


CONFIGS: dict[str, Callable[[int, dict[str, int]], PretrainedConfig]] = {
    "llava_onevision": llava_onevision_config, "qwen2_vl": qwen2_vl_config,
    "qwen2_5_vl": qwen2_5_vl_config, "smolvlm": smolvlm_config,
}


def _save_image_processor(family: str, config: PretrainedConfig, folder: Path) -> None:
    """The family's PIL image processor settings, so tests can compare preprocessing against HF."""
    from transformers import LlavaOnevisionImageProcessorPil, Qwen2VLImageProcessorPil, SmolVLMImageProcessorPil

    size = config.vision_config.image_size if family in ("llava_onevision", "smolvlm") else 0
    if family == "llava_onevision":
        proc = LlavaOnevisionImageProcessorPil(size={"height": size, "width": size}, image_mean=[0.5] * 3,
                                               image_std=[0.5] * 3)
    elif family == "smolvlm":
        proc = SmolVLMImageProcessorPil(size={"longest_edge": size}, max_image_size={"longest_edge": size},
                                        do_image_splitting=False, image_mean=[0.5] * 3, image_std=[0.5] * 3)
    else:
        proc = Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=112 * 112)
    proc.save_pretrained(folder)


def build_tiny(family: str, folder: str | Path, seed: int = 0) -> Path:
    """Write a tiny randomly initialised model of ``family`` (seeded) with its tokenizer to ``folder``."""
    from transformers import AutoModelForImageTextToText

    if family not in CONFIGS:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(CONFIGS)}")
    folder = Path(folder)
    tok = tiny_tokenizer(family)
    ids = {t: tok.convert_tokens_to_ids(t) for t in FAMILY_SPECIALS[family]}
    config = CONFIGS[family](len(tok), ids)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config).eval()
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    _save_image_processor(family, config, folder)
    (folder / "vidmem.json").write_text(json.dumps({"trained": False, "family": family, "seed": seed}))
    log.info("built tiny %s model (%d parameters) in %s", family, sum(p.numel() for p in model.parameters()),
             folder)
    return folder
