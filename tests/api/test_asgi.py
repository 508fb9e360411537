"""``api.asgi``: the app each of several API processes (``VIDMEM_API_WORKERS``) builds from the environment."""

from __future__ import annotations

import gc

from fastapi.testclient import TestClient

from api import asgi
from tests.api_keys import bearer, new_key
from workers.runtime import Runtime


def test_an_api_process_builds_its_app_from_the_settings_its_parent_passed_in_the_environment(settings, monkeypatch):
    # given settings as `vidmem api` passes them down, on a schema the parent upgraded
    settings.ensure_dirs()
    Runtime(settings, auto_upgrade=True).engine  # noqa: B018
    for name, value in settings.model_copy(update={"api_workers": 2}).to_env().items():
        monkeypatch.setenv(name, value)
    # when a worker process calls the factory
    try:
        app = asgi.app()
        # then its startup heap is out of the collector's walk (a full collection over it stalled requests 170 ms)
        assert gc.get_freeze_count() > 100_000
    finally:
        gc.unfreeze()
    # and it serves the same deployment: the same data folder, its keys, its auth mode
    runtime = app.state.runtime
    assert runtime.settings.data_dir == settings.data_dir and runtime.settings.api_workers == 2
    key = new_key(runtime.sessions)
    with TestClient(app) as client:
        assert client.get("/streams", headers=bearer(key)).status_code == 200
        assert client.get("/streams").status_code == 401
