"""``ChangeFilter.matches`` (the shared reader's test, in Python) agrees with
``ChangeFilter.condition`` (a watcher's own reads, in SQL) on every change and every filter.

Hypothesis generates an org's feed (sessions, kinds, tags and devices drawn from small sets, so
that filters hit and miss) and filters over the same sets; the feed is read once unfiltered and
once with the filter, on the real database, and each change's ``matched`` must be the Python
verdict on the unfiltered row.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Iterator

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.storage.changes import ChangeBatch, ChangeFilter, ChangeRepository
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.urls import libpq_conninfo
from tests.rpc.factories import unique
from tests.support import create_identity

SESSIONS = ("ss_a", "ss_b", "ss_c")
KINDS = ("created", "updated", "deleted", "files_changed", "devices_changed")
TAGS = ("red", "green", "blue")
DEVICES = ("dv_one", "dv_two", "dv_three")

changes = st.lists(
    st.tuples(
        st.sampled_from(SESSIONS),
        st.sampled_from(KINDS),
        st.lists(st.sampled_from(TAGS), unique=True),
        st.lists(st.sampled_from(DEVICES[:2]), unique=True),
    ),
    min_size=1,
    max_size=12,
)
filters = st.builds(
    ChangeFilter,
    session_ids=st.lists(st.sampled_from(SESSIONS), unique=True).map(tuple),
    tags_any=st.lists(st.sampled_from(TAGS), unique=True).map(tuple),
    device_id=st.none() | st.sampled_from(DEVICES),
    kinds=st.lists(st.sampled_from(KINDS), unique=True).map(tuple),
)


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


@pytest.fixture
def database(database_url: str, loop: asyncio.AbstractEventLoop) -> Iterator[Database]:
    database = Database(DatabaseSettings(url=database_url, pool_size=1))
    yield database
    loop.run_until_complete(database.close())


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(feed=changes, flt=filters)
def test_the_python_filter_agrees_with_the_sql_filter(
    database_url: str,
    database: Database,
    loop: asyncio.AbstractEventLoop,
    feed: list[tuple[str, str, list[str], list[str]]],
    flt: ChangeFilter,
) -> None:
    org_id = create_identity(database_url, unique("filter-")).org_id
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as conn:
        for revision, (session_id, kind, tags, devices) in enumerate(feed, start=1):
            conn.execute(
                "INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record,"
                " tags, device_ids) VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (org_id, revision, session_id, kind, b"", tags, devices),
            )

    async def read(db: AsyncSession, flt: ChangeFilter) -> ChangeBatch:
        return await ChangeRepository(db, org_id).read(0, flt, max_rows=100, max_bytes=1 << 20)

    everything = loop.run_until_complete(database.run(functools.partial(read, flt=ChangeFilter())))
    filtered = loop.run_until_complete(database.run(functools.partial(read, flt=flt)))
    assert [c.revision for c in everything.changes] == list(range(1, len(feed) + 1))
    assert [c.revision for c in filtered.changes] == [c.revision for c in everything.changes]
    assert [c.matched for c in filtered.changes] == [flt.matches(c) for c in everything.changes]
    assert [(c.tags, c.device_ids) for c in everything.changes] == [
        (tuple(tags), tuple(devices)) for _, _, tags, devices in feed
    ]
