"""The SQL of the filter language and of multi-key orders (``domain.filtering``).

``condition`` turns a resolved filter into one SQLAlchemy Core condition over a sessions table
(or alias), every value a bound parameter. Each comparison is two-valued (a session without the
value matches no comparison, and NOT of it matches), so AND, OR and NOT mean what they say
without SQL's NULL logic leaking through: session columns are guarded by ``IS NOT NULL``,
custom fields, metrics, devices, datasets and files are ``EXISTS`` on the rows that hold them,
by their primary keys or the value indexes (``session_custom_field_values`` by field and value,
``session_metric_values`` by metric and value), tags are ``@>`` / ``&&`` (GIN ``ix_sessions_tags``).

``OrderedListingQuery`` reads a listing in a multi-key order with keyset pages, like
``storage.session_listing`` does for one key: the sessions with a value of the *first* key come
first, read in that key's order (walking its index: ``ix_sessions_<key>`` for a session column,
the value index joined to the sessions for a custom field or a metric), then those without it;
the other keys are sorted within (PostgreSQL's incremental sort), with absent values last in
either direction, and ``session_id`` breaks ties. The keyset condition after a position is the
lexicographic "after" over (key values with NULL last..., session_id).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

from psycopg import AsyncRawCursor
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Double,
    FromClause,
    Numeric,
    Text,
    and_,
    exists,
    false,
    func,
    literal,
    literal_column,
    not_,
    null,
    or_,
    select,
    true,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.types import TypeEngine

from flightlog_server.domain import filtering as f
from flightlog_server.domain.filtering import (
    AllOf,
    AnyOf,
    Condition,
    Field,
    FieldKind,
    Names,
    NoneOf,
    Op,
    OrderKey,
    Resolved,
    ValueType,
)
from flightlog_server.domain.listing import KeysetPosition, SessionFilterSpec
from flightlog_server.domain.types import CustomFieldType, Instant
from flightlog_server.storage import models as m
from flightlog_server.storage.session_listing import (
    _DIALECT,
    Batch,
    Framing,
    Page,
    _Compiled,
    _filter_params,
    _filters,
    _framed,
    current_record,
    escape_like,
    no_row_where,
)

__all__ = [
    "OrderedListingQuery",
    "condition",
    "load_names",
    "session_filter_condition",
]

_SESSIONS = m.table(m.Session)
_VALUES = m.table(m.SessionCustomFieldValue)
_METRIC_VALUES = m.table(m.SessionMetricValue)
_METRICS = m.table(m.Metric)
_CUSTOM_FIELDS = m.table(m.CustomField)
_DEVICES = m.table(m.SessionDevice)
_CONTRIBUTIONS = m.table(m.SessionFile)
_FILES = m.table(m.File)

_VALUE_COLUMNS: dict[CustomFieldType, tuple[str, TypeEngine[Any]]] = {
    CustomFieldType.BOOLEAN: ("bool_value", Boolean()),
    CustomFieldType.ENUM: ("text_value", Text()),
    CustomFieldType.NUMBER: ("number_value", Double()),
    CustomFieldType.STRING: ("text_value", Text()),
    CustomFieldType.TIMESTAMP: ("timestamp_ns", Numeric(21, 0)),
}
# Bounds of stored nanosecond values (domain.rules.EPOCH_NS_LIMIT) and one beyond: a literal
# clamped into this range compares with every stored value as the literal itself would, and
# always fits a bigint.
_NS_CLAMP = 2**62 + 1
_DURATION_CLAMP = 2**63 - 1


async def load_names(
    conn: AsyncConnection, org_id: str, custom_fields: set[str], metrics: set[str]
) -> Names:
    """The org's definitions of these custom fields (any status) and metrics."""
    from flightlog_server.storage.custom_fields import definition_from_row

    found_fields = {}
    if custom_fields:
        rows = await conn.execute(
            select(_CUSTOM_FIELDS).where(
                _CUSTOM_FIELDS.c.org_id == org_id,
                _CUSTOM_FIELDS.c.entity_type == "session",
                _CUSTOM_FIELDS.c.name.in_(sorted(custom_fields)),
            )
        )
        found_fields = {row.name: definition_from_row(row) for row in rows}
    found_metrics: dict[str, str] = {}
    if metrics:
        rows = await conn.execute(
            select(_METRICS.c.name, _METRICS.c.metric_id).where(
                _METRICS.c.org_id == org_id, _METRICS.c.name.in_(sorted(metrics))
            )
        )
        found_metrics = {row.name: row.metric_id for row in rows}
    known_fields: tuple[str, ...] = ()
    if custom_fields - set(found_fields):
        known_fields = tuple(
            await conn.scalars(
                select(_CUSTOM_FIELDS.c.name)
                .where(
                    _CUSTOM_FIELDS.c.org_id == org_id,
                    _CUSTOM_FIELDS.c.entity_type == "session",
                    _CUSTOM_FIELDS.c.status == "ready",
                )
                .order_by(_CUSTOM_FIELDS.c.name)
                .limit(_KNOWN_SHOWN)
            )
        )
    known_metrics: tuple[str, ...] = ()
    if metrics - set(found_metrics):
        known_metrics = tuple(
            await conn.scalars(
                select(_METRICS.c.name)
                .where(_METRICS.c.org_id == org_id)
                .order_by(_METRICS.c.name)
                .limit(_KNOWN_SHOWN)
            )
        )
    return Names(found_fields, found_metrics, known_fields, known_metrics)


