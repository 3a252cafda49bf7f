"""WatchSessions: the resumable change feed (issue 8)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from grpc import aio

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.types import Caller
from flightlog_server.storage.database import Database


async def watch_sessions(
    database: Database,
    caller: Caller,
    request: pb.WatchSessionsRequest,
    context: aio.ServicerContext[Any, Any],
) -> AsyncIterator[pb.WatchSessionsResponse]:
    raise NotImplementedError
    yield pb.WatchSessionsResponse()
