"""Requests read from the wire piece by piece instead of built whole: RegisterFile's and
AddSessionFiles'.

protobuf builds an extent (two bytes on the wire when empty, six with small timestamps) in about
50 bytes: its message, its slot in the partition's array and the array's growth. A RegisterFile
within its documented limits (10,000 partitions, 100,000 extents) could therefore take 6.5 MB to
build from 0.25 MiB, 26 times its size, which no bound on a request's memory proportional to its
size can allow. So this one request is never built whole:

* ``WireFile.read`` walks the request's fields (in slices: ``pacing.run_sliced``) and keeps where
  each partition lies in the request's bytes, 16 bytes a partition. Its other fields are parsed by
  protobuf into a ``RegisterFileRequest`` that holds no partitions (``WireFile.header``).
* A partition is parsed when it is used (``WirePartition``): its fields other than the extents by
  protobuf at once, its extents in *windows* of at most ``ELEMENTS_PER_WINDOW`` consecutive ones,
  each parsed by protobuf as a ``TopicPartitionSpec`` holding only them and dropped before the
  next. Memory stays that of one window, whatever the partition holds.
* ``read`` parses every partition and every window once, so that bytes protobuf would refuse
  (malformed, a string that is not UTF-8, nested too deeply) are refused before the request is
  used, like any other request's; and it refuses more partitions or extents than the documented
  limits as soon as it counts them, before parsing any more.

AddSessionFiles' 10,000 file specs are read the same way (``WireRepeated``): the request without
its files, and the files a window at a time. Built whole with the specs the server made of them,
they took 3.2 MB, 12 times the request.

Each piece is a run of whole fields, so protobuf parses the pieces into what it would have built
from the whole request: the same values, a field sent twice merged the same way, unknown fields
and fields of the wrong wire type kept alike. ``WireFile.fingerprint`` reproduces the built
request's deterministic serialization (known fields in number order, then unknown ones as they
came). ``tests/unit/test_piecewise.py`` compares all of it with the built requests on generated
input.
"""

from __future__ import annotations

import hashlib
from array import array
from collections.abc import Generator, Iterator, Sequence
from dataclasses import dataclass
from itertools import islice
from typing import Any, Generic, TypeVar, overload

from google.protobuf.message import DecodeError, Message

from flightlog.v1 import catalog_service_pb2
from flightlog_server.domain.catalog import MAX_EXTENTS_PER_FILE, MAX_PARTITIONS_PER_FILE
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.pacing import run_at_once, run_sliced
from flightlog_server.rpc.wire_format import (
    END_GROUP,
    FIXED32,
    FIXED64,
    LENGTH_DELIMITED,
    MAX_DEPTH,
    START_GROUP,
    VARINT,
    read_varint,
    varint_bytes,
)

__all__ = [
    "ELEMENTS_PER_WINDOW",
    "Streamed",
    "WireExtents",
    "WireFile",
    "WirePartition",
    "WireRepeated",
]

_Request = catalog_service_pb2.RegisterFileRequest
M = TypeVar("M", bound=Message)  # the type of a request read by WireRepeated
E = TypeVar("E")  # the elements of a Streamed sequence
_Partition = catalog_service_pb2.TopicPartitionSpec
_PARTITIONS = _Request.DESCRIPTOR.fields_by_name["partitions"].number
_EXTENTS = _Partition.DESCRIPTOR.fields_by_name["extents"].number


# Elements parsed at once: extents take about 50 bytes each built, file specs 100.
ELEMENTS_PER_WINDOW = 4096
# Fields walked between two chances for other calls to run.
_FIELDS_PER_STEP = 4096


