"""The Prometheus collector behind ``/metrics``: every value read from the database and broker at scrape time.

Nothing is counted inside the API process, so a scrape gives the same figures whichever process
answers it and however ingest and workers are laid out (``vidmem serve`` or separate hosts). Series
about streams, chunks, questions and alerts are the scraping key's tenant's; queue depths and live
workers are the deployment's (they hold no tenant data). Per-stream series stop at
``metrics_max_streams`` streams (the newest), so a scrape stays small however many streams exist.

Counters (``_total``) count rows that are never deleted, plus for chunk rows the tallies that
retention keeps when it prunes them (``stats.chunks_pruned``, ``stats.tokens_pruned``); a deleted
stream takes its counts with it.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from store import repo
from store.models import AlertDelivery, AlertEvent, ChunkRecord, ChunkStatus, Question, QuestionStatus, Stream
from workers import ops
from workers.runtime import Runtime

LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0)
"""Seconds from a question's POST to its answer: sub-second for a cached small model, minutes for a busy GPU."""
INGEST_GAUGES = (
    "frames_read", "frames_decoded", "frames_skipped", "frames_sampled", "frames_dropped",
    "chunks_emitted", "chunks_dropped", "reconnects", "gap_count", "gap_seconds", "lag_seconds",
    "decode_cpu_seconds", "chunks_lost",
)
"""Ingest counters copied to each stream's stats; gauges, since they start again with each ingest."""
FINISHED = (QuestionStatus.done, QuestionStatus.failed)


