"""ListSessions: filters, sort orders and resumable keyset streaming (issue 5).

The request is validated (every offending field named), the custom fields it names are resolved
to Ready definitions, and the listing is read page by page by ``services.session_listing``
(read ahead, one statement a page, no connection held between pages).

Each batch goes out as the *serialized* ``ListSessionsResponse``, built by PostgreSQL from the
stored wire records: field 1 (``sessions``) once per session, as ``0x0A varint(len) prefix
record`` where ``prefix`` is ``convert.null_custom_fields(ready names)`` (protobuf merges
concatenated messages, so every Ready field is present and set values win), followed here by
field 2 (``next_page_token``). Nothing is built or parsed per session in Python. The server
registers ListSessions with a pass-through serializer for these bytes (``rpc.preserialized``). A
page whose sessions exceed 1 MiB goes out as several batches (a larger session alone), so that
a response stays far below clients' default 4 MiB receive limit.

Resume tokens hold the keyset position after the batch's last session (``domain.listing``) and
are bound by ``pagination.fingerprint`` to the org, the filter and the effective order (including
the sort field's ID, so a token does not outlive a field that was deleted and recreated).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import functools
from collections.abc import AsyncIterator, Callable
from typing import Any

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument, InvalidPageToken
from flightlog_server.domain.filtering import FieldKind, OrderKey
from flightlog_server.domain.listing import (
    Comparison,
    FieldCondition,
    KeysetPosition,
    ListPosition,
    SessionFilterSpec,
    SessionOrder,
    SortKey,
    SortValue,
    comparison_allowed,
)
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import (
    Caller,
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
    FieldValue,
)
from flightlog_server.rpc import convert, pagination
from flightlog_server.services.session_listing import (
    OrderedListingQuery,
    SessionListingQuery,
    SessionListings,
)

__all__ = ["list_session_batches"]

_SORT_KEYS = {
    pb.SESSION_SORT_FIELD_UNSPECIFIED: SortKey.CREATED,
    pb.SESSION_SORT_FIELD_CREATED: SortKey.CREATED,
    pb.SESSION_SORT_FIELD_NAME: SortKey.NAME,
    pb.SESSION_SORT_FIELD_START_TIME: SortKey.START_TIME,
    pb.SESSION_SORT_FIELD_DURATION: SortKey.DURATION,
    pb.SESSION_SORT_FIELD_CUSTOM_FIELD: SortKey.CUSTOM_FIELD,
}
_COMPARISONS = {
    pb.COMPARISON_OPERATOR_EQUAL: Comparison.EQUAL,
    pb.COMPARISON_OPERATOR_NOT_EQUAL: Comparison.NOT_EQUAL,
    pb.COMPARISON_OPERATOR_LESS: Comparison.LESS,
    pb.COMPARISON_OPERATOR_LESS_OR_EQUAL: Comparison.LESS_OR_EQUAL,
    pb.COMPARISON_OPERATOR_GREATER: Comparison.GREATER,
    pb.COMPARISON_OPERATOR_GREATER_OR_EQUAL: Comparison.GREATER_OR_EQUAL,
    pb.COMPARISON_OPERATOR_IN: Comparison.IN,
    pb.COMPARISON_OPERATOR_IS_NULL: Comparison.IS_NULL,
    pb.COMPARISON_OPERATOR_IS_NOT_NULL: Comparison.IS_NOT_NULL,
}


# --- entry points ----------------------------------------------------------------------------


async def list_session_batches(
    listings: SessionListings, caller: Caller, request: pb.ListSessionsRequest
) -> AsyncIterator[bytes]:
    """Serialized ``ListSessionsResponse`` batches of the listing (see module doc)."""
    v = Violations()
    page_size = rules.check_page(v, request.page_size)
    if request.order_by and request.HasField("sort"):
        v.add("order_by", "set either sort or order_by, not both")
    _check_filter(v, request.filter)
    key, descending = _check_sort(v, request.sort)
    v.raise_if_any()

    names = [c.field for c in request.filter.custom_fields]
    if request.sort.custom_field:
        names.append(request.sort.custom_field)
    ready, definitions = await listings.definitions(caller, names)
    spec, order = _resolve(request, key, descending, definitions)
    # Field 1 (sessions) of ListSessionsResponse, each session as prefix + stored record.
    framing = listings.framing(convert.null_custom_fields(tuple(ready)))
    query: SessionListingQuery | OrderedListingQuery
    position: ListPosition | KeysetPosition | None
    encode: Callable[[Any], str]
    if request.filter_text or request.order_by:
        # The filter language and multi-key orders (services.session_query).
        query = await listings.ordered_query(
            caller, request.filter_text, request.order_by, spec, order, framing
        )
        scope = pagination.fingerprint(
            "ListSessions/query",
            caller.org_id,
            request.filter.SerializeToString(deterministic=True),
            request.filter_text,
            *[f"{k.field.identity}:{'desc' if k.descending else 'asc'}" for k in query.keys],
            "desc" if query.id_descending else "asc",
        )
        position = _decode_keyset(request.page_token, scope, query)
        encode = functools.partial(_encode_keyset, scope)
    else:
        scope = pagination.fingerprint(
            "ListSessions",
            caller.org_id,
            request.filter.SerializeToString(deterministic=True),
            order.key.value,
            "desc" if order.descending else "asc",
            order.field.custom_field_id if order.field else "",
            order.field.type.value if order.field else "",
        )
        position = _decode_position(request.page_token, scope, order)
        encode = functools.partial(_encode_position, scope)
        query = SessionListingQuery(caller.org_id, spec, order, framing)

    # Closed as soon as this stream ends, however it ends: its read-ahead task goes with it.
    async with contextlib.aclosing(listings.pages(caller, query, position, page_size)) as pages:
        async for page in pages:
            for batch in page.batches:
                yield _batch(batch.records, encode(batch.last))


# --- the wire format -------------------------------------------------------------------------


def _batch(sessions: bytes, token: str) -> bytes:
    """A serialized ListSessionsResponse: the sessions (already framed as field 1 by the
    query, see ``storage.session_listing.Framing``), then the token as field 2."""
    encoded = token.encode()
    size = len(encoded)
    header = bytearray([0x12])
    while size >= 0x80:
        header.append((size & 0x7F) | 0x80)
        size >>= 7
    header.append(size)
    return b"".join([sessions, bytes(header), encoded])


# --- validation ------------------------------------------------------------------------------


def _check_filter(v: Violations, f: pb.SessionFilter) -> None:
    """The checks that need no database; custom fields are checked in ``_resolve``."""
    rules.check_tags(v, "filter.tags_all", f.tags_all)
    rules.check_tags(v, "filter.tags_any", f.tags_any)
    if f.device_id:
        rules.check_device_id(v, "filter.device_id", f.device_id)
    rules.check_id(v, "filter.dataset_id", f.dataset_id, "dataset", required=False)
    if f.HasField("overlaps") and f.overlaps.min_timestamp_ns > f.overlaps.max_timestamp_ns:
        v.add("filter.overlaps.max_timestamp_ns", "must not be less than min_timestamp_ns")
    rules.check_name(v, "filter.name_contains", f.name_contains)
    if len(f.custom_fields) > rules.MAX_CUSTOM_FIELD_CONDITIONS:
        v.add(
            "filter.custom_fields",
            f"must hold at most {rules.MAX_CUSTOM_FIELD_CONDITIONS} conditions",
        )
    elif sum(len(c.values) for c in f.custom_fields) > rules.MAX_IN_VALUES_PER_FILTER:
        v.add(
            "filter.custom_fields",
            f"must hold at most {rules.MAX_IN_VALUES_PER_FILTER:,} IN values in all",
        )


def _check_sort(v: Violations, sort: pb.SessionSort) -> tuple[SortKey, bool]:
    key = _SORT_KEYS.get(sort.field)
    if key is None:
        v.add("sort.field", "is not a known sort field")
        key = SortKey.CREATED
    if sort.direction == pb.SORT_DIRECTION_UNSPECIFIED:
        descending = key is SortKey.CREATED
    elif sort.direction in (pb.SORT_DIRECTION_ASCENDING, pb.SORT_DIRECTION_DESCENDING):
        descending = sort.direction == pb.SORT_DIRECTION_DESCENDING
    else:
        v.add("sort.direction", "is not a known sort direction")
        descending = False
    if key is SortKey.CUSTOM_FIELD and not sort.custom_field:
        v.add("sort.custom_field", "is required to sort by SESSION_SORT_FIELD_CUSTOM_FIELD")
    elif key is not SortKey.CUSTOM_FIELD and sort.custom_field:
        v.add(
            "sort.custom_field", "must be empty unless sorting by SESSION_SORT_FIELD_CUSTOM_FIELD"
        )
    return key, descending


def _ready(v: Violations, field: str, name: str, found: CustomFieldDef | None) -> bool:
    if not name:
        return v.check(False, field, "is required")
    if found is None:
        return v.check(False, field, f"{name!r} is not a custom field defined for sessions")
    return v.check(
        found.status is CustomFieldStatus.READY,
        field,
        f"custom field {name!r} is {found.status.value}, not ready",
    )


def _resolve(
    request: pb.ListSessionsRequest,
    key: SortKey,
    descending: bool,
    definitions: dict[str, CustomFieldDef],
) -> tuple[SessionFilterSpec, SessionOrder]:
    """The filter and order with custom fields resolved; INVALID_ARGUMENT naming every bad one."""
    v = Violations()
    f = request.filter
    conditions = []
    for i, sent in enumerate(f.custom_fields):
        condition = _condition(v, f"filter.custom_fields[{i}]", sent, definitions)
        if condition is not None:
            conditions.append(condition)
    sort_field = None
    if key is SortKey.CUSTOM_FIELD and request.sort.custom_field:
        name = request.sort.custom_field
        if _ready(v, "sort.custom_field", name, definitions.get(name)):
            sort_field = definitions[name]
    v.raise_if_any()
    spec = SessionFilterSpec(
        tags_all=tuple(rules.dedupe(f.tags_all)),
        tags_any=tuple(rules.dedupe(f.tags_any)),
        device_id=f.device_id or None,
        dataset_id=f.dataset_id or None,
        overlaps=(
            rules.clamp_to_epoch(f.overlaps.min_timestamp_ns),
            rules.clamp_to_epoch(f.overlaps.max_timestamp_ns),
        )
        if f.HasField("overlaps")
        else None,
        conditions=tuple(conditions),
        name_contains=f.name_contains or None,
    )
    return spec, SessionOrder(key, descending, sort_field)


def _condition(
    v: Violations,
    path: str,
    sent: pb.CustomFieldCondition,
    definitions: dict[str, CustomFieldDef],
) -> FieldCondition | None:
    definition = definitions.get(sent.field)
    ok = _ready(v, f"{path}.field", sent.field, definition)
    comparison = _COMPARISONS.get(sent.operator)
    if comparison is None:
        what = "is required" if sent.operator == 0 else "is not a known operator"
        v.add(f"{path}.operator", what)
        return None
    if not ok or definition is None:
        return None
    if not comparison_allowed(comparison, definition.type):
        name = pb.ComparisonOperator.Name(sent.operator)
        v.add(f"{path}.operator", f"{name} does not apply to {definition.type.value} fields")
        return None
    operands: list[FieldValue] = []
    if comparison is Comparison.IN:
        if sent.HasField("value"):
            v.add(f"{path}.value", "must be empty with IN; put the operands in values")
        if not 1 <= len(sent.values) <= rules.MAX_IN_VALUES:
            v.add(f"{path}.values", f"must hold 1 to {rules.MAX_IN_VALUES} values")
            return None  # not one operand is looked at
        for j, value in enumerate(sent.values):
            operand = _operand(v, f"{path}.values[{j}]", definition, value)
            if operand is not None:
                operands.append(operand)
    elif comparison in (Comparison.IS_NULL, Comparison.IS_NOT_NULL):
        if sent.HasField("value"):
            v.add(f"{path}.value", "must be empty with IS_NULL and IS_NOT_NULL")
        if sent.values:
            v.add(f"{path}.values", "must be empty with IS_NULL and IS_NOT_NULL")
    else:
        if sent.values:
            v.add(f"{path}.values", "must be empty unless the operator is IN")
        if not sent.HasField("value"):
            v.add(f"{path}.value", "is required with this operator")
        else:
            operand = _operand(v, f"{path}.value", definition, sent.value)
            if operand is not None:
                operands.append(operand)
    return FieldCondition(definition, comparison, tuple(operands))


def _operand(
    v: Violations, path: str, definition: CustomFieldDef, value: common_pb2.CustomFieldValue
) -> FieldValue | None:
    """A typed operand; a null or wrongly typed one is a violation."""
    if value.WhichOneof("kind") == "null_value":
        v.add(path, "must be a value; match unset fields with IS_NULL")
        return None
    before = len(v.items)
    try:
        wire = convert.wire_value(path, value)
    except InvalidArgument as e:
        v.items.extend(e.violations)
        return None
    ok, operand = rules.coerce_field_value(v, path, definition, wire)
    return operand if ok and len(v.items) == before else None


# --- resume tokens ---------------------------------------------------------------------------


def _encode_position(scope: str, position: ListPosition) -> str:
    value: Any = position.value
    if isinstance(value, dt.datetime):
        value = value.isoformat()
    return pagination.encode(scope, [1 if position.absent else 0, value, position.session_id])


def _decode_position(token: str, scope: str, order: SessionOrder) -> ListPosition | None:
    raw = pagination.decode(token, scope)
    if raw is None:
        return None
    if len(raw) != 3 or raw[0] not in (0, 1) or not isinstance(raw[2], str):
        raise InvalidPageToken("is not a token this server issued")
    absent = raw[0] == 1
    if absent:
        if raw[1] is not None or not order.has_absent_values:
            raise InvalidPageToken("is not a token this server issued")
        return ListPosition(True, None, raw[2])
    return ListPosition(False, _sort_value(raw[1], order), raw[2])


def _sort_value(value: Any, order: SessionOrder) -> SortValue:
    """The position's sort value with its Python type checked against the order's."""
    kind: CustomFieldType | SortKey = order.field.type if order.field else order.key
    try:
        if kind is SortKey.CREATED and isinstance(value, str):
            parsed = dt.datetime.fromisoformat(value)
            if parsed.tzinfo is not None:
                return parsed
        elif kind in (SortKey.NAME, CustomFieldType.STRING, CustomFieldType.ENUM):
            if isinstance(value, str):
                return value
        elif kind in (SortKey.START_TIME, SortKey.DURATION, CustomFieldType.TIMESTAMP):
            # Custom-field timestamps are nanoseconds since the epoch (domain.types.Instant).
            if isinstance(value, int) and not isinstance(value, bool):
                return value
        elif kind is CustomFieldType.NUMBER:
            if isinstance(value, int | float) and not isinstance(value, bool):
                return float(value)
        elif kind is CustomFieldType.BOOLEAN and isinstance(value, bool):
            return value
    except ValueError:
        pass
    raise InvalidPageToken("is not a token this server issued")


def _encode_keyset(scope: str, position: KeysetPosition) -> str:
    values = [v.isoformat() if isinstance(v, dt.datetime) else v for v in position.values]
    return pagination.encode(scope, [*values, position.session_id])


def _decode_keyset(token: str, scope: str, query: OrderedListingQuery) -> KeysetPosition | None:
    raw = pagination.decode(token, scope)
    if raw is None:
        return None
    if len(raw) != len(query.keys) + 1 or not isinstance(raw[-1], str):
        raise InvalidPageToken("is not a token this server issued")
    values = tuple(_key_value(v, k) for v, k in zip(raw[:-1], query.keys, strict=True))
    return KeysetPosition(values, raw[-1])


def _key_value(value: Any, key: OrderKey) -> SortValue | None:
    """A position's value of one key, its Python type checked against the key's."""
    target = key.field
    if value is None and not target.always_set:
        return None
    if target.custom_field is not None:
        return _sort_value(value, SessionOrder(SortKey.CUSTOM_FIELD, False, target.custom_field))
    if target.kind is FieldKind.METRIC:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif target.kind in (FieldKind.CREATED, FieldKind.MODIFIED):
        return _sort_value(value, SessionOrder(SortKey.CREATED))
    elif target.kind in (FieldKind.NAME, FieldKind.SESSION_ID):
        return _sort_value(value, SessionOrder(SortKey.NAME))
    elif target.kind in (FieldKind.START_TIME, FieldKind.END_TIME, FieldKind.DURATION):
        return _sort_value(value, SessionOrder(SortKey.START_TIME))
    raise InvalidPageToken("is not a token this server issued")
