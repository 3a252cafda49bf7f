"""Plain data the layers hand each other: no protobuf, no SQL."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


@dataclass(frozen=True)
class Caller:
    """Who is calling, for which org; every storage call is scoped by ``org_id``."""

    principal_id: str
    org_id: str
    request_id: str


class CustomFieldType(StrEnum):
    BOOLEAN = "boolean"
    ENUM = "enum"
    NUMBER = "number"
    STRING = "string"
    TIMESTAMP = "timestamp"


class CustomFieldStatus(StrEnum):
    CREATING = "creating"
    READY = "ready"
    DELETING = "deleting"
    FAILED = "failed"


@dataclass(frozen=True, order=True)
class Instant:
    """A point in time, exact to the nanosecond: nanoseconds since the Unix epoch (UTC).

    Custom-field timestamps are kept this way because the contract's type,
    ``google.protobuf.Timestamp``, carries nanoseconds, which ``datetime`` and PostgreSQL's
    ``timestamptz`` (microseconds) would drop. Its range is Timestamp's: years 1 to 9999.
    """

    ns: int

    NS_PER_SECOND = 1_000_000_000

    @classmethod
    def of(cls, seconds: int, nanos: int) -> Instant:
        return cls(seconds * cls.NS_PER_SECOND + nanos)

    @property
    def seconds(self) -> int:
        """Whole seconds since the epoch, rounded down (so ``nanos`` is never negative)."""
        return self.ns // self.NS_PER_SECOND

    @property
    def nanos(self) -> int:
        return self.ns % self.NS_PER_SECOND


# A custom-field value as Python sees it; ``None`` means unset.
FieldValue = bool | str | float | Instant


@dataclass(frozen=True)
class CustomFieldDef:
    custom_field_id: str
    org_id: str
    entity_type: str
    name: str
    type: CustomFieldType
    enum_values: tuple[str, ...]
    status: CustomFieldStatus
    description: str
    created: dt.datetime
    created_by: str


@dataclass(frozen=True)
class WireValue:
    """A custom-field value as sent: which oneof member was set, and its Python value.

    ``kind`` is one of ``null``, ``bool``, ``enum``, ``number``, ``string``, ``timestamp``.
    """

    kind: str
    value: FieldValue | None


@dataclass(frozen=True, slots=True)
class ContributionSpec:
    """A file to add to a session, whole (no bounds) or clipped to a closed window. (Slotted:
    AddSessionFiles makes up to 10,000 of them per call, and a request's memory is bounded.)"""

    file_id: str
    range_min_ns: int | None
    range_max_ns: int | None


@dataclass(frozen=True)
class SessionState:
    """A session as stored, with its set custom-field values (Ready fields only)."""

    session_id: str
    org_id: str
    name: str | None
    description: str | None
    tags: list[str]
    metadata: dict[str, Any]
    custom_fields: dict[str, tuple[CustomFieldType, FieldValue]]
    min_timestamp_ns: int | None
    max_timestamp_ns: int | None
    created: dt.datetime
    created_by: str
    modified: dt.datetime
    modified_by: str
    revision: int


@dataclass(frozen=True)
class MetricEntry:
    name: str
    value: float


@dataclass(frozen=True)
class IdempotencyKey:
    """A create call's ``request_id`` and a digest of the rest of its body: a replay (same
    digest) returns what the first call made; another body under the same key is refused."""

    request_id: str
    digest: bytes
