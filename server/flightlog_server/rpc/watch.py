"""WatchSessions: the resumable change feed (issue 8), shared by an org's watchers (issue 11).

This module validates the request, encodes changes for the wire and builds the responses; the
use case (replay, then live delivery through the org's shared reader, with no skip and no
duplicate at the seam, and a bounded queue per watcher) is ``services.change_feed``, whose module
doc explains it.

The responses are pre-serialized (``rpc.preserialized``): the shared reader encodes each change
once (``encode_change``), whatever the number of watchers it goes to, and a watcher's response is
its changes' bytes followed by the revision. The generator is held at ``yield`` until gRPC has
taken the previous response (flow control).

A watch never ends by itself. When the server shuts down, the notifier closes and wakes every
watch, which ends with UNAVAILABLE at once instead of holding the shutdown for its grace period.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain import rules
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import Caller
from flightlog_server.rpc import convert
from flightlog_server.rpc.preserialized import Serialized, length_delimited
from flightlog_server.services import change_feed as feed
from flightlog_server.services.change_feed import ChangeFilter, StoredChange

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
    database: feed.Database,
    caller: Caller,
    request: pb.WatchSessionsRequest,
    context: aio.ServicerContext[Any, Any],
) -> AsyncIterator[Serialized]:
    flt = change_filter(request)
    changes = feed.change_feed(database, encode_change)
    async for update in changes.watch(caller.org_id, flt, request.after_revision):
        yield response_bytes(update)


# WatchSessionsResponse's fields (protos/flightlog/v1/session_service.proto).
_CHANGES_FIELD = 1
_REVISION_KEY = bytes([(2 << 3) | 0])  # revision = 2, a varint
# SessionChange's session field.
_SESSION_FIELD = 4


def encode_change(change: StoredChange, ready: tuple[str, ...]) -> bytes:
    """One ``WatchSessionsResponse.changes`` entry, serialized: the change's own fields, then its
    session, the stored wire record prefixed with the org's Ready fields as nulls (as in
    GetSession). Appending a field to a serialized message is a valid serialization of it."""
    message = pb.SessionChange(
        revision=change.revision, session_id=change.session_id, kind=_KIND_OF[change.kind]
    )
    message.time.CopyFrom(convert.timestamp(change.committed))
    body = message.SerializeToString()
    if change.record is not None:
        body += length_delimited(_SESSION_FIELD, convert.null_custom_fields(ready) + change.record)
    return length_delimited(_CHANGES_FIELD, body)


def response_bytes(update: feed.FeedUpdate) -> bytes:
    """A serialized ``WatchSessionsResponse``: the encoded changes, then the revision."""
    return b"".join((*update.changes, _REVISION_KEY, _varint(update.revision)))  # one copy


def _varint(value: int) -> bytes:
    out = bytearray()
    value &= (1 << 64) - 1  # int64: a negative value is ten bytes of two's complement
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)
