"""Hostile input to the API (issue 17, defects 7, 8, 12, 13 and the busy-database half of 9).

Every case asserts the status, the message naming the field, and that nothing was stored; the
cases where PostgreSQL differs from SQLite (NUL bytes, offsets, column lengths) run on both.
"""

from __future__ import annotations

import json
import select
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import uvicorn
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, func
from sqlalchemy import select as sql_select

from api.main import create_app
from api.schemas import MAX_SKIP, Error
from store import repo
from store.models import Question, Stream
from tests.api.databases import (  # noqa: F401 - fixtures
    client_on_sqlite,
    client_with_default_key,
    make_runtime,
    new_stream,
    runtime_on_each_database,
    runtime_on_sqlite,
)
from tests.api_keys import authorise
from workers.runtime import Runtime

JSON = {"content-type": "application/json"}


def video(runtime: Runtime, name: str = "clip.mp4") -> str:
    path = Path(runtime.settings.file_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"not really a video")
    return str(path)


def stored(runtime: Runtime) -> tuple[int, int]:
    """(streams, questions) in the database, read past the API."""
    with runtime.sessions() as session:
        streams = session.scalar(sql_select(func.count()).select_from(Stream))
        questions = session.scalar(sql_select(func.count()).select_from(Question))
    return streams or 0, questions or 0


def assert_error(response, status: int, field: str | None, *words: str) -> dict:  # type: ignore[no-untyped-def]
    """The documented error body, with ``field`` named and ``words`` in its detail."""
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "field", "errors"} and Error.model_validate(body)
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], body
    return body


# defect 7: 500s on offsets, lone surrogates and NUL bytes ------------------------------------


def test_history_when_cursor_is_forged_returns_422_naming_cursor(client, runtime):
    stream_id = new_stream(client, runtime)

    for cursor in ["x" * 301, "bm90IGpzb24", "WyIyMDI2LTAxLTAxVDAwOjAwOjAwIiwxXQ", "\x00"]:
        response = client.get(f"/streams/{stream_id}/questions", params={"cursor": cursor})
        assert_error(response, 422, "query.cursor")


def test_history_when_limit_is_2_to_the_63_returns_422_naming_limit(client, runtime):
    stream_id = new_stream(client, runtime)

    response = client.get(f"/streams/{stream_id}/questions", params={"limit": 2**63})

    assert_error(response, 422, "query.limit")


def test_list_streams_when_skip_is_2_to_the_63_returns_422_naming_skip(client):
    response = client.get("/streams", params={"skip": 2**63})

    assert_error(response, 422, "query.skip", str(MAX_SKIP))


def test_ask_when_text_has_a_lone_surrogate_returns_422_and_stores_nothing(client, runtime):
    stream_id = new_stream(client, runtime)
    body = json.dumps({"text": "what \ud800 happened?"})  # valid JSON: the escape decodes to a lone surrogate

    response = client.post(f"/streams/{stream_id}/questions", content=body, headers=JSON)

    assert_error(response, 422, "body.text", "body.text", "unicode")
    assert stored(runtime) == (1, 0)


@pytest.mark.parametrize("field", ["source", "name"])
def test_create_stream_when_a_field_has_a_lone_surrogate_returns_422_naming_it(client, runtime, field):
    fields = {"source": video(runtime), "name": "door"}
    fields[field] = fields[field] + "\ud800"

    response = client.post("/streams", content=json.dumps(fields), headers=JSON)

    assert_error(response, 422, f"body.{field}", f"body.{field}", "unicode")
    assert stored(runtime) == (0, 0)


def test_list_streams_when_query_has_a_lone_surrogate_returns_422_naming_it(client):
    response = client.get("/streams?status=%ED%A0%80")  # the UTF-8-like bytes of U+D800

    assert_error(response, 422, "query.status", "query.status")


def test_ask_when_text_has_a_nul_byte_returns_422_and_stores_nothing(client, runtime):
    stream_id = new_stream(client, runtime)

    response = client.post(f"/streams/{stream_id}/questions", json={"text": "what\x00 happened?"})

    assert_error(response, 422, "body.text", "body.text", "control character (U+0000) at position 4")
    assert stored(runtime) == (1, 0)


def test_ask_when_text_has_line_breaks_and_tabs_is_queued(client, runtime):
    stream_id = new_stream(client, runtime)

    response = client.post(f"/streams/{stream_id}/questions", json={"text": "what happened\n\tat the door?"})

    assert response.status_code == 202, response.text
    assert stored(runtime) == (1, 1)