# How many known names an error message lists at most.
_KNOWN_SHOWN = 50


async def resolve(
    conn: AsyncConnection, org_id: str, filter_text: str, order_by: str = ""
) -> tuple[Resolved | None, list[OrderKey]]:
    """Parses and resolves a filter and an order against the org's names."""
    node = f.parse_filter(filter_text)
    keys = f.parse_order_by(order_by)
    custom, metric = f.referenced_names(f.members(node) + [member for member, _ in keys])
    names = await load_names(conn, org_id, custom, metric)
    return f.resolve_filter(node, names), f.resolve_order_by(keys, names)


async def session_filter_condition(
    conn: AsyncConnection, org_id: str, text: str, sessions: FromClause
) -> ColumnElement[bool]:
    """The condition over `sessions` (the sessions table or an alias of it) selecting the
    sessions of org_id that the AIP-160 filter `text` matches; "" matches all. Raises
    domain.errors.InvalidArgument (violation on field "filter") for a bad filter."""
    resolved, _ = await resolve(conn, org_id, text)
    org = sessions.c.org_id == literal(org_id, Text())
    if resolved is None:
        return org
    return and_(org, condition(resolved, sessions))


# --- conditions ------------------------------------------------------------------------------


def condition(resolved: Resolved, s: FromClause) -> ColumnElement[bool]:
    """The SQL of a resolved filter over the sessions ``s`` (every value bound)."""
    if isinstance(resolved, AllOf):
        return and_(*(condition(i, s) for i in resolved.items))
    if isinstance(resolved, AnyOf):
        return or_(*(condition(i, s) for i in resolved.items))
    if isinstance(resolved, NoneOf):
        return not_(condition(resolved.item, s))
    return _condition(resolved, s)


def _bind(value: Any, type_: TypeEngine[Any]) -> ColumnElement[Any]:
    return literal(value, type_)


def _condition(c: Condition, s: FromClause) -> ColumnElement[bool]:
    target = c.field
    kind = target.kind
    if kind is FieldKind.TAGS:
        if c.op is Op.PRESENT:
            return func.cardinality(s.c.tags) > 0
        operator = "@>" if c.op is Op.CONTAINS else "&&"
        return s.c.tags.op(operator, is_comparison=True)(_bind(list(c.operands), ARRAY(Text())))
    if kind in (FieldKind.DEVICES, FieldKind.DATASETS, FieldKind.FILES):
        return _membership(c, s)
    if kind is FieldKind.CUSTOM_FIELD:
        definition = target.custom_field
        assert definition is not None
        v = _VALUES.alias()
        column, sql_type = _VALUE_COLUMNS[definition.type]
        where = [
            v.c.org_id == s.c.org_id,
            v.c.session_id == s.c.session_id,
            v.c.custom_field_id == _bind(definition.custom_field_id, Text()),
        ]
        if c.op is not Op.PRESENT:
            where.append(_compare(v.c[column], c, sql_type))
        return exists(select(literal_column("1")).select_from(v).where(*where))
    if kind is FieldKind.METRIC:
        mv = _METRIC_VALUES.alias()
        where = [
            mv.c.org_id == s.c.org_id,
            mv.c.session_id == s.c.session_id,
            mv.c.metric_id == _bind(target.metric_id, Text()),
        ]
        if c.op is not Op.PRESENT:
            where.append(_compare(mv.c.value, c, Double()))
        return exists(select(literal_column("1")).select_from(mv).where(*where))
    if kind in (FieldKind.CREATED, FieldKind.MODIFIED):
        return _microseconds(s.c[kind.value], c)
    expression, sql_type = session_column(s, target)
    if c.op is Op.PRESENT:
        return expression.is_not(None)
    return and_(expression.is_not(None), _compare(expression, c, sql_type))


