"""The model card (README.md) written next to vidmem-tiny v2's weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from bench.questions import CHANCE
from bench.tiny_data import HELDOUT_SEED_LIMIT, MEMORY_DROPOUT, MEMORY_FRAMES, TRAIN_SEED_BASE, VISION_SEED_BASE


def model_card(cfg: Any, state: Any, metrics: dict[str, dict[str, float]], probe: dict[str, float]) -> str:
    from bench.train_tiny import VISUAL_TO_TEXT_NORM

    rows = "\n".join(
        f"| {k} | {v['accuracy'] * 100:.1f}% | {v['blind'] * 100:.1f}% | {CHANCE.get(k, float('nan')) * 100:.0f}%"
        f" | {int(v['n'])} |"
        for k, v in metrics.items()
    )
    evals = "\n".join(f"| {e['step']} | {e['all'] * 100:.1f}% | {e['blind'] * 100:.1f}% |" for e in state.evals)
    probes = ", ".join(f"{k} {v * 100:.0f}%" for k, v in probe.items())
    arch = cfg.arch
    return f"""# vidmem-tiny v2

A small LLaVA-OneVision-architecture Video LLM (`LlavaOnevisionForConditionalGeneration`: SigLIP
vision tower, MLP projector, 2x bilinear pooling, Qwen2 LLM) trained **from scratch** by
`vidmem train tiny` on vidmem's synthetic streaming video-QA benchmark (`bench/streamgen.py`,
`bench/questions.py`). It answers in words; multiple choice is scored by option likelihood. It
exists so that the demo answers correctly offline and compression methods can be measured on a
CPU; it knows nothing about real video.

Size: vision {arch.vision_layers} x {arch.vision_hidden}, {arch.image_size} px, patch {arch.patch_size}
({arch.image_size // arch.patch_size // 2} x {arch.image_size // arch.patch_size // 2} tokens per frame after
pooling); LLM {arch.text_layers} x {arch.text_hidden}.

## Training
- steps: {state.step} of {cfg.steps} (cosine over steps), {state.elapsed / 60:.1f} min of training on
  {cfg.threads} thread(s) ({cfg.device}), in chained resumable runs of at most {cfg.max_minutes:.0f} min
- clips per step: {cfg.clips_per_batch}; every question (options shuffled, answers balanced) teacher-forced in
  words + end-of-turn token, plus {cfg.option_weight} x cross-entropy over the options' likelihoods; captions
  (objects in view, order of appearance, how each moved, when each appeared) at weight {cfg.caption_weight}
- vision pretraining: {cfg.vision_steps} steps of {cfg.vision_batch} frames, per-token colour, shape and grid-cell
  read-outs{f" (then beside the questions at weight {cfg.grounding_weight})" if cfg.grounding_weight else ""}; the
  projector is then rescaled to visual tokens of {VISUAL_TO_TEXT_NORM:.0f}x the text embeddings' norm; the
  read-outs are not shipped
- data: short clips (1-{cfg.max_frames} frames at 1 fps, curriculum {cfg.curriculum_steps} steps), long-span clips
  (16 frames every 15 s, share {cfg.long_share}), memories ({MEMORY_FRAMES} frames of the 15 s grid over 4-10
  minutes, share {cfg.memory_share}) with random token dropout at a rate drawn per memory from {MEMORY_DROPOUT}
  (no compression method's output is trained on)
- data seeds: questions >= {TRAIN_SEED_BASE}, vision pretraining >= {VISION_SEED_BASE}; held-out seeds below
  {HELDOUT_SEED_LIMIT} (never trained on)

## Held-out accuracy ({cfg.heldout_clips} clips, up to 16 frames, honest questions, option likelihood)

| type | accuracy | zero visual tokens (blind floor) | chance | questions |
|---|---|---|---|---|
{rows}

Linear probes on the frozen visual tokens (held-out frames): {probes}.

## Curve (curve.png; 16 held-out clips)

| step | accuracy | blind |
|---|---|---|
{evals}

## Config
```json
{json.dumps(asdict(cfg), indent=1)}
```
"""
