"""LLaVA-OneVision adapter on the tiny random model: encode, answer with any subset, native equality."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from compression.tokens import TokenSet
from vlm.base import IGNORE_INDEX, Answer, VideoLLM

QUESTION = "what color is the square?"
TIMES = [0.0, 0.5, 1.0, 1.5]


def native_greedy(model: VideoLLM, input_ids: torch.Tensor, pixels: torch.Tensor, new: int) -> list[int]:
    """The stock transformers pixel path: generate(input_ids, pixel_values_videos)."""
    with torch.no_grad():
        out = model.model.generate(
            input_ids=input_ids[None], attention_mask=torch.ones(1, input_ids.shape[0], dtype=torch.long),
            pixel_values_videos=pixels[None], max_new_tokens=new, do_sample=False,
            eos_token_id=model._eos_ids, pad_token_id=model.tokenizer.pad_token_id)
    return out[0, input_ids.shape[0]:].tolist()


def test_encode_when_frames_given_then_block_has_pooled_grid(llava: VideoLLM, frames: np.ndarray) -> None:
    block = llava.encode(frames, TIMES, frame_offset=7)
    assert block.features.shape == (4, 4, 64), block.features.shape
    assert block.grid == (2, 2)
    assert block.frame_offset == 7
    assert block.timestamps.dtype == torch.float64 and block.timestamps.tolist() == TIMES


@pytest.mark.parametrize("with_timestamps", [False, True])
def test_answer_when_all_tokens_kept_then_equals_native_pixel_path(llava: VideoLLM, frames: np.ndarray,
                                                                   with_timestamps: bool) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset()
    prompt = llava.build_prompt(QUESTION, tokens, with_timestamps)
    ours, _, _ = llava.generate(prompt, 8)
    native = native_greedy(llava, prompt.input_ids, llava.pixel_values(frames), 8)
    assert ours == native, f"intercepted {ours} != native {native}"


def test_answer_when_subsets_then_prompt_holds_exactly_those_tokens(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset()
    gen = torch.Generator().manual_seed(0)
    subsets = [torch.zeros(0, dtype=torch.long), torch.tensor([5]), torch.randperm(16, generator=gen)[:4]]
    for idx in subsets:
        subset = tokens.gather(idx)
        answer = llava.answer(QUESTION, subset, max_new_tokens=3)
        prompt = llava.build_prompt(QUESTION, subset)
        placeholders = int((prompt.input_ids == llava.video_token_id).sum())
        assert isinstance(answer, Answer) and answer.visual_tokens == len(idx)
        assert placeholders == (len(idx) + 1 if len(idx) else 0), "K tokens + one newline, none when empty"
        assert 1 <= answer.new_tokens <= 3 and answer.prompt_tokens == len(prompt)
        assert answer.prefill_ms > 0 and answer.decode_ms >= 0


def test_answer_when_tokens_shuffled_then_placed_in_time_order(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset()
    shuffled = tokens.gather(torch.randperm(16, generator=torch.Generator().manual_seed(1)))
    a, b = llava.build_prompt(QUESTION, tokens), llava.build_prompt(QUESTION, shuffled)
    assert torch.equal(a.input_ids, b.input_ids)
    assert torch.equal(llava.embed(a), llava.embed(b)), "same rows in the same (time) order"
    assert torch.equal(b.input_ids[b.token_rows], torch.full((16,), llava.video_token_id))


def test_answer_when_question_contains_placeholder_text_then_it_stays_text(llava: VideoLLM) -> None:
    prompt = llava.build_prompt("is <video> here?", TokenSet.empty(64))
    assert int((prompt.input_ids == llava.video_token_id).sum()) == 0


def test_build_inputs_when_answer_given_then_labels_cover_answer_and_grads_flow(llava: VideoLLM,
                                                                                frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset().gather(torch.tensor([0, 3, 9]))
    embeds, mask, labels = llava.build_inputs(QUESTION, tokens, answer_text="red")
    plain, _, none = llava.build_inputs(QUESTION, tokens)
    assert none is None and labels is not None
    answer_len = int((labels != IGNORE_INDEX).sum())
    assert embeds.shape[1] == plain.shape[1] + answer_len and mask.shape == labels.shape
    assert labels[0, -1].item() in llava._eos_ids, "the answer ends with the end-of-turn token"
    loss = llava.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss
    loss.backward()
    grad = llava.input_embeddings().weight.grad
    assert grad is not None and grad.abs().sum() > 0
    llava.model.zero_grad(set_to_none=True)


def test_choice_logprobs_when_batched_then_equals_one_by_one(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, TIMES).to_tokenset()
    sets = [tokens, tokens.gather(torch.tensor([2, 7])), TokenSet.empty(64)]
    choices = ["A", "B", "yes"]
    batched = llava.choice_logprobs(QUESTION, sets, choices)
    single = torch.cat([llava.choice_logprobs(QUESTION, [s], choices) for s in sets])
    assert batched.shape == (3, 3)
    assert torch.allclose(batched, single, atol=1e-4), (batched - single).abs().max()
