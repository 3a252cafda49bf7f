"""The database schema, as typed SQLAlchemy tables.

Conventions:

* Every tenant-owned table carries ``org_id`` as the first column of its primary key, and every
  foreign key between tenant-owned tables includes it. A query therefore cannot join across
  orgs by accident, and the schema can be distributed by ``org_id`` (Citus) when one PostgreSQL
  is not enough. Identity tables (orgs, principals, memberships, API keys) are small and global.
* Nanosecond timestamps are ``BIGINT``; wall-clock audit times are ``timestamptz``.
* Text that listings order by (names, device IDs, paths, string values) is ``COLLATE "C"``:
  code-point order, the same on every server whatever its default collation, and the order a
  client (or a test) gets by sorting the strings itself. Their indexes are built with it.
* Enumerations are ``text`` with a CHECK constraint, so adding a value is a one-line migration.
* ``sessions.wire_record`` caches the session's serialized API form (see ``SessionRepository``):
  it is rewritten in the same transaction as every write that changes the session, which lets
  listings stream stored bytes instead of rebuilding every message.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    CheckConstraint,
    DateTime,
    Double,
    ForeignKey,
    ForeignKeyConstraint,
    Identity,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    Numeric,
    PrimaryKeyConstraint,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

from flightlog_server.domain.types import Instant

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_N_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with the constraint naming convention."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


def table(model: type[Base]) -> Table:
    """The Core table of a model, for SQLAlchemy Core statements (typed as a Table)."""
    return cast(Table, model.__table__)


class InstantNs(TypeDecorator[Instant]):
    """An ``Instant`` stored exactly as ``numeric(21, 0)`` nanoseconds since the Unix epoch.

    ``timestamptz`` keeps microseconds and ``bigint`` nanoseconds only reach the years 1677 to
    2262, while a ``google.protobuf.Timestamp`` spans the years 1 to 9999 in nanoseconds; 21
    digits hold that range, and numeric compares and indexes like any number.
    """

    impl = Numeric(21, 0)
    cache_ok = True

    def process_bind_param(self, value: Instant | None, dialect: Dialect) -> int | None:
        return None if value is None else value.ns

    def process_result_value(self, value: Any, dialect: Dialect) -> Instant | None:
        return None if value is None else Instant(int(value))


def _created() -> Mapped[dt.datetime]:
    return mapped_column(DateTime(timezone=True), server_default=func.now(), nullable=False)


def _in(column: str, values: tuple[str, ...]) -> str:
    quoted = ", ".join(f"'{v}'" for v in values)
    return f"{column} IN ({quoted})"


PRINCIPAL_KINDS = ("user", "service_account")
CUSTOM_FIELD_TYPES = ("boolean", "enum", "number", "string", "timestamp")
CUSTOM_FIELD_STATUSES = ("creating", "ready", "deleting", "failed")
ENTITY_TYPES = ("session",)
RECOVERY_REASONS = ("truncated", "corrupt")
CHANGE_KINDS = (
    "created",
    "updated",
    "deleted",
    "files_changed",
    "bounds_changed",
    "devices_changed",
    "metrics_published",
)


# --- Identity (global) -------------------------------------------------------------------------


class Org(Base):
    __tablename__ = "orgs"

    org_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), nullable=False, unique=True)
    created: Mapped[dt.datetime] = _created()


class Principal(Base):
    __tablename__ = "principals"
    __table_args__ = (CheckConstraint(_in("kind", PRINCIPAL_KINDS), name="kind"),)

    principal_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(120), nullable=False, unique=True)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    created: Mapped[dt.datetime] = _created()


class Membership(Base):
    __tablename__ = "memberships"
    __table_args__ = (PrimaryKeyConstraint("org_id", "principal_id"),)

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    principal_id: Mapped[str] = mapped_column(
        ForeignKey("principals.principal_id", ondelete="CASCADE"), index=True
    )
    created: Mapped[dt.datetime] = _created()


class ApiKey(Base):
    __tablename__ = "api_keys"

    api_key_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    principal_id: Mapped[str] = mapped_column(
        ForeignKey("principals.principal_id", ondelete="CASCADE"), index=True
    )
    # SHA-256 of the secret part of the key; the key itself is shown once and never stored.
    secret_hash: Mapped[bytes] = mapped_column(LargeBinary(32), nullable=False)
    created: Mapped[dt.datetime] = _created()
    revoked: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


class PageTokenKey(Base):
    """A secret that signs page tokens (``rpc.pagination``), shared by every server process.

    Global like the identity tables: a token names no org in its key, only in what it signs.
    ``key_id`` is the token's first byte, so a second key can be added to rotate them.
    """

    __tablename__ = "page_token_keys"
    __table_args__ = (
        CheckConstraint("key_id BETWEEN 1 AND 255", name="key_id"),
        CheckConstraint("octet_length(secret) = 32", name="secret"),
    )

    key_id: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    secret: Mapped[bytes] = mapped_column(LargeBinary, nullable=False)
    created: Mapped[dt.datetime] = _created()


# --- Catalog (tenant-owned) --------------------------------------------------------------------


class Device(Base):
    __tablename__ = "devices"
    __table_args__ = (PrimaryKeyConstraint("org_id", "device_id"),)

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    device_id: Mapped[str] = mapped_column(String(128, collation="C"))
    name: Mapped[str] = mapped_column(String(120), nullable=False, server_default="")
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)


class Dataset(Base):
    __tablename__ = "datasets"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "dataset_id"),
        ForeignKeyConstraint(
            ["org_id", "device_id"],
            ["devices.org_id", "devices.device_id"],
            ondelete="SET NULL (device_id)",
        ),
        Index(None, "org_id", text("created DESC"), text("dataset_id DESC")),
        # ListDatasets by name (a dataset given by name to the CLI or to an ingest).
        Index(None, "org_id", "name"),
        UniqueConstraint("org_id", "request_id"),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    dataset_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(120), nullable=False, server_default="")
    device_id: Mapped[str | None] = mapped_column(String(128, collation="C"))
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    # Idempotency key of the create call, and a digest of its body to detect reuse.
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))


class File(Base):
    __tablename__ = "files"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "file_id"),
        ForeignKeyConstraint(
            ["org_id", "dataset_id"],
            ["datasets.org_id", "datasets.dataset_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["org_id", "device_id"],
            ["devices.org_id", "devices.device_id"],
            ondelete="SET NULL (device_id)",
        ),
        UniqueConstraint("org_id", "dataset_id", "relative_path"),
        UniqueConstraint("org_id", "request_id"),
        Index(None, "org_id", "device_id"),
        # ListFiles by content hash (an ingest finding a recording it registered before).
        Index(None, "org_id", "content_sha256"),
        # ListFiles of the recovered files of an org, in ID order: few rows, so a small index.
        Index(
            "ix_files_recovered",
            "org_id",
            "file_id",
            postgresql_where=text("recovery_reason IS NOT NULL"),
        ),
        CheckConstraint("content_sha256 ~ '^[0-9a-f]{64}$'", name="content_sha256"),
        CheckConstraint(_in("recovery_reason", RECOVERY_REASONS), name="recovery_reason"),
        # A recovery is all of its columns or none of them.
        CheckConstraint(
            "(recovery_reason IS NULL) = (recovery_detail IS NULL)"
            " AND (recovery_reason IS NULL) = (recovery_message_count IS NULL)"
            " AND (recovery_reason IS NULL) = (recovery_readable_bytes IS NULL)",
            name="recovery",
        ),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    file_id: Mapped[str] = mapped_column(String(64))
    dataset_id: Mapped[str] = mapped_column(String(64), nullable=False)
    device_id: Mapped[str | None] = mapped_column(String(128, collation="C"))
    relative_path: Mapped[str] = mapped_column(Text(collation="C"), nullable=False)
    size_bytes: Mapped[int] = mapped_column(BigInteger, nullable=False)
    unix_epoch_offset_ns: Mapped[int] = mapped_column(
        BigInteger, nullable=False, server_default=text("0")
    )
    # Minimum and maximum over the file's extents as stored (offset not applied). Extents are
    # written once, with the file, so this is fixed at registration; the file's window is these
    # plus the offset. Null when the file has no extents.
    extents_min_ns: Mapped[int | None] = mapped_column(BigInteger)
    extents_max_ns: Mapped[int | None] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    # Idempotency key of the registration, and a digest of its body to detect reuse.
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # SHA-256 of the content (lowercase hex), when the registration gave it.
    content_sha256: Mapped[str | None] = mapped_column(String(64))
    # Set when the file was salvaged from a damaged recording (all four, or none).
    recovery_reason: Mapped[str | None] = mapped_column(String(16))
    recovery_detail: Mapped[str | None] = mapped_column(Text)
    recovery_message_count: Mapped[int | None] = mapped_column(BigInteger)
    recovery_readable_bytes: Mapped[int | None] = mapped_column(BigInteger)


class Topic(Base):
    """A topic identity, shared by every file that records the same (name, schema)."""

    __tablename__ = "topics"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "topic_id"),
        UniqueConstraint("org_id", "name", "schema_name"),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    topic_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(Text(collation="C"), nullable=False)
    schema_name: Mapped[str] = mapped_column(Text, nullable=False)
    message_encoding: Mapped[str] = mapped_column(String(64), nullable=False)


class TopicPartition(Base):
    """One topic's messages within one file."""

    __tablename__ = "topic_partitions"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "file_id", "topic_id"),
        ForeignKeyConstraint(
            ["org_id", "file_id"], ["files.org_id", "files.file_id"], ondelete="CASCADE"
        ),
        ForeignKeyConstraint(["org_id", "topic_id"], ["topics.org_id", "topics.topic_id"]),
        Index(None, "org_id", "topic_id"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[str] = mapped_column(String(64))
    topic_id: Mapped[str] = mapped_column(String(64))
    message_count: Mapped[int] = mapped_column(BigInteger, nullable=False)


class TimelineExtent(Base):
    """A time extent of a partition, as stored; the file's offset places it on the epoch."""

    __tablename__ = "timeline_extents"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "file_id", "topic_id", "ordinal"),
        ForeignKeyConstraint(
            ["org_id", "file_id", "topic_id"],
            [
                "topic_partitions.org_id",
                "topic_partitions.file_id",
                "topic_partitions.topic_id",
            ],
            ondelete="CASCADE",
        ),
        CheckConstraint("min_ns <= max_ns", name="ordered"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[str] = mapped_column(String(64))
    topic_id: Mapped[str] = mapped_column(String(64))
    ordinal: Mapped[int] = mapped_column(Integer)
    min_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)
    max_ns: Mapped[int] = mapped_column(BigInteger, nullable=False)


