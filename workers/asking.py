"""What a worker needs to answer one question as it was asked: its window and its overrides.

The question row holds the caller's request (a window in stream seconds, or a relative one, and
stage-2, LLM budget and answer length overrides); this module turns it into what the answer
uses, over the stream's own settings (``workers.stream_settings``), and records that.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from compression.memory import Memory
from compression.pipeline import Pipeline
from compression.tokens import TokenSet
from store.db import session_scope
from store.models import Question
from workers import stream_settings
from workers.runtime import Runtime


@dataclass(frozen=True)
class Job:
    """A claimed question, read from its row."""

    stream_id: str
    text: str
    window_start: float | None
    window_end: float | None
    window_last: float | None
    stage2: str | None
    llm_budget: int | None
    max_answer_tokens: int | None
    media_epoch: datetime | None  # the stream's, when claimed

    @classmethod
    def of(cls, question: Question, media_epoch: datetime | None) -> Job:
        return cls(
            question.stream_id, question.text, question.window_start, question.window_end, question.window_last,
            question.stage2, question.llm_budget, question.max_answer_tokens, media_epoch,
        )


def window(job: Job, memory: Memory) -> tuple[float | None, float | None]:
    """The window in stream seconds: a relative one ends at the memory's newest time (None ends: open)."""
    if job.window_last is None:
        return job.window_start, job.window_end
    if len(memory.tokens) == 0:
        return None, None
    newest = float(memory.tokens.time.max())
    return max(0.0, newest - job.window_last), newest


def covered(tokens: TokenSet, start: float | None, end: float | None) -> tuple[float | None, float | None]:
    """The stream time the tokens of the window stand for, within the window: what the answer saw."""
    if len(tokens) == 0:
        return None, None
    first = float(tokens.side["t_start"].min()) if "t_start" in tokens.side else float(tokens.time.min())
    last = float(tokens.time.max())
    return (first if start is None else max(first, start)), (last if end is None else min(last, end))


def pipeline(rt: Runtime, job: Job) -> tuple[Pipeline, dict[str, Any]]:
    """The stream's pipeline with the question's stage-2 and budget overrides, and the specs it stands for."""
    with session_scope(rt.sessions) as session:
        spec = stream_settings.read(session, rt.settings, job.stream_id).pipeline_spec
    if job.stage2 is not None:
        spec = replace(spec, stage2=job.stage2)
    if job.llm_budget is not None:
        spec = replace(spec, llm_budget=job.llm_budget)
    specs = {
        "stage1": spec.stage1, "memory_budget": spec.memory_budget, "stage2": spec.stage2,
        "llm_budget": spec.llm_budget, "max_answer_tokens": answer_tokens(rt, job),
    }
    return rt.pipelines.get(spec), specs


def answer_tokens(rt: Runtime, job: Job) -> int:
    return job.max_answer_tokens if job.max_answer_tokens is not None else rt.settings.max_new_tokens


@dataclass(frozen=True)
class Seen:
    """What an answer used, recorded on its row: the resolved window, the part of it the memory held,
    the memory's size, the specs and the media epoch of its clock times."""

    window: tuple[float | None, float | None]
    covered: tuple[float | None, float | None]
    memory_tokens: int
    specs: dict[str, Any] = field(default_factory=dict)
    media_epoch: datetime | None = None


def record(question: Question, seen: Seen) -> None:
    if question.window_last is not None:
        question.window_start, question.window_end = seen.window
    question.covered_start, question.covered_end = seen.covered
    question.memory_tokens, question.specs = seen.memory_tokens, seen.specs
    if seen.media_epoch is not None:
        question.media_epoch = seen.media_epoch


def nothing_in_window(memory: Memory) -> str:
    """The answer when the window holds no token: no video at all, or none in that span."""
    if len(memory.tokens) == 0:
        return "No video seen yet on this stream: there is nothing to answer from."
    first = float(memory.tokens.side["t_start"].min()) if "t_start" in memory.tokens.side else \
        float(memory.tokens.time.min())
    return (f"No video in the asked window: the stream's memory holds {first:.1f} s to "
            f"{float(memory.tokens.time.max()):.1f} s of stream time.")
