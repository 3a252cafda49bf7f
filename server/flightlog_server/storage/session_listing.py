"""The SQL of ListSessions: filters, sort orders and keyset pages (see ``domain.listing``).

Every page is read by one statement that walks an index in the listing's order and stops after
``limit`` rows, so a page costs the same at the start of a listing as deep into it:

* CREATED, NAME, START_TIME and DURATION walk ``ix_sessions_<key>`` = (org_id, key, session_id),
  forwards for ascending and backwards for descending. A btree keeps NULLs after every value, so
  the segment of sessions *with* a value is the range ``key IS NOT NULL`` (plus
  ``(key, session_id) > position``) and the segment *without* one is ``key IS NULL`` (plus
  ``session_id > position``): both are index ranges in either direction, and absent values come
  last in both directions without a NULLS FIRST/LAST index per direction.
* A custom field walks ``session_custom_field_values`` by (org_id, custom_field_id, value,
  session_id) and joins each row to its session by primary key; the sessions without a value are
  read in primary key order, probing the values' primary key for each.
* Filters are conditions on the walked rows: ``tags @> / &&`` (the GIN index ``ix_sessions_tags``
  when the planner finds a tag rare enough to prefer it), the window's overlap (the GiST index
  ``ix_sessions_window`` when the window is narrow), EXISTS on ``session_devices`` /
  ``session_files`` ⋈ ``files`` / ``session_custom_field_values`` by primary key. A selective
  filter can lead the planner to read its matches by index and sort them; the keyset
  conditions bound that work to what lies after the position.

Statements are built with SQLAlchemy Core with every value a named parameter, compiled once per
*shape* (which filters are set, the order, the custom fields' types) and cached; each page runs
the compiled text, with PostgreSQL's ``$n`` placeholders, on the connection's psycopg cursor, in
binary. Only the stored ``wire_record`` and the keyset columns are read, and the records come
back already *framed* as the caller asks (``Framing``: a field key, the varint length and a
prefix before each record, so that they concatenate into a serialized protobuf message) and
aggregated into one value per page (``SessionListingQuery``). The server thus does no work per
session at all, which is what lets ListSessions stream close to the speed of a bare psycopg
reader.
"""

from __future__ import annotations

import re
from collections.abc import Hashable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Generic, TypeAlias, TypeVar

