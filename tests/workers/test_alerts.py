"""Standing questions end to end: a real H.264 file through ingest, a real worker on the ``alerts`` queue, the
tiny random model, events with thumbnails, and webhooks to a receiver on loopback that fails on purpose.

The random model answers arbitrarily, so firing is made deterministic without any test hook: an alert whose
``fire_on`` holds every option fires on every evaluation whatever the model picks, and one firing on a subset
is checked for consistency (an event exactly when its recorded answer is in ``fire_on``). The decision itself
(``decide``) and the schedule (``is_due``) are tested on their own with known scores and times.
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from sqlalchemy import select

from store import repo
from store.db import session_scope
from store.models import Alert, AlertDelivery, AlertEvent, ChunkRecord
from tests.workers.cluster import served_client, wait_for
from workers import alert_schedule, alerts, webhooks
from workers.app import create_celery
from workers.runtime import Runtime
from workers.thumbnails import jpeg_thumbnail

pytestmark = pytest.mark.timeout(240)

BACKOFF_S = 0.3  # first webhook retry after this, then 0.6, 1.2 ... (VIDMEM_ALERT_WEBHOOK_BACKOFF_S)
ATTEMPTS = 4


# ------------------------------------------------------------------------------------------ pure parts


def test_decide_when_scores_are_known_picks_the_likeliest_and_fires_only_on_fire_on():
    options = ["yes", "no", "maybe"]

    assert alerts.decide(options, ["yes"], torch.tensor([-0.1, -2.0, -3.0])) == ("yes", True)
    assert alerts.decide(options, ["yes"], torch.tensor([-2.0, -0.1, -3.0])) == ("no", False)
    assert alerts.decide(options, ["no", "maybe"], torch.tensor([-2.0, -3.0, -0.5])) == ("maybe", True)
    assert alerts.decide(options, ["no"], torch.tensor([-1.0, -1.0, -1.0])) == ("yes", False), "ties: first listed"
    with pytest.raises(ValueError, match="3 options but scores of shape"):
        alerts.decide(options, ["yes"], torch.tensor([0.0, 1.0]))


def _alert(**fields) -> SimpleNamespace:  # type: ignore[no-untyped-def]
    base = {"last_eval_seq": None, "last_eval_t": None, "last_fired_t": None, "every_s": None, "cooldown_s": 0.0}
    return SimpleNamespace(**{**base, **fields})


def test_is_due_when_every_chunk_then_each_new_chunk_once():
    assert alert_schedule.is_due(_alert(), 0, 2.0)
    assert alert_schedule.is_due(_alert(last_eval_seq=0, last_eval_t=2.0), 1, 4.0)
    assert not alert_schedule.is_due(_alert(last_eval_seq=1, last_eval_t=4.0), 1, 4.0), "a redelivered chunk"
    assert not alert_schedule.is_due(_alert(last_eval_seq=3, last_eval_t=8.0), 2, 6.0), "an older chunk"


def test_is_due_when_every_s_is_set_then_after_that_much_stream_time():
    every_6 = {"every_s": 6.0, "last_eval_seq": 0, "last_eval_t": 2.0}

    assert not alert_schedule.is_due(_alert(**every_6), 1, 4.0)
    assert not alert_schedule.is_due(_alert(**every_6), 2, 6.0)
    assert alert_schedule.is_due(_alert(**every_6), 3, 2.0 + 3 * 2.0), "6 s as the sum of 2 s chunks"
    assert alert_schedule.is_due(_alert(**every_6), 4, 1.0), "stream time went back (a restart): evaluate"


def test_is_due_when_in_cooldown_then_skipped_until_it_ends():
    cooling = {"cooldown_s": 5.0, "last_fired_t": 4.0, "last_eval_seq": 1, "last_eval_t": 4.0}

    assert not alert_schedule.is_due(_alert(**cooling), 2, 6.0)
    assert not alert_schedule.is_due(_alert(**cooling), 3, 8.0)
    assert alert_schedule.is_due(_alert(**cooling), 4, 10.0)


def test_jpeg_thumbnail_when_frame_is_wide_keeps_aspect_and_colour():
    frame = np.zeros((120, 480, 3), np.uint8)
    frame[..., 0] = 220  # red

    jpeg = jpeg_thumbnail(frame, size=160)

    image = Image.open(io.BytesIO(jpeg))
    assert image.format == "JPEG" and image.size == (160, 40)
    red, green, blue = np.asarray(image.convert("RGB")).reshape(-1, 3).mean(0)
    assert red > 200 and green < 20 and blue < 20
    assert len(jpeg) < 5000, "a thumbnail is a few KB at most"
    with pytest.raises(ValueError, match="uint8"):
        jpeg_thumbnail(frame.astype(np.float32))
    with pytest.raises(ValueError, match="size"):
        jpeg_thumbnail(frame, size=0)


def test_webhook_backoff_doubles_up_to_the_maximum(settings):
    settings = settings.model_copy(update={"alert_webhook_backoff_s": 2.0, "alert_webhook_backoff_max_s": 10.0})

    assert [webhooks.backoff_s(n, settings) for n in range(1, 6)] == [2.0, 4.0, 8.0, 10.0, 10.0]


def test_webhook_url_check_when_target_is_not_allowed_refuses(settings):
    closed = settings.model_copy(update={"allowed_networks": []})

    assert webhooks.check_webhook_url("http://127.0.0.1:8080/hook", settings)  # the suite opens loopback
    for url in ("http://127.0.0.1:8080/hook", "http://[::1]/x", "http://169.254.169.254/latest", "http://10.1.2.3/",
                "ftp://127.0.0.1/x", "file:///etc/passwd", "/etc/passwd", "http:///nohost", "http://a b/",
                "http://127.0.0.1:99999/"):
        with pytest.raises(webhooks.WebhookRefused):
            webhooks.check_webhook_url(url, closed)


# ------------------------------------------------------------------------------------------ a local receiver


@dataclass
class Receiver:
    """An HTTP server on loopback that answers each POST with the next status of ``script`` (then 200)."""

    script: list[int] = field(default_factory=list)
    received: list[tuple[float, dict[str, str], bytes]] = field(default_factory=list)
    paths: list[str] = field(default_factory=list)
    location: str | None = None

    def url(self, path: str = "/hook") -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{path}"

    def start(self) -> Receiver:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's name
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                receiver.received.append((time.monotonic(), dict(self.headers), body))
                receiver.paths.append(self.path)
                status = receiver.script.pop(0) if receiver.script else 200
                self.send_response(status)
                if 300 <= status < 400 and receiver.location:
                    self.send_header("Location", receiver.location)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:  # type: ignore[no-untyped-def]
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    running = Receiver().start()
    yield running
    running.stop()


# ------------------------------------------------------------------------------------------ a real service


@pytest.fixture(scope="module")
def service(tmp_path_factory, settings_factory):  # type: ignore[no-untyped-def]
    """API client (with a key) + ingest + one real ``vidmem worker`` process on every queue, as ``vidmem serve``."""
    settings = settings_factory(tmp_path_factory.mktemp("alerts")).model_copy(update={
        "alert_webhook_backoff_s": BACKOFF_S, "alert_webhook_attempts": ATTEMPTS, "alert_webhook_timeout_s": 5.0,
    })
    with served_client(settings) as (client, runtime, _):
        yield client, runtime


def _idle_stream(runtime: Runtime, video) -> str:  # type: ignore[no-untyped-def]
    """A stream registered but not started, so that its alerts exist before its first chunk."""
    with session_scope(runtime.sessions) as session:
        stream = repo.create_stream(session, name="alerts", source_url=str(video))
        stream.active = False
        return stream.id


def _post_alert(client: TestClient, stream_id: str, **body) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(f"/streams/{stream_id}/alerts", json={"question": "Is a red square in view?", **body})
    assert response.status_code == 201, response.text
    return response.json()


def _all_events(client: TestClient, alert_id: str) -> list[dict]:
    return client.get(f"/alerts/{alert_id}/events", params={"limit": 200}).json()["data"]


def test_alerts_when_stream_is_ingested_fire_per_period_with_times_thumbnails_and_signed_webhooks(
        service, tmp_path, make_h264, receiver):
    client, runtime = service
    video = make_h264(tmp_path / "clip.mp4", seconds=8.0, fps=10)  # 4 chunks of 2 s
    stream_id = _idle_stream(runtime, video)
    # given alerts registered before the stream starts: one firing on any answer with a webhook, one every 4 s
    # of video, one firing on "yes" only, one paused
    always = _post_alert(client, stream_id, fire_on=["yes", "no"], webhook_url=receiver.url())
    every_4 = _post_alert(client, stream_id, fire_on=["yes", "no"], every_s=4.0)
    on_yes = _post_alert(client, stream_id, options=["yes", "no"], fire_on=["yes"])
    paused = _post_alert(client, stream_id, fire_on=["yes", "no"], active=False)

    # when the stream is started and read to its end
    assert client.post(f"/streams/{stream_id}/start").status_code == 200
    wait_for(lambda: (s := client.get(f"/streams/{stream_id}").json())["status"] == "ended"
             and s["chunks"]["pending"] == 0)
    applied = wait_for(lambda: (a := client.get(f"/alerts/{on_yes['id']}").json())["last_answered_seq"] == 3 and a)
    events = wait_for(lambda: len(e := _all_events(client, always["id"])) == 4 and e)
    wait_for(lambda: len(receiver.received) == 4)

    # then the always-firing alert fired once per chunk, with the chunk's times and a thumbnail
    with session_scope(runtime.sessions) as session:
        chunks = {c.seq: (c.t_start, c.t_end) for c in session.scalars(
            select(ChunkRecord).where(ChunkRecord.stream_id == stream_id))}
        epoch = repo.get_stream(session, stream_id).media_epoch
    assert sorted(e["seq"] for e in events) == [0, 1, 2, 3]
    assert [e["seq"] for e in events] == [3, 2, 1, 0], "newest first"
    for event in events:
        assert (event["t_start"], event["t_end"]) == chunks[event["seq"]]
        assert event["answer"] in ("yes", "no") and set(event["scores"]) == {"yes", "no"}
        assert event["answer"] == max(event["scores"], key=event["scores"].get), "the likeliest option"
        if epoch is not None:
            assert datetime.fromisoformat(event["wall_start"]) == epoch + timedelta(seconds=event["t_start"])
        thumbnail = client.get(event["thumbnail_url"])
        assert thumbnail.status_code == 200 and thumbnail.headers["content-type"] == "image/jpeg"
        assert Image.open(io.BytesIO(thumbnail.content)).size == (64, 64), "the 64 px frames, not enlarged"
    # and every-4-s fired on the first chunk and on the one 4 s of video later
    fired_4 = sorted(e["seq"] for e in _all_events(client, every_4["id"]))
    assert fired_4 == [0, 2], fired_4
    # and on-yes fired exactly on the chunks whose answer was "yes"
    for event in _all_events(client, on_yes["id"]):
        assert event["answer"] == "yes"
    assert applied["last_answer"] in ("yes", "no")
    # and the paused alert was never evaluated
    assert client.get(f"/alerts/{paused['id']}").json()["last_answered_seq"] is None
    assert _all_events(client, paused["id"]) == []
    # and each event reached the webhook once, signed with the secret given at creation
    bodies = [json.loads(body) for _, _, body in receiver.received]
    assert sorted(b["event"]["seq"] for b in bodies) == [0, 1, 2, 3]
    for _, headers, body in receiver.received:
        assert webhooks.verify(body, always["signing_secret"], headers["X-Vidmem-Signature"])
        assert not webhooks.verify(body, on_yes["signing_secret"], headers["X-Vidmem-Signature"])
        assert always["signing_secret"] not in body.decode(), "no secret in the payload"
        sent = json.loads(body)["sent_at"]
        assert int(datetime.fromisoformat(sent).timestamp()) == int(headers["X-Vidmem-Timestamp"])
    def all_delivered():  # type: ignore[no-untyped-def]
        listed = _all_events(client, always["id"])
        return all(e["delivery_status"] == "delivered" for e in listed) and listed

    delivered = wait_for(all_delivered)
    assert all(len(e["deliveries"]) == 1 and e["deliveries"][0]["status_code"] == 200 for e in delivered)


def test_evaluation_when_delivered_again_answers_and_fires_nothing_twice(service, tmp_path, make_h264):
    client, runtime = service
    video = make_h264(tmp_path / "short.mp4", seconds=4.0, fps=10)
    stream_id = _idle_stream(runtime, video)
    alert = _post_alert(client, stream_id, fire_on=["yes", "no"])
    client.post(f"/streams/{stream_id}/start")
    wait_for(lambda: len(_all_events(client, alert["id"])) == 2)
    with session_scope(runtime.sessions) as session:
        chunk = session.scalar(select(ChunkRecord).where(ChunkRecord.stream_id == stream_id, ChunkRecord.seq == 1))
        t_start, t_end = chunk.t_start, chunk.t_end

    # when the evaluation of chunk 1 and the scheduling after it run again (a redelivered task)
    outcome = alerts.evaluate(runtime, alert["id"], 1, t_start, t_end)
    queued = alert_schedule.after_chunk_applied(runtime, stream_id, 1, b"not read: nothing is due")

    # then nothing is answered, queued or stored again
    assert outcome == "already answered" and queued == 0
    assert len(_all_events(client, alert["id"])) == 2


def _event_for(client: TestClient, runtime: Runtime, webhook: str) -> tuple[dict, str]:
    """An alert with ``webhook`` and one stored event of it (made directly: no model needed to test delivery)."""
    with session_scope(runtime.sessions) as session:
        stream = repo.create_stream(session, name="hooks", source_url="/nowhere.mp4")
        stream.active, stream_id = False, stream.id
    alert = _post_alert(client, stream_id, webhook_url=webhook)
    with session_scope(runtime.sessions) as session:
        event = AlertEvent(alert_id=alert["id"], stream_id=stream_id, seq=0, t_start=0.0, t_end=2.0, answer="yes",
                           scores={"yes": -0.1, "no": -2.3}, delivery_status="pending")
        session.add(event)
        session.flush()
        return alert, event.id


def _deliveries(runtime: Runtime, event_id: str) -> list[AlertDelivery]:
    with session_scope(runtime.sessions) as session:
        rows = list(session.scalars(select(AlertDelivery).where(AlertDelivery.event_id == event_id)
                                    .order_by(AlertDelivery.attempt)))
        session.expunge_all()
        return rows


def test_webhook_when_receiver_fails_twice_is_retried_with_backoff_until_delivered(service, receiver):
    client, runtime = service
    receiver.script = [503, 500]
    alert, event_id = _event_for(client, runtime, receiver.url())

    # when the delivery is queued (as the evaluation does after storing the event)
    runtime_app = create_celery(runtime.settings)
    runtime_app.send_task(alert_schedule.DELIVER_TASK, args=[event_id, 1])

    # then the receiver gets three tries, spaced by the doubling backoff, and the third is the delivery
    event = wait_for(lambda: (e := client.get(f"/events/{event_id}").json())["delivery_status"] == "delivered" and e)
    times = [t for t, _, _ in receiver.received]
    assert len(times) == 3
    assert times[1] - times[0] >= BACKOFF_S * 0.9 and times[2] - times[1] >= 2 * BACKOFF_S * 0.9, times
    tries = event["deliveries"]
    assert [(d["attempt"], d["status_code"]) for d in tries] == [(1, 503), (2, 500), (3, 200)]
    assert tries[0]["error"] == "HTTP 503: Service Unavailable" and tries[2]["error"] is None
    assert tries[0]["next_retry_at"] is not None and tries[2]["next_retry_at"] is None
    assert tries[2]["delivered_at"] is not None and tries[0]["delivered_at"] is None
    for _, headers, body in receiver.received:  # every try signed, each body with its own attempt number
        assert webhooks.verify(body, alert["signing_secret"], headers["X-Vidmem-Signature"])
    assert [json.loads(b)["attempt"] for _, _, b in receiver.received] == [1, 2, 3]


def test_webhook_when_receiver_always_fails_gives_up_after_the_attempts_and_shows_why(service, receiver):
    client, runtime = service
    receiver.script = [500] * 10
    _, event_id = _event_for(client, runtime, receiver.url())

    create_celery(runtime.settings).send_task(alert_schedule.DELIVER_TASK, args=[event_id, 1])

    event = wait_for(lambda: (e := client.get(f"/events/{event_id}").json())["delivery_status"] == "failed" and e)
    assert len(receiver.received) == ATTEMPTS
    assert [d["status_code"] for d in event["deliveries"]] == [500] * ATTEMPTS
    assert event["deliveries"][-1]["next_retry_at"] is None, "no try after the last"


@pytest.mark.parametrize(("status", "tries"), [(404, 1), (302, 1)])
def test_webhook_when_refused_for_good_or_redirected_is_not_retried_nor_followed(service, receiver, status, tries):
    client, runtime = service
    receiver.script = [status]
    receiver.location = receiver.url("/elsewhere")
    _, event_id = _event_for(client, runtime, receiver.url())

    create_celery(runtime.settings).send_task(alert_schedule.DELIVER_TASK, args=[event_id, 1])

    event = wait_for(lambda: (e := client.get(f"/events/{event_id}").json())["delivery_status"] == "failed" and e)
    time.sleep(3 * BACKOFF_S)  # a wrongly scheduled retry would have come by now
    assert receiver.paths == ["/hook"] * tries, "one try, and a redirect is not followed"
    assert [d["status_code"] for d in event["deliveries"]] == [status]


def test_webhook_when_destination_became_denied_is_refused_before_connecting(service, receiver):
    client, runtime = service
    _, event_id = _event_for(client, runtime, receiver.url())
    closed = Runtime(runtime.settings.model_copy(update={"allowed_networks": [], "alert_webhook_attempts": 1}),
                     auto_upgrade=True)

    # when a worker whose policy now denies loopback delivers it
    outcome = alerts.deliver(closed, event_id, 1)

    # then nothing is sent and the refusal is recorded
    assert outcome == "given up"
    assert receiver.received == []
    (row,) = _deliveries(runtime, event_id)
    assert row.status_code is None and row.error.startswith("refused: webhook URL refused by the destination policy")
    assert client.get(f"/events/{event_id}").json()["delivery_status"] == "failed"


def test_alert_rows_when_stream_is_deleted_go_with_it(service):
    client, runtime = service
    alert, event_id = _event_for(client, runtime, "http://127.0.0.1:9/unused")

    with session_scope(runtime.sessions) as session:
        session.delete(repo.get_stream(session, alert["stream_id"]))

    with session_scope(runtime.sessions) as session:
        assert session.get(Alert, alert["id"]) is None and session.get(AlertEvent, event_id) is None
