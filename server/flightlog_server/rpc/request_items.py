"""Reading a request's repeated and message fields on the wire before the request is built.

protobuf's parser builds a whole message at once, holding the event loop (and the GIL: another
thread would not help) while it does, and it lays out every element of a repeated field in far
more memory than the element takes on the wire: an empty partition is two bytes on the wire and
93 in memory, an empty string 42 (its slot in an array that doubles as it grows, the old arrays
kept until the message is freed). A 1 MiB RegisterFile of empty partitions took the parser 20 ms
and 45 MB before any count in it could be checked.

So a request that could cost more than its budget is first *read*: its wire format is walked
field by field, descending only into the fields that cost memory beyond their message's layout
(repeated and message fields) and stepping over everything else by its length. Every element of
a repeated field is charged what protobuf (upb) will allocate for it (``element_cost``: its
message's layout, its slot and the array's growth, a string's copy), and every message field its
layout. The request is refused, naming the field being read at that moment, as soon as

- it holds more than ``rules.MAX_REQUEST_ITEMS`` items (elements of repeated message fields and
  map entries, at any depth, all counted together), or
- building it would take more than ``rules.MAX_REQUEST_BUILD_RATIO`` times its size, a request
  counting as ``rules.REQUEST_BUILD_FLOOR_BYTES`` at least.

Nothing is built meanwhile: the reader's memory is a stack of the levels it is in. It is plain
Python (no library reads the wire format without building the message), about 0.2 µs a field
(1 MiB of fields to step over: 90-110 ms; 40,000 session IDs: 5 ms, the elements that follow in
one field being read in a tight loop), run in slices so that other calls go on
(``pacing.run_sliced``). A request that cannot reach
either bound (every element charged at the densest its type allows) is not read at all. What
is not charged: single strings (copied at every occurrence, 8 bytes at a time, under 3 times
their size) and unknown fields. The charges are checked against protobuf's real allocations by
``tests/unit/test_request_items.py``.

RegisterFile's and AddSessionFiles' requests are the exceptions, read by ``rpc.piecewise``
instead and never built whole: RegisterFile's documented limits allow 100,000 extents of two
bytes, which no bound proportional to their size would let be built.
"""

from __future__ import annotations

import math
from collections.abc import Generator, Iterable
from dataclasses import dataclass, field
from functools import cache

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError

from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.pacing import run_sliced
from flightlog_server.rpc.wire_format import (
    END_GROUP,
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    MAX_DEPTH,
    START_GROUP,
    VARINT,
    read_varint,
)

# Fields read between two chances for the loop to run something else (``run_sliced``).
_FIELDS_PER_STEP = 4096


@dataclass(eq=False, slots=True)
class _Repeated:
    """A repeated field and what each of its elements costs once built."""

    name: str
    item: int  # 1 for an element of a repeated message field or a map entry, else 0
    slot: int  # bytes of its slot in the array that holds the elements (a map's: its table)
    element: int  # bytes besides the slot: its message, or a map entry's value and node
    packed_width: int  # wire bytes of one element when packed, at least (0: never packed)
    copied: bool  # a string or bytes: its contents are copied too, 8 bytes at a time
    plan: _Plan | None  # the plan of its elements, if they lead to repeated fields themselves


@dataclass(eq=False, slots=True)
class _Single:
    """A single message field: built when present, so charged its layout once (a field sent
    twice is merged into one message; a oneof's member is charged every time, as switching
    members builds a new one)."""

    name: str
    layout: int
    oneof: bool
    plan: _Plan | None  # the plan of its message, if that holds message fields itself


# A message type's fields that cost memory besides its own layout (repeated fields and message
# fields), by field number. A dict filled after it is made, so that recursive types (Struct) can
# refer to their own plan.
_Plan = dict[int, _Repeated | _Single]


@dataclass(eq=False, slots=True)
class _Message:
    """What has been read of one message that will be built: the elements of its repeated
    fields (by field number) and its single message fields. A single field sent twice is merged
    into one message by the parser, so both occurrences are read into the same ``_Message``: its
    arrays grow as one."""

    counts: dict[int, int] = field(default_factory=dict)
    singles: dict[int, _Message] | None = None


@dataclass(eq=False, slots=True)
class _Level:
    """A message field being read: its plan, where it ends, what has been read in it, and how
    it is named in its parent (for the path on refusal)."""

    plan: _Plan
    end: int
    message: _Message
    parent: _Level | None
    name: str
    index: int  # the element's index, for a repeated field's (-1 for a single field's)
    group: int = 0  # the field number of a group being stepped over (0: a message)
    depth: int = 0


