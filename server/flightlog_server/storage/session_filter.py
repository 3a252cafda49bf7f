"""The filter strings of ListSessions and the aggregations (AIP-160), as SQL conditions.

Placeholder: only the empty filter (every session) is accepted until the filter language lands;
the signature is the one its implementation keeps, so that callers compose the condition now.
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, FromClause, true
from sqlalchemy.ext.asyncio import AsyncConnection

from flightlog_server.domain.errors import InvalidArgument


async def session_filter_condition(
    conn: AsyncConnection, org_id: str, text: str, sessions: FromClause
) -> ColumnElement[bool]:
    """The condition on ``sessions`` (a FROM clause with the columns of the sessions table)
    that keeps the sessions of ``org_id`` that ``text`` chooses; "" keeps all of them. Raises
    InvalidArgument on the field ``filter`` for a filter it cannot read."""
    if text == "":
        return true()
    raise InvalidArgument.one("filter", "filter strings are not supported yet")
