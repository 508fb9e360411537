"""POST /streams against hostile sources: injection, inward destinations, local files, credentials at rest."""

from __future__ import annotations

import logging
import socket
import stat
import subprocess
import time
from collections.abc import Iterator

import pytest
import redis
from cryptography.fernet import Fernet
from fastapi.testclient import TestClient
from sqlalchemy import text

from api.main import create_app
from ingest.destinations import NETWORK_REFUSED
from store.credentials import KEY_FILE, unseal
from store.db import session_scope
from store.models import Stream
from tests.api_keys import authorise
from tests.conftest import make_settings
from tests.ingest.test_destinations import in_loopback_netns
from workers.app import create_celery
from workers.ingest_manager import IngestManager
from workers.runtime import Runtime

SECRETS = ("p@ss", "qs-secret", "namepw")
AWKWARD = "rtsp://u:p@ss@127.0.0.1:9/x?password=qs-secret"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stored_rows(runtime: Runtime) -> list[dict]:  # type: ignore[type-arg]
    with runtime.engine.connect() as conn:
        return [dict(row._mapping) for row in conn.execute(text("SELECT * FROM streams"))]


def assert_refused(response, message: str) -> None:  # type: ignore[no-untyped-def]
    assert response.status_code == 422, response.text
    body = response.json()
    assert body["field"] == "body.source" and body["detail"] == f"body.source: {message}", body


@pytest.fixture
def private_redis(tmp_path) -> Iterator[tuple[int, redis.Redis]]:
    """A redis-server of this test only, on a free loopback port."""
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
         "--dir", str(tmp_path)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                assert time.monotonic() < deadline, "redis-server did not start"
                time.sleep(0.05)
        yield port, client
    finally:
        client.close()
        server.terminate()
        server.wait(10)


def test_create_stream_when_source_has_crlf_returns_422_and_redis_sees_no_command(client, runtime, private_redis):
    port, spy = private_redis
    connections = spy.info("stats")["total_connections_received"]  # this client's own connection included
    # when a CRLF-laden RTSP URL aimed at the Redis is registered (loopback is allowed in the suite's settings)
    source = f"rtsp://127.0.0.1:{port}/x\r\nSET vidmem_ssrf pwned\r\nECHO"
    response = client.post("/streams", json={"source": source})
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.sync()  # an ingest manager would start whatever had been stored
    time.sleep(1.0)
    manager.stop()
    # then it is refused naming the field and the character, nothing is stored, and the Redis saw nobody
    assert_refused(response, "must not contain control, whitespace or non-printable characters "
                             f"(U+000D control at position {source.index(chr(13))})")
    assert stored_rows(runtime) == [] and client.get("/streams").json()["count"] == 0
    assert spy.info("stats")["total_connections_received"] == connections
    assert spy.exists("vidmem_ssrf") == 0 and "cmdstat_set" not in spy.info("commandstats")


def test_create_stream_when_destination_is_inward_returns_one_generic_422_and_stores_nothing(request, client, runtime):
    if not in_loopback_netns(request):
        return
    runtime.settings.allowed_networks = []  # the defaults: the suite's settings allow loopback
    for source in ["http://192.0.2.10/latest", "rtsp://198.51.100.7/x", "http://169.254.169.254/latest/meta-data",
                   "rtsp://localhost:6379/x", "http://[::ffff:127.0.0.1]:8000/streams", "http://10.0.0.1/x"]:
        assert_refused(client.post("/streams", json={"source": source}), NETWORK_REFUSED)
    assert stored_rows(runtime) == []


def test_create_stream_when_file_is_outside_the_dir_returns_the_same_422_whether_it_exists(client, runtime, tmp_path):
    allowed = tmp_path / "videos"
    allowed.mkdir()
    runtime.settings.file_dir = allowed
    database = runtime.settings.data_dir / "vidmem.sqlite3"
    assert runtime.engine is not None and database.is_file()  # the engine creates it on first use
    for source in ["/etc/shadow", "/etc/no-such-file", "/proc/self/environ", str(database), f"{allowed}/../x.mp4",
                   f"file://{database}"]:
        assert_refused(client.post("/streams", json={"source": source}), f"file sources must be under {allowed}")
    assert stored_rows(runtime) == []


@pytest.mark.parametrize("files", ["disabled", "in a folder"])
def test_create_stream_when_source_is_tilde_user_returns_422_not_500(client, runtime, tmp_path, files):
    runtime.settings.file_dir = None if files == "disabled" else tmp_path
    expected = "local files are disabled in the settings" if files == "disabled" else \
        f"no such file under {tmp_path}: ~nosuchuser/x"
    assert_refused(client.post("/streams", json={"source": "~nosuchuser/x"}), expected)
    assert stored_rows(runtime) == []


def test_create_stream_when_source_is_webrtc_returns_422_naming_the_webrtc_route(client, runtime):
    response = client.post("/streams", json={"source": "webrtc://camA"})
    assert_refused(response, "WebRTC streams are created by POST /streams/{id}/webrtc with the browser's offer")
    assert stored_rows(runtime) == []


