"""Per-stream settings and deletion that keeps history (issue 18).

``streams.settings``: the stream's own sampling, chunking, compression specs and budgets (JSON; a
missing key means the deployment default). ``streams.deleted_at``: set when a stream is deleted
with ``?history=keep``. (``streams.media_epoch`` came with 0004.)

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("deleted_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("deleted_at")
        batch.drop_column("settings")
