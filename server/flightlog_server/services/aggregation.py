"""Use cases: aggregate metric values, and count sessions, across the sessions a filter keeps.

The checks that need the database (the metrics and custom fields named exist, with the right
type and status) run on the same connection as the aggregation, before it.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncConnection

from flightlog_server.domain.aggregation import (
    MAX_GROUPS,
    Aggregate,
    Grouping,
    GroupKind,
    MetricAggregateRow,
    SessionAggregateRow,
    too_many_groups_message,
)
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import Caller, CustomFieldStatus, CustomFieldType
from flightlog_server.storage import aggregation
from flightlog_server.storage.database import Database

Row = TypeVar("Row")

_GROUPABLE_TYPES = (CustomFieldType.ENUM.value, CustomFieldType.STRING.value)


class Aggregations:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def metrics(
        self,
        caller: Caller,
        names: Sequence[str],
        grouping: Grouping,
        aggregates: Sequence[Aggregate],
        *,
        group_by_field: str = "group_by",
    ) -> list[MetricAggregateRow]:
        """One row per group holding a value of one of the metrics ``names`` (distinct), with
        ``aggregates`` of each; at most ``MAX_GROUPS`` rows, INVALID_ARGUMENT past them."""

        async def work(conn: AsyncConnection) -> list[MetricAggregateRow]:
            v = Violations()
            ids = await aggregation.metric_ids(conn, caller.org_id, names)
            for i, name in enumerate(names):
                if name not in ids:
                    v.add(f"metrics[{i}]", f"no value of a metric named {name!r} was published")
            field_ids = await _field_ids(conn, caller.org_id, grouping, v, group_by_field)
            v.raise_if_any()
            return await aggregation.aggregate_metrics(
                conn,
                caller.org_id,
                [(name, ids[name]) for name in names],
                grouping,
                field_ids,
                aggregates,
            )

        return _capped(await self.database.read(work), group_by_field)

    async def sessions(
        self, caller: Caller, grouping: Grouping, *, group_by_field: str = "group_by"
    ) -> list[SessionAggregateRow]:
        """One row per group holding a session: their number and total duration; at most
        ``MAX_GROUPS`` rows, INVALID_ARGUMENT past them."""

        async def work(conn: AsyncConnection) -> list[SessionAggregateRow]:
            v = Violations()
            field_ids = await _field_ids(conn, caller.org_id, grouping, v, group_by_field)
            v.raise_if_any()
            return await aggregation.aggregate_sessions(conn, caller.org_id, grouping, field_ids)

        return _capped(await self.database.read(work), group_by_field)


async def _field_ids(
    conn: AsyncConnection, org_id: str, grouping: Grouping, v: Violations, group_by_field: str
) -> Mapping[int, str]:
    """The custom field ID of each CUSTOM_FIELD key, by position; a violation for each field
    that is not a Ready ENUM or STRING field."""
    wanted = {
        i: key.custom_field
        for i, key in enumerate(grouping.keys)
        if key.kind is GroupKind.CUSTOM_FIELD and key.custom_field is not None
    }
    found = await aggregation.custom_fields(conn, org_id, sorted(set(wanted.values())))
    ids: dict[int, str] = {}
    for i, name in wanted.items():
        field = f"{group_by_field}[{i}].custom_field"
        definition = found.get(name)
        if definition is None:
            v.add(field, f"no session custom field is named {name!r}")
            continue
        field_id, field_type, status = definition
        if status != CustomFieldStatus.READY.value:
            v.add(field, f"custom field {name!r} is {status}, not ready")
        elif field_type not in _GROUPABLE_TYPES:
            v.add(
                field,
                f"custom field {name!r} is of type {field_type}; only enum and string fields"
                " group sessions",
            )
        else:
            ids[i] = field_id
    return ids


def _capped(rows: list[Row], group_by_field: str) -> list[Row]:
    if len(rows) > MAX_GROUPS:
        raise InvalidArgument.one(group_by_field, too_many_groups_message())
    return rows