# --- Sessions (tenant-owned) -------------------------------------------------------------------


class Session(Base):
    __tablename__ = "sessions"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "session_id"),
        UniqueConstraint("org_id", "request_id"),
        CheckConstraint(
            "(min_timestamp_ns IS NULL) = (max_timestamp_ns IS NULL)"
            " AND (min_timestamp_ns IS NULL OR min_timestamp_ns <= max_timestamp_ns)",
            name="bounds",
        ),
        # One index per sort order of ListSessions, each ending in session_id (the tiebreaker),
        # walked forwards or backwards (see storage.session_listing).
        Index("ix_sessions_created", "org_id", "created", "session_id"),
        Index("ix_sessions_name", "org_id", "name", "session_id"),
        Index("ix_sessions_start", "org_id", "min_timestamp_ns", "session_id"),
        Index(
            "ix_sessions_duration",
            "org_id",
            text("(max_timestamp_ns - min_timestamp_ns)"),
            "session_id",
        ),
        Index("ix_sessions_tags", "tags", postgresql_using="gin"),
        # The time-window filter of ListSessions (overlap of closed intervals). Sessions without
        # bounds never match, so they are left out of the index.
        Index(
            "ix_sessions_window",
            text("int8range(min_timestamp_ns, max_timestamp_ns, '[]')"),
            postgresql_using="gist",
            postgresql_where=text("min_timestamp_ns IS NOT NULL"),
        ),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    session_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str | None] = mapped_column(String(120, collation="C"))
    description: Mapped[str | None] = mapped_column(Text)
    tags: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'")
    )
    metadata_: Mapped[dict[str, Any]] = mapped_column(
        "metadata", JSONB, nullable=False, server_default=text("'{}'::jsonb")
    )
    min_timestamp_ns: Mapped[int | None] = mapped_column(BigInteger)
    max_timestamp_ns: Mapped[int | None] = mapped_column(BigInteger)
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    modified: Mapped[dt.datetime] = _created()
    modified_by: Mapped[str] = mapped_column(String(64), nullable=False)
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False, server_default=text("0"))
    # Idempotency key of the create call, and a digest of its body to detect reuse.
    request_id: Mapped[str | None] = mapped_column(String(128))
    request_digest: Mapped[bytes | None] = mapped_column(LargeBinary(32))
    # The serialized API form of the session (custom fields: set values only), see module doc.
    wire_record: Mapped[bytes] = mapped_column(
        LargeBinary, nullable=False, server_default=text("''::bytea")
    )
    # The version of the encoding that wrote ``wire_record`` (services.unit_of_work.RecordFormat).
    record_version: Mapped[int] = mapped_column(
        SmallInteger, nullable=False, server_default=text("1"), index=True
    )