def test_create_stream_when_name_has_a_nul_byte_returns_422_and_stores_nothing(client, runtime):
    response = client.post("/streams", json={"source": video(runtime), "name": "door\x00cam"})

    assert_error(response, 422, "body.name", "body.name", "U+0000")
    assert stored(runtime) == (0, 0)


def test_create_stream_when_name_has_a_line_break_returns_422_and_stores_nothing(client, runtime):
    response = client.post("/streams", json={"source": video(runtime), "name": "door\ncam"})

    assert_error(response, 422, "body.name", "U+000A")
    assert stored(runtime) == (0, 0)


@pytest.mark.parametrize(
    ("method", "path", "field"),
    [
        ("GET", "/streams/a%00b", "stream_id"),
        ("DELETE", "/streams/a%00b", "stream_id"),
        ("GET", "/questions/a%00b", "question_id"),
        ("GET", "/streams/a%00b/questions", "stream_id"),
        ("POST", "/streams/a%00b/questions", "stream_id"),
    ],
)
def test_request_when_path_id_has_a_nul_byte_returns_404_naming_it(client, runtime, method, path, field):
    response = client.request(method, path, json={"text": "what?"} if method == "POST" else None)

    assert_error(response, 404, None, f"no {field} 'a\\x00b'", "control characters")
    assert stored(runtime) == (0, 0)


def test_create_stream_when_unnamed_and_source_is_long_cuts_the_name_to_its_column(client, runtime):
    """The name defaults to the source, which may be longer than PostgreSQL's varchar(200)."""
    source = video(runtime, "d" * 150 + "/" + "f" * 120 + ".mp4")

    response = client.post("/streams", json={"source": source})

    assert response.status_code == 201, response.text
    assert len(response.json()["name"]) == 200 and source.startswith(response.json()["name"])


# defect 12: time windows ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("window", "field", "words"),
    [
        ('"window_start": Infinity', "body.window_start", "finite"),
        ('"window_end": -Infinity', "body.window_end", "finite"),
        ('"window_start": NaN', "body.window_start", "finite"),
        ('"window_start": true', "body.window_start", "number"),
        ('"window_end": "10"', "body.window_end", "number"),
        ('"window_start": -1', "body.window_start", "greater than or equal to 0"),
        ('"window_start": 30, "window_end": 10', "body.window_end", "before window_start (30 s)"),
    ],
)
def test_ask_when_window_is_not_a_finite_ordered_time_returns_422_and_stores_nothing(
    client, runtime, window, field, words
):
    stream_id = new_stream(client, runtime)
    body = '{"text": "what happened?", ' + window + "}"  # raw: Python's json would write Infinity too

    response = client.post(f"/streams/{stream_id}/questions", content=body, headers=JSON)

    assert_error(response, 422, field, field, words)
    assert stored(runtime) == (1, 0)


def test_ask_when_window_is_an_empty_instant_in_integers_is_queued(client, runtime):
    stream_id = new_stream(client, runtime)

    response = client.post(f"/streams/{stream_id}/questions", json={"text": "now?", "window_start": 5, "window_end": 5})

    assert response.status_code == 202, response.text
    question = client.get(f"/questions/{response.json()['id']}").json()
    assert (question["window_start"], question["window_end"]) == (5.0, 5.0)


# defect 8: body limit, stream cap, bounded lists ----------------------------------------------


def test_create_stream_when_body_over_the_limit_returns_413_and_stores_nothing(sqlite_client, sqlite_runtime):
    body = json.dumps({"source": video(sqlite_runtime), "name": "x" * 70_000})

    response = sqlite_client.post("/streams", content=body, headers=JSON)

    assert_error(response, 413, None, "65536 bytes")
    assert stored(sqlite_runtime) == (0, 0)


def test_webrtc_offer_when_body_between_the_two_limits_is_read(sqlite_client):
    """SDP offers get their own, larger limit: a 100 KB offer reaches the route (which refuses the id)."""
    body = json.dumps({"sdp": "a=x\r\n" * 20_000, "type": "offer"})

    response = sqlite_client.post("/streams/bad id!/webrtc", content=body, headers=JSON)

    assert len(body) > 65_536
    assert_error(response, 422, None, "stream id must match")


