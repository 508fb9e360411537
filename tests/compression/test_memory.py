"""Memory: bounded whatever the stream's length, time ordered, windowed, merge before evict, exact bytes."""

from __future__ import annotations

import json
import pickle
import struct

import pytest
import safetensors.torch
import torch

from compression.memory import Memory, consolidate, join_parts, merge_temporal_neighbours
from compression.tokens import FORMAT_VERSION, StoredFormatError, TokenBlock, TokenSet, pack_tensors
from tests.compression.helpers import assert_aligned, assert_same_tokens, synthetic_block


def _chunk(i: int, frames: int = 2, grid: tuple[int, int] = (2, 2), dim: int = 8) -> TokenSet:
    gen = torch.Generator().manual_seed(i)
    n = grid[0] * grid[1]
    times = torch.arange(i * frames, (i + 1) * frames, dtype=torch.float64) * 0.5
    return TokenBlock(torch.randn(frames, n, dim, generator=gen), times, grid, i * frames).to_tokenset()


def test_memory_when_2000_chunks_are_appended_then_it_stays_within_budget_and_time_ordered():
    # given a memory of 64 tokens and a stream of 2,000 chunks of 8 tokens (250 times its budget)
    memory = Memory(64)
    worst, ordered = 0, True
    # when every chunk is appended
    for i in range(2_000):
        memory = memory.append(_chunk(i))
        worst = max(worst, memory.num_tokens)
        t = memory.tokens.time
        ordered &= bool((t[1:] >= t[:-1]).all())
    # then it never exceeded the budget, stayed ordered, and its bookkeeping adds up
    assert worst <= 64, f"memory grew to {worst} tokens over a budget of 64"
    assert ordered, "timestamps must stay ordered"
    assert memory.chunks_applied == 2_000 and memory.tokens_seen == 16_000
    assert memory.tokens_merged + memory.tokens_evicted == 16_000 - memory.num_tokens
    assert memory.tokens_evicted == 0, "4 positions fit in 64 tokens: merging alone must suffice"
    assert float(memory.tokens.size.sum()) == 16_000, "merging conserves the original token count"
    assert memory.nbytes == len(memory.to_bytes())


def test_memory_when_over_budget_then_merges_the_most_similar_temporal_neighbours_first():
    # given one position seen in three frames: a, a + tiny change, then something else
    a = torch.tensor([1.0, 0.0])
    feats = torch.stack([a, a + torch.tensor([0.0, 0.01]), torch.tensor([0.0, 1.0])])[:, None, :]  # [3, 1, 2]
    tokens = TokenBlock(feats, torch.tensor([0.0, 1.0, 2.0], dtype=torch.float64), (1, 1)).to_tokenset()
    # when a budget of 2 forces one merge
    memory = Memory(2).append(tokens)
    # then the first two merged into one token of size 2 spanning 0-1 s, and the distinct third stayed
    assert memory.tokens.size.tolist() == [2.0, 1.0] and memory.tokens.time.tolist() == [1.0, 2.0]
    assert memory.tokens.side["t_start"].tolist() == [0.0, 2.0]
    assert memory.tokens_merged == 1 and memory.tokens_evicted == 0


def test_memory_when_budget_below_the_positions_held_then_evicts_the_oldest():
    # given 16 positions per frame but room for 10 tokens
    memory = Memory(10)
    for i in range(3):
        memory = memory.append(synthetic_block(frames=2, frame_offset=2 * i, seed=i).to_tokenset())
    # then it is at budget, and what is left is the newest frame (older tokens were evicted or merged into it)
    assert memory.num_tokens == 10 and memory.tokens_evicted > 0
    assert memory.tokens.time.tolist() == [2.5] * 10, "only the newest frame may survive eviction"


def test_memory_when_budget_is_zero_then_holds_nothing():
    memory = Memory(0).append(_chunk(0))
    assert memory.num_tokens == 0 and memory.tokens_evicted == 8


def test_memory_window_when_queried_then_returns_only_tokens_inside_the_window():
    # given a memory over 200 chunks (times 0 .. 199.5 s)
    memory = Memory(96)
    for i in range(200):
        memory = memory.append(_chunk(i))
    # when asking for [40 s, 120 s]
    window = memory.window(40.0, 120.0)
    # then every token returned stands for originals seen inside the window ([t_start, time] meets
    # it), every such held token is returned, and all come back in time order
    start, last = window.side["t_start"], window.time
    assert len(window) > 0 and bool(((last >= 40.0) & (start <= 120.0)).all())
    held = memory.tokens
    assert len(window) == int(((held.time >= 40.0) & (held.side["t_start"] <= 120.0)).sum())
    assert_aligned(window)
    assert len(memory.window(None, None)) == memory.num_tokens
    assert bool((memory.window(None, 10.0).side["t_start"] <= 10.0).all())
    assert len(memory.window(1e9, None)) == 0


def test_memory_bytes_when_serialised_then_nbytes_is_the_size_and_round_trip_is_exact():
    # given a consolidated memory (features kept in fp16, as stored)
    memory = Memory(40)
    for i in range(30):
        memory = memory.append(_chunk(i).half())
    # when serialised and read back
    data = memory.to_bytes()
    back = Memory.from_bytes(data)
    # then the reported bytes are the serialised size and everything round-trips
    assert memory.nbytes == len(data)
    assert back.nbytes == len(data) and back.to_bytes() == data
    assert_same_tokens(back.tokens, memory.tokens)
    assert (back.budget_tokens, back.chunks_applied, back.tokens_seen) == (40, 30, 240)


