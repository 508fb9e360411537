"""Property-based run of the app's own OpenAPI (schemathesis): no 5xx, no answer off its schema.

All of schemathesis' checks but one run: no server error, response schema, status code, content
type and header conformance, invalid data refused, ``Allow`` on 405, and the rest.

Every operation gets generated valid and invalid requests (25 examples each: 30+ operations), bounded
so the whole run stays within a minute on one core. It runs on SQLite with the embedded broker. The WebRTC
offer route is left out: a well-formed offer waits for a live ingest (``vidmem serve``) and
answers 503 without one, which this check would count as a server error; its input checks
are tested in tests/api/test_hostile_input.py and its offers in tests/ingest/test_webrtc_api.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, settings
from schemathesis.checks import positive_data_acceptance

from api.main import create_app
from store import repo
from store.db import session_scope
from tests.api_keys import bearer, new_key
from workers.app import create_celery
from workers.runtime import Runtime

NOT_IN_A_SCHEMA = [positive_data_acceptance]
"""Every check runs but this one: a source must exist and a window must not end before it starts,
which no JSON schema says, so some schema-valid requests are rightly refused with 422."""


@pytest.fixture
def schema_runtime(settings, tmp_path) -> Runtime:  # type: ignore[no-untyped-def]
    settings.file_dir = tmp_path
    (tmp_path / "0").write_bytes(b"not really a video")
    settings.worker_dead_after_s = 3600.0  # one heartbeat (below) keeps /readyz ready for the whole run
    settings.ensure_dirs()
    create_celery(settings)
    runtime = Runtime(settings, auto_upgrade=True)
    with session_scope(runtime.sessions) as session:  # a worker is up: /readyz answers 200, so its 5xx counts
        repo.beat_worker(session, worker_id="fuzz", hostname="localhost", pid=os.getpid(), queues="chunks")
    return runtime


_KEY: dict[str, str] = {}
"""The running test's API key, for the auth provider below."""


@pytest.fixture
def api_key(schema_runtime) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Every generated request carries a valid key (the generated ones without it are schemathesis' own)."""
    _KEY["token"] = new_key(schema_runtime.sessions)
    yield _KEY["token"]
    _KEY.clear()


@pytest.fixture
def api_schema(schema_runtime):  # type: ignore[no-untyped-def]
    """The live app's schema.

    A file named "0" (the first source hypothesis tries) makes some generated streams real. The
    stream cap stays at its default, far above what the run creates: a full deployment answers
    409 before it looks at the source, which would hide the source checks from the run.
    """
    app = create_app(schema_runtime)
    with TestClient(app):  # runs the app's startup once, as a server would
        yield schemathesis.openapi.from_asgi("/openapi.json", app)


schema = schemathesis.pytest.from_fixture("api_schema").exclude(path_regex="/webrtc$")


@schema.auth()
class ApiKeyAuth:
    """The key as schemathesis' auth, not as a header passed to ``call``: its auth checks then remove or spoil
    it knowingly, and a negative case whose only violation is a missing header is not counted as accepted
    invalid data once the key is put back (schemathesis/schemathesis#3355)."""

    def get(self, case, context) -> str:  # type: ignore[no-untyped-def]
        return _KEY["token"]

    def set(self, case, data: str, context) -> None:  # type: ignore[no-untyped-def]
        case.headers = {**(case.headers or {}), **bearer(data)}


@schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
def test_api_when_fuzzed_answers_no_5xx_and_follows_its_schema(case, api_key):  # type: ignore[no-untyped-def]
    case.call_and_validate(excluded_checks=NOT_IN_A_SCHEMA)
