"""`vidmem train cacovid` end to end on the tiny random Video LLM: rewards, curve, policy file, resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from bench.train_cacovid import TrainConfig, build_policy, rewards_for, run, to_sample, training_clip
from compression.cacovid import ModelSignature, PolicyMismatchError, load_policy, load_scorer, save_policy
from compression.cacovid.scorer import model_signature
from compression.cacovid.trainer import RLConfig
from compression.registry import SelectContext, build_method


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from vlm.loader import load_model

    return load_model("tiny-random", device="cpu", dtype="float32", cache_dir=str(tmp_path_factory.mktemp("m")))


def _config(tmp_path: Path) -> TrainConfig:
    rl = RLConfig(token_rollouts=3, frame_rollouts=2, inner_iters=1)
    return TrainConfig(
        model="tiny-random",
        out=str(tmp_path / "policy.pt"),
        work_dir=str(tmp_path / "run"),
        steps=2,
        heldout=1,
        eval_every=2,
        checkpoint_every=1,
        frame_size=64,
        filter_samples=False,
        rl=rl,
    )


def test_rewards_when_masks_batched_then_one_reward_per_mask(vlm) -> None:  # type: ignore[no-untyped-def]
    clip = training_clip(5_000_001, 64)
    block = vlm.encode(clip.frames, [float(t) for t in clip.times])
    sample = to_sample(vlm, block, clip.questions[0])
    masks = torch.rand(7, *block.features.shape[:2]) < 0.3
    r = rewards_for(vlm, sample, masks)
    assert r.shape == (7,) and set(r.tolist()) <= {0.0, 1.0}


def test_run_when_finished_then_policy_curve_and_checkpoint_and_resume(vlm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # given / when
    cfg = _config(tmp_path)
    summary = run(cfg, vlm, progress=False)
    # then: a held-out point before training and every eval_every steps, a PNG, a loadable policy
    assert [step for step, _ in summary["heldout_curve"]] == [0, 2]
    assert (tmp_path / "run" / "curve.png").stat().st_size > 0
    assert json.loads((tmp_path / "run" / "curve.json").read_text())["heldout_curve"] == summary["heldout_curve"]
    scorer = load_scorer(cfg.out)
    tokens = vlm.encode(training_clip(5_000_002, 64).frames[:4], [0.0, 1.0, 2.0, 3.0]).to_tokenset()
    kept = build_method("cacovid", stage=2, scorer=scorer).select(tokens, 3, SelectContext("which colour?", vlm))
    assert len(kept) == 3
    # the shipped policy is the best held-out one (the first of equals)
    best_value = max(v for _, v in summary["heldout_curve"])
    assert summary["best"] == next([s, v] for s, v in summary["heldout_curve"] if v == best_value)
    shipped = torch.load(cfg.out, weights_only=False)
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=False)
    assert all(torch.equal(shipped["state_dict"][k], best["state_dict"][k]) for k in best["state_dict"])
    # resuming a finished run trains nothing more
    again = run(cfg, vlm, progress=False)
    assert again["train"] == summary["train"]


def test_policy_when_used_with_another_model_then_clear_error(vlm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # given a policy initialised from this model's layer 0 but saved for a model with another vocabulary
    policy = build_policy(vlm)
    policy.signature = ModelSignature.of("other-model", (999, vlm.rotary_config()["hidden_size"]))
    path = save_policy(policy, tmp_path / "other.pt")
    tokens = vlm.encode(training_clip(5_000_002, 64).frames[:2], [0.0, 1.0]).to_tokenset()
    # when / then
    with pytest.raises(PolicyMismatchError, match="trained for model 'other-model'.*running model is 'tiny-random'"):
        load_scorer(path).score("which colour?", tokens, vlm)
    with pytest.raises(PolicyMismatchError, match="trained for model 'other-model'"):
        load_policy(path, expect=model_signature(vlm))
