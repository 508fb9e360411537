"""/metrics: Prometheus text exposition of streams, chunks and questions."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse, Response
from sqlalchemy.orm import Session

from api.deps import RuntimeDep, SessionDep, SettingsDep
from store import repo
from store.models import Stream
from workers.runtime import Runtime

router = APIRouter(tags=["metrics"])

INGEST_COUNTERS = (
    "frames_read", "frames_decoded", "frames_skipped", "frames_sampled", "frames_dropped",
    "chunks_emitted", "chunks_dropped", "reconnects", "gap_count", "gap_seconds", "lag_seconds",
    "decode_cpu_seconds", "chunks_lost",
)


def _line(name: str, labels: dict[str, str], value: float) -> str:
    text = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"vidmem_{name}{{{text}}} {value}"


PROMETHEUS_TEXT = {
    "description": "Prometheus text exposition", "content": {"text/plain": {"schema": {"type": "string"}}},
}


# response_class=Response, not PlainTextResponse: that would document the JSON errors as text too
@router.get("/metrics", response_class=Response, responses={200: PROMETHEUS_TEXT})
def metrics(session: SessionDep, runtime: RuntimeDep, settings: SettingsDep) -> PlainTextResponse:
    """Streams by status; per-stream counters, chunk counts, memory size and questions for the newest streams.

    Per-stream series stop at ``VIDMEM_METRICS_MAX_STREAMS`` streams so that a scrape stays small
    however many streams a deployment registers; ``vidmem_streams`` still counts them all.
    """
    by_status = sorted(repo.stream_status_counts(session).items())
    lines = [_line("streams", {"status": status}, n) for status, n in by_status]
    streams = repo.list_streams(session, limit=settings.metrics_max_streams)
    for stream in streams:
        lines.extend(_stream_lines(session, runtime, stream))
    counts = repo.question_counts(session, stream_ids=[stream.id for stream in streams])
    for (stream_id, status), count in sorted(counts.items()):
        lines.append(_line("questions", {"stream": stream_id, "status": status}, count))
    return PlainTextResponse("\n".join(lines) + "\n")


def _stream_lines(session: Session, runtime: Runtime, stream: Stream) -> list[str]:
    labels = {"stream": stream.id}
    lines = [_line("stream_up", {**labels, "status": stream.status}, 1)]
    for counter in INGEST_COUNTERS:
        value = (stream.stats or {}).get(counter)
        if isinstance(value, int | float):
            lines.append(_line(f"ingest_{counter}", labels, value))
    for status, count in repo.chunk_counts(session, stream_id=stream.id).items():
        lines.append(_line("chunks", {**labels, "status": status}, count))
    size = runtime.memory_store.size(stream.id)
    lines.append(_line("memory_tokens", labels, size.tokens if size else 0))
    lines.append(_line("memory_bytes", labels, size.nbytes if size else 0))
    return lines
