"""CreateSessionFromDataset: in one transaction, the devices inferred from the dataset and its
files, and every file of the dataset added whole."""

from __future__ import annotations

from typing import Any

import grpc
import psycopg
from google.protobuf import struct_pb2

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.storage.urls import libpq_conninfo
from tests.rpc.factories import (
    drain,
    get_session,
    list_session_files,
    make_custom_field,
    make_dataset,
    make_device,
    make_session,
    register_file,
    unique,
)
from tests.support import Identity, Stubs, rpc_error


def from_dataset(stubs: Stubs, dataset_id: str, **fields: Any) -> pb.Session:
    request = pb.CreateSessionFromDatasetRequest(dataset_id=dataset_id, **fields)
    return stubs.sessions.CreateSessionFromDataset(request).session


def list_devices(stubs: Stubs, session_id: str) -> list[str]:
    devices, _ = drain(
        stubs.sessions.ListSessionDevices(pb.ListSessionDevicesRequest(session_id=session_id)),
        "devices",
    )
    return [d.device_id for d in devices]


def test_every_file_of_the_dataset_is_added_whole_in_path_order(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    b = register_file(stubs, dataset.dataset_id, [("/a", [(500, 600)])], 10, path="b.mcap")
    a = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])], 10, path="a.mcap")
    c = register_file(stubs, dataset.dataset_id, [("/a", [])], path="c/no-extents.mcap")
    register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [(0, 1)])])  # another dataset

    session = from_dataset(stubs, dataset.dataset_id, name="from dataset")

    assert session.session_id.startswith("ss_")
    assert session.name == "from dataset"
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (110, 610)
    listed = list_session_files(stubs, session.session_id)
    assert [f.file_id for f in listed] == [a.file_id, b.file_id, c.file_id]
    assert not any(f.HasField("range_min_timestamp_ns") for f in listed)
    assert {f.dataset_id for f in listed} == {dataset.dataset_id}
    assert get_session(stubs, session.session_id) == session


def test_devices_are_the_datasets_then_its_files_in_path_order(stubs: Stubs) -> None:
    recorder, first, second = make_device(stubs), make_device(stubs), make_device(stubs)
    dataset = make_dataset(stubs, device_id=recorder.device_id)
    register_file(stubs, dataset.dataset_id, path="c.mcap", device_id=second.device_id)
    register_file(stubs, dataset.dataset_id, path="a.mcap", device_id=first.device_id)
    register_file(stubs, dataset.dataset_id, path="b.mcap")  # the dataset's device
    register_file(stubs, dataset.dataset_id, path="d.mcap", device_id=first.device_id)

    session = from_dataset(stubs, dataset.dataset_id)

    assert list_devices(stubs, session.session_id) == [
        recorder.device_id,
        first.device_id,
        second.device_id,
    ]


def test_a_dataset_without_devices_makes_a_session_without_devices(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    register_file(stubs, dataset.dataset_id, [("/a", [(1, 2)])])

    session = from_dataset(stubs, dataset.dataset_id)

    assert list_devices(stubs, session.session_id) == []
    assert len(list_session_files(stubs, session.session_id)) == 1


def test_an_empty_dataset_makes_a_session_without_files_or_bounds(stubs: Stubs) -> None:
    session = from_dataset(stubs, make_dataset(stubs).dataset_id)

    assert not session.HasField("min_timestamp_ns")
    assert list_session_files(stubs, session.session_id) == []


def test_the_session_takes_the_requests_description_tags_metadata_and_custom_fields(
    stubs: Stubs, identity: Identity
) -> None:
    field = make_custom_field(stubs)
    metadata = struct_pb2.Struct()
    metadata.update({"pilot": "alice"})

    session = from_dataset(
        stubs,
        make_dataset(stubs).dataset_id,
        description="formation #4",
        tags=["x", "y", "x"],
        metadata=metadata,
        custom_fields={field.name: common_pb2.CustomFieldValue(string_value="v")},
    )

    assert session.description == "formation #4"
    assert list(session.tags) == ["x", "y"]
    assert session.metadata == metadata
    assert session.custom_fields[field.name].string_value == "v"
    assert session.created_by == identity.principal_id


def test_the_create_is_one_created_change_carrying_the_final_bounds(
    stubs: Stubs, database_url: str
) -> None:
    dataset = make_dataset(stubs)
    register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])])
    register_file(stubs, dataset.dataset_id, [("/a", [(300, 400)])])

    session = from_dataset(stubs, dataset.dataset_id)

    with psycopg.connect(libpq_conninfo(database_url)) as conn:
        changes = conn.execute(
            "SELECT kind, revision, wire_record FROM session_changes"
            " WHERE org_id = %s AND session_id = %s",
            (session.org_id, session.session_id),
        ).fetchall()
    [(kind, revision, record)] = changes
    assert (kind, revision) == ("created", session.revision)
    recorded = pb.Session.FromString(record)
    assert (recorded.min_timestamp_ns, recorded.max_timestamp_ns) == (100, 400)


