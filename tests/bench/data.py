"""The bench's own data: a fresh database, migrated by the real migrations, filled with COPY.

Sessions are written as the server would have written them, including a valid ``wire_record``
(``rpc.convert.encode_session``) and their custom-field values, but in bulk: the secondary
indexes of the two big tables are dropped first and rebuilt afterwards from their own
definitions (``pg_indexes``), which is several times faster than maintaining them row by row.
"""

from __future__ import annotations

import base64
import datetime as dt
import os
import random
import secrets
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from flightlog_server.domain.types import CustomFieldType, FieldValue, SessionState
from flightlog_server.rpc.convert import encode_session
from flightlog_server.storage.migrate import upgrade
from flightlog_server.storage.urls import libpq_conninfo, with_database
from tests.support import Identity, create_identity, define_field

Log = Callable[[str], None]

UTC = dt.UTC
T0_NS = 1_700_000_000_000_000_000

# Tags and their shares of sessions (the filtered listing uses "outdoor").
TAG_SHARES = {"outdoor": 0.30, "indoor": 0.30, "night": 0.10, "calibration": 0.01}
# Custom fields of the big org: (name, type, share of sessions that have a value).
FIELDS = (
    ("max_speed", CustomFieldType.NUMBER, 0.90),
    ("battery_pct", CustomFieldType.NUMBER, 0.95),
    ("site", CustomFieldType.ENUM, 0.80),
)
SITES = ("north", "south", "east", "west", "lab")


