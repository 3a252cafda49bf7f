"""Typed exceptions raised by the Flightlog client.

Every failed call surfaces as a :class:`FlightlogError` subclass chosen by the gRPC status code,
never as a raw :class:`grpc.RpcError`. Each error carries what the server put in the rich status
(``google.rpc.Status`` details, see ``common.proto``):

- ``reason``: the ``google.rpc.ErrorInfo`` reason, for example ``"SESSION_NOT_FOUND"``
  (one of the ``ErrorReason`` names without the ``ERROR_REASON_`` prefix);
- ``metadata``: the ``ErrorInfo`` metadata, for example ``{"ids": "fl_a,fl_b"}``;
- ``field_violations``: ``(field, description)`` pairs from ``google.rpc.BadRequest``;
- ``request_id``: the ``google.rpc.RequestInfo`` request id of an INTERNAL error, to quote
  when reporting it.

Branch on the class for the kind of failure and on ``reason`` for the precise cause::

    try:
        session = Session.from_id("ss_123")
    except NotFoundError as e:
        print(e.reason)  # "SESSION_NOT_FOUND"
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import ParamSpec, TypeVar

import grpc
from google.protobuf.message import DecodeError
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

__all__ = [
    "AmbiguousNameError",
    "ConfigurationError",
    "ConflictError",
    "DeadlineExceededError",
    "FieldViolation",
    "FlightlogError",
    "InternalError",
    "InvalidRequestError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "UnauthorizedError",
    "UnavailableError",
    "error_class_for",
    "from_rpc_error",
    "translate_rpc_errors",
    "translates_rpc_errors",
]

_P = ParamSpec("_P")
_R = TypeVar("_R")

_STATUS_DETAILS_KEY = "grpc-status-details-bin"

FieldViolation = tuple[str, str]
"""A ``(field, description)`` pair from a ``google.rpc.BadRequest`` detail."""


class FlightlogError(Exception):
    """Base class of every error raised by a Flightlog call.

    Attributes:
        code: The gRPC status code of the failed call.
        reason: The ``ErrorInfo`` reason (``"SESSION_NOT_FOUND"``...), or ``""`` when the
            server sent none (for example when the failure happened in the transport).
        message: The human-readable status message.
        field_violations: ``(field, description)`` pairs naming each offending request field.
        metadata: The ``ErrorInfo`` metadata.
        request_id: The id under which the server logged an unexpected failure, or ``""``.
        batch_offset: Set by the batched helpers (:meth:`flightlog.Session.create_many`,
            :meth:`flightlog.Session.get_many`, :func:`flightlog.metrics.publish`) when one
            of their calls failed: the input index of that call's first item. The calls
            before it succeeded (items ``0`` to ``batch_offset - 1``), nothing of the failed
            call was written, and a violation named ``requests[i]...`` (or
            ``session_ids[i]``) is about input item ``batch_offset + i``. ``None`` otherwise.
        batch_size: With ``batch_offset``, how many input items the failed call held.
    """

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode = grpc.StatusCode.UNKNOWN,
        reason: str = "",
        field_violations: Sequence[FieldViolation] = (),
        metadata: Mapping[str, str] | None = None,
        request_id: str = "",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.field_violations: list[FieldViolation] = list(field_violations)
        self.metadata: dict[str, str] = dict(metadata or {})
        self.request_id = request_id
        self.batch_offset: int | None = None
        self.batch_size: int | None = None

    def __str__(self) -> str:
        """Return the message followed by the field violations it does not already state, as
        in ``msg [field: why]``."""
        text = self.message or self.code.name
        # The server's message already names the first violations; repeat none of them.
        unstated = [
            f"{field}: {why}"
            for field, why in self.field_violations
            if f"{field}: {why}" not in text
        ]
        if unstated:
            text = f"{text} [{'; '.join(unstated)}]"
        if self.request_id:
            text = f"{text} (request id {self.request_id})"
        return text

    def __repr__(self) -> str:
        """Return a debugging representation with the code and reason."""
        return (
            f"{type(self).__name__}(code={self.code.name}, reason={self.reason!r}, "
            f"message={self.message!r}, field_violations={self.field_violations!r})"
        )


class InvalidRequestError(FlightlogError):
    """The request was rejected as malformed: INVALID_ARGUMENT, OUT_OF_RANGE or
    FAILED_PRECONDITION. ``field_violations`` names the offending fields."""


class NotFoundError(FlightlogError):
    """A resource does not exist in the acting org (NOT_FOUND).

    Resources of other orgs also answer NOT_FOUND, so their existence does not leak.
    """


class UnauthorizedError(FlightlogError):
    """The call carried no valid API key (UNAUTHENTICATED)."""


class PermissionDeniedError(FlightlogError):
    """The caller may not act in the requested org (PERMISSION_DENIED)."""


class ConflictError(FlightlogError):
    """The request conflicts with the resource's state: ALREADY_EXISTS (an identity is taken,
    a ``request_id`` was reused) or ABORTED (an expected revision is stale)."""


class AmbiguousNameError(ConflictError):
    """A name given where one resource was expected is carried by several; use an ID.

    ``reason`` is ``"AMBIGUOUS_NAME"`` and ``metadata["ids"]`` lists the candidates.
    """

    def __init__(self, kind: str, name: str, ids: Sequence[str]) -> None:
        listed = ", ".join(ids)
        super().__init__(
            f"several {kind}s are named {name!r} ({listed}); use an ID",
            code=grpc.StatusCode.FAILED_PRECONDITION,
            reason="AMBIGUOUS_NAME",
            metadata={"ids": listed},
        )


class UnavailableError(FlightlogError):
    """The service or its database cannot be reached (UNAVAILABLE); retry later."""


class DeadlineExceededError(FlightlogError):
    """The call's deadline passed before it completed (DEADLINE_EXCEEDED)."""


