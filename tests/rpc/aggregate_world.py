"""A small fleet built through the API, and the reference computation of the aggregations over
it in plain Python (the tests compare the server's rows with it)."""

from __future__ import annotations

import datetime as dt
import itertools
import math
import secrets
import statistics
import zoneinfo
from collections.abc import Sequence
from dataclasses import dataclass, field

from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import make_custom_field, make_dataset, make_device, register_file
from tests.support import Stubs

SITES = ("lab", "field", "sea")
TAGS = ("outdoor", "night", "test")
METRICS = ("alt", "speed")
AGGREGATES = ("count", "sum", "mean", "min", "max", "stddev", "p50", "p90", "p99")
PERCENTILES = {"p50": 0.5, "p90": 0.9, "p99": 0.99}
EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)

Key = str | int | None


@dataclass
class SessionSpec:
    """One session of the fleet: indices into the fleet's devices and datasets."""

    tags: list[str] = field(default_factory=list)
    devices: list[int] = field(default_factory=list)
    site: str | None = None
    # (dataset index, start ns, duration ns) of each file.
    files: list[tuple[int, int, int]] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)
    # Devices detached after the metrics were published (indices into ``devices``' values).
    detached: list[int] = field(default_factory=list)
    deleted: bool = False


@dataclass
class Fleet:
    """What was built: IDs by index, and the specs."""

    device_ids: list[str]
    dataset_ids: list[str]
    site_field: str
    sessions: list[SessionSpec]


def build_fleet(
    stubs: Stubs, specs: Sequence[SessionSpec], devices: int = 3, datasets: int = 2
) -> Fleet:
    """Creates the fleet; device IDs sort in index order (``dv-0-…``, ``dv-1-…``)."""
    suffix = secrets.token_hex(4)
    device_ids = [make_device(stubs, f"dv-{i}-{suffix}").device_id for i in range(devices)]
    dataset_ids = [make_dataset(stubs).dataset_id for _ in range(datasets)]
    site = make_custom_field(stubs, type=fields_pb.CUSTOM_FIELD_TYPE_ENUM, enum_values=SITES)
    for spec in specs:
        custom = (
            {site.name: common_pb2.CustomFieldValue(enum_value=spec.site)}
            if spec.site is not None
            else {}
        )
        session = stubs.sessions.CreateSession(
            pb.CreateSessionRequest(
                tags=spec.tags,
                device_ids=[device_ids[i] for i in spec.devices],
                custom_fields=custom,
            )
        ).session
        if spec.files:
            file_ids = [
                register_file(stubs, dataset_ids[d], [("t", [(start, start + length)])]).file_id
                for d, start, length in spec.files
            ]
            stubs.sessions.AddSessionFiles(
                pb.AddSessionFilesRequest(
                    session_id=session.session_id,
                    files=[pb.SessionFileSpec(file_id=f) for f in file_ids],
                )
            )
        if spec.metrics:
            entries = [pb.MetricEntry(name=n, value=v) for n, v in spec.metrics.items()]
            request = pb.PublishSessionMetricsRequest(
                session_id=session.session_id, metrics=entries
            )
            if spec.devices:
                request.device_id = device_ids[spec.devices[0]]
            else:
                request.no_device = True
            stubs.sessions.PublishSessionMetrics(request)
        for i in spec.detached:
            stubs.sessions.DetachSessionDevice(
                pb.DetachSessionDeviceRequest(
                    session_id=session.session_id, device_id=device_ids[i]
                )
            )
        if spec.deleted:
            stubs.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id))
    return Fleet(device_ids, dataset_ids, site.name, list(specs))


# --- the reference --------------------------------------------------------------------------------


@dataclass(frozen=True)
class KeySpec:
    """A group key as the tests draw it: a kind name, and the bucket for ``start_time``."""

    kind: str
    bucket: str = ""

    def message(self, fleet: Fleet) -> pb.GroupBy:
        if self.kind == "start_time":
            return pb.GroupBy(
                kind=pb.GROUP_KIND_START_TIME,
                time_bucket=pb.TimeBucket.Value(f"TIME_BUCKET_{self.bucket.upper()}"),
            )
        if self.kind == "custom_field":
            return pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field=fleet.site_field)
        return pb.GroupBy(kind=pb.GroupKind.Value(f"GROUP_KIND_{self.kind.upper()}"))


