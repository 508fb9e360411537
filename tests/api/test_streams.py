"""/streams: registering sources and reading their status."""

from __future__ import annotations

import socket
import time

from prometheus_client.parser import text_string_to_metric_families

from workers.ingest_manager import IngestManager


def test_create_stream_when_file_exists_returns_201_connecting(client, video_file):
    response = client.post("/streams", json={"source": str(video_file), "name": "door"})

    assert response.status_code == 201
    body = response.json()
    assert body["status"] == "connecting" and body["name"] == "door"
    assert body["chunks"]["pending"] == 0


def test_read_stream_when_unknown_returns_404_with_message(client):
    response = client.get("/streams/doesnotexist")

    assert response.status_code == 404
    assert "doesnotexist" in response.json()["detail"]


def test_create_stream_when_scheme_not_allowed_returns_422_naming_it(client):
    response = client.post("/streams", json={"source": "gopher://cam.local/live"})

    assert response.status_code == 422
    assert "gopher" in response.json()["detail"]


def test_create_stream_when_file_missing_returns_422(client, tmp_path):
    response = client.post("/streams", json={"source": str(tmp_path / "missing.mp4")})

    assert response.status_code == 422
    assert "no such file" in response.json()["detail"]


def test_create_stream_when_files_disabled_returns_422(client, runtime, video_file):
    runtime.settings.allow_files = False

    response = client.post("/streams", json={"source": str(video_file)})

    assert response.status_code == 422
    assert "disabled" in response.json()["detail"]


def test_stream_with_credentials_is_shown_redacted(client):
    response = client.post("/streams", json={"source": "rtsp://admin:hunter2@127.0.0.1:8554/cam"})

    assert response.status_code == 201
    listed = client.get("/streams").text + client.get(f"/streams/{response.json()['id']}").text
    assert "hunter2" not in response.text + listed
    assert response.json()["source"] == "rtsp://***@127.0.0.1:8554/cam"


def test_stop_stream_stops_it_but_keeps_history(client, stream_id):
    response = client.post(f"/streams/{stream_id}/stop")

    assert response.status_code == 200 and response.json()["active"] is False
    assert client.get(f"/streams/{stream_id}/questions").status_code == 200


def test_openapi_docs_are_served(client):
    assert client.get("/docs").status_code == 200
    assert "/streams/{stream_id}/questions" in client.get("/openapi.json").json()["paths"]


def test_metrics_when_a_stream_has_questions_exposes_its_counts(client, stream_id):
    client.post(f"/streams/{stream_id}/questions", json={"text": "what?"})

    text = client.get("/metrics").text

    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    assert samples[("vidmem_stream_up", (("status", "connecting"), ("stream", stream_id)))] == 1
    assert samples[("vidmem_questions", (("status", "queued"), ("stream", stream_id)))] == 1
    assert samples[("vidmem_chunks", (("status", "pending"), ("stream", stream_id)))] == 0


def test_stream_when_source_never_answers_becomes_failed_with_reason(client, runtime):
    with socket.socket() as sock:  # a port nobody listens on: connection refused
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    runtime.settings.first_connect_retries = 2
    stream_id = client.post("/streams", json={"source": f"rtsp://127.0.0.1:{port}/cam"}).json()["id"]
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    try:
        deadline = time.monotonic() + 30
        while client.get(f"/streams/{stream_id}").json()["status"] != "failed" and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        manager.stop()

    body = client.get(f"/streams/{stream_id}").json()
    assert body["status"] == "failed", body
    assert "could not connect after 2 tries" in body["status_reason"]
