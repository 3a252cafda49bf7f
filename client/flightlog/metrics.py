"""Session metrics: named numeric values published to a session.

Publish them with :func:`publish` (one session, or many in as few calls as the server's limits
allow) or :meth:`flightlog.Session.publish_metrics`, which wraps it; read them back with
:meth:`flightlog.Session.list_metrics`. A pipeline that also changes tags or custom fields
sends both in one call with :meth:`flightlog.Session.update` (``metrics=``).

Example:
    >>> from flightlog import Session, metrics
    >>> from flightlog.metrics import MetricEntry
    >>> a, b = Session.create_many([{"name": "run-a"}, {"name": "run-b"}])
    >>> result = metrics.publish(
    ...     {
    ...         a.session_id: [MetricEntry("cpu.usage_max", 87.2)],
    ...         b.session_id: [MetricEntry("cpu.usage_max", 64.0)],
    ...     },
    ...     device_id=None,
    ... )
    >>> sorted(m.value for m in result.succeeded)
    [64.0, 87.2]
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping, Sequence

from flightlog._batching import MAX_BATCH_BYTES, MAX_BATCH_ITEMS, batches, field_size
from flightlog._client import FlightlogClient, resolve_client
from flightlog._values import NotSet, NotSetType, datetime_from_proto
from flightlog.errors import FlightlogError
from flightlog.v1 import session_service_pb2 as pb

__all__ = [
    "MAX_PUBLISH_ENTRIES",
    "BulkPublishMetricsResult",
    "Metric",
    "MetricEntry",
    "MetricFailure",
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
        try:
            response = c.call(
                c.sessions.PublishMetrics, pb.PublishMetricsRequest(requests=chunk), org_id=org_id
            )
        except FlightlogError as error:
            error.batch_offset, error.batch_size = offset, len(chunk)
            raise
        for item, answer in zip(chunk, response.responses, strict=True):
            part = BulkPublishMetricsResult.from_proto(answer, item.session_id)
            result.succeeded.extend(part.succeeded)
            result.failed.extend(part.failed)
        offset += len(chunk)
    return result