class RequestItems:
    """The check of one request type (see the module's docstring)."""

    def __init__(self, request: Descriptor) -> None:
        self._plan = _plan_of(request)
        self._densest = _densest(self._plan)

    async def check(self, raw: bytes) -> None:
        """Raises ``InvalidArgument`` if ``raw`` is over either bound (or ``DecodeError`` if it
        is not protobuf at all); the caller parses the request itself afterwards."""
        budget = rules.MAX_REQUEST_BUILD_RATIO * max(len(raw), rules.REQUEST_BUILD_FLOOR_BYTES)
        if len(raw) <= 2 * rules.MAX_REQUEST_ITEMS and len(raw) * self._densest <= budget:
            return  # too short to reach either bound, however its elements are laid out
        read = await run_sliced(_read(raw, self._plan, budget))
        if read.refused is not None:
            raise InvalidArgument.one(read.refused, _refusal(read.items, budget))

    def read_whole(self, raw: bytes) -> Reading:
        """What reading all of ``raw`` finds, past either bound (for the tests)."""
        steps = _read(raw, self._plan, budget=None)
        pauses = 0
        while True:
            try:
                next(steps)
            except StopIteration as done:
                whole: Reading = done.value
                whole.pauses = pauses
                return whole
            pauses += 1


@dataclass
class Reading:
    """What reading a request found: its items, the bytes building it would take (as charged),
    and the path of the field being read when it passed a bound (None: it did not)."""

    items: int
    cost: int
    refused: str | None = None
    pauses: int = 0  # how often the reading let other work run (counted by ``read_whole``)


def request_items(request: Descriptor) -> RequestItems | None:
    """The check of ``request``'s type, or None when it cannot hold a repeated field (its cost
    is then its types' layouts and its strings, bounded by its size)."""
    return RequestItems(request) if _plan_of(request) else None


def _refusal(items: int, budget: int) -> str:
    if items > rules.MAX_REQUEST_ITEMS:
        return (
            f"the request holds more than {rules.MAX_REQUEST_ITEMS:,} items (elements of"
            " repeated message fields and map entries, at any depth, all counted together)"
        )
    return (
        f"building the request would take more than {budget:,} bytes"
        f" ({rules.MAX_REQUEST_BUILD_RATIO} times its size, counting it as at least"
        f" {rules.REQUEST_BUILD_FLOOR_BYTES:,} bytes): its elements are too many for their size"
    )


def _read(raw: bytes, plan: _Plan, budget: int | None) -> Generator[None, None, Reading]:
    """Reads ``raw`` (a message of ``plan``) up to the field where it passes a bound (with no
    ``budget``, to its end), yielding every ``_FIELDS_PER_STEP`` fields read.

    One loop, no recursion: a level is pushed when a field leading to repeated fields is entered
    and popped where it ends (or, for a group, at its end tag). The level's plan, end and counts
    are kept in locals, and one-byte varints are read inline: this loop is the whole cost."""
    level = _Level(plan, len(raw), _Message(), parent=None, name="", index=-1)
    fields_of, end, counts = level.plan, level.end, level.message.counts
    item_limit = rules.MAX_REQUEST_ITEMS if budget is not None else math.inf
    cost_limit = budget if budget is not None else math.inf
    position = items = cost = 0
    pause = _FIELDS_PER_STEP
    try:
        while True:
            if position >= end:
                if position > end or level.group:
                    raise DecodeError("a field runs past the end of its message")
                if level.parent is None:
                    return Reading(items, cost)
                level = level.parent
                fields_of, end, counts = level.plan, level.end, level.message.counts
                continue
            pause -= 1
            if pause <= 0:
                pause = _FIELDS_PER_STEP
                yield
            tag = raw[position]
            if tag < 0x80:
                position += 1
            else:
                tag, position = read_varint(raw, position)
            number, wire = tag >> 3, tag & 7
            if wire == LENGTH_DELIMITED:
                length = raw[position]
                if length < 0x80:
                    position += 1
                else:
                    length, position = read_varint(raw, position)
                start = position
                position += length
                if position > end:
                    raise DecodeError("a field runs past the end of its message")
                read = fields_of.get(number)
                if read is None:
                    continue
                if isinstance(read, _Single):
                    built = _built(level.message, number, read.oneof)
                    if built is None:  # merged into one built before
                        built = _merged(level.message, number)
                    else:
                        cost += read.layout
                        if cost > cost_limit:
                            return Reading(items, cost, _path(level, read.name))
                    if read.plan is not None and length:
                        level = _enter(level, read.plan, position, built, read.name, -1)
                        fields_of, end, counts = level.plan, level.end, built.counts
                        position = start
                    continue
                copy = (length + 7) & -8  # a string's copy (if the field is one)
                if read.packed_width:
                    added = length // read.packed_width
                elif read.plan is None and tag < 0x80:
                    # The elements that follow in the same field, to the end of the slice:
                    # read in a tight loop (100,000 extents, or IDs, take 20 ms, not 80).
                    added = 1
                    while added < pause and position < end and raw[position] == tag:
                        length = raw[position + 1]
                        if length >= 0x80:
                            break
                        position += 2 + length
                        copy += (length + 7) & -8
                        added += 1
                    if position > end:
                        raise DecodeError("a field runs past the end of its message")
                    pause -= added - 1
                else:
                    added = 1
            elif wire in (VARINT, FIXED64, FIXED32):
                if wire == VARINT:
                    if raw[position] < 0x80:
                        position += 1
                    else:
                        position = read_varint(raw, position)[1]
                else:
                    position += 8 if wire == FIXED64 else 4
                read = fields_of.get(number)
                if not isinstance(read, _Repeated) or not read.packed_width:
                    continue
                added = 1  # an unpacked element of a repeated scalar field
            elif wire == START_GROUP and number:
                level = _enter(level, {}, end, _Message(), "", -1, group=number)
                fields_of, counts = level.plan, level.message.counts
                continue
            elif wire == END_GROUP and level.group == number:
                level = level.parent  # type: ignore[assignment]  # a group always has a parent
                fields_of, end, counts = level.plan, level.end, level.message.counts
                continue
            else:
                raise DecodeError(f"wire type {wire} of field {number} is not valid here")
            before = counts.get(number, 0)
            count = counts[number] = before + added
            cost += read.element * added
            if added != 1 or not before & (before - 1):  # else the array has room
                cost += array_bytes(read.slot, count) - array_bytes(read.slot, before)
            if read.copied:
                cost += copy
            items += read.item * added
            if items > item_limit or cost > cost_limit:
                return Reading(items, cost, _path(level, read.name))
            if read.plan is not None and length:  # an element of its own
                element = _Message()
                level = _enter(level, read.plan, position, element, read.name, count - 1)
                fields_of, end, counts = level.plan, level.end, element.counts
                position = start
    except IndexError:
        raise DecodeError("the message ends inside a field") from None


