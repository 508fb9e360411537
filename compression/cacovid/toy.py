"""A pure-torch stand-in for the Video LLM reward, to test and ablate CaCoVID training on a CPU in seconds.

Used by tests and by ``bench/train_cacovid.py --model toy``; the real reward comes from the frozen
Video LLM (arXiv 2602.01649; the released trainer's accuracy reward: answer correctness on the
kept tokens). Here a sample's question names one concept from a codebook; a few *evidence* tokens
in one frame carry that concept, *distractor* tokens carry other concepts, and the rest are noise.
The reward of a mask is 1 when it keeps at least one evidence token, else 0: a combination reward
where attention-free ranking must learn to match question and tokens.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from compression.cacovid.trainer import SampleInput


@dataclass(frozen=True)
class ToySpec:
    dim: int = 32
    frames: int = 8
    tokens_per_frame: int = 16
    concepts: int = 6
    evidence: int = 2  # evidence tokens, all in one frame
    distractors: int = 6  # tokens carrying other concepts
    question_len: int = 4
    signal: float = 1.0  # concept amplitude over unit noise


@dataclass
class ToySample:
    input: SampleInput
    evidence: Tensor  # [F, N] bool


class ToyTask:
    """Deterministic toy samples from (seed, index) and their reward function."""

    def __init__(self, spec: ToySpec = ToySpec(), seed: int = 0) -> None:
        self.spec = spec
        g = torch.Generator().manual_seed(seed)
        self.codebook = torch.nn.functional.normalize(torch.randn(spec.concepts, spec.dim, generator=g), dim=-1) * 3
        self.fillers = torch.randn(5, spec.dim, generator=g)  # question words other than the concept

    def sample(self, index: int) -> ToySample:
        s = self.spec
        g = torch.Generator().manual_seed(10_000 + index)
        concept = int(torch.randint(s.concepts, (1,), generator=g))
        feats = torch.randn(s.frames, s.tokens_per_frame, s.dim, generator=g) * 0.5
        flat = feats.view(-1, s.dim)
        frame = int(torch.randint(s.frames, (1,), generator=g))
        ev_pos = frame * s.tokens_per_frame + torch.randperm(s.tokens_per_frame, generator=g)[: s.evidence]
        others = torch.tensor([i for i in range(flat.shape[0]) if i not in set(ev_pos.tolist())])
        dis_pos = others[torch.randperm(len(others), generator=g)[: s.distractors]]
        flat[ev_pos] += s.signal * self.codebook[concept]
        wrong = (concept + 1 + torch.randint(s.concepts - 1, (s.distractors,), generator=g)) % s.concepts
        flat[dis_pos] += s.signal * self.codebook[wrong]
        words = self.fillers[torch.randint(len(self.fillers), (s.question_len,), generator=g)].clone()
        words[int(torch.randint(s.question_len, (1,), generator=g))] = self.codebook[concept]
        evidence = torch.zeros(flat.shape[0], dtype=torch.bool)
        evidence[ev_pos] = True
        return ToySample(SampleInput(question=words, features=feats), evidence.view(s.frames, s.tokens_per_frame))

    @staticmethod
    def rewards(sample: ToySample, masks: Tensor) -> Tensor:
        """masks [B, F, N] -> [B] float: 1 where an evidence token is kept."""
        return (masks & sample.evidence[None]).flatten(1).any(-1).float()