class VidmemCollector:
    """One scrape's worth of metric families for ``tenant`` (built per request; holds its session)."""

    def __init__(self, runtime: Runtime, session: Session, tenant: str) -> None:
        self.runtime, self.session, self.tenant = runtime, session, tenant

    def collect(self) -> Iterator[Metric]:
        streams = repo.list_streams(self.session, tenant_id=self.tenant)
        yield self._streams_by_status(streams)
        yield self._latency()
        yield from self._queues()
        yield from self._chunks(streams)
        yield from self._tokens(streams)
        yield self._reconnects(streams)
        yield self._alert_deliveries()
        yield GaugeMetricFamily("vidmem_workers_live", "worker processes with a fresh heartbeat",
                                value=ops.live_workers(self.runtime))
        yield from self._per_stream([s for s in streams if s.deleted_at is None])

    def _streams_by_status(self, streams: list[Stream]) -> Metric:
        family = GaugeMetricFamily("vidmem_streams", "streams by status (deleted ones left out)", labels=["status"])
        counts: dict[str, int] = {}
        for stream in streams:
            if stream.deleted_at is None:
                counts[stream.status] = counts.get(stream.status, 0) + 1
        for status, n in sorted(counts.items()):
            family.add_metric([status], n)
        return family

    def _latency(self) -> Metric:
        family = HistogramMetricFamily(
            "vidmem_question_latency_seconds", "seconds from a question's POST to its answer (or failure)",
            labels=["status"], unit="",
        )
        seconds = _seconds_between(self.session, Question.created_at, Question.finished_at)
        columns = [func.coalesce(func.sum(case((seconds <= bound, 1), else_=0)), 0) for bound in LATENCY_BUCKETS]
        query = (select(Question.status, func.count(), func.coalesce(func.sum(seconds), 0.0), *columns)
                 .where(Question.tenant_id == self.tenant, Question.status.in_(FINISHED),
                        Question.finished_at.is_not(None))
                 .group_by(Question.status))
        for status, count, total, *cumulative in self.session.execute(query):
            buckets = [(repr(b), int(n)) for b, n in zip(LATENCY_BUCKETS, cumulative, strict=True)]
            family.add_metric([status], buckets + [("+Inf", int(count))], float(total))
        return family

    def _queues(self) -> Iterator[Metric]:
        up = GaugeMetricFamily("vidmem_broker_up", "1 when the broker answered this scrape")
        depth = GaugeMetricFamily("vidmem_queue_depth", "messages waiting on each queue", labels=["queue"])
        try:
            depths = ops.queue_depths(self.runtime.settings)
        except ops.BrokerDown:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        for queue, n in depths.items():
            depth.add_metric([queue], n)
        yield up
        yield depth

    def _chunks(self, streams: list[Stream]) -> Iterator[Metric]:
        rows = self._chunk_rows_by_status()
        outcomes = CounterMetricFamily("vidmem_chunk_outcomes", "chunks by outcome (pruned rows included)",
                                       labels=["outcome"])
        for status in (ChunkStatus.applied, ChunkStatus.dropped, ChunkStatus.failed):
            pruned = sum(int(_pruned(s, "chunks_pruned").get(status, 0)) for s in streams)
            outcomes.add_metric([status.value], rows.get(status, 0) + pruned)
        yield outcomes
        yield GaugeMetricFamily("vidmem_chunks_pending", "chunks stored and waiting for a worker",
                                value=rows.get(ChunkStatus.pending, 0))

    def _chunk_rows_by_status(self) -> dict[str, int]:
        query = (select(ChunkRecord.status, func.count()).join(Stream, Stream.id == ChunkRecord.stream_id)
                 .where(Stream.tenant_id == self.tenant).group_by(ChunkRecord.status))
        return {str(status): int(n) for status, n in self.session.execute(query)}

    def _tokens(self, streams: list[Stream]) -> Iterator[Metric]:
        sums = select(func.coalesce(func.sum(ChunkRecord.tokens_in), 0),
                      func.coalesce(func.sum(ChunkRecord.tokens_out), 0))
        encoded, kept = self.session.execute(
            sums.join(Stream, Stream.id == ChunkRecord.stream_id).where(Stream.tenant_id == self.tenant)
        ).one()
        pruned_in = sum(int(_pruned(s, "tokens_pruned").get("in", 0)) for s in streams)
        pruned_out = sum(int(_pruned(s, "tokens_pruned").get("out", 0)) for s in streams)
        stage1 = CounterMetricFamily(
            "vidmem_stage1_tokens", "visual tokens of applied chunks: 'encoded' by the vision tower, 'kept' by stage-1 "
            "compression", labels=["kind"],
        )
        stage1.add_metric(["encoded"], int(encoded) + pruned_in)
        stage1.add_metric(["kept"], int(kept) + pruned_out)
        yield stage1
        memory, llm = self.session.execute(
            select(func.coalesce(func.sum(Question.visual_tokens_before), 0),
                   func.coalesce(func.sum(Question.visual_tokens_after), 0)).where(Question.tenant_id == self.tenant)
        ).one()
        stage2 = CounterMetricFamily(
            "vidmem_question_tokens", "visual tokens per answered question: 'memory' in its window, 'llm' given to the "
            "LLM after stage-2 selection", labels=["kind"],
        )
        stage2.add_metric(["memory"], int(memory))
        stage2.add_metric(["llm"], int(llm))
        yield stage2

    def _reconnects(self, streams: list[Stream]) -> Metric:
        total = sum(float((s.stats or {}).get("reconnects") or 0) for s in streams if s.deleted_at is None)
        return GaugeMetricFamily("vidmem_reconnects", "reconnects of the streams' sources since each ingest started",
                                 value=total)

    def _alert_deliveries(self) -> Metric:
        family = CounterMetricFamily(
            "vidmem_alert_deliveries", "webhook delivery attempts of alert events: 'delivered', 'retrying' (failed, a "
            "retry is due) or 'failed' (no retry left)", labels=["outcome"],
        )
        outcome = case((AlertDelivery.delivered_at.is_not(None), "delivered"),
                       (AlertDelivery.next_retry_at.is_not(None), "retrying"), else_="failed")
        query = (select(outcome, func.count()).join(AlertEvent, AlertEvent.id == AlertDelivery.event_id)
                 .where(AlertEvent.tenant_id == self.tenant).group_by(outcome))
        counts = {str(name): int(n) for name, n in self.session.execute(query)}
        for name in ("delivered", "retrying", "failed"):
            family.add_metric([name], counts.get(name, 0))
        return family

    def _per_stream(self, streams: list[Stream]) -> Iterator[Metric]:
        newest = streams[: self.runtime.settings.metrics_max_streams]
        up = GaugeMetricFamily("vidmem_stream_up", "1 for each listed stream, with its status",
                               labels=["stream", "status"])
        ingest = {name: GaugeMetricFamily(f"vidmem_ingest_{name}", f"ingest's {name.replace('_', ' ')} (since it "
                                          "started)", labels=["stream"]) for name in INGEST_GAUGES}
        chunks = GaugeMetricFamily("vidmem_chunks", "a stream's chunk rows by status", labels=["stream", "status"])
        tokens = GaugeMetricFamily("vidmem_memory_tokens", "visual tokens in a stream's memory", labels=["stream"])
        nbytes = GaugeMetricFamily("vidmem_memory_bytes", "bytes of a stream's stored memory", labels=["stream"])
        questions = GaugeMetricFamily("vidmem_questions", "a stream's questions by status", labels=["stream", "status"])
        for stream in newest:
            up.add_metric([stream.id, stream.status], 1)
            for name, family in ingest.items():
                value = (stream.stats or {}).get(name)
                if isinstance(value, int | float) and not isinstance(value, bool):
                    family.add_metric([stream.id], value)
            for status, n in repo.chunk_counts(self.session, stream_id=stream.id).items():
                chunks.add_metric([stream.id, status], n)
            size = self.runtime.memory_store.size(stream.id)
            tokens.add_metric([stream.id], size.tokens if size else 0)
            nbytes.add_metric([stream.id], size.nbytes if size else 0)
        counts = repo.question_counts(self.session, stream_ids=[s.id for s in newest])
        for (stream_id, status), n in sorted(counts.items()):
            questions.add_metric([stream_id, status], n)
        yield from (up, *ingest.values(), chunks, tokens, nbytes, questions)


def _pruned(stream: Stream, key: str) -> dict[str, Any]:
    value = (stream.stats or {}).get(key)
    return value if isinstance(value, dict) else {}


def _seconds_between(session: Session, start: Any, end: Any) -> Any:
    """``end - start`` in seconds as a SQL expression of the session's database."""
    if session.get_bind().dialect.name == "postgresql":
        return func.extract("epoch", end - start)
    return (func.julianday(end) - func.julianday(start)) * 86400.0
