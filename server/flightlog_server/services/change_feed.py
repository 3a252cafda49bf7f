"""The change feed's use case: following one org's session changes, shared by all its watchers.

One reader per org per process
------------------------------
Every watcher of an org shares one :class:`OrgReader`. When the notifier says the org has new
changes, the reader runs ONE query for the rows after its position (unfiltered) and fans them out,
in memory, to every watcher *attached* to it: each distinct filter is applied once per read
(``ChangeFilter.matches``, the same test as the SQL one), the watchers that share it share the
resulting update, and each keeps its own position. So a change costs one feed query per process
however many watchers follow the org (``OrgReader.shared_reads`` counts them), and one response
per watcher. Under a stream of changes the reader gathers them: it reads at most every
``watchers / RESPONSES_PER_SECOND`` seconds (``MAX_GATHER_SECONDS`` at most), because each read
sends one response to each watcher, and those responses, not the query, are what a change costs
the server (see the README's "Performance").

A watcher is attached or detached:

* It starts detached: it registers with the reader *before* reading anything (so a notification
  from then on wakes it), resolves where it starts, and replays the stored feed after its own
  position, in keyset batches, with its filter in SQL (``ChangeRepository.read``), exactly as a
  watcher that shared nothing would.
* When one of its reads comes back short (caught up at revision ``w``), it attaches if the
  reader has not read past ``w`` (reader position ``p <= w``, or no reader position yet: it is
  set to ``w``). From then on the reader delivers every change after ``w``: deliveries of a read
  ``(p, b]`` skip the revisions up to the watcher's own position, so nothing is sent twice. If the
  reader is already past ``w``, the watcher simply reads again by itself.
* The reader never waits for a watcher. Each attached watcher has a bounded queue (bytes and
  deliveries); a delivery that would overflow it detaches the watcher instead, which then sends
  what it queued and goes on reading the database after its own position, as during a replay, and
  attaches again once caught up. A slow client therefore holds at most its queue's bound here (and
  gRPC flow control holds the generator at ``yield``), and never slows the others.

Revisions are dense and become visible in order (see ``storage.changes``), so "after my position"
is all any reader needs: there is no skip at the replay/live seam, and no duplicate.

If the shared read fails because the database cannot be reached, the watchers stay attached and
the reader reads again shortly (and on the notifier's wake-up after it reconnects): the watch
stream survives a database restart. Any other failure (the history was pruned past the reader,
say) detaches every watcher, whose own reads then report it as before. A reader goes away with its
last watcher.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import logging
import math
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field

from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.errors import DatabaseUnavailable, RevisionExpired, ShuttingDown
from flightlog_server.storage.changes import (
    ChangeBatch,
    ChangeFilter,
    ChangeNotifier,
    ChangeRepository,
    StoredChange,
    Waiter,
    change_notifier,
)
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database, classify

__all__ = [
    "ChangeFeed",
    "ChangeFilter",
    "Database",
    "FeedUpdate",
    "OrgReader",
    "StoredChange",
    "change_feed",
]

log = logging.getLogger(__name__)

# Changes examined per read, and the most session-record bytes one read (and so one response)
# carries; a single larger record still goes alone. 1 MiB stays well under the 4 MiB a default
# gRPC client accepts.
BATCH_ROWS = 500
BATCH_BYTES = 1024 * 1024
# While only filtered-out changes happen, a response without changes carries the new revision
# at most this often, so that a selective watcher's resume point does not fall out of retention.
PROGRESS_SECONDS = 30.0
# An attached watcher's queue: at most this many encoded bytes, and this many deliveries. One
# more detaches it (it then reads the database by its own position: nothing is lost).
QUEUE_BYTES = 256 * 1024
QUEUE_DELIVERIES = 256
# A reader spaces its reads so that it sends at most about this many responses a second in all,
# waiting at most ``MAX_GATHER_SECONDS`` to gather changes into one read: with 200 watchers, a
# read every 80 ms. One response costs a bare grpc.aio server 35-60 us of CPU, most of it on
# the event loop the writes share (``make bench`` measures it beside ours), so the feed takes an
# eighth of a core at most, whatever the write rate; the gathering adds at most 80 ms of lag,
# inside the 100 ms the feed promises at p99. (At 50 ms, 4,000 responses a second made writes
# 1.4x slower with 200 watchers on a 2-core machine.)
RESPONSES_PER_SECOND = 2_500
MAX_GATHER_SECONDS = 0.08
# How soon a shared read that met an unreachable database is tried again (besides the wake-up
# that follows the notifier's reconnection): a few attempts per second at most.
RETRY_SECONDS = 0.25

# Encodes one change for the wire, given the org's Ready custom fields; the RPC layer provides it,
# and the reader calls it once per change, whatever the number of watchers.
Encoder = Callable[[StoredChange, tuple[str, ...]], bytes]


@dataclass(frozen=True)
class FeedUpdate:
    """One response's worth for a watcher: the encoded changes it matched (possibly none), and
    the revision it has examined up to. Watchers with the same filter share one."""

    revision: int
    changes: tuple[bytes, ...]

    @functools.cached_property
    def size(self) -> int:
        """The encoded changes' bytes."""
        return sum(len(change) for change in self.changes)


