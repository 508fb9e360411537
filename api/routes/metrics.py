"""/metrics: Prometheus text exposition of streams, chunks and questions."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import PlainTextResponse

from api.deps import RuntimeDep, SessionDep
from store import repo

router = APIRouter(tags=["metrics"])

INGEST_COUNTERS = (
    "frames_read", "frames_decoded", "frames_skipped", "frames_sampled", "frames_dropped",
    "chunks_emitted", "chunks_dropped", "reconnects", "gap_count", "gap_seconds", "lag_seconds",
    "decode_cpu_seconds",
)


def _line(name: str, labels: dict[str, str], value: float) -> str:
    text = ",".join(f'{key}="{val}"' for key, val in labels.items())
    return f"vidmem_{name}{{{text}}} {value}"


@router.get("/metrics", response_class=PlainTextResponse)
def metrics(session: SessionDep, runtime: RuntimeDep) -> str:
    """Per-stream ingest counters, chunk counts and memory size; questions by status."""
    lines: list[str] = []
    for stream in repo.list_streams(session):
        labels = {"stream": stream.id}
        lines.append(_line("stream_up", {**labels, "status": stream.status}, 1))
        for counter in INGEST_COUNTERS:
            value = (stream.stats or {}).get(counter)
            if isinstance(value, int | float):
                lines.append(_line(f"ingest_{counter}", labels, value))
        for status, count in repo.chunk_counts(session, stream_id=stream.id).items():
            lines.append(_line("chunks", {**labels, "status": status}, count))
        size = runtime.memory_store.size(stream.id)
        lines.append(_line("memory_tokens", labels, size.tokens if size else 0))
        lines.append(_line("memory_bytes", labels, size.nbytes if size else 0))
    for (stream_id, status), count in sorted(repo.question_counts(session).items()):
        lines.append(_line("questions", {"stream": stream_id, "status": status}, count))
    return "\n".join(lines) + "\n"
