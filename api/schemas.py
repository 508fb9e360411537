"""Request and response bodies of the HTTP API (kept apart from the tables in store/models.py)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class StreamCreate(BaseModel):
    source: str = Field(..., min_length=1, max_length=4000, description="rtsp://, http(s)://, file path or URL")
    name: str | None = Field(None, max_length=200)
    loop: bool = Field(False, description="replay a file source forever, as a live camera would")


class StreamPublic(BaseModel):
    id: str
    name: str
    source: str = Field(description="the source URL with any credentials redacted")
    status: str
    status_reason: str | None
    active: bool
    stats: dict[str, Any]
    chunks: dict[str, int] = Field(default_factory=dict, description="chunk counts by status")
    memory_tokens: int | None = None
    memory_bytes: int | None = None
    created_at: datetime
    updated_at: datetime


class StreamsPublic(BaseModel):
    data: list[StreamPublic]
    count: int


class QuestionCreate(BaseModel):
    text: str = Field(..., min_length=1, description="the question; at most the configured length")
    window_start: float | None = Field(None, description="only look at video after this stream time (s)")
    window_end: float | None = Field(None, description="only look at video before this stream time (s)")


class QuestionQueued(BaseModel):
    id: str
    status: str
    stream_id: str


class QuestionPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    stream_id: str
    text: str
    status: str
    answer: str | None
    error: str | None
    window_start: float | None
    window_end: float | None
    visual_tokens_before: int | None
    visual_tokens_after: int | None
    model: str | None
    method: str | None
    timings: dict[str, float]
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None


class QuestionsPublic(BaseModel):
    data: list[QuestionPublic]
    count: int
    skip: int
    limit: int
