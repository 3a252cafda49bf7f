"""Hostile input: whatever a caller sends, the answer is OK or a documented client error.

Property tests (hypothesis) build requests for every RPC of the three services from the protobuf
descriptors, so a new RPC or field is covered without a change here: strings of any Unicode
(NUL included), 1 MB strings, injection strings, IDs real, malformed and of the wrong kind, page
tokens real, garbled and hand-made with positions of the wrong shape (signed with the server's
key, so that they reach the checks behind the MAC, and unsigned), extreme int64/int32 values,
unknown enum numbers, NaN and infinities, huge repeated fields, deep and large Struct metadata,
extreme timestamps, and bytes that do not parse at all (truncated, invalid UTF-8, nested beyond
the parser's limit). Every answer must be OK or one of the client-error codes below, never
INTERNAL, UNKNOWN or UNAVAILABLE, and health must stay SERVING. Most inputs are a valid request
with one field (nested ones included) made hostile, so that they reach deep into the handler.

Deterministic companions: every field of a valid request set in turn to each boundary value of
its type (including forged page tokens of the right shape with one value wrong); SQL injection
strings through every text field, checking that nothing outside the caller's reach changed; the
documented size limits; hostile call metadata.

``FLIGHTLOG_HYPOTHESIS_EXAMPLES`` raises the examples per RPC (25 by default); runs are
derandomized, so CI sees the same inputs every time.
"""

from __future__ import annotations

import base64
import functools
import json
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf import struct_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor, MethodDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import given
from hypothesis import strategies as st
from psycopg import sql

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc as pb_grpc
from flightlog_server.rpc.pagination import TokenCodec
from flightlog_server.storage.urls import libpq_conninfo
from tests.reliability.helpers import PROPERTY_SETTINGS, SERVING, health, record
from tests.reliability.rpc_cases import (
    METHODS,
    World,
    build_world,
    invoke,
    method_name,
    requests_for,
)
from tests.rpc.factories import unique
from tests.support import Stubs, create_identity, delimited, page_token_codec, rpc_error

ALLOWED = {
    grpc.StatusCode.OK,
    grpc.StatusCode.INVALID_ARGUMENT,
    grpc.StatusCode.NOT_FOUND,
    grpc.StatusCode.ALREADY_EXISTS,
    grpc.StatusCode.FAILED_PRECONDITION,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
    grpc.StatusCode.ABORTED,
}
CALL_TIMEOUT_S = 15.0
WATCH_TIMEOUT_S = 0.5  # a valid WatchSessions stays open: its deadline ends it

