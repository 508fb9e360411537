"""load_model: tiny-random reproducibility, family detection, device/dtype choice, clear errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from vlm.base import VideoLLM
from vlm.errors import ModelLoadError, UnsupportedModelError
from vlm.loader import load_model, resolve_dtype, tiny_folder


def test_load_model_when_tiny_random_then_untrained_llava_with_probe_attention(llava: VideoLLM) -> None:
    assert llava.family == "llava_onevision" and llava.name == "tiny-random"
    assert llava.trained is False
    assert llava.model.config._attn_implementation == "vidmem_probe"
    assert llava.dtype == torch.float32 and llava.device.type == "cpu"


def test_load_model_when_built_twice_then_weights_identical(llava: VideoLLM, tmp_path: Path) -> None:
    again = load_model("tiny-random", device="cpu", dtype="float32", cache_dir=str(tmp_path))
    for (name, a), b in zip(llava.model.state_dict().items(), again.model.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


def test_load_model_when_folder_given_then_loads_through_from_pretrained(llava_folder: Path) -> None:
    model = load_model(str(llava_folder), device="cpu", dtype="bfloat16")
    assert model.family == "llava_onevision" and model.dtype == torch.bfloat16
    assert model.name == llava_folder.name


def test_load_model_when_folder_names_its_dtype_then_auto_follows_it(llava_folder: Path, tmp_path: Path) -> None:
    folder = tmp_path / "fp32-model"
    shutil.copytree(llava_folder, folder)
    marker = folder / "vidmem.json"
    fields = json.loads(marker.read_text()) if marker.is_file() else {}
    marker.write_text(json.dumps({**fields, "dtype": "float32"}))
    assert load_model(str(folder), device="cpu").dtype == torch.float32
    assert load_model(str(folder), device="cpu", dtype="bfloat16").dtype == torch.bfloat16, "explicit wins"


def test_load_model_when_folder_missing_then_error_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    with pytest.raises(ModelLoadError, match="no-such-model"):
        load_model(str(missing))


@pytest.mark.parametrize("damage", ["config", "weights", "no_config"])
def test_load_model_when_folder_corrupt_then_error_names_it(llava_folder: Path, tmp_path: Path, damage: str) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(llava_folder, broken)
    if damage == "config":
        (broken / "config.json").write_text("{not json")
    elif damage == "weights":
        (broken / "model.safetensors").write_bytes(b"\x00" * 64)
    else:
        (broken / "config.json").unlink()
    with pytest.raises(ModelLoadError, match="broken-model"):
        load_model(str(broken), device="cpu", dtype="float32")


def test_load_model_when_model_type_unsupported_then_error_lists_choices(llava_folder: Path, tmp_path: Path) -> None:
    other = tmp_path / "bert-model"
    shutil.copytree(llava_folder, other)
    (other / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(UnsupportedModelError, match="llava_onevision"):
        load_model(str(other))


def test_resolve_dtype_when_explicit_or_cuda_then_honoured() -> None:
    assert resolve_dtype("float32", torch.device("cpu")) == torch.float32
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    assert resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(ValueError, match="auto"):
        resolve_dtype("int3", torch.device("cpu"))


def test_tiny_folder_when_cached_then_reused(model_cache: Path, llava_folder: Path) -> None:
    assert tiny_folder("tiny-random", model_cache) == llava_folder
    assert json.loads((llava_folder / "vidmem.json").read_text())["trained"] is False
