"""What the WatchSessions tests share: a watcher read into a queue, the seam hook, the writes
each change comes from, and SQL helpers (the fixtures are in ``tests/rpc/conftest.py``)."""

from __future__ import annotations

import asyncio
import datetime as dt
import queue
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import struct_pb2
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.services import change_feed as watch
from flightlog_server.storage.changes import ChangeBatch, prune_changes
from tests.support import Identity, RpcFailure, ServerThread, Stubs, failure, sql

WAIT_S = 30.0  # the most any single step may take before the test fails (not a sleep)

CREATED = pb.SESSION_CHANGE_KIND_CREATED
UPDATED = pb.SESSION_CHANGE_KIND_UPDATED
DELETED = pb.SESSION_CHANGE_KIND_DELETED
FILES_CHANGED = pb.SESSION_CHANGE_KIND_FILES_CHANGED
DEVICES_CHANGED = pb.SESSION_CHANGE_KIND_DEVICES_CHANGED


@dataclass
class Org:
    """A brand-new org and stubs acting in it."""

    identity: Identity
    stubs: Stubs

    @property
    def org_id(self) -> str:
        return self.identity.org_id


class Watcher:
    """A WatchSessions call read by a background thread into a queue."""

    def __init__(self, stubs: Stubs, **request: Any) -> None:
        self.call: Any = stubs.sessions.WatchSessions(
            pb.WatchSessionsRequest(**request), timeout=120
        )
        self.items: queue.Queue[pb.WatchSessionsResponse | grpc.RpcError | None] = queue.Queue()
        self.revision = request.get("after_revision", 0)
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for response in self.call:
                self.items.put(response)
            self.items.put(None)
        except grpc.RpcError as error:
            self.items.put(error)

    def next(self) -> pb.WatchSessionsResponse:
        item = self.items.get(timeout=WAIT_S)
        if item is None:
            raise AssertionError("the watch ended")
        if isinstance(item, grpc.RpcError):
            raise item
        assert item.revision >= self.revision, "a response went back in revisions"
        self.revision = item.revision
        return item

    def until(self, revision: int) -> list[pb.SessionChange]:
        """The changes received until a response reaches ``revision``."""
        changes: list[pb.SessionChange] = []
        while self.revision < revision:
            changes.extend(self.next().changes)
        return changes

    def failure(self) -> RpcFailure:
        """How the watch failed (skipping the responses before the failure)."""
        while True:
            item = self.items.get(timeout=WAIT_S)
            if isinstance(item, grpc.RpcError):
                return failure(item)
            if item is None:
                raise AssertionError("the watch ended without an error")

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(WAIT_S)


@dataclass(frozen=True)
class FeedRead:
    """What one read of the feed found. ``shared`` is True for the org reader's reads
    (unfiltered: ``matched`` counts every change), False for a watcher's own."""

    org_id: str
    after: int
    revision: int
    matched: int
    record_bytes: int
    caught_up: bool
    shared: bool


ReadHook = Callable[[FeedRead], Awaitable[None]]


def observe_reads(monkeypatch: pytest.MonkeyPatch, hook: ReadHook) -> None:
    """Has ``hook`` awaited right after every read of the feed, still inside the read's
    transaction, before anything else happens to the watch: tests commit changes at a chosen
    point of a replay this way. (A wrapper of ``ChangeFeed.read`` for the test's duration; the
    server has no hook of its own.)"""
    original = watch.ChangeFeed.read

    async def read(
        self: watch.ChangeFeed,
        db: AsyncSession,
        *,
        org_id: str,
        after: int,
        flt: watch.ChangeFilter | None,
    ) -> tuple[ChangeBatch, tuple[str, ...]]:
        batch, ready = await original(self, db, org_id=org_id, after=after, flt=flt)
        await hook(
            FeedRead(
                org_id=org_id,
                after=after,
                revision=batch.last_revision(after),
                matched=sum(1 for c in batch.changes if c.matched),
                record_bytes=sum(len(c.record or b"") for c in batch.changes),
                caught_up=not batch.more,
                shared=flt is None,
            )
        )
        return batch, ready

    monkeypatch.setattr(watch.ChangeFeed, "read", read)


