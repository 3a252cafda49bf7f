"""``make bench`` rows of issue 11: every request has a bounded cost.

The real server (``tests.bench.processes``) measures itself: its peak RSS growth during a call and
the longest time its event loop was held (CPU time of the loop's thread between two runs of a 1 ms
timer; see ``ServerProcess.peaks``).

* RegisterFile at its documented maximum (10,000 partitions, 100,000 extents, ~0.77 MiB) and
  AddSessionFiles at its maximum (10,000 files): the server's RSS growth, the longest hold of the
  event loop, and the p99 latency of GetSession calls made back to back, one at a time, while the
  call runs, against the p99 of the same GetSession calls for as long without it.
* The limits table: one request at each documented limit (and a few hostile shapes the limits
  must contain), its RSS growth and longest loop hold. The README's "Limits" table comes from it.
"""

from __future__ import annotations

import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain import catalog as catalog_limits
from flightlog_server.domain import rules
from flightlog_server.rpc.request_items import request_items
from tests.bench.common import aligned
from tests.bench.processes import Peaks, ServerProcess
from tests.bench.rows import Row
from tests.rpc.factories import (
    densest_register_file_request,
    make_custom_field,
    make_dataset,
    make_device,
    make_session,
    maximal_register_file_request,
    unique,
    warm_up_registrations,
)
from tests.support import Identity, Stubs

MEBIBYTE = 1 << 20
LOOP_HOLD_TARGET_MS = 50


@dataclass
class Measured:
    """One call measured on the real server."""

    outcome: str  # "OK" or the status code's name
    seconds: float
    peaks: Peaks


def measure(server: ServerProcess, call: Callable[[], Any]) -> Measured:
    """Runs ``call`` (reading a stream to its end) and what the server measured meanwhile."""
    server.reset_peaks()
    started = time.perf_counter()
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
        outcome = "OK"
    except grpc.RpcError as error:
        outcome = error.code().name
    seconds = time.perf_counter() - started
    return Measured(outcome, seconds, server.peaks())


