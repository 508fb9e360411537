"""``vidmem demo``: a short video through the real pipeline, questions through the queue.

The stream is ingested as a live stream (PyAV, at the file's own rate), chunks go through the
embedded queue to a Celery worker in a child process, which encodes, compresses and appends
them to the stream's memory; then the questions are queued, answered by the worker and read
back from the SQLite database, which ``vidmem serve`` shows afterwards.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from store import repo
from store.db import session_scope
from store.models import QuestionStatus, StreamStatus
from vidmem.processes import WorkerProcess
from vidmem.settings import Settings
from workers.app import create_celery
from workers.dispatch import enqueue_question
from workers.ingest_manager import IngestManager
from workers.runtime import Runtime

DEFAULT_QUESTIONS = ["What is in view now?"]
INGEST_TIMEOUT_S = 90.0
ANSWER_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class DemoQuestion:
    text: str
    expected: str | None = None


def run_demo(settings: Settings, *, source: str | None, questions: list[str], seconds: float, seed: int) -> int:
    """Run the demo; returns the exit code (0 when every question was answered)."""
    console = Console()
    started = time.perf_counter()
    asked = [DemoQuestion(q) for q in questions]
    words = answers_in_words(settings.model)
    if source is None:
        source, generated = make_clip(settings.data_dir / "demo", seconds=seconds, seed=seed, words=words)
        asked = asked or generated
    asked = asked or [DemoQuestion(q) for q in DEFAULT_QUESTIONS]
    settings = _allow_own_file(settings, source)
    console.print(f"[bold]vidmem demo[/] source={source} model={settings.model} data={settings.data_dir}")

    runtime = Runtime(settings, auto_upgrade=settings.is_embedded_db)
    create_celery(settings)
    worker = WorkerProcess(settings)
    manager = IngestManager(runtime, poll_seconds=0.2)
    with console.status("starting the worker"):
        worker.start()
    try:
        stream_id = _register(runtime, source)
        manager.start()
        with console.status("streaming the video through ingest, encoder and memory"):
            _wait_ingested(runtime, stream_id)
        ids = _ask(runtime, stream_id, asked)
        with console.status("answering through the queue"):
            _wait_answered(runtime, ids)
        ok = _report(console, runtime, stream_id, ids, asked, time.perf_counter() - started)
    finally:
        manager.stop()
        worker.stop()
    return 0 if ok else 1


def make_clip(folder: Path, *, seconds: float, seed: int, words: bool = False) -> tuple[str, list[DemoQuestion]]:
    """A synthetic H.264 clip with known events, and questions about it with their answers (``words``: one
    question of every type the clip supports, answered in words, for a model trained so)."""
    from bench.streamgen import demo_clip

    path, questions = demo_clip(folder, seconds=seconds, seed=seed, words=words)
    return str(path), [DemoQuestion(text, expected) for text, expected in questions]


def answers_in_words(model: str) -> bool:
    """Whether the configured model's folder says it answers in words (vidmem-tiny v2's vidmem.json)."""
    from vlm.loader import read_marker
    from workers.runtime import resolve_model_name

    folder = Path(resolve_model_name(model))
    return folder.is_dir() and read_marker(folder).get("answers") == "words"


def is_correct(answer: str | None, expected: str | None) -> bool:
    """A letter answer starts with the letter; an answer in words is the option's words (case, full stop aside)."""
    if not (answer and expected):
        return False
    given = answer.strip()
    if len(expected) == 1 and expected in "ABCD":
        return given.startswith(expected)
    return given.rstrip(".").lower() == expected.lower()


def _allow_own_file(settings: Settings, source: str) -> Settings:
    """The demo's clip (generated, or named on its command line) is allowed explicitly: its folder, for this run.

    The default settings allow no file sources at all; the demo does not weaken that for ``vidmem serve``.
    """
    if "://" in source or settings.file_dir is not None:
        return settings
    return settings.model_copy(update={"file_dir": Path(source).resolve().parent})


def _register(runtime: Runtime, source: str) -> str:
    from workers.sources import register_stream

    with session_scope(runtime.sessions) as session:  # checked, and credentials encrypted, as POST /streams does
        return register_stream(session, runtime.settings, source=source, name="demo", loop=False).id


