"""The model card (README.md) written next to vidmem-tiny's weights."""

from __future__ import annotations

import json
from dataclasses import asdict
from typing import Any

from bench.questions import CHANCE
from bench.tiny_data import HELDOUT_SEED_LIMIT, TRAIN_SEED_BASE


def model_card(cfg: Any, state: Any, metrics: dict[str, dict[str, float]]) -> str:
    rows = "\n".join(
        f"| {k} | {v['accuracy'] * 100:.1f}% | {CHANCE.get(k, float('nan')) * 100:.0f}% | {int(v['n'])} |"
        for k, v in metrics.items()
    )
    captions = (
        "\n- auxiliary targets: four free-text descriptions per clip in the same prompt format (objects in view"
        " now, objects that appeared in order, how each object moved, when each appeared), teacher-forced,"
        f" weighted {getattr(cfg, 'caption_weight', 1.0)} against the answer letters"
        if getattr(cfg, "captions", False)
        else ""
    )
    curriculum = getattr(cfg, "curriculum_steps", 0)
    grounding = (
        f"\n- grounding: linear colour, shape and centre-position read-outs on every visual token (the object"
        f" whose centre lies in the token's cell), first alone on single frames for"
        f" {getattr(cfg, 'vision_steps', 0)} steps of {getattr(cfg, 'vision_batch', 0)} frames (vision tower +"
        " projector only), then beside the question"
        " loss; the read-outs are dropped from the shipped model"
        if getattr(cfg, "grounding", False)
        else ""
    )
    layer = getattr(cfg, "track_layer", 0)
    tracks = (
        f"\n- track read-outs: linear heads on the LLM's visual-token states after layer {layer}, weighted"
        f" {getattr(cfg, 'track_weight', 0.0)}: per token the direction its object moves and whether the object is"
        " new in this frame, per frame which objects were seen before and which of those are gone (labels from"
        " the shown frames only, so causal); dropped from the shipped model"
        if layer
        else ""
    )
    gain = getattr(getattr(cfg, "arch", None), "projector_gain", 1.0)
    return f"""# vidmem-tiny

A small LLaVA-OneVision-architecture Video LLM (`LlavaOnevisionForConditionalGeneration`: SigLIP
vision tower, MLP projector, 2x bilinear pooling, Qwen2 LLM) trained **from scratch** by
`vidmem train tiny` on vidmem's synthetic streaming video-QA benchmark (`bench/streamgen.py`,
`bench/questions.py`). It answers multiple-choice questions about coloured shapes with a letter.
It exists so that the demo answers correctly offline and compression methods can be measured on a
CPU; it knows nothing about real video.

Load: `vlm.load_model("models/vidmem-tiny")` (or the setting `VIDMEM_MODEL=vidmem-tiny`).

## Training
- steps: {state.step}, wall time {state.elapsed / 60:.1f} min on {cfg.threads} CPU threads
- clips per step: {cfg.clips_per_batch} (every question of each clip used, teacher-forced answer letter
  and end-of-turn token){captions}{grounding}{tracks}
- data: short clips (4-16 frames at 1 fps, random start second) and long-span clips (16 frames every
  15 s over 4 minutes, share {cfg.long_share}); rendered at {list(cfg.sizes)} px and resized by the adapter
- curriculum: the first {curriculum} steps use clips of 1 to 4 frames (no long-span ones), the
  next as many ramp the frame limit up (0: none)
- projector output-layer init gain: {gain} (visual tokens at the text-embedding scale)
- training seeds: >= {TRAIN_SEED_BASE}; held-out seeds: below {HELDOUT_SEED_LIMIT} (never trained on)
- prompt: exactly the vlm adapter's (`build_prompt`, with per-frame timestamps)

## Held-out accuracy ({cfg.heldout_clips} clips, up to 16 frames, uncompressed)

| type | accuracy | chance | questions |
|---|---|---|---|
{rows}

## Config
```json
{json.dumps(asdict(cfg), indent=1)}
```
"""
