"""The session change feed in storage: reading it, pruning it, and waking its watchers.

Why reading ``revision > last`` never skips a change
----------------------------------------------------
Every session write ends with one statement (``storage.sessions``, run by the unit of work)
that takes the org's next revisions from its ``change_feeds`` row (an upsert adding to
``revision``, ``RETURNING`` it) and inserts the change rows. That row lock is held until the
transaction ends, so a second writer of the same org waits at its own upsert until the first one
has committed or rolled back, and only then reads the new value. PostgreSQL makes a committed
transaction visible to new snapshots *before* it releases its locks (``ProcArrayEndTransaction``
precedes the lock release in ``CommitTransaction``). Hence:

* revisions are dense: a rolled-back writer's revision is taken by the next writer, and every
  revision taken has its change row (same transaction);
* revisions become visible in revision order: a snapshot that sees revision ``r`` sees every
  revision below ``r``, because the writer of ``r`` could not even take it before the writer of
  ``r - 1`` was visible.

So a reader that has seen everything up to ``last`` and then reads ``revision > last`` can never
find a smaller revision committing later: there is no in-flight hole to skip. Only pruning
removes rows, and it removes a prefix of each org's revisions, so a gap right after ``last`` means
the reader fell behind the retained history (``RevisionExpired``).

Notifications only wake watchers; the table is the source of truth. ``ChangeNotifier`` keeps ONE
``LISTEN`` connection per process and, per watcher, nothing but an ``asyncio.Event``.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
import weakref
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import psycopg
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Integer,
    Interval,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    case,
    delete,
    func,
    select,
    true,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql.elements import ColumnElement

from flightlog_server.domain.errors import InvalidArgument, RevisionExpired
from flightlog_server.storage import models as m
from flightlog_server.storage.database import Database
from flightlog_server.storage.sessions import CHANGES_CHANNEL
from flightlog_server.storage.urls import libpq_conninfo

log = logging.getLogger(__name__)

CH = m.table(m.SessionChange)
FEEDS = m.table(m.ChangeFeed)

_TEXT_ARRAY = ARRAY(Text)


@dataclass(frozen=True)
class ChangeFilter:
    """What a watcher wants; an empty member does not filter.

    ``tags_any`` and ``device_id`` look at the session as it is after the change (for a
    deletion: as it was just before it).
    """

    session_ids: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    device_id: str | None = None
    kinds: tuple[str, ...] = ()

    def condition(self) -> ColumnElement[bool]:
        conditions: list[ColumnElement[bool]] = []
        if self.session_ids:
            ids = bindparam("session_ids", list(self.session_ids), type_=_TEXT_ARRAY)
            conditions.append(CH.c.session_id == any_(ids))
        if self.tags_any:
            tags = bindparam("tags_any", list(self.tags_any), type_=_TEXT_ARRAY)
            conditions.append(CH.c.tags.op("&&", is_comparison=True)(tags))
        if self.device_id is not None:
            device = bindparam("device_ids", [self.device_id], type_=_TEXT_ARRAY)
            conditions.append(CH.c.device_ids.op("@>", is_comparison=True)(device))
        if self.kinds:
            kinds = bindparam("kinds", list(self.kinds), type_=_TEXT_ARRAY)
            conditions.append(CH.c.kind == any_(kinds))
        return and_(true(), *conditions)

    def matches(self, change: StoredChange) -> bool:
        """The same test as :meth:`condition`, on a change read without a filter (the shared
        reader of ``services.change_feed`` reads each change once for every watcher)."""
        if self.session_ids and change.session_id not in self.session_ids:
            return False
        if self.tags_any and not set(self.tags_any).intersection(change.tags):
            return False
        if self.device_id is not None and self.device_id not in change.device_ids:
            return False
        return not self.kinds or change.kind in self.kinds


@dataclass(frozen=True)
class StoredChange:
    """One examined change; ``matched`` says whether it passed the filter. ``record`` is the
    session's wire record after the change, only for a matched change that is not a deletion."""

    revision: int
    session_id: str
    kind: str
    committed: dt.datetime
    matched: bool
    record: bytes | None
    # The session's tags and devices after the change (before it, for a deletion).
    tags: tuple[str, ...] = ()
    device_ids: tuple[str, ...] = ()


