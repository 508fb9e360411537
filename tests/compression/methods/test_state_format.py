"""Every stage-1 state is stored without pickle (safetensors + JSON) and continues exactly after a round trip."""

from __future__ import annotations

import io
import pickle

import pytest
import safetensors.torch
import torch

from compression.registry import build_method, list_methods, state_from_bytes, state_to_bytes
from compression.tokens import StoredFormatError
from tests.compression.helpers import assert_same_tokens, build_objects, synthetic_block


class _Planted:
    """A pickle payload: unpickling it would create the marker file."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.marker, "w"))


def _stage1(name: str):  # type: ignore[no-untyped-def]
    return build_method(name, stage=1, **build_objects(name))


@pytest.mark.parametrize("name", list_methods(1))
def test_stage1_state_when_stored_without_pickle_then_the_next_update_is_identical(name):
    # given a method's state after three chunks
    method = _stage1(name)
    state = method.init_state()
    for i in range(3):
        state, _ = method.update(state, synthetic_block(seed=10 + i, frame_offset=8 * i))
    live = state
    # when it is stored and read back
    data = state_to_bytes(live)
    loaded = state_from_bytes(data)
    # then the bytes are safetensors (no pickle), they are stable, and the next update is identical
    assert not data.startswith(b"\x80") and isinstance(safetensors.torch.load(data), dict)
    assert state_to_bytes(loaded) == data, f"{name}: the state changed in a round trip"
    nxt = synthetic_block(seed=20, frame_offset=24)
    live_state, live_out = method.update(live, nxt)
    loaded_state, loaded_out = method.update(loaded, nxt)
    assert_same_tokens(live_out, loaded_out)
    assert state_to_bytes(live_state) == state_to_bytes(loaded_state), f"{name}: the next state differs"


def test_state_to_bytes_when_state_holds_an_object_then_raises_type_error():
    with pytest.raises(TypeError, match=r"state\.scorer: object cannot be stored"):
        state_to_bytes({"scorer": object()})


def test_state_bytes_when_nested_tensors_and_values_then_round_trip_exactly():
    state = {"a": torch.arange(3), "b": [torch.ones(2, dtype=torch.float16), None, 1.5], "c": {"d": "x", "e": True}}

    back = state_from_bytes(state_to_bytes(state))

    assert torch.equal(back["a"], state["a"]) and torch.equal(back["b"][0], state["b"][0])
    assert back["b"][0].dtype == torch.float16 and back["b"][1:] == [None, 1.5] and back["c"] == {"d": "x", "e": True}


@pytest.mark.parametrize("kind", ["pickle", "torch.save"])
def test_state_from_bytes_when_given_a_planted_pickle_refuses_without_running_it(tmp_path, kind):
    # given a payload whose unpickling would create a marker file, raw or inside a torch.save archive
    marker = tmp_path / "ran"
    if kind == "pickle":
        data = pickle.dumps({"stage1": _Planted(str(marker))})
    else:
        buffer = io.BytesIO()
        torch.save({"stage1": _Planted(str(marker))}, buffer)
        data = buffer.getvalue()
    # when it is read as a stage-1 state
    with pytest.raises(StoredFormatError, match="memory format changed") as err:
        state_from_bytes(data)
    # then it is refused by name and nothing ran
    assert ("a Python pickle" if kind == "pickle" else "a torch.save archive") in str(err.value)
    assert "not unpickled" in str(err.value)
    assert not marker.exists(), "the planted payload was executed"
