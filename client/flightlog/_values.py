"""Conversions between Python values and their wire forms.

- Metadata: ``dict[str, Any]`` <-> ``google.protobuf.Struct``. Struct numbers are doubles, so a
  number that is integral on the way back becomes an ``int`` again (``2048.0`` reads as
  ``2048``); integers beyond 2**53 cannot be represented exactly and are rejected.
- Custom-field values: Python values <-> ``flightlog.v1.CustomFieldValue``:

  ======================  =================================================
  Python                  wire
  ======================  =================================================
  ``None``                ``null_value``
  ``bool``                ``bool_value``
  ``int``, ``float``      ``number_value``
  ``str``                 ``string_value`` (the server accepts it for ENUM
                          fields too: the client does not look types up)
  :class:`EnumValue`      ``enum_value``
  ``datetime.datetime``   ``timestamp_value`` (naive datetimes are UTC)
  ======================  =================================================

  Back from the wire, values are ``None``, ``bool``, ``float``, ``str`` (for both strings and
  enums) or timezone-aware UTC ``datetime``.
- Timestamps: ``google.protobuf.Timestamp`` <-> aware UTC ``datetime``.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Mapping
from typing import Any, Final

from google.protobuf import struct_pb2, timestamp_pb2

from flightlog.v1 import common_pb2

__all__ = [
    "EnumValue",
    "NotSet",
    "NotSetType",
    "custom_field_value_from_proto",
    "custom_field_value_to_proto",
    "custom_fields_to_proto",
    "datetime_from_proto",
    "datetime_to_proto",
    "metadata_from_proto",
    "metadata_to_proto",
]

_MAX_EXACT_INT = 2**53


class NotSetType(enum.Enum):
    """Type of :data:`NotSet`, the "argument not given" sentinel.

    It is distinct from ``None``, which means "clear this field" where a field can be cleared.
    """

    NotSet = "NotSet"

    def __repr__(self) -> str:
        """Return ``NotSet``."""
        return "NotSet"

    def __bool__(self) -> bool:
        """``NotSet`` is falsy, like ``None``."""
        return False


NotSet: Final = NotSetType.NotSet
"""Sentinel for "leave unchanged", distinct from ``None`` ("clear")."""


class EnumValue(str):
    """A string sent as ``enum_value`` rather than ``string_value``.

    Plain strings work for ENUM fields too; use this to state the intent explicitly.
    """

    __slots__ = ()


def _to_json_compatible(value: Any, path: str) -> Any:
    """Return ``value`` converted to what a Struct can hold, or raise a clear error."""
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, int):
        if abs(value) > _MAX_EXACT_INT:
            raise ValueError(
                f"metadata {path or 'value'}: {value} is too large to be stored exactly "
                "(metadata numbers are doubles); store it as a string"
            )
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"metadata {path or 'value'}: {value} is not a finite number")
        return value
    if isinstance(value, dt.datetime | dt.date):
        return value.isoformat()
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"metadata {path or 'value'}: key {key!r} is not a string")
            out[key] = _to_json_compatible(item, f"{path}.{key}" if path else key)
        return out
    if isinstance(value, list | tuple):
        return [_to_json_compatible(item, f"{path}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"metadata {path or 'value'}: {type(value).__name__} values cannot be stored "
        "(use str, int, float, bool, None, lists and dicts)"
    )


def metadata_to_proto(metadata: Mapping[str, Any]) -> struct_pb2.Struct:
    """Convert a metadata dict to a ``Struct``.

    Datetimes and dates are stored as ISO 8601 strings; tuples as lists.

    Raises:
        TypeError: A value or key has a type a Struct cannot hold.
        ValueError: A number is not finite or is an integer too large for a double.
    """
    struct = struct_pb2.Struct()
    struct.update(_to_json_compatible(metadata, ""))
    return struct


def _from_value(value: struct_pb2.Value) -> Any:
    """Convert one ``Value``, turning integral numbers back into ``int``."""
    kind = value.WhichOneof("kind")
    if kind == "number_value":
        number = value.number_value
        if math.isfinite(number) and number.is_integer() and abs(number) <= _MAX_EXACT_INT:
            return int(number)
        return number
    if kind == "string_value":
        return value.string_value
    if kind == "bool_value":
        return value.bool_value
    if kind == "struct_value":
        return metadata_from_proto(value.struct_value)
    if kind == "list_value":
        return [_from_value(item) for item in value.list_value.values]
    return None


def metadata_from_proto(struct: struct_pb2.Struct) -> dict[str, Any]:
    """Convert a ``Struct`` to a dict; integral numbers come back as ``int``."""
    return {key: _from_value(value) for key, value in struct.fields.items()}


def datetime_to_proto(value: dt.datetime) -> timestamp_pb2.Timestamp:
    """Convert a datetime to a ``Timestamp``; a naive datetime is taken as UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    timestamp = timestamp_pb2.Timestamp()
    timestamp.FromDatetime(value)
    return timestamp


def datetime_from_proto(timestamp: timestamp_pb2.Timestamp) -> dt.datetime:
    """Convert a ``Timestamp`` to an aware UTC datetime (microsecond precision)."""
    return timestamp.ToDatetime(tzinfo=dt.UTC)


def custom_field_value_to_proto(value: Any) -> common_pb2.CustomFieldValue:
    """Convert a Python value to a ``CustomFieldValue`` (see the module table).

    A ``CustomFieldValue`` message is passed through unchanged.

    Raises:
        TypeError: The value has no custom-field representation.
    """
    if isinstance(value, common_pb2.CustomFieldValue):
        return value
    if value is None:
        return common_pb2.CustomFieldValue(null_value=struct_pb2.NULL_VALUE)
    if isinstance(value, bool):
        return common_pb2.CustomFieldValue(bool_value=value)
    if isinstance(value, EnumValue):
        return common_pb2.CustomFieldValue(enum_value=str(value))
    if isinstance(value, str):
        return common_pb2.CustomFieldValue(string_value=value)
    if isinstance(value, int | float):
        return common_pb2.CustomFieldValue(number_value=float(value))
    if isinstance(value, dt.datetime):
        return common_pb2.CustomFieldValue(timestamp_value=datetime_to_proto(value))
    raise TypeError(
        f"{type(value).__name__} is not a custom-field value "
        "(use bool, str, int, float, datetime or None)"
    )


def custom_field_value_from_proto(value: common_pb2.CustomFieldValue) -> Any:
    """Convert a ``CustomFieldValue`` to ``None``, ``bool``, ``float``, ``str`` or ``datetime``."""
    kind = value.WhichOneof("kind")
    if kind == "bool_value":
        return value.bool_value
    if kind == "enum_value":
        return value.enum_value
    if kind == "number_value":
        return value.number_value
    if kind == "string_value":
        return value.string_value
    if kind == "timestamp_value":
        return datetime_from_proto(value.timestamp_value)
    return None


def custom_fields_to_proto(
    values: Mapping[str, Any],
) -> dict[str, common_pb2.CustomFieldValue]:
    """Convert a ``{name: value}`` mapping of custom-field values to wire values."""
    return {name: custom_field_value_to_proto(value) for name, value in values.items()}
