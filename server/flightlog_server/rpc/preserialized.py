"""Pre-serialized responses: streaming handlers that yield their response messages as bytes.

Why: ListSessions streams sessions whose serialized form is stored (``sessions.wire_record``).
Parsing those bytes into messages only for gRPC to serialize them again would cost more than
everything else the server does per session, so its handler builds each serialized
``ListSessionsResponse`` directly (``rpc.session_listing``) and yields the bytes.

How: :func:`add_servicer` registers a generated servicer exactly as the generated
``add_<Service>Servicer_to_server`` function does, except that the methods named in ``streams``
are served by the given handlers, with a response serializer that passes ``bytes`` through (and
still serializes a message, should a handler yield one). The bytes must be a serialization of
the method's response type; what goes on the wire is then the same as for a message, so the
generated stubs, and clients in every language, parse it as usual. Used only by ListSessions.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

import grpc
from grpc import aio

__all__ = ["StreamHandler", "add_servicer"]

StreamHandler = Callable[[Any, aio.ServicerContext[Any, Any]], AsyncIterator[bytes]]


class _CapturingServer:
    """Stands in for the server while a generated ``add_..._to_server`` function runs."""

    def __init__(self) -> None:
        self.services: dict[str, dict[str, grpc.RpcMethodHandler[Any, Any]]] = {}

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        """Ignored: the generic handler is rebuilt from the registered method handlers."""

    def add_registered_method_handlers(
        self, service: str, handlers: Mapping[str, grpc.RpcMethodHandler[Any, Any]]
    ) -> None:
        self.services[service] = dict(handlers)


def _pass_bytes_through(serializer: Callable[[Any], bytes] | None) -> Callable[[Any], bytes]:
    def serialize(response: Any) -> bytes:
        if isinstance(response, bytes):
            return response
        assert serializer is not None
        return serializer(response)

    return serialize


def add_servicer(
    add_to_server: Callable[[Any, Any], None],
    servicer: Any,
    server: aio.Server,
    streams: Mapping[str, StreamHandler],
) -> None:
    """Registers ``servicer`` with ``add_to_server`` (a generated function), serving each
    unary-stream method named in ``streams`` by its handler, whose responses may be bytes."""
    capture = _CapturingServer()
    add_to_server(servicer, capture)
    if len(capture.services) != 1:
        raise ValueError("the generated function did not register exactly one service")
    ((service, handlers),) = capture.services.items()
    for method, handler in streams.items():
        original = handlers.get(method)
        if original is None or original.request_streaming or not original.response_streaming:
            raise ValueError(f"{service}/{method} is not a unary-stream method")
        handlers[method] = grpc.unary_stream_rpc_method_handler(
            handler,
            request_deserializer=original.request_deserializer,
            response_serializer=_pass_bytes_through(original.response_serializer),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # Registered methods skip the generic lookup; grpc-stubs does not know this method yet.
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]
