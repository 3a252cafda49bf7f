"""What a session listing asks for: filters, an order and a keyset position, as plain data.

The RPC layer builds these from a request (after validation), the storage layer turns them into
SQL (``storage.session_listing``).

Order: every sort puts sessions without a value (no name, no bounds, unset custom field) last in
both directions, and breaks ties by session ID in the sort's direction. A listing therefore walks
two *segments*: the sessions that have a value, ordered by (value, session_id), then those that
do not, ordered by session_id. A keyset position names the segment it is in, so a resumed
listing crosses from the first into the second exactly once.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from flightlog_server.domain.types import CustomFieldDef, CustomFieldType, FieldValue


class SortKey(StrEnum):
    CREATED = "created"
    NAME = "name"
    START_TIME = "start_time"
    DURATION = "duration"
    CUSTOM_FIELD = "custom_field"


class Comparison(StrEnum):
    EQUAL = "eq"
    NOT_EQUAL = "ne"
    LESS = "lt"
    LESS_OR_EQUAL = "le"
    GREATER = "gt"
    GREATER_OR_EQUAL = "ge"
    IN = "in"
    IS_NULL = "is_null"
    IS_NOT_NULL = "is_not_null"


ORDERED_COMPARISONS = frozenset(
    {
        Comparison.LESS,
        Comparison.LESS_OR_EQUAL,
        Comparison.GREATER,
        Comparison.GREATER_OR_EQUAL,
    }
)
_ORDERED_TYPES = frozenset(
    {CustomFieldType.NUMBER, CustomFieldType.STRING, CustomFieldType.TIMESTAMP}
)


def comparison_allowed(comparison: Comparison, field_type: CustomFieldType) -> bool:
    """Each type's capability: ordering for NUMBER, STRING and TIMESTAMP; IN for all but
    BOOLEAN; equality and nullness for every type."""
    if comparison in ORDERED_COMPARISONS:
        return field_type in _ORDERED_TYPES
    if comparison is Comparison.IN:
        return field_type is not CustomFieldType.BOOLEAN
    return True


@dataclass(frozen=True)
class FieldCondition:
    """A condition on a Ready custom field; ``operands`` holds 0, 1 or (for IN) several values."""

    field: CustomFieldDef
    comparison: Comparison
    operands: tuple[FieldValue, ...] = ()


@dataclass(frozen=True)
class SessionFilterSpec:
    """Every condition that is set must hold. Tags are deduplicated."""

    tags_all: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    device_id: str | None = None
    dataset_id: str | None = None
    # A closed window (min, max) that the session's bounds must overlap.
    overlaps: tuple[int, int] | None = None
    conditions: tuple[FieldCondition, ...] = ()
    name_contains: str | None = None


@dataclass(frozen=True)
class SessionOrder:
    key: SortKey = SortKey.CREATED
    descending: bool = True
    # The Ready custom field sorted by, with SortKey.CUSTOM_FIELD only.
    field: CustomFieldDef | None = None

    @property
    def has_absent_values(self) -> bool:
        """Whether some sessions may lack the sort value (every key but CREATED)."""
        return self.key is not SortKey.CREATED


# The Python type of a sort key's values, as read from the database (a custom-field timestamp is
# its ``Instant.ns``: exact, and JSON-safe in resume tokens).
SortValue = str | int | float | bool | dt.datetime


@dataclass(frozen=True)
class ListPosition:
    """The keyset position after a listed session: its sort value (None in the segment of
    sessions without a value) and its ID."""

    absent: bool
    value: SortValue | None
    session_id: str


@dataclass(frozen=True)
class KeysetPosition:
    """The position after a listed session in a multi-key order (``storage.session_filter``):
    its value of each key (None: absent) and its ID."""

    values: tuple[SortValue | None, ...]
    session_id: str