@contextmanager
def bench_database(log: Log) -> Iterator[str]:
    """A fresh, migrated database (its SQLAlchemy URL), dropped afterwards.

    On ``BENCH_DATABASE_URL``'s server when it is set, else on an embedded PostgreSQL (pgserver)
    in a temporary folder, which is removed too.
    """
    admin = os.environ.get("BENCH_DATABASE_URL")
    name = f"flightlog_bench_{secrets.token_hex(4)}"
    root: Path | None = None
    embedded: Any = None
    if admin is None:
        from flightlog_server.embedded import start_embedded_postgres

        root = Path(tempfile.mkdtemp(prefix="flightlog-bench-"))
        log(f"starting an embedded PostgreSQL in {root}")
        embedded = start_embedded_postgres(root / "pg")
        admin = embedded.libpq_url
    assert admin is not None
    try:
        with psycopg.connect(libpq_conninfo(admin), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        try:
            url = with_database(admin, name)
            upgrade(url)
            yield url
        finally:
            with psycopg.connect(libpq_conninfo(admin), autocommit=True) as conn:
                conn.execute(
                    sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
                )
    finally:
        if embedded is not None:
            embedded.stop()
        if root is not None:
            shutil.rmtree(root, ignore_errors=True)


def connect(url: str) -> psycopg.Connection[Any]:
    return psycopg.connect(libpq_conninfo(url), autocommit=True)


def random_id(rng: random.Random, prefix: str) -> str:
    """``prefix`` and 20 characters of [a-z2-7] (100 random bits), like ``domain.rules.new_id``."""
    return prefix + base64.b32encode(rng.randbytes(13)).decode("ascii")[:20].lower()


@dataclass
class BigOrg:
    """The org whose sessions the listings read."""

    identity: Identity
    count: int
    field_ids: dict[str, str]
    sample_ids: list[str]


@contextmanager
def _bulk_load(conn: psycopg.Connection[Any], tables: list[str], log: Log) -> Iterator[None]:
    """Drops the tables' foreign keys and the indexes that back no constraint, and recreates
    them from their own definitions on exit: one pass each instead of one check per row."""
    indexes = conn.execute(
        """
        SELECT i.indexname, i.indexdef FROM pg_indexes i
        WHERE i.schemaname = current_schema() AND i.tablename = ANY(%s)
          AND NOT EXISTS (SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)
        """,
        (tables,),
    ).fetchall()
    foreign_keys = conn.execute(
        """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) FROM pg_constraint
        WHERE contype = 'f' AND conrelid = ANY(%s::regclass[])
        """,
        (tables,),
    ).fetchall()
    for table, name, _ in foreign_keys:
        conn.execute(
            sql.SQL("ALTER TABLE {} DROP CONSTRAINT {}").format(
                sql.Identifier(table), sql.Identifier(name)
            )
        )
    for name, _ in indexes:
        conn.execute(sql.SQL("DROP INDEX {}").format(sql.Identifier(name)))
    yield
    started = time.perf_counter()
    conn.execute("SET maintenance_work_mem = '256MB'")
    for _, definition in indexes:
        conn.execute(definition)
    for table, name, definition in foreign_keys:
        conn.execute(
            sql.SQL("ALTER TABLE {} ADD CONSTRAINT {} {}").format(
                sql.Identifier(table), sql.Identifier(name), sql.SQL(definition)
            )
        )
    log(
        f"  rebuilt {len(indexes)} indexes and {len(foreign_keys)} foreign keys of"
        f" {', '.join(tables)} in {time.perf_counter() - started:.0f} s"
    )


def load_big_org(url: str, count: int, log: Log) -> BigOrg:
    """``count`` sessions in an org of their own, with tags, bounds, metadata and three custom
    fields (see TAG_SHARES and FIELDS), created one second apart."""
    identity = create_identity(url, f"bench-{secrets.token_hex(4)}")
    org_id, principal = identity.org_id, identity.principal_id
    rng = random.Random(20260101)
    started = time.perf_counter()
    field_ids = {
        name: define_field(url, org_id, name, type_, SITES if type_ is CustomFieldType.ENUM else ())
        for name, type_, _ in FIELDS
    }
    with connect(url) as conn:
        conn.execute("SET synchronous_commit = off")
        t_first = dt.datetime(2025, 1, 1, tzinfo=UTC)
        sample: list[str] = []
        with _bulk_load(conn, ["sessions", "session_custom_field_values"], log):
            with conn.transaction():
                values_rows: list[tuple[str, str, float | None, str | None]] = []
                with conn.cursor().copy(
                    "COPY sessions (org_id, session_id, name, tags, metadata, min_timestamp_ns,"
                    " max_timestamp_ns, created, created_by, modified, modified_by, revision,"
                    " wire_record) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(
                        [
                            "varchar",
                            "varchar",
                            "varchar",
                            "text[]",
                            "jsonb",
                            "int8",
                            "int8",
                            "timestamptz",
                            "varchar",
                            "timestamptz",
                            "varchar",
                            "int8",
                            "bytea",
                        ]
                    )
                    for i in range(count):
                        session_id = random_id(rng, "ss_")
                        if i % 97 == 0 and len(sample) < 20_000:
                            sample.append(session_id)
                        created = t_first + dt.timedelta(seconds=i)
                        name = None if i % 20 == 0 else f"flight-{i:07d}"
                        tags = [t for t, share in TAG_SHARES.items() if rng.random() < share]
                        tags.append(f"fleet-{i % 10}")
                        metadata = {"pilot": f"pilot-{i % 7}", "wind": {"knots": i % 30}}
                        low = high = None
                        if i % 10 != 0:
                            low = T0_NS + i * 1_000_000_000
                            high = low + rng.randrange(1, 3_600) * 1_000_000_000
                        custom: dict[str, tuple[CustomFieldType, FieldValue]] = {}
                        for field, type_, share in FIELDS:
                            if rng.random() >= share:
                                continue
                            value: FieldValue
                            if type_ is CustomFieldType.ENUM:
                                value = SITES[rng.randrange(len(SITES))]
                                values_rows.append((session_id, field_ids[field], None, value))
                            else:
                                top = 1000 if field == "max_speed" else 101
                                value = float(rng.randrange(0, top))
                                values_rows.append((session_id, field_ids[field], value, None))
                            custom[field] = (type_, value)
                        state = SessionState(
                            session_id=session_id,
                            org_id=org_id,
                            name=name,
                            description=None,
                            tags=tags,
                            metadata=metadata,
                            custom_fields=custom,
                            min_timestamp_ns=low,
                            max_timestamp_ns=high,
                            created=created,
                            created_by=principal,
                            modified=created,
                            modified_by=principal,
                            revision=1,
                        )
                        copy.write_row(
                            (
                                org_id,
                                session_id,
                                name,
                                tags,
                                Jsonb(metadata),
                                low,
                                high,
                                created,
                                principal,
                                created,
                                principal,
                                1,
                                encode_session(state),
                            )
                        )
                        if (i + 1) % 200_000 == 0:
                            log(f"  {i + 1:,} sessions encoded and sent")
                with conn.cursor().copy(
                    "COPY session_custom_field_values (org_id, session_id, custom_field_id,"
                    " number_value, text_value) FROM STDIN (FORMAT BINARY)"
                ) as copy:
                    copy.set_types(["varchar", "varchar", "varchar", "float8", "text"])
                    for session_id, field_id, number, text in values_rows:
                        copy.write_row((org_id, session_id, field_id, number, text))
            log(f"  rows loaded in {time.perf_counter() - started:.0f} s; rebuilding indexes")
        conn.execute("ANALYZE sessions")
        conn.execute("ANALYZE session_custom_field_values")
    log(f"  {count:,} sessions ready in {time.perf_counter() - started:.0f} s")
    return BigOrg(identity, count, field_ids, sample)


@dataclass
class Catalog:
    """Files of the writes org: ``loose`` ones for AddSessionFiles, ``recorded`` ones with
    topic partitions and extents for ListSessionTopics."""

    loose: list[str]
    recorded: list[str]
    topics: int
    extents_per_partition: int


def load_catalog(
    url: str, org_id: str, loose: int, recorded: int, topics: int, extents: int, log: Log
) -> Catalog:
    rng = random.Random(7)
    loose_ids = [random_id(rng, "fl_") for _ in range(loose)]
    recorded_ids = [random_id(rng, "fl_") for _ in range(recorded)]
    topic_ids = [random_id(rng, "ti_") for _ in range(topics)]
    dataset_id = random_id(rng, "ds_")
    minute = 60 * 1_000_000_000
    tables = ["files", "topics", "topic_partitions", "timeline_extents"]
    with connect(url) as conn, _bulk_load(conn, tables, log), conn.transaction():
        conn.execute(
            "INSERT INTO datasets (org_id, dataset_id, created_by) VALUES (%s, %s, 'bench')",
            (org_id, dataset_id),
        )
        with conn.cursor().copy(
            "COPY files (org_id, file_id, dataset_id, relative_path, size_bytes, extents_min_ns,"
            " extents_max_ns, created_by) FROM STDIN"
        ) as copy:
            for j, file_id in enumerate([*loose_ids, *recorded_ids]):
                low = T0_NS + j * minute
                path = f"f{j:06d}.mcap"
                row = (org_id, file_id, dataset_id, path, 1 << 20, low, low + minute - 1, "bench")
                copy.write_row(row)
        with conn.cursor().copy(
            "COPY topics (org_id, topic_id, name, schema_name, message_encoding) FROM STDIN"
        ) as copy:
            for k, topic_id in enumerate(topic_ids):
                copy.write_row((org_id, topic_id, f"/sensor_{k:03d}", "std_msgs/msg/String", "cdr"))
        with conn.cursor().copy(
            "COPY topic_partitions (org_id, file_id, topic_id, message_count) FROM STDIN"
        ) as copy:
            for file_id in recorded_ids:
                for topic_id in topic_ids:
                    copy.write_row((org_id, file_id, topic_id, 1000))
        with conn.cursor().copy(
            "COPY timeline_extents (org_id, file_id, topic_id, ordinal, min_ns, max_ns) FROM STDIN"
        ) as copy:
            step = minute // extents
            for j, file_id in enumerate(recorded_ids, start=loose):
                base = T0_NS + j * minute
                for topic_id in topic_ids:
                    for e in range(extents):
                        low = base + e * step
                        copy.write_row((org_id, file_id, topic_id, e, low, low + step - 1))
    with connect(url) as conn:
        for table in tables:
            conn.execute(sql.SQL("ANALYZE {}").format(sql.Identifier(table)))
    return Catalog(loose_ids, recorded_ids, topics, extents)