INJECTIONS = [
    "'; DROP TABLE sessions; --",
    "' OR '1'='1",
    '" OR ""="',
    "1; SELECT pg_sleep(10); --",
    "'); SELECT pg_sleep(10); --",
    "$$; SELECT pg_sleep(10); $$",
    "ss_aaaa' OR 1=1 --",
    "/odom' UNION SELECT topic_id, name FROM topics --",
    "Robert'); DROP TABLE orgs;--",
    "%s",
    "%(name)s",
    ":name",
    "$1",
    "{0}",
    "%",
    "_",
    "\\",
    "\\'",
    "E'\\x41'",
    "*/ DROP TABLE files; /*",
]
INT64_EDGES = [-(2**63), -(2**63) + 1, -(2**62), -1, 0, 1, 2**31, 2**62, 2**63 - 1]
INT32_EDGES = [-(2**31), -1, 0, 1, 1000, 1001, 2**31 - 1]
FLOAT_EDGES = [math.nan, math.inf, -math.inf, 0.0, -0.0, 1e308, -1e308, 5e-324]
MEGABYTE = 1 << 20
HUGE_STRINGS = ["x" * MEGABYTE, "é" * (MEGABYTE // 2), "\x00" * MEGABYTE, "'" * MEGABYTE]
MALFORMED_IDS = [
    "ss_",
    "ss_" + "a" * 61,
    "ss_UPPERCASE",
    "ss_abc-def",
    "SS_abcdef",
    "fl_" + "\x00" * 4,
    "ds_ünïcode",
    "og_aaaa",
    "cf_../../etc",
    " ss_aaaa",
    "x" * 129,
    "-leading-dash",
    ".",
]


@dataclass
class Pools:
    """Values worth trying, taken from a real org so that many requests get past the checks."""

    ids: list[str]  # every ID and name of the world, and malformed ones
    names: list[str]
    tokens: dict[str, list[str]]  # per RPC: real and hand-made page tokens


@pytest.fixture(scope="module")
def hostile(database_url: str, grpc_target: str) -> Iterator[tuple[Stubs, World, Pools]]:
    name = unique("hostile-")
    who = create_identity(database_url, name)
    stubs = Stubs(grpc_target, who.api_key, who.org_id)
    world = build_world(stubs, who, name)
    for _ in range(3):  # enough rows for every listing to have several pages
        build_world(stubs, who, name)
    pools = Pools(
        ids=[
            world.session_id, world.empty_session_id, world.dataset_id, world.file_id,
            world.device_id, world.spare_device_id, world.lone_device_id, world.topic_id,
            world.custom_field_id, world.org_id, *MALFORMED_IDS,
        ],
        names=[world.custom_field_name, world.topic_name, "speed", "t1"],
        tokens=page_tokens(stubs, world, page_token_codec(database_url)),
    )  # fmt: skip
    yield stubs, world, pools
    stubs.close()


# A page token position's element of the wrong type or out of range, whatever it stands for.
WRONG_POSITION_VALUES: tuple[object, ...] = (
    2**70, -(2**70), "\x00", "x", None, 1.5, True, [], {}, "1e309",
)  # fmt: skip


def page_tokens(stubs: Stubs, world: World, codec: TokenCodec) -> dict[str, list[str]]:
    """For each listing: a real resume token and forgeries of it, signed with the server's own
    key so that they get past the MAC to the position checks (same scope, positions of the
    wrong type, out of range, nested, too long), the same positions unsigned (the format of
    earlier releases), and garbage."""
    tokens: dict[str, list[str]] = {}
    for method in METHODS:
        if "page_token" not in method.input_type.fields_by_name:
            continue
        request = requests_for(method, world, world)[0]
        if "page_size" in request.DESCRIPTOR.fields_by_name:
            request.page_size = 1
        out = invoke(stubs, method, request, CALL_TIMEOUT_S)
        real = [r.next_page_token for r in out.responses if r.next_page_token]
        forged = []
        for token in real[:1]:
            scope, position = codec.verify(token)
            positions = [
                [*position, 1], position[:-1], [], ["9" * 400] * len(position), [{"$gt": ""}],
            ]  # fmt: skip
            for i in range(len(position)):  # the right shape, one value wrong
                for bad in WRONG_POSITION_VALUES:
                    positions.append([*position[:i], bad, *position[i + 1 :]])
            for forged_position in positions:
                signed = codec.encode(scope, forged_position)
                unsigned = base64.urlsafe_b64encode(
                    json.dumps({"s": scope, "p": forged_position}).encode()
                ).decode()
                TOKEN_LABELS[signed] = f"signed {forged_position!r}"[:60]
                TOKEN_LABELS[unsigned] = f"unsigned {forged_position!r}"[:60]
                forged += [signed, unsigned]
        garbage = ["!!!", "e30", base64.urlsafe_b64encode(b"\xff\xfe").decode(), "a" * 5000]
        tokens[method.name] = real + forged + garbage
    return tokens


# Forged page tokens by what they carry, for the failure messages of the boundary test.
TOKEN_LABELS: dict[str, str] = {}


# --- strategies built from the descriptors -------------------------------------------------------


def strings(pools: Pools, method: MethodDescriptor, field: FieldDescriptor, huge: bool) -> Any:
    options = [
        st.text(max_size=12),
        st.text(alphabet=st.characters(codec="utf-8"), max_size=300),
        st.sampled_from(INJECTIONS),
        st.sampled_from(pools.ids + pools.names),
    ]
    if field.name.endswith(("_id", "_ids", "field", "fields", "name", "tags", "tags_any")):
        options.append(st.sampled_from(pools.ids + pools.names))  # more weight to real values
    if field.name == "page_token":
        options.append(st.sampled_from(pools.tokens.get(method.name, ["x"])))
        options.append(st.sampled_from(pools.tokens.get(method.name, ["x"])))
    if huge:
        options.append(st.sampled_from(HUGE_STRINGS))
    return st.one_of(*options)


def json_values() -> Any:
    leaf = st.one_of(
        st.none(),
        st.booleans(),
        st.floats(),
        st.sampled_from(FLOAT_EDGES),
        st.text(max_size=8),
        st.sampled_from(INJECTIONS),
    )
    keys = st.one_of(st.text(max_size=8), st.sampled_from(["a.b", "", ".", "a..b", "\x00", "$"]))
    return st.recursive(
        leaf,
        lambda children: st.one_of(
            st.lists(children, max_size=3), st.dictionaries(keys, children, max_size=3)
        ),
        max_leaves=12,
    )


def nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {"leaf": 1}
    for _ in range(depth):
        value = {"k": value}
    return value


def structs() -> Any:
    return st.one_of(
        st.dictionaries(st.text(max_size=8), json_values(), max_size=4),
        st.integers(10, 30).map(nested),  # deep (deeper ones go raw, see raw_bytes)
        st.just({"big": "x" * 70_000}),  # past the 64 KiB metadata limit
        st.just({f"k{i}": i for i in range(3_000)}),  # many keys
    ).map(to_struct)


def to_struct(value: dict[str, Any]) -> struct_pb2.Struct:
    struct = struct_pb2.Struct()
    struct.update(value)
    return struct


def scalars(pools: Pools, method: MethodDescriptor, field: FieldDescriptor, huge: bool) -> Any:
    t = field.type
    if t == FieldDescriptor.TYPE_STRING:
        return strings(pools, method, field, huge)
    if t in (
        FieldDescriptor.TYPE_INT64,
        FieldDescriptor.TYPE_SINT64,
        FieldDescriptor.TYPE_SFIXED64,
    ):
        return st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(2**63), 2**63 - 1))
    if t in (
        FieldDescriptor.TYPE_INT32,
        FieldDescriptor.TYPE_SINT32,
        FieldDescriptor.TYPE_SFIXED32,
    ):
        return st.one_of(st.sampled_from(INT32_EDGES), st.integers(-(2**31), 2**31 - 1))
    if t in (FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_FIXED64):
        return st.one_of(st.sampled_from([0, 1, 2**64 - 1]), st.integers(0, 2**64 - 1))
    if t in (FieldDescriptor.TYPE_UINT32, FieldDescriptor.TYPE_FIXED32):
        return st.integers(0, 2**32 - 1)
    if t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        return st.one_of(
            st.sampled_from(FLOAT_EDGES),
            st.floats(width=32 if t == FieldDescriptor.TYPE_FLOAT else 64),
        )
    if t == FieldDescriptor.TYPE_BOOL:
        return st.booleans()
    if t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        defined = [v.number for v in field.enum_type.values]
        return st.one_of(st.sampled_from(defined), st.integers(-(2**31), 2**31 - 1))
    if t == FieldDescriptor.TYPE_BYTES:
        return st.binary(max_size=64)
    raise AssertionError(f"no strategy for {field.full_name}")


