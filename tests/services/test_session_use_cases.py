"""The session use cases and their unit of work, called directly: no gRPC between the test and
the logic, a real PostgreSQL below it."""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import AsyncIterator
from typing import Any

import psycopg
import pytest

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.app import SESSION_RECORDS
from flightlog_server.domain.catalog import FileExtras, check_file
from flightlog_server.domain.errors import InvalidArgument, NotFound, RequestIdReused
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.sessions import (
    INFER,
    MetricValues,
    NewSession,
    SentValue,
    SessionUpdate,
)
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldStatus,
    CustomFieldType,
    MetricEntry,
    WireValue,
)
from flightlog_server.pacing import run_sliced
from flightlog_server.services.catalog import Catalog
from flightlog_server.services.custom_fields import CustomFields
from flightlog_server.services.sessions import Sessions, SessionView
from flightlog_server.services.unit_of_work import SessionWrites, write_sessions
from flightlog_server.storage.database import Database, DatabaseSettings, Tx
from flightlog_server.storage.urls import libpq_conninfo
from tests.support import Identity, create_identity


@pytest.fixture(scope="module")
async def database(database_url: str) -> AsyncIterator[Database]:
    database = Database(DatabaseSettings(url=database_url, pool_size=4))
    yield database
    await database.close()


@pytest.fixture
def caller(database_url: str) -> Caller:
    """A principal in a new org of its own."""
    identity: Identity = create_identity(database_url, f"uc-{secrets.token_hex(4)}")
    return Caller(identity.principal_id, identity.org_id, "test")


@pytest.fixture
def sessions(database: Database) -> Sessions:
    return Sessions(database, SESSION_RECORDS)


def session_of(view: SessionView) -> pb.Session:
    return pb.Session.FromString(view.record)


def new(name: str = "", **fields: Any) -> NewSession:
    """A session to create, named ``name`` (none if empty), empty but for ``fields``."""
    empty = NewSession(
        name=name or None, description=None, tags=(), metadata={}, device_ids=(), values={}
    )
    return dataclasses.replace(empty, **fields)


def changes(database_url: str, org_id: str) -> list[tuple[int, str, str]]:
    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        return [
            (int(r[0]), str(r[1]), str(r[2]))
            for r in conn.execute(
                "SELECT revision, session_id, kind FROM session_changes WHERE org_id = %s"
                " ORDER BY revision",
                (org_id,),
            )
        ]


async def test_a_created_session_reads_back_as_its_stored_record(
    sessions: Sessions, caller: Caller, database_url: str
) -> None:
    created = await sessions.create(caller, new("flight", tags=("a", "b")))
    record = session_of(created)
    assert (record.name, list(record.tags), record.created_by) == (
        "flight",
        ["a", "b"],
        caller.principal_id,
    )
    got = await sessions.get(caller, record.session_id)
    assert got == created
    assert changes(database_url, caller.org_id) == [(record.revision, record.session_id, "created")]


async def test_a_batch_is_created_in_order_all_or_nothing(
    sessions: Sessions, caller: Caller, database_url: str
) -> None:
    bad = new(
        "bad",
        values={
            "nosuchfield": SentValue(
                "requests[2].custom_fields[nosuchfield]", WireValue("string", "x")
            )
        },
    )
    with pytest.raises(InvalidArgument) as error:
        await sessions.create_many(caller, [new("one"), new("two"), bad])
    assert [v.field for v in error.value.violations] == ["requests[2].custom_fields[nosuchfield]"]
    assert changes(database_url, caller.org_id) == []

    made = [
        session_of(v) for v in await sessions.create_many(caller, [new(f"s{i}") for i in range(3)])
    ]
    assert [s.name for s in made] == ["s0", "s1", "s2"]
    assert [s.revision for s in made] == [1, 2, 3]
    assert [c[1] for c in changes(database_url, caller.org_id)] == [s.session_id for s in made]


async def test_a_replayed_request_id_returns_the_first_session_and_a_reused_one_is_refused(
    sessions: Sessions, caller: Caller
) -> None:
    first = await sessions.create(caller, new("x", request_id="k1", request_digest=b"d1"))
    again = await sessions.create_many(
        caller,
        [
            new("y", request_id="k2", request_digest=b"d2"),
            new("x", request_id="k1", request_digest=b"d1"),
        ],
    )
    assert again[1] == first
    assert session_of(again[0]).name == "y"
    with pytest.raises(RequestIdReused):
        await sessions.create(caller, new("z", request_id="k1", request_digest=b"other"))


async def test_an_update_with_metrics_is_one_change_with_one_revision(
    sessions: Sessions, caller: Caller, database_url: str
) -> None:
    created = session_of(await sessions.create(caller, new("before")))
    update = SessionUpdate(
        session_id=created.session_id,
        name="after",
        metrics=MetricValues(
            (MetricEntry("speed", 3.5),), device=None, path="metrics.entries", device_path="d"
        ),
    )
    updated = session_of(await sessions.update(caller, update))
    assert updated.name == "after"
    assert updated.revision == created.revision + 1
    assert changes(database_url, caller.org_id)[-1] == (
        updated.revision,
        created.session_id,
        "updated",
    )
    (outcome,) = await sessions.publish_metrics(
        caller,
        [
            (
                created.session_id,
                MetricValues((MetricEntry("speed", 4.0),), None, "metrics", "device_id"),
            )
        ],
    )
    assert [(r.name, r.value) for r in outcome.recorded] == [("speed", 4.0)]


