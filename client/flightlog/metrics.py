"""Session metrics: named numeric values published to a session, and aggregated across sessions.

Publish them with :func:`publish` (one session, or many in as few calls as the server's limits
allow) or :meth:`flightlog.Session.publish_metrics`, which wraps it; read them back with
:meth:`flightlog.Session.list_metrics`. A pipeline that also changes tags or custom fields
sends both in one call with :meth:`flightlog.Session.update` (``metrics=``). Aggregate them over
the fleet with :func:`aggregate` ("the mean altitude per month per device"), and count sessions
and their hours with :func:`aggregate_sessions` ("fleet hours flown per month per device").

Example:
    >>> from flightlog import Session, metrics
    >>> from flightlog.metrics import MetricEntry
    >>> a, b = Session.create_many(
    ...     [{"name": "run-a", "tags": ["gpu-soak"]}, {"name": "run-b", "tags": ["gpu-soak"]}]
    ... )
    >>> result = metrics.publish(
    ...     {
    ...         a.session_id: [MetricEntry("gpu.usage_max", 87.2)],
    ...         b.session_id: [MetricEntry("gpu.usage_max", 64.0)],
    ...     },
    ...     device_id=None,
    ... )
    >>> sorted(m.value for m in result.succeeded)
    [64.0, 87.2]
    >>> (row,) = metrics.aggregate("gpu.usage_max", aggregates=["count", "max"])
    >>> (row.count, row.max)
    (2, 87.2)
    >>> [r.session_count for r in metrics.aggregate_sessions(by=["tag"]) if r.tag == "gpu-soak"]
    [2]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zoneinfo
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import grpc

from flightlog._batching import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    batch_call,
    batches,
    field_size,
)
from flightlog._client import FlightlogClient, resolve_client
from flightlog._values import NotSet, NotSetType, datetime_from_proto
from flightlog.v1 import session_service_pb2 as pb

if TYPE_CHECKING:
    import pandas

__all__ = [
    "AGGREGATES",
    "MAX_PUBLISH_ENTRIES",
    "AggregateResult",
    "BulkPublishMetricsResult",
    "Metric",
    "MetricAggregateRow",
    "MetricAggregates",
    "MetricEntry",
    "MetricFailure",
    "SessionAggregateRow",
    "aggregate",
    "aggregate_sessions",
    "publish",
]

MAX_PUBLISH_ENTRIES = 10_000
"""Metric entries per PublishMetrics call, all sessions together (the server's limit)."""


@dataclasses.dataclass(frozen=True)
class MetricEntry:
    """A metric name and value to publish.

    Attributes:
        name: 1 to 128 characters of letters, digits, ``_``, ``.``, ``-`` and ``/``, starting
            with a letter, for example ``"cpu.usage_max"``.
        value: A finite number.
    """

    name: str
    value: float

    def to_proto(self) -> pb.MetricEntry:
        """Return the wire form."""
        return pb.MetricEntry(name=self.name, value=float(self.value))

    @classmethod
    def from_proto(cls, message: pb.MetricEntry) -> MetricEntry:
        """Build from a ``flightlog.v1.MetricEntry`` message."""
        return cls(name=message.name, value=message.value)


@dataclasses.dataclass(frozen=True)
class Metric:
    """A metric value recorded for a session.

    Attributes:
        metric_id: The metric definition's ID, prefixed ``mt_``.
        name: The metric name.
        session_id: The session the value belongs to.
        value: The value.
        device_id: The device the value is associated with, or ``None``.
        min_timestamp_ns: The session's current lower bound, or ``None``.
        max_timestamp_ns: The session's current upper bound, or ``None``.
        published: When the value was last published.
        published_by: Principal that last published it.
    """

    metric_id: str
    name: str
    session_id: str
    value: float
    device_id: str | None = None
    min_timestamp_ns: int | None = None
    max_timestamp_ns: int | None = None
    published: dt.datetime | None = None
    published_by: str = ""

    @classmethod
    def from_proto(cls, message: pb.Metric) -> Metric:
        """Build from a ``flightlog.v1.Metric`` message."""
        return cls(
            metric_id=message.metric_id,
            name=message.name,
            session_id=message.session_id,
            value=message.value,
            device_id=message.device_id if message.HasField("device_id") else None,
            min_timestamp_ns=(
                message.min_timestamp_ns if message.HasField("min_timestamp_ns") else None
            ),
            max_timestamp_ns=(
                message.max_timestamp_ns if message.HasField("max_timestamp_ns") else None
            ),
            published=(
                datetime_from_proto(message.published) if message.HasField("published") else None
            ),
            published_by=message.published_by,
        )


@dataclasses.dataclass(frozen=True)
class MetricFailure:
    """A metric entry that could not be recorded.

    Attributes:
        entry: The entry as sent.
        index: Its index in the published list (of its session's list, with :func:`publish`
            over several sessions).
        reason: Why it failed, in one sentence.
        session_id: The session it was published to.
    """

    entry: MetricEntry
    index: int
    reason: str
    session_id: str = ""

    @classmethod
    def from_proto(cls, message: pb.MetricFailure, session_id: str = "") -> MetricFailure:
        """Build from a ``flightlog.v1.MetricFailure`` message about ``session_id``."""
        return cls(
            entry=MetricEntry.from_proto(message.entry),
            index=message.index,
            reason=message.reason,
            session_id=session_id,
        )


@dataclasses.dataclass(frozen=True)
class BulkPublishMetricsResult:
    """The outcome of :func:`publish` and :meth:`flightlog.Session.publish_metrics`.

    Attributes:
        succeeded: The values recorded.
        failed: The entries that could not be recorded, with why.
    """

    succeeded: list[Metric] = dataclasses.field(default_factory=list)
    failed: list[MetricFailure] = dataclasses.field(default_factory=list)

    @classmethod
    def from_proto(
        cls, message: pb.PublishSessionMetricsResponse, session_id: str = ""
    ) -> BulkPublishMetricsResult:
        """Build from a ``flightlog.v1.PublishSessionMetricsResponse`` about ``session_id``."""
        return cls(
            succeeded=[Metric.from_proto(m) for m in message.succeeded],
            failed=[MetricFailure.from_proto(f, session_id) for f in message.failed],
        )


def _set_device(
    request: pb.PublishSessionMetricsRequest, device_id: str | NotSetType | None
) -> None:
    """Put the device choice in a request: explicit, none, or left to the server."""
    if device_id is None:
        request.no_device = True
    elif not isinstance(device_id, NotSetType):
        request.device_id = device_id


def publish(
    metrics: Sequence[MetricEntry] | Mapping[str, Sequence[MetricEntry]],
    session_id: str | None = None,
    device_id: str | NotSetType | None = NotSet,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> BulkPublishMetricsResult:
    """Record metric values for one session, or for many sessions in few calls.

    Each (metric, session) pair is upserted: republishing under the same name replaces the
    previous value, so publishing again after a failure is safe. Metric definitions are
    created on first use. Entries that fail on their own (bad name, NaN) are reported in
    ``failed``; the others are recorded.

    - ``publish(entries, session_id="ss_...")`` publishes to one session in one
      PublishSessionMetrics call (what :meth:`flightlog.Session.publish_metrics` does).
    - ``publish({"ss_a": entries_a, "ss_b": entries_b})`` publishes across sessions with
      PublishMetrics: one call for up to 1,000 sessions and 10,000 entries (and under the
      server's 1 MiB message limit), all sessions' values in one transaction. More than that
      is sent in consecutive calls, each all or nothing; if one fails, the error's
      ``batch_offset`` is the position (in the mapping's order) of its first session, and the
      sessions before it were recorded.

    Args:
        metrics: The entries of ``session_id``, or a mapping of session IDs to their entries
            (at most 1,000 entries a session).
        session_id: The session, when ``metrics`` is a list of entries.
        device_id: Device to associate with every value, or ``None`` to opt out. When omitted,
            the server infers each session's device from its attached devices: the call
            succeeds only if exactly one device is attached.
        org_id: Caller's org scope. Required when the caller belongs to multiple orgs.
        client: Optional client; defaults to the ambient one.

    Returns:
        A :class:`BulkPublishMetricsResult`: every recorded value (each names its
        ``session_id``) and every failed entry (each with its ``session_id``).

    Raises:
        ValueError: ``session_id`` is missing for a list of entries, or given with a mapping.
        NotFoundError: A session does not exist in the org (sessions of other orgs included).
        InvalidRequestError: ``device_id`` was omitted and a session has zero or more than one
            attached devices, or a limit is exceeded.
    """
    c = resolve_client(client)
    if not isinstance(metrics, Mapping):
        if session_id is None:
            raise ValueError("publish needs session_id for a list of entries")
        request = pb.PublishSessionMetricsRequest(
            session_id=session_id, metrics=[m.to_proto() for m in metrics]
        )
        _set_device(request, device_id)
        single = c.call(c.sessions.PublishSessionMetrics, request, org_id=org_id)
        return BulkPublishMetricsResult.from_proto(single, session_id)
    if session_id is not None:
        raise ValueError("publish takes session_id only with a list of entries, not a mapping")
    items = []
    for target, entries in metrics.items():
        item = pb.PublishSessionMetricsRequest(
            session_id=target, metrics=[m.to_proto() for m in entries]
        )
        _set_device(item, device_id)
        items.append(item)
    result = BulkPublishMetricsResult()
    offset = 0
    for chunk in batches(
        items,
        lambda item: field_size(item.ByteSize()),
        max_items=MAX_BATCH_ITEMS,
        max_bytes=MAX_BATCH_BYTES,
        weight_of=lambda item: len(item.metrics),
        max_weight=MAX_PUBLISH_ENTRIES,
    ):
        with batch_call(offset, len(chunk)):
            response = c.call(
                c.sessions.PublishMetrics, pb.PublishMetricsRequest(requests=chunk), org_id=org_id
            )
        for item, answer in zip(chunk, response.responses, strict=True):
            part = BulkPublishMetricsResult.from_proto(answer, item.session_id)
            result.succeeded.extend(part.succeeded)
            result.failed.extend(part.failed)
        offset += len(chunk)
    return result


# --- aggregation across sessions ------------------------------------------------------------------

AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "p50", "p90", "p99")
"""The aggregates :func:`aggregate` computes, by name (all of them when none is asked for)."""

_BUCKETS = {
    "hour": pb.TIME_BUCKET_HOUR,
    "day": pb.TIME_BUCKET_DAY,
    "week": pb.TIME_BUCKET_WEEK,
    "month": pb.TIME_BUCKET_MONTH,
    "year": pb.TIME_BUCKET_YEAR,
}
_KINDS = {
    "device": pb.GROUP_KIND_DEVICE,
    "tag": pb.GROUP_KIND_TAG,
    "dataset": pb.GROUP_KIND_DATASET,
}


@dataclasses.dataclass(frozen=True)
class MetricAggregates:
    """The aggregates of one metric in one group.

    Attributes:
        metric: The metric name.
        count: The number of values (``None`` when not asked for).
        sum, mean, min, max, stddev, p50, p90, p99: The aggregates asked for; ``None`` when not
            asked for, when the metric has no value in the group, and ``stddev`` for one value
            (it is the sample standard deviation). Percentiles interpolate (``percentile_cont``).
    """

    metric: str
    count: int | None = None
    sum: float | None = None
    mean: float | None = None
    min: float | None = None
    max: float | None = None
    stddev: float | None = None
    p50: float | None = None
    p90: float | None = None
    p99: float | None = None

    @classmethod
    def from_proto(cls, message: pb.MetricAggregates) -> MetricAggregates:
        """Build from a ``flightlog.v1.MetricAggregates`` message."""
        values: dict[str, Any] = {
            name: getattr(message, name) if message.HasField(name) else None  # type: ignore[arg-type]
            for name in AGGREGATES
        }
        return cls(metric=message.metric, **values)


class _Keyed:
    """Attribute access to a row's group keys by name (``row.device``, ``row.month``)."""

    keys: dict[str, Any]

    def __getattr__(self, name: str) -> Any:
        keys = self.__dict__.get("keys", {})
        if name in keys:
            return keys[name]
        raise AttributeError(f"{type(self).__name__} has no attribute or group key {name!r}")


@dataclasses.dataclass(frozen=True)
class MetricAggregateRow(_Keyed):
    """One group of :func:`aggregate`: its keys and the aggregates of each metric.

    Group keys read as attributes named as in ``by`` (``row.device``, ``row.tag``,
    ``row.dataset``, ``row.month``, a custom field by its name); ``None`` is the group of
    sessions without a value for that key. With one metric, its aggregates read as attributes
    too (``row.mean``); with several, ``row.metrics["alt"].mean`` or ``row["alt"].mean``.

    Attributes:
        keys: The group's key values by name, in the order of ``by``. A time bucket is the
            aware datetime of its first instant, in the request's time zone.
        metrics: The aggregates of each metric, by name, in the order asked.
    """

    keys: dict[str, Any]
    metrics: dict[str, MetricAggregates]

    def __getattr__(self, name: str) -> Any:
        if name in self.__dict__.get("keys", {}):
            return self.__dict__["keys"][name]
        metrics = self.__dict__.get("metrics", {})
        if name in AGGREGATES and len(metrics) == 1:
            return getattr(next(iter(metrics.values())), name)
        raise AttributeError(f"MetricAggregateRow has no group key or aggregate {name!r}")

    def __getitem__(self, metric: str) -> MetricAggregates:
        return self.metrics[metric]


@dataclasses.dataclass(frozen=True)
class SessionAggregateRow(_Keyed):
    """One group of :func:`aggregate_sessions`.

    Group keys read as attributes, as in :class:`MetricAggregateRow`.

    Attributes:
        keys: The group's key values by name, in the order of ``by``.
        session_count: The number of sessions in the group.
        bounded_session_count: How many of them have bounds (the others have no duration).
        total_duration: The sum of their durations.
    """

    keys: dict[str, Any]
    session_count: int
    bounded_session_count: int
    total_duration: dt.timedelta

    @property
    def hours(self) -> float:
        """The total duration in hours."""
        return self.total_duration.total_seconds() / 3600


@dataclasses.dataclass(frozen=True)
class AggregateResult(Sequence[Any]):
    """The rows of an aggregation, ordered by their keys (each ascending, ``None`` last).

    A sequence: iterate it, index it, take its ``len``. :meth:`to_pandas` turns it into a
    DataFrame when the ``flightlog[pandas]`` extra is installed.
    """

    rows: list[Any]
    key_names: list[str]

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: Any) -> Any:
        return self.rows[index]

    def __iter__(self) -> Iterator[Any]:
        return iter(self.rows)

    def to_pandas(self) -> pandas.DataFrame:
        """A DataFrame with a column per group key, then a column per value: ``count``,
        ``mean``... with one metric, ``alt.count``, ``alt.mean``... with several, or
        ``session_count``, ``bounded_session_count`` and ``hours`` for sessions. Aggregates
        not asked for are left out.

        Raises:
            ImportError: pandas is not installed (``pip install 'flightlog[pandas]'``).
        """
        try:
            import pandas
        except ImportError as e:
            raise ImportError("to_pandas() needs pandas: pip install 'flightlog[pandas]'") from e
        records = []
        for row in self.rows:
            record = dict(row.keys)
            if isinstance(row, SessionAggregateRow):
                record.update(
                    session_count=row.session_count,
                    bounded_session_count=row.bounded_session_count,
                    hours=row.hours,
                )
            else:
                single = len(row.metrics) == 1
                for name, values in row.metrics.items():
                    for aggregate_name in AGGREGATES:
                        record[aggregate_name if single else f"{name}.{aggregate_name}"] = getattr(
                            values, aggregate_name
                        )
            records.append(record)
        frame = pandas.DataFrame.from_records(records, columns=_columns(self) or None)
        return frame.dropna(axis="columns", how="all") if records else frame


