"""Reading a session's parts: its file contributions and device attachments, in keyset pages.
(Its topics are in ``storage.topics``, its metric values in ``storage.metrics``.)"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, select
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.errors import NotFound
from flightlog_server.storage import models as m

S = m.table(m.Session)
C = m.table(m.SessionFile)
D = m.table(m.SessionDevice)
F = m.table(m.File)


async def require_session(db: AsyncSession, org_id: str, session_id: str) -> None:
    """NOT_FOUND when the session is not in the org."""
    found = await db.scalar(
        select(S.c.session_id).where(S.c.org_id == org_id, S.c.session_id == session_id)
    )
    if found is None:
        raise NotFound("session", [session_id])


async def contributions(
    db: AsyncSession, org_id: str, session_id: str, after_seq: int | None, limit: int
) -> list[Any]:
    """Contributions in the order they were first added, with their file's dataset, path and
    size, after the keyset position ``after_seq``."""
    query = (
        select(
            C.c.file_id,
            C.c.range_min_ns,
            C.c.range_max_ns,
            C.c.seq,
            C.c.created,
            C.c.created_by,
            C.c.modified,
            C.c.modified_by,
            F.c.dataset_id,
            F.c.relative_path,
            F.c.size_bytes,
        )
        .join(F, and_(F.c.org_id == C.c.org_id, F.c.file_id == C.c.file_id))
        .where(C.c.org_id == org_id, C.c.session_id == session_id)
        .order_by(C.c.seq)
        .limit(limit)
    )
    if after_seq is not None:
        query = query.where(C.c.seq > after_seq)
    return list(await db.execute(query))


async def attachments(
    db: AsyncSession, org_id: str, session_id: str, after_seq: int | None, limit: int
) -> list[Any]:
    """Attached devices in attach order, after the keyset position ``after_seq``."""
    query = (
        select(D.c.device_id, D.c.attached, D.c.attached_by, D.c.seq)
        .where(D.c.org_id == org_id, D.c.session_id == session_id)
        .order_by(D.c.seq)
        .limit(limit)
    )
    if after_seq is not None:
        query = query.where(D.c.seq > after_seq)
    return list(await db.execute(query))
