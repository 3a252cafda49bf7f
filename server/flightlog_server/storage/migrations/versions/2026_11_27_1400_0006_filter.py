"""metric values by (metric, value): the index that filters and orders on metrics walk

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-27 13:20:00.000000+00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(
        op.f("ix_session_metric_values_org_id_metric_id_value_session_id"),
        "session_metric_values",
        ["org_id", "metric_id", "value", "session_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_session_metric_values_org_id_metric_id_value_session_id"),
        table_name="session_metric_values",
    )
