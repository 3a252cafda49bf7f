"""The ``flightlog`` command end to end against a real server."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

from flightlog import FlightlogClient, catalog
from flightlog.cli import build_parser
from flightlog.cli._output import format_duration_ns
from tests.client.cli_support import flightlog, one_error_line
from tests.client.conftest import EnsureDevice, RegisterRecording
from tests.client.recordings import BY_NAME, REPO_ROOT
from tests.rpc.factories import unique
from tests.support import ClientInterceptor

# Sessions -------------------------------------------------------------------------------------


def test_a_session_through_its_whole_life(
    cli_env: dict[str, str],
    ensure_device: EnsureDevice,
    register_shared_recording: RegisterRecording,
) -> None:
    device = ensure_device(unique("dv-cli"))
    talker = register_shared_recording("rosbag2_talker.mcap")
    name = unique("cli-flight")

    created = flightlog(
        "--json", "sessions", "create", "--name", name, "--device", device,
        "--tag", "cli", "--meta", "pilot=alice", "--meta", "passes=3",
    )  # fmt: skip
    assert created.code == 0, created.stderr
    record = created.json()
    session_id = record["session_id"]
    assert record["name"] == name
    assert record["metadata"] == {"pilot": "alice", "passes": 3}
    assert record["tags"] == ["cli"]

    shown = flightlog("sessions", "get", name)  # by exact name
    assert shown.code == 0, shown.stderr
    assert session_id in shown.stdout and "alice" in shown.stdout

    added = flightlog("--json", "sessions", "add-file", session_id, talker.file_id)
    assert added.code == 0, added.stderr
    assert added.json()["min_timestamp_ns"] == BY_NAME["rosbag2_talker.mcap"].start_ns

    files = flightlog("--json", "sessions", "files", session_id).json_lines()
    assert [f["file_id"] for f in files] == [talker.file_id]
    topics = flightlog("--json", "sessions", "topics", session_id).json_lines()
    assert [t["name"] for t in topics] == ["/rosout", "/topic"]
    assert flightlog("sessions", "topics", session_id).stdout.splitlines()[0].split()[0] == "TOPIC"
    devices = flightlog("--json", "sessions", "devices", session_id).json_lines()
    assert devices == [{"device_id": device}]

    published = flightlog("sessions", "publish", session_id, "cpu.usage_max=87.2")
    assert published.code == 0, published.stderr
    metrics = flightlog("--json", "sessions", "metrics", session_id).json_lines()
    assert [(m["name"], m["value"], m["device_id"]) for m in metrics] == [
        ("cpu.usage_max", 87.2, device)
    ]

    updated = flightlog(
        "--json", "sessions", "update", session_id, "--add-tag", "reviewed",
        "--rm-meta", "passes", "--description", "checked",
    )  # fmt: skip
    assert updated.code == 0, updated.stderr
    assert updated.json()["tags"] == ["cli", "reviewed"]
    assert updated.json()["metadata"] == {"pilot": "alice"}
    assert updated.json()["description"] == "checked"

    listed = flightlog("--json", "sessions", "ls", "--tag", "reviewed", "--name-contains", name)
    assert [s["session_id"] for s in listed.json_lines()] == [session_id]

    assert flightlog("sessions", "rm-file", session_id, talker.file_id).code == 0
    assert flightlog("sessions", "detach", session_id, device).code == 0
    assert flightlog("sessions", "attach", session_id, device).code == 0

    removed = flightlog("sessions", "rm", session_id)
    assert removed.code == 0, removed.stderr
    gone = flightlog("sessions", "get", session_id)
    assert gone.code == 3
    assert "error: " in one_error_line(gone)


def test_ls_prints_an_aligned_table(cli_env: dict[str, str]) -> None:
    tag = unique("table")
    for i in range(3):
        flightlog("sessions", "create", "--name", f"{tag}-{i}", "--tag", tag)

    result = flightlog(
        "sessions", "ls", "--tag", tag, "--sort", "name", "--asc", "--page-size", "2"
    )

    assert result.code == 0, result.stderr
    header, *rows = result.stdout.splitlines()
    assert header.split()[:2] == ["SESSION", "NAME"]
    assert [row.split()[1] for row in rows] == [f"{tag}-0", f"{tag}-1", f"{tag}-2"]
    name_column = header.index("NAME")
    assert all(row[name_column:].startswith(tag) for row in rows)


def test_invalid_argument_prints_the_field_and_exits_4(cli_env: dict[str, str]) -> None:
    result = flightlog("sessions", "create", "--name", "x" * 121)

    assert result.code == 4
    # The field is named once: the server's message states it, so it is not repeated.
    assert one_error_line(result) == "error: invalid request: name: must be at most 120 characters"


def test_conflicts_exit_6(cli_env: dict[str, str]) -> None:
    device = unique("dv-twice")
    assert flightlog("devices", "create", device).code == 0
    result = flightlog("devices", "create", device)
    assert result.code == 6
    one_error_line(result)


def test_a_bad_key_exits_5(cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FLIGHTLOG_API_KEY", "wrong")
    result = flightlog("sessions", "ls")
    assert result.code == 5
    one_error_line(result)


# A server that is down, unreachable or stuck -----------------------------------------------

# A listing and a unary call: both must end within the timeout.
_CALLS = [("devices", "get", "dv_x"), ("sessions", "ls"), ("datasets", "ls")]


@pytest.mark.parametrize("command", _CALLS, ids=lambda c: " ".join(c))
def test_a_refused_connection_is_one_line_naming_the_endpoint(
    cli_env: dict[str, str], refused_endpoint: str, command: tuple[str, ...]
) -> None:
    result = flightlog("--endpoint", refused_endpoint, "--timeout", "20", *command)

    assert result.code == 7
    assert one_error_line(result) == (
        f"error: cannot reach the Flightlog server at {refused_endpoint} (connection refused)"
    )
    assert result.stdout == ""


@pytest.mark.timeout(60)  # without a deadline on the stream's start, gRPC waits far longer
@pytest.mark.parametrize("command", _CALLS, ids=lambda c: " ".join(c))
def test_a_server_that_never_answers_fails_at_the_timeout_for_calls_and_listings(
    cli_env: dict[str, str], silent_endpoint: str, command: tuple[str, ...]
) -> None:
    result = flightlog("--endpoint", silent_endpoint, "--timeout", "0.5", *command)

    assert result.code == 7
    assert one_error_line(result) == (
        f"error: no answer from the Flightlog server at {silent_endpoint} within 0.5s"
    )


@pytest.mark.timeout(60)
def test_with_json_an_unreachable_server_is_a_json_error(
    cli_env: dict[str, str], silent_endpoint: str
) -> None:
    result = flightlog(
        "--json", "--endpoint", silent_endpoint, "--timeout", "0.5", "sessions", "ls"
    )

    assert result.code == 7
    assert result.stdout == ""
    (line,) = result.stderr.splitlines()
    error = json.loads(line)["error"]
    assert (error["code"], error["reason"]) == ("DEADLINE_EXCEEDED", "NO_ANSWER")
    assert error["metadata"]["endpoint"] == silent_endpoint
    assert silent_endpoint in error["message"]


class _DeadlineRecorder(ClientInterceptor):
    """Records the deadline each unary call is made with."""

    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    def details(
        self, details: grpc.ClientCallDetails, *, streaming: bool
    ) -> grpc.ClientCallDetails:
        if not streaming:
            self.timeouts.append(details.timeout)
        return details


@pytest.mark.parametrize(
    ("arguments", "environment", "deadline"),
    [
        ((), {}, 5.0),
        (("--timeout", "2.5"), {}, 2.5),
        ((), {"FLIGHTLOG_TIMEOUT": "7"}, 7.0),
        (("--timeout", "1.5"), {"FLIGHTLOG_TIMEOUT": "7"}, 1.5),
    ],
    ids=["default", "option", "environment", "option over environment"],
)
def test_the_timeout_is_the_deadline_of_every_call(
    cli_env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    arguments: tuple[str, ...],
    environment: dict[str, str],
    deadline: float,
) -> None:
    recorder = _DeadlineRecorder()
    made: list[FlightlogClient] = []
    original = FlightlogClient.from_config

    def with_recorder(config: Any, **kwargs: Any) -> FlightlogClient:
        client = original(config, interceptors=[recorder], **kwargs)
        made.append(client)
        return client

    monkeypatch.setattr(FlightlogClient, "from_config", with_recorder)
    for name, value in environment.items():
        monkeypatch.setenv(name, value)

    result = flightlog(*arguments, "devices", "get", "dv_none")

    assert result.code == 3, result.stderr
    assert recorder.timeouts == [deadline]
    (client,) = made
    assert client.timeout == deadline  # also the wait for a listing's first batch


def test_a_missing_api_key_is_named_before_any_call(
    cli_env: dict[str, str], monkeypatch: pytest.MonkeyPatch, silent_endpoint: str
) -> None:
    monkeypatch.delenv("FLIGHTLOG_API_KEY")

    # A call to the silent server could only end at the timeout; none is made.
    result = flightlog("--endpoint", silent_endpoint, "--timeout", "600", "sessions", "ls")

    assert result.code == 2
    assert one_error_line(result).startswith("error: FLIGHTLOG_API_KEY is not set")
    json_result = flightlog("--json", "sessions", "ls")
    error = json.loads(json_result.stderr)["error"]
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "CLIENT_CONFIGURATION")
    assert "FLIGHTLOG_API_KEY" in error["message"]


@pytest.mark.parametrize("timeout", ["0", "-1", "nan", "inf", "soon"])
def test_a_timeout_that_is_not_a_positive_number_is_a_usage_error(
    cli_env: dict[str, str], timeout: str
) -> None:
    result = flightlog("--timeout", timeout, "sessions", "ls")
    assert result.code == 2
    assert "timeout" in one_error_line(result)


# Errors with --json ------------------------------------------------------------------------------


def test_with_json_errors_are_json_objects_on_stderr(cli_env: dict[str, str]) -> None:
    invalid = flightlog("--json", "sessions", "ls", "--page-size", "5000")
    missing = flightlog("--json", "sessions", "get", "ss_doesnotexist")
    usage = flightlog("--json", "sessions", "frobnicate")

    assert (invalid.code, missing.code, usage.code) == (4, 3, 2)
    assert invalid.stdout == missing.stdout == usage.stdout == ""
    assert json.loads(invalid.stderr) == {
        "error": {
            "code": "INVALID_ARGUMENT",
            "reason": "INVALID_REQUEST",
            "message": "invalid request: page_size: must be 0 to 1000",
            "field_violations": [{"field": "page_size", "description": "must be 0 to 1000"}],
            "metadata": {},
        }
    }
    error = json.loads(missing.stderr)["error"]
    assert (error["code"], error["reason"]) == ("NOT_FOUND", "SESSION_NOT_FOUND")
    assert error["metadata"] == {"ids": "ss_doesnotexist"}
    error = json.loads(usage.stderr)["error"]
    assert (error["code"], error["reason"]) == ("INVALID_ARGUMENT", "USAGE")
    assert "frobnicate" in error["message"]


def test_a_violation_the_message_states_is_not_repeated(cli_env: dict[str, str]) -> None:
    result = flightlog("sessions", "ls", "--page-size", "5000")

    assert result.code == 4
    assert one_error_line(result) == "error: invalid request: page_size: must be 0 to 1000"


def test_bad_usage_exits_2(cli_env: dict[str, str]) -> None:
    assert flightlog("sessions", "frobnicate").code == 2
    assert flightlog("sessions", "ls", "--overlaps", "yesterday", "today").code == 2
    assert flightlog("sessions", "update", "ss_x").code == 2


# Devices, datasets, files, fields -------------------------------------------------------------


def test_devices_datasets_and_files_commands(cli_env: dict[str, str], tmp_path: Path) -> None:
    device = unique("dv-cmd")
    assert flightlog("devices", "create", device, "--name", "Robot").code == 0
    assert flightlog("--json", "devices", "get", device).json()["name"] == "Robot"
    assert device in [d["device_id"] for d in flightlog("--json", "devices", "ls").json_lines()]
    assert device in flightlog("devices", "ls").stdout

    dataset = flightlog("--json", "datasets", "create", "--name", "cmd", "--device", device).json()
    dataset_id = dataset["dataset_id"]
    assert flightlog("--json", "datasets", "get", dataset_id).json() == dataset
    assert dataset_id in flightlog("datasets", "ls").stdout

    partitions = tmp_path / "partitions.json"
    partitions.write_text(
        json.dumps(
            [
                {
                    "topic_name": "/a",
                    "schema_name": "A",
                    "message_encoding": "cdr",
                    "message_count": 2,
                    "extents": [[10, 20]],
                }
            ]
        )
    )
    registered = flightlog(
        "--json", "files", "register", dataset_id, "a.mcap", "--size", "5",
        "--partitions", str(partitions),
    )  # fmt: skip
    assert registered.code == 0, registered.stderr
    file_id = registered.json()["file_id"]
    assert flightlog("--json", "files", "get", file_id).json()["max_timestamp_ns"] == 20
    listed = flightlog("--json", "files", "ls", "--dataset", dataset_id).json_lines()
    assert [f["file_id"] for f in listed] == [file_id]
    topics = flightlog("--json", "files", "topics", file_id).json_lines()
    assert [(t["topic"]["name"], t["message_count"]) for t in topics] == [("/a", 2)]
    moved = flightlog("--json", "files", "set-offset", file_id, "100").json()
    assert moved["min_timestamp_ns"] == 110
    assert flightlog("files", "rm", file_id).code == 0
    assert flightlog("files", "get", file_id).code == 3
    assert flightlog("devices", "rm", device).code == 0
    assert flightlog("devices", "get", device).code == 3


def test_custom_field_commands(cli_env: dict[str, str]) -> None:
    name = unique("weather")
    created = flightlog(
        "--json", "fields", "create", name, "--type", "enum",
        "--enum-value", "clear", "--enum-value", "rain",
    )  # fmt: skip
    assert created.code == 0, created.stderr
    assert created.json()["enum_values"] == ["clear", "rain"]
    assert flightlog("--json", "fields", "get", name).json()["type"] == "enum"
    assert name in flightlog("fields", "ls").stdout
    updated = flightlog("--json", "fields", "update", name, "--add-enum-value", "snow")
    assert updated.json()["enum_values"] == ["clear", "rain", "snow"]

    session = flightlog(
        "--json", "sessions", "create", "--name", unique("fielded"), "--field", f"{name}=snow"
    ).json()
    assert session["custom_fields"][name] == "snow"
    found = flightlog("--json", "sessions", "ls", "--where", f"{name} in snow,rain").json_lines()
    assert session["session_id"] in [s["session_id"] for s in found]
    cleared = flightlog(
        "--json", "sessions", "update", session["session_id"], "--clear-field", name
    )
    assert cleared.json()["custom_fields"][name] is None

    assert flightlog("fields", "rm", name).code == 0
    assert flightlog("fields", "get", name).code == 3


def test_watch_prints_changes_as_json_lines(cli_env: dict[str, str]) -> None:
    created = flightlog("--json", "sessions", "create", "--name", unique("watched")).json()
    flightlog("sessions", "update", created["session_id"], "--add-tag", "w")

    result = flightlog(
        "--json", "sessions", "watch", "--after", str(created["revision"] - 1),
        "--session", created["session_id"], "--limit", "2",
    )  # fmt: skip

    assert result.code == 0, result.stderr
    assert [c["kind"] for c in result.json_lines()] == ["created", "updated"]


def test_the_installed_entry_point_runs(cli_env: dict[str, str]) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT / "client")}
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "flightlog.cli",
            "--json",
            "sessions",
            "ls",
            "--name-contains",
            "zzz-none",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == ""


# Polish ------------------------------------------------------------------------------------------


def _parsers(parser: argparse.ArgumentParser) -> list[tuple[str, argparse.ArgumentParser]]:
    """Every (sub)command's parser, with its command line."""
    found = [(parser.prog, parser)]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found.extend(_parsers(sub))
    return found


