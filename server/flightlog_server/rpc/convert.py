"""Mapping between API messages and domain data: explicit, in one place.

The API message is not the table. Sessions are the one shortcut: their serialized form is kept
in ``sessions.wire_record`` (custom fields: set values only) and read back by prefixing
``null_custom_fields`` — protobuf merges concatenated messages and later map entries win, so every
Ready field appears, unset ones as ``null_value``, without rebuilding the message.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2
from google.protobuf.json_format import MessageToDict

from flightlog.v1 import common_pb2, session_service_pb2
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.types import (
    CustomFieldType,
    FieldValue,
    SessionState,
    WireValue,
)

UTC = dt.UTC
# google.protobuf.Timestamp's documented range.
_MIN_SECONDS = -62_135_596_800
_MAX_SECONDS = 253_402_300_799


def timestamp(value: dt.datetime) -> timestamp_pb2.Timestamp:
    ts = timestamp_pb2.Timestamp()
    ts.FromDatetime(value.astimezone(UTC))
    return ts


def custom_value(type_: CustomFieldType, value: FieldValue | None) -> common_pb2.CustomFieldValue:
    if value is None:
        return common_pb2.CustomFieldValue(null_value=struct_pb2.NULL_VALUE)
    if type_ is CustomFieldType.BOOLEAN:
        return common_pb2.CustomFieldValue(bool_value=bool(value))
    if type_ is CustomFieldType.ENUM:
        return common_pb2.CustomFieldValue(enum_value=str(value))
    if type_ is CustomFieldType.NUMBER:
        assert isinstance(value, float | int)
        return common_pb2.CustomFieldValue(number_value=float(value))
    if type_ is CustomFieldType.STRING:
        return common_pb2.CustomFieldValue(string_value=str(value))
    assert isinstance(value, dt.datetime)
    return common_pb2.CustomFieldValue(timestamp_value=timestamp(value))


def wire_value(field: str, message: common_pb2.CustomFieldValue) -> WireValue:
    """The domain view of a sent value; an empty message is INVALID_ARGUMENT."""
    kind = message.WhichOneof("kind")
    if kind is None:
        raise InvalidArgument.one(field, "must set one member of the value")
    if kind == "null_value":
        return WireValue("null", None)
    if kind == "bool_value":
        return WireValue("bool", message.bool_value)
    if kind == "enum_value":
        return WireValue("enum", message.enum_value)
    if kind == "number_value":
        return WireValue("number", message.number_value)
    if kind == "string_value":
        return WireValue("string", message.string_value)
    ts = message.timestamp_value
    if not (_MIN_SECONDS <= ts.seconds <= _MAX_SECONDS) or not (0 <= ts.nanos < 1_000_000_000):
        raise InvalidArgument.one(field, "must be a timestamp between years 1 and 9999")
    # Microseconds are what PostgreSQL keeps; nanoseconds are truncated.
    return WireValue("timestamp", ts.ToDatetime(tzinfo=UTC))


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """Struct → plain JSON-able dict (numbers as floats, integral ones as ints)."""
    return {k: _plain(v) for k, v in MessageToDict(message).items()}


def _plain(value: Any) -> Any:
    if isinstance(value, float) and math.isfinite(value) and value.is_integer():
        return int(value) if abs(value) < 2**53 else value
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def dict_to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def session_message(state: SessionState) -> session_service_pb2.Session:
    message = session_service_pb2.Session(
        session_id=state.session_id,
        org_id=state.org_id,
        tags=state.tags,
        metadata=dict_to_struct(state.metadata),
        created=timestamp(state.created),
        created_by=state.created_by,
        modified=timestamp(state.modified),
        modified_by=state.modified_by,
        revision=state.revision,
    )
    if state.name is not None:
        message.name = state.name
    if state.description is not None:
        message.description = state.description
    if state.min_timestamp_ns is not None:
        message.min_timestamp_ns = state.min_timestamp_ns
    if state.max_timestamp_ns is not None:
        message.max_timestamp_ns = state.max_timestamp_ns
    for name, (type_, value) in state.custom_fields.items():
        message.custom_fields[name].CopyFrom(custom_value(type_, value))
    return message


def encode_session(state: SessionState) -> bytes:
    """The stored wire record of a session (see module doc)."""
    return session_message(state).SerializeToString(deterministic=True)


def null_custom_fields(ready_field_names: Iterable[str]) -> bytes:
    """A serialized Session holding ``null_value`` for each named field; prefix it to a wire
    record so that every Ready field is present."""
    message = session_service_pb2.Session()
    for name in ready_field_names:
        message.custom_fields[name].null_value = struct_pb2.NULL_VALUE
    return message.SerializeToString(deterministic=True)


def session_from_record(prefix: bytes, record: bytes) -> session_service_pb2.Session:
    return session_service_pb2.Session.FromString(prefix + record)
