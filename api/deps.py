"""Request dependencies: settings, a database session per request, auth for writes."""

from __future__ import annotations

import unicodedata
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Query, Request, status
from fastapi.exceptions import RequestValidationError
from sqlalchemy.orm import Session

from api.schemas import MAX_SKIP
from store.db import session_scope
from store.models import DEFAULT_TENANT
from store.repo import NotFound
from vidmem.settings import Settings
from workers.runtime import Runtime


def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope(runtime.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]

Skip = Annotated[int, Query(ge=0, le=MAX_SKIP, description="items to pass over, newest first")]
"""Bounded: an offset past 2**63 is a 500 in SQLite and PostgreSQL alike, and no history is that long."""


def refuse_control_in_path(request: Request) -> None:
    """Every route: an id with a control character names nothing (404), and a NUL would fail in PostgreSQL."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and any(unicodedata.category(char) == "Cc" for char in value):
            raise NotFound(f"no {name} {value!r}: ids hold no control characters")


def field_error(loc: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 for a check made outside a schema (settings, path ids), shaped like pydantic's."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


def require_writer(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Writes need ``Authorization: Bearer <VIDMEM_API_TOKEN>`` when a token is configured."""
    if settings.api_token and authorization != f"Bearer {settings.api_token}":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token")


Writer = Depends(require_writer)


def get_tenant(settings: SettingsDep) -> str:
    """The tenant of the request's API key; every route that reads or writes tenant data depends on it.

    Placeholder until API keys land (issue 18): everything belongs to the default tenant.
    """
    return DEFAULT_TENANT


TenantDep = Annotated[str, Depends(get_tenant)]
