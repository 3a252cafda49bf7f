"""The catalog's data and rules: devices, datasets, files, their topic partitions and extents.

Timestamps are int64 nanoseconds. A file's extents are stored as recorded; its
``unix_epoch_offset_ns`` places them on the Unix epoch. Registration and offset changes check that
every extent plus the offset lies within ``rules.EPOCH_NS_LIMIT``, so the bounds arithmetic done
in SQL (``extents_min_ns + unix_epoch_offset_ns``, and a session's duration) can never overflow.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from flightlog_server.domain.rules import (
    Violations,
    check_device_id,
    check_id,
    check_text,
    is_epoch_ns,
)

MAX_RELATIVE_PATH_CHARS = 1024
MAX_PARTITIONS_PER_FILE = 10_000
MAX_EXTENTS_PER_PARTITION = 1_000
MAX_TOPIC_NAME_CHARS = 512
MAX_SCHEMA_NAME_CHARS = 512
MAX_MESSAGE_ENCODING_CHARS = 64
MAX_RECOVERY_DETAIL_CHARS = 1000
INT64_MAX = 2**63 - 1
RECOVERY_REASONS = ("truncated", "corrupt")
# A SHA-256 as the API carries it, once lowercased: 64 hexadecimal characters.
_SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Extent:
    """A closed time extent of a topic partition, as stored (offset not applied)."""

    min_ns: int
    max_ns: int


@dataclass(frozen=True)
class PartitionSpec:
    """One topic's messages within a file, as sent to RegisterFile."""

    topic_name: str
    schema_name: str
    message_encoding: str
    message_count: int
    extents: tuple[Extent, ...]


@dataclass(frozen=True)
class RecoverySpec:
    """What RegisterFile is told about a file salvaged from a damaged recording; ``reason`` is
    None when the request named none of ``RECOVERY_REASONS``."""

    reason: str | None
    detail: str
    readable_bytes: int


@dataclass(frozen=True)
class FileRecovery:
    """A recovered file's damage and how much of it was read; ``message_count`` is the sum of
    its partitions' message counts."""

    reason: str
    detail: str
    message_count: int
    readable_bytes: int


@dataclass(frozen=True)
class FileSpec:
    """A file to register; ``device_id`` None means "the dataset's device"; ``content_sha256``
    is lowercase hex, or None when not given."""

    dataset_id: str
    relative_path: str
    size_bytes: int
    device_id: str | None
    unix_epoch_offset_ns: int
    partitions: tuple[PartitionSpec, ...]
    content_sha256: str | None = None
    recovery: RecoverySpec | None = None

    def recovered(self) -> FileRecovery | None:
        """The recovery stored with the file: the spec's, with its message count."""
        if self.recovery is None or self.recovery.reason is None:
            return None
        return FileRecovery(
            reason=self.recovery.reason,
            detail=self.recovery.detail,
            message_count=sum(p.message_count for p in self.partitions),
            readable_bytes=self.recovery.readable_bytes,
        )


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
    topic: TopicRecord
    file_id: str
    message_count: int
    extents: tuple[Extent, ...]


def extents_range(partitions: Iterable[PartitionSpec]) -> tuple[int, int] | None:
    """(minimum, maximum) over every extent of the partitions, or None when there is none."""
    lows = [e.min_ns for p in partitions for e in p.extents]
    if not lows:
        return None
    return min(lows), max(e.max_ns for p in partitions for e in p.extents)


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


def check_file_spec(v: Violations, spec: FileSpec) -> None:
    """Every rule of RegisterFile that needs no database, one violation per offending field."""
    check_id(v, "dataset_id", spec.dataset_id, "dataset")
    if not spec.relative_path:
        v.add("relative_path", "is required")
    else:
        check_text(v, "relative_path", spec.relative_path, MAX_RELATIVE_PATH_CHARS)
    v.check(spec.size_bytes >= 0, "size_bytes", "must not be negative")
    if spec.device_id is not None:
        check_device_id(v, "device_id", spec.device_id)
    if spec.content_sha256 is not None:
        check_content_sha256(v, "content_sha256", spec.content_sha256)
    if spec.recovery is not None:
        _check_recovery(v, spec.recovery, spec.size_bytes)
    if len(spec.partitions) > MAX_PARTITIONS_PER_FILE:
        v.add("partitions", f"must hold at most {MAX_PARTITIONS_PER_FILE} partitions")
        return
    partitions_ok = _check_partitions(v, spec.partitions)
    if spec.recovery is not None:
        # The recovery stores the partitions' total, which must fit its int64 column.
        v.check(
            sum(max(p.message_count, 0) for p in spec.partitions) <= INT64_MAX,
            "partitions",
            "the message counts of a recovered file must add up to at most 2^63-1",
        )
    if partitions_ok:
        check_offset(
            v, "unix_epoch_offset_ns", extents_range(spec.partitions), spec.unix_epoch_offset_ns
        )


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


def _check_partitions(v: Violations, partitions: Sequence[PartitionSpec]) -> bool:
    """Checks each partition; True when the extents are sound enough to check the offset."""
    extents_ok = True
    seen: dict[tuple[str, str], int] = {}
    for i, p in enumerate(partitions):
        field = f"partitions[{i}]"
        if not p.topic_name:
            v.add(f"{field}.topic_name", "is required")
        else:
            check_text(
                v, f"{field}.topic_name", p.topic_name, MAX_TOPIC_NAME_CHARS, allow_newlines=False
            )
        check_text(
            v, f"{field}.schema_name", p.schema_name, MAX_SCHEMA_NAME_CHARS, allow_newlines=False
        )
        check_text(
            v,
            f"{field}.message_encoding",
            p.message_encoding,
            MAX_MESSAGE_ENCODING_CHARS,
            allow_newlines=False,
        )
        v.check(p.message_count >= 0, f"{field}.message_count", "must not be negative")
        identity = (p.topic_name, p.schema_name)
        if identity in seen:
            v.add(
                f"{field}.topic_name",
                f"repeats partitions[{seen[identity]}] (same topic name and schema name);"
                " list each topic once",
            )
        seen.setdefault(identity, i)
        if len(p.extents) > MAX_EXTENTS_PER_PARTITION:
            v.add(f"{field}.extents", f"must hold at most {MAX_EXTENTS_PER_PARTITION} extents")
            extents_ok = False
            continue
        for j, extent in enumerate(p.extents):
            if extent.min_ns > extent.max_ns:
                v.add(
                    f"{field}.extents[{j}].min_timestamp_ns",
                    "must not be greater than max_timestamp_ns",
                )
                extents_ok = False
    return extents_ok
