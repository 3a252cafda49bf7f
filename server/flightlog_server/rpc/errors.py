"""The one place where errors become gRPC statuses.

Each domain error maps to a canonical code and carries ``google.rpc.ErrorInfo`` (reason in
UPPER_SNAKE, domain ``flightlog``); invalid input also carries ``google.rpc.BadRequest`` with one
violation per field. Anything unexpected is INTERNAL with ``google.rpc.RequestInfo`` naming the
request id under which the traceback was logged; the caller never sees the traceback.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2

from flightlog_server.domain import errors as e

DOMAIN = "flightlog"
STATUS_DETAILS_KEY = "grpc-status-details-bin"

_CODES: list[tuple[type[e.DomainError], grpc.StatusCode]] = [
    (e.InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (e.OrgRequired, grpc.StatusCode.INVALID_ARGUMENT),
    (e.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (e.OrgAccessDenied, grpc.StatusCode.PERMISSION_DENIED),
    (e.NotFound, grpc.StatusCode.NOT_FOUND),
    (e.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (e.RequestIdReused, grpc.StatusCode.ALREADY_EXISTS),
    (e.RevisionMismatch, grpc.StatusCode.ABORTED),
    (e.RevisionExpired, grpc.StatusCode.OUT_OF_RANGE),
    (e.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (e.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
    (e.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
]


def status_code_of(error: e.DomainError) -> grpc.StatusCode:
    for cls, code in _CODES:
        if isinstance(error, cls):
            return code
    return grpc.StatusCode.INTERNAL


def _pack(message: object) -> any_pb2.Any:
    packed = any_pb2.Any()
    packed.Pack(message)  # type: ignore[arg-type]
    return packed


def rich_status(error: e.DomainError) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) for a domain error."""
    code = status_code_of(error)
    details = [
        _pack(
            error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=error.metadata)
        )
    ]
    if isinstance(error, e.InvalidArgument):
        details.append(
            _pack(
                error_details_pb2.BadRequest(
                    field_violations=[
                        error_details_pb2.BadRequest.FieldViolation(
                            field=v.field, description=v.description
                        )
                        for v in error.violations
                    ]
                )
            )
        )
    status = status_pb2.Status(code=code.value[0], message=error.message, details=details)
    return code, error.message, status.SerializeToString()


def internal_status(request_id: str) -> tuple[grpc.StatusCode, str, bytes]:
    """The status of an unexpected failure: no traceback, just where to look in the logs."""
    message = f"internal error; the server logged it under request id {request_id}"
    status = status_pb2.Status(
        code=code_pb2.INTERNAL,
        message=message,
        details=[
            _pack(error_details_pb2.ErrorInfo(reason="INTERNAL", domain=DOMAIN)),
            _pack(error_details_pb2.RequestInfo(request_id=request_id)),
        ],
    )
    return grpc.StatusCode.INTERNAL, message, status.SerializeToString()
