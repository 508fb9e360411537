"""Standing questions (alerts), their events and webhook deliveries (issue 18).

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _when(name: str, nullable: bool = True) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("question", sa.Text(), nullable=False),
        sa.Column("options", sa.JSON(), nullable=False),
        sa.Column("fire_on", sa.JSON(), nullable=False),
        sa.Column("every_s", sa.Float(), nullable=True),
        sa.Column("window_s", sa.Float(), nullable=False),
        sa.Column("cooldown_s", sa.Float(), nullable=False),
        sa.Column("webhook_url", sa.Text(), nullable=True),
        sa.Column("webhook_url_secret", sa.Text(), nullable=True),
        sa.Column("signing_secret", sa.Text(), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        _when("created_at", False),
        _when("updated_at", False),
        sa.Column("last_eval_seq", sa.Integer(), nullable=True),
        sa.Column("last_eval_t", sa.Float(), nullable=True),
        sa.Column("last_answered_seq", sa.Integer(), nullable=True),
        sa.Column("last_answer", sa.Text(), nullable=True),
        _when("last_answered_at"),
        sa.Column("last_fired_t", sa.Float(), nullable=True),
    )
    op.create_index("ix_alerts_stream_id", "alerts", ["stream_id"])
    op.create_index("ix_alerts_tenant_created", "alerts", ["tenant_id", "created_at"])
    op.create_table(
        "alert_events",
        sa.Column("id", sa.String(32), primary_key=True),
        sa.Column("alert_id", sa.String(32), sa.ForeignKey("alerts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tenant_id", sa.String(64), nullable=False),
        sa.Column("stream_id", sa.String(32), sa.ForeignKey("streams.id", ondelete="CASCADE"), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("t_start", sa.Float(), nullable=False),
        sa.Column("t_end", sa.Float(), nullable=False),
        _when("wall_start"),
        _when("wall_end"),
        sa.Column("answer", sa.Text(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("thumbnail", sa.LargeBinary(), nullable=True),
        sa.Column("delivery_status", sa.String(20), nullable=False),
        _when("created_at", False),
        sa.UniqueConstraint("alert_id", "seq", name="uq_alert_events_alert_seq"),
    )
    for name, columns in (("alert", ["alert_id", "created_at"]), ("stream", ["stream_id", "created_at"]),
                          ("tenant", ["tenant_id", "created_at"])):
        op.create_index(f"ix_alert_events_{name}_created", "alert_events", columns)
    op.create_table(
        "alert_deliveries",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("event_id", sa.String(32), sa.ForeignKey("alert_events.id", ondelete="CASCADE"), nullable=False),
        sa.Column("attempt", sa.Integer(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _when("attempted_at", False),
        sa.Column("duration_ms", sa.Float(), nullable=True),
        _when("next_retry_at"),
        _when("delivered_at"),
        sa.UniqueConstraint("event_id", "attempt", name="uq_alert_deliveries_event_attempt"),
    )


def downgrade() -> None:
    op.drop_table("alert_deliveries")
    for name in ("tenant", "stream", "alert"):
        op.drop_index(f"ix_alert_events_{name}_created", table_name="alert_events")
    op.drop_table("alert_events")
    op.drop_index("ix_alerts_tenant_created", table_name="alerts")
    op.drop_index("ix_alerts_stream_id", table_name="alerts")
    op.drop_table("alerts")
