"""CaCoVID (arXiv 2602.01649): the learned contribution-aware compression policy and its RL training parts.

Pure torch. ``policy`` (network, save/load), ``sampler`` (rollouts), ``objective`` (loss, advantages,
retention adaptation), ``scorer`` (the stage-2 ``TokenScorer`` over a TokenSet).
"""

from compression.cacovid.policy import (
    CompressionPolicy,
    ModelSignature,
    PolicyConfig,
    PolicyMismatchError,
    load_policy,
    save_policy,
)
from compression.cacovid.scorer import PolicyScorer, load_scorer

__all__ = [
    "CompressionPolicy",
    "ModelSignature",
    "PolicyConfig",
    "PolicyMismatchError",
    "PolicyScorer",
    "load_policy",
    "load_scorer",
    "save_policy",
]
