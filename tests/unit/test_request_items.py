"""Counting a request's items before it is built (``rpc.request_items``), without a server.

Hypothesis builds requests of every RPC from the protobuf descriptors, with items (elements of
repeated message fields, map entries) at every depth, Struct metadata included, and strings that
the shape leaves unparsed. A small reference counts the items on the fully built message; the
check must refuse a request exactly when that count is over the limit (set low here, so that
small requests reach it). The RPC-level companion, with 1 MiB of empty items at every path, is
in ``tests/reliability/test_bounded_cost.py``.
"""

from __future__ import annotations

import asyncio
from unittest import mock

import pytest
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.v1 import catalog_service_pb2
from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.rpc.request_items import request_items
from tests.reliability.helpers import HYPOTHESIS_EXAMPLES, PROPERTY_SETTINGS
from tests.reliability.rpc_cases import METHODS

MESSAGE = FieldDescriptor.TYPE_MESSAGE
REQUEST_TYPES = sorted(
    {method.input_type for method in METHODS},
    key=lambda descriptor: descriptor.full_name,
)


def reference_items(message: Message) -> int:
    """Items of a built message, counted the obvious way."""
    counted = 0
    for field, value in message.ListFields():
        inner = field.message_type
        if inner is None:
            continue
        if inner.GetOptions().map_entry:
            counted += len(value)
            if inner.fields_by_name["value"].type == MESSAGE:
                counted += sum(reference_items(item) for item in value.values())
        elif field.is_repeated:
            counted += len(value) + sum(reference_items(item) for item in value)
        else:
            counted += reference_items(value)
    return counted


def fill(data: st.DataObject, message: Message, depth: int) -> None:
    """Sets some of ``message``'s fields: items at every depth, and strings beside them."""
    for field in message.DESCRIPTOR.fields:
        string = field.type == FieldDescriptor.TYPE_STRING and not field.is_repeated
        if string and data.draw(st.booleans()):
            setattr(message, field.name, data.draw(st.text(max_size=5)))
        inner = field.message_type
        if inner is None or depth > 4 or not data.draw(st.booleans()):
            continue
        container = getattr(message, field.name)
        if inner.GetOptions().map_entry:
            value_field = inner.fields_by_name["value"]
            for key in data.draw(st.lists(st.text(max_size=3), max_size=3)):
                if value_field.type == MESSAGE:
                    fill(data, container[key], depth + 1)
                elif value_field.type == FieldDescriptor.TYPE_STRING:
                    container[key] = ""
        elif field.is_repeated:
            for _ in range(data.draw(st.integers(0, 3))):
                fill(data, container.add(), depth + 1)
        else:
            container.SetInParent()
            fill(data, container, depth + 1)


def test_every_request_type_that_holds_items_is_checked() -> None:
    checked = {d.name for d in REQUEST_TYPES if request_items(d) is not None}
    assert {
        "RegisterFileRequest",
        "AddSessionFilesRequest",
        "BatchCreateSessionsRequest",
        "CreateSessionRequest",
        "UpdateSessionRequest",
        "ListSessionsRequest",
    } <= checked
    for descriptor in REQUEST_TYPES:
        holds = reference_items_possible(descriptor, set())
        assert (descriptor.name in checked) == holds, descriptor.name


def reference_items_possible(descriptor: Descriptor, seen: set[str]) -> bool:
    """Whether a message of this type can hold an item at all."""
    if descriptor.full_name in seen:
        return False
    seen = seen | {descriptor.full_name}
    return any(
        field.is_repeated or reference_items_possible(field.message_type, seen)
        for field in descriptor.fields
        if field.message_type is not None
    )


# No server here: an example costs a parse, so eight times the RPC tests' examples (it takes
# about that many to reach a refusal in a map's value after a sibling field's items).
@pytest.mark.parametrize("descriptor", REQUEST_TYPES, ids=lambda d: d.name)
@settings(PROPERTY_SETTINGS, max_examples=8 * HYPOTHESIS_EXAMPLES)
@given(data=st.data(), limit=st.integers(0, 12))
def test_a_request_is_refused_exactly_when_it_holds_more_items_than_the_limit(
    descriptor: Descriptor, data: st.DataObject, limit: int
) -> None:
    items = request_items(descriptor)
    if items is None:
        return
    message = GetMessageClass(descriptor)()
    fill(data, message, 0)
    expected = reference_items(message)
    with mock.patch.object(rules, "MAX_REQUEST_ITEMS", limit):
        if expected <= limit:
            asyncio.run(items.check(message.SerializeToString()))
        else:
            with pytest.raises(InvalidArgument) as refused:
                asyncio.run(items.check(message.SerializeToString()))
            (violation,) = refused.value.violations
            assert f"more than {limit:,} items" in violation.description
            assert_names_an_item_field(descriptor, violation.field)


def assert_names_an_item_field(descriptor: Descriptor, path: str) -> None:
    """``path`` (``a.b[2].c``) follows fields of ``descriptor`` down to a repeated message field
    or a map, with an index after each repeated field crossed."""
    *crossed, last = path.split(".")
    for part in crossed:
        name, bracket, _ = part.partition("[")
        field = descriptor.fields_by_name[name]
        assert field.message_type is not None, path
        assert bool(bracket) == field.is_repeated, path
        descriptor = field.message_type
    field = descriptor.fields_by_name[last]
    assert field.is_repeated and field.message_type is not None, path


def test_a_short_request_is_not_even_shaped() -> None:
    # Every item takes two bytes at least, so a request of 2 x the limit cannot pass it.
    items = request_items(catalog_service_pb2.RegisterFileRequest.DESCRIPTOR)
    assert items is not None
    with mock.patch.object(rules, "MAX_REQUEST_ITEMS", 3):
        asyncio.run(items.check(b"\x32\x00" * 3))  # three empty partitions: at the limit
        asyncio.run(items.check(b"\xff" * 6))  # not even protobuf, but too short to be counted
        with pytest.raises(InvalidArgument):
            asyncio.run(items.check(b"\x32\x00" * 4))