def test_every_option_and_argument_has_help_text() -> None:
    missing = [
        f"{prog}: {action.option_strings or action.dest}"
        for prog, parser in _parsers(build_parser())
        for action in parser._actions
        if not isinstance(action, argparse._SubParsersAction)
        and (not action.help or action.help == argparse.SUPPRESS)
    ]
    assert missing == []
    assert len(_parsers(build_parser())) >= 40  # every command was walked


def test_help_documents_the_exit_codes_and_the_json_errors() -> None:
    text = build_parser().format_help()
    for code in range(10):
        assert f"\n  {code}  " in text
    assert '{"error": {"code", "reason", "message", "field_violations", "metadata"}}' in text
    assert "nothing" in (_ingest_help := _subcommand_help("ingest"))
    assert "  9  none could be ingested" in _ingest_help


def _subcommand_help(name: str) -> str:
    for prog, parser in _parsers(build_parser()):
        if prog == f"flightlog {name}":
            return parser.format_help()
    raise AssertionError(name)


@pytest.mark.parametrize(
    ("ns", "text"),
    [
        (0, "0ns"),
        (850, "850ns"),
        (12_500, "12.5µs"),
        (3_200_000, "3.2ms"),
        (4_531_096_768, "4.531s"),
        (59_999_000_000, "59.999s"),
        (97_355_296_000, "1m 37.4s"),
        (3_599_900_000_000, "59m 59.9s"),
        ((2 * 3600 + 3 * 60 + 10) * 10**9, "2h 03m 10s"),
        ((3 * 86400 + 4 * 3600 + 12 * 60) * 10**9, "3d 04h 12m"),
        (-1_500_000_000, "-1.500s"),
    ],
)
def test_durations_read_like_a_person_would_write_them(ns: int, text: str) -> None:
    assert format_duration_ns(ns) == text


