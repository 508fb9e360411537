"""The alerts API on SQLite and PostgreSQL: every route, bad input naming the field, other tenants' ids as 404,
stable event pages while events arrive, thumbnails, deletes that take events and deliveries along, and the
alerts migration up and down. No worker runs: events are stored directly, as the alert worker stores them.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import numpy as np
import pytest
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select

from api.main import create_app
from store import db
from store.db import session_scope
from store.models import Alert, AlertDelivery, AlertEvent, utcnow
from tests.api.databases import DATABASES, api_client, database_url
from tests.api_keys import bearer, new_key
from workers.app import create_celery
from workers.runtime import Runtime
from workers.thumbnails import jpeg_thumbnail


def make_runtime(settings, tmp_path: Path, database_url: str | None = None) -> Runtime:  # type: ignore[no-untyped-def]
    if database_url:  # distributed mode keeps secrets encrypted with an explicit key
        settings.database_url, settings.secret_key = database_url, Fernet.generate_key().decode()
    settings.ensure_dirs()
    create_celery(settings)
    return Runtime(settings, auto_upgrade=True)


@pytest.fixture(params=DATABASES)
def runtime(request, settings, tmp_path) -> Iterator[Runtime]:  # type: ignore[no-untyped-def]
    """Not ``databases.runtime_on_each_database``: clips lie in the suite's file_dir, PostgreSQL has a secret key."""
    rt = make_runtime(settings, tmp_path, database_url(request))
    yield rt
    rt.engine.dispose()


@pytest.fixture
def client(runtime) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    with api_client(runtime, "tenant-a") as test_client:
        yield test_client


@pytest.fixture
def stream_id(client, tmp_path) -> str:  # type: ignore[no-untyped-def]
    clip = tmp_path / f"{uuid.uuid4().hex}.mp4"
    clip.write_bytes(b"not really a video")
    response = client.post("/streams", json={"source": str(clip)})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def new_alert(client: TestClient, stream_id: str, **body) -> dict:  # type: ignore[no-untyped-def]
    response = client.post(f"/streams/{stream_id}/alerts", json={"question": "Is the door open?", **body})
    assert response.status_code == 201, response.text
    return response.json()


def store_event(runtime: Runtime, alert: dict, *, seq: int, thumbnail: bytes | None = None, age_s: float = 0.0,
                deliveries: int = 0) -> str:
    """An event as the worker stores it (and ``deliveries`` failed webhook attempts)."""
    with session_scope(runtime.sessions) as session:
        tenant = session.get(Alert, alert["id"]).tenant_id
        event = AlertEvent(alert_id=alert["id"], tenant_id=tenant, stream_id=alert["stream_id"], seq=seq,
                           t_start=2.0 * seq, t_end=2.0 * seq + 2, answer="yes", scores={"yes": -0.2, "no": -1.7},
                           thumbnail=thumbnail, created_at=utcnow() - timedelta(seconds=age_s))
        session.add(event)
        session.flush()
        for attempt in range(1, deliveries + 1):
            session.add(AlertDelivery(event_id=event.id, attempt=attempt, status_code=500, error="HTTP 500"))
        return event.id


def count(runtime: Runtime, model: type) -> int:
    with session_scope(runtime.sessions) as session:
        return session.scalar(select(func.count()).select_from(model))


# ------------------------------------------------------------------------------------------ alerts


def test_create_alert_when_defaults_is_a_yes_no_question_every_chunk_with_a_secret_shown_once(client, stream_id):
    created = new_alert(client, stream_id, webhook_url="http://127.0.0.1:9/hook?token=s3cret")

    assert created["options"] == ["yes", "no"] and created["fire_on"] == ["yes"]
    assert created["every_s"] is None and created["window_s"] == 30.0 and created["cooldown_s"] == 0.0
    assert created["active"] is True and created["stream_id"] == stream_id
    assert len(created["signing_secret"]) == 64
    assert created["webhook_url"] == "http://127.0.0.1:9/hook?token=***", "credentials redacted"
    read = client.get(f"/alerts/{created['id']}").json()
    assert "signing_secret" not in read and "s3cret" not in str(read)
    assert read == {k: v for k, v in created.items() if k != "signing_secret"}


