"""Shared pieces of the accuracy and stream benchmarks: model loading, chunked encoding, scoring, statistics.

Honest scoring (``score_options``) is lm-evaluation-harness multiple choice: the log-likelihood of each
option's text as the answer continuation (``option_loglikelihoods``, the shared prompt run once), the
most likely option is the answer. The prompt is exactly the one ``answer`` builds (per-frame
timestamps, tokens in time order) around the question as the model was trained to read it (words for
v2, the lettered list for v1). ``score`` is the letter protocol of vidmem-tiny v1 (its tests only).
Wall time is the prefill time.
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from bench.questions import LETTERS, Question
from compression.tokens import TokenBlock, TokenSet

REPO = Path(__file__).resolve().parent.parent
SHIPPED_MODEL = REPO / "models" / "vidmem-tiny"


def load(model: str, dtype: str = "auto"):  # type: ignore[no-untyped-def]
    """The Video LLM through vlm (the shipped vidmem-tiny when ``model`` is 'vidmem-tiny')."""
    from vlm.loader import load_model, read_marker

    path = str(SHIPPED_MODEL) if model == "vidmem-tiny" else model
    loaded = load_model(path, device="cpu", dtype=dtype)
    loaded.answers_in_words = Path(path).is_dir() and read_marker(Path(path)).get("answers") == "words"
    return loaded


def encode_chunks(model, frames: np.ndarray, times: np.ndarray, chunk_frames: int, offset: int = 0) -> list[TokenBlock]:  # type: ignore[no-untyped-def]
    """Encode a clip as the ingest path would: consecutive chunks of ``chunk_frames`` frames."""
    blocks = []
    for i in range(0, len(frames), chunk_frames):
        blocks.append(model.encode(frames[i : i + chunk_frames], times[i : i + chunk_frames].tolist(), offset + i))
    return blocks


def concat_blocks(blocks: Sequence[TokenBlock]) -> TokenSet:
    return TokenSet.concat([b.to_tokenset() for b in blocks])


@dataclass(frozen=True)
class Scored:
    qtype: str
    correct: bool
    picked: str
    prefill_ms: float
    visual_tokens: int
    evidence_s: float


@torch.no_grad()
def score(model, question: Question, tokens: TokenSet) -> Scored:  # type: ignore[no-untyped-def]
    letters = list(LETTERS[: len(question.choices)])
    start = time.perf_counter()
    logp = model.choice_logprobs(question.text, [tokens], letters)[0]
    ms = (time.perf_counter() - start) * 1e3
    picked = letters[int(torch.argmax(logp))]
    return Scored(question.qtype, picked == question.answer, picked, ms, len(tokens), question.evidence_s)


def answers_in_words(model) -> bool:  # type: ignore[no-untyped-def]
    """Whether the model was trained to answer in words (vidmem-tiny v2 marks it in vidmem.json)."""
    return bool(getattr(model, "answers_in_words", False))


def question_text(model, question: Question) -> str:  # type: ignore[no-untyped-def]
    """The question as the model reads it: v2's word prompt, or v1's lettered list (its training format)."""
    return question.prompt if answers_in_words(model) else question.text


@torch.no_grad()
def score_options(model, question: Question, tokens: TokenSet) -> Scored:  # type: ignore[no-untyped-def]
    """Honest multiple choice: the option whose text is the likeliest answer continuation."""
    start = time.perf_counter()
    logp = model.option_loglikelihoods(question_text(model, question), tokens, question.choices)
    ms = (time.perf_counter() - start) * 1e3
    picked = question.choices[int(torch.argmax(logp))]
    return Scored(question.qtype, picked == question.answer_text, picked, ms, len(tokens), question.evidence_s)


@torch.no_grad()
def score_options_many(model, questions: Sequence[Question], tokens: TokenSet) -> list[Scored]:  # type: ignore[no-untyped-def]
    """``score_options`` for several questions about the same tokens, the shared prompt part run once
    (prefill ms: the wall time divided among the questions)."""
    if not questions:
        return []
    start = time.perf_counter()
    asks = [(question_text(model, q), q.choices) for q in questions]
    logps = model.option_loglikelihoods_many(asks, tokens)
    ms = (time.perf_counter() - start) * 1e3 / len(questions)
    out = []
    for q, logp in zip(questions, logps, strict=True):
        picked = q.choices[int(torch.argmax(logp))]
        out.append(Scored(q.qtype, picked == q.answer_text, picked, ms, len(tokens), q.evidence_s))
    return out


def interval(hits: Sequence[bool], z: float = 1.96) -> tuple[float, float]:
    """Wilson 95 % interval of an accuracy."""
    n = len(hits)
    if not n:
        return float("nan"), float("nan")
    p = float(np.mean(hits))
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return float(centre - half), float(centre + half)


def mcnemar_p(a: Sequence[bool], b: Sequence[bool]) -> float:
    """Exact two-sided McNemar test of paired answers (same questions): p-value that a and b are equally accurate."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1))  # exact integers: no underflow
    return min(1.0, 2 * tail / 2**n)


def contribution_kept(method: Sequence[bool], full: Sequence[bool], blind: Sequence[bool], reps: int = 2000,
                      seed: int = 0) -> tuple[float, float, float]:
    """Video contribution kept = (acc - blind) / (full - blind), with a 95 % paired bootstrap interval over
    questions (the three answers of a question are resampled together)."""
    m, f, b = (np.asarray(x, dtype=float) for x in (method, full, blind))

    def ratio(idx: np.ndarray) -> float:
        gap = f[idx].mean() - b[idx].mean()
        return float((m[idx].mean() - b[idx].mean()) / gap) if gap > 0 else float("nan")

    rng = np.random.default_rng(seed)
    boots = np.array([ratio(rng.integers(0, len(m), len(m))) for _ in range(reps)])
    boots = boots[np.isfinite(boots)]
    point = ratio(np.arange(len(m)))
    if not len(boots):
        return point, float("nan"), float("nan")
    return point, float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def accuracy(rows: Sequence[Scored]) -> float:
    return float(np.mean([r.correct for r in rows])) if rows else float("nan")


def per_type(rows: Sequence[Scored]) -> dict[str, float]:
    types = sorted({r.qtype for r in rows})
    return {t: accuracy([r for r in rows if r.qtype == t]) for t in types}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")
