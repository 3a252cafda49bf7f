"""Session metrics: named numeric values published to a session.

Publish them with :meth:`flightlog.Session.publish_metrics`, read them back with
:meth:`flightlog.Session.list_metrics`.
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from flightlog._values import datetime_from_proto
from flightlog.v1 import session_service_pb2 as pb

__all__ = ["BulkPublishMetricsResult", "Metric", "MetricEntry", "MetricFailure"]


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
        index: Its index in the published list.
        reason: Why it failed, in one sentence.
    """

    entry: MetricEntry
    index: int
    reason: str

    @classmethod
    def from_proto(cls, message: pb.MetricFailure) -> MetricFailure:
        """Build from a ``flightlog.v1.MetricFailure`` message."""
        return cls(
            entry=MetricEntry.from_proto(message.entry),
            index=message.index,
            reason=message.reason,
        )


@dataclasses.dataclass(frozen=True)
class BulkPublishMetricsResult:
    """The outcome of :meth:`flightlog.Session.publish_metrics`.

    Attributes:
        succeeded: The values recorded.
        failed: The entries that could not be recorded, with why.
    """

    succeeded: list[Metric] = dataclasses.field(default_factory=list)
    failed: list[MetricFailure] = dataclasses.field(default_factory=list)

    @classmethod
    def from_proto(cls, message: pb.PublishSessionMetricsResponse) -> BulkPublishMetricsResult:
        """Build from a ``flightlog.v1.PublishSessionMetricsResponse`` message."""
        return cls(
            succeeded=[Metric.from_proto(m) for m in message.succeeded],
            failed=[MetricFailure.from_proto(f) for f in message.failed],
        )
