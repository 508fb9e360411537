"""Chunk application is exactly-once and in order; questions are answered once."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
import torch

import workers.tasks  # noqa: F401 - registers the Celery tasks the worker runs
from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from store.memory_store import MemoryRecord, encode_record
from tests.conftest import REDIS_URL
from workers import services
from workers.app import create_celery
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


class _Planted:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _archive(payload: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return buffer.getvalue()


@pytest.fixture(params=["local", "redis"])
def any_runtime(request, settings):  # type: ignore[no-untyped-def]
    """A runtime on the local memory store or on Redis (database 15, flushed)."""
    if request.param == "redis":
        request.getfixturevalue("redis_client")
        settings.redis_url = REDIS_URL
    settings.ensure_dirs()
    return Runtime(settings, auto_upgrade=True)


def _plant(rt: Runtime, stream_id: str, marker: str) -> bytes:
    """Replace the stream's stored memory by payloads that would create ``marker`` if unpickled.

    Locally the file is a raw pickle (as older versions wrote); on Redis the hash is in the current
    format but its memory is a pickle and its state a torch.save archive (a writer who knows the format).
    Returns what is stored, to check it is left untouched.
    """
    payload = _Planted(marker)
    if rt.redis is None:
        rt.memory_store.save(stream_id, MemoryRecord(1, -1, b"", b"", 0), expected_version=0)  # a size sidecar too
        path = rt.memory_store.root / f"{stream_id}.mem"
        path.write_bytes(pickle.dumps(payload))
        return path.read_bytes()
    key = f"vidmem:memory:{stream_id}"
    rt.redis.hset(key, mapping={"format": 2, "version": 1, "last_seq": -1, "tokens": 0,
                                "memory": pickle.dumps(payload), "state": _archive({"stage1": payload})})
    return repr(sorted(rt.redis.hgetall(key).items())).encode()


def _stored(rt: Runtime, stream_id: str) -> bytes:
    if rt.redis is None:
        return (rt.memory_store.root / f"{stream_id}.mem").read_bytes()
    return repr(sorted(rt.redis.hgetall(f"vidmem:memory:{stream_id}").items())).encode()


def _worker_app(rt: Runtime):  # type: ignore[no-untyped-def]
    app = create_celery(rt.settings)
    app.vidmem_runtime = rt  # type: ignore[attr-defined]
    return app


def test_process_chunk_when_stored_memory_is_a_planted_pickle_fails_the_chunk_and_runs_nothing(
    any_runtime, stream_with_chunks, tmp_path
):
    # given a stream whose stored memory was replaced by payloads that would create a marker file
    rt, stream_id, marker = any_runtime, stream_with_chunks, tmp_path / "ran"
    planted = _plant(rt, stream_id, str(marker))
    task = _worker_app(rt).tasks["vidmem.chunks.process"]
    # when the worker's task runs chunk 0
    outcome = task.apply(args=(stream_id, 0)).get()
    # then the chunk failed with the reason, nothing ran, the store is untouched and the worker goes on
    assert outcome == "failed"
    with session_scope(rt.sessions) as session:
        chunk = repo.get_chunk(session, stream_id=stream_id, seq=0)
        assert chunk.status == "failed" and "memory format changed" in chunk.error
        assert "not unpickled" in chunk.error and f"stream {stream_id}" in chunk.error
    assert not marker.exists(), "the planted payload was executed"
    assert _stored(rt, stream_id) == planted, "a refused memory must not be overwritten"
    assert rt.blobs.get("b0") is not None, "the frames of a failed chunk are not consumed"


def test_process_chunk_when_the_refused_memory_is_deleted_then_the_stream_goes_on_afresh(
    any_runtime, stream_with_chunks, tmp_path
):
    rt, stream_id = any_runtime, stream_with_chunks
    _plant(rt, stream_id, str(tmp_path / "ran"))
    task = _worker_app(rt).tasks["vidmem.chunks.process"]
    assert task.apply(args=(stream_id, 0)).get() == "failed"
    if rt.redis is None:
        (rt.memory_store.root / f"{stream_id}.mem").unlink()  # its stale size sidecar may stay
    else:
        rt.redis.delete(f"vidmem:memory:{stream_id}")

    assert task.apply(args=(stream_id, 1)).get() == "applied"

    assert rt.memory_store.load(stream_id).last_seq == 1


def test_answer_question_when_stored_memory_is_a_planted_pickle_fails_the_question_and_runs_nothing(
    any_runtime, stream_with_chunks, tmp_path
):
    rt, stream_id, marker = any_runtime, stream_with_chunks, tmp_path / "ran"
    _plant(rt, stream_id, str(marker))
    with session_scope(rt.sessions) as session:
        question_id = repo.create_question(session, stream_id=stream_id, text="What is there?").id

    outcome = _worker_app(rt).tasks["vidmem.questions.answer"].apply(args=(question_id,)).get()

    assert outcome == "failed" and not marker.exists()
    with session_scope(rt.sessions) as session:
        question = repo.get_question(session, question_id)
        assert question.status == "failed" and "memory format changed" in question.error and question.answer is None


def test_apply_chunk_when_local_record_holds_a_planted_torch_archive_refuses_it(runtime, stream_with_chunks, tmp_path):
    # given a local record in the current container format whose state is a torch.save archive with a payload
    marker = tmp_path / "ran"
    record = MemoryRecord(1, -1, b"", _archive({"stage1": _Planted(str(marker))}), 0)
    (runtime.memory_store.root / f"{stream_with_chunks}.mem").write_bytes(encode_record(record))
    # when the chunk is applied, then it is refused by name and nothing ran
    with pytest.raises(ValueError, match="this Stage1State is a torch.save archive"):
        services.apply_chunk(runtime, stream_with_chunks, 0)
    assert not marker.exists(), "the planted payload was executed"


def test_apply_chunk_when_stage1_keeps_state_then_it_round_trips_through_the_store(any_runtime, stream_with_chunks):
    # given a stage-1 method with tensor state (adaptive segments keep the previous frame)
    rt = any_runtime
    rt.settings.stage1 = "adatp-local"
    # when three chunks are applied, each loading the state the previous one stored
    outcomes = [services.apply_chunk(rt, stream_with_chunks, seq) for seq in range(3)]
    # then the stored state holds tensors and values, and re-storing it gives the same bytes
    assert outcomes == ["applied"] * 3
    loaded = services.StreamMemory.load(rt, stream_with_chunks)
    assert isinstance(loaded.stage1_state["prev"], torch.Tensor) and loaded.stage1_state["segment"] >= 0
    assert loaded.frames_seen > 0 and loaded.last_seq == 2
    assert loaded.to_record() == rt.memory_store.load(stream_with_chunks)
