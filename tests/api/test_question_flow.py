"""Asking and waiting (issue 18): windows in words and clock times, overrides, queue positions,
cancel and retry, long-poll and server-sent events, on SQLite and PostgreSQL.

Questions are answered by the real worker code (``workers.services.answer_question``, the tiny random
model) from another thread while a client waits, as a worker process would through the database;
one test at the end runs a real ``vidmem worker`` process.
"""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

import workers.tasks  # noqa: F401 - registers the Celery tasks
from api import feed
from store import history, repo
from store.blobs import pack_frames
from store.db import session_scope
from store.models import Question
from tests.api.databases import (  # noqa: F401 - fixtures; questions wait in the file broker, the tests answer them
    client_on_sqlite,
    client_with_default_key,
    runtime_on_each_database,
    runtime_on_sqlite,
)
from tests.api_keys import bearer, new_key
from workers import services
from workers.runtime import Runtime

pytestmark = pytest.mark.timeout(120)
EPOCH = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


def new_stream(runtime: Runtime, *, epoch: datetime | None = None, chunks: int = 0) -> str:
    """A stream row (no ingest runs); ``chunks`` chunks of 2 s applied to its memory by the real worker code."""
    rng = np.random.default_rng(0)
    with session_scope(runtime.sessions) as session:
        stream = repo.create_stream(session, name="cam", source_url="rtsp://127.0.0.1/x")
        stream.media_epoch = epoch
        stream_id = stream.id
        for seq in range(chunks):
            images = rng.integers(0, 255, (2, 32, 32, 3), dtype=np.uint8)
            runtime.blobs.put(f"{stream_id}-{seq}", pack_frames(images, np.array([2.0 * seq, 2.0 * seq + 1])))
            repo.create_chunk(session, stream_id=stream_id, seq=seq, t_start=2.0 * seq, t_end=2.0 * seq + 2,
                              num_frames=2, blob_key=f"{stream_id}-{seq}")
    for seq in range(chunks):
        assert services.apply_chunk(runtime, stream_id, seq) == "applied"
    return stream_id


def ask(client: TestClient, stream_id: str, **body) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(f"/streams/{stream_id}/questions", json={"text": "What is in view?", **body})
    assert response.status_code == 202, response.text
    return response.json()


def answer_later(runtime: Runtime, question_id: str, delay: float) -> threading.Thread:
    """Answer the question from another thread after ``delay`` seconds, as a worker would."""

    def run() -> None:
        time.sleep(delay)
        services.answer_question(runtime, question_id)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def assert_error(response, status: int, field: str) -> dict:  # type: ignore[no-untyped-def]
    assert response.status_code == status, response.text
    body = response.json()
    assert field in body["detail"], body
    return body


# --- asking ------------------------------------------------------------------------------------------


def test_ask_returns_202_with_the_queue_position_across_the_deployment(client, runtime):
    first_stream, second_stream = new_stream(runtime), new_stream(runtime)

    positions = [ask(client, s)["queue_position"] for s in (first_stream, second_stream, first_stream)]
    first_id = client.get("/questions", params={"limit": 3}).json()["data"][-1]["id"]
    client.post(f"/questions/{first_id}/cancel")
    last_id = client.get("/questions", params={"limit": 1}).json()["data"][0]["id"]

    assert positions == [0, 1, 2]
    assert client.get(f"/questions/{last_id}").json()["queue_position"] == 1, "the cancelled one is no longer ahead"


def test_ask_when_the_backlog_is_longer_than_the_cap_reports_the_cap(client, runtime, monkeypatch):
    monkeypatch.setattr(history, "QUEUE_POSITION_CAP", 2)  # counting stops there: bounded work per request
    stream_id = new_stream(runtime)

    positions = [ask(client, stream_id)["queue_position"] for _ in range(4)]

    assert positions == [0, 1, 2, 2]


