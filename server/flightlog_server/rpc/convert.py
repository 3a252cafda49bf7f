"""Mapping between API messages and domain data: explicit, in one place.

The API message is not the table. Sessions are the one shortcut: their serialized form is kept
in ``sessions.wire_record`` (custom fields: set values only) and read back by prefixing
``null_custom_fields`` — protobuf merges concatenated messages and later map entries win, so every
Ready field appears, unset ones as ``null_value``, without rebuilding the message.
"""

from __future__ import annotations

import datetime as dt
import functools
import hashlib
import math
from typing import Any

from google.protobuf import struct_pb2, timestamp_pb2

from flightlog.v1 import (
    catalog_service_pb2,
    common_pb2,
    custom_field_service_pb2,
    session_service_pb2,
)
from flightlog_server.domain.catalog import (
    DatasetRecord,
    DeviceRecord,
    FileExtras,
    FileRecord,
    PartitionRecord,
    RecoverySpec,
)
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.types import (
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
    FieldValue,
    Instant,
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
    assert isinstance(value, Instant)
    return common_pb2.CustomFieldValue(
        timestamp_value=timestamp_pb2.Timestamp(seconds=value.seconds, nanos=value.nanos)
    )


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
    return WireValue("timestamp", Instant.of(ts.seconds, ts.nanos))


def struct_to_dict(message: struct_pb2.Struct) -> dict[str, Any]:
    """Struct → plain JSON-able dict; integral numbers become ints. NaN and infinities pass
    through as floats, for ``rules.check_metadata`` to reject (JSON cannot hold them)."""
    return {key: _plain(value) for key, value in message.fields.items()}


def _plain(value: struct_pb2.Value) -> Any:
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) < 2**53:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return struct_to_dict(value.struct_value)
    if kind == "list_value":
        return [_plain(item) for item in value.list_value.values]
    return None  # null_value, or no kind set


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


# The version of ``encode_session``'s output, stored with every record. Raise it whenever the
# encoding changes (a field added to Session and filled here, say); records written by an
# older version are then re-encoded where they are read, and rewritten by
# ``flightlog-server admin reencode-sessions``.
RECORD_VERSION = 1


@functools.lru_cache(maxsize=1024)
def null_custom_fields(ready_field_names: tuple[str, ...]) -> bytes:
    """A serialized Session holding ``null_value`` for each named field; prefix it to a wire
    record so that every Ready field is present. (Cached: an org's Ready fields change
    rarely, and every session it returns needs the prefix.)"""
    message = session_service_pb2.Session()
    for name in ready_field_names:
        message.custom_fields[name].null_value = struct_pb2.NULL_VALUE
    return message.SerializeToString(deterministic=True)


# --- Catalog -----------------------------------------------------------------------------------


def device_message(device: DeviceRecord) -> catalog_service_pb2.Device:
    return catalog_service_pb2.Device(
        device_id=device.device_id,
        org_id=device.org_id,
        name=device.name,
        created=timestamp(device.created),
        created_by=device.created_by,
    )


def dataset_message(dataset: DatasetRecord) -> catalog_service_pb2.Dataset:
    return catalog_service_pb2.Dataset(
        dataset_id=dataset.dataset_id,
        org_id=dataset.org_id,
        name=dataset.name,
        device_id=dataset.device_id or "",
        created=timestamp(dataset.created),
        created_by=dataset.created_by,
    )


def file_message(file: FileRecord) -> catalog_service_pb2.File:
    message = catalog_service_pb2.File(
        file_id=file.file_id,
        org_id=file.org_id,
        dataset_id=file.dataset_id,
        relative_path=file.relative_path,
        size_bytes=file.size_bytes,
        device_id=file.device_id or "",
        unix_epoch_offset_ns=file.unix_epoch_offset_ns,
        created=timestamp(file.created),
        created_by=file.created_by,
    )
    window = file.window
    if window is not None:
        message.min_timestamp_ns, message.max_timestamp_ns = window
    if file.content_sha256 is not None:
        message.content_sha256 = file.content_sha256
    if file.recovery is not None:
        message.recovery.CopyFrom(
            catalog_service_pb2.FileRecovery(
                reason=_RECOVERY_REASON_VALUES[file.recovery.reason],
                detail=file.recovery.detail,
                message_count=file.recovery.message_count,
                readable_bytes=file.recovery.readable_bytes,
            )
        )
    return message


_RECOVERY_REASONS: dict[catalog_service_pb2.RecoveryReason.ValueType, str] = {
    catalog_service_pb2.RECOVERY_REASON_TRUNCATED: "truncated",
    catalog_service_pb2.RECOVERY_REASON_CORRUPT: "corrupt",
}
_RECOVERY_REASON_VALUES = {name: number for number, name in _RECOVERY_REASONS.items()}


def content_sha256(value: str) -> str | None:
    """A content hash as the domain holds it: lowercase, or None when empty."""
    return value.lower() or None


