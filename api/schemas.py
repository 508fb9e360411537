"""Request and response bodies of the HTTP API (kept apart from the tables in store/models.py)."""

from __future__ import annotations

import unicodedata
from datetime import datetime
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationInfo, field_validator

LINE_BREAKS = frozenset("\t\n\r")
NAME_MAX_CHARS = 200
"""The length of ``streams.name``; a name made from a long source is cut to it."""
MAX_SKIP = 2**31 - 1
"""The largest ``skip`` any list accepts: far past any real history, and an offset every database takes."""


def _no_control(allowed: frozenset[str]):  # type: ignore[no-untyped-def]
    """A validator refusing lone surrogates and control characters other than ``allowed``.

    Refused rather than stripped: a NUL breaks PostgreSQL text, a lone surrogate any UTF-8
    encoder, other control characters hide in logs and pages. (Pydantic itself refuses lone
    surrogates only in strings with a length constraint.)
    """

    def check(value: str) -> str:
        for position, char in enumerate(value):
            category = unicodedata.category(char)
            if category == "Cs":
                raise ValueError(f"is not unicode text: a lone surrogate (U+{ord(char):04X}) at position {position}")
            if category == "Cc" and char not in allowed:
                raise ValueError(f"contains a control character (U+{ord(char):04X}) at position {position}")
        return value

    return check


PlainText = Annotated[str, AfterValidator(_no_control(frozenset()))]
"""One line of printable text: names and labels."""
LongText = Annotated[str, AfterValidator(_no_control(LINE_BREAKS))]
"""Free text that may span lines (tabs and line breaks allowed, other control characters not)."""
Seconds = Annotated[
    float | None,
    Field(ge=0, allow_inf_nan=False, strict=True, description="stream time in seconds: a finite number >= 0"),
]


class ErrorItem(BaseModel):
    loc: list[str | int] = Field(description="where: 'body', 'query', 'path' or 'header', then the field")
    msg: str
    type: str


class Error(BaseModel):
    """The body of every error response (4xx and 5xx)."""

    detail: str = Field(description="what went wrong, in words; names the field at fault when there is one")
    field: str | None = Field(None, description="the first field at fault, dotted: 'body.window_end', 'query.skip'")
    errors: list[ErrorItem] = Field(default_factory=list, description="every validation failure, for 422")


class StreamCreate(BaseModel):
    source: str = Field(..., min_length=1, max_length=4000, description="rtsp://, http(s)://, file path or URL")
    name: PlainText | None = Field(None, max_length=NAME_MAX_CHARS)
    loop: bool = Field(False, strict=True, description="replay a file source forever, as a live camera would")


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
    count: int = Field(description="streams matching the filter, over all pages")
    skip: int = 0
    limit: int | None = None


class QuestionCreate(BaseModel):
    text: LongText = Field(..., min_length=1, description="the question; at most the configured length")
    window_start: Seconds = Field(None, description="only look at video after this stream time (s)")
    window_end: Seconds = Field(None, description="only look at video before this stream time (s); >= window_start")

    @field_validator("window_end")
    @classmethod
    def _ordered(cls, value: float | None, info: ValidationInfo) -> float | None:
        """An inverted window holds no video: refuse it rather than answer "nothing seen"."""
        start = info.data.get("window_start")
        if value is not None and start is not None and value < start:
            raise ValueError(f"must not be before window_start ({start:g} s)")
        return value


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
