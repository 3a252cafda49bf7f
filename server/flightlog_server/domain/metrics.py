"""Session metrics: which published entries are recorded, and with which device.

A batch is checked as a whole (its size, the device) and then entry by entry: an entry that fails
on its own (a bad name, a NaN or infinite value) is reported back and the others are recorded.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Sequence
from dataclasses import dataclass

from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.rules import MAX_METRICS_PER_CALL, METRIC_NAME, Violations
from flightlog_server.domain.types import MetricEntry


@dataclass(frozen=True)
class MetricFailure:
    """An entry that could not be recorded: its position in the request and why."""

    index: int
    entry: MetricEntry
    reason: str


@dataclass(frozen=True)
class MetricRecord:
    """A metric value recorded for a session, with the session's current bounds."""

    metric_id: str
    name: str
    session_id: str
    value: float
    device_id: str | None
    min_timestamp_ns: int | None
    max_timestamp_ns: int | None
    published: dt.datetime
    published_by: str


def check_batch(v: Violations, count: int, field: str = "metrics") -> None:
    if count == 0:
        v.add(field, "must hold at least one entry")
    elif count > MAX_METRICS_PER_CALL:
        v.add(field, f"must hold at most {MAX_METRICS_PER_CALL} entries")


def entry_failure(entry: MetricEntry) -> str | None:
    """Why an entry cannot be recorded, or None when it can."""
    # fullmatch: with ``match``, the pattern's ``$`` would accept a trailing newline.
    if not METRIC_NAME.fullmatch(entry.name):
        return "name must be 1 to 128 letters, digits, '_', '.', '-' or '/', starting with a letter"
    if not math.isfinite(entry.value):
        return "value must be a finite number (not NaN or infinite)"
    return None


def split_entries(
    entries: Sequence[MetricEntry],
) -> tuple[list[MetricEntry], list[MetricFailure]]:
    """(entries to record, failures). A name repeated in one batch keeps its last good value;
    the entries to record are in the order of each name's first good entry."""
    accepted: dict[str, MetricEntry] = {}
    failures: list[MetricFailure] = []
    for index, entry in enumerate(entries):
        reason = entry_failure(entry)
        if reason is None:
            accepted[entry.name] = entry  # a later value replaces, the position stays
        else:
            failures.append(MetricFailure(index, entry, reason))
    return list(accepted.values()), failures


def inferred_device(attached: Sequence[str], field: str = "device_id") -> str:
    """The device to infer when the caller names none: the session's only attached device
    (INVALID_ARGUMENT on the request's ``field`` otherwise)."""
    if len(attached) != 1:
        shown = ", ".join(attached[:5]) + (", ..." if len(attached) > 5 else "")
        which = f" ({shown})" if attached else ""
        raise InvalidArgument.one(
            field,
            f"cannot be inferred: {len(attached)} devices are attached to the session{which};"
            " name a device with device_id, or publish with no_device",
        )
    return attached[0]
