"""Question fields for history: relative and wall-clock windows, overrides, cancel/retry, full-text search (issue 18).

Full-text search is each database's own and is not described by the models (``store.db.MODEL_LESS_PREFIX``
hides it from autogenerate):

- SQLite: an FTS5 table ``questions_fts`` (its own copy of text and answer, porter stemming) whose rowid
  comes from ``questions_fts_rows`` (an INTEGER PRIMARY KEY per question id: stable across VACUUM,
  unlike the implicit rowid of ``questions``), kept by three triggers on ``questions``.
- PostgreSQL: a GIN index on the tsvector expression ``store.history.PG_TSVECTOR`` uses.

A later migration that rebuilds ``questions`` on SQLite (``batch_alter_table`` with a recreate) drops
its triggers: it must create them again (``SQLITE_TRIGGERS`` below) or search stops seeing new rows.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

COLUMNS = (
    ("window_last", sa.Float()), ("covered_start", sa.Float()), ("covered_end", sa.Float()),
    ("media_epoch", sa.DateTime(timezone=True)), ("stage2", sa.String(300)), ("llm_budget", sa.Integer()),
    ("max_answer_tokens", sa.Integer()), ("specs", sa.JSON()), ("memory_tokens", sa.Integer()),
)
INDEXES = (
    ("ix_questions_tenant_created", ["tenant_id", "created_at"]),
    ("ix_questions_status_queued", ["status", "queued_at"]),
    ("ix_questions_stream_updated", ["stream_id", "updated_at"]),
)

PG_INDEX = (
    "CREATE INDEX questions_fts_gin ON questions USING gin "
    "(to_tsvector('english'::regconfig, coalesce(text, '') || ' ' || coalesce(answer, '')))"
)

SQLITE_TABLES = (
    "CREATE TABLE questions_fts_rows (rowid INTEGER PRIMARY KEY, question_id VARCHAR(32) NOT NULL UNIQUE)",
    "CREATE VIRTUAL TABLE questions_fts USING fts5(text, answer, tokenize='porter unicode61 remove_diacritics 2')",
)
_ROW = "(SELECT rowid FROM questions_fts_rows WHERE question_id = {}.id)"
SQLITE_TRIGGERS = (
    "CREATE TRIGGER questions_fts_insert AFTER INSERT ON questions BEGIN "
    "INSERT INTO questions_fts_rows (question_id) VALUES (new.id); "
    f"INSERT INTO questions_fts (rowid, text, answer) VALUES ({_ROW.format('new')}, new.text, "
    "coalesce(new.answer, '')); END",
    "CREATE TRIGGER questions_fts_update AFTER UPDATE OF text, answer ON questions BEGIN "
    "UPDATE questions_fts SET text = new.text, answer = coalesce(new.answer, '') "
    f"WHERE rowid = {_ROW.format('new')}; END",
    "CREATE TRIGGER questions_fts_delete AFTER DELETE ON questions BEGIN "
    f"DELETE FROM questions_fts WHERE rowid = {_ROW.format('old')}; "
    "DELETE FROM questions_fts_rows WHERE question_id = old.id; END",
)
SQLITE_BACKFILL = (
    "INSERT INTO questions_fts_rows (question_id) SELECT id FROM questions",
    "INSERT INTO questions_fts (rowid, text, answer) SELECT r.rowid, q.text, coalesce(q.answer, '') "
    "FROM questions q JOIN questions_fts_rows r ON r.question_id = q.id",
)


def upgrade() -> None:
    for name, kind in COLUMNS:
        op.add_column("questions", sa.Column(name, kind, nullable=True))
    # queue and change times of existing rows: their creation (then NOT NULL, like created_at)
    op.add_column("questions", sa.Column("queued_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("questions", sa.Column("updated_at", sa.DateTime(timezone=True), nullable=True))
    op.execute("UPDATE questions SET queued_at = created_at, updated_at = coalesce(finished_at, created_at)")
    with op.batch_alter_table("questions") as batch:  # a rebuild on SQLite: before the triggers exist
        batch.alter_column("queued_at", existing_type=sa.DateTime(timezone=True), nullable=False)
        batch.alter_column("updated_at", existing_type=sa.DateTime(timezone=True), nullable=False)
    for name, columns in INDEXES:
        op.create_index(name, "questions", columns)
    if op.get_bind().dialect.name == "postgresql":
        op.execute(PG_INDEX)
    else:
        for statement in (*SQLITE_TABLES, *SQLITE_BACKFILL, *SQLITE_TRIGGERS):
            op.execute(statement)


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS questions_fts_gin")
    else:  # first, so that the rebuild below finds no trigger naming a dropped table
        for name in ("questions_fts_insert", "questions_fts_update", "questions_fts_delete"):
            op.execute(f"DROP TRIGGER IF EXISTS {name}")
        op.execute("DROP TABLE IF EXISTS questions_fts")
        op.execute("DROP TABLE IF EXISTS questions_fts_rows")
    for name, _ in INDEXES:
        op.drop_index(name, table_name="questions")
    with op.batch_alter_table("questions") as batch:
        for name in ("updated_at", "queued_at", *reversed([name for name, _ in COLUMNS])):
            batch.drop_column(name)
