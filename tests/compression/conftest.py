"""Fixtures for the compression tests (helpers live in tests/compression/helpers.py)."""

from __future__ import annotations

import pytest
import torch

from tests.compression.helpers import FakeHooks, FakeScorer

torch.set_num_threads(1)  # 2 shared cores: multi-threaded index_add_ is far slower than one thread here


@pytest.fixture
def hooks() -> FakeHooks:
    return FakeHooks()


@pytest.fixture
def scorer() -> FakeScorer:
    return FakeScorer()
