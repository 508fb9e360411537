"""Stage-1 and stage-2 methods, and their weight files, are built once per worker process."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from compression.cacovid.policy import CompressionPolicy, ModelSignature, PolicyConfig, save_policy
from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from workers import services
from workers.runtime import Runtime

CHUNKS, QUESTIONS = 3, 2


def _stream_with_chunks(rt: Runtime, name: str, chunks: int, seed: int = 0) -> str:
    """A stream whose chunks 0..chunks-1 are recorded and have their frames in the blob store."""
    rng = np.random.default_rng(seed)
    with session_scope(rt.sessions) as session:
        stream_id = repo.create_stream(session, name=name, source_url="rtsp://127.0.0.1/x").id
        for seq in range(chunks):
            images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
            rt.blobs.put(f"{stream_id}-{seq}", pack_frames(images, np.array([2.0 * seq, 2.0 * seq + 1])))
            repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                              num_frames=2, blob_key=f"{stream_id}-{seq}")
    return stream_id


@pytest.fixture
def learned_runtime(settings, tmp_path: Path, monkeypatch):  # type: ignore[no-untyped-def]
    """A worker runtime whose stage 1 is learnable VTM and stage 2 CaCoVID, both from weight files.

    ``torch.load`` is wrapped (the real one runs) to count how often each file is read.
    """
    probe = Runtime(settings.model_copy(update={"data_dir": tmp_path / "probe"}))
    probe.settings.ensure_dirs()
    embeddings = probe.model.input_embeddings().weight
    saliency = tmp_path / "saliency.pt"
    torch.save({"u_s": torch.randn(embeddings.shape[1], generator=torch.Generator().manual_seed(1))}, saliency)
    config = PolicyConfig(hidden_size=embeddings.shape[1], num_heads=4, num_kv_heads=2, intermediate_size=32,
                          rope_theta=1e4)
    torch.manual_seed(0)
    policy = save_policy(CompressionPolicy(config, ModelSignature.of(probe.model.name, tuple(embeddings.shape))),
                         tmp_path / "policy.pt")
    reads: Counter[str] = Counter()
    real_load = torch.load

    def counting_load(f, *args, **kwargs):  # type: ignore[no-untyped-def]
        reads[str(f)] += 1
        return real_load(f, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    learned = settings.model_copy(update={"stage1": f"vtm:target=learnable,saliency_path={saliency}",
                                          "stage2": f"cacovid:policy_path={policy}", "llm_budget": 3})
    learned.ensure_dirs()
    rt = Runtime(learned, auto_upgrade=True).for_role("worker")
    return rt, reads, str(saliency), str(policy)


def _ask(rt: Runtime, stream_id: str, text: str) -> str:
    with session_scope(rt.sessions) as session:
        return repo.create_question(session, stream_id=stream_id, text=text).id


def test_worker_when_learned_methods_serve_chunks_and_questions_then_each_weight_file_is_read_once(
    learned_runtime,
):
    rt, reads, saliency, policy = learned_runtime
    # when two streams get three chunks each and two questions each
    streams = [_stream_with_chunks(rt, f"cam{i}", CHUNKS, seed=i) for i in range(2)]
    outcomes = [services.apply_chunk(rt, s, seq) for s in streams for seq in range(CHUNKS)]
    answers = [services.answer_question(rt, _ask(rt, s, f"what moved {i}?")) for s in streams for i in range(QUESTIONS)]
    # then every chunk was applied and every question answered with the learned methods ...
    assert outcomes == ["applied"] * 2 * CHUNKS and answers == ["answered"] * 2 * QUESTIONS
    with session_scope(rt.sessions) as session:
        questions = [q for s in streams for q in repo.list_questions(session, stream_id=s)[0]]
        methods = {q.method for q in questions}
        after = [q.visual_tokens_after for q in questions]
    assert methods == {f"stage1=vtm:target=learnable,saliency_path={saliency}; memory_budget=256; "
                       f"stage2=cacovid:policy_path={policy}; llm_budget=3"}
    assert after == [3] * 2 * QUESTIONS
    # ... and each weight file was read once, by the one pipeline this process built
    assert reads[saliency] == 1 and reads[policy] == 1
    assert rt.pipelines.builds == 1


def test_runtime_when_roles_share_a_process_then_they_share_one_pipeline(settings):
    settings.ensure_dirs()
    api = Runtime(settings, auto_upgrade=True)
    worker = api.for_role("worker")
    assert worker.pipeline is api.pipeline and api.pipelines.builds == 1


def test_pipeline_cache_when_the_spec_changes_then_builds_a_second_pipeline(settings):
    settings.ensure_dirs()
    rt = Runtime(settings, auto_upgrade=True)
    first = rt.pipeline
    rt.settings = settings.model_copy(update={"stage2": "recent"})
    second = rt.pipeline
    assert first is not second and second.stage2_spec == "recent" and rt.pipelines.builds == 2
    assert rt.pipeline is second and rt.pipelines.builds == 2
