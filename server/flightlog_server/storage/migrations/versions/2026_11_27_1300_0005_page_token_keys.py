"""page token keys: the secrets that sign resume tokens, shared by every server process

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-27 09:35:00.000000+00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Empty on purpose: the first server that lists something generates the key (see
    # storage/page_token_keys.py), so the secret never appears in a migration or its logs.
    op.create_table(
        "page_token_keys",
        sa.Column("key_id", sa.SmallInteger(), autoincrement=False, nullable=False),
        sa.Column("secret", sa.LargeBinary(), nullable=False),
        sa.Column(
            "created", sa.DateTime(timezone=True), server_default=sa.text("now()"), nullable=False
        ),
        sa.CheckConstraint("key_id BETWEEN 1 AND 255", name=op.f("ck_page_token_keys_key_id")),
        sa.CheckConstraint("octet_length(secret) = 32", name=op.f("ck_page_token_keys_secret")),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_page_token_keys")),
    )


def downgrade() -> None:
    op.drop_table("page_token_keys")