@dataclass(frozen=True)
class ChangeBatch:
    """Changes examined after a revision, in revision order. ``more`` is True when the read
    stopped at its row or byte limit (there may be more right away)."""

    changes: list[StoredChange]
    more: bool

    def last_revision(self, after: int) -> int:
        return self.changes[-1].revision if self.changes else after


@dataclass(frozen=True)
class RetainedHistory:
    """An org's feed: its ``current`` revision and the ``oldest`` revision still deliverable.

    A watch may start after any revision from ``oldest - 1`` to ``current``. With no change
    retained, ``oldest`` is ``current + 1``: the next change is the first one available.
    """

    current: int
    oldest: int


class ChangeRepository:
    """All SQL reading one org's change feed. Flushes, never commits."""

    def __init__(self, session: AsyncSession, org_id: str) -> None:
        self.db = session
        self.org_id = org_id

    async def history(self) -> RetainedHistory:
        row = (
            await self.db.execute(
                select(
                    select(FEEDS.c.revision).where(FEEDS.c.org_id == self.org_id).scalar_subquery(),
                    select(func.min(CH.c.revision))
                    .where(CH.c.org_id == self.org_id)
                    .scalar_subquery(),
                )
            )
        ).one()
        current = int(row[0] or 0)  # an org without a feed row has revision 0
        return RetainedHistory(current, current + 1 if row[1] is None else int(row[1]))

    async def start_after(self, after_revision: int) -> int:
        """The revision a watch starts after: ``-1`` is now; one older than the retained history
        is ``RevisionExpired``; one the org has not reached yet is INVALID_ARGUMENT."""
        history = await self.history()
        if after_revision == -1:
            return history.current
        if after_revision > history.current:
            raise InvalidArgument.one(
                "after_revision",
                f"must not be ahead of the org's current revision ({history.current})",
            )
        if after_revision < history.oldest - 1:
            raise RevisionExpired(after_revision, history.oldest)
        return after_revision

    async def read(
        self, after: int, flt: ChangeFilter, *, max_rows: int, max_bytes: int
    ) -> ChangeBatch:
        """The changes after ``after``: at most ``max_rows`` examined, and matched records of at
        most ``max_bytes`` in all (at least one change, however large). Keyset on the primary
        key, so a read costs the same however long the backlog is.

        A gap right after ``after`` means pruning overtook the reader: ``RevisionExpired``.
        """
        rows = (
            await self.db.execute(
                _read_statement(flt),
                {
                    "org_id": self.org_id,
                    "after": after,
                    "max_rows": max_rows,
                    "max_bytes": max_bytes,
                },
            )
        ).all()
        if rows and rows[0].revision != after + 1:
            history = await self.history()
            if after < history.oldest - 1:
                raise RevisionExpired(after, history.oldest)
        changes = [
            StoredChange(
                revision=int(r.revision),
                session_id=r.session_id,
                kind=r.kind,
                committed=r.committed,
                matched=bool(r.matched),
                record=None if r.record is None else bytes(r.record),
                tags=tuple(r.tags or ()),
                device_ids=tuple(r.device_ids or ()),
            )
            for r in rows
        ]
        more = len(rows) == max_rows or (bool(rows) and int(rows[-1].running) >= max_bytes)
        return ChangeBatch(changes, more)


@functools.lru_cache(maxsize=256)
def _read_statement(flt: ChangeFilter) -> Select[Any]:
    """The statement ``ChangeRepository.read`` runs for ``flt`` (``org_id``, ``after``,
    ``max_rows`` and ``max_bytes`` bound at execution). Built once per filter: the shared
    readers of ``services.change_feed`` run it several times a second per org, and building it
    cost more of the server than running it."""
    matched = flt.condition()
    record_bytes = func.coalesce(case((matched, func.octet_length(CH.c.wire_record))), 0)
    examined = (
        select(
            CH.c.revision,
            CH.c.session_id,
            CH.c.kind,
            CH.c.committed,
            CH.c.tags,
            CH.c.device_ids,
            matched.label("matched"),
            case((matched, CH.c.wire_record)).label("record"),
            record_bytes.label("size"),
            # Bytes up to and including this row; a window over the keyset scan, streamed.
            func.sum(record_bytes).over(order_by=CH.c.revision).label("running"),
        )
        .where(CH.c.org_id == bindparam("org_id"), CH.c.revision > bindparam("after"))
        .order_by(CH.c.revision)
        .limit(bindparam("max_rows", type_=Integer))
        .subquery()
    )
    return (
        select(examined)
        .where(examined.c.running - examined.c.size < bindparam("max_bytes", type_=BigInteger))
        .order_by(examined.c.revision)
    )


