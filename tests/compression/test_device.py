"""Device safety: every method, the containers and the memory create their tensors on the input's device.

No GPU runs these tests, so the bug class "a tensor made on the default device (CPU) meets the
inputs' device (CUDA)" is made visible on the CPU instead:

- the inputs are built on the CPU, and the call under test runs with ``torch.device("meta")`` as the
  default device, so every factory call without ``device=`` (``torch.arange(k)``, ``torch.zeros``,
  ``torch.tensor([...])``, ``torch.randperm``) makes a *meta* tensor, the stand-in for "not on the
  inputs' device";
- :class:`SameDevice` fails any torch call whose tensor arguments live on more than one device.
  Plain meta mode is not enough: PyTorch lets a CPU tensor be indexed or ``index_select``-ed with a
  meta index without complaint, and those gathers are exactly what fails on CUDA
  (``index_select``, ``scatter``, ``index_add_`` and ``torch.where`` demand one device there);
- the outputs must come back on the CPU (a meta tensor in them is a factory call that escaped).

Running the inputs themselves on "meta" is impractical: the methods read data (``int(...)``,
``nonzero``, ``.tolist()``), which meta tensors do not have. Zero-dimensional CPU tensors are allowed
to mix, as CUDA allows them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields

import pytest
import torch
from torch.overrides import TorchFunctionMode

from compression.memory import Memory
from compression.registry import SelectContext, build_method, list_methods
from compression.tokens import TokenBlock, TokenSet
from tests.compression.helpers import FakeHooks, build_objects, synthetic_block

# every stage-1 method with its defaults, plus the variants that take other code paths
STAGE1_SPECS = [*list_methods(1), "uniform:mode=temporal", "tome:mode=spatial", "dtd:reference=previous",
                "adatp-local:dedup_tau=0.5,max_segment_frames=3", "vtm:target=center", "vtm:target=motion",
                "vtm:target=learnable", "vtm:target=learnable,sample=true"]


class SameDevice(TorchFunctionMode):
    """Fail any torch call whose (non-scalar) tensor arguments live on more than one device."""

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        devices = {t.device for t in _tensors((args, kwargs)) if t.dim() > 0}
        if len(devices) > 1:
            raise AssertionError(f"{getattr(func, '__name__', func)} mixes devices {sorted(map(str, devices))}")
        return func(*args, **kwargs)


def _tensors(value: object) -> Iterator[torch.Tensor]:
    if isinstance(value, torch.Tensor):
        yield value
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _tensors(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _tensors(item)


def on_cpu_with_meta_default(call):  # type: ignore[no-untyped-def]
    """Run ``call()`` with meta as the default device and one device per torch call."""
    with torch.device("meta"), SameDevice():
        return call()


def assert_on_cpu(tokens: TokenSet, what: str) -> None:
    for f in fields(tokens):
        value = getattr(tokens, f.name)
        for key, t in (value.items() if isinstance(value, dict) else [(f.name, value)]):
            if isinstance(t, torch.Tensor):
                assert t.device.type == "cpu", f"{what}: {key} was made on {t.device}, not the inputs' device"


def _objects(spec: str) -> dict:
    name = spec.partition(":")[0]
    return {"saliency": torch.randn(16, generator=torch.Generator().manual_seed(0))} if name == "vtm" \
        else build_objects(name)


def test_same_device_guard_when_a_method_gathers_with_an_index_made_without_device_then_fails():
    # given CPU features and an index made by a factory call that names no device
    x = torch.randn(8, 4)
    # when it is used to gather, then the guard reports it (CUDA would fail here too)
    with pytest.raises(AssertionError, match="mixes devices"):
        on_cpu_with_meta_default(lambda: x.index_select(0, torch.arange(3)))
    with pytest.raises(AssertionError, match="mixes devices"):
        on_cpu_with_meta_default(lambda: x[torch.arange(3)])


@pytest.mark.parametrize("spec", STAGE1_SPECS)
def test_stage1_method_when_run_with_another_default_device_then_uses_the_inputs_device(spec):
    # given a method, its state after one chunk, and the next chunk, all on the CPU
    method = build_method(spec, stage=1, **_objects(spec))
    state, _ = method.update(method.init_state(), synthetic_block(seed=1))
    block = synthetic_block(seed=2, frame_offset=8)
    # when the next chunk is compressed while the default device is meta
    _, out = on_cpu_with_meta_default(lambda: method.update(state, block))
    # then every tensor it made lives with the inputs
    assert len(out) > 0
    assert_on_cpu(out, spec)


@pytest.mark.parametrize("name", list_methods(2))
@pytest.mark.parametrize("budget", [0, 37, 1000])
def test_stage2_method_when_run_with_another_default_device_then_uses_the_inputs_device(name, budget):
    # given 128 tokens on the CPU and model hooks answering on the tokens' device
    tokens = synthetic_block(seed=3).to_tokenset()
    method = build_method(name, stage=2, **_objects(name))
    context = SelectContext("what moved?", FakeHooks(), seed=1)
    # when selecting while the default device is meta
    out = on_cpu_with_meta_default(lambda: method.select(tokens, budget, context))
    # then the selection lives with the inputs
    assert len(out) == min(budget, len(tokens))
    assert_on_cpu(out, name)


def test_containers_and_memory_when_run_with_another_default_device_then_use_the_inputs_device():
    # given chunks on the CPU
    blocks = [synthetic_block(frames=2, frame_offset=2 * i, seed=i) for i in range(6)]
    first = blocks[0].to_tokenset()
    into_frame_1 = torch.where(first.frame == 0, first.position + 16, torch.arange(32))  # [32] frame 0 -> 1

    # when they become token sets, are merged, and pass through a memory that must consolidate
    def run() -> tuple[TokenSet, TokenSet, TokenSet]:
        memory = Memory(20)
        for block in blocks:
            memory = memory.append(block.to_tokenset())
        return memory.tokens, memory.window(1.0, 2.0), blocks[0].to_tokenset().merge(into_frame_1)

    held, window, merged = on_cpu_with_meta_default(run)
    # then all of it lives on the inputs' device
    assert len(held) == 20 and len(window) > 0 and len(merged) == 16
    for what, tokens in (("memory", held), ("window", window), ("merge", merged)):
        assert_on_cpu(tokens, what)


def test_memory_when_loaded_from_bytes_then_appends_follow_the_new_tokens_device():
    # given a memory read back from bytes (always on the CPU) and a chunk that is also on the CPU
    memory = Memory.from_bytes(Memory(16).append(synthetic_block(frames=1, seed=1).to_tokenset()).to_bytes())
    new = TokenBlock(torch.randn(1, 16, 16), torch.tensor([5.0], dtype=torch.float64), (4, 4), 1).to_tokenset()
    # when the chunk is appended under the guard
    out = on_cpu_with_meta_default(lambda: memory.append(new))
    # then the result is consolidated on that device
    assert out.num_tokens == 16
    assert_on_cpu(out.tokens, "memory")
