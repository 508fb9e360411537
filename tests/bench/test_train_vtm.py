"""`vidmem train vtm`: the saliency-biased auxiliary attention path trains U_s; the file loads for vtm."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from bench.train_cacovid import training_clip
from bench.train_vtm import VTMConfig, encode_chunks, merged_tokens, qa_loss, run
from compression.methods.vtm import load_saliency
from compression.registry import build_method
from compression.tokens import TokenBlock


@pytest.fixture(scope="module")
def vlm(tmp_path_factory: pytest.TempPathFactory):  # type: ignore[no-untyped-def]
    from vlm.loader import load_model

    model = load_model("tiny-random", device="cpu", dtype="float32", cache_dir=str(tmp_path_factory.mktemp("m")))
    model.model.set_attn_implementation("sdpa")
    return model


def test_qa_loss_when_saliency_biases_attention_then_u_s_gets_a_gradient(vlm) -> None:  # type: ignore[no-untyped-def]
    # given a clip merged by the learnable partition
    clip = training_clip(6_000_001, 64)
    u_s = (torch.randn(64) * 2).requires_grad_(True)
    tokens = merged_tokens(encode_chunks(vlm, clip, 4), u_s.detach(), 6.0, 0.8)
    # when
    loss = qa_loss(vlm, tokens, clip.questions, u_s, 1.0)
    loss.backward()
    unbiased = qa_loss(vlm, tokens, clip.questions, torch.zeros(64), 1.0)
    # then
    assert u_s.grad is not None and u_s.grad.abs().sum() > 0, "the auxiliary path must make U_s trainable"
    assert not torch.isclose(loss.detach(), unbiased), "the saliency bias changes the attention"


def test_run_when_finished_then_saliency_loads_for_learnable_vtm(vlm, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    cfg = VTMConfig(model="tiny-random", out=str(tmp_path / "s.pt"), work_dir=str(tmp_path / "run"), steps=2,
                    heldout=1, eval_every=2, frame_size=64, eval_retentions=(0.25,))
    summary = run(cfg, vlm, progress=False)
    assert [s for s, _ in summary["heldout_curve"]] == [0, 2] and len(summary["loss"]) <= 2
    u_s = load_saliency(cfg.out)
    assert u_s.shape == (64,)
    block = TokenBlock(features=torch.randn(4, 4, 64), timestamps=torch.arange(4.0, dtype=torch.float64), grid=(2, 2),
                       frame_offset=0)
    method = build_method(f"vtm:target=learnable,saliency_path={cfg.out},gamma=4,merge_ratio=1.0", stage=1)
    _, kept = method.update(method.init_state(), block)
    assert len(kept) == 4


def test_merged_tokens_when_training_then_targets_are_sampled_from_softmax_of_saliency() -> None:
    # given one chunk of 12 tokens whose saliency s = tanh(feature 0) runs from -1 to 1, |T| = 12 / 6 = 2
    feats = torch.zeros(12, 4)
    feats[:, 0] = torch.linspace(-6, 6, 12)
    feats[:, 1] = torch.arange(12.0)  # distinct tokens
    chunk = TokenBlock(feats.reshape(3, 4, 4), torch.arange(3.0, dtype=torch.float64), (2, 2)).to_tokenset()
    u_s = torch.tensor([1.0, 0.0, 0.0, 0.0])
    gen = torch.Generator().manual_seed(0)
    # when targets are drawn many times (R = 0: nothing merges, the targets are only recorded)
    from compression.methods.vtm import pick_targets, saliency

    s = saliency(chunk.features, u_s)
    draws = torch.stack([pick_targets(s, 2, sample=True, gen=gen) for _ in range(2000)]).float().mean(0)
    # then every token can be a target, more often the more salient (p = softmax(s), Eq. 8), while top-k would
    # always take the two most salient
    assert bool((draws > 0).all()) and float(draws[-1]) > 2 * float(draws[0]), draws.tolist()
    assert torch.nonzero(pick_targets(s, 2, sample=False, gen=gen)).flatten().tolist() == [10, 11]
    sampled = merged_tokens([chunk], u_s, 6.0, 1.0, gen=torch.Generator().manual_seed(1))
    topk = merged_tokens([chunk], u_s, 6.0, 1.0, sample=False)
    assert len(sampled) == len(topk) == 2 and float(sampled.size.sum()) == 12.0