def test_webrtc_offer_when_body_over_its_limit_returns_413(sqlite_client, sqlite_runtime):
    body = json.dumps({"sdp": "a=x\r\n" * 60_000, "type": "offer"})

    response = sqlite_client.post("/streams/cam/webrtc", content=body, headers=JSON)

    assert_error(response, 413, None, "262144 bytes")
    assert stored(sqlite_runtime) == (0, 0)


@pytest.fixture
def live_port(sqlite_runtime) -> Iterator[int]:  # type: ignore[no-untyped-def]
    """The app behind a real uvicorn on loopback, so bodies arrive as a server reads them."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    config = uvicorn.Config(create_app(sqlite_runtime), host="127.0.0.1", port=port, log_level="warning")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    yield port
    server.should_exit = True
    thread.join(timeout=10)


def send_until_answered(port: int, head: bytes, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send ``head`` then ``chunks`` until the server answers; the answer and the body bytes sent."""
    sent = 0
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32_768)
        sock.sendall(head)
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError):
                break
            sent += len(chunk)
        return read_answer(sock), sent


def read_answer(sock: socket.socket) -> bytes:
    """Everything the server sends until it closes or goes quiet for a second."""
    answer = b""
    while select.select([sock], [], [], 1 if answer else 10)[0]:
        try:
            data = sock.recv(65_536)
        except ConnectionResetError:
            break
        if not data:
            break
        answer += data
    return answer