# --- Retention -----------------------------------------------------------------------------------


async def prune_changes(
    database: Database, retention: dt.timedelta, *, batch_size: int = 5_000
) -> int:
    """Deletes the changes older than ``retention`` (by the database's clock), in batches of
    short transactions, and returns how many were deleted.

    Per org, it deletes every revision up to the newest one committed before the cutoff, so what
    remains is always a suffix of the org's revisions and its oldest revision tells a watcher
    exactly what is available (``committed`` is the writing transaction's start, which is not
    quite in revision order).
    """

    async def horizons(db: AsyncSession) -> Sequence[Any]:
        cutoff = func.now() - bindparam("retention", retention, type_=Interval)
        return (
            await db.execute(
                select(CH.c.org_id, func.max(CH.c.revision))
                .where(CH.c.committed < cutoff)
                .group_by(CH.c.org_id)
                .order_by(CH.c.org_id)
            )
        ).all()

    deleted = 0
    for org_id, upto in await database.run(horizons):
        while True:
            count = await database.run(
                functools.partial(_delete_oldest, org_id=org_id, upto=upto, limit=batch_size)
            )
            deleted += count
            if count < batch_size:
                break
    return deleted


async def _delete_oldest(db: AsyncSession, *, org_id: str, upto: int, limit: int) -> int:
    """Deletes the org's oldest changes up to revision ``upto``, at most ``limit`` of them."""
    doomed = (
        select(CH.c.revision)
        .where(CH.c.org_id == org_id, CH.c.revision <= upto)
        .order_by(CH.c.revision)
        .limit(limit)
    )
    result = await db.execute(delete(CH).where(CH.c.org_id == org_id, CH.c.revision.in_(doomed)))
    return int(result.rowcount)  # type: ignore[attr-defined]


# --- Waking watchers -----------------------------------------------------------------------------


class Waiter(Protocol):
    """What the notifier wakes: anything with ``set()`` (an ``asyncio.Event`` is one)."""

    def set(self) -> None: ...


W = TypeVar("W", bound=Waiter)


