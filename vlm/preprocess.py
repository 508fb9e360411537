"""Frame preprocessing in torch, numerically equal to the HF *PIL* image processors.

torchvision cannot be imported on the project's CPU machines, so neither the HF video processors
nor any HF ``*Processor`` can be built. This module reproduces what the PIL image processors do:

- ``pil_resize``: Pillow's two-pass separable resampling (``ImagingResample`` in
  ``libImaging/Resample.c``, Pillow 13.0): per output pixel a window of ``support * scale`` input
  pixels, normalised filter weights converted to 22-bit fixed point, horizontal pass first unless
  the height shrinks by more than twice the width, each pass rounded and clipped to uint8.
  Reproduced with exact float64 matrix products (every partial sum is an integer below 2**53),
  so the uint8 result is bit-identical to ``Image.resize``.
- ``normalize``: ``x / 255`` then ``(x - mean) / std`` in float32, like ``rescale`` + ``normalize``.
- ``smart_resize`` and ``qwen_patchify``: Qwen2-VL's target size and patch layout
  (``transformers.models.qwen2_vl.image_processing_qwen2_vl.smart_resize``, 5.23, copied).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

SIGLIP_MEAN = (0.5, 0.5, 0.5)
SIGLIP_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

PRECISION_BITS = 32 - 8 - 2  # Pillow's fixed-point precision for 8-bit images
FILTERS = {"bicubic": 2.0, "bilinear": 1.0, "lanczos": 3.0}  # name -> support


def _bicubic(x: np.ndarray) -> np.ndarray:
    a = -0.5
    x = np.abs(x)
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1.0, near, np.where(x < 2.0, far, 0.0))


def _bilinear(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    return np.where(x < 1.0, 1.0 - x, 0.0)


def _sinc(x: np.ndarray) -> np.ndarray:
    safe = np.where(x == 0.0, 1.0, x * np.pi)
    return np.where(x == 0.0, 1.0, np.sin(safe) / safe)


def _lanczos(x: np.ndarray) -> np.ndarray:
    return np.where((x >= -3.0) & (x < 3.0), _sinc(x) * _sinc(x / 3), 0.0)


@lru_cache(maxsize=64)
def _coeffs(in_size: int, out_size: int, mode: str) -> torch.Tensor:
    """Fixed-point weights [out, in] float64 (integers) of Pillow's ``precompute_coeffs``."""
    support, fn = FILTERS[mode], {"bicubic": _bicubic, "bilinear": _bilinear, "lanczos": _lanczos}[mode]
    scale = in_size / out_size
    filterscale = max(scale, 1.0)
    support *= filterscale
    center = (np.arange(out_size) + 0.5) * scale  # [out]
    xmin = np.maximum((center - support + 0.5).astype(np.int64), 0)  # C casts truncate toward zero
    xmax = np.minimum((center + support + 0.5).astype(np.int64), in_size)
    x = np.arange(in_size)[None]  # [1, in]
    inside = (x >= xmin[:, None]) & (x < xmax[:, None])
    w = np.where(inside, fn((x - center[:, None] + 0.5) * (1.0 / filterscale)), 0.0)  # [out, in]
    total = w.sum(axis=1, keepdims=True)
    w = np.where(total != 0.0, w / np.where(total == 0.0, 1.0, total), w)
    # normalize_coeffs_8bpc: round half away from zero to 22-bit integers
    return torch.from_numpy(np.trunc(w * (1 << PRECISION_BITS) + np.where(w < 0, -0.5, 0.5)))


