"""AggregateSessionMetrics and AggregateSessions: compared with a reference computation in
Python over the same fleet (tests.rpc.aggregate_world), for generated fleets and group keys,
and for the cases the semantics name (deleted sessions, detached devices, sessions without
bounds, DST); the cap on groups; bad input; another org."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import grpc
import pytest
from hypothesis import HealthCheck, Phase, given, settings
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


# --- generated fleets against the reference -------------------------------------------------------

# Instants around DST changes (Paris and New York, both directions), a year's end, and a plain day.
_AROUND = [
    ns("2024-03-31T01:00+00:00"),
    ns("2024-10-27T01:00+00:00"),
    ns("2024-03-10T07:00+00:00"),
    ns("2024-11-03T06:00+00:00"),
    ns("2024-12-31T23:00+00:00"),
    ns("2025-06-15T12:00+00:00"),
]
ZONES = ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata"]
KEYS = [
    KeySpec("device"),
    KeySpec("tag"),
    KeySpec("custom_field"),
    KeySpec("dataset"),
    *(KeySpec("start_time", b) for b in ("hour", "day", "week", "month", "year")),
]

starts = st.builds(
    lambda base, offset: base + offset,
    st.sampled_from(_AROUND),
    st.one_of(st.integers(-3 * HOUR, 3 * HOUR), st.sampled_from([-1, 0, 1, HOUR - 1, HOUR])),
)
values = st.one_of(
    st.integers(-1_000, 1_000).map(float),
    st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False),
)
sessions = st.builds(
    SessionSpec,
    tags=st.lists(st.sampled_from(TAGS), max_size=3, unique=True),
    devices=st.lists(st.integers(0, 2), max_size=3, unique=True),
    site=st.one_of(st.none(), st.sampled_from(SITES)),
    files=st.lists(st.tuples(st.integers(0, 1), starts, st.integers(0, 5 * HOUR)), max_size=2),
    metrics=st.dictionaries(st.sampled_from(METRICS), values, max_size=2),
    deleted=st.booleans(),
).flatmap(
    # Detach some of the attached devices after publishing.
    lambda spec: (
        st.lists(st.sampled_from(spec.devices), unique=True).map(
            lambda detached: SessionSpec(**{**spec.__dict__, "detached": detached})
        )
        if spec.devices
        else st.just(spec)
    )
)
group_keys = st.lists(st.sampled_from(KEYS), max_size=3, unique_by=lambda k: k.kind)
_SETTINGS = settings(
    max_examples=20,
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target],
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@_SETTINGS
@given(
    specs=st.lists(sessions, max_size=8),
    keys=group_keys,
    zone=st.sampled_from(ZONES),
    metrics=st.sampled_from([["alt"], ["speed", "alt"]]),
    aggregates=st.lists(st.sampled_from(AGGREGATES), unique=True),
)
def test_metric_aggregates_equal_the_reference(
    database_url: str,
    grpc_target: str,
    specs: list[SessionSpec],
    keys: list[KeySpec],
    zone: str,
    metrics: list[str],
    aggregates: list[str],
) -> None:
    stubs = new_org_stubs(database_url, grpc_target)
    try:
        # Both metrics always exist in the org (a name never published is INVALID_ARGUMENT).
        specs = [*specs, SessionSpec(metrics={"alt": 1.0, "speed": 2.0}, deleted=True)]
        fleet = build_fleet(stubs, specs)
        request = pb.AggregateSessionMetricsRequest(
            metrics=metrics,
            group_by=[k.message(fleet) for k in keys],
            time_zone=zone,
            aggregates=[
                pb.AggregateFunction.Value(f"AGGREGATE_FUNCTION_{a.upper()}") for a in aggregates
            ],
        )
        got = metric_rows(stubs, request)
        expected = reference_metric_rows(fleet, metrics, keys, zone)
        assert [keys_ for keys_, _ in got] == [keys_ for keys_, _ in expected]
        asked = aggregates or list(AGGREGATES)
        for (group, found), (_, wanted) in zip(got, expected, strict=True):
            assert list(found) == metrics
            for metric in metrics:
                for name in AGGREGATES:
                    want = wanted[metric][name] if name in asked else None
                    assert close(found[metric][name], want), (group, metric, name)
    finally:
        stubs.close()


@_SETTINGS
@given(specs=st.lists(sessions, max_size=8), keys=group_keys, zone=st.sampled_from(ZONES))
def test_session_aggregates_equal_the_reference(
    database_url: str,
    grpc_target: str,
    specs: list[SessionSpec],
    keys: list[KeySpec],
    zone: str,
) -> None:
    stubs = new_org_stubs(database_url, grpc_target)
    try:
        fleet = build_fleet(stubs, specs)
        request = pb.AggregateSessionsRequest(
            group_by=[k.message(fleet) for k in keys], time_zone=zone
        )
        got = session_rows(stubs, request)
        expected = reference_session_rows(fleet, keys, zone)
        assert [row[:3] for row in got] == [row[:3] for row in expected]
        for row, want in zip(got, expected, strict=True):
            assert row[3] == pytest.approx(want[3] / 1e9, rel=1e-12)
    finally:
        stubs.close()


# --- the semantics, case by case ----------------------------------------------------------------


def _rows(org: Stubs, metric: str, *keys: pb.GroupBy, zone: str = "") -> list[tuple[object, ...]]:
    request = pb.AggregateSessionMetricsRequest(
        metrics=[metric],
        group_by=keys,
        time_zone=zone,
        aggregates=[pb.AGGREGATE_FUNCTION_COUNT, pb.AGGREGATE_FUNCTION_SUM],
    )
    return [
        (*(k[0] for k in key_values), m["alt"]["count"], m["alt"]["sum"])
        for key_values, m in (
            ([(v,) for v in group], found) for group, found in metric_rows(org, request)
        )
    ]


DEVICE = pb.GroupBy(kind=pb.GROUP_KIND_DEVICE)


def test_a_session_with_several_devices_counts_in_each_and_one_without_in_the_unset_group(
    org: Stubs,
) -> None:
    fleet = build_fleet(
        org,
        [
            SessionSpec(devices=[0, 1], metrics={"alt": 10.0}),
            SessionSpec(devices=[1], metrics={"alt": 5.0}),
            SessionSpec(metrics={"alt": 1.0}),
        ],
    )
    d0, d1, _ = fleet.device_ids
    assert _rows(org, "alt", DEVICE) == [*sorted([(d0, 1, 10.0), (d1, 2, 15.0)]), (None, 1, 1.0)]


def test_a_device_detached_after_publishing_no_longer_groups_the_session(org: Stubs) -> None:
    fleet = build_fleet(
        org,
        [
            SessionSpec(devices=[0, 1], metrics={"alt": 10.0}, detached=[0]),
            SessionSpec(devices=[0], metrics={"alt": 2.0}, detached=[0]),
        ],
    )
    assert _rows(org, "alt", DEVICE) == [(fleet.device_ids[1], 1, 10.0), (None, 1, 2.0)]


def test_deleted_sessions_count_nowhere_and_empty_groups_are_left_out(org: Stubs) -> None:
    fleet = build_fleet(
        org,
        [
            SessionSpec(devices=[0], metrics={"alt": 10.0}, deleted=True),
            SessionSpec(devices=[1], metrics={"alt": 3.0}),
            SessionSpec(devices=[2]),  # no value: device 2's group has no data
        ],
    )
    assert _rows(org, "alt", DEVICE) == [(fleet.device_ids[1], 1, 3.0)]
    sessions = session_rows(org, pb.AggregateSessionsRequest(group_by=[DEVICE]))
    assert [(row[0][0], row[1]) for row in sessions] == sorted(
        [(fleet.device_ids[1], 1), (fleet.device_ids[2], 1)]
    )


def test_sessions_without_bounds_are_in_the_unset_time_bucket(org: Stubs) -> None:
    build_fleet(
        org,
        [
            SessionSpec(files=[(0, ns("2024-05-03T10:00+00:00"), HOUR)], metrics={"alt": 1.0}),
            SessionSpec(metrics={"alt": 4.0}),
        ],
    )
    month = pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_MONTH)
    assert _rows(org, "alt", month) == [(ns("2024-05-01T00:00+00:00"), 1, 1.0), (None, 1, 4.0)]
    [bounded, unbounded] = session_rows(org, pb.AggregateSessionsRequest(group_by=[month]))
    assert bounded == ((ns("2024-05-01T00:00+00:00"),), 1, 1, 3600.0)
    assert unbounded == ((None,), 1, 0, 0.0)


def test_the_repeated_hour_of_a_dst_change_is_two_hour_buckets_in_one_day(org: Stubs) -> None:
    # 2024-10-27 in Paris: 02:30 CEST (00:30Z), then 02:30 CET (01:30Z).
    build_fleet(
        org,
        [
            SessionSpec(files=[(0, ns("2024-10-27T00:30+00:00"), 1)], metrics={"alt": 1.0}),
            SessionSpec(files=[(0, ns("2024-10-27T01:30+00:00"), 1)], metrics={"alt": 2.0}),
        ],
    )
    hour = pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_HOUR)
    day = pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_DAY)
    assert _rows(org, "alt", hour, zone="Europe/Paris") == [
        (ns("2024-10-27T02:00+02:00"), 1, 1.0),
        (ns("2024-10-27T02:00+01:00"), 1, 2.0),
    ]
    assert _rows(org, "alt", day, zone="Europe/Paris") == [(ns("2024-10-27T00:00+02:00"), 2, 3.0)]
    assert _rows(org, "alt", day, zone="America/New_York") == [
        (ns("2024-10-26T00:00-04:00"), 2, 3.0)
    ]


def test_no_group_key_is_one_group_of_everything(org: Stubs) -> None:
    build_fleet(org, [SessionSpec(metrics={"alt": 1.0}), SessionSpec(metrics={"alt": 2.5})])
    assert _rows(org, "alt") == [(2, 3.5)]


# --- the cap on groups ----------------------------------------------------------------------------


def test_groups_up_to_the_cap_stream_and_one_more_is_refused(org: Stubs) -> None:
    # 39 sessions with 256 distinct tags each and one with 16: 10,000 tag groups.
    requests = [
        pb.CreateSessionRequest(tags=[f"t{i:02d}-{j:03d}" for j in range(256)]) for i in range(39)
    ]
    requests.append(pb.CreateSessionRequest(tags=[f"last-{j:02d}" for j in range(16)]))
    created = org.sessions.BatchCreateSessions(pb.BatchCreateSessionsRequest(requests=requests))
    ids = [s.session_id for s in created.sessions]
    org.sessions.PublishMetrics(
        pb.PublishMetricsRequest(
            requests=[
                pb.PublishSessionMetricsRequest(
                    session_id=i, metrics=[pb.MetricEntry(name="alt", value=1.0)], no_device=True
                )
                for i in ids
            ]
        )
    )
    tag = pb.GroupBy(kind=pb.GROUP_KIND_TAG)
    metric_request = pb.AggregateSessionMetricsRequest(metrics=["alt"], group_by=[tag])
    batches = list(org.sessions.AggregateSessionMetrics(metric_request))
    assert sum(len(b.rows) for b in batches) == 10_000
    assert len(batches) == 20
    sessions = list(org.sessions.AggregateSessions(pb.AggregateSessionsRequest(group_by=[tag])))
    assert sum(len(b.rows) for b in sessions) == 10_000

    org.sessions.UpdateSession(
        pb.UpdateSessionRequest(
            session_id=ids[-1], metadata_changeset=pb.MetadataChangeset(put_tags=["one-too-many"])
        )
    )
    for call in (
        lambda: list(org.sessions.AggregateSessionMetrics(metric_request)),
        lambda: list(org.sessions.AggregateSessions(pb.AggregateSessionsRequest(group_by=[tag]))),
    ):
        error = rpc_error(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert error.fields["group_by"].startswith(
            "the aggregation has more than 10,000 groups; narrow the filter"
        )


# --- bad input ------------------------------------------------------------------------------------


@pytest.fixture
def published(org: Stubs) -> Stubs:
    build_fleet(org, [SessionSpec(metrics={"alt": 1.0})])
    return org


@pytest.mark.parametrize(
    ("fields", "field", "says"),
    [
        ({"metrics": []}, "metrics", "must name 1 to 10 metrics"),
        ({"metrics": [f"m{i}" for i in range(11)]}, "metrics", "must name 1 to 10 metrics"),
        ({"metrics": ["never_published"]}, "metrics[0]", "no value of a metric named"),
        ({"metrics": ["alt", "alt"]}, "metrics[1]", "repeats the metric"),
        ({"metrics": ["9bad name"]}, "metrics[0]", "must be 1 to 128"),
        ({"time_zone": "Mars/Olympus"}, "time_zone", "must be an IANA time zone"),
        ({"time_zone": "../../etc/passwd"}, "time_zone", "must be an IANA time zone"),
        ({"time_zone": "x" * 65}, "time_zone", "must be an IANA time zone"),
        ({"group_by": [pb.GroupBy()]}, "group_by[0].kind", "must be one of the GROUP_KIND_"),
        (
            {"group_by": [pb.GroupBy(kind=pb.GroupKind.ValueType(99))]},
            "group_by[0].kind",
            "must be",
        ),
        ({"group_by": [DEVICE] * 5}, "group_by", "at most 4 group keys"),
        ({"group_by": [DEVICE, DEVICE]}, "group_by[1]", "repeats a group key"),
        (
            {"group_by": [pb.GroupBy(kind=pb.GROUP_KIND_START_TIME)]},
            "group_by[0].time_bucket",
            "must be one of the TIME_BUCKET_",
        ),
        (
            {"group_by": [pb.GroupBy(kind=pb.GROUP_KIND_TAG, time_bucket=pb.TIME_BUCKET_DAY)]},
            "group_by[0].time_bucket",
            "must be unspecified",
        ),
        (
            {"group_by": [pb.GroupBy(kind=pb.GROUP_KIND_DEVICE, custom_field="x")]},
            "group_by[0].custom_field",
            "must be empty",
        ),
        (
            {"group_by": [pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD)]},
            "group_by[0].custom_field",
            "must name a custom field",
        ),
        (
            {"group_by": [pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field="nope")]},
            "group_by[0].custom_field",
            "no session custom field is named 'nope'",
        ),
        ({"aggregates": [0]}, "aggregates[0]", "must be one of the AGGREGATE_FUNCTION_"),
        ({"aggregates": [1, 1]}, "aggregates[1]", "repeats an aggregate"),
        ({"filter": "x" * 8_193}, "filter", "at most 8,192 characters"),
    ],
)
def test_bad_requests_are_invalid_argument_with_a_violation(
    published: Stubs, fields: dict[str, object], field: str, says: str
) -> None:
    request = pb.AggregateSessionMetricsRequest(metrics=["alt"])
    for name, value in fields.items():
        request.ClearField(name)  # type: ignore[arg-type]
        if isinstance(value, str):
            setattr(request, name, value)
        else:
            getattr(request, name).extend(value)
    error = rpc_error(lambda: list(published.sessions.AggregateSessionMetrics(request)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert says in error.fields[field]


@pytest.mark.parametrize(
    ("field_type", "status", "says"),
    [
        (fields_pb.CUSTOM_FIELD_TYPE_NUMBER, 0, "is of type number; only enum and string"),
        (fields_pb.CUSTOM_FIELD_TYPE_BOOLEAN, 0, "is of type boolean"),
        (fields_pb.CUSTOM_FIELD_TYPE_STRING, fields_pb.CUSTOM_FIELD_STATUS_CREATING, "not ready"),
    ],
)
def test_only_ready_enum_and_string_fields_group_sessions(
    published: Stubs, field_type: int, status: int, says: str
) -> None:
    field = make_custom_field(published, type=field_type, initial_status=status)  # type: ignore[arg-type]
    key = pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field=field.name)
    for call in (
        lambda: list(
            published.sessions.AggregateSessionMetrics(
                pb.AggregateSessionMetricsRequest(metrics=["alt"], group_by=[key])
            )
        ),
        lambda: list(
            published.sessions.AggregateSessions(pb.AggregateSessionsRequest(group_by=[key]))
        ),
    ):
        error = rpc_error(call)
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert says in error.fields["group_by[0].custom_field"]


def test_a_string_field_groups_sessions_by_value(org: Stubs) -> None:
    field = make_custom_field(org, type=fields_pb.CUSTOM_FIELD_TYPE_STRING)
    from flightlog.v1 import common_pb2

    for value in ("b", "a", None):
        custom = {field.name: common_pb2.CustomFieldValue(string_value=value)} if value else {}
        org.sessions.CreateSession(pb.CreateSessionRequest(custom_fields=custom))
    key = pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field=field.name)
    rows = session_rows(org, pb.AggregateSessionsRequest(group_by=[key]))
    assert [(r[0], r[1]) for r in rows] == [(("a",), 1), (("b",), 1), ((None,), 1)]


def test_sums_past_a_double_are_invalid_argument(org: Stubs) -> None:
    build_fleet(org, [SessionSpec(metrics={"alt": 1.7e308}), SessionSpec(metrics={"alt": 1.7e308})])
    request = pb.AggregateSessionMetricsRequest(metrics=["alt"])
    error = rpc_error(lambda: list(org.sessions.AggregateSessionMetrics(request)))
    assert error.code == grpc.StatusCode.INVALID_ARGUMENT
    assert "overflows a double" in error.fields["metrics"]
    only_extremes = pb.AggregateSessionMetricsRequest(
        metrics=["alt"], aggregates=[pb.AGGREGATE_FUNCTION_MIN, pb.AGGREGATE_FUNCTION_MAX]
    )
    [(_, found)] = metric_rows(org, only_extremes)
    assert (found["alt"]["min"], found["alt"]["max"]) == (1.7e308, 1.7e308)


# --- tenants --------------------------------------------------------------------------------------


def test_another_org_sees_nothing_of_this_one(
    org: Stubs, database_url: str, grpc_target: str
) -> None:
    name = unique("secret_")
    build_fleet(org, [SessionSpec(devices=[0], metrics={name: 42.0})])
    other = new_org_stubs(database_url, grpc_target)
    try:
        error = rpc_error(
            lambda: list(
                other.sessions.AggregateSessionMetrics(
                    pb.AggregateSessionMetricsRequest(metrics=[name])
                )
            )
        )
        assert error.code == grpc.StatusCode.INVALID_ARGUMENT
        assert "metrics[0]" in error.fields
        assert session_rows(other, pb.AggregateSessionsRequest(group_by=[DEVICE])) == []
        # The same metric name in the other org aggregates only the other org's values.
        build_fleet(other, [SessionSpec(metrics={name: 1.0})])
        [(_, found)] = metric_rows(other, pb.AggregateSessionMetricsRequest(metrics=[name]))
        assert (found[name]["count"], found[name]["sum"]) == (1, 1.0)
    finally:
        other.close()


def test_a_start_before_1970_is_floored_into_its_own_bucket(org: Stubs) -> None:
    # -1 ns is 1969-12-31T23:59:59.999999999Z: truncating towards zero would put it in 1970.
    build_fleet(
        org,
        [
            SessionSpec(files=[(0, -1, 1)], metrics={"alt": 1.0}),
            SessionSpec(files=[(0, 0, 1)], metrics={"alt": 2.0}),
        ],
    )
    day = pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_DAY)
    assert _rows(org, "alt", day) == [(-86_400 * 10**9, 1, 1.0), (0, 1, 2.0)]
    hour = pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_HOUR)
    assert _rows(org, "alt", hour, zone="Asia/Kolkata") == [(-1_800 * 10**9, 2, 3.0)]
