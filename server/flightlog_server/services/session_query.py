"""ListSessions with the filter language and multi-key orders (``domain.filtering``).

The filter string and ``order_by`` are parsed, and the custom fields and metrics they name are
looked up in one read; the structured filter and sort, when set, join the same query (the
filters are ANDed; a structured sort is the order when ``order_by`` is empty).
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncConnection

from flightlog_server.domain.errors import FieldViolation, InvalidArgument
from flightlog_server.domain.filtering import Field, FieldKind, OrderKey, Resolved
from flightlog_server.domain.listing import SessionFilterSpec, SessionOrder, SortKey
from flightlog_server.storage.database import Database
from flightlog_server.storage.session_filter import OrderedListingQuery, resolve
from flightlog_server.storage.session_listing import Framing

__all__ = ["OrderedListingQuery", "prepare_listing"]

_KINDS = {
    SortKey.CREATED: FieldKind.CREATED,
    SortKey.NAME: FieldKind.NAME,
    SortKey.START_TIME: FieldKind.START_TIME,
    SortKey.DURATION: FieldKind.DURATION,
    SortKey.CUSTOM_FIELD: FieldKind.CUSTOM_FIELD,
}


def keys_of(order: SessionOrder) -> list[OrderKey]:
    """A structured sort as order keys."""
    kind = _KINDS[order.key]
    name = f"custom_fields.{order.field.name}" if order.field else kind.value
    return [OrderKey(Field(kind, name, custom_field=order.field), order.descending)]


async def prepare_listing(
    database: Database,
    org_id: str,
    filter_text: str,
    order_by: str,
    spec: SessionFilterSpec,
    structured_order: SessionOrder,
    framing: Framing,
    *,
    filter_field: str = "filter",
) -> tuple[OrderedListingQuery, Sequence[OrderKey]]:
    """The listing's query and its effective order; INVALID_ARGUMENT names ``filter_field`` for
    a bad filter, ``order_by`` for a bad order."""

    async def work(conn: AsyncConnection) -> tuple[Resolved | None, list[OrderKey]]:
        return await resolve(conn, org_id, filter_text, order_by)

    try:
        resolved, keys = await database.read(work)
    except InvalidArgument as error:
        if filter_field == "filter":
            raise
        raise InvalidArgument(
            [
                FieldViolation(filter_field if v.field == "filter" else v.field, v.description)
                for v in error.violations
            ]
        ) from None
    if not keys:
        keys = keys_of(structured_order)
    return OrderedListingQuery(org_id, resolved, spec, keys, framing), keys
