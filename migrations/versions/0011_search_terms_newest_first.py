"""PostgreSQL search reads each word's questions newest first, from a term table (issue 18's latency).

A search page walked the tenant's questions newest first and tested each one's tsvector, so its cost
grew with every newer question that did not match: 4,200 such questions cost 1-3 ms of the database's
CPU a page, and the GIN index finds matches only in no order. ``questions_fts_terms`` holds one row per
(question, lexeme) of ``questions_fts_vector``, kept by a trigger, with a btree that reads one lexeme's
questions newest first: a page reads a batch of a word's questions in order and tests only those
(``store.history._pg_search``), as SQLite reads its FTS5 matches (0010). The GIN index, which no
search uses any more, goes: a POST writes the term rows instead. SQLite: nothing changes.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

SYNC = """
CREATE FUNCTION questions_fts_terms_sync() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        DELETE FROM questions_fts_terms WHERE question_id = OLD.id;
    END IF;
    INSERT INTO questions_fts_terms (question_id, tenant_id, lexeme, created_at)
    SELECT NEW.id, NEW.tenant_id, lexeme, NEW.created_at
    FROM unnest(tsvector_to_array(NEW.questions_fts_vector)) AS lexeme;
    RETURN NULL;
END
$$
"""


def upgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("""
        CREATE TABLE questions_fts_terms (
            question_id varchar(32) NOT NULL REFERENCES questions (id) ON DELETE CASCADE,
            tenant_id varchar(64) NOT NULL,
            lexeme text NOT NULL,
            created_at timestamptz NOT NULL,
            PRIMARY KEY (question_id, lexeme)
        )""")
    op.execute("""
        INSERT INTO questions_fts_terms (question_id, tenant_id, lexeme, created_at)
        SELECT q.id, q.tenant_id, t.lexeme, q.created_at
        FROM questions AS q, unnest(tsvector_to_array(q.questions_fts_vector)) AS t (lexeme)""")
    op.execute("CREATE INDEX questions_fts_terms_newest ON questions_fts_terms "
               "(tenant_id, lexeme, created_at DESC, question_id DESC)")
    op.execute(SYNC)
    op.execute("CREATE TRIGGER questions_fts_terms_sync AFTER INSERT OR UPDATE OF text, answer, tenant_id, created_at "
               "ON questions FOR EACH ROW EXECUTE FUNCTION questions_fts_terms_sync()")
    op.execute("DROP INDEX IF EXISTS questions_fts_gin")


def downgrade() -> None:
    if op.get_bind().dialect.name != "postgresql":
        return
    op.execute("CREATE INDEX questions_fts_gin ON questions USING gin (questions_fts_vector)")
    op.execute("DROP TRIGGER questions_fts_terms_sync ON questions")
    op.execute("DROP FUNCTION questions_fts_terms_sync()")
    op.execute("DROP TABLE questions_fts_terms")
