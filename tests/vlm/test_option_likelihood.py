"""Option-likelihood scoring (lm-evaluation-harness multiple choice) equals a direct computation."""

from __future__ import annotations

import numpy as np
import torch

from vlm.base import VideoLLM

QUESTION = "Which shape is in view now?\nOptions: red square, blue, green circle moving left."
OPTIONS = ("red square", "blue", "green circle moving left", "3")
TIMES = [0.0, 0.5, 1.0, 1.5]


def direct_loglikelihood(model: VideoLLM, question: str, tokens, option: str) -> float:  # type: ignore[no-untyped-def]
    """One full forward of the prompt with the option appended (no cache): sum of the option tokens' log-probs."""
    prompt = model.build_prompt(question, tokens, answer_text=option)
    ids = model.text_ids(option, specials=False)
    start = int((prompt.labels != -100).nonzero()[0, 0])
    embeds, mask, positions = model._left_pad([prompt])
    with torch.no_grad():
        logits = model.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions).logits[0].float()
    logp = torch.log_softmax(logits, -1)
    return float(sum(logp[start - 1 + i, tok] for i, tok in enumerate(ids)))


def test_option_loglikelihoods_when_options_of_several_tokens_then_equal_direct_computation(
    adapter: VideoLLM, frames: np.ndarray
) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    got = adapter.option_loglikelihoods(QUESTION, tokens, OPTIONS)
    lengths = [len(adapter.text_ids(o, specials=False)) for o in OPTIONS]
    assert max(lengths) > 1 and min(lengths) == 1, f"{adapter.family}: exercise both paths, got {lengths}"
    expected = torch.tensor([direct_loglikelihood(adapter, QUESTION, tokens, o) for o in OPTIONS])
    assert got.shape == (len(OPTIONS),)
    assert torch.allclose(got, expected, atol=1e-3), f"{adapter.family}: shared prefix {got} vs direct {expected}"


def test_option_loglikelihoods_when_no_visual_tokens_then_equal_direct_computation(
    adapter: VideoLLM, frames: np.ndarray
) -> None:
    empty = adapter.encode(frames, TIMES).to_tokenset().gather(torch.zeros(0, dtype=torch.long))
    got = adapter.option_loglikelihoods(QUESTION, empty, OPTIONS)
    expected = torch.tensor([direct_loglikelihood(adapter, QUESTION, empty, o) for o in OPTIONS])
    assert torch.allclose(got, expected, atol=1e-3), f"{adapter.family}: blind {got} vs direct {expected}"


def test_option_loglikelihoods_many_when_questions_share_the_video_then_equal_one_by_one(
    adapter: VideoLLM, frames: np.ndarray
) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    asks = [(QUESTION, OPTIONS), ("How many?", ("0", "12 objects")), ("Which way did it move?", ("left", "up"))]
    many = adapter.option_loglikelihoods_many(asks, tokens)
    for (question, options), got in zip(asks, many, strict=True):
        expected = torch.tensor([direct_loglikelihood(adapter, question, tokens, o) for o in options])
        assert torch.allclose(got, expected, atol=1e-3), f"{adapter.family} {question!r}: {got} vs {expected}"