def messages(
    pools: Pools, method: MethodDescriptor, descriptor: Descriptor, depth: int, roomy: bool = True
) -> Any:
    """Messages of ``descriptor``; ``roomy`` allows huge repeated fields (once per path, so
    that sizes do not multiply)."""
    if descriptor.full_name == "google.protobuf.Struct":
        return structs()
    if descriptor.full_name == "google.protobuf.Timestamp":
        return st.builds(
            lambda s, n: GetMessageClass(descriptor)(seconds=s, nanos=n),
            st.one_of(st.sampled_from(INT64_EDGES), st.integers(-(10**12), 10**12)),
            st.one_of(st.sampled_from(INT32_EDGES), st.integers(0, 999_999_999)),
        )
    cls = GetMessageClass(descriptor)

    @st.composite
    def build(draw: Callable[..., Any]) -> Message:
        message = cls()
        for field in descriptor.fields:
            if draw(st.integers(0, 2)) == 0:  # a third of the fields stay unset
                continue
            fill(draw, message, field, pools, method, depth, roomy)
        return message

    return build()


def fill(
    draw: Callable[..., Any],
    message: Message,
    field: FieldDescriptor,
    pools: Pools,
    method: MethodDescriptor,
    depth: int,
    roomy: bool,
) -> None:
    target = getattr(message, field.name)
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key_field, value_field = entry.fields_by_name["key"], entry.fields_by_name["value"]
        for _ in range(draw(st.integers(0, 3))):
            key = draw(scalars(pools, method, key_field, huge=False))
            if value_field.message_type is not None:
                target[key].CopyFrom(
                    draw(messages(pools, method, value_field.message_type, depth + 1, False))
                )
            else:
                target[key] = draw(scalars(pools, method, value_field, huge=False))
        return
    if field.is_repeated:
        sizes = [st.integers(0, 3), st.integers(0, 3)]
        if roomy:
            sizes.append(st.sampled_from([257, 1_001, 10_001]))
        many = draw(st.one_of(*sizes))
        if many > 3:  # huge: one drawn element, repeated
            element = draw(element_of(pools, method, field, depth, roomy=False))
            values = [element] * many
        else:
            values = [draw(element_of(pools, method, field, depth, roomy)) for _ in range(many)]
        if field.message_type is not None:
            for value in values:
                target.add().CopyFrom(value)
        else:
            target.extend(values)
        return
    if field.message_type is not None:
        if depth < 4:
            target.CopyFrom(draw(messages(pools, method, field.message_type, depth + 1, roomy)))
        return
    setattr(message, field.name, draw(scalars(pools, method, field, huge=roomy)))