def test_create_alert_when_options_are_given_fires_on_them_as_written(client, stream_id):
    created = new_alert(client, stream_id, question="What colour is the car?", options=["Red", "blue", "green"],
                        fire_on=["red", "GREEN"], every_s=10, window_s=60.5, cooldown_s=120)

    assert created["options"] == ["Red", "blue", "green"] and created["fire_on"] == ["Red", "green"]
    assert (created["every_s"], created["window_s"], created["cooldown_s"]) == (10.0, 60.5, 120.0)


BAD_CREATES = [
    ({"question": "x", "color": "red"}, "body.color"),
    ({"question": ""}, "body.question"),
    ({"question": "   "}, "body.question"),
    ({"question": "x" * 2001}, "body.question"),
    ({"question": "a\x00b"}, "body.question"),
    ({"question": 5}, "body.question"),
    ({"question": "x", "options": ["yes"]}, "body.options"),
    ({"question": "x", "options": ["yes", "Yes"]}, "body.options"),
    ({"question": "x", "options": ["yes", " "]}, "body.options"),
    ({"question": "x", "options": [f"o{i}" for i in range(11)]}, "body.options"),
    ({"question": "x", "options": ["yes", "n" * 101]}, "body.options.1"),
    ({"question": "x", "fire_on": ["maybe"]}, "body.fire_on"),
    ({"question": "x", "fire_on": []}, "body.fire_on"),
    ({"question": "x", "every_s": 0}, "body.every_s"),
    ({"question": "x", "every_s": "5"}, "body.every_s"),
    ({"question": "x", "every_s": 1e9}, "body.every_s"),
    ({"question": "x", "window_s": -1}, "body.window_s"),
    ({"question": "x", "cooldown_s": -1}, "body.cooldown_s"),
    ({"question": "x", "active": "yes"}, "body.active"),
    ({"question": "x", "webhook_url": "ftp://127.0.0.1/x"}, "body.webhook_url"),
    ({"question": "x", "webhook_url": "http://10.0.0.1/x"}, "body.webhook_url"),
    ({"question": "x", "webhook_url": "http://169.254.169.254/latest/meta-data"}, "body.webhook_url"),
    ({"question": "x", "webhook_url": "http://127.0.0.1/a\r\nb"}, "body.webhook_url"),
    ({"question": "x", "webhook_url": "/etc/passwd"}, "body.webhook_url"),
    ({"question": "x", "webhook_url": "http://x/" + "a" * 2000}, "body.webhook_url"),
]


def test_create_alert_when_input_is_bad_is_422_naming_the_field_and_stores_nothing(client, runtime, stream_id):
    for body, field in BAD_CREATES:  # one database for all cases: each case costs a request, not a migration
        response = client.post(f"/streams/{stream_id}/alerts", json=body)

        assert response.status_code == 422, (body, response.text)
        assert response.json()["field"] == field, (body, response.json())
    assert count(runtime, Alert) == 0


def test_create_alert_when_loopback_is_not_allowed_refuses_a_loopback_webhook(settings, tmp_path):
    settings.allowed_networks = []
    runtime = make_runtime(settings, tmp_path)
    with TestClient(create_app(runtime)) as client:
        client.headers.update(bearer(new_key(runtime.sessions)))
        clip = tmp_path / "c.mp4"
        clip.write_bytes(b"x")
        stream = client.post("/streams", json={"source": str(clip)}).json()["id"]

        for url in ("http://127.0.0.1:8000/hook", "http://localhost/hook", "http://[::1]/hook"):
            response = client.post(f"/streams/{stream}/alerts", json={"question": "x", "webhook_url": url})
            assert response.status_code == 422 and response.json()["field"] == "body.webhook_url", url
            assert "destination policy" in response.json()["detail"]


def test_create_alert_when_stream_is_unknown_or_full_is_404_or_409(client, runtime, stream_id):
    assert client.post("/streams/nope/alerts", json={"question": "x"}).status_code == 404
    for _ in range(runtime.settings.alerts_max_per_stream):
        new_alert(client, stream_id)

    response = client.post(f"/streams/{stream_id}/alerts", json={"question": "x"})

    assert response.status_code == 409 and "VIDMEM_ALERTS_MAX_PER_STREAM" in response.json()["detail"]


