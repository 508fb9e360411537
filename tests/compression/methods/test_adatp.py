"""AdaTP corrects the attention biases it targets, where FastV follows them.

The model is a test double (FakeHooks) whose attention carries the two biases the AdaTP paper
names: a global end-of-sequence bias and a local bias towards one spatial position in every frame.
"""

from __future__ import annotations

from dataclasses import replace

import torch

from compression.registry import SelectContext, build_method
from compression.tokens import TokenSet
from tests.compression.helpers import FakeHooks, chunks_of, scene_video

BIASED_POSITION = 5


def biased_attention(tokens: TokenSet) -> torch.Tensor:
    """Attention [K]: small content noise + end-of-sequence bias + a fixed-position bias."""
    gen = torch.Generator().manual_seed(0)
    noise = 0.01 * torch.rand(len(tokens), generator=gen)
    end_bias = 10.0 * (tokens.frame >= 6).float() + 0.1 * tokens.frame.float()
    position_bias = 5.0 * (tokens.position == BIASED_POSITION).float()
    return noise + end_bias + position_bias


def _video() -> TokenSet:
    """8 frames x 16 tokens, 4 segments of 2 similar frames."""
    return chunks_of(scene_video(8, scene_length=2), 8, (4, 4))[0].to_tokenset()


def test_adatp_when_attention_is_end_and_position_biased_then_picks_spread_where_fastv_piles_up():
    # given biased attention and a question with no preference for any segment
    tokens = _video()
    model = FakeHooks(attention=biased_attention, relevance=lambda t: torch.zeros(len(t)))
    context = SelectContext("what happened?", model)
    # when both methods keep 16 of 128 tokens
    fastv = build_method("fastv").select(tokens, 16, context)
    adatp = build_method("adatp").select(tokens, 16, context)
    segment_of = lambda ts: ts.frame // 2  # noqa: E731
    # then fastv keeps only the last segment, and the biased position in each of its frames
    assert segment_of(fastv).unique().tolist() == [3], "fastv must follow the end-of-sequence bias"
    assert int((fastv.position == BIASED_POSITION).sum()) == 2
    # and adatp gives every segment its length share and never the same position twice in a segment
    assert torch.bincount(segment_of(adatp), minlength=4).tolist() == [4, 4, 4, 4]
    pairs = segment_of(adatp) * 16 + adatp.position
    assert pairs.unique().numel() == 16, "one token per spatial position per segment"
    assert int((adatp.position == BIASED_POSITION).sum()) <= 4


def test_adatp_when_question_matches_a_segment_then_that_segment_gets_more_budget_above_a_floor():
    tokens = _video()
    relevance = lambda t: (t.frame // 2 == 1).float()  # noqa: E731  segment 1 matches the question
    model = FakeHooks(attention=biased_attention, relevance=relevance)
    out = build_method("adatp").select(tokens, 16, SelectContext("red car?", model))
    counts = torch.bincount(out.frame // 2, minlength=4).tolist()
    assert counts[1] > max(counts[0], counts[2], counts[3]), f"relevant segment not favoured: {counts}"
    assert min(counts) >= 1 and sum(counts) == 16, f"the length floor must keep every segment: {counts}"


def test_adatp_when_budget_exceeds_positions_then_second_best_per_position_are_admitted():
    tokens = _video()
    model = FakeHooks(attention=biased_attention, relevance=lambda t: torch.zeros(len(t)))
    out = build_method("adatp").select(tokens, 80, SelectContext("q", model))  # 20 per segment > 16
    assert torch.bincount(out.frame // 2, minlength=4).tolist() == [20, 20, 20, 20]


def test_adatp_when_tokens_carry_stage1_segments_then_those_are_used():
    # given tokens whose side["segment"] puts frames 0-5 in one segment and 6-7 in another
    tokens = _video()
    tokens = replace(tokens, side={**tokens.side, "segment": (tokens.frame >= 6).long() + 7})
    model = FakeHooks(attention=biased_attention, relevance=lambda t: torch.zeros(len(t)))
    out = build_method("adatp:lam=0").select(tokens, 16, SelectContext("q", model))
    assert int((out.frame >= 6).sum()) == 4, "budget follows the given segments' lengths (96:32 tokens)"
    frames_only = build_method("adatp:segments=frames,lam=0").select(tokens, 16, SelectContext("q", model))
    assert torch.bincount(frames_only.frame // 2, minlength=4).tolist() == [4, 4, 4, 4]


def test_adatp_when_no_model_is_given_then_raises_naming_what_it_needs():
    import pytest

    with pytest.raises(ValueError, match="adatp.*probe_attention"):
        build_method("adatp").select(_video(), 8, SelectContext("q", None))


def test_adatp_relevance_when_default_then_from_the_llm_hidden_states_at_rel_layer():
    tokens = _video()
    model = FakeHooks(attention=biased_attention)
    build_method("adatp:rel_layer=3").select(tokens, 16, SelectContext("red car?", model))
    assert model.calls == ["probe_attention@2", "question_states@3"]
    proxy = FakeHooks(attention=biased_attention)
    build_method("adatp:rel_source=embedding").select(tokens, 16, SelectContext("red car?", proxy))
    assert proxy.calls == ["probe_attention@2", "text_relevance"]


def test_hidden_relevance_when_states_given_then_cosine_with_the_mean_question_state():
    from compression.methods.adatp import hidden_relevance

    question = torch.tensor([[1.0, 0.0, 0.0], [1.0, 2.0, 0.0]])  # mean (1, 1, 0)
    visual = torch.tensor([[2.0, 2.0, 0.0], [0.0, 0.0, 5.0], [1.0, 0.0, 0.0], [-3.0, -3.0, 0.0]])
    expected = torch.tensor([1.0, 0.0, 1 / 2**0.5, -1.0])
    assert torch.allclose(hidden_relevance(question, visual), expected, atol=1e-6)
    assert hidden_relevance(question, torch.zeros(0, 3)).shape == (0,)