class SessionFile(Base):
    """A file's contribution to a session."""

    __tablename__ = "session_files"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "session_id", "file_id"),
        ForeignKeyConstraint(
            ["org_id", "session_id"],
            ["sessions.org_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["org_id", "file_id"], ["files.org_id", "files.file_id"], ondelete="CASCADE"
        ),
        CheckConstraint(
            "(range_min_ns IS NULL) = (range_max_ns IS NULL)"
            " AND (range_min_ns IS NULL OR range_min_ns <= range_max_ns)",
            name="window",
        ),
        Index(None, "org_id", "file_id", "session_id"),
        Index(None, "org_id", "session_id", "seq"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    file_id: Mapped[str] = mapped_column(String(64))
    range_min_ns: Mapped[int | None] = mapped_column(BigInteger)
    range_max_ns: Mapped[int | None] = mapped_column(BigInteger)
    # Insertion order, for listing contributions in the order they were first added.
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)
    modified: Mapped[dt.datetime] = _created()
    modified_by: Mapped[str] = mapped_column(String(64), nullable=False)


class SessionDevice(Base):
    """A device attached to a session as a subject."""

    __tablename__ = "session_devices"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "session_id", "device_id"),
        ForeignKeyConstraint(
            ["org_id", "session_id"],
            ["sessions.org_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["org_id", "device_id"],
            ["devices.org_id", "devices.device_id"],
            ondelete="CASCADE",
        ),
        Index(None, "org_id", "device_id", "session_id"),
        Index(None, "org_id", "session_id", "seq"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    device_id: Mapped[str] = mapped_column(String(128, collation="C"))
    seq: Mapped[int] = mapped_column(BigInteger, Identity(), nullable=False)
    attached: Mapped[dt.datetime] = _created()
    attached_by: Mapped[str] = mapped_column(String(64), nullable=False)


class CustomField(Base):
    __tablename__ = "custom_fields"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "custom_field_id"),
        UniqueConstraint("org_id", "entity_type", "name"),
        CheckConstraint(_in("entity_type", ENTITY_TYPES), name="entity_type"),
        CheckConstraint(_in("type", CUSTOM_FIELD_TYPES), name="type"),
        CheckConstraint(_in("status", CUSTOM_FIELD_STATUSES), name="status"),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    custom_field_id: Mapped[str] = mapped_column(String(64))
    entity_type: Mapped[str] = mapped_column(String(32), nullable=False)
    name: Mapped[str] = mapped_column(String(63, collation="C"), nullable=False)
    type: Mapped[str] = mapped_column(String(16), nullable=False)
    enum_values: Mapped[list[str]] = mapped_column(
        ARRAY(Text), nullable=False, server_default=text("'{}'")
    )
    status: Mapped[str] = mapped_column(String(16), nullable=False)
    description: Mapped[str] = mapped_column(Text, nullable=False, server_default="")
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)


