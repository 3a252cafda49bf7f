"""The ``flightlog`` command end to end against a real server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.client.cli_support import flightlog, one_error_line
from tests.client.conftest import EnsureDevice, RegisterRecording, unique
from tests.client.recordings import BY_NAME, REPO_ROOT

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


def test_an_unreachable_server_exits_7(cli_env: dict[str, str]) -> None:
    result = flightlog("--endpoint", "127.0.0.1:1", "--timeout", "2", "devices", "get", "dv_x")
    assert result.code == 7
    one_error_line(result)


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
    name = unique("weather").replace("-", "_")
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