class WireFile:
    """A RegisterFile request read from its bytes (see the module's docstring); it is the
    ``catalog.FileInput`` that RegisterFile checks and stores."""

    def __init__(self, raw: bytes, header: _Request, starts: array[int], counts: array[int]):
        self._raw = raw
        self.header = header  # every field but the partitions
        self._starts = starts  # each partition's payload: start, end
        self._counts = counts  # each partition's extents
        self.partitions = WirePartitions(self)

    @classmethod
    async def read(cls, raw: bytes) -> WireFile:
        """The request in ``raw``: ``DecodeError`` where protobuf would not parse it,
        ``InvalidArgument`` past the partitions' or extents' limits."""
        return await run_sliced(cls._read(raw))

    @classmethod
    def _read(cls, raw: bytes) -> Generator[None, None, WireFile]:
        header = bytearray()  # the fields other than the partitions, in order
        starts: array[int] = array("q")
        for read, (number, wire, start, payload, end) in enumerate(_fields(raw, 0, len(raw))):
            if number == _PARTITIONS and wire == LENGTH_DELIMITED:
                if len(starts) == 2 * MAX_PARTITIONS_PER_FILE:
                    raise InvalidArgument.one(
                        "partitions", f"must hold at most {MAX_PARTITIONS_PER_FILE:,} partitions"
                    )
                starts.extend((payload, end))
            else:
                header += raw[start:end]
            if read % _FIELDS_PER_STEP == _FIELDS_PER_STEP - 1:
                yield
        counts: array[int] = array("q")
        total = 0
        read = 0  # partitions and extents since the last yield
        for i in range(0, len(starts), 2):
            layout = yield from _scan(raw, starts[i], starts[i + 1])
            counts.append(layout.count)
            total += layout.count
            if total <= MAX_EXTENTS_PER_FILE:  # else only counted: refused below
                _Partition.FromString(layout.header)
                for window_start, window_end in layout.windows:
                    _Partition.FromString(raw[window_start:window_end])
            read += 1 + layout.count
            if read >= _FIELDS_PER_STEP:
                read = 0
                yield
        if total > MAX_EXTENTS_PER_FILE:
            raise InvalidArgument.one(
                "partitions",
                f"must hold at most {MAX_EXTENTS_PER_FILE:,} extents in all ({total:,} sent)",
            )
        return cls(raw, _Request.FromString(bytes(header)), starts, counts)

    # The fields of ``catalog.FileInput`` and those RegisterFile reads besides.
    @property
    def dataset_id(self) -> str:
        return self.header.dataset_id

    @property
    def relative_path(self) -> str:
        return self.header.relative_path

    @property
    def size_bytes(self) -> int:
        return self.header.size_bytes

    @property
    def device_id(self) -> str:
        return self.header.device_id

    @property
    def unix_epoch_offset_ns(self) -> int:
        return self.header.unix_epoch_offset_ns

    @property
    def request_id(self) -> str:
        return self.header.request_id

    def partition(self, index: int) -> WirePartition:
        """Partition ``index`` (parsed now; nothing of it is kept here)."""
        return WirePartition(
            self._raw, self._starts[2 * index], self._starts[2 * index + 1], self._counts[index]
        )

    def __len__(self) -> int:
        return len(self._counts)

    async def fingerprint(self, method: str) -> bytes:
        """What ``convert.request_fingerprint`` gives for the request built whole: SHA-256 of
        the method, a zero byte and the request's deterministic serialization without its
        ``request_id``, the partitions re-serialized one window at a time (in slices)."""
        return await run_sliced(self._fingerprint(method))

    def _fingerprint(self, method: str) -> Generator[None, None, bytes]:
        header = _Request()
        header.CopyFrom(self.header)
        header.ClearField("request_id")
        digest = hashlib.sha256(method.encode() + b"\x00")
        known, before, unknown = _split(header, _PARTITIONS)
        digest.update(known[:before])
        for partition in self.partitions:
            body = partition.serialized()
            digest.update(_tag(_PARTITIONS) + varint_bytes(len(body)))
            digest.update(body)
            yield
        digest.update(known[before:])
        digest.update(unknown)
        return digest.digest()


class WirePartitions(Sequence["WirePartition"]):
    """A ``WireFile``'s partitions, each parsed when it is used."""

    def __init__(self, file: WireFile) -> None:
        self._file = file

    def __len__(self) -> int:
        return len(self._file)

    @overload
    def __getitem__(self, index: int) -> WirePartition: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[WirePartition]: ...
    def __getitem__(self, index: int | slice) -> WirePartition | Sequence[WirePartition]:
        if isinstance(index, slice):
            return [self[i] for i in range(len(self))[index]]
        if not -len(self) <= index < len(self):
            raise IndexError("partition index out of range")
        return self._file.partition(index % len(self))

    def __iter__(self) -> Iterator[WirePartition]:
        return (self._file.partition(i) for i in range(len(self)))


class WirePartition:
    """One partition of a ``WireFile``: its fields other than the extents parsed, its extents
    parsed a window at a time as they are iterated (a ``catalog.PartitionInput``)."""

    def __init__(self, raw: bytes, start: int, end: int, count: int) -> None:
        self._raw = raw
        self._start = start
        self._end = end
        self.extents = WireExtents(self, count)  # counting them needs no parsing
        self._scanned: _Layout | None = None
        self._header: _Partition | None = None

    @property
    def _layout(self) -> _Layout:
        if self._scanned is None:
            # At most 100,000 extents (WireFile.read refused more): about 15 ms, not sliced.
            self._scanned = run_at_once(_scan(self._raw, self._start, self._end))
        return self._scanned

    @property
    def header(self) -> _Partition:
        """The partition's fields other than the extents (parsed when first asked for)."""
        if self._header is None:
            self._header = _Partition.FromString(self._layout.header)
        return self._header

    @property
    def topic_name(self) -> str:
        return self.header.topic_name

    @property
    def schema_name(self) -> str:
        return self.header.schema_name

    @property
    def message_encoding(self) -> str:
        return self.header.message_encoding

    @property
    def message_count(self) -> int:
        return self.header.message_count

    def windows(self) -> Iterator[_Partition]:
        """The extents, a window at a time: each a ``TopicPartitionSpec`` holding only them."""
        for start, end in self._layout.windows:
            yield _Partition.FromString(self._raw[start:end])

    def serialized(self) -> bytes:
        """The partition's deterministic serialization, as protobuf would write it built whole."""
        known, before, unknown = _split(self.header, _EXTENTS)
        extents = b"".join(w.SerializeToString(deterministic=True) for w in self.windows())
        return known[:before] + extents + known[before:] + unknown


