"""WatchSessions: the resumable change feed (issue 8).

A watch runs in three steps (the reasoning behind them is in ``storage/changes.py``):

1. It registers with the process's ``ChangeNotifier`` *before* reading anything, so a change that
   commits from then on wakes it, then resolves where it starts (``-1``: now) and checks that
   against the retained history.
2. It reads the stored feed after the last revision it examined, in keyset batches, and sends one
   response per batch that matched something. The generator is held at ``yield`` until gRPC has
   taken the previous response (flow control), so a slow client holds at most one batch here, and
   a long backlog is simply read batch by batch.
3. When a read comes back short, the replay has caught up: a response is sent even without
   changes (the client learns it is live, and at which revision), and the watch waits for the
   notifier. Its event is cleared *before* each read, so a change that commits during a read
   wakes it again: nothing is lost at the seam, and nothing is sent twice because every read
   starts after the last revision examined.

A watch never ends by itself. When the server shuts down, the notifier closes and wakes every
watch, which ends with UNAVAILABLE at once instead of holding the shutdown for its grace period.
"""

from __future__ import annotations

import functools
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain import rules
from flightlog_server.domain.errors import ShuttingDown
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import Caller
from flightlog_server.rpc import convert
from flightlog_server.storage.changes import (
    ChangeBatch,
    ChangeFilter,
    ChangeRepository,
    StoredChange,
    change_notifier,
)
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database

# Changes examined per read, and the most session-record bytes one read (and so one response)
# carries; a single larger record still goes alone. 1 MiB stays well under the 4 MiB a default
# gRPC client accepts.
BATCH_ROWS = 500
BATCH_BYTES = 1024 * 1024
# While only filtered-out changes happen, a response without changes carries the new revision
# at most this often, so that a selective watcher's resume point does not fall out of retention.
PROGRESS_SECONDS = 30.0
MAX_WATCHED_SESSIONS = 1_000

KINDS: dict[int, str] = {
    pb.SESSION_CHANGE_KIND_CREATED: "created",
    pb.SESSION_CHANGE_KIND_UPDATED: "updated",
    pb.SESSION_CHANGE_KIND_DELETED: "deleted",
    pb.SESSION_CHANGE_KIND_FILES_CHANGED: "files_changed",
    pb.SESSION_CHANGE_KIND_BOUNDS_CHANGED: "bounds_changed",
    pb.SESSION_CHANGE_KIND_DEVICES_CHANGED: "devices_changed",
    pb.SESSION_CHANGE_KIND_METRICS_PUBLISHED: "metrics_published",
}
_KIND_OF: dict[str, pb.SessionChangeKind.ValueType] = {
    name: pb.SessionChangeKind.ValueType(number) for number, name in KINDS.items()
}


@dataclass(frozen=True)
class FeedRead:
    """What one read of the feed found, for the test seam below."""

    org_id: str
    after: int
    revision: int
    matched: int
    record_bytes: int
    caught_up: bool


# Test seam: when set, awaited right after every read of the feed (still in its transaction),
# before anything else happens to the watch. Tests use it to commit changes at a chosen point of
# a replay; it is None in production.
after_read: Callable[[FeedRead], Awaitable[None]] | None = None


def change_filter(request: pb.WatchSessionsRequest) -> ChangeFilter:
    """The request's filter, every bad field reported at once (INVALID_ARGUMENT)."""
    v = Violations()
    v.check(
        request.after_revision >= -1,
        "after_revision",
        "must be -1 (from now), 0 (from the org's first change) or a later revision",
    )
    if len(request.session_ids) > MAX_WATCHED_SESSIONS:
        v.add("session_ids", f"must name at most {MAX_WATCHED_SESSIONS} sessions")
    else:
        for i, session_id in enumerate(request.session_ids):
            rules.check_id(v, f"session_ids[{i}]", session_id, "session")
    rules.check_tags(v, "tags_any", request.tags_any)
    if request.device_id:
        rules.check_device_id(v, "device_id", request.device_id)
    kinds: list[str] = []
    for i, kind in enumerate(request.kinds):
        name = KINDS.get(kind)
        if name is None:
            v.add(f"kinds[{i}]", "must be a SessionChangeKind other than UNSPECIFIED")
        else:
            kinds.append(name)
    v.raise_if_any()
    return ChangeFilter(
        session_ids=tuple(rules.dedupe(request.session_ids)),
        tags_any=tuple(rules.dedupe(request.tags_any)),
        device_id=request.device_id or None,
        kinds=tuple(rules.dedupe(kinds)),
    )


async def watch_sessions(
    database: Database,
    caller: Caller,
    request: pb.WatchSessionsRequest,
    context: aio.ServicerContext[Any, Any],
) -> AsyncIterator[pb.WatchSessionsResponse]:
    flt = change_filter(request)
    org_id = caller.org_id
    notifier = change_notifier(database)

    async def start(db: AsyncSession) -> int:
        return await ChangeRepository(db, org_id).start_after(request.after_revision)

    async def read(db: AsyncSession, after: int) -> tuple[ChangeBatch, bytes]:
        batch = await ChangeRepository(db, org_id).read(
            after, flt, max_rows=BATCH_ROWS, max_bytes=BATCH_BYTES
        )
        prefix = b""
        if any(change.record is not None for change in batch.changes):
            # Every Ready field appears in a session, unset ones as null (as in GetSession).
            ready = await CustomFieldRepository(db, org_id).ready_names()
            prefix = convert.null_custom_fields(tuple(ready))
        if after_read is not None:
            await after_read(
                FeedRead(
                    org_id=org_id,
                    after=after,
                    revision=batch.last_revision(after),
                    matched=sum(1 for c in batch.changes if c.matched),
                    record_bytes=sum(len(c.record or b"") for c in batch.changes),
                    caught_up=not batch.more,
                )
            )
        return batch, prefix

    with notifier.subscribe(org_id) as wakeup:
        last = await database.run(start)
        caught_up = False
        reported: int | None = None
        reported_at = time.monotonic()
        while not notifier.closed:
            wakeup.clear()
            after = last
            async with notifier.query_slots:
                batch, prefix = await database.run(functools.partial(read, after=after))
            last = batch.last_revision(after)
            more = batch.more
            response = pb.WatchSessionsResponse(revision=last)
            for change in batch.changes:
                if change.matched:
                    _fill_change(response.changes.add(), change, prefix)
            del batch, prefix  # only the response is kept while it waits for the client
            ends_replay = not caught_up and not more
            progress_due = last != reported and time.monotonic() - reported_at >= PROGRESS_SECONDS
            if response.changes or ends_replay or progress_due:
                yield response
                reported, reported_at = last, time.monotonic()
            if more:
                continue
            caught_up = True
            await wakeup.wait()
        # The notifier closes when the server shuts down: a retryable error, so that clients
        # resume (with another server) as after any disconnect.
        raise ShuttingDown(f"the server is shutting down; resume the watch after revision {last}")


def _fill_change(message: pb.SessionChange, change: StoredChange, prefix: bytes) -> None:
    message.revision = change.revision
    message.session_id = change.session_id
    message.kind = _KIND_OF[change.kind]
    message.time.CopyFrom(convert.timestamp(change.committed))
    if change.record is not None:
        message.session.MergeFromString(prefix + change.record)
