"""Tenant isolation, driven from the app's own route list so that a new route cannot skip it (issue 18).

Tenant A makes one of everything (a stream, a question, ...). Then, for every ``APIRoute`` of
the app and every method:

- without a key, every route but the public ones (``PUBLIC``) answers 401;
- as tenant B, a route with path parameters, filled with A's ids, answers 404 (exactly as for a
  missing id), and all B's calls together change nothing in the database;
- as tenant B, a collection (a GET without path parameters) shows none of A's ids.

Path parameters are filled from ``FACTORIES``, one entry per parameter name; a route with a name
that has no factory fails the test. Routes that need a body or a query parameter to get past
validation take it from ``REQUESTS``; one that has none fails too. Extending either is one line.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from cryptography.fernet import Fernet
from fastapi import FastAPI
from fastapi.routing import APIRoute, iter_route_contexts
from fastapi.testclient import TestClient
from sqlalchemy import select

from api.deps import SessionDep, TenantDep
from api.main import create_app
from store import repo
from store.db import session_scope
from store.models import Alert, AlertEvent, Base
from tests.api_keys import bearer, new_key
from workers.app import create_celery
from workers.runtime import Runtime

PUBLIC = {
    ("GET", "/health"), ("GET", "/healthz"), ("GET", "/readyz"),  # liveness and readiness for orchestrators
    ("GET", "/"), ("GET", "/webcam"),  # the pages: they ask for a key, then call the API with it
    ("GET", "/docs"), ("GET", "/redoc"), ("GET", "/openapi.json"),  # the API's description: no tenant data
}
PUBLIC_PREFIXES = ("/static/", "/docs/")
"""Static assets of the page and of /docs (local copies, so both work offline)."""

NOT_TENANT_DATA = {"api_keys"}
"""Tables a request may write whoever calls: ``last_used_at`` of the caller's own key."""


@dataclass
class World:
    """Tenant A's rows, made on demand through the API itself and remembered by parameter name."""

    client: TestClient
    runtime: Runtime
    key_a: str
    key_b: str
    clip: Path
    ids: dict[str, str] = field(default_factory=dict)

    def id(self, name: str) -> str:
        if name not in self.ids:
            self.ids[name] = FACTORIES[name](self)
        return self.ids[name]

    def post_as_a(self, path: str, body: dict[str, Any], status: int) -> dict[str, Any]:
        response = self.client.post(path, json=body, headers=bearer(self.key_a))
        assert response.status_code == status, (path, response.text)
        return response.json()


def _stream(world: World) -> str:
    return world.post_as_a("/streams", {"source": str(world.clip), "name": "tenant A's camera"}, 201)["id"]


def _question(world: World) -> str:
    return world.post_as_a(f"/streams/{world.id('stream_id')}/questions", {"text": "what moved?"}, 202)["id"]


def _alert(world: World) -> str:
    body = {"question": "is anyone at the door?"}
    return world.post_as_a(f"/streams/{world.id('stream_id')}/alerts", body, 201)["id"]


def _event(world: World) -> str:
    """An event of A's alert, as a worker stores it when the alert fires (no route makes events)."""
    with session_scope(world.runtime.sessions) as session:
        alert = session.get(Alert, world.id("alert_id"))
        assert alert is not None
        event = AlertEvent(alert_id=alert.id, tenant_id=alert.tenant_id, stream_id=alert.stream_id, seq=0,
                           t_start=0.0, t_end=2.0, answer="yes", scores={}, thumbnail=b"\xff\xd8 a JPEG")
        session.add(event)
        session.flush()
        return event.id


FACTORIES: dict[str, Callable[[World], str]] = {
    "stream_id": _stream,
    "question_id": _question,
    "alert_id": _alert,
    "event_id": _event,
}
"""An id tenant A owns for each path parameter name; a route with a name missing here fails the test."""

REQUESTS: dict[tuple[str, str], Callable[[World], dict[str, Any]]] = {
    ("POST", "/streams"): lambda w: {"json": {"source": str(w.clip)}},
    ("POST", "/streams/{stream_id}/questions"): lambda w: {"json": {"text": "what did tenant A see?"}},
    ("POST", "/streams/{stream_id}/webrtc"): lambda w: {"json": {"sdp": "v=0\r\n", "type": "offer"}},
    ("PATCH", "/streams/{stream_id}"): lambda w: {"json": {"name": "renamed by tenant B"}},
    ("DELETE", "/streams/{stream_id}"): lambda w: {"params": {"history": "delete"}},
    ("GET", "/questions/export"): lambda w: {"params": {"format": "jsonl"}},
    ("POST", "/streams/{stream_id}/alerts"): lambda w: {"json": {"question": "did tenant B see it?"}},
    ("PATCH", "/alerts/{alert_id}"): lambda w: {"json": {"active": False}},
}
"""Body or query parameters a route needs to get past validation, so that the tenant check is what answers."""


