"""The write path's statements probe the rows they name, whatever the planner believes of the
org's size (``storage.id_rows``).

Beside one big org, every other org is estimated empty by the column statistics of ``org_id``;
an org that grew since the last ANALYZE then looks like one row. Written as "org_id = $1 AND
session_id = ANY($2)", the statements let the planner walk that org's whole slice of an index
and test the IDs as a filter: an update of one session read every session of its org, under the
org's revision lock. Each statement is run here under EXPLAIN ANALYZE (in a transaction rolled
back) with a custom plan, as the server runs it, for one session (file, device, request ID) of an
org of 2,000 of them created after the ANALYZE; no scan of the table may touch more rows than
the one named.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import secrets
from collections.abc import Callable, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, cast

import psycopg
import pytest
from alembic import command
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.expression import ClauseElement

from flightlog_server.domain.errors import NotFound
from flightlog_server.domain.types import Caller, IdempotencyKey
from flightlog_server.storage import catalog
from flightlog_server.storage import sessions as storage
from flightlog_server.storage.catalog import CatalogRepository
from flightlog_server.storage.migrate import alembic_config
from flightlog_server.storage.models import File, table
from flightlog_server.storage.urls import libpq_conninfo
from tests.support import create_identity, sql

BIG = 20_000
SMALL = 5_000
# A probe of one key reads an index root, a leaf and a heap page, a few more for a write; walking
# the small org's slice of an index reads dozens.
PROBE_PAGES = 8

_INSERT_SESSIONS = """
    INSERT INTO sessions (org_id, session_id, name, tags, created, created_by, modified_by,
                          request_id)
    SELECT %(org)s, %(prefix)s || lpad(i::text, 12, '0'), 'run ' || i, ARRAY['all'],
           now(), 'test', 'test', 'request-' || i
    FROM generate_series(1, %(n)s) AS i
"""
_INSERT_DEVICES = """
    INSERT INTO devices (org_id, device_id, created_by)
    SELECT %(org)s, 'device-' || i, 'test' FROM generate_series(1, %(n)s) AS i
"""
_INSERT_DATASET = """
    INSERT INTO datasets (org_id, dataset_id, created_by) VALUES (%(org)s, 'ds_only', 'test')
"""
_INSERT_FILES = """
    INSERT INTO files (org_id, file_id, dataset_id, relative_path, size_bytes, created_by,
                       device_id, request_id)
    SELECT %(org)s, 'fl_' || lpad(i::text, 12, '0'), 'ds_only', 'f' || i, 1, 'test',
           'device-' || i, 'request-' || i
    FROM generate_series(1, %(n)s) AS i
"""
# Session i holds file i and device i.
_INSERT_LINKS = """
    INSERT INTO session_files (org_id, session_id, file_id, created_by, modified_by)
    SELECT %(org)s, %(prefix)s || lpad(i::text, 12, '0'), 'fl_' || lpad(i::text, 12, '0'),
           'test', 'test'
    FROM generate_series(1, %(n)s) AS i
"""
_INSERT_ATTACHMENTS = """
    INSERT INTO session_devices (org_id, session_id, device_id, attached_by)
    SELECT %(org)s, %(prefix)s || lpad(i::text, 12, '0'), 'device-' || i, 'test'
    FROM generate_series(1, %(n)s) AS i
"""
_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]
F = table(File)
_FILL_ORG = (
    _INSERT_SESSIONS,
    _INSERT_DEVICES,
    _INSERT_DATASET,
    _INSERT_FILES,
    _INSERT_LINKS,
    _INSERT_ATTACHMENTS,
)


@pytest.fixture(scope="module")
def small_org(create_database: Any) -> tuple[str, str]:
    """(database URL, org ID): a big org analyzed, then a small org of ``SMALL`` sessions that
    the statistics do not know of."""
    url = create_database("flightlog_write_plans")
    command.upgrade(alembic_config(url), "head")
    big = create_identity(url, f"big-{secrets.token_hex(3)}").org_id
    for statement in _FILL_ORG:
        sql(url, statement, {"org": big, "prefix": "ss_b", "n": BIG})
    sql(url, "ANALYZE")
    small = create_identity(url, f"small-{secrets.token_hex(3)}").org_id
    for statement in _FILL_ORG:
        sql(url, statement, {"org": small, "prefix": "ss_s", "n": SMALL})
    return url, small


def _scans(node: dict[str, Any], table: str) -> Iterator[dict[str, Any]]:
    # Not the ModifyTable of an UPDATE or DELETE: its pages are those of every index it updates.
    if node.get("Relation Name") == table and "Scan" in node["Node Type"]:
        yield node
    for child in node.get("Plans", ()):
        yield from _scans(child, table)


def _scans_of(url: str, statement: str, params: list[Any], table: str) -> list[Scan]:
    """Each scan of ``table`` in the statement's executed plan."""
    with psycopg.connect(libpq_conninfo(url), cursor_factory=psycopg.RawCursor) as conn:
        try:
            explain = "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) "
            (row,) = conn.execute(explain + statement, params).fetchall()
        finally:
            conn.rollback()
    document = row[0] if isinstance(row[0], list) else json.loads(row[0])
    scans: list[Scan] = []
    for plan in [document[0]["Plan"], *_init_plans(document[0]["Plan"])]:
        for node in _scans(plan, table):
            scans.append(
                Scan(
                    f"{node['Node Type']} using {node.get('Index Name', '-')}",
                    int(node.get("Actual Rows", 0)) + int(node.get("Rows Removed by Filter", 0)),
                    int(node.get("Shared Hit Blocks", 0)) + int(node.get("Shared Read Blocks", 0)),
                )
            )
    return scans


