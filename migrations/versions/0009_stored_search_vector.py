"""PostgreSQL search reads a stored tsvector instead of computing one per row (issue 18's latency).

A history search walks the tenant's questions newest first and keeps those that match, so every row
it passes is tested. With the expression index of 0005 each test computed ``to_tsvector`` again
(about 7 us a row: a page of 50 for a common word cost 1.5 ms of the database's CPU); the generated
column ``questions_fts_vector`` holds it, and the GIN index moves onto the column. SQLite keeps its
FTS5 table: nothing changes there.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-03
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOCUMENT = "to_tsvector('english'::regconfig, coalesce(text, '') || ' ' || coalesce(answer, ''))"


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute(f"ALTER TABLE questions ADD COLUMN questions_fts_vector tsvector "
               f"GENERATED ALWAYS AS ({DOCUMENT}) STORED")
    op.execute("DROP INDEX IF EXISTS questions_fts_gin")
    op.execute("CREATE INDEX questions_fts_gin ON questions USING gin (questions_fts_vector)")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("DROP INDEX IF EXISTS questions_fts_gin")
    op.execute("ALTER TABLE questions DROP COLUMN questions_fts_vector")
    op.execute(f"CREATE INDEX questions_fts_gin ON questions USING gin ({DOCUMENT})")
