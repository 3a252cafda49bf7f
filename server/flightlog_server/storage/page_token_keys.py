"""The secrets that sign page tokens, kept in the database so that every server process (and
every host behind a load balancer) accepts the tokens any of them issued.

The first key is made by the first server that needs it: every process that finds the table
empty inserts a fresh random key under the same ``key_id``, ``ON CONFLICT DO NOTHING`` keeps the
one that committed first (a concurrent insert waits for it), and each process then reads that
one back. Under READ COMMITTED the read runs on a new snapshot, so it sees the winner's row.
"""

from __future__ import annotations

import secrets

from sqlalchemy import select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.storage.models import PageTokenKey

FIRST_KEY_ID = 1
SECRET_BYTES = 32


async def page_token_keys(session: AsyncSession) -> dict[int, bytes]:
    """Every signing key by ``key_id``, the first one created when there is none yet."""
    await session.execute(
        insert(PageTokenKey)
        .values(key_id=FIRST_KEY_ID, secret=secrets.token_bytes(SECRET_BYTES))
        .on_conflict_do_nothing(index_elements=[PageTokenKey.key_id])
    )
    rows = await session.execute(select(PageTokenKey.key_id, PageTokenKey.secret))
    return {key_id: bytes(secret) for key_id, secret in rows.all()}