def is_public(method: str, path: str) -> bool:
    return (method, path) in PUBLIC or path.startswith(PUBLIC_PREFIXES)


def api_routes(app: FastAPI) -> Iterator[tuple[str, Any]]:
    """(method, route) of every APIRoute, with the prefix and dependencies of the routers that include it.

    ``app.routes`` holds included routers as such (FastAPI >= 0.16x); ``iter_route_contexts`` is how
    FastAPI's own OpenAPI generator walks them, so this sees exactly the routes /openapi.json sees, and
    the ones hidden from it too.
    """
    for route in iter_route_contexts(app.routes):
        if isinstance(route.original_route, APIRoute):
            for method in sorted(route.methods):
                yield method, route


def needs_request_parts(route: Any) -> bool:
    required_query = any(param.field_info.is_required() for param in route.dependant.query_params)
    return required_query or (route.body_field is not None and route.body_field.field_info.is_required())


def call(world: World, method: str, route: Any, key: str | None) -> Any:
    """The route with A's ids in its path, as the holder of ``key`` (no key: None)."""
    names = [param.name for param in route.dependant.path_params]
    path = route.path_format.format(**{name: world.id(name) for name in names})
    parts = REQUESTS[(method, route.path)](world) if (method, route.path) in REQUESTS else {}
    headers = bearer(key) if key else {}
    return world.client.request(method, path, headers=headers, **parts)


def missing_fixtures(app: FastAPI) -> list[str]:
    """Routes the fixture cannot drive: a path parameter without a factory, or required parts without a request."""
    problems = []
    for method, route in api_routes(app):
        for param in route.dependant.path_params:
            if param.name not in FACTORIES:
                problems.append(f"{method} {route.path}: no factory for path parameter {param.name!r} in FACTORIES")
        if needs_request_parts(route) and (method, route.path) not in REQUESTS:
            problems.append(f"{method} {route.path}: needs a body or query parameters: add it to REQUESTS")
    return problems


def without_key_failures(app: FastAPI, world: World) -> list[str]:
    failures = []
    for method, route in api_routes(app):
        if is_public(method, route.path):
            continue
        response = call(world, method, route, key=None)
        if response.status_code != 401 or response.headers.get("www-authenticate") != "Bearer":
            failures.append(f"{method} {route.path} without a key: {response.status_code}, not 401")
    return failures


def cross_tenant_failures(app: FastAPI, world: World) -> list[str]:
    """Tenant B calls every route that names ids with A's ids: each must be 404, like a missing id."""
    failures = []
    for method, route in api_routes(app):
        if not route.dependant.path_params or is_public(method, route.path):
            continue
        response = call(world, method, route, key=world.key_b)
        if response.status_code != 404:
            failures.append(f"{method} {route.path} as tenant B with A's ids: {response.status_code}, not 404")
        elif any(value in response.text for value in world.ids.values() if value not in response.request.url.path):
            failures.append(f"{method} {route.path} as tenant B: the 404 names another of A's ids")
    return failures


def list_leaks(app: FastAPI, world: World) -> tuple[list[str], set[str]]:
    """Collections (GETs without path parameters) as B must show none of A's ids; and which ones A's show."""
    failures, seen_by_a = [], set()
    for method, route in api_routes(app):
        if method != "GET" or route.dependant.path_params or is_public(method, route.path):
            continue
        as_b, as_a = call(world, method, route, key=world.key_b), call(world, method, route, key=world.key_a)
        leaked = sorted(name for name, value in world.ids.items() if value in as_b.text)
        if as_b.status_code != 200 or leaked:
            failures.append(f"GET {route.path} as tenant B: {as_b.status_code}, shows A's {leaked}")
        if any(value in as_a.text for value in world.ids.values()):
            seen_by_a.add(route.path)
    return failures, seen_by_a


def tenant_rows(runtime: Runtime) -> dict[str, list[str]]:
    """Every row of every table holding tenant data, as text: what B's calls must leave as they were."""
    rows = {}
    with runtime.sessions() as session:
        for table in Base.metadata.sorted_tables:
            if table.name not in NOT_TENANT_DATA:
                rows[table.name] = sorted(json.dumps(list(row), default=str) for row in session.execute(select(table)))
    return rows


