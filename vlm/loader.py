"""Load a Video LLM by name: 'tiny-random[:family]', a local folder or a hub id.

The family is detected from ``config.model_type``. Device and dtype default to 'auto': CUDA with
bfloat16 when a GPU is present; on CPU bfloat16 where the CPU has avx512_bf16, else float32.
Every model is loaded with the ``PROBE_ATTN`` attention function (SDPA plus an on-demand
last-row recorder, see ``vlm.probe``).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from vlm.base import VideoLLM
from vlm.errors import ModelLoadError, UnsupportedModelError
from vlm.probe import PROBE_ATTN

log = logging.getLogger(__name__)

TINY_PREFIX = "tiny-random"
TINY_SEED = 0
DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
          "float16": torch.float16, "fp16": torch.float16}


def adapter_classes() -> dict[str, type[VideoLLM]]:
    """model_type -> adapter class."""
    from vlm.llava_onevision import LlavaOneVision

    classes: dict[str, type[VideoLLM]] = {"llava_onevision": LlavaOneVision}
    try:
        from vlm.qwen_vl import Qwen2VL, Qwen25VL

        classes.update({"qwen2_vl": Qwen2VL, "qwen2_5_vl": Qwen25VL})
    except ImportError:
        pass
    try:
        from vlm.smolvlm import SmolVLM

        classes["smolvlm"] = SmolVLM
    except ImportError:
        pass
    return classes


def cpu_supports_bf16() -> bool:
    """True when /proc/cpuinfo lists avx512_bf16 (or amx_bf16)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_device(device: str = "auto") -> torch.device:
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        if device.type == "cuda" or cpu_supports_bf16():
            return torch.bfloat16
        return torch.float32
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {['auto', *DTYPES]}")
    return DTYPES[dtype]


def tiny_folder(name: str, cache_dir: str | Path | None) -> Path:
    """Build (once) and return the folder of 'tiny-random' or 'tiny-random:<family>'."""
    from vlm.tiny import build_tiny

    family = name.partition(":")[2] or "llava_onevision"
    root = Path(cache_dir) if cache_dir else Path(tempfile.gettempdir()) / "vidmem-models"
    folder = root / f"tiny-random-{family}-seed{TINY_SEED}"
    if (folder / "vidmem.json").is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".building-", dir=root))
    try:
        build_tiny(family, staging, seed=TINY_SEED)
        os.replace(staging, folder)  # atomic: concurrent builders never see a half-written folder
    except OSError:
        if not (folder / "vidmem.json").is_file():
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return folder


def read_marker(folder: Path) -> dict:
    """vidmem.json written by vidmem's builders/trainers ({'trained': bool, ...}); {} if absent."""
    path = folder / "vidmem.json"
    try:
        return json.loads(path.read_text()) if path.is_file() else {}
    except (OSError, ValueError) as exc:
        raise ModelLoadError(str(folder), f"unreadable {path.name}: {exc}") from exc


def detect_family(location: str) -> str:
    from transformers import AutoConfig

    try:
        model_type = AutoConfig.from_pretrained(location).model_type
    except Exception as exc:  # noqa: BLE001 - any parse failure is a load failure naming the folder
        raise ModelLoadError(location, f"no readable config.json ({type(exc).__name__}: {exc})") from exc
    classes = adapter_classes()
    if model_type not in classes:
        raise UnsupportedModelError(location, f"model_type {model_type!r} is not supported; "
                                              f"choose from {sorted(classes)}")
    return model_type


def load_model(name_or_path: str, device: str = "auto", dtype: str = "auto",
               cache_dir: str | None = None) -> VideoLLM:
    """Load a Video LLM behind the vidmem interface (see the module docstring)."""
    torch_device = resolve_device(device)
    if name_or_path.startswith(TINY_PREFIX):
        location = str(tiny_folder(name_or_path, cache_dir))
        name = name_or_path
    else:
        location = name_or_path
        name = Path(name_or_path).name if Path(name_or_path).exists() else name_or_path
        if _looks_local(name_or_path):
            _check_folder(Path(name_or_path))
    family = detect_family(location)
    marker = read_marker(Path(location)) if Path(location).is_dir() else {}
    # a folder may name its own dtype: vidmem-tiny was trained in float32 and loses accuracy in bf16
    torch_dtype = resolve_dtype(marker.get("dtype", dtype) if dtype == "auto" else dtype, torch_device)
    model, tokenizer = _load_weights(location, torch_device, torch_dtype)
    adapter = adapter_classes()[family](model, tokenizer, name=name, trained=bool(marker.get("trained", True)),
                                        folder=location if Path(location).is_dir() else None)
    log.info("loaded %s (%s) on %s as %s", name, family, torch_device, torch_dtype)
    return adapter


def _looks_local(name: str) -> bool:
    return Path(name).exists() or name.startswith((".", "/", "~")) or name.count("/") != 1


def _check_folder(folder: Path) -> None:
    if not folder.is_dir():
        raise ModelLoadError(str(folder), "no such folder")
    if not (folder / "config.json").is_file():
        raise ModelLoadError(str(folder), "the folder has no config.json")


def _load_weights(location: str, device: torch.device,
                  dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    from transformers import AutoModelForImageTextToText, AutoTokenizer

    try:
        model = AutoModelForImageTextToText.from_pretrained(location, dtype=dtype, attn_implementation=PROBE_ATTN)
        tokenizer = AutoTokenizer.from_pretrained(location)
    except Exception as exc:  # noqa: BLE001 - safetensors, json, OSError...: all name the folder
        raise ModelLoadError(location, f"{type(exc).__name__}: {exc}") from exc
    return model.to(device).eval(), tokenizer
