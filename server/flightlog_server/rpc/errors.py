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
    (e.LimitExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (e.DatabaseUnavailable, grpc.StatusCode.UNAVAILABLE),
    (e.ShuttingDown, grpc.StatusCode.UNAVAILABLE),
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


# gRPC clients refuse response metadata over 8 KiB by default, and the status details travel
# base64-encoded in a trailer, with the message percent-encoded in another. What a status carries
# is therefore bounded, whatever the request held (a field path may quote a user's map key).
MAX_VIOLATIONS = 10
MAX_FIELD_CHARS = 120
MAX_DESCRIPTION_CHARS = 200
MAX_MESSAGE_CHARS = 200
MAX_METADATA_VALUE_CHARS = 600


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def rich_status(error: e.DomainError) -> tuple[grpc.StatusCode, str, bytes]:
    """(code, message, serialized google.rpc.Status) for a domain error."""
    code = status_code_of(error)
    message = _clip(error.message, MAX_MESSAGE_CHARS)
    metadata = {k: _clip(v, MAX_METADATA_VALUE_CHARS) for k, v in error.metadata.items()}
    details = [
        _pack(error_details_pb2.ErrorInfo(reason=error.reason, domain=DOMAIN, metadata=metadata))
    ]
    if isinstance(error, e.InvalidArgument):
        shown = error.violations[:MAX_VIOLATIONS]
        violations = [
            error_details_pb2.BadRequest.FieldViolation(
                field=_clip(v.field, MAX_FIELD_CHARS),
                description=_clip(v.description, MAX_DESCRIPTION_CHARS),
            )
            for v in shown
        ]
        hidden = len(error.violations) - len(shown) + error.omitted
        if hidden > 0:
            violations.append(
                error_details_pb2.BadRequest.FieldViolation(
                    field="*", description=f"{hidden} more violations not shown"
                )
            )
        details.append(_pack(error_details_pb2.BadRequest(field_violations=violations)))
    status = status_pb2.Status(code=code.value[0], message=message, details=details)
    return code, message, status.SerializeToString()


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
