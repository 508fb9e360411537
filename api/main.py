"""The FastAPI application, built by ``create_app(runtime)``; routers are only included here."""

from __future__ import annotations

import gc

from fastapi import Depends, FastAPI

from api.deps import refuse_control_in_path, refuse_unknown_query
from api.errors import error_responses, install_error_handlers
from api.limits import BodyLimit
from api.routes import alerts, metrics, ops, questions, stream_admin, streams, web, webrtc
from workers.runtime import Runtime

COMMON_ERRORS = (413, 422, 503)
ROUTERS = [
    (streams.router, (401, 404, 409)),
    (questions.router, (401, 404, 409)),
    (webrtc.router, (400, 401, 409)),
    (metrics.router, (401,)),
    (alerts.router, (401, 404, 409)),
    (stream_admin.router, (401, 404, 409)),
    (ops.router, ()),
]
"""Each router with the error statuses its routes may answer besides the common ones (documented)."""


def create_app(runtime: Runtime) -> FastAPI:
    settings = runtime.settings
    settings.check_auth_binding()  # the open mode (no keys) only on loopback; the CLI says so before this
    app = FastAPI(
        title="vidmem",
        summary="Ask questions about live video streams.",
        version="0.1.0",
        responses=error_responses(*COMMON_ERRORS),
        dependencies=[Depends(refuse_control_in_path), Depends(refuse_unknown_query)],
        docs_url=None,  # served by api.routes.web from local assets: it works offline
        redoc_url=None,  # ReDoc fetches its vendor's logo from a CDN: not served
    )
    app.state.runtime = runtime
    for router, codes in ROUTERS:
        app.include_router(router, responses=error_responses(*codes))
    install_error_handlers(app)
    web.install(app)  # the page at / and the offline /docs
    app.add_middleware(
        BodyLimit, default=settings.max_body_bytes, by_suffix={"/webrtc": settings.max_sdp_body_bytes}
    )

    @app.get("/health", tags=["health"])
    def health() -> dict[str, str]:
        """Liveness: the API answers."""
        return {"status": "ok"}

    return app


def freeze_startup_heap() -> None:
    """Move every object alive now out of the garbage collector's sight; call once the app is built, in a
    serving process only.

    The API process imports torch and transformers' configs (the compression registry and the model's
    settings): about 300,000 long-lived objects, which every full collection walked, a 170 ms stall
    every few hundred requests (the p99 of a 30 requests/s load). Frozen, they are still freed by
    reference counting; only a cycle among them would stay, and they live as long as the process.
    """
    gc.collect()
    gc.freeze()
