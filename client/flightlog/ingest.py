"""Ingest of MCAP recordings: read what a file holds, register it, group files into a session.

Reading is a pure function, :func:`read_recording`, that needs no server. For each file it
returns the file-wide start and end (the minimum and maximum message ``log_time``) and one
:class:`TopicSummary` per topic with its schema name, message encoding, message count and
log-time extent.

How a file is read:

1. **Summary and message indexes** (the normal case, cheap): the summary section gives the
   channels, schemas and ``Statistics.channel_message_counts``. Per-topic extents are exact:
   they come from the ``MessageIndex`` records stored after each chunk, which list the
   ``log_time`` of every message of every channel in the chunk. Those records are read without
   decompressing any chunk, at 16 bytes per message. The message counts of the indexes must agree
   with the statistics.
2. **Scan** (fallback): when the file has no summary, no statistics, no chunk indexes, no
   message indexes, or anything in them is inconsistent, every record is read in file order with
   the stream reader (CRCs checked), counting messages and taking the minimum and maximum
   ``log_time`` per channel. Messages out of ``log_time`` order are fine either way.

Several channels with the same topic name in one file are merged into one topic: counts are
added, extents united, and the schema name and encoding are those of the lowest channel ID that
has them. A channel declared without messages yields a topic with ``message_count == 0`` and no
extent.

A truncated or corrupt file raises :class:`RecordingError` with a one-line reason.
"""

from __future__ import annotations

import array
import dataclasses
import struct
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import IO, Any

from mcap import records as mcap_records
from mcap.exceptions import EndOfFile, InvalidMagic, McapError
from mcap.opcode import Opcode
from mcap.reader import SeekingReader
from mcap.stream_reader import StreamReader

from flightlog._client import FlightlogClient, resolve_client
from flightlog.catalog import File, TimelineExtent, TopicPartitionSpec, list_files, register_file
from flightlog.errors import ConflictError, InvalidRequestError
from flightlog.session import Session

__all__ = [
    "AmbiguousSessionError",
    "IngestFailure",
    "IngestResult",
    "IngestedFile",
    "RecordingError",
    "RecordingSummary",
    "TopicSummary",
    "find_or_create_session",
    "ingest_recordings",
    "read_recording",
    "register_recording",
]

_MAX_FILES_PER_ADD = 10_000  # AddSessionFiles accepts at most this many files per call.