async def test_a_bad_metric_entry_fails_an_update_but_not_a_publication(
    sessions: Sessions, caller: Caller
) -> None:
    session_id = session_of(await sessions.create(caller, new())).session_id
    nan = MetricValues(
        (MetricEntry("ok", 1.0), MetricEntry("nan", float("nan"))),
        None,
        "metrics.entries",
        "metrics.device_id",
    )
    with pytest.raises(InvalidArgument) as error:
        await sessions.update(caller, SessionUpdate(session_id=session_id, metrics=nan))
    assert [v.field for v in error.value.violations] == ["metrics.entries[1]"]
    (outcome,) = await sessions.publish_metrics(caller, [(session_id, nan)])
    assert [r.name for r in outcome.recorded] == ["ok"]
    assert [f.index for f in outcome.failed] == [1]


async def test_inferring_a_device_needs_exactly_one_attached(
    sessions: Sessions, caller: Caller
) -> None:
    session_id = session_of(await sessions.create(caller, new())).session_id
    values = MetricValues(
        (MetricEntry("m", 1.0),), INFER, "requests[0].metrics", "requests[0].device_id"
    )
    with pytest.raises(InvalidArgument) as error:
        await sessions.publish_metrics(caller, [(session_id, values)])
    assert [v.field for v in error.value.violations] == ["requests[0].device_id"]


async def test_publishing_on_a_missing_session_names_it_and_records_nothing(
    sessions: Sessions, caller: Caller
) -> None:
    session_id = session_of(await sessions.create(caller, new())).session_id
    values = MetricValues((MetricEntry("m", 1.0),), None, "metrics", "device_id")
    missing = "ss_" + "a" * 20
    with pytest.raises(NotFound) as error:
        await sessions.publish_metrics(caller, [(session_id, values), (missing, values)])
    assert error.value.ids == [missing]


async def test_the_unit_of_work_stores_every_session_a_use_case_changed(
    database: Database, sessions: Sessions, caller: Caller, database_url: str
) -> None:
    """A use case only changes drafts; storing, the record and the change come from the unit of
    work, for every changed session and none other."""
    ids = [
        session_of(v).session_id
        for v in await sessions.create_many(caller, [new("a"), new("b"), new("c")])
    ]

    async def rename_two(w: SessionWrites) -> None:
        first, second, _third = await w.lock_many(ids)
        first.name, second.name = "renamed a", "renamed b"
        first.changed("updated")
        second.changed("updated")

    _, result = await write_sessions(database, caller, SESSION_RECORDS, rename_two)
    assert set(result.sessions) == set(ids[:2])
    views = await sessions.get_many(caller, ids)
    assert [session_of(v).name for v in views] == ["renamed a", "renamed b", "c"]
    assert [c[2] for c in changes(database_url, caller.org_id)][-2:] == ["updated", "updated"]


async def test_moving_a_file_moves_the_bounds_of_every_session_it_is_in(
    database: Database, sessions: Sessions, caller: Caller
) -> None:
    catalog = Catalog(database, SESSION_RECORDS)
    dataset = await catalog.create_dataset(caller, "d", None, None)
    # RegisterFile's use case takes the request's own data (domain.catalog.FileInput).
    request = catalog_pb.RegisterFileRequest(
        dataset_id=dataset.dataset_id,
        relative_path="f.mcap",
        size_bytes=1,
        partitions=[
            catalog_pb.TopicPartitionSpec(
                topic_name="/t",
                message_count=1,
                extents=[catalog_pb.TimelineExtent(min_timestamp_ns=100, max_timestamp_ns=200)],
            )
        ],
    )
    extras = FileExtras()
    checked = await run_sliced(check_file(Violations(), request, extras))
    file = await catalog.register_file(caller, request, checked, extras, None)
    ids = [session_of(v).session_id for v in await sessions.create_many(caller, [new(), new()])]
    for session_id in ids:
        await sessions.add_files(
            caller, session_id, [ContributionSpec(file.file_id, None, None)], None
        )
    await catalog.set_file_offset(caller, file.file_id, 1_000)
    bounds = [
        (s.min_timestamp_ns, s.max_timestamp_ns)
        for s in map(session_of, await sessions.get_many(caller, ids))
    ]
    assert bounds == [(1_100, 1_200)] * 2


async def test_a_field_leaving_ready_leaves_the_records_of_the_sessions_holding_it(
    database: Database, sessions: Sessions, caller: Caller
) -> None:
    fields = CustomFields(database, SESSION_RECORDS)
    field = await fields.create(
        caller,
        entity_type="session",
        name="weather",
        type_=CustomFieldType.STRING,
        enum_values=(),
        status=CustomFieldStatus.READY,
        description="",
    )
    value = SentValue("custom_fields[weather]", WireValue("string", "rain"))
    session_id = session_of(
        await sessions.create(caller, new(values={"weather": value}))
    ).session_id
    assert (
        session_of(await sessions.get(caller, session_id)).custom_fields["weather"].string_value
        == "rain"
    )
    await fields.update(caller, field.custom_field_id, CustomFieldStatus.DELETING, ())
    assert "weather" not in session_of(await sessions.get(caller, session_id)).custom_fields


async def test_a_metric_defined_by_a_rolled_back_write_is_not_remembered(
    sessions: Sessions, database: Database, caller: Caller
) -> None:
    # A write that defines a metric and then rolls back (a retried conflict, a later failure)
    # must not leave its never-committed ID behind for the next write to use.
    class RolledBack(Exception):
        pass

    async def define_then_fail(tx: Tx) -> None:
        await sessions.metric_ids.resolve(tx, caller, ["first-use"])
        raise RolledBack

    with pytest.raises(RolledBack):
        await database.write(define_then_fail)
    session_id = session_of(await sessions.create(caller, new())).session_id
    values = MetricValues((MetricEntry("first-use", 1.0),), None, "metrics", "device_id")
    (outcome,) = await sessions.publish_metrics(caller, [(session_id, values)])
    assert [(r.name, r.value) for r in outcome.recorded] == [("first-use", 1.0)]