@dataclass(eq=False)
class _Watcher:
    flt: ChangeFilter
    event: asyncio.Event = field(default_factory=asyncio.Event)
    # Everything up to ``position`` has been queued or sent (or was filtered out).
    position: int = -1
    attached: bool = False
    queue: deque[FeedUpdate] = field(default_factory=deque)
    queued_bytes: int = 0
    reported: int | None = None
    reported_at: float = field(default_factory=time.monotonic)


class OrgReader:
    """The shared reader of one org's feed in this process (see the module doc)."""

    def __init__(self, feed: ChangeFeed, org_id: str) -> None:
        self._feed = feed
        self.org_id = org_id
        self._watchers: set[_Watcher] = set()
        self._attached: set[_Watcher] = set()
        self._wake = asyncio.Event()
        self._position: int | None = None
        self._reading = False
        self._failing = False
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        # Reads of the feed for this org: the reader's own (one per change at most, whatever the
        # number of watchers) and the watchers' own (replays, and catching up after a detach).
        # Tests and the bench compare them with the changes delivered.
        self.shared_reads = 0
        self.shared_rows = 0
        self.watcher_reads = 0
        self._attach_changed = asyncio.Event()

    @property
    def watcher_count(self) -> int:
        return len(self._watchers)

    @property
    def attached_count(self) -> int:
        return len(self._attached)

    async def wait_attached(self, count: int) -> None:
        """Returns once at least ``count`` watchers are attached (tests and the bench)."""
        while len(self._attached) < count:
            await self._attach_changed.wait()

    def start(self) -> asyncio.Task[None]:
        # In a context of its own: not the first watcher's (its deadline, its request id).
        self._task = asyncio.get_running_loop().create_task(
            self._run(),
            name=f"flightlog-change-reader-{self.org_id}",
            context=contextvars.Context(),
        )
        return self._task

    def stop(self) -> None:
        """Ends the reader. A read in flight finishes first (cancelling it would leave its
        pooled connection to the garbage collector); a wait is simply cancelled."""
        self._stopping = True
        if self._task is not None and not self._reading:
            self._task.cancel()
        self._wake.set()

    def add(self, watcher: _Watcher) -> None:
        self._watchers.add(watcher)

    def remove(self, watcher: _Watcher) -> None:
        self._watchers.discard(watcher)
        self._attached.discard(watcher)

    def set(self) -> None:
        """Called by the notifier: the org may have new changes (or the notifier closed).
        Detached watchers read by themselves, attached ones through the next shared read."""
        closing = self._feed.notifier.closed
        if closing or len(self._attached) < len(self._watchers):  # not one per watcher per change
            for watcher in self._watchers:
                if closing or not watcher.attached:
                    watcher.event.set()
        if self._attached or closing:
            self._wake.set()

    def try_attach(self, watcher: _Watcher) -> bool:
        """Attaches a watcher caught up at ``watcher.position``, unless the reader has already
        read past it (the watcher then reads again by itself)."""
        if self._position is None or (not self._attached and not self._reading):
            self._position = watcher.position
        elif watcher.position < self._position:
            return False
        watcher.attached = True
        self._attached.add(watcher)
        self._attach_changed.set()
        self._attach_changed = asyncio.Event()
        if watcher.event.is_set():
            # A notification came since the watcher's last read began: the change it announced
            # may be after that read's snapshot, so the reader must look.
            self._wake.set()
        return True

    def _detach(self, watcher: _Watcher) -> None:
        watcher.attached = False
        self._attached.discard(watcher)
        watcher.event.set()

    async def _run(self) -> None:
        last_read = -math.inf
        while not self._stopping:
            await self._wake.wait()
            # Under a stream of changes, gather them: a read starts at most every
            # ``_read_interval()`` after the previous one (a change after a quiet spell is read
            # at once). Notifications meanwhile only set the event again.
            pause = last_read + self._read_interval() - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            self._wake.clear()
            if self._feed.notifier.closed:
                return
            if self._attached and self._position is not None:
                last_read = time.monotonic()
                try:
                    await self._read_once(self._position)
                except Exception:  # a bug here must not leave the watchers waiting forever
                    log.exception("change feed of %s: the shared reader failed", self.org_id)
                    self._detach_all()

    def _detach_all(self) -> None:
        for watcher in list(self._attached):
            self._detach(watcher)
        self._position = None

    def _read_interval(self) -> float:
        """Each read sends one response to every attached watcher it has changes for: spacing
        reads by the number of watchers keeps the responses under ``RESPONSES_PER_SECOND``
        (their cost dominates the server's), within ``MAX_GATHER_SECONDS`` of added lag."""
        return min(MAX_GATHER_SECONDS, len(self._attached) / RESPONSES_PER_SECOND)

    async def _read_once(self, after: int) -> None:
        self._reading = True
        try:
            async with self._feed.notifier.query_slots:
                batch, ready = await self._feed.database.run(
                    functools.partial(self._feed.read, org_id=self.org_id, after=after, flt=None)
                )
        except Exception as error:  # noqa: BLE001 - each failure leaves the watchers safe (module doc)
            if isinstance(error, DatabaseUnavailable) or isinstance(
                classify(error), DatabaseUnavailable
            ):
                if not self._failing:  # once per outage, not at every attempt
                    log.info(
                        "change feed of %s: database unavailable (%s); retrying",
                        self.org_id,
                        error,
                    )
                self._failing = True
                self._retry_soon()
            else:
                if not isinstance(error, RevisionExpired):
                    log.warning("change feed of %s: shared read failed: %r", self.org_id, error)
                self._detach_all()  # their own reads report it (RevisionExpired: OUT_OF_RANGE)
            return
        finally:
            self._reading = False
        self._failing = False
        self.shared_reads += 1
        self.shared_rows += len(batch.changes)
        self._fan_out(after, batch, ready)
        if batch.more:
            self._wake.set()

    def _retry_soon(self) -> None:
        loop = asyncio.get_running_loop()
        loop.call_later(RETRY_SECONDS, self._wake.set)

    def _fan_out(self, after: int, batch: ChangeBatch, ready: tuple[str, ...]) -> None:
        revision = batch.last_revision(after)
        encoded: list[bytes | None] = [None] * len(batch.changes)

        def frames(flt: ChangeFilter, position: int) -> tuple[bytes, ...]:
            """The encoded changes after ``position`` that ``flt`` matches (each change
            encoded once per read, whatever the number of watchers it goes to)."""
            out: list[bytes] = []
            for i, change in enumerate(batch.changes):
                if change.revision <= position or not flt.matches(change):
                    continue
                frame = encoded[i]
                if frame is None:
                    frame = encoded[i] = self._feed.encode(change, ready)
                out.append(frame)
            return tuple(out)

        # Watchers that were caught up where this read started share one update per distinct
        # filter: the filter is applied once per read, not once per watcher (many watchers of
        # an org usually ask for the same thing, often everything).
        shared: dict[ChangeFilter, FeedUpdate] = {}
        now = time.monotonic()
        for watcher in list(self._attached):
            if watcher.position < after:
                # It attached behind where this read started (the reader had no watcher left
                # and was reset meanwhile): it reads the gap by itself.
                self._detach(watcher)
                continue
            if revision <= watcher.position:
                continue
            if watcher.position == after:
                update = shared.get(watcher.flt)
                if update is None:
                    update = shared[watcher.flt] = FeedUpdate(revision, frames(watcher.flt, after))
            else:  # it attached during this read, past where it started
                update = FeedUpdate(revision, frames(watcher.flt, watcher.position))
            self._deliver(watcher, update, now)
        self._position = revision

    def _deliver(self, watcher: _Watcher, update: FeedUpdate, now: float) -> None:
        """Queues ``update`` for an attached watcher, or detaches it if its queue is full."""
        if update.changes or (
            update.revision != watcher.reported and now - watcher.reported_at >= PROGRESS_SECONDS
        ):
            if (watcher.queued_bytes + update.size > QUEUE_BYTES and watcher.queue) or len(
                watcher.queue
            ) >= QUEUE_DELIVERIES:
                self._detach(watcher)  # it reads the rest from the database itself
                return
            watcher.queue.append(update)
            watcher.queued_bytes += update.size
            watcher.event.set()
        elif watcher.queue:
            # Nothing for it: the last queued response carries the newer revision instead.
            last = watcher.queue.pop()
            watcher.queue.append(FeedUpdate(update.revision, last.changes))
        watcher.position = update.revision


