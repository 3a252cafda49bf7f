"""ListSessions: filters, sort orders and resumable keyset streaming (issue 5)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.types import Caller
from flightlog_server.storage.database import Database


async def list_sessions(
    database: Database, caller: Caller, request: pb.ListSessionsRequest
) -> AsyncIterator[pb.ListSessionsResponse]:
    raise NotImplementedError
    yield pb.ListSessionsResponse()
