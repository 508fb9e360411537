"""One error shape for every failure the API answers (``api.schemas.Error``, ``detail`` first).

Whoever raised it (a route, request validation, the body limit, a missing row, a busy database)
the caller gets the documented body, and a 5xx only for a real bug.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy.exc import OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from starlette.exceptions import HTTPException

from api.schemas import Error, ErrorItem
from store.repo import NotFound

log = logging.getLogger(__name__)

RETRY_AFTER_S = 1
"""What a 503 asks the caller to wait: the API's pool wait is short, so a retry soon is cheap."""

FASTAPI_BODY_UNREADABLE = "There was an error parsing the body"
"""FastAPI's 400 for a body json.loads cannot even decode (bytes that are not UTF-8, too deep)."""

DESCRIPTIONS = {
    400: "malformed request (a WebRTC offer that is not valid SDP)",
    401: "missing, wrong or revoked API key (`Authorization: Bearer vm_...`)",
    404: "no such stream or question",
    409: "the request conflicts with the stream's state, or the deployment holds its maximum of streams",
    413: "request body over the configured limit",
    422: "a field is invalid; `field` and `errors` name it",
    503: "the database is busy or ingest is not ready: retry after `Retry-After` seconds",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` entries for ``codes``, all with the one error schema."""
    return {code: {"model": Error, "description": DESCRIPTIONS[code]} for code in codes}


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(NotFound, _not_found)
    app.add_exception_handler(PoolTimeout, _database_busy)
    app.add_exception_handler(OperationalError, _database_busy)


class ErrorResponse(JSONResponse):
    """JSON with non-ASCII escaped, so no text a caller sent can make the error itself fail to encode."""

    def render(self, content: Any) -> bytes:
        return json.dumps(content, ensure_ascii=True, allow_nan=False, separators=(",", ":")).encode("ascii")


def error_response(
    status_code: int, detail: str, *, errors: list[ErrorItem] | None = None, headers: dict[str, str] | None = None,
) -> ErrorResponse:
    field = _dotted(errors[0].loc) if errors else None
    body = Error(detail=detail, field=field, errors=errors or [])
    return ErrorResponse(body.model_dump(mode="json"), status_code=status_code, headers=headers)


def _dotted(loc: list[str | int]) -> str:
    return ".".join(str(part) for part in loc)


async def _http_error(request: Request, exc: Exception) -> ErrorResponse:
    assert isinstance(exc, HTTPException)
    detail = exc.detail if isinstance(exc.detail, str) else str(exc.detail)
    if exc.status_code == 400 and detail == FASTAPI_BODY_UNREADABLE:
        # not UTF-8, or nested too deep to parse: as much a bad body as invalid JSON, which is 422
        cause = type(exc.__cause__).__name__ if exc.__cause__ else "unreadable"
        error = ErrorItem(loc=["body"], msg=f"the body is not readable JSON ({cause})", type="json_invalid")
        return error_response(422, f"body: {error.msg}", errors=[error])
    headers = exc.headers
    if exc.status_code == 405:
        headers = {**(headers or {}), "Allow": ", ".join(_allowed_methods(request))}
    return error_response(exc.status_code, detail, headers=headers)


def _allowed_methods(request: Request) -> list[str]:
    """Every method some route takes at this path (Starlette names only those of the first route)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        pattern = getattr(route, "path_regex", None)
        if pattern is not None and pattern.match(request.scope["path"]):
            methods.update(getattr(route, "methods", None) or ())
    return sorted(methods)


async def _invalid(_request: Request, exc: Exception) -> ErrorResponse:
    """422 naming every field at fault; the offending input is not echoed back."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        ErrorItem(loc=list(error.get("loc", ())), msg=_message(error), type=str(error.get("type", "invalid")))
        for error in exc.errors()
    ]
    detail = "; ".join(f"{_dotted(item.loc)}: {item.msg}" for item in errors) or "invalid request"
    return error_response(422, detail, errors=errors)


def _message(error: dict[str, Any]) -> str:
    """Pydantic's message, without its 'Value error, ' prefix; JSON errors say where parsing failed."""
    message = str(error.get("msg", "invalid"))
    if error.get("type") == "json_invalid" and "error" in error.get("ctx", {}):
        message = f"{message}: {error['ctx']['error']}"
    return message.removeprefix("Value error, ")


async def _not_found(_request: Request, exc: Exception) -> ErrorResponse:
    return error_response(404, str(exc))


async def _database_busy(_request: Request, exc: Exception) -> ErrorResponse:
    """Pool exhausted or database locked: answer 503 at once instead of holding the caller for minutes."""
    cause = getattr(exc, "orig", None) or exc  # the driver's message, without SQL text or parameters
    log.warning("database busy, answered 503: %s: %s", type(exc).__name__, (str(cause).splitlines() or [""])[0][:200])
    return error_response(
        503, "the database is busy or unavailable; retry shortly", headers={"Retry-After": str(RETRY_AFTER_S)}
    )