class ChangeNotifier:
    """One ``LISTEN`` connection per process that wakes the watchers of an org.

    Started lazily by the first watcher. Each org's shared reader (``services.change_feed``)
    registers itself (nothing is buffered here); a notification ``<org_id>:<revision>`` wakes
    that org's reader, which then reads the table. After every (re)connection, and every
    ``safety_seconds`` while connected, every reader is woken, so a notification missed while
    the connection was down (or lost any other way) delays a change but never loses it.

    While the database is down it tries to connect again every ``max_backoff_s`` at most
    (0.1 s, then 0.2 s, then every 0.25 s: four attempts a second), so that live delivery
    resumes well within a second of the database answering again, without spinning.
    """

    def __init__(
        self,
        conninfo: str,
        *,
        safety_seconds: float = 30.0,
        connect_timeout_s: int = 3,
        max_backoff_s: float = 0.25,
        query_slots: int = 4,
    ) -> None:
        self._conninfo = conninfo
        self._safety_seconds = safety_seconds
        self._connect_timeout_s = connect_timeout_s
        self._max_backoff_s = max_backoff_s
        self._waiters: dict[str, set[Waiter]] = {}
        self._count = 0
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._has_listened = False
        self._failing = False
        # Set while LISTEN is active, on the backend ``backend_pid`` (tests look at both).
        self.connected = asyncio.Event()
        self.backend_pid: int | None = None
        # Bounds how many watchers read the feed at once, so that a burst of wake-ups cannot
        # take every pooled connection from the other calls.
        self.query_slots = asyncio.Semaphore(query_slots)

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def listener_count(self) -> int:
        """How many watchers are registered."""
        return self._count

    @contextlib.contextmanager
    def subscribe(self, org_id: str, waiter: W) -> Iterator[W]:
        """Registers ``waiter`` (an ``asyncio.Event``, or the org's shared reader) for
        ``org_id`` for the duration of the block; its ``set()`` is called whenever the org may
        have new changes (and when the notifier closes)."""
        event = waiter
        self._waiters.setdefault(org_id, set()).add(event)
        self._count += 1
        self._idle.clear()
        try:
            self._ensure_started()
            yield event
        finally:
            waiters = self._waiters.get(org_id)
            if waiters is not None:
                waiters.discard(event)
                if not waiters:
                    del self._waiters[org_id]
            self._count -= 1
            if self._count == 0:
                self._idle.set()

    async def wait_idle(self) -> None:
        """Returns once no watcher is registered."""
        await self._idle.wait()

    async def close(self) -> None:
        """Stops listening and wakes every watcher, which then ends its stream."""
        self._closed = True
        self._wake_all()
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.connected.clear()

    def _ensure_started(self) -> None:
        if self._closed or (self._task is not None and not self._task.done()):
            return
        self._task = asyncio.get_running_loop().create_task(
            self._listen_forever(), name="flightlog-change-notifier"
        )

    def _wake(self, payload: str) -> None:
        org_id, _, _ = payload.rpartition(":")
        for event in self._waiters.get(org_id, ()):
            event.set()

    def _wake_all(self) -> None:
        for waiters in self._waiters.values():
            for event in waiters:
                event.set()

    async def _listen_forever(self) -> None:
        backoff = 0.1
        while True:
            try:
                await self._listen()
            except (psycopg.Error, OSError) as e:
                if not self._failing:  # logged once per outage, not at every attempt
                    log.warning("change notifier: no database connection (%s); retrying", e)
                self._failing = True
            except Exception:  # the notifier must outlive anything; logged with its traceback
                log.exception("change notifier failed unexpectedly; restarting it")
            if self.connected.is_set():
                backoff = 0.1  # it was listening: reconnect quickly
            self.connected.clear()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._max_backoff_s)

    async def _listen(self) -> None:
        async with await psycopg.AsyncConnection.connect(
            self._conninfo,
            autocommit=True,
            connect_timeout=self._connect_timeout_s,
            application_name="flightlog-notifier",
            # Detect a peer that vanished without closing the connection.
            keepalives=1,
            keepalives_idle=30,
            keepalives_interval=10,
            keepalives_count=3,
        ) as conn:
            conn.add_notify_handler(lambda notification: self._wake(notification.payload))
            await conn.execute(f"LISTEN {CHANGES_CHANNEL}")
            if self._has_listened:
                log.info("change notifier: listening again")
            self._failing = False
            self._has_listened = True
            self.backend_pid = conn.info.backend_pid
            self.connected.set()
            # Whatever committed while nobody listened is found by the watchers' next read.
            self._wake_all()
            loop = asyncio.get_running_loop()
            while True:
                # Notifications are read by a callback of the loop whenever the socket is
                # readable, not by ``conn.notifies()``: that waits once per notification, each
                # wait registering the socket, a timer and a future anew (70 us a write, for
                # one wake-up; a write is one notification).
                broken: asyncio.Future[None] = loop.create_future()
                socket = conn.pgconn.socket
                loop.add_reader(socket, _read_notifications, conn.pgconn, broken)
                try:
                    await asyncio.wait([broken], timeout=self._safety_seconds)
                finally:
                    loop.remove_reader(socket)
                if broken.done():
                    broken.result()  # the connection failed: raised, and listened again
                await conn.execute("SELECT 1")  # a dead connection fails here, not silently
                self._wake_all()


def _read_notifications(pgconn: Any, broken: asyncio.Future[None]) -> None:
    """Reads what the socket holds and hands each notification to the connection's handlers;
    a failure (the server went away) ends the wait in ``ChangeNotifier._listen``."""
    try:
        pgconn.consume_input()
        while (notification := pgconn.notifies()) is not None:
            pgconn.notify_handler(notification)
    except psycopg.Error as error:
        if not broken.done():
            broken.set_exception(error)


_notifiers: weakref.WeakKeyDictionary[Database, ChangeNotifier] = weakref.WeakKeyDictionary()


def change_notifier(database: Database) -> ChangeNotifier:
    """The process's notifier for ``database`` (one per Database, created on first use)."""
    notifier = _notifiers.get(database)
    if notifier is None:
        settings = database.settings
        notifier = ChangeNotifier(
            libpq_conninfo(settings.url),
            connect_timeout_s=settings.connect_timeout_s,
            query_slots=max(1, settings.pool_size // 2),
        )
        _notifiers[database] = notifier
    return notifier


async def close_change_notifier(database: Database) -> None:
    """Closes the notifier of ``database``, if one was made."""
    notifier = _notifiers.get(database)
    if notifier is not None:
        await notifier.close()
