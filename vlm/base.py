"""The one interface every Video LLM family implements, and the machinery they share.

A family adapter implements ``encode`` (frames -> TokenBlock, vision tower + projector + pooling)
and ``build_prompt`` (question + TokenSet -> Prompt: token ids with one placeholder per visual row,
the rows to place there, and M-RoPE positions where the family has them). Everything else
(answering, training inputs, batched multiple-choice scoring, attention probes, text relevance,
access to layer 0) works on a Prompt and is shared here.

Dimension letters: F frames, N tokens per frame, K tokens in a set, D width, L prompt length,
V visual rows in a prompt (K plus family extras such as LLaVA-OV's image_newline).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from transformers import LogitsProcessor, LogitsProcessorList, PreTrainedModel, PreTrainedTokenizerBase

from compression.tokens import TokenBlock, TokenSet
from vlm.probe import PROBE_ATTN, HiddenRecorder, Recorder, StopForward, recording, recording_hidden, watch_hidden

log = logging.getLogger(__name__)

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Answer:
    """One generated answer with its cost."""

    text: str
    prompt_tokens: int
    visual_tokens: int
    prefill_ms: float
    decode_ms: float
    new_tokens: int


@dataclass(frozen=True)
class Prompt:
    """A prompt ready to embed.

    input_ids [L] int64 with a placeholder id at every visual row; visual [V, D] rows placed at the
    ``visual_mask`` [L] positions in order; token_rows [K]: prompt position of each TokenSet token
    (TokenSet order); position_ids [3, L] for M-RoPE families, else None (plain 0..L-1);
    labels [L] (IGNORE_INDEX outside the answer) when an answer was appended, else None;
    question_rows [T]: prompt positions of the question's tokens when the family marked them, else None.
    """

    input_ids: Tensor
    visual: Tensor
    visual_mask: Tensor
    token_rows: Tensor
    position_ids: Tensor | None = None
    labels: Tensor | None = None
    question_rows: Tensor | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


class PromptBuilder:
    """Accumulates text ids and visual rows, then freezes them into a Prompt."""

    def __init__(self, dim: int) -> None:
        self.ids: list[int] = []
        self.rows: list[Tensor] = []  # each [n, D]
        self.slots: list[int] = []  # prompt position of each visual row
        self.token_index: list[Tensor] = []  # TokenSet index per visual row (-1: family extra)
        self.dim = dim
        self.answer_start: int | None = None
        self.question_span: tuple[int, int] | None = None

    def text(self, ids: Sequence[int]) -> PromptBuilder:
        self.ids.extend(ids)
        return self

    def visual(self, placeholder: int, rows: Tensor, token_index: Tensor) -> PromptBuilder:
        """Append rows [n, D] at n placeholder ids; token_index [n] (-1 for rows not from the TokenSet)."""
        start = len(self.ids)
        self.ids.extend([placeholder] * rows.shape[0])
        self.slots.extend(range(start, start + rows.shape[0]))
        self.rows.append(rows)
        self.token_index.append(token_index.to(torch.int64))
        return self

    def question(self, ids: Sequence[int]) -> PromptBuilder:
        """Append the question's text ids and remember where they are (``Prompt.question_rows``)."""
        self.question_span = (len(self.ids), len(self.ids) + len(ids))
        return self.text(ids)

    def answer(self, ids: Sequence[int]) -> PromptBuilder:
        if ids:
            self.answer_start = len(self.ids)
            self.ids.extend(ids)
        return self

    def build(self, num_tokens: int, position_ids: Tensor | None = None) -> Prompt:
        input_ids = torch.tensor(self.ids, dtype=torch.int64)
        mask = torch.zeros(len(self.ids), dtype=torch.bool)
        slots = torch.tensor(self.slots, dtype=torch.int64)
        mask[slots] = True
        visual = torch.cat(self.rows) if self.rows else torch.zeros(0, self.dim)
        index = torch.cat(self.token_index) if self.token_index else torch.zeros(0, dtype=torch.int64)
        token_rows = torch.zeros(num_tokens, dtype=torch.int64)
        token_rows[index[index >= 0]] = slots[index >= 0]
        labels = None
        if self.answer_start is not None:
            labels = torch.full_like(input_ids, IGNORE_INDEX)
            labels[self.answer_start:] = input_ids[self.answer_start:]
        rows = None if self.question_span is None else torch.arange(*self.question_span, dtype=torch.int64)
        return Prompt(input_ids, visual, mask, token_rows, position_ids, labels, rows)


