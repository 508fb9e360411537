"""Celery app, thin tasks, and the services that wire ingest, vlm, compression and store."""