def topic_partition_message(partition: PartitionRecord) -> catalog_service_pb2.TopicPartition:
    """A partition without its extents (``ListFileTopics`` adds them as it reads them)."""
    topic = partition.topic
    return catalog_service_pb2.TopicPartition(
        topic=common_pb2.Topic(
            topic_id=topic.topic_id,
            name=topic.name,
            schema_name=topic.schema_name,
            message_encoding=topic.message_encoding,
        ),
        file_id=partition.file_id,
        message_count=partition.message_count,
    )


def file_extras(request: catalog_service_pb2.RegisterFileRequest) -> FileExtras:
    """What a RegisterFile request says besides the partitions: the content hash (lowercased)
    and the recovery of a salvaged recording."""
    return FileExtras(
        content_sha256=content_sha256(request.content_sha256),
        recovery=(
            RecoverySpec(
                reason=_RECOVERY_REASONS.get(request.recovery.reason),
                detail=request.recovery.detail,
                readable_bytes=request.recovery.readable_bytes,
            )
            if request.HasField("recovery")
            else None
        ),
    )


# --- Custom-field definitions ------------------------------------------------------------------

_cf = custom_field_service_pb2
_ENTITY_TYPES: dict[int, str] = {_cf.ENTITY_TYPE_SESSION: "session"}
_FIELD_TYPES: dict[int, CustomFieldType] = {
    _cf.CUSTOM_FIELD_TYPE_BOOLEAN: CustomFieldType.BOOLEAN,
    _cf.CUSTOM_FIELD_TYPE_ENUM: CustomFieldType.ENUM,
    _cf.CUSTOM_FIELD_TYPE_NUMBER: CustomFieldType.NUMBER,
    _cf.CUSTOM_FIELD_TYPE_STRING: CustomFieldType.STRING,
    _cf.CUSTOM_FIELD_TYPE_TIMESTAMP: CustomFieldType.TIMESTAMP,
}
_FIELD_STATUSES: dict[int, CustomFieldStatus] = {
    _cf.CUSTOM_FIELD_STATUS_CREATING: CustomFieldStatus.CREATING,
    _cf.CUSTOM_FIELD_STATUS_READY: CustomFieldStatus.READY,
    _cf.CUSTOM_FIELD_STATUS_DELETING: CustomFieldStatus.DELETING,
    _cf.CUSTOM_FIELD_STATUS_FAILED: CustomFieldStatus.FAILED,
}


def entity_type_name(value: int) -> str | None:
    """The stored entity type (``session``) of a proto EntityType; None when unspecified or
    unknown."""
    return _ENTITY_TYPES.get(value)


def custom_field_type(value: int) -> CustomFieldType | None:
    """The domain type of a proto CustomFieldType; None when unspecified or unknown."""
    return _FIELD_TYPES.get(value)


def custom_field_status(value: int) -> CustomFieldStatus | None:
    """The domain status of a proto CustomFieldStatus; None when unspecified or unknown."""
    return _FIELD_STATUSES.get(value)


def _proto_value(mapping: dict[int, Any], value: Any) -> Any:
    return next(number for number, v in mapping.items() if v == value)


def custom_field_message(definition: CustomFieldDef) -> custom_field_service_pb2.CustomField:
    return custom_field_service_pb2.CustomField(
        custom_field_id=definition.custom_field_id,
        org_id=definition.org_id,
        entity_type=_proto_value(_ENTITY_TYPES, definition.entity_type),
        name=definition.name,
        type=_proto_value(_FIELD_TYPES, definition.type),
        enum_values=definition.enum_values,
        status=_proto_value(_FIELD_STATUSES, definition.status),
        description=definition.description,
        created=timestamp(definition.created),
        created_by=definition.created_by,
    )


# The create requests that take a ``request_id`` (an idempotency key).
IdempotentRequest = (
    session_service_pb2.CreateSessionRequest
    | session_service_pb2.CreateSessionFromDatasetRequest
    | catalog_service_pb2.CreateDatasetRequest
    | catalog_service_pb2.RegisterFileRequest
)


def request_fingerprint(method: str, request: IdempotentRequest) -> bytes:
    """A digest of a create request without its ``request_id``, to tell a replay (same body)
    from a reused key (another body). The method name is part of it: requests of different
    methods can serialize to the same bytes.

    The ``request_id`` is cleared on the request itself while it is serialized, and put back:
    a copy would cost the request's size again. (RegisterFile's request, never built whole, is
    fingerprinted by ``WireFile.fingerprint``, which reproduces this digest.)"""
    request_id = request.request_id
    request.ClearField("request_id")
    try:
        body = request.SerializeToString(deterministic=True)
    finally:
        request.request_id = request_id
    digest = hashlib.sha256(method.encode() + b"\x00")
    digest.update(body)
    return digest.digest()
