"""API keys: hashed at rest, compared in constant time, revoked at once; the open mode (issue 18)."""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text

from api.main import create_app
from store import keys, repo
from store.db import session_scope
from store.models import DEFAULT_TENANT, ApiKey, Stream
from tests.api.databases import runtime_on_each_database  # noqa: F401 - fixtures
from tests.api_keys import bearer, new_key
from workers.runtime import Runtime

UNAUTHORIZED = "missing, wrong or revoked API key"


@pytest.fixture
def app_client(runtime) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A client that sends no key of its own."""
    with TestClient(create_app(runtime)) as client:
        yield client


def test_create_key_stores_only_the_digest_of_its_secret(runtime):
    token = new_key(runtime.sessions, "acme")
    key_id, secret = keys.parse(token)  # type: ignore[misc]

    with runtime.engine.connect() as conn:
        rows = [tuple(map(str, row)) for row in conn.execute(text("SELECT * FROM api_keys"))]

    assert len(secret) >= 43  # 256 random bits
    assert len(rows) == 1 and rows[0][0] == key_id
    assert hashlib.sha256(secret.encode()).hexdigest() in rows[0]
    assert not any(secret in value or token in value for value in rows[0]), rows


def test_create_key_when_sqlite_file_is_read_whole_the_secret_is_nowhere(settings):
    settings.ensure_dirs()
    runtime = Runtime(settings, auto_upgrade=True)
    token = new_key(runtime.sessions, "acme")
    runtime.engine.dispose()

    raw = b"".join(path.read_bytes() for path in settings.data_dir.glob("vidmem.sqlite3*"))

    assert token.split("_", 2)[2].encode() not in raw


def test_authenticate_compares_digests_with_hmac_compare_digest(runtime, monkeypatch):
    token = new_key(runtime.sessions, "acme")
    key_id, secret = keys.parse(token)  # type: ignore[misc]
    calls: list[tuple[str, str]] = []
    compare = hmac.compare_digest

    def spy(a: str, b: str) -> bool:
        calls.append((a, b))
        return compare(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    with session_scope(runtime.sessions) as session:
        right = keys.authenticate(session.connection(), token)
        wrong = keys.authenticate(session.connection(), f"vm_{key_id}_{secret[:-1]}x")
        unknown = keys.authenticate(session.connection(), f"vm_{'0' * 16}_{secret}")
        malformed = keys.authenticate(session.connection(), "not-a-key")

    assert right is not None and right.tenant_id == "acme"
    assert wrong is None and unknown is None and malformed is None
    assert len(calls) == 4, "every attempt, even an unknown id, makes one constant-time comparison"
    assert calls[0] == (keys.digest(secret), keys.digest(secret))


def test_requests_when_key_missing_wrong_or_revoked_return_401_with_www_authenticate(runtime, app_client):
    token = new_key(runtime.sessions, "acme")
    key_id, secret = keys.parse(token)  # type: ignore[misc]
    other = new_key(runtime.sessions, "acme")
    with session_scope(runtime.sessions) as session:
        keys.revoke_key(session, keys.parse(other)[0])  # type: ignore[index]

    answers = {
        "missing": app_client.get("/streams"),
        "not bearer": app_client.get("/streams", headers={"Authorization": f"Basic {token}"}),
        "malformed": app_client.get("/streams", headers=bearer("vm_short")),
        "wrong secret": app_client.get("/streams", headers=bearer(f"vm_{key_id}_{secret[::-1]}")),
        "unknown id": app_client.get("/streams", headers=bearer(f"vm_{'f' * 16}_{secret}")),
        "revoked": app_client.get("/streams", headers=bearer(other)),
        "write, revoked": app_client.post("/streams", json={"source": "x"}, headers=bearer(other)),
    }
    good = app_client.get("/streams", headers=bearer(token))

    for what, response in answers.items():
        assert response.status_code == 401, (what, response.text)
        assert response.headers["www-authenticate"] == "Bearer", what
        assert response.json()["detail"] == UNAUTHORIZED, what
    assert good.status_code == 200, good.text


def test_hot_routes_when_key_missing_wrong_or_revoked_return_401_before_reading_the_body(runtime, app_client):
    # ask and history check the key in their own database hop (api.deps.as_tenant), not in get_tenant
    token = new_key(runtime.sessions, "acme")
    key_id, secret = keys.parse(token)  # type: ignore[misc]
    other = new_key(runtime.sessions, "acme")
    with session_scope(runtime.sessions) as session:
        keys.revoke_key(session, keys.parse(other)[0])  # type: ignore[index]
        stream_id = repo.create_stream(session, name="cam", source_url="rtsp://192.0.2.1/cam", tenant_id="acme").id
    ask = f"/streams/{stream_id}/questions"

    answers = {
        "history, missing": app_client.get("/questions"),
        "history, malformed": app_client.get("/questions", headers=bearer("vm_short")),
        "history, wrong secret": app_client.get("/questions", headers=bearer(f"vm_{key_id}_{secret[::-1]}")),
        "history, revoked": app_client.get("/questions?q=car", headers=bearer(other)),
        "stream history, unknown id": app_client.get(ask, headers=bearer(f"vm_{'f' * 16}_{secret}")),
        "ask, missing, bad body": app_client.post(ask, json={"windw": 3}),
        "ask, malformed, bad body": app_client.post(ask, json={"windw": 3}, headers=bearer("vm_short")),
        "ask, revoked": app_client.post(ask, json={"text": "what moved?"}, headers=bearer(other)),
    }
    good = app_client.post(ask, json={"text": "what moved?"}, headers=bearer(token))

    for what, response in answers.items():
        assert response.status_code == 401, (what, response.text)
        assert response.headers["www-authenticate"] == "Bearer", what
        assert response.json()["detail"] == UNAUTHORIZED, what
    assert good.status_code == 202, good.text
    history = app_client.get("/questions", headers=bearer(token)).json()["data"]
    assert [q["id"] for q in history] == [good.json()["id"]], "the revoked key's question was not queued"


def test_revoke_key_when_in_use_refuses_the_next_request(runtime, app_client):
    token = new_key(runtime.sessions, "acme")

    before = app_client.get("/streams", headers=bearer(token))
    with session_scope(runtime.sessions) as session:
        first = keys.revoke_key(session, keys.parse(token)[0]).revoked_at  # type: ignore[index]
    with session_scope(runtime.sessions) as session:
        again = keys.revoke_key(session, keys.parse(token)[0]).revoked_at  # type: ignore[index]
    after = app_client.get("/streams", headers=bearer(token))

    assert before.status_code == 200 and after.status_code == 401
    assert again == first, "revoking twice keeps the first time"


def test_authenticate_records_last_use_at_most_once_a_minute(runtime, app_client):
    token = new_key(runtime.sessions, "acme")
    key_id = keys.parse(token)[0]  # type: ignore[index]

    def last_used():  # type: ignore[no-untyped-def]
        with session_scope(runtime.sessions) as session:
            return session.scalar(select(ApiKey.last_used_at).where(ApiKey.id == key_id))

    unused = last_used()
    app_client.get("/streams", headers=bearer(token))
    first = last_used()
    app_client.get("/streams", headers=bearer(token))

    assert unused is None and first is not None
    assert last_used() == first


def test_create_key_when_tenant_is_not_a_short_name_raises(runtime):
    with session_scope(runtime.sessions) as session:
        for tenant in ("", "a b", "x" * 65, "-lead", "é"):
            with pytest.raises(ValueError, match="is not valid"):
                keys.create_key(session, tenant_id=tenant)


def test_create_app_when_open_mode_binds_a_public_address_refuses(settings):
    settings.auth = "open"
    for host in ("0.0.0.0", "::", "192.0.2.1", "camera.example.org"):
        settings.api_host = host
        with pytest.raises(ValueError, match="loopback"):
            create_app(Runtime(settings))
    for host in ("127.0.0.1", "::1", "localhost", "127.0.0.2"):
        settings.api_host = host
        create_app(Runtime(settings))


def test_open_mode_on_loopback_serves_without_a_key_in_the_default_tenant(runtime, app_client):
    runtime.settings.auth = "open"
    clip = runtime.settings.file_dir / "clip.mp4"
    clip.write_bytes(b"not really a video")
    foreign = new_key(runtime.sessions, "acme")

    created = app_client.post("/streams", json={"source": str(clip)})
    listed = app_client.get("/streams")
    with_key = app_client.get("/streams", headers=bearer(foreign))  # a key changes nothing in the open mode

    assert created.status_code == 201, created.text
    assert listed.status_code == 200 and listed.json()["count"] == 1
    assert with_key.status_code == 200 and with_key.json()["count"] == 1
    with session_scope(runtime.sessions) as session:
        assert session.scalars(select(Stream.tenant_id)).all() == [DEFAULT_TENANT]


def test_openapi_documents_the_bearer_scheme_on_tenant_routes(app_client):
    spec = app_client.get("/openapi.json").json()

    scheme = spec["components"]["securitySchemes"]["APIKey"]
    assert (scheme["type"], scheme["scheme"]) == ("http", "bearer") and "vidmem keys create" in scheme["description"]
    assert spec["paths"]["/streams"]["get"]["security"] == [{"APIKey": []}]
    assert "401" in spec["paths"]["/streams/{stream_id}"]["get"]["responses"]
