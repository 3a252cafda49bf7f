"""The write path's statements probe the sessions they name, whatever the planner believes of the
org's size (``storage.sessions._WANTED``).

Beside one big org, every other org is estimated empty by the column statistics of ``org_id``;
an org that grew since the last ANALYZE then looks like one row. Written as "org_id = $1 AND
session_id = ANY($2)", the statements let the planner walk that org's whole slice of an index
and test the IDs as a filter: an update of one session read every session of its org, under the
org's revision lock. Each statement is run here under EXPLAIN ANALYZE (in a transaction rolled
back) with a custom plan, as the server runs it, for one session of an org of 2,000 sessions
created after the ANALYZE; no scan of ``sessions`` may touch more rows than the one named.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from alembic import command

from flightlog_server.storage import sessions as storage
from flightlog_server.storage.migrate import alembic_config
from flightlog_server.storage.urls import libpq_conninfo
from tests.support import create_identity, sql

BIG = 20_000
SMALL = 2_000

_INSERT_SESSIONS = """
    INSERT INTO sessions (org_id, session_id, name, tags, created, created_by, modified_by)
    SELECT %(org)s, %(prefix)s || lpad(i::text, 12, '0'), 'run ' || i, ARRAY['all'],
           now(), 'test', 'test'
    FROM generate_series(1, %(n)s) AS i
"""


@pytest.fixture(scope="module")
def small_org(create_database: Any) -> tuple[str, str]:
    """(database URL, org ID): a big org analyzed, then a small org of ``SMALL`` sessions that
    the statistics do not know of."""
    url = create_database("flightlog_write_plans")
    command.upgrade(alembic_config(url), "head")
    big = create_identity(url, f"big-{secrets.token_hex(3)}").org_id
    sql(url, _INSERT_SESSIONS, {"org": big, "prefix": "ss_b", "n": BIG})
    sql(url, "ANALYZE")
    small = create_identity(url, f"small-{secrets.token_hex(3)}").org_id
    sql(url, _INSERT_SESSIONS, {"org": small, "prefix": "ss_s", "n": SMALL})
    return url, small


def _session_scans(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    if node.get("Relation Name") == "sessions":
        yield node
    for child in node.get("Plans", ()):
        yield from _session_scans(child)


def _rows_touched(url: str, statement: str, params: list[Any]) -> list[tuple[str, int]]:
    """Each scan of ``sessions`` in the statement's executed plan: (node, rows it read)."""
    with psycopg.connect(libpq_conninfo(url), cursor_factory=psycopg.RawCursor) as conn:
        try:
            (row,) = conn.execute("EXPLAIN (ANALYZE, FORMAT JSON) " + statement, params).fetchall()
        finally:
            conn.rollback()
    document = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans: list[tuple[str, int]] = []
    for plan in [document[0]["Plan"], *_init_plans(document[0]["Plan"])]:
        for node in _session_scans(plan):
            read = int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0))
            scans.append((f"{node['Node Type']} using {node.get('Index Name', '-')}", read))
    return scans


def _init_plans(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in node.get("Plans", ()) if p.get("Parent Relationship") == "InitPlan"]


def _one_session(url: str, org_id: str) -> str:
    return str(sql(url, "SELECT max(session_id) FROM sessions WHERE org_id = %s", [org_id])[0][0])


def _statements(org_id: str, session_id: str) -> dict[str, tuple[str, list[Any]]]:
    stored = storage.StoredSession(
        session_id=session_id,
        kind="updated",
        record=b"",
        name="renamed",
        description=None,
        tags=["all"],
        metadata={},
        device_ids=[],
        touch=True,
        values={},
        metrics={},
        metrics_device=None,
    )
    now = dt.datetime.now(dt.UTC)
    return {
        "lock": (storage._LOCK_SESSIONS, [org_id, [session_id]]),
        "read": (storage._READ_SESSIONS, [org_id, [session_id]]),
        "records (GetSession)": (storage._RECORDS, [org_id, [session_id]]),
        "recompute bounds": (storage._RECOMPUTE_BOUNDS, [org_id, [session_id]]),
        "store": (
            storage._STORE_SESSIONS,
            storage._store_params(org_id, "test", now, 1, [stored]),
        ),
    }


@pytest.mark.parametrize(
    "name", ["lock", "read", "records (GetSession)", "recompute bounds", "store"]
)
def test_a_write_reads_only_the_sessions_it_names_in_an_org_the_statistics_missed(
    small_org: tuple[str, str], name: str
) -> None:
    url, org_id = small_org
    statement, params = _statements(org_id, _one_session(url, org_id))[name]
    scans = _rows_touched(url, statement, params)
    assert scans, f"{name}: no scan of sessions in the plan"
    assert all(read <= 1 for _, read in scans), f"{name} read {scans} of an org of {SMALL:,}"