class ChangeFeed:
    """The process's change feed for one database: its org readers and their watchers."""

    def __init__(self, database: Database, encode: Encoder) -> None:
        self.database = database
        self.encode = encode
        self.notifier: ChangeNotifier = change_notifier(database)
        self._readers: dict[str, OrgReader] = {}
        self._idle = asyncio.Event()
        self._idle.set()
        self._subscriptions: dict[str, contextlib.AbstractContextManager[Waiter]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def reader(self, org_id: str) -> OrgReader | None:
        """The org's reader, while it has watchers."""
        return self._readers.get(org_id)

    @property
    def watcher_count(self) -> int:
        return sum(r.watcher_count for r in self._readers.values())

    async def wait_idle(self) -> None:
        """Returns once no watcher is registered (and so no reader is left)."""
        await self._idle.wait()

    @contextlib.contextmanager
    def _watching(self, org_id: str, flt: ChangeFilter) -> Iterator[tuple[OrgReader, _Watcher]]:
        reader = self._readers.get(org_id)
        if reader is None:
            reader = self._readers[org_id] = OrgReader(self, org_id)
            # Registered with the notifier before anything is read.
            self._subscriptions[org_id] = self.notifier.subscribe(org_id, reader)
            self._subscriptions[org_id].__enter__()
            task = reader.start()
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        watcher = _Watcher(flt)
        reader.add(watcher)
        self._idle.clear()
        try:
            yield reader, watcher
        finally:
            reader.remove(watcher)
            if reader.watcher_count == 0 and self._readers.get(org_id) is reader:
                del self._readers[org_id]
                reader.stop()
                self._subscriptions.pop(org_id).__exit__(None, None, None)
            if not self._readers:
                self._idle.set()

    async def close(self) -> None:
        """Waits for the readers that are still finishing a read (the server calls it once its
        watch streams have ended, before it closes the database)."""
        for reader in list(self._readers.values()):
            reader.stop()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)

    async def read(
        self, db: AsyncSession, *, org_id: str, after: int, flt: ChangeFilter | None
    ) -> tuple[ChangeBatch, tuple[str, ...]]:
        """One read of the feed: a watcher's own (with its filter) or the shared one (``None``:
        every change); with the org's Ready custom fields when a record is in it."""
        repository = ChangeRepository(db, org_id)
        batch = await repository.read(
            after, flt or ChangeFilter(), max_rows=BATCH_ROWS, max_bytes=BATCH_BYTES
        )
        ready: tuple[str, ...] = ()
        if any(change.record is not None for change in batch.changes):
            ready = tuple(await CustomFieldRepository(db, org_id).ready_names())
        return batch, ready

    async def watch(
        self, org_id: str, flt: ChangeFilter, after_revision: int
    ) -> AsyncIterator[FeedUpdate]:
        """The org's changes matching ``flt`` after ``after_revision`` (``-1``: now), replayed
        then live, as updates: one per read that matched something, one when the replay has
        caught up (even empty), and one at most every ``PROGRESS_SECONDS`` while only
        filtered-out changes happen. Never ends by itself; ends with ``ShuttingDown`` when the
        server shuts down."""
        notifier = self.notifier
        with self._watching(org_id, flt) as (reader, watcher):

            async def start(db: AsyncSession) -> int:
                return await ChangeRepository(db, org_id).start_after(after_revision)

            last = watcher.position = await self.database.run(start)
            caught_up = False
            while not notifier.closed:
                watcher.event.clear()
                if watcher.queue:
                    update = self._take(watcher)
                    last = update.revision
                    progress_due = self._progress_due(watcher, last)
                    if update.changes or progress_due:
                        yield update
                        watcher.reported, watcher.reported_at = last, time.monotonic()
                    continue
                if watcher.attached:
                    await watcher.event.wait()
                    continue
                after = watcher.position
                reader.watcher_reads += 1
                async with notifier.query_slots:
                    batch, ready = await self.database.run(
                        functools.partial(self.read, org_id=org_id, after=after, flt=flt)
                    )
                last = watcher.position = batch.last_revision(after)
                more = batch.more
                frames = tuple(self.encode(c, ready) for c in batch.changes if c.matched)
                del batch  # only the encoded changes are kept while they wait for the client
                ends_replay = not caught_up and not more
                if frames or ends_replay or self._progress_due(watcher, last):
                    yield FeedUpdate(last, frames)
                    watcher.reported, watcher.reported_at = last, time.monotonic()
                if more:
                    continue
                caught_up = True
                # Attached, it waits for the reader's deliveries; if the reader is already past
                # it, what lies between is committed: it reads again.
                reader.try_attach(watcher)
            # The notifier closes when the server shuts down: a retryable error, so that clients
            # resume (with another server) as after any disconnect.
            raise ShuttingDown(
                f"the server is shutting down; resume the watch after revision {last}"
            )

    @staticmethod
    def _take(watcher: _Watcher) -> FeedUpdate:
        """The watcher's queued updates as one response (up to ``BATCH_BYTES``): a watcher
        whose previous response is still being sent sends what gathered meanwhile at once, so
        that a busy server sends fewer, larger responses."""
        first = watcher.queue.popleft()
        if not watcher.queue or first.size + watcher.queue[0].size > BATCH_BYTES:
            watcher.queued_bytes -= first.size
            return first  # the usual case: the update as the reader made it, shared
        changes = list(first.changes)
        size = first.size
        revision = first.revision
        while watcher.queue and size + watcher.queue[0].size <= BATCH_BYTES:
            following = watcher.queue.popleft()
            changes += following.changes
            size += following.size
            revision = following.revision
        watcher.queued_bytes -= size
        return FeedUpdate(revision, tuple(changes))

    @staticmethod
    def _progress_due(watcher: _Watcher, last: int) -> bool:
        return (
            last != watcher.reported and time.monotonic() - watcher.reported_at >= PROGRESS_SECONDS
        )


_feeds: weakref.WeakKeyDictionary[Database, ChangeFeed] = weakref.WeakKeyDictionary()


def change_feed(database: Database, encode: Encoder) -> ChangeFeed:
    """The process's change feed for ``database`` (one per Database, created on first use)."""
    feed = _feeds.get(database)
    if feed is None:
        feed = _feeds[database] = ChangeFeed(database, encode)
    return feed


async def close_change_feed(database: Database) -> None:
    """Closes the change feed of ``database``, if one was made."""
    feed = _feeds.get(database)
    if feed is not None:
        await feed.close()


def existing_change_feed(database: Database) -> ChangeFeed | None:
    """The change feed of ``database``, if a watcher ever made one (tests and the bench)."""
    return _feeds.get(database)
