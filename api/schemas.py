"""Request and response bodies of the HTTP API (kept apart from the tables in store/models.py)."""

from __future__ import annotations

import unicodedata
from datetime import datetime, timedelta
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    computed_field,
    field_validator,
)

from api.windows import iso_time_only, parse_last

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


SPEC_MAX_CHARS = 300
"""The length of ``questions.method`` holds both specs and budgets; one spec stays well under it."""


class StreamSettingsBody(BaseModel):
    """A stream's own settings (``workers.stream_settings``); null or absent: the deployment's default.

    ``stage1`` and ``stage2`` are compression specs (``name:key=value,...``, e.g. ``tome:ratio=0.5``),
    checked against the method registry (422 naming the field when invalid).
    """

    model_config = ConfigDict(extra="forbid")

    sample_fps: float | None = Field(
        None, gt=0, le=30, strict=True, allow_inf_nan=False, description="frames sampled per second of video"
    )
    chunk_seconds: float | None = Field(
        None, gt=0, le=60, strict=True, allow_inf_nan=False, description="seconds of video per chunk"
    )
    stage1: PlainText | None = Field(
        None, min_length=1, max_length=SPEC_MAX_CHARS, description="query-agnostic compression at ingest"
    )
    stage2: PlainText | None = Field(
        None, min_length=1, max_length=SPEC_MAX_CHARS, description="query-aware selection at question time"
    )
    memory_budget: int | None = Field(
        None, ge=1, le=1_000_000, strict=True, description="visual tokens the stream's memory keeps"
    )
    llm_budget: int | None = Field(
        None, ge=1, le=100_000, strict=True, description="visual tokens the LLM sees per question"
    )


class StreamCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: str = Field(..., min_length=1, max_length=4000, description="rtsp://, http(s)://, file path or URL")
    name: PlainText | None = Field(None, max_length=NAME_MAX_CHARS)
    loop: bool = Field(False, strict=True, description="replay a file source forever, as a live camera would")
    settings: StreamSettingsBody | None = Field(None, description="the stream's own settings; absent: defaults")


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
    settings: StreamSettingsBody = Field(
        default_factory=StreamSettingsBody, description="the stream's own settings; null: the deployment default"
    )
    effective_settings: dict[str, Any] = Field(
        default_factory=dict, description="the values the stream runs with: its own, else the deployment's"
    )
    media_epoch: datetime | None = Field(
        None, description="wall-clock time of stream second 0 (set by ingest at each (re)connect); null: no video yet"
    )
    deleted_at: datetime | None = Field(None, description="set when deleted with ?history=keep")
    created_at: datetime
    updated_at: datetime


class StreamsPublic(BaseModel):
    data: list[StreamPublic]
    count: int = Field(description="streams matching the filter, over all pages")
    skip: int = 0
    limit: int | None = None


