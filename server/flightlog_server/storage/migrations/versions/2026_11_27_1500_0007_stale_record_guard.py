"""stale records never leave the database unnoticed: flightlog_stale_record()

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 15:00:00.000000+00:00

* ``flightlog_stale_record(session_id)``: raises SQLSTATE ``FL001`` naming the session. A
  listing's statement calls it instead of returning a stored record that an older encoding
  wrote, so that the server rewrites such records (``storage.sessions.lock_stale_in_org``) and
  reads the page again, rather than send a record that lacks a field of the current ``Session``.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute(
        """
        CREATE FUNCTION flightlog_stale_record(session_id text) RETURNS bytea
        LANGUAGE plpgsql VOLATILE
        AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'FL001', MESSAGE = session_id; END $$
        """
    )


def downgrade() -> None:
    op.execute("DROP FUNCTION flightlog_stale_record(text)")
