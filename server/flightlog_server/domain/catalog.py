"""The catalog's data and rules: devices, datasets, files, their topic partitions and extents.

Timestamps are int64 nanoseconds. A file's extents are stored as recorded; its
``unix_epoch_offset_ns`` places them on the Unix epoch. Registration and offset changes check that
every extent plus the offset lies within ``rules.EPOCH_NS_LIMIT``, so the bounds arithmetic done
in SQL (``extents_min_ns + unix_epoch_offset_ns``, and a session's duration) can never overflow.
"""

from __future__ import annotations

import datetime as dt
import re
from array import array
from collections.abc import Generator, Sequence
from dataclasses import dataclass
from typing import Protocol

from flightlog_server.domain.rules import (
    Violations,
    check_device_id,
    check_id,
    check_text,
    is_epoch_ns,
)

# Limits of RegisterFile (documented in catalog_service.proto, with what one request at the limit
# costs the server in the README's "Limits"). A file's extents are checked and copied one by one,
# so their total, not their count per partition, is what bounds the cost of a registration (and
# of the ListFileTopics batch that returns them).
MAX_RELATIVE_PATH_CHARS = 1024
MAX_PARTITIONS_PER_FILE = 10_000
MAX_EXTENTS_PER_FILE = 100_000
MAX_TOPIC_NAME_CHARS = 512
MAX_SCHEMA_NAME_CHARS = 512
MAX_MESSAGE_ENCODING_CHARS = 64
# A ListFileTopics batch stops before the partition that would take it past this many extents
# (a batch of 1,000 partitions could otherwise carry all of a file's 100,000).
EXTENTS_PER_LISTING_BATCH = 10_000
# How many extents are checked between two chances for other calls to run (see ``check_file``).
_EXTENTS_PER_STEP = 512
MAX_RECOVERY_DETAIL_CHARS = 1000
INT64_MAX = 2**63 - 1
RECOVERY_REASONS = ("truncated", "corrupt")
# A SHA-256 as the API carries it, once lowercased: 64 hexadecimal characters.
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


# A file to register, as the RegisterFile request holds it. The request message itself is what is
# checked and stored (it satisfies these protocols): copying 100,000 extents into domain objects
# first would cost about 100 times the request's size in memory (issue 11).
class ExtentInput(Protocol):
    """A closed time extent of a topic partition, as recorded (offset not applied)."""

    @property
    def min_timestamp_ns(self) -> int: ...
    @property
    def max_timestamp_ns(self) -> int: ...


class PartitionInput(Protocol):
    """One topic's messages within a file."""

    @property
    def topic_name(self) -> str: ...
    @property
    def schema_name(self) -> str: ...
    @property
    def message_encoding(self) -> str: ...
    @property
    def message_count(self) -> int: ...
    @property
    def extents(self) -> Sequence[ExtentInput]: ...


class FileInput(Protocol):
    """A file to register; an empty ``device_id`` means "the dataset's device"."""

    @property
    def dataset_id(self) -> str: ...
    @property
    def relative_path(self) -> str: ...
    @property
    def size_bytes(self) -> int: ...
    @property
    def device_id(self) -> str: ...
    @property
    def unix_epoch_offset_ns(self) -> int: ...
    @property
    def partitions(self) -> Sequence[PartitionInput]: ...


@dataclass(frozen=True)
class RecoverySpec:
    """What RegisterFile is told about a file salvaged from a damaged recording; ``reason`` is
    None when the request named none of ``RECOVERY_REASONS``."""

    reason: str | None
    detail: str
    readable_bytes: int


@dataclass(frozen=True)
class FileExtras:
    """What RegisterFile takes besides the file's partitions (``FileInput``): its content hash
    (lowercase hex, or None when not given) and, for a salvaged recording, its recovery."""

    content_sha256: str | None = None
    recovery: RecoverySpec | None = None


@dataclass(frozen=True)
class FileRecovery:
    """A recovered file's damage and how much of it was read; ``message_count`` is the sum of
    its partitions' message counts."""

    reason: str
    detail: str
    message_count: int
    readable_bytes: int


@dataclass(frozen=True)
class CheckedFile:
    """What ``check_file`` found: (minimum, maximum) over the extents as recorded (None without
    any), and the recovery to store (None for an intact file)."""

    extents: tuple[int, int] | None
    recovery: FileRecovery | None


@dataclass(frozen=True)
class DeviceRecord:
    device_id: str
    org_id: str
    name: str
    created: dt.datetime
    created_by: str


@dataclass(frozen=True)
class DatasetRecord:
    dataset_id: str
    org_id: str
    name: str
    device_id: str | None
    created: dt.datetime
    created_by: str


