"""AggregateSessionMetrics and AggregateSessions: requests checked and mapped to the domain,
rows mapped back to protobuf and streamed in batches."""

from __future__ import annotations

import re
import zoneinfo
from collections.abc import AsyncIterator, Sequence

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.aggregation import (
    DEFAULT_TIME_ZONE,
    MAX_AGGREGATED_METRICS,
    MAX_GROUP_KEYS,
    MAX_TIME_ZONE_CHARS,
    Aggregate,
    Grouping,
    GroupKey,
    GroupKind,
    KeyValues,
    MetricAggregateRow,
    SessionAggregateRow,
    TimeBucket,
)
from flightlog_server.domain.rules import METRIC_NAME, Violations
from flightlog_server.domain.types import Caller
from flightlog_server.services.aggregation import Aggregations

# Rows per streamed response.
BATCH_ROWS = 500
MAX_FILTER_CHARS = 8_192
MAX_CUSTOM_FIELD_NAME_CHARS = 63

_KINDS = {
    pb.GROUP_KIND_DEVICE: GroupKind.DEVICE,
    pb.GROUP_KIND_TAG: GroupKind.TAG,
    pb.GROUP_KIND_CUSTOM_FIELD: GroupKind.CUSTOM_FIELD,
    pb.GROUP_KIND_DATASET: GroupKind.DATASET,
    pb.GROUP_KIND_START_TIME: GroupKind.START_TIME,
}
_BUCKETS = {
    pb.TIME_BUCKET_HOUR: TimeBucket.HOUR,
    pb.TIME_BUCKET_DAY: TimeBucket.DAY,
    pb.TIME_BUCKET_WEEK: TimeBucket.WEEK,
    pb.TIME_BUCKET_MONTH: TimeBucket.MONTH,
    pb.TIME_BUCKET_YEAR: TimeBucket.YEAR,
}
_AGGREGATES = {
    pb.AGGREGATE_FUNCTION_COUNT: Aggregate.COUNT,
    pb.AGGREGATE_FUNCTION_SUM: Aggregate.SUM,
    pb.AGGREGATE_FUNCTION_MEAN: Aggregate.MEAN,
    pb.AGGREGATE_FUNCTION_MIN: Aggregate.MIN,
    pb.AGGREGATE_FUNCTION_MAX: Aggregate.MAX,
    pb.AGGREGATE_FUNCTION_STDDEV: Aggregate.STDDEV,
    pb.AGGREGATE_FUNCTION_P50: Aggregate.P50,
    pb.AGGREGATE_FUNCTION_P90: Aggregate.P90,
    pb.AGGREGATE_FUNCTION_P99: Aggregate.P99,
}
# IANA names: letters, digits and `_ + - /` (`America/Argentina/Buenos_Aires`, `Etc/GMT+3`).
_TIME_ZONE = re.compile(r"[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+)*")


async def aggregate_metrics(
    aggregations: Aggregations, caller: Caller, request: pb.AggregateSessionMetricsRequest
) -> AsyncIterator[pb.AggregateSessionMetricsResponse]:
    v = Violations()
    names = list(request.metrics)
    if not 1 <= len(names) <= MAX_AGGREGATED_METRICS:
        v.add("metrics", f"must name 1 to {MAX_AGGREGATED_METRICS} metrics")
    else:
        seen: set[str] = set()
        for i, name in enumerate(names):
            if not METRIC_NAME.fullmatch(name):
                v.add(
                    f"metrics[{i}]",
                    "must be 1 to 128 letters, digits, _ . - or /, starting with a letter",
                )
            elif name in seen:
                v.add(f"metrics[{i}]", f"repeats the metric {name!r}")
            seen.add(name)
    aggregates: list[Aggregate] = []
    for i, number in enumerate(request.aggregates):
        aggregate = _AGGREGATES.get(number)
        if aggregate is None:
            v.add(
                f"aggregates[{i}]", "must be one of the AGGREGATE_FUNCTION_ values but UNSPECIFIED"
            )
        elif aggregate in aggregates:
            v.add(f"aggregates[{i}]", "repeats an aggregate")
        else:
            aggregates.append(aggregate)
    if not request.aggregates:
        aggregates = list(Aggregate)
    grouping = _grouping(v, request.filter, request.group_by, request.time_zone)
    v.raise_if_any()
    rows = await aggregations.metrics(caller, names, grouping, aggregates)
    kinds = [key.kind for key in grouping.keys]
    for start in range(0, len(rows), BATCH_ROWS):
        yield pb.AggregateSessionMetricsResponse(
            rows=[_metric_row(kinds, row) for row in rows[start : start + BATCH_ROWS]]
        )


