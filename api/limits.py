"""Request body limits, enforced before a body is read whole.

A 200 MB JSON body used to be parsed in full before any field check. Here a declared
``Content-Length`` over the limit is refused before a byte is read, and a body of unknown length
(chunked) is counted as it arrives and refused when it passes the limit. (FastAPI's own
``max_body_size`` answers plain text in the ``Content-Length`` case, not the documented error.)
"""

from __future__ import annotations

from starlette.datastructures import Headers
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.errors import error_response


class BodyTooLarge(HTTPException):
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the {limit} bytes allowed here")


class BodyLimit:
    """ASGI middleware: 413 for bodies over ``default`` bytes, or over ``by_suffix[s]`` on paths ending in s."""

    def __init__(self, app: ASGIApp, *, default: int, by_suffix: dict[str, int] | None = None) -> None:
        self.app = app
        self.default = default
        self.by_suffix = by_suffix or {}

    def limit_for(self, path: str) -> int:
        for suffix, limit in self.by_suffix.items():
            if path.rstrip("/").endswith(suffix):
                return limit
        return self.default

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = Headers(scope=scope).get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _refuse(BodyTooLarge(limit), scope, receive, send)
            return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    raise BodyTooLarge(limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except BodyTooLarge as exc:  # raised where no exception handler saw it
            if started:
                raise
            await _refuse(exc, scope, receive, send)


async def _refuse(exc: BodyTooLarge, scope: Scope, receive: Receive, send: Send) -> None:
    await error_response(exc.status_code, exc.detail)(scope, receive, send)