@dataclass(frozen=True)
class FileRecord:
    file_id: str
    org_id: str
    dataset_id: str
    relative_path: str
    size_bytes: int
    device_id: str | None
    unix_epoch_offset_ns: int
    # Minimum and maximum over the extents as stored; None when the file has none.
    extents_min_ns: int | None
    extents_max_ns: int | None
    created: dt.datetime
    created_by: str
    content_sha256: str | None = None
    recovery: FileRecovery | None = None

    @property
    def window(self) -> tuple[int, int] | None:
        """The file's time window on the epoch (offset applied), or None without extents."""
        if self.extents_min_ns is None or self.extents_max_ns is None:
            return None
        offset = self.unix_epoch_offset_ns
        return self.extents_min_ns + offset, self.extents_max_ns + offset


@dataclass(frozen=True)
class TopicRecord:
    topic_id: str
    name: str
    schema_name: str
    message_encoding: str


@dataclass(frozen=True)
class PartitionRecord:
    """A stored partition; its extents are read on their own (there may be 100,000)."""

    topic: TopicRecord
    file_id: str
    message_count: int
    extent_count: int


def listing_batch(partitions: Sequence[PartitionRecord]) -> Sequence[PartitionRecord]:
    """The first of ``partitions`` that one ListFileTopics batch carries: as many as hold at
    most ``EXTENTS_PER_LISTING_BATCH`` extents together, and at least one (a partition is never
    split across batches, so one with more extents is a batch of its own)."""
    total = 0
    for i, partition in enumerate(partitions):
        total += partition.extent_count
        if i > 0 and total > EXTENTS_PER_LISTING_BATCH:
            return partitions[:i]
    return partitions


def offset_fits(extents: tuple[int, int] | None, offset: int) -> bool:
    """True when every extent within ``extents`` plus ``offset`` lies on the epoch's range."""
    if extents is None:
        return True
    low, high = extents
    return is_epoch_ns(low + offset) and is_epoch_ns(high + offset)


def check_offset(v: Violations, field: str, extents: tuple[int, int] | None, offset: int) -> None:
    v.check(
        offset_fits(extents, offset),
        field,
        "puts the file's extents outside the supported range: every extent plus the offset"
        " must lie within ±2^62 ns of the Unix epoch",
    )


def check_content_sha256(v: Violations, field: str, value: str) -> None:
    """A content hash: 64 hexadecimal characters (after lowercasing)."""
    v.check(bool(_SHA256_HEX.fullmatch(value)), field, "must be 64 hexadecimal characters")


def check_file(
    v: Violations, file: FileInput, extras: FileExtras
) -> Generator[None, None, CheckedFile]:
    """Every rule of RegisterFile that needs no database, one violation per offending field.

    Returns what the check found (``CheckedFile``). A generator that yields between units of
    work (a partition, or ``_EXTENTS_PER_STEP`` extents), for ``pacing.run_sliced``: checking
    100,000 extents takes longer than other calls may wait. The counts are checked first, so a
    file over a limit costs no per-extent work.
    """
    check_id(v, "dataset_id", file.dataset_id, "dataset")
    if not file.relative_path:
        v.add("relative_path", "is required")
    else:
        check_text(v, "relative_path", file.relative_path, MAX_RELATIVE_PATH_CHARS)
    v.check(file.size_bytes >= 0, "size_bytes", "must not be negative")
    if file.device_id:
        check_device_id(v, "device_id", file.device_id)
    if extras.content_sha256 is not None:
        check_content_sha256(v, "content_sha256", extras.content_sha256)
    if extras.recovery is not None:
        _check_recovery(v, extras.recovery, file.size_bytes)
    partitions = file.partitions
    if len(partitions) > MAX_PARTITIONS_PER_FILE:
        v.add("partitions", f"must hold at most {MAX_PARTITIONS_PER_FILE:,} partitions")
        return CheckedFile(None, None)
    extent_count = sum(len(p.extents) for p in partitions)
    if extent_count > MAX_EXTENTS_PER_FILE:
        v.add(
            "partitions",
            f"must hold at most {MAX_EXTENTS_PER_FILE:,} extents in all ({extent_count:,} sent)",
        )
        return CheckedFile(None, None)
    extents_ok = True
    low = high = None
    messages = 0
    identity_keys = array("q")
    for i, p in enumerate(partitions):
        identity_keys.append(_identity_key(_check_partition(v, i, p), i))
        messages += max(p.message_count, 0)
        for j, extent in enumerate(p.extents):
            first, last = extent.min_timestamp_ns, extent.max_timestamp_ns
            if first > last:
                v.add(
                    f"partitions[{i}].extents[{j}].min_timestamp_ns",
                    "must not be greater than max_timestamp_ns",
                )
                extents_ok = False
            if low is None or first < low:
                low = first
            if high is None or last > high:
                high = last
            if j % _EXTENTS_PER_STEP == _EXTENTS_PER_STEP - 1:
                yield
        yield
    for i, first in _repeated_topics(partitions, identity_keys):
        v.add(
            f"partitions[{i}].topic_name",
            f"repeats partitions[{first}] (same topic name and schema name); list each topic once",
        )
    recovery = None
    # A recovery stores the partitions' total, which must fit its int64 column.
    if (
        extras.recovery is not None
        and extras.recovery.reason is not None
        and v.check(
            messages <= INT64_MAX,
            "partitions",
            "the message counts of a recovered file must add up to at most 2^63-1",
        )
    ):
        recovery = FileRecovery(
            extras.recovery.reason,
            extras.recovery.detail,
            messages,
            extras.recovery.readable_bytes,
        )
    if low is None or high is None:
        return CheckedFile(None, recovery)
    if extents_ok:
        check_offset(v, "unix_epoch_offset_ns", (low, high), file.unix_epoch_offset_ns)
    return CheckedFile((low, high), recovery)


