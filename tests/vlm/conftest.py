"""Tiny random models shared by the vlm tests (built once per session, float32 for exact checks)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from vlm.base import VideoLLM
from vlm.loader import load_model, tiny_folder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("vlm-models")


@pytest.fixture(scope="session")
def llava(model_cache: Path) -> VideoLLM:
    """tiny-random LLaVA-OneVision, float32 on CPU."""
    return load_model("tiny-random", device="cpu", dtype="float32", cache_dir=str(model_cache))


@pytest.fixture(scope="session")
def llava_folder(model_cache: Path, llava: VideoLLM) -> Path:
    return tiny_folder("tiny-random", model_cache)


@pytest.fixture(scope="session")
def frames() -> np.ndarray:
    """Four random RGB frames of an odd size: uint8 [4, 37, 53, 3]."""
    return (np.random.RandomState(0).rand(4, 37, 53, 3) * 255).astype(np.uint8)
