"""Metric definitions (one per name and org, created on first use) and their values per session.

Writers lock the session row first (``SessionRepository.lock``), so the values of one session are
written by one transaction at a time; definitions are shared by the whole org and are created
race-free with ``ON CONFLICT DO NOTHING`` (see ``define``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import and_, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.metrics import MetricRecord
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import Caller, MetricEntry
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

    async def define(self, names: Sequence[str]) -> dict[str, str]:
        """The metric ID of each name, creating the missing definitions.

        ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction inserting the same name and
        then skips it; the IDs are read back in a second statement, whose fresh snapshot sees
        the rows such a transaction committed. Names go in sorted order, so that two batches
        wait on each other in the same order (no deadlock)."""
        wanted = sorted(set(names))
        await self.db.execute(
            pg_insert(M)
            .values(
                [
                    {
                        "org_id": self.org_id,
                        "metric_id": new_id("metric"),
                        "name": name,
                        "created_by": self.caller.principal_id,
                    }
                    for name in wanted
                ]
            )
            .on_conflict_do_nothing(index_elements=[M.c.org_id, M.c.name])
        )
        rows = await self.db.execute(
            select(M.c.name, M.c.metric_id).where(M.c.org_id == self.org_id, M.c.name.in_(wanted))
        )
        return {row.name: row.metric_id for row in rows}

    async def publish(
        self,
        session_id: str,
        device_id: str | None,
        entries: Sequence[MetricEntry],
        bounds: tuple[int | None, int | None],
    ) -> list[MetricRecord]:
        """Upserts one value per entry (names must be distinct) and returns the records in the
        order of ``entries``. The caller holds the session's lock; ``bounds`` are its bounds."""
        ids = await self.define([e.name for e in entries])
        stmt = pg_insert(V).values(
            [
                {
                    "org_id": self.org_id,
                    "session_id": session_id,
                    "metric_id": ids[e.name],
                    "value": e.value,
                    "device_id": device_id,
                    "published_by": self.caller.principal_id,
                }
                for e in entries
            ]
        )
        rows = await self.db.execute(
            stmt.on_conflict_do_update(
                index_elements=[V.c.org_id, V.c.session_id, V.c.metric_id],
                set_={
                    "value": stmt.excluded.value,
                    "device_id": stmt.excluded.device_id,
                    "published": func.now(),
                    "published_by": stmt.excluded.published_by,
                },
            ).returning(V.c.metric_id, V.c.value, V.c.device_id, V.c.published, V.c.published_by)
        )
        by_id = {row.metric_id: row for row in rows}
        low, high = bounds
        return [
            _record(by_id[ids[e.name]], name=e.name, session_id=session_id, low=low, high=high)
            for e in entries
        ]

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
) -> dict[str, str]:
    """The metric ID of each name, creating the missing definitions.

    Definitions are never deleted, so a name's ID never changes (callers may keep them). The
    insert's ``ON CONFLICT DO NOTHING`` waits for a concurrent transaction inserting the same
    name and then skips it; the names it skipped are read back by a later statement, whose
    snapshot sees what that transaction committed. Names go in sorted order, so that two writers
    wait on each other in the same order (no deadlock)."""
    wanted = sorted(set(names))
    select = "SELECT name, metric_id FROM metrics WHERE org_id = $1 AND name = ANY($2::text[])"
    ids = {row[0]: row[1] for row in await tx.rows(select, [org_id, wanted])}
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
        raced = [name for name in missing if name not in ids]
        if raced:
            ids.update((row[0], row[1]) for row in await tx.rows(select, [org_id, raced]))
    return ids
