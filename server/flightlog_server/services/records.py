"""Stored session records that an older encoding wrote: finding them and rewriting them.

Every record carries the version of the encoding that wrote it (``RecordFormat.version``).
When the encoding changes (a field added to ``Session`` and filled by the encoder), the version
is raised and the records written before are *stale*. No caller is served one: GetSession and
BatchGetSessions re-encode them on the fly (``Sessions.views``), and a listing's statement fails
on one (``storage.session_listing.current_record``), whereupon the listing rewrites its org's
stale records (:func:`rewrite_stale_in_org`) and reads the page again.
:func:`reencode_sessions` rewrites them all for good, online, in small batches, while the server
serves (``flightlog-server admin reencode-sessions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from flightlog_server.services.unit_of_work import RecordFormat
from flightlog_server.storage import sessions as store
from flightlog_server.storage.database import Database, Tx


async def count_stale(database: Database, record_format: RecordFormat, cap: int = 1_000_000) -> int:
    """How many stored records an older encoding wrote (counting up to ``cap``)."""

    async def count(tx: Tx) -> int:
        return await store.count_stale(tx, record_format.version, cap)

    return await database.query(count)


async def reencode_sessions(
    database: Database,
    record_format: RecordFormat,
    *,
    batch_size: int = 500,
    progress: Callable[[int], None] | None = None,
) -> int:
    """Rewrites every stale record, ``batch_size`` sessions per short transaction, and returns
    how many it rewrote. Sessions that writers hold are skipped and taken by a later pass (a
    writer stores a current record anyway); it returns when none is left."""
    total = 0

    async def batch(tx: Tx) -> int:
        stale = await store.lock_stale(tx, record_format.version, batch_size)
        records = [
            (org_id, s.session_id, record_format.encode(s.state(org_id))) for org_id, s in stale
        ]
        if records:
            await store.store_records(tx, record_format.version, records)
        return len(records)

    while True:
        done = await database.write(batch)
        total += done
        if progress is not None and done:
            progress(total)
        if done == 0:
            if await count_stale(database, record_format, cap=1) == 0:
                return total
            await asyncio.sleep(0.05)  # only sessions that writers hold are left: let them go


async def rewrite_stale_in_org(
    database: Database, record_format: RecordFormat, org_id: str, limit: int = 500
) -> int:
    """Rewrites up to ``limit`` of the org's stale records (sessions that writers hold are
    skipped: they store a current record anyway); returns how many it rewrote."""

    async def batch(tx: Tx) -> int:
        stale = await store.lock_stale_in_org(tx, org_id, record_format.version, limit)
        records = [(org, s.session_id, record_format.encode(s.state(org))) for org, s in stale]
        if records:
            await store.store_records(tx, record_format.version, records)
        return len(records)

    return await database.write(batch)
