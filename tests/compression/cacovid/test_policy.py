"""Specification of the CaCoVID policy network (the release's compression_policy.py) and its checkpoints."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression.cacovid.policy import (
    CompressionPolicy,
    ModelSignature,
    PolicyConfig,
    PolicyMismatchError,
    load_policy,
    read_header,
    save_policy,
)

CFG = PolicyConfig(hidden_size=32, num_heads=4, num_kv_heads=2, intermediate_size=48, rope_theta=10000.0)


def _policy(name: str = "tiny-a", vocab: int = 100) -> CompressionPolicy:
    torch.manual_seed(0)
    return CompressionPolicy(CFG, ModelSignature.of(name, (vocab, CFG.hidden_size)))


def test_policy_when_scoring_then_one_score_per_token_and_frame() -> None:
    policy = _policy()
    video = torch.randn(12, 32)
    frame = torch.tensor([5, 5, 5, 5, 7, 7, 7, 7, 9, 9, 9, 9])
    out = policy(torch.randn(6, 32), video, frame)
    assert out.token_logits.shape == (12, 2) and out.frame_logits.shape == (3, 2)
    assert out.token_scores.shape == (12,) and out.frame_scores.shape == (3,)


def test_policy_when_question_changes_then_token_scores_change() -> None:
    policy = _policy()
    video, frame = torch.randn(8, 32), torch.arange(8) // 4
    a = policy(torch.randn(3, 32), video, frame).token_scores
    b = policy(torch.randn(3, 32), video, frame).token_scores
    assert not torch.allclose(a, b), "video tokens must attend to the question (bidirectional layer)"


def test_load_policy_when_checkpoint_is_for_another_model_then_clear_error(tmp_path: Path) -> None:
    # given a policy saved for model A
    path = save_policy(_policy("tiny-a", vocab=100), tmp_path / "p.pt")
    # when loading it for a model with another embedding shape
    other = ModelSignature.of("tiny-b", (120, 32))
    # then
    with pytest.raises(PolicyMismatchError, match="trained for model 'tiny-a'.*'tiny-b'"):
        load_policy(path, expect=other)
    with pytest.raises(PolicyMismatchError, match="hidden size 32"):
        load_policy(path, expect=ModelSignature.of("wide", (100, 64)))


def test_load_policy_when_same_model_then_identical_scores(tmp_path: Path) -> None:
    policy = _policy()
    path = save_policy(policy, tmp_path / "p.pt")
    loaded = load_policy(path, expect=ModelSignature.of("renamed-folder", (100, 32)))
    q, v, f = torch.randn(4, 32), torch.randn(8, 32), torch.arange(8) // 2
    assert torch.equal(policy(q, v, f).token_logits, loaded(q, v, f).token_logits)
    assert read_header(path).name == "tiny-a"


def test_load_policy_when_file_is_not_a_policy_then_error(tmp_path: Path) -> None:
    torch.save({"x": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a CaCoVID policy"):
        load_policy(tmp_path / "bad.pt")


def test_policy_layer_when_initialised_from_qwen2_layer0_then_matches_transformers() -> None:
    # given an HF Qwen2 decoder layer (the LLM of LLaVA-OneVision)
    from transformers import Qwen2Config
    from transformers.models.qwen2.modeling_qwen2 import Qwen2DecoderLayer, Qwen2RotaryEmbedding

    config = Qwen2Config(
        hidden_size=32,
        intermediate_size=48,
        num_attention_heads=4,
        num_key_value_heads=2,
        rope_theta=10000.0,
        rms_norm_eps=1e-6,
        attn_implementation="eager",
    )
    torch.manual_seed(1)
    hf = Qwen2DecoderLayer(config, 0).eval()
    for p in hf.parameters():
        torch.nn.init.normal_(p, std=0.2)
    state = {f"model.layers.0.{k}": v for k, v in hf.state_dict().items()}
    # when
    policy = CompressionPolicy.from_llm_layer(
        state, hidden_size=32, num_heads=4, num_kv_heads=2, rope_theta=10000.0, rms_norm_eps=1e-6
    )
    x = torch.randn(1, 10, 32)
    pos = torch.arange(10)[None]
    cos, sin = Qwen2RotaryEmbedding(config)(x, pos)
    expected = hf(x, attention_mask=None, position_ids=pos, position_embeddings=(cos, sin))
    expected = expected[0] if isinstance(expected, tuple) else expected
    from compression.cacovid.policy import rotary

    c, s = rotary(torch.arange(10), 8, 10000.0)
    got = policy.layer(x[0], c, s)
    # then (no mask: bidirectional in both)
    assert torch.allclose(got, expected[0], atol=1e-5), (got - expected[0]).abs().max()
