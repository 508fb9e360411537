"""The app of one API process among ``VIDMEM_API_WORKERS`` (uvicorn's workers share the port).

``vidmem api`` / ``vidmem serve`` checked the settings and the schema, then passed the settings down
in the environment (``Settings.to_env``); each process builds its own runtime from them.
"""

from __future__ import annotations

from fastapi import FastAPI

from api.main import create_app, freeze_startup_heap
from vidmem.settings import Settings
from workers.app import create_celery
from workers.runtime import Runtime


def app() -> FastAPI:
    """uvicorn's factory (``api.asgi:app``, ``factory=True``): called once in every worker process."""
    settings = Settings()
    create_celery(settings)
    app = create_app(Runtime(settings, auto_upgrade=False))
    freeze_startup_heap()
    return app
