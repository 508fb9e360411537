"""Pipeline: stage 1 -> bounded memory -> stage 2, as the workers and benches run it."""

from __future__ import annotations

import pytest

from compression.pipeline import Pipeline
from tests.compression.helpers import FakeHooks, chunks_of, scene_video


def test_pipeline_when_chunks_are_ingested_then_memory_stays_bounded_and_selection_meets_the_llm_budget():
    # given a pipeline with a memory of 100 tokens and an LLM budget of 24
    pipe = Pipeline("tome:ratio=0.5", 100, "adatp", 24)
    state = pipe.init()
    # when 6 chunks of 8 frames are ingested and a question is asked
    for block in chunks_of(scene_video(48, scene_length=6), 8, (4, 4)):
        state = pipe.ingest(state, block)
        assert state.memory.num_tokens <= 100
    kept = pipe.select(state, "what moved?", FakeHooks())
    # then the LLM sees exactly its budget, and the specs are recorded
    assert len(kept) == 24 and state.memory.chunks_applied == 6
    assert pipe.describe() == "stage1=tome:ratio=0.5; memory_budget=100; stage2=adatp; llm_budget=24"


def test_pipeline_when_a_window_is_asked_then_only_tokens_seen_in_it_are_candidates():
    pipe = Pipeline("uniform:ratio=0.5", 10_000, "uniform", 1000)
    state = pipe.init()
    for block in chunks_of(scene_video(16, scene_length=4), 8, (4, 4)):
        state = pipe.ingest(state, block)
    kept = pipe.select(state, "q", window=(2.0, 3.0))  # frames 4..6 at 2 fps
    assert kept.frame.unique().tolist() == [4, 5, 6]


def test_pipeline_when_a_stage2_spec_names_a_stage1_method_then_it_fails_at_construction():
    with pytest.raises(ValueError, match="not a stage-2 method"):
        Pipeline("none", 10, "tome", 5)
