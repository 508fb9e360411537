"""The trained policy as the stage-2 ``cacovid`` method's TokenScorer (compression/scoring.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression.cacovid import PolicyMismatchError, load_scorer
from compression.cacovid.policy import CompressionPolicy, ModelSignature, PolicyConfig, save_policy
from compression.registry import SelectContext, build_method
from compression.scoring import TokenScorer
from compression.tokens import TokenBlock


class FakeAdapter:
    """Stands in for the vlm adapter's embedding hooks (a tokenizer of characters)."""

    def __init__(self, name: str, vocab: int, dim: int) -> None:
        self.name = name
        self.table = torch.nn.Embedding(vocab, dim)

    def text_ids(self, text: str, specials: bool = True) -> list[int]:
        return [ord(c) % self.table.num_embeddings for c in text]

    def input_embeddings(self) -> torch.nn.Embedding:
        return self.table


def _saved_policy(tmp_path: Path, vocab: int = 50) -> Path:
    cfg = PolicyConfig(hidden_size=16, num_heads=2, num_kv_heads=1, intermediate_size=24, rope_theta=1e4)
    torch.manual_seed(0)
    return save_policy(CompressionPolicy(cfg, ModelSignature.of("fake-a", (vocab, 16))), tmp_path / "p.pt")


def _tokens() -> TokenBlock:
    return TokenBlock(features=torch.randn(5, 9, 16), timestamps=torch.arange(5, dtype=torch.float64), grid=(3, 3),
                      frame_offset=10)


def test_scorer_when_loaded_then_satisfies_the_protocol_and_scores_every_token_and_frame(tmp_path: Path) -> None:
    scorer = load_scorer(_saved_policy(tmp_path))
    assert isinstance(scorer, TokenScorer)
    tokens = _tokens().to_tokenset()
    u, v = scorer.score("what colour?", tokens, FakeAdapter("fake-a", 50, 16))
    assert u.shape == (45,) and v.shape == (5,)


def test_cacovid_method_when_given_the_policy_path_then_returns_exactly_the_budget(tmp_path: Path) -> None:
    method = build_method(f"cacovid:policy_path={_saved_policy(tmp_path)}")
    tokens = _tokens().to_tokenset()
    kept = method.select(tokens, 9, SelectContext(question="which shape?", model=FakeAdapter("fake-a", 50, 16)))
    assert len(kept) == 9


def test_scorer_when_the_running_model_is_another_then_clear_error(tmp_path: Path) -> None:
    scorer = load_scorer(_saved_policy(tmp_path, vocab=50))
    with pytest.raises(PolicyMismatchError, match="trained for model 'fake-a'.*running model is 'fake-b'"):
        scorer.score("q", _tokens().to_tokenset(), FakeAdapter("fake-b", 60, 16))
