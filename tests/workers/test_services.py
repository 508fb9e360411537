"""Chunk application is exactly-once and in order; questions are answered once."""

from __future__ import annotations

import numpy as np
import pytest

from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from workers import services
from workers.runtime import Runtime


@pytest.fixture
def runtime(settings):  # type: ignore[no-untyped-def]
    settings.ensure_dirs()
    return Runtime(settings, auto_upgrade=True)


@pytest.fixture
def stream_with_chunks(runtime):  # type: ignore[no-untyped-def]
    """A stream with chunks 0, 1, 2 recorded and their frames in the blob store."""
    rng = np.random.default_rng(0)
    with session_scope(runtime.sessions) as session:
        stream_id = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x").id
        for seq in range(3):
            images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
            runtime.blobs.put(f"b{seq}", pack_frames(images, np.array([2.0 * seq, 2.0 * seq + 1])))
            repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                              num_frames=2, blob_key=f"b{seq}")
    return stream_id


def test_apply_chunk_when_predecessor_pending_waits(runtime, stream_with_chunks):
    with pytest.raises(services.NotReadyYet):
        services.apply_chunk(runtime, stream_with_chunks, 1)


def test_apply_chunk_in_order_then_again_applies_each_once(runtime, stream_with_chunks):
    outcomes = [services.apply_chunk(runtime, stream_with_chunks, seq) for seq in (0, 1, 2, 1, 0)]

    assert outcomes[:3] == ["applied"] * 3
    assert all(o.startswith("chunk already") for o in outcomes[3:])
    record = runtime.memory_store.load(stream_with_chunks)
    assert record.version == 3 and record.last_seq == 2


def test_apply_chunk_when_predecessor_dropped_goes_on(runtime, stream_with_chunks):
    with session_scope(runtime.sessions) as session:
        repo.get_chunk(session, stream_id=stream_with_chunks, seq=0).status = "dropped"

    assert services.apply_chunk(runtime, stream_with_chunks, 1) == "applied"


def test_apply_chunk_when_frames_expired_fails_the_chunk_with_reason(runtime, stream_with_chunks):
    runtime.blobs.delete("b0")

    services.apply_chunk(runtime, stream_with_chunks, 0)

    with session_scope(runtime.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_with_chunks, seq=0)
        assert chunk.status == "failed" and "expired" in chunk.error


def test_answer_question_twice_answers_once(runtime, stream_with_chunks):
    services.apply_chunk(runtime, stream_with_chunks, 0)
    with session_scope(runtime.sessions) as session:
        question_id = repo.create_question(session, stream_id=stream_with_chunks, text="What is there?").id

    first = services.answer_question(runtime, question_id)
    second = services.answer_question(runtime, question_id)

    assert (first, second) == ("answered", "question already done")
    with session_scope(runtime.sessions) as session:
        question = repo.get_question(session, question_id)
        assert question.attempts == 1 and question.visual_tokens_before == question.visual_tokens_after > 0


def test_apply_chunk_when_motion_merging_is_configured_uses_the_ingest_motion(runtime):
    runtime.settings.stage1 = "vtm:target=motion"
    images = np.random.default_rng(1).integers(0, 255, (3, 32, 32, 3), dtype=np.uint8)
    motion = np.zeros((3, 4, 4), np.float32)
    motion[:, :2] = 5.0  # the top half moves
    with session_scope(runtime.sessions) as session:
        stream_id = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x").id
        runtime.blobs.put("m0", pack_frames(images, np.array([0.0, 0.5, 1.0]), motion))
        repo.create_chunk(session, stream_id=stream_id, seq=0, t_start=0, t_end=1.5, num_frames=3, blob_key="m0")

    assert services.apply_chunk(runtime, stream_id, 0) == "applied"

    with session_scope(runtime.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        assert 0 < chunk.tokens_out < chunk.tokens_in, "vtm merged some tokens"
