"""vidmem-tiny training: same prompt as the adapter, resumable, writes a folder vlm loads."""

from __future__ import annotations

import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from bench.questions import ALL_NAMES
from bench.streamgen import COLOURS, DIRECTIONS, SHAPES
from bench.tiny_data import (
    IGNORE,
    VISION_SEED_BASE,
    BatchPlan,
    batch_plans,
    cell_targets,
    short_clip,
    track_targets,
    vision_batch,
)
from bench.tiny_model import Arch, build_model, build_tokenizer, letter_ids
from bench.train_tiny import (
    GroundingHeads,
    TinyConfig,
    TrackHeads,
    adapter_for,
    encode_batch,
    forward_batch,
    run,
)
from vlm.loader import load_model

SMALL = Arch(image_size=32, patch_size=16, vision_hidden=32, vision_layers=1, text_hidden=32, text_layers=1)


@pytest.fixture(scope="module")
def tokenizer():  # type: ignore[no-untyped-def]
    return build_tokenizer()


def _small_config(tmp_path: Path, **overrides) -> TinyConfig:  # type: ignore[no-untyped-def]
    """A run of a few seconds: tiny arch, 32 px clips, two held-out clips, no periodic evaluation."""
    base = {"out": str(tmp_path / "model"), "work_dir": str(tmp_path / "work"), "clips_per_batch": 2,
            "sizes": (32,), "heldout_clips": 2, "arch": SMALL, "warmup": 1, "vision_steps": 2, "vision_batch": 4,
            "eval_every": 0}
    return TinyConfig(**{**base, **overrides})