class SessionCustomFieldValue(Base):
    """A custom-field value set on a session; exactly one typed column is non-null."""

    __tablename__ = "session_custom_field_values"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "session_id", "custom_field_id"),
        ForeignKeyConstraint(
            ["org_id", "session_id"],
            ["sessions.org_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(
            ["org_id", "custom_field_id"],
            ["custom_fields.org_id", "custom_fields.custom_field_id"],
            ondelete="CASCADE",
        ),
        CheckConstraint(
            "num_nonnulls(bool_value, text_value, number_value, timestamp_ns) = 1",
            name="one_value",
        ),
        # Filtering and sorting by a custom field walk these, one per value type.
        Index(None, "org_id", "custom_field_id", "bool_value", "session_id"),
        Index(None, "org_id", "custom_field_id", "text_value", "session_id"),
        Index(None, "org_id", "custom_field_id", "number_value", "session_id"),
        Index(None, "org_id", "custom_field_id", "timestamp_ns", "session_id"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    custom_field_id: Mapped[str] = mapped_column(String(64))
    bool_value: Mapped[bool | None] = mapped_column(Boolean)
    # ENUM and STRING values.
    text_value: Mapped[str | None] = mapped_column(Text(collation="C"))
    number_value: Mapped[float | None] = mapped_column(Double)
    # TIMESTAMP values, exact to the nanosecond (see InstantNs).
    timestamp_ns: Mapped[Instant | None] = mapped_column(InstantNs())


class Metric(Base):
    """A metric definition, created on first publish."""

    __tablename__ = "metrics"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "metric_id"),
        UniqueConstraint("org_id", "name"),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    metric_id: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(128, collation="C"), nullable=False)
    created: Mapped[dt.datetime] = _created()
    created_by: Mapped[str] = mapped_column(String(64), nullable=False)


