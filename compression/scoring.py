"""The protocol a learned token-selection policy (CaCoVID, compression/cacovid/) offers stage 2."""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from compression.tokens import TokenSet


@runtime_checkable
class TokenScorer(Protocol):
    def score(self, question: str, tokens: TokenSet, hooks: Any) -> tuple[Tensor, Tensor]:
        """(token scores u [K], frame scores v [F']) with F' = len(tokens.frames()), frames ascending.

        ``hooks`` is the Video LLM adapter (or None) the policy may need to embed the question.
        """
        ...