@dataclass
class Hold:
    """A read hook (``observe_reads``) that holds the org's watch loop at the first read
    ``when`` accepts, until the test calls ``release()``; it records every read of the org."""

    org_id: str
    when: Callable[[FeedRead], bool]
    reached: threading.Event = field(default_factory=threading.Event)
    released: threading.Event = field(default_factory=threading.Event)
    reads: list[FeedRead] = field(default_factory=list)
    held: bool = False

    async def __call__(self, read: FeedRead) -> None:
        if read.org_id != self.org_id:
            return
        self.reads.append(read)
        if not self.held and self.when(read):
            self.held = True
            self.reached.set()
            await asyncio.to_thread(self.released.wait, WAIT_S)

    def wait_reached(self) -> None:
        assert self.reached.wait(WAIT_S), "the watch never reached the held read"

    def release(self) -> None:
        self.released.set()


def create(stubs: Stubs, **fields: Any) -> pb.Session:
    return stubs.sessions.CreateSession(pb.CreateSessionRequest(**fields)).session


def rename(stubs: Stubs, session_id: str, name: str, **fields: Any) -> pb.Session:
    request = pb.UpdateSessionRequest(session_id=session_id, **fields)
    request.name.set = name
    return stubs.sessions.UpdateSession(request).session


def put_tags(stubs: Stubs, session_id: str, *tags: str, remove: tuple[str, ...] = ()) -> pb.Session:
    changes = pb.MetadataChangeset(put_tags=tags, remove_tags=remove)
    request = pb.UpdateSessionRequest(session_id=session_id, metadata_changeset=changes)
    return stubs.sessions.UpdateSession(request).session


def put_fields(stubs: Stubs, session_id: str, **values: Any) -> pb.Session:
    fields = struct_pb2.Struct()
    fields.update(values)
    changes = pb.MetadataChangeset(put_fields=fields)
    request = pb.UpdateSessionRequest(session_id=session_id, metadata_changeset=changes)
    return stubs.sessions.UpdateSession(request).session


def attach(stubs: Stubs, session_id: str, device_id: str, **fields: Any) -> pb.Session:
    request = pb.AttachSessionDeviceRequest(session_id=session_id, device_id=device_id, **fields)
    return stubs.sessions.AttachSessionDevice(request).session


def detach(stubs: Stubs, session_id: str, device_id: str, **fields: Any) -> pb.Session:
    request = pb.DetachSessionDeviceRequest(session_id=session_id, device_id=device_id, **fields)
    return stubs.sessions.DetachSessionDevice(request).session


def delete(stubs: Stubs, session_id: str, **fields: Any) -> None:
    stubs.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session_id, **fields))


def get(stubs: Stubs, session_id: str) -> pb.Session:
    return stubs.sessions.GetSession(pb.GetSessionRequest(session_id=session_id)).session


def summary(changes: list[pb.SessionChange]) -> list[tuple[int, str, int]]:
    return [(c.revision, c.session_id, c.kind) for c in changes]


def age_changes(database_url: str, org_id: str, revisions: list[int], days: float = 8) -> None:
    """Makes changes look ``days`` old, as if they had been committed back then."""
    sql(
        database_url,
        "UPDATE session_changes SET committed = committed - make_interval(days => %s)"
        " WHERE org_id = %s AND revision = ANY(%s)",
        (days, org_id, revisions),
    )


def retained(database_url: str, org_id: str) -> list[int]:
    rows = sql(
        database_url,
        "SELECT revision FROM session_changes WHERE org_id = %s ORDER BY revision",
        (org_id,),
    )
    return [revision for (revision,) in rows]


def notifier_backends(database_url: str) -> list[int]:
    rows = sql(
        database_url,
        "SELECT pid FROM pg_stat_activity"
        " WHERE datname = current_database() AND application_name = 'flightlog-notifier'",
    )
    return [pid for (pid,) in rows]


def prune(server: ServerThread, days: float = 7) -> int:
    """Runs the server's retention pass now (the server runs it hourly)."""
    deleted: int = server.call(prune_changes(server.server.database, dt.timedelta(days=days)))
    return deleted


def write_updates(stubs: Stubs, session_id: str, count: int) -> int:
    """``count`` updates of one session; returns the last revision."""
    revision = 0
    for i in range(count):
        revision = rename(stubs, session_id, f"n{i}").revision
    return revision
