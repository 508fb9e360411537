"""Request dependencies: settings, a database session per request, auth for writes."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, HTTPException, Request, status
from sqlalchemy.orm import Session

from store.db import session_scope
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


def require_writer(settings: SettingsDep, authorization: Annotated[str | None, Header()] = None) -> None:
    """Writes need ``Authorization: Bearer <VIDMEM_API_TOKEN>`` when a token is configured."""
    if settings.api_token and authorization != f"Bearer {settings.api_token}":
        raise HTTPException(status.HTTP_401_UNAUTHORIZED, "missing or wrong bearer token")


Writer = Depends(require_writer)