def element_of(
    pools: Pools, method: MethodDescriptor, field: FieldDescriptor, depth: int, roomy: bool
) -> Any:
    if field.message_type is not None:
        return messages(pools, method, field.message_type, depth + 1, roomy)
    return scalars(pools, method, field, huge=False)


def field_paths(descriptor: Descriptor, depth: int = 0) -> list[list[FieldDescriptor]]:
    """Every field of a request and, recursively, of the Flightlog messages inside it (the
    first element of a repeated one); map entries and well-known types are leaves."""
    paths: list[list[FieldDescriptor]] = []
    for field in descriptor.fields:
        paths.append([field])
        inner = field.message_type
        if (
            inner is not None
            and depth < 3
            and not inner.GetOptions().map_entry
            and inner.full_name.startswith("flightlog.")
        ):
            paths.extend([field, *rest] for rest in field_paths(inner, depth + 1))
    return paths


def navigate(message: Message, steps: list[FieldDescriptor]) -> Message:
    """The message at ``steps`` below ``message`` (made present; a repeated step goes to the
    first element, added when there is none)."""
    for step in steps:
        target = getattr(message, step.name)
        if step.is_repeated:
            target = target[0] if len(target) else target.add()
        message = target
    return message


def deep_struct_bytes(levels: int) -> bytes:
    """A serialized Struct nested ``levels`` deep, past what the Python library will build."""
    inner = b""
    for _ in range(levels):
        value = delimited(5, inner)  # Value.struct_value
        inner = delimited(1, delimited(1, b"k") + delimited(2, value))  # Struct.fields entry
    return inner


def struct_paths(descriptor: Descriptor, depth: int = 0) -> Iterator[list[int]]:
    """Field-number paths from a request to each Struct inside it."""
    for field in descriptor.fields:
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        if field.message_type.full_name == "google.protobuf.Struct":
            yield [field.number]
        elif depth < 3:
            for rest in struct_paths(field.message_type, depth + 1):
                yield [field.number, *rest]


def raw_bytes(method: MethodDescriptor, message: Message) -> Any:
    """Bytes that are not a valid serialization of the request."""
    data = message.SerializeToString()
    options = [
        st.binary(max_size=64),
        st.integers(0, max(len(data) - 1, 0)).map(lambda n: data[:n] + b"\x0a\xff"),
        st.sampled_from([b"\x0a\x02\xff\xfe", b"\x12\x03a\xc3(", b"\xff" * 8, b"\x0a"]),
    ]
    for path in struct_paths(method.input_type):
        for levels in (40, 120):
            payload = deep_struct_bytes(levels)
            for number in reversed(path):
                payload = delimited(number, payload)
            options.append(st.just(payload))
    return st.one_of(*options)


# --- the property tests --------------------------------------------------------------------------


def call_raw(
    stubs: Stubs, method: MethodDescriptor, data: bytes, watch_timeout: float = WATCH_TIMEOUT_S
) -> grpc.StatusCode:
    path = f"/{method.containing_service.full_name}/{method.name}"
    timeout = watch_timeout if method.name == "WatchSessions" else CALL_TIMEOUT_S
    try:
        if method.server_streaming:
            raw_stream = stubs.channel.unary_stream(
                path, request_serializer=None, response_deserializer=None
            )
            for _ in raw_stream(data, timeout=timeout):
                pass
        else:
            raw_unary = stubs.channel.unary_unary(
                path, request_serializer=None, response_deserializer=None
            )
            raw_unary(data, timeout=timeout)
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        return code
    return grpc.StatusCode.OK


TRIED: Counter[str] = Counter()  # inputs per RPC (shrinking included), for the figures
CODES: Counter[str] = Counter()
VIOLATIONS: Counter[str] = Counter()