BAD_QUESTIONS = [
    ({"windw": 3}, "body.windw"),
    ({"last": "5 parsecs"}, "body.last"),
    ({"last": -1}, "body.last"),
    ({"last": True}, "body.last"),
    ({"last": "x" * 101}, "body.last"),
    ({"last": 60, "window_start": 1}, "body.last"),
    ({"since": "2026-01-01T12:00:00"}, "body.since"),
    ({"since": "yesterday"}, "body.since"),
    ({"since": 1767268800}, "body.since"),
    ({"since": "2026-01-01T12:00:00Z", "until": "2026-01-01T11:00:00Z"}, "body.until"),
    ({"last": 60, "since": "2026-01-01T12:00:00Z"}, "body.since"),
    ({"window_start": 10, "window_end": 5}, "body.window_end"),
    ({"llm_budget": 0}, "body.llm_budget"),
    ({"llm_budget": "64"}, "body.llm_budget"),
    ({"stage2": "nope"}, "body.stage2"),
    ({"stage2": "adatp:bogus=1"}, "body.stage2"),
    ({"stage2": "cacovid:policy_path=/etc/passwd"}, "body.stage2"),
    ({"stage2": "tome:ratio=0.5"}, "body.stage2"),
    ({"max_answer_tokens": 100_000}, "body.max_answer_tokens"),
    ({"max_answer_tokens": 0}, "body.max_answer_tokens"),
]


def test_ask_when_input_is_bad_returns_422_naming_the_field_and_stores_nothing(sqlite_client, sqlite_runtime):
    stream_id = new_stream(sqlite_runtime, epoch=EPOCH)

    for body, field in BAD_QUESTIONS:
        response = sqlite_client.post(f"/streams/{stream_id}/questions", json={"text": "what?", **body})

        assert_error(response, 422, field)
        assert response.json()["field"] == field, body
    assert sqlite_client.get("/questions").json()["data"] == []


def test_ask_with_clock_times_converts_them_with_the_media_epoch(client, runtime):
    stream_id = new_stream(runtime, epoch=EPOCH)

    queued = ask(client, stream_id, since="2026-01-01T13:01:00+01:00", until="2026-01-01T12:02:30Z")
    question = client.get(f"/questions/{queued['id']}").json()

    assert (question["window_start"], question["window_end"]) == (60.0, 150.0)
    assert question["window_since"] == "2026-01-01T12:01:00Z" and question["window_until"] == "2026-01-01T12:02:30Z"
    assert question["media_epoch"] == "2026-01-01T12:00:00Z"


def test_ask_with_clock_times_when_the_stream_has_no_media_epoch_returns_409(client, runtime):
    stream_id = new_stream(runtime)

    response = client.post(f"/streams/{stream_id}/questions", json={"text": "what?", "since": "2026-01-01T12:00:00Z"})

    body = assert_error(response, 409, "body.since")
    assert "media epoch" in body["detail"] and "last" in body["detail"]


def test_ask_with_until_before_the_media_began_returns_422_naming_until(sqlite_client, sqlite_runtime):
    stream_id = new_stream(sqlite_runtime, epoch=EPOCH)

    response = sqlite_client.post(f"/streams/{stream_id}/questions",
                                  json={"text": "what?", "until": "2026-01-01T11:59:00Z"})

    assert_error(response, 422, "body.until")


@pytest.mark.parametrize("last", ["last 3 seconds", 3])
def test_last_is_resolved_against_the_memorys_newest_time_with_the_overrides_recorded(
    sqlite_client, sqlite_runtime, last
):
    # given a memory of 3 chunks: frames at 0, 1, 2, 3, 4, 5 s of stream time
    stream_id = new_stream(sqlite_runtime, epoch=EPOCH, chunks=3)
    queued = ask(sqlite_client, stream_id, last=last, stage2="recent", llm_budget=5, max_answer_tokens=2)

    # when a worker answers it
    assert services.answer_question(sqlite_runtime, queued["id"]) == "answered"

    # then the window is the newest 3 s, and the question records what was used
    q = sqlite_client.get(f"/questions/{queued['id']}").json()
    assert q["status"] == "done" and q["window_last"] == 3.0
    assert (q["window_start"], q["window_end"]) == (2.0, 5.0)
    assert 2.0 <= q["covered_start"] <= q["covered_end"] <= 5.0
    assert q["covered_until"] == (EPOCH + timedelta(seconds=q["covered_end"])).isoformat().replace("+00:00", "Z")
    assert q["specs"]["stage2"] == "recent" and q["specs"]["llm_budget"] == 5 and q["specs"]["max_answer_tokens"] == 2
    assert q["specs"]["stage1"] == sqlite_runtime.settings.stage1
    assert "stage2=recent" in q["method"] and "llm_budget=5" in q["method"]
    assert q["visual_tokens_after"] <= 5 <= q["visual_tokens_before"] < q["memory_tokens"]
    assert q["latency_s"] is not None and q["latency_s"] >= 0


