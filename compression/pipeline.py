"""The two-stage pipeline used by workers and benches: stage 1 -> rolling memory -> stage 2.

Usage::

    pipe = Pipeline("tome:ratio=0.5", memory_budget=8192, stage2_spec="adatp", llm_budget=1024)
    state = pipe.init()
    state = pipe.ingest(state, block)             # per chunk, in order
    kept = pipe.select(state, question, model)    # at question time

Building a pipeline builds both methods, which for learned methods (``vtm:saliency_path=``,
``cacovid:policy_path=``) reads their weights: build it once per process and reuse it
(:class:`PipelineCache`). Methods keep no per-stream state of their own (it travels in
:class:`PipelineState`), so one pipeline serves every stream and thread.
"""

from __future__ import annotations

import threading
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


@dataclass(frozen=True)
class PipelineSpec:
    """What identifies a pipeline: the two method specs and the two budgets."""

    stage1: str
    memory_budget: int
    stage2: str
    llm_budget: int

    def describe(self) -> str:
        """The specs, as recorded with every answer."""
        return (f"stage1={self.stage1}; memory_budget={self.memory_budget}; "
                f"stage2={self.stage2}; llm_budget={self.llm_budget}")


class Pipeline:
    """Stage-1 spec, memory budget, stage-2 spec and LLM token budget, built once."""

    def __init__(self, stage1_spec: str, memory_budget: int, stage2_spec: str, llm_budget: int,
                 stage1_objects: dict[str, Any] | None = None, stage2_objects: dict[str, Any] | None = None):
        self.stage1_spec, self.stage2_spec = stage1_spec, stage2_spec
        self.memory_budget, self.llm_budget = memory_budget, llm_budget
        self.stage1 = build_method(stage1_spec, stage=1, **(stage1_objects or {}))
        self.stage2 = build_method(stage2_spec, stage=2, **(stage2_objects or {}))

    @classmethod
    def from_spec(cls, spec: PipelineSpec) -> Pipeline:
        return cls(spec.stage1, spec.memory_budget, spec.stage2, spec.llm_budget)

    @property
    def spec(self) -> PipelineSpec:
        return PipelineSpec(self.stage1_spec, self.memory_budget, self.stage2_spec, self.llm_budget)

    def describe(self) -> str:
        """The specs, as recorded with every answer."""
        return self.spec.describe()

    def init(self) -> PipelineState:
        return PipelineState(self.stage1.init_state(), Memory(self.memory_budget))

    def ingest(self, state: PipelineState, block: TokenBlock) -> PipelineState:
        return self.step(state, block)[0]

    def step(self, state: PipelineState, block: TokenBlock) -> tuple[PipelineState, TokenSet]:
        """``ingest`` that also returns what stage 1 kept of the block (for the chunk's figures)."""
        stage1, compressed = self.stage1.update(state.stage1, block)
        return PipelineState(stage1, state.memory.append(compressed)), compressed

    def select(self, state: PipelineState, question: str, model: ModelHooks | None = None,
               window: tuple[float | None, float | None] = (None, None), seed: int = 0) -> TokenSet:
        return self.choose(state.memory.window(*window), question, model, seed)

    def choose(self, tokens: TokenSet, question: str, model: ModelHooks | None = None, seed: int = 0) -> TokenSet:
        """Stage 2 over ``tokens`` already taken from the memory (``select`` without the window step)."""
        return self.stage2.select(tokens, self.llm_budget, SelectContext(question, model, seed))


class PipelineCache:
    """Pipelines built once per spec and process (thread-safe); ``builds`` counts constructions."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pipelines: dict[PipelineSpec, Pipeline] = {}
        self.builds = 0

    def get(self, spec: PipelineSpec) -> Pipeline:
        with self._lock:  # held while building: two threads never read the same weights twice
            pipe = self._pipelines.get(spec)
            if pipe is None:
                pipe = self._pipelines[spec] = Pipeline.from_spec(spec)
                self.builds += 1
            return pipe