@pytest.mark.parametrize("method", METHODS, ids=method_name)
def test_hostile_requests_get_ok_or_a_client_error(
    method: MethodDescriptor, hostile: tuple[Stubs, World, Pools], grpc_target: str
) -> None:
    stubs, world, pools = hostile
    if method.name.startswith("Delete"):
        # Deleting the world's resources would only make later examples shallower.
        keep = {world.session_id, world.dataset_id, world.file_id, world.device_id}
        keep |= {world.custom_field_id, world.spare_device_id, world.empty_session_id}
        pools = Pools([i for i in pools.ids if i not in keep], pools.names, pools.tokens)
    allowed = ALLOWED | (
        {grpc.StatusCode.DEADLINE_EXCEEDED} if method.name == "WatchSessions" else set()
    )
    name = method_name(method)
    bases = requests_for(method, world, world)
    # Deletes are only generated whole: their valid requests would delete the world.
    kinds = (
        ["whole", "raw"]
        if method.name.startswith("Delete")
        else ["one field"] * 3
        + [
            "whole",
            "whole",
            "raw",
        ]
    )

    @PROPERTY_SETTINGS
    @given(st.data())
    def property_(data: st.DataObject) -> None:
        # Three kinds of input: a valid request with one field made hostile (reaches deep into
        # the handler), a request generated whole, and bytes that do not parse.
        kind = data.draw(st.sampled_from(kinds), label="kind")
        if kind == "one field":
            message = type(bases[0])()
            message.CopyFrom(data.draw(st.sampled_from(bases), label="valid request"))
            path = data.draw(st.sampled_from(field_paths(method.input_type)), label="field")
            parent = navigate(message, path[:-1])
            parent.ClearField(path[-1].name)
            fill(data.draw, parent, path[-1], pools, method, len(path) - 1, roomy=True)
        else:
            message = data.draw(messages(pools, method, method.input_type, 0), label="request")
        payload = message.SerializeToString()
        if kind == "raw":
            payload = data.draw(raw_bytes(method, message), label="bytes")
        TRIED[name] += 1
        started = time.monotonic()
        code = call_raw(stubs, method, payload)
        CODES[code.name] += 1
        if code not in allowed:
            VIOLATIONS[name] += 1
        assert code in allowed, f"{name} answered {code.name} after {time.monotonic() - started}"

    try:
        property_()
    finally:
        assert health(grpc_target) == SERVING
        record(
            "hostile input",
            f"{sum(TRIED.values())} inputs over {len(TRIED)} RPCs, answered {dict(CODES)}; "
            f"violations: {sum(VIOLATIONS.values())} {dict(VIOLATIONS) or ''}",
        )


# --- every field at its boundaries ---------------------------------------------------------------

EDGE_STRINGS = ["", " ", "\x00", "a\x00b", "\U0010ffff" * 3, "é" * 200, "x" * 5000, "x" * MEGABYTE]
EDGE_STRUCTS: list[dict[str, Any]] = [
    {"nan": math.nan},
    {"inf": math.inf, "minus": -math.inf},
    {"\x00": "\x00"},
    {"": {"": None}},
    nested(17),
    {"big": "x" * 70_000},
]


def edge_setters(
    field: FieldDescriptor, tokens: list[str]
) -> list[tuple[str, Callable[[Message], None]]]:
    """(label, set the field to a boundary value on its parent message) for ``field``."""
    name = field.name
    entry = field.message_type
    setters: list[tuple[str, Callable[[Message], None]]] = []

    def assign(value: Any) -> Callable[[Message], None]:
        def apply(parent: Message) -> None:
            if field.is_repeated:
                getattr(parent, name).extend([value])
            else:
                setattr(parent, name, value)

        return apply

    if entry is not None and entry.GetOptions().map_entry:
        value_type = entry.fields_by_name["value"].message_type
        for key in EDGE_STRINGS[:6]:

            def put(parent: Message, key: str = key) -> None:
                slot = getattr(parent, name)[key]
                if value_type is None:
                    return
                slot.SetInParent()
                for inner in value_type.fields:  # a value that passes its own checks
                    if inner.type == FieldDescriptor.TYPE_STRING:
                        setattr(slot, inner.name, "x")
                        break

            setters.append((f"key {key[:8]!r}", put))
        return setters
    if entry is not None and entry.full_name == "google.protobuf.Struct":
        for value in EDGE_STRUCTS:

            def put_struct(parent: Message, value: dict[str, Any] = value) -> None:
                getattr(parent, name).CopyFrom(to_struct(value))

            setters.append((str(value)[:24], put_struct))
        return setters
    if entry is not None and entry.full_name == "google.protobuf.Timestamp":
        timestamp = GetMessageClass(entry)
        for seconds, nanos in ((-(2**63), 0), (2**63 - 1, 0), (0, -1), (0, 10**9)):

            def put_time(parent: Message, seconds: int = seconds, nanos: int = nanos) -> None:
                slot = getattr(parent, name).add() if field.is_repeated else getattr(parent, name)
                slot.MergeFrom(timestamp(seconds=seconds, nanos=nanos))

            setters.append((f"{seconds}s{nanos}n", put_time))
        return setters
    if entry is not None:  # present but empty (e.g. a value with no member set)

        def put_empty(parent: Message) -> None:
            if field.is_repeated:
                getattr(parent, name).add()
            else:
                getattr(parent, name).SetInParent()

        def put_many_empty(parent: Message) -> None:
            for _ in range(10_001):
                getattr(parent, name).add()

        setters.append(("empty", put_empty))
        if field.is_repeated:
            setters.append(("10,001 empty", put_many_empty))
        return setters
    t = field.type
    values: list[Any]
    if t == FieldDescriptor.TYPE_STRING:
        values = EDGE_STRINGS + (tokens if name == "page_token" else [])
    elif t in (FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_SINT64):
        values = INT64_EDGES
    elif t in (FieldDescriptor.TYPE_INT32, FieldDescriptor.TYPE_SINT32):
        values = INT32_EDGES
    elif t in (FieldDescriptor.TYPE_DOUBLE, FieldDescriptor.TYPE_FLOAT):
        values = FLOAT_EDGES
    elif t == FieldDescriptor.TYPE_BOOL:
        values = [True, False]
    elif t == FieldDescriptor.TYPE_ENUM:
        assert field.enum_type is not None
        top = max(v.number for v in field.enum_type.values)
        values = [top + 1, -1, 2**31 - 1]
    else:
        values = []
    setters.extend((label_of(v), assign(v)) for v in values)
    if field.is_repeated and values:
        setters.append(("10,001 copies", lambda p: getattr(p, name).extend([values[1]] * 10_001)))
    return setters