def test_forward_batch_when_prefix_shared_then_equals_adapter_scoring(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    adapter.model.eval()
    clips = [short_clip(3, 5, 20.0, 48), short_clip(4, 5, 20.0, 48)]
    with torch.no_grad():
        _, logits, _, _ = forward_batch(adapter, clips)
        token_sets = encode_batch(adapter, clips)
        q = clips[1].questions[0]
        expected = adapter.choice_logprobs(q.text, [token_sets[1]], ["A", "B"])[0]
    got = torch.log_softmax(logits[len(clips[0].questions)].float(), -1)[letter_ids(tokenizer)[:2]]
    assert torch.allclose(got, expected, atol=1e-4), f"shared-prefix {got} vs adapter {expected}"


def test_run_when_interrupted_then_resumes_and_writes_loadable_folder(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level("INFO")
    cfg = _small_config(tmp_path, steps=2)
    first = run(cfg)
    assert first["steps"] == 2
    again = run(TinyConfig(**{**cfg.__dict__, "steps": 3}))
    assert again["resumed_from"] == 2 and again["steps"] == 3, "the second run must continue from the checkpoint"
    after_resume = caplog.text.split("resumed from")[-1]
    assert "vision step" not in after_resume, "a resumed run pretrains again"
    card = (tmp_path / "model" / "README.md").read_text()
    assert "Held-out accuracy" in card and "training seeds" in card
    assert json.loads((tmp_path / "model" / "vidmem.json").read_text())["trained"] is True
    model = load_model(str(tmp_path / "model"), dtype="float32")
    assert model.trained and model.grid == (1, 1)


def test_run_when_resumed_with_another_device_setting_then_continues(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=2, device="cpu"))
    again = run(_small_config(tmp_path, steps=3, device="auto"))
    assert again["resumed_from"] == 2, "the device is not part of a checkpoint's identity"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_run_when_on_cuda_then_trains_and_writes_a_folder_that_loads_on_cpu(tmp_path: Path) -> None:
    result = run(_small_config(tmp_path, steps=2, device="cuda"))
    assert result["steps"] == 2
    model = load_model(str(tmp_path / "model"), device="cpu", dtype="float32")
    assert model.trained and model.device.type == "cpu"


def test_batch_plan_when_rendered_then_clips_share_times() -> None:
    plan = BatchPlan((1_000_001, 1_000_002), "short", 6, 30.0, 48)
    clips = plan.render()
    assert all((c.times == clips[0].times).all() for c in clips)
    assert clips[0].frames.shape == (6, 48, 48, 3)


def test_batch_plans_when_curriculum_then_short_clips_first_and_full_range_later() -> None:
    plans = list(itertools.islice(batch_plans(1, (32,), long_share=0.5, max_frames=16, curriculum_steps=20), 200))
    assert all(p.regime == "short" and p.frames <= 4 for p in plans[:20])
    assert min(p.frames for p in plans[:20]) == 1, "the warm-up starts from single frames"
    assert max(p.frames for p in plans[40:]) > 8 and any(p.regime == "long" for p in plans[40:])


def test_cell_targets_when_object_centre_in_a_cell_then_only_that_cell_is_labelled() -> None:
    clip = short_clip(1_000_123, 6, 0.0, 48)
    targets = cell_targets(clip.tracks, clip.times, (3, 3))
    assert targets.shape == (6, 9, 4)
    for f, t in enumerate(clip.times):
        visible = [trk for trk in clip.tracks if trk.visible(float(t))]
        assert (targets[f, :, 0] > 0).sum() == len(visible), "one labelled cell per visible object"
        for trk in visible:
            x, y = trk.position(float(t))
            cell = min(int(y * 3), 2) * 3 + min(int(x * 3), 2)
            colour = list(COLOURS).index(trk.colour) + 1
            assert targets[f, cell, 0] == colour and targets[f, cell, 1] == SHAPES.index(trk.shape) + 1
            assert tuple(targets[f, cell, 2:]) == (round(x * 1000), round(y * 1000)), "the exact centre"


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


def test_grounding_heads_when_trained_on_fixed_frames_then_loss_falls(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    heads = GroundingHeads(SMALL.text_hidden)
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


def _first_clip_with_mover_and_leaver() -> tuple:  # type: ignore[type-arg]
    for seed in range(1_000_200, 1_000_400):
        clip = short_clip(seed, 12, 0.0, 48)
        shown = [t for t in clip.tracks if ((clip.times >= t.t_in) & (clip.times < t.t_out)).sum() >= 2]
        gone = [t for t in shown if t.t_out <= clip.times[-1]]
        late = [t for t in shown if t.t_in > clip.times[0]]
        if gone and late:
            return clip, gone[0], late[0]
    raise AssertionError("no clip with an object that arrives and one that leaves")


def test_track_targets_when_object_moves_then_labels_follow_its_history_causally() -> None:
    clip, leaver, arriver = _first_clip_with_mover_and_leaver()
    targets = track_targets(clip.tracks, clip.times, (3, 3))
    assert targets.cells.shape == (12, 9, 2) and targets.history.shape == (12, 2 * len(ALL_NAMES))
    assert (targets.cells[0] == IGNORE).all() and not targets.history_mask[0], "frame 0 has no history"
    shown = [f for f, t in enumerate(clip.times) if arriver.visible(float(t))]
    for f in shown:
        x, y = arriver.position(float(clip.times[f]))
        cell = min(int(y * 3), 2) * 3 + min(int(x * 3), 2)
        if f == shown[0]:
            assert targets.cells[f, cell, 1] == 1 and targets.cells[f, cell, 0] == IGNORE, "new: no direction yet"
        else:
            assert tuple(targets.cells[f, cell]) == (list(DIRECTIONS).index(arriver.direction), 0)
    name = ALL_NAMES.index(leaver.name)
    out = [f for f, t in enumerate(clip.times) if t >= leaver.t_out]
    assert targets.history[out, name].all(), "seen before stays set"
    assert targets.history[out, len(ALL_NAMES) + name].all(), "gone once out of view"
    first = next(f for f, t in enumerate(clip.times) if leaver.visible(float(t)))
    assert not targets.history[: first + 1, name].any(), "not 'seen before' until after its first frame"


def test_forward_batch_when_track_heads_then_their_loss_is_added_and_trains(tokenizer) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    adapter = adapter_for(build_model(SMALL, tokenizer), tokenizer)
    tracks = TrackHeads(SMALL.text_hidden)
    clips = [short_clip(5, 6, 10.0, 48), short_clip(6, 6, 10.0, 48)]
    plain = forward_batch(adapter, clips)[0].detach()
    with_tracks, _, _, stats = forward_batch(adapter, clips, tracks=tracks, track_layer=1, track_weight=1.0)
    with_tracks = with_tracks.detach()
    assert float(with_tracks) > float(plain) and "history" in stats
    opt = torch.optim.AdamW([*adapter.model.parameters(), *tracks.parameters()], lr=1e-2)
    losses = []
    for _ in range(25):
        loss = forward_batch(adapter, clips, tracks=tracks, track_layer=1, track_weight=1.0)[0]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], f"loss with track read-outs {losses[0]:.3f} -> {losses[-1]:.3f}"


def test_run_when_experimental_readouts_on_then_history_logs_their_accuracy(tmp_path: Path) -> None:
    run(_small_config(tmp_path, steps=3, centre_weight=1.0, track_layer=1))
    history = json.loads((tmp_path / "model" / "training.json").read_text())["history"]
    assert any("track_onset" in row for row in history), "the track read-outs' accuracy is logged"
    assert "track read-outs" in (tmp_path / "model" / "README.md").read_text()