class GetSessionProbe:
    """Calls GetSession back to back, one at a time, in a thread, recording each latency."""

    def __init__(self, target: str, identity: Identity, session_id: str) -> None:
        self.stubs = Stubs(target, identity.api_key, identity.org_id)
        self.request = pb.GetSessionRequest(session_id=session_id)
        self.latencies: list[float] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.perf_counter()
            self.stubs.sessions.GetSession(self.request, timeout=60)
            self.latencies.append(time.perf_counter() - started)

    @contextmanager
    def running(self) -> Iterator[GetSessionProbe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join()
            self.stubs.close()

    def p99_ms(self) -> float:
        return statistics.quantiles(self.latencies, n=100)[98] * 1000


def _rows_for(
    name: str,
    request_bytes: int,
    server: ServerProcess,
    identity: Identity,
    session_id: str,
    call: Callable[[], Any],
) -> list[Row]:
    """The three rows of one call: RSS growth, loop hold, GetSession p99 with and without it."""
    with GetSessionProbe(server.target, identity, session_id).running() as during:
        measured = measure(server, call)
    assert measured.outcome == "OK", f"{name}: {measured.outcome}"
    with GetSessionProbe(server.target, identity, session_id).running() as alone:
        time.sleep(measured.seconds)  # the baseline: as long as the call took, without it
    growth_mb = measured.peaks.rss_growth_bytes / 1e6
    budget_mb = 10 * request_bytes / 1e6
    held_ms = measured.peaks.loop_held_s * 1000
    p99, baseline = during.p99_ms(), alone.p99_ms()
    return [
        Row(
            f"{name}: server RSS growth",
            growth_mb,
            "MB",
            request_bytes / 1e6,
            "MB (the request on the wire)",
            growth_mb * 1e6 / request_bytes,
            f"<= 10x ({budget_mb:.1f} MB)",
            growth_mb <= budget_mb,
            f"call took {measured.seconds:.1f} s",
        ),
        Row(
            f"{name}: longest hold of the event loop",
            held_ms,
            "ms",
            target=f"<= {LOOP_HOLD_TARGET_MS} ms",
            met=held_ms <= LOOP_HOLD_TARGET_MS,
            note="CPU time of the loop's thread between two runs of a 1 ms timer; wall time"
            f" {measured.peaks.loop_stall_s * 1000:.0f} ms on this (shared) machine; longest"
            f" garbage collection {measured.peaks.gc_pause_s * 1000:.0f} ms",
        ),
        Row(
            f"{name}: p99 of GetSession calls made meanwhile",
            p99,
            "ms",
            baseline,
            "ms (the same calls, for as long, without it)",
            p99 / baseline,
            "-",
            None,
            f"{len(during.latencies):,} calls during, {len(alone.latencies):,} without",
        ),
    ]


def bench_register_and_add(
    server: ServerProcess, writer: Identity, loose_files: list[str], probe: tuple[Identity, str]
) -> list[Row]:
    """RegisterFile and AddSessionFiles at their maxima, with ``probe`` = (identity, session ID)
    for the GetSession calls made meanwhile."""
    stubs = Stubs(server.target, writer.api_key, writer.org_id)
    try:
        dataset = make_dataset(stubs)
        warm_up_registrations(stubs, dataset.dataset_id)
        register = maximal_register_file_request(dataset.dataset_id)
        shape = (
            f"{catalog_limits.MAX_PARTITIONS_PER_FILE:,} partitions,"
            f" {catalog_limits.MAX_EXTENTS_PER_FILE:,} extents"
        )
        rows = _rows_for(
            f"RegisterFile at its limits ({shape}, {register.ByteSize() / MEBIBYTE:.2f} MiB)",
            register.ByteSize(),
            server,
            *probe,
            lambda: stubs.catalog.RegisterFile(register, timeout=300),
        )
        files = loose_files[: rules.MAX_FILES_PER_CALL]
        add = pb.AddSessionFilesRequest(
            session_id=make_session(stubs).session_id,
            files=[pb.SessionFileSpec(file_id=f) for f in files],
        )
        rows += _rows_for(
            f"AddSessionFiles at its limit ({len(files):,} files,"
            f" {add.ByteSize() / MEBIBYTE:.2f} MiB)",
            add.ByteSize(),
            server,
            *probe,
            lambda: stubs.sessions.AddSessionFiles(add, timeout=300),
        )
        return rows
    finally:
        stubs.close()


# --- the limits table --------------------------------------------------------------------------


@dataclass
class LimitCase:
    """One request at a limit (or a hostile shape a limit must contain)."""

    limit: str
    value: str
    request: str
    call: Callable[[], Any]


def _raw(stubs: Stubs, method: str, body: bytes) -> Callable[[], Any]:
    """A call sending ``body`` as the request's bytes, as a hostile client could."""
    send = stubs.channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    return lambda: send(body, timeout=120)


def _big_metadata() -> struct_pb2.Struct:
    """Metadata just under 64 KiB as JSON, as 1,000 keys of short strings."""
    metadata = struct_pb2.Struct()
    metadata.update({f"key_{i:04}": "v" * 50 for i in range(1_000)})
    return metadata


def _densest_accepted() -> tuple[int, bytes]:
    """A BatchCreateSessions of as many empty requests as the memory bound lets be built (the
    most memory per byte such a request can take), found by bisection."""
    checked = request_items(pb.BatchCreateSessionsRequest.DESCRIPTOR)
    assert checked is not None

    def request(count: int) -> bytes:
        return b"\x0a\x00" * count

    def accepted(count: int) -> bool:
        raw = request(count)
        budget = rules.MAX_REQUEST_BUILD_RATIO * max(len(raw), rules.REQUEST_BUILD_FLOOR_BYTES)
        return checked.read_whole(raw).cost <= budget

    low, high = 0, rules.MAX_REQUEST_ITEMS
    while low < high:
        middle = (low + high + 1) // 2
        low, high = (middle, high) if accepted(middle) else (low, middle - 1)
    return low, request(low)


def limit_cases(stubs: Stubs, loose_files: list[str]) -> list[LimitCase]:
    dataset = make_dataset(stubs)
    session_id = make_session(stubs).session_id
    field = make_custom_field(stubs, type=fields_pb.CUSTOM_FIELD_TYPE_NUMBER)
    registered = stubs.catalog.RegisterFile(maximal_register_file_request(dataset.dataset_id))
    file_id = registered.file.file_id
    head = catalog_pb.RegisterFileRequest(dataset_id=dataset.dataset_id, relative_path="x")
    empty_partitions = head.SerializeToString() + b"\x32\x00" * (MEBIBYTE // 2 - 64)
    empty_specs = pb.AddSessionFilesRequest(session_id=session_id).SerializeToString()
    empty_specs += b"\x12\x00" * (MEBIBYTE // 2 - 64)
    # Exactly as many as the item limit allows: refused by what they would take to build.
    at_item_limit = b"\x0a\x00" * rules.MAX_REQUEST_ITEMS
    under_count, under_build_bound = _densest_accepted()
    empty_ids = b"\x0a\x00" * (MEBIBYTE // 2 - 64)
    many_devices = pb.CreateSessionRequest(device_ids=[f"d{i}" for i in range(120_000)])
    tags = [f"{i:03}" + "t" * (rules.MAX_TAG_CHARS - 3) for i in range(rules.MAX_TAGS)]

    def in_conditions(*counts: int) -> pb.SessionFilter:
        return pb.SessionFilter(
            custom_fields=[
                pb.CustomFieldCondition(
                    field=field.name,
                    operator=pb.COMPARISON_OPERATOR_IN,
                    values=[common_pb2.CustomFieldValue(number_value=i) for i in range(n)],
                )
                for n in counts
            ]
        )

    conditions = rules.MAX_CUSTOM_FIELD_CONDITIONS
    at_the_limit = in_conditions(
        *[rules.MAX_IN_VALUES_PER_FILTER // conditions] * (conditions - 1),
        rules.MAX_IN_VALUES_PER_FILTER
        - (conditions - 1) * (rules.MAX_IN_VALUES_PER_FILTER // conditions),
    )
    devices = [make_device(stubs).device_id for _ in range(rules.MAX_DEVICE_IDS_PER_CALL)]
    update = pb.UpdateSessionRequest(
        session_id=session_id,
        metadata_changeset=pb.MetadataChangeset(put_tags=tags, put_fields=_big_metadata()),
    )
    create = pb.CreateSessionRequest(
        name="n" * rules.MAX_NAME_CHARS,
        description="d" * rules.MAX_DESCRIPTION_CHARS,
        tags=tags,
        metadata=_big_metadata(),
    )
    files = loose_files[: rules.MAX_FILES_PER_CALL]
    return [
        LimitCase(
            "request message",
            "1 MiB",
            "RegisterFile of 1 MiB of empty partitions (the parser's densest input)",
            _raw(stubs, "/flightlog.v1.CatalogService/RegisterFile", empty_partitions),
        ),
        LimitCase(
            "request message",
            "1 MiB",
            "AddSessionFiles of 1 MiB of empty file specs",
            _raw(stubs, "/flightlog.v1.SessionService/AddSessionFiles", empty_specs),
        ),
        LimitCase(
            "items in a request; memory to build",
            f"{rules.MAX_REQUEST_ITEMS:,}; {rules.MAX_REQUEST_BUILD_RATIO}x",
            f"BatchCreateSessions of {rules.MAX_REQUEST_ITEMS:,} empty requests (0.25 MiB)",
            _raw(stubs, "/flightlog.v1.SessionService/BatchCreateSessions", at_item_limit),
        ),
        LimitCase(
            "memory to build",
            f"{rules.MAX_REQUEST_BUILD_RATIO}x the request, at least"
            f" {rules.REQUEST_BUILD_FLOOR_BYTES // 1024} KiB",
            f"BatchCreateSessions of {under_count:,} empty requests, just under"
            " it (built, then refused by the domain)",
            _raw(stubs, "/flightlog.v1.SessionService/BatchCreateSessions", under_build_bound),
        ),
        LimitCase(
            "memory to build",
            f"{rules.MAX_REQUEST_BUILD_RATIO}x the request",
            "BatchGetSessions of 1 MiB of empty session IDs (built whole before)",
            _raw(stubs, "/flightlog.v1.SessionService/BatchGetSessions", empty_ids),
        ),
        LimitCase(
            "request message",
            "1 MiB",
            f"CreateSession of {many_devices.ByteSize() / MEBIBYTE:.2f} MiB of device IDs"
            f" ({len(many_devices.device_ids):,})",
            lambda: stubs.sessions.CreateSession(many_devices, timeout=300),
        ),
        LimitCase(
            "request message",
            "4 MiB (gRPC)",
            "CreateSession of 4 MiB (refused unread)",
            lambda: stubs.sessions.CreateSession(
                pb.CreateSessionRequest(description="x" * 4 * MEBIBYTE), timeout=120
            ),
        ),
        LimitCase(
            "partitions, extents per file",
            "10,000; 100,000",
            "RegisterFile at both (0.77 MiB)",
            lambda: stubs.catalog.RegisterFile(
                maximal_register_file_request(dataset.dataset_id), timeout=300
            ),
        ),
        LimitCase(
            "extents per ListFileTopics batch",
            "10,000",
            "ListFileTopics of that file, page_size 1,000",
            lambda: stubs.catalog.ListFileTopics(
                catalog_pb.ListFileTopicsRequest(file_id=file_id, page_size=1000), timeout=300
            ),
        ),
        LimitCase(
            "partitions, extents per file",
            "10,000; 100,000",
            "RegisterFile at both, densest (0.24 MiB: 2-byte extents; 6.5 MB built whole)",
            lambda: stubs.catalog.RegisterFile(
                densest_register_file_request(dataset.dataset_id), timeout=300
            ),
        ),
        LimitCase(
            "files per AddSessionFiles",
            "10,000",
            f"AddSessionFiles of {len(files):,} files",
            lambda: stubs.sessions.AddSessionFiles(
                pb.AddSessionFilesRequest(
                    session_id=make_session(stubs).session_id,
                    files=[pb.SessionFileSpec(file_id=f) for f in files],
                ),
                timeout=300,
            ),
        ),
        LimitCase(
            "files per RemoveSessionFiles",
            "10,000",
            f"RemoveSessionFiles of {len(files):,} files",
            lambda: stubs.sessions.RemoveSessionFiles(
                pb.RemoveSessionFilesRequest(session_id=session_id, file_ids=files), timeout=300
            ),
        ),
        LimitCase(
            "metrics per PublishSessionMetrics",
            "1,000",
            "PublishSessionMetrics of 1,000 values",
            lambda: stubs.sessions.PublishSessionMetrics(
                pb.PublishSessionMetricsRequest(
                    session_id=session_id,
                    no_device=True,
                    metrics=[
                        pb.MetricEntry(name=f"m{i}", value=i)
                        for i in range(rules.MAX_METRICS_PER_CALL)
                    ],
                ),
                timeout=300,
            ),
        ),
        LimitCase(
            "name, description, tags, metadata",
            "120; 4,096; 256 x 128; 64 KiB",
            "CreateSession at all four",
            lambda: stubs.sessions.CreateSession(create, timeout=300),
        ),
        LimitCase(
            "tags, metadata (changeset)",
            "256 x 128; 64 KiB",
            "UpdateSession putting both",
            lambda: stubs.sessions.UpdateSession(update, timeout=300),
        ),
        LimitCase(
            "custom-field conditions; IN values in all",
            "16; 1,000",
            "ListSessions filtered by 16 IN conditions of 1,000 values in all",
            lambda: stubs.sessions.ListSessions(
                pb.ListSessionsRequest(filter=at_the_limit), timeout=300
            ),
        ),
        LimitCase(
            "custom-field conditions; IN values in all",
            "16; 1,000",
            "ListSessions filtered by 16 x 1,000 IN values (allowed until issue 11)",
            lambda: stubs.sessions.ListSessions(
                pb.ListSessionsRequest(filter=in_conditions(*[1000] * conditions)), timeout=300
            ),
        ),
        LimitCase(
            "device IDs per CreateSession",
            "256",
            "CreateSession attaching 256 devices",
            lambda: stubs.sessions.CreateSession(
                pb.CreateSessionRequest(device_ids=devices), timeout=300
            ),
        ),
        LimitCase(
            "page_size",
            "1,000",
            "ListFiles, one batch of 1,000 files",
            lambda: next(
                iter(stubs.catalog.ListFiles(catalog_pb.ListFilesRequest(page_size=1000)))
            ),
        ),
        LimitCase(
            "enum values",
            "256",
            "CreateCustomField with 256 values",
            lambda: stubs.custom_fields.CreateCustomField(
                fields_pb.CreateCustomFieldRequest(
                    entity_type=fields_pb.ENTITY_TYPE_SESSION,
                    name=unique("e"),
                    type=fields_pb.CUSTOM_FIELD_TYPE_ENUM,
                    enum_values=[f"v{i}" for i in range(rules.MAX_ENUM_VALUES)],
                ),
                timeout=300,
            ),
        ),
    ]


def limits_table(server: ServerProcess, writer: Identity, loose_files: list[str]) -> list[Any]:
    """One request per limit: (limit, value, request, outcome, RSS growth MB, loop held ms)."""
    stubs = Stubs(server.target, writer.api_key, writer.org_id)
    try:
        results = []
        for case in limit_cases(stubs, loose_files):
            measured = measure(server, case.call)
            results.append(
                {
                    "limit": case.limit,
                    "value": case.value,
                    "request": case.request,
                    "outcome": measured.outcome,
                    "rss_growth_mb": round(measured.peaks.rss_growth_bytes / 1e6, 1),
                    "loop_held_ms": round(measured.peaks.loop_held_s * 1000, 1),
                    "loop_stall_ms": round(measured.peaks.loop_stall_s * 1000, 1),
                    "gc_pause_ms": round(measured.peaks.gc_pause_s * 1000, 1),
                    "seconds": round(measured.seconds, 2),
                }
            )
        return results
    finally:
        stubs.close()


def format_limits(results: list[dict[str, Any]]) -> str:
    header = (
        "limit",
        "value",
        "one request",
        "outcome",
        "RSS +MB",
        "loop held ms",
        "GC ms",
        "wall ms",
    )
    lines = [
        (
            r["limit"],
            r["value"],
            r["request"],
            r["outcome"],
            f"{r['rss_growth_mb']:.1f}",
            f"{r['loop_held_ms']:.0f}",
            f"{r['gc_pause_ms']:.0f}",
            f"{r['loop_stall_ms']:.0f}",
        )
        for r in results
    ]
    return "\n".join(aligned(header, lines))