def test_list_alerts_when_several_streams_filters_by_stream_and_state_newest_first(client, tmp_path, stream_id):
    clip = tmp_path / "other.mp4"
    clip.write_bytes(b"x")
    other = client.post("/streams", json={"source": str(clip)}).json()["id"]
    first = new_alert(client, stream_id)
    second = new_alert(client, other, active=False)
    third = new_alert(client, stream_id)

    everything = client.get("/alerts").json()
    mine = client.get(f"/streams/{stream_id}/alerts").json()
    by_query = client.get("/alerts", params={"stream_id": stream_id}).json()
    paused = client.get("/alerts", params={"active": "false"}).json()
    page = client.get("/alerts", params={"skip": 1, "limit": 1}).json()

    assert [a["id"] for a in everything["data"]] == [third["id"], second["id"], first["id"]]
    assert everything["count"] == 3
    assert [a["id"] for a in mine["data"]] == [third["id"], first["id"]] == [a["id"] for a in by_query["data"]]
    assert [a["id"] for a in paused["data"]] == [second["id"]]
    assert page["data"][0]["id"] == second["id"] and page["count"] == 3 and page["limit"] == 1
    assert client.get("/alerts", params={"stream_id": "nope"}).status_code == 404
    assert client.get("/alerts", params={"limit": 0}).json()["field"] == "query.limit"
    assert client.get("/alerts", params={"active": "perhaps"}).json()["field"] == "query.active"


def test_update_alert_when_paused_resumed_and_retimed_keeps_what_is_left_out(client, stream_id):
    alert = new_alert(client, stream_id, every_s=5, webhook_url="http://127.0.0.1:9/a")

    paused = client.patch(f"/alerts/{alert['id']}", json={"active": False}).json()
    resumed = client.patch(f"/alerts/{alert['id']}", json={"active": True, "every_s": None, "window_s": 12,
                                                          "webhook_url": None}).json()

    assert paused["active"] is False and paused["every_s"] == 5.0 and paused["webhook_url"] == "http://127.0.0.1:9/a"
    assert resumed["active"] is True and resumed["every_s"] is None and resumed["window_s"] == 12.0
    assert resumed["webhook_url"] is None and resumed["question"] == alert["question"]


BAD_UPDATES = [
    ({"question": "changed"}, "body.question"),
    ({"active": None}, "body.active"),
    ({"window_s": None}, "body.window_s"),
    ({"every_s": -5}, "body.every_s"),
    ({"active": 1}, "body.active"),
    ({"webhook_url": "http://192.168.1.1/x"}, "body.webhook_url"),
]


def test_update_alert_when_input_is_bad_is_422_and_changes_nothing(client, stream_id):
    alert = new_alert(client, stream_id)

    for body, field in BAD_UPDATES:
        response = client.patch(f"/alerts/{alert['id']}", json=body)

        assert response.status_code == 422 and response.json()["field"] == field, (body, response.text)
    assert client.get(f"/alerts/{alert['id']}").json() == {k: v for k, v in alert.items() if k != "signing_secret"}


def test_delete_alert_takes_its_events_and_deliveries_and_then_is_404(client, runtime, stream_id):
    alert = new_alert(client, stream_id)
    keep = new_alert(client, stream_id)
    store_event(runtime, alert, seq=0, deliveries=2)
    kept = store_event(runtime, keep, seq=0, deliveries=1)

    assert client.delete(f"/alerts/{alert['id']}").status_code == 204

    assert client.get(f"/alerts/{alert['id']}").status_code == 404
    assert client.delete(f"/alerts/{alert['id']}").status_code == 404
    assert count(runtime, AlertEvent) == 1 and count(runtime, AlertDelivery) == 1
    assert client.get(f"/events/{kept}").status_code == 200


# ------------------------------------------------------------------------------------------ events


