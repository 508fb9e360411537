"""vidmem-tiny's architecture and tokenizer, and the shared scoring of multiple-choice questions.

The model is a stock ``LlavaOnevisionForConditionalGeneration`` (SigLIP vision tower, 2-layer MLP
projector, 2x bilinear pooling, Qwen2 LLM) at toy width, so it loads and runs through
``vlm.load_model`` like any real LLaVA-OneVision checkpoint. The tokenizer is a byte-level BPE
trained in-process on the benchmark's own question texts and prompt pieces (a few hundred ids).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch
from transformers import LlavaOnevisionConfig, LlavaOnevisionForConditionalGeneration, PreTrainedTokenizerFast

from bench.questions import ALL_NAMES, LETTERS, Question, make_questions
from bench.streamgen import COLOURS, DIRECTIONS, SHAPES, StreamSpec, build_schedule
from compression.tokens import TokenSet

ATTN = "sdpa"
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<image>", "<video>"]


@dataclass(frozen=True)
class Arch:
    image_size: int = 96
    patch_size: int = 16
    vision_hidden: int = 96
    vision_layers: int = 1
    feature_layer: int = -1  # the output of the one encoder layer (patches see each other once)
    text_hidden: int = 128
    text_layers: int = 4
    heads: int = 4
    kv_heads: int = 2
    vocab_size: int = 384
    # init gain of the projector's output layer: the stock 0.02-std init makes projected visual tokens
    # ~0.04 in norm against ~0.23 for text embeddings, and the LLM then ignores them (measured: a 1-frame
    # "name the object in view" caption stays near its prior with gain 1, reaches 85% first-token accuracy
    # in 300 steps with gain 10)
    projector_gain: float = 10.0
    words: bool = False  # v2: answers in words, one token per answer (see ``build_tokenizer``)


# vidmem-tiny v2: 12x12 patches of 8 px pooled to 6x6 = 36 tokens per frame, a deeper and wider LLM
V2 = Arch(patch_size=8, vision_layers=2, text_hidden=160, text_layers=6, words=True)


def answer_words() -> list[str]:
    """Every answer that is not an object name, each to be one token: colours, shapes, directions, minutes."""
    return [*COLOURS, *SHAPES, *DIRECTIONS, *(f"minute {m}" for m in range(1, MAX_MINUTE + 1))]


MAX_MINUTE = 30


def _corpus(words: bool = False) -> list[str]:
    """Question texts of many schedules (no rendering), prompt pieces and frame timestamps."""
    texts = ["<|im_start|>user ", "<|im_end|><|im_start|>assistant\n", *LETTERS]
    if words:
        from bench.tiny_data import clip_questions

        texts += [q.prompt for seed in range(300) for q in clip_questions(seed, ("short", "long", "memory")[seed % 3])]
    for seed in range(400):
        long = seed % 4 == 0
        spec = StreamSpec(
            seed=seed,
            seconds=300 if long else 40,
            gap_s=(15, 40) if long else (2, 5),
            life_s=(20, 60) if long else (3, 8),
            event_grid_s=15 if long else 1,
        )
        times = np.arange(0, 240, 15.0) if long else np.arange(seed % 20, seed % 20 + 16, 1.0)
        texts += [q.text for q in make_questions(build_schedule(spec), times, seed)]
    texts += [f"{t:.1f}s " for t in range(0, 3600)]
    return texts


@lru_cache(maxsize=4)
def build_tokenizer(vocab_size: int = 384, words: bool = False) -> PreTrainedTokenizerFast:
    """Deterministic byte-level BPE with LLaVA-OneVision's special tokens; eos '<|im_end|>'.

    ``words`` (v2): trained on the honest word prompts too, and every answer word (``answer_words``)
    is one token, so an option's likelihood is one softmax entry at the answer position."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(_corpus(words), trainer)
    # every object name ("red circle", with and without a leading space) is one token: an option then
    # matches what the model saw or was asked about token for token, the lookup a small transformer
    # learns fastest (with two-word names it must also bind colour to shape inside every option)
    tok.add_tokens([AddedToken(text, normalized=False) for name in ALL_NAMES for text in (f" {name}", name)])
    if words:
        tok.add_tokens([AddedToken(text, normalized=False, single_word=True) for word in answer_words()
                        for text in (f" {word}", word)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|im_end|>", pad_token="<|endoftext|>", additional_special_tokens=SPECIALS[3:]
    )


def build_model(
    arch: Arch, tokenizer: PreTrainedTokenizerFast, seed: int = 0
) -> LlavaOnevisionForConditionalGeneration:
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIALS}
    vision = {
        "model_type": "siglip_vision_model",
        "hidden_size": arch.vision_hidden,
        "intermediate_size": 2 * arch.vision_hidden,
        "num_hidden_layers": arch.vision_layers,
        "num_attention_heads": arch.heads,
        "image_size": arch.image_size,
        "patch_size": arch.patch_size,
        "vision_use_head": False,
    }
    text = {
        "model_type": "qwen2",
        "vocab_size": len(tokenizer),
        "hidden_size": arch.text_hidden,
        "intermediate_size": 3 * arch.text_hidden,
        "num_hidden_layers": arch.text_layers,
        "num_attention_heads": arch.heads,
        "num_key_value_heads": arch.kv_heads,
        "max_position_embeddings": 4096,
        "bos_token_id": ids["<|endoftext|>"],
        "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    config = LlavaOnevisionConfig(
        vision_config=vision,
        text_config=text,
        image_token_index=ids["<image>"],
        video_token_index=ids["<video>"],
        vision_feature_layer=arch.feature_layer,
        vision_feature_select_strategy="full",
        image_grid_pinpoints=[[arch.image_size, arch.image_size]],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    config._attn_implementation = ATTN
    model = LlavaOnevisionForConditionalGeneration(config)
    with torch.no_grad():
        model.model.multi_modal_projector.linear_2.weight.mul_(arch.projector_gain)
    return model


def save_preprocessor(folder: Path, image_size: int) -> None:
    """SigLIP normalisation, bicubic resize to the model's fixed input size (read by vlm.preprocess)."""
    cfg = {
        "image_processor_type": "LlavaOnevisionImageProcessor",
        "size": {"height": image_size, "width": image_size},
        "image_mean": [0.5, 0.5, 0.5],
        "image_std": [0.5, 0.5, 0.5],
        "resample": 3,
        "do_resize": True,
        "do_rescale": True,
        "rescale_factor": 1 / 255,
        "do_normalize": True,
        "do_convert_rgb": True,
    }
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg, indent=1))


def letter_ids(tokenizer: PreTrainedTokenizerFast) -> list[int]:
    return [tokenizer(x, add_special_tokens=False)["input_ids"][0] for x in LETTERS]


def score_question(model, question: Question, tokens: TokenSet) -> tuple[bool, str]:  # type: ignore[no-untyped-def]
    """Pick the most likely valid letter with the vlm adapter's ``choice_logprobs`` (same prompt as answering)."""
    letters = list(LETTERS[: len(question.choices)])
    logp = model.choice_logprobs(question.text, [tokens], letters)[0]
    picked = letters[int(torch.argmax(logp))]
    return picked == question.answer, picked


def accuracy_by_type(results: Sequence[tuple[str, bool]]) -> dict[str, dict[str, float]]:
    """{qtype: {"accuracy": .., "n": ..}} plus "all"."""
    out: dict[str, dict[str, float]] = {}
    for key in sorted({q for q, _ in results}) + ["all"]:
        hits = [ok for q, ok in results if key in (q, "all")]
        out[key] = {"accuracy": float(np.mean(hits)) if hits else float("nan"), "n": len(hits)}
    return out
