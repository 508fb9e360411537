"""Persistence: SQLAlchemy models and sessions, the per-stream memory store, the frame blob store."""
