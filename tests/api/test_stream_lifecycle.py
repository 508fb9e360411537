"""POST /streams/{id}/start and /stop: an explicit stop is remembered, a start re-activates."""

from __future__ import annotations

from store import repo
from store.db import session_scope
from store.models import StreamStatus


def set_status(runtime, stream_id: str, status: str, *, active: bool) -> None:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        repo.set_stream_status(session, stream_id=stream_id, status=status, reason="as the test left it")
        repo.get_stream(session, stream_id).active = active


def row(runtime, stream_id: str) -> tuple[str, str | None, bool]:  # type: ignore[no-untyped-def]
    with session_scope(runtime.sessions) as session:
        stream = repo.get_stream(session, stream_id)
        return stream.status, stream.status_reason, stream.active


def test_stop_stream_by_post_marks_it_inactive_like_delete(client, runtime, stream_id):
    response = client.post(f"/streams/{stream_id}/stop")

    assert response.status_code == 200 and response.json()["active"] is False
    assert row(runtime, stream_id)[2] is False
    assert client.get(f"/streams/{stream_id}/questions").status_code == 200


def test_start_stream_when_stopped_reactivates_it_as_connecting(client, runtime, stream_id):
    set_status(runtime, stream_id, StreamStatus.stopped, active=False)

    response = client.post(f"/streams/{stream_id}/start")

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["id"] == stream_id and body["active"] is True
    assert (body["status"], body["status_reason"]) == ("connecting", "start requested")
    assert row(runtime, stream_id) == ("connecting", "start requested", True)


def test_start_stream_when_failed_reactivates_it_as_connecting(client, runtime, stream_id):
    set_status(runtime, stream_id, StreamStatus.failed, active=True)

    response = client.post(f"/streams/{stream_id}/start")

    assert response.status_code == 200 and response.json()["status"] == "connecting"
    assert row(runtime, stream_id) == ("connecting", "start requested", True)


def test_start_stream_when_live_leaves_it_as_it_is(client, runtime, stream_id):
    set_status(runtime, stream_id, StreamStatus.live, active=True)

    response = client.post(f"/streams/{stream_id}/start")

    assert response.status_code == 200 and response.json()["status"] == "live"
    assert row(runtime, stream_id) == ("live", "as the test left it", True)


def test_start_stream_when_ended_returns_409_and_changes_nothing(client, runtime, stream_id):
    set_status(runtime, stream_id, StreamStatus.ended, active=False)

    response = client.post(f"/streams/{stream_id}/start")

    assert response.status_code == 409
    assert response.json()["detail"] == "stream has ended: its file was read to the end"
    assert row(runtime, stream_id) == ("ended", "as the test left it", False)


def test_start_stream_when_unknown_returns_404_with_message(client):
    response = client.post("/streams/doesnotexist/start")

    assert response.status_code == 404 and "doesnotexist" in response.json()["detail"]


def test_start_and_stop_stream_when_key_missing_return_401_and_change_nothing(client, runtime, stream_id):
    set_status(runtime, stream_id, StreamStatus.stopped, active=False)
    client.headers.pop("Authorization")

    start = client.post(f"/streams/{stream_id}/start")
    wrong = client.post(f"/streams/{stream_id}/start", headers={"Authorization": "Bearer nope"})
    assert row(runtime, stream_id) == ("stopped", "as the test left it", False)
    set_status(runtime, stream_id, StreamStatus.live, active=True)
    stop = client.post(f"/streams/{stream_id}/stop")

    for response in (start, wrong, stop):
        assert response.status_code == 401
        assert response.json()["detail"] == "missing, wrong or revoked API key"
    assert row(runtime, stream_id) == ("live", "as the test left it", True)
