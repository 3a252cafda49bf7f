"""flightlog.metrics.aggregate / aggregate_sessions (rows with attribute access, to_pandas) and
the ``flightlog metrics aggregate`` and ``flightlog sessions aggregate`` commands, on a fleet
of a fresh org built through the API."""

from __future__ import annotations

import datetime as dt
import secrets
import zoneinfo
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from flightlog import FlightlogClient, metrics
from flightlog.errors import InvalidRequestError
from tests.client.cli_support import flightlog
from tests.rpc.aggregate_world import Fleet, SessionSpec, build_fleet
from tests.support import Identity, Stubs, create_identity

HOUR = 3_600 * 10**9
APRIL = 1_775_001_600 * 10**9  # 2026-04-01T00:00Z
MAY = 1_777_593_600 * 10**9  # 2026-05-01T00:00Z


@dataclass
class Org:
    identity: Identity
    client: FlightlogClient
    fleet: Fleet


@pytest.fixture(scope="module")
def org(database_url: str, grpc_target: str) -> Iterator[Org]:
    """A fresh org with five sessions over two months and two devices (one deleted, one
    without bounds)."""
    identity = create_identity(database_url, f"agg-client-{secrets.token_hex(4)}")
    stubs = Stubs(grpc_target, identity.api_key, identity.org_id)
    fleet = build_fleet(
        stubs,
        [
            SessionSpec(devices=[0], files=[(0, APRIL + HOUR, 2 * HOUR)], metrics={"alt": 100.0}),
            SessionSpec(devices=[0], files=[(0, APRIL + 30 * HOUR, HOUR)], metrics={"alt": 140.0}),
            SessionSpec(devices=[1], files=[(1, MAY + HOUR, HOUR)], metrics={"alt": 90.0}),
            SessionSpec(
                devices=[1], files=[(1, MAY + HOUR, HOUR)], metrics={"alt": 1.0}, deleted=True
            ),
            SessionSpec(devices=[1], metrics={"alt": 50.0, "speed": 3.0}),
        ],
        devices=2,
    )
    stubs.close()
    client = FlightlogClient(grpc_target, api_key=identity.api_key, org_id=identity.org_id)
    yield Org(identity, client, fleet)
    client.close()


def test_rows_read_keys_and_aggregates_as_attributes(org: Org) -> None:
    d0, d1 = org.fleet.device_ids
    rows = metrics.aggregate(
        "alt", by=["month", "device"], time_zone="Europe/Paris", client=org.client
    )
    paris = zoneinfo.ZoneInfo("Europe/Paris")
    assert [(r.month, r.device, r.count, r.mean) for r in rows] == [
        (dt.datetime(2026, 4, 1, tzinfo=paris), d0, 2, 120.0),
        (dt.datetime(2026, 5, 1, tzinfo=paris), d1, 1, 90.0),
        (None, d1, 1, 50.0),
    ]
    assert rows[0].month.utcoffset() == dt.timedelta(hours=2)
    assert rows[0]["alt"].p50 == 120.0 and rows[0].metrics["alt"].max == 140.0
    with pytest.raises(AttributeError):
        rows[0].dataset  # noqa: B018


def test_several_metrics_and_a_choice_of_aggregates(org: Org) -> None:
    [row] = metrics.aggregate(["alt", "speed"], aggregates=["count", "sum"], client=org.client)
    assert (row["alt"].count, row["alt"].sum, row["alt"].mean) == (4, 380.0, None)
    assert (row["speed"].count, row["speed"].sum) == (1, 3.0)


def test_to_pandas_has_a_column_per_key_and_aggregate(org: Org) -> None:
    pytest.importorskip("pandas")
    frame = metrics.aggregate(
        "alt", by=["device"], aggregates=["count", "mean"], client=org.client
    ).to_pandas()
    assert list(frame.columns) == ["device", "count", "mean"]
    assert frame["count"].tolist() == [2, 2]
    assert frame["mean"].tolist() == [120.0, 70.0]
    sessions = metrics.aggregate_sessions(by=["device"], client=org.client).to_pandas()
    assert list(sessions.columns) == ["device", "session_count", "bounded_session_count", "hours"]
    assert sessions["hours"].tolist() == [3.0, 1.0]


