"""The ergonomic client against a real server: sessions, catalog, custom fields, errors."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

import flightlog
from flightlog import (
    ConflictError,
    CustomFieldChangeset,
    FieldCondition,
    FlightlogClient,
    InvalidRequestError,
    MetadataChangeset,
    MetricEntry,
    NotFoundError,
    PermissionDeniedError,
    Session,
    SessionFile,
    UnauthorizedError,
    catalog,
    create_session,
    create_session_for_dataset,
    custom_fields,
)
from tests.client.conftest import EnsureDevice, RegisterRecording
from tests.client.recordings import BY_NAME, SPLIT_END_NS, SPLIT_START_NS
from tests.rpc.factories import unique


def _bounds(session: Session) -> tuple[int | None, int | None]:
    return session.min_timestamp_ns, session.max_timestamp_ns


def _new(client: FlightlogClient, **kwargs: Any) -> Session:
    return Session.create(name=unique("s"), client=client, **kwargs)


# Errors ---------------------------------------------------------------------------------------


def test_an_unknown_session_is_not_found_with_its_reason(flightlog_client: FlightlogClient) -> None:
    with pytest.raises(NotFoundError) as caught:
        Session.from_id("ss_doesnotexist", client=flightlog_client)
    assert caught.value.reason == "SESSION_NOT_FOUND"


def test_a_name_over_120_characters_names_the_field(flightlog_client: FlightlogClient) -> None:
    with pytest.raises(InvalidRequestError) as caught:
        Session.create(name="x" * 121, client=flightlog_client)
    assert caught.value.reason == "INVALID_REQUEST"
    assert "name" in dict(caught.value.field_violations)
    assert str(caught.value) == "invalid request: name: must be at most 120 characters"


def test_a_bad_api_key_is_unauthorized(grpc_target: str, org_id: str) -> None:
    with (
        FlightlogClient(grpc_target, api_key="not-a-key", org_id=org_id) as client,
        pytest.raises(UnauthorizedError) as caught,
    ):
        Session.from_id("ss_x", client=client)
    assert caught.value.reason == "UNAUTHENTICATED"


def test_acting_in_a_foreign_org_is_permission_denied(flightlog_client: FlightlogClient) -> None:
    with pytest.raises(PermissionDeniedError) as caught:
        Session.create(name="x", caller_org_id="og_not_mine", client=flightlog_client)
    assert caught.value.reason == "ORG_ACCESS_DENIED"


def test_unknown_files_fail_the_whole_add_naming_them(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    with pytest.raises(NotFoundError) as caught:
        session.add_files(["fl_missing1", "fl_missing2"])
    assert caught.value.reason == "FILE_NOT_FOUND"
    ids = {i.strip() for i in caught.value.metadata["ids"].split(",")}
    assert ids == {"fl_missing1", "fl_missing2"}
    assert list(session.list_files()) == []


def test_a_half_open_window_is_rejected_naming_the_field(
    flightlog_client: FlightlogClient, register_shared_recording: RegisterRecording
) -> None:
    file = register_shared_recording("rosbag2_talker.mcap")
    session = _new(flightlog_client)
    with pytest.raises(InvalidRequestError) as caught:
        session.add_files([SessionFile(file.file_id, range_min_timestamp_ns=5)])
    assert any(field.startswith("files[0]") for field, _ in caught.value.field_violations)


def test_a_stale_expected_revision_is_a_conflict(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    stale = session.revision
    session.put_tags(["a"])
    with pytest.raises(ConflictError) as caught:
        session.update(description="late", expected_revision=stale)
    assert caught.value.reason == "REVISION_MISMATCH"
    assert session.refresh().description is None


# Sessions -------------------------------------------------------------------------------------


def test_adding_and_removing_files_recomputes_the_bounds(
    flightlog_client: FlightlogClient, register_shared_recording: RegisterRecording
) -> None:
    files = [register_shared_recording(f"rosbag2_multiple_files_{i}.mcap") for i in range(3)]
    session = _new(flightlog_client)

    session.add_files(files)
    assert _bounds(session) == (SPLIT_START_NS, SPLIT_END_NS)

    session.remove_file(files[2])
    assert session.max_timestamp_ns == BY_NAME["rosbag2_multiple_files_1.mcap"].end_ns

    session.remove_files([f.file_id for f in files])
    assert _bounds(session) == (None, None)
    assert list(session.list_topics()) == []


def test_list_files_returns_contributions_in_the_order_added(
    flightlog_client: FlightlogClient, register_shared_recording: RegisterRecording
) -> None:
    talker = register_shared_recording("rosbag2_talker.mcap")
    lz4 = register_shared_recording("depthai_recording_lz4.mcap")
    session = _new(flightlog_client)
    session.add_file(lz4)
    session.add_file(talker, 1, 2)

    files = list(session.list_files())

    assert files == [SessionFile(lz4.file_id), SessionFile(talker.file_id, 1, 2)]
    assert files[0].relative_path == "depthai_recording_lz4.mcap"
    assert files[0].size_bytes == BY_NAME["depthai_recording_lz4.mcap"].size_bytes
    assert files[0].session_id == session.session_id


def test_topics_are_those_reachable_in_the_window(
    flightlog_client: FlightlogClient, register_shared_recording: RegisterRecording
) -> None:
    evo = register_shared_recording("evo_nav2_turtlebot.mcap")
    session = _new(flightlog_client).add_file(evo)
    assert [t.name for t in session.list_topics()] == ["/amcl_pose", "/odom", "/tf", "/tf_static"]
    assert session.get_topic("/odom").schema_name == "nav_msgs/msg/Odometry"

    # /tf_static's only message is 21 ms into the recording: a later window excludes it.
    start = BY_NAME["evo_nav2_turtlebot.mcap"].start_ns
    session.add_file(evo, start + 1_000_000_000, start + 2_000_000_000)
    assert [t.name for t in session.list_topics()] == ["/amcl_pose", "/odom", "/tf"]
    with pytest.raises(NotFoundError):
        session.get_topic("/tf_static")


def test_devices_attach_and_detach(
    flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    lead, wing = ensure_device(unique("dv-lead")), ensure_device(unique("dv-wing"))
    session = _new(flightlog_client, device_ids=[lead, lead])

    session.attach_to_device(wing)
    session.attach_to_device(wing)
    assert list(session.list_devices()) == [lead, wing]
    assert [s.session_id for s in Session.for_device(wing, client=flightlog_client)] == [
        session.session_id
    ]

    session.detach_from_device(lead)
    session.detach_from_device(lead)
    assert list(session.list_devices()) == [wing]


def test_attaching_an_unknown_device_is_not_found(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    with pytest.raises(NotFoundError) as caught:
        session.attach_to_device(unique("dv-ghost"))
    assert caught.value.reason == "DEVICE_NOT_FOUND"


def test_metrics_upsert_and_report_per_item_failures(
    flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    session = _new(flightlog_client, device_ids=[ensure_device(unique("dv"))])

    session.publish_metrics([MetricEntry("speed.max", 3.0)])
    result = session.publish_metrics(
        [MetricEntry("speed.max", 4.5), MetricEntry("bad", float("nan"))]
    )

    assert [m.name for m in result.succeeded] == ["speed.max"]
    assert [(f.index, f.entry.name) for f in result.failed] == [(1, "bad")]
    assert [(m.name, m.value) for m in session.list_metrics()] == [("speed.max", 4.5)]


def test_inferring_the_device_needs_exactly_one(
    flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    session = _new(flightlog_client)
    with pytest.raises(InvalidRequestError):
        session.publish_metrics([MetricEntry("x", 1.0)])
    session.attach_to_device(ensure_device(unique("dv")))
    session.attach_to_device(ensure_device(unique("dv")))
    with pytest.raises(InvalidRequestError):
        session.publish_metrics([MetricEntry("x", 1.0)])
    assert session.publish_metrics([MetricEntry("x", 1.0)], device_id=None).failed == []


def test_metadata_and_tags_round_trip(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client, metadata={"count": 3, "ratio": 0.5}, tags=["a", "b", "a"])
    assert session.metadata == {"count": 3, "ratio": 0.5}
    assert isinstance(session.metadata["count"], int)
    assert session.tags == ["a", "b"]

    session.update(
        metadata_changeset=MetadataChangeset(
            put_tags=["c"],
            remove_tags=["a"],
            put_fields={"weather.wind": 7},
            remove_fields=["ratio"],
        )
    )

    assert session.tags == ["b", "c"]
    assert session.metadata == {"count": 3, "weather": {"wind": 7}}


def test_name_and_description_set_clear_and_keep(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client, description="keep")
    session.update(name=None)
    assert session.name is None and session.description == "keep"
    session.update(name="again", description=None)
    assert session.name == "again" and session.description is None


def test_delete_removes_the_session(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    session.delete()
    with pytest.raises(NotFoundError):
        session.refresh()


def test_listing_follows_the_stream_across_batches(flightlog_client: FlightlogClient) -> None:
    tag = unique("batch")
    created = {_new(flightlog_client, tags=[tag]).session_id for _ in range(7)}

    listed = [
        s.session_id for s in Session.query(tags_all=[tag], page_size=2, client=flightlog_client)
    ]

    assert sorted(listed) == sorted(created)
    assert len(listed) == len(set(listed))
    assert {s.session_id for s in Session.for_org(client=flightlog_client)} >= created


def test_query_by_name_and_sort(flightlog_client: FlightlogClient) -> None:
    stem = unique("sorted")
    for suffix in ("c", "a", "b"):
        Session.create(name=f"{stem}-{suffix}", client=flightlog_client)

    names = [
        s.name
        for s in Session.query(
            name_contains=stem, sort_by="name", descending=False, client=flightlog_client
        )
    ]

    assert names == [f"{stem}-a", f"{stem}-b", f"{stem}-c"]


def test_create_session_shortcuts(
    flightlog_client: FlightlogClient,
    ensure_device: EnsureDevice,
    fresh_dataset: catalog.Dataset,
) -> None:
    device = ensure_device(unique("dv"))
    single = create_session(device, name="solo", client=flightlog_client)
    assert list(single.list_devices()) == [device]

    for i in range(3):
        path = BY_NAME[f"rosbag2_multiple_files_{i}.mcap"]
        from flightlog.ingest import read_recording, register_recording

        register_recording(
            read_recording(path.path),
            fresh_dataset.dataset_id,
            device_id=device,
            client=flightlog_client,
        )
    from_dataset = create_session_for_dataset(
        fresh_dataset.dataset_id, name="split", client=flightlog_client
    )
    assert (from_dataset.min_timestamp_ns, from_dataset.max_timestamp_ns) == (
        SPLIT_START_NS,
        SPLIT_END_NS,
    )
    assert len(list(from_dataset.list_files())) == 3
    assert list(from_dataset.list_devices()) == [device]
    via_keyword = create_session(dataset_id=fresh_dataset.dataset_id, client=flightlog_client)
    assert via_keyword.max_timestamp_ns == SPLIT_END_NS
    assert from_dataset.session_id in {
        s.session_id for s in Session.for_dataset(fresh_dataset.dataset_id, client=flightlog_client)
    }


def test_watch_replays_a_sessions_changes_in_order(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    created_revision = session.revision
    session.put_tags(["watched"])
    session.delete()

    changes = Session.watch(
        created_revision - 1, session_ids=[session.session_id], client=flightlog_client
    )
    kinds = []
    for change in changes:
        kinds.append(change.kind)
        if change.kind == "deleted":
            changes.close()
            break

    assert kinds == ["created", "updated", "deleted"]


def test_flightlog_watch_is_session_watch(flightlog_client: FlightlogClient) -> None:
    session = _new(flightlog_client)
    changes = flightlog.watch(
        session.revision - 1, session_ids=[session.session_id], client=flightlog_client
    )
    first = next(changes)
    changes.close()
    assert (first.kind, first.session_id) == ("created", session.session_id)


# Custom fields --------------------------------------------------------------------------------


def test_custom_fields_set_read_clear_and_filter(flightlog_client: FlightlogClient) -> None:
    suffix = unique("f")
    weather = custom_fields.create_custom_field(
        f"weather_{suffix}", "enum", enum_values=["clear", "rain"], client=flightlog_client
    )
    speed = custom_fields.create_custom_field(f"speed_{suffix}", "number", client=flightlog_client)
    checked = custom_fields.create_custom_field(
        f"checked_{suffix}", "boolean", client=flightlog_client
    )
    landed = custom_fields.create_custom_field(
        f"landed_{suffix}", "timestamp", client=flightlog_client
    )
    assert weather.type == "enum" and weather.status == "ready"
    assert custom_fields.find_custom_field(speed.name, client=flightlog_client) == speed

    when = dt.datetime(2026, 4, 23, 10, 0, tzinfo=dt.UTC)
    session = _new(flightlog_client, custom_fields={weather.name: "clear", speed.name: 3})
    session.set_custom_fields({checked.name: True, landed.name: when})

    assert session.custom_fields[weather.name] == "clear"  # a plain str is accepted for ENUM
    assert session.custom_fields[speed.name] == 3.0
    assert session.custom_fields[checked.name] is True
    assert session.custom_fields[landed.name] == when

    matches = Session.query(
        custom_fields=[
            FieldCondition(speed.name, ">=", 2),
            FieldCondition(weather.name, "=", "clear"),
        ],
        client=flightlog_client,
    )
    assert session.session_id in {s.session_id for s in matches}

    session.clear_custom_field(speed.name)
    session.update(custom_fields_changeset=CustomFieldChangeset(clear_fields=[weather.name]))
    assert session.custom_fields[speed.name] is None
    assert session.custom_fields[weather.name] is None

    with pytest.raises(InvalidRequestError) as caught:
        session.set_custom_field(weather.name, "snow")
    assert caught.value.field_violations

    custom_fields.delete_custom_field(weather.custom_field_id, client=flightlog_client)
    assert weather.name not in session.refresh().custom_fields


def test_custom_field_lifecycle(flightlog_client: FlightlogClient) -> None:
    name = unique("stage")
    field = custom_fields.create_custom_field(
        name, "enum", enum_values=["a"], initial_status="creating", client=flightlog_client
    )
    assert field.status == "creating"
    assert name not in _new(flightlog_client).custom_fields

    field = custom_fields.update_custom_field(
        field.custom_field_id, status="ready", add_enum_values=["b"], client=flightlog_client
    )
    assert field.status == "ready" and field.enum_values == ("a", "b")
    assert name in [f.name for f in custom_fields.list_custom_fields(client=flightlog_client)]
    with pytest.raises(ConflictError):
        custom_fields.create_custom_field(name, "string", client=flightlog_client)


# Catalog --------------------------------------------------------------------------------------


def test_devices_datasets_and_files(flightlog_client: FlightlogClient) -> None:
    device_id = unique("dv-cat")
    device = catalog.create_device(device_id, "Robot", client=flightlog_client)
    assert (device.device_id, device.name) == (device_id, "Robot")
    assert catalog.get_device(device_id, client=flightlog_client) == device
    assert device_id in [d.device_id for d in catalog.list_devices(client=flightlog_client)]
    with pytest.raises(ConflictError):
        catalog.create_device(device_id, client=flightlog_client)

    dataset = catalog.create_dataset("uploads", device_id, client=flightlog_client)
    assert catalog.get_dataset(dataset.dataset_id, client=flightlog_client) == dataset
    assert dataset.dataset_id in [
        d.dataset_id for d in catalog.list_datasets(client=flightlog_client)
    ]

    file = catalog.register_file(
        dataset.dataset_id,
        "a.mcap",
        100,
        partitions=[
            catalog.TopicPartitionSpec(
                "/a",
                "A",
                "cdr",
                2,
                [catalog.TimelineExtent(10, 20), catalog.TimelineExtent(30, 40)],
            ),
            catalog.TopicPartitionSpec("/empty", "E", "cdr", 0),
        ],
        client=flightlog_client,
    )
    assert file.device_id == device_id  # the dataset's
    assert (file.min_timestamp_ns, file.max_timestamp_ns) == (10, 40)
    partitions = list(catalog.list_file_topics(file.file_id, client=flightlog_client))
    assert [(p.topic.name, p.message_count, len(p.extents)) for p in partitions] == [
        ("/a", 2, 2),
        ("/empty", 0, 0),
    ]

    moved = catalog.set_file_timeline_offset(file.file_id, 1_000, client=flightlog_client)
    assert (moved.min_timestamp_ns, moved.max_timestamp_ns) == (1_010, 1_040)
    assert [f.file_id for f in catalog.list_files(dataset.dataset_id, client=flightlog_client)] == [
        file.file_id
    ]

    catalog.delete_file(file.file_id, client=flightlog_client)
    with pytest.raises(NotFoundError):
        catalog.get_file(file.file_id, client=flightlog_client)
    catalog.delete_device(device_id, client=flightlog_client)
    with pytest.raises(NotFoundError):
        catalog.get_device(device_id, client=flightlog_client)