def session_column(s: FromClause, target: Field) -> tuple[ColumnElement[Any], TypeEngine[Any]]:
    kind = target.kind
    if kind is FieldKind.SESSION_ID:
        return s.c.session_id, Text()
    if kind is FieldKind.NAME:
        return s.c.name, Text()
    if kind is FieldKind.DESCRIPTION:
        return s.c.description, Text()
    if kind is FieldKind.START_TIME:
        return s.c.min_timestamp_ns, BigInteger()
    if kind is FieldKind.END_TIME:
        return s.c.max_timestamp_ns, BigInteger()
    if kind is FieldKind.DURATION:
        # The very expression of ix_sessions_duration.
        return (s.c.max_timestamp_ns - s.c.min_timestamp_ns).self_group(), BigInteger()
    if kind in (FieldKind.CREATED, FieldKind.MODIFIED):
        return s.c[kind.value], DateTime(timezone=True)
    raise ValueError(f"not a session column: {kind}")


def _operand(c: Condition, value: Any) -> Any:
    value_type = c.field.value_type
    if value_type is ValueType.INSTANT and c.field.custom_field is None:
        return max(-_NS_CLAMP, min(_NS_CLAMP, int(value)))
    if value_type is ValueType.DURATION:
        return max(-_DURATION_CLAMP, min(_DURATION_CLAMP, int(value)))
    return value


def _compare(
    expression: ColumnElement[Any], c: Condition, sql_type: TypeEngine[Any]
) -> ColumnElement[bool]:
    if c.op in (Op.MATCHES, Op.NOT_MATCHES):
        parts = c.operands[0]
        assert isinstance(parts, tuple)
        pattern = _bind("%".join(escape_like(p) for p in parts), Text())
        matched = expression.like(pattern, escape="\\")
        return matched if c.op is Op.MATCHES else not_(matched)
    operands = [_bind(_operand(c, o), sql_type) for o in c.operands]
    if c.op is Op.IN:
        return expression.in_(operands)
    operand = operands[0]
    return {
        Op.EQ: expression == operand,
        Op.NE: expression != operand,
        Op.LT: expression < operand,
        Op.LE: expression <= operand,
        Op.GT: expression > operand,
        Op.GE: expression >= operand,
    }[c.op]


