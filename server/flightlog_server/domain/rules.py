"""The rules of the domain, as pure functions: identifiers, limits, changesets, typed values.

Validators collect every violation of a request before raising, so a caller learns about all
offending fields at once (one ``BadRequest`` violation per field).
"""

from __future__ import annotations

import copy
import json
import math
import re
import secrets
from collections.abc import Callable, Generator, Iterable, Sequence
from typing import Any

from flightlog_server.domain.errors import FieldViolation, InvalidArgument
from flightlog_server.domain.types import (
    ContributionSpec,
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
    FieldValue,
    Instant,
    WireValue,
)

# --- Limits (documented in protos/flightlog/v1/common.proto) -----------------------------------

# A request message, as sent (uncompressed). protobuf's C parser builds the whole message at once
# holding the GIL, so no other call runs meanwhile; its densest input (empty elements of repeated
# fields) is read before it is built (``MAX_REQUEST_ITEMS``, ``MAX_REQUEST_BUILD_RATIO``).
MAX_REQUEST_BYTES = 1 << 20
# Items in one request: elements of repeated message fields and map entries, at any depth, all
# counted together before the request is built (``rpc.request_items``). An empty item is two bytes,
# so 1 MiB could hold 524,288; the most any other limit allows is RegisterFile's 110,000 (10,000
# partitions and 100,000 extents).
MAX_REQUEST_ITEMS = 1 << 17
# The memory a request's repeated fields take once built, at most, as a multiple of the request's
# size, a request counting as REQUEST_BUILD_FLOOR_BYTES at least: read on the wire before the
# request is built (``rpc.request_items``). protobuf lays out an empty element (two bytes on the
# wire) in 42 to 117 bytes; one that carries data in a few times its size. 8: protobuf allocates
# within 10% of the charge, and the request's own bytes come on top, so that a request stays
# under 10 times its size. (RegisterFile, whose limits allow 100,000 extents of two bytes, 26
# times their size once built, and AddSessionFiles are read piece by piece instead, never built
# whole: ``rpc.piecewise``.)
MAX_REQUEST_BUILD_RATIO = 8
REQUEST_BUILD_FLOOR_BYTES = 256 * 1024
MAX_NAME_CHARS = 120
MAX_DESCRIPTION_CHARS = 4096
MAX_TAGS = 256
MAX_TAG_CHARS = 128
MAX_METADATA_BYTES = 64 * 1024
MAX_METADATA_DEPTH = 16
MAX_FILES_PER_CALL = 10_000
MAX_DEVICE_IDS_PER_CALL = 256
MAX_METRICS_PER_CALL = 1_000
MAX_PAGE_SIZE = 1_000
DEFAULT_PAGE_SIZE = 500
MAX_STRING_VALUE_CHARS = 1024
MAX_REQUEST_ID_CHARS = 128
MAX_ENUM_VALUES = 256
MAX_CUSTOM_FIELD_CONDITIONS = 16
MAX_IN_VALUES = 1_000
# IN operands of all of a filter's conditions together: each costs ~20 µs to compile into SQL, so
# 16 conditions of 1,000 held the event loop for 0.3 s.
MAX_IN_VALUES_PER_FILTER = 1_000
# Every time placed on the Unix epoch (windows, extents plus offsets, hence session bounds) lies
# strictly within ±2**62 ns (about the years 1824 to 2116), so that differences of two of them
# (a session's duration, which the database indexes) always fit in int64.
EPOCH_NS_LIMIT = 2**62


def is_epoch_ns(value: int) -> bool:
    return -EPOCH_NS_LIMIT < value < EPOCH_NS_LIMIT


def clamp_to_epoch(value: int) -> int:
    """A query bound brought within the epoch range, where every stored time lies: the answer
    does not change, and arithmetic on the bound cannot overflow."""
    return max(-EPOCH_NS_LIMIT, min(EPOCH_NS_LIMIT, value))


ID_PREFIXES = {
    "session": "ss_",
    "file": "fl_",
    "dataset": "ds_",
    "topic": "ti_",
    "custom_field": "cf_",
    "org": "og_",
    "metric": "mt_",
    "principal": "pr_",
    "api_key": "ak_",
}

_ID_BODY = re.compile(r"^[a-z0-9]{1,60}$")
_DEVICE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:\-]{0,127}$")
CUSTOM_FIELD_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")
METRIC_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.\-/]{0,127}$")


