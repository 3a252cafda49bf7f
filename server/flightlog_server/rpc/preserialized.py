"""Pre-serialized responses: handlers that return (or stream) their response messages as bytes.

Why: sessions are stored in their serialized form (``sessions.wire_record``). Parsing those bytes
into messages only for gRPC to serialize them again would cost more than everything else the
server does per session, so the handlers that return sessions (ListSessions, GetSession, the
writes that return the session) assemble each serialized response from the stored bytes
(``length_delimited``) and return the bytes.

How: :func:`add_servicer` registers a generated servicer exactly as the generated
``add_<Service>Servicer_to_server`` function does, except that every method's response
serializer passes ``bytes`` through (and still serializes a message, as usual, for the handlers
that return one). The bytes must be a serialization of the method's response type; what goes on
the wire is then the same as for a message, so the generated stubs, and clients in every
language, parse it as usual.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import grpc
from grpc import aio

__all__ = ["Serialized", "add_servicer", "length_delimited"]

# What a handler returning pre-serialized bytes is typed as: the bytes of its response message.
# (``Any`` rather than ``bytes``, because the generated base class types each method's return as
# its message class, and a handler may return either.)
Serialized: TypeAlias = Any


def length_delimited(number: int, payload: bytes) -> bytes:
    """A length-delimited protobuf field (an embedded message or bytes): its key, the varint
    length of ``payload``, then ``payload``."""
    header = bytearray()
    key = (number << 3) | 2
    for value in (key, len(payload)):
        while value >= 0x80:
            header.append((value & 0x7F) | 0x80)
            value >>= 7
        header.append(value)
    return bytes(header) + payload


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
    add_to_server: Callable[[Any, Any], None], servicer: Any, server: aio.Server
) -> None:
    """Registers ``servicer`` with ``add_to_server`` (a generated function), its methods' responses
    allowed to be bytes (see the module doc)."""
    capture = _CapturingServer()
    add_to_server(servicer, capture)
    if len(capture.services) != 1:
        raise ValueError("the generated function did not register exactly one service")
    ((service, handlers),) = capture.services.items()
    for method, original in list(handlers.items()):
        kind = (original.request_streaming, original.response_streaming)
        make = {
            (False, False): grpc.unary_unary_rpc_method_handler,
            (False, True): grpc.unary_stream_rpc_method_handler,
        }.get(kind)
        if make is None:
            raise ValueError(f"{service}/{method}: client streaming is not served here")
        behavior = original.unary_unary if kind == (False, False) else original.unary_stream
        assert behavior is not None
        handlers[method] = make(
            behavior,
            request_deserializer=original.request_deserializer,
            response_serializer=_pass_bytes_through(original.response_serializer),
        )
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service, handlers),))
    # Registered methods skip the generic lookup; grpc-stubs does not know this method yet.
    server.add_registered_method_handlers(service, handlers)  # type: ignore[attr-defined]
