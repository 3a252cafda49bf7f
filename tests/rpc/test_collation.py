"""Listings order text by code point, whatever the database's default collation.

The text columns that listings sort by are ``COLLATE "C"`` (``storage.models``). The first test
checks that in the schema; the second runs the orderings on a database created with another
default collation (ICU ``en-US``, which puts ``a`` before ``B`` and ignores ``_`` at first), where
a column left to the default would list in a different order than the one the contract promises.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator

import psycopg
import pytest
from alembic import command
from psycopg import sql

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.app import ServerSettings
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.migrate import alembic_config
from flightlog_server.storage.urls import libpq_conninfo, with_database
from tests.rpc.factories import (
    add_files,
    drain,
    make_custom_field,
    make_dataset,
    make_device,
    make_session,
    partition,
    register_file,
)
from tests.support import ServerThread, Stubs, create_identity

# Strings on which code-point order and a linguistic collation disagree.
WORDS = ["B", "a", "_b", "Z", "é", "e", "A-1", "a1"]
CODE_POINT_ORDER = sorted(WORDS)
DEVICE_IDS = ["B", "a", "Z", "a_b", "a-b", "A.1", "a1", "a:1", "ab"]

ORDERED_COLUMNS = {
    ("devices", "device_id"),
    ("datasets", "device_id"),
    ("files", "device_id"),
    ("files", "relative_path"),
    ("topics", "name"),
    ("sessions", "name"),
    ("session_devices", "device_id"),
    ("custom_fields", "name"),
    ("session_custom_field_values", "text_value"),
    ("metrics", "name"),
    ("session_metric_values", "device_id"),
}


def test_the_text_columns_listings_sort_by_are_collated_by_code_point(database_url: str) -> None:
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        rows = conn.execute(
            "SELECT table_name, column_name, collation_name FROM information_schema.columns"
            " WHERE table_schema = 'public' AND collation_name IS NOT NULL"
        ).fetchall()
    collations = {(table, column): collation for table, column, collation in rows}
    assert {c: collations.get(c) for c in ORDERED_COLUMNS} == dict.fromkeys(ORDERED_COLUMNS, "C")


@pytest.fixture(scope="module")
def icu_stubs(admin_database_url: str) -> Iterator[Stubs]:
    """A server on a fresh database whose default collation is ICU ``en-US``."""
    admin = libpq_conninfo(admin_database_url)
    name = f"flightlog_icu_{secrets.token_hex(6)}"
    with psycopg.connect(admin, autocommit=True) as conn:
        # pgserver's build lists ICU collations in its catalog but cannot use them: the only
        # reliable test is to try.
        try:
            conn.execute(
                sql.SQL(
                    "CREATE DATABASE {} LOCALE_PROVIDER icu ICU_LOCALE 'en-US' TEMPLATE template0"
                ).format(sql.Identifier(name))
            )
        except psycopg.errors.FeatureNotSupported:
            if os.environ.get("CI") == "true":
                pytest.fail("CI's PostgreSQL must offer ICU collations for this test")
            pytest.skip(
                "this PostgreSQL has no ICU support (pgserver's build has none), so no"
                " database here can have a default collation other than code-point order"
            )
    try:
        url = with_database(admin_database_url, name)
        command.upgrade(alembic_config(url), "head")
        server = ServerThread(
            ServerSettings(
                database=DatabaseSettings(url=url, pool_size=2),
                bind="127.0.0.1:0",
                auth_cache_seconds=0,
                grace_seconds=1,
            )
        )
        identity = create_identity(url, "icu-org")
        stubs = Stubs(f"127.0.0.1:{server.port}", identity.api_key, identity.org_id)
        try:
            with psycopg.connect(libpq_conninfo(url)) as conn:
                row = conn.execute("SELECT 'a' < 'B'").fetchone()
            # The premise: this database's default collation disagrees with code points.
            assert row == (True,)
            yield stubs
        finally:
            stubs.close()
            server.stop()
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


def test_names_ids_paths_and_string_values_list_in_code_point_order(icu_stubs: Stubs) -> None:
    stubs = icu_stubs
    for device_id in DEVICE_IDS:
        make_device(stubs, device_id=device_id)
    devices, _ = drain(
        stubs.catalog.ListDevices(catalog_pb.ListDevicesRequest(page_size=4)), "devices"
    )
    assert [d.device_id for d in devices] == sorted(DEVICE_IDS)

    dataset = make_dataset(stubs)
    file = register_file(
        stubs, dataset.dataset_id, [partition(w, [(1, 2)]) for w in WORDS], path="rec.mcap"
    )
    for word in WORDS:
        register_file(stubs, dataset.dataset_id, path=word)
    files, _ = drain(
        stubs.catalog.ListFiles(catalog_pb.ListFilesRequest(dataset_id=dataset.dataset_id)),
        "files",
    )
    assert [f.relative_path for f in files] == sorted([*WORDS, "rec.mcap"])

    session = add_files(stubs, make_session(stubs).session_id, file.file_id)
    topics, _ = drain(
        stubs.sessions.ListSessionTopics(
            pb.ListSessionTopicsRequest(session_id=session.session_id)
        ),
        "topics",
    )
    assert [t.name for t in topics] == CODE_POINT_ORDER

    field = make_custom_field(stubs, type=fields_pb.CUSTOM_FIELD_TYPE_STRING)
    for word in WORDS:
        make_session(
            stubs,
            name=word,
            custom_fields={field.name: common_pb2.CustomFieldValue(string_value=word)},
        )
    for sort in (
        pb.SessionSort(field=pb.SESSION_SORT_FIELD_NAME, direction=pb.SORT_DIRECTION_ASCENDING),
        pb.SessionSort(
            field=pb.SESSION_SORT_FIELD_CUSTOM_FIELD,
            custom_field=field.name,
            direction=pb.SORT_DIRECTION_ASCENDING,
        ),
    ):
        sessions, _ = drain(
            stubs.sessions.ListSessions(pb.ListSessionsRequest(sort=sort, page_size=3)),
            "sessions",
        )
        assert [s.name for s in sessions if s.name] == CODE_POINT_ORDER
