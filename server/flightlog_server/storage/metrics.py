"""Metric definitions (one per name and org, created on first use) and their values per session.

Values are written by the session unit of work (``services.unit_of_work``), which holds the
session's lock, so the values of one session are written by one transaction at a time;
definitions are shared by the whole org and are created race-free with ``ON CONFLICT DO
NOTHING`` (see ``metric_ids``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.metrics import MetricRecord
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import Caller
from flightlog_server.storage import models as m
from flightlog_server.storage.database import Tx

M = m.table(m.Metric)
V = m.table(m.SessionMetricValue)
S = m.table(m.Session)


class MetricRepository:
    """All SQL about metrics, scoped to the caller's org. Flushes, never commits."""

    def __init__(self, session: AsyncSession, caller: Caller) -> None:
        self.db = session
        self.caller = caller
        self.org_id = caller.org_id

    async def list_values(
        self, session_id: str, after_name: str | None, limit: int
    ) -> list[MetricRecord]:
        """The session's values ordered by metric name, after the keyset position
        ``after_name``, each with the session's current bounds (read in the same statement)."""
        query = (
            select(
                V.c.metric_id,
                M.c.name,
                V.c.value,
                V.c.device_id,
                V.c.published,
                V.c.published_by,
                S.c.min_timestamp_ns,
                S.c.max_timestamp_ns,
            )
            .select_from(
                V.join(M, and_(M.c.org_id == V.c.org_id, M.c.metric_id == V.c.metric_id)).join(
                    S, and_(S.c.org_id == V.c.org_id, S.c.session_id == V.c.session_id)
                )
            )
            .where(V.c.org_id == self.org_id, V.c.session_id == session_id)
            .order_by(M.c.name)
            .limit(limit)
        )
        if after_name is not None:
            query = query.where(M.c.name > after_name)
        return [
            _record(
                row,
                name=row.name,
                session_id=session_id,
                low=row.min_timestamp_ns,
                high=row.max_timestamp_ns,
            )
            for row in await self.db.execute(query)
        ]


def _record(
    row: Any, *, name: str, session_id: str, low: int | None, high: int | None
) -> MetricRecord:
    return MetricRecord(
        metric_id=row.metric_id,
        name=name,
        session_id=session_id,
        value=row.value,
        device_id=row.device_id,
        min_timestamp_ns=low,
        max_timestamp_ns=high,
        published=row.published,
        published_by=row.published_by,
    )


# --- on a Tx (the session unit of work) ----------------------------------------------------------


async def metric_ids(
    tx: Tx, org_id: str, principal_id: str, names: Sequence[str]
) -> tuple[dict[str, str], set[str]]:
    """The metric ID of each name, creating the missing definitions, and the names whose
    definition this transaction created (they exist for others only once it commits).

    Definitions are never deleted, so a committed name's ID never changes (callers may keep
    them). The insert's ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction inserting
    the same name and then skips it; the names it skipped are read back by a later statement,
    whose snapshot sees what that transaction committed. Names go in sorted order, so that two
    writers wait on each other in the same order (no deadlock)."""
    wanted = sorted(set(names))
    select = "SELECT name, metric_id FROM metrics WHERE org_id = $1 AND name = ANY($2::text[])"
    ids = {row[0]: row[1] for row in await tx.rows(select, [org_id, wanted])}
    created: set[str] = set()
    missing = [name for name in wanted if name not in ids]
    if missing:
        inserted = await tx.rows(
            """INSERT INTO metrics (org_id, metric_id, name, created_by)
               SELECT $1, u.metric_id, u.name, $4
               FROM unnest($2::text[], $3::text[]) AS u(name, metric_id)
               ON CONFLICT (org_id, name) DO NOTHING
               RETURNING name, metric_id""",
            [org_id, missing, [new_id("metric") for _ in missing], principal_id],
        )
        ids.update((row[0], row[1]) for row in inserted)
        created.update(row[0] for row in inserted)
        raced = [name for name in missing if name not in ids]
        if raced:
            ids.update((row[0], row[1]) for row in await tx.rows(select, [org_id, raced]))
    return ids, created
