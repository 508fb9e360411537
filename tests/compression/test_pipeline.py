"""Pipeline: stage 1 -> bounded memory -> stage 2, as the workers and benches run it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from compression.pipeline import Pipeline, PipelineCache, PipelineSpec
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


def test_pipeline_step_when_a_chunk_is_ingested_then_returns_what_stage1_kept_and_the_same_state_as_ingest():
    pipe = Pipeline("uniform:ratio=0.5", 10_000, "uniform", 1000)
    block = next(iter(chunks_of(scene_video(8, scene_length=4), 8, (4, 4))))
    state, kept = pipe.step(pipe.init(), block)
    assert len(kept) == 64 and state.memory.num_tokens == 64
    assert torch.equal(state.memory.tokens.features, pipe.ingest(pipe.init(), block).memory.tokens.features)
    chosen = pipe.choose(state.memory.window(), "q")
    assert torch.equal(chosen.features, pipe.select(state, "q").features)


def test_pipeline_cache_when_threads_ask_for_one_spec_then_builds_once_and_reads_the_weights_once(
    tmp_path, monkeypatch
):
    saliency = tmp_path / "u.pt"
    torch.save(torch.randn(8), saliency)
    reads: list[str] = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda f, *a, **k: reads.append(str(f)) or real_load(f, *a, **k))
    cache = PipelineCache()
    spec = PipelineSpec(f"vtm:target=learnable,saliency_path={saliency}", 100, "uniform", 10)
    with ThreadPoolExecutor(4) as pool:
        pipes = list(pool.map(lambda _: cache.get(spec), range(8)))
    assert all(p is pipes[0] for p in pipes) and cache.builds == 1 and reads == [str(saliency)]
    other = cache.get(PipelineSpec(spec.stage1, 100, "recent", 10))
    assert other is not pipes[0] and cache.builds == 2 and reads == [str(saliency)] * 2
    assert other.describe() == f"stage1={spec.stage1}; memory_budget=100; stage2=recent; llm_budget=10"
