"""Request and response bodies of standing questions (alerts) and their events."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.schemas import LongText, PlainText

MAX_OPTIONS = 10
OPTION_MAX_CHARS = 100
MAX_PERIOD_S = 86_400.0  # a day of stream time: every_s, window_s and cooldown_s stay within it
WEBHOOK_MAX_CHARS = 2000

Option = Annotated[PlainText, Field(min_length=1, max_length=OPTION_MAX_CHARS)]
StreamSeconds = Annotated[float, Field(gt=0, le=MAX_PERIOD_S, allow_inf_nan=False, strict=True)]


def _clean_options(values: list[str]) -> list[str]:
    cleaned = [v.strip() for v in values]
    if any(not v for v in cleaned):
        raise ValueError("options must not be blank")
    folded = [v.casefold() for v in cleaned]
    if len(set(folded)) != len(folded):
        raise ValueError("options must differ (ignoring case)")
    return cleaned


class AlertCreate(BaseModel):
    """A standing question: answered on every chunk (or every ``every_s``) over the last ``window_s``."""

    model_config = ConfigDict(extra="forbid")

    question: LongText = Field(..., min_length=1, description="asked of the recent video; at most the configured "
                               "question length")
    options: list[Option] = Field(
        ["yes", "no"], min_length=2, max_length=MAX_OPTIONS,
        description="the possible answers; the model's likeliest one is the answer (default: yes/no)",
    )
    fire_on: list[Option] = Field(
        ["yes"], min_length=1, max_length=MAX_OPTIONS, description="the alert fires when the answer is one of these"
    )
    every_s: StreamSeconds | None = Field(None, description="evaluate every this many seconds of video; null: "
                                          "every chunk")
    window_s: StreamSeconds = Field(30.0, description="the recent video the question looks at (stream seconds)")
    cooldown_s: float = Field(0.0, ge=0, le=MAX_PERIOD_S, allow_inf_nan=False, strict=True,
                              description="after firing, skip evaluations for this many seconds of video")
    webhook_url: str | None = Field(None, min_length=1, max_length=WEBHOOK_MAX_CHARS,
                                    description="http(s) URL to POST events to, signed (X-Vidmem-Signature)")
    active: bool = Field(True, strict=True, description="false: registered but paused")

    @field_validator("options")
    @classmethod
    def _distinct(cls, value: list[str]) -> list[str]:
        return _clean_options(value)

    @field_validator("fire_on")
    @classmethod
    def _among_options(cls, value: list[str], info: ValidationInfo) -> list[str]:
        """Every entry names an option (case-insensitively) and is stored as the option is written."""
        options = info.data.get("options")
        if options is None:  # the options themselves were refused: that error is the one to read
            return value
        by_fold = {o.casefold(): o for o in options}
        missing = [v for v in value if v.strip().casefold() not in by_fold]
        if missing:
            raise ValueError(f"{missing} not among the options {options}")
        return list(dict.fromkeys(by_fold[v.strip().casefold()] for v in value))


class AlertUpdate(BaseModel):
    """Pause or resume, or change the timing or webhook; fields left out stay as they are."""

    model_config = ConfigDict(extra="forbid")

    active: bool | None = Field(None, strict=True)
    every_s: StreamSeconds | None = Field(None, description="null: every chunk")
    window_s: StreamSeconds | None = None
    cooldown_s: float | None = Field(None, ge=0, le=MAX_PERIOD_S, allow_inf_nan=False, strict=True)
    webhook_url: str | None = Field(None, min_length=1, max_length=WEBHOOK_MAX_CHARS, description="null: none")

    @field_validator("active", "window_s", "cooldown_s")
    @classmethod
    def _not_null(cls, value: object) -> object:
        """Only every_s and webhook_url mean something as null; these must be values when given."""
        if value is None:
            raise ValueError("must not be null")
        return value


class AlertPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    stream_id: str
    question: str
    options: list[str]
    fire_on: list[str]
    every_s: float | None = Field(description="null: every chunk")
    window_s: float
    cooldown_s: float
    webhook_url: str | None = Field(description="with any credentials redacted")
    active: bool
    created_at: datetime
    updated_at: datetime
    last_answered_seq: int | None = Field(description="the chunk of the latest answer")
    last_answer: str | None = Field(description="the latest answer (null: no video in the window)")
    last_answered_at: datetime | None


class AlertCreated(AlertPublic):
    signing_secret: str = Field(description="HMAC-SHA256 key of the webhook signatures; shown only this once")


class AlertsPublic(BaseModel):
    data: list[AlertPublic]
    count: int = Field(description="alerts matching over all pages")
    skip: int
    limit: int


class DeliveryPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    attempt: int
    status_code: int | None = Field(description="the receiver's HTTP status; null when no answer came")
    error: str | None
    attempted_at: datetime
    duration_ms: float | None
    next_retry_at: datetime | None = Field(description="when the next try is due; null: none follows")
    delivered_at: datetime | None


class EventPublic(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    alert_id: str
    stream_id: str
    seq: int = Field(description="the chunk it fired on")
    t_start: float = Field(description="stream seconds")
    t_end: float
    wall_start: datetime | None = Field(description="wall-clock time, when the stream's media time is known")
    wall_end: datetime | None
    answer: str
    scores: dict[str, float] = Field(description="log-likelihood of each option")
    thumbnail_url: str | None = Field(description="a JPEG of the chunk's last frame")
    delivery_status: Literal["none", "pending", "delivered", "failed"]
    deliveries: list[DeliveryPublic]
    created_at: datetime

    @classmethod
    def of(cls, event: Any) -> EventPublic:
        """An ``AlertEvent`` row as the API shows it (deliveries loaded, the thumbnail as a URL, never its bytes)."""
        fields = {name: getattr(event, name) for name in cls.model_fields if name != "thumbnail_url"}
        url = f"/events/{event.id}/thumbnail.jpg" if event.has_thumbnail else None
        return cls.model_validate({**fields, "thumbnail_url": url})


class EventsPage(BaseModel):
    data: list[EventPublic]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null: no more")