def label_of(value: Any) -> str:
    """A short label for a boundary value; a forged page token shows the position it carries."""
    return TOKEN_LABELS.get(value, repr(value)[:24]) if isinstance(value, str) else repr(value)[:24]


@pytest.mark.parametrize("method", METHODS, ids=method_name)
def test_every_field_at_its_boundaries_gets_ok_or_a_client_error(
    method: MethodDescriptor, hostile: tuple[Stubs, World, Pools], grpc_target: str
) -> None:
    """Deterministic: each field of a valid request (nested ones included) set in turn to each
    boundary value of its type, the rest of the request left valid."""
    stubs, world, pools = hostile
    if method.name.startswith("Delete"):
        base = requests_for(method, world, world)[0]
        base = type(base)()  # no real IDs: a valid delete would delete the world
    else:
        base = requests_for(method, world, world)[0]
    allowed = ALLOWED | (
        {grpc.StatusCode.DEADLINE_EXCEEDED} if method.name == "WatchSessions" else set()
    )
    violations = []
    tried = 0
    for path in field_paths(method.input_type):
        for label, apply in edge_setters(path[-1], pools.tokens.get(method.name, [])):
            request = type(base)()
            request.CopyFrom(base)
            parent = navigate(request, path[:-1])
            parent.ClearField(path[-1].name)
            apply(parent)
            code = call_raw(stubs, method, request.SerializeToString(), watch_timeout=0.2)
            tried += 1
            if code not in allowed:
                violations.append(f"{'.'.join(f.name for f in path)} = {label}: {code.name}")
    BOUNDARIES[method_name(method)] = (tried, len(violations))
    record(
        "boundary values",
        f"{sum(t for t, _ in BOUNDARIES.values())} requests over {len(BOUNDARIES)} RPCs; "
        f"violations: {sum(v for _, v in BOUNDARIES.values())}",
    )
    assert violations == [], f"{method_name(method)}: {violations}"
    assert health(grpc_target) == SERVING


BOUNDARIES: dict[str, tuple[int, int]] = {}


# --- SQL injection through every text field ------------------------------------------------------


def text_slots(descriptor: Descriptor, depth: int = 0) -> Iterator[list[FieldDescriptor]]:
    """Paths to every text a request can carry: strings, repeated strings, map keys and
    values, Struct keys and values, at any depth."""
    for field in descriptor.fields:
        entry = field.message_type
        if entry is None:
            if field.type == FieldDescriptor.TYPE_STRING:
                yield [field]
        elif entry.GetOptions().map_entry or entry.full_name == "google.protobuf.Struct":
            yield [field]
        elif entry.full_name != "google.protobuf.Timestamp" and depth < 3:
            for rest in text_slots(entry, depth + 1):
                yield [field, *rest]


def inject(message: Message, path: list[FieldDescriptor], text: str) -> None:
    field, rest = path[0], path[1:]
    target = getattr(message, field.name)
    if rest:
        if field.is_repeated:
            target = target[0] if len(target) else target.add()
        inject(target, rest, text)
        return
    entry = field.message_type
    if entry is not None and entry.full_name == "google.protobuf.Struct":
        target.update({text: text, "nested": {text: [text]}})
    elif entry is not None:  # a map keyed by text
        value = entry.fields_by_name["value"]
        if value.message_type is None:
            target[text] = text
        else:
            slot = target[text]
            for inner in value.message_type.fields:  # e.g. CustomFieldValue.string_value
                if inner.type == FieldDescriptor.TYPE_STRING:
                    setattr(slot, inner.name, text)
                    break
    elif field.is_repeated:
        del target[:]
        target.append(text)
    else:
        setattr(message, field.name, text)