def _enter(
    level: _Level,
    plan: _Plan,
    end: int,
    message: _Message,
    name: str,
    index: int,
    group: int = 0,
) -> _Level:
    """The level of a field of ``level`` that ends at ``end`` (for a group: at its end tag)."""
    if level.depth >= MAX_DEPTH:
        raise DecodeError("nested too deeply")
    return _Level(plan, end, message, level, name, index, group, level.depth + 1)


def _built(message: _Message, number: int, oneof: bool) -> _Message | None:
    """A new message for single field ``number`` of ``message`` if this occurrence builds one
    (None if it merges into the one an earlier occurrence built)."""
    if message.singles is None:
        message.singles = {}
    if number in message.singles and not oneof:
        return None
    built = message.singles[number] = _Message()
    return built


def _merged(message: _Message, number: int) -> _Message:
    """The message single field ``number`` of ``message`` was built into."""
    assert message.singles is not None
    return message.singles[number]


def array_bytes(slot: int, count: int) -> int:
    """Bytes allocated for an array of ``count`` elements of ``slot`` bytes each, as upb
    allocates them: a 24-byte header, then room for 4, doubled whenever it is full, the arrays
    outgrown kept until the message is freed (4 + 8 + ... + the last). It grows only past a
    power of two."""
    if not count:
        return 0
    return _ARRAY_HEADER + slot * (2 * max(4, 1 << (count - 1).bit_length()) - 4)


def _path(level: _Level, name: str) -> str:
    """The path of field ``name`` of the message being read at ``level``."""
    parts = [name]
    at: _Level | None = level
    while at is not None and at.parent is not None:
        parts.append(at.name if at.index < 0 else f"{at.name}[{at.index}]")
        at = at.parent
    return ".".join(reversed(parts))


# --- What an element costs, from its type's descriptor ------------------------------------------

_WIDTH = {  # bytes of a scalar in memory
    FieldDescriptor.TYPE_BOOL: 1,
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_INT64: 8,
    FieldDescriptor.TYPE_UINT64: 8,
    FieldDescriptor.TYPE_SINT64: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_STRING: 16,  # a pointer and a length
    FieldDescriptor.TYPE_BYTES: 16,
    FieldDescriptor.TYPE_MESSAGE: 8,  # a pointer
}
_PACKED_WIDTH = {  # wire bytes of one packed element, at least
    FieldDescriptor.TYPE_DOUBLE: 8,
    FieldDescriptor.TYPE_FIXED64: 8,
    FieldDescriptor.TYPE_SFIXED64: 8,
    FieldDescriptor.TYPE_FLOAT: 4,
    FieldDescriptor.TYPE_FIXED32: 4,
    FieldDescriptor.TYPE_SFIXED32: 4,
}
# A map's entry, besides its value (its key and node), and its share of the hash table, which
# grows like an array (a new map's first entry costs 264 bytes, 48 each next, the table doubling
# after 4): measured with glibc's mallinfo2, not derived.
_MAP_ENTRY = 16
_MAP_TABLE_SLOT = 48
_ARRAY_HEADER = 24