from psycopg import AsyncRawCursor
from sqlalchemy import (
    BigInteger,
    Boolean,
    ColumnElement,
    DateTime,
    Double,
    FromClause,
    Integer,
    LargeBinary,
    Select,
    String,
    Text,
    and_,
    bindparam,
    case,
    exists,
    false,
    func,
    literal_column,
    select,
    true,
    tuple_,
    type_coerce,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql.psycopg import PGDialect_psycopg
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import Grouping
from sqlalchemy.types import TypeEngine

from flightlog_server.domain.listing import (
    Comparison,
    FieldCondition,
    ListPosition,
    SessionFilterSpec,
    SessionOrder,
    SortKey,
)
from flightlog_server.domain.types import CustomFieldType, Instant
from flightlog_server.storage import models as m
from flightlog_server.storage.models import InstantNs

__all__ = ["Framing", "Page", "SessionListingQuery", "escape_like", "no_row_where"]

Statement: TypeAlias = "Select[*tuple[Any, ...]]"

_DIALECT = PGDialect_psycopg()  # type: ignore[no-untyped-call]

_SESSIONS = m.table(m.Session)
_VALUES = m.table(m.SessionCustomFieldValue)
_DEVICES = m.table(m.SessionDevice)
_CONTRIBUTIONS = m.table(m.SessionFile)
_FILES = m.table(m.File)

# Custom-field type → (typed value column, its SQL type for bound operands).
_VALUE_COLUMNS: dict[CustomFieldType, tuple[str, TypeEngine[Any]]] = {
    CustomFieldType.BOOLEAN: ("bool_value", Boolean()),
    CustomFieldType.ENUM: ("text_value", Text()),
    CustomFieldType.NUMBER: ("number_value", Double()),
    CustomFieldType.STRING: ("text_value", Text()),
    CustomFieldType.TIMESTAMP: ("timestamp_ns", InstantNs()),
}


def escape_like(text: str) -> str:
    """``text`` with LIKE's wildcards (and the escape character) escaped by a backslash."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


@dataclass(frozen=True)
class Framing:
    """How each row's record is returned: ``tag``, then the varint length of ``prefix + record``,
    then ``prefix``, then the record, i.e. a length-delimited protobuf field with that key."""

    tag: int
    prefix: bytes = b""
    # The current encoding's version (``RecordFormat.version``): a record an older one wrote is
    # never returned; the statement fails with ``StaleRecord`` instead (see ``current_record``).
    record_version: int = 1


def current_record(s: FromClause, framing: Framing) -> ColumnElement[bytes]:
    """The session's stored record when the current encoding wrote it; otherwise a call to
    ``flightlog_stale_record`` (migration 0007), which fails the statement with SQLSTATE FL001
    naming the session, so that the caller rewrites the stale records and reads again."""
    return case(
        (
            s.c.record_version >= literal_column(str(int(framing.record_version)), Integer()),
            s.c.wire_record,
        ),
        else_=func.flightlog_stale_record(s.c.session_id),
    )


def no_row_where(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """True where no row meets ``conditions``: a probe correlated to the outer query (by a
    primary key, so at most one row), for the sessions *without* a value of a sort key.

    Written ``COALESCE((SELECT false ...), true)``, because the planner reads each other form
    in a way that breaks the index walk of a listing's page:

    * ``NOT EXISTS`` becomes an anti-join or a hashed subplan, which reads every value of the
      field on every page, however few sessions the page needs;
    * ``(SELECT ...) IS NULL`` is guessed to keep 0.5% of rows, so on a vacuumed table the
      planner scans and sorts the whole org to find the few rows it expects;
    * a boolean expression is guessed to keep half, so the planner walks the index and probes
      each row until the LIMIT, which costs a page what it reads.
    """
    return func.coalesce(select(false()).where(*conditions).scalar_subquery(), true())


# A keyset position: ListPosition here, KeysetPosition in storage.session_filter.
P = TypeVar("P")


@dataclass(frozen=True)
class Batch(Generic[P]):
    """Consecutive framed records, concatenated, and the position after the last of them."""

    records: bytes
    count: int
    last: P


@dataclass(frozen=True)
class Page(Generic[P]):
    """One page: usually one batch; several when its records exceed ``max_batch_bytes``."""

    batches: list[Batch[P]]

    @property
    def count(self) -> int:
        return sum(b.count for b in self.batches)

    @property
    def last(self) -> P | None:
        return self.batches[-1].last if self.batches else None


class SessionListingQuery:
    """The statements of one listing (org, filter, order), compiled once and run per page.

    A page is normally read as one row: PostgreSQL aggregates the page's framed records, in
    order, into one ``bytea`` and returns it with the page's last keyset position. That is one
    message on the wire instead of ``limit`` (libpq and psycopg then handle a page in a few
    reads, not one wake-up per 8 KiB), and no Python object per session. When a page's records
    would exceed ``max_batch_bytes``, the page is read again row by row and split into batches
    of at most that size (a larger record alone), each with its own position; the listing's
    later pages are then read row by row at once.
    """

    def __init__(
        self,
        org_id: str,
        spec: SessionFilterSpec,
        order: SessionOrder,
        framing: Framing,
        max_batch_bytes: int = 1 << 20,
    ) -> None:
        if (order.key is SortKey.CUSTOM_FIELD) != (order.field is not None):
            raise ValueError("a custom field is needed exactly with SortKey.CUSTOM_FIELD")
        if not 0 < framing.tag < 0x80:
            raise ValueError("the field key must be one byte")
        self.org_id = org_id
        self.spec = spec
        self.order = order
        self.framing = framing
        self.max_batch_bytes = max_batch_bytes
        self._shape: Hashable = (
            order.key,
            order.descending,
            order.field.type if order.field else None,
            framing.tag,
            framing.record_version,
            bool(spec.tags_all),
            bool(spec.tags_any),
            spec.device_id is not None,
            spec.dataset_id is not None,
            spec.overlaps is not None,
            bool(spec.name_contains),
            tuple((c.field.type, c.comparison, len(c.operands)) for c in spec.conditions),
        )
        self._by_rows = False
        self._fixed_params = {"org_id": org_id, **_filter_params(spec)}
        if order.field is not None:
            self._fixed_params["sort_field_id"] = order.field.custom_field_id

    # --- running ---------------------------------------------------------------------------------

    async def page(
        self, db: AsyncConnection, after: ListPosition | None, limit: int
    ) -> Page[ListPosition]:
        """Up to ``limit`` sessions after ``after`` (from the start when None), crossing from the
        sessions with a sort value into those without one when the first segment runs out.

        One statement, or two at that crossing; a page needs no transaction of its own (every
        page of a listing reads what is committed when it runs)."""
        if self._by_rows:
            return await self._page_by_rows(db, after, limit)
        records: list[bytes] = []
        size = 0
        count = 0
        last = after
        for absent, position in self._segments(after):
            budget = self.max_batch_bytes - size
            row = (await self._run(db, True, absent, position, limit - count, budget))[0]
            blob, found, value, session_id = row
            if found and blob is None:
                # Over max_batch_bytes: this listing's sessions are big, so read its pages row
                # by row from now on (PostgreSQL built the oversized aggregate in vain).
                self._by_rows = True
                return await self._page_by_rows(db, after, limit)
            if found:
                records.append(blob)
                size += len(blob)
                count += found
                last = ListPosition(absent, _sort_value_of(value), session_id)
            if count >= limit:
                break
        if last is None or count == 0:
            return Page([])
        return Page([Batch(b"".join(records), count, last)])

    async def _page_by_rows(
        self, db: AsyncConnection, after: ListPosition | None, limit: int
    ) -> Page[ListPosition]:
        batches: list[Batch[ListPosition]] = []
        records: list[bytes] = []
        size = 0
        count = 0
        last = after
        for absent, position in self._segments(after):
            for row in await self._run(db, False, absent, position, limit - count):
                record = row[0]
                if records and size + len(record) > self.max_batch_bytes:
                    assert last is not None
                    batches.append(Batch(b"".join(records), len(records), last))
                    records, size = [], 0
                records.append(record)
                size += len(record)
                count += 1
                last = (
                    ListPosition(True, None, row[1])
                    if absent
                    else ListPosition(False, _sort_value_of(row[1]), row[2])
                )
            if count >= limit:
                break
        if records:
            assert last is not None
            batches.append(Batch(b"".join(records), len(records), last))
        return Page(batches)

    def _segments(self, after: ListPosition | None) -> list[tuple[bool, ListPosition | None]]:
        """The (segment, position in it) to read, in order, from ``after``."""
        if after is not None and after.absent:
            return [(True, after)]
        if not self.order.has_absent_values:
            return [(False, after)]
        return [(False, after), (True, None)]

    async def _run(
        self,
        db: AsyncConnection,
        batch: bool,
        absent: bool,
        after: ListPosition | None,
        limit: int,
        budget: int | None = None,
    ) -> list[tuple[Any, ...]]:
        compiled = self._compile(batch, absent, after is not None)
        params = self._params(absent, after, limit)
        if budget is not None:
            params["max_batch_bytes"] = budget
        return await _fetch(db, compiled.native, [params[name] for name in compiled.names])

    def sql(
        self, absent: bool, after: ListPosition | None, limit: int, *, batch: bool = True
    ) -> tuple[str, dict[str, Any]]:
        """The SQL text (``%(name)s`` placeholders) and parameters of one page of one segment:
        what ``page`` runs, with ``$n`` placeholders instead (also what EXPLAIN checks)."""
        return self._compile(batch, absent, after is not None).text, self._params(
            absent, after, limit
        )

    def _compile(self, batch: bool, absent: bool, after: bool) -> _Compiled:
        """The compiled statement, shared by every listing of the same shape: values are all
        named parameters, so the SQL depends only on which filters are set, the order and the
        custom fields' types (compiling takes milliseconds, a page far less)."""
        key = (self._shape, batch, absent, after)
        compiled = _COMPILED.get(key)
        if compiled is None:
            rows = self.statement(absent, after)
            statement = self.batch_statement(rows, absent) if batch else rows
            compiled = _Compiled.of(str(statement.compile(dialect=_DIALECT)))
            if len(_COMPILED) >= _COMPILED_MAX:
                _COMPILED.pop(next(iter(_COMPILED)))
            _COMPILED[key] = compiled
        return compiled

    def _params(self, absent: bool, after: ListPosition | None, limit: int) -> dict[str, Any]:
        params = {
            **self._fixed_params,
            "page_limit": limit,
            "record_prefix": self.framing.prefix,
            "record_prefix_length": len(self.framing.prefix),
            "max_batch_bytes": self.max_batch_bytes,
        }
        if after is not None:
            params["after_id"] = after.session_id
            if not absent:
                params["after_value"] = after.value
        return params

    # --- building --------------------------------------------------------------------------------

    def statement(self, absent: bool, after: bool) -> Statement:
        """The statement of a page in the segment with (``absent`` False) or without sort
        values, with a keyset condition when ``after``."""
        if absent and not self.order.has_absent_values:
            raise ValueError(f"every session has a value for {self.order.key}")
        s = _SESSIONS.alias("s")
        org_id = bindparam("org_id", type_=String())
        where: list[ColumnElement[bool]] = []
        if self.order.field is not None:
            column, sql_type = _VALUE_COLUMNS[self.order.field.type]
            field_id = bindparam("sort_field_id", type_=String())
            v = _VALUES.alias("sv")
            if absent:
                # The sessions' primary key, in order, probing the values' primary key for each.
                source: FromClause = s
                value: ColumnElement[Any] = v.c[column]
                ids: ColumnElement[Any] = s.c.session_id
                where += [
                    s.c.org_id == org_id,
                    no_row_where(
                        v.c.org_id == s.c.org_id,
                        v.c.session_id == s.c.session_id,
                        v.c.custom_field_id == field_id,
                    ),
                ]
                order_by = [ids]
            else:
                # The field's value rows in (value, session_id) order, each joined to its session.
                source = v.join(s, and_(s.c.org_id == v.c.org_id, s.c.session_id == v.c.session_id))
                value = v.c[column]
                ids = v.c.session_id
                where += [
                    v.c.org_id == org_id,
                    v.c.custom_field_id == field_id,
                    value.is_not(None),
                ]
                order_by = [value, ids]
        else:
            source = s
            value, sql_type = _sort_value(s, self.order.key)
            ids = s.c.session_id
            where.append(s.c.org_id == org_id)
            if absent:
                where.append(value.is_(None))
            elif self.order.has_absent_values:
                where.append(value.is_not(None))
            # The sort value stays in ORDER BY in the absent segment (where it is NULL) so that
            # the order is the index's, which the planner then walks without sorting.
            order_by = [value, ids]
        where += _filters(s, self.spec)
        descending = self.order.descending
        if after:
            after_id = bindparam("after_id", type_=String())
            if absent:
                where.append(ids < after_id if descending else ids > after_id)
            else:
                position = tuple_(value, ids)
                bound = tuple_(bindparam("after_value", type_=sql_type), after_id)
                where.append(position < bound if descending else position > bound)
        record = _framed(current_record(s, self.framing), self.framing.tag).label("record")
        columns = [record, ids.label("session_id")]
        if not absent:
            columns.insert(1, value.label("sort_value"))
        return (
            select(*columns)
            .select_from(source)
            .where(*where)
            .order_by(*[c.desc() if descending else c.asc() for c in order_by])
            .limit(bindparam("page_limit", type_=Integer()))
        )

    def batch_statement(self, rows: Statement, absent: bool) -> Statement:
        """One row for the page ``rows`` selects: its records concatenated in order (NULL when
        they exceed ``max_batch_bytes``), how many there are, and the last one's sort value
        and session ID. The aggregates' ORDER BY is the page's own, which PostgreSQL 16 and
        later recognise as already sorted."""
        page = rows.subquery("page")
        ids = page.c.session_id
        value = None if absent else page.c.sort_value
        keys = [ids] if value is None else [value, ids]
        order = [k.desc() if self.order.descending else k.asc() for k in keys]
        records = func.string_agg(page.c.record, literal_column("''::bytea")).aggregate_order_by(
            *order
        )
        size = func.sum(func.length(page.c.record))
        count = func.count()
        last_value = (
            literal_column("NULL")
            if value is None
            else _last(func.array_agg(value).aggregate_order_by(*order), value.type, count)
        )
        last_id = _last(func.array_agg(ids).aggregate_order_by(*order), ids.type, count)
        return select(
            case(
                (size <= bindparam("max_batch_bytes", type_=BigInteger()), records),
                else_=literal_column("NULL"),
            ),
            count,
            last_value,
            last_id,
        )


def _last(
    aggregated: ColumnElement[Any], item: TypeEngine[Any], count: ColumnElement[Any]
) -> ColumnElement[Any]:
    """``(array_agg(...))[count]``: the last element of an ordered array aggregate."""
    return type_coerce(Grouping(aggregated), ARRAY(item))[count]


def _framed(record: ColumnElement[bytes], tag: int) -> ColumnElement[bytes]:
    """``tag || varint(length(prefix) + length(record)) || prefix || record``, in SQL."""
    size = func.length(record) + bindparam("record_prefix_length", type_=Integer())
    prefix = bindparam("record_prefix", type_=LargeBinary())

    def number(value: int) -> ColumnElement[int]:
        # Our own constants, inlined: shorter SQL than one parameter each.
        return literal_column(str(int(value)), Integer())

    # A varint of k bytes: 7 bits a byte, least significant first, the high bit on all but the
    # last. set_byte fills them into a tag byte followed by k zero bytes.
    cases = []
    for k in range(1, 6):
        zeros = "00" * k
        header: ColumnElement[Any] = literal_column(f"'\\x{tag:02x}{zeros}'::bytea", LargeBinary())
        for i in range(k):
            septet = size.op(">>")(number(7 * i)) if i else size
            if k > 1:
                septet = septet.op("&")(number(0x7F))
            byte = septet.op("|")(number(0x80)) if i < k - 1 else septet
            header = func.set_byte(header, number(i + 1), byte)
        cases.append((size < number(2 ** (7 * k)), header))
    varint = case(*cases[:-1], else_=cases[-1][1])
    return varint.op("||")(prefix).op("||")(record)


def _sort_value_of(value: Any) -> Any:
    """A sort value as read in binary: timestamps of custom fields arrive as ``numeric``
    nanoseconds (``Decimal``) and are kept as ``int`` (see ``models.InstantNs``)."""
    return int(value) if isinstance(value, Decimal) else value


def _sort_value(s: Any, key: SortKey) -> tuple[ColumnElement[Any], TypeEngine[Any]]:
    if key is SortKey.CREATED:
        return s.c.created, DateTime(timezone=True)
    if key is SortKey.NAME:
        return s.c.name, String()
    if key is SortKey.START_TIME:
        return s.c.min_timestamp_ns, BigInteger()
    if key is SortKey.DURATION:
        # The very expression of ix_sessions_duration, so the planner walks that index.
        return (s.c.max_timestamp_ns - s.c.min_timestamp_ns).self_group(), BigInteger()
    raise ValueError(f"not a column sort: {key}")


def _filters(s: Any, spec: SessionFilterSpec) -> list[ColumnElement[bool]]:
    """The filter's conditions, with named parameters (see ``_filter_params``)."""
    conditions: list[ColumnElement[bool]] = []
    if spec.tags_all:
        conditions.append(s.c.tags.op("@>")(bindparam("tags_all", type_=ARRAY(Text))))
    if spec.tags_any:
        conditions.append(s.c.tags.op("&&")(bindparam("tags_any", type_=ARRAY(Text))))
    if spec.device_id is not None:
        d = _DEVICES.alias("d")
        conditions.append(
            exists(
                select(literal_column("1")).where(
                    d.c.org_id == s.c.org_id,
                    d.c.session_id == s.c.session_id,
                    d.c.device_id == bindparam("device_id", type_=String()),
                )
            )
        )
    if spec.dataset_id is not None:
        c = _CONTRIBUTIONS.alias("c")
        f = _FILES.alias("f")
        conditions.append(
            exists(
                select(literal_column("1"))
                .select_from(c.join(f, and_(f.c.org_id == c.c.org_id, f.c.file_id == c.c.file_id)))
                .where(
                    c.c.org_id == s.c.org_id,
                    c.c.session_id == s.c.session_id,
                    f.c.dataset_id == bindparam("dataset_id", type_=String()),
                )
            )
        )
    if spec.overlaps is not None:
        low = bindparam("overlaps_min", type_=BigInteger())
        high = bindparam("overlaps_max", type_=BigInteger())
        closed: ColumnElement[str] = literal_column("'[]'")
        conditions.append(s.c.min_timestamp_ns <= high)
        conditions.append(s.c.max_timestamp_ns >= low)
        # The same, as ix_sessions_window can answer it (the comparisons above also keep out
        # sessions without bounds, whose range would be unbounded).
        window = func.int8range(s.c.min_timestamp_ns, s.c.max_timestamp_ns, closed)
        conditions.append(window.op("&&")(func.int8range(low, high, closed)))
    if spec.name_contains:
        conditions.append(s.c.name.ilike(bindparam("name_pattern", type_=String()), escape="\\"))
    conditions.extend(_condition(s, i, c) for i, c in enumerate(spec.conditions))
    return conditions


def _filter_params(spec: SessionFilterSpec) -> dict[str, Any]:
    params: dict[str, Any] = {}
    if spec.tags_all:
        params["tags_all"] = list(spec.tags_all)
    if spec.tags_any:
        params["tags_any"] = list(spec.tags_any)
    if spec.device_id is not None:
        params["device_id"] = spec.device_id
    if spec.dataset_id is not None:
        params["dataset_id"] = spec.dataset_id
    if spec.overlaps is not None:
        params["overlaps_min"], params["overlaps_max"] = spec.overlaps
    if spec.name_contains:
        params["name_pattern"] = f"%{escape_like(spec.name_contains)}%"
    for i, condition in enumerate(spec.conditions):
        params[f"c{i}_field"] = condition.field.custom_field_id
        for j, operand in enumerate(condition.operands):
            params[f"c{i}_operand{j}"] = operand.ns if isinstance(operand, Instant) else operand
    return params


def _condition(s: Any, index: int, condition: FieldCondition) -> ColumnElement[bool]:
    """EXISTS (or NOT EXISTS, for IS_NULL) of the session's value row for the field, holding the
    comparison; an unset field therefore matches no comparison, not even NOT_EQUAL."""
    column, sql_type = _VALUE_COLUMNS[condition.field.type]
    v = _VALUES.alias(f"cv{index}")
    value = v.c[column]
    where: list[ColumnElement[bool]] = [
        v.c.org_id == s.c.org_id,
        v.c.session_id == s.c.session_id,
        v.c.custom_field_id == bindparam(f"c{index}_field", type_=String()),
    ]
    operands = [
        bindparam(f"c{index}_operand{j}", type_=sql_type) for j in range(len(condition.operands))
    ]
    comparison = condition.comparison
    if comparison is Comparison.IN:
        where.append(value.in_(operands))
    elif comparison not in (Comparison.IS_NULL, Comparison.IS_NOT_NULL):
        operand = operands[0]
        where.append(
            {
                Comparison.EQUAL: value == operand,
                Comparison.NOT_EQUAL: value != operand,
                Comparison.LESS: value < operand,
                Comparison.LESS_OR_EQUAL: value <= operand,
                Comparison.GREATER: value > operand,
                Comparison.GREATER_OR_EQUAL: value >= operand,
            }[comparison]
        )
    found = exists(select(literal_column("1")).where(*where))
    return ~found if comparison is Comparison.IS_NULL else found


_PLACEHOLDER = re.compile(r"%\((\w+)\)s|%%")


@dataclass(frozen=True)
class _Compiled:
    """A compiled statement: as SQLAlchemy renders it for psycopg (``text``, ``%(name)s``
    placeholders), and with PostgreSQL's own ``$n`` placeholders (``native``, filled from
    ``names`` in order)."""

    text: str
    native: str
    names: tuple[str, ...]

    @classmethod
    def of(cls, text: str) -> _Compiled:
        # Every value is a named parameter, so the only "%" in the text are placeholders and
        # SQLAlchemy's "%%" escapes. Converting once spares psycopg parsing the (long) query on
        # every page: it caches that only for queries under 4 KiB.
        # name -> its $n (a filter of 16 IN lists of 1,000 values has 16,000 names: a list
        # searched for each one took seconds)
        numbers: dict[str, int] = {}

        def placeholder(match: re.Match[str]) -> str:
            name = match.group(1)
            if name is None:
                return "%"
            return f"${numbers.setdefault(name, len(numbers) + 1)}"

        return cls(text, _PLACEHOLDER.sub(placeholder, text), tuple(numbers))


# Compiled statements by shape (see SessionListingQuery._compile), oldest evicted first.
_COMPILED: dict[Hashable, _Compiled] = {}
_COMPILED_MAX = 512


async def _fetch(db: AsyncConnection, sql: str, params: list[Any]) -> list[tuple[Any, ...]]:
    """Runs ``sql`` (``$n`` placeholders) on the connection's psycopg connection, in binary."""
    raw = await db.get_raw_connection()
    driver = raw.driver_connection
    assert driver is not None
    async with AsyncRawCursor(driver) as cursor:
        await cursor.execute(sql, params, binary=True)
        rows: list[tuple[Any, ...]] = await cursor.fetchall()
    return rows
