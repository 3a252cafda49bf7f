"""Parsing of command-line values: times, metadata, custom-field values and conditions."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from flightlog._values import EnumValue
from flightlog.custom_fields import CustomField
from flightlog.session import FieldCondition

__all__ = [
    "UsageError",
    "parse_condition",
    "parse_custom_field_value",
    "parse_key_value",
    "parse_metadata_value",
    "parse_time_ns",
]


class UsageError(ValueError):
    """A command-line value is malformed (exit code 2)."""


def parse_time_ns(text: str) -> int:
    """Parse a time as integer Unix-epoch nanoseconds or as ISO 8601 (naive = UTC).

    ISO 8601 fractions keep nanosecond precision: ``2021-03-25T06:22:13.034080451Z``.
    """
    text = text.strip().replace("_", "")
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    match = re.fullmatch(r"(.+?T\d{2}:\d{2}:\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})?", text)
    if not match:
        try:
            moment = dt.datetime.fromisoformat(text)
        except ValueError:
            raise UsageError(
                f"{text!r} is neither nanoseconds nor an ISO 8601 time "
                "(for example 2021-03-25T06:22:13.034080451Z)"
            ) from None
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=dt.UTC)
        return int(moment.timestamp()) * 1_000_000_000 + moment.microsecond * 1000
    base, fraction, zone = match.groups()
    try:
        moment = dt.datetime.fromisoformat(base + ("+00:00" if zone in (None, "Z") else zone))
    except ValueError:
        raise UsageError(f"{text!r} is not a valid ISO 8601 time") from None
    nanos = int((fraction or "").ljust(9, "0")) if fraction else 0
    return int(moment.timestamp()) * 1_000_000_000 + nanos


def parse_key_value(text: str, what: str) -> tuple[str, str]:
    """Split ``KEY=VALUE``; the value may be empty and may contain ``=``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UsageError(f"{what} {text!r} is not of the form KEY=VALUE")
    return key.strip(), value


def parse_metadata_value(text: str) -> Any:
    """Parse a metadata value: JSON when it is valid JSON (numbers, true, objects...), else the
    text itself."""
    try:
        return json.loads(text)
    except ValueError:
        return text


_TRUE = {"true", "yes", "1", "on"}
_FALSE = {"false", "no", "0", "off"}


def parse_custom_field_value(name: str, text: str, fields: Mapping[str, CustomField] | None) -> Any:
    """Convert text to the Python value of a custom field, by the field's declared type.

    Without a definition (``fields`` lacks the name) the text is sent as a string and the
    server decides.
    """
    field = (fields or {}).get(name)
    kind = field.type if field is not None else "string"
    if kind == "boolean":
        lowered = text.strip().lower()
        if lowered in _TRUE:
            return True
        if lowered in _FALSE:
            return False
        raise UsageError(f"custom field {name}: {text!r} is not a boolean (true or false)")
    if kind == "number":
        try:
            return float(text)
        except ValueError:
            raise UsageError(f"custom field {name}: {text!r} is not a number") from None
    if kind == "timestamp":
        seconds, nanos = divmod(parse_time_ns(text), 1_000_000_000)
        return dt.datetime.fromtimestamp(seconds, dt.UTC) + dt.timedelta(microseconds=nanos // 1000)
    if kind == "enum":
        return EnumValue(text)
    return text


_CONDITION = re.compile(
    r"^\s*(?P<field>[A-Za-z][A-Za-z0-9_]*)\s*"
    r"(?P<op>is\s+not\s+null|is\s+null|\s+in\s+|!=|<=|>=|==|=|<|>)\s*(?P<value>.*?)\s*$",
    re.IGNORECASE,
)


def parse_condition(text: str, fields: Mapping[str, CustomField] | None) -> FieldCondition:
    """Parse ``FIELD OP VALUE``: ``=``, ``!=``, ``<``, ``<=``, ``>``, ``>=``,
    ``FIELD in A,B,C``, ``FIELD is null``, ``FIELD is not null``."""
    match = _CONDITION.match(text)
    if not match:
        raise UsageError(
            f"condition {text!r} is not of the form FIELD=VALUE, FIELD>=VALUE, "
            "'FIELD in A,B', 'FIELD is null' or 'FIELD is not null'"
        )
    field = match["field"]
    op = " ".join(match["op"].lower().split())
    value = match["value"]
    convert: Callable[[str], Any] = lambda raw: parse_custom_field_value(field, raw, fields)  # noqa: E731
    if op == "is null":
        return FieldCondition(field, "is_null")
    if op == "is not null":
        return FieldCondition(field, "is_not_null")
    if op == "in":
        values: Sequence[Any] = [convert(v.strip()) for v in value.split(",") if v.strip()]
        return FieldCondition(field, "in", values=values)
    if value == "":
        raise UsageError(f"condition {text!r} has no value")
    return FieldCondition(field, op, value=convert(value))
