"""CatalogService through the generated stub: devices, datasets, files, partitions and extents,
and what catalog writes do to the sessions that refer to them."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest

from flightlog.v1 import catalog_service_pb2 as pb
from flightlog.v1 import session_service_pb2 as sessions_pb
from tests.rpc.factories import (
    add_files,
    bounds,
    check_paging,
    drain,
    first_batch,
    get_session,
    make_dataset,
    make_device,
    make_session,
    partition,
    register_file,
    register_file_request,
    unique,
)
from tests.support import Identity, Stubs, assert_invalid, assert_not_found, rpc_error

T0 = 1_700_000_000_000_000_000
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)
# Times on the epoch lie strictly within ±2**62 ns (rules.EPOCH_NS_LIMIT).
EPOCH_MAX = 2**62 - 1
EPOCH_MIN = -(2**62) + 1
UNKNOWN_DATASET = "ds_" + "a" * 20
UNKNOWN_FILE = "fl_" + "a" * 20


def get_file(stubs: Stubs, file_id: str) -> pb.File:
    return stubs.catalog.GetFile(pb.GetFileRequest(file_id=file_id)).file


def file_topics(stubs: Stubs, file_id: str) -> list[pb.TopicPartition]:
    partitions, _ = drain(
        stubs.catalog.ListFileTopics(pb.ListFileTopicsRequest(file_id=file_id)), "partitions"
    )
    return partitions


def set_offset(stubs: Stubs, file_id: str, offset: int) -> pb.File:
    request = pb.UpdateFileTimelineOffsetRequest(file_id=file_id, unix_epoch_offset_ns=offset)
    return stubs.catalog.UpdateFileTimelineOffset(request).file


# --- devices -------------------------------------------------------------------------------------


def test_create_device_then_get_returns_it(stubs: Stubs, identity: Identity) -> None:
    device_id = unique("Robot-01.arm:")
    created = stubs.catalog.CreateDevice(
        pb.CreateDeviceRequest(device_id=device_id, name="Robot 01")
    ).device
    assert created.device_id == device_id
    assert created.org_id == identity.org_id
    assert created.name == "Robot 01"
    assert created.created_by == identity.principal_id
    assert created.created.seconds > 0
    fetched = stubs.catalog.GetDevice(pb.GetDeviceRequest(device_id=device_id)).device
    assert fetched == created


def test_create_device_accepts_a_128_character_id(stubs: Stubs) -> None:
    device_id = unique("a") + "_.-:" + "x" * 115
    assert len(device_id) == 128
    assert make_device(stubs, device_id).device_id == device_id


@pytest.mark.parametrize(
    "device_id", ["", "-leading-dash", "has space", "slash/inside", "x" * 129, "ünicode"]
)
def test_create_device_rejects_a_malformed_id(stubs: Stubs, device_id: str) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.CreateDevice(pb.CreateDeviceRequest(device_id=device_id))
    )
    assert_invalid(failure, "device_id")


def test_create_device_rejects_a_name_over_120_characters(stubs: Stubs) -> None:
    assert_invalid(rpc_error(lambda: make_device(stubs, name="n" * 121)), "name")
    assert make_device(stubs, name="n" * 120).name == "n" * 120


def test_create_device_with_a_taken_id_is_already_exists(stubs: Stubs) -> None:
    device = make_device(stubs)
    failure = rpc_error(lambda: make_device(stubs, device.device_id))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "ALREADY_EXISTS"


def test_get_device_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.GetDevice(pb.GetDeviceRequest(device_id=unique("nobody-")))
    )
    assert_not_found(failure, "DEVICE_NOT_FOUND")


def test_get_device_rejects_a_malformed_id(stubs: Stubs) -> None:
    failure = rpc_error(lambda: stubs.catalog.GetDevice(pb.GetDeviceRequest(device_id="no way")))
    assert_invalid(failure, "device_id")


def test_list_devices_streams_in_id_order_across_batches_and_resumes(fresh: Stubs) -> None:
    ids = [f"dev-{n}" for n in (3, 0, 4, 1, 2)]
    for device_id in ids:
        make_device(fresh, device_id)
    check_paging(
        fresh.catalog.ListDevices,
        pb.ListDevicesRequest,
        "devices",
        lambda d: d.device_id,
        sorted(ids),
    )


def test_list_devices_resumes_a_lost_stream_from_its_last_token(fresh: Stubs) -> None:
    ids = sorted(make_device(fresh).device_id for _ in range(5))
    stream: Any = fresh.catalog.ListDevices(pb.ListDevicesRequest(page_size=2))
    first = next(stream)
    stream.cancel()  # the client loses the stream after one batch
    rest, _ = drain(
        fresh.catalog.ListDevices(
            pb.ListDevicesRequest(page_size=2, page_token=first.next_page_token)
        ),
        "devices",
    )
    assert [d.device_id for d in [*first.devices, *rest]] == ids


def test_list_devices_rejects_a_garbled_page_token(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.ListDevices(pb.ListDevicesRequest(page_token="not-a-token!"))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_PAGE_TOKEN"
    assert set(failure.fields) == {"page_token"}


def test_list_devices_rejects_the_token_of_another_listing(fresh: Stubs) -> None:
    make_dataset(fresh)
    make_dataset(fresh)
    token = first_batch(
        fresh.catalog.ListDatasets(pb.ListDatasetsRequest(page_size=1))
    ).next_page_token
    failure = rpc_error(lambda: fresh.catalog.ListDevices(pb.ListDevicesRequest(page_token=token)))
    assert failure.reason == "INVALID_PAGE_TOKEN"


@pytest.mark.parametrize("page_size", [-1, 1001])
def test_list_devices_rejects_a_page_size_out_of_range(stubs: Stubs, page_size: int) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.ListDevices(pb.ListDevicesRequest(page_size=page_size))
    )
    assert_invalid(failure, "page_size")


def test_delete_device_detaches_it_and_leaves_its_datasets_and_files_without_one(
    stubs: Stubs,
) -> None:
    device = make_device(stubs)
    other = make_device(stubs)
    dataset = make_dataset(stubs, device_id=device.device_id)
    file = register_file(stubs, dataset.dataset_id)
    assert file.device_id == device.device_id
    session = make_session(stubs, device_ids=[device.device_id, other.device_id])

    stubs.catalog.DeleteDevice(pb.DeleteDeviceRequest(device_id=device.device_id))

    assert_not_found(
        rpc_error(lambda: stubs.catalog.GetDevice(pb.GetDeviceRequest(device_id=device.device_id))),
        "DEVICE_NOT_FOUND",
    )
    attached, _ = drain(
        stubs.sessions.ListSessionDevices(
            sessions_pb.ListSessionDevicesRequest(session_id=session.session_id)
        ),
        "devices",
    )
    assert [d.device_id for d in attached] == [other.device_id]
    assert get_session(stubs, session.session_id).revision > session.revision
    dataset_after = stubs.catalog.GetDataset(
        pb.GetDatasetRequest(dataset_id=dataset.dataset_id)
    ).dataset
    assert dataset_after.device_id == ""
    assert get_file(stubs, file.file_id).device_id == ""


def test_a_deleted_device_id_can_be_registered_again(stubs: Stubs) -> None:
    device = make_device(stubs, name="first")
    stubs.catalog.DeleteDevice(pb.DeleteDeviceRequest(device_id=device.device_id))
    assert make_device(stubs, device.device_id, name="second").name == "second"


def test_delete_device_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.DeleteDevice(pb.DeleteDeviceRequest(device_id=unique("nobody-")))
    )
    assert_not_found(failure, "DEVICE_NOT_FOUND")


# --- datasets ------------------------------------------------------------------------------------


def test_create_dataset_then_get_returns_it(stubs: Stubs, identity: Identity) -> None:
    device = make_device(stubs)
    created = make_dataset(stubs, name="2026-04-23 uploads", device_id=device.device_id)
    assert created.dataset_id.startswith("ds_")
    assert created.org_id == identity.org_id
    assert created.name == "2026-04-23 uploads"
    assert created.device_id == device.device_id
    assert created.created_by == identity.principal_id
    fetched = stubs.catalog.GetDataset(pb.GetDatasetRequest(dataset_id=created.dataset_id))
    assert fetched.dataset == created


def test_create_dataset_without_a_device_or_name(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    assert dataset.device_id == ""
    assert dataset.name == ""


def test_create_dataset_with_an_unknown_device_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(lambda: make_dataset(stubs, device_id=unique("nobody-")))
    assert_not_found(failure, "DEVICE_NOT_FOUND")


def test_create_dataset_rejects_a_malformed_device_and_a_long_name_at_once(stubs: Stubs) -> None:
    failure = rpc_error(lambda: make_dataset(stubs, name="n" * 121, device_id="bad id"))
    assert_invalid(failure, "name", "device_id")


def test_get_dataset_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.GetDataset(pb.GetDatasetRequest(dataset_id=UNKNOWN_DATASET))
    )
    assert_not_found(failure, "DATASET_NOT_FOUND")


@pytest.mark.parametrize("dataset_id", ["", "fl_abc", "ds_UPPER", "ds_"])
def test_get_dataset_rejects_a_malformed_id(stubs: Stubs, dataset_id: str) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.GetDataset(pb.GetDatasetRequest(dataset_id=dataset_id))
    )
    assert_invalid(failure, "dataset_id")


def test_list_datasets_streams_newest_first_across_batches_and_resumes(fresh: Stubs) -> None:
    created = [make_dataset(fresh, name=f"upload {n}").dataset_id for n in range(5)]
    check_paging(
        fresh.catalog.ListDatasets,
        pb.ListDatasetsRequest,
        "datasets",
        lambda d: d.dataset_id,
        created[::-1],
    )


def test_list_datasets_rejects_a_garbled_page_token(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.ListDatasets(pb.ListDatasetsRequest(page_token="%%%"))
    )
    assert failure.reason == "INVALID_PAGE_TOKEN"


# --- registering files ---------------------------------------------------------------------------


def test_register_file_stores_partitions_extents_and_its_offset_window(
    stubs: Stubs, identity: Identity
) -> None:
    dataset = make_dataset(stubs)
    odom, imu, empty = unique("/odom"), unique("/imu"), unique("/empty")
    request = register_file_request(
        dataset.dataset_id,
        [
            partition(odom, [(100, 200), (300, 400)], "nav_msgs/msg/Odometry", "cdr", 10),
            partition(imu, [(50, 250)], "sensor_msgs/msg/Imu", "cdr", 5),
            partition(empty),
        ],
        offset=T0,
        path="run-1/log.mcap",
        size_bytes=1234,
    )
    file = stubs.catalog.RegisterFile(request).file

    assert file.file_id.startswith("fl_")
    assert file.org_id == identity.org_id
    assert file.dataset_id == dataset.dataset_id
    assert file.relative_path == "run-1/log.mcap"
    assert file.size_bytes == 1234
    assert file.device_id == ""
    assert file.unix_epoch_offset_ns == T0
    assert (file.min_timestamp_ns, file.max_timestamp_ns) == (T0 + 50, T0 + 400)
    assert file.created_by == identity.principal_id
    assert get_file(stubs, file.file_id) == file

    partitions = file_topics(stubs, file.file_id)
    assert [p.topic.name for p in partitions] == [empty, imu, odom]
    by_name = {p.topic.name: p for p in partitions}
    assert all(p.topic.topic_id.startswith("ti_") and p.file_id == file.file_id for p in partitions)
    assert by_name[odom].topic.schema_name == "nav_msgs/msg/Odometry"
    assert by_name[odom].topic.message_encoding == "cdr"
    assert by_name[odom].message_count == 10
    assert [(e.min_timestamp_ns, e.max_timestamp_ns) for e in by_name[odom].extents] == [
        (100, 200),
        (300, 400),
    ]
    assert list(by_name[empty].extents) == []
    assert by_name[empty].message_count == 0


def test_register_file_without_extents_has_no_window(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    file = register_file(stubs, dataset.dataset_id, [("/silent", [])], offset=T0)
    assert not file.HasField("min_timestamp_ns")
    assert not file.HasField("max_timestamp_ns")


def test_register_file_accepts_an_extent_of_one_instant(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    file = register_file(stubs, dataset.dataset_id, [("/once", [(7, 7)])])
    assert (file.min_timestamp_ns, file.max_timestamp_ns) == (7, 7)


def test_register_file_takes_the_dataset_device_unless_one_is_given(stubs: Stubs) -> None:
    recorder, other = make_device(stubs), make_device(stubs)
    dataset = make_dataset(stubs, device_id=recorder.device_id)
    assert register_file(stubs, dataset.dataset_id).device_id == recorder.device_id
    explicit = register_file(stubs, dataset.dataset_id, device_id=other.device_id)
    assert explicit.device_id == other.device_id
    assert register_file(stubs, make_dataset(stubs).dataset_id).device_id == ""


def test_register_file_matches_topics_by_name_and_schema_name(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    name = unique("/camera")
    first = register_file(stubs, dataset.dataset_id, [partition(name, schema_name="Image")])
    second = register_file(stubs, dataset.dataset_id, [partition(name, schema_name="Image")])
    other_schema = register_file(
        stubs, dataset.dataset_id, [partition(name, schema_name="CompressedImage")]
    )
    (a,) = file_topics(stubs, first.file_id)
    (b,) = file_topics(stubs, second.file_id)
    (c,) = file_topics(stubs, other_schema.file_id)
    assert a.topic == b.topic
    assert c.topic.topic_id != a.topic.topic_id


def test_concurrent_registrations_of_the_same_new_topics_share_one_identity_each(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    names = [unique("/shared") for _ in range(4)]

    def register(n: int) -> pb.File:
        # Each registration lists the topics in a different order.
        rotated = names[n % len(names) :] + names[: n % len(names)]
        return register_file(stubs, dataset.dataset_id, [(t, [(n, n + 1)]) for t in rotated])

    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(register, range(16)))

    identities = {
        (p.topic.name, p.topic.topic_id) for f in files for p in file_topics(stubs, f.file_id)
    }
    assert sorted(name for name, _ in identities) == sorted(names)


def test_register_file_with_a_taken_path_is_already_exists(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    register_file(stubs, dataset.dataset_id, path="logs/a.mcap")
    failure = rpc_error(lambda: register_file(stubs, dataset.dataset_id, path="logs/a.mcap"))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "ALREADY_EXISTS"
    # Paths are unique within a dataset only.
    assert register_file(stubs, make_dataset(stubs).dataset_id, path="logs/a.mcap").file_id


def test_register_file_rejects_an_empty_path(stubs: Stubs) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id)
    request.relative_path = ""
    assert_invalid(rpc_error(lambda: stubs.catalog.RegisterFile(request)), "relative_path")


def test_register_file_rejects_a_path_over_1024_characters(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    failure = rpc_error(lambda: register_file(stubs, dataset.dataset_id, path="p" * 1025))
    assert_invalid(failure, "relative_path")
    assert register_file(stubs, dataset.dataset_id, path="p" * 1024).relative_path == "p" * 1024


def test_register_file_rejects_a_negative_size(stubs: Stubs) -> None:
    failure = rpc_error(lambda: register_file(stubs, make_dataset(stubs).dataset_id, size_bytes=-1))
    assert_invalid(failure, "size_bytes")


def test_register_file_rejects_extent_with_min_after_max(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [(1, 2), (5, 4)])])
    )
    assert_invalid(failure, "partitions[0].extents[1].min_timestamp_ns")


def test_register_file_rejects_a_topic_listed_twice(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    failure = rpc_error(
        lambda: register_file(stubs, dataset.dataset_id, [("/a", []), ("/b", []), ("/a", [])])
    )
    assert_invalid(failure, "partitions[2].topic_name")
    # The same name with another schema is another topic.
    register_file(stubs, dataset.dataset_id, [partition("/a", schema_name="X"), partition("/a")])


def test_register_file_names_every_bad_partition_field(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    bad = partition("", schema_name="s" * 513, message_encoding="e" * 65, message_count=-1)
    long_name = partition("t" * 513)
    failure = rpc_error(lambda: register_file(stubs, dataset.dataset_id, [bad, long_name]))
    assert_invalid(
        failure,
        "partitions[0].topic_name",
        "partitions[0].schema_name",
        "partitions[0].message_encoding",
        "partitions[0].message_count",
        "partitions[1].topic_name",
    )


def test_register_file_reports_every_bad_top_level_field_at_once(stubs: Stubs) -> None:
    request = register_file_request("not-a-dataset", size_bytes=-5, device_id="bad id")
    request.relative_path = ""
    failure = rpc_error(lambda: stubs.catalog.RegisterFile(request))
    assert_invalid(failure, "dataset_id", "relative_path", "size_bytes", "device_id")


def test_register_file_lists_the_first_10_violations_and_counts_the_rest(
    stubs: Stubs,
) -> None:
    # The status must fit the 8 KiB of trailing metadata that gRPC clients accept.
    extents = [(2, 1)] * 120
    failure = rpc_error(
        lambda: register_file(stubs, make_dataset(stubs).dataset_id, [("/a", extents)])
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert len(failure.fields) == 11
    assert "110 more" in failure.fields["*"]


@pytest.mark.parametrize(
    ("extent", "offset"),
    [
        ((0, INT64_MAX), 1),
        ((INT64_MIN, 0), -1),
        ((INT64_MAX - 5, INT64_MAX - 5), 10),
        ((-10, 10), INT64_MAX),
        ((-10, 10), INT64_MIN),
        ((0, EPOCH_MAX), 1),
        ((EPOCH_MIN, 0), -1),
    ],
)
def test_register_file_rejects_extents_outside_the_epoch_range_with_the_offset(
    stubs: Stubs, extent: tuple[int, int], offset: int
) -> None:
    failure = rpc_error(
        lambda: register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [extent])], offset)
    )
    assert_invalid(failure, "unix_epoch_offset_ns")


def test_register_file_accepts_extents_that_reach_the_epoch_limits_with_the_offset(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    top = register_file(stubs, dataset.dataset_id, [("/a", [(0, EPOCH_MAX - 10)])], 10)
    assert top.max_timestamp_ns == EPOCH_MAX
    bottom = register_file(stubs, dataset.dataset_id, [("/a", [(EPOCH_MIN + 10, 0)])], -10)
    assert bottom.min_timestamp_ns == EPOCH_MIN


def test_sessions_spanning_the_whole_epoch_range_keep_a_duration(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    low = register_file(stubs, dataset.dataset_id, [("/a", [(EPOCH_MIN, EPOCH_MIN)])])
    high = register_file(stubs, dataset.dataset_id, [("/a", [(EPOCH_MAX, EPOCH_MAX)])])
    session = make_session(stubs)
    bounded = add_files(stubs, session.session_id, low.file_id, high.file_id)
    assert (bounded.min_timestamp_ns, bounded.max_timestamp_ns) == (EPOCH_MIN, EPOCH_MAX)


def test_register_file_rejects_more_than_100000_extents_in_all(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    # The limit is the file's total, however the extents are spread over its partitions.
    topics = [(f"/t{n}", [(k, k) for k in range(1_000)]) for n in range(100)]
    failure = rpc_error(
        lambda: register_file(stubs, dataset.dataset_id, [*topics, ("/one-more", [(0, 0)])])
    )
    assert_invalid(failure, "partitions")
    assert "100,000 extents" in failure.fields["partitions"]


def test_register_file_stores_100000_extents_of_one_partition_in_order(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    extents = [(n, n + 1) for n in range(100_000)]
    file = register_file(stubs, dataset.dataset_id, [("/a", extents)])
    assert (file.min_timestamp_ns, file.max_timestamp_ns) == (0, 100_000)
    (stored,) = file_topics(stubs, file.file_id)
    assert [(e.min_timestamp_ns, e.max_timestamp_ns) for e in stored.extents] == extents


def test_register_file_rejects_more_than_10000_partitions(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    topics = [(f"/t{n}", [(n, n)]) for n in range(10_001)]
    failure = rpc_error(lambda: register_file(stubs, dataset.dataset_id, topics))
    assert_invalid(failure, "partitions")


def test_register_file_stores_10000_partitions_in_one_call(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    prefix = unique("/bulk")
    file = register_file(
        stubs, dataset.dataset_id, [(f"{prefix}/{n:05}", [(n, n)]) for n in range(10_000)]
    )
    assert (file.min_timestamp_ns, file.max_timestamp_ns) == (0, 9_999)
    partitions, tokens = drain(
        stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(file_id=file.file_id, page_size=1000)
        ),
        "partitions",
    )
    assert len(partitions) == 10_000
    assert len(tokens) == 10
    assert partitions[-1].topic.name == f"{prefix}/09999"


def test_register_file_in_an_unknown_dataset_is_not_found(stubs: Stubs) -> None:
    assert_not_found(rpc_error(lambda: register_file(stubs, UNKNOWN_DATASET)), "DATASET_NOT_FOUND")


def test_register_file_with_an_unknown_device_is_not_found(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    failure = rpc_error(
        lambda: register_file(stubs, dataset.dataset_id, device_id=unique("nobody-"))
    )
    assert_not_found(failure, "DEVICE_NOT_FOUND")


# --- reading files -------------------------------------------------------------------------------


def test_get_file_of_an_unknown_id_is_not_found_naming_it(stubs: Stubs) -> None:
    failure = rpc_error(lambda: get_file(stubs, UNKNOWN_FILE))
    assert_not_found(failure, "FILE_NOT_FOUND")
    assert failure.metadata["ids"] == UNKNOWN_FILE


def test_get_file_rejects_a_malformed_id(stubs: Stubs) -> None:
    assert_invalid(rpc_error(lambda: get_file(stubs, "file-1")), "file_id")


def test_list_files_of_a_dataset_in_path_order_across_batches_and_resumes(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    paths = [f"logs/{n}.mcap" for n in (2, 4, 0, 3, 1)]
    for path in paths:
        register_file(stubs, dataset.dataset_id, path=path)
    check_paging(
        stubs.catalog.ListFiles,
        pb.ListFilesRequest,
        "files",
        lambda f: f.relative_path,
        sorted(paths),
        dataset_id=dataset.dataset_id,
    )


def test_list_files_without_a_dataset_streams_every_file_of_the_org_by_id(fresh: Stubs) -> None:
    first, second = make_dataset(fresh), make_dataset(fresh)
    ids = [
        register_file(fresh, d.dataset_id).file_id for d in (first, second, first, second, first)
    ]
    check_paging(
        fresh.catalog.ListFiles, pb.ListFilesRequest, "files", lambda f: f.file_id, sorted(ids)
    )


def test_list_files_token_is_bound_to_its_dataset(stubs: Stubs) -> None:
    first, second = make_dataset(stubs), make_dataset(stubs)
    for _ in range(2):
        register_file(stubs, first.dataset_id)
    token = first_batch(
        stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id=first.dataset_id, page_size=1))
    ).next_page_token
    failure = rpc_error(
        lambda: stubs.catalog.ListFiles(
            pb.ListFilesRequest(dataset_id=second.dataset_id, page_token=token)
        )
    )
    assert failure.reason == "INVALID_PAGE_TOKEN"


def test_list_files_of_an_unknown_dataset_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id=UNKNOWN_DATASET))
    )
    assert_not_found(failure, "DATASET_NOT_FOUND")


def test_list_files_rejects_a_malformed_dataset_id(stubs: Stubs) -> None:
    failure = rpc_error(lambda: stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id="x")))
    assert_invalid(failure, "dataset_id")


def test_list_file_topics_by_name_across_batches_and_resumes(stubs: Stubs) -> None:
    prefix = unique("/t")
    names = [f"{prefix}/{n}" for n in (1, 4, 0, 2, 3)]
    file = register_file(stubs, make_dataset(stubs).dataset_id, [(n, [(1, 2)]) for n in names])
    check_paging(
        stubs.catalog.ListFileTopics,
        pb.ListFileTopicsRequest,
        "partitions",
        lambda p: p.topic.name,
        sorted(names),
        file_id=file.file_id,
    )


def test_list_file_topics_rejects_a_garbled_page_token(stubs: Stubs) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id)
    failure = rpc_error(
        lambda: stubs.catalog.ListFileTopics(
            pb.ListFileTopicsRequest(file_id=file.file_id, page_token="eyJzIjoxfQ")
        )
    )
    assert failure.reason == "INVALID_PAGE_TOKEN"


def test_list_file_topics_of_an_unknown_file_is_not_found(stubs: Stubs) -> None:
    assert_not_found(rpc_error(lambda: file_topics(stubs, UNKNOWN_FILE)), "FILE_NOT_FOUND")


# --- timeline offsets ----------------------------------------------------------------------------


def test_offset_change_moves_the_file_window_and_recomputes_bounds_of_its_sessions(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    moving = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])], T0)
    steady = register_file(stubs, dataset.dataset_id, [("/a", [(150, 300)])], T0)
    whole = add_files(stubs, make_session(stubs).session_id, moving.file_id, steady.file_id)
    assert bounds(whole) == (T0 + 100, T0 + 300)
    clipped = add_files(stubs, make_session(stubs).session_id, moving.file_id, window=(T0, T0 + 10))
    unrelated = add_files(stubs, make_session(stubs).session_id, steady.file_id)

    moved = set_offset(stubs, moving.file_id, T0 + 1000)

    assert moved.unix_epoch_offset_ns == T0 + 1000
    assert (moved.min_timestamp_ns, moved.max_timestamp_ns) == (T0 + 1100, T0 + 1200)
    assert get_file(stubs, moving.file_id) == moved
    after = get_session(stubs, whole.session_id)
    assert bounds(after) == (T0 + 150, T0 + 1200)
    assert after.revision > whole.revision
    # A windowed contribution keeps its window whatever the file's offset.
    assert bounds(get_session(stubs, clipped.session_id)) == (T0, T0 + 10)
    assert get_session(stubs, unrelated.session_id).revision == unrelated.revision


def test_concurrent_offset_changes_and_file_edits_leave_no_session_bounds_stale(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    file = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])], T0)
    sessions = [make_session(stubs).session_id for _ in range(6)]

    def work(n: int) -> None:
        session_id = sessions[n % len(sessions)]
        if n % 3 == 0:
            set_offset(stubs, file.file_id, T0 + n)
        elif n % 3 == 1:
            add_files(stubs, session_id, file.file_id)
        else:
            stubs.sessions.RemoveSessionFiles(
                sessions_pb.RemoveSessionFilesRequest(
                    session_id=session_id, file_ids=[file.file_id]
                )
            )

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(work, range(60)))

    # The file is the only possible contribution, whole: a session's bounds are either null or
    # exactly the file's current window. A stale session would show an older offset's window.
    final = get_file(stubs, file.file_id)
    window = (final.min_timestamp_ns, final.max_timestamp_ns)
    after = {s: bounds(get_session(stubs, s)) for s in sessions}
    assert set(after.values()) <= {None, window}, (window, after)
    holding = [s for s, b in after.items() if b is not None]
    set_offset(stubs, file.file_id, final.unix_epoch_offset_ns + 1)
    assert {s: bounds(get_session(stubs, s)) for s in holding} == {
        s: (window[0] + 1, window[1] + 1) for s in holding
    }


def test_offset_change_to_the_same_value_changes_no_session(stubs: Stubs) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [(1, 2)])], T0)
    session = add_files(stubs, make_session(stubs).session_id, file.file_id)
    assert set_offset(stubs, file.file_id, T0) == file
    assert get_session(stubs, session.session_id).revision == session.revision


def test_offset_change_can_move_a_file_before_the_epoch(stubs: Stubs) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [(100, 200)])])
    session = add_files(stubs, make_session(stubs).session_id, file.file_id)
    set_offset(stubs, file.file_id, -1000)
    assert bounds(get_session(stubs, session.session_id)) == (-900, -800)


@pytest.mark.parametrize("offset", [INT64_MAX - 50, INT64_MIN + 50])
def test_offset_change_rejects_an_offset_that_overflows_the_extents(
    stubs: Stubs, offset: int
) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [(-100, 100)])], T0)
    assert_invalid(
        rpc_error(lambda: set_offset(stubs, file.file_id, offset)), "unix_epoch_offset_ns"
    )
    assert get_file(stubs, file.file_id) == file


def test_offset_change_of_a_file_without_extents_accepts_any_offset(stubs: Stubs) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id, [("/a", [])])
    assert set_offset(stubs, file.file_id, INT64_MAX).unix_epoch_offset_ns == INT64_MAX


def test_offset_change_of_an_unknown_file_is_not_found(stubs: Stubs) -> None:
    assert_not_found(rpc_error(lambda: set_offset(stubs, UNKNOWN_FILE, 1)), "FILE_NOT_FOUND")


def test_offset_change_rejects_a_malformed_file_id(stubs: Stubs) -> None:
    assert_invalid(rpc_error(lambda: set_offset(stubs, "", 1)), "file_id")


# --- deleting files ------------------------------------------------------------------------------


def test_delete_file_removes_its_contributions_and_recomputes_session_bounds(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    kept = register_file(stubs, dataset.dataset_id, [("/a", [(100, 200)])], T0)
    doomed = register_file(stubs, dataset.dataset_id, [("/a", [(150, 300)])], T0)
    both = add_files(stubs, make_session(stubs).session_id, kept.file_id, doomed.file_id)
    only = add_files(stubs, make_session(stubs).session_id, doomed.file_id)
    assert bounds(both) == (T0 + 100, T0 + 300)
    assert bounds(only) == (T0 + 150, T0 + 300)

    stubs.catalog.DeleteFile(pb.DeleteFileRequest(file_id=doomed.file_id))

    after_both = get_session(stubs, both.session_id)
    assert bounds(after_both) == (T0 + 100, T0 + 200)
    assert after_both.revision > both.revision
    assert bounds(get_session(stubs, only.session_id)) is None
    assert_not_found(rpc_error(lambda: get_file(stubs, doomed.file_id)), "FILE_NOT_FOUND")
    assert_not_found(
        rpc_error(lambda: add_files(stubs, both.session_id, doomed.file_id)), "FILE_NOT_FOUND"
    )
    listed, _ = drain(
        stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id=dataset.dataset_id)), "files"
    )
    assert [f.file_id for f in listed] == [kept.file_id]


def test_delete_file_keeps_topics_that_other_files_record(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    name = unique("/shared")
    doomed = register_file(stubs, dataset.dataset_id, [(name, [(1, 2)])])
    kept = register_file(stubs, dataset.dataset_id, [(name, [(3, 4)])])
    (before,) = file_topics(stubs, kept.file_id)
    stubs.catalog.DeleteFile(pb.DeleteFileRequest(file_id=doomed.file_id))
    assert file_topics(stubs, kept.file_id) == [before]
    assert_not_found(rpc_error(lambda: file_topics(stubs, doomed.file_id)), "FILE_NOT_FOUND")


def test_a_deleted_file_path_can_be_registered_again(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    file = register_file(stubs, dataset.dataset_id, path="again.mcap")
    stubs.catalog.DeleteFile(pb.DeleteFileRequest(file_id=file.file_id))
    assert register_file(stubs, dataset.dataset_id, path="again.mcap").file_id != file.file_id


def test_delete_file_of_an_unknown_id_is_not_found(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.DeleteFile(pb.DeleteFileRequest(file_id=UNKNOWN_FILE))
    )
    assert_not_found(failure, "FILE_NOT_FOUND")


# --- tenancy -------------------------------------------------------------------------------------


def test_another_org_gets_not_found_for_every_rpc_on_this_orgs_catalog(
    stubs: Stubs, other_stubs: Stubs
) -> None:
    device = make_device(stubs)
    dataset = make_dataset(stubs, device_id=device.device_id)
    file = register_file(stubs, dataset.dataset_id, [("/a", [(1, 2)])])
    catalog = other_stubs.catalog
    calls: list[tuple[Callable[[], Any], str]] = [
        (lambda: catalog.GetDevice(pb.GetDeviceRequest(device_id=device.device_id)), "DEVICE"),
        (
            lambda: catalog.DeleteDevice(pb.DeleteDeviceRequest(device_id=device.device_id)),
            "DEVICE",
        ),
        (lambda: make_dataset(other_stubs, device_id=device.device_id), "DEVICE"),
        (
            lambda: catalog.GetDataset(pb.GetDatasetRequest(dataset_id=dataset.dataset_id)),
            "DATASET",
        ),
        (lambda: register_file(other_stubs, dataset.dataset_id), "DATASET"),
        (lambda: catalog.ListFiles(pb.ListFilesRequest(dataset_id=dataset.dataset_id)), "DATASET"),
        (lambda: get_file(other_stubs, file.file_id), "FILE"),
        (lambda: file_topics(other_stubs, file.file_id), "FILE"),
        (lambda: set_offset(other_stubs, file.file_id, 5), "FILE"),
        (lambda: catalog.DeleteFile(pb.DeleteFileRequest(file_id=file.file_id)), "FILE"),
    ]
    for call, kind in calls:
        assert_not_found(rpc_error(call), f"{kind}_NOT_FOUND")

    # Nothing changed in this org, and device IDs are only unique within an org.
    assert stubs.catalog.GetDevice(pb.GetDeviceRequest(device_id=device.device_id)).device == device
    assert get_file(stubs, file.file_id) == file
    assert make_device(other_stubs, device.device_id).device_id == device.device_id


def test_another_org_sees_none_of_this_orgs_catalog_in_lists(
    stubs: Stubs, other_stubs: Stubs
) -> None:
    device = make_device(stubs)
    dataset = make_dataset(stubs)
    file = register_file(stubs, dataset.dataset_id)
    catalog = other_stubs.catalog
    devices, _ = drain(catalog.ListDevices(pb.ListDevicesRequest()), "devices")
    datasets, _ = drain(catalog.ListDatasets(pb.ListDatasetsRequest()), "datasets")
    files, _ = drain(catalog.ListFiles(pb.ListFilesRequest()), "files")
    assert all(d.org_id != device.org_id for d in devices)
    assert dataset.dataset_id not in {d.dataset_id for d in datasets}
    assert all(d.org_id != dataset.org_id for d in datasets)
    assert file.file_id not in {f.file_id for f in files}
    assert all(f.org_id != file.org_id for f in files)


# --- idempotency keys ----------------------------------------------------------------------------


def test_create_dataset_with_a_request_id_returns_the_first_dataset_on_replay(
    stubs: Stubs,
) -> None:
    key = unique("create-dataset")
    request = pb.CreateDatasetRequest(name="replayed", request_id=key)
    first = stubs.catalog.CreateDataset(request).dataset
    again = stubs.catalog.CreateDataset(request).dataset
    assert again == first

    other_body = pb.CreateDatasetRequest(name="another name", request_id=key)
    failure = rpc_error(lambda: stubs.catalog.CreateDataset(other_body))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


def test_register_file_with_a_request_id_returns_the_first_file_on_replay(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    request = register_file_request(dataset.dataset_id, [("/a", [(T0, T0 + 10)])])
    request.request_id = unique("register")
    first = stubs.catalog.RegisterFile(request).file
    # The path is taken by now; the replay is still answered with the same file.
    again = stubs.catalog.RegisterFile(request).file
    assert again == first
    files, _ = drain(
        stubs.catalog.ListFiles(pb.ListFilesRequest(dataset_id=dataset.dataset_id)), "files"
    )
    assert [f.file_id for f in files] == [first.file_id]

    request.size_bytes += 1
    failure = rpc_error(lambda: stubs.catalog.RegisterFile(request))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


def test_concurrent_duplicate_registrations_make_one_file(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    request = register_file_request(dataset.dataset_id, [("/a", [(T0, T0 + 10)])])
    request.request_id = unique("register-race")
    with ThreadPoolExecutor(max_workers=8) as pool:
        files = list(pool.map(lambda _: stubs.catalog.RegisterFile(request).file, range(16)))
    assert len({f.file_id for f in files}) == 1


def test_a_request_id_over_128_characters_is_invalid(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.catalog.CreateDataset(pb.CreateDatasetRequest(request_id="k" * 129))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "request_id" in failure.fields


# --- content identity and recovered files --------------------------------------------------------

SHA_A = "a" * 63 + "1"
SHA_B = "b" * 63 + "2"


def _recovery(
    reason: pb.RecoveryReason.ValueType = pb.RECOVERY_REASON_TRUNCATED,
    readable_bytes: int = 10,
    detail: str = "cut",
) -> pb.FileRecovery:
    return pb.FileRecovery(reason=reason, detail=detail, readable_bytes=readable_bytes)


def _list_files(stubs: Stubs, **fields: Any) -> list[pb.File]:
    files, _ = drain(stubs.catalog.ListFiles(pb.ListFilesRequest(**fields)), "files")
    return files


def test_register_file_stores_its_content_hash_in_lowercase(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    request = register_file_request(dataset.dataset_id)
    request.content_sha256 = SHA_A.upper()

    file = stubs.catalog.RegisterFile(request).file

    assert file.content_sha256 == SHA_A
    assert get_file(stubs, file.file_id).content_sha256 == SHA_A
    assert not file.HasField("recovery")


def test_a_file_registered_without_a_hash_has_an_empty_one(stubs: Stubs) -> None:
    file = register_file(stubs, make_dataset(stubs).dataset_id)
    assert file.content_sha256 == ""


def test_list_files_finds_files_by_content_hash_in_a_dataset_and_in_the_org(fresh: Stubs) -> None:
    first, second = make_dataset(fresh), make_dataset(fresh)
    wanted = []
    for dataset, sha in ((first, SHA_A), (first, SHA_B), (second, SHA_A), (first, SHA_A)):
        request = register_file_request(dataset.dataset_id)
        request.content_sha256 = sha
        file = fresh.catalog.RegisterFile(request).file
        if sha == SHA_A:
            wanted.append(file)

    in_first = [f for f in wanted if f.dataset_id == first.dataset_id]
    check_paging(
        fresh.catalog.ListFiles,
        pb.ListFilesRequest,
        "files",
        lambda f: f.file_id,
        [f.file_id for f in sorted(in_first, key=lambda f: f.relative_path)],
        dataset_id=first.dataset_id,
        content_sha256=SHA_A,
    )
    check_paging(
        fresh.catalog.ListFiles,
        pb.ListFilesRequest,
        "files",
        lambda f: f.file_id,
        sorted(f.file_id for f in wanted),
        content_sha256=SHA_A.upper(),  # either case finds them
    )
    assert _list_files(fresh, content_sha256="c" * 64) == []


def test_another_org_cannot_find_a_file_by_its_content_hash(
    stubs: Stubs, other_stubs: Stubs
) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id)
    request.content_sha256 = unique("").ljust(64, "0")
    stubs.catalog.RegisterFile(request)

    assert _list_files(other_stubs, content_sha256=request.content_sha256) == []


@pytest.mark.parametrize("sha", ["abc", "a" * 63, "a" * 65, "g" * 64, " " + "a" * 63])
def test_register_file_and_list_files_reject_a_malformed_content_hash(
    stubs: Stubs, sha: str
) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id)
    request.content_sha256 = sha
    assert_invalid(rpc_error(lambda: stubs.catalog.RegisterFile(request)), "content_sha256")
    failure = rpc_error(lambda: _list_files(stubs, content_sha256=sha))
    assert_invalid(failure, "content_sha256")


def test_a_recovered_file_carries_its_recovery_and_the_message_count_of_its_partitions(
    stubs: Stubs,
) -> None:
    dataset = make_dataset(stubs)
    request = register_file_request(
        dataset.dataset_id,
        [partition("/a", [(T0, T0 + 5)], message_count=7), partition("/b", message_count=0)],
        size_bytes=1000,
    )
    request.recovery.CopyFrom(
        pb.FileRecovery(
            reason=pb.RECOVERY_REASON_CORRUPT,
            detail="Chunk at byte 512 does not decompress",
            message_count=999,  # output only: ignored
            readable_bytes=512,
        )
    )

    file = stubs.catalog.RegisterFile(request).file

    expected = pb.FileRecovery(
        reason=pb.RECOVERY_REASON_CORRUPT,
        detail="Chunk at byte 512 does not decompress",
        message_count=7,
        readable_bytes=512,
    )
    assert file.recovery == expected
    assert get_file(stubs, file.file_id).recovery == expected


def test_list_files_filters_recovered_and_intact_files(fresh: Stubs) -> None:
    dataset = make_dataset(fresh)
    recovered: list[pb.File] = []
    intact: list[pb.File] = []
    for n in range(5):
        request = register_file_request(dataset.dataset_id, path=f"run/{n}.mcap", size_bytes=100)
        if n % 2 == 0:
            request.recovery.CopyFrom(_recovery())
        file = fresh.catalog.RegisterFile(request).file
        (recovered if n % 2 == 0 else intact).append(file)

    for flag, files in ((True, recovered), (False, intact)):
        check_paging(
            fresh.catalog.ListFiles,
            pb.ListFilesRequest,
            "files",
            lambda f: f.file_id,
            [f.file_id for f in files],
            dataset_id=dataset.dataset_id,
            recovered=flag,
        )
        check_paging(
            fresh.catalog.ListFiles,
            pb.ListFilesRequest,
            "files",
            lambda f: f.file_id,
            sorted(f.file_id for f in files),
            recovered=flag,
        )
    assert all(f.HasField("recovery") for f in _list_files(fresh, recovered=True))
    assert len(_list_files(fresh)) == 5


def test_list_files_tokens_are_bound_to_the_hash_and_recovery_filters(fresh: Stubs) -> None:
    dataset = make_dataset(fresh)
    for _ in range(3):
        request = register_file_request(dataset.dataset_id, size_bytes=100)
        request.content_sha256 = SHA_A
        request.recovery.CopyFrom(_recovery())
        fresh.catalog.RegisterFile(request)

    def token(**fields: Any) -> str:
        request = pb.ListFilesRequest(page_size=1, **fields)
        return str(first_batch(fresh.catalog.ListFiles(request)).next_page_token)

    for issued, other in (
        ({"recovered": True}, {"recovered": False}),
        ({"recovered": True}, {}),
        ({"content_sha256": SHA_A}, {"content_sha256": SHA_B}),
        ({"content_sha256": SHA_A}, {}),
    ):
        page_token = token(**issued)
        failure = rpc_error(
            lambda: _list_files(fresh, page_token=page_token, **other)  # noqa: B023
        )
        assert failure.reason == "INVALID_PAGE_TOKEN", (issued, other)


def test_register_file_names_every_bad_recovery_field_at_once(stubs: Stubs) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id, size_bytes=100)
    request.recovery.CopyFrom(
        pb.FileRecovery(reason=pb.RECOVERY_REASON_UNSPECIFIED, detail="a\nb", readable_bytes=101)
    )
    failure = rpc_error(lambda: stubs.catalog.RegisterFile(request))
    assert_invalid(failure, "recovery.reason", "recovery.detail", "recovery.readable_bytes")


@pytest.mark.parametrize(
    ("recovery", "field"),
    [
        (_recovery(reason=pb.RecoveryReason.ValueType(99)), "recovery.reason"),
        (_recovery(readable_bytes=-1), "recovery.readable_bytes"),
        (_recovery(detail="x" * 1001), "recovery.detail"),
        (_recovery(detail="nul\x00"), "recovery.detail"),
    ],
)
def test_register_file_rejects_a_bad_recovery(
    stubs: Stubs, recovery: pb.FileRecovery, field: str
) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id, size_bytes=100)
    request.recovery.CopyFrom(recovery)
    assert_invalid(rpc_error(lambda: stubs.catalog.RegisterFile(request)), field)


def test_a_recovery_may_cover_every_byte_or_none(stubs: Stubs) -> None:
    dataset = make_dataset(stubs)
    for readable in (0, 100):
        request = register_file_request(dataset.dataset_id, size_bytes=100)
        request.recovery.CopyFrom(_recovery(readable_bytes=readable))
        assert stubs.catalog.RegisterFile(request).file.recovery.readable_bytes == readable


def test_a_replayed_registration_with_another_recovery_is_a_reused_request_id(
    stubs: Stubs,
) -> None:
    request = register_file_request(make_dataset(stubs).dataset_id, size_bytes=100)
    request.request_id = unique("recovered")
    request.recovery.CopyFrom(_recovery(readable_bytes=50))
    first = stubs.catalog.RegisterFile(request).file
    assert stubs.catalog.RegisterFile(request).file == first

    request.recovery.readable_bytes = 60
    failure = rpc_error(lambda: stubs.catalog.RegisterFile(request))
    assert (failure.code, failure.reason) == (grpc.StatusCode.ALREADY_EXISTS, "REQUEST_ID_REUSED")


# --- datasets by name ----------------------------------------------------------------------------


def test_list_datasets_by_name_streams_only_the_datasets_of_that_name(fresh: Stubs) -> None:
    name = unique("flights")
    named = []
    for n in range(5):
        named.append(make_dataset(fresh, name=name).dataset_id)
        make_dataset(fresh, name=f"{name}-{n}")  # a longer name is not that name
    make_dataset(fresh, name=name.upper())

    check_paging(
        fresh.catalog.ListDatasets,
        pb.ListDatasetsRequest,
        "datasets",
        lambda d: d.dataset_id,
        named[::-1],
        name=name,
    )
    datasets, _ = drain(
        fresh.catalog.ListDatasets(pb.ListDatasetsRequest(name=unique("none"))), "datasets"
    )
    assert datasets == []


def test_list_datasets_token_is_bound_to_the_name(fresh: Stubs) -> None:
    name = unique("bound")
    for _ in range(2):
        make_dataset(fresh, name=name)
    page_token = first_batch(
        fresh.catalog.ListDatasets(pb.ListDatasetsRequest(name=name, page_size=1))
    ).next_page_token
    failure = rpc_error(
        lambda: list(fresh.catalog.ListDatasets(pb.ListDatasetsRequest(page_token=page_token)))
    )
    assert failure.reason == "INVALID_PAGE_TOKEN"


def test_list_datasets_rejects_a_name_over_120_characters(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: list(stubs.catalog.ListDatasets(pb.ListDatasetsRequest(name="n" * 121)))
    )
    assert_invalid(failure, "name")


def test_a_recovered_file_whose_message_counts_overflow_int64_is_invalid(stubs: Stubs) -> None:
    request = register_file_request(
        make_dataset(stubs).dataset_id,
        [partition("/a", message_count=INT64_MAX), partition("/b", message_count=1)],
        size_bytes=100,
    )
    request.recovery.CopyFrom(_recovery())
    assert_invalid(rpc_error(lambda: stubs.catalog.RegisterFile(request)), "partitions")