def test_aggregate_sessions_counts_sessions_and_hours(org: Org) -> None:
    d0, d1 = org.fleet.device_ids
    rows = metrics.aggregate_sessions(by=["device"], client=org.client)
    assert [(r.device, r.session_count, r.bounded_session_count, r.hours) for r in rows] == [
        (d0, 2, 2, 3.0),
        (d1, 2, 1, 1.0),
    ]


def test_bad_arguments_raise(org: Org) -> None:
    with pytest.raises(InvalidRequestError, match="no value of a metric named 'nope'"):
        metrics.aggregate("nope", client=org.client)
    with pytest.raises(ValueError, match="unknown group key 'fortnight'"):
        metrics.aggregate("alt", by=["fortnight"], client=org.client)
    with pytest.raises(InvalidRequestError, match="IANA time zone"):
        metrics.aggregate_sessions(by=["day"], time_zone="Nowhere/Else", client=org.client)


@pytest.fixture
def org_env(org: Org, grpc_target: str, monkeypatch: pytest.MonkeyPatch) -> Org:
    monkeypatch.setenv("FLIGHTLOG_ENDPOINT", grpc_target)
    monkeypatch.setenv("FLIGHTLOG_API_KEY", org.identity.api_key)
    monkeypatch.setenv("FLIGHTLOG_ORG_ID", org.identity.org_id)
    for name in ("FLIGHTLOG_TIMEOUT", "FLIGHTLOG_TLS"):
        monkeypatch.delenv(name, raising=False)
    return org


def test_cli_prints_a_table_with_a_bar_per_row(org_env: Org) -> None:
    d0, d1 = org_env.fleet.device_ids
    result = flightlog("metrics", "aggregate", "alt", "--by", "month", "--by", "device")
    assert result.code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["MONTH", "DEVICE", "COUNT", "MEAN", "MIN", "MAX", "P50", "P90"]
    assert lines[0].split()[:4] == ["2026-04", d0, "2", "120"]
    assert lines[1].split()[:4] == ["2026-05", d1, "1", "90"]
    assert lines[2].split()[:4] == ["(none)", d1, "1", "50"]
    # Bars are proportional to the mean: 120 is the longest, 30 cells.
    bars = [line.split()[-1] for line in lines]
    assert bars[0] == "█" * 30
    assert len(bars[1]) < 30 and len(bars[2]) < len(bars[1])


def test_cli_json_prints_one_object_per_group(org_env: Org) -> None:
    result = flightlog("--json", "metrics", "aggregate", "alt", "--by", "device", "--agg", "sum")
    assert result.code == 0, result.stderr
    objects = result.json_lines()
    assert [o["keys"]["device"] for o in objects] == org_env.fleet.device_ids
    assert [o["metrics"]["alt"]["sum"] for o in objects] == [240.0, 140.0]


def test_cli_sessions_aggregate_counts_hours(org_env: Org) -> None:
    result = flightlog("sessions", "aggregate", "--by", "month", "--tz", "UTC")
    assert result.code == 0, result.stderr
    header, *lines = result.stdout.splitlines()
    assert header.split() == ["MONTH", "SESSIONS", "BOUNDED", "HOURS"]
    assert [line.split()[:4] for line in lines] == [
        ["2026-04", "2", "2", "3.00"],
        ["2026-05", "1", "1", "1.00"],
        ["(none)", "1", "0", "0.00"],
    ]
    as_json = flightlog("--json", "sessions", "aggregate", "--by", "device").json_lines()
    assert [o["total_duration_seconds"] for o in as_json] == [3 * 3600.0, 3600.0]


def test_cli_refuses_a_bad_time_zone_with_a_usage_error(org_env: Org) -> None:
    result = flightlog("metrics", "aggregate", "alt", "--by", "day", "--tz", "Mars/Base")
    assert result.code != 0
    assert "time_zone" in result.stderr
