"""Tiny random models shared by the vlm tests (built once per session, float32 for exact checks)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from vlm.base import VideoLLM
from vlm.loader import load_model, tiny_folder

FAMILIES = ["llava_onevision", "qwen2_vl", "qwen2_5_vl", "smolvlm"]
_CACHE: dict[str, VideoLLM] = {}


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from threads, and the machine's cores are shared: use one."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-models")


def tiny(family: str, cache: Path) -> VideoLLM:
    """tiny-random model of ``family``, float32 on CPU, loaded once per session."""
    if family not in _CACHE:
        name = "tiny-random" if family == "llava_onevision" else f"tiny-random:{family}"
        _CACHE[family] = load_model(name, device="cpu", dtype="float32", cache_dir=str(cache))
    return _CACHE[family]


@pytest.fixture(scope="session")
def llava(model_cache: Path) -> VideoLLM:
    return tiny("llava_onevision", model_cache)


@pytest.fixture(scope="session")
def llava_folder(model_cache: Path, llava: VideoLLM) -> Path:
    return tiny_folder("tiny-random", model_cache)


@pytest.fixture(params=FAMILIES)
def adapter(request: pytest.FixtureRequest, model_cache: Path) -> VideoLLM:
    """Each family's tiny adapter in turn."""
    return tiny(request.param, model_cache)


def folder_of(model: VideoLLM, cache: Path) -> Path:
    name = "tiny-random" if model.family == "llava_onevision" else f"tiny-random:{model.family}"
    return tiny_folder(name, cache)


@pytest.fixture(scope="session")
def frames() -> np.ndarray:
    """Four random RGB frames of an odd size: uint8 [4, 37, 53, 3]."""
    return (np.random.RandomState(0).rand(4, 37, 53, 3) * 255).astype(np.uint8)


def native_greedy(model: VideoLLM, input_ids: torch.Tensor, frames: np.ndarray, new: int) -> list[int]:
    """The stock transformers pixel path of each family: generate(input_ids, pixels, ...)."""
    kwargs: dict = {}
    if model.family == "llava_onevision":
        kwargs["pixel_values_videos"] = model.pixel_values(frames)[None]
    elif model.family == "smolvlm":
        kwargs["pixel_values"] = model.pixel_values(frames)[None]
    else:
        patches, thw = model.pixel_values(frames)
        kwargs.update(pixel_values_videos=patches, video_grid_thw=thw,
                      mm_token_type_ids=(input_ids[None] == model.video_token_id).int() * 2)
        if model.family == "qwen2_5_vl":
            kwargs["second_per_grid_ts"] = torch.tensor([1.0])
    with torch.no_grad():
        out = model.model.generate(
            input_ids=input_ids[None], attention_mask=torch.ones(1, input_ids.shape[0], dtype=torch.long),
            max_new_tokens=new, do_sample=False, eos_token_id=model._eos_ids,
            pad_token_id=model.tokenizer.pad_token_id, **kwargs)
    return out[0, input_ids.shape[0]:].tolist()


def placeholder_id(model: VideoLLM) -> int:
    return model.image_token_id if model.family == "smolvlm" else model.video_token_id