@dataclass(frozen=True)
class Scan:
    """One scan of a table in an executed plan: the rows it read, and the pages it touched
    (which also counts index entries tested by a condition on a later column of the index)."""

    node: str
    rows: int
    pages: int


def _init_plans(node: dict[str, Any]) -> list[dict[str, Any]]:
    return [p for p in node.get("Plans", ()) if p.get("Parent Relationship") == "InitPlan"]


def _one_session(url: str, org_id: str) -> str:
    return str(sql(url, "SELECT max(session_id) FROM sessions WHERE org_id = %s", [org_id])[0][0])


class _Recorder:
    """Stands in for a repository's session only to catch the statement it executes (which the
    test then runs under EXPLAIN on the real database)."""

    def __init__(self) -> None:
        self.statements: list[ClauseElement] = []

    async def execute(self, statement: ClauseElement) -> Any:
        self.statements.append(statement)
        return self

    def one_or_none(self) -> None:
        return None


def _executed(org_id: str, call: Callable[[CatalogRepository], Coroutine[Any, Any, Any]]) -> str:
    """The SQL of the one statement ``call`` makes a catalog repository of ``org_id`` execute,
    values inline (as in the custom plan of its parameters)."""
    recorder = _Recorder()
    repository = CatalogRepository(
        cast(AsyncSession, recorder), Caller(principal_id="test", org_id=org_id, request_id="test")
    )
    with contextlib.suppress(NotFound):  # what the stand-in's empty result makes of a read
        asyncio.run(call(repository))
    (statement,) = recorder.statements
    return str(statement.compile(dialect=_DIALECT, compile_kwargs={"literal_binds": True}))


def _statements(org_id: str, session_id: str) -> dict[str, tuple[str, str, list[Any]]]:
    """name -> (table, statement, parameters), each naming one row of the small org (session i
    holds file i and device i)."""
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
    n = int(session_id[-12:])
    file_id = f"fl_{n:012}"
    cases = {
        "lock": ("sessions", storage._LOCK_SESSIONS, [org_id, [session_id]]),
        "read": ("sessions", storage._READ_SESSIONS, [org_id, [session_id]]),
        "records (GetSession)": ("sessions", storage._RECORDS, [org_id, [session_id]]),
        "recompute bounds": ("sessions", storage._RECOMPUTE_BOUNDS, [org_id, [session_id]]),
        "store": (
            "sessions",
            storage._STORE_SESSIONS,
            storage._store_params(org_id, "test", now, 1, [stored]),
        ),
        "request IDs (CreateSession's replays)": (
            "sessions",
            storage._FIND_REQUEST_IDS,
            [org_id, [f"request-{n}"]],
        ),
        "files (AddSessionFiles)": (
            "files",
            storage._ADD_CONTRIBUTIONS,
            [org_id, session_id, file_id, [], [], "test"],
        ),
        "devices (CreateSession)": ("devices", catalog._MISSING_DEVICES, [org_id, [f"device-{n}"]]),
        "delete": ("sessions", storage._DELETE_SESSION, [org_id, session_id, [], []]),
        "GetFile": ("files", _executed(org_id, lambda r: r.get_file(file_id)), []),
        "DeleteFile": ("files", _executed(org_id, lambda r: r.delete_file(file_id)), []),
        "GetDevice": ("devices", _executed(org_id, lambda r: r.get_device(f"device-{n}")), []),
        "RegisterFile's replay": (
            "files",
            _executed(org_id, lambda r: r._replayed(F, IdempotencyKey(f"request-{n}", b""))),
            [],
        ),
    }
    for parent, parent_id in ((storage.FILE, file_id), (storage.DEVICE, f"device-{n}")):
        lock_sessions, lock_row, read = parent.statements()
        for what, scanned, statement in (
            ("lock its sessions", "sessions", lock_sessions),
            ("lock its sessions", parent.links, lock_sessions),
            ("lock it", parent.table, lock_row),
            ("lock it", parent.links, lock_row),
            ("read its sessions", "sessions", read),
        ):
            cases[f"{parent.kind}'s dependents: {what}, {scanned}"] = (
                scanned,
                statement,
                [org_id, parent_id],
            )
    return cases


@pytest.mark.parametrize("name", list(_statements("org", "ss_s000000000001")))
def test_a_write_reads_only_the_rows_it_names_in_an_org_the_statistics_missed(
    small_org: tuple[str, str], name: str
) -> None:
    url, org_id = small_org
    table, statement, params = _statements(org_id, _one_session(url, org_id))[name]
    scans = _scans_of(url, statement, params, table)
    assert scans, f"{name}: no scan of {table} in the plan"
    assert all(scan.rows <= 1 and scan.pages <= PROBE_PAGES for scan in scans), (
        f"{name}: {scans} in an org of {SMALL:,}"
    )
