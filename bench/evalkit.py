"""Shared pieces of the accuracy and stream benchmarks: model loading, chunked encoding, scoring.

Scoring follows the adapter's ``choice_logprobs``: the prompt is exactly the one ``answer`` builds
(per-frame timestamps, tokens in time order), and the picked answer is the most likely valid letter.
Its wall time is the prefill time (one forward over the prompt, logits of the last position only).
"""

from __future__ import annotations

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
    from vlm.loader import load_model

    path = str(SHIPPED_MODEL) if model == "vidmem-tiny" else model
    return load_model(path, device="cpu", dtype=dtype)


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


def accuracy(rows: Sequence[Scored]) -> float:
    return float(np.mean([r.correct for r in rows])) if rows else float("nan")


def per_type(rows: Sequence[Scored]) -> dict[str, float]:
    types = sorted({r.qtype for r in rows})
    return {t: accuracy([r for r in rows if r.qtype == t]) for t in types}


def median(values: Sequence[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")