def test_events_when_events_arrive_while_paging_pages_stay_stable_newest_first(client, runtime, stream_id):
    alert = new_alert(client, stream_id)
    other = new_alert(client, stream_id)
    ids = [store_event(runtime, alert, seq=seq, age_s=100 - seq) for seq in range(7)]  # seq 6 newest
    store_event(runtime, other, seq=0, age_s=500)  # the oldest of the stream's

    first = client.get(f"/alerts/{alert['id']}/events", params={"limit": 3}).json()
    store_event(runtime, alert, seq=7)  # a new event between two pages
    second = client.get(f"/alerts/{alert['id']}/events", params={"limit": 3, "cursor": first["next_cursor"]}).json()
    third = client.get(f"/alerts/{alert['id']}/events", params={"limit": 3, "cursor": second["next_cursor"]}).json()

    seen = [e["id"] for page in (first, second, third) for e in page["data"]]
    assert seen == ids[::-1], "every old event once, in order, none repeated or skipped"
    assert third["next_cursor"] is None
    by_stream = client.get("/events", params={"stream_id": stream_id, "limit": 100}).json()["data"]
    assert len(by_stream) == 9 and [e["seq"] for e in by_stream][:2] == [7, 6]
    assert len(client.get("/events").json()["data"]) == 9


def test_event_when_read_shows_its_times_answer_and_failed_deliveries(client, runtime, stream_id):
    alert = new_alert(client, stream_id)
    event_id = store_event(runtime, alert, seq=3, deliveries=2)

    event = client.get(f"/events/{event_id}").json()

    assert (event["seq"], event["t_start"], event["t_end"], event["answer"]) == (3, 6.0, 8.0, "yes")
    assert event["scores"] == {"yes": -0.2, "no": -1.7} and event["wall_start"] is None
    assert [(d["attempt"], d["status_code"], d["error"]) for d in event["deliveries"]] == [
        (1, 500, "HTTP 500"), (2, 500, "HTTP 500")]
    assert event["thumbnail_url"] is None and event["alert_id"] == alert["id"]


def test_thumbnail_when_event_has_one_is_a_jpeg_else_404(client, runtime, stream_id):
    alert = new_alert(client, stream_id)
    jpeg = jpeg_thumbnail(np.full((64, 96, 3), 200, np.uint8))
    with_thumb = store_event(runtime, alert, seq=0, thumbnail=jpeg)
    without = store_event(runtime, alert, seq=1)

    listed = client.get(f"/alerts/{alert['id']}/events").json()["data"]
    image = client.get(f"/events/{with_thumb}/thumbnail.jpg")

    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg" and image.content == jpeg
    assert {e["id"]: e["thumbnail_url"] for e in listed} == {
        with_thumb: f"/events/{with_thumb}/thumbnail.jpg", without: None}
    assert client.get(f"/events/{without}/thumbnail.jpg").status_code == 404
    assert client.get("/events/nope/thumbnail.jpg").status_code == 404


def test_events_when_query_is_bad_is_422_naming_it(client):
    for params, field in [({"cursor": "not-a-cursor"}, "query.cursor"), ({"cursor": "x" * 201}, "query.cursor"),
                          ({"cursor": "MjAyNnxhYmM"}, "query.cursor"), ({"limit": 201}, "query.limit"),
                          ({"limit": "ten"}, "query.limit"), ({"stream_id": "s" * 65}, "query.stream_id"),
                          ({"colour": "red"}, "query.colour"), ({"skip": 1}, "query.skip")]:
        response = client.get("/events", params=params)

        assert response.status_code == 422 and response.json()["field"] == field, (params, response.text)


def sse_events(response) -> list[dict[str, str]]:  # type: ignore[no-untyped-def]
    """The named events of a text/event-stream body, as dicts of their fields."""
    events, block = [], {}
    for line in [*response.iter_lines(), ""]:
        if line == "":
            if "event" in block:
                events.append(block)
            block = {}
            continue
        name, _, value = line.partition(":")
        block[name] = value.removeprefix(" ")
    return events


