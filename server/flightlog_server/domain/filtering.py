"""The ListSessions filter language (AIP-160) and order (AIP-132), as plain data.

``parse_filter`` turns a filter string into a small syntax tree (``Node``) with lark, from the
grammar in ``filter.lark`` (shipped with the package); ``resolve_filter`` checks it against
what the org has (its custom fields, its metric names) and gives a typed tree (``Resolved``)
that ``storage.session_filter`` turns into SQL. ``parse_order_by`` and ``resolve_order_by`` do
the same for ``order_by``. Every error is ``InvalidArgument`` with one violation on the request
field (``filter`` or ``order_by``) that says where (line:column) and what was expected, or which
names are known.

Semantics (the reference evaluator in tests/rpc/test_session_filter.py follows them):

* a comparison on a value a session does not have (no name, no bounds, an unset custom field,
  an unpublished metric) is false, whatever the operator, ``!=`` included; ``NOT`` negates
  that, so ``NOT metrics.x > 1`` also matches sessions without ``x``;
* ``=`` and ``!=`` between a string field and a string literal holding ``*`` match a pattern in
  which each ``*`` stands for any run of characters (``\\*`` is a literal star); matching and
  ordering of strings are by code point, case-sensitive;
* ``tags:"x"``, ``devices:"d"``, ``datasets:"ds_..."``, ``files:"fl_..."`` hold when the session
  has that element; ``f IN (a, b)`` when it has one of them; ``f:*`` or ``has(f)`` when it has
  any (for a single value: when it is set);
* timestamps are RFC 3339 (``2026-01-01T00:00:00Z``, up to nanoseconds), durations are seconds
  with an ``s`` suffix (``90s``, ``1.5s``), as AIP-160 and protobuf's JSON form write them.
"""

from __future__ import annotations

import datetime as dt
import functools
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from importlib import resources
from typing import Any, TypeAlias

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.rules import MAX_IN_VALUES_PER_FILTER
from flightlog_server.domain.types import CustomFieldDef, CustomFieldStatus, CustomFieldType

__all__ = [
    "FILTERABLE_NAMES",
    "MAX_FILTER_CHARS",
    "MAX_FILTER_DEPTH",
    "MAX_FILTER_TERMS",
    "MAX_ORDER_BY_CHARS",
    "MAX_ORDER_KEYS",
    "Condition",
    "Field",
    "FieldKind",
    "Op",
    "OrderKey",
    "Resolved",
    "parse_filter",
    "parse_order_by",
    "resolve_filter",
    "resolve_order_by",
]

# Limits (documented in session_service.proto and the README): a filter costs its parse (linear
# in its length), one SQL condition per term, and at most this deep a tree.
MAX_FILTER_CHARS = 4096
MAX_FILTER_DEPTH = 16
MAX_FILTER_TERMS = 64
MAX_ORDER_BY_CHARS = 1024
MAX_ORDER_KEYS = 8
# A literal is at most as long as the longest value it can be compared with.
MAX_LITERAL_CHARS = 1024


# --- syntax ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Where:
    line: int
    column: int

    def __str__(self) -> str:
        return f"{self.line}:{self.column}"


@dataclass(frozen=True)
class Literal:
    """A value as written. ``kind`` is its token: string, name, number, timestamp, duration.
    A string's ``parts`` are its text split at unescaped ``*`` (one part: no wildcard)."""

    kind: str
    text: str
    parts: tuple[str, ...]
    at: Where

    @property
    def string(self) -> str:
        return "*".join(self.parts)


