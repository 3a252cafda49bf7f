"""``flightlog sessions import``: a JSON Lines bulk load, in batches, resumable without
duplicates, against a real server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flightlog import FlightlogClient, Session, custom_fields
from flightlog.cli._app import import_request_id
from tests.client.cli_support import flightlog
from tests.client.conftest import EnsureDevice
from tests.rpc.factories import unique


def _write(path: Path, lines: list[Any]) -> Path:
    """Write one line per item: a dict as JSON, a str as it is."""
    path.write_text(
        "".join((item if isinstance(item, str) else json.dumps(item)) + "\n" for item in lines)
    )
    return path


def _tagged(client: FlightlogClient, tag: str) -> dict[str | None, str]:
    """The org's sessions with this tag, name to ID (a duplicate name would collapse)."""
    sessions = list(Session.query(tags_all=[tag], client=client))
    names = [s.name for s in sessions]
    assert len(names) == len(set(names)), f"duplicates: {sorted(map(str, names))}"
    return {s.name: s.session_id for s in sessions}


def test_import_creates_one_session_per_line_with_every_field(
    cli_env: dict[str, str],
    tmp_path: Path,
    flightlog_client: FlightlogClient,
    ensure_device: EnsureDevice,
) -> None:
    tag = unique("imp")
    device = ensure_device(unique("dv"))
    landed = custom_fields.create_custom_field(
        unique("landed").replace("-", "_"), "timestamp", client=flightlog_client
    )
    source = _write(
        tmp_path / "sessions.jsonl",
        [
            {
                "name": f"{tag}-1",
                "description": "first",
                "device_ids": [device],
                "tags": [tag, "nightly"],
                "metadata": {"pilot": "ada", "wind": {"kts": 12}},
                "custom_fields": {landed.name: "2026-04-23T10:00:00Z"},
            },
            "",  # blank lines are skipped
            {"name": f"{tag}-3", "tags": [tag]},
        ],
    )

    result = flightlog("--json", "sessions", "import", str(source))

    assert result.code == 0, result.stderr
    *lines, summary = result.json_lines()
    assert [line["line"] for line in lines] == [1, 3]
    first = lines[0]["session"]
    assert first["name"] == f"{tag}-1" and first["description"] == "first"
    assert first["tags"] == [tag, "nightly"]
    assert first["metadata"] == {"pilot": "ada", "wind": {"kts": 12}}
    assert first["custom_fields"][landed.name] == "2026-04-23T10:00:00+00:00"
    assert summary == {
        "summary": {
            "file": str(source),
            "imported": 2,
            "last_imported_line": 3,
            "batches": 1,
            "failed_lines": [],
        }
    }
    assert list(Session.from_id(first["session_id"], client=flightlog_client).list_devices()) == [
        device
    ]
    assert set(_tagged(flightlog_client, tag)) == {f"{tag}-1", f"{tag}-3"}


