"""Per-stream chunk leases, worker heartbeats, delivery attempts of chunks, the holder of a question.

``stream_leases`` replaces ordering by retry (one chain of chunk tasks per stream); ``workers``
holds one heartbeat row per live worker process; ``chunks.attempts`` and ``questions.worker_id``
let the surviving workers re-queue, or fail after ``max_attempts``, what a dead worker held;
``ix_chunks_status`` serves their recovery check, which looks for pending chunks every few seconds.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("chunks", sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
    op.add_column("questions", sa.Column("worker_id", sa.String(32), nullable=True))
    op.create_index("ix_chunks_status", "chunks", ["status"])
    op.create_table(
        "stream_leases",
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("token", sa.Integer(), nullable=False),
        sa.Column("state", sa.String(20), nullable=False),
        sa.Column("holder", sa.String(32), nullable=True),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    op.create_table(
        "workers",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("beat_at", sa.DateTime(timezone=True), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("workers")
    op.drop_table("stream_leases")
    op.drop_index("ix_chunks_status", table_name="chunks")
    with op.batch_alter_table("questions") as batch:
        batch.drop_column("worker_id")
    with op.batch_alter_table("chunks") as batch:
        batch.drop_column("attempts")
