"""/metrics: Prometheus exposition (``prometheus_client``) of streams, chunks, questions, queues and alerts.

The figures come from :class:`api.metrics_collector.VidmemCollector`, read from the database and the
broker at scrape time, so they are right in every process layout.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from api.deps import RuntimeDep, SessionDep, TenantDep
from api.metrics_collector import VidmemCollector

router = APIRouter(tags=["metrics"])

PROMETHEUS_TEXT = {
    "description": "Prometheus text exposition (format 0.0.4)",
    "content": {"text/plain": {"schema": {"type": "string"}}},
}


# response_class=Response, not PlainTextResponse: that would document the JSON errors as text too
@router.get("/metrics", response_class=Response, responses={200: PROMETHEUS_TEXT})
def metrics(session: SessionDep, runtime: RuntimeDep, tenant: TenantDep) -> Response:
    """Question latency histogram, queue depths, chunks by outcome, tokens before and after compression,
    reconnects, alert deliveries, streams by status, live workers; per-stream series for the newest
    ``VIDMEM_METRICS_MAX_STREAMS`` streams. Series about streams and questions are the key's tenant's.
    """
    registry = CollectorRegistry(auto_describe=False)
    registry.register(VidmemCollector(runtime, session, tenant))
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
