"""Own preprocessing equals Pillow and the HF PIL image processors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vlm.base import VideoLLM
from vlm.preprocess import pil_resize

ODD_SIZES = [(37, 53), (101, 77), (300, 211), (17, 401), (5, 3)]


def random_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return (np.random.RandomState(seed).rand(height, width, 3) * 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["bicubic", "bilinear"])
def test_pil_resize_when_random_sizes_then_bit_identical_to_pillow(mode: str) -> None:
    rng = np.random.RandomState(1)
    filt = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}[mode]
    for _ in range(25):
        h, w, out_h, out_w = (int(v) for v in rng.randint(2, 160, size=4))
        img = random_image(h, w, seed=int(rng.randint(1 << 30)))
        expected = np.asarray(Image.fromarray(img).resize((out_w, out_h), filt))
        ours = pil_resize(torch.from_numpy(img)[None], (out_h, out_w), mode)[0].numpy()
        assert np.array_equal(ours, expected), f"{h}x{w} -> {out_h}x{out_w}"


@pytest.mark.parametrize(("height", "width"), ODD_SIZES)
def test_llava_pixels_when_odd_sizes_then_equal_hf_pil_processor(llava: VideoLLM, llava_folder: Path,
                                                                  height: int, width: int) -> None:
    from transformers import LlavaOnevisionImageProcessorPil

    processor = LlavaOnevisionImageProcessorPil.from_pretrained(str(llava_folder))
    img = random_image(height, width)
    expected = processor(images=[Image.fromarray(img)], return_tensors="pt")["pixel_values"][0, 0]  # full view
    ours = llava.pixel_values(img[None])[0]
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()


@pytest.mark.parametrize(("height", "width"), ODD_SIZES)
@pytest.mark.parametrize("family", ["qwen2_vl", "smolvlm"])
def test_pixels_when_odd_sizes_then_equal_hf_pil_processor(model_cache: Path, family: str, height: int,
                                                           width: int) -> None:
    from transformers import Qwen2VLImageProcessorPil, SmolVLMImageProcessorPil

    from tests.vlm.conftest import folder_of, tiny

    model = tiny(family, model_cache)
    img = random_image(height, width, seed=height)
    if family == "qwen2_vl":
        processor = Qwen2VLImageProcessorPil.from_pretrained(str(folder_of(model, model_cache)))
        out = processor(images=[Image.fromarray(img)], return_tensors="pt")
        expected, ours = out["pixel_values"], model.pixel_values(img[None])[0]  # one image = frame repeated twice
        assert torch.equal(out["image_grid_thw"], model.pixel_values(img[None])[1])
    else:
        processor = SmolVLMImageProcessorPil.from_pretrained(str(folder_of(model, model_cache)))
        expected = processor(images=[[Image.fromarray(img)]], return_tensors="pt")["pixel_values"][0, 0]
        ours = model.pixel_values(img[None])[0]
    assert ours.shape == expected.shape
    assert torch.allclose(ours, expected, atol=1e-5), (ours - expected).abs().max()
