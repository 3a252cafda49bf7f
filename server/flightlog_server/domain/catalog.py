"""The catalog's data and rules: devices, datasets, files, their topic partitions and extents.

Timestamps are int64 nanoseconds. A file's extents are stored as recorded; its
``unix_epoch_offset_ns`` places them on the Unix epoch. Registration and offset changes check that
every extent plus the offset lies within ``rules.EPOCH_NS_LIMIT``, so the bounds arithmetic done
in SQL (``extents_min_ns + unix_epoch_offset_ns``, and a session's duration) can never overflow.
"""

from __future__ import annotations

import datetime as dt
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
class Extent:
    """A closed time extent of a topic partition, as stored (offset not applied)."""

    min_ns: int
    max_ns: int


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


def check_file(v: Violations, file: FileInput) -> Generator[None, None, tuple[int, int] | None]:
    """Every rule of RegisterFile that needs no database, one violation per offending field.

    Returns (minimum, maximum) over the file's extents as recorded, or None when it has none.
    A generator that yields between units of work (a partition, or ``_EXTENTS_PER_STEP``
    extents), for ``pacing.run_sliced``: checking 100,000 extents takes longer than other calls
    may wait. The counts are checked first, so a file over a limit costs no per-extent work.
    """
    check_id(v, "dataset_id", file.dataset_id, "dataset")
    if not file.relative_path:
        v.add("relative_path", "is required")
    else:
        check_text(v, "relative_path", file.relative_path, MAX_RELATIVE_PATH_CHARS)
    v.check(file.size_bytes >= 0, "size_bytes", "must not be negative")
    if file.device_id:
        check_device_id(v, "device_id", file.device_id)
    partitions = file.partitions
    if len(partitions) > MAX_PARTITIONS_PER_FILE:
        v.add("partitions", f"must hold at most {MAX_PARTITIONS_PER_FILE:,} partitions")
        return None
    extent_count = sum(len(p.extents) for p in partitions)
    if extent_count > MAX_EXTENTS_PER_FILE:
        v.add(
            "partitions",
            f"must hold at most {MAX_EXTENTS_PER_FILE:,} extents in all ({extent_count:,} sent)",
        )
        return None
    extents_ok = True
    low = high = None
    identity_keys = array("q")
    for i, p in enumerate(partitions):
        identity_keys.append(_identity_key(_check_partition(v, i, p), i))
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
    if low is None or high is None:
        return None
    if extents_ok:
        check_offset(v, "unix_epoch_offset_ns", (low, high), file.unix_epoch_offset_ns)
    return low, high


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