class Streamed(Sequence[E]):
    """A sequence whose elements are made as it is iterated and none kept: its length is known
    up front; indexing walks to the element (rare: a check naming an earlier repeat)."""

    def __init__(self, count: int) -> None:
        self._count = count

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[E]:
        raise NotImplementedError

    @overload
    def __getitem__(self, index: int) -> E: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[E]: ...
    def __getitem__(self, index: int | slice) -> E | Sequence[E]:
        if isinstance(index, slice):
            return list(self)[index]
        if not -len(self) <= index < len(self):
            raise IndexError("index out of range")
        return next(islice(iter(self), index % len(self), None))


class WireExtents(Streamed[catalog_service_pb2.TimelineExtent]):
    """A ``WirePartition``'s extents; iterating parses one window at a time."""

    def __init__(self, partition: WirePartition, count: int) -> None:
        super().__init__(count)
        self._partition = partition

    def __iter__(self) -> Iterator[catalog_service_pb2.TimelineExtent]:
        for window in self._partition.windows():
            yield from window.extents


class WireRepeated(Generic[M]):
    """A request whose one repeated message field is read a window at a time (AddSessionFiles'
    files): ``header`` holds its other fields; iterating gives the field's elements."""

    def __init__(
        self, raw: bytes, header: M, field: str, windows: list[tuple[int, int]], count: int
    ) -> None:
        self._raw = raw
        self.header = header
        self._field = field
        self._windows = windows
        self._count = count

    @classmethod
    async def read(
        cls, raw: bytes, *, request: type[M], field: str, limit: int, items: str
    ) -> WireRepeated[M]:
        """The request of type ``request`` in ``raw``: ``DecodeError`` where protobuf would not
        parse it; ``InvalidArgument`` naming ``field`` ("must hold at most ``limit`` ``items``",
        as ``rules.check_count`` says it) when it holds more elements."""
        return await run_sliced(cls._read(raw, request, field, limit, items))

    @classmethod
    def _read(
        cls, raw: bytes, request: type[M], field: str, limit: int, items: str
    ) -> Generator[None, None, WireRepeated[M]]:
        number = request.DESCRIPTOR.fields_by_name[field].number
        layout = yield from _scan(raw, 0, len(raw), number)
        if layout.count > limit:
            raise InvalidArgument.one(field, f"must hold at most {limit:,} {items}")
        header = request.FromString(layout.header)
        for start, end in layout.windows:  # parsed once now, so that bad bytes are refused now
            request.FromString(raw[start:end])
            yield
        return cls(raw, header, field, layout.windows, layout.count)

    def __len__(self) -> int:
        return self._count

    def __iter__(self) -> Iterator[Any]:
        for start, end in self._windows:
            window = type(self.header).FromString(self._raw[start:end])
            yield from getattr(window, self._field)


# --- The wire format ----------------------------------------------------------------------------


def _fields(raw: bytes, start: int, end: int) -> Iterator[tuple[int, int, int, int, int]]:
    """(number, wire type, start, payload start, end) of each field in ``raw[start:end]``."""
    position = start
    while position < end:
        number, wire, payload, field_end = _field_at(raw, position, end)
        yield number, wire, position, payload, field_end
        position = field_end


def _field_at(raw: bytes, position: int, end: int) -> tuple[int, int, int, int]:
    """(number, wire type, payload start, end) of the field at ``position``; a group is one
    field, from its start tag to its end tag. ``DecodeError`` where protobuf's parser would
    fail on the framing."""
    try:
        tag = raw[position]
        if tag < 0x80:
            position += 1
        else:
            tag, position = read_varint(raw, position)
        number, wire = tag >> 3, tag & 7
        if number == 0:
            raise DecodeError("field number 0")
        payload = position
        if wire == VARINT:
            position = read_varint(raw, position)[1]
        elif wire == FIXED64:
            position += 8
        elif wire == LENGTH_DELIMITED:
            length, payload = read_varint(raw, position)
            position = payload + length
        elif wire == START_GROUP:
            position = _group_end(raw, position, end, number)
        elif wire == FIXED32:
            position += 4
        else:
            raise DecodeError(f"wire type {wire} of field {number} is not valid here")
    except IndexError:
        raise DecodeError("the message ends inside a field") from None
    if position > end:
        raise DecodeError("a field runs past the end of its message")
    return number, wire, payload, position


