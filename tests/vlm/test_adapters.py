"""Every family's adapter on its tiny random model: native equality, any subset, training and scoring inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.tokens import TokenSet
from tests.vlm.conftest import native_greedy, placeholder_id
from vlm.base import IGNORE_INDEX, Answer, VideoLLM

QUESTION = "what color is the square?"
TIMES = [0.0, 0.5, 1.0, 1.5]


@pytest.mark.parametrize("with_timestamps", [False, True])
def test_answer_when_all_tokens_kept_then_equals_native_pixel_path(adapter: VideoLLM, frames: np.ndarray,
                                                                   with_timestamps: bool) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    prompt = adapter.build_prompt(QUESTION, tokens, with_timestamps)
    ours, _, _ = adapter.generate(prompt, 6)
    native = native_greedy(adapter, prompt.input_ids, frames, 6)
    assert ours == native, f"{adapter.family}: intercepted {ours} != native {native}"


def test_answer_when_subsets_then_prompt_holds_exactly_those_tokens(adapter: VideoLLM, frames: np.ndarray) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    extra = 1 if adapter.family == "llava_onevision" else 0  # LLaVA-OV re-appends its image_newline
    subsets = [torch.zeros(0, dtype=torch.long), torch.tensor([len(tokens) - 1]),
               torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))[: len(tokens) // 3]]
    for idx in subsets:
        subset = tokens.gather(idx)
        answer = adapter.answer(QUESTION, subset, max_new_tokens=3)
        prompt = adapter.build_prompt(QUESTION, subset)
        placeholders = int((prompt.input_ids == placeholder_id(adapter)).sum())
        assert isinstance(answer, Answer) and answer.visual_tokens == len(idx)
        assert placeholders == (len(idx) + extra if len(idx) else 0), f"{adapter.family} with {len(idx)} tokens"
        assert 1 <= answer.new_tokens <= 3 and answer.prompt_tokens == len(prompt)
        assert answer.prefill_ms > 0 and answer.decode_ms >= 0


def test_build_prompt_when_tokens_shuffled_then_placed_in_time_order(adapter: VideoLLM, frames: np.ndarray) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    shuffled = tokens.gather(torch.randperm(len(tokens), generator=torch.Generator().manual_seed(1)))
    a, b = adapter.build_prompt(QUESTION, tokens), adapter.build_prompt(QUESTION, shuffled)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(adapter.embed(a), adapter.embed(b)), "same rows in the same (time) order"
    if a.position_ids is not None:
        assert b.position_ids is not None and torch.equal(a.position_ids, b.position_ids)
    assert torch.equal(b.input_ids[b.token_rows], torch.full((len(tokens),), placeholder_id(adapter)))


def test_build_prompt_when_question_contains_placeholder_text_then_it_stays_text(adapter: VideoLLM) -> None:
    marker = "<video>" if adapter.family == "llava_onevision" else "<image>"
    prompt = adapter.build_prompt(f"is {marker} here? <|video_pad|>", TokenSet.empty(64))
    assert int((prompt.input_ids == placeholder_id(adapter)).sum()) == 0


def test_build_inputs_when_answer_given_then_labels_cover_answer_and_grads_flow(adapter: VideoLLM,
                                                                                frames: np.ndarray) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset().gather(torch.tensor([0, 3, 5]))
    embeds, mask, labels = adapter.build_inputs(QUESTION, tokens, answer_text="red")
    plain, _, none = adapter.build_inputs(QUESTION, tokens)
    assert none is None and labels is not None
    answer_len = int((labels != IGNORE_INDEX).sum())
    assert embeds.shape[1] == plain.shape[1] + answer_len and mask.shape == labels.shape
    assert labels[0, -1].item() in adapter._eos_ids, "the answer ends with the end-of-turn token"
    prompt = adapter.build_prompt(QUESTION, tokens, answer_text="red")
    positions = None if prompt.position_ids is None else prompt.position_ids[:, None]
    loss = adapter.model(inputs_embeds=embeds, attention_mask=mask, labels=labels, position_ids=positions).loss
    loss.backward()
    grad = adapter.input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    adapter.model.zero_grad(set_to_none=True)


def test_choice_logprobs_when_batched_then_equals_one_by_one(adapter: VideoLLM, frames: np.ndarray) -> None:
    tokens = adapter.encode(frames, TIMES).to_tokenset()
    sets = [tokens, tokens.gather(torch.tensor([2, 5])), TokenSet.empty(64)]
    choices = ["A", "B", "yes"]
    batched = adapter.choice_logprobs(QUESTION, sets, choices)
    single = torch.cat([adapter.choice_logprobs(QUESTION, [s], choices) for s in sets])
    assert batched.shape == (3, 3)
    assert torch.allclose(batched, single, atol=1e-4), (batched - single).abs().max()
