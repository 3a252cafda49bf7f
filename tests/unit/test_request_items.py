"""Reading a request's repeated fields on the wire before it is built (``rpc.request_items``),
without a server.

Hypothesis builds requests of every RPC from the protobuf descriptors, with repeated fields at
every depth (items, Struct metadata, maps, strings, packed enums) and single fields beside them.
A small reference counts the items and adds up the cost of every element on the fully built
message; the check must refuse a request exactly when either is over its bound (both set low
here, so that small requests reach them). The costs themselves are compared with what protobuf
really allocates, read from the C allocator. The RPC-level companion, with 1 MiB of empty
elements at every path, is in ``tests/reliability/test_bounded_cost.py``.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.v1 import catalog_service_pb2, session_service_pb2
from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.rpc.request_items import array_bytes, element_cost, layout, request_items
from tests.reliability.helpers import HYPOTHESIS_EXAMPLES, PROPERTY_SETTINGS
from tests.reliability.rpc_cases import METHODS
from tests.support import c_heap_in_use, delimited, varint

MESSAGE = FieldDescriptor.TYPE_MESSAGE
STRING = FieldDescriptor.TYPE_STRING
REQUEST_TYPES = sorted(
    {method.input_type for method in METHODS},
    key=lambda descriptor: descriptor.full_name,
)
ITEMS_REFUSAL = "the request holds more than {:,} items"
BUILD_REFUSAL = "building the request would take more than"


def reference(message: Message) -> tuple[int, int]:
    """Items of a built message and the bytes its repeated and message fields take, counted the
    obvious way (with the reader's layouts, whose truth the allocator tests check)."""
    items = cost = 0
    for field, value in message.ListFields():
        inner = field.message_type
        if field.is_repeated:
            slot, element, packed = element_cost(field)
            count = len(value)
            if packed:  # charged by its bytes on the wire: one an element for small values
                count = sum(len(varint(v)) for v in value) if packed == 1 else count
            cost += element * count + array_bytes(slot, count)
            if field.type == STRING:  # copied, 8 bytes at a time
                cost += sum((len(text.encode()) + 7) // 8 * 8 for text in value)
            if inner is None:
                continue
            items += count
            if inner.GetOptions().map_entry:
                if inner.fields_by_name["value"].type != MESSAGE:
                    continue
                value = value.values()
            for element_message in value:
                more_items, more_cost = reference(element_message)
                items, cost = items + more_items, cost + more_cost
        elif inner is not None:  # a single message: built when present
            more_items, more_cost = reference(value)
            items, cost = items + more_items, cost + layout(inner) + more_cost
    return items, cost


def fill(data: st.DataObject, message: Message, depth: int) -> None:
    """Sets some of ``message``'s fields: repeated fields at every depth, and strings beside."""
    for field in message.DESCRIPTOR.fields:
        if not data.draw(st.booleans()):
            continue
        inner = field.message_type
        if inner is None:
            if field.is_repeated:
                container = getattr(message, field.name)
                for _ in range(data.draw(st.integers(0, 3))):
                    if field.type == STRING:
                        container.append(data.draw(st.text(max_size=3)))
                    elif field.enum_type is not None:
                        numbers = [value.number for value in field.enum_type.values]
                        container.append(data.draw(st.sampled_from(numbers)))
            elif field.type == STRING:
                setattr(message, field.name, data.draw(st.text(max_size=5)))
            continue
        if depth > 4:
            continue
        container = getattr(message, field.name)
        if inner.GetOptions().map_entry:
            value_field = inner.fields_by_name["value"]
            for key in data.draw(st.lists(st.text(max_size=3), max_size=3)):
                if value_field.type == MESSAGE:
                    fill(data, container[key], depth + 1)
                elif value_field.type == STRING:
                    container[key] = ""
        elif field.is_repeated:
            for _ in range(data.draw(st.integers(0, 3))):
                fill(data, container.add(), depth + 1)
        else:
            container.SetInParent()
            fill(data, container, depth + 1)


def generated(data: st.DataObject, descriptor: Descriptor) -> Message:
    """A request of type ``descriptor`` with some of its fields set (``fill``)."""
    message = GetMessageClass(descriptor)()
    fill(data, message, 0)
    return message


def test_every_request_type_with_a_repeated_field_is_checked() -> None:
    checked = {d.name for d in REQUEST_TYPES if request_items(d) is not None}
    assert {
        "RegisterFileRequest",
        "AddSessionFilesRequest",
        "BatchCreateSessionsRequest",
        "BatchGetSessionsRequest",
        "CreateSessionRequest",
        "UpdateSessionRequest",
        "ListSessionsRequest",
    } <= checked
    for descriptor in REQUEST_TYPES:
        holds = can_hold_a_repeated_field(descriptor, set())
        assert (descriptor.name in checked) == holds, descriptor.name


def can_hold_a_repeated_field(descriptor: Descriptor, seen: set[str]) -> bool:
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    return any(
        field.is_repeated
        or (field.message_type is not None and can_hold_a_repeated_field(field.message_type, seen))
        for field in descriptor.fields
    )


# No server here: an example costs a parse, so eight times the RPC tests' examples (it takes
# about that many to reach a refusal in a map's value after a sibling field's elements).
@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
@settings(PROPERTY_SETTINGS, max_examples=8 * HYPOTHESIS_EXAMPLES)
@given(data=st.data(), limit=st.integers(0, 12), ratio=st.integers(0, 40))
def test_a_request_is_refused_exactly_when_it_passes_a_bound(
    descriptor: Descriptor, data: st.DataObject, limit: int, ratio: int
) -> None:
    checked = request_items(descriptor)
    if checked is None:
        return
    message = generated(data, descriptor)
    raw = message.SerializeToString()
    items, cost = reference(message)
    budget = ratio * len(raw)
    with (
        mock.patch.object(rules, "MAX_REQUEST_ITEMS", limit),
        mock.patch.object(rules, "MAX_REQUEST_BUILD_RATIO", ratio),
        mock.patch.object(rules, "REQUEST_BUILD_FLOOR_BYTES", 0),
    ):
        if items <= limit and cost <= budget:
            asyncio.run(checked.check(raw))
            return
        with pytest.raises(InvalidArgument) as refused:
            asyncio.run(checked.check(raw))
    (violation,) = refused.value.violations
    if items <= limit:
        assert violation.description.startswith(BUILD_REFUSAL)
    if cost <= budget:
        assert violation.description.startswith(ITEMS_REFUSAL.format(limit))
    assert_names_a_field_that_costs(descriptor, violation.field)


def assert_names_a_field_that_costs(descriptor: Descriptor, path: str) -> None:
    """``path`` (``a.b[2].c``) follows fields of ``descriptor`` down to a repeated or message
    field, with an index after each repeated field crossed."""
    *crossed, last = path.split(".")
    for part in crossed:
        name, bracket, _ = part.partition("[")
        field = descriptor.fields_by_name[name]
        assert field.message_type is not None, path
        assert bool(bracket) == field.is_repeated, path
        descriptor = field.message_type
    last_field = descriptor.fields_by_name[last]
    assert last_field.is_repeated or last_field.message_type is not None, path


@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
@settings(PROPERTY_SETTINGS, max_examples=2 * HYPOTHESIS_EXAMPLES)
@given(data=st.data())
def test_what_is_read_is_what_the_reference_counts(
    descriptor: Descriptor, data: st.DataObject
) -> None:
    checked = request_items(descriptor)
    if checked is None:
        return
    message = generated(data, descriptor)
    read = checked.read_whole(message.SerializeToString())
    assert (read.items, read.cost) == reference(message)


@settings(PROPERTY_SETTINGS, max_examples=HYPOTHESIS_EXAMPLES)
@given(
    runs=st.lists(st.tuples(st.integers(0, 300), st.integers(1, 5_000), st.booleans()), max_size=6)
)
def test_runs_of_elements_are_read_like_single_ones(runs: list[tuple[int, int, bool]]) -> None:
    # The reader takes the elements that follow in the same field in a tight loop: runs of
    # strings and of extents, short and long (two-byte lengths end a run), over a slice's end,
    # broken by other fields (two requests concatenated merge into one), count as one by one.
    ids = session_service_pb2.BatchGetSessionsRequest
    register = catalog_service_pb2.RegisterFileRequest
    ids_raw = register_raw = b""
    for length, count, broken in runs:
        ids_raw += ids(session_ids=["x" * length] * count).SerializeToString()
        ids_raw += delimited(15, b"unknown") if broken else b""
        partition = catalog_service_pb2.TopicPartitionSpec(topic_name="t" * (length % 7))
        for i in range(count):
            partition.extents.add(min_timestamp_ns=i * length, max_timestamp_ns=i)
        request = register(partitions=[partition], dataset_id="d" if broken else "")
        register_raw += request.SerializeToString()
    elements = sum(count for _, count, _ in runs)
    for message_class, raw in ((ids, ids_raw), (register, register_raw)):
        checked = request_items(message_class.DESCRIPTOR)
        assert checked is not None
        read = checked.read_whole(raw)
        assert (read.items, read.cost) == reference(message_class.FromString(raw))
        assert read.pauses >= elements // 4096  # a run ends where a slice does


def test_a_request_too_short_to_reach_a_bound_is_not_read() -> None:
    # Every item takes two bytes at least and a partition costs ~100 bytes once built.
    checked = request_items(catalog_service_pb2.RegisterFileRequest.DESCRIPTOR)
    assert checked is not None
    with mock.patch.object(rules, "MAX_REQUEST_ITEMS", 3):
        asyncio.run(checked.check(b"\x32\x00" * 3))  # three empty partitions: at the limit
        asyncio.run(checked.check(b"\xff" * 6))  # not even protobuf, but too short to be read
        with pytest.raises(InvalidArgument):
            asyncio.run(checked.check(b"\x32\x00" * 4))


@pytest.mark.parametrize(
    "raw",
    [
        b"\x0a\x05abc",  # a string running past the end
        b"\x0a\x80",  # a length that ends with the message
        b"\x0b\x0a\x00",  # a group never closed
        b"\x0c",  # a group closed that was never opened
        b"\x0f\x00",  # wire type 7
        b"\x08" + b"\xff" * 11,  # a varint of eleven bytes
        b"\x0a\x00" * 70_000 + b"\x0a",  # the same, after enough strings to be read
        b"\x0a\x00" * 100 + b"\x0a\x05ab",  # a run of strings whose last runs past the end
    ],
)
def test_bytes_that_are_not_protobuf_are_refused_as_such(raw: bytes) -> None:
    # What the reader cannot read, the parser would not parse: the caller answers both alike.
    checked = request_items(session_service_pb2.BatchGetSessionsRequest.DESCRIPTOR)
    assert checked is not None
    with pytest.raises(DecodeError):
        session_service_pb2.BatchGetSessionsRequest.FromString(raw)
    with (
        mock.patch.object(rules, "MAX_REQUEST_ITEMS", 0),
        mock.patch.object(rules, "REQUEST_BUILD_FLOOR_BYTES", 0),
        pytest.raises(DecodeError),
    ):
        checked.read_whole(raw)


def test_groups_and_unknown_fields_are_stepped_over() -> None:
    checked = request_items(session_service_pb2.BatchGetSessionsRequest.DESCRIPTOR)
    assert checked is not None
    unknown = b"\x7b" + delimited(1, b"x") + b"\x7c"  # group 15 holding a string, closed
    raw = unknown + delimited(1, b"id") + b"\x78\x01" + delimited(1, b"")
    assert session_service_pb2.BatchGetSessionsRequest.FromString(raw).session_ids == ["id", ""]
    read = checked.read_whole(raw)
    assert read.items == 0
    slot, _, _ = element_cost(
        session_service_pb2.BatchGetSessionsRequest.DESCRIPTOR.fields_by_name["session_ids"]
    )
    assert read.cost == array_bytes(slot, 2) + 8  # "id", copied in 8 bytes


# --- the costs, against protobuf's own allocations -----------------------------------------------


def allocated_by(parse: type[Message], raw: bytes) -> int:
    """Bytes the C allocator hands out while ``parse`` builds ``raw``."""
    before = c_heap_in_use()
    built = parse.FromString(raw)
    allocated = c_heap_in_use() - before
    del built
    return allocated


def repeated_fields() -> list[tuple[Descriptor, FieldDescriptor]]:
    """Every repeated field of every message type a request can hold."""
    found: list[tuple[Descriptor, FieldDescriptor]] = []
    seen: set[str] = set()
    stack = list(REQUEST_TYPES)
    while stack:
        descriptor = stack.pop()
        if descriptor.full_name in seen:
            continue
        seen.add(descriptor.full_name)
        found += [(descriptor, f) for f in descriptor.fields if f.is_repeated]
        stack += [f.message_type for f in descriptor.fields if f.message_type is not None]
    return sorted(found, key=lambda pair: pair[1].full_name)


def densest_elements(field: FieldDescriptor, count: int) -> bytes:
    """``count`` elements of ``field``, each as short as the wire allows (a map's keys distinct,
    as a map keeps one entry a key; a packed field's elements one byte each)."""
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key = field.message_type.fields_by_name["key"]
        return b"".join(
            delimited(field.number, delimited(1, str(n).encode()) if key.type == STRING else b"")
            for n in range(count)
        )
    if field.message_type is None and field.type != STRING:
        return delimited(field.number, b"\x01" * count)
    return delimited(field.number, b"") * count


@pytest.mark.parametrize(
    ("holder", "field"), repeated_fields(), ids=lambda x: getattr(x, "full_name", "")
)
def test_the_cost_charged_for_an_element_is_what_protobuf_allocates(
    holder: Descriptor, field: FieldDescriptor
) -> None:
    # 50,000 of the densest elements: the reader's charge within 10% of what protobuf allocates,
    # never under it by more than that (the headroom of MAX_REQUEST_BUILD_RATIO), and never so far
    # over it that a legitimate request would be refused for a cost it does not have.
    parse = GetMessageClass(holder)
    top = request_items(holder) or pytest.fail(f"{holder.full_name} is not read")
    raw = densest_elements(field, 50_000)
    charged = top.read_whole(raw).cost
    allocated = allocated_by(parse, raw)
    assert 0.9 * allocated <= charged <= 1.5 * allocated + 65_536, (charged, allocated)


@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
@settings(PROPERTY_SETTINGS, max_examples=HYPOTHESIS_EXAMPLES)
@given(data=st.data())
def test_a_whole_request_allocates_no_more_than_it_is_charged_and_its_own_bytes(
    descriptor: Descriptor, data: st.DataObject
) -> None:
    # Its single strings are not charged: each is copied, 8 bytes at a time (a one-byte string,
    # three bytes on the wire, takes 8: under 3x its size); its arena grows by blocks of up to
    # 64 KiB, the last one partly used. Sent many times over, so that its arrays grow long
    # (the copies merge into one message: their single fields are one).
    checked = request_items(descriptor)
    if checked is None:
        return
    message = generated(data, descriptor)
    one = message.SerializeToString()
    raw = one * data.draw(st.integers(1, max(1, 100_000 // max(len(one), 1))))
    allocated = allocated_by(GetMessageClass(descriptor), raw)
    charged = checked.read_whole(raw).cost
    assert allocated <= 1.1 * charged + 3 * len(raw) + 65_536