def isolation_failures(app: FastAPI, world: World, runtime: Runtime) -> list[str]:
    """Everything wrong with the app's isolation, as sentences (empty: isolated)."""
    problems = missing_fixtures(app)
    if problems:
        return problems
    for name in sorted({p.name for _, route in api_routes(app) for p in route.dependant.path_params}):
        world.id(name)  # made before the snapshot, by A
    before = tenant_rows(runtime)
    failures = without_key_failures(app, world) + cross_tenant_failures(app, world)
    if tenant_rows(runtime) != before:
        failures.append("calls without a key or as tenant B changed tenant A's rows")
    leaks, seen_by_a = list_leaks(app, world)
    if "/streams" not in seen_by_a:
        failures.append("GET /streams as tenant A does not show A's stream: the list check proves nothing")
    return failures + leaks


@pytest.fixture(params=["sqlite", "postgres"])
def runtime(request, settings) -> Iterator[Runtime]:  # type: ignore[no-untyped-def]
    if request.param == "postgres":
        settings.database_url = request.getfixturevalue("postgres_url")
        settings.secret_key = Fernet.generate_key().decode()  # distributed: alerts' webhook secrets need it
    settings.ensure_dirs()
    create_celery(settings)  # questions go to the embedded file broker; no worker runs
    runtime = Runtime(settings, auto_upgrade=True)
    yield runtime
    runtime.engine.dispose()


@pytest.fixture
def app(runtime) -> FastAPI:  # type: ignore[no-untyped-def]
    return create_app(runtime)


@pytest.fixture
def world(app, runtime, tmp_path) -> Iterator[World]:  # type: ignore[no-untyped-def]
    clip = tmp_path / "clip.mp4"  # under file_dir (the suite's settings allow pytest's temporary root)
    clip.write_bytes(b"not really a video")
    with TestClient(app, raise_server_exceptions=False) as client:
        yield World(client, runtime, new_key(runtime.sessions, "tenant-a"), new_key(runtime.sessions, "tenant-b"), clip)


def test_every_route_when_called_as_another_tenant_answers_404_and_lists_show_nothing(app, world, runtime):
    b_stream = world.client.post("/streams", json={"source": str(world.clip)}, headers=bearer(world.key_b))

    failures = isolation_failures(app, world, runtime)

    assert b_stream.status_code == 201, b_stream.text
    assert failures == [], "\n".join(failures)
    assert set(FACTORIES) >= {"stream_id", "question_id"} and set(world.ids) >= {"stream_id", "question_id"}


def test_every_route_when_called_without_a_key_answers_401_unless_public(app, world):
    public = sorted({route.path for method, route in api_routes(app) if is_public(method, route.path)})
    checked = [route.path for method, route in api_routes(app) if not is_public(method, route.path)]

    failures = without_key_failures(app, world)

    assert failures == [], "\n".join(failures)
    assert "/health" in public and "/streams" in checked and "/metrics" in checked, (public, checked)


# the checks themselves: a route that leaks, or that the fixture cannot drive, fails -----------------------


@pytest.fixture
def sqlite_only(runtime) -> None:  # type: ignore[no-untyped-def]
    if runtime.settings.database_url:
        pytest.skip("the checker's own tests need one database")


def test_isolation_check_when_a_route_forgets_the_tenant_reports_it(app, world, runtime, sqlite_only):
    @app.get("/leak/{stream_id}")
    def leak(stream_id: str, session: SessionDep, tenant: TenantDep) -> dict[str, str]:
        return {"name": repo.get_stream(session, stream_id).name}  # no tenant_id: reads any tenant's stream

    @app.get("/leaky-list")
    def leaky_list(session: SessionDep, tenant: TenantDep) -> list[str]:
        return [stream.id for stream in repo.list_streams(session)]

    @app.get("/open/{stream_id}")
    def open_route(stream_id: str) -> dict[str, str]:
        return {"id": stream_id}

    failures = isolation_failures(app, world, runtime)

    assert any(re.match(r"GET /leak/\{stream_id\} as tenant B with A's ids: 200", f) for f in failures), failures
    assert any(f.startswith("GET /leaky-list as tenant B: 200, shows A's ['stream_id']") for f in failures), failures
    assert "GET /open/{stream_id} without a key: 200, not 401" in failures, failures


def test_isolation_check_when_a_route_has_an_unknown_parameter_or_needs_a_body_fails(app, world, runtime, sqlite_only):
    @app.get("/gadgets/{gadget_id}")
    def gadget(gadget_id: str, tenant: TenantDep) -> dict[str, str]:
        return {"id": gadget_id}

    @app.post("/gadgets")
    def make_gadget(body: dict[str, str], tenant: TenantDep) -> dict[str, str]:
        return body

    failures = isolation_failures(app, world, runtime)

    assert "GET /gadgets/{gadget_id}: no factory for path parameter 'gadget_id' in FACTORIES" in failures
    assert "POST /gadgets: needs a body or query parameters: add it to REQUESTS" in failures