class ResourceExhaustedError(FlightlogError):
    """A request or a stream exceeded a server limit (RESOURCE_EXHAUSTED)."""


class InternalError(FlightlogError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN, DATA_LOSS or UNIMPLEMENTED).

    ``request_id`` identifies the failure in the server logs.
    """


class ConfigurationError(FlightlogError):
    """The client configuration (environment variables, TLS files) is unusable.

    Raised before any call is made; ``code`` is INVALID_ARGUMENT and ``reason`` is
    ``"CLIENT_CONFIGURATION"``.
    """

    def __init__(self, message: str) -> None:
        super().__init__(
            message, code=grpc.StatusCode.INVALID_ARGUMENT, reason="CLIENT_CONFIGURATION"
        )


_ERROR_CLASSES: dict[grpc.StatusCode, type[FlightlogError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidRequestError,
    grpc.StatusCode.OUT_OF_RANGE: InvalidRequestError,
    grpc.StatusCode.FAILED_PRECONDITION: InvalidRequestError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.UNAUTHENTICATED: UnauthorizedError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.ABORTED: ConflictError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
    grpc.StatusCode.INTERNAL: InternalError,
    grpc.StatusCode.UNKNOWN: InternalError,
    grpc.StatusCode.DATA_LOSS: InternalError,
    grpc.StatusCode.UNIMPLEMENTED: InternalError,
}


def error_class_for(code: grpc.StatusCode) -> type[FlightlogError]:
    """Return the exception class used for a gRPC status code."""
    return _ERROR_CLASSES.get(code, FlightlogError)


def _rich_status(error: grpc.RpcError) -> status_pb2.Status | None:
    """Return the ``google.rpc.Status`` in the error's trailers, if any.

    ``grpc_status.rpc_status.from_call`` refuses a status whose code or message differ from the
    call's (a proxy may rewrite one); the details are still worth reading then, so fall back to
    parsing the trailer directly.
    """
    if not isinstance(error, grpc.Call):
        return None
    try:
        status: status_pb2.Status | None = rpc_status.from_call(error)
        return status
    except ValueError:
        pass
    except DecodeError:
        return None
    for key, value in error.trailing_metadata() or ():
        if key == _STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def from_rpc_error(error: grpc.RpcError) -> FlightlogError:
    """Convert a :class:`grpc.RpcError` into the matching :class:`FlightlogError` subclass.

    The ``google.rpc.ErrorInfo``, ``BadRequest`` and ``RequestInfo`` details of the rich status
    fill ``reason``/``metadata``, ``field_violations`` and ``request_id``. Unknown detail types
    are ignored.
    """
    code = error.code() if isinstance(error, grpc.Call) else grpc.StatusCode.UNKNOWN
    if not isinstance(code, grpc.StatusCode):
        code = grpc.StatusCode.UNKNOWN
    message = (error.details() if isinstance(error, grpc.Call) else None) or ""
    reason = ""
    metadata: dict[str, str] = {}
    violations: list[FieldViolation] = []
    request_id = ""

    status = _rich_status(error)
    if status is not None:
        message = message or status.message
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            bad_request = error_details_pb2.BadRequest()
            request_info = error_details_pb2.RequestInfo()
            if detail.Unpack(info):
                reason = info.reason
                metadata.update(info.metadata)
            elif detail.Unpack(bad_request):
                violations.extend((v.field, v.description) for v in bad_request.field_violations)
            elif detail.Unpack(request_info):
                request_id = request_info.request_id

    return error_class_for(code)(
        message,
        code=code,
        reason=reason,
        field_violations=violations,
        metadata=metadata,
        request_id=request_id,
    )


@contextlib.contextmanager
def translate_rpc_errors() -> Iterator[None]:
    """Context manager that re-raises any :class:`grpc.RpcError` as a :class:`FlightlogError`.

    The original error stays reachable as ``__cause__``.
    """
    try:
        yield
    except grpc.RpcError as error:
        raise from_rpc_error(error) from error


def translates_rpc_errors(function: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator form of :func:`translate_rpc_errors` for functions that return a value.

    Generators must use the context manager around their iteration instead, since a decorator
    only sees the creation of the generator, not its iteration.
    """

    @functools.wraps(function)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with translate_rpc_errors():
            return function(*args, **kwargs)

    return wrapper
