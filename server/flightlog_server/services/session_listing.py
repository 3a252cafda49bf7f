"""ListSessions' use case: the listing's definitions, its query, and its pages read ahead.

The RPC layer (``rpc.session_listing``) validates the request, builds the query from it and
turns pages into responses and resume tokens; this module reads. Each page is one statement
(``storage.session_listing`` or, with the filter language, ``storage.session_filter``) through
``Database.read``: no transaction, and no connection held between pages, so a slow client holds
none. A task reads up to ``READ_AHEAD_PAGES`` pages ahead of the one being sent, so the database
works while gRPC sends and the client parses; gRPC flow control holds back the rest. A
cancelled stream cancels the task, and with it any query in progress (psycopg cancels it in
PostgreSQL), which returns the connection at once.

A page never carries a record that an older encoding wrote: its statement fails on one
(``StaleRecord``), and the listing rewrites the org's stale records, a bounded batch at a time,
then reads the page again.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

from flightlog_server.domain.errors import DatabaseUnavailable
from flightlog_server.domain.listing import SessionFilterSpec, SessionOrder
from flightlog_server.domain.types import Caller, CustomFieldDef
from flightlog_server.services.records import rewrite_stale_in_org
from flightlog_server.services.session_query import OrderedListingQuery, prepare_listing
from flightlog_server.services.unit_of_work import RecordFormat
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database, StaleRecord
from flightlog_server.storage.session_listing import Framing, Page, SessionListingQuery

__all__ = [
    "READ_AHEAD_PAGES",
    "Framing",
    "OrderedListingQuery",
    "Page",
    "SessionListingQuery",
    "SessionListings",
]

# Pages read ahead of the one being sent: the database reads while gRPC sends and the client
# parses, and a stream holds at most this many pages plus the one in flight.
READ_AHEAD_PAGES = 2
# Rewrites of stale records a page may need before it is read whole: a page of up to 1,000
# sessions needs at most two batches of 500, more only while writers hold some of them.
_MAX_REWRITES_PER_PAGE = 20

P = TypeVar("P")


class PagedQuery(Protocol[P]):
    """What both listing engines offer: one page after a position."""

    async def page(self, db: Any, after: P | None, limit: int) -> Page[P]: ...


class SessionListings:
    """Reads listings of sessions for the RPC layer."""

    def __init__(self, database: Database, record_format: RecordFormat) -> None:
        self.database = database
        self.record_format = record_format

    def framing(self, prefix: bytes) -> Framing:
        """Field 1 (``sessions``) of ListSessionsResponse, each session as prefix + record."""
        return Framing(tag=0x0A, prefix=prefix, record_version=self.record_format.version)

    async def definitions(
        self, caller: Caller, names: list[str]
    ) -> tuple[list[str], dict[str, CustomFieldDef]]:
        """The org's Ready custom-field names, and the definitions of ``names`` found."""

        async def resolve(db: Any) -> tuple[list[str], dict[str, CustomFieldDef]]:
            repo = CustomFieldRepository(db, caller.org_id)
            return await repo.ready_names(), await repo.by_names(names)

        return await self.database.run(resolve)

    async def ordered_query(
        self,
        caller: Caller,
        filter_text: str,
        order_by: str,
        spec: SessionFilterSpec,
        structured_order: SessionOrder,
        framing: Framing,
    ) -> OrderedListingQuery:
        """The query of a listing with the filter language or a multi-key order
        (``services.session_query``); INVALID_ARGUMENT names ``filter_text`` or ``order_by``."""
        query, _ = await prepare_listing(
            self.database,
            caller.org_id,
            filter_text,
            order_by,
            spec,
            structured_order,
            framing,
            filter_field="filter_text",
        )
        return query

    async def pages(
        self, caller: Caller, query: PagedQuery[Any], after: Any, page_size: int
    ) -> AsyncGenerator[Page[Any], None]:
        """The listing's pages from ``after``, read ahead (see module doc); the last one holds
        fewer than ``page_size`` sessions."""

        async def read_ahead(pages: asyncio.Queue[Page[Any] | BaseException]) -> None:
            """Reads page after page into ``pages`` (bounded: it waits while it is full)."""
            position = after
            try:
                while True:
                    page = await self._page(caller, query.page, position, page_size)
                    await pages.put(page)
                    if page.count < page_size:
                        return
                    position = page.last
            except Exception as error:  # noqa: BLE001 - handed to the stream, which raises it
                await pages.put(error)

        queue: asyncio.Queue[Page[Any] | BaseException] = asyncio.Queue(maxsize=READ_AHEAD_PAGES)
        reader = asyncio.create_task(read_ahead(queue))
        try:
            while True:
                page = await queue.get()
                if isinstance(page, BaseException):
                    raise page
                yield page
                if page.count < page_size:
                    return
        finally:
            # Wait for the reader to wind down, so that its connection is back in the pool
            # before the stream ends (a cancelled task left alone returns it whenever it runs).
            reader.cancel()
            await asyncio.wait([reader])

    async def _page(
        self,
        caller: Caller,
        read_page: Callable[..., Awaitable[Page[P]]],
        after: P | None,
        limit: int,
    ) -> Page[P]:
        for _ in range(_MAX_REWRITES_PER_PAGE):
            try:
                return await self.database.read(
                    functools.partial(read_page, after=after, limit=limit)
                )
            except StaleRecord:
                rewritten = await rewrite_stale_in_org(
                    self.database, self.record_format, caller.org_id
                )
                if rewritten == 0:
                    await asyncio.sleep(0.05)  # writers hold them, and store current ones
        raise DatabaseUnavailable("session records are being rewritten by a newer server; retry")