def test_create_stream_when_chunked_body_grows_past_the_limit_is_refused_before_it_is_read(
    live_port, sqlite_runtime
):
    piece = b" " * 16_384
    frame = f"{len(piece):x}\r\n".encode() + piece + b"\r\n"
    head = (
        b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )

    answer, sent = send_until_answered(live_port, head, (frame for _ in range(200_000_000 // len(piece))))

    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert b"65536 bytes" in answer
    assert sent < 8_000_000, f"the server read {sent} bytes of a 200 MB body before refusing it"
    assert stored(sqlite_runtime) == (0, 0)


def test_create_stream_when_declared_length_is_200_mb_is_refused_before_any_body(live_port, sqlite_runtime):
    head = (
        b"POST /streams HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200000000\r\n\r\n"
    )

    answer, sent = send_until_answered(live_port, head, iter([]))

    assert answer.startswith(b"HTTP/1.1 413") and b"65536 bytes" in answer, answer[:200]
    assert sent == 0 and stored(sqlite_runtime) == (0, 0)


def test_create_stream_when_the_deployment_is_full_returns_409_and_stores_nothing(client, runtime):
    runtime.settings.max_streams = 2
    for i in range(2):
        new_stream(client, runtime, f"clip{i}.mp4")

    response = client.post("/streams", json={"source": video(runtime, "third.mp4")})

    assert_error(response, 409, None, "already has 2 streams", "VIDMEM_MAX_STREAMS")
    assert stored(runtime) == (2, 0)


def test_webrtc_offer_when_the_deployment_is_full_returns_409_and_creates_no_stream(client, runtime):
    runtime.settings.max_streams = 1
    new_stream(client, runtime)

    response = client.post("/streams/camA/webrtc", json={"sdp": "v=0", "type": "offer"})

    assert_error(response, 409, None, "already has 1 streams", "VIDMEM_MAX_STREAMS")
    assert stored(runtime) == (1, 0)


def test_list_streams_is_paginated_newest_first_and_filtered_by_status(client, runtime):
    ids = [new_stream(client, runtime, f"clip{i}.mp4") for i in range(3)]
    with runtime.sessions() as session:
        repo.set_stream_status(session, stream_id=ids[0], status="failed", reason="test")
        session.commit()

    first = client.get("/streams", params={"limit": 2}).json()
    second = client.get("/streams", params={"skip": 2, "limit": 2}).json()
    failed = client.get("/streams", params={"status": "failed"}).json()

    assert first["count"] == 3 and [s["id"] for s in first["data"]] == ids[::-1][:2]
    assert [s["id"] for s in second["data"]] == ids[:1]
    assert failed["count"] == 1 and [s["id"] for s in failed["data"]] == ids[:1]


@pytest.mark.parametrize(
    ("params", "field"),
    [({"limit": 201}, "query.limit"), ({"limit": 0}, "query.limit"), ({"status": "x"}, "query.status")],
)
def test_list_streams_when_page_or_filter_out_of_range_returns_422(sqlite_client, params, field):
    assert_error(sqlite_client.get("/streams", params=params), 422, field, field)


def test_metrics_when_streams_exceed_the_limit_lists_only_the_newest(sqlite_client, sqlite_runtime):
    sqlite_runtime.settings.metrics_max_streams = 2
    ids = [new_stream(sqlite_client, sqlite_runtime, f"clip{i}.mp4") for i in range(3)]
    for stream_id in ids:
        sqlite_client.post(f"/streams/{stream_id}/questions", json={"text": "what?"})

    text = sqlite_client.get("/metrics").text

    assert 'vidmem_streams{status="connecting"} 3' in text
    assert text.count("vidmem_stream_up{") == 2 and text.count("vidmem_questions{") == 2
    assert ids[0] not in text and ids[1] in text and ids[2] in text


# defect 13: one documented error schema -------------------------------------------------------


def test_openapi_documents_every_error_status_with_the_error_schema(sqlite_client):
    spec = sqlite_client.get("/openapi.json").json()
    error = {"$ref": "#/components/schemas/Error"}
    readiness = {"$ref": "#/components/schemas/Readiness"}

    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            responses = operation["responses"]
            for status in ("413", "422", "503"):
                if (path, status) == ("/readyz", "503"):  # a failed probe reports each check: its own schema
                    assert responses[status]["content"]["application/json"]["schema"] == readiness
                    continue
                assert responses[status]["content"]["application/json"]["schema"] == error, (method, path, status)
            if method != "get":
                assert responses["401"]["content"]["application/json"]["schema"] == error, (method, path)
    assert spec["paths"]["/streams"]["post"]["responses"]["409"]["content"]["application/json"]["schema"] == error
    assert "404" in spec["paths"]["/streams/{stream_id}"]["get"]["responses"]
    assert "HTTPValidationError" not in spec["components"]["schemas"]


def test_errors_from_every_source_share_the_documented_schema(sqlite_client, sqlite_runtime):
    answers = {
        "unknown path": (sqlite_client.get("/nowhere"), 404),
        "wrong method": (sqlite_client.put("/streams"), 405),
        "unknown stream": (sqlite_client.get("/streams/nosuchstream"), 404),
        "invalid JSON": (sqlite_client.post("/streams", content=b"{", headers=JSON), 422),
        "not UTF-8": (sqlite_client.post("/streams", content=b'{"source": "\xff"}', headers=JSON), 422),
        "missing field": (sqlite_client.post("/streams", json={}), 422),
    }
    sqlite_client.headers.pop("Authorization")
    answers["no key"] = (sqlite_client.post("/streams", json={"source": "x"}), 401)

    for what, (response, status) in answers.items():
        assert response.status_code == status, (what, response.text)
        assert set(response.json()) == {"detail", "field", "errors"}, what
        Error.model_validate(response.json())
    assert answers["missing field"][0].json()["field"] == "body.source"
    assert stored(sqlite_runtime) == (0, 0)


# overload: a busy database answers 503 at once ------------------------------------------------


def test_list_streams_when_the_pool_is_exhausted_returns_503_with_retry_after(settings, tmp_path):
    settings.api_pool_size, settings.api_pool_timeout_s = 1, 0.2
    runtime = make_runtime(settings, tmp_path)
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        authorise(client, runtime)
        with runtime.engine.connect():  # the pool's only connection, held as a slow request would
            started = time.monotonic()
            response = client.get("/streams")
            waited = time.monotonic() - started
        after = client.get("/streams")

    assert_error(response, 503, None, "database is busy")
    assert response.headers["retry-after"] == "1" and waited < 2.0, waited
    assert after.status_code == 200


def test_create_stream_when_sqlite_is_locked_returns_503_and_stores_nothing(sqlite_client, sqlite_runtime):
    source = video(sqlite_runtime)
    sqlite_runtime.engine  # noqa: B018 - migrated with the normal engine first
    impatient = create_engine(sqlite_runtime.settings.sqlalchemy_url, connect_args={"timeout": 0.2})
    sqlite_runtime.__dict__.update(engine=impatient)
    sqlite_runtime.__dict__.pop("sessions", None)
    lock = sqlite3.connect(sqlite_runtime.settings.sqlalchemy_url.removeprefix("sqlite:///"))
    try:
        lock.execute("BEGIN IMMEDIATE")  # another writer holds the database
        response = sqlite_client.post("/streams", json={"source": source})
    finally:
        lock.rollback()
        lock.close()

    assert_error(response, 503, None, "database is busy")
    assert response.headers["retry-after"] == "1"
    assert stored(sqlite_runtime) == (0, 0)