def _crop_to(cache: Any, length: int) -> None:
    """Drop a KV cache's entries beyond ``length`` positions (transformers' ``crop`` takes how many to remove)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def time_order(tokens: TokenSet) -> Tensor:
    """Permutation [K] sorting tokens by (time, frame, row, col); stable, so ties keep their order."""
    order = torch.argsort(tokens.col, stable=True)
    for key in (tokens.row, tokens.frame, tokens.time):
        order = order[torch.argsort(key[order], stable=True)]
    return order


class _Clock(LogitsProcessor):
    """Records the wall time of every decoding step (called once per new token)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.times: list[float] = []

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # CPU-GPU sync point: timing only
        self.times.append(time.perf_counter())
        return scores


class VideoLLM:
    """A Video LLM behind the vidmem interface (one subclass per family)."""

    family: ClassVar[str] = ""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, *, name: str,
                 trained: bool = True) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.name = name
        self.trained = trained
        self.device = model.device
        self.dtype = model.dtype
        self._eos_ids = self._stop_ids()

    # ------------------------------------------------------------------ family hooks
    def encode(self, frames: np.ndarray, timestamps: Sequence[float], frame_offset: int = 0) -> TokenBlock:
        """frames uint8 [F, H, W, 3] -> TokenBlock features [F', N, D] as the LLM sees them."""
        raise NotImplementedError

    def build_prompt(self, question: str, tokens: TokenSet, with_timestamps: bool = True,
                     answer_text: str | None = None) -> Prompt:
        """The family's chat prompt with exactly ``tokens`` in place of the video (time order)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ shared helpers
    @property
    def language_model(self) -> nn.Module:
        inner = self.model.model
        return getattr(inner, "language_model", None) or inner.text_model

    @property
    def text_config(self) -> Any:
        return self.model.config.get_text_config()

    def text_ids(self, text: str, specials: bool = True) -> list[int]:
        """Token ids of ``text``, no BOS/EOS added; with ``specials=False`` (user text) a literal
        '<video>' stays plain text instead of becoming a placeholder."""
        enc = self.tokenizer(text, add_special_tokens=False, split_special_tokens=not specials)
        return list(enc["input_ids"])

    def _stop_ids(self) -> list[int]:
        ids = {self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids("<|im_end|>")}
        unk = self.tokenizer.unk_token_id
        return sorted(i for i in ids if i is not None and i != unk)

    def _answer_ids(self, answer_text: str | None) -> list[int]:
        if answer_text is None:
            return []
        return self.text_ids(answer_text, specials=False) + self._eos_ids[:1]

    def embed(self, prompt: Prompt) -> Tensor:
        """Input embeddings [1, L, D] with the visual rows placed; differentiable w.r.t. the model."""
        ids = prompt.input_ids.to(self.device)
        emb = self.model.get_input_embeddings()(ids)  # [L, D]
        if prompt.visual.shape[0]:
            rows = prompt.visual_mask.to(self.device).nonzero()[:, 0]
            emb = emb.index_put((rows,), prompt.visual.to(device=self.device, dtype=emb.dtype))
        return emb[None]

    # ------------------------------------------------------------------ answering
    @torch.no_grad()
    def answer(self, question: str, tokens: TokenSet, max_new_tokens: int = 32,
               with_timestamps: bool = True) -> Answer:
        """Greedy answer to ``question`` seeing exactly ``tokens`` (may be empty)."""
        prompt = self.build_prompt(question, tokens, with_timestamps)
        new, prefill_ms, decode_ms = self.generate(prompt, max_new_tokens)
        text = self.tokenizer.decode(new, skip_special_tokens=True).strip()
        log.debug("answered with %d visual tokens, prompt %d, %d new tokens", len(tokens), len(prompt), len(new))
        return Answer(text=text, prompt_tokens=len(prompt), visual_tokens=len(tokens), prefill_ms=prefill_ms,
                      decode_ms=decode_ms, new_tokens=len(new))

    @torch.no_grad()
    def generate(self, prompt: Prompt, max_new_tokens: int, min_new_tokens: int = 0) -> tuple[list[int], float, float]:
        """Greedy generation from a prompt: (new token ids, prefill ms, decode ms)."""
        embeds = self.embed(prompt)
        clock = _Clock(embeds.device)
        kwargs: dict[str, Any] = {
            "inputs_embeds": embeds, "attention_mask": torch.ones(embeds.shape[:2], dtype=torch.long,
                                                                  device=self.device),
            "max_new_tokens": max_new_tokens, "min_new_tokens": min_new_tokens, "do_sample": False,
            "eos_token_id": self._eos_ids,
            "pad_token_id": self.tokenizer.pad_token_id, "logits_processor": LogitsProcessorList([clock]),
        }
        if prompt.position_ids is not None:
            kwargs["position_ids"] = prompt.position_ids[:, None].to(self.device)  # [3, 1, L]
        start = time.perf_counter()
        out = self.model.generate(**kwargs)
        end = time.perf_counter()
        new = out[0].tolist()  # with inputs_embeds only, generate returns just the new tokens
        first = clock.times[0] if clock.times else end
        return new, (first - start) * 1e3, (end - first) * 1e3

    # ------------------------------------------------------------------ training and scoring
    def build_inputs(self, question: str, tokens: TokenSet, answer_text: str | None = None,
                     with_timestamps: bool = True) -> tuple[Tensor, Tensor, Tensor | None]:
        """Differentiable inputs for training, same prompt as ``answer``.

        Returns inputs_embeds [1, L, D], attention_mask [1, L] and labels [1, L] (IGNORE_INDEX
        outside the answer, which is followed by the end-of-turn token) or None without an answer.
        Families with M-RoPE also need ``build_prompt(...).position_ids``.
        """
        prompt = self.build_prompt(question, tokens, with_timestamps, answer_text=answer_text)
        embeds = self.embed(prompt)
        mask = torch.ones(embeds.shape[:2], dtype=torch.long, device=self.device)
        labels = None if prompt.labels is None else prompt.labels[None].to(self.device)
        return embeds, mask, labels

    def choice_logprobs(self, question: str, token_sets: Sequence[TokenSet], choices: Sequence[str],
                        with_timestamps: bool = True, grad: bool = False) -> Tensor:
        """Log-probabilities [B, C] of each choice's first token at the answer position.

        One forward over the B prompts, left-padded. Gradients flow only with ``grad=True``.
        """
        prompts = [self.build_prompt(question, ts, with_timestamps) for ts in token_sets]
        first = torch.tensor([self.text_ids(c)[0] for c in choices], device=self.device)
        with torch.set_grad_enabled(grad):
            embeds, mask, positions = self._left_pad(prompts)
            out = self.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions, logits_to_keep=1)
            logp = torch.log_softmax(out.logits[:, -1].float(), dim=-1)  # [B, vocab]
            return logp[:, first]

    @torch.no_grad()
    def option_loglikelihoods(self, question: str, tokens: TokenSet, options: Sequence[str],
                              with_timestamps: bool = True) -> Tensor:
        """Log-likelihood [C] of each option's text as the answer continuation (lm-evaluation-harness ``acc``:
        the sum over the option's tokens, end-of-turn not included). See ``option_loglikelihoods_many``."""
        return self.option_loglikelihoods_many([(question, options)], tokens, with_timestamps)[0]

    @torch.no_grad()
    def option_loglikelihoods_many(self, asks: Sequence[tuple[str, Sequence[str]]], tokens: TokenSet,
                                   with_timestamps: bool = True) -> list[Tensor]:
        """``option_loglikelihoods`` of several questions about the same tokens: [C_i] per question.

        Exact, only cheaper: the prompt part shared by all questions (chat header + video) runs once; each
        question's remaining tokens and each option's continuation run on that KV cache, which is cropped
        back afterwards (options of one token cost nothing beyond their question's forward)."""
        bases = [self.build_prompt(q, tokens, with_timestamps) for q, _ in asks]
        shared = min(len(b) for b in bases) - 1  # every question feeds at least its last token itself
        for base in bases[1:]:
            diff = (base.input_ids[:shared] != bases[0].input_ids[:shared]).nonzero()
            shared = int(diff[0, 0]) if len(diff) else shared
        cache = self._forward(bases[0], 0, shared, None)[1]
        out = []
        for (question, options), base in zip(asks, bases, strict=True):
            logits, _ = self._forward(base, shared, len(base), cache)
            first = torch.log_softmax(logits[-1].float(), dim=-1)  # [vocab]: the answer's first token
            scores = []
            for option in options:
                ids = self.text_ids(option, specials=False)
                total = first[ids[0]]
                if len(ids) > 1:
                    prompt = self.build_prompt(question, tokens, with_timestamps, answer_text=option)
                    more = torch.log_softmax(self._forward(prompt, len(base), len(base) + len(ids) - 1,
                                                           cache)[0].float(), dim=-1)  # [n - 1, vocab]
                    total = total + more[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].sum()
                    _crop_to(cache, len(base))
                scores.append(total)
            _crop_to(cache, shared)
            out.append(torch.stack(scores).cpu())
        return out

    def _forward(self, prompt: Prompt, start: int, end: int, cache: Any) -> tuple[Tensor, Any]:
        """Logits [end - start, vocab] of prompt positions start..end-1 fed after ``cache`` (None: a new one)."""
        kwargs: dict[str, Any] = {"inputs_embeds": self.embed(prompt)[:, start:end], "use_cache": True,
                                  "past_key_values": cache}
        if prompt.position_ids is not None:
            kwargs["position_ids"] = prompt.position_ids[:, None, start:end].to(self.device)
        else:
            kwargs["position_ids"] = torch.arange(start, end, device=self.device)[None]
        out = self.model(**kwargs)
        return out.logits[0].cpu(), out.past_key_values

    def _left_pad(self, prompts: Sequence[Prompt]) -> tuple[Tensor, Tensor, Tensor]:
        """Batch prompts: embeds [B, L, D], mask [B, L], position ids [B, L] or [3, B, L]."""
        length = max(len(p) for p in prompts)
        rows, masks, positions = [], [], []
        for p in prompts:
            emb = self.embed(p)[0]
            pad = length - len(p)
            rows.append(torch.cat([emb.new_zeros(pad, emb.shape[-1]), emb]))
            masks.append(torch.cat([torch.zeros(pad, dtype=torch.long), torch.ones(len(p), dtype=torch.long)]))
            pos = p.position_ids if p.position_ids is not None else torch.arange(len(p))[None]
            positions.append(torch.cat([pos.new_zeros(pos.shape[0], pad), pos], dim=1))
        pos_batch = torch.stack(positions, dim=1)  # [R, B, L]
        if prompts[0].position_ids is None:
            pos_batch = pos_batch[0]
        return torch.stack(rows), torch.stack(masks).to(self.device), pos_batch.to(self.device)

    # ------------------------------------------------------------------ model hooks for compression
    @torch.no_grad()
    def probe_attention(self, question: str, tokens: TokenSet, layer: int, with_timestamps: bool = True) -> Tensor:
        """Attention [K] float32 from the prompt's last token to each token at LLM ``layer`` (mean over heads).

        Recorded by the ``PROBE_ATTN`` attention function (last query row only); the forward stops
        right after ``layer``. Scores follow the TokenSet's order.
        """
        if len(tokens) == 0:
            return torch.zeros(0)
        self._ensure_probe_attention()
        prompt = self.build_prompt(question, tokens, with_timestamps)
        recorder = Recorder(module=self.language_model.layers[layer].self_attn, stop=True)
        kwargs: dict[str, Any] = {"inputs_embeds": self.embed(prompt), "use_cache": False}
        if prompt.position_ids is not None:
            kwargs["position_ids"] = prompt.position_ids[:, None].to(self.device)
        with recording(recorder):
            try:
                self.model(**kwargs)
            except StopForward:
                pass
        if recorder.row is None:
            raise RuntimeError(f"layer {layer} was not reached by the forward pass")
        return recorder.row[0].mean(0)[prompt.token_rows.to(recorder.row.device)].cpu()

    def _ensure_probe_attention(self) -> None:
        if self.model.config._attn_implementation != PROBE_ATTN:
            self.model.set_attn_implementation(PROBE_ATTN)

    @torch.no_grad()
    def text_relevance(self, question: str, tokens: TokenSet) -> Tensor:
        """Cosine similarity [K] float32 between each token and the mean input embedding of the question."""
        if len(tokens) == 0:
            return torch.zeros(0)
        ids = torch.tensor(self.text_ids(question) or self._eos_ids[:1], device=self.device)
        query = self.model.get_input_embeddings()(ids).float().mean(0)  # [D]
        feats = tokens.features.to(self.device).float()  # [K, D]
        return torch.nn.functional.cosine_similarity(feats, query[None], dim=-1).cpu()

    @torch.no_grad()
    def question_states(self, question: str, tokens: TokenSet, layer: int,
                        with_timestamps: bool = True) -> tuple[Tensor, Tensor]:
        """Hidden states float32 after LLM decoder layer ``layer`` of the answering prompt: (the question's
        tokens [T, H], the visual tokens [K, H] in TokenSet order). The forward stops right after ``layer``.

        AdaTP's text relevance reads them (compression/methods/adatp.py); the question is located by
        ``question_rows`` (:meth:`question_rows`)."""
        prompt = self.build_prompt(question, tokens, with_timestamps)
        module = self.language_model.layers[layer]
        watch_hidden(module)
        recorder = HiddenRecorder(module=module, stop=True)
        kwargs: dict[str, Any] = {"inputs_embeds": self.embed(prompt), "use_cache": False}
        if prompt.position_ids is not None:
            kwargs["position_ids"] = prompt.position_ids[:, None].to(self.device)
        with recording_hidden(recorder):
            try:
                self.model(**kwargs)
            except StopForward:
                pass
        if recorder.hidden is None:
            raise RuntimeError(f"layer {layer} was not reached by the forward pass")
        states = recorder.hidden[0].float()  # [L, H]
        rows = self.question_rows(prompt, question).to(states.device)
        return states[rows].cpu(), states[prompt.token_rows.to(states.device)].cpu()

    def question_rows(self, prompt: Prompt, question: str) -> Tensor:
        """Prompt positions [T] of the question's tokens: those the family marked, else the last occurrence
        of ``text_ids(question, specials=False)`` in the prompt, else every text position after the video."""
        if prompt.question_rows is not None:
            return prompt.question_rows
        ids, needle = prompt.input_ids.tolist(), self.text_ids(question, specials=False)
        for start in range(len(ids) - len(needle), -1, -1):
            if needle and ids[start:start + len(needle)] == needle:
                return torch.arange(start, start + len(needle))
        after = int(prompt.visual_mask.nonzero().max()) + 1 if bool(prompt.visual_mask.any()) else 0
        return torch.arange(after, len(ids))

    def layer0_state_dict(self) -> dict[str, Tensor]:
        """A detached float32 copy of the LLM's decoder layer 0 (keys as in the HF layer module)."""
        return {k: v.detach().float().cpu().clone() for k, v in self.language_model.layers[0].state_dict().items()}

    def input_embeddings(self) -> nn.Embedding:
        """The LLM's input embedding table (shared with the model; do not modify in place)."""
        return self.model.get_input_embeddings()

    def rotary_config(self) -> dict[str, Any]:
        """What a layer-0 copy needs: keyword arguments of ``CompressionPolicy.from_llm_layer``."""
        cfg = self.text_config
        rope = getattr(cfg, "rope_parameters", None) or {}
        theta = rope.get("rope_theta", getattr(cfg, "rope_theta", 10000.0))
        heads = cfg.num_attention_heads
        return {"hidden_size": cfg.hidden_size, "num_heads": heads,
                "num_kv_heads": getattr(cfg, "num_key_value_heads", heads) or heads, "rope_theta": float(theta),
                "rms_norm_eps": float(getattr(cfg, "rms_norm_eps", 1e-6)),
                "head_dim": int(getattr(cfg, "head_dim", 0) or cfg.hidden_size // heads)}

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.model.parameters())