def test_a_window_outside_the_memory_is_answered_with_what_the_memory_holds(sqlite_client, sqlite_runtime):
    stream_id = new_stream(sqlite_runtime, chunks=1)
    queued = ask(sqlite_client, stream_id, window_start=100, window_end=200)

    services.answer_question(sqlite_runtime, queued["id"])

    q = sqlite_client.get(f"/questions/{queued['id']}").json()
    assert q["status"] == "done" and "No video in the asked window" in q["answer"]
    assert q["visual_tokens_before"] == 0 and q["covered_start"] is None and q["memory_tokens"] > 0


# --- cancel and retry ---------------------------------------------------------------------------------


def test_cancel_a_queued_question_then_the_worker_skips_it_and_retry_answers_it(client, runtime):
    stream_id = new_stream(runtime)
    question_id = ask(client, stream_id)["id"]

    cancelled = client.post(f"/questions/{question_id}/cancel")
    again = client.post(f"/questions/{question_id}/cancel")
    skipped = services.answer_question(runtime, question_id)
    after_skip = client.get(f"/questions/{question_id}").json()
    retried = client.post(f"/questions/{question_id}/retry")
    services.answer_question(runtime, question_id)
    done = client.get(f"/questions/{question_id}").json()

    assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
    assert again.status_code == 200 and again.json()["status"] == "cancelled", "cancel is idempotent"
    assert skipped == "question already cancelled" and after_skip["status"] == "cancelled"
    assert after_skip["started_at"] is None and after_skip["answer"] is None
    assert retried.status_code == 202 and retried.json()["status"] == "queued"
    assert retried.json()["queue_position"] == 0
    assert done["status"] == "done" and done["error"] is None and done["created_at"] == after_skip["created_at"]
    assert done["queued_at"] > done["created_at"]


def test_cancel_or_retry_when_the_state_forbids_it_returns_409(client, runtime):
    stream_id = new_stream(runtime)
    queued, running, done = (ask(client, stream_id)["id"] for _ in range(3))
    with session_scope(runtime.sessions) as session:
        session.execute(update(Question).where(Question.id == running).values(status="running"))
    services.answer_question(runtime, done)

    assert_error(client.post(f"/questions/{running}/cancel"), 409, "running")
    assert_error(client.post(f"/questions/{done}/cancel"), 409, "done")
    assert_error(client.post(f"/questions/{queued}/retry"), 409, "queued")
    assert_error(client.post(f"/questions/{done}/retry"), 409, "done")
    assert client.post("/questions/nope/cancel").status_code == 404
    assert client.post("/questions/nope/retry").status_code == 404


def test_retry_a_failed_question_clears_its_error_and_queues_it_again(client, runtime):
    stream_id = new_stream(runtime)
    question_id = ask(client, stream_id, last="1 minute")["id"]
    services.fail_question(runtime, question_id, "RuntimeError: the GPU fell off")

    response = client.post(f"/questions/{question_id}/retry")
    question = client.get(f"/questions/{question_id}").json()

    assert response.status_code == 202 and response.json()["queue_position"] == 0
    assert question["status"] == "queued" and question["error"] is None and question["finished_at"] is None
    assert question["window_last"] == 60.0, "retried as it was asked"


def test_a_cancel_racing_a_worker_claim_lets_exactly_one_win(client, runtime):
    stream_id = new_stream(runtime)
    ids = [ask(client, stream_id)["id"] for _ in range(6)]
    outcomes: dict[str, tuple[int, str]] = {}

    def cancel(question_id: str) -> None:
        outcomes[question_id] = (client.post(f"/questions/{question_id}/cancel").status_code, "")

    for question_id in ids:
        thread = threading.Thread(target=cancel, args=(question_id,))
        thread.start()
        claimed = services.claim_question(runtime, question_id, "w1")
        thread.join()
        code = outcomes[question_id][0]
        status = client.get(f"/questions/{question_id}").json()["status"]
        if isinstance(claimed, str):  # the cancel came first
            assert code == 200 and status == "cancelled", (claimed, code, status)
        else:
            assert code == 409 and status == "running", (code, status)


# --- long-poll ----------------------------------------------------------------------------------------


def test_long_poll_returns_as_soon_as_the_question_is_answered(client, runtime):
    stream_id = new_stream(runtime)
    question_id = ask(client, stream_id)["id"]
    answer_later(runtime, question_id, 0.5)

    started = time.monotonic()
    response = client.get(f"/questions/{question_id}", params={"wait": 20})
    waited = time.monotonic() - started

    assert response.status_code == 200 and response.json()["status"] == "done"
    assert 0.4 <= waited < 10, waited


