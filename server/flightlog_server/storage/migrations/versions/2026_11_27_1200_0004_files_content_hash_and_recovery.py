"""files: content hash and recovery from damaged recordings; datasets found by name

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-27 09:17:25.023881+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index(op.f("ix_datasets_org_id_name"), "datasets", ["org_id", "name"], unique=False)
    # Nullable columns without defaults: adding them rewrites nothing, existing files keep none.
    op.add_column("files", sa.Column("content_sha256", sa.String(length=64), nullable=True))
    op.add_column("files", sa.Column("recovery_reason", sa.String(length=16), nullable=True))
    op.add_column("files", sa.Column("recovery_detail", sa.Text(), nullable=True))
    op.add_column("files", sa.Column("recovery_message_count", sa.BigInteger(), nullable=True))
    op.add_column("files", sa.Column("recovery_readable_bytes", sa.BigInteger(), nullable=True))
    op.create_check_constraint(
        op.f("ck_files_content_sha256"), "files", "content_sha256 ~ '^[0-9a-f]{64}$'"
    )
    op.create_check_constraint(
        op.f("ck_files_recovery_reason"), "files", "recovery_reason IN ('truncated', 'corrupt')"
    )
    op.create_check_constraint(
        op.f("ck_files_recovery"),
        "files",
        "(recovery_reason IS NULL) = (recovery_detail IS NULL)"
        " AND (recovery_reason IS NULL) = (recovery_message_count IS NULL)"
        " AND (recovery_reason IS NULL) = (recovery_readable_bytes IS NULL)",
    )
    op.create_index(
        op.f("ix_files_org_id_content_sha256"), "files", ["org_id", "content_sha256"], unique=False
    )
    op.create_index(
        "ix_files_recovered",
        "files",
        ["org_id", "file_id"],
        unique=False,
        postgresql_where=sa.text("recovery_reason IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index(
        "ix_files_recovered",
        table_name="files",
        postgresql_where=sa.text("recovery_reason IS NOT NULL"),
    )
    op.drop_index(op.f("ix_files_org_id_content_sha256"), table_name="files")
    op.drop_constraint(op.f("ck_files_recovery"), "files", type_="check")
    op.drop_constraint(op.f("ck_files_recovery_reason"), "files", type_="check")
    op.drop_constraint(op.f("ck_files_content_sha256"), "files", type_="check")
    op.drop_column("files", "recovery_readable_bytes")
    op.drop_column("files", "recovery_message_count")
    op.drop_column("files", "recovery_detail")
    op.drop_column("files", "recovery_reason")
    op.drop_column("files", "content_sha256")
    op.drop_index(op.f("ix_datasets_org_id_name"), table_name="datasets")
