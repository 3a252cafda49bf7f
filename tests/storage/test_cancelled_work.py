"""Work cancelled at any point returns its connection to the pool, clean.

A cancellation lands wherever the task next waits. psycopg yields to the event loop in every
call once the loop has been busy for a few milliseconds, even in calls that do no I/O (setting
autocommit, for instance), so under load any psycopg call is a place a cancellation can land.
This test makes that systematic: psycopg yields in every call, and the work is cancelled at
its first wait, then its second, and so on, for each way ``Database`` hands out connections
(cold pool and warm). Each time the connection must be back in the pool, in its default state
(not in autocommit), and nothing may be left for the garbage collector (which can only drop an
asyncio connection, with a warning).
"""

from __future__ import annotations

import asyncio
import gc
import time
import warnings
from collections.abc import Awaitable, Callable
from typing import Any

import psycopg
import psycopg.waiting
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession
from sqlalchemy.pool import QueuePool

from flightlog_server import request_context
from flightlog_server.storage.database import Database, DatabaseSettings

Work = Callable[[Database], Awaitable[Any]]


async def select_one(connection: AsyncConnection | AsyncSession) -> None:
    await connection.execute(text("SELECT 1"))


async def with_deadline(seconds: float, work: Awaitable[Any]) -> Any:
    request_context.call_deadline.set(time.monotonic() + seconds)
    return await work


WORK: dict[str, Work] = {
    "read, no deadline (autocommit)": lambda db: db.read(select_one),
    "read, short deadline (transaction)": lambda db: with_deadline(5, db.read(select_one)),
    "run (transaction)": lambda db: db.run(select_one),
    "run, short deadline": lambda db: with_deadline(5, db.run(select_one)),
}


class CancelAtWait:
    """Cancels ``task`` when the ``at``-th wait on a psycopg connection starts while it runs
    (its own, or one of a task it waits for, such as SQLAlchemy's shielded close)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.task: asyncio.Task[Any] | None = None
        self.at = 0
        self.waits = 0
        original = psycopg.AsyncConnection.wait

        async def wait(connection: psycopg.AsyncConnection[Any], *args: Any, **kw: Any) -> Any:
            if self.task is not None and not self.task.done():
                self.waits += 1
                if self.waits == self.at:
                    self.task.cancel()
            return await original(connection, *args, **kw)

        monkeypatch.setattr(psycopg.AsyncConnection, "wait", wait)
        # Every psycopg call yields to the loop, as it does under load.
        monkeypatch.setattr(psycopg.waiting, "MAX_BUSY_TIME", -1.0)

    async def run(self, work: Awaitable[Any], at: int) -> bool:
        """Runs ``work``, cancelled at its ``at``-th wait; True when it was cancelled."""
        self.at, self.waits = at, 0
        self.task = asyncio.ensure_future(work)
        try:
            await self.task
        except asyncio.CancelledError:
            return True
        return False


@pytest.mark.parametrize("warm", [False, True], ids=["cold pool", "warm pool"])
@pytest.mark.parametrize("name", list(WORK))
def test_work_cancelled_at_any_wait_returns_its_connection_clean(
    name: str, warm: bool, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    injector = CancelAtWait(monkeypatch)

    async def scenario() -> list[str]:
        problems: list[str] = []
        at = 1
        while True:
            database = Database(DatabaseSettings(url=database_url, pool_size=1, max_overflow=0))
            try:
                if warm:
                    await WORK[name](database)
                cancelled = await injector.run(WORK[name](database), at)
                pool = database.engine.pool
                assert isinstance(pool, QueuePool)
                if pool.checkedout():
                    problems.append(f"cancelled at wait {at}: the connection is still out")
                async with database.engine.connect() as connection:
                    raw = await connection.get_raw_connection()
                    assert raw.driver_connection is not None
                    if raw.driver_connection.autocommit:
                        problems.append(f"cancelled at wait {at}: pooled in autocommit")
            finally:
                await database.close()
            if not cancelled:  # past the last wait: every point has been tried
                return problems
            at += 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        problems = asyncio.run(scenario())
        gc.collect()  # what the cancelled work dropped is finalized now, inside this block
    leaks = [str(w.message)[:90] for w in caught if "garbage collector" in str(w.message)]
    assert problems == []
    assert leaks == []
