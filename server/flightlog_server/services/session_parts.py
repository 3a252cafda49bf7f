"""The listings of a session's parts: its file contributions, devices, topics and metric values,
a keyset page at a time (the RPC layer streams them). The first page of a listing also checks
that the session exists in the caller's org (NOT_FOUND otherwise)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.catalog import TopicRecord
from flightlog_server.domain.errors import NotFound
from flightlog_server.domain.metrics import MetricRecord
from flightlog_server.domain.types import Caller
from flightlog_server.storage import session_parts
from flightlog_server.storage.database import Database
from flightlog_server.storage.metrics import MetricRepository
from flightlog_server.storage.topics import TopicRepository

T = TypeVar("T")


class SessionParts:
    def __init__(self, database: Database) -> None:
        self.database = database

    async def _page(
        self,
        caller: Caller,
        session_id: str,
        first: bool,
        read: Callable[[AsyncSession], Awaitable[T]],
    ) -> T:
        async def work(db: AsyncSession) -> T:
            if first:
                await session_parts.require_session(db, caller.org_id, session_id)
            return await read(db)

        return await self.database.run(work)

    async def files(
        self, caller: Caller, session_id: str, after_seq: int | None, limit: int
    ) -> list[Any]:
        """Contributions in the order they were first added, after ``after_seq``."""
        return await self._page(
            caller,
            session_id,
            after_seq is None,
            lambda db: session_parts.contributions(db, caller.org_id, session_id, after_seq, limit),
        )

    async def devices(
        self, caller: Caller, session_id: str, after_seq: int | None, limit: int
    ) -> list[Any]:
        """Attached devices in attach order, after ``after_seq``."""
        return await self._page(
            caller,
            session_id,
            after_seq is None,
            lambda db: session_parts.attachments(db, caller.org_id, session_id, after_seq, limit),
        )

    async def topics(
        self, caller: Caller, session_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[TopicRecord]:
        """Topics reachable from the session's window, by (name, topic ID), after ``after``."""
        return await self._page(
            caller,
            session_id,
            after is None,
            lambda db: TopicRepository(db, caller.org_id).list_reachable(session_id, after, limit),
        )

    async def topic(self, caller: Caller, session_id: str, name: str) -> TopicRecord:
        """The reachable topic of that name (TOPIC_NOT_FOUND when there is none)."""

        async def read(db: AsyncSession) -> TopicRecord:
            topic = await TopicRepository(db, caller.org_id).reachable_by_name(session_id, name)
            if topic is None:
                raise NotFound("topic", [name])
            return topic

        return await self._page(caller, session_id, True, read)

    async def metrics(
        self, caller: Caller, session_id: str, after_name: str | None, limit: int
    ) -> list[MetricRecord]:
        """The session's metric values by name, after ``after_name``."""
        return await self._page(
            caller,
            session_id,
            after_name is None,
            lambda db: MetricRepository(db, caller).list_values(session_id, after_name, limit),
        )
