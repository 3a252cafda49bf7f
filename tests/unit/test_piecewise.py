"""RegisterFile's and AddSessionFiles' requests read piece by piece (``rpc.piecewise``),
compared with protobuf.

Hypothesis writes requests field by field, in any order (extents between a partition's other
fields, a field sent twice, unknown fields and groups anywhere, extent tags written in two bytes),
and mutates them byte by byte. Read piece by piece, a request must mean exactly what protobuf
makes of it whole: the same fields, partitions and extents, the same fingerprint, and a
``DecodeError`` exactly where protobuf raises one. Windows are made small here so that partitions
span several of them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar
from unittest import mock

import pytest
from google.protobuf.message import DecodeError, Message
from hypothesis import given, settings
from hypothesis import strategies as st

from flightlog.v1 import catalog_service_pb2 as pb
from flightlog.v1 import session_service_pb2 as sessions_pb
from flightlog_server.domain.catalog import MAX_EXTENTS_PER_FILE, MAX_PARTITIONS_PER_FILE
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.rpc import convert, piecewise
from flightlog_server.rpc.piecewise import WireFile, WireRepeated
from tests.reliability.helpers import HYPOTHESIS_EXAMPLES, PROPERTY_SETTINGS
from tests.rpc.factories import densest_register_file_request
from tests.support import c_heap_in_use, delimited, varint

Built = TypeVar("Built", bound=Message)
PARTITION_FIELDS = ("topic_name", "schema_name", "message_encoding", "message_count")
HEADER_FIELDS = (
    "dataset_id",
    "relative_path",
    "size_bytes",
    "device_id",
    "unix_epoch_offset_ns",
    "request_id",
    "content_sha256",
)


def read(raw: bytes) -> WireFile:
    return asyncio.run(WireFile.read(raw))


def unknown_field() -> st.SearchStrategy[bytes]:
    """A field no message here knows: any wire type, groups holding fields of their own."""
    number = st.integers(20, 40)
    return st.one_of(
        st.builds(lambda n, v: varint(n << 3) + varint(v), number, st.integers(0, 2**64 - 1)),
        st.builds(lambda n, b: delimited(n, b), number, st.binary(max_size=4)),
        st.builds(lambda n, b: varint(n << 3 | 1) + b, number, st.binary(min_size=8, max_size=8)),
        st.builds(lambda n, b: varint(n << 3 | 5) + b, number, st.binary(min_size=4, max_size=4)),
        st.builds(
            lambda n, v: varint(n << 3 | 3) + varint(8) + varint(v) + varint(n << 3 | 4),
            number,
            st.integers(0, 300),
        ),
    )


@st.composite
def extent(draw: st.DrawFn) -> bytes:
    fields = []
    for number in (1, 2):
        for _ in range(draw(st.integers(0, 2))):  # absent, once, or twice (the last wins)
            fields.append(varint(number << 3) + varint(draw(st.integers(0, 2**64 - 1))))
    if draw(st.booleans()):
        fields.append(draw(unknown_field()))
    payload = b"".join(draw(st.permutations(fields)))
    tag = b"\xaa\x00" if draw(st.integers(0, 9)) == 0 else b"\x2a"  # the same tag, in two bytes
    return tag + varint(len(payload)) + payload


@st.composite
def partition(draw: st.DrawFn) -> bytes:
    fields = [draw(extent()) for _ in range(draw(st.integers(0, 12)))]
    for number in (1, 2, 3):
        for _ in range(draw(st.integers(0, 2))):
            fields.append(delimited(number, draw(st.text(max_size=4)).encode()))
    if draw(st.booleans()):
        fields.append(varint(4 << 3) + varint(draw(st.integers(0, 2**64 - 1))))
    fields += draw(st.lists(unknown_field(), max_size=2))
    if draw(st.integers(0, 9)) == 0:
        fields.append(varint(5 << 3) + varint(7))  # the extents' number, of another wire type
    # Extents mostly in runs, as writers send them, sometimes between the other fields.
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    return b"".join(fields)


@st.composite
def request(draw: st.DrawFn) -> bytes:
    fields = [delimited(6, draw(partition())) for _ in range(draw(st.integers(0, 5)))]
    for name in HEADER_FIELDS:
        if draw(st.booleans()):
            value = (
                draw(st.integers(-(2**63), 2**63 - 1))
                if name in ("size_bytes", "unix_epoch_offset_ns")
                else draw(st.text(max_size=6))
            )
            message = pb.RegisterFileRequest()
            setattr(message, name, value)
            fields.append(message.SerializeToString())
    if draw(st.booleans()):
        recovery = pb.FileRecovery(detail=draw(st.text(max_size=4)), readable_bytes=3)
        fields.append(delimited(9, recovery.SerializeToString()))
    fields += draw(st.lists(unknown_field(), max_size=2))
    return b"".join(draw(st.permutations(fields)))


def built_or_refused_alike(
    message: type[Built], read_piecewise: Callable[[bytes], object], raw: bytes
) -> Built | None:
    """What protobuf builds of ``raw``; None when it refuses the bytes, once reading them piece
    by piece has been checked to refuse them too."""
    try:
        return message.FromString(raw)
    except DecodeError:
        with pytest.raises(DecodeError):
            read_piecewise(raw)
        return None


def assert_same(wire: WireFile, built: pb.RegisterFileRequest) -> None:
    """``wire`` holds what protobuf built, field by field, partition by partition."""
    expected_header = pb.RegisterFileRequest()
    expected_header.CopyFrom(built)
    expected_header.ClearField("partitions")
    assert wire.header == expected_header
    assert wire.header.SerializeToString() == expected_header.SerializeToString()  # unknowns too
    assert len(wire.partitions) == len(built.partitions)
    for got, want in zip(wire.partitions, built.partitions, strict=True):
        for name in PARTITION_FIELDS:
            assert getattr(got, name) == getattr(want, name), name
        assert len(got.extents) == len(want.extents)
        assert list(got.extents) == list(want.extents)
    fingerprint = asyncio.run(wire.fingerprint("RegisterFile"))
    assert fingerprint == convert.request_fingerprint("RegisterFile", built)


@pytest.mark.parametrize("window", [1, 3, piecewise.ELEMENTS_PER_WINDOW])
@settings(PROPERTY_SETTINGS, max_examples=4 * HYPOTHESIS_EXAMPLES)
@given(raw=request())
def test_a_request_read_piece_by_piece_is_the_request_protobuf_builds(
    window: int, raw: bytes
) -> None:
    with mock.patch.object(piecewise, "ELEMENTS_PER_WINDOW", window):
        assert_same(read(raw), pb.RegisterFileRequest.FromString(raw))


@settings(PROPERTY_SETTINGS, max_examples=4 * HYPOTHESIS_EXAMPLES)
@given(raw=request(), data=st.data())
def test_damaged_bytes_are_refused_exactly_where_protobuf_refuses_them(
    raw: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(damaged)))
        kind = data.draw(st.sampled_from(["set", "insert", "delete", "cut"]))
        byte = data.draw(st.integers(0, 255))
        if kind == "set" and at < len(damaged):
            damaged[at] = byte
        elif kind == "insert":
            damaged.insert(at, byte)
        elif kind == "delete" and at < len(damaged):
            del damaged[at]
        elif kind == "cut":
            del damaged[at:]
    built = built_or_refused_alike(pb.RegisterFileRequest, read, bytes(damaged))
    if built is not None:
        with mock.patch.object(piecewise, "ELEMENTS_PER_WINDOW", 2):
            assert_same(read(bytes(damaged)), built)


@pytest.mark.parametrize(
    "raw",
    [
        delimited(6, delimited(1, b"\xff")),  # a topic name that is not UTF-8
        delimited(1, b"\xc3"),  # a dataset ID that is not UTF-8
        delimited(6, delimited(5, b"\x08")),  # an extent that ends inside a varint
        delimited(6, delimited(5, b"\x08\x01" * 3 + b"\x0f")),  # wire type 7 in an extent
        delimited(6, b"\x2a\x05\x08\x01"),  # an extent running past its partition
        delimited(6, b"\xbb\x01\x08\x01"),  # a group never closed, in a partition
        delimited(6, b"\xbb\x01\xc4\x01"),  # a group closed by another's end tag
        b"\x34",  # an end tag with no group
        b"\x00\x00",  # field number 0
        delimited(6, b"") + b"\x32",  # a partition's tag with no length
    ],
)
def test_bytes_protobuf_refuses_are_refused(raw: bytes) -> None:
    with pytest.raises(DecodeError):
        pb.RegisterFileRequest.FromString(raw)
    with pytest.raises(DecodeError):
        read(raw)


def densest_at_the_limits() -> bytes:
    return densest_register_file_request("ds_x").SerializeToString()


def test_a_request_at_both_limits_is_read_and_more_is_refused_as_it_is_counted() -> None:
    raw = densest_at_the_limits()
    wire = read(raw)
    assert len(wire.partitions) == MAX_PARTITIONS_PER_FILE
    assert sum(len(p.extents) for p in wire.partitions) == MAX_EXTENTS_PER_FILE
    with pytest.raises(InvalidArgument) as refused:
        read(raw + delimited(6, delimited(1, b"u")))
    assert refused.value.violations[0].field == "partitions"
    assert "at most 10,000 partitions" in refused.value.violations[0].description
    with pytest.raises(InvalidArgument) as refused:
        read(delimited(6, b"\x2a\x00" * (MAX_EXTENTS_PER_FILE + 5)))
    assert refused.value.violations[0].description == (
        "must hold at most 100,000 extents in all (100,005 sent)"
    )


def test_reading_and_using_the_densest_request_takes_little_beside_its_bytes() -> None:
    # protobuf would build this request in 6.5 MB (26 times its 0.24 MiB). Read piece by piece,
    # and gone through as RegisterFile does (every partition's fields, every extent), the C
    # allocator's count of bytes in use never grows by more than its size and one window.
    raw = densest_at_the_limits()
    before = c_heap_in_use()
    wire = read(raw)
    most = c_heap_in_use() - before
    for partition in wire.partitions:
        for extent in partition.extents:
            assert extent.min_timestamp_ns <= extent.max_timestamp_ns
        most = max(most, c_heap_in_use() - before)
    assert most <= len(raw) + 512 * 1024, (most, len(raw))


# --- AddSessionFiles -----------------------------------------------------------------------------


@st.composite
def add_files_request(draw: st.DrawFn) -> bytes:
    """An AddSessionFilesRequest written field by field: file specs (some with windows, some
    with unknown fields, some with their tag in two bytes) among the other fields, in any
    order."""
    fields = []
    for _ in range(draw(st.integers(0, 12))):
        spec = sessions_pb.SessionFileSpec(file_id=draw(st.text(max_size=5)))
        if draw(st.booleans()):
            spec.range_min_timestamp_ns = draw(st.integers(-(2**63), 2**63 - 1))
        if draw(st.booleans()):
            spec.range_max_timestamp_ns = draw(st.integers(-(2**63), 2**63 - 1))
        payload = spec.SerializeToString()
        if draw(st.integers(0, 5)) == 0:
            payload += draw(unknown_field())
        tag = b"\x92\x00" if draw(st.integers(0, 9)) == 0 else b"\x12"
        fields.append(tag + varint(len(payload)) + payload)
    if draw(st.booleans()):
        fields.append(delimited(1, draw(st.text(max_size=6)).encode()))
    if draw(st.booleans()):
        fields.append(varint(3 << 3) + varint(draw(st.integers(0, 2**64 - 1))))
    fields += draw(st.lists(unknown_field(), max_size=2))
    if draw(st.booleans()):
        fields = draw(st.permutations(fields))
    return b"".join(fields)


def read_files(raw: bytes, limit: int = 10_000) -> WireRepeated[sessions_pb.AddSessionFilesRequest]:
    return asyncio.run(
        WireRepeated.read(
            raw,
            request=sessions_pb.AddSessionFilesRequest,
            field="files",
            limit=limit,
            items="files",
        )
    )


@pytest.mark.parametrize("window", [1, 3, piecewise.ELEMENTS_PER_WINDOW])
@settings(PROPERTY_SETTINGS, max_examples=4 * HYPOTHESIS_EXAMPLES)
@given(raw=add_files_request(), data=st.data())
def test_file_specs_read_a_window_at_a_time_are_those_protobuf_builds(
    window: int, raw: bytes, data: st.DataObject
) -> None:
    damaged = bytearray(raw)
    if data.draw(st.booleans()) and damaged:  # and sometimes one byte changed
        damaged[data.draw(st.integers(0, len(damaged) - 1))] = data.draw(st.integers(0, 255))
    built = built_or_refused_alike(sessions_pb.AddSessionFilesRequest, read_files, bytes(damaged))
    if built is None:
        return
    with mock.patch.object(piecewise, "ELEMENTS_PER_WINDOW", window):
        read = read_files(bytes(damaged))
        expected_header = sessions_pb.AddSessionFilesRequest()
        expected_header.CopyFrom(built)
        expected_header.ClearField("files")
        assert read.header == expected_header
        assert len(read) == len(built.files)
        assert list(read) == list(built.files)


def test_more_file_specs_than_the_limit_are_refused_as_they_are_counted() -> None:
    raw = b"\x12\x00" * 11
    assert len(read_files(raw, limit=11)) == 11
    with pytest.raises(InvalidArgument) as refused:
        read_files(raw, limit=10)
    assert refused.value.violations[0].field == "files"
    assert refused.value.violations[0].description == "must hold at most 10 files"
