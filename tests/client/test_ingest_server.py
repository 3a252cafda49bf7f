"""``flightlog ingest`` against a real server: recordings become files, topics and sessions."""

from __future__ import annotations

from pathlib import Path

from flightlog import FlightlogClient, Session, catalog
from flightlog.ingest import ingest_recordings
from tests.client.cli_support import flightlog
from tests.client.conftest import EnsureDevice, truncated_copy, unique
from tests.client.recordings import (
    BY_NAME,
    MANIFEST,
    SPLIT_END_NS,
    SPLIT_MESSAGES,
    SPLIT_RECORDING,
    SPLIT_START_NS,
)


def _session_named(name: str, client: FlightlogClient) -> Session:
    (session,) = [s for s in Session.query(name_contains=name, client=client) if s.name == name]
    return session


def test_the_split_recording_becomes_one_session_spanning_its_three_files(
    cli_env: dict[str, str],
    flightlog_client: FlightlogClient,
    fresh_dataset: catalog.Dataset,
    ensure_device: EnsureDevice,
) -> None:
    device = ensure_device(unique("dv-talker"))
    name = unique("split")
    paths = [str(r.path) for r in SPLIT_RECORDING]

    result = flightlog(
        "--json", "ingest", *paths, "--dataset", fresh_dataset.dataset_id,
        "--device", device, "--session", name,
    )  # fmt: skip

    assert result.code == 0, result.stderr
    *files, last = result.json_lines()
    assert [f["relative_path"] for f in files] == [r.file_name for r in SPLIT_RECORDING]
    assert sum(f["message_count"] for f in files) == SPLIT_MESSAGES
    assert last["session"]["name"] == name
    session = _session_named(name, flightlog_client)
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (SPLIT_START_NS, SPLIT_END_NS)
    assert [f.relative_path for f in session.list_files()] == [r.file_name for r in SPLIT_RECORDING]
    assert [t.name for t in session.list_topics()] == ["/chatter"]
    assert list(session.list_devices()) == [device]


def test_ingesting_again_reuses_the_files_and_extends_the_same_session(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, fresh_dataset: catalog.Dataset
) -> None:
    name = unique("again")
    first, second, third = (str(r.path) for r in SPLIT_RECORDING)

    assert (
        flightlog("ingest", first, "--dataset", fresh_dataset.dataset_id, "--session", name).code
        == 0
    )
    again = flightlog(
        "ingest", first, second, third, "--dataset", fresh_dataset.dataset_id, "--session", name
    )

    assert again.code == 0, again.stderr
    assert "already registered" in again.stdout
    session = _session_named(name, flightlog_client)
    assert len(list(session.list_files())) == 3
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (SPLIT_START_NS, SPLIT_END_NS)
    assert len(list(catalog.list_files(fresh_dataset.dataset_id, client=flightlog_client))) == 3


def test_every_shared_recording_registers_its_topics_counts_and_extents(
    flightlog_client: FlightlogClient, fresh_dataset: catalog.Dataset
) -> None:
    result = ingest_recordings(
        [r.path for r in MANIFEST], fresh_dataset.dataset_id, client=flightlog_client
    )

    assert result.failures == []
    for expected, ingested in zip(MANIFEST, result.files, strict=True):
        file = ingested.file
        assert file.relative_path == expected.file_name
        assert file.size_bytes == expected.size_bytes
        assert (file.min_timestamp_ns, file.max_timestamp_ns) == (
            expected.start_ns,
            expected.end_ns,
        )
        partitions = {
            p.topic.name: p for p in catalog.list_file_topics(file.file_id, client=flightlog_client)
        }
        assert sorted(partitions) == sorted(t.name for t in expected.topics)
        for topic in expected.topics:
            partition = partitions[topic.name]
            assert partition.topic.schema_name == topic.schema_name
            assert partition.topic.message_encoding == expected.message_encoding
            assert partition.message_count == topic.message_count
            assert len(partition.extents) == (1 if topic.message_count else 0)


def test_the_lz4_out_of_order_and_empty_channel_files_ingest_into_a_session(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, fresh_dataset: catalog.Dataset
) -> None:
    name = unique("edge-cases")
    files = [
        BY_NAME["depthai_recording_lz4.mcap"],
        BY_NAME["lichtblick_example_logs_out_of_order.mcap"],
        BY_NAME["rosbag2_talker.mcap"],
    ]

    result = flightlog(
        "ingest", *(str(f.path) for f in files), "--dataset", fresh_dataset.dataset_id,
        "--session", name,
    )  # fmt: skip

    assert result.code == 0, result.stderr
    session = _session_named(name, flightlog_client)
    assert session.min_timestamp_ns == min(f.start_ns for f in files)
    assert session.max_timestamp_ns == max(f.end_ns for f in files)
    topics = [t.name for t in session.list_topics()]
    # Two /rosout topics: same name, different schemas (foxglove.Log, rcl_interfaces/msg/Log).
    # /parameter_events has no messages, so no extent to overlap the window.
    assert topics == ["/rosout", "/rosout", "/topic", "mouse", "video"]


def test_a_truncated_file_is_reported_and_skipped(
    cli_env: dict[str, str],
    flightlog_client: FlightlogClient,
    fresh_dataset: catalog.Dataset,
    tmp_path: Path,
) -> None:
    cut = truncated_copy(BY_NAME["evo_nav2_turtlebot.mcap"].path, tmp_path)
    good = BY_NAME["rosbag2_talker.mcap"].path
    name = unique("partial")

    result = flightlog(
        "ingest", str(cut), str(good), "--dataset", fresh_dataset.dataset_id, "--session", name
    )

    assert result.code == 8, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    (line,) = lines
    assert line.startswith(f"error: {cut}: ")
    assert "truncated" in line
    registered = [
        f.relative_path
        for f in catalog.list_files(fresh_dataset.dataset_id, client=flightlog_client)
    ]
    assert registered == ["rosbag2_talker.mcap"]
    session = _session_named(name, flightlog_client)
    assert [f.relative_path for f in session.list_files()] == ["rosbag2_talker.mcap"]


def test_ingest_without_a_dataset_creates_one(cli_env: dict[str, str]) -> None:
    path = BY_NAME["depthai_recording_lz4.mcap"].path
    result = flightlog("--json", "ingest", str(path), "--dataset-name", unique("auto"))

    assert result.code == 0, result.stderr
    (line,) = result.json_lines()
    assert line["dataset_id"].startswith("ds_")
    assert line["topics"][0]["topic_name"] == "video"


def test_an_unknown_dataset_fails_before_reading_anything(cli_env: dict[str, str]) -> None:
    path = BY_NAME["rosbag2_talker.mcap"].path
    result = flightlog("ingest", str(path), "--dataset", "ds_doesnotexist")

    assert result.code == 3
    assert len(result.stderr.splitlines()) == 1