def test_tables_show_durations_for_people_and_json_keeps_nanoseconds(
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    dataset = catalog.create_dataset(unique("durations"), client=flightlog_client)
    file = catalog.register_file(
        dataset.dataset_id,
        "run.mcap",
        partitions=[
            catalog.TopicPartitionSpec(
                "/odom", extents=[catalog.TimelineExtent(1_000, 1_000 + 97_355_296_000)]
            )
        ],
        client=flightlog_client,
    )
    name = unique("long-run")
    session = flightlog("--json", "sessions", "create", "--name", name).json()
    flightlog("sessions", "add-file", name, file.file_id)

    table = flightlog("sessions", "ls", "--name-contains", name)
    record = flightlog("--json", "sessions", "get", session["session_id"]).json()

    assert "1m 37.4s" in table.stdout
    assert record["max_timestamp_ns"] - record["min_timestamp_ns"] == 97_355_296_000
    assert "1m 37.4s" in flightlog("files", "ls", "--dataset", dataset.dataset_id).stdout


def test_datasets_get_accepts_a_name_by_the_rules_of_sessions_get(
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    name = unique("named")
    dataset = catalog.create_dataset(name, client=flightlog_client)

    by_name = flightlog("--json", "datasets", "get", name)
    by_id = flightlog("--json", "datasets", "get", dataset.dataset_id)
    unknown = flightlog("datasets", "get", unique("nobody"))
    twin = catalog.create_dataset(name, client=flightlog_client)
    ambiguous = flightlog("datasets", "get", name)

    assert by_name.code == 0, by_name.stderr
    assert by_name.json() == by_id.json()
    assert by_name.json()["dataset_id"] == dataset.dataset_id
    assert unknown.code == 3
    assert "no dataset is named" in one_error_line(unknown)
    assert ambiguous.code == 6
    line = one_error_line(ambiguous)
    assert f"several datasets are named {name!r}" in line
    assert dataset.dataset_id in line and twin.dataset_id in line
    assert "use an ID" in line


def test_a_dataset_name_works_wherever_a_dataset_is_given(
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    name = unique("anywhere")
    dataset = catalog.create_dataset(name, client=flightlog_client)

    registered = flightlog("--json", "files", "register", name, "a.mcap", "--size", "3")
    listed = flightlog("--json", "files", "ls", "--dataset", name)
    created = flightlog("--json", "sessions", "create", "--dataset", name, "--name", name)
    sessions = flightlog("--json", "sessions", "ls", "--dataset", name)
    datasets = flightlog("--json", "datasets", "ls", "--name", name)

    assert registered.code == 0, registered.stderr
    assert registered.json()["dataset_id"] == dataset.dataset_id
    assert [f["relative_path"] for f in listed.json_lines()] == ["a.mcap"]
    assert created.code == 0, created.stderr
    assert [s["session_id"] for s in sessions.json_lines()] == [created.json()["session_id"]]
    assert [d["dataset_id"] for d in datasets.json_lines()] == [dataset.dataset_id]


def test_files_ls_finds_a_file_by_its_content_hash(
    cli_env: dict[str, str], flightlog_client: FlightlogClient
) -> None:
    name = unique("by-hash")
    dataset = catalog.create_dataset(name, client=flightlog_client)
    sha = "0123456789abcdef" * 4
    file = catalog.register_file(
        dataset.dataset_id, "x.mcap", content_sha256=sha, client=flightlog_client
    )

    listed = flightlog("--json", "files", "ls", "--sha256", sha.upper())

    assert [f["file_id"] for f in listed.json_lines()] == [file.file_id]
    assert listed.json_lines()[0]["content_sha256"] == sha
