"""Camera credentials out of plain text: streams.source_secret holds the encrypted full URL.

Existing rows keep their URL in ``source_url`` until the first ingest manager seals them
(``store.credentials.seal_plaintext``): a migration has no access to the key. A downgrade drops
the column, and with it the credentials of streams registered since (they are not decrypted back).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-01
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("streams", sa.Column("source_secret", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("streams") as batch:
        batch.drop_column("source_secret")