# Random byte -> base-32 character: 256 is a multiple of 32, so each character is uniform.
_ID_ALPHABET = b"abcdefghijklmnopqrstuvwxyz234567"
_BYTE_TO_ID_CHAR = bytes(_ID_ALPHABET[b % 32] for b in range(256))


def new_id(kind: str) -> str:
    """A random, prefixed identifier: ``ss_`` and 20 base-32 characters (100 bits).

    About 1 µs: a registration may make 10,000 (one per new topic)."""
    body = secrets.token_bytes(20).translate(_BYTE_TO_ID_CHAR).decode("ascii")
    return ID_PREFIXES[kind] + body


# A request can break a rule thousands of times (one violation per extent of a file); past this
# many, violations are only counted, so that a bad request costs no more than a good one.
MAX_VIOLATIONS_KEPT = 100


class Violations:
    """Collects field violations; ``raise_if_any`` raises them together."""

    def __init__(self) -> None:
        self.items: list[FieldViolation] = []
        self.omitted = 0

    def add(self, field: str, description: str) -> None:
        if len(self.items) < MAX_VIOLATIONS_KEPT:
            self.items.append(FieldViolation(field, description))
        else:
            self.omitted += 1

    def check(self, ok: bool, field: str, description: str) -> bool:
        if not ok:
            self.add(field, description)
        return ok

    def raise_if_any(self) -> None:
        if self.items:
            raise InvalidArgument(self.items, omitted=self.omitted)


def is_valid_id(value: str, kind: str) -> bool:
    prefix = ID_PREFIXES[kind]
    return value.startswith(prefix) and bool(_ID_BODY.fullmatch(value[len(prefix) :]))


def check_id(v: Violations, field: str, value: str, kind: str, *, required: bool = True) -> bool:
    """Checks an identifier's shape (an ID that cannot exist is INVALID_ARGUMENT)."""
    if not value:
        return v.check(not required, field, "is required")
    return v.check(
        is_valid_id(value, kind),
        field,
        f"must be a {kind.replace('_', ' ')} ID starting with {ID_PREFIXES[kind]!r}",
    )


def require_id(field: str, value: str, kind: str) -> None:
    v = Violations()
    check_id(v, field, value, kind)
    v.raise_if_any()


def check_device_id(v: Violations, field: str, value: str) -> bool:
    if not value:
        return v.check(False, field, "is required")
    return v.check(
        bool(_DEVICE_ID.fullmatch(value)),
        field,
        "must be 1 to 128 letters, digits, '_', '-', '.' or ':', starting with a letter or digit",
    )


def check_text(
    v: Violations, field: str, value: str, max_chars: int, *, allow_newlines: bool = True
) -> None:
    if len(value) > max_chars:
        v.add(field, f"must be at most {max_chars} characters")
    elif "\x00" in value:
        v.add(field, "must not contain NUL characters")
    elif not allow_newlines and any(c in value for c in "\r\n"):
        v.add(field, "must not contain line breaks")


def check_name(v: Violations, field: str, value: str) -> None:
    check_text(v, field, value, MAX_NAME_CHARS, allow_newlines=False)


def check_page(v: Violations, page_size: int) -> int:
    """Returns the effective batch size."""
    if page_size == 0:
        return DEFAULT_PAGE_SIZE
    v.check(1 <= page_size <= MAX_PAGE_SIZE, "page_size", f"must be 0 to {MAX_PAGE_SIZE}")
    return max(1, min(page_size, MAX_PAGE_SIZE))


def check_count(v: Violations, field: str, count: int, limit: int, items: str) -> bool:
    """False, with a violation, when a repeated field holds more than ``limit`` items. Checked
    before the items are looked at: a request over a count limit then costs nothing per item."""
    return v.check(count <= limit, field, f"must hold at most {limit:,} {items}")


def check_request_id(v: Violations, value: str) -> None:
    if value:
        check_text(v, "request_id", value, MAX_REQUEST_ID_CHARS, allow_newlines=False)


# --- Tags and metadata -------------------------------------------------------------------------


def check_tags(v: Violations, field: str, tags: Sequence[str]) -> None:
    if len(tags) > MAX_TAGS:
        v.add(field, f"must hold at most {MAX_TAGS} tags")
        return
    for i, tag in enumerate(tags):
        if not tag:
            v.add(f"{field}[{i}]", "must not be empty")
        else:
            check_text(v, f"{field}[{i}]", tag, MAX_TAG_CHARS, allow_newlines=False)