def test_sql_injection_through_every_text_field_changes_nothing_it_should_not(
    hostile: tuple[Stubs, World, Pools], database_url: str, grpc_target: str
) -> None:
    stubs, world, _ = hostile
    canary_name = unique("canary-")
    canary_who = create_identity(database_url, canary_name)
    canary_stubs = Stubs(grpc_target, canary_who.api_key, canary_who.org_id)
    canary = build_world(canary_stubs, canary_who, canary_name)
    conninfo = libpq_conninfo(database_url)
    before = database_fingerprint(conninfo, canary.org_id)
    calls = slots = 0
    failures = []
    try:
        for method in METHODS:
            base = requests_for(method, world, world)[0]
            if method.name.startswith("Delete"):
                base = requests_for(method, canary, canary)[0]  # IDs it cannot see
            for path in text_slots(method.input_type):
                slots += 1
                for text in INJECTIONS:
                    request = type(base)()
                    request.CopyFrom(base)
                    inject(request, path, text)
                    timeout = 0.25 if method.name == "WatchSessions" else 5.0
                    started = time.monotonic()
                    out = invoke(stubs, method, request, timeout)
                    calls += 1
                    slot = ".".join(f.name for f in path)
                    if out.code not in ALLOWED and not (
                        method.name == "WatchSessions"
                        and out.code == grpc.StatusCode.DEADLINE_EXCEEDED
                    ):
                        failures.append(f"{method_name(method)} {slot}={text!r}: {out.code.name}")
                    elapsed = time.monotonic() - started
                    if elapsed > 3:  # pg_sleep ran: the text reached SQL as code
                        failures.append(f"{method_name(method)} {slot}={text!r}: {elapsed:.1f} s")
    finally:
        canary_stubs.close()
    assert failures == []
    assert database_fingerprint(conninfo, canary.org_id) == before
    assert health(grpc_target) == SERVING
    record(
        "sql injection",
        f"{calls} calls: {len(INJECTIONS)} strings x {slots} text fields of {len(METHODS)} RPCs; "
        f"violations: {len(failures)}",
    )


