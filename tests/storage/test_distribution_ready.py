"""The schema can be distributed by ``org_id`` (Citus), as the README says: checked on the
migrated database, not promised.

A distributed table's primary key, unique constraints and foreign keys must include its
distribution column, so that each is enforced on one node. Every tenant table (all but the small
global tables: identity and page-token keys, which would be reference tables) therefore carries
``org_id`` in each of them.
"""

from __future__ import annotations

import psycopg

from flightlog_server.storage.urls import libpq_conninfo

# Global, small and rarely written: replicated to every node as reference tables.
GLOBAL_TABLES = {"orgs", "principals", "memberships", "api_keys", "page_token_keys"}

CONSTRAINTS = """
SELECT c.conrelid::regclass::text AS table_name, c.conname, c.contype,
       ARRAY(SELECT a.attname::text FROM unnest(c.conkey) k
             JOIN pg_attribute a ON a.attrelid = c.conrelid AND a.attnum = k) AS columns
FROM pg_constraint c
JOIN pg_namespace n ON n.oid = c.connamespace
WHERE n.nspname = 'public' AND c.contype IN ('p', 'u', 'f')
"""


def test_every_tenant_key_unique_constraint_and_foreign_key_includes_org_id(
    database_url: str,
) -> None:
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        tables = {
            row[0]
            for row in conn.execute(
                "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
                " AND tablename <> 'alembic_version'"
            )
        }
        constraints = conn.execute(CONSTRAINTS).fetchall()
    tenant_tables = tables - GLOBAL_TABLES
    assert {"sessions", "files", "session_changes", "change_feeds"} <= tenant_tables
    checked = [
        (t, name, kind, columns) for t, name, kind, columns in constraints if t in tenant_tables
    ]
    without_org = [(t, name) for t, name, _, columns in checked if "org_id" not in columns]
    assert without_org == []
    # Every tenant table has a primary key (and so was checked).
    assert {t for t, _, kind, _ in checked if kind == "p"} == tenant_tables
