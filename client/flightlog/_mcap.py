"""Reading MCAP recordings: what a file holds, its content hash, and what a damaged one yields.

:func:`read_recording` needs no server. It returns a :class:`RecordingSummary`: the file-wide
start and end (minimum and maximum message ``log_time``), one :class:`TopicSummary` per topic
(schema name, message encoding, message count, log-time extent), the SHA-256 of the file's
bytes and, for a damaged recording, a :class:`Recovery`.

How a file is read. Every byte is read once, in order, and hashed as it goes by (a progress
callback sees the count); the topics come from one of two sources:

1. **Summary and message indexes** (an intact file, the common case): the summary section gives
   the channels, schemas and ``Statistics.channel_message_counts``; per-topic extents come from
   the ``MessageIndex`` records after each chunk, which list the ``log_time`` of every message
   without decompressing anything (16 bytes per message). Counts must agree with the
   statistics. These few reads seek; the file is then hashed in one sequential pass.
2. **Scan**, when the summary is missing, incomplete or inconsistent: the records are read in
   file order in the same pass as the hash, chunks decompressed and their CRCs checked, counting
   messages and taking the minimum and maximum ``log_time`` per channel.

A recording whose recorder crashed has no summary and no footer, and its last record is cut
short. The scan keeps every record that is complete (a chunk counts only when the whole of it is
there and its CRC matches) and stops at the first one that is cut short (the recording is
**truncated**) or damaged (**corrupt**); the summary then describes the messages recovered and
carries a :class:`Recovery`. A file that ends without a footer after complete records is
truncated too, even though nothing of its data is lost.

Only a file with nothing to recover is refused with :class:`RecordingError`: an empty file, one
that does not start with the MCAP magic bytes ("not an MCAP file"), and a damaged one in which
no complete message precedes the damage.

Several channels with the same topic name are merged into one topic: counts are added, extents
united, and the schema name and encoding are those of the lowest channel ID that has them. A
channel declared without messages yields a topic with ``message_count == 0`` and no extent.
Messages out of ``log_time`` order are fine either way.
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import io
import os
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from mcap import records as mcap_records
from mcap.data_stream import ReadDataStream
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.stream_reader import breakup_chunk

from flightlog.catalog import FileRecovery, TimelineExtent, TopicPartitionSpec

__all__ = [
    "MCAP_MAGIC",
    "ProgressCallback",
    "RecordingError",
    "RecordingSummary",
    "Recovery",
    "TopicSummary",
    "read_recording",
]

MCAP_MAGIC = b"\x89MCAP0\r\n"
"""The eight bytes every MCAP file starts and ends with."""

ProgressCallback = Callable[[int], None]
"""Called with the number of bytes of the file read so far, as reading goes."""

_BLOCK = 1024 * 1024  # bytes read at a time when hashing or skipping records
_RECORD_HEAD = 9  # opcode (u8) and record length (u64)


class RecordingError(Exception):
    """A recording has nothing that can be registered: it is missing, empty, not MCAP, or
    damaged before its first complete message.

    Attributes:
        path: The file.
        reason: Why, in one line.
        kind: ``"unreadable"``, ``"empty"``, ``"not_mcap"``, ``"truncated"`` or ``"corrupt"``.
    """

    def __init__(self, path: Path, reason: str, kind: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.kind = kind

    @property
    def error_reason(self) -> str:
        """The kind as an UPPER_SNAKE reason, like the server's ``ErrorInfo`` reasons
        (``RECORDING_TRUNCATED``...)."""
        return f"RECORDING_{self.kind.upper()}"


@dataclasses.dataclass(frozen=True)
class Recovery:
    """What was wrong with a damaged recording and how much of it could be read.

    Attributes:
        reason: ``"truncated"`` (it ends early, without its footer) or ``"corrupt"`` (a record
            is damaged).
        detail: Where, in one line, for example ``"ends inside a Chunk record at byte 1048576"``.
        readable_bytes: The bytes from the start of the file to the end of the last complete
            record before the damage.
        size_bytes: The size of the file.
    """

    reason: str
    detail: str
    readable_bytes: int
    size_bytes: int

    def to_file_recovery(self) -> FileRecovery:
        """The recovery registered with the file (its message count is the server's sum)."""
        return FileRecovery(
            reason=self.reason, detail=self.detail, readable_bytes=self.readable_bytes
        )


@dataclasses.dataclass(frozen=True)
class TopicSummary:
    """One topic of a recording.

    Attributes:
        topic_name: The channel topic, for example ``/odom``.
        schema_name: The schema name; ``""`` when the channel has no schema.
        message_encoding: The channel's message encoding, for example ``cdr`` or ``json``.
        message_count: The number of messages.
        min_timestamp_ns: The smallest message ``log_time``, or ``None`` without messages.
        max_timestamp_ns: The largest message ``log_time``, or ``None`` without messages.
    """

    topic_name: str
    schema_name: str
    message_encoding: str
    message_count: int
    min_timestamp_ns: int | None
    max_timestamp_ns: int | None

    def to_partition_spec(self) -> TopicPartitionSpec:
        """Return the partition registered for this topic: one extent, or none without
        messages."""
        extents: list[TimelineExtent] = []
        if self.min_timestamp_ns is not None and self.max_timestamp_ns is not None:
            extents.append(TimelineExtent(self.min_timestamp_ns, self.max_timestamp_ns))
        return TopicPartitionSpec(
            topic_name=self.topic_name,
            schema_name=self.schema_name,
            message_encoding=self.message_encoding,
            message_count=self.message_count,
            extents=extents,
        )


@dataclasses.dataclass(frozen=True)
class RecordingSummary:
    """What an MCAP file holds.

    Attributes:
        path: The file.
        size_bytes: Its size in bytes.
        content_sha256: The SHA-256 of its bytes, as lowercase hex.
        profile: The header's profile, for example ``ros2``; may be ``""``.
        library: The header's library string.
        start_ns: The smallest message ``log_time``, or ``None`` for a file without messages.
        end_ns: The largest message ``log_time``, or ``None``.
        message_count: The number of messages.
        channel_count: The number of channels declared.
        topics: One entry per topic, in the order of their first channel ID.
        source: ``"index"`` when read from the summary and message indexes, ``"scan"`` when
            every record was read.
        recovery: Set when the recording is damaged: the rest describes what was recovered.
    """

    path: Path
    size_bytes: int
    content_sha256: str
    profile: str
    library: str
    start_ns: int | None
    end_ns: int | None
    message_count: int
    channel_count: int
    topics: tuple[TopicSummary, ...]
    source: str
    recovery: Recovery | None = None

    @property
    def duration_ns(self) -> int:
        """``end_ns - start_ns``, or 0 without messages."""
        if self.start_ns is None or self.end_ns is None:
            return 0
        return self.end_ns - self.start_ns

    def topic(self, name: str) -> TopicSummary:
        """Return the topic of this name.

        Raises:
            KeyError: The recording has no such topic.
        """
        for topic in self.topics:
            if topic.topic_name == name:
                return topic
        raise KeyError(name)

    def partition_specs(self) -> list[TopicPartitionSpec]:
        """Return the partitions to register, one per topic."""
        return [topic.to_partition_spec() for topic in self.topics]


def read_recording(
    path: str | Path, *, use_index: bool = True, on_progress: ProgressCallback | None = None
) -> RecordingSummary:
    """Read an MCAP file's topics, counts, extents and content hash (see the module
    documentation).

    Args:
        path: The file.
        use_index: Read the summary and message indexes when present (the default). ``False``
            always scans every record, which gives the same result more slowly.
        on_progress: Called with the number of bytes read so far, as reading goes.

    Raises:
        RecordingError: The file cannot be read, is empty or not MCAP, or is damaged before its
            first complete message.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = os.fstat(stream.fileno()).st_size
            _check_start(path, stream.read(len(MCAP_MAGIC)), size)
            stream.seek(0)
            indexed = _read_from_index(path, size, stream) if use_index else None
            stream.seek(0)
            reader = _HashingReader(stream, on_progress)
            if indexed is not None:
                reader.drain()
                return dataclasses.replace(indexed, content_sha256=reader.hexdigest())
            return _read_by_scan(path, size, reader)
    except OSError as error:
        raise RecordingError(
            path, f"cannot read: {error.strerror or error}", kind="unreadable"
        ) from error


def _check_start(path: Path, head: bytes, size: int) -> None:
    """Refuse a file that cannot be MCAP from its first bytes."""
    if size == 0:
        raise RecordingError(path, "empty file (0 bytes)", kind="empty")
    if not MCAP_MAGIC.startswith(head):
        raise RecordingError(
            path, "not an MCAP file (it does not start with the MCAP magic bytes)", kind="not_mcap"
        )
    if len(head) < len(MCAP_MAGIC):
        raise RecordingError(
            path,
            f"truncated: the file ends inside its leading magic bytes ({size} bytes); "
            "nothing can be recovered",
            kind="truncated",
        )


class _HashingReader:
    """Reads a file in order, hashing every byte and reporting progress; knows its position."""

    def __init__(self, stream: IO[bytes], on_progress: ProgressCallback | None) -> None:
        self._stream = stream
        self._hash = hashlib.sha256()
        self._on_progress = on_progress
        self.position = 0

    def read(self, count: int) -> bytes:
        """Read up to ``count`` bytes (fewer at the end of the file)."""
        data = self._stream.read(count)
        self._hash.update(data)
        self.position += len(data)
        if self._on_progress is not None and data:
            self._on_progress(self.position)
        return data

    def skip(self, count: int) -> None:
        """Read and hash ``count`` bytes without keeping them."""
        while count > 0:
            data = self.read(min(count, _BLOCK))
            if not data:
                return
            count -= len(data)

    def drain(self) -> None:
        """Read and hash the rest of the file."""
        while self.read(_BLOCK):
            pass

    def hexdigest(self) -> str:
        return self._hash.hexdigest()


# Summary and message indexes ---------------------------------------------------------------------


@dataclasses.dataclass
class _ChannelStats:
    """Per-channel accumulator."""

    topic: str
    schema_name: str
    message_encoding: str
    count: int = 0
    min_ns: int | None = None
    max_ns: int | None = None

    def add_times(self, count: int, low: int, high: int) -> None:
        """Account for ``count`` messages whose log times span ``[low, high]``."""
        self.count += count
        self.min_ns = low if self.min_ns is None else min(self.min_ns, low)
        self.max_ns = high if self.max_ns is None else max(self.max_ns, high)


class _Inconsistent(Exception):
    """The summary or indexes cannot be trusted; scan the file instead."""


def _read_from_index(path: Path, size: int, stream: IO[bytes]) -> RecordingSummary | None:
    """Read a file through its summary and message indexes (without its hash), or return
    ``None`` when they are missing, damaged or inconsistent."""
    try:
        return _summary_from_index(path, size, stream)
    # The summary is untrusted input, and a damaged one can fail in any way (bad lengths,
    # bad UTF-8, records cut short): whatever the failure, the scan decides.
    except Exception:  # noqa: BLE001
        return None


def _summary_from_index(path: Path, size: int, stream: IO[bytes]) -> RecordingSummary:
    reader = SeekingReader(stream, validate_crcs=True)
    summary = reader.get_summary()
    if summary is None or summary.statistics is None:
        raise _Inconsistent("no summary or no statistics")
    statistics = summary.statistics
    counts: dict[int, int] = dict(statistics.channel_message_counts)
    if sum(counts.values()) != statistics.message_count:
        raise _Inconsistent("per-channel counts do not add up")
    if statistics.message_count > 0 and not summary.chunk_indexes:
        raise _Inconsistent("messages outside chunks")

    channels = {
        channel_id: _ChannelStats(
            topic=channel.topic,
            schema_name=_schema_name(summary.schemas.get(channel.schema_id)),
            message_encoding=channel.message_encoding,
        )
        for channel_id, channel in summary.channels.items()
    }
    if set(counts) - set(channels):
        raise _Inconsistent("counts for undeclared channels")

    for chunk_index in summary.chunk_indexes:
        start = chunk_index.chunk_start_offset + chunk_index.chunk_length
        length = chunk_index.message_index_length
        if length == 0 or start + length > size:
            raise _Inconsistent("missing message indexes")
        stream.seek(start)
        data = stream.read(length)
        if len(data) != length:
            raise _Inconsistent("short message index section")
        for channel_id, times in _message_index_times(data):
            if channel_id not in channels:
                raise _Inconsistent("message index for an undeclared channel")
            if len(times):
                channels[channel_id].add_times(len(times), min(times), max(times))

    for channel_id, stats in channels.items():
        if stats.count != counts.get(channel_id, 0):
            raise _Inconsistent("message indexes disagree with statistics")

    start_ns = statistics.message_start_time if statistics.message_count else None
    end_ns = statistics.message_end_time if statistics.message_count else None
    lows = [s.min_ns for s in channels.values() if s.min_ns is not None]
    highs = [s.max_ns for s in channels.values() if s.max_ns is not None]
    if (min(lows, default=None), max(highs, default=None)) != (start_ns, end_ns):
        raise _Inconsistent("message indexes disagree with the statistics' time range")
    header = reader.get_header()
    return _summarize(
        path, size, header.profile, header.library, channels, start_ns, end_ns, source="index"
    )


def _message_index_times(data: bytes) -> Iterable[tuple[int, array.array[int]]]:
    """Yield ``(channel_id, log_times)`` for each MessageIndex record in ``data``.

    Layout (little-endian): opcode u8, record length u64, then channel id u16, records length
    u32 and ``(log_time u64, offset u64)`` pairs.
    """
    view = memoryview(data)
    position = 0
    while position < len(view):
        if position + _RECORD_HEAD > len(view):
            raise _Inconsistent("truncated message index record")
        opcode = view[position]
        (record_length,) = struct.unpack_from("<Q", view, position + 1)
        body = position + _RECORD_HEAD
        end = body + record_length
        if end > len(view):
            raise _Inconsistent("truncated message index record")
        if opcode == Opcode.MESSAGE_INDEX:
            channel_id, entries_length = struct.unpack_from("<HI", view, body)
            entries_start = body + 6
            if entries_length % 16 or entries_start + entries_length > end:
                raise _Inconsistent("malformed message index record")
            pairs = array.array("Q")
            pairs.frombytes(view[entries_start : entries_start + entries_length])
            if sys.byteorder != "little":
                pairs.byteswap()
            yield channel_id, pairs[0::2]
        position = end


def _schema_name(schema: Any) -> str:
    """Return a schema record's name, or ``""`` for none."""
    return "" if schema is None else str(schema.name)


# Scan --------------------------------------------------------------------------------------------

# Records whose content the scan needs; the others are skipped (hashed, never held in memory).
_PARSED = frozenset(
    {Opcode.HEADER, Opcode.SCHEMA, Opcode.CHANNEL, Opcode.MESSAGE, Opcode.CHUNK, Opcode.FOOTER}
)


class _Damaged(Exception):
    """The record at ``offset`` cannot be used; reading stops there."""

    def __init__(self, reason: str, detail: str, offset: int) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail
        self.offset = offset


class _ScanState:
    """What the records read so far declare and contain."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.channels: dict[int, _ChannelStats] = {}
        self.profile = ""
        self.library = ""
        self.start_ns: int | None = None
        self.end_ns: int | None = None
        self.message_count = 0

    def apply(self, records: Sequence[Any]) -> None:
        """Take in complete records, all of them or (``ValueError``) none."""
        schemas = dict(self.schemas)
        declared = dict(self.channels)
        times: list[tuple[int, int]] = []
        for record in records:
            if isinstance(record, mcap_records.Message):
                if record.channel_id not in declared:
                    raise ValueError(f"a message on undeclared channel {record.channel_id}")
                times.append((record.channel_id, record.log_time))
            elif isinstance(record, mcap_records.Channel):
                if record.id not in declared:
                    if record.schema_id != 0 and record.schema_id not in schemas:
                        raise ValueError(
                            f"channel {record.id} names unknown schema {record.schema_id}"
                        )
                    declared[record.id] = _ChannelStats(
                        topic=record.topic,
                        schema_name=schemas.get(record.schema_id, ""),
                        message_encoding=record.message_encoding,
                    )
            elif isinstance(record, mcap_records.Schema):
                schemas.setdefault(record.id, record.name)
            elif isinstance(record, mcap_records.Header):
                self.profile, self.library = record.profile, record.library
        self.schemas, self.channels = schemas, declared
        for channel_id, log_time in times:
            self.channels[channel_id].add_times(1, log_time, log_time)
            self.start_ns = log_time if self.start_ns is None else min(self.start_ns, log_time)
            self.end_ns = log_time if self.end_ns is None else max(self.end_ns, log_time)
        self.message_count += len(times)


def _record_name(opcode: int) -> str:
    """``Chunk``, ``MessageIndex``... for an opcode."""
    try:
        return Opcode(opcode).name.title().replace("_", "")
    except ValueError:
        return f"unknown (opcode 0x{opcode:02x})"


def _parse(opcode: int, body: bytes) -> list[Any]:
    """The records a complete record stands for (a chunk's records, decompressed and checked)."""
    data = ReadDataStream(io.BytesIO(body))
    if opcode == Opcode.CHUNK:
        return breakup_chunk(mcap_records.Chunk.read(data), validate_crc=True)
    if opcode == Opcode.MESSAGE:
        return [mcap_records.Message.read(data, len(body))]
    parsers: dict[int, Callable[[ReadDataStream], Any]] = {
        Opcode.HEADER: mcap_records.Header.read,
        Opcode.SCHEMA: mcap_records.Schema.read,
        Opcode.CHANNEL: mcap_records.Channel.read,
        Opcode.FOOTER: mcap_records.Footer.read,
    }
    return [parsers[opcode](data)]


def _scan_records(size: int, reader: _HashingReader, state: _ScanState) -> None:
    """Read records after the leading magic up to the closing one; raise :class:`_Damaged` at
    the first record cut short or damaged."""
    reader.skip(len(MCAP_MAGIC))  # checked by _check_start
    while True:
        start = reader.position
        head = reader.read(_RECORD_HEAD)
        if not head:
            raise _Damaged(
                "truncated",
                f"ends at byte {start}, after its last complete record, without a footer",
                start,
            )
        if len(head) < _RECORD_HEAD:
            raise _Damaged("truncated", f"ends inside a record header at byte {start}", start)
        opcode, length = struct.unpack("<BQ", head)
        name = _record_name(opcode)
        if length > size - reader.position:  # also guards against absurd lengths
            raise _Damaged("truncated", f"ends inside a {name} record at byte {start}", start)
        if opcode not in _PARSED:
            reader.skip(length)
            continue
        body = reader.read(length)
        # Recordings are untrusted input: a decompressor or parser failing on garbage (zstd,
        # lz4, CRC mismatch, bad UTF-8, short fields) means the record is corrupt, whatever the
        # exception's type.
        try:
            state.apply(_parse(opcode, body))
        except Exception as error:
            reason = str(error) or type(error).__name__
            raise _Damaged(
                "corrupt", f"the {name} record at byte {start} is damaged ({reason})", start
            ) from error
        if opcode == Opcode.FOOTER:
            closing_at = reader.position
            if reader.read(len(MCAP_MAGIC)) != MCAP_MAGIC:
                raise _Damaged(
                    "truncated",
                    f"its closing magic bytes at byte {closing_at} are missing or damaged",
                    closing_at,
                )
            return


def _read_by_scan(path: Path, size: int, reader: _HashingReader) -> RecordingSummary:
    """Read every record in file order (CRCs checked), salvaging a damaged recording."""
    state = _ScanState()
    recovery: Recovery | None = None
    try:
        _scan_records(size, reader, state)
    except _Damaged as damage:
        if state.message_count == 0:
            raise RecordingError(
                path,
                f"{damage.reason}: {damage.detail}; no complete message precedes it, so nothing "
                "can be recovered",
                kind=damage.reason,
            ) from damage
        recovery = Recovery(damage.reason, damage.detail, damage.offset, size)
    reader.drain()  # the hash covers the whole file, damaged tail included
    summary = _summarize(
        path,
        size,
        state.profile,
        state.library,
        state.channels,
        state.start_ns,
        state.end_ns,
        source="scan",
    )
    return dataclasses.replace(summary, content_sha256=reader.hexdigest(), recovery=recovery)


def _summarize(
    path: Path,
    size: int,
    profile: str,
    library: str,
    channels: dict[int, _ChannelStats],
    start_ns: int | None,
    end_ns: int | None,
    *,
    source: str,
) -> RecordingSummary:
    """Merge channels by topic name (in channel-ID order) into a :class:`RecordingSummary`
    (without its hash)."""
    merged: dict[str, _ChannelStats] = {}
    for channel_id in sorted(channels):
        stats = channels[channel_id]
        topic = merged.get(stats.topic)
        if topic is None:
            merged[stats.topic] = dataclasses.replace(stats)
            continue
        topic.schema_name = topic.schema_name or stats.schema_name
        topic.message_encoding = topic.message_encoding or stats.message_encoding
        if stats.count and stats.min_ns is not None and stats.max_ns is not None:
            topic.add_times(stats.count, stats.min_ns, stats.max_ns)
    topics = tuple(
        TopicSummary(
            topic_name=name,
            schema_name=stats.schema_name,
            message_encoding=stats.message_encoding,
            message_count=stats.count,
            min_timestamp_ns=stats.min_ns,
            max_timestamp_ns=stats.max_ns,
        )
        for name, stats in merged.items()
    )
    return RecordingSummary(
        path=path,
        size_bytes=size,
        content_sha256="",
        profile=str(profile),
        library=str(library),
        start_ns=start_ns,
        end_ns=end_ns,
        message_count=sum(t.message_count for t in topics),
        channel_count=len(channels),
        topics=topics,
        source=source,
    )
