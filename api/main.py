"""The FastAPI application, built by ``create_app(runtime)``; routers are only included here."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from api.routes import metrics, questions, streams, webrtc
from store.repo import NotFound
from workers.runtime import Runtime

ROUTERS = [streams.router, questions.router, webrtc.router, metrics.router]


def create_app(runtime: Runtime) -> FastAPI:
    app = FastAPI(
        title="vidmem",
        summary="Ask questions about live video streams.",
        version="0.1.0",
    )
    app.state.runtime = runtime
    for router in ROUTERS:
        app.include_router(router)
    app.add_exception_handler(NotFound, _not_found)

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: the API answers."""
        return {"status": "ok"}

    return app


async def _not_found(_request: Request, exc: Exception) -> JSONResponse:
    return JSONResponse(status_code=404, content={"detail": str(exc)})
