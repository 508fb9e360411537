"""A stream's own settings over the deployment's: sampling, chunking, both compression stages, budgets.

``streams.settings`` (JSON) holds only the keys a caller set; a missing key is the deployment
default from :class:`vidmem.settings.Settings`, read at use, so a changed default reaches every
stream that did not choose its own. Everything that runs a stream reads the effective values
through :func:`effective`: the ingest manager (``sample_fps``, ``chunk_seconds``), the worker per
chunk (``stage1``, ``memory_budget``) and per question (``stage2``, ``llm_budget``).

Changing a setting of a stream that already has a memory (``PATCH /streams/{id}``):

- ``sample_fps``, ``chunk_seconds``: the ingest manager restarts the stream's ingest with them
  within a poll period; chunks continue after the stored ones (seq and time).
- ``stage1``: applies to chunks applied from then on; tokens already in memory stay as they were
  compressed. The stage-1 method's running state (previous frames, segments) starts afresh,
  since it belongs to the old method.
- ``memory_budget``: applies at the next applied chunk, whose consolidation brings the memory
  to the new budget (a smaller budget merges and evicts then; a larger one keeps more from then
  on). A stream that receives no more chunks keeps its memory as it is.
- ``stage2``, ``llm_budget``: the next question.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from compression.pipeline import PipelineSpec
from compression.registry import build_method, parse_spec
from store.db import session_scope
from store.models import Stream
from vidmem.settings import Settings

if TYPE_CHECKING:
    from compression.pipeline import Pipeline
    from workers.runtime import Runtime

FIELDS = ("sample_fps", "chunk_seconds", "stage1", "stage2", "memory_budget", "llm_budget")
SPEC_STAGES = {"stage1": 1, "stage2": 2}


@dataclass(frozen=True)
class StreamSettings:
    """The values a stream runs with: its own where set, the deployment's otherwise."""

    sample_fps: float
    chunk_seconds: float
    stage1: str
    stage2: str
    memory_budget: int
    llm_budget: int

    @property
    def pipeline_spec(self) -> PipelineSpec:
        return PipelineSpec(self.stage1, self.memory_budget, self.stage2, self.llm_budget)

    @property
    def wants_motion(self) -> bool:
        """Motion-based merging needs the codec's motion vectors from ingest (as ``Settings.wants_motion``)."""
        return "target=motion" in self.stage1.replace(" ", "")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def effective(settings: Settings, stored: Mapping[str, Any] | None) -> StreamSettings:
    """``stored`` (a stream's ``settings`` column) over the deployment's defaults; unknown keys are ignored."""
    values = {name: getattr(settings, name) for name in FIELDS}
    values.update({k: v for k, v in (stored or {}).items() if k in FIELDS and v is not None})
    return StreamSettings(**values)


def merged(stored: Mapping[str, Any] | None, changes: Mapping[str, Any]) -> dict[str, Any] | None:
    """``stored`` with ``changes`` applied: a value sets a key, None returns it to the deployment default."""
    result = {k: v for k, v in (stored or {}).items() if k in FIELDS}
    for key, value in changes.items():
        if value is None:
            result.pop(key, None)
        else:
            result[key] = value
    return result or None


def check_spec(spec: str, stage: int, settings: Settings) -> str:
    """``spec`` (stripped) if it names a stage-``stage`` method with valid parameters; ValueError saying why not.

    The method is built once to run its own checks (ratios, options). Parameters naming files
    (``*_path``: learned weights) belong to the deployment: a stream may only restate one of the
    deployment's own specs with them, so that no API caller makes a worker open a file it chose.
    """
    spec = spec.strip()
    _, values = parse_spec(spec)
    paths = sorted(key for key in values if key.endswith("_path"))
    if paths:
        if spec in (settings.stage1, settings.stage2):
            return spec
        raise ValueError(f"parameter(s) {', '.join(paths)} name files on the workers and are set by the "
                         "deployment (VIDMEM_STAGE1 / VIDMEM_STAGE2), not per stream")
    try:
        build_method(spec, stage=stage)
    except ValueError:
        raise
    except Exception as exc:  # a method's own check may raise another type: still the caller's spec at fault
        raise ValueError(f"{type(exc).__name__}: {exc}") from None
    return spec


def read(session: Session, settings: Settings, stream_id: str) -> StreamSettings:
    """The effective settings of ``stream_id`` (the deployment's if the stream is gone)."""
    stored = session.scalar(select(Stream.settings).where(Stream.id == stream_id))
    return effective(settings, stored)


def pipeline_for(rt: Runtime, stream_id: str) -> Pipeline:
    """The stream's two-stage pipeline, built once per distinct spec in this process (``rt.pipelines``)."""
    with session_scope(rt.sessions) as session:
        spec = read(session, rt.settings, stream_id).pipeline_spec
    return rt.pipelines.get(spec)
