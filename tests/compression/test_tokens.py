"""TokenBlock / TokenSet: layout, one index plan for every field, merging, serialisation."""

from __future__ import annotations

import pytest
import torch

from compression.tokens import TokenBlock, TokenSet
from tests.compression.helpers import assert_aligned, assert_same_tokens, synthetic_block


def test_tokenblock_when_flattened_then_tokens_are_frame_major_then_row_major():
    # given a block of 2 frames on a 2x3 grid starting at stream frame 10
    block = TokenBlock(torch.arange(2 * 6 * 1, dtype=torch.float32).reshape(2, 6, 1),
                       torch.tensor([5.0, 5.5], dtype=torch.float64), (2, 3), 10, {"motion": torch.ones(2, 6)})
    # when it becomes a TokenSet
    ts = block.to_tokenset()
    # then token i is frame i // 6, row (i % 6) // 3, col i % 3, at the frame's timestamp
    assert ts.frame.tolist() == [10] * 6 + [11] * 6
    assert ts.row.tolist() == [0, 0, 0, 1, 1, 1] * 2 and ts.col.tolist() == [0, 1, 2] * 4
    assert ts.time.tolist() == [5.0] * 6 + [5.5] * 6
    assert ts.features[:, 0].tolist() == list(range(12)) and ts.side["motion"].shape == (12,)
    assert_aligned(ts)


def test_tokenblock_when_grid_does_not_match_tokens_then_raises():
    with pytest.raises(ValueError, match="grid"):
        TokenBlock(torch.zeros(1, 5, 2), torch.zeros(1, dtype=torch.float64), (2, 3))


def test_tokenset_gather_when_given_an_index_plan_then_every_field_follows_it():
    ts = synthetic_block(seed=1).to_tokenset()
    idx = torch.tensor([3, 17, 40, 100])
    out = ts.gather(idx)
    assert torch.equal(out.features, ts.features[idx]) and torch.equal(out.frame, ts.frame[idx])
    assert torch.equal(out.row, ts.row[idx]) and torch.equal(out.side["motion"], ts.side["motion"][idx])
    assert_aligned(out)


def test_tokenset_merge_when_tokens_merge_then_size_weighted_mean_and_destination_metadata():
    # given three tokens of sizes 1, 3 and 2; token 0 and 2 merge into token 1
    ts = TokenSet(torch.tensor([[0.0], [4.0], [10.0]]), torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64),
                  torch.tensor([0, 1, 2]), torch.tensor([0, 1, 2]), torch.tensor([0, 0, 0]),
                  torch.tensor([1.0, 3.0, 2.0]), {}, (3, 1))
    # when merged
    out = ts.merge(torch.tensor([1, 1, 1]))
    # then one token: (1*0 + 3*4 + 2*10) / 6, size 6, time/frame/row of token 1
    assert len(out) == 1
    assert out.features.item() == pytest.approx(32 / 6) and out.size.item() == 6.0
    assert out.time.item() == 2.0 and out.frame.item() == 1 and out.row.item() == 1


def test_tokenset_merge_when_target_is_not_a_representative_then_raises():
    ts = synthetic_block(frames=1).to_tokenset()
    target = torch.arange(len(ts))
    target[0], target[1] = 1, 2  # 1 is itself merged into 2
    with pytest.raises(ValueError, match="representatives"):
        ts.merge(target)


def test_tokenset_concat_when_joining_sets_then_order_and_common_side_keys_kept():
    a = synthetic_block(frames=2, seed=1).to_tokenset()
    b = synthetic_block(frames=2, seed=2, frame_offset=2).to_tokenset()
    out = TokenSet.concat([a, TokenSet.empty(16, (4, 4)), b])
    assert len(out) == len(a) + len(b) and out.frame.tolist() == a.frame.tolist() + b.frame.tolist()
    assert set(out.side) == {"motion"}
    assert out.frames().tolist() == [0, 1, 2, 3]


def test_tokenset_empty_when_built_then_has_zero_tokens_of_the_given_width():
    e = TokenSet.empty(7, (2, 2))
    assert len(e) == 0 and e.features.shape == (0, 7) and e.grid == (2, 2)
    assert TokenSet.from_bytes(e.to_bytes()).features.shape == (0, 7)


def test_tokenset_bytes_when_features_are_fp16_then_round_trip_is_exact():
    # given a set with fp16 features and a side field
    ts = synthetic_block(seed=3).to_tokenset().gather(torch.arange(0, 128, 3)).half()
    # when serialised and read back
    data = ts.to_bytes()
    back = TokenSet.from_bytes(data)
    # then every field is bit-identical and nbytes is the serialised length
    assert torch.equal(back.features, ts.features) and back.features.dtype == torch.float16
    assert_same_tokens(back, ts)
    assert ts.nbytes == len(data) and back.grid == ts.grid


def test_tokenset_bytes_when_features_are_fp32_then_stored_as_fp16():
    ts = synthetic_block(seed=4, dim=256).to_tokenset()
    back = TokenSet.from_bytes(ts.to_bytes())
    assert torch.equal(back.features, ts.features.half())
    assert ts.nbytes < ts.features.numel() * 2.5, "features must be stored at 2 bytes each"


def test_tokenset_from_bytes_when_data_is_not_a_tokenset_then_raises():
    with pytest.raises(ValueError, match="not a serialised TokenSet"):
        TokenSet.from_bytes(b"garbage")
