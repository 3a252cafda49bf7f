"""Aggregations over the sessions a filter string chooses (the filter language of ListSessions,
composed into the aggregation's SQL)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import replace

import pytest

from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.aggregate_world import (
    Fleet,
    KeySpec,
    SessionSpec,
    build_fleet,
    metric_rows,
    reference_metric_rows,
    reference_session_rows,
    session_rows,
)
from tests.rpc.factories import new_org_stubs
from tests.support import Stubs


@pytest.fixture
def org(database_url: str, grpc_target: str) -> Iterator[Stubs]:
    stubs = new_org_stubs(database_url, grpc_target)
    yield stubs
    stubs.close()


def test_a_filter_chooses_the_sessions_aggregated(org: Stubs) -> None:
    specs = [
        SessionSpec(tags=["outdoor"], devices=[0], metrics={"alt": 10.0}),
        SessionSpec(tags=["outdoor", "night"], devices=[1], metrics={"alt": 4.0}),
        SessionSpec(tags=["night"], devices=[0], metrics={"alt": 100.0}),
        SessionSpec(devices=[1], metrics={"alt": 1.0}),
    ]
    fleet = build_fleet(org, specs)
    outdoor = build_fleet_view(fleet, lambda spec: "outdoor" in spec.tags)
    keys = [KeySpec("device")]
    request = pb.AggregateSessionMetricsRequest(
        metrics=["alt"], filter='tags:"outdoor"', group_by=[k.message(fleet) for k in keys]
    )
    assert metric_rows(org, request) == reference_metric_rows(outdoor, ["alt"], keys, "UTC")
    sessions = pb.AggregateSessionsRequest(
        filter='tags:"outdoor"', group_by=[k.message(fleet) for k in keys]
    )
    expected = reference_session_rows(outdoor, keys, "UTC")
    assert [row[:3] for row in session_rows(org, sessions)] == [row[:3] for row in expected]


def build_fleet_view(fleet: Fleet, keep: Callable[[SessionSpec], bool]) -> Fleet:
    """The fleet as the filter sees it: the sessions it leaves out count as deleted."""
    return replace(
        fleet,
        sessions=[s if keep(s) else replace(s, deleted=True) for s in fleet.sessions],
    )