def _wait_ingested(runtime: Runtime, stream_id: str) -> None:
    """Until the source has ended and no chunk is left pending."""
    deadline = time.monotonic() + INGEST_TIMEOUT_S
    while time.monotonic() < deadline:
        with session_scope(runtime.sessions) as session:
            stream = repo.get_stream(session, stream_id)
            pending = repo.chunk_counts(session, stream_id=stream_id)["pending"]
            status, reason = stream.status, stream.status_reason
        if status == StreamStatus.failed:
            raise RuntimeError(f"the stream failed: {reason}")
        if status == StreamStatus.ended and pending == 0:
            return
        time.sleep(0.2)
    raise TimeoutError(f"the stream was not ingested within {INGEST_TIMEOUT_S:.0f} s")


def _ask(runtime: Runtime, stream_id: str, asked: list[DemoQuestion]) -> list[str]:
    ids = []
    for question in asked:
        with session_scope(runtime.sessions) as session:
            ids.append(repo.create_question(session, stream_id=stream_id, text=question.text).id)
        enqueue_question(ids[-1])  # after the commit: the worker must find the row
    return ids


def _wait_answered(runtime: Runtime, ids: list[str]) -> None:
    deadline = time.monotonic() + ANSWER_TIMEOUT_S
    while time.monotonic() < deadline:
        with session_scope(runtime.sessions) as session:
            statuses = [repo.get_question(session, qid).status for qid in ids]
        if all(s in (QuestionStatus.done, QuestionStatus.failed) for s in statuses):
            return
        time.sleep(0.2)
    raise TimeoutError(f"questions not answered within {ANSWER_TIMEOUT_S:.0f} s")


def _compact(text: str) -> str:
    """A multiple-choice question on one line: the stem, then its choices."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    choices = [line for line in lines[1:] if len(line) > 2 and line[1] == "."]
    return " ".join([lines[0], *choices]) if lines else text


def _report(
    console: Console, runtime: Runtime, stream_id: str, ids: list[str], asked: list[DemoQuestion], wall_s: float
) -> bool:
    with session_scope(runtime.sessions) as session:
        questions = [repo.get_question(session, qid) for qid in ids]
        chunks = repo.chunk_counts(session, stream_id=stream_id)
        stage_ms = repo.stream_timings(session, stream_id=stream_id)
        encoded, kept = repo.stream_token_totals(session, stream_id=stream_id)
    size = runtime.memory_store.size(stream_id)
    answers = Table(title="answers")
    for column in ("question", "answer", "expected", "memory -> LLM tokens", "answer ms"):
        answers.add_column(column)
    right = 0
    for question, demo_question in zip(questions, asked, strict=True):
        answer_ms = sum(question.timings.values()) if question.timings else 0.0
        expected = demo_question.expected
        correct = is_correct(question.answer, expected)
        right += correct
        answers.add_row(
            escape(_compact(question.text)),
            escape(question.answer) if question.answer else f"[red]{question.status}: {escape(str(question.error))}",
            f"{expected} {'(right)' if correct else '(wrong)'}" if expected else "-",
            f"{question.visual_tokens_before} -> {question.visual_tokens_after}", f"{answer_ms:.0f}",
        )
    console.print(answers)
    graded = sum(1 for q in asked if q.expected)
    if graded:
        console.print(f"{right} of {graded} correct (answers matching the generator's ground truth)")
    figures = Table(title="pipeline")
    figures.add_column("figure")
    figures.add_column("value")
    figures.add_row("chunks (applied/dropped/failed)", f"{chunks['applied']}/{chunks['dropped']}/{chunks['failed']}")
    figures.add_row("visual tokens encoded (before compression)", str(encoded))
    figures.add_row("visual tokens after stage 1", f"{kept} ({runtime.settings.stage1})")
    figures.add_row("memory tokens (budget)", f"{size.tokens if size else 0} ({runtime.settings.memory_budget})")
    figures.add_row("memory bytes", str(size.nbytes if size else 0))
    for stage in ("decode_ms", "encode_ms", "compress_ms"):
        figures.add_row(f"{stage.removesuffix('_ms')} ms (all chunks)", f"{stage_ms.get(stage, 0.0):.0f}")
    for stage in ("select_ms", "prefill_ms", "decode_ms"):
        total = sum(q.timings.get(stage, 0.0) for q in questions)
        figures.add_row(f"answer {stage.removesuffix('_ms')} ms (all questions)", f"{total:.0f}")
    figures.add_row("wall seconds", f"{wall_s:.1f}")
    console.print(figures)
    console.print(f"history: vidmem serve, then GET /streams/{stream_id}/questions")
    return all(q.status == QuestionStatus.done for q in questions)
