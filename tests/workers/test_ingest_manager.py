"""The ingest manager's lifecycle: shutdown keeps streams active, a restart resumes them, stops settle.

Real parts: SQLite store, the embedded file queue (no worker: chunks stay pending), PyAV decoding a
real H.264 file, the API through its test client.
"""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.main import create_app
from ingest.entities import StreamStatus
from store.db import session_scope
from store.models import ChunkRecord
from tests.api_keys import authorise
from workers.app import create_celery
from workers.ingest_manager import SHUTDOWN_REASON, IngestManager
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(120)


@pytest.fixture
def runtime(settings):  # type: ignore[no-untyped-def]
    settings.ensure_dirs()
    create_celery(settings)
    return Runtime(settings, auto_upgrade=True)


@pytest.fixture
def client(runtime):  # type: ignore[no-untyped-def]
    with TestClient(create_app(runtime)) as test_client:
        authorise(test_client, runtime)
        yield test_client


@pytest.fixture
def looping_video(tmp_path, make_h264):  # type: ignore[no-untyped-def]
    return make_h264(tmp_path / "clip.mp4", seconds=2.0, fps=10)


def wait_for(predicate, timeout: float = 60.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def max_seq(runtime: Runtime, stream_id: str) -> int | None:
    with session_scope(runtime.sessions) as session:
        return session.execute(select(func.max(ChunkRecord.seq)).where(ChunkRecord.stream_id == stream_id)).scalar()


def test_sync_when_stream_deleted_before_its_ingest_started_settles_it_stopped(client, runtime, looping_video):
    stream_id = client.post("/streams", json={"source": str(looping_video), "loop": True}).json()["id"]
    client.post(f"/streams/{stream_id}/stop")  # before any sync: the manager never ran this stream
    manager = IngestManager(runtime)

    manager.sync()

    body = client.get(f"/streams/{stream_id}").json()
    assert body["status"] == "stopped" and body["active"] is False, body
    assert body["status_reason"] == "stopped by request"
    assert manager.is_idle(stream_id) and max_seq(runtime, stream_id) is None  # never started, nothing stored


def test_stop_when_service_shuts_down_keeps_stream_active_and_next_manager_resumes_after_stored_seq(
    client, runtime, looping_video,
):
    stream_id = client.post("/streams", json={"source": str(looping_video), "loop": True}).json()["id"]
    first = IngestManager(runtime, poll_seconds=0.1)
    first.start()
    try:
        wait_for(lambda: (max_seq(runtime, stream_id) or 0) >= 1)
    finally:
        first.stop()
    before = max_seq(runtime, stream_id)
    stopped = client.get(f"/streams/{stream_id}").json()
    assert stopped["active"] is True and stopped["status"] == "stopped", stopped
    assert stopped["status_reason"] == SHUTDOWN_REASON

    second = IngestManager(runtime, poll_seconds=0.1)
    second.start()
    try:
        wait_for(lambda: client.get(f"/streams/{stream_id}").json()["status"] == "live")
        wait_for(lambda: max_seq(runtime, stream_id) > before)
    finally:
        second.stop()

    with session_scope(runtime.sessions) as session:
        seqs = session.execute(select(ChunkRecord.seq).where(ChunkRecord.stream_id == stream_id)).scalars().all()
    assert max(seqs) > before and sorted(seqs) == list(range(len(seqs)))  # continued after the stored seq


def test_start_when_stream_was_stopped_by_request_is_not_resumed_until_started(client, runtime, looping_video):
    stream_id = client.post("/streams", json={"source": str(looping_video), "loop": True}).json()["id"]
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    try:
        wait_for(lambda: client.get(f"/streams/{stream_id}").json()["status"] == "live")
        stop = client.post(f"/streams/{stream_id}/stop")
        wait_for(lambda: manager.is_idle(stream_id))
        time.sleep(0.5)  # several syncs: an explicit stop is not resumed
        assert client.get(f"/streams/{stream_id}").json()["status"] == "stopped"

        start = client.post(f"/streams/{stream_id}/start")
        wait_for(lambda: client.get(f"/streams/{stream_id}").json()["status"] == "live")
    finally:
        manager.stop()

    assert stop.status_code == 200 and stop.json()["active"] is False
    assert start.status_code == 200 and start.json()["active"] is True
    assert start.json()["status"] == "connecting" and start.json()["status_reason"] == "start requested"


def test_status_when_old_ingest_reports_after_restart_does_not_overwrite_new_one(client, runtime, looping_video):
    stream_id = client.post("/streams", json={"source": str(looping_video), "loop": True}).json()["id"]
    manager = IngestManager(runtime)
    manager.sync()
    old = manager._running[stream_id].ingest
    try:
        client.post(f"/streams/{stream_id}/stop")
        manager.sync()  # lets go of the old ingest and marks the stream stopped
        assert old.join(10)
        client.post(f"/streams/{stream_id}/start")
        manager.sync()
        wait_for(lambda: client.get(f"/streams/{stream_id}").json()["status"] == "live")
        # the old ingest's final event, delivered late (its thread may lag behind a quick restart)
        old.on_status(old.delivery.event(StreamStatus.STOPPED, "stopped by request"))
        body = client.get(f"/streams/{stream_id}").json()
        new = manager._running[stream_id].ingest
    finally:
        manager.stop()

    assert new is not old and body["status"] == "live" and body["active"] is True, body
