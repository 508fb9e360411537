from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from tests.api_keys import authorise
from workers.app import create_celery
from workers.runtime import Runtime


@pytest.fixture
def runtime(settings):  # type: ignore[no-untyped-def]
    settings.ensure_dirs()
    create_celery(settings)  # enqueueing goes to the embedded file broker; no worker needed here
    return Runtime(settings, auto_upgrade=True)


@pytest.fixture
def client(runtime):  # type: ignore[no-untyped-def]
    """A client that sends a valid key of the default tenant (the tenant of rows made through ``store.repo``)."""
    with TestClient(create_app(runtime)) as test_client:
        authorise(test_client, runtime)
        yield test_client


@pytest.fixture
def video_file(tmp_path):  # type: ignore[no-untyped-def]
    path = tmp_path / "clip.mp4"
    path.write_bytes(b"not really a video, but a file")
    return path


@pytest.fixture
def stream_id(client, video_file) -> str:  # type: ignore[no-untyped-def]
    response = client.post("/streams", json={"source": str(video_file)})
    assert response.status_code == 201, response.text
    return response.json()["id"]