def test_long_poll_when_nothing_happens_returns_the_queued_question_after_the_wait(client, runtime):
    question_id = ask(client, new_stream(runtime))["id"]

    started = time.monotonic()
    response = client.get(f"/questions/{question_id}", params={"wait": 0.6})

    assert response.json()["status"] == "queued" and response.json()["queue_position"] == 0
    assert 0.55 <= time.monotonic() - started < 5


def test_long_poll_when_wait_is_bad_returns_422_naming_wait(sqlite_client, sqlite_runtime):
    question_id = ask(sqlite_client, new_stream(sqlite_runtime))["id"]

    for wait in ("61", "-1", "soon", "inf"):
        assert_error(sqlite_client.get(f"/questions/{question_id}", params={"wait": wait}), 422, "query.wait")
    assert sqlite_client.get("/questions/nope", params={"wait": 1}).status_code == 404


def test_long_polls_waiting_together_hold_no_database_connection(sqlite_client, sqlite_runtime):
    """More waiting clients than the API's pool has connections (8) all get their answer."""
    stream_id = new_stream(sqlite_runtime)
    ids = [ask(sqlite_client, stream_id)["id"] for _ in range(12)]
    results: list[int] = []

    def wait(question_id: str) -> None:
        results.append(sqlite_client.get(f"/questions/{question_id}", params={"wait": 30}).status_code)

    threads = [threading.Thread(target=wait, args=(question_id,)) for question_id in ids]
    for thread in threads:
        thread.start()
    time.sleep(1.0)
    for question_id in ids:
        client_cancel = sqlite_client.post(f"/questions/{question_id}/cancel")
        assert client_cancel.status_code == 200, client_cancel.text
    for thread in threads:
        thread.join(timeout=30)

    assert results == [200] * 12


# --- server-sent events -------------------------------------------------------------------------------


def read_events(response, *, until: str = "end", limit: int = 50) -> list[dict]:  # type: ignore[no-untyped-def]
    """Parse text/event-stream blocks until an event named ``until`` (or the stream ends)."""
    events, block = [], {}
    for line in response.iter_lines():
        if line == "":
            if block:
                events.append(block)
                if block.get("event") == until or len(events) >= limit:
                    return events
            block = {}
            continue
        field, _, value = line.partition(":")
        block[field or "comment"] = value.removeprefix(" ")
    if block:
        events.append(block)
    return events


def test_question_events_deliver_each_change_then_end(client, runtime):
    question_id = ask(client, new_stream(runtime))["id"]
    answer_later(runtime, question_id, 0.5)

    with client.stream("GET", f"/questions/{question_id}/events") as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = read_events(response)

    named = [e for e in events if "event" in e]
    statuses = [json.loads(e["data"])["status"] for e in named if e["event"] == "question"]
    assert statuses[0] == "queued" and statuses[-1] == "done" and set(statuses) <= {"queued", "running", "done"}
    assert named[-1]["event"] == "end" and json.loads(named[-1]["data"]) == {"id": question_id, "status": "done"}
    assert json.loads(named[-2]["data"])["answer"], "the final state carries the answer"
    assert all(e.get("id") for e in named if e["event"] == "question")
    assert any(e.get("retry") for e in events)


def test_question_events_resumed_after_the_final_event_send_only_end(client, runtime):
    question_id = ask(client, new_stream(runtime))["id"]
    services.answer_question(runtime, question_id)
    with client.stream("GET", f"/questions/{question_id}/events") as response:
        last_id = [e for e in read_events(response) if e.get("event") == "question"][-1]["id"]

    with client.stream("GET", f"/questions/{question_id}/events", headers={"Last-Event-ID": last_id}) as response:
        events = [e for e in read_events(response) if "event" in e]

    assert [e["event"] for e in events] == ["end"]


def test_question_events_when_unknown_or_bad_resume_id_answer_4xx(sqlite_client, sqlite_runtime):
    question_id = ask(sqlite_client, new_stream(sqlite_runtime))["id"]

    assert sqlite_client.get("/questions/nope/events").status_code == 404
    response = sqlite_client.get(f"/questions/{question_id}/events", headers={"Last-Event-ID": "garbage"})
    assert_error(response, 422, "header.last-event-id")


def test_question_events_send_heartbeats_and_end_after_their_lifetime(sqlite_client, sqlite_runtime):
    sqlite_runtime.settings.sse_heartbeat_s, sqlite_runtime.settings.sse_max_s = 0.2, 1.0
    question_id = ask(sqlite_client, new_stream(sqlite_runtime))["id"]

    started = time.monotonic()
    with sqlite_client.stream("GET", f"/questions/{question_id}/events") as response:
        events = read_events(response, until="never")

    assert 0.9 <= time.monotonic() - started < 10
    assert sum(e.get("comment") == "ping" for e in events) >= 2
    assert [e["event"] for e in events if "event" in e] == ["question"], "still queued: no end, the client resumes"