def test_stream_feed_when_an_alert_fires_sends_the_event(client, runtime, stream_id):
    runtime.settings.sse_max_s = 1.5
    alert = new_alert(client, stream_id)
    fired: list[str] = []
    later = threading.Timer(0.3, lambda: fired.append(store_event(runtime, alert, seq=4)))

    with client.stream("GET", f"/streams/{stream_id}/events") as response:
        later.start()
        events = sse_events(response)
    later.join()

    alerts_sent = [json.loads(e["data"]) for e in events if e["event"] == "alert"]
    assert [(e["id"], e["seq"], e["alert_id"]) for e in alerts_sent] == [(fired[0], 4, alert["id"])]
    assert alerts_sent[0] == client.get(f"/events/{fired[0]}").json(), "the same JSON as GET /events/{id}"


# ------------------------------------------------------------------------------------------ tenants


def test_alert_routes_when_called_by_another_tenant_answer_404_and_change_nothing(client, runtime, stream_id):
    alert = new_alert(client, stream_id)
    event_id = store_event(runtime, alert, seq=0, thumbnail=b"\xff\xd8jpeg")
    other = bearer(new_key(runtime.sessions, "tenant-b"))
    calls = [
        ("POST", f"/streams/{stream_id}/alerts", {"json": {"question": "x"}}),
        ("GET", f"/streams/{stream_id}/alerts", {}),
        ("GET", "/alerts", {"params": {"stream_id": stream_id}}),
        ("GET", f"/alerts/{alert['id']}", {}),
        ("PATCH", f"/alerts/{alert['id']}", {"json": {"active": False}}),
        ("DELETE", f"/alerts/{alert['id']}", {}),
        ("GET", f"/alerts/{alert['id']}/events", {}),
        ("GET", "/events", {"params": {"stream_id": stream_id}}),
        ("GET", f"/events/{event_id}", {}),
        ("GET", f"/events/{event_id}/thumbnail.jpg", {}),
    ]

    for method, path, parts in calls:
        response = client.request(method, path, headers=other, **parts)
        assert response.status_code == 404, (method, path, response.status_code)
    assert client.get("/alerts", headers=other).json() == {"data": [], "count": 0, "skip": 0, "limit": 50}
    assert client.get("/events", headers=other).json() == {"data": [], "next_cursor": None}
    assert client.get(f"/alerts/{alert['id']}").json()["active"] is True
    assert count(runtime, Alert) == 1 and count(runtime, AlertEvent) == 1
    assert client.get("/alerts", headers={"Authorization": "Bearer nope"}).status_code == 401


# ------------------------------------------------------------------------------------------ secrets, migration


def test_create_alert_when_distributed_without_secret_key_is_409_saying_what_to_set(settings, tmp_path, postgres_url):
    runtime = make_runtime(settings, tmp_path, postgres_url)
    runtime.settings.secret_key = None
    with TestClient(create_app(runtime)) as client:
        client.headers.update(bearer(new_key(runtime.sessions)))
        clip = tmp_path / "c.mp4"
        clip.write_bytes(b"x")
        stream = client.post("/streams", json={"source": str(clip)}).json()["id"]

        response = client.post(f"/streams/{stream}/alerts", json={"question": "x"})

    assert response.status_code == 409 and "VIDMEM_SECRET_KEY" in response.json()["detail"]
    assert count(runtime, Alert) == 0
    runtime.engine.dispose()


@pytest.mark.parametrize("database", ["sqlite", "postgres"])
def test_alerts_migration_when_downgraded_and_upgraded_again_drops_and_restores_the_tables(
        request, tmp_path, database):
    url = request.getfixturevalue("postgres_url") if database == "postgres" else f"sqlite:///{tmp_path / 'm.db'}"
    tables = {"alerts", "alert_events", "alert_deliveries"}
    db.upgrade(url)

    _downgrade(url, "0005")
    after_down = set(inspect(db.make_engine(url)).get_table_names())
    db.upgrade(url)
    after_up = set(inspect(db.make_engine(url)).get_table_names())

    assert not tables & after_down and "streams" in after_down
    assert tables <= after_up


def _downgrade(url: str, revision: str) -> None:
    from alembic import command

    command.downgrade(db.alembic_config(url), revision)