def layout(descriptor: Descriptor) -> int:
    """Bytes of a message of this type as protobuf (upb) lays it out: a header, a presence bit
    for each field that has presence, each field's width (a oneof's widest member and its case),
    rounded to 8. Matches upb's allocations for every request type (the tests compare them)."""
    proto = descriptor_pb2.DescriptorProto()
    descriptor.CopyToProto(proto)  # the only place that tells a real oneof from an `optional`
    optional = {f.name for f in proto.field if f.proto3_optional}
    size = 8
    presence = 0
    oneofs = set()
    for f in descriptor.fields:
        if f.containing_oneof is not None and f.name not in optional:
            oneofs.add(f.containing_oneof)
        else:
            size += 8 if f.is_repeated else _WIDTH.get(f.type, 4)
            presence += f.has_presence
    for oneof in oneofs:
        size += 4 + max(_WIDTH.get(f.type, 4) for f in oneof.fields)
    size += (presence + 7) // 8
    return (size + 7) // 8 * 8


def element_cost(f: FieldDescriptor) -> tuple[int, int, int]:
    """A repeated field's element: the bytes of its slot in the field's array (for a map, in
    its hash table), the bytes it takes besides (its message; for a map's entry, its value and
    its node), and its least width when packed (0 if it cannot be)."""
    inner = f.message_type
    if inner is None:  # a scalar or a string: packed if a number (never a string)
        packed = 0 if f.type in (f.TYPE_STRING, f.TYPE_BYTES) else _PACKED_WIDTH.get(f.type, 1)
        return _WIDTH.get(f.type, 4), 0, packed
    if inner.GetOptions().map_entry:  # stored in the map's hash table
        value = inner.fields_by_name["value"].message_type
        value_layout = 0 if value is None else layout(value)
        return _MAP_TABLE_SLOT, value_layout + _MAP_ENTRY, 0
    return 8, layout(inner), 0


@cache
def _plan_of(request: Descriptor) -> _Plan:
    """The plan of ``request`` (empty if it cannot hold a repeated field: its memory is then
    its types' layouts, bounded)."""
    reachable = _reachable(request)
    if not any(f.is_repeated for d in reachable for f in d.fields):
        return {}
    plans: dict[Descriptor, _Plan] = {
        d: {} for d in reachable if any(f.message_type or f.is_repeated for f in d.fields)
    }
    for descriptor, plan in plans.items():
        for f in descriptor.fields:
            inner = plans.get(f.message_type) if f.message_type is not None else None
            if f.is_repeated:
                slot, element, packed = element_cost(f)
                item = int(f.message_type is not None)
                copied = f.type in (f.TYPE_STRING, f.TYPE_BYTES)
                plan[f.number] = _Repeated(f.name, item, slot, element, packed, copied, inner)
            elif f.message_type is not None:
                oneof = f.containing_oneof is not None and len(f.containing_oneof.fields) > 1
                # A map's value is built with its entry, present or not: charged with the entry.
                built = 0 if descriptor.GetOptions().map_entry else layout(f.message_type)
                plan[f.number] = _Single(f.name, built, oneof, inner)
    return plans[request]


def _reachable(root: Descriptor) -> list[Descriptor]:
    """The message types a message of type ``root`` can hold, itself included."""
    reachable: list[Descriptor] = []
    stack = [root]
    while stack:
        descriptor = stack.pop()
        if descriptor not in reachable:
            reachable.append(descriptor)
            stack += [f.message_type for f in descriptor.fields if f.message_type is not None]
    return reachable


def _densest(plan: _Plan) -> float:
    """The most memory a wire byte of this plan's requests can cost: its cheapest element on
    the wire (two bytes, or one packed) charged in full, as if each began an array of its own
    (``array_bytes(slot, n)`` is at most ``n * 4 * slot`` plus a header), a string's copy
    rounded up."""
    densest = 0.0
    for read in _walk_plans(plan):
        if isinstance(read, _Repeated):
            most = read.element + 4 * read.slot + _ARRAY_HEADER + 7 * read.copied
            densest = max(densest, most / min(read.packed_width or 2, 2) + read.copied)
        else:
            densest = max(densest, read.layout / 2)
    return densest


def _walk_plans(plan: _Plan) -> Iterable[_Repeated | _Single]:
    seen: list[_Plan] = []
    stack = [plan]
    while stack:
        at = stack.pop()
        if any(at is s for s in seen):
            continue
        seen.append(at)
        for read in at.values():
            yield read
            if read.plan is not None:
                stack.append(read.plan)
