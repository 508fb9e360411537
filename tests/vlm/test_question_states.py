"""Hidden states of the question and the visual tokens at one LLM layer (AdaTP's text relevance)."""

from __future__ import annotations

import threading

import numpy as np
import torch

from compression.registry import SelectContext, build_method
from compression.tokens import TokenSet
from vlm.base import VideoLLM

QUESTION = "which shape moved left?"


def _tokens(model: VideoLLM, frames: np.ndarray) -> TokenSet:
    tokens = model.encode(frames, [0.0, 1.0, 2.0, 3.0]).to_tokenset()
    return tokens.gather(torch.randperm(len(tokens), generator=torch.Generator().manual_seed(0))[:7])


def test_question_states_when_compared_then_equal_the_stock_hidden_states_after_the_layer(adapter: VideoLLM,
                                                                                           frames: np.ndarray) -> None:
    # given 7 tokens in shuffled order
    tokens = _tokens(adapter, frames)
    # when
    q_states, v_states = adapter.question_states(QUESTION, tokens, 0)
    # then they are rows of the stock forward's hidden states after layer 0 (index 1; index 0 is the embeddings)
    prompt = adapter.build_prompt(QUESTION, tokens)
    positions = None if prompt.position_ids is None else prompt.position_ids[:, None]
    with torch.no_grad():
        ref = adapter.model(inputs_embeds=adapter.embed(prompt), position_ids=positions,
                            output_hidden_states=True).hidden_states[1][0]
    rows = adapter.question_rows(prompt, QUESTION)
    assert v_states.shape == (7, adapter.text_config.hidden_size)
    assert torch.allclose(v_states, ref[prompt.token_rows], atol=1e-5)
    assert torch.allclose(q_states, ref[rows], atol=1e-5)
    # and the rows hold exactly the question's tokens (LLaVA-OV marks "\n" + question, the others are found)
    question_ids = adapter.text_ids(("\n" if adapter.family == "llava_onevision" else "") + QUESTION, specials=False)
    assert prompt.input_ids[rows].tolist() == question_ids


def test_question_states_when_layer_changes_then_states_change_and_threads_do_not_interfere(
        llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = _tokens(llava, frames)
    q0, v0 = llava.question_states(QUESTION, tokens, 0)
    q1, v1 = llava.question_states(QUESTION, tokens, 1)
    assert not torch.allclose(v0, v1) and q0.shape == q1.shape
    # a plain forward elsewhere is not stopped by the recording hook left on the layers
    results: list[tuple[int, int]] = []

    def answer() -> None:
        results.append(tuple(llava.choice_logprobs(QUESTION, [tokens], ["A", "B"]).shape))

    worker = threading.Thread(target=answer)
    worker.start()
    worker.join()
    assert results == [(1, 2)]
    assert llava.question_states(QUESTION, TokenSet.empty(tokens.dim), 0)[1].shape == (0, q0.shape[1])


def test_adatp_when_run_on_a_real_adapter_then_uses_its_hidden_states(llava: VideoLLM, frames: np.ndarray) -> None:
    tokens = llava.encode(frames, [0.0, 1.0, 2.0, 3.0]).to_tokenset()
    out = build_method("adatp:rel_layer=1,layer=0").select(tokens, 5, SelectContext(QUESTION, llava))
    assert len(out) == 5