def test_memory_when_empty_then_tokens_window_and_bytes_work():
    memory = Memory(8)
    assert memory.num_tokens == 0 and len(memory.tokens) == 0 and len(memory.window(0, 1)) == 0
    assert Memory.from_bytes(memory.to_bytes()).num_tokens == 0
    assert memory.append(TokenSet.empty(8)).num_tokens == 0


def test_memory_append_when_chunk_arrives_out_of_order_then_tokens_are_reordered_by_time():
    memory = Memory(100).append(_chunk(5)).append(_chunk(1))
    assert_aligned(memory.tokens)
    assert memory.num_tokens == 16 and memory.tokens.time.tolist() == [1.0] * 4 + [1.5] * 4 + [5.0] * 4 + [5.5] * 4


def test_merge_temporal_neighbours_when_asked_for_more_merges_than_edges_then_stops_at_one_per_position():
    tokens = synthetic_block(frames=3, seed=1).to_tokenset()  # 16 positions x 3 frames
    merged = merge_temporal_neighbours(tokens, 1000)
    assert len(merged) == 16 and float(merged.size.sum()) == 48.0
    assert sorted(merged.position.tolist()) == list(range(16))


def test_consolidate_when_features_are_read_in_place_or_joined_first_then_results_are_identical():
    # given a stream of chunks consolidated twice: features read from the held and new tensors in place
    # (what large memories do) and joined into one tensor first (what small memories do)
    in_place = joined = Memory(24)._held(_chunk(0))
    for i in range(1, 40):
        new = Memory._held(_chunk(i))
        outs = []
        for held, join_below in ((in_place, 0), (joined, 1 << 30)):
            meta, rows = join_parts([held, new], join_below=join_below)
            assert len(rows.parts) == (2 if join_below == 0 else 1)
            outs.append(consolidate(meta, rows, 24))
        # then every step merges and evicts the same tokens into the same features
        (in_place, *counts_a), (joined, *counts_b) = outs
        assert counts_a == counts_b, f"chunk {i}: merged/evicted {counts_a} != {counts_b}"
        assert_same_tokens(in_place, joined)
        assert len(in_place) <= 24


class _Planted:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _stored(memory: Memory) -> tuple[dict, dict]:
    data = memory.to_bytes()
    (n,) = struct.unpack_from("<Q", data)
    return safetensors.torch.load(data), json.loads(json.loads(data[8 : 8 + n])["__metadata__"]["vidmem"])


def test_memory_bytes_when_serialised_then_they_are_safetensors_with_a_versioned_json_header():
    memory = Memory(16).append(_chunk(0)).append(_chunk(1))

    tensors, head = _stored(memory)

    assert (head["kind"], head["format"]) == ("Memory", FORMAT_VERSION)
    assert head["meta"]["chunks_applied"] == 2 and head["meta"]["tokens"]["grid"] == [2, 2]
    assert tensors["tokens.features"].dtype == torch.float16 and len(tensors["tokens.time"]) == memory.num_tokens


def test_memory_from_bytes_when_given_a_planted_pickle_refuses_without_running_it(tmp_path):
    # given bytes whose unpickling would create a marker file
    marker = tmp_path / "ran"
    data = pickle.dumps(_Planted(str(marker)))
    # when they are read as a memory, then they are refused by name and nothing ran
    with pytest.raises(StoredFormatError, match="memory format changed: this Memory is a Python pickle"):
        Memory.from_bytes(data)
    assert not marker.exists(), "the planted payload was executed"


def test_memory_from_bytes_when_given_version_1_bytes_says_the_format_changed():
    old = b"VMMEM1" + struct.pack("<I", 2) + b"{}"

    with pytest.raises(StoredFormatError, match="memory format changed: this Memory is a version-1 Memory"):
        Memory.from_bytes(old)


def test_memory_from_bytes_when_truncated_or_garbage_raises_a_clear_error():
    data = Memory(16).append(_chunk(0)).to_bytes()

    for bad in (data[: len(data) // 2], b"\x10" * 64, b""):
        with pytest.raises(StoredFormatError, match="not a serialised Memory: corrupt or unknown data"):
            Memory.from_bytes(bad)


def test_memory_from_bytes_when_given_a_tokenset_or_another_version_names_the_difference():
    tokens = _chunk(0)

    with pytest.raises(StoredFormatError, match="not a serialised Memory: the stored blob is a 'TokenSet'"):
        Memory.from_bytes(tokens.to_bytes())
    future = Memory(16).to_bytes().replace(b'\\"format\\":2', b'\\"format\\":9')
    with pytest.raises(StoredFormatError, match="in format 9, this vidmem reads format 2"):
        Memory.from_bytes(future)


def test_memory_from_bytes_when_fields_disagree_in_length_or_counts_are_bad_raises_malformed():
    memory = Memory(16).append(_chunk(0))
    tensors, head = _stored(memory)
    short = {**tensors, "tokens.time": tensors["tokens.time"][:-1]}
    negative = {**head["meta"], "chunks_applied": -1}

    with pytest.raises(StoredFormatError, match="stored TokenSet is malformed: time"):
        Memory.from_bytes(pack_tensors("Memory", short, head["meta"]))
    with pytest.raises(StoredFormatError, match=r"stored Memory is malformed: \['chunks_applied'\]"):
        Memory.from_bytes(pack_tensors("Memory", tensors, negative))
