"""Sampler slots and the one-pass resize."""

from __future__ import annotations

import av
import numpy as np

from ingest.sampler import Sampler, to_image


def test_sampler_when_source_is_faster_keeps_first_frame_of_each_slot():
    sampler = Sampler(sample_fps=2.0)
    kept = [t for t in (i / 30 for i in range(90)) if sampler.accept(t)]
    assert kept == [0.0, 0.5, 1.0, 1.5, 2.0, 2.5]


def test_sampler_when_source_is_slower_keeps_every_frame():
    sampler = Sampler(sample_fps=10.0)
    assert [sampler.accept(t) for t in (0.0, 0.5, 1.0)] == [True, True, True]


def test_sampler_when_timestamps_repeat_or_go_back_rejects_them():
    sampler = Sampler(sample_fps=1.0)
    assert [sampler.accept(t) for t in (3.2, 3.9, 2.0, 4.0)] == [True, False, False, True]
    assert sampler.next_due == 5.0


def test_to_image_when_size_given_resizes_with_area_averaging():
    # given a 64x64 frame, left half black, right half white
    image = np.zeros((64, 64, 3), np.uint8)
    image[:, 32:] = 255
    frame = av.VideoFrame.from_ndarray(image, format="rgb24").reformat(format="yuv420p")
    # when resized to 8x16 (height, width)
    small = to_image(frame, (8, 16))
    # then the shape is (H, W, 3) and the halves survive
    assert small.shape == (8, 16, 3) and small.dtype == np.uint8
    assert small[:, :7].max() < 20 and small[:, 9:].min() > 235


def test_to_image_when_no_size_keeps_source_size():
    frame = av.VideoFrame.from_ndarray(np.full((48, 64, 3), 128, np.uint8), format="rgb24")
    assert to_image(frame, None).shape == (48, 64, 3)
