"""A stream's own settings are what ingest and the worker actually use (issue 18).

Real parts: PyAV decoding a real H.264 clip in the ingest manager (sampling, chunking, media epoch,
latest frame), the tiny random model and stage 1 through ``workers.services`` (the code a worker
runs per chunk and per question, called in this process), SQLite, the API's test client.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from sqlalchemy import select

from compression.registry import state_from_bytes
from store.db import session_scope
from store.models import ChunkRecord
from tests.api.databases import api_client, make_runtime
from tests.workers.cluster import chunk_frames, record_chunks, wait_for
from workers import services
from workers.ingest_manager import IngestManager

pytestmark = pytest.mark.timeout(180)

OWN = {"sample_fps": 4.0, "chunk_seconds": 1.0, "stage1": "uniform:ratio=0.25", "stage2": "recent",
       "memory_budget": 50, "llm_budget": 7}


@pytest.fixture
def runtime(settings, tmp_path):  # type: ignore[no-untyped-def]
    assert (settings.sample_fps, settings.chunk_seconds, settings.stage1) == (2.0, 2.0, "uniform:ratio=0.5")
    return make_runtime(settings, tmp_path)


@pytest.fixture
def client(runtime):  # type: ignore[no-untyped-def]
    with api_client(runtime) as test_client:
        yield test_client


def chunk_rows(runtime, stream_id: str) -> list[ChunkRecord]:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        rows = session.scalars(select(ChunkRecord).where(ChunkRecord.stream_id == stream_id)
                               .order_by(ChunkRecord.seq)).all()
        session.expunge_all()
        return list(rows)


def test_ingest_and_worker_when_a_stream_has_its_own_settings_sample_chunk_compress_and_answer_with_them(
    client, runtime, tmp_path, make_h264,
):
    clip = make_h264(runtime.settings.file_dir / "clip.mp4", seconds=3.0, fps=10)
    stream_id = client.post("/streams", json={"source": str(clip), "settings": OWN}).json()["id"]
    started = datetime.now(UTC)
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    try:
        wait_for(lambda: client.get(f"/streams/{stream_id}").json()["status"] == "ended", 60, 0.1)
    finally:
        manager.stop()

    rows = chunk_rows(runtime, stream_id)
    full = [r for r in rows if r.t_end - r.t_start == pytest.approx(1.0)]
    assert len(rows) >= 3 and len(full) >= 2, [(r.t_start, r.t_end, r.num_frames) for r in rows]
    assert all(r.num_frames == 4 for r in full)  # 4 fps x 1 s, not the deployment's 2 fps x 2 s
    stream = client.get(f"/streams/{stream_id}").json()
    epoch = datetime.fromisoformat(stream["media_epoch"])
    assert started.timestamp() - 1 < epoch.timestamp() < time.time()  # the wall-clock time of stream second 0
    assert client.get(f"/streams/{stream_id}/frame.jpg").status_code == 200

    assert all(services.apply_chunk(runtime, stream_id, r.seq) == "applied" for r in rows)
    for row in chunk_rows(runtime, stream_id):
        assert row.tokens_out * 4 == row.tokens_in, (row.tokens_in, row.tokens_out)  # uniform:ratio=0.25
    memory = services.StreamMemory.load(runtime, stream_id).memory
    assert 0 < memory.num_tokens <= 50 and memory.budget_tokens == 50

    question_id = client.post(f"/streams/{stream_id}/questions", json={"text": "what moved?"}).json()["id"]
    assert services.answer_question(runtime, question_id) == "answered"
    answer = client.get(f"/questions/{question_id}").json()
    assert answer["visual_tokens_after"] == 7 and answer["visual_tokens_before"] == memory.num_tokens
    assert "stage2=recent" in answer["method"] and "llm_budget=7" in answer["method"]
    assert runtime.pipelines.builds == 1  # the stream's pipeline, built once for all its chunks and questions


def test_worker_when_two_streams_have_different_specs_builds_each_pipeline_once(client, runtime):
    own = client.post("/streams", json={"source": "rtsp://127.0.0.1:9/a", "settings": {"stage1": "tome:ratio=0.5"}})
    plain = client.post("/streams", json={"source": "rtsp://127.0.0.1:9/b"})
    ids = [own.json()["id"], plain.json()["id"]]
    for stream_id in ids:
        record_chunks(runtime, stream_id, chunk_frames(seed=2, n=3))

    for seq in range(3):
        for stream_id in ids:
            assert services.apply_chunk(runtime, stream_id, seq) == "applied"

    assert runtime.pipelines.builds == 2
    assert services.StreamMemory.load(runtime, ids[0]).stage1_spec == "tome:ratio=0.5"
    assert services.StreamMemory.load(runtime, ids[1]).stage1_spec == runtime.settings.stage1


def test_worker_when_budget_and_stage1_change_applies_them_from_the_next_chunk(client, runtime):
    stream_id = client.post("/streams", json={"source": "rtsp://127.0.0.1:9/a",
                                              "settings": {"memory_budget": 200, "stage1": "none"}}).json()["id"]
    record_chunks(runtime, stream_id, chunk_frames(seed=3, n=3))
    services.apply_chunk(runtime, stream_id, 0)
    services.apply_chunk(runtime, stream_id, 1)
    held = services.StreamMemory.load(runtime, stream_id).memory.num_tokens
    assert held > 20

    changed = client.patch(f"/streams/{stream_id}", json={"settings": {"memory_budget": 10, "stage1": None}})
    assert changed.status_code == 200, changed.text
    assert services.StreamMemory.load(runtime, stream_id).memory.num_tokens == held  # nothing changes until a chunk
    services.apply_chunk(runtime, stream_id, 2)

    after = services.StreamMemory.load(runtime, stream_id)
    assert after.memory.num_tokens <= 10 and after.memory.budget_tokens == 10
    assert after.stage1_spec == runtime.settings.stage1 == "uniform:ratio=0.5"  # back to the deployment's
    assert state_from_bytes(runtime.memory_store.load(stream_id).state)["stage1_spec"] == "uniform:ratio=0.5"
    first, last = chunk_rows(runtime, stream_id)[0], chunk_rows(runtime, stream_id)[-1]
    assert first.tokens_out == first.tokens_in and last.tokens_out * 2 == last.tokens_in


def test_ingest_when_sampling_changes_on_a_running_stream_restarts_it_with_the_new_rate(
    client, runtime, make_h264,
):
    clip = make_h264(runtime.settings.file_dir / "loop.mp4", seconds=2.0, fps=10)
    stream_id = client.post("/streams", json={"source": str(clip), "loop": True}).json()["id"]
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    try:
        wait_for(lambda: any(r.num_frames == 4 for r in chunk_rows(runtime, stream_id)), 30, 0.1)  # 2 fps x 2 s
        first = manager._running[stream_id].ingest
        client.patch(f"/streams/{stream_id}", json={"settings": {"sample_fps": 5.0, "chunk_seconds": 1.0}})
        wait_for(lambda: any(r.num_frames == 5 for r in chunk_rows(runtime, stream_id)), 30, 0.1)
        assert manager._running[stream_id].ingest is not first and not first.is_alive()
    finally:
        manager.stop()

    rows = chunk_rows(runtime, stream_id)
    assert [r.seq for r in rows] == list(range(len(rows)))  # chunks continue after the stored ones
    assert all(b.t_start >= a.t_end - 1e-6 for a, b in zip(rows, rows[1:], strict=False))
    assert client.get(f"/streams/{stream_id}").json()["status"] in ("live", "stopped")
