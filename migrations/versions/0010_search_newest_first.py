"""SQLite search pages read the full-text matches newest first (issue 18's latency).

A search page used to walk the tenant's questions newest first, testing each against the set of
matches: its cost grew with every newer question that did not match (4-6 ms for a common word behind
4,000 newer questions). FTS5 itself returns matches by rowid, newest insert first, at no cost; but
insert order is not quite ``created_at`` order (writers race, old rows were backfilled in id order).
So ``questions_fts_rows`` gains ``created_max``: the largest ``created_at`` of its row and every row
before it in rowid order, kept by the insert trigger. ``store.history`` reads matches in rowid order
and stops once its page's last row is newer than ``created_max`` just below what it read: no match
left unread can belong on the page. Deleted rows leave ``created_max`` an upper bound, which is safe.
PostgreSQL is untouched.

A later migration that rebuilds ``questions`` on SQLite must create ``INSERT_TRIGGER`` again.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_ROW = "(SELECT rowid FROM questions_fts_rows WHERE question_id = new.id)"
_LAST_MAX = "(SELECT created_max FROM questions_fts_rows WHERE created_max IS NOT NULL ORDER BY rowid DESC LIMIT 1)"
INSERT_TRIGGER = (
    "CREATE TRIGGER questions_fts_insert AFTER INSERT ON questions BEGIN "
    f"INSERT INTO questions_fts_rows (question_id, created_max) VALUES (new.id, "
    f"max(new.created_at, coalesce({_LAST_MAX}, new.created_at))); "
    f"INSERT INTO questions_fts (rowid, text, answer) VALUES ({_ROW}, new.text, coalesce(new.answer, '')); END"
)
OLD_INSERT_TRIGGER = (  # 0005's
    "CREATE TRIGGER questions_fts_insert AFTER INSERT ON questions BEGIN "
    "INSERT INTO questions_fts_rows (question_id) VALUES (new.id); "
    f"INSERT INTO questions_fts (rowid, text, answer) VALUES ({_ROW}, new.text, coalesce(new.answer, '')); END"
)
BACKFILL = (
    "UPDATE questions_fts_rows SET created_max = w.running FROM ("
    "SELECT r.rowid AS row_id, max(q.created_at) OVER (ORDER BY r.rowid ROWS UNBOUNDED PRECEDING) AS running "
    "FROM questions_fts_rows r JOIN questions q ON q.id = r.question_id) AS w "
    "WHERE w.row_id = questions_fts_rows.rowid"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("ALTER TABLE questions_fts_rows ADD COLUMN created_max DATETIME")
    op.execute(BACKFILL)
    op.execute("DROP TRIGGER questions_fts_insert")
    op.execute(INSERT_TRIGGER)


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute("DROP TRIGGER questions_fts_insert")
    op.execute(OLD_INSERT_TRIGGER)
    op.execute("ALTER TABLE questions_fts_rows DROP COLUMN created_max")
