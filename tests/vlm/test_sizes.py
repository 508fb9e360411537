"""Real-dimension configs match the published parameter counts (built on the meta device)."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText

from vlm.sizes import real_config
from vlm.tiny import FAMILY_SPECIALS

PUBLISHED_M = {("llava_onevision", "0.5b"): 893.7, ("qwen2_vl", "2b"): 2209.0, ("qwen2_5_vl", "3b"): 3754.6,
               ("smolvlm", "256m"): 256.5, ("smolvlm", "500m"): 507.5}


@pytest.mark.parametrize(("family", "variant"), sorted(PUBLISHED_M))
def test_real_config_when_built_then_parameter_count_matches(family: str, variant: str) -> None:
    ids = {t: i for i, t in enumerate(FAMILY_SPECIALS[family])}
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(real_config(family, ids, variant))
    params_m = sum(p.numel() for p in model.parameters()) / 1e6
    assert params_m == pytest.approx(PUBLISHED_M[(family, variant)], abs=0.1)


def test_real_config_when_unknown_size_then_error_lists_choices() -> None:
    with pytest.raises(ValueError, match="0.5b"):
        real_config("llava_onevision", {}, "13b")
