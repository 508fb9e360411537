"""/healthz and /readyz: probes for an orchestrator or a load balancer, open without a key.

``/healthz`` says the API process answers and touches nothing else, so a database outage never
gets the API restarted. ``/readyz`` says whether work can flow: the database answers, the broker
answers, and at least one worker has a fresh heartbeat; 503 names each check that failed.
"""

from __future__ import annotations

from fastapi import APIRouter, status
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from api.deps import RuntimeDep
from workers import ops

router = APIRouter(tags=["health"])


class CheckPublic(BaseModel):
    ok: bool
    detail: str


class Readiness(BaseModel):
    status: str = Field(description="'ready' or 'not ready'")
    detail: str = Field(description="the failed checks, in words; empty when ready")
    checks: dict[str, CheckPublic] = Field(description="database, broker, workers")


@router.get("/healthz")
def healthz() -> dict[str, str]:
    """Liveness: the API process answers (no database, broker or worker involved)."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"model": Readiness, "description": "a check failed (named in detail)"}})
def readyz(runtime: RuntimeDep) -> Readiness:
    """Readiness: database reachable, broker reachable, at least one live worker heartbeat."""
    checks = ops.readiness(runtime)
    failed = [f"{name}: {check.detail}" for name, check in checks.items() if not check.ok]
    body = Readiness(status="not ready" if failed else "ready", detail="; ".join(failed),
                     checks={name: CheckPublic(ok=c.ok, detail=c.detail) for name, c in checks.items()})
    if failed:
        return JSONResponse(body.model_dump(), status_code=status.HTTP_503_SERVICE_UNAVAILABLE)  # type: ignore[return-value]
    return body
