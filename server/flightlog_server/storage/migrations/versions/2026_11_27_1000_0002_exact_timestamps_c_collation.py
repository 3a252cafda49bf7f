"""exact custom-field timestamps; code-point order for the text listings sort by

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 10:00:00+00:00

* ``session_custom_field_values.timestamp_value`` (``timestamptz``, microseconds) becomes
  ``timestamp_ns`` (``numeric(21, 0)``, nanoseconds since the epoch): a Timestamp value sent with
  nanoseconds comes back exactly. Existing values convert exactly (they had microseconds).
* The text columns that listings order by take ``COLLATE "C"``, so that the order does not
  depend on the database's default collation. Their indexes are rebuilt by the ALTERs.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (table, column, SQL type) of the text columns ordered by.
_ORDERED_TEXT = (
    ("devices", "device_id", "varchar(128)"),
    ("datasets", "device_id", "varchar(128)"),
    ("files", "device_id", "varchar(128)"),
    ("files", "relative_path", "text"),
    ("topics", "name", "text"),
    ("sessions", "name", "varchar(120)"),
    ("session_devices", "device_id", "varchar(128)"),
    ("custom_fields", "name", "varchar(63)"),
    ("session_custom_field_values", "text_value", "text"),
    ("metrics", "name", "varchar(128)"),
    ("session_metric_values", "device_id", "varchar(128)"),
)
_VALUES = "session_custom_field_values"
_OLD_INDEX = "ix_session_custom_field_values_org_id_custom_field_id_timestamp_value_session_id"
_NEW_INDEX = "ix_session_custom_field_values_org_id_custom_field_id_timestamp_ns_session_id"


def _set_collations(collation: str) -> None:
    # Every device_id column changes in one statement per table; PostgreSQL rebuilds the foreign
    # keys between them at the end of each ALTER TABLE, when both sides agree again.
    for table, column, sql_type in _ORDERED_TEXT:
        op.execute(
            f'ALTER TABLE {table} ALTER COLUMN {column} TYPE {sql_type} COLLATE "{collation}"'
        )


def upgrade() -> None:
    # (op.f: the names are the naming convention's, which SQLAlchemy shortens to 63 characters.)
    op.drop_index(op.f(_OLD_INDEX), table_name=_VALUES)
    op.execute(f"ALTER TABLE {_VALUES} RENAME COLUMN timestamp_value TO timestamp_ns")
    op.execute(
        f"ALTER TABLE {_VALUES} ALTER COLUMN timestamp_ns TYPE numeric(21, 0)"
        " USING round(extract(epoch FROM timestamp_ns) * 1000000000)"
    )
    op.create_index(
        op.f(_NEW_INDEX), _VALUES, ["org_id", "custom_field_id", "timestamp_ns", "session_id"]
    )
    _set_collations("C")


def downgrade() -> None:
    _set_collations("default")
    op.drop_index(op.f(_NEW_INDEX), table_name=_VALUES)
    op.execute(
        f"ALTER TABLE {_VALUES} ALTER COLUMN timestamp_ns TYPE timestamptz"
        " USING to_timestamp(timestamp_ns / 1000000000)"
    )
    op.execute(f"ALTER TABLE {_VALUES} RENAME COLUMN timestamp_ns TO timestamp_value")
    op.create_index(
        op.f(_OLD_INDEX), _VALUES, ["org_id", "custom_field_id", "timestamp_value", "session_id"]
    )
