"""Turning gRPC failures into typed exceptions (no server)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import pytest
from google.protobuf import any_pb2
from google.protobuf.message import Message
from google.rpc import error_details_pb2, status_pb2

from flightlog import errors
from flightlog.errors import (
    ConflictError,
    DeadlineExceededError,
    FlightlogError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthorizedError,
    UnavailableError,
    from_rpc_error,
    translate_rpc_errors,
    translates_rpc_errors,
)


class FakeRpcError(grpc.RpcError, grpc.Call):
    """What a failed call raises: a grpc.RpcError that is also a grpc.Call."""

    def __init__(
        self,
        code: grpc.StatusCode,
        message: str,
        details: Sequence[Message] = (),
        *,
        status_code: grpc.StatusCode | None = None,
        trailers: Sequence[tuple[str, bytes | str]] | None = None,
    ) -> None:
        super().__init__(message)
        self._code = code
        self._message = message
        if trailers is None:
            packed = []
            for detail in details:
                any_detail = any_pb2.Any()
                any_detail.Pack(detail)
                packed.append(any_detail)
            status = status_pb2.Status(
                code=(status_code or code).value[0], message=message, details=packed
            )
            trailers = [("grpc-status-details-bin", status.SerializeToString())]
        self._trailers = tuple(trailers)

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._message

    def trailing_metadata(self) -> Any:
        return self._trailers

    def initial_metadata(self) -> tuple[()]:
        return ()

    def is_active(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return 0.0

    def cancel(self) -> bool:
        return False

    def add_callback(self, callback: object) -> bool:
        return False


def _info(reason: str, **metadata: str) -> error_details_pb2.ErrorInfo:
    return error_details_pb2.ErrorInfo(reason=reason, domain="flightlog", metadata=metadata)


@pytest.mark.parametrize(
    ("code", "cls"),
    [
        (grpc.StatusCode.INVALID_ARGUMENT, InvalidRequestError),
        (grpc.StatusCode.OUT_OF_RANGE, InvalidRequestError),
        (grpc.StatusCode.FAILED_PRECONDITION, InvalidRequestError),
        (grpc.StatusCode.NOT_FOUND, NotFoundError),
        (grpc.StatusCode.UNAUTHENTICATED, UnauthorizedError),
        (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
        (grpc.StatusCode.ALREADY_EXISTS, ConflictError),
        (grpc.StatusCode.ABORTED, ConflictError),
        (grpc.StatusCode.UNAVAILABLE, UnavailableError),
        (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
        (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
        (grpc.StatusCode.INTERNAL, InternalError),
        (grpc.StatusCode.UNKNOWN, InternalError),
        (grpc.StatusCode.CANCELLED, FlightlogError),
    ],
)
def test_each_status_code_maps_to_its_exception_class(
    code: grpc.StatusCode, cls: type[FlightlogError]
) -> None:
    error = from_rpc_error(FakeRpcError(code, "boom"))

    assert type(error) is cls
    assert error.code == code
    assert error.message == "boom"


def test_invalid_argument_carries_reason_and_field_violations() -> None:
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(
                field="files[2].range_min_timestamp_ns",
                description="must be set together with range_max_timestamp_ns",
            ),
            error_details_pb2.BadRequest.FieldViolation(field="name", description="too long"),
        ]
    )
    rpc_error = FakeRpcError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "invalid request",
        [_info("INVALID_REQUEST"), bad_request],
    )

    error = from_rpc_error(rpc_error)

    assert isinstance(error, InvalidRequestError)
    assert error.reason == "INVALID_REQUEST"
    assert error.field_violations == [
        ("files[2].range_min_timestamp_ns", "must be set together with range_max_timestamp_ns"),
        ("name", "too long"),
    ]
    assert str(error) == (
        "invalid request [files[2].range_min_timestamp_ns: must be set together with "
        "range_max_timestamp_ns; name: too long]"
    )


def test_not_found_carries_error_info_metadata() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.NOT_FOUND,
        "files not found",
        [_info("FILE_NOT_FOUND", ids="fl_a,fl_b")],
    )

    error = from_rpc_error(rpc_error)

    assert isinstance(error, NotFoundError)
    assert error.reason == "FILE_NOT_FOUND"
    assert error.metadata == {"ids": "fl_a,fl_b"}
    assert error.field_violations == []


def test_internal_error_carries_the_logged_request_id() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.INTERNAL,
        "internal error",
        [_info("INTERNAL"), error_details_pb2.RequestInfo(request_id="req-42")],
    )

    error = from_rpc_error(rpc_error)

    assert isinstance(error, InternalError)
    assert error.request_id == "req-42"
    assert "req-42" in str(error)


def test_a_status_without_details_still_gives_code_and_message() -> None:
    error = from_rpc_error(
        FakeRpcError(grpc.StatusCode.UNAVAILABLE, "connection refused", trailers=[])
    )

    assert isinstance(error, UnavailableError)
    assert error.reason == ""
    assert str(error) == "connection refused"


def test_details_are_read_even_when_a_proxy_rewrote_the_status_code() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.UNAVAILABLE,
        "database unavailable",
        [_info("DATABASE_UNAVAILABLE")],
        status_code=grpc.StatusCode.INTERNAL,
    )

    error = from_rpc_error(rpc_error)

    assert isinstance(error, UnavailableError)
    assert error.reason == "DATABASE_UNAVAILABLE"


def test_garbage_status_details_are_ignored() -> None:
    rpc_error = FakeRpcError(
        grpc.StatusCode.NOT_FOUND,
        "nope",
        trailers=[("grpc-status-details-bin", b"\xff\xff\xff not a status")],
    )

    error = from_rpc_error(rpc_error)

    assert isinstance(error, NotFoundError)
    assert error.reason == ""


def test_the_context_manager_re_raises_typed_errors_with_the_cause() -> None:
    original = FakeRpcError(grpc.StatusCode.ALREADY_EXISTS, "taken", [_info("ALREADY_EXISTS")])

    with pytest.raises(ConflictError) as caught, translate_rpc_errors():
        raise original

    assert caught.value.__cause__ is original
    assert caught.value.reason == "ALREADY_EXISTS"


def test_the_decorator_translates_errors_and_passes_results_through() -> None:
    @translates_rpc_errors
    def call(fail: bool) -> int:
        if fail:
            raise FakeRpcError(grpc.StatusCode.PERMISSION_DENIED, "not a member")
        return 7

    assert call(False) == 7
    with pytest.raises(PermissionDeniedError, match="not a member"):
        call(True)


def test_every_public_error_class_is_a_flightlog_error() -> None:
    for name in errors.__all__:
        value = getattr(errors, name)
        if isinstance(value, type) and issubclass(value, Exception):
            assert issubclass(value, FlightlogError), name
