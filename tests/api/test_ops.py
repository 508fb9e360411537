"""/healthz, /readyz and /metrics (issue 18).

Real parts: the API on SQLite and PostgreSQL, the embedded file broker and a real Redis broker (and
a port where none listens), heartbeat rows as workers write them, the Prometheus text parsed with
``prometheus_client``'s own parser.
"""

from __future__ import annotations

import socket
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from store import repo
from store.db import session_scope
from store.models import ChunkStatus, Question, QuestionStatus, WorkerBeat, utcnow
from tests.api.databases import api_client, client_with_default_key, make_runtime, new_stream, runtime_on_each_database  # noqa: F401 - fixtures
from tests.api_keys import bearer, new_key
from tests.conftest import REDIS_URL
from workers.runtime import Runtime


def beat(runtime: Runtime, worker_id: str = "w1", age_s: float = 0.0) -> None:
    with session_scope(runtime.sessions) as session:
        repo.beat_worker(session, worker_id=worker_id, hostname="host", pid=1, queues="vidmem.chunks")
        session.flush()
        row = session.get(WorkerBeat, worker_id)
        row.beat_at = utcnow() - timedelta(seconds=age_s)


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def samples(text: str) -> dict[tuple[str, tuple], float]:
    """Every sample as {(name, sorted labels): value}, read with prometheus_client's parser."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def test_healthz_answers_without_a_key_or_any_dependency(client):
    client.headers.pop("Authorization")

    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/health").json() == {"status": "ok"}  # the older probe still answers


def test_readyz_when_no_worker_beats_is_503_naming_workers_then_200_once_one_does(client, runtime):
    client.headers.pop("Authorization")  # probes need no key
    beat(runtime, "dead", age_s=runtime.settings.worker_dead_after_s + 5)  # a killed worker's last beat

    waiting = client.get("/readyz")

    assert waiting.status_code == 503, waiting.text
    body = waiting.json()
    assert body["status"] == "not ready" and body["detail"].startswith("workers: no worker heartbeat")
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert not body["checks"]["workers"]["ok"]

    beat(runtime, "w1")
    ready = client.get("/readyz")

    assert ready.status_code == 200, ready.text
    assert ready.json()["status"] == "ready" and ready.json()["checks"]["workers"]["detail"] == "1 live worker(s)"


def test_readyz_when_the_redis_broker_is_down_is_503_naming_the_broker(settings, tmp_path):
    settings.broker_url = f"redis://127.0.0.1:{closed_port()}/0"
    runtime = make_runtime(settings, tmp_path)
    beat(runtime)
    with api_client(runtime) as client:
        response = client.get("/readyz")

    assert response.status_code == 503, response.text
    body = response.json()
    assert body["detail"].startswith("broker: ") and "Connection" in body["detail"]
    assert body["checks"]["workers"]["ok"] and body["checks"]["database"]["ok"]


def test_readyz_and_metrics_when_redis_is_the_broker_read_its_queue_depths(settings, tmp_path, redis_client):
    settings.broker_url = REDIS_URL
    runtime = make_runtime(settings, tmp_path)
    beat(runtime)
    with api_client(runtime) as client:
        stream_id = new_stream(client, runtime)
        for _ in range(2):
            assert client.post(f"/streams/{stream_id}/questions", json={"text": "what?"}).status_code == 202
        ready = client.get("/readyz")
        metrics = samples(client.get("/metrics").text)

    assert ready.status_code == 200 and ready.json()["checks"]["broker"]["detail"].startswith("redis")
    assert metrics[("vidmem_queue_depth", (("queue", "vidmem.questions"),))] == 2
    assert metrics[("vidmem_broker_up", ())] == 1


def test_metrics_when_questions_chunks_and_streams_exist_exposes_every_family_with_help_and_type(client, runtime):
    stream_id = new_stream(client, runtime)
    client.post(f"/streams/{stream_id}/questions", json={"text": "still queued"})  # on the embedded broker
    now = utcnow()
    with session_scope(runtime.sessions) as session:
        for seconds, status in ((0.2, QuestionStatus.done), (3.0, QuestionStatus.done), (100.0, QuestionStatus.failed)):
            question = repo.create_question(session, stream_id=stream_id, text=f"{seconds}")
            question.status, question.created_at = status, now - timedelta(seconds=seconds)
            question.finished_at, question.visual_tokens_before, question.visual_tokens_after = now, 40, 10
        for seq, status, n_in, n_out in ((0, ChunkStatus.applied, 64, 32), (1, ChunkStatus.dropped, None, None),
                                         (2, ChunkStatus.pending, None, None)):
            chunk = repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=seq, t_end=seq + 1,
                                      num_frames=2, blob_key=f"k{seq}")
            chunk.status, chunk.tokens_in, chunk.tokens_out = status, n_in, n_out
        repo.set_stream_stats(session, stream_id=stream_id, stats={"reconnects": 3, "chunks_lost": 0})
        stream = repo.get_stream(session, stream_id)  # as retention leaves it after pruning 5 applied chunks
        stream.stats = {**stream.stats, "chunks_pruned": {"applied": 5}, "tokens_pruned": {"in": 100, "out": 50}}
    beat(runtime)

    response = client.get("/metrics")

    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(response.text)}
    for name in ("vidmem_question_latency_seconds", "vidmem_queue_depth", "vidmem_chunk_outcomes",
                 "vidmem_stage1_tokens", "vidmem_question_tokens", "vidmem_reconnects", "vidmem_alert_deliveries",
                 "vidmem_streams", "vidmem_workers_live", "vidmem_stream_up", "vidmem_memory_tokens"):
        assert name in families and families[name].documentation, name
        exposed = f"{name}_total" if families[name].type == "counter" else name  # the text names counters so
        assert f"# TYPE {exposed} {families[name].type}" in response.text and f"# HELP {exposed} " in response.text
    assert families["vidmem_question_latency_seconds"].type == "histogram"
    assert families["vidmem_chunk_outcomes"].type == "counter"
    got = samples(response.text)
    done, failed = (("status", "done"),), (("status", "failed"),)
    assert got[("vidmem_question_latency_seconds_bucket", (("le", "0.25"), *done))] == 1
    assert got[("vidmem_question_latency_seconds_bucket", (("le", "0.1"), *done))] == 0
    assert got[("vidmem_question_latency_seconds_bucket", (("le", "5.0"), *done))] == 2
    assert got[("vidmem_question_latency_seconds_bucket", (("le", "+Inf"), *done))] == 2
    assert got[("vidmem_question_latency_seconds_sum", done)] == pytest.approx(3.2, abs=0.01)
    assert got[("vidmem_question_latency_seconds_bucket", (("le", "60.0"), *failed))] == 0
    assert got[("vidmem_question_latency_seconds_count", failed)] == 1
    assert got[("vidmem_queue_depth", (("queue", "vidmem.questions"),))] == 1
    assert got[("vidmem_chunk_outcomes_total", (("outcome", "applied"),))] == 6  # 1 row + 5 pruned
    assert got[("vidmem_chunk_outcomes_total", (("outcome", "dropped"),))] == 1
    assert got[("vidmem_chunks_pending", ())] == 1
    assert got[("vidmem_stage1_tokens_total", (("kind", "encoded"),))] == 164
    assert got[("vidmem_stage1_tokens_total", (("kind", "kept"),))] == 82
    assert got[("vidmem_question_tokens_total", (("kind", "memory"),))] == 120
    assert got[("vidmem_question_tokens_total", (("kind", "llm"),))] == 30
    assert got[("vidmem_reconnects", ())] == 3
    assert got[("vidmem_alert_deliveries_total", (("outcome", "delivered"),))] == 0
    assert got[("vidmem_streams", (("status", "connecting"),))] == 1
    assert got[("vidmem_workers_live", ())] == 1
    assert got[("vidmem_ingest_reconnects", (("stream", stream_id),))] == 3


def test_metrics_counts_only_the_keys_tenant_and_caps_per_stream_series(client, runtime):
    runtime.settings.metrics_max_streams = 1
    ids = [new_stream(client, runtime, f"clip{i}.mp4") for i in range(2)]
    other = TestClient(client.app, headers=bearer(new_key(runtime.sessions, "tenant-b")))
    theirs = new_stream(other, runtime, "theirs.mp4")
    with session_scope(runtime.sessions) as session:
        question = repo.create_question(session, stream_id=theirs, text="b's")
        question.status, question.finished_at = QuestionStatus.done, utcnow()

    got = samples(client.get("/metrics").text)

    assert got[("vidmem_streams", (("status", "connecting"),))] == 2
    assert [labels for name, labels in got if name == "vidmem_stream_up"] == [
        (("status", "connecting"), ("stream", ids[1]))]  # the newest only
    assert not any(name.startswith("vidmem_question_latency") and value for (name, _), value in got.items()
                   if name.endswith("_count"))
    with session_scope(runtime.sessions) as session:
        assert session.get(Question, question.id).tenant_id == "tenant-b"
    client.headers.pop("Authorization")
    assert client.get("/metrics").status_code == 401
