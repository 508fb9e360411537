"""Video Token Merging: target selection variants, R = merge_ratio * |S| merges, learnable saliency."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from compression.methods.vtm import load_saliency
from compression.registry import build_method
from tests.compression.helpers import synthetic_block


def _targets(spec: str, block=None, **objects):  # type: ignore[no-untyped-def]
    block = block or synthetic_block(frames=4, grid=(8, 8), seed=1)
    method = build_method(spec, **objects)
    return method.targets(block.to_tokenset(), block), block


def test_vtm_naive_when_gamma_is_4_then_every_fourth_token_is_a_target_and_80_percent_of_sources_merge():
    block = synthetic_block(frames=4, grid=(8, 8), seed=1)  # 256 tokens
    targets, _ = _targets("vtm:gamma=4", block)
    assert torch.nonzero(targets).reshape(-1).tolist() == list(range(0, 256, 4))
    _, out = build_method("vtm:gamma=4").update({}, block)
    assert len(out) == 256 - round(0.8 * 192) and float(out.size.sum()) == 256.0


def test_vtm_region_when_center_or_boundary_then_targets_concentrate_there():
    centre_t, block = _targets("vtm:target=center")
    boundary_t, _ = _targets("vtm:target=boundary")
    ts = block.to_tokenset()
    centre = (ts.row >= 2) & (ts.row < 6) & (ts.col >= 2) & (ts.col < 6)  # 16 of 64 per frame
    density = lambda t, region: float(t[region].float().mean())  # noqa: E731
    assert density(centre_t, centre) > density(centre_t, ~centre), "center: denser targets in the centre"
    assert density(boundary_t, ~centre) > density(boundary_t, centre), "boundary: denser targets outside"


def test_vtm_motion_when_some_tokens_move_then_they_become_targets_and_stay_unmerged():
    block = synthetic_block(frames=2, grid=(6, 6), seed=2)  # 72 tokens -> 12 targets at gamma 6
    motion = torch.zeros(2, 36)
    motion[1, :12] = 50.0  # 12 strongly moving tokens
    block = replace(block, side={"motion": motion})
    targets, _ = _targets("vtm:target=motion", block)
    assert int(targets.sum()) == 12 and bool(targets[36:48].all()), "moving tokens must be the targets"
    _, out = build_method("vtm:target=motion").update({}, block)
    kept = set(zip(out.frame.tolist(), out.position.tolist(), strict=True))
    assert {(1, p) for p in range(12)} <= kept, "targets are representatives: none is merged away"
    with pytest.raises(ValueError, match="motion"):
        _targets("vtm:target=motion", replace(block, side={}))


def test_vtm_learnable_when_saliency_loaded_from_file_then_salient_tokens_are_targets(tmp_path):
    # given a saliency vector that reads feature 0, saved as a trainer would
    u_s = torch.zeros(16)
    u_s[0] = 5.0
    path = tmp_path / "vtm_saliency.pt"
    torch.save({"u_s": u_s}, path)
    block = synthetic_block(frames=2, grid=(4, 4), seed=3)  # 32 tokens -> 5 targets at gamma 6
    # when targets are chosen from the file
    targets, _ = _targets(f"vtm:target=learnable,saliency_path={path}", block)
    # then they are the 5 tokens with the largest feature 0
    top = torch.topk(block.features.reshape(32, 16)[:, 0], 5).indices
    assert sorted(torch.nonzero(targets).reshape(-1).tolist()) == sorted(top.tolist())
    assert torch.equal(load_saliency(path), u_s)
    same, _ = _targets("vtm:target=learnable", block, saliency=u_s)
    assert torch.equal(same, targets)


def test_vtm_learnable_when_no_saliency_then_build_fails_clearly():
    with pytest.raises(ValueError, match="saliency_path"):
        build_method("vtm:target=learnable")


@pytest.mark.parametrize("gamma", [4.0, 6.0, 10.0])
def test_vtm_region_when_center_or_boundary_then_budget_matched_with_three_times_the_density(gamma):
    # given 4 frames of 8x8: the centre 4x4 is a quarter of the tokens
    block = synthetic_block(frames=4, grid=(8, 8), seed=1)
    centre = None
    for variant in ("center", "boundary"):
        targets, _ = _targets(f"vtm:target={variant},gamma={gamma}", block)
        ts = block.to_tokenset()
        centre = (ts.row >= 2) & (ts.row < 6) & (ts.col >= 2) & (ts.col < 6)
        # then |T| = round(N / gamma) for both (the paper's retention), not 1.67x for boundary
        assert int(targets.sum()) == round(256 / gamma), (variant, int(targets.sum()))
        dense, sparse = (centre, ~centre) if variant == "center" else (~centre, centre)
        ratio = float(targets[dense].float().mean() / targets[sparse].float().mean())
        assert 2.5 < ratio < 3.6, (variant, ratio)
    # and the centre variant takes half its targets from the centre (gamma/2 inside, 3 gamma/2 outside)
    centre_t, _ = _targets(f"vtm:target=center,gamma={gamma}", block)
    assert abs(int(centre_t[centre].sum()) - round(256 / gamma) / 2) <= 1
    _, out = build_method(f"vtm:target=boundary,gamma={gamma},merge_ratio=1.0").update({}, block)
    assert len(out) == round(256 / gamma)
