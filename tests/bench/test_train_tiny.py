"""vidmem-tiny v2 training: same prompt as the adapter, answers in words, resumable, writes a folder vlm loads."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.streamgen import COLOURS, SHAPES
from bench.tiny_data import (
    HELDOUT_SEED_LIMIT,
    MEMORY_DROPOUT,
    TRAIN_SEED_BASE,
    VISION_SEED_BASE,
    BatchPlan,
    batch_plans,
    cell_targets,
    clip_questions,
    memory_clip,
    short_clip,
    vision_batch,
)
from bench.tiny_model import V2, Arch, build_model, build_tokenizer
from bench.train_tiny import (
    GroundingHeads,
    State,
    TinyConfig,
    adapter_for,
    build,
    clip_loss,
    drop_tokens,
    encode_batch,
    lr_at,
    option_ids,
    run,
    save_checkpoint,
)
from vlm.loader import load_model

SMALL = Arch(image_size=32, patch_size=8, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1, words=True)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer(SMALL.vocab_size, words=True)


def _small_config(tmp_path: Path, **overrides) -> TinyConfig:  # type: ignore[no-untyped-def]
    """A run of a few seconds: tiny arch, 32 px clips, two held-out clips, no periodic evaluation."""
    base = {"out": str(tmp_path / "model"), "work_dir": str(tmp_path / "work"), "clips_per_batch": 2,
            "sizes": (32,), "heldout_clips": 2, "arch": SMALL, "warmup": 1, "vision_steps": 2, "vision_batch": 4,
            "eval_every": 0, "curriculum_steps": 0}
    return TinyConfig(**{**base, **overrides})


def test_clip_loss_when_prefix_shared_then_option_loss_equals_adapter_option_likelihoods(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    adapter.model.eval()
    clip = short_clip(2_000_003, 5, 20.0, 48, honest=True)
    assert clip.questions
    with torch.no_grad():
        tokens = encode_batch(adapter, [clip])[0]
        got = clip_loss(adapter, clip, tokens, with_captions=True)
        logp = [torch.log_softmax(adapter.option_loglikelihoods(q.prompt, tokens, q.choices), 0)
                for q in clip.questions]
        expected = -sum(lp[q.choices.index(q.answer_text)] for lp, q in zip(logp, clip.questions, strict=True))
    assert torch.allclose(got.option, expected, atol=1e-4), f"shared-prefix {got.option} vs adapter {expected}"
    assert got.questions == len(clip.questions) and got.caption_tokens > 0


def test_option_ids_when_v2_tokenizer_then_every_answer_is_one_token(tokenizer) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    regimes = ("short", "long", "memory")
    options = {o for seed in range(3_000_000, 3_000_300) for q in clip_questions(seed, regimes[seed % 3])
               for o in q.choices}
    assert {"0", "3", "left", "yellow", "cross", "minute 7", "red circle"} <= options
    assert len(option_ids(adapter, tuple(sorted(options)))) == len(options)
    with pytest.raises(ValueError, match="one token"):
        option_ids(adapter, ("a red thing",))


def test_run_when_interrupted_then_resumes_and_writes_loadable_folder_with_card(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO")
    cfg = _small_config(tmp_path, steps=3, max_minutes=1e-6)
    first = run(cfg)
    assert first["steps"] == 1 and first["out"] is None, "a run stops on its time budget without writing a folder"
    assert (tmp_path / "work" / "checkpoint.pt").is_file() and (tmp_path / "work" / "curve.json").is_file()
    again = run(dataclasses.replace(cfg, max_minutes=10.0))
    assert again["resumed_from"] == 1 and again["steps"] == 3, "the second run must continue from the checkpoint"
    after_resume = caplog.text.split("resumed from")[-1]
    assert "vision step" not in after_resume, "a resumed run pretrains again"
    card = (tmp_path / "model" / "README.md").read_text()
    for needed in ("Held-out accuracy", "blind floor", "data seeds", f">= {TRAIN_SEED_BASE}", "Linear probes",
                   str(MEMORY_DROPOUT)):
        assert needed in card, f"model card lacks {needed!r}"
    assert (tmp_path / "model" / "curve.png").stat().st_size > 1000
    marker = json.loads((tmp_path / "model" / "vidmem.json").read_text())
    assert marker["trained"] is True and marker["answers"] == "words" and 0 <= marker["blind_accuracy"] <= 1
    model = load_model(str(tmp_path / "model"), dtype="float32")
    assert model.trained and model.grid == (2, 2)


def test_run_when_export_only_then_writes_the_folder_from_the_checkpoint_without_training(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=3, max_minutes=1e-6))
    result = run(_small_config(tmp_path, steps=3), export_only=True)
    assert result["steps"] == 1 and result["out"] == str(tmp_path / "model")
    assert json.loads((tmp_path / "model" / "vidmem.json").read_text())["steps"] == 1


def test_run_when_resumed_with_another_schedule_then_refuses(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=1))
    with pytest.raises(Exception, match="another config"):
        run(_small_config(tmp_path, steps=2, lr=1e-2))


def test_run_when_resumed_with_another_device_setting_then_continues(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=2, device="cpu", max_minutes=1e-6))
    again = run(_small_config(tmp_path, steps=2, device="auto"))
    assert again["resumed_from"] == 1, "the device is not part of a checkpoint's identity"


def test_fine_tune_when_started_from_a_checkpoint_keeps_its_weights_and_time_and_resumes_without_it(tmp_path: Path):
    # given a first run's checkpoint
    run(_small_config(tmp_path, steps=2))
    source = tmp_path / "work" / "checkpoint.pt"
    first = torch.load(source, weights_only=False, map_location="cpu")
    # when a fine-tune starts from it (its own schedule, grounding kept, the vision tower slower) for one step
    tune = _small_config(tmp_path, work_dir=str(tmp_path / "tune"), init_from=str(source), steps=3, lr=1e-4,
                         grounding_weight=0.5, vision_lr_scale=0.1, max_minutes=1e-6)
    assert run(tune)["steps"] == 1
    tuned = torch.load(tmp_path / "tune" / "checkpoint.pt", weights_only=False, map_location="cpu")
    # then it began at step 0 from those weights (no second vision pretraining) and counts their training time
    state = tuned["state"]
    assert state["init"]["step"] == 2 and state["init"]["path"] == str(source) and state["vision_done"]
    assert state["elapsed"] > first["state"]["elapsed"]
    assert [g.get("scale", 1.0) for g in tuned["opt"]["param_groups"]] == [1.0, 0.1]
    # and it resumes from its own checkpoint after the source is gone
    source.unlink()
    again = run(dataclasses.replace(tune, max_minutes=10.0, init_from=None))
    assert again["resumed_from"] == 1 and again["steps"] == 3


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_when_on_cuda_then_trains_and_writes_a_folder_that_loads_on_cpu(tmp_path: Path) -> None:
    result = run(_small_config(tmp_path, steps=2, device="cuda"))
    assert result["steps"] == 2
    model = load_model(str(tmp_path / "model"), device="cpu", dtype="float32")
    assert model.trained and model.device.type == "cpu"


def test_lr_when_steps_given_then_depends_on_the_step_alone() -> None:
    cfg = TinyConfig(steps=1000, warmup=100, lr=1e-3)
    assert lr_at(cfg, 0) == pytest.approx(1e-5) and lr_at(cfg, 99) == pytest.approx(1e-3)
    assert lr_at(cfg, 550) == pytest.approx(1e-3 * (0.05 + 0.95 * 0.5))
    assert lr_at(cfg, 1000) == pytest.approx(5e-5) and lr_at(cfg, 5000) == pytest.approx(5e-5)


def test_checkpoint_when_v2_size_then_at_most_20_mb(tmp_path: Path) -> None:
    cfg = TinyConfig(work_dir=str(tmp_path / "ckpt"))
    _, model, adapter, heads, opt = build(cfg)
    assert adapter.grid == (6, 6), "v2 frames carry 36 visual tokens"
    for p in [*model.parameters(), *heads.parameters()]:  # give every parameter optimiser state
        p.grad = torch.zeros_like(p)
    opt.step()
    save_checkpoint(cfg, model, opt, State(step=7), heads)
    live = next(iter(opt.state.values()))
    assert live["exp_avg"].dtype == torch.float32, "only the saved copy is halved"
    opt.step()  # the optimiser keeps working after a checkpoint
    size = (tmp_path / "ckpt" / "checkpoint.pt").stat().st_size
    weights = sum(p.numel() for p in model.parameters()) * 4
    assert size <= 20 * 2**20, f"checkpoint {size / 2**20:.1f} MB"
    assert weights <= 30 * 2**20 * 0.9, "the shipped folder must stay under 30 MB"
    assert cfg.arch == V2 and V2.text_layers > 4 and V2.text_hidden > 128, "more LLM than v1 (4 x 128)"


def test_batch_plans_when_curriculum_then_short_clips_first_and_memories_later() -> None:
    plans = list(itertools.islice(batch_plans(1, (32,), long_share=0.2, max_frames=16, curriculum_steps=20,
                                              memory_share=0.2, honest=True), 300))
    assert all(p.regime == "short" and p.frames <= 4 for p in plans[:20])
    assert min(p.frames for p in plans[:20]) == 1, "the warm-up starts from single frames"
    later = plans[40:]
    assert max(p.frames for p in later) > 8 and {p.regime for p in later} == {"short", "long", "memory"}
    assert all(p.honest for p in plans) and min(min(p.seeds) for p in plans) >= TRAIN_SEED_BASE


def test_batch_plans_when_short_share_then_that_share_keeps_one_to_four_frames_after_the_ramp() -> None:
    def short_after_ramp(share: float) -> list[int]:
        plans = itertools.islice(batch_plans(1, (32,), long_share=0.0, max_frames=16, curriculum_steps=10,
                                             short_share=share), 2000)
        return [p.frames for i, p in enumerate(plans) if i >= 20 and p.regime == "short"]

    mixed, plain = short_after_ramp(0.5), short_after_ramp(0.0)
    assert 0.4 < np.mean([f <= 4 for f in mixed]) < 0.65 and min(mixed) == 1
    assert np.mean([f <= 4 for f in plain]) < 0.15 and min(plain) == 4, "no short share: 4 to 16 frames"


def test_memory_clip_when_drawn_then_spans_minutes_in_time_order_with_a_dropout_rate() -> None:
    clip = memory_clip(TRAIN_SEED_BASE + 17, 32)
    assert 16 <= len(clip.times) <= 24 and (np.diff(clip.times) > 0).all() and clip.times[-1] >= 225
    assert MEMORY_DROPOUT[0] <= clip.dropout <= MEMORY_DROPOUT[1] and clip.seed >= HELDOUT_SEED_LIMIT
    assert all(len(q.choices) == len(set(q.choices)) for q in clip.questions)


def test_drop_tokens_when_rate_given_then_keeps_that_share_in_order(tokenizer) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    tokens = encode_batch(adapter, [short_clip(2_000_009, 8, 0.0, 32)])[0]
    kept = drop_tokens(tokens, 0.25, seed=3)
    assert len(kept) == round(len(tokens) * 0.75)
    order = kept.frame * 100 + kept.row * 10 + kept.col
    assert (torch.diff(order) > 0).all(), "kept tokens stay in time order"
    assert drop_tokens(tokens, 0.0, seed=3) is tokens


def test_batch_plan_when_rendered_then_clips_share_times() -> None:
    plan = BatchPlan((1_000_001, 1_000_002), "short", 6, 30.0, 48, True)
    clips = plan.render()
    assert all((c.times == clips[0].times).all() for c in clips)
    assert clips[0].frames.shape == (6, 48, 48, 3)


def test_cell_targets_when_object_centre_in_a_cell_then_only_that_cell_is_labelled() -> None:
    clip = short_clip(1_000_123, 6, 0.0, 48)
    targets = cell_targets(clip.tracks, clip.times, (6, 6))
    assert targets.shape == (6, 36, 4)
    for f, t in enumerate(clip.times):
        visible = [trk for trk in clip.tracks if trk.visible(float(t))]
        assert (targets[f, :, 0] > 0).sum() == len(visible), "one labelled cell per visible object"
        for trk in visible:
            x, y = trk.position(float(t))
            cell = min(int(y * 6), 5) * 6 + min(int(x * 6), 5)
            colour = list(COLOURS).index(trk.colour) + 1
            assert targets[f, cell, 0] == colour and targets[f, cell, 1] == SHAPES.index(trk.shape) + 1


def test_vision_batch_when_drawn_then_frames_match_their_labels() -> None:
    frames, targets = vision_batch(VISION_SEED_BASE, 24, 48, (3, 3))
    assert frames.shape == (24, 48, 48, 3) and targets.shape == (24, 9, 4)
    palette = np.array(list(COLOURS.values()))
    for frame, target in zip(frames, targets, strict=True):
        for cell in np.flatnonzero(target[:, 0]):
            r, c = divmod(int(cell), 3)
            pixels = frame[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16].reshape(-1, 3).astype(int)
            colour = palette[target[cell, 0] - 1]
            assert (np.abs(pixels - colour).sum(1) < 10).any(), "a labelled cell shows its object's colour"


def test_grounding_heads_when_trained_on_fixed_frames_then_cell_and_object_losses_fall(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    heads = GroundingHeads(SMALL.text_hidden, adapter.grid[0] * adapter.grid[1])
    frames, targets = vision_batch(VISION_SEED_BASE, 16, 32, adapter.grid)
    opt = torch.optim.AdamW([*adapter.model.parameters(), *heads.parameters()], lr=1e-2)
    losses = []
    for _ in range(30):
        loss = heads.loss(adapter.video_features(adapter.pixel_values(frames)), torch.from_numpy(targets))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0], f"grounding loss {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_clip_loss_when_one_question_and_no_captions_then_its_answer_is_still_scored(tokenizer) -> None:  # type: ignore[no-untyped-def]
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    clip = short_clip(2_000_003, 5, 20.0, 48, honest=True)
    one = dataclasses.replace(clip, questions=clip.questions[:1])
    got = clip_loss(adapter, one, encode_batch(adapter, [one])[0], with_captions=False)
    assert got.questions == 1 and got.answer_tokens == 2, "the answer token and the end-of-turn token"
    assert float(got.option) > 0 and got.caption_tokens == 0


def test_fine_tune_when_vision_is_not_taken_pretrains_it_afresh_and_keeps_it_frozen(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=2))
    source = torch.load(tmp_path / "work" / "checkpoint.pt", weights_only=False, map_location="cpu")["model"]
    tune = _small_config(tmp_path, work_dir=str(tmp_path / "tune"), init_from=str(tmp_path / "work" / "checkpoint.pt"),
                         init_vision=False, vision_lr_scale=0.0, steps=4, max_minutes=1e-6, seed=1)
    run(tune)
    tuned = torch.load(tmp_path / "tune" / "checkpoint.pt", weights_only=False, map_location="cpu")
    assert tuned["state"]["vision_done"] and tuned["state"]["probe"], "the vision tower was pretrained again"
    # the language model started from the source; the vision tower from its own pretraining (then frozen)
    embed = "model.language_model.embed_tokens.weight"
    patch = "model.vision_tower.embeddings.patch_embedding.weight"
    assert not torch.equal(tuned["model"][patch], source[patch])
    assert torch.allclose(tuned["model"][embed], source[embed], atol=0.05)
    # and a further step moves the language model but not the frozen tower
    run(dataclasses.replace(tune, init_from=None))
    later = torch.load(tmp_path / "tune" / "checkpoint.pt", weights_only=False, map_location="cpu")
    assert later["state"]["step"] == 2
    assert torch.equal(later["model"][patch], tuned["model"][patch])
    assert not torch.equal(later["model"][embed], tuned["model"][embed])