@pytest.fixture(params=["sqlite", "postgresql"])
def backend(request, tmp_path) -> Iterator[tuple[TestClient, Runtime]]:
    """An API on SQLite (embedded: generated key file) or PostgreSQL (distributed: VIDMEM_SECRET_KEY)."""
    settings = make_settings(tmp_path)
    if request.param == "postgresql":
        settings.database_url = request.getfixturevalue("postgres_url")
        settings.secret_key = Fernet.generate_key().decode()
    settings.ensure_dirs()
    create_celery(settings)
    runtime = Runtime(settings, auto_upgrade=True)
    with TestClient(create_app(runtime)) as client:
        authorise(client, runtime)
        yield client, runtime


def test_create_stream_when_credentials_are_awkward_shows_logs_and_stores_none_in_plain_text(backend, caplog):
    client, runtime = backend
    caplog.set_level(logging.DEBUG)
    # when a source with an "@" in its password and a query-string password is registered, under a named URL
    response = client.post("/streams", json={"source": AWKWARD, "name": "rtsp://n:namepw@cam/x"})
    assert response.status_code == 201, response.text
    stream_id = response.json()["id"]
    # and its ingest runs (nothing listens: the status reason is written)
    manager = IngestManager(runtime, poll_seconds=0.1)
    manager.start()
    deadline = time.monotonic() + 20
    while not client.get(f"/streams/{stream_id}").json()["status_reason"] and time.monotonic() < deadline:
        time.sleep(0.1)
    manager.stop()
    shown = client.get(f"/streams/{stream_id}").json()
    # then no field, list, metric, log line or database column holds a secret
    assert shown["source"] == "rtsp://***@127.0.0.1:9/x?password=***" and shown["name"] == "rtsp://***@cam/x"
    assert shown["status_reason"], shown
    everything = response.text + client.get("/streams").text + client.get("/metrics").text + caplog.text
    rows = stored_rows(runtime)
    assert not [s for s in SECRETS if s in everything + repr(rows)], (everything, rows)
    # and the encrypted copy gives the ingest the URL as registered
    assert rows[0]["source_secret"] and rows[0]["source_url"] == shown["source"]
    with session_scope(runtime.sessions) as session:
        assert unseal(session.get(Stream, stream_id), runtime.settings) == AWKWARD


def test_create_stream_when_embedded_generates_a_private_key_file(client, runtime):
    assert client.post("/streams", json={"source": "rtsp://u:pw@127.0.0.1:9/x"}).status_code == 201
    key = runtime.settings.data_dir / KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600 and len(key.read_text().strip()) == 44


def test_create_stream_when_distributed_without_key_refuses_credentials_only(tmp_path, postgres_url):
    settings = make_settings(tmp_path)
    settings.database_url = postgres_url
    settings.ensure_dirs()
    runtime = Runtime(settings, auto_upgrade=True)
    with TestClient(create_app(runtime)) as client:
        authorise(client, runtime)
        refused = client.post("/streams", json={"source": "rtsp://u:pw@127.0.0.1:9/x"})
        assert [row["source_url"] for row in stored_rows(runtime)] == []
        plain = client.post("/streams", json={"source": "rtsp://127.0.0.1:9/x"})
    assert_refused(refused, "sources with credentials need VIDMEM_SECRET_KEY in distributed mode (one Fernet key, "
                            "the same on API and ingest machines)")
    assert plain.status_code == 201 and not (tmp_path / "data" / KEY_FILE).exists()


def test_sync_when_the_key_is_wrong_fails_the_stream_naming_the_setting(backend):
    client, runtime = backend
    stream_id = client.post("/streams", json={"source": "rtsp://u:pw@127.0.0.1:9/x"}).json()["id"]
    runtime.settings.secret_key = Fernet.generate_key().decode()  # not the key it was stored with
    manager = IngestManager(runtime)
    manager.sync()
    manager.stop()
    shown = client.get(f"/streams/{stream_id}").json()
    assert shown["status"] == "failed" and "VIDMEM_SECRET_KEY differs" in shown["status_reason"], shown


def test_sync_when_a_row_predates_encryption_seals_its_credentials(backend):
    client, runtime = backend
    with session_scope(runtime.sessions) as session:  # as a row stored before migration 0002
        session.add(Stream(id="legacy", name="legacy", source_url="rtsp://u:old-pw@127.0.0.1:9/x", stats={}))
    manager = IngestManager(runtime)
    manager.sync()
    manager.stop()
    [row] = stored_rows(runtime)
    assert row["source_url"] == "rtsp://***@127.0.0.1:9/x" and "old-pw" not in repr(row)
    with session_scope(runtime.sessions) as session:
        assert unseal(session.get(Stream, "legacy"), runtime.settings) == "rtsp://u:old-pw@127.0.0.1:9/x"