@dataclass
class _Layout:
    """Where a message's pieces lie: its fields other than one repeated field (copied, in
    order), the runs of consecutive elements of that field (each a window of at most
    ``ELEMENTS_PER_WINDOW``) and how many elements it holds."""

    header: bytes
    windows: list[tuple[int, int]]
    count: int


def _scan(
    raw: bytes, start: int, end: int, number: int = _EXTENTS
) -> Generator[None, None, _Layout]:
    """The layout of the message in ``raw[start:end]`` around its repeated field ``number``
    (a partition's extents by default), yielding every ``_FIELDS_PER_STEP`` fields. Runs of
    elements are stepped over in a tight loop (about 0.15 µs an element); an element whose tag
    is written in more than one byte (valid, if odd) takes the general path."""
    tag = number << 3 | LENGTH_DELIMITED
    assert tag < 0x80, "the tight loop compares one-byte tags"
    header = bytearray()
    windows: list[tuple[int, int]] = []
    in_window = 0  # elements in the last window, while it can still grow
    count = 0
    read = 0  # fields read since the last yield
    position = start
    try:
        while position < end:
            if read >= _FIELDS_PER_STEP:
                read = 0
                yield
            if raw[position] == tag:
                # A run of extents, continuing the last window if it ends here and has room.
                if in_window and windows[-1][1] == position:
                    run_start, n = windows.pop()[0], in_window
                else:
                    run_start, n = position, 0
                first = n
                while position < end and raw[position] == tag and n < ELEMENTS_PER_WINDOW:
                    length = raw[position + 1]
                    if length < 0x80:
                        position += 2 + length
                    else:
                        length, position = read_varint(raw, position + 1)
                        position += length
                    n += 1
                if position > end:
                    raise DecodeError("a field runs past the end of its message")
                windows.append((run_start, position))
                in_window = n % ELEMENTS_PER_WINDOW
                count += n - first
                read += n - first
                continue
            found, wire, _, field_end = _field_at(raw, position, end)
            if found == number and wire == LENGTH_DELIMITED:  # its tag in several bytes
                if in_window and windows[-1][1] == position:
                    windows[-1] = (windows[-1][0], field_end)
                else:
                    windows.append((position, field_end))
                in_window = (in_window + 1) % ELEMENTS_PER_WINDOW
                count += 1
            else:
                header += raw[position:field_end]
                in_window = 0
            position = field_end
            read += 1
    except IndexError:
        raise DecodeError("the message ends inside a field") from None
    return _Layout(bytes(header), windows, count)


def _group_end(raw: bytes, position: int, end: int, number: int) -> int:
    """The position after the end tag of group ``number`` whose fields start at ``position``."""
    open_groups = [number]
    while open_groups:
        if position >= end:
            raise DecodeError("a group is never closed")
        tag, position = read_varint(raw, position)
        inner, wire = tag >> 3, tag & 7
        if inner == 0:
            raise DecodeError("field number 0")
        if wire == VARINT:
            position = read_varint(raw, position)[1]
        elif wire == FIXED64:
            position += 8
        elif wire == LENGTH_DELIMITED:
            length, position = read_varint(raw, position)
            position += length
        elif wire == START_GROUP:
            if len(open_groups) >= MAX_DEPTH:
                raise DecodeError("nested too deeply")
            open_groups.append(inner)
        elif wire == END_GROUP:
            if open_groups.pop() != inner:
                raise DecodeError("a group closed by another's end tag")
        elif wire == FIXED32:
            position += 4
        else:
            raise DecodeError(f"wire type {wire} of field {inner} is not valid here")
    return position


def _tag(number: int) -> bytes:
    return varint_bytes(number << 3 | LENGTH_DELIMITED)


def _split(message: Message, number: int) -> tuple[bytes, int, bytes]:
    """``message``'s deterministic serialization cut where field ``number`` (which it does not
    hold) would go: its known fields, the offset in them of the first field after ``number``,
    and its unknown fields (which protobuf writes after every known field, as they came)."""
    whole = message.SerializeToString(deterministic=True)
    known_only = type(message)()
    known_only.CopyFrom(message)
    known_only.DiscardUnknownFields()
    known = known_only.SerializeToString(deterministic=True)
    if not whole.startswith(known):  # protobuf's order, which the tests check
        raise AssertionError("protobuf no longer writes unknown fields last")
    before = next((s for n, _, s, _, _ in _fields(known, 0, len(known)) if n > number), len(known))
    return known, before, whole[len(known) :]