class SessionMetricValue(Base):
    """The value of one metric for one session (upserted)."""

    __tablename__ = "session_metric_values"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "session_id", "metric_id"),
        ForeignKeyConstraint(
            ["org_id", "session_id"],
            ["sessions.org_id", "sessions.session_id"],
            ondelete="CASCADE",
        ),
        ForeignKeyConstraint(["org_id", "metric_id"], ["metrics.org_id", "metrics.metric_id"]),
        ForeignKeyConstraint(
            ["org_id", "device_id"],
            ["devices.org_id", "devices.device_id"],
            ondelete="SET NULL (device_id)",
        ),
        # A metric's values in order: filters and orders on metrics.NAME walk it
        # (storage.session_filter), as custom fields walk theirs.
        Index(None, "org_id", "metric_id", "value", "session_id"),
    )

    org_id: Mapped[str] = mapped_column(String(64))
    session_id: Mapped[str] = mapped_column(String(64))
    metric_id: Mapped[str] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Double, nullable=False)
    device_id: Mapped[str | None] = mapped_column(String(128, collation="C"))
    published: Mapped[dt.datetime] = _created()
    published_by: Mapped[str] = mapped_column(String(64), nullable=False)


class ChangeFeed(Base):
    """The head of an org's change feed: its last revision, taken by every write of sessions in
    the last statement of its transaction, so that revisions become visible in commit order
    (see ``storage.changes``). A tenant table of its own (not a column of ``orgs``), so that a
    write touches its own org's rows only, all on one node once the schema is distributed by
    ``org_id``. An org without a row has revision 0."""

    __tablename__ = "change_feeds"

    org_id: Mapped[str] = mapped_column(
        ForeignKey("orgs.org_id", ondelete="CASCADE"), primary_key=True
    )
    revision: Mapped[int] = mapped_column(BigInteger, nullable=False)


class SessionChange(Base):
    """One committed change of a session, for the WatchSessions feed."""

    __tablename__ = "session_changes"
    __table_args__ = (
        PrimaryKeyConstraint("org_id", "revision"),
        CheckConstraint(_in("kind", CHANGE_KINDS), name="kind"),
        Index(None, "committed"),
    )

    org_id: Mapped[str] = mapped_column(ForeignKey("orgs.org_id", ondelete="CASCADE"))
    revision: Mapped[int] = mapped_column(BigInteger)
    session_id: Mapped[str] = mapped_column(String(64), nullable=False)
    kind: Mapped[str] = mapped_column(String(32), nullable=False)
    # The session's wire record after the change; null for a deletion.
    wire_record: Mapped[bytes | None] = mapped_column(LargeBinary)
    # What watch filters look at, as they were after the change.
    tags: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    device_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), nullable=False)
    committed: Mapped[dt.datetime] = _created()
