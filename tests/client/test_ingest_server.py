"""``flightlog ingest`` against a real server: recordings become files, topics and sessions;
re-runs change nothing; damaged recordings are salvaged and marked; failures leave no debris."""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from flightlog import FlightlogClient, Session, catalog
from flightlog.cli import run
from flightlog.cli._app import (
    EXIT_CONFLICT,
    EXIT_NOT_FOUND,
    EXIT_NOTHING_INGESTED,
    EXIT_PARTIAL,
)
from flightlog.errors import NotFoundError
from flightlog.ingest import (
    IngestedFile,
    IngestFailure,
    find_session,
    ingest_recordings,
    read_recording,
)
from tests.client.cli_support import Result, flightlog, one_error_line
from tests.client.conftest import EnsureDevice
from tests.client.recordings import (
    BY_NAME,
    EXAMPLES_DIR,
    MANIFEST,
    SPLIT_END_NS,
    SPLIT_MESSAGES,
    SPLIT_RECORDING,
    SPLIT_START_NS,
    chunk_spans,
    cut_copy,
    rechunked,
)
from tests.rpc.factories import unique

SPLIT_PATHS = [str(r.path) for r in SPLIT_RECORDING]  # in examples/recordings


def _session_named(name: str, client: FlightlogClient) -> Session:
    session = find_session(name, client=client)
    assert session is not None, name
    return session


def _datasets_named(name: str, client: FlightlogClient) -> list[catalog.Dataset]:
    return list(catalog.list_datasets(name=name, client=client))


def _summary(result: Result) -> dict[str, Any]:
    *_, last = result.json_lines()
    summary: dict[str, Any] = last["summary"]
    return summary


