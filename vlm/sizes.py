"""Real-dimension configs (random weights) for benchmarks: no download needed.

Dimensions are those of the public checkpoints' config.json files:
llava-hf/llava-onevision-qwen2-0.5b-ov-hf and -7b-ov-hf, Qwen/Qwen2-VL-2B-Instruct,
Qwen/Qwen2.5-VL-3B-Instruct, HuggingFaceTB/SmolVLM2-256M-Video-Instruct and -500M-.
Special-token ids are taken from the tokenizer the benchmark uses, so prompts stay in range.
"""

from __future__ import annotations

from typing import Any

from transformers import LlavaOnevisionConfig, PretrainedConfig, Qwen2_5_VLConfig, Qwen2VLConfig, SmolVLMConfig

SIGLIP_SO400M = {"model_type": "siglip_vision_model", "hidden_size": 1152, "intermediate_size": 4304,
                 "num_hidden_layers": 26, "num_attention_heads": 16, "image_size": 384, "patch_size": 14,
                 "vision_use_head": False}
QWEN2_TEXT = {
    "0.5b": {"hidden_size": 896, "intermediate_size": 4864, "num_hidden_layers": 24, "num_attention_heads": 14,
             "num_key_value_heads": 2, "vocab_size": 152000, "tie_word_embeddings": True},
    "7b": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28, "num_attention_heads": 28,
           "num_key_value_heads": 4, "vocab_size": 152128, "tie_word_embeddings": False},
}
VARIANTS = {"llava_onevision": ["0.5b", "7b"], "qwen2_vl": ["2b"], "qwen2_5_vl": ["3b"],
            "smolvlm": ["256m", "500m"]}


def llava_onevision(ids: dict[str, int], variant: str = "0.5b") -> PretrainedConfig:
    text = {"model_type": "qwen2", "max_position_embeddings": 32768, "rope_theta": 1000000.0,
            **QWEN2_TEXT[variant]}
    return LlavaOnevisionConfig(vision_config=SIGLIP_SO400M, text_config=text, image_token_index=ids["<image>"],
                                video_token_index=ids["<video>"], vision_feature_layer=-1,
                                vision_feature_select_strategy="full", image_grid_pinpoints=[[384, 384]],
                                tie_word_embeddings=text["tie_word_embeddings"])


def _qwen_ids(ids: dict[str, int]) -> dict[str, int]:
    return {"vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
            "image_token_id": ids["<|image_pad|>"], "video_token_id": ids["<|video_pad|>"]}


def qwen2_vl(ids: dict[str, int], variant: str = "2b") -> PretrainedConfig:
    vision = {"depth": 32, "embed_dim": 1280, "hidden_size": 1536, "num_heads": 16, "mlp_ratio": 4,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2}
    text = {"vocab_size": 151936, "hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28,
            "num_attention_heads": 12, "num_key_value_heads": 2, "max_position_embeddings": 32768,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
    return Qwen2VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True, **_qwen_ids(ids))


def qwen2_5_vl(ids: dict[str, int], variant: str = "3b") -> PretrainedConfig:
    vision = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "out_hidden_size": 2048,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [7, 15, 23, 31], "tokens_per_second": 2}
    text = {"vocab_size": 151936, "hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
            "num_attention_heads": 16, "num_key_value_heads": 2, "max_position_embeddings": 128000,
            "tie_word_embeddings": True,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]}}
    return Qwen2_5_VLConfig(vision_config=vision, text_config=text, tie_word_embeddings=True, **_qwen_ids(ids))


def smolvlm(ids: dict[str, int], variant: str = "256m") -> PretrainedConfig:
    vision = {"hidden_size": 768, "intermediate_size": 3072, "num_hidden_layers": 12, "num_attention_heads": 12,
              "image_size": 512, "patch_size": 16}
    sizes: dict[str, dict[str, Any]] = {
        "256m": {"hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
                 "num_key_value_heads": 3},
        "500m": {"hidden_size": 960, "intermediate_size": 2560, "num_hidden_layers": 32, "num_attention_heads": 15,
                 "num_key_value_heads": 5},
    }
    text = {"model_type": "llama", "vocab_size": 49280, "max_position_embeddings": 8192, "rope_theta": 100000.0,
            "tie_word_embeddings": False, **sizes[variant]}
    return SmolVLMConfig(vision_config=vision, text_config=text, scale_factor=4, image_token_id=ids["<image>"])


REAL = {"llava_onevision": llava_onevision, "qwen2_vl": qwen2_vl, "qwen2_5_vl": qwen2_5_vl, "smolvlm": smolvlm}


def real_config(family: str, ids: dict[str, int], variant: str | None = None) -> PretrainedConfig:
    """The config of ``family`` at real dimensions; ``variant`` picks a size (see VARIANTS)."""
    if family not in REAL:
        raise ValueError(f"unknown family {family!r}; choose from {sorted(REAL)}")
    variant = variant or VARIANTS[family][0]
    if variant not in VARIANTS[family]:
        raise ValueError(f"unknown size {variant!r} for {family}; choose from {VARIANTS[family]}")
    return REAL[family](ids, variant)