def _columns(result: AggregateResult) -> list[str]:
    if not result.rows:
        return list(result.key_names)
    first = result.rows[0]
    if isinstance(first, SessionAggregateRow):
        return [*result.key_names, "session_count", "bounded_session_count", "hours"]
    single = len(first.metrics) == 1
    return [
        *result.key_names,
        *(a if single else f"{m}.{a}" for m in first.metrics for a in AGGREGATES),
    ]


def aggregate(
    metrics: str | Sequence[str],
    *,
    by: Sequence[str] = (),
    filter: str = "",
    aggregates: Sequence[str] = (),
    time_zone: str = "",
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> AggregateResult:
    """Aggregate metric values across sessions, one row per group (AggregateSessionMetrics).

    Sessions count in their current state: a deleted session nowhere, a session under each of
    the devices attached to it now, each of its tags and each dataset of its files; a session
    without a value for a key is in that key's ``None`` group. Groups without values are left
    out. At most 10,000 groups: past them the call fails with
    :class:`~flightlog.errors.InvalidRequestError` (narrow the filter, coarsen the bucket).

    Args:
        metrics: A metric name, or up to 10 of them.
        by: Up to 4 group keys: ``"device"``, ``"tag"``, ``"dataset"``, a time bucket of the
            session's start (``"hour"``, ``"day"``, ``"week"``, ``"month"``, ``"year"``), or
            ``"field:NAME"`` for a Ready enum or string custom field (its key is ``NAME``).
        filter: Which sessions, in the filter language of ListSessions; empty for all.
        aggregates: Names from :data:`AGGREGATES`; empty for all of them.
        time_zone: The IANA time zone of the time buckets (default ``UTC``).
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the default one.

    Returns:
        The rows, ordered by their keys; see :class:`MetricAggregateRow`.

    Raises:
        InvalidRequestError: A bad argument, a metric never published, or too many groups.

    Example:
        >>> from flightlog import metrics
        >>> rows = metrics.aggregate("max_altitude_m", by=["month", "device"],
        ...                          aggregates=["count", "mean", "p90"], time_zone="UTC")
        >>> [(r.month.strftime("%Y-%m"), r.device, r.count, r.mean) for r in rows]
        [('2026-04', 'dv_abc', 3, 118.5), ('2026-05', 'dv_abc', 1, 97.0)]
    """
    names = [metrics] if isinstance(metrics, str) else list(metrics)
    zone = time_zone or "UTC"
    keys, names_of_keys = _group_by(by)
    unknown = [a for a in aggregates if a not in AGGREGATES]
    if unknown:
        raise ValueError(f"unknown aggregates {unknown}; choose from {', '.join(AGGREGATES)}")
    request = pb.AggregateSessionMetricsRequest(
        metrics=names,
        filter=filter,
        group_by=keys,
        aggregates=[
            pb.AggregateFunction.Value(f"AGGREGATE_FUNCTION_{a.upper()}") for a in aggregates
        ],
        time_zone=time_zone,
    )
    c = resolve_client(client)
    rows = [
        MetricAggregateRow(
            keys=_key_dict(names_of_keys, row.keys, zone),
            metrics={m.metric: MetricAggregates.from_proto(m) for m in row.metrics},
        )
        for batch in _read(c, c.sessions.AggregateSessionMetrics, request, org_id)
        for row in batch.rows
    ]
    return AggregateResult(rows=rows, key_names=names_of_keys)


def aggregate_sessions(
    *,
    by: Sequence[str] = (),
    filter: str = "",
    time_zone: str = "",
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> AggregateResult:
    """Count sessions and add up their durations, one row per group (AggregateSessions).

    The group keys, their semantics, the order and the cap are those of :func:`aggregate`.

    Returns:
        The rows, ordered by their keys; see :class:`SessionAggregateRow`.

    Example:
        >>> from flightlog import metrics
        >>> for row in metrics.aggregate_sessions(by=["month", "device"]):
        ...     print(row.month.date(), row.device, row.session_count, round(row.hours, 1))
        2026-04-01 dv_abc 12 7.5
    """
    zone = time_zone or "UTC"
    keys, names_of_keys = _group_by(by)
    request = pb.AggregateSessionsRequest(filter=filter, group_by=keys, time_zone=time_zone)
    c = resolve_client(client)
    rows = [
        SessionAggregateRow(
            keys=_key_dict(names_of_keys, row.keys, zone),
            session_count=row.session_count,
            bounded_session_count=row.bounded_session_count,
            total_duration=dt.timedelta(seconds=row.total_duration_seconds),
        )
        for batch in _read(c, c.sessions.AggregateSessions, request, org_id)
        for row in batch.rows
    ]
    return AggregateResult(rows=rows, key_names=names_of_keys)


def _group_by(by: Sequence[str]) -> tuple[list[pb.GroupBy], list[str]]:
    keys = []
    names = []
    for item in by:
        if item in _KINDS:
            keys.append(pb.GroupBy(kind=_KINDS[item]))
            names.append(item)
        elif item in _BUCKETS:
            keys.append(pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=_BUCKETS[item]))
            names.append(item)
        elif item.startswith("field:") and len(item) > len("field:"):
            name = item[len("field:") :]
            keys.append(pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field=name))
            names.append(name)
        else:
            raise ValueError(
                f"unknown group key {item!r}: use device, tag, dataset, hour, day, week, month,"
                " year or field:NAME"
            )
    return keys, names


def _key_dict(
    names: Sequence[str], values: Sequence[pb.GroupKeyValue], zone: str
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, value in zip(names, values, strict=True):
        which = value.WhichOneof("value")
        if which is None:
            out[name] = None
        elif which == "bucket_start_ns":
            out[name] = _bucket_datetime(value.bucket_start_ns, zone)
        else:
            out[name] = getattr(value, which)
    return out


def _bucket_datetime(ns: int, zone: str) -> dt.datetime:
    instant = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=ns // 1000)
    try:
        return instant.astimezone(zoneinfo.ZoneInfo(zone))
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return instant


def _read(c: FlightlogClient, method: Any, request: Any, org_id: str | None) -> list[Any]:
    """Every response of an aggregation stream (a bounded result, read whole; no resume)."""
    try:
        return list(method(request, timeout=c.stream_timeout, metadata=c.metadata(org_id)))
    except grpc.RpcError as error:
        raise c.translate(error, c.stream_timeout) from error
