"""Cross-stream encode batching: one forward pass for several streams' chunks, same numbers as one by one."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from compression.pipeline import Pipeline
from store import repo
from store.blobs import pack_frames
from store.db import session_scope
from vlm.batch import Clip, encode_many
from workers import services, tasks
from workers.batching import EncodeBatcher
from workers.runtime import Runtime

ATOL = 1e-5


@pytest.fixture
def runtime(settings):  # type: ignore[no-untyped-def]
    small = settings.model_copy(update={"memory_budget": 10, "encode_batch": 8, "encode_wait_ms": 200.0})
    small.ensure_dirs()
    return Runtime(small, auto_upgrade=True).for_role("worker")


def _clips(n: int, frames: int = 3, seed: int = 0) -> list[Clip]:
    rng = np.random.default_rng(seed)
    return [Clip(rng.integers(0, 255, (frames, 40, 48, 3), dtype=np.uint8), [0.5 * i for i in range(frames)], 7 * k)
            for k in range(n)]


def _assert_same_blocks(got, want) -> None:  # type: ignore[no-untyped-def]
    assert len(got) == len(want)
    for a, b in zip(got, want, strict=True):
        assert a.grid == b.grid and a.frame_offset == b.frame_offset
        assert torch.equal(a.timestamps, b.timestamps)
        torch.testing.assert_close(a.features, b.features, atol=ATOL, rtol=0)


def test_encode_many_when_clips_of_several_streams_then_equals_encoding_each_alone(runtime):
    model, clips = runtime.model, _clips(5)
    alone = [model.encode(c.frames, c.timestamps, c.frame_offset) for c in clips]
    # one call of 15 frames, and calls of 4 frames that cut through clips
    _assert_same_blocks(encode_many(model, clips), alone)
    _assert_same_blocks(encode_many(model, clips, max_frames=4), alone)
    mixed = [*clips[:2], Clip(np.full((2, 64, 80, 3), 7, dtype=np.uint8), [9.0, 9.5], 99)]  # another frame size
    _assert_same_blocks(encode_many(model, mixed), [*alone[:2], model.encode(mixed[2].frames, [9.0, 9.5], 99)])


def test_encode_many_when_a_clip_has_wrong_timestamps_then_refuses_the_batch(runtime):
    clips = [*_clips(1), Clip(_clips(1)[0].frames, [0.0], 0)]
    with pytest.raises(ValueError, match="1 timestamps for 3 frames"):
        encode_many(runtime.model, clips)


def _counting(sizes: list[int]):  # type: ignore[no-untyped-def]
    def encode(model, clips):  # type: ignore[no-untyped-def]
        sizes.append(len(clips))
        return encode_many(model, clips)
    return encode


def test_encode_batcher_when_two_threads_encode_at_once_then_one_forward_pass_serves_both(runtime):
    sizes: list[int] = []
    batcher = EncodeBatcher(lambda: runtime.model, max_batch=8, wait_s=30.0, encode=_counting(sizes))
    clips, results = _clips(2), {}
    runtime.model  # noqa: B018 - loaded before the clock starts
    both_on_the_way = threading.Barrier(2)

    def task(i: int) -> None:
        with batcher.expecting():
            both_on_the_way.wait()
            results[i] = batcher.encode([clips[i]])[0]

    threads = [threading.Thread(target=task, args=(i,)) for i in range(2)]
    start = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # one forward pass of 2 clips, well before the 30 s bound, and each thread got its own block
    assert sizes == [2] and time.monotonic() - start < 15.0
    assert results[0].batch == results[1].batch == 2
    _assert_same_blocks([results[0].block, results[1].block],
                        [runtime.model.encode(c.frames, c.timestamps, c.frame_offset) for c in clips])


def test_encode_batcher_when_alone_then_does_not_wait(runtime):
    sizes: list[int] = []
    batcher = EncodeBatcher(lambda: runtime.model, max_batch=8, wait_s=30.0, encode=_counting(sizes))
    runtime.model  # noqa: B018 - loaded before the clock starts
    start = time.monotonic()
    with batcher.expecting():
        batcher.encode(_clips(1))
    assert time.monotonic() - start < 15.0 and sizes == [1]  # not the 30 s bound


def test_encode_batcher_when_one_clip_of_a_batch_is_bad_then_only_its_task_fails(runtime):
    batcher = EncodeBatcher(lambda: runtime.model, max_batch=8, wait_s=5.0)
    good, bad = _clips(1)[0], Clip(_clips(1)[0].frames, [0.0], 0)
    outcome: dict[str, object] = {}
    both_on_the_way = threading.Barrier(2)

    def task(name: str, clip: Clip) -> None:
        with batcher.expecting():
            both_on_the_way.wait()
            try:
                outcome[name] = batcher.encode([clip])[0].block
            except ValueError as exc:
                outcome[name] = exc

    threads = [threading.Thread(target=task, args=a) for a in (("good", good), ("bad", bad))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert isinstance(outcome["bad"], ValueError) and "1 timestamps for 3 frames" in str(outcome["bad"])
    _assert_same_blocks([outcome["good"]], [runtime.model.encode(good.frames, good.timestamps, 0)])


def _stream(rt: Runtime, name: str, chunks: int, seed: int) -> tuple[str, list[tuple[np.ndarray, np.ndarray]]]:
    rng = np.random.default_rng(seed)
    frames = []
    with session_scope(rt.sessions) as session:
        stream_id = repo.create_stream(session, name=name, source_url="rtsp://127.0.0.1/x").id
        for seq in range(chunks):
            images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
            times = np.array([2.0 * seq, 2.0 * seq + 1])
            rt.blobs.put(f"{stream_id}-{seq}", pack_frames(images, times))
            repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                              num_frames=2, blob_key=f"{stream_id}-{seq}")
            frames.append((images, times))
    return stream_id, frames


def _pipeline_memory(rt: Runtime, frames: list[tuple[np.ndarray, np.ndarray]]):  # type: ignore[no-untyped-def]
    """The memory one process builds from the same chunks in order, with compression.pipeline."""
    s = rt.settings
    pipe = Pipeline(s.stage1, s.memory_budget, s.stage2, s.llm_budget)
    state, seen = pipe.init(), 0
    for images, times in frames:
        state = pipe.ingest(state, rt.model.encode(images, times.tolist(), frame_offset=seen))
        seen += images.shape[0]
    return state


def _assert_memory_equal(stored, expected) -> None:  # type: ignore[no-untyped-def]
    got, want = stored.memory.tokens, expected.memory.tokens
    assert stored.memory.chunks_applied == expected.memory.chunks_applied
    assert stored.memory.tokens_evicted == expected.memory.tokens_evicted
    assert torch.equal(got.frame, want.frame) and torch.equal(got.time, want.time)
    assert torch.equal(got.row, want.row) and torch.equal(got.col, want.col) and torch.equal(got.size, want.size)
    torch.testing.assert_close(got.features, want.features, atol=ATOL, rtol=0)


def test_worker_when_streams_are_applied_concurrently_then_memory_equals_the_pipelines(runtime):
    # given three streams of four chunks, applied by three threads at once (one per stream, in order)
    streams = [_stream(runtime, f"cam{i}", 4, seed=i) for i in range(3)]

    def apply_all(stream_id: str) -> None:
        for seq in range(4):
            assert services.apply_chunk(runtime, stream_id, seq) == "applied"

    threads = [threading.Thread(target=apply_all, args=(sid,)) for sid, _ in streams]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    # then every stream's memory (budget 10: consolidated) equals compression.pipeline's over the same chunks
    for stream_id, frames in streams:
        stored = services.StreamMemory.load(runtime, stream_id)
        assert stored.last_seq == 3 and stored.frames_seen == 8
        _assert_memory_equal(stored, _pipeline_memory(runtime, frames))
    assert sum(runtime.encoder.batches) == 12, list(runtime.encoder.batches)


def test_compress_chunks_when_given_several_streams_then_encodes_once_and_matches_the_pipeline(runtime):
    streams = [_stream(runtime, f"cam{i}", 1, seed=10 + i) for i in range(3)]
    work = [services.ChunkWork(sid, services.StreamMemory.fresh(runtime), runtime.blobs.get(f"{sid}-0"), 0)
            for sid, _ in streams]
    results = services.compress_chunks(runtime, work)
    assert list(runtime.encoder.batches) == [3]
    for (updated, figures), (_, frames) in zip(results, streams, strict=True):
        assert figures["timings"]["encode_batch"] == 3 and updated.version == 1 and updated.last_seq == 0
        _assert_memory_equal(updated, _pipeline_memory(runtime, frames))


def test_compress_chunks_when_two_items_share_a_stream_then_refuses_and_encodes_nothing(runtime):
    sid, _ = _stream(runtime, "cam", 2, seed=0)
    fresh = services.StreamMemory.fresh(runtime)
    work = [services.ChunkWork(sid, fresh, runtime.blobs.get(f"{sid}-{seq}"), seq) for seq in range(2)]
    with pytest.raises(ValueError, match="at most one chunk per stream"):
        services.compress_chunks(runtime, work)
    assert list(runtime.encoder.batches) == []


def test_apply_claimed_when_another_chunk_is_loading_then_the_batch_waits_for_it(settings, tmp_path):
    # given a worker whose batches wait up to 30 s for tasks on their way, and chunk 0 of stream B held between
    # its claim and its encode (memory and frames loaded: the test fault point)
    faults = tmp_path / "faults"
    faults.mkdir()
    rt = Runtime(settings.model_copy(update={"encode_batch": 8, "encode_wait_ms": 30_000.0,
                                             "test_fault_dir": faults}), auto_upgrade=True).for_role("worker")
    rt.settings.ensure_dirs()
    (a, _), (b, _) = _stream(rt, "a", 1, seed=20), _stream(rt, "b", 1, seed=21)
    rt.model  # noqa: B018 - loaded before the clock starts
    (faults / f"hold-{b}-0").touch()
    outcome: dict[str, str] = {}
    run_b = threading.Thread(target=lambda: outcome.update(b=tasks.apply_claimed(rt, b, 0)))
    run_b.start()
    wait_until(lambda: (faults / f"holding-{b}-0").exists())
    # when stream A's chunk reaches the encoder
    run_a = threading.Thread(target=lambda: outcome.update(a=tasks.apply_claimed(rt, a, 0)))
    run_a.start()
    wait_until(lambda: rt.encoder.pending == 1)
    time.sleep(0.3)
    # then its forward pass waits for B's chunk, and the two share one
    assert run_a.is_alive() and list(rt.encoder.batches) == []
    (faults / f"hold-{b}-0").unlink()
    run_a.join(60)
    run_b.join(60)
    assert outcome == {"a": "applied", "b": "applied"} and list(rt.encoder.batches) == [2]


def wait_until(predicate, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not met"
        time.sleep(0.01)