def bucket_start_ns(start_ns: int, bucket: str, zone: str) -> int:
    """The reference bucket: the start floored to the microsecond, then the wall clock of
    ``zone``; an hour is the instant minus the wall time since the local hour began."""
    micros = start_ns // 1000
    instant = EPOCH + dt.timedelta(microseconds=micros)
    tz = zoneinfo.ZoneInfo(zone)
    local = instant.astimezone(tz)
    if bucket == "hour":
        naive = local.replace(tzinfo=None)
        since = naive - naive.replace(minute=0, second=0, microsecond=0)
        begin = instant - since
    else:
        day = local.date()
        if bucket == "week":
            day -= dt.timedelta(days=day.weekday())
        elif bucket == "month":
            day = day.replace(day=1)
        elif bucket == "year":
            day = day.replace(month=1, day=1)
        begin = dt.datetime(day.year, day.month, day.day, tzinfo=tz)
    return ((begin - EPOCH) // dt.timedelta(microseconds=1)) * 1000


def key_values(fleet: Fleet, spec: SessionSpec, key: KeySpec, zone: str) -> list[Key]:
    """The session's values of a key in its current state; [None] for none."""
    values: list[Key]
    if key.kind == "device":
        values = [fleet.device_ids[i] for i in spec.devices if i not in spec.detached]
    elif key.kind == "tag":
        values = [*dict.fromkeys(spec.tags)]
    elif key.kind == "custom_field":
        values = [spec.site] if spec.site is not None else []
    elif key.kind == "dataset":
        values = [*sorted({fleet.dataset_ids[d] for d, _, _ in spec.files})]
    else:
        values = (
            [bucket_start_ns(min(start for _, start, _ in spec.files), key.bucket, zone)]
            if spec.files
            else []
        )
    return values or [None]


def groups_of(
    fleet: Fleet, keys: Sequence[KeySpec], zone: str
) -> list[tuple[tuple[Key, ...], SessionSpec]]:
    """(key values, session) for every group each live session is in."""
    out = []
    for spec in fleet.sessions:
        if spec.deleted:
            continue
        for combo in itertools.product(*(key_values(fleet, spec, k, zone) for k in keys)):
            out.append((combo, spec))
    return out


def order(keys: tuple[Key, ...]) -> tuple[tuple[bool, Key], ...]:
    """Rows' order: each key ascending (code points, time), None last."""
    return tuple((k is None, k if k is not None else "") for k in keys)


def aggregate(values: Sequence[float]) -> dict[str, float | int | None]:
    if not values:
        return {name: (0 if name == "count" else None) for name in AGGREGATES}
    ordered = sorted(values)
    out: dict[str, float | int | None] = {
        "count": len(values),
        "sum": math.fsum(values),
        "mean": math.fsum(values) / len(values),
        "min": ordered[0],
        "max": ordered[-1],
        "stddev": statistics.stdev(values) if len(values) > 1 else None,
    }
    for name, fraction in PERCENTILES.items():
        position = fraction * (len(ordered) - 1)
        low = math.floor(position)
        high = min(low + 1, len(ordered) - 1)
        out[name] = ordered[low] + (ordered[high] - ordered[low]) * (position - low)
    return out


def reference_metric_rows(
    fleet: Fleet, metrics: Sequence[str], keys: Sequence[KeySpec], zone: str
) -> list[tuple[tuple[Key, ...], dict[str, dict[str, float | int | None]]]]:
    collected: dict[tuple[Key, ...], dict[str, list[float]]] = {}
    for combo, spec in groups_of(fleet, keys, zone):
        present = {m: spec.metrics[m] for m in metrics if m in spec.metrics}
        if not present:
            continue
        group = collected.setdefault(combo, {m: [] for m in metrics})
        for m, value in present.items():
            group[m].append(value)
    return [
        (combo, {m: aggregate(values) for m, values in collected[combo].items()})
        for combo in sorted(collected, key=order)
    ]


def reference_session_rows(
    fleet: Fleet, keys: Sequence[KeySpec], zone: str
) -> list[tuple[tuple[Key, ...], int, int, int]]:
    counts: dict[tuple[Key, ...], list[int]] = {}
    for combo, spec in groups_of(fleet, keys, zone):
        row = counts.setdefault(combo, [0, 0, 0])
        row[0] += 1
        if spec.files:
            row[1] += 1
            row[2] += max(s + n for _, s, n in spec.files) - min(s for _, s, _ in spec.files)
    return [(combo, *counts[combo]) for combo in sorted(counts, key=order)]  # type: ignore[misc]


# --- reading the server's rows --------------------------------------------------------------------


def key_of(value: pb.GroupKeyValue) -> Key:
    which = value.WhichOneof("value")
    return None if which is None else getattr(value, which)


def metric_rows(
    stubs: Stubs, request: pb.AggregateSessionMetricsRequest
) -> list[tuple[tuple[Key, ...], dict[str, dict[str, float | int | None]]]]:
    rows = []
    for batch in stubs.sessions.AggregateSessionMetrics(request):
        for row in batch.rows:
            rows.append(
                (
                    tuple(key_of(k) for k in row.keys),
                    {
                        item.metric: {
                            name: getattr(item, name) if item.HasField(name) else None  # type: ignore[arg-type]
                            for name in AGGREGATES
                        }
                        for item in row.metrics
                    },
                )
            )
    return rows


def session_rows(
    stubs: Stubs, request: pb.AggregateSessionsRequest
) -> list[tuple[tuple[Key, ...], int, int, float]]:
    return [
        (
            tuple(key_of(k) for k in row.keys),
            row.session_count,
            row.bounded_session_count,
            row.total_duration_seconds,
        )
        for batch in stubs.sessions.AggregateSessions(request)
        for row in batch.rows
    ]


def close(a: float | int | None, b: float | int | None) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-6)
