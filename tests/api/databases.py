"""An API client on SQLite or PostgreSQL, for tests whose routes touch database-specific SQL (issue 18).

No worker runs: questions and chunk tasks go to the embedded file broker and stay there.

The fixtures here replace ``runtime`` and ``client`` of tests/api/conftest.py (SQLite only, server errors
raised) in the modules that import them; they are named for what they give so that the import reads as
such and no test parameter shadows an imported name::

    from tests.api.databases import client_with_default_key, runtime_on_each_database  # noqa: F401 - fixtures

A test narrows the databases with ``@pytest.mark.parametrize("runtime", ["sqlite"], indirect=True)``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from store.models import DEFAULT_TENANT
from tests.api_keys import authorise
from vidmem.settings import Settings
from workers.app import create_celery
from workers.runtime import Runtime

DATABASES = ["sqlite", "postgres"]


def database_url(request: pytest.FixtureRequest) -> str | None:
    """The URL for a fixture parametrised with ``DATABASES``: None (embedded SQLite) or a fresh PostgreSQL database."""
    return request.getfixturevalue("postgres_url") if request.param == "postgres" else None


def make_runtime(settings: Settings, tmp_path: Path, database_url: str | None = None) -> Runtime:
    """A runtime whose file sources must lie in a folder of this test's own (``new_stream`` writes there)."""
    settings.file_dir = tmp_path / "videos"
    settings.file_dir.mkdir(exist_ok=True)
    if database_url:
        settings.database_url = database_url
    settings.ensure_dirs()
    create_celery(settings)
    return Runtime(settings, auto_upgrade=True)


@contextmanager
def api_client(runtime: Runtime, tenant: str = DEFAULT_TENANT) -> Iterator[TestClient]:
    """A client with a key of ``tenant``; server errors come back as 500s (never raised)."""
    with TestClient(create_app(runtime), raise_server_exceptions=False) as client:
        authorise(client, runtime, tenant)
        yield client
    runtime.engine.dispose()


def new_stream(client: TestClient, runtime: Runtime, name: str = "clip.mp4", **fields) -> str:  # type: ignore[no-untyped-def]
    """A stream on a file that is not a video (ingest never runs here): its id."""
    path = Path(runtime.settings.file_dir) / name
    path.write_bytes(b"not really a video")
    response = client.post("/streams", json={"source": str(path), **fields})
    assert response.status_code == 201, response.text
    return response.json()["id"]


@pytest.fixture(name="runtime", params=DATABASES)
def runtime_on_each_database(request, settings, tmp_path) -> Iterator[Runtime]:  # type: ignore[no-untyped-def]
    """``runtime``, once on the embedded SQLite and once on a fresh PostgreSQL database."""
    runtime = make_runtime(settings, tmp_path, database_url(request))
    yield runtime
    runtime.engine.dispose()


@pytest.fixture(name="client")
def client_with_default_key(runtime) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """``client``: ``api_client`` on the test's ``runtime``."""
    with api_client(runtime) as client:
        yield client


@pytest.fixture(name="sqlite_runtime")
def runtime_on_sqlite(settings, tmp_path) -> Runtime:  # type: ignore[no-untyped-def]
    """``sqlite_runtime``: for tests of a module on both databases whose subject is not the database."""
    return make_runtime(settings, tmp_path)


@pytest.fixture(name="sqlite_client")
def client_on_sqlite(sqlite_runtime) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """``sqlite_client``: ``api_client`` on ``sqlite_runtime``."""
    with api_client(sqlite_runtime) as client:
        yield client