def test_the_split_recording_becomes_one_session_spanning_its_three_files(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    device = ensure_device(unique("dv-talker"))
    name = unique("split")

    result = flightlog("--json", "ingest", *SPLIT_PATHS, "--device", device, "--session", name)

    assert result.code == 0, result.stderr
    assert result.stderr == ""
    *files, summary = result.json_lines()
    assert [f["file"]["relative_path"] for f in files] == [r.file_name for r in SPLIT_RECORDING]
    assert [f["status"] for f in files] == ["added"] * 3
    assert sum(f["message_count"] for f in files) == SPLIT_MESSAGES
    assert [f["content_sha256"] for f in files] == [
        hashlib.sha256(Path(p).read_bytes()).hexdigest() for p in SPLIT_PATHS
    ]
    assert files[0]["duration_ns"] == files[0]["end_ns"] - files[0]["start_ns"]
    assert summary["summary"]["added"] == 3
    assert summary["summary"]["session"]["name"] == name
    (dataset,) = _datasets_named(name, flightlog_client)  # named after the session
    assert summary["summary"]["dataset"]["dataset_id"] == dataset.dataset_id
    session = _session_named(name, flightlog_client)
    assert (session.min_timestamp_ns, session.max_timestamp_ns) == (SPLIT_START_NS, SPLIT_END_NS)
    assert [f.relative_path for f in session.list_files()] == [r.file_name for r in SPLIT_RECORDING]
    assert [t.name for t in session.list_topics()] == ["/chatter"]
    assert list(session.list_devices()) == [device]


def test_running_the_same_ingest_twice_leaves_what_one_run_leaves(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, ensure_device: EnsureDevice
) -> None:
    device = ensure_device(unique("dv-twice"))
    name = unique("twice")
    args = ("ingest", str(EXAMPLES_DIR), "--device", device, "--session", name)

    first = flightlog("--json", *args)
    assert first.code == 0, first.stderr
    session = _session_named(name, flightlog_client)
    (dataset,) = _datasets_named(name, flightlog_client)
    files = list(catalog.list_files(dataset.dataset_id, client=flightlog_client))

    again = flightlog("--json", *args)

    assert again.code == 0, again.stderr
    assert {k: _summary(again)[k] for k in ("added", "already_present", "failed")} == {
        "added": 0,
        "already_present": 4,
        "failed": 0,
    }
    assert [line["status"] for line in again.json_lines()[:-1]] == ["already_present"] * 4
    assert _datasets_named(name, flightlog_client) == [dataset]  # reused by name
    assert list(catalog.list_files(dataset.dataset_id, client=flightlog_client)) == files
    assert _session_named(name, flightlog_client).revision == session.refresh().revision
    assert session.revision == _session_named(name, flightlog_client).revision
    assert len(list(session.list_files())) == 4
    # The second run wrote nothing: the session is at the revision the first run left.
    assert _summary(first)["session"]["revision"] == session.revision

    text = flightlog(*args)
    assert text.code == 0, text.stderr
    assert f"dataset {dataset.dataset_id} ({name}): 0 added, 4 already present, 0 failed" in (
        text.stdout
    )
    assert text.stdout.count("already present") == 5  # four STATUS cells and the summary


def test_a_directory_is_ingested_with_paths_relative_to_it(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    (tmp_path / "day1" / "robot").mkdir(parents=True)
    (tmp_path / "day2").mkdir()
    shutil.copy(EXAMPLES_DIR / "rosbag2_talker.mcap", tmp_path / "day1" / "robot")
    shutil.copy(EXAMPLES_DIR / "rosbag2_multiple_files_2.mcap", tmp_path / "day2")
    (tmp_path / "day2" / "notes.txt").write_text("not a recording")
    dataset = unique("folders")

    result = flightlog("--json", "ingest", str(tmp_path), "--dataset", dataset)

    assert result.code == 0, result.stderr
    paths = [line["file"]["relative_path"] for line in result.json_lines()[:-1]]
    assert paths == ["day1/robot/rosbag2_talker.mcap", "day2/rosbag2_multiple_files_2.mcap"]


def test_same_named_recordings_of_the_same_size_from_two_folders_are_both_ingested(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    source = EXAMPLES_DIR / "rosbag2_talker.mcap"
    for folder, library in (("left", "flightlog-left"), ("right", "flightlogright")):
        (tmp_path / folder).mkdir()
        rechunked(source, tmp_path / folder / "flight.mcap", library=library)
    left, right = tmp_path / "left" / "flight.mcap", tmp_path / "right" / "flight.mcap"
    assert left.stat().st_size == right.stat().st_size
    assert left.read_bytes() != right.read_bytes()
    name = unique("same-name")

    result = flightlog("--json", "ingest", str(left), str(right), "--session", name)

    assert result.code == 0, result.stderr
    *files, summary = result.json_lines()
    assert [f["file"]["relative_path"] for f in files] == ["left/flight.mcap", "right/flight.mcap"]
    assert summary["summary"]["added"] == 2
    session = _session_named(name, flightlog_client)
    assert len(list(session.list_files())) == 2


def test_a_recording_the_dataset_holds_under_another_path_is_already_present(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    dataset = unique("moved")
    first = flightlog(
        "--json", "ingest", str(EXAMPLES_DIR / "rosbag2_talker.mcap"), "--dataset", dataset
    )
    assert first.code == 0, first.stderr
    (registered,) = first.json_lines()[:-1]
    moved = tmp_path / "renamed.mcap"
    shutil.copy(EXAMPLES_DIR / "rosbag2_talker.mcap", moved)

    again = flightlog("--json", "ingest", str(moved), "--dataset", dataset)

    assert again.code == 0, again.stderr
    (line,) = again.json_lines()[:-1]
    assert line["status"] == "already_present"
    assert line["file"]["file_id"] == registered["file"]["file_id"]
    assert line["file"]["relative_path"] == "rosbag2_talker.mcap"


def test_another_recording_at_a_taken_path_fails_alone(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    dataset = unique("taken")
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    shutil.copy(EXAMPLES_DIR / "rosbag2_talker.mcap", tmp_path / "a" / "flight.mcap")
    shutil.copy(EXAMPLES_DIR / "rosbag2_multiple_files_2.mcap", tmp_path / "b" / "flight.mcap")
    assert flightlog("ingest", str(tmp_path / "a" / "flight.mcap"), "--dataset", dataset).code == 0

    result = flightlog("ingest", str(tmp_path / "b" / "flight.mcap"), "--dataset", dataset)

    assert result.code == EXIT_NOTHING_INGESTED, result.stderr
    line = one_error_line(result)
    assert line.startswith(f"error: {tmp_path / 'b' / 'flight.mcap'}: ")
    assert "already has a different recording at 'flight.mcap'" in line
    assert "0 added, 0 already present, 1 failed" in result.stdout


def test_a_truncated_recording_is_salvaged_marked_and_listed_as_recovered(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    intact = rechunked(EXAMPLES_DIR / "rosbag2_multiple_files_0.mcap", tmp_path / "long.mcap")
    start, end = chunk_spans(intact)[12]
    (tmp_path / "crashed").mkdir()
    crashed = cut_copy(intact, (start + end) // 2, tmp_path / "crashed")
    shutil.copy(EXAMPLES_DIR / "rosbag2_talker.mcap", tmp_path / "crashed")
    recovered = read_recording(crashed)
    assert recovered.recovery is not None
    name = unique("crash")

    result = flightlog("ingest", str(tmp_path / "crashed"), "--session", name)

    assert result.code == 0, result.stderr
    (warning,) = result.stderr.splitlines()
    assert warning == (
        f"warning: {crashed}: recovered {recovered.message_count:,} messages from a truncated "
        f"recording ({recovered.recovery.readable_bytes / 1024:.1f} KiB of "
        f"{crashed.stat().st_size / 1024:.1f} KiB readable; ends inside a Chunk record at byte "
        f"{start})"
    )
    assert "added, truncated" in result.stdout
    (dataset,) = _datasets_named(name, flightlog_client)
    listed = flightlog("--json", "files", "ls", "--dataset", name, "--recovered").json_lines()
    assert [f["relative_path"] for f in listed] == [crashed.name]
    assert listed[0]["recovery"] == {
        "reason": "truncated",
        "detail": f"ends inside a Chunk record at byte {start}",
        "message_count": recovered.message_count,
        "readable_bytes": start,
    }
    intact_files = flightlog("--json", "files", "ls", "--dataset", dataset.dataset_id, "--intact")
    assert [f["relative_path"] for f in intact_files.json_lines()] == ["rosbag2_talker.mcap"]
    table = flightlog("files", "ls", "--dataset", name).stdout.splitlines()
    assert table[0].split()[-1] == "RECOVERED"
    assert [row.split()[-1] for row in table[1:]] == ["truncated", "-"]
    shown = flightlog("files", "get", listed[0]["file_id"]).stdout
    assert '"reason": "truncated"' in shown
    file_id = listed[0]["file_id"]
    (partition,) = catalog.list_file_topics(file_id, client=flightlog_client)
    assert partition.message_count == recovered.message_count
    assert partition.extents[0].max_timestamp_ns == recovered.end_ns


def test_recordings_with_nothing_readable_leave_no_dataset_and_no_session(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    (tmp_path / "empty.mcap").write_bytes(b"")
    (tmp_path / "notes.mcap").write_text("a text file\n")
    cut_copy(EXAMPLES_DIR / "rosbag2_talker.mcap", 30, tmp_path)  # inside the header
    name = unique("debris")

    result = flightlog("ingest", str(tmp_path), "--session", name)

    assert result.code == EXIT_NOTHING_INGESTED
    reasons = sorted(line.split(": ", 2)[2] for line in result.stderr.splitlines())
    assert reasons == [
        "empty file (0 bytes)",
        "not an MCAP file (it does not start with the MCAP magic bytes)",
        "truncated: ends inside a Header record at byte 8; no complete message precedes it, "
        "so nothing can be recovered",
    ]
    assert "nothing ingested: 0 added, 0 already present, 3 failed" in result.stdout
    assert _datasets_named(name, flightlog_client) == []
    assert find_session(name, client=flightlog_client) is None


def test_some_recordings_failing_exits_8_and_ingests_the_others(
    cli_env: dict[str, str], flightlog_client: FlightlogClient, tmp_path: Path
) -> None:
    (tmp_path / "broken.mcap").write_bytes(b"\x89MCAP0\r\n")
    shutil.copy(EXAMPLES_DIR / "rosbag2_talker.mcap", tmp_path)
    name = unique("partial")

    result = flightlog("--json", "ingest", str(tmp_path), "--session", name)

    assert result.code == EXIT_PARTIAL
    (error,) = [line["error"] for line in map(_json, result.stderr.splitlines())]
    assert error["path"] == str(tmp_path / "broken.mcap")
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "RECORDING_TRUNCATED")
    assert _summary(result)["added"] == 1
    assert _summary(result)["failed"] == 1
    session = _session_named(name, flightlog_client)
    assert [f.relative_path for f in session.list_files()] == ["rosbag2_talker.mcap"]


def _json(line: str) -> dict[str, dict[str, object]]:
    value: dict[str, dict[str, object]] = json.loads(line)
    return value


def test_every_shared_recording_registers_its_topics_counts_and_extents(
    flightlog_client: FlightlogClient, fresh_dataset: catalog.Dataset
) -> None:
    result = ingest_recordings(
        [r.path for r in MANIFEST], fresh_dataset.dataset_id, client=flightlog_client
    )

    assert result.failures == []
    for expected, ingested in zip(MANIFEST, result.files, strict=True):
        file = ingested.file
        assert file.relative_path.endswith(expected.file_name)
        assert file.size_bytes == expected.size_bytes
        assert file.recovery is None
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
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    name = unique("edge-cases")
    files = [
        BY_NAME["depthai_recording_lz4.mcap"],
        BY_NAME["lichtblick_example_logs_out_of_order.mcap"],
        BY_NAME["rosbag2_talker.mcap"],
    ]

    result = flightlog("ingest", *(str(f.path) for f in files), "--session", name)

    assert result.code == 0, result.stderr
    session = _session_named(name, flightlog_client)
    assert session.min_timestamp_ns == min(f.start_ns for f in files)
    assert session.max_timestamp_ns == max(f.end_ns for f in files)
    topics = [t.name for t in session.list_topics()]
    # Two /rosout topics: same name, different schemas (foxglove.Log, rcl_interfaces/msg/Log).
    # /parameter_events has no messages, so no extent to overlap the window.
    assert topics == ["/rosout", "/rosout", "/topic", "mouse", "video"]


def test_an_unknown_dataset_id_fails_before_reading_anything(cli_env: dict[str, str]) -> None:
    result = flightlog("ingest", str(EXAMPLES_DIR), "--dataset", "ds_doesnotexist")

    assert result.code == EXIT_NOT_FOUND
    assert "dataset not found: ds_doesnotexist" in one_error_line(result)
    assert result.stdout == ""


def test_an_ambiguous_dataset_name_fails_before_reading_anything(
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    name = unique("twin")
    twins = [catalog.create_dataset(name, client=flightlog_client) for _ in range(2)]

    result = flightlog("ingest", str(EXAMPLES_DIR), "--dataset", name)

    assert result.code == EXIT_CONFLICT
    line = one_error_line(result)
    assert f"several datasets are named {name!r}" in line
    assert all(d.dataset_id in line for d in twins)
    for dataset in twins:
        assert list(catalog.list_files(dataset.dataset_id, client=flightlog_client)) == []


class _Terminal(io.StringIO):
    """A stderr that says it is a terminal, so that the progress bar is drawn."""

    def isatty(self) -> bool:
        return True


def test_a_terminal_shows_a_progress_bar_by_bytes(cli_env: dict[str, str], tmp_path: Path) -> None:
    large = rechunked(EXAMPLES_DIR / "rosbag2_multiple_files_0.mcap", tmp_path / "large.mcap")
    stdout, stderr = io.StringIO(), _Terminal()

    code = run(["ingest", str(large), "--dataset", unique("bar")], stdout=stdout, stderr=stderr)

    assert code == 0, stderr.getvalue()
    drawn = stderr.getvalue()
    size_kb = f"{large.stat().st_size / 1000:.1f}"
    assert f"/{size_kb} kB" in drawn  # rich's DownloadColumn: bytes read / total
    assert "1/1 large.mcap" in drawn


@pytest.mark.parametrize("recording", ["rosbag2_talker.mcap"])
def test_the_python_api_reports_added_and_already_present_files(
    flightlog_client: FlightlogClient, recording: str
) -> None:
    name = unique("api")
    path = EXAMPLES_DIR / recording

    first = ingest_recordings([path], name, session_name=name, client=flightlog_client)
    again = ingest_recordings([path], name, session_name=name, client=flightlog_client)

    assert (len(first.added), len(first.already_present)) == (1, 0)
    assert (len(again.added), len(again.already_present)) == (0, 1)
    assert first.dataset_created and not again.dataset_created
    assert first.session_created and not again.session_created
    assert again.files[0].file == first.files[0].file
    assert first.session is not None and again.session is not None
    assert again.session.session_id == first.session.session_id


def test_a_recording_registered_before_content_hashes_is_already_present(
    flightlog_client: FlightlogClient, fresh_dataset: catalog.Dataset
) -> None:
    talker = EXAMPLES_DIR / "rosbag2_talker.mcap"
    legacy = catalog.register_file(  # as ingest did before it hashed recordings
        fresh_dataset.dataset_id,
        talker.name,
        talker.stat().st_size,
        client=flightlog_client,
    )
    assert legacy.content_sha256 is None

    result = ingest_recordings([talker], fresh_dataset.dataset_id, client=flightlog_client)

    assert result.failures == []
    assert [(f.file.file_id, f.already_present) for f in result.files] == [(legacy.file_id, True)]


def test_a_session_created_for_files_it_cannot_hold_is_deleted_again(
    flightlog_client: FlightlogClient,
) -> None:
    name = unique("no-debris")

    def delete_it(outcome: IngestedFile | IngestFailure) -> None:
        # The file goes away before the session is filled: adding it must fail.
        assert isinstance(outcome, IngestedFile)
        catalog.delete_file(outcome.file.file_id, client=flightlog_client)

    result = ingest_recordings(
        [EXAMPLES_DIR / "rosbag2_talker.mcap"],
        session_name=name,
        client=flightlog_client,
        on_file=delete_it,
    )

    assert isinstance(result.error, NotFoundError)
    assert result.session is None
    assert find_session(name, client=flightlog_client) is None
