"""The SQL of the aggregations across sessions (see ``domain.aggregation``).

Each aggregation is one statement built with SQLAlchemy Core, every value a bound parameter:

* an inner SELECT of the org's sessions that the filter keeps (``storage.session_filter``),
  outer-joined to one relation per group key, which gives each session one row per combination
  of its key values (a session without a value of a key gets one row with NULL for it): the
  attached devices (``session_devices``), the tags (``unnest``), a custom field's value, the
  distinct datasets of its files, or the time bucket of its start. The key columns are labelled
  ``k0``, ``k1``... in the inner SELECT so that the outer GROUP BY names columns, not
  expressions with parameters (PostgreSQL does not match those between SELECT and GROUP BY);
* an outer SELECT grouping by the key columns, ordered by them (ascending, NULL last, text in
  code-point order), as a MATERIALIZED CTE read with a LIMIT of ``MAX_GROUPS + 1`` rows, so that
  a request over the cap is detected without reading more than one row past it (see
  ``_execute`` for why the LIMIT is outside the CTE). A time bucket is grouped as a timestamptz
  and turned into nanoseconds once per group.

For metrics the inner SELECT joins ``session_metric_values`` for the requested metrics, and each
metric's aggregates are computed with ``FILTER (WHERE metric_id = ...)`` over the same group
(no FILTER for one metric), so that one row per group carries every metric. Groups without data
have no row at all.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Double,
    FromClause,
    Interval,
    Select,
    String,
    and_,
    bindparam,
    cast,
    extract,
    func,
    literal_column,
    select,
    true,
)
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncConnection

from flightlog_server.domain.aggregation import (
    MAX_GROUPS,
    PERCENTILES,
    Aggregate,
    Grouping,
    GroupKind,
    KeyValues,
    MetricAggregateRow,
    MetricAggregates,
    SessionAggregateRow,
    TimeBucket,
)
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.storage import models as m
from flightlog_server.storage.session_filter import session_filter_condition

S = m.table(m.Session)
SD = m.table(m.SessionDevice)
SF = m.table(m.SessionFile)
F = m.table(m.File)
CF = m.table(m.CustomField)
CFV = m.table(m.SessionCustomFieldValue)
M = m.table(m.Metric)
V = m.table(m.SessionMetricValue)

_MICROSECOND = literal_column("interval '1 microsecond'", type_=Interval)


async def metric_ids(conn: AsyncConnection, org_id: str, names: Sequence[str]) -> dict[str, str]:
    """The ID of each metric name that has a definition in the org."""
    rows = await conn.execute(
        select(M.c.name, M.c.metric_id).where(M.c.org_id == org_id, M.c.name.in_(list(names)))
    )
    return {row.name: row.metric_id for row in rows}


async def custom_fields(
    conn: AsyncConnection, org_id: str, names: Sequence[str]
) -> dict[str, tuple[str, str, str]]:
    """(custom field ID, type, status) of each session custom field of these names."""
    if not names:
        return {}
    rows = await conn.execute(
        select(CF.c.name, CF.c.custom_field_id, CF.c.type, CF.c.status).where(
            CF.c.org_id == org_id, CF.c.entity_type == "session", CF.c.name.in_(list(names))
        )
    )
    return {row.name: (row.custom_field_id, row.type, row.status) for row in rows}


async def aggregate_metrics(
    conn: AsyncConnection,
    org_id: str,
    metrics: Sequence[tuple[str, str]],
    grouping: Grouping,
    field_ids: Mapping[int, str],
    aggregates: Sequence[Aggregate],
) -> list[MetricAggregateRow]:
    """At most ``MAX_GROUPS + 1`` rows of the aggregates of ``metrics`` ((name, metric ID)
    pairs), grouped as ``grouping`` says. ``field_ids`` gives the custom field ID of each
    CUSTOM_FIELD key by its position."""
    s = S.alias("s")
    v = V.alias("v")
    joined, keys = _keyed(s, org_id, grouping, field_ids)
    joined = joined.join(
        v,
        and_(
            v.c.org_id == s.c.org_id,
            v.c.session_id == s.c.session_id,
            v.c.metric_id.in_([metric_id for _, metric_id in metrics]),
        ),
    )
    condition = await session_filter_condition(conn, org_id, grouping.filter, s)
    single = len(metrics) == 1
    carried = [v.c.value] if single else [v.c.metric_id, v.c.value]
    inner = (
        select(*keys, *carried)
        .select_from(joined)
        .where(s.c.org_id == org_id, condition)
        .subquery("grouped")
    )
    key_columns = [inner.c[f"k{i}"] for i in range(len(keys))]
    columns: list[Any] = []
    for i, (_, metric_id) in enumerate(metrics):
        value = inner.c.value
        for aggregate in aggregates:
            column: Any
            if aggregate is Aggregate.COUNT:
                column = func.count(value)
            elif aggregate is Aggregate.SUM:
                column = func.sum(value)
            elif aggregate is Aggregate.MEAN:
                column = func.avg(value)
            elif aggregate is Aggregate.MIN:
                column = func.min(value)
            elif aggregate is Aggregate.MAX:
                column = func.max(value)
            elif aggregate is Aggregate.STDDEV:
                column = func.stddev_samp(value)
            else:
                fraction = bindparam(None, PERCENTILES[aggregate], type_=Double)
                column = func.percentile_cont(fraction).within_group(value)
            # With one metric every joined value is of it: no FILTER to evaluate per row.
            if not single:
                column = column.filter(
                    inner.c.metric_id == bindparam(None, metric_id, type_=String)
                )
            columns.append(column.label(f"m{i}_{aggregate.value}"))
    query = (
        select(*_output_keys(grouping, key_columns), *columns)
        .group_by(*key_columns)
        # Without group keys an aggregate has one row even over nothing: no data, no group.
        .having(func.count() > 0)
        .order_by(*(c.asc().nulls_last() for c in key_columns))
    )
    rows = await _execute(conn, query)
    result = []
    for row in rows:
        mapping = row._mapping
        per_metric = []
        for i, (name, _) in enumerate(metrics):
            values: dict[Aggregate, float | int | None] = {}
            for aggregate in aggregates:
                raw = mapping[f"m{i}_{aggregate.value}"]
                values[aggregate] = (
                    raw if raw is None or aggregate is Aggregate.COUNT else float(raw)
                )
            per_metric.append(MetricAggregates(metric=name, values=values))
        result.append(
            MetricAggregateRow(keys=_key_values(row, len(keys)), metrics=tuple(per_metric))
        )
    return result


async def aggregate_sessions(
    conn: AsyncConnection, org_id: str, grouping: Grouping, field_ids: Mapping[int, str]
) -> list[SessionAggregateRow]:
    """At most ``MAX_GROUPS + 1`` rows of session counts and total durations, grouped as
    ``grouping`` says."""
    s = S.alias("s")
    joined, keys = _keyed(s, org_id, grouping, field_ids)
    condition = await session_filter_condition(conn, org_id, grouping.filter, s)
    inner = (
        select(
            *keys,
            s.c.min_timestamp_ns,
            (s.c.max_timestamp_ns - s.c.min_timestamp_ns).label("duration_ns"),
        )
        .select_from(joined)
        .where(s.c.org_id == org_id, condition)
        .subquery("grouped")
    )
    key_columns = [inner.c[f"k{i}"] for i in range(len(keys))]
    query = (
        select(
            *_output_keys(grouping, key_columns),
            func.count().label("session_count"),
            func.count(inner.c.min_timestamp_ns).label("bounded_session_count"),
            func.coalesce(func.sum(inner.c.duration_ns), 0).label("total_duration_ns"),
        )
        .group_by(*key_columns)
        # Without group keys an aggregate has one row even over nothing: no data, no group.
        .having(func.count() > 0)
        .order_by(*(c.asc().nulls_last() for c in key_columns))
    )
    return [
        SessionAggregateRow(
            keys=_key_values(row, len(keys)),
            session_count=row.session_count,
            bounded_session_count=row.bounded_session_count,
            total_duration_ns=int(row.total_duration_ns),
        )
        for row in await _execute(conn, query)
    ]


def _keyed(
    s: FromClause, org_id: str, grouping: Grouping, field_ids: Mapping[int, str]
) -> tuple[FromClause, list[ColumnElement[Any]]]:
    """The sessions outer-joined to the relation of each group key, and the key columns
    (labelled ``k0``, ``k1``...)."""
    joined: FromClause = s
    keys: list[ColumnElement[Any]] = []
    for i, key in enumerate(grouping.keys):
        name = f"k{i}"
        column: ColumnElement[Any]
        if key.kind is GroupKind.DEVICE:
            devices = SD.alias(f"devices_{i}")
            joined = joined.outerjoin(
                devices,
                and_(devices.c.org_id == s.c.org_id, devices.c.session_id == s.c.session_id),
            )
            column = devices.c.device_id
        elif key.kind is GroupKind.TAG:
            # A function in FROM may refer to the tables before it (no LATERAL needed).
            tags = func.unnest(s.c.tags).table_valued("tag").render_derived(name=f"tags_{i}")
            joined = joined.outerjoin(tags, true())
            column = tags.c.tag.collate("C")
        elif key.kind is GroupKind.CUSTOM_FIELD:
            values = CFV.alias(f"field_{i}")
            joined = joined.outerjoin(
                values,
                and_(
                    values.c.org_id == s.c.org_id,
                    values.c.session_id == s.c.session_id,
                    values.c.custom_field_id == bindparam(None, field_ids[i], type_=String),
                ),
            )
            column = values.c.text_value
        elif key.kind is GroupKind.DATASET:
            datasets = (
                select(SF.c.session_id, F.c.dataset_id)
                .distinct()
                .select_from(
                    SF.join(F, and_(F.c.org_id == SF.c.org_id, F.c.file_id == SF.c.file_id))
                )
                .where(SF.c.org_id == org_id)
                .subquery(f"datasets_{i}")
            )
            joined = joined.outerjoin(datasets, datasets.c.session_id == s.c.session_id)
            column = datasets.c.dataset_id.collate("C")
        else:
            assert key.bucket is not None
            column = _bucket_start(s.c.min_timestamp_ns, key.bucket, grouping.time_zone)
        keys.append(column.label(name))
    return joined, keys


def _bucket_start(
    start_ns: ColumnElement[Any], bucket: TimeBucket, time_zone: str
) -> ColumnElement[Any]:
    """The first instant (a timestamptz) of the bucket holding ``start_ns``, in the wall clock
    of ``time_zone``; NULL for NULL. Rows are grouped by it; each group's key is then turned
    into nanoseconds once (``_output_keys``), not each row's.

    The start is floored to the microsecond exactly (integer division, then an interval of that
    many microseconds: a double holds them exactly for ±285 years around 1970), which decides
    the bucket exactly, since buckets begin on whole seconds. Days and longer are truncated by
    ``date_trunc(unit, ts, zone)``, which takes local midnight back to an instant. An hour is
    the instant minus the wall-clock time elapsed since the local hour began, so that the hour
    repeated when the clocks go back is two buckets (truncating the local time, then reading
    it back, would fold them into one)."""
    # Floor division in bigint arithmetic (``/`` truncates towards zero).
    micros = (start_ns - ((start_ns % 1000) + 1000) % 1000) // 1000
    at = func.to_timestamp(0) + cast(micros, Double) * _MICROSECOND
    zone = bindparam(None, time_zone, type_=String)
    if bucket is TimeBucket.HOUR:
        local = func.timezone(zone, at)
        start = at - (local - func.date_trunc("hour", local))
    else:
        start = func.date_trunc(bindparam(None, bucket.value, type_=String), at, zone)
    return start


def _output_keys(grouping: Grouping, key_columns: Sequence[Any]) -> list[ColumnElement[Any]]:
    """The grouped key columns as the rows carry them: a time bucket in ns since the epoch."""
    return [
        cast(extract("epoch", column) * 1_000_000_000, BigInteger).label(f"k{i}")
        if key.kind is GroupKind.START_TIME
        else column
        for i, (key, column) in enumerate(zip(grouping.keys, key_columns, strict=True))
    ]


def _key_values(row: Any, count: int) -> KeyValues:
    return tuple(row._mapping[f"k{i}"] for i in range(count))


async def _execute(conn: AsyncConnection, grouped: Select[Any]) -> Sequence[Any]:
    """At most ``MAX_GROUPS + 1`` rows of ``grouped``, in its order.

    The grouped query is a MATERIALIZED CTE and the LIMIT is outside it: PostgreSQL plans a CTE
    for all of its rows, whereas a LIMIT on the grouped query itself makes the planner expect to
    read a fraction of its estimated groups, and prefer plans that start fast (a nested loop
    feeding an incremental sort) and take twice as long over all of them. The CTE is still read
    on demand, so the statement stops after the row past the cap; its rows come out of the CTE
    in the order it produced them."""
    groups = grouped.cte("groups").prefix_with("MATERIALIZED")
    query = select(groups).limit(MAX_GROUPS + 1)
    try:
        return (await conn.execute(query)).all()
    except sa_exc.DBAPIError as e:
        if isinstance(e.orig, psycopg.errors.NumericValueOutOfRange):
            raise InvalidArgument.one(
                "metrics", "an aggregate of these values overflows a double"
            ) from e
        if isinstance(e.orig, psycopg.errors.InvalidParameterValue):
            raise InvalidArgument.one(
                "time_zone", "the database does not know this time zone"
            ) from e
        raise