@dataclass(frozen=True)
class Member:
    parts: tuple[str, ...]
    at: Where

    @property
    def dotted(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Compare:
    member: Member
    op: str  # = != < <= > >= :
    value: Literal
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class Present:
    member: Member
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class Within:
    member: Member
    values: tuple[Literal, ...]
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class Bare:
    member: Member
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class And:
    items: tuple[Node, ...]
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class Or:
    items: tuple[Node, ...]
    depth: int = 1
    terms: int = 1


@dataclass(frozen=True)
class Not:
    item: Node
    depth: int = 1
    terms: int = 1


Node: TypeAlias = "Compare | Present | Within | Bare | And | Or | Not"


def _combine(cls: type[And] | type[Or], items: list[Node]) -> And | Or:
    flat: list[Node] = []
    for item in items:
        flat.extend(item.items if isinstance(item, cls) else (item,))
    return cls(
        tuple(flat),
        depth=1 + max(i.depth for i in flat),
        terms=sum(i.terms for i in flat),
    )


def _where(token: lark.Token) -> Where:
    return Where(token.line or 1, token.column or 1)


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _string_parts(token: lark.Token) -> tuple[str, ...]:
    """The text of a quoted literal split at its unescaped stars."""
    body = token.value[1:-1]
    parts: list[str] = []
    current: list[str] = []
    i = 0
    while i < len(body):
        char = body[i]
        if char == "\\" and i + 1 < len(body):
            nxt = body[i + 1]
            current.append(_ESCAPES.get(nxt, nxt))
            i += 2
            continue
        if char == "*":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
        i += 1
    parts.append("".join(current))
    return tuple(parts)


@lark.v_args(inline=True)
class _Build(lark.Transformer[lark.Token, Any]):
    """Builds ``Node``s bottom-up as the LALR parser reduces (no recursion)."""

    def start(self, expression: Node | None = None) -> Node | None:
        return expression

    def conjunction(self, *items: Node) -> Node:
        return _combine(And, list(items))

    def disjunction(self, *items: Node) -> Node:
        return _combine(Or, list(items))

    def negation(self, *args: Any) -> Node:
        item: Node = args[-1]
        return Not(item, depth=item.depth + 1, terms=item.terms)

    def member(self, *parts: lark.Token) -> Member:
        names = tuple(_string_parts(p)[0] if p.type == "STRING" else p.value for p in parts)
        return Member(names, _where(parts[0]))

    def value(self, token: lark.Token) -> Literal:
        kind = token.type.lower()
        parts = _string_parts(token) if kind == "string" else (token.value,)
        return Literal(kind, token.value, parts, _where(token))

    def comparison(self, member: Member, op: lark.Token, value: Literal) -> Node:
        return Compare(member, op.value, value)

    def presence(self, member: Member, _has: lark.Token, _star: lark.Token) -> Node:
        return Present(member)

    def membership(self, member: Member, *values: Literal) -> Node:
        return Within(member, values)

    def call(self, name: lark.Token, member: Member) -> Node:
        return Present(member)

    def bare(self, member: Member) -> Node:
        return Bare(member)

    def order(self, *keys: tuple[Member, bool]) -> list[tuple[Member, bool]]:
        return list(keys)

    def order_key(self, member: Member, direction: lark.Token | None = None) -> tuple[Member, bool]:
        return member, direction is not None and direction.value.lower() == "desc"


@functools.cache
def _parser() -> lark.Lark:
    grammar = resources.files("flightlog_server.domain").joinpath("filter.lark").read_text()
    return lark.Lark(
        grammar,
        parser="lalr",
        lexer="contextual",
        start=["start", "order"],
        transformer=_Build(),
        propagate_positions=False,
        maybe_placeholders=True,
    )


# What a terminal is, in the words of an error message.
_EXPECTED = {
    "COMPARATOR": "a comparison (= != < <= > >=)",
    "HAS": "':'",
    "STAR": "'*'",
    "MINUS": "'-'",
    "_LPAR": "'('",
    "LPAR": "'('",
    "_RPAR": "')'",
    "RPAR": "')'",
    "_COMMA": "','",
    "COMMA": "','",
    "_DOT": "'.'",
    "DOT": "'.'",
    "_AND": "AND",
    "_OR": "OR",
    "_NOT": "NOT",
    "_IN": "IN",
    "NAME": "a name",
    "STRING": "a quoted string",
    "NUMBER": "a number",
    "TIMESTAMP": "a timestamp (RFC 3339)",
    "DURATION": "a duration (like 90s)",
    "FUNCTION_NAME": "has(...)",
    "DIRECTION": "asc or desc",
    "$END": "the end",
}


def _expected(names: Any) -> str:
    words = sorted({_EXPECTED.get(str(n), str(n)) for n in names})
    return ", ".join(words) if words else "nothing more"


def _end(text: str) -> str:
    """line:column just after the end of ``text``."""
    lines = text.split("\n")
    return f"{len(lines)}:{len(lines[-1]) + 1}"


def _syntax_error(field_name: str, text: str, error: UnexpectedInput) -> InvalidArgument:
    at_end = error.line in (None, -1)
    where = _end(text) if at_end else f"{error.line}:{error.column}"
    if isinstance(error, UnexpectedCharacters):
        found = f"unexpected character {error.char!r}"
        expected = _expected(error.allowed or ())
    elif isinstance(error, UnexpectedEOF):
        found = "unexpected end"
        expected = _expected(error.expected)
    elif isinstance(error, UnexpectedToken):
        token = error.token
        if token.type == "$END":
            found = "unexpected end"
            where = _end(text)
        else:
            shown = token.value if len(token.value) <= 40 else token.value[:40] + "..."
            found = f"unexpected {shown!r}"
        expected = _expected(error.accepts or error.expected)
    else:
        found, expected = "syntax error", "a valid expression"
    return InvalidArgument.one(field_name, f"{where}: {found}; expected {expected}")


def _check_text(field_name: str, text: str, limit: int) -> None:
    if len(text) > limit:
        raise InvalidArgument.one(field_name, f"must be at most {limit:,} characters")
    if "\x00" in text:
        column = text.index("\x00")
        raise InvalidArgument.one(field_name, f"must not hold NUL characters (at offset {column})")


def parse_filter(text: str) -> Node | None:
    """The syntax tree of ``text`` (None for an empty filter); INVALID_ARGUMENT on ``filter``."""
    _check_text("filter", text, MAX_FILTER_CHARS)
    if not text.strip():
        return None
    try:
        node: Node | None = _parser().parse(text, start="start")  # type: ignore[assignment]
    except UnexpectedInput as error:
        raise _syntax_error("filter", text, error) from None
    if node is not None:
        if node.depth > MAX_FILTER_DEPTH:
            raise InvalidArgument.one(
                "filter", f"nests {node.depth} deep; at most {MAX_FILTER_DEPTH} levels are allowed"
            )
        if node.terms > MAX_FILTER_TERMS:
            raise InvalidArgument.one(
                "filter", f"has {node.terms} terms; at most {MAX_FILTER_TERMS} are allowed"
            )
    return node


def parse_order_by(text: str) -> list[tuple[Member, bool]]:
    """(member, descending) per key of ``text``; INVALID_ARGUMENT on ``order_by``."""
    _check_text("order_by", text, MAX_ORDER_BY_CHARS)
    if not text.strip():
        return []
    try:
        keys: list[tuple[Member, bool]] = _parser().parse(text, start="order")  # type: ignore[assignment]
    except UnexpectedInput as error:
        raise _syntax_error("order_by", text, error) from None
    if len(keys) > MAX_ORDER_KEYS:
        raise InvalidArgument.one("order_by", f"must have at most {MAX_ORDER_KEYS} keys")
    return keys


# --- meaning ---------------------------------------------------------------------------------


class FieldKind(StrEnum):
    SESSION_ID = "session_id"
    NAME = "name"
    DESCRIPTION = "description"
    CREATED = "created"
    MODIFIED = "modified"
    START_TIME = "start_time"
    END_TIME = "end_time"
    DURATION = "duration"
    TAGS = "tags"
    DEVICES = "devices"
    DATASETS = "datasets"
    FILES = "files"
    CUSTOM_FIELD = "custom_fields"
    METRIC = "metrics"


COLLECTIONS = frozenset({FieldKind.TAGS, FieldKind.DEVICES, FieldKind.DATASETS, FieldKind.FILES})
FILTERABLE_NAMES = (
    "name",
    "description",
    "created",
    "modified",
    "start_time",
    "end_time",
    "duration",
    "tags",
    "devices",
    "datasets",
    "files",
    "session_id",
    "custom_fields.<name>",
    "metrics.<name>",
)


class ValueType(StrEnum):
    TEXT = "text"  # name, description, string and enum custom fields, ids
    INSTANT = "instant"  # nanoseconds since the epoch
    DURATION = "duration"  # nanoseconds
    NUMBER = "number"
    BOOLEAN = "boolean"


@dataclass(frozen=True)
class Field:
    kind: FieldKind
    name: str  # as written, e.g. "custom_fields.site"
    custom_field: CustomFieldDef | None = None
    metric_id: str | None = None

    @property
    def value_type(self) -> ValueType:
        if self.custom_field is not None:
            return {
                CustomFieldType.BOOLEAN: ValueType.BOOLEAN,
                CustomFieldType.ENUM: ValueType.TEXT,
                CustomFieldType.STRING: ValueType.TEXT,
                CustomFieldType.NUMBER: ValueType.NUMBER,
                CustomFieldType.TIMESTAMP: ValueType.INSTANT,
            }[self.custom_field.type]
        if self.kind is FieldKind.METRIC:
            return ValueType.NUMBER
        if self.kind in (FieldKind.CREATED, FieldKind.MODIFIED):
            return ValueType.INSTANT
        if self.kind in (FieldKind.START_TIME, FieldKind.END_TIME):
            return ValueType.INSTANT
        if self.kind is FieldKind.DURATION:
            return ValueType.DURATION
        return ValueType.TEXT

    @property
    def always_set(self) -> bool:
        return self.kind in (FieldKind.SESSION_ID, FieldKind.CREATED, FieldKind.MODIFIED)

    @property
    def identity(self) -> str:
        """What the field is, for resume tokens: a recreated custom field is another field."""
        if self.custom_field is not None:
            return f"cf:{self.custom_field.custom_field_id}:{self.custom_field.type.value}"
        if self.metric_id is not None:
            return f"m:{self.metric_id}"
        return self.kind.value


class Op(StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    LE = "<="
    GT = ">"
    GE = ">="
    MATCHES = "matches"  # a string pattern with = (operand: parts)
    NOT_MATCHES = "not_matches"  # with !=
    IN = "in"
    PRESENT = "present"  # set, or (collections) not empty
    CONTAINS = "contains"  # collections: has this element


Operand: TypeAlias = "str | int | float | bool | tuple[str, ...]"


@dataclass(frozen=True)
class Condition:
    field: Field
    op: Op
    operands: tuple[Operand, ...] = ()


@dataclass(frozen=True)
class AllOf:
    items: tuple[Resolved, ...]


@dataclass(frozen=True)
class AnyOf:
    items: tuple[Resolved, ...]


@dataclass(frozen=True)
class NoneOf:
    item: Resolved


Resolved: TypeAlias = "Condition | AllOf | AnyOf | NoneOf"


@dataclass(frozen=True)
class Names:
    """What an org's filters can name: its session custom fields (every status, so that a
    non-Ready one is named as such) and its metrics (name -> metric ID)."""

    custom_fields: Mapping[str, CustomFieldDef] = field(default_factory=dict)
    metrics: Mapping[str, str] = field(default_factory=dict)
    # For error messages, when a name is not found: some of the org's Ready custom fields and
    # metrics.
    known_custom_fields: tuple[str, ...] = ()
    known_metrics: tuple[str, ...] = ()


def referenced_names(nodes: list[Member]) -> tuple[set[str], set[str]]:
    """The custom-field and metric names that ``nodes`` mention (to look them up)."""
    custom: set[str] = set()
    metrics: set[str] = set()
    for member in nodes:
        if len(member.parts) >= 2 and member.parts[0] == "custom_fields":
            custom.add(".".join(member.parts[1:]))
        elif len(member.parts) >= 2 and member.parts[0] == "metrics":
            metrics.add(".".join(member.parts[1:]))
    return custom, metrics


def members(node: Node | None) -> list[Member]:
    """Every member ``node`` names (iteratively: the tree's depth is bounded, but why recurse)."""
    found: list[Member] = []
    stack: list[Node] = [] if node is None else [node]
    while stack:
        item = stack.pop()
        if isinstance(item, And | Or):
            stack.extend(item.items)
        elif isinstance(item, Not):
            stack.append(item.item)
        else:
            found.append(item.member)
    return found


def _known() -> str:
    return ", ".join(FILTERABLE_NAMES)


def resolve_field(request_field: str, member: Member, names: Names) -> Field:
    """The field ``member`` names; INVALID_ARGUMENT saying which names are known otherwise."""
    head, rest = member.parts[0], member.parts[1:]
    at = f"{member.at}: "
    if head == "metadata":
        raise InvalidArgument.one(
            request_field,
            f"{at}metadata is not filterable ({member.dotted!r}); filter on tags or custom fields",
        )
    if head == "custom_fields":
        if not rest:
            raise InvalidArgument.one(request_field, f"{at}name a custom field: custom_fields.NAME")
        name = ".".join(rest)
        definition = names.custom_fields.get(name)
        if definition is None:
            known = ", ".join(names.known_custom_fields)
            raise InvalidArgument.one(
                request_field,
                f"{at}{name!r} is not a custom field defined for sessions"
                + (f" (ready fields: {known})" if known else ""),
            )
        if definition.status is not _READY:
            raise InvalidArgument.one(
                request_field,
                f"{at}custom field {name!r} is {definition.status.value}, not ready",
            )
        return Field(FieldKind.CUSTOM_FIELD, member.dotted, custom_field=definition)
    if head == "metrics":
        if not rest:
            raise InvalidArgument.one(request_field, f"{at}name a metric: metrics.NAME")
        name = ".".join(rest)
        metric_id = names.metrics.get(name)
        if metric_id is None:
            known = ", ".join(names.known_metrics)
            raise InvalidArgument.one(
                request_field,
                f"{at}{name!r} is not a metric published in this org"
                + (f" (metrics: {known})" if known else ""),
            )
        return Field(FieldKind.METRIC, member.dotted, metric_id=metric_id)
    try:
        kind = FieldKind(head)
    except ValueError:
        kind = None
    if kind is None or rest or kind in (FieldKind.CUSTOM_FIELD, FieldKind.METRIC):
        raise InvalidArgument.one(
            request_field, f"{at}unknown field {member.dotted!r}; known fields: {_known()}"
        )
    return Field(kind, head)


_READY = CustomFieldStatus.READY
_ORDERED_OPS = {"<": Op.LT, "<=": Op.LE, ">": Op.GT, ">=": Op.GE}


def resolve_filter(node: Node | None, names: Names) -> Resolved | None:
    """The typed tree of ``node``; INVALID_ARGUMENT on ``filter`` naming the first problem."""
    if node is None:
        return None
    in_values = 0

    def walk(item: Node) -> Resolved:
        nonlocal in_values
        if isinstance(item, And):
            return AllOf(tuple(walk(i) for i in item.items))
        if isinstance(item, Or):
            return AnyOf(tuple(walk(i) for i in item.items))
        if isinstance(item, Not):
            return NoneOf(walk(item.item))
        target = resolve_field("filter", item.member, names)
        if isinstance(item, Bare):
            raise InvalidArgument.one(
                "filter",
                f"{item.member.at}: {item.member.dotted!r} alone is not a condition; expected a"
                " comparison (= != < <= > >=), ':' or IN after it",
            )
        if isinstance(item, Present):
            return Condition(target, Op.PRESENT)
        if isinstance(item, Within):
            in_values += len(item.values)
            if in_values > MAX_IN_VALUES_PER_FILTER:
                raise InvalidArgument.one(
                    "filter", f"must hold at most {MAX_IN_VALUES_PER_FILTER:,} IN values in all"
                )
            if target.value_type in (ValueType.BOOLEAN,):
                raise InvalidArgument.one(
                    "filter", f"{item.member.at}: IN does not apply to {target.name}"
                )
            operands = tuple(_operand(target, v) for v in item.values)
            return Condition(target, Op.IN, operands)
        return _comparison(target, item)

    return walk(node)


def _comparison(target: Field, item: Compare) -> Condition:
    at = item.member.at
    if target.kind in COLLECTIONS:
        if item.op != ":":
            raise InvalidArgument.one(
                "filter",
                f'{at}: {target.name} holds several values: use {target.name}:"value",'
                f" {target.name} IN (...) or {target.name}:*",
            )
        if item.value.kind == "string" and len(item.value.parts) > 1:
            raise InvalidArgument.one(
                "filter", f"{item.value.at}: wildcards apply to string fields, not {target.name}"
            )
        return Condition(target, Op.CONTAINS, (_operand(target, item.value),))
    if item.op == ":":
        raise InvalidArgument.one(
            "filter",
            f"{at}: ':' on {target.name} only takes '*' (set); compare it with = instead",
        )
    value_type = target.value_type
    if item.op in _ORDERED_OPS:
        ordered = value_type in (ValueType.NUMBER, ValueType.INSTANT, ValueType.DURATION) or (
            target.kind is FieldKind.NAME
            or (target.custom_field is not None and target.custom_field.type is _STRING)
        )
        if not ordered:
            raise InvalidArgument.one(
                "filter", f"{at}: {item.op} does not apply to {target.name} (not ordered)"
            )
        return Condition(target, _ORDERED_OPS[item.op], (_operand(target, item.value),))
    wildcard = (
        item.value.kind == "string"
        and len(item.value.parts) > 1
        and (
            target.kind in (FieldKind.NAME, FieldKind.DESCRIPTION)
            or (target.custom_field is not None and target.custom_field.type is _STRING)
        )
    )
    if wildcard:
        _check_length(item.value)
        return Condition(
            target, Op.MATCHES if item.op == "=" else Op.NOT_MATCHES, (item.value.parts,)
        )
    return Condition(target, Op.EQ if item.op == "=" else Op.NE, (_operand(target, item.value),))


_STRING = CustomFieldType.STRING


def _check_length(value: Literal) -> None:
    if len(value.text) > MAX_LITERAL_CHARS + 2:
        raise InvalidArgument.one(
            "filter", f"{value.at}: a literal must be at most {MAX_LITERAL_CHARS:,} characters"
        )


def _operand(target: Field, value: Literal) -> Operand:
    """The literal as a value of the field's type."""
    _check_length(value)
    value_type = target.value_type
    where = f"{value.at}: "
    if value_type is ValueType.TEXT:
        if value.kind not in ("string", "name"):
            raise InvalidArgument.one(
                "filter", f"{where}{target.name} is text: expected a quoted string"
            )
        text = value.string if value.kind == "string" else value.text
        definition = target.custom_field
        enum = definition is not None and definition.type is CustomFieldType.ENUM
        if enum and definition is not None and text not in definition.enum_values:
            raise InvalidArgument.one(
                "filter",
                f"{where}{text!r} is not a value of {target.name}; its values: "
                + ", ".join(definition.enum_values),
            )
        return text
    if value_type is ValueType.BOOLEAN:
        if value.kind == "name" and value.text.lower() in ("true", "false"):
            return value.text.lower() == "true"
        raise InvalidArgument.one(
            "filter", f"{where}{target.name} is boolean: expected true or false"
        )
    if value_type is ValueType.NUMBER:
        if value.kind != "number":
            raise InvalidArgument.one(
                "filter", f"{where}{target.name} is a number: expected a number"
            )
        number = float(value.text)
        if math.isnan(number):
            raise InvalidArgument.one("filter", f"{where}expected a number")
        return number
    if value_type is ValueType.INSTANT:
        text = value.string if value.kind == "string" else value.text
        if value.kind not in ("timestamp", "string"):
            raise InvalidArgument.one(
                "filter",
                f"{where}{target.name} is a timestamp: expected RFC 3339 (2026-01-31T12:00:00Z)",
            )
        return parse_timestamp(text, where)
    # DURATION
    text = value.string if value.kind == "string" else value.text
    if value.kind not in ("duration", "string"):
        raise InvalidArgument.one(
            "filter", f"{where}{target.name} is a duration: expected seconds with an s, like 90s"
        )
    return parse_duration(text, where)


_TIMESTAMP = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt](\d{2}):(\d{2}):(\d{2})(?:\.(\d+))?([Zz]|([+-])(\d{2}):(\d{2}))"
)
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def parse_timestamp(text: str, where: str = "") -> int:
    """Nanoseconds since the epoch of an RFC 3339 timestamp (at most 9 fractional digits)."""
    match = _TIMESTAMP.fullmatch(text)
    if match is None:
        raise InvalidArgument.one(
            "filter", f"{where}{text[:40]!r} is not an RFC 3339 timestamp (2026-01-31T12:00:00Z)"
        )
    year, month, day, hour, minute, second, fraction, _zone, sign, zh, zm = match.groups()
    if fraction and len(fraction) > 9:
        raise InvalidArgument.one("filter", f"{where}timestamps have at most 9 fractional digits")
    try:
        offset = dt.timedelta(0)
        if sign is not None:
            offset = dt.timedelta(hours=int(zh), minutes=int(zm))
            if sign == "-":
                offset = -offset
        moment = dt.datetime(
            int(year),
            int(month),
            int(day),
            int(hour),
            int(minute),
            int(second),
            tzinfo=dt.timezone(offset),
        )
    except ValueError as error:
        raise InvalidArgument.one("filter", f"{where}not a valid timestamp: {error}") from None
    seconds = (moment - _EPOCH) // dt.timedelta(seconds=1)
    nanos = int((fraction or "0").ljust(9, "0"))
    return seconds * 1_000_000_000 + nanos