def database_fingerprint(conninfo: str, org_id: str) -> tuple[Any, ...]:
    """The tables of the schema and every row of one org (another org than the caller's)."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public' ORDER BY 1"
            )
        ]
        orgs = conn.execute("SELECT count(*) FROM orgs").fetchone()
        rows = []
        for table in tables:
            has_org = conn.execute(
                "SELECT 1 FROM information_schema.columns WHERE table_schema = 'public' "
                "AND table_name = %s AND column_name = 'org_id'",
                (table,),
            ).fetchone()
            if has_org:
                query = sql.SQL("SELECT * FROM {} WHERE org_id = %s").format(sql.Identifier(table))
                rows.append(sorted(repr(r) for r in conn.execute(query, (org_id,))))
    return tuple(tables), orgs, tuple(tuple(r) for r in rows)


def test_forged_page_tokens_exist_for_every_listing(hostile: tuple[Stubs, World, Pools]) -> None:
    """A guard for the test above: every listing got a real token to forge from."""
    _, _, pools = hostile
    listings = [m.name for m in METHODS if "page_token" in m.input_type.fields_by_name]
    assert sorted(pools.tokens) == sorted(listings)
    no_real = [name for name, tokens in pools.tokens.items() if len(tokens) <= 4]
    assert no_real == [], "listings without a second page in the hostile world"


# --- the documented size limits ------------------------------------------------------------------


def _limit_cases(w: World) -> list[tuple[str, Callable[[Stubs], Any], grpc.StatusCode, str]]:
    """(what, call, code, offending field) for each limit documented in common.proto."""
    too_deep = to_struct(nested(17))
    too_big = to_struct({"big": "x" * (64 * 1024)})
    sid = w.session_id
    invalid = grpc.StatusCode.INVALID_ARGUMENT

    def in_values(*counts: int) -> pb.SessionFilter:
        """A filter of IN conditions on the world's custom field, of ``counts`` values each."""
        return pb.SessionFilter(
            custom_fields=[
                pb.CustomFieldCondition(
                    field=w.custom_field_name,
                    operator=pb.COMPARISON_OPERATOR_IN,
                    values=[common_pb2.CustomFieldValue(string_value=str(i)) for i in range(n)],
                )
                for n in counts
            ]
        )

    def file_of(extent_counts: list[int]) -> catalog_pb.RegisterFileRequest:
        """A file of one partition per count, each of that many extents."""
        extent = catalog_pb.TimelineExtent(min_timestamp_ns=1, max_timestamp_ns=1)
        return catalog_pb.RegisterFileRequest(
            dataset_id=w.dataset_id,
            relative_path="over-a-limit",
            partitions=[
                catalog_pb.TopicPartitionSpec(topic_name=f"/{i}", extents=[extent] * n)
                for i, n in enumerate(extent_counts)
            ],
        )

    return [
        ("request over 1 MiB", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(description="x" * MEGABYTE)
        ), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("request over the 4 MiB gRPC refuses unread", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(description="x" * (4 * MEGABYTE))
        ), grpc.StatusCode.RESOURCE_EXHAUSTED, ""),
        ("name of 121 characters", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(name="n" * 121)), invalid, "name"),
        ("description of 4,097 characters", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(description="d" * 4097)), invalid, "description"),
        ("257 tags", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(tags=[f"t{i}" for i in range(257)])), invalid, "tags"),
        ("a tag of 129 characters", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(tags=["t" * 129])), invalid, "tags[0]"),
        ("metadata over 64 KiB", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(metadata=too_big)), invalid, "metadata"),
        ("metadata 17 levels deep", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(metadata=too_deep)), invalid, "metadata"),
        ("10,001 files in one AddSessionFiles", lambda s: s.sessions.AddSessionFiles(
            pb.AddSessionFilesRequest(session_id=sid, files=[
                pb.SessionFileSpec(file_id=f"fl_{i:020d}") for i in range(10_001)
            ])), invalid, "files"),
        ("1,001 metrics in one PublishSessionMetrics", lambda s: s.sessions.PublishSessionMetrics(
            pb.PublishSessionMetricsRequest(session_id=sid, no_device=True, metrics=[
                pb.MetricEntry(name=f"m{i}", value=1.0) for i in range(1_001)
            ])), invalid, "metrics"),
        ("page_size of 1,001", lambda s: list(s.sessions.ListSessions(
            pb.ListSessionsRequest(page_size=1_001))), invalid, "page_size"),
        ("257 device IDs in one CreateSession", lambda s: s.sessions.CreateSession(
            pb.CreateSessionRequest(device_ids=[f"d{i}" for i in range(257)])
        ), invalid, "device_ids"),
        ("1,001 IN values in one filter", lambda s: list(s.sessions.ListSessions(
            pb.ListSessionsRequest(filter=in_values(501, 500)))), invalid, "filter.custom_fields"),
        ("10,001 partitions in one file", lambda s: s.catalog.RegisterFile(
            file_of([0] * 10_001)), invalid, "partitions"),
        ("100,001 extents in one file", lambda s: s.catalog.RegisterFile(
            file_of([50_000, 50_001])), invalid, "partitions"),
    ]  # fmt: skip


def test_documented_size_limits_are_enforced(hostile: tuple[Stubs, World, Pools]) -> None:
    stubs, world, _ = hostile
    for what, call, code, field in _limit_cases(world):
        failure = rpc_error(functools.partial(call, stubs))
        assert failure.code == code, what
        if field:
            assert field in failure.fields, (what, failure.fields)


def test_hostile_call_metadata_is_a_client_error(
    hostile: tuple[Stubs, World, Pools], grpc_target: str
) -> None:
    _, world, _ = hostile
    key = world.identity.api_key
    headers = [
        [("authorization", key)],  # no scheme
        [("authorization", "Bearer")],
        [("authorization", "Basic " + key)],
        [("authorization", "Bearer " + "k" * 8000)],
        [("authorization", "Bearer ' OR '1'='1")],
        [("authorization", "Bearer ak_" + "a" * 60 + ".x")],
        [("authorization", f"Bearer {key}"), ("x-org-id", "' OR 1=1 --")],
        [("authorization", f"Bearer {key}"), ("x-org-id", "og_" + "a" * 8000)],
        [("authorization", f"Bearer {key}"), ("x-org-id", " ")],
        [("authorization", f"Bearer {key}"), ("x-request-id", "'; DROP TABLE orgs; --")],
        [("authorization", f"Bearer {key}"), ("x-request-id", "r" * 8000)],
        [("authorization", f"Bearer {key}"), ("authorization", "Bearer other")],
    ]
    allowed = ALLOWED | {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
    with grpc.insecure_channel(grpc_target) as channel:
        sessions = pb_grpc.SessionServiceStub(channel)
        for metadata in headers:
            try:
                sessions.GetSession(
                    pb.GetSessionRequest(session_id=world.session_id),
                    metadata=tuple(metadata),
                    timeout=5,
                )
                code = grpc.StatusCode.OK
            except grpc.RpcError as e:
                code = e.code()
            assert code in allowed, (metadata[-1][0], code)
    assert health(grpc_target) == SERVING
