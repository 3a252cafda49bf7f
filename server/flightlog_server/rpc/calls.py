"""What happens around every call: request id, deadline, authentication, errors, logging.

One interceptor wraps every Flightlog handler (health and reflection stay public):

1. a request id (the caller's ``x-request-id`` when well-formed, else a new one) is set for logs
   and echoed in the response's initial metadata;
2. the call's deadline is published to the storage layer (statement timeouts);
3. ``authorization: Bearer <key>`` and ``x-org-id`` are resolved to a ``Caller`` (DESIGN §5);
4. for a listing (its request has a ``page_token``), the page-token codec is bound for
   ``rpc.pagination`` (its keys are read from the database by the first listing);
5. the request is parsed: over ``rules.MAX_REQUEST_BYTES`` it is RESOURCE_EXHAUSTED without being
   parsed; over ``rules.MAX_REQUEST_ITEMS`` items, or with repeated fields that would take more
   than ``rules.MAX_REQUEST_BUILD_RATIO`` times its size to build, it is INVALID_ARGUMENT without
   being built (``rpc.request_items``); RegisterFile's and AddSessionFiles' requests are never
   built whole but read piece by piece (``rpc.piecewise``); bytes that do not parse are
   INVALID_ARGUMENT (not gRPC's UNKNOWN);
6. domain errors become rich statuses (``rpc.errors``); anything else is logged with its
   traceback and answered INTERNAL with the request id.
"""

from __future__ import annotations

import contextvars
import functools
import logging
import re
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import Descriptor
from google.protobuf.message import DecodeError
from grpc import aio

from flightlog.v1 import session_service_pb2
from flightlog_server import request_context
from flightlog_server.domain import rules
from flightlog_server.domain.errors import DomainError, InvalidArgument, LimitExceeded
from flightlog_server.domain.types import Caller
from flightlog_server.rpc import pagination
from flightlog_server.rpc.errors import STATUS_DETAILS_KEY, internal_status, rich_status
from flightlog_server.rpc.piecewise import WireFile, WireRepeated
from flightlog_server.rpc.request_items import request_items
from flightlog_server.services.identity import Authenticator

log = logging.getLogger("flightlog.calls")

_caller: contextvars.ContextVar[Caller] = contextvars.ContextVar("caller")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")
_PUBLIC_PREFIXES = ("/grpc.health.v1.", "/grpc.reflection.")


def current_caller() -> Caller:
    """The authenticated caller of the current call (set by the interceptor)."""
    return _caller.get()


class CallObserver:
    """Hooks for metrics; the default does nothing."""

    def started(self, method: str) -> None:
        """A call started."""

    def finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        """A call finished with ``code`` after ``seconds``."""


# A request message from its bytes (None: the handler takes the bytes themselves).
Reader = Callable[[bytes], Awaitable[Any]] | None

# Requests read from the wire piece by piece instead of built whole: their reader bounds their
# memory itself, whatever their elements (``rpc.piecewise``).
_READ_FROM_WIRE: dict[str, Callable[[bytes], Awaitable[Any]]] = {
    "/flightlog.v1.CatalogService/RegisterFile": WireFile.read,
    "/flightlog.v1.SessionService/AddSessionFiles": functools.partial(
        WireRepeated.read,
        request=session_service_pb2.AddSessionFilesRequest,
        field="files",
        limit=rules.MAX_FILES_PER_CALL,
        items="files",
    ),
}


def _reader(
    method: str, request: Descriptor | None, parse: Callable[[bytes], Any] | None
) -> Reader:
    """How ``method``'s request is made from its bytes: read on the wire first when it could
    pass a bound (``rpc.request_items``), then parsed; or by a reader of its own."""
    if parse is None:
        return None
    if method in _READ_FROM_WIRE:
        return _READ_FROM_WIRE[method]
    items = None if request is None else request_items(request)

    async def read(raw: bytes) -> Any:
        if items is not None:
            await items.check(raw)
        return parse(raw)

    return read


async def _parse(read: Reader, raw: bytes) -> Any:
    """The request message from its bytes; unparseable bytes are the caller's mistake, and so
    are more than ``MAX_REQUEST_BYTES``, ``MAX_REQUEST_ITEMS`` or ``MAX_REQUEST_BUILD_RATIO``
    (checked first: parsing is what they would cost)."""
    if read is None:
        return raw
    if len(raw) > rules.MAX_REQUEST_BYTES:
        raise LimitExceeded(
            f"the request message is {len(raw):,} bytes; at most {rules.MAX_REQUEST_BYTES:,}"
            " are accepted",
            metadata={"limit_bytes": str(rules.MAX_REQUEST_BYTES), "request_bytes": str(len(raw))},
        )
    try:
        return await read(raw)
    except DecodeError as e:
        raise InvalidArgument.one(
            "request",
            "is not a valid serialized request message (malformed, a string that is not "
            "UTF-8, or nested more than 100 levels deep)",
        ) from e


