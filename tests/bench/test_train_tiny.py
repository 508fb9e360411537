"""vidmem-tiny training: same prompt as the adapter, resumable, writes a folder vlm loads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import pytest
import torch

from bench.tiny_data import BatchPlan, batch_plans, short_clip
from bench.tiny_model import Arch, build_model, build_tokenizer, letter_ids
from bench.train_tiny import TinyConfig, adapter_for, encode_batch, forward_batch, run
from vlm.loader import load_model

SMALL = Arch(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def test_forward_batch_when_prefix_shared_then_equals_adapter_scoring(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    adapter.model.eval()
    clips = [short_clip(3, 5, 20.0, 48), short_clip(4, 5, 20.0, 48)]
    with torch.no_grad():
        _, logits, _ = forward_batch(adapter, clips)
        token_sets = encode_batch(adapter, clips)
        q = clips[1].questions[0]
        expected = adapter.choice_logprobs(q.text, [token_sets[1]], ["A", "B"])[0]
    got = torch.log_softmax(logits[len(clips[0].questions)].float(), -1)[letter_ids(tokenizer)[:2]]
    assert torch.allclose(got, expected, atol=1e-4), f"shared-prefix {got} vs adapter {expected}"


def test_run_when_interrupted_then_resumes_and_writes_loadable_folder(tmp_path: Path) -> None:
    cfg = TinyConfig(
        out=str(tmp_path / "model"),
        work_dir=str(tmp_path / "work"),
        steps=2,
        clips_per_batch=2,
        sizes=(32,),
        heldout_clips=2,
        arch=SMALL,
        warmup=1,
    )
    first = run(cfg)
    assert first["steps"] == 2
    again = run(TinyConfig(**{**cfg.__dict__, "steps": 3}))
    assert again["resumed_from"] == 2 and again["steps"] == 3, "the second run must continue from the checkpoint"
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Held-out accuracy" in card and "training seeds" in card
    assert json.loads((tmp_path / "model" / "vidmem.json").read_text())["trained"] is True
    model = load_model(str(tmp_path / "model"), dtype="float32")
    assert model.trained and model.grid == (1, 1)


def test_batch_plan_when_rendered_then_clips_share_times() -> None:
    plan = BatchPlan((1_000_001, 1_000_002), "short", 6, 30.0, 48)
    clips = plan.render()
    assert all((c.times == clips[0].times).all() for c in clips)
    assert clips[0].frames.shape == (6, 48, 48, 3)


def test_batch_plans_when_curriculum_then_short_clips_first_and_full_range_later() -> None:
    plans = list(itertools.islice(batch_plans(1, (32,), long_share=0.5, max_frames=16, curriculum_steps=20), 200))
    assert all(p.regime == "short" and p.frames <= 4 for p in plans[:20])
    assert max(p.frames for p in plans[40:]) > 8 and any(p.regime == "long" for p in plans[40:])