class RecordingError(Exception):
    """A recording cannot be read: it is missing, truncated, corrupt or not MCAP.

    Attributes:
        path: The file.
        reason: Why, in one line.
    """

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


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
        profile: The header's profile, for example ``ros2``; may be ``""``.
        library: The header's library string.
        start_ns: The smallest message ``log_time``, or ``None`` for a file without messages.
        end_ns: The largest message ``log_time``, or ``None``.
        message_count: The number of messages.
        channel_count: The number of channels declared.
        topics: One entry per topic, in the order of their first channel ID.
        source: ``"index"`` when read from the summary and message indexes, ``"scan"`` when
            every record was read.
    """

    path: Path
    size_bytes: int
    profile: str
    library: str
    start_ns: int | None
    end_ns: int | None
    message_count: int
    channel_count: int
    topics: tuple[TopicSummary, ...]
    source: str

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


def read_recording(path: str | Path, *, use_index: bool = True) -> RecordingSummary:
    """Read an MCAP file's topics, counts and extents (see the module documentation).

    Args:
        path: The file.
        use_index: Read the summary and message indexes when present (the default). ``False``
            always scans every record, which gives the same result more slowly.

    Raises:
        RecordingError: The file is missing, truncated, corrupt or not MCAP.
    """
    path = Path(path)
    try:
        with path.open("rb") as stream:
            size = path.stat().st_size
            if use_index:
                try:
                    return _read_from_index(path, size, stream)
                except (_Inconsistent, McapError, struct.error, ValueError, KeyError):
                    # A missing or damaged summary is not an error by itself: the scan decides.
                    pass
            stream.seek(0)
            return _read_by_scan(path, size, stream)
    except RecordingError:
        raise
    except OSError as error:
        raise RecordingError(path, f"cannot read: {error.strerror or error}") from error
    except InvalidMagic as error:
        raise RecordingError(path, "not an MCAP file (bad magic bytes)") from error
    except (EndOfFile, struct.error) as error:
        raise RecordingError(
            path, "truncated: the file ends in the middle of a record (no footer)"
        ) from error
    except McapError as error:
        raise RecordingError(path, f"corrupt: {error}") from error
    except Exception as error:
        # Recordings are untrusted input: a decompressor or decoder failing on garbage (zstd,
        # lz4, CRC mismatch, bad UTF-8) means the file is corrupt, whatever the exception type.
        raise RecordingError(path, f"corrupt: {type(error).__name__}: {error}") from error


def _header_strings(header: Any) -> tuple[str, str]:
    """Return the profile and library of an MCAP header record."""
    return str(getattr(header, "profile", "")), str(getattr(header, "library", ""))


def _read_from_index(path: Path, size: int, stream: IO[bytes]) -> RecordingSummary:
    """Read a file through its summary and message indexes, or raise :class:`_Inconsistent`."""
    reader = SeekingReader(stream)
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
    profile, library = _header_strings(reader.get_header())
    return _summarize(path, size, profile, library, channels, start_ns, end_ns, source="index")


def _message_index_times(data: bytes) -> Iterable[tuple[int, array.array[int]]]:
    """Yield ``(channel_id, log_times)`` for each MessageIndex record in ``data``.

    Layout (little-endian): opcode u8, record length u64, then channel id u16, records length
    u32 and ``(log_time u64, offset u64)`` pairs.
    """
    view = memoryview(data)
    position = 0
    while position < len(view):
        if position + 9 > len(view):
            raise _Inconsistent("truncated message index record")
        opcode = view[position]
        (record_length,) = struct.unpack_from("<Q", view, position + 1)
        body = position + 9
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


def _read_by_scan(path: Path, size: int, stream: IO[bytes]) -> RecordingSummary:
    """Read every record in file order (CRCs checked) and accumulate per-channel statistics."""
    schemas: dict[int, str] = {}
    channels: dict[int, _ChannelStats] = {}
    profile = library = ""
    start_ns: int | None = None
    end_ns: int | None = None
    reader = StreamReader(stream, validate_crcs=True)
    for record in reader.records:
        if isinstance(record, mcap_records.Message):
            stats = channels.get(record.channel_id)
            if stats is None:
                raise McapError(f"message on undeclared channel {record.channel_id}")
            t = record.log_time
            stats.add_times(1, t, t)
            start_ns = t if start_ns is None else min(start_ns, t)
            end_ns = t if end_ns is None else max(end_ns, t)
        elif isinstance(record, mcap_records.Channel):
            if record.id not in channels:
                if record.schema_id != 0 and record.schema_id not in schemas:
                    raise McapError(f"channel {record.id} names unknown schema {record.schema_id}")
                channels[record.id] = _ChannelStats(
                    topic=record.topic,
                    schema_name=schemas.get(record.schema_id, ""),
                    message_encoding=record.message_encoding,
                )
        elif isinstance(record, mcap_records.Schema):
            schemas.setdefault(record.id, record.name)
        elif isinstance(record, mcap_records.Header):
            profile, library = _header_strings(record)
    return _summarize(path, size, profile, library, channels, start_ns, end_ns, source="scan")


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
    """Merge channels by topic name (in channel-ID order) into a :class:`RecordingSummary`."""
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
        profile=profile,
        library=library,
        start_ns=start_ns,
        end_ns=end_ns,
        message_count=sum(t.message_count for t in topics),
        channel_count=len(channels),
        topics=topics,
        source=source,
    )


# Registration --------------------------------------------------------------------------------


class AmbiguousSessionError(ConflictError):
    """Several sessions of the org carry the name given to ``ingest --session``."""


@dataclasses.dataclass(frozen=True)
class IngestedFile:
    """A recording registered in the catalog.

    Attributes:
        path: The local file.
        summary: What it holds.
        file: The catalog file.
        already_registered: ``True`` when the dataset already had this file (same path and
            size) from an earlier ingest, which was reused.
    """

    path: Path
    summary: RecordingSummary
    file: File
    already_registered: bool = False


@dataclasses.dataclass(frozen=True)
class IngestFailure:
    """A recording that could not be ingested.

    Attributes:
        path: The local file.
        reason: Why, in one line.
    """

    path: Path
    reason: str


@dataclasses.dataclass
class IngestResult:
    """The outcome of :func:`ingest_recordings`.

    Attributes:
        files: The recordings registered, in the order given.
        failures: The recordings that failed, in the order given.
        session: The session that holds the files, when one was asked for.
    """

    files: list[IngestedFile] = dataclasses.field(default_factory=list)
    failures: list[IngestFailure] = dataclasses.field(default_factory=list)
    session: Session | None = None


def register_recording(
    summary: RecordingSummary,
    dataset_id: str,
    *,
    device_id: str | None = None,
    relative_path: str | None = None,
    unix_epoch_offset_ns: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> IngestedFile:
    """Register a read recording as a file of a dataset, one partition per topic.

    If the dataset already has a file at that path with the same size (an earlier ingest of
    the same recording), that file is reused. A lost call is retried by the client's channel.

    Args:
        summary: The recording, from :func:`read_recording`.
        dataset_id: The dataset.
        device_id: The device that recorded it; ``None``: the dataset's.
        relative_path: The path within the dataset; default: the file name.
        unix_epoch_offset_ns: Offset to place the recording's times on the Unix epoch.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Raises:
        ConflictError: The dataset has a different file at that path.
        FlightlogError: Any other failure of the call.
    """
    c = resolve_client(client)
    path = relative_path or summary.path.name
    try:
        # The channel retries a lost RegisterFile (it carries a request_id). A file already at
        # the path is an earlier ingest of the same recording when the size matches (below).
        file = register_file(
            dataset_id,
            path,
            summary.size_bytes,
            device_id=device_id,
            unix_epoch_offset_ns=unix_epoch_offset_ns,
            partitions=summary.partition_specs(),
            org_id=org_id,
            client=c,
        )
        return IngestedFile(summary.path, summary, file)
    except ConflictError as error:
        for existing in list_files(dataset_id, org_id=org_id, client=c):
            if existing.relative_path == path:
                if existing.size_bytes == summary.size_bytes:
                    return IngestedFile(summary.path, summary, existing, already_registered=True)
                break
        raise ConflictError(
            f"the dataset already has a different file at {path!r}",
            code=error.code,
            reason=error.reason,
            metadata=error.metadata,
        ) from error


def find_or_create_session(
    name: str,
    *,
    device_id: str | None = None,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> tuple[Session, bool]:
    """Return the org's session with exactly this name, creating it when there is none.

    Args:
        name: The session name.
        device_id: A device to attach, at creation or to the existing session.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Returns:
        The session and whether it was created.

    Raises:
        AmbiguousSessionError: Several sessions carry this name.
    """
    c = resolve_client(client)
    matches = [
        s for s in Session.query(name_contains=name, org_id=org_id, client=c) if s.name == name
    ]
    if len(matches) > 1:
        ids = ", ".join(s.session_id for s in matches)
        raise AmbiguousSessionError(
            f"{len(matches)} sessions are named {name!r} ({ids})",
            reason="AMBIGUOUS_SESSION_NAME",
        )
    if matches:
        session = matches[0]
        if device_id is not None:
            session.attach_to_device(device_id)
        return session, False
    devices = [device_id] if device_id is not None else []
    return Session.create(name=name, device_ids=devices, caller_org_id=org_id, client=c), True


_PER_FILE_ERRORS = (InvalidRequestError, ConflictError)


def ingest_recordings(
    paths: Sequence[str | Path],
    dataset_id: str,
    *,
    device_id: str | None = None,
    session_name: str | None = None,
    unix_epoch_offset_ns: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
    on_file: Callable[[IngestedFile | IngestFailure], None] | None = None,
) -> IngestResult:
    """Read and register recordings, optionally grouping them into a named session.

    A recording that cannot be read, or that the server rejects on its own (invalid, or a
    different file at the same path), is recorded in ``failures`` and the others go on. A
    failure that concerns every file (authentication, an unknown dataset or device, the
    server being unavailable) is raised.

    With ``session_name``, the session of that name is found or created and every registered
    file is added to it whole.

    Args:
        paths: The MCAP files.
        dataset_id: The dataset to register them in.
        device_id: The device that recorded them; also attached to the session.
        session_name: The session to create or extend.
        unix_epoch_offset_ns: Offset to place the recordings' times on the Unix epoch.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.
        on_file: Called after each file, with its outcome (for progress reporting).

    Raises:
        FlightlogError: A failure that is not specific to one file.
    """
    c = resolve_client(client)
    result = IngestResult()
    for raw_path in paths:
        path = Path(raw_path)
        outcome: IngestedFile | IngestFailure
        try:
            summary = read_recording(path)
            outcome = register_recording(
                summary,
                dataset_id,
                device_id=device_id,
                unix_epoch_offset_ns=unix_epoch_offset_ns,
                org_id=org_id,
                client=c,
            )
            result.files.append(outcome)
        except RecordingError as error:
            outcome = IngestFailure(path, error.reason)
            result.failures.append(outcome)
        except _PER_FILE_ERRORS as error:
            outcome = IngestFailure(path, str(error))
            result.failures.append(outcome)
        if on_file is not None:
            on_file(outcome)

    if session_name is not None and result.files:
        session, _ = find_or_create_session(
            session_name, device_id=device_id, org_id=org_id, client=c
        )
        file_ids = [ingested.file.file_id for ingested in result.files]
        for start in range(0, len(file_ids), _MAX_FILES_PER_ADD):
            session.add_files(file_ids[start : start + _MAX_FILES_PER_ADD])
        result.session = session
    return result