def test_a_dataset_of_more_than_10000_files_is_added_whole(
    stubs: Stubs, database_url: str, identity: Identity
) -> None:
    dataset = make_dataset(stubs)
    # RegisterFile once per file would take minutes here; the rows are what it would write.
    # ANALYZE stands for the autovacuum that follows a bulk load: until then, foreign-key checks
    # of the server's connections keep the plans made when `files` was tiny (a sequential scan
    # per inserted contribution, seconds for 10,000 rows).
    with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as conn:
        conn.execute(
            """
            INSERT INTO files (org_id, file_id, dataset_id, relative_path, size_bytes,
                               extents_min_ns, extents_max_ns, created_by)
            SELECT %(org)s, 'fl_' || %(tag)s || lpad(i::text, 6, '0'), %(dataset)s,
                   'bulk/' || lpad(i::text, 6, '0') || '.mcap', i, i * 10, i * 10 + 5, %(by)s
            FROM generate_series(1, 10001) AS i
            """,
            {
                "org": identity.org_id,
                "tag": unique("bulk"),
                "dataset": dataset.dataset_id,
                "by": identity.principal_id,
            },
        )
        conn.execute("ANALYZE files")

    session = from_dataset(stubs, dataset.dataset_id)

    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (10, 100_015)
    listed = list_session_files(stubs, session.session_id)
    assert len(listed) == 10_001
    assert [f.relative_path for f in listed[:2]] == ["bulk/000001.mcap", "bulk/000002.mcap"]
    assert listed[-1].size_bytes == 10_001


# --- validation, shared with CreateSession --------------------------------------------------------


def test_an_unknown_dataset_is_dataset_not_found(stubs: Stubs) -> None:
    failure = rpc_error(lambda: from_dataset(stubs, "ds_doesnotexist"))
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "DATASET_NOT_FOUND"


def test_a_malformed_dataset_id_is_invalid_alongside_the_other_fields(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: from_dataset(
            stubs,
            "not-a-dataset",
            name="x" * 121,
            tags=[""],
            custom_fields={"no_such_field": common_pb2.CustomFieldValue()},
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert {"dataset_id", "name", "tags[0]", "custom_fields[no_such_field]"} <= set(failure.fields)


def test_an_undefined_custom_field_is_invalid(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    failure = rpc_error(
        lambda: from_dataset(
            stubs,
            dataset.dataset_id,
            custom_fields={"undefined_field": common_pb2.CustomFieldValue(string_value="v")},
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "custom_fields[undefined_field]" in failure.fields


def test_a_replayed_request_id_returns_the_session_created_first(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    register_file(stubs, dataset.dataset_id, [("/a", [(1, 2)])])
    request_id = unique("req-")

    first = from_dataset(stubs, dataset.dataset_id, name="once", request_id=request_id)
    replay = from_dataset(stubs, dataset.dataset_id, name="once", request_id=request_id)

    assert replay.session_id == first.session_id
    assert len(list_session_files(stubs, first.session_id)) == 1


def test_a_request_id_reused_with_another_body_is_already_exists(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    request_id = unique("req-")
    from_dataset(stubs, dataset.dataset_id, name="first", request_id=request_id)

    failure = rpc_error(
        lambda: from_dataset(stubs, dataset.dataset_id, name="second", request_id=request_id)
    )

    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "REQUEST_ID_REUSED"


def test_a_request_id_of_create_session_is_not_a_replay_of_a_dataset_create(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    request_id = unique("req-")
    # CreateSession's `name` and this call's `dataset_id` are both field 1: the bodies would
    # serialize to the same bytes.
    make_session(stubs, name=dataset.dataset_id, request_id=request_id)

    failure = rpc_error(lambda: from_dataset(stubs, dataset.dataset_id, request_id=request_id))

    assert failure.reason == "REQUEST_ID_REUSED"


def test_create_session_keeps_its_own_checks_and_replays_after_sharing_them(
    stubs: Stubs,
) -> None:
    request_id = unique("req-")
    device = make_device(stubs)

    invalid = rpc_error(lambda: make_session(stubs, device_ids=["bad id"], name="x" * 121))
    first = make_session(stubs, device_ids=[device.device_id], request_id=request_id)
    replay = make_session(stubs, device_ids=[device.device_id], request_id=request_id)
    reused = rpc_error(lambda: make_session(stubs, request_id=request_id))

    assert {"device_ids[0]", "name"} <= set(invalid.fields)
    assert replay == first
    assert reused.reason == "REQUEST_ID_REUSED"


# --- tenancy -------------------------------------------------------------------------------------


def test_another_orgs_dataset_is_not_found(stubs: Stubs, other_stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    register_file(stubs, dataset.dataset_id, [("/a", [(1, 2)])])

    failure = rpc_error(lambda: from_dataset(other_stubs, dataset.dataset_id))

    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "DATASET_NOT_FOUND"
