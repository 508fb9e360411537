"""Durable snapshots of each stream's memory, restored after Redis loses it (issue 19).

``memory_snapshots`` holds one row per stream: the memory record (safetensors + JSON, the memory
store's encoding) with its version and last applied chunk. On PostgreSQL the blob is stored
uncompressed (``STORAGE EXTERNAL``): float features barely compress, and trying costs every write.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "memory_snapshots",
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("last_seq", sa.Integer(), nullable=False),
        sa.Column("record", sa.LargeBinary(), nullable=False),
        sa.Column("saved_at", sa.DateTime(timezone=True), nullable=False),
    )
    if op.get_bind().dialect.name == "postgresql":
        op.execute("ALTER TABLE memory_snapshots ALTER COLUMN record SET STORAGE EXTERNAL")


def downgrade() -> None:
    op.drop_table("memory_snapshots")
