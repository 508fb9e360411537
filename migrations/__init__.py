"""Alembic environment and versions for the store models."""
