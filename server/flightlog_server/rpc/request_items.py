"""Counting a request's items before the request is built.

protobuf's parser builds a whole message at once, holding the event loop (and the GIL: another
thread would not help) while it does, and an *item* (an element of a repeated message field or a
map entry) can be two bytes on the wire: a 1 MiB RegisterFile of empty partitions is 524,288 of
them, which took the parser 20 ms and 45 MB on a quiet machine (70-110 ms on a busy one) before
any count in the request could be checked.

So a request that could hold more than ``rules.MAX_REQUEST_ITEMS`` items (every item takes at
least two bytes: its tag and its length) is first parsed as its *shape*: a message type derived
from the request's descriptor that keeps only the fields leading to items, and declares an item
that holds no items of its own as ``bytes`` (the same wire format: a length-delimited field), so
that it is not built at all. The items are counted on the shape: a request over the limit is
refused, naming the field where the count passed it, without the message ever being built; any
other is then parsed as usual, at a cost the limit bounds. Counting walks the items that hold
items of their own (a partition's extents) one by one, in slices (``pacing.run_sliced``); the
items of a level are refused by their number before any of them is walked. For 1 MiB of empty
items the shape takes 8-12 ms and 11-19 MB where the message took 20 ms and 35-47 MB; a
RegisterFile at its limits (0.77 MiB) pays about 4 ms for its shape and count, on top of 2 ms
for its message.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from dataclasses import dataclass
from functools import cache
from typing import Any

from google.protobuf import descriptor_pb2, descriptor_pool, message_factory
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.pacing import run_sliced

_REPEATED = descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED
_OPTIONAL = descriptor_pb2.FieldDescriptorProto.LABEL_OPTIONAL
_SHAPES = descriptor_pool.DescriptorPool()  # the shapes' own pool: never the generated types'


class RequestItems:
    """The item check of one request type (see the module's docstring)."""

    def __init__(self, request: Descriptor) -> None:
        self._shape, self._plan = _shape_of(request)

    async def check(self, raw: bytes) -> None:
        """Raises ``InvalidArgument`` if ``raw`` holds more than ``rules.MAX_REQUEST_ITEMS``
        items; the caller parses the request itself afterwards."""
        if len(raw) <= 2 * rules.MAX_REQUEST_ITEMS:
            return  # too short to hold that many: the parser's cost is bounded already
        # A DecodeError here is the request's too; the caller answers it as such.
        shape = self._shape.FromString(raw)
        path = await run_sliced(_walk(shape, self._plan, rules.MAX_REQUEST_ITEMS))
        if path is not None:
            raise InvalidArgument.one(
                path,
                f"the request holds more than {rules.MAX_REQUEST_ITEMS:,} items (elements of"
                " repeated message fields and map entries, at any depth, all counted together)",
            )


def request_items(request: Descriptor) -> RequestItems | None:
    """The item check of ``request``'s type, or None when it cannot hold any item."""
    return RequestItems(request) if request in _holding_items(request) else None


@dataclass
class _Field:
    """A field of a shape: its name, whether it is repeated, and the plan of its message (None
    for items kept as bytes)."""

    name: str
    repeated: bool
    plan: _Plan | None


# A shape's fields, each of which leads to items. A list so that recursive shapes (Struct) can
# refer to their own plan.
_Plan = list[_Field]

# Messages walked between two chances for the loop to run something else (``run_sliced``).
_WALKED_PER_STEP = 1024


@dataclass
class _Level:
    """A message field being walked: its elements (one for a single message), the plan of
    each, its name, the level of the message that holds it, and the index of the element
    being walked (for the path on refusal)."""

    elements: Iterator[Message]
    plan: _Plan
    name: str
    repeated: bool
    parent: _Level | None
    index: int = -1


def _walk(shape: Message, plan: _Plan, budget: int) -> Generator[None, None, str | None]:
    """Counts the items under ``shape`` and returns the path of the field where the count passed
    ``budget`` (None if it never did), yielding every ``_WALKED_PER_STEP`` messages walked.

    Iterative, one message at a time, and driven by the plan: a request can hold 131,072
    items that hold items of their own (empty partitions), and walking them recursively, with a
    path built for each, held the loop for 55 ms."""
    counted = walked = 0
    levels = [_Level(iter((shape,)), plan, "", repeated=False, parent=None)]
    while levels:
        level = levels[-1]
        message = next(level.elements, None)
        if message is None:
            levels.pop()
            continue
        level.index += 1
        walked += 1
        if walked % _WALKED_PER_STEP == 0:
            yield
        for field in level.plan:
            if field.repeated:
                value = getattr(message, field.name)
                counted += len(value)
                if counted > budget:
                    return _path(level, field.name)
                if field.plan is not None:  # items that hold items of their own
                    levels.append(_Level(iter(value), field.plan, field.name, True, level))
            elif message.HasField(field.name):  # a single message that leads to items
                assert field.plan is not None
                value = getattr(message, field.name)
                levels.append(_Level(iter((value,)), field.plan, field.name, False, level))
    return None


def _path(level: _Level, name: str) -> str:
    """The path of field ``name`` of the message being walked at ``level``. (The stack holds the
    siblings of a message's fields too, so the path follows ``parent``: an ancestor's index
    cannot move while anything pushed after it is being walked.)"""
    parts = [name]
    at: _Level | None = level
    while at is not None and at.parent is not None:
        parts.append(f"{at.name}[{at.index}]" if at.repeated else at.name)
        at = at.parent
    return ".".join(reversed(parts))


def _holding_items(root: Descriptor) -> set[Descriptor]:
    """The message types reachable from ``root`` that hold items, directly or at any depth."""
    reachable: list[Descriptor] = []
    stack = [root]
    while stack:
        descriptor = stack.pop()
        if descriptor not in reachable:
            reachable.append(descriptor)
            stack += [inner for _, inner in _message_fields(descriptor)]
    holding = {d for d in reachable if any(f.is_repeated for f, _ in _message_fields(d))}
    grew = True
    while grew:  # recursive types (Struct, Value, ListValue) settle in a few rounds
        grew = False
        for descriptor in reachable:
            if descriptor not in holding and any(
                inner in holding for _, inner in _message_fields(descriptor)
            ):
                holding.add(descriptor)
                grew = True
    return holding


def _message_fields(descriptor: Descriptor) -> list[tuple[FieldDescriptor, Descriptor]]:
    """The fields of ``descriptor`` that hold messages (maps included), with their types."""
    return [(f, f.message_type) for f in descriptor.fields if f.message_type is not None]


@cache
def _shape_of(request: Descriptor) -> tuple[Any, _Plan]:
    """The shape of ``request`` and its plan (built once per request type, in a file of its
    own)."""
    holding = sorted(_holding_items(request), key=lambda d: d.full_name)
    package = f"shape.{request.full_name}"
    file = descriptor_pb2.FileDescriptorProto(
        name=f"{package.replace('.', '/')}.proto", package=package, syntax="proto3"
    )
    plans: dict[Descriptor, _Plan] = {descriptor: [] for descriptor in holding}
    for descriptor in holding:
        shape = file.message_type.add(name=_shape_name(descriptor))
        for field, inner in _message_fields(descriptor):
            plan = plans.get(inner)
            if plan is None and not field.is_repeated:
                continue  # a single message without items: not built (nor are scalars)
            kept = shape.field.add(
                name=field.name,
                number=field.number,
                label=_REPEATED if field.is_repeated else _OPTIONAL,
            )
            if plan is None:  # an item without items of its own: bytes, never built
                kept.type = descriptor_pb2.FieldDescriptorProto.TYPE_BYTES
            else:
                kept.type = descriptor_pb2.FieldDescriptorProto.TYPE_MESSAGE
                kept.type_name = f".{package}.{_shape_name(inner)}"
            plans[descriptor].append(_Field(field.name, field.is_repeated, plan))
    _SHAPES.Add(file)
    found = _SHAPES.FindMessageTypeByName(f"{package}.{_shape_name(request)}")
    return message_factory.GetMessageClass(found), plans[request]


def _shape_name(descriptor: Descriptor) -> str:
    return descriptor.full_name.replace(".", "_")