def dedupe(values: Iterable[str]) -> list[str]:
    """Removes duplicates, keeping the first occurrence's position."""
    return list(dict.fromkeys(values))


def apply_tag_changes(tags: Sequence[str], put: Sequence[str], remove: Sequence[str]) -> list[str]:
    """Puts before removes: a tag both put and removed ends up absent."""
    removed = set(remove)
    return [t for t in dedupe([*tags, *put]) if t not in removed]


def _depth(value: Any) -> int:
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    return 0


def check_metadata(v: Violations, field: str, metadata: dict[str, Any]) -> None:
    """Size and depth limits, and JSON text PostgreSQL can store (no NUL characters, no NaN or
    infinite numbers: a Struct can carry them, JSON cannot)."""
    if _depth(metadata) > MAX_METADATA_DEPTH:
        v.add(field, f"must be nested at most {MAX_METADATA_DEPTH} levels deep")
        return
    try:
        encoded = json.dumps(metadata, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        v.add(field, "numbers must be finite (NaN and infinities cannot be stored as JSON)")
        return
    if len(encoded.encode()) > MAX_METADATA_BYTES:
        v.add(field, f"must be at most {MAX_METADATA_BYTES} bytes as JSON")
    elif "\\u0000" in encoded or "\x00" in encoded:
        v.add(field, "must not contain NUL characters")


def check_metadata_path(v: Violations, field: str, path: str) -> None:
    if not path or any(not part for part in path.split(".")):
        v.add(field, "must be a dot path of non-empty keys, like 'weather.condition'")
    else:
        check_text(v, field, path, 1024, allow_newlines=False)


def apply_metadata_changes(
    metadata: dict[str, Any], put_fields: dict[str, Any], remove_fields: Sequence[str]
) -> dict[str, Any]:
    """Applies puts (dot paths create nested objects) and then removes (dot paths; objects left
    empty by a removal are pruned). The input is not modified."""
    result = copy.deepcopy(metadata)
    for path, value in put_fields.items():
        *parents, leaf = path.split(".")
        node = result
        for key in parents:
            child = node.get(key)
            if not isinstance(child, dict):
                child = {}
                node[key] = child
            node = child
        node[leaf] = copy.deepcopy(value)
    for path in remove_fields:
        _remove_path(result, path.split("."))
    return result


def _remove_path(node: dict[str, Any], keys: list[str]) -> None:
    head, *rest = keys
    if not rest:
        node.pop(head, None)
        return
    child = node.get(head)
    if isinstance(child, dict):
        _remove_path(child, rest)
        if not child:
            del node[head]


# --- Contributions -----------------------------------------------------------------------------


def check_contributions(
    v: Violations, specs: Sequence[ContributionSpec]
) -> Generator[None, None, None]:
    """The rules of AddSessionFiles' files (their number was checked as the request was read).
    A generator that yields every ``_SPECS_PER_STEP`` specs, for ``pacing.run_sliced``."""
    if not specs:
        v.add("files", "must name at least one file")
    for i, spec in enumerate(specs):
        field = f"files[{i}]"
        check_id(v, f"{field}.file_id", spec.file_id, "file")
        if (spec.range_min_ns is None) != (spec.range_max_ns is None):
            missing = (
                "range_max_timestamp_ns"
                if spec.range_max_ns is None
                else ("range_min_timestamp_ns")
            )
            v.add(f"{field}.{missing}", "both window bounds must be set together, or neither")
        elif spec.range_min_ns is not None and not is_epoch_ns(spec.range_min_ns):
            v.add(f"{field}.range_min_timestamp_ns", "must lie within ±2^62 ns of the Unix epoch")
        elif spec.range_max_ns is not None and not is_epoch_ns(spec.range_max_ns):
            v.add(f"{field}.range_max_timestamp_ns", "must lie within ±2^62 ns of the Unix epoch")
        elif (
            spec.range_min_ns is not None
            and spec.range_max_ns is not None
            and spec.range_min_ns > spec.range_max_ns
        ):
            v.add(
                f"{field}.range_min_timestamp_ns",
                "must not be greater than range_max_timestamp_ns",
            )
        if i % _SPECS_PER_STEP == _SPECS_PER_STEP - 1:
            yield
    repeats = yield from _repeats(lambda: (spec.file_id for spec in specs))
    for i, first in repeats:
        v.add(f"files[{i}].file_id", f"repeats files[{first}]; name a file once")


_SPECS_PER_STEP = 1000
_HASH_BITS = 1 << 20  # a 128 KiB bitmap


def _repeats(values: Callable[[], Iterable[str]]) -> Generator[None, None, list[tuple[int, int]]]:
    """(index, first index) of each of ``values()`` equal to an earlier one, in order, without
    keeping them all (10,000 file IDs and a dict of them took 1 MB): a bitmap of their hashes
    finds the candidates, values whose bit an earlier one set, and a second pass, made only
    when there are any, compares the values behind those bits. Values built to collide cost at
    most what the dict did."""
    bitmap = bytearray(_HASH_BITS // 8)
    candidates: set[int] = set()
    for i, value in enumerate(values()):
        bit = hash(value) % _HASH_BITS
        byte, mask = bit >> 3, 1 << (bit & 7)
        if bitmap[byte] & mask:
            candidates.add(bit)
        bitmap[byte] |= mask
        if i % _SPECS_PER_STEP == _SPECS_PER_STEP - 1:
            yield
    repeats: list[tuple[int, int]] = []
    if not candidates:
        return repeats
    first: dict[str, int] = {}
    for i, value in enumerate(values()):
        if hash(value) % _HASH_BITS in candidates:
            if value in first:
                repeats.append((i, first[value]))
            else:
                first[value] = i
        if i % _SPECS_PER_STEP == _SPECS_PER_STEP - 1:
            yield
    return repeats


# --- Custom fields -----------------------------------------------------------------------------


def check_custom_field_definition(
    v: Violations,
    name: str,
    type_: CustomFieldType | None,
    enum_values: Sequence[str],
    description: str,
) -> None:
    v.check(bool(CUSTOM_FIELD_NAME.fullmatch(name)), "name", "must match ^[a-z][a-z0-9_]{0,62}$")
    if type_ is None:
        v.add("type", "is required")
    elif type_ is CustomFieldType.ENUM:
        check_enum_values(v, "enum_values", enum_values, required=True)
    elif enum_values:
        v.add("enum_values", "is only allowed for ENUM fields")
    check_text(v, "description", description, 1024)


def check_enum_values(v: Violations, field: str, values: Sequence[str], *, required: bool) -> None:
    if required and not values:
        v.add(field, "an ENUM field needs at least one value")
    if len(values) > MAX_ENUM_VALUES:
        v.add(field, f"must hold at most {MAX_ENUM_VALUES} values")
        return
    if len(set(values)) != len(values):
        v.add(field, "must not repeat a value")
    for i, value in enumerate(values):
        if not value:
            v.add(f"{field}[{i}]", "must not be empty")
        else:
            check_text(v, f"{field}[{i}]", value, 128, allow_newlines=False)


def coerce_field_value(
    v: Violations, field: str, definition: CustomFieldDef | None, value: WireValue
) -> tuple[bool, FieldValue | None]:
    """Checks a value against its field's definition.

    Returns (ok, value); ``None`` as the value means "clear". ENUM fields accept ``enum_value``
    and ``string_value`` alike, so clients that do not know a field's type can send strings.
    """
    if definition is None:
        v.add(field, "is not a custom field defined for sessions in this org")
        return False, None
    if definition.status is not CustomFieldStatus.READY:
        v.add(field, f"custom field is {definition.status.value}, not ready")
        return False, None
    if value.kind == "null":
        return True, None
    expected = definition.type
    if expected is CustomFieldType.BOOLEAN and value.kind == "bool":
        return True, value.value
    if expected is CustomFieldType.NUMBER and value.kind == "number":
        assert isinstance(value.value, float)
        if not math.isfinite(value.value):
            v.add(field, "must be a finite number")
            return False, None
        return True, value.value
    if expected is CustomFieldType.STRING and value.kind == "string":
        assert isinstance(value.value, str)
        before = len(v.items)
        check_text(v, field, value.value, MAX_STRING_VALUE_CHARS)
        return len(v.items) == before, value.value
    if expected is CustomFieldType.ENUM and value.kind in ("enum", "string"):
        if value.value not in definition.enum_values:
            allowed = ", ".join(definition.enum_values)
            v.add(field, f"must be one of the field's values: {allowed}")
            return False, None
        return True, value.value
    if expected is CustomFieldType.TIMESTAMP and value.kind == "timestamp":
        assert isinstance(value.value, Instant)
        return True, value.value
    v.add(field, f"must be a {expected.value} value, got {value.kind}")
    return False, None
