"""one-statement session writes: the record's revision spliced in SQL; record versions

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 11:00:00+00:00

* ``flightlog_revision_field(revision)``: field 14 (``revision``) of a serialized Session, a
  varint. The statement that stores a session takes the org's revision and appends this to the
  record encoded in Python (see ``storage.sessions``).
* ``flightlog_retry(reason)``: raises a serialization failure (SQLSTATE 40001), which the server
  answers by running the transaction again. A statement uses it to give up when what it read
  changed under it (a concurrent create took a ``request_id``, a custom field left Ready), so
  that COMMIT can be sent with it without waiting for its result.
* ``change_feeds``: the org's change-feed revision moves out of ``orgs`` (a global table, to be
  replicated to every node when the schema is distributed by ``org_id``) into a tenant table of
  its own, so that a write of sessions touches rows of its org only.
* ``sessions.record_version``: the version of the encoding that wrote ``wire_record``, so that
  records written by an older encoder can be found and rewritten (``admin reencode-sessions``).
  Every record stored so far was written by version 1.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # The tag byte 0x70 (field 14, varint), then the value 7 bits a byte, least significant
    # first, the high bit set on every byte but the last. Revisions are positive.
    op.execute(
        """
        CREATE FUNCTION flightlog_revision_field(revision bigint) RETURNS bytea
        LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE
        RETURN '\\x70'::bytea || (
            SELECT string_agg(
                set_byte('\\x00'::bytea, 0,
                         ((revision >> (7 * i)) & 127)::int
                         | CASE WHEN revision >> (7 * (i + 1)) > 0 THEN 128 ELSE 0 END),
                ''::bytea ORDER BY i)
            FROM generate_series(0, 8) AS i
            WHERE i = 0 OR revision >> (7 * i) > 0)
        """
    )
    op.execute(
        """
        CREATE FUNCTION flightlog_retry(reason text) RETURNS boolean
        LANGUAGE plpgsql VOLATILE
        AS $$ BEGIN RAISE EXCEPTION USING ERRCODE = 'serialization_failure', MESSAGE = reason; END $$
        """
    )
    op.add_column(
        "sessions",
        sa.Column("record_version", sa.SmallInteger(), server_default=sa.text("1"), nullable=False),
    )
    op.create_index(op.f("ix_sessions_record_version"), "sessions", ["record_version"])
    op.create_table(
        "change_feeds",
        sa.Column("org_id", sa.String(length=64), nullable=False),
        sa.Column("revision", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"],
            ["orgs.org_id"],
            name=op.f("fk_change_feeds_org_id_orgs"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_change_feeds")),
    )
    op.execute(
        "INSERT INTO change_feeds (org_id, revision) SELECT org_id, revision FROM orgs"
        " WHERE revision > 0"
    )
    op.drop_column("orgs", "revision")


def downgrade() -> None:
    op.add_column(
        "orgs",
        sa.Column("revision", sa.BigInteger(), server_default=sa.text("0"), nullable=False),
    )
    op.execute(
        "UPDATE orgs SET revision = f.revision FROM change_feeds f WHERE f.org_id = orgs.org_id"
    )
    op.drop_table("change_feeds")
    op.drop_index(op.f("ix_sessions_record_version"), table_name="sessions")
    op.drop_column("sessions", "record_version")
    op.execute("DROP FUNCTION flightlog_retry(text)")
    op.execute("DROP FUNCTION flightlog_revision_field(bigint)")