async def aggregate_sessions(
    aggregations: Aggregations, caller: Caller, request: pb.AggregateSessionsRequest
) -> AsyncIterator[pb.AggregateSessionsResponse]:
    v = Violations()
    grouping = _grouping(v, request.filter, request.group_by, request.time_zone)
    v.raise_if_any()
    rows = await aggregations.sessions(caller, grouping)
    kinds = [key.kind for key in grouping.keys]
    for start in range(0, len(rows), BATCH_ROWS):
        yield pb.AggregateSessionsResponse(
            rows=[_session_row(kinds, row) for row in rows[start : start + BATCH_ROWS]]
        )


def _grouping(
    v: Violations, filter_text: str, group_by: Sequence[pb.GroupBy], time_zone: str
) -> Grouping:
    if len(filter_text) > MAX_FILTER_CHARS:
        v.add("filter", f"must be at most {MAX_FILTER_CHARS:,} characters")
    keys: list[GroupKey] = []
    if len(group_by) > MAX_GROUP_KEYS:
        v.add("group_by", f"must hold at most {MAX_GROUP_KEYS} group keys")
    else:
        for i, item in enumerate(group_by):
            key = _group_key(v, f"group_by[{i}]", item)
            if key is None:
                continue
            if key.kind is GroupKind.START_TIME and any(
                k.kind is GroupKind.START_TIME for k in keys
            ):
                v.add(f"group_by[{i}]", "repeats GROUP_KIND_START_TIME; group by one time bucket")
            elif key in keys:
                v.add(f"group_by[{i}]", "repeats a group key")
            keys.append(key)
    zone = time_zone or DEFAULT_TIME_ZONE
    if not _known_time_zone(zone):
        v.add("time_zone", "must be an IANA time zone name, such as Europe/Paris or UTC")
    return Grouping(filter=filter_text, keys=tuple(keys), time_zone=zone)


def _group_key(v: Violations, field: str, item: pb.GroupBy) -> GroupKey | None:
    kind = _KINDS.get(item.kind)
    if kind is None:
        v.add(f"{field}.kind", "must be one of the GROUP_KIND_ values but UNSPECIFIED")
        return None
    ok = True
    custom_field: str | None = None
    if kind is GroupKind.CUSTOM_FIELD:
        if not 1 <= len(item.custom_field) <= MAX_CUSTOM_FIELD_NAME_CHARS:
            v.add(
                f"{field}.custom_field",
                f"must name a custom field (1 to {MAX_CUSTOM_FIELD_NAME_CHARS} characters)",
            )
            ok = False
        custom_field = item.custom_field
    elif item.custom_field:
        v.add(f"{field}.custom_field", "must be empty unless kind is GROUP_KIND_CUSTOM_FIELD")
        ok = False
    bucket: TimeBucket | None = None
    if kind is GroupKind.START_TIME:
        bucket = _BUCKETS.get(item.time_bucket)
        if bucket is None:
            v.add(f"{field}.time_bucket", "must be one of the TIME_BUCKET_ values but UNSPECIFIED")
            ok = False
    elif item.time_bucket != pb.TIME_BUCKET_UNSPECIFIED:
        v.add(f"{field}.time_bucket", "must be unspecified unless kind is GROUP_KIND_START_TIME")
        ok = False
    return GroupKey(kind=kind, custom_field=custom_field, bucket=bucket) if ok else None


def _known_time_zone(name: str) -> bool:
    """Whether ``name`` is an IANA zone this server knows (the database is asked too, later)."""
    if len(name) > MAX_TIME_ZONE_CHARS or not _TIME_ZONE.fullmatch(name):
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


def _keys(kinds: Sequence[GroupKind], values: KeyValues) -> list[pb.GroupKeyValue]:
    out = []
    for kind, value in zip(kinds, values, strict=True):
        if value is None:
            out.append(pb.GroupKeyValue())
        elif kind is GroupKind.DEVICE:
            out.append(pb.GroupKeyValue(device_id=str(value)))
        elif kind is GroupKind.TAG:
            out.append(pb.GroupKeyValue(tag=str(value)))
        elif kind is GroupKind.CUSTOM_FIELD:
            out.append(pb.GroupKeyValue(custom_field_value=str(value)))
        elif kind is GroupKind.DATASET:
            out.append(pb.GroupKeyValue(dataset_id=str(value)))
        else:
            out.append(pb.GroupKeyValue(bucket_start_ns=int(value)))
    return out


def _metric_row(kinds: Sequence[GroupKind], row: MetricAggregateRow) -> pb.MetricAggregateRow:
    metrics = []
    for item in row.metrics:
        message = pb.MetricAggregates(metric=item.metric)
        for aggregate, value in item.values.items():
            if value is not None:
                setattr(message, aggregate.value, value)
        metrics.append(message)
    return pb.MetricAggregateRow(keys=_keys(kinds, row.keys), metrics=metrics)


def _session_row(kinds: Sequence[GroupKind], row: SessionAggregateRow) -> pb.SessionAggregateRow:
    return pb.SessionAggregateRow(
        keys=_keys(kinds, row.keys),
        session_count=row.session_count,
        bounded_session_count=row.bounded_session_count,
        total_duration_seconds=row.total_duration_ns / 1e9,
    )
