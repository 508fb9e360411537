"""The shipped learned artefacts (models/policies/) load and run under the current rules.

They were trained before issue 16's rule changes (release quota repair, rollout replay, nominal group
count, joint frame-mode DPC-kNN, sampled VTM targets); retraining on vidmem-tiny v2 replaces them.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from compression.cacovid import load_policy
from compression.cacovid.scorer import PolicyScorer
from compression.registry import SelectContext, build_method
from compression.tokens import TokenBlock

POLICIES = Path(__file__).resolve().parents[2] / "models" / "policies"


class _Scorer(PolicyScorer):
    """The shipped policy scoring with a fixed question embedding (no Video LLM needed)."""

    def score(self, question, tokens, hooks):  # type: ignore[no-untyped-def]
        q = torch.randn(5, tokens.dim, generator=torch.Generator().manual_seed(0))
        with torch.no_grad():
            out = self.policy(q, tokens.features.float(), tokens.frame)
        return out.token_scores, out.frame_scores


def _block(dim: int) -> TokenBlock:
    feats = torch.randn(16, 9, dim, generator=torch.Generator().manual_seed(1))
    return TokenBlock(feats, torch.arange(16, dtype=torch.float64), (3, 3))


@pytest.mark.parametrize("quotas", ["release", "shares"])
def test_shipped_cacovid_policy_when_loaded_then_selects_exactly_the_budget(quotas: str) -> None:
    policy = load_policy(POLICIES / "cacovid-vidmem-tiny.pt")
    tokens = _block(policy.cfg.hidden_size).to_tokenset()
    method = build_method(f"cacovid:quotas={quotas}", stage=2, scorer=_Scorer(policy))
    for budget in (7, 14, 36):
        assert len(method.select(tokens, budget, SelectContext("q", None))) == budget


def test_shipped_vtm_saliency_when_loaded_then_merges_to_the_partition_size() -> None:
    path = POLICIES / "vtm-saliency-vidmem-tiny.pt"
    dim = int(torch.load(path, weights_only=True)["u_s"].numel())
    method = build_method(f"vtm:target=learnable,saliency_path={path},gamma=6,merge_ratio=1.0", stage=1)
    _, out = method.update(method.init_state(), _block(dim))
    assert len(out) == round(144 / 6) and float(out.size.sum()) == 144.0