class QuestionCreate(BaseModel):
    """A question about a stream. The time window is at most one of three forms (none: the whole memory):

    - ``last``: the newest part of the memory, resolved when a worker answers: seconds (``300``) or
      words (``"5 minutes"``, ``"last 5 minutes"``, ``"the last hour"``, ``"2h"``, ``"90s"``, ``"PT5M"``);
    - ``since``/``until``: wall-clock ISO 8601 times with a zone, converted with the stream's media epoch;
    - ``window_start``/``window_end``: stream seconds.
    """

    model_config = ConfigDict(extra="forbid")

    text: LongText = Field(..., min_length=1, description="the question; at most the configured length")
    window_start: Seconds = Field(None, description="only look at video after this stream time (s)")
    window_end: Seconds = Field(None, description="only look at video before this stream time (s); >= window_start")
    last: float | str | None = Field(
        None, description='only the newest part of the memory: seconds, or text such as "5 minutes" or "2h"'
    )
    since: AwareDatetime | None = Field(None, description="only video after this wall-clock time (ISO 8601, zone)")
    until: AwareDatetime | None = Field(None, description="only video before this wall-clock time; >= since")
    stage2: PlainText | None = Field(
        None, min_length=1, max_length=SPEC_MAX_CHARS,
        description="query-aware selection for this question (a spec such as 'adatp'); default: the stream's",
    )
    llm_budget: int | None = Field(
        None, ge=1, le=100_000, strict=True, description="visual tokens the LLM sees; default: the stream's"
    )
    max_answer_tokens: int | None = Field(
        None, ge=1, strict=True, description="the longest answer in tokens; at most the deployment's limit"
    )

    @field_validator("window_end")
    @classmethod
    def _ordered(cls, value: float | None, info: ValidationInfo) -> float | None:
        """An inverted window holds no video: refuse it rather than answer "nothing seen"."""
        start = info.data.get("window_start")
        if value is not None and start is not None and value < start:
            raise ValueError(f"must not be before window_start ({start:g} s)")
        return value

    @field_validator("last", mode="before")
    @classmethod
    def _duration(cls, value: object, info: ValidationInfo) -> float | None:
        if value is None:
            return None
        if isinstance(value, str) and len(value) > 100:
            raise ValueError("is over 100 characters; a duration is short, such as '5 minutes'")
        _one_window_form(info, "last", ("window_start", "window_end"))
        return parse_last(value)

    @field_validator("since", "until", mode="before")
    @classmethod
    def _not_a_number(cls, value: object) -> object:
        return iso_time_only(value)

    @field_validator("since", "until")
    @classmethod
    def _clock(cls, value: datetime | None, info: ValidationInfo) -> datetime | None:
        if value is None:
            return None
        _one_window_form(info, str(info.field_name), ("window_start", "window_end", "last"))
        since = info.data.get("since")
        if info.field_name == "until" and since is not None and value < since:
            raise ValueError(f"must not be before since ({since.isoformat()})")
        return value


def _one_window_form(info: ValidationInfo, field: str, others: tuple[str, ...]) -> None:
    given = [name for name in others if info.data.get(name) is not None]
    if given:
        raise ValueError(f"a question has one time window: {field} cannot go with {' and '.join(given)}")


class QuestionQueued(BaseModel):
    id: str
    status: str
    stream_id: str
    queue_position: int | None = Field(
        None, description="questions queued before this one, deployment-wide, counted up to 1000 (1000: or more)")


class QuestionPublic(BaseModel):
    """A question and everything about its answer: one entry of the history."""

    model_config = ConfigDict(from_attributes=True)

    id: str
    stream_id: str
    text: str
    status: str = Field(description="queued, running, done, failed or cancelled")
    answer: str | None
    error: str | None
    window_start: float | None = Field(description="the window asked for, stream seconds (relative: once resolved)")
    window_end: float | None
    window_last: float | None = Field(None, description="a relative window: the newest this many seconds")
    covered_start: float | None = Field(None, description="stream time the answer actually saw: first second")
    covered_end: float | None = Field(None, description="stream time the answer actually saw: last second")
    media_epoch: datetime | None = Field(None, description="wall-clock time of stream second 0 for this question")
    visual_tokens_before: int | None = Field(description="tokens of the memory inside the window")
    visual_tokens_after: int | None = Field(description="tokens given to the LLM")
    memory_tokens: int | None = Field(None, description="tokens the whole memory held when answered")
    model: str | None
    method: str | None = Field(description="both compression specs and budgets used, as one line")
    specs: dict[str, Any] | None = Field(
        None, description="what the answer used: stage1, memory_budget, stage2, llm_budget, max_answer_tokens"
    )
    stage2: str | None = Field(None, description="the stage-2 override asked for")
    llm_budget: int | None = Field(None, description="the LLM budget override asked for")
    max_answer_tokens: int | None = Field(None, description="the answer length asked for")
    timings: dict[str, float]
    created_at: datetime
    queued_at: datetime | None = None
    started_at: datetime | None
    finished_at: datetime | None
    updated_at: datetime | None = None
    queue_position: int | None = Field(None, description="while queued: questions queued before it (up to 1000)")

    @computed_field(description="seconds from queued to finished")  # type: ignore[prop-decorator]
    @property
    def latency_s(self) -> float | None:
        if self.finished_at is None:
            return None
        return (self.finished_at - (self.queued_at or self.created_at)).total_seconds()

    @computed_field(description="window_start as wall-clock time, when the media epoch is known")  # type: ignore[prop-decorator]
    @property
    def window_since(self) -> datetime | None:
        return _clock(self.media_epoch, self.window_start)

    @computed_field(description="window_end as wall-clock time")  # type: ignore[prop-decorator]
    @property
    def window_until(self) -> datetime | None:
        return _clock(self.media_epoch, self.window_end)

    @computed_field(description="covered_start as wall-clock time")  # type: ignore[prop-decorator]
    @property
    def covered_since(self) -> datetime | None:
        return _clock(self.media_epoch, self.covered_start)

    @computed_field(description="covered_end as wall-clock time")  # type: ignore[prop-decorator]
    @property
    def covered_until(self) -> datetime | None:
        return _clock(self.media_epoch, self.covered_end)