def _pass(x: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """One resampling pass over the last axis: x [..., in] float64 integers -> [..., out] uint8 values."""
    acc = x @ weights.T + float(1 << (PRECISION_BITS - 1))
    return torch.floor(acc / float(1 << PRECISION_BITS)).clamp_(0, 255)


def pil_resize(frames: torch.Tensor, size: tuple[int, int], mode: str = "bicubic") -> torch.Tensor:
    """Resize like ``PIL.Image.resize``: frames uint8 [F, H, W, 3] -> uint8 [F, h, w, 3] (size = (h, w))."""
    height, width = size
    x = frames.permute(0, 3, 1, 2).to(torch.float64)  # [F, 3, H, W]
    in_h, in_w = x.shape[-2:]
    # Pillow 10+: the vertical pass goes first when height shrinks by more than twice the width
    vertical_first = (in_h - height) > 0 and (in_h - height) > (in_w - width) * 2
    for axis in ("v", "h") if vertical_first else ("h", "v"):
        if axis == "h" and in_w != width:
            x = _pass(x, _coeffs(in_w, width, mode))
        if axis == "v" and in_h != height:
            x = _pass(x.transpose(-1, -2), _coeffs(in_h, height, mode)).transpose(-1, -2)
    return x.to(torch.uint8).permute(0, 2, 3, 1).contiguous()


def normalize(frames: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, H, W]: ``x / 255`` then ``(x - mean) / std``."""
    x = frames.permute(0, 3, 1, 2).to(torch.float32) * np.float32(1 / 255)
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    return (x - m) / s


def as_uint8_frames(frames: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Validate and convert frames to a uint8 tensor [F, H, W, 3]."""
    t = torch.as_tensor(np.ascontiguousarray(frames)) if isinstance(frames, np.ndarray) else frames
    if t.dtype != torch.uint8 or t.ndim != 4 or t.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [F, H, W, 3], got {tuple(t.shape)} {t.dtype}")
    return t


def resize_normalize(frames: np.ndarray | torch.Tensor, size: tuple[int, int], mean: Sequence[float],
                     std: Sequence[float], mode: str = "bicubic") -> torch.Tensor:
    """uint8 [F, H, W, 3] -> float32 [F, 3, h, w], as an HF PIL image processor with a fixed size."""
    return normalize(pil_resize(as_uint8_frames(frames), size, mode), mean, std)


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = 56 * 56,
                 max_pixels: int = 14 * 14 * 4 * 1280) -> tuple[int, int]:
    """Qwen2-VL target size: multiples of ``factor``, area within [min_pixels, max_pixels], aspect kept."""
    if max(height, width) / min(height, width) > 200:
        raise ValueError(f"aspect ratio must be below 200, got {height}x{width}")
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen_patchify(frames: torch.Tensor, patch: int = 14, temporal: int = 2,
                  merge: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised frames [F, 3, H, W] -> (patches [T*h*w, 3*temporal*patch*patch], grid_thw [1, 3]).

    F is padded to a multiple of ``temporal`` by repeating the last frame, as the HF processor does.
    Patches are ordered (t, h-block, w-block, h-in-merge, w-in-merge), the layout the merger expects.
    """
    if frames.shape[0] % temporal:
        frames = torch.cat([frames, frames[-1:].repeat(temporal - frames.shape[0] % temporal, 1, 1, 1)])
    num, chans, height, width = frames.shape
    gt, gh, gw = num // temporal, height // patch, width // patch
    x = frames.reshape(gt, temporal, chans, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    return x.reshape(gt * gh * gw, chans * temporal * patch * patch).contiguous(), torch.tensor([[gt, gh, gw]])


RESAMPLE_NAMES = {1: "lanczos", 2: "bilinear", 3: "bicubic"}  # PIL.Image.Resampling values


@dataclass(frozen=True)
class ImageSpec:
    """How a family's frames are prepared: target (height, width), normalisation, filter."""

    size: tuple[int, int]
    mean: tuple[float, float, float] = SIGLIP_MEAN
    std: tuple[float, float, float] = SIGLIP_STD
    resample: str = "bicubic"


def read_image_spec(folder: str | Path | None, default: ImageSpec) -> ImageSpec:
    """Mean, std, filter and fixed size from the folder's (video_)preprocessor_config.json, else ``default``."""
    if folder is None:
        return default
    for name in ("video_preprocessor_config.json", "preprocessor_config.json"):
        path = Path(folder) / name
        if path.is_file():
            cfg = json.loads(path.read_text())
            size = cfg.get("size") or {}
            hw = (size["height"], size["width"]) if "height" in size else default.size
            return ImageSpec(size=(int(hw[0]), int(hw[1])),
                             mean=tuple(cfg.get("image_mean", default.mean)),  # type: ignore[arg-type]
                             std=tuple(cfg.get("image_std", default.std)),  # type: ignore[arg-type]
                             resample=RESAMPLE_NAMES.get(cfg.get("resample", 3), default.resample))
    return default
