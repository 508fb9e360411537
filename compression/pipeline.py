"""The two-stage pipeline used by workers and benches: stage 1 -> rolling memory -> stage 2.

Usage::

    pipe = Pipeline("tome:ratio=0.5", memory_budget=8192, stage2_spec="adatp", llm_budget=1024)
    state = pipe.init()
    state = pipe.ingest(state, block)             # per chunk, in order
    kept = pipe.select(state, question, model)    # at question time
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compression.memory import Memory
from compression.registry import ModelHooks, SelectContext, build_method
from compression.tokens import TokenBlock, TokenSet


@dataclass(frozen=True)
class PipelineState:
    """What a stream carries between chunks: the stage-1 state and the memory."""

    stage1: dict
    memory: Memory


class Pipeline:
    """Stage-1 spec, memory budget, stage-2 spec and LLM token budget, built once."""

    def __init__(self, stage1_spec: str, memory_budget: int, stage2_spec: str, llm_budget: int,
                 stage1_objects: dict[str, Any] | None = None, stage2_objects: dict[str, Any] | None = None):
        self.stage1_spec, self.stage2_spec = stage1_spec, stage2_spec
        self.memory_budget, self.llm_budget = memory_budget, llm_budget
        self.stage1 = build_method(stage1_spec, stage=1, **(stage1_objects or {}))
        self.stage2 = build_method(stage2_spec, stage=2, **(stage2_objects or {}))

    def describe(self) -> str:
        """The specs, as recorded with every answer."""
        return (f"stage1={self.stage1_spec}; memory_budget={self.memory_budget}; "
                f"stage2={self.stage2_spec}; llm_budget={self.llm_budget}")

    def init(self) -> PipelineState:
        return PipelineState(self.stage1.init_state(), Memory(self.memory_budget))

    def ingest(self, state: PipelineState, block: TokenBlock) -> PipelineState:
        stage1, compressed = self.stage1.update(state.stage1, block)
        return PipelineState(stage1, state.memory.append(compressed))

    def select(self, state: PipelineState, question: str, model: ModelHooks | None = None,
               window: tuple[float | None, float | None] = (None, None), seed: int = 0) -> TokenSet:
        tokens = state.memory.window(*window)
        return self.stage2.select(tokens, self.llm_budget, SelectContext(question, model, seed))