def _clock(epoch: datetime | None, seconds: float | None) -> datetime | None:
    return None if epoch is None or seconds is None else epoch + timedelta(seconds=seconds)


class QuestionsPublic(BaseModel):
    """A page of history, newest first; pass ``next_cursor`` as ``cursor`` for the next one."""

    data: list[QuestionPublic]
    next_cursor: str | None = Field(description="the next page's cursor; null on the last page")
    limit: int


class StreamUpdate(BaseModel):
    """``PATCH /streams/{id}``: fields absent stay; a setting set to null returns to the deployment default."""

    model_config = ConfigDict(extra="forbid")

    name: PlainText | None = Field(None, min_length=1, max_length=NAME_MAX_CHARS)
    settings: StreamSettingsBody | None = None


class StreamDeleted(BaseModel):
    id: str
    history: str = Field(description="'keep': questions stay browsable; 'delete': every row of the stream went")
    questions: int = Field(description="questions kept or deleted")


class MemoryChunk(BaseModel):
    """One applied chunk in the memory timeline."""

    seq: int
    t_start: float
    t_end: float
    tokens_in: int | None = Field(None, description="visual tokens the encoder made of the chunk")
    tokens_out: int | None = Field(None, description="tokens stage 1 kept of it when it was applied")
    tokens_now: int = Field(
        description="tokens in memory now whose latest content is from this chunk (merging moves older content "
        "into later tokens; eviction drops the oldest)"
    )


class MemoryPublic(BaseModel):
    """A stream's memory as it is now: size against budget, the stream time it covers, a timeline."""

    stream_id: str
    budget: int = Field(description="the stream's memory budget (tokens), as set now")
    budget_held: int | None = Field(
        None, description="the budget the memory was last consolidated to; differs from budget until the next chunk"
    )
    tokens: int
    bytes: int
    version: int = Field(description="memory version: one more per applied chunk")
    chunks_applied: int
    tokens_seen: int = Field(description="tokens stage 1 handed to the memory over its life")
    tokens_merged: int
    tokens_evicted: int
    first_seconds: float | None = Field(None, description="earliest stream time the memory holds")
    last_seconds: float | None = Field(None, description="latest stream time the memory holds")
    first_time: datetime | None = Field(None, description="first_seconds as wall-clock time (media_epoch known)")
    last_time: datetime | None = Field(None, description="last_seconds as wall-clock time (media_epoch known)")
    span_seconds: float
    tokens_per_minute: float | None = Field(None, description="tokens per minute of stream time held")
    timeline: list[MemoryChunk] = Field(description="the newest applied chunks still listed, oldest first")
    tokens_before_timeline: int = Field(description="tokens from before the first chunk listed (rows pruned)")
