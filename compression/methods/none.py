"""Stage 1 ``none``: keep every token of every chunk (the uncompressed reference row of every table)."""

from __future__ import annotations

from dataclasses import dataclass

from compression.registry import register_method
from compression.tokens import TokenBlock, TokenSet


@register_method("none", stage=1)
class NoCompression:
    """Pass-through: update returns the block's F*N tokens."""

    @dataclass(frozen=True)
    class Params:
        pass

    def __init__(self, params: Params) -> None:
        self.params = params

    def init_state(self) -> dict:
        return {}

    def update(self, state: dict, block: TokenBlock) -> tuple[dict, TokenSet]:
        return state, block.to_tokenset()