def test_without_json_import_prints_one_summary_line(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    tag = unique("imp")
    source = _write(tmp_path / "s.jsonl", [{"name": f"{tag}-{i}", "tags": [tag]} for i in range(5)])
    result = flightlog("sessions", "import", str(source), "--batch-size", "2")
    assert result.code == 0, result.stderr
    assert result.stdout == f"imported 5 sessions from {source} in 3 calls\n"


def test_running_an_import_again_creates_nothing(
    cli_env: dict[str, str], tmp_path: Path, flightlog_client: FlightlogClient
) -> None:
    tag = unique("imp")
    source = _write(tmp_path / "s.jsonl", [{"name": f"{tag}-{i}", "tags": [tag]} for i in range(4)])

    first = flightlog("--json", "sessions", "import", str(source), "--batch-size", "3")
    again = flightlog("--json", "sessions", "import", str(source))

    assert first.code == again.code == 0
    ids = [line["session"]["session_id"] for line in first.json_lines()[:-1]]
    assert [line["session"]["session_id"] for line in again.json_lines()[:-1]] == ids
    assert len(_tagged(flightlog_client, tag)) == 4


def test_a_bad_line_stops_before_its_batch_and_a_rerun_after_the_fix_completes_the_import(
    cli_env: dict[str, str], tmp_path: Path, flightlog_client: FlightlogClient
) -> None:
    tag = unique("imp")
    good = [{"name": f"{tag}-{i}", "tags": [tag]} for i in range(1, 8)]
    lines: list[Any] = list(good)
    lines[4] = '{"name": "broken",'  # line 5, in the third batch of two: lines 5 and 6
    source = _write(tmp_path / "s.jsonl", lines)

    failed = flightlog("--json", "sessions", "import", str(source), "--batch-size", "2")

    assert failed.code == 8, failed.stderr  # some imported, the others not
    *imported, summary = failed.json_lines()
    assert [line["line"] for line in imported] == [1, 2, 3, 4]
    assert summary["summary"]["failed_lines"] == [5]
    (error,) = [json.loads(line)["error"] for line in failed.stderr.splitlines()]
    assert error["lines"] == [5] and "not JSON" in error["message"]
    assert set(_tagged(flightlog_client, tag)) == {f"{tag}-{i}" for i in range(1, 5)}

    _write(source, good)  # the line fixed in place
    resumed = flightlog("--json", "sessions", "import", str(source), "--batch-size", "2")

    assert resumed.code == 0, resumed.stderr
    again = resumed.json_lines()[:-1]
    assert [line["line"] for line in again] == list(range(1, 8))
    assert [line["session"]["session_id"] for line in again[:4]] == [
        line["session"]["session_id"] for line in imported
    ]
    assert set(_tagged(flightlog_client, tag)) == {f"{tag}-{i}" for i in range(1, 8)}


def test_a_line_the_server_refuses_is_named_and_its_batch_is_not_written(
    cli_env: dict[str, str], tmp_path: Path, flightlog_client: FlightlogClient
) -> None:
    tag = unique("imp")
    lines: list[Any] = [{"name": f"{tag}-{i}", "tags": [tag]} for i in range(1, 6)]
    lines[3] = {"name": "x" * 121, "tags": [tag]}  # line 4, with line 3 in the second batch
    source = _write(tmp_path / "s.jsonl", lines)

    result = flightlog("sessions", "import", str(source), "--batch-size", "2")

    assert result.code == 8
    assert result.stdout.startswith("imported 2 sessions from ")
    assert result.stderr == (
        "error: invalid request: line 4: name: must be at most 120 characters\n"
    )
    assert set(_tagged(flightlog_client, tag)) == {f"{tag}-1", f"{tag}-2"}


def test_a_bad_first_line_imports_nothing_and_exits_2(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    source = _write(tmp_path / "s.jsonl", [{"devices": ["dv_a"]}, {"name": "fine"}])
    result = flightlog("sessions", "import", str(source))
    assert result.code == 2
    assert result.stderr == "error: line 1: unknown session field(s): devices\n"


def test_an_unknown_device_names_the_batch_and_exits_3_when_nothing_was_imported(
    cli_env: dict[str, str], tmp_path: Path
) -> None:
    source = _write(tmp_path / "s.jsonl", [{"device_ids": [unique("dv-missing")]}])
    result = flightlog("--json", "sessions", "import", str(source))
    assert result.code == 3
    (error,) = [json.loads(line)["error"] for line in result.stderr.splitlines()]
    assert error["reason"] == "DEVICE_NOT_FOUND" and error["lines"] == [1]


def test_a_missing_file_is_a_usage_error(cli_env: dict[str, str], tmp_path: Path) -> None:
    result = flightlog("sessions", "import", str(tmp_path / "nope.jsonl"))
    assert result.code == 2
    assert "cannot read" in result.stderr


def test_the_request_id_depends_on_the_key_the_line_number_and_the_content() -> None:
    line = b'{"name": "a"}\n'
    same = import_request_id("/data/a.jsonl", 3, line)
    assert same == import_request_id("/data/a.jsonl", 3, b'{"name": "a"}')  # the newline aside
    assert same != import_request_id("/data/b.jsonl", 3, line)
    assert same != import_request_id("/data/a.jsonl", 4, line)
    assert same != import_request_id("/data/a.jsonl", 3, b'{"name": "b"}\n')
    assert len(same) <= 128


def test_a_copy_resumes_with_the_same_key_and_not_without_it(
    cli_env: dict[str, str], tmp_path: Path, flightlog_client: FlightlogClient
) -> None:
    tag = unique("imp")
    lines = [{"name": f"{tag}-1", "tags": [tag]}]
    original = _write(tmp_path / "a.jsonl", lines)
    copy = _write(tmp_path / "b.jsonl", lines)

    first = flightlog("--json", "sessions", "import", str(original), "--key", "fleet-2026")
    same_key = flightlog("--json", "sessions", "import", str(copy), "--key", "fleet-2026")
    assert first.json_lines()[0] == same_key.json_lines()[0]
    assert len(list(Session.query(tags_all=[tag], client=flightlog_client))) == 1

    other_key = flightlog("--json", "sessions", "import", str(copy))  # its own path as the key
    assert other_key.code == 0
    assert len(list(Session.query(tags_all=[tag], client=flightlog_client))) == 2


def test_the_batch_size_is_1_to_1000(cli_env: dict[str, str], tmp_path: Path) -> None:
    source = _write(tmp_path / "s.jsonl", [{}])
    for bad in ("0", "1001", "many"):
        result = flightlog("sessions", "import", str(source), "--batch-size", bad)
        assert result.code == 2, bad
        assert "--batch-size" in result.stderr