def _check_recovery(v: Violations, recovery: RecoverySpec, size_bytes: int) -> None:
    v.check(
        recovery.reason is not None,
        "recovery.reason",
        "must be RECOVERY_REASON_TRUNCATED or RECOVERY_REASON_CORRUPT",
    )
    check_text(
        v, "recovery.detail", recovery.detail, MAX_RECOVERY_DETAIL_CHARS, allow_newlines=False
    )
    v.check(
        0 <= recovery.readable_bytes <= max(size_bytes, 0),
        "recovery.readable_bytes",
        f"must be 0 to size_bytes ({size_bytes})",
    )


def _check_partition(v: Violations, i: int, p: PartitionInput) -> tuple[str, str]:
    """The rules of one partition's own fields; returns its topic identity."""
    field = f"partitions[{i}]"
    topic_name, schema_name = p.topic_name, p.schema_name
    if not topic_name:
        v.add(f"{field}.topic_name", "is required")
    else:
        check_text(v, f"{field}.topic_name", topic_name, MAX_TOPIC_NAME_CHARS, allow_newlines=False)
    check_text(v, f"{field}.schema_name", schema_name, MAX_SCHEMA_NAME_CHARS, allow_newlines=False)
    check_text(
        v,
        f"{field}.message_encoding",
        p.message_encoding,
        MAX_MESSAGE_ENCODING_CHARS,
        allow_newlines=False,
    )
    v.check(p.message_count >= 0, f"{field}.message_count", "must not be negative")
    return topic_name, schema_name


# A topic listed twice is found without keeping each partition's identity: a dict of 10,000
# (name, schema name) keys cost more memory than the request (issue 11). Each partition leaves
# one 8-byte key, its identity's hash with the low bits replaced by its index; sorted, the keys
# of equal hashes are adjacent and in index order, and only those are compared exactly.
_INDEX_BITS = 14
_INDEX_MASK = (1 << _INDEX_BITS) - 1
assert MAX_PARTITIONS_PER_FILE <= _INDEX_MASK


def _identity_key(identity: tuple[str, str], index: int) -> int:
    return (hash(identity) & ~_INDEX_MASK) | index


def _repeated_topics(
    partitions: Sequence[PartitionInput], identity_keys: Sequence[int]
) -> list[tuple[int, int]]:
    """(index, first index) of each partition whose topic identity an earlier one has, by
    index."""
    repeats: list[tuple[int, int]] = []
    run: list[int] = []  # indices whose keys share a hash, ascending
    run_hash = 0
    for key in sorted(identity_keys):
        if run and key & ~_INDEX_MASK != run_hash:
            _add_repeats(partitions, run, repeats)
            run = []
        run.append(key & _INDEX_MASK)
        run_hash = key & ~_INDEX_MASK
    _add_repeats(partitions, run, repeats)
    return sorted(repeats)


def _add_repeats(
    partitions: Sequence[PartitionInput], run: list[int], repeats: list[tuple[int, int]]
) -> None:
    """Adds the repeats among ``run`` (ascending indices whose identities share a hash)."""
    if len(run) < 2:
        return
    firsts: dict[tuple[str, str], int] = {}
    for i in run:
        first = firsts.setdefault((partitions[i].topic_name, partitions[i].schema_name), i)
        if first != i:
            repeats.append((i, first))
