"""The gate that holds Flightlog calls back until the server is ready to serve them.

The server listens as soon as it starts, so that health checks answer while it waits for its
database (and migrates it). Until :meth:`ReadinessGate.open` is called, every call to a
Flightlog service is answered UNAVAILABLE (``DATABASE_UNAVAILABLE``) without running anything:
its handler would otherwise reach a database that is down, or one whose schema is still being
migrated. Health and reflection are not gated. Once open, the gate only passes calls through.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Collection
from typing import Any

import grpc
from grpc import aio

from flightlog_server.domain.errors import DatabaseUnavailable
from flightlog_server.rpc.calls import CallObserver
from flightlog_server.rpc.errors import STATUS_DETAILS_KEY, rich_status

__all__ = ["ReadinessGate"]

_NOT_READY = DatabaseUnavailable(
    "the server is starting and its database is not reachable yet; retry"
)


class ReadinessGate(aio.ServerInterceptor):  # type: ignore[type-arg]
    """Refuses calls to ``services`` (full names) until opened; counts them with ``observer``.

    It must come before the interceptor that authenticates calls, which needs the database.
    """

    def __init__(self, services: Collection[str], observer: CallObserver) -> None:
        self._services = frozenset(services)
        self._observer = observer
        self._open = False
        self._code, self._message, self._details = rich_status(_NOT_READY)

    def open(self) -> None:
        """Lets calls through from now on."""
        self._open = True

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        if self._open or handler is None:
            return handler
        method: str = handler_call_details.method
        if method.rpartition("/")[0].lstrip("/") not in self._services:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(self._refuser(method))
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(self._refuser(method))
        return handler  # no Flightlog RPC streams requests

    def _refuser(self, method: str) -> Callable[[bytes, aio.ServicerContext[Any, Any]], Any]:
        async def refuse(_request: bytes, context: aio.ServicerContext[Any, Any]) -> None:
            started = time.perf_counter()
            self._observer.started(method)
            try:
                await context.abort(
                    self._code, self._message, ((STATUS_DETAILS_KEY, self._details),)
                )
            finally:
                self._observer.finished(method, self._code, time.perf_counter() - started)

        return refuse
