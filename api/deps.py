"""Request dependencies: settings, a database session per request, the caller's tenant from its API key."""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Iterator
from typing import Annotated, Any, TypeVar

from fastapi import Depends, HTTPException, Query, Request, status
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from api.schemas import MAX_SKIP
from store import keys
from store.db import session_scope
from store.models import DEFAULT_TENANT
from store.repo import NotFound
from vidmem.settings import Settings
from workers.runtime import Runtime

T = TypeVar("T")


async def get_runtime(request: Request) -> Runtime:
    return request.app.state.runtime


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]


async def get_settings(runtime: RuntimeDep) -> Settings:
    return runtime.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


def get_session(runtime: RuntimeDep) -> Iterator[Session]:
    """One session per request: committed when the route returns, rolled back if it raises."""
    with session_scope(runtime.sessions) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


async def in_session(runtime: Runtime, work: Callable[[Session], T], *, read_only: bool = False) -> T:
    """``work(session)`` in a short session of its own, committed when it returns, in one thread-pool hop;
    ``read_only``: a session outside a transaction (``Runtime.read_sessions``: fewer round trips).

    The routes called hundreds of times a second (ask, history) use this instead of ``SessionDep``
    and a sync body: FastAPI runs a sync generator dependency's enter and exit, a sync route and its
    response's validation each in a thread-pool hop of its own, and under load the hand-offs between
    the event loop and the pool threads cost more CPU than the route's queries. Long waits use it
    too, so that no pooled connection is held while they sleep.
    """

    sessions = runtime.read_sessions if read_only else runtime.sessions

    def run() -> T:
        with session_scope(sessions) as session:
            return work(session)

    return await run_in_threadpool(run)


Skip = Annotated[int, Query(ge=0, le=MAX_SKIP, description="items to pass over, newest first")]
"""Bounded: an offset past 2**63 is a 500 in SQLite and PostgreSQL alike, and no history is that long."""


async def refuse_control_in_path(request: Request) -> None:
    """Every route: an id with a control character names nothing (404), and a NUL would fail in PostgreSQL."""
    for name, value in request.path_params.items():
        if isinstance(value, str) and any(unicodedata.category(char) == "Cc" for char in value):
            raise NotFound(f"no {name} {value!r}: ids hold no control characters")


def field_error(loc: tuple[str, ...], message: str) -> RequestValidationError:
    """A 422 for a check made outside a schema (settings, path ids), shaped like pydantic's."""
    return RequestValidationError([{"loc": loc, "msg": message, "type": "value_error"}])


bearer = HTTPBearer(
    auto_error=False, scheme_name="APIKey",
    description="An API key made by `vidmem keys create --tenant NAME`: `Authorization: Bearer vm_...`",
)
"""Reads the header and documents the scheme in OpenAPI (/docs' Authorize); the check is ``get_tenant``'s."""

UNAUTHORIZED = "missing, wrong or revoked API key"


def _unauthorized() -> HTTPException:
    return HTTPException(status.HTTP_401_UNAUTHORIZED, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})


async def get_credentials(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> HTTPAuthorizationCredentials | None:
    """The request's bearer token, checked for its form only (no database): 401 before the body is looked at
    when it is missing or is no key at all; ``as_tenant`` checks it in the route's own database hop."""
    if runtime.settings.auth != "open" and (credentials is None or keys.parse(credentials.credentials) is None):
        raise _unauthorized()
    return credentials


CredentialsDep = Annotated[HTTPAuthorizationCredentials | None, Depends(get_credentials)]


def check_key(conn: Connection, settings: Settings, credentials: HTTPAuthorizationCredentials | None) -> str:
    """The tenant of the request's API key, read on ``conn``.

    401 with ``WWW-Authenticate: Bearer`` for a missing, malformed, unknown or revoked key, all
    with the same message, so a caller learns nothing about which. In the open mode (loopback
    only, ``VIDMEM_AUTH=open``) no key is asked for and everything is the default tenant's.
    """
    if settings.auth == "open":
        return DEFAULT_TENANT
    caller = keys.authenticate(conn, credentials.credentials) if credentials is not None else None
    if caller is None:
        raise _unauthorized()
    return caller.tenant_id


def get_tenant(
    runtime: RuntimeDep, credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(bearer)],
) -> str:
    """The tenant of the request's API key; every route that reads or writes tenant data depends on it,
    or checks the key itself in its one database hop (``as_tenant``).

    The key is checked on a connection of its own, outside a transaction on PostgreSQL (one round trip),
    committed at once: the occasional ``last_used_at`` write never rides along in a route's long
    session (a server-sent event stream, an export), where on SQLite it would hold the write lock for
    as long as the route runs.
    """
    if runtime.settings.auth == "open":
        return DEFAULT_TENANT
    with runtime.autocommit.begin() as conn:
        return check_key(conn, runtime.settings, credentials)


async def as_tenant(
    runtime: Runtime, credentials: HTTPAuthorizationCredentials | None, work: Callable[[Connection, str], T],
) -> T:
    """The key check, then ``work(connection, tenant)``, in one thread-pool hop on one connection.

    For the routes called hundreds of times a second (ask, history): a request that checked its key
    in ``get_tenant`` made two hops and two checkouts, a fifth of a history page's CPU. The
    connection is ``Runtime.autocommit``'s: on PostgreSQL each statement commits by itself (no BEGIN
    and COMMIT round trips), so ``work`` makes at most one write, or writes that need no atomicity
    together; on SQLite the driver opens a transaction before the first write, committed when
    ``work`` returns, rolled back if it raises.
    """

    def run() -> T:
        with runtime.autocommit.begin() as conn:
            return work(conn, check_key(conn, runtime.settings, credentials))

    return await run_in_threadpool(run)


TenantDep = Annotated[str, Depends(get_tenant)]

KeyRequired = Depends(get_tenant)
"""For routes that need a valid key but not its tenant (``dependencies=[KeyRequired]``)."""


_KNOWN_QUERY: dict[int, set[str]] = {}
"""The query parameter names of each route's dependant, computed at its first request."""


def _query_names(dependant: Any) -> set[str]:
    """The query parameters a route reads, its dependencies' included."""
    names = {param.alias for param in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


async def refuse_unknown_query(request: Request) -> None:
    """Every route: a query parameter it does not take is refused (422 naming it), not silently ignored
    (a misspelt filter would otherwise return everything)."""
    route = request.scope.get("route")
    if route is None:
        return
    known = _KNOWN_QUERY.get(id(route.dependant))
    if known is None:
        known = _KNOWN_QUERY[id(route.dependant)] = _query_names(route.dependant)
    for name in request.query_params:
        if name not in known:
            raise field_error(("query", name), f"is not a parameter of this route (it takes {sorted(known) or 'none'})")