def parse_duration(text: str, where: str = "") -> int:
    """Nanoseconds of a duration written as seconds with an ``s`` suffix."""
    if not text.endswith("s"):
        raise InvalidArgument.one("filter", f"{where}durations are seconds with an s, like 90s")
    try:
        seconds = Decimal(text[:-1])
    except InvalidOperation:
        raise InvalidArgument.one("filter", f"{where}{text[:40]!r} is not a duration") from None
    if not seconds.is_finite() or seconds.as_tuple().exponent < -9:  # type: ignore[operator]
        raise InvalidArgument.one("filter", f"{where}durations have at most 9 fractional digits")
    if abs(seconds) > 10**12:
        raise InvalidArgument.one("filter", f"{where}durations are at most 10^12 seconds")
    return int(seconds * 1_000_000_000)


@dataclass(frozen=True)
class OrderKey:
    field: Field
    descending: bool


_SORTABLE = frozenset(
    {
        FieldKind.SESSION_ID,
        FieldKind.NAME,
        FieldKind.CREATED,
        FieldKind.MODIFIED,
        FieldKind.START_TIME,
        FieldKind.END_TIME,
        FieldKind.DURATION,
        FieldKind.CUSTOM_FIELD,
        FieldKind.METRIC,
    }
)


def resolve_order_by(keys: list[tuple[Member, bool]], names: Names) -> list[OrderKey]:
    """The order's keys, up to and including ``session_id`` if named (the tiebreaker)."""
    resolved: list[OrderKey] = []
    seen: set[str] = set()
    for member, descending in keys:
        target = resolve_field("order_by", member, names)
        if target.kind not in _SORTABLE:
            raise InvalidArgument.one(
                "order_by",
                f"{member.at}: cannot order by {target.name}; sortable: session_id, name, created,"
                " modified, start_time, end_time, duration, custom_fields.<name>, metrics.<name>",
            )
        if target.identity in seen:
            raise InvalidArgument.one("order_by", f"{member.at}: {target.name} is named twice")
        seen.add(target.identity)
        resolved.append(OrderKey(target, descending))
        if target.kind is FieldKind.SESSION_ID:
            break
    return resolved
