"""Contract every registered method must honour, written once and parametrised over the registry."""

from __future__ import annotations

import dataclasses
import io

import pytest
import torch

from compression.registry import SelectContext, build_method, list_methods, method_info
from compression.tokens import TokenBlock, TokenSet
from tests.compression.helpers import FakeHooks, assert_aligned, assert_same_tokens, build_objects, synthetic_block

MERGING_STAGE1 = {"tome", "vtm"}  # methods whose output sizes must add up to the input's token count
MERGING_STAGE2 = {"visionzip"}


def stage1(name: str):  # type: ignore[no-untyped-def]
    return build_method(name, stage=1, **build_objects(name))


def stage2(name: str):  # type: ignore[no-untyped-def]
    return build_method(name, stage=2, **build_objects(name))


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_method_when_given_a_chunk_then_returns_aligned_time_ordered_subset(name):
    # given a chunk of 8 frames x 16 tokens
    block = synthetic_block(frames=8, seed=1)
    method = stage1(name)
    # when it is compressed
    state, out = method.update(method.init_state(), block)
    # then fields are aligned, in time order, drawn from the chunk, and no larger than it
    assert_aligned(out)
    assert len(out) <= 8 * 16, f"{name} returned more tokens than it was given"
    assert bool(((out.frame >= 0) & (out.frame < 8)).all()), "frame ids must be stream-wide ids of the chunk"
    assert bool(((out.row < 4) & (out.col < 4)).all()), "positions must lie on the grid"
    assert out.grid == (4, 4)


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_method_when_run_twice_then_output_is_identical(name):
    # given the same chunk and a fresh state twice
    block = synthetic_block(seed=2)
    # when it is compressed twice
    a = stage1(name).update(stage1(name).init_state(), block)[1]
    b = stage1(name).update(stage1(name).init_state(), block)[1]
    # then the results are identical
    assert_same_tokens(a, b)


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_method_when_chunk_has_zero_frames_then_returns_zero_tokens(name):
    block = TokenBlock(torch.zeros(0, 16, 8), torch.zeros(0, dtype=torch.float64), (4, 4), 0,
                       {"motion": torch.zeros(0, 16)})
    method = stage1(name)
    _, out = method.update(method.init_state(), block)
    assert len(out) == 0 and out.features.shape[1] == 8


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_method_when_chunk_has_one_frame_then_keeps_at_most_that_frame(name):
    method = stage1(name)
    _, out = method.update(method.init_state(), synthetic_block(frames=1, seed=3))
    assert_aligned(out)
    assert 0 < len(out) <= 16 and bool((out.frame == 0).all())


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_method_when_merging_then_sizes_add_up_to_the_input(name):
    # given a chunk of 128 original tokens
    method = stage1(name)
    _, out = method.update(method.init_state(), synthetic_block(seed=4))
    # then merging methods conserve size and dropping methods keep size 1 per token
    total = float(out.size.sum())
    if name in MERGING_STAGE1:
        assert total == pytest.approx(128.0), f"{name} lost or invented original tokens"
    else:
        assert bool((out.size == 1).all()), f"{name} drops tokens, so every kept token stands for itself"


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_state_when_saved_with_torch_save_then_it_loads_back(name):
    # given the state after two chunks
    method = stage1(name)
    state, _ = method.update(method.init_state(), synthetic_block(seed=5))
    # when it is saved and loaded with torch.save (as the memory store does)
    buffer = io.BytesIO()
    torch.save(state, buffer)
    loaded = torch.load(io.BytesIO(buffer.getvalue()), weights_only=True)
    # then continuing from the loaded state gives the same output as from the live state
    nxt = synthetic_block(seed=6, frame_offset=8)
    assert_same_tokens(method.update(state, nxt)[1], method.update(loaded, nxt)[1])


def _tokens(frames: int = 8, seed: int = 7) -> TokenSet:
    return synthetic_block(frames=frames, seed=seed).to_tokenset()


@pytest.mark.parametrize("name", list_methods(2))
@pytest.mark.parametrize("budget", [1, 10, 57, 127])
def test_stage2_method_when_budget_below_input_then_returns_exactly_budget(name, budget):
    # given 128 tokens and a budget below that
    tokens = _tokens()
    # when selecting
    out = stage2(name).select(tokens, budget, SelectContext("what moved?", FakeHooks(), seed=0))
    # then exactly the budget comes back, aligned and in time order
    assert len(out) == budget, f"{name} returned {len(out)} tokens for a budget of {budget}"
    assert_aligned(out)


@pytest.mark.parametrize("name", list_methods(2))
def test_stage2_method_when_budget_exceeds_input_then_returns_every_token(name):
    tokens = _tokens()
    out = stage2(name).select(tokens, 1000, SelectContext("q", FakeHooks()))
    assert_same_tokens(out, tokens)


@pytest.mark.parametrize("name", list_methods(2))
def test_stage2_method_when_input_is_empty_or_budget_zero_then_returns_nothing(name):
    empty = TokenSet.empty(16, (4, 4))
    assert len(stage2(name).select(empty, 10, SelectContext("q", FakeHooks()))) == 0
    assert len(stage2(name).select(_tokens(), 0, SelectContext("q", FakeHooks()))) == 0


@pytest.mark.parametrize("name", list_methods(2))
def test_stage2_method_when_input_is_one_frame_then_selects_within_it(name):
    out = stage2(name).select(_tokens(frames=1), 5, SelectContext("q", FakeHooks()))
    assert len(out) == 5 and bool((out.frame == 0).all())


@pytest.mark.parametrize("name", list_methods(2))
def test_stage2_method_when_called_twice_with_one_seed_then_identical(name):
    tokens = _tokens(seed=8)
    a = stage2(name).select(tokens, 40, SelectContext("q", FakeHooks(), seed=3))
    b = stage2(name).select(tokens, 40, SelectContext("q", FakeHooks(), seed=3))
    assert_same_tokens(a, b)


@pytest.mark.parametrize("name", list_methods(2))
def test_stage2_method_when_selecting_then_sizes_are_conserved_or_dropped_never_invented(name):
    tokens = _tokens(seed=9)
    out = stage2(name).select(tokens, 30, SelectContext("q", FakeHooks()))
    total = float(out.size.sum())
    if name in MERGING_STAGE2:
        assert total == pytest.approx(float(tokens.size.sum())), f"{name} must merge, not drop"
    else:
        assert total == pytest.approx(30.0), f"{name} selects: each kept token stands for itself"


@pytest.mark.parametrize("name", list_methods())
def test_every_method_when_built_then_declares_its_params_and_stages(name):
    info = method_info(name)
    assert set(info.stages) <= {1, 2} and info.stages
    assert dataclasses.is_dataclass(info.cls.Params), f"{name} declares no Params dataclass"
    instance = build_method(name, **build_objects(name))
    assert isinstance(instance.params, info.cls.Params), f"{name} does not keep its built Params"
    for stage in info.stages:
        assert hasattr(instance, "update" if stage == 1 else "select"), f"{name} misses its stage-{stage} API"
