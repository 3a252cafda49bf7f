"""``make bench``: Flightlog's figures and, next to each, a baseline measured in the same run.

The bench builds its own data in its own database (``BENCH_DATABASE_URL``'s server, else an
embedded PostgreSQL in a temporary folder; the database is dropped at the end), starts the real
server and a bare grpc.aio baseline server as subprocesses (``tests.bench.processes``) and drives
them through the generated stubs, like any client. It prints a table and writes it as JSON
(``.data/bench.json`` unless ``--json PATH``).

Figures, by group (``--only GROUP,...`` runs some of them):

* ``list``: ListSessions of the whole big org (1,000,000 sessions; ``--quick``: 50,000) through
  the generated stub, 1,000 a batch, against three psycopg baselines reading the same rows in
  the same order with a server-side binary cursor, 1,000 rows a fetch (best of two runs each):
  the stored records as the server reads them (the physical limit of the server's own read),
  the same records each parsed into ``Session`` (the limit of a Python client), and the columns
  a user would read by hand, metadata as a dict (what a user would do instead). Then the real
  server's RSS growth while a reader consumes that stream at a tenth of that speed, and a
  filtered listing's time to its first batch.
* ``query`` (``tests.bench.query``): the filter language, an AIP-160 filter ordered by a
  custom field (first batch; streamed to the end against hand-written SQL) and a metric filter.
* ``writes``: GetSession, CreateSession and UpdateSession with 8 calls in flight against a bare
  grpc.aio server running one statement each; CreateSession in one org against eight orgs;
  BatchCreateSessions against psycopg ``executemany`` of the same rows.
* ``files``: AddSessionFiles of 10,000 files against one executemany INSERT (and COPY) of the
  same rows; ListSessionTopics over 1,000 files x 50 topics x 4 extents per topic partition, time
  to the first batch and to the end, against the raw SQL of the same result.
* ``limits`` (``tests.bench.bounded``): RegisterFile and AddSessionFiles at their documented
  maxima (the server's RSS growth, its longest event-loop hold, and the p99 of GetSession calls
  made meanwhile against the same calls without them), then a second table: one request at
  each documented limit, with the RSS growth and loop hold it cost.
* ``workers``: CreateSession on ``serve --workers 2`` against ``--workers 1``.
* ``feed`` (``tests.bench.feed``): CreateSession p50 with 8 writers and 200 watchers of the org
  (``--quick``: 50) against no watchers, the delivery lag p99 of those changes, and how soon a
  write reaches an open watch stream after a database restart.
* ``aggregate`` (``tests.bench.aggregate``): AggregateSessionMetrics of one metric by month x
  device over every session of the big org, against the hand-written SQL of the same aggregate
  read with psycopg.

``--profile`` also profiles the real server (pyinstrument) during the ListSessions run and writes
the report next to the JSON; that run's figures are slower for it.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import signal
import statistics
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from importlib.metadata import version
from pathlib import Path
from typing import Any

import grpc

from flightlog.v1 import common_pb2, session_service_pb2_grpc
from flightlog.v1 import session_service_pb2 as pb
from tests.bench import aggregate, bounded, data, feed, query, writes
from tests.bench.common import CHANNEL_OPTIONS, aligned, first_batches, log, metadata
from tests.bench.processes import ServerProcess
from tests.bench.rows import Row
from tests.support import Identity, create_identity

# --- ListSessions ----------------------------------------------------------------------------


def read_listing(
    target: str,
    identity: Identity,
    request: pb.ListSessionsRequest,
    on_batch: Callable[[int], bool] | None = None,
) -> tuple[int, float]:
    """Reads a listing through the generated stub: (sessions, seconds). ``on_batch(count)``
    returning False stops the read."""
    with grpc.insecure_channel(target, options=CHANNEL_OPTIONS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        started = time.perf_counter()
        call = stub.ListSessions(request, metadata=metadata(identity))
        count = 0
        for response in call:
            count += len(response.sessions)
            if on_batch is not None and not on_batch(count):
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped
                break
        return count, time.perf_counter() - started


_BASELINE_QUERIES = {
    # What the server reads: the stored records, in the listing's order.
    "records": "SELECT wire_record, created, session_id FROM sessions WHERE org_id = %s"
    " ORDER BY created DESC, session_id DESC",
    # What a user would read by hand: the session's own columns, metadata as a dict.
    "columns": "SELECT session_id, name, description, tags, metadata, min_timestamp_ns,"
    " max_timestamp_ns, created, modified FROM sessions WHERE org_id = %s"
    " ORDER BY created DESC, session_id DESC",
}


def read_psycopg(url: str, org_id: str, kind: str = "records") -> tuple[int, float]:
    """A baseline: rows straight from PostgreSQL with a server-side binary cursor, 1,000 rows a
    fetch, in the listing's order. ``kind``: "records" (the stored wire records, as the server
    reads them), "parsed" (the same, each parsed into a ``Session``: the limit of a Python
    client) or "columns" (the columns a user would read, metadata as a dict)."""
    import psycopg

    from flightlog_server.storage.urls import libpq_conninfo

    parse = kind == "parsed"
    query = _BASELINE_QUERIES["columns" if kind == "columns" else "records"]
    with psycopg.connect(libpq_conninfo(url)) as conn:
        started = time.perf_counter()
        with conn.cursor(name="bench", binary=True) as cursor:
            cursor.itersize = 1000
            cursor.execute(query, (org_id,))
            count = 0
            while rows := cursor.fetchmany(1000):
                if parse:
                    for row in rows:
                        pb.Session.FromString(row[0])
                count += len(rows)
        return count, time.perf_counter() - started


BASELINES: list[tuple[str, str, str, float]] = [
    # (kind, what the baseline is, target, the ratio the target asks for at least)
    ("records", "psycopg server-side binary cursor, stored records", ">= 0.5 (aim 1.0)", 0.5),
    ("parsed", "psycopg, stored records each parsed into Session", ">= 0.8", 0.8),
    ("columns", "psycopg, the columns a user reads, metadata as a dict", ">= 1.5", 1.5),
]


def bench_list(
    server: ServerProcess, url: str, big: data.BigOrg, repeats: int, profile: bool
) -> tuple[list[Row], float]:
    request = pb.ListSessionsRequest(page_size=1000)
    # Warm up: the table in the OS cache, connections and prepared statements in the server.
    read_psycopg(url, big.identity.org_id)
    read_listing(server.target, big.identity, request, lambda n: n < 50_000)
    ours: list[float] = []
    theirs: dict[str, list[float]] = {kind: [] for kind, *_ in BASELINES}
    for _ in range(repeats):
        if profile:
            server.signal(signal.SIGUSR1)
        count, seconds = read_listing(server.target, big.identity, request)
        if profile:
            server.signal(signal.SIGUSR2)
        assert count == big.count, f"listed {count} of {big.count} sessions"
        ours.append(count / seconds)
        for kind, *_ in BASELINES:
            rows, seconds = read_psycopg(url, big.identity.org_id, kind)
            assert rows == big.count
            theirs[kind].append(rows / seconds)
        log(
            f"  ListSessions {ours[-1]:,.0f} sessions/s; psycopg "
            + ", ".join(f"{kind} {rates[-1]:,.0f} rows/s" for kind, rates in theirs.items())
        )
    best = max(ours)
    rows_out = []
    for kind, what, target, minimum in BASELINES:
        baseline = max(theirs[kind])
        ratio = best / baseline
        rows_out.append(
            Row(
                f"ListSessions, {big.count:,} sessions, generated stub, vs {kind}",
                best,
                "sessions/s",
                baseline,
                f"rows/s ({what})",
                ratio,
                target,
                ratio >= minimum,
                f"best of {repeats}; all runs: "
                + ", ".join(f"{a:,.0f}/{b:,.0f}" for a, b in zip(ours, theirs[kind], strict=True)),
            )
        )
    return rows_out, best


def bench_slow_reader(server: ServerProcess, big: data.BigOrg, rate: float, limit: float) -> Row:
    """RSS growth of the server while a reader takes a tenth of ``rate``, for ``limit`` s."""
    page = 1000
    interval = page / (rate / 10)
    before = server.rss_bytes()
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, server.rss_bytes())
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    stop_at = time.perf_counter() + limit

    def slowly(count: int) -> bool:
        time.sleep(interval)
        return time.perf_counter() < stop_at

    try:
        count, seconds = read_listing(
            server.target, big.identity, pb.ListSessionsRequest(page_size=page), slowly
        )
    finally:
        done.set()
        sampler.join()
    growth = (peak - before) / 2**20
    return Row(
        "server RSS growth, reader at 1/10 speed",
        growth,
        "MB",
        target="<= 50 MB",
        met=growth <= 50,
        note=f"{count:,} sessions read in {seconds:.0f} s ({count / seconds:,.0f}/s);"
        f" RSS {before / 2**20:.0f} MB before",
    )


def bench_filtered(server: ServerProcess, big: data.BigOrg, repeats: int) -> Row:
    request = pb.ListSessionsRequest(
        filter=pb.SessionFilter(
            tags_all=["outdoor"],
            custom_fields=[
                pb.CustomFieldCondition(
                    field="battery_pct",
                    operator=pb.COMPARISON_OPERATOR_GREATER_OR_EQUAL,
                    value=common_pb2.CustomFieldValue(number_value=20),
                )
            ],
        ),
        sort=pb.SessionSort(
            field=pb.SESSION_SORT_FIELD_CUSTOM_FIELD,
            custom_field="max_speed",
            direction=pb.SORT_DIRECTION_DESCENDING,
        ),
    )
    times, sizes = first_batches(server.target, big.identity, request, repeats)
    median = statistics.median(times) * 1000
    return Row(
        f"filtered listing at {big.count:,} sessions, time to first batch",
        median,
        "ms",
        target="<= 100 ms",
        met=median <= 100,
        note=f"median of {repeats} (first, cold: {times[0] * 1000:.0f} ms); batch of"
        f" {sizes[0]}; tag 'outdoor' + battery_pct >= 20, sorted by max_speed desc",
    )


# --- unary calls, 8 in flight ----------------------------------------------------------------


# --- AddSessionFiles and ListSessionTopics ----------------------------------------------------


def bench_add_files(
    real: ServerProcess, url: str, writer: Identity, catalog: data.Catalog, repeats: int
) -> list[Row]:
    files = catalog.loose
    with grpc.insecure_channel(real.target, options=CHANNEL_OPTIONS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        md = metadata(writer)

        def new_session() -> str:
            response = stub.CreateSession(pb.CreateSessionRequest(), metadata=md)
            return str(response.session.session_id)

        ours = []
        for _ in range(repeats):
            session_id = new_session()
            request = pb.AddSessionFilesRequest(
                session_id=session_id, files=[pb.SessionFileSpec(file_id=f) for f in files]
            )
            started = time.perf_counter()
            stub.AddSessionFiles(request, metadata=md)
            ours.append(time.perf_counter() - started)
        many, copied = [], []
        for _ in range(repeats):
            session_id = new_session()
            rows = [(writer.org_id, session_id, f, "bench", "bench") for f in files]
            with data.connect(url) as conn:
                started = time.perf_counter()
                with conn.transaction():
                    conn.cursor().executemany(
                        "INSERT INTO session_files (org_id, session_id, file_id, created_by,"
                        " modified_by) VALUES (%s, %s, %s, %s, %s)",
                        rows,
                    )
                many.append(time.perf_counter() - started)
            session_id = new_session()
            rows = [(writer.org_id, session_id, f, "bench", "bench") for f in files]
            with data.connect(url) as conn:
                started = time.perf_counter()
                with (
                    conn.transaction(),
                    conn.cursor().copy(
                        "COPY session_files (org_id, session_id, file_id, created_by,"
                        " modified_by) FROM STDIN"
                    ) as copy,
                ):
                    for row in rows:
                        copy.write_row(row)
                copied.append(time.perf_counter() - started)
    ours_s, many_s, copy_s = min(ours), min(many), min(copied)
    return [
        Row(
            f"AddSessionFiles, {len(files):,} files",
            ours_s,
            "s",
            many_s,
            "s (one executemany INSERT)",
            ours_s / many_s,
            "<= 1.5x",
            ours_s / many_s <= 1.5,
            f"best of {repeats}; COPY of the same rows: {copy_s:.3f} s ({ours_s / copy_s:.1f}x)",
        )
    ]


TOPICS_SQL = """
SELECT t.topic_id, t.name, t.schema_name, t.message_encoding
FROM topics t
WHERE t.org_id = %(org)s AND EXISTS (
    SELECT 1
    FROM sessions s
    JOIN session_files c ON c.org_id = s.org_id AND c.session_id = s.session_id
    JOIN files f ON f.org_id = c.org_id AND f.file_id = c.file_id
    JOIN timeline_extents e ON e.org_id = c.org_id AND e.file_id = c.file_id
    WHERE s.org_id = t.org_id AND s.session_id = %(session)s AND e.topic_id = t.topic_id
      AND e.min_ns + f.unix_epoch_offset_ns <= s.max_timestamp_ns
      AND e.max_ns + f.unix_epoch_offset_ns >= s.min_timestamp_ns
)
ORDER BY t.name, t.topic_id
"""


def bench_topics(
    real: ServerProcess, url: str, writer: Identity, catalog: data.Catalog, repeats: int
) -> list[Row]:
    shape = (
        f"{len(catalog.recorded):,} files x {catalog.topics} topics x"
        f" {catalog.extents_per_partition} extents"
    )
    with grpc.insecure_channel(real.target, options=CHANNEL_OPTIONS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        md = metadata(writer)
        session_id = stub.CreateSession(pb.CreateSessionRequest(), metadata=md).session.session_id
        stub.AddSessionFiles(
            pb.AddSessionFilesRequest(
                session_id=session_id,
                files=[pb.SessionFileSpec(file_id=f) for f in catalog.recorded],
            ),
            metadata=md,
        )
        firsts, ends = [], []
        topics = 0
        try:
            for _ in range(repeats):
                started = time.perf_counter()
                call = stub.ListSessionTopics(
                    pb.ListSessionTopicsRequest(session_id=session_id), metadata=md
                )
                topics = 0
                for i, response in enumerate(call):
                    if i == 0:
                        firsts.append(time.perf_counter() - started)
                    topics += len(response.topics)
                ends.append(time.perf_counter() - started)
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.UNIMPLEMENTED:
                raise
            return [
                Row(
                    f"ListSessionTopics, {shape}",
                    None,
                    "ms",
                    target="<= 2x",
                    note="not measured: ListSessionTopics is not implemented in this tree yet",
                )
            ]
    raw_first, raw_end = [], []
    rows: list[Any] = []
    with data.connect(url) as conn:
        for _ in range(repeats):
            started = time.perf_counter()
            cursor = conn.execute(TOPICS_SQL, {"org": writer.org_id, "session": session_id})
            cursor.fetchone()
            raw_first.append(time.perf_counter() - started)
            rows = cursor.fetchall()
            raw_end.append(time.perf_counter() - started)
    assert topics == catalog.topics == len(rows) + 1, (topics, len(rows))
    result = []
    for what, ours, theirs in (
        ("time to first batch", min(firsts), min(raw_first)),
        ("time to end", min(ends), min(raw_end)),
    ):
        result.append(
            Row(
                f"ListSessionTopics, {shape}: {what}",
                ours * 1000,
                "ms",
                theirs * 1000,
                "ms (raw SQL)",
                ours / theirs,
                "<= 2x",
                ours / theirs <= 2,
                f"best of {repeats}; {topics} topics",
            )
        )
    return result


# --- the run ---------------------------------------------------------------------------------


def table(rows: list[Row]) -> str:
    def fmt(value: float | None) -> str:
        if value is None:
            return "-"
        if value >= 100:
            return f"{value:,.0f}"
        return f"{value:.3g}"

    header = ("figure", "value", "baseline", "ratio", "target", "met")
    lines = [
        (
            r.figure,
            f"{fmt(r.value)} {r.unit}",
            f"{fmt(r.baseline)} {r.baseline_unit}" if r.baseline is not None else "-",
            f"{r.ratio:.2f}" if r.ratio is not None else "-",
            r.target,
            {True: "yes", False: "NO", None: "-"}[r.met],
        )
        for r in rows
    ]
    notes = [f"  {r.figure}: {r.note}" for r in rows if r.note]
    return "\n".join([*aligned(header, lines), "", "notes:", *notes])


GROUPS = ("list", "query", "writes", "files", "limits", "aggregate", "workers", "feed")
"""The groups of rows ``--only`` chooses from, in the order they run."""


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50,000 sessions, shorter runs")
    parser.add_argument("--sessions", type=int, help="sessions in the big org (overrides)")
    parser.add_argument("--json", default=".data/bench.json", help="where to write the JSON")
    parser.add_argument("--profile", action="store_true", help="profile the ListSessions run")
    parser.add_argument(
        "--only",
        type=lambda text: set(text.split(",")),
        default=set(GROUPS),
        help=f"run only these groups of rows, comma-separated (of: {', '.join(GROUPS)})",
    )
    args = parser.parse_args(argv)
    unknown = args.only - set(GROUPS)
    if unknown:
        parser.error(f"unknown groups {', '.join(sorted(unknown))}; known: {', '.join(GROUPS)}")
    only: set[str] = args.only
    sessions = args.sessions or (50_000 if args.quick else 1_000_000)
    seconds = 3.0 if args.quick else 5.0
    repeats = 1 if args.quick else 2
    json_path = Path(args.json)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    profile_path = json_path.with_name("bench-profile.txt") if args.profile else None

    started = time.perf_counter()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    with data.bench_database(log) as url:
        log(f"loading {sessions:,} sessions")
        t = time.perf_counter()
        big = data.load_big_org(url, sessions, log)
        timings["load_sessions_s"] = time.perf_counter() - t
        writer = create_identity(url, "bench-writer")
        t = time.perf_counter()
        catalog = data.load_catalog(url, writer.org_id, 10_000, 1_000, 50, 4, log)
        timings["load_catalog_s"] = time.perf_counter() - t
        log("starting the servers")
        with (
            ServerProcess("real", url, str(profile_path) if profile_path else None) as real,
            ServerProcess("bare", url) as bare,
        ):
            if "list" in only:
                log("ListSessions")
                list_rows, rate = bench_list(real, url, big, repeats, args.profile)
                rows += list_rows
                log("slow reader")
                rows.append(bench_slow_reader(real, big, rate, 20 if args.quick else 60))
                log("filtered listing")
                rows.append(bench_filtered(real, big, 5))
            if "query" in only:
                log("filter language (issue 13)")
                query.load_metrics(url, big)
                rows += query.bench_query(real, url, big, repeats)
            if "writes" in only:
                log("GetSession, CreateSession, UpdateSession")
                rows += writes.bench_unary(real, bare, big, writer, seconds)
                log("CreateSession in one org and in eight")
                rows.append(writes.bench_orgs(real, url, seconds))
                log("BatchCreateSessions")
                rows.append(
                    writes.bench_batch_create(real, url, 10_000 if args.quick else 100_000, 1_000)
                )
            if "files" in only:
                log("AddSessionFiles")
                rows += bench_add_files(real, url, writer, catalog, 2 if args.quick else 3)
                log("ListSessionTopics")
                rows += bench_topics(real, url, writer, catalog, 3)
            limits: list[dict[str, Any]] = []
            if "limits" in only:
                log("RegisterFile and AddSessionFiles at their limits")
                probe = (big.identity, big.sample_ids[0])
                rows += bounded.bench_register_and_add(real, writer, catalog.loose, probe)
                log("one request at each limit")
                limits = bounded.limits_table(real, writer, catalog.loose)
            if "aggregate" in only:
                # Last of the big org's rows: it attaches devices and publishes metric values to
                # the big org's sessions (without rewriting their stored records).
                log("AggregateSessionMetrics by month x device")
                rows.append(aggregate.bench_aggregate(real, url, big, repeats + 1))
        if "workers" in only:
            log("CreateSession on serve --workers 1 and 2")
            rows.append(writes.bench_workers(url, writer, seconds))
        if "feed" in only:
            rows += feed.rows(url, args.quick)
        with data.connect(url) as conn:
            (row,) = conn.execute("SHOW server_version").fetchall()
            server_version = str(row[0])
    timings["total_s"] = time.perf_counter() - started

    print()
    print(table(rows))
    print()
    if limits:
        print("one request at each limit (the server's RSS growth and longest event-loop hold):")
        print(bounded.format_limits(limits))
        print()
    print(
        f"{os.cpu_count()} cores, {platform.processor() or platform.machine()}, Python"
        f" {platform.python_version()}, grpcio {version('grpcio')}, PostgreSQL {server_version};"
        f" {dt.date.today().isoformat()}; whole run {timings['total_s']:.0f} s"
        f" (loading {timings['load_sessions_s']:.0f} s)"
    )
    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "grpcio": version("grpcio"),
            "postgresql": server_version,
            "database": "BENCH_DATABASE_URL"
            if os.environ.get("BENCH_DATABASE_URL")
            else "embedded",
        },
        "config": {"sessions": sessions, "quick": args.quick, "profiled": args.profile},
        "timings": timings,
        "rows": [asdict(r) for r in rows],
        "limits": limits,
    }
    json_path.write_text(json.dumps(report, indent=2) + "\n")
    log(f"wrote {json_path}" + (f" and {profile_path}" if profile_path else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