def _microseconds(column: ColumnElement[Any], c: Condition) -> ColumnElement[bool]:
    """A comparison of a microsecond ``timestamptz`` column with nanosecond operands, exact: a
    value ``t`` (µs) compares as ``t * 1000`` with the operand."""
    if c.op is Op.PRESENT:
        return true()
    if c.op is Op.IN:
        exact = [o for o in c.operands if isinstance(o, int) and o % 1000 == 0]
        if not exact:
            return false()
        return column.in_([_bind(_datetime(ns // 1000), DateTime(timezone=True)) for ns in exact])
    ns = c.operands[0]
    assert isinstance(ns, int)
    low, rest = divmod(ns, 1000)  # low µs <= ns/1000 < low + 1
    at = _bind(_datetime(low), DateTime(timezone=True))
    if rest == 0:
        return _compare_plain(column, c.op, at)
    # Strictly between two microseconds: no value equals it.
    if c.op is Op.EQ:
        return false()
    if c.op is Op.NE:
        return true()
    if c.op in (Op.GT, Op.GE):
        return column > at
    return column <= at


def _compare_plain(
    expression: ColumnElement[Any], op: Op, operand: ColumnElement[Any]
) -> ColumnElement[bool]:
    return {
        Op.EQ: expression == operand,
        Op.NE: expression != operand,
        Op.LT: expression < operand,
        Op.LE: expression <= operand,
        Op.GT: expression > operand,
        Op.GE: expression >= operand,
    }[op]


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MIN_US = int((dt.datetime(1, 1, 1, tzinfo=dt.UTC) - _EPOCH) / dt.timedelta(microseconds=1))
_MAX_US = int(
    (dt.datetime(9999, 12, 31, 23, 59, 59, 999999, tzinfo=dt.UTC) - _EPOCH)
    / dt.timedelta(microseconds=1)
)


def _datetime(us: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(microseconds=max(_MIN_US, min(_MAX_US, us)))


def _membership(c: Condition, s: FromClause) -> ColumnElement[bool]:
    kind = c.field.kind
    values = [str(o) for o in c.operands]
    if kind is FieldKind.DEVICES:
        d = _DEVICES.alias()
        where = [d.c.org_id == s.c.org_id, d.c.session_id == s.c.session_id]
        column = d.c.device_id
        source: FromClause = d
    elif kind is FieldKind.FILES:
        sf = _CONTRIBUTIONS.alias()
        where = [sf.c.org_id == s.c.org_id, sf.c.session_id == s.c.session_id]
        column = sf.c.file_id
        source = sf
    else:
        sf = _CONTRIBUTIONS.alias()
        fl = _FILES.alias()
        source = sf.join(fl, and_(fl.c.org_id == sf.c.org_id, fl.c.file_id == sf.c.file_id))
        where = [sf.c.org_id == s.c.org_id, sf.c.session_id == s.c.session_id]
        column = fl.c.dataset_id
    if c.op is Op.CONTAINS:
        where.append(column == _bind(values[0], Text()))
    elif c.op is Op.IN:
        where.append(column.in_([_bind(v, Text()) for v in values]))
    return exists(select(literal_column("1")).select_from(source).where(*where))


# --- multi-key ordered listings --------------------------------------------------------------


def sort_value_type(target: Field) -> TypeEngine[Any]:
    if target.custom_field is not None:
        return _VALUE_COLUMNS[target.custom_field.type][1]
    if target.kind is FieldKind.METRIC:
        return Double()
    return session_column(_SESSIONS, target)[1]


class OrderedListingQuery:
    """A listing with a filter and a multi-key order, page by page (see module doc)."""

    def __init__(
        self,
        org_id: str,
        resolved: Resolved | None,
        spec: SessionFilterSpec,
        keys: Sequence[OrderKey],
        framing: Framing,
        max_batch_bytes: int = 1 << 20,
    ) -> None:
        keys = list(keys)
        if keys and keys[-1].field.kind is FieldKind.SESSION_ID:
            self.id_descending = keys.pop().descending
        else:
            self.id_descending = keys[-1].descending if keys else True
        if not keys:
            # No key but session_id (or none at all): the first key is the ID itself.
            keys = []
        self.org_id = org_id
        self.resolved = resolved
        self.spec = spec
        self.keys = keys
        self.framing = framing
        self.max_batch_bytes = max_batch_bytes
        self._params = {
            **_filter_params(spec),
            "record_prefix": framing.prefix,
            "record_prefix_length": len(framing.prefix),
        }

    async def page(
        self, db: AsyncConnection, after: KeysetPosition | None, limit: int
    ) -> Page[KeysetPosition]:
        batches: list[Batch[KeysetPosition]] = []
        records: list[bytes] = []
        size = 0
        count = 0
        last = after
        for segment_absent in self._segments(after):
            position = (
                after if after is not None and self._absent(after) == segment_absent else None
            )
            rows = await self._run(db, *self.sql(segment_absent, position, limit - count))
            for row in rows:
                record: bytes = row[0]
                if records and size + len(record) > self.max_batch_bytes:
                    assert last is not None
                    batches.append(Batch(b"".join(records), len(records), last))
                    records, size = [], 0
                records.append(record)
                size += len(record)
                count += 1
                last = KeysetPosition(
                    tuple(_plain(v) for v in row[1 : 1 + len(self.keys)]), row[-1]
                )
            if count >= limit:
                break
        if records:
            assert last is not None
            batches.append(Batch(b"".join(records), len(records), last))
        return Page(batches)

    def sql(
        self, absent: bool, after: KeysetPosition | None, limit: int
    ) -> tuple[str, dict[str, Any]]:
        """The SQL text (``%(name)s`` placeholders) and parameters of one page of one segment:
        what ``page`` runs, with ``$n`` placeholders instead (also what EXPLAIN checks)."""
        compiled = self.statement(absent, after, limit).compile(dialect=_DIALECT)
        return str(compiled), {**compiled.params, **self._params}

    async def _run(
        self, db: AsyncConnection, sql: str, params: dict[str, Any]
    ) -> list[tuple[Any, ...]]:
        """Runs ``sql`` on the psycopg connection, in binary, *unprepared*: each page
        binds another position, and a prepared statement's generic plan (which PostgreSQL
        adopts after five runs) cannot use it to start the index walk there, so it reads the
        listing from its start on every page (seconds at 100,000 sessions, against ~50 ms)."""
        text = _Compiled.of(sql)
        raw = await db.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        async with AsyncRawCursor(driver) as cursor:
            await cursor.execute(
                text.native, [params[name] for name in text.names], prepare=False, binary=True
            )
            rows: list[tuple[Any, ...]] = await cursor.fetchall()
        return rows

    def _absent(self, position: KeysetPosition) -> bool:
        return bool(self.keys) and position.values[0] is None

    def _segments(self, after: KeysetPosition | None) -> list[bool]:
        if not self.keys or self.keys[0].field.always_set:
            return [False]
        if after is not None and self._absent(after):
            return [True]
        return [False, True]

    def statement(self, absent: bool, after: KeysetPosition | None, limit: int) -> Any:
        s = _SESSIONS.alias("s")
        where: list[ColumnElement[bool]] = [s.c.org_id == _bind(self.org_id, Text())]
        source: FromClause = s
        values: list[ColumnElement[Any]] = []
        for i, key in enumerate(self.keys):
            target = key.field
            if target.custom_field is not None or target.kind is FieldKind.METRIC:
                if i == 0 and not absent:
                    # Walk the value index in order, each row joined to its session.
                    v, column = self._value_rows(target)
                    source = v.join(
                        s, and_(s.c.org_id == v.c.org_id, s.c.session_id == v.c.session_id)
                    )
                    where.append(v.c.org_id == _bind(self.org_id, Text()))
                    where.append(v.c[_key_column(target)] == _bind(_key_id(target), Text()))
                    where.append(column.is_not(None))
                    values.append(column)
                    continue
                v, column = self._value_rows(target)
                keys = (
                    v.c.org_id == s.c.org_id,
                    v.c.session_id == s.c.session_id,
                    v.c[_key_column(target)] == _bind(_key_id(target), Text()),
                )
                if i == 0:
                    # The sessions without a value: probed by primary key, in ID order. The
                    # probe runs once, in WHERE; the value it would select is NULL anyway.
                    where.append(no_row_where(*keys))
                    values.append(null().cast(sort_value_type(target)))
                else:
                    values.append(select(column).where(*keys).scalar_subquery())
            else:
                expression, _ = session_column(s, target)
                values.append(expression)
                if i == 0 and not target.always_set:
                    where.append(expression.is_(None) if absent else expression.is_not(None))
        if self.resolved is not None:
            where.append(condition(self.resolved, s))
        where += _filters(s, self.spec)
        ids = s.c.session_id
        if after is not None:
            where.append(self._after(values, ids, after))
        order: list[Any] = []
        for i, (key, sort_value) in enumerate(zip(self.keys, values, strict=True)):
            if i == 0 and absent:
                continue
            if i > 0 and not key.field.always_set:
                order.append(sort_value.is_(None).asc())
            order.append(sort_value.desc() if key.descending else sort_value.asc())
        order.append(ids.desc() if self.id_descending else ids.asc())
        record = _framed(current_record(s, self.framing), self.framing.tag).label("record")
        return (
            select(record, *values, ids)
            .select_from(source)
            .where(*where)
            .order_by(*order)
            .limit(limit)
        )

    def _value_rows(self, target: Field) -> tuple[Any, ColumnElement[Any]]:
        if target.custom_field is not None:
            v = _VALUES.alias()
            return v, v.c[_VALUE_COLUMNS[target.custom_field.type][0]]
        mv = _METRIC_VALUES.alias()
        return mv, mv.c.value

    def _after(
        self, values: list[ColumnElement[Any]], ids: ColumnElement[Any], after: KeysetPosition
    ) -> ColumnElement[bool]:
        """Lexicographically after ``after`` in (values with NULL last..., session_id)."""
        alternatives: list[ColumnElement[bool]] = []
        equal: list[ColumnElement[bool]] = []
        for key, value, position in zip(self.keys, values, after.values, strict=True):
            if position is None:
                equal.append(value.is_(None))
                continue
            bound = _bind(position, sort_value_type(key.field))
            beyond = value < bound if key.descending else value > bound
            alternatives.append(and_(*equal, or_(value.is_(None), beyond)))
            equal.append(value == bound)
        last_id = _bind(after.session_id, Text())
        alternatives.append(and_(*equal, ids < last_id if self.id_descending else ids > last_id))
        result = or_(*alternatives)
        if self.keys and after.values[0] is not None:
            # The first key's bound on its own, so that the walk of its index starts there.
            first = values[0]
            bound = _bind(after.values[0], sort_value_type(self.keys[0].field))
            result = and_(first <= bound if self.keys[0].descending else first >= bound, result)
        return result


def _key_column(target: Field) -> str:
    return "custom_field_id" if target.custom_field is not None else "metric_id"


def _key_id(target: Field) -> str:
    if target.custom_field is not None:
        return target.custom_field.custom_field_id
    assert target.metric_id is not None
    return target.metric_id


def _plain(value: Any) -> Any:
    """A sort value as the position keeps it (custom-field timestamps: int nanoseconds)."""
    if isinstance(value, Instant):
        return value.ns
    return int(value) if isinstance(value, Decimal) else value
