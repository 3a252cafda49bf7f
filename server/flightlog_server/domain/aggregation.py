"""Aggregation across sessions: what a request asks for, its limits, and the rows it yields.

Semantics (the proto comments are the reference): sessions are aggregated in their current
state; a session with several values of a key counts once in each of its groups; a session
without any value of a key is in that key's unset group (``None``). Rows are ordered by their
keys, each ascending with ``None`` last.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

# A request produces at most this many groups; past it the request is refused (INVALID_ARGUMENT).
MAX_GROUPS = 10_000
MAX_AGGREGATED_METRICS = 10
MAX_GROUP_KEYS = 4
MAX_TIME_ZONE_CHARS = 64
DEFAULT_TIME_ZONE = "UTC"


class GroupKind(enum.Enum):
    DEVICE = "device"
    TAG = "tag"
    CUSTOM_FIELD = "custom_field"
    DATASET = "dataset"
    START_TIME = "start_time"


class TimeBucket(enum.Enum):
    HOUR = "hour"
    DAY = "day"
    WEEK = "week"
    MONTH = "month"
    YEAR = "year"


class Aggregate(enum.Enum):
    COUNT = "count"
    SUM = "sum"
    MEAN = "mean"
    MIN = "min"
    MAX = "max"
    STDDEV = "stddev"
    P50 = "p50"
    P90 = "p90"
    P99 = "p99"


PERCENTILES = {Aggregate.P50: 0.5, Aggregate.P90: 0.9, Aggregate.P99: 0.99}


@dataclass(frozen=True)
class GroupKey:
    """One group key. ``custom_field`` is set for CUSTOM_FIELD, ``bucket`` for START_TIME."""

    kind: GroupKind
    custom_field: str | None = None
    bucket: TimeBucket | None = None


@dataclass(frozen=True)
class Grouping:
    """The sessions to aggregate (a filter string) and how to group them."""

    filter: str
    keys: tuple[GroupKey, ...]
    time_zone: str


# A group's key values, one per group key: a string, a bucket's start in nanoseconds since the
# Unix epoch, or None for the unset group.
KeyValues = tuple[str | int | None, ...]


@dataclass(frozen=True)
class MetricAggregates:
    """The aggregates of one metric in one group: those not asked for are None, and so are
    those of a metric without values in the group (its count is then 0)."""

    metric: str
    values: dict[Aggregate, float | int | None]


@dataclass(frozen=True)
class MetricAggregateRow:
    keys: KeyValues
    metrics: tuple[MetricAggregates, ...]


@dataclass(frozen=True)
class SessionAggregateRow:
    keys: KeyValues
    session_count: int
    bounded_session_count: int
    total_duration_ns: int


def too_many_groups_message() -> str:
    return (
        f"the aggregation has more than {MAX_GROUPS:,} groups; narrow the filter, coarsen the"
        " time bucket or group by fewer keys"
    )