def test_stream_feed_delivers_every_question_change_and_registered_sources(client, runtime, monkeypatch):
    runtime.settings.sse_max_s = 4.0
    stream_id, other_stream = new_stream(runtime), new_stream(runtime)
    marker = feed.FeedEvent("note", "note:1", datetime.now(UTC) + timedelta(seconds=1), {"text": "hello"})
    monkeypatch.setattr(feed, "FEED_SOURCES", [*feed.FEED_SOURCES, lambda s, q: [marker] if q.since < marker.at
                                                 else []])
    ids: list[str] = []

    def activity() -> None:
        time.sleep(0.5)
        ids.append(ask(client, stream_id)["id"])
        ask(client, other_stream)  # another stream's question: not in this feed
        time.sleep(2 * runtime.settings.events_poll_s)  # the feed polls: let it see the question queued first
        services.answer_question(runtime, ids[0])

    thread = threading.Thread(target=activity)
    with client.stream("GET", f"/streams/{stream_id}/events") as response:
        thread.start()
        events = [e for e in read_events(response, until="never") if "event" in e]
    thread.join()

    questions = [json.loads(e["data"]) for e in events if e["event"] == "question"]
    assert {q["id"] for q in questions} == set(ids)
    assert [q["status"] for q in questions][0] == "queued" and questions[-1]["status"] == "done"
    assert [e["event"] for e in events].count("note") == 1
    event_ids = [e["id"] for e in events]
    assert event_ids == sorted(event_ids), "ids (change times) never go back: a resume continues from the last"


def test_stream_feed_resumes_from_last_event_id(client, runtime):
    runtime.settings.sse_max_s, runtime.settings.events_lag_s = 1.0, 0.0
    stream_id = new_stream(runtime)
    first = ask(client, stream_id)["id"]
    resume_from = datetime.now(UTC).isoformat()
    second = ask(client, stream_id)["id"]

    with client.stream("GET", f"/streams/{stream_id}/events", headers={"Last-Event-ID": resume_from}) as response:
        events = [e for e in read_events(response, until="never") if e.get("event") == "question"]

    assert [json.loads(e["data"])["id"] for e in events] == [second], first


# --- tenants ------------------------------------------------------------------------------------------


def test_another_tenants_questions_and_streams_answer_404_everywhere(client, runtime):
    stream_id = new_stream(runtime)
    question_id = ask(client, stream_id)["id"]
    other = bearer(new_key(runtime.sessions, "tenant-b"))

    for method, path in [
        ("GET", f"/questions/{question_id}"), ("GET", f"/questions/{question_id}?wait=1"),
        ("GET", f"/questions/{question_id}/events"), ("POST", f"/questions/{question_id}/cancel"),
        ("POST", f"/questions/{question_id}/retry"), ("GET", f"/streams/{stream_id}/questions"),
        ("GET", f"/streams/{stream_id}/events"), ("GET", f"/questions?stream_id={stream_id}"),
        ("GET", f"/questions/export?format=csv&stream_id={stream_id}"), ("POST", f"/streams/{stream_id}/questions"),
    ]:
        response = client.request(method, path, headers=other, json={"text": "mine?"} if method == "POST" else None)
        assert response.status_code == 404, (method, path, response.text)
    assert client.get("/questions", headers=other).json()["data"] == []
    assert client.post(f"/questions/{question_id}/cancel").status_code == 200, "its own tenant still can"


# --- end to end with a real worker process ------------------------------------------------------------


@pytest.mark.timeout(240)
def test_events_deliver_an_answer_from_a_real_worker_process(sqlite_client, sqlite_runtime):
    from vidmem.processes import WorkerProcess

    stream_id = new_stream(sqlite_runtime, chunks=1)
    worker = WorkerProcess(sqlite_runtime.settings)
    worker.start()
    try:
        question_id = ask(sqlite_client, stream_id, last="1 minute")["id"]
        with sqlite_client.stream("GET", f"/questions/{question_id}/events") as response:
            events = [e for e in read_events(response) if "event" in e]
    finally:
        worker.stop()

    final = json.loads(events[-2]["data"])
    assert events[-1]["event"] == "end" and final["status"] == "done", events
    assert final["answer"].startswith("[untrained model]") and final["window_end"] == 1.0
