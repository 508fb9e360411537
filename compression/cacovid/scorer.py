"""The trained CaCoVID policy as the stage-2 ``TokenScorer`` (compression/scoring.py).

Paper: Ma et al., "Contribution-aware Token Compression for Efficient Video Understanding via
Reinforcement Learning", arXiv 2602.01649, AAAI 2026; inference as the released code runs it
(LivingFutureLab/CaCoVID, ``CompressionPolicy.forward`` then ``sample_token_eval``): the policy runs
once on the video tokens and the question, giving token scores u and frame scores v.
The budget rule itself (steps 2-6) is the ``cacovid`` stage-2 method in compression/methods/.

The question is embedded with the Video LLM's own input embeddings, through the adapter passed as
``hooks`` (``text_ids(question, specials=False)`` + ``input_embeddings()``), exactly as in training
(bench/train_cacovid.py). The first call checks that the adapter's model is the one the policy was
trained for and raises :class:`PolicyMismatchError` otherwise.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from compression.cacovid.policy import CompressionPolicy, ModelSignature, PolicyMismatchError, load_policy
from compression.tokens import TokenSet


def model_signature(hooks: Any) -> ModelSignature:
    """The signature of the Video LLM behind an adapter (name, width, embedding-shape hash)."""
    return ModelSignature.of(str(getattr(hooks, "name", "?")), tuple(hooks.input_embeddings().weight.shape))


@torch.no_grad()
def embed_question(hooks: Any, question: str) -> Tensor:
    """The question's LLM input embeddings [T, D] float32 on CPU (T >= 1)."""
    ids = list(hooks.text_ids(question, specials=False)) or [0]
    table = hooks.input_embeddings()
    return table(torch.tensor(ids, device=table.weight.device)).float().cpu()


class PolicyScorer:
    """Scores a TokenSet with a CompressionPolicy: (u [K], v [F'] for the frames in ascending order)."""

    def __init__(self, policy: CompressionPolicy) -> None:
        self.policy = policy.eval()
        self._checked: set[str] = set()

    def check(self, hooks: Any) -> None:
        """Raise PolicyMismatchError unless ``hooks`` wraps the model the policy was trained for."""
        actual = model_signature(hooks)
        saved = self.policy.signature
        if actual.embedding_hash in self._checked or saved is None:
            return
        if (saved.hidden_size, saved.embedding_hash) != (actual.hidden_size, actual.embedding_hash):
            raise PolicyMismatchError(
                f"cacovid policy was trained for model {saved.name!r} (hidden size {saved.hidden_size}, embedding "
                f"hash {saved.embedding_hash}) but the running model is {actual.name!r} (hidden size "
                f"{actual.hidden_size}, embedding hash {actual.embedding_hash}); train one for it with "
                f"`vidmem train cacovid --model ...`"
            )
        self._checked.add(actual.embedding_hash)

    @torch.no_grad()
    def score(self, question: str, tokens: TokenSet, hooks: Any) -> tuple[Tensor, Tensor]:
        if hooks is None:
            raise ValueError("cacovid needs the Video LLM adapter (SelectContext.model) to embed the question")
        self.check(hooks)
        if len(tokens) == 0:
            return torch.zeros(0), torch.zeros(0)
        q = embed_question(hooks, question)
        weight = self.policy.norm.weight
        out = self.policy(q.to(weight.device, weight.dtype), tokens.features.to(weight.device, weight.dtype),
                          tokens.frame.to(weight.device))
        return out.token_scores.float().cpu(), out.frame_scores.float().cpu()


def load_scorer(path: str | Path) -> PolicyScorer:
    """A saved policy (see :func:`compression.cacovid.policy.save_policy`) as a TokenScorer."""
    return PolicyScorer(load_policy(path))
