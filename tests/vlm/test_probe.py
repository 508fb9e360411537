"""Model hooks for compression: attention probe vs eager attention, text relevance, layer-0 access."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText

from compression.tokens import TokenSet
from tests.vlm.conftest import folder_of
from vlm.base import VideoLLM

QUESTION = "which shape moved left?"


def eager_last_row(folder: Path, model: VideoLLM, tokens: TokenSet, layer: int) -> torch.Tensor:
    """Reference: stock eager attention with output_attentions, last query row, mean over heads."""
    eager = AutoModelForImageTextToText.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    prompt = model.build_prompt(QUESTION, tokens)
    positions = None if prompt.position_ids is None else prompt.position_ids[:, None]
    with torch.no_grad():
        out = eager(inputs_embeds=model.embed(prompt), position_ids=positions, output_attentions=True)
    return out.attentions[layer][0, :, -1].mean(0)[prompt.token_rows]


@pytest.mark.parametrize("layer", [0, 1])
def test_probe_attention_when_compared_then_equals_eager(adapter: VideoLLM, model_cache: Path,
                                                         frames: np.ndarray, layer: int) -> None:
    tokens = adapter.encode(frames, [0.0, 1.0, 2.0, 3.0]).to_tokenset()
    tokens = tokens.gather(torch.randperm(len(tokens), generator=torch.Generator().manual_seed(layer))[:7])
    probed = adapter.probe_attention(QUESTION, tokens, layer)
    reference = eager_last_row(folder_of(adapter, model_cache), adapter, tokens, layer)
    assert probed.shape == (7,)
    assert torch.allclose(probed, reference, atol=1e-5), (probed - reference).abs().max()


def test_probe_attention_when_empty_then_empty(llava: VideoLLM) -> None:
    assert llava.probe_attention(QUESTION, TokenSet.empty(64), 0).shape == (0,)


def test_text_relevance_when_tokens_given_then_one_score_each(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, [0.0, 1.0, 2.0, 3.0]).to_tokenset()
    scores = llava.text_relevance(QUESTION, tokens)
    assert scores.shape == (16,) and torch.isfinite(scores).all() and scores.abs().max() <= 1.0 + 1e-6
    assert torch.equal(scores[[3, 1]], llava.text_relevance(QUESTION, tokens.gather(torch.tensor([3, 1]))))


def test_layer0_when_read_then_matches_text_config(adapter: VideoLLM) -> None:
    state = adapter.layer0_state_dict()
    cfg = adapter.rotary_config()
    assert state["self_attn.q_proj.weight"].shape == (cfg["num_heads"] * cfg["head_dim"], cfg["hidden_size"])
    assert state["self_attn.k_proj.weight"].shape[0] == cfg["num_kv_heads"] * cfg["head_dim"]
    assert "mlp.gate_proj.weight" in state and cfg["rope_theta"] > 0
    assert adapter.input_embeddings().weight.shape[1] == cfg["hidden_size"]


def test_layer0_when_given_to_cacovid_policy_then_it_builds(llava: VideoLLM) -> None:
    from compression.cacovid.policy import CompressionPolicy

    policy = CompressionPolicy.from_llm_layer(llava.layer0_state_dict(), **llava.rotary_config())
    assert torch.equal(policy.layer.state_dict()["mlp.gate_proj.weight"],
                       llava.layer0_state_dict()["mlp.gate_proj.weight"])