def _request_type(method: str) -> Descriptor | None:
    """The request message type of ``method`` (``/package.Service/Method``), if it is known."""
    service, _, name = method.lstrip("/").partition("/")
    try:
        found = descriptor_pool.Default().FindServiceByName(service).methods_by_name[name]
    except KeyError:
        return None
    request: Descriptor = found.input_type
    return request


class CallInterceptor(aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(
        self,
        authenticator: Authenticator,
        page_tokens: pagination.TokenKeys,
        observer: CallObserver | None = None,
    ) -> None:
        self.authenticator = authenticator
        self.page_tokens = page_tokens
        self.observer = observer or CallObserver()
        # method -> (the registered handler, its wrapped version)
        self._wrapped: dict[str, tuple[Any, Any]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Any]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Any:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or method.startswith(_PUBLIC_PREFIXES):
            return handler
        wrapped = self._wrapped.get(method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = (handler, self._wrap(method, handler))
            self._wrapped[method] = wrapped  # built once per method, not once per call
        return wrapped[1]

    def _wrap(self, method: str, handler: Any) -> Any:
        # The request is parsed inside the wrapper (``_parse``), not by gRPC: a request gRPC
        # cannot parse (nested too deep, invalid UTF-8, truncated) would otherwise be answered
        # UNKNOWN with the parser's exception text, before any of the rules below apply.
        request = _request_type(method)
        read = _reader(method, request, handler.request_deserializer)
        paged = request is not None and "page_token" in request.fields_by_name
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                self._wrap_unary(method, handler.unary_unary, read, paged),
                response_serializer=handler.response_serializer,
            )
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(
                self._wrap_stream(method, handler.unary_stream, read, paged),
                response_serializer=handler.response_serializer,
            )
        return handler

    async def _enter(
        self, method: str, context: aio.ServicerContext[Any, Any], paged: bool
    ) -> None:
        metadata = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
        given = metadata.get("x-request-id", "")
        request_id = given if _REQUEST_ID.fullmatch(given) else secrets.token_hex(8)
        request_context.request_id.set(request_id)
        remaining = context.time_remaining()
        request_context.call_deadline.set(
            None if remaining is None else time.monotonic() + remaining
        )
        await context.send_initial_metadata((("x-request-id", request_id),))
        _caller.set(await self.authenticator.caller(metadata, request_id))
        if paged:
            pagination.use(await self.page_tokens.codec())

    @staticmethod
    def _status_of(method: str, error: Exception) -> tuple[grpc.StatusCode, str, bytes]:
        request_id = request_context.request_id.get()
        if isinstance(error, DomainError):
            code, message, details = rich_status(error)
            log.info("%s failed: %s %s", method, code.name, message)
        else:
            log.exception("%s failed unexpectedly (request id %s)", method, request_id)
            code, message, details = internal_status(request_id)
        return code, message, details

    def _wrap_unary(self, method: str, behavior: Any, read: Reader, paged: bool) -> Any:
        async def call(raw: bytes, context: aio.ServicerContext[Any, Any]) -> Any:
            started = time.perf_counter()
            self.observer.started(method)
            code = grpc.StatusCode.OK
            try:
                await self._enter(method, context, paged)
                return await behavior(await _parse(read, raw), context)
            except Exception as error:  # noqa: BLE001 - every failure gets a proper status
                code, message, details = self._status_of(method, error)
                await context.abort(code, message, ((STATUS_DETAILS_KEY, details),))
            finally:
                self.observer.finished(method, code, time.perf_counter() - started)

        return call

    def _wrap_stream(self, method: str, behavior: Any, read: Reader, paged: bool) -> Any:
        async def call(raw: bytes, context: aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            started = time.perf_counter()
            self.observer.started(method)
            code = grpc.StatusCode.OK
            try:
                await self._enter(method, context, paged)
                async for response in behavior(await _parse(read, raw), context):
                    yield response
            except Exception as error:  # noqa: BLE001 - every failure gets a proper status
                code, message, details = self._status_of(method, error)
                await context.abort(code, message, ((STATUS_DETAILS_KEY, details),))
            finally:
                self.observer.finished(method, code, time.perf_counter() - started)

        return call
