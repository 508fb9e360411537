"""Stage-2 baselines: fastv, visionzip, divprune, random, cacovid's budget rule."""

from __future__ import annotations

import pytest
import torch

from compression.registry import SelectContext, build_method
from compression.tokens import TokenBlock, TokenSet
from tests.compression.helpers import FakeHooks, FakeScorer, synthetic_block


def _tokens(frames: int = 8, seed: int = 0) -> TokenSet:
    return synthetic_block(frames=frames, seed=seed).to_tokenset()


def test_fastv_when_selecting_then_keeps_the_most_attended_tokens_in_time_order():
    tokens = _tokens()
    model = FakeHooks(attention=lambda t: t.features[:, 0])
    out = build_method("fastv:layer=3").select(tokens, 10, SelectContext("q", model))
    expected = torch.sort(torch.topk(tokens.features[:, 0], 10).indices).values
    assert torch.equal(out.features, tokens.features[expected]) and model.calls == ["probe_attention@3"]


def test_visionzip_when_selecting_then_dominant_tokens_kept_and_the_rest_merged_into_contextual_ones():
    tokens = _tokens()
    model = FakeHooks(attention=lambda t: t.features[:, 0])
    out = build_method("visionzip:contextual_ratio=0.25").select(tokens, 20, SelectContext("q", model))
    dominant = torch.topk(tokens.features[:, 0], 15).indices
    kept_times = set(zip(out.frame.tolist(), out.position.tolist(), strict=True))
    for i in dominant.tolist():
        assert (int(tokens.frame[i]), int(tokens.position[i])) in kept_times, "a dominant token was lost"
    assert len(out) == 20 and float(out.size.sum()) == 128.0
    assert int((out.size > 1).sum()) <= 5, "only the 5 contextual tokens absorb others"


def test_divprune_when_tokens_form_clusters_then_one_token_per_cluster_is_kept():
    # given 4 tight clusters of 10 near-duplicates
    gen = torch.Generator().manual_seed(1)
    centres = torch.eye(4, 8) * 10
    feats = (centres.repeat_interleave(10, 0) + 0.01 * torch.randn(40, 8, generator=gen))[:, None, :]
    tokens = TokenBlock(feats, torch.arange(40, dtype=torch.float64), (1, 1)).to_tokenset()
    out = build_method("divprune").select(tokens, 4, SelectContext())
    assert sorted((out.frame // 10).tolist()) == [0, 1, 2, 3], "max-min diversity takes one per cluster"


def test_random_select_when_seeds_differ_then_subsets_differ_and_repeat_per_seed():
    tokens = _tokens()
    a = build_method("random").select(tokens, 20, SelectContext(seed=1))
    b = build_method("random").select(tokens, 20, SelectContext(seed=2))
    c = build_method("random").select(tokens, 20, SelectContext(seed=1))
    assert not torch.equal(a.frame * 16 + a.position, b.frame * 16 + b.position)
    assert torch.equal(a.features, c.features)


@pytest.mark.parametrize("name", ["fastv", "visionzip"])
def test_attention_methods_when_no_model_then_raise_a_clear_error(name):
    with pytest.raises(ValueError, match="probe_attention"):
        build_method(name).select(_tokens(), 5, SelectContext("q", None))


def test_cacovid_when_no_policy_then_build_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="trained policy"):
        build_method("cacovid")
    with pytest.raises(ValueError, match="does not exist"):
        build_method(f"cacovid:policy_path={tmp_path / 'missing.pt'}")


def test_cacovid_when_one_frame_scores_high_then_its_quota_is_capped_at_1_5x_uniform():
    # given 8 frames x 16 tokens; the policy strongly prefers frame 3
    tokens = _tokens()
    scorer = FakeScorer(frame_scores=lambda t: (t.frames() == 3).float() * 100)
    method = build_method("cacovid", scorer=scorer)
    # when 64 tokens are kept (32 to policy quotas, 32 evenly spaced)
    quotas = method.frame_quotas(torch.tensor([0, 0, 0, 100.0, 0, 0, 0, 0]), torch.full((8,), 16), 64, 128)
    out = method.select(tokens, 64, SelectContext("q", None))
    # then frame 3's quota is 1.5x the uniform 4 and the others share the rest; the total is exact
    assert int(quotas.sum()) == 32 and int(quotas[3]) == 6 and int(quotas.min()) >= 1, quotas.tolist()
    assert len(out) == 64
    top_in_3 = torch.topk(tokens.features[48:64, 0], 6).indices + 48
    kept = set((out.frame * 16 + out.position).tolist())
    assert set(top_in_3.tolist()) <= kept, "frame 3's best-scored tokens fill its quota"


def test_cacovid_shares_when_grid_is_tiny_and_budget_below_one_per_frame_then_best_frames_get_the_quota():
    # given 16 frames x 9 tokens (vidmem-tiny) and 5 % retention: 7 tokens, 3 for the policy's quotas
    method = build_method("cacovid:quotas=shares", scorer=FakeScorer())
    v = torch.zeros(16)
    v[[2, 9, 13]] = torch.tensor([3.0, 2.0, 1.0])
    quotas = method.frame_quotas(v, torch.full((16,), 9), 7, 144)
    # then the three frames the policy ranks highest get one token each
    assert int(quotas.sum()) == 3 and set(torch.nonzero(quotas).flatten().tolist()) == {2, 9, 13}, quotas.tolist()


def test_cacovid_when_quota_half_is_filled_then_the_other_half_is_evenly_spaced_leftovers():
    tokens = _tokens()
    method = build_method("cacovid:imp_ratio=0", scorer=FakeScorer())
    out = method.select(tokens, 16, SelectContext("q", None))
    idx = (out.frame * 16 + out.position).tolist()
    assert idx == torch.linspace(0, 127, 16).round().long().tolist()


def test_divprune_when_gram_matrix_is_off_then_the_same_tokens_are_picked():
    tokens = _tokens(seed=4)
    with_gram = build_method("divprune").select(tokens, 30, SelectContext())
    streamed = build_method("divprune:gram_max_tokens=0").select(tokens, 30, SelectContext())
    assert torch.equal(with_gram.frame * 16 + with_gram.position, streamed.frame * 16 + streamed.position)


def test_recent_when_selecting_then_keeps_the_latest_tokens():
    tokens = _tokens()
    out = build_method("recent").select(tokens, 20, SelectContext())
    assert torch.equal(out.features, tokens.features[-20:])
