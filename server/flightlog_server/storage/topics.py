"""The topics reachable from a session, range-filtered against its window.

A topic is reachable when one of its partitions, in a file contributing to the session, has an
extent that overlaps the session's window once the file's offset is applied (closed intervals:
``extent.min + offset <= session.max AND extent.max + offset >= session.min``). A session
without bounds reaches nothing: the comparisons with its NULL bounds are never true.

Both queries are one statement each, walking indexes from the session outwards:
``session_files`` by its primary key ``(org_id, session_id, ...)``, each file by its primary key,
and its extents by the prefix ``(org_id, file_id)`` of theirs. Files whose whole window misses
the session's are skipped before their extents are read (``files.extents_min_ns`` /
``extents_max_ns``), which keeps narrow sessions over long recordings cheap.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, Select, and_, exists, select, tuple_
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.catalog import TopicRecord
from flightlog_server.storage import models as m

S = m.table(m.Session)
C = m.table(m.SessionFile)
F = m.table(m.File)
E = m.table(m.TimelineExtent)
T = m.table(m.Topic)


class TopicRepository:
    """Reads topic identities through a session. Scoped to one org; never writes."""

    def __init__(self, session: AsyncSession, org_id: str) -> None:
        self.db = session
        self.org_id = org_id

    def _overlapping_extents(
        self, session_id: str, *conditions: ColumnElement[bool]
    ) -> Select[tuple[str]]:
        """Topic IDs of the extents that overlap the session's window, one row per extent."""
        offset = F.c.unix_epoch_offset_ns
        lo, hi = S.c.min_timestamp_ns, S.c.max_timestamp_ns
        return (
            select(E.c.topic_id)
            .select_from(
                S.join(C, and_(C.c.org_id == S.c.org_id, C.c.session_id == S.c.session_id))
                .join(F, and_(F.c.org_id == C.c.org_id, F.c.file_id == C.c.file_id))
                .join(E, and_(E.c.org_id == F.c.org_id, E.c.file_id == F.c.file_id))
            )
            .where(
                S.c.org_id == self.org_id,
                S.c.session_id == session_id,
                # The file's window overlaps the session's (redundant, but it prunes whole files
                # before their extents are read; a file without extents has NULLs and drops out).
                F.c.extents_min_ns + offset <= hi,
                F.c.extents_max_ns + offset >= lo,
                E.c.min_ns + offset <= hi,
                E.c.max_ns + offset >= lo,
                *conditions,
            )
        )

    async def list_reachable(
        self, session_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[TopicRecord]:
        """Reachable topics ordered by (name, topic_id), after the keyset position ``after``.

        The reachable IDs are computed once, as a MATERIALIZED set (a semi-join against it,
        not a correlated subquery per topic): the planner cannot estimate the overlap conditions
        well, and with a LIMIT it may otherwise re-run the extent scan for every topic of the org.
        """
        reachable = (
            self._overlapping_extents(session_id)
            .distinct()
            .cte("reachable")
            .prefix_with("MATERIALIZED")
        )
        query = (
            select(T.c.topic_id, T.c.name, T.c.schema_name, T.c.message_encoding)
            .where(
                T.c.org_id == self.org_id,
                T.c.topic_id.in_(select(reachable.c.topic_id)),
            )
            .order_by(T.c.name, T.c.topic_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(T.c.name, T.c.topic_id) > tuple_(*after))
        return [_topic(row) for row in await self.db.execute(query)]

    async def reachable_by_name(self, session_id: str, name: str) -> TopicRecord | None:
        """The reachable topic with this name and the smallest ID, or None.

        Few topics share a name, so here each candidate is checked with a correlated EXISTS,
        which stops at the first overlapping extent.
        """
        query = (
            select(T.c.topic_id, T.c.name, T.c.schema_name, T.c.message_encoding)
            .where(
                T.c.org_id == self.org_id,
                T.c.name == name,
                exists(self._overlapping_extents(session_id, E.c.topic_id == T.c.topic_id)),
            )
            .order_by(T.c.topic_id)
            .limit(1)
        )
        row = (await self.db.execute(query)).one_or_none()
        return None if row is None else _topic(row)


def _topic(row: Any) -> TopicRecord:
    return TopicRecord(
        topic_id=row.topic_id,
        name=row.name,
        schema_name=row.schema_name,
        message_encoding=row.message_encoding,
    )
