"""The change feed at scale (issue 11), each figure against a baseline measured in the same run.

* Writes with many watchers: 8 writers (CreateSession, 8 in flight) in one org, with 200
  watchers of that org open (``--quick``: 50) against the same writers with none (measured
  before and after, on the same server). The watchers run in a process of their own
  (``python -m tests.bench.feed watchers ...``) and record when each change reaches each of
  them; a change's delivery lag is that time less the time its writer got its response. Every
  watcher must receive every change of the run exactly once, in order.
* The server's CPU per watch response, against a bare grpc.aio server that only yields as many
  responses of the same size a second to as many streams (``python -m tests.bench.feed
  bare-server ...``, its client in a process of its own): gRPC's own cost per response, the
  floor under the feed's, since the feed sends one response per watcher per read.
* Live delivery after a database restart: a watcher stays open on a server whose PostgreSQL (a
  private cluster, ``tests.reliability.private_postgres``) is stopped and started again; the
  figure is the time from the database answering again (``pg_ctl start -w`` returning) to the
  watcher receiving a write made from then on (retried while it meets UNAVAILABLE).

``python -m tests.bench.feed [--quick]`` runs these rows alone (``make bench`` runs them with
the others).
"""

from __future__ import annotations

import argparse
import array
import asyncio
import contextlib
import json
import os
import queue
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
from grpc import aio

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from tests.bench.common import log, metadata
from tests.bench.processes import ServerProcess
from tests.bench.rows import Row
from tests.support import Identity, create_identity

WRITERS = 8
WATCHER_CHANNELS = 8  # the watchers' streams are spread over this many connections


# --- the writers ---------------------------------------------------------------------------------


async def _write(
    target: str, identity: Identity, seconds: float
) -> tuple[list[float], dict[int, float]]:
    """CreateSession, ``WRITERS`` in flight for ``seconds``: each call's latency (s), and when
    each revision's writer got its response (``time.time()``)."""
    md = metadata(identity)
    latencies: list[float] = []
    acked: dict[int, float] = {}
    async with aio.insecure_channel(target) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        request = pb.CreateSessionRequest(name="feed bench", tags=["bench"])
        for _ in range(20):  # warm up
            await stub.CreateSession(request, metadata=md)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds

        async def writer() -> None:
            while loop.time() < deadline:
                started = time.perf_counter()
                response = await stub.CreateSession(request, metadata=md)
                latencies.append(time.perf_counter() - started)
                acked[response.session.revision] = time.time()

        await asyncio.gather(*(writer() for _ in range(WRITERS)))
    return latencies, acked


# --- the watchers' process -----------------------------------------------------------------------


async def _watch(target: str, api_key: str, org_id: str, count: int, out: str) -> None:
    """Opens ``count`` watchers from now, prints ``READY <revision>`` once each is live, then
    reads ``STOP <revision>`` on stdin and returns once every watcher has received it, having
    written each (watcher, revision, time received) to ``out``."""
    md = (("authorization", f"Bearer {api_key}"), ("x-org-id", org_id))
    channels = [aio.insecure_channel(target) for _ in range(WATCHER_CHANNELS)]
    stubs = [session_service_pb2_grpc.SessionServiceStub(c) for c in channels]
    watcher_ids = array.array("i")
    revisions = array.array("q")
    times = array.array("d")
    live = [asyncio.Event() for _ in range(count)]
    start_revision = [0] * count
    latest = [0] * count
    stop_at: list[int] = []
    reached = asyncio.Event()
    done = [False] * count
    responses = [0, 0]  # how many, and their bytes (estimated from one in 16)

    async def one(i: int) -> None:
        call = stubs[i % len(stubs)].WatchSessions(
            pb.WatchSessionsRequest(after_revision=-1), metadata=md
        )
        async for response in call:
            now = time.time()
            responses[0] += 1
            if responses[0] % 16 == 0:  # a sample: sizing every response costs this process CPU
                responses[1] += 16 * response.ByteSize()
            for change in response.changes:
                watcher_ids.append(i)
                revisions.append(change.revision)
                times.append(now)
            if not live[i].is_set():
                start_revision[i] = response.revision
                live[i].set()
            latest[i] = response.revision
            if stop_at and latest[i] >= stop_at[0] and not done[i]:
                done[i] = True
                if all(done):
                    reached.set()
                call.cancel()
                return

    tasks = [asyncio.create_task(one(i)) for i in range(count)]
    for event in live:
        await event.wait()
    print(f"READY {max(start_revision)} {min(start_revision)}", flush=True)
    line = await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    stop_at.append(int(line.split()[1]))
    for i in range(count):
        if latest[i] >= stop_at[0] and not done[i]:
            done[i] = True
            tasks[i].cancel()
    if not all(done):
        await reached.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close(None)
    with open(out, "wb") as f:
        json_header = json.dumps(
            {
                "count": len(revisions),
                "start": start_revision,
                "responses": responses[0],
                "response_bytes": responses[1],
            }
        ).encode()
        f.write(len(json_header).to_bytes(4, "little") + json_header)
        watcher_ids.tofile(f)
        revisions.tofile(f)
        times.tofile(f)


@dataclass
class _Receipts:
    """What the watchers' process recorded: each watcher's start, each delivery (watcher,
    revision, time received), and the responses' count and bytes."""

    starts: list[int]
    ids: list[int]
    revisions: list[int]
    times: list[float]
    responses: int
    response_bytes: int


def _read_receipts(path: str) -> _Receipts:
    with open(path, "rb") as f:
        size = int.from_bytes(f.read(4), "little")
        header = json.loads(f.read(size))
        count = header["count"]
        ids, revisions, times = array.array("i"), array.array("q"), array.array("d")
        ids.fromfile(f, count)
        revisions.fromfile(f, count)
        times.fromfile(f, count)
    return _Receipts(
        header["start"],
        list(ids),
        list(revisions),
        list(times),
        header["responses"],
        header["response_bytes"],
    )


# --- the rows ------------------------------------------------------------------------------------


def _percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


@dataclass
class _Phase:
    """One phase of writes with the watchers open."""

    latencies: list[float]  # each write's, in seconds
    lags: list[float]  # each delivery's, in seconds
    cpu: float  # the server's CPU seconds over the phase
    elapsed: float  # the phase's seconds
    responses: int  # the watch responses the watchers received
    response_bytes: int


def _with_watchers(
    server: ServerProcess, identity: Identity, watchers: int, seconds: float, folder: Path
) -> _Phase:
    """One phase of writes with ``watchers`` watchers open, having checked that every watcher
    received every change once, in order."""
    receipts = str(folder / "receipts.bin")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "tests.bench.feed", "watchers", server.target,
            identity.api_key, identity.org_id, str(watchers), receipts,
        ],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert process.stdin is not None and process.stdout is not None
    try:
        ready = process.stdout.readline().split()
        if not ready or ready[0] != "READY":
            raise RuntimeError(f"the watchers did not start: {ready}")
        cpu = _cpu_seconds(server.process.pid)
        watchers_cpu = _cpu_seconds(process.pid)
        started = time.monotonic()
        latencies, acked = asyncio.run(_write(server.target, identity, seconds))
        elapsed = time.monotonic() - started
        cpu = _cpu_seconds(server.process.pid) - cpu
        watchers_cpu = _cpu_seconds(process.pid) - watchers_cpu
        final = max(acked)
        process.stdin.write(f"STOP {final}\n")
        process.stdin.flush()
        process.wait(300)
    finally:
        if process.poll() is None:
            process.kill()
    got = _read_receipts(receipts)
    per_watcher: list[list[int]] = [[] for _ in range(watchers)]
    for i, revision in zip(got.ids, got.revisions, strict=True):
        per_watcher[i].append(revision)
    for i, received in enumerate(per_watcher):
        expected = list(range(got.starts[i] + 1, got.starts[i] + 1 + len(received)))
        assert received == expected, f"watcher {i} received {len(received)} changes out of order"
        assert received and received[-1] >= final, f"watcher {i} stopped before {final}"
    lags = [got.times[k] - acked[r] for k, r in enumerate(got.revisions) if r in acked]
    log(
        f"  {watchers} watchers: write p50 {statistics.median(latencies) * 1000:.1f} ms,"
        f" {len(acked):,} writes, {len(got.revisions):,} deliveries in {got.responses:,}"
        f" responses; CPU: server {cpu / elapsed:.0%} of a core, the watchers' process"
        f" {watchers_cpu / elapsed:.0%}"
    )
    return _Phase(latencies, lags, cpu, elapsed, got.responses, got.response_bytes)


def _cpu_seconds(pid: int) -> float:
    """The CPU time process ``pid`` has used (user and system)."""
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_watchers(url: str, watchers: int, seconds: float, rounds: int) -> list[Row]:
    """Write p50 with ``watchers`` watchers of the org against none, the delivery lag, and the
    server's CPU per watch response against a bare gRPC server's. Phases alternate (none, with,
    none, with, ..., none) so that the machine's drift weighs on both sides."""
    identity = create_identity(url, f"bench-feed-{secrets.token_hex(3)}")
    folder = Path(tempfile.mkdtemp(prefix="flightlog-feed-bench-"))
    without: list[list[float]] = []
    phases: list[_Phase] = []
    cpu_without: list[float] = []
    try:
        with ServerProcess("real", url) as server:
            for phase in range(2 * rounds + 1):
                if phase % 2:
                    phases.append(_with_watchers(server, identity, watchers, seconds, folder))
                else:
                    cpu = _cpu_seconds(server.process.pid)
                    latencies, _ = asyncio.run(_write(server.target, identity, seconds))
                    cpu_without.append((_cpu_seconds(server.process.pid) - cpu) / len(latencies))
                    without.append(latencies)
                    log(f"  no watchers: write p50 {statistics.median(latencies) * 1000:.1f} ms")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    lags = [lag for phase in phases for lag in phase.lags]
    baseline = statistics.median([x for phase in without for x in phase])
    ours = statistics.median([x for phase in phases for x in phase.latencies])
    ratio = ours / baseline
    p99 = _percentile(lags, 0.99) * 1000
    p50_lag = _percentile(lags, 0.50) * 1000
    write_cpu = statistics.median(cpu_without)
    cpu_with = statistics.median([p.cpu / len(p.latencies) for p in phases])
    # The feed's share of the server's CPU: what the phase used beyond its writes' cost without
    # watchers, per response sent; against a bare grpc.aio server sending as many responses of
    # the same size a second to as many streams (gRPC's own cost: the physical limit here).
    feed_cpu = sum(p.cpu - write_cpu * len(p.latencies) for p in phases)
    responses = sum(p.responses for p in phases)
    per_response = feed_cpu / responses
    rate = responses / sum(p.elapsed for p in phases)
    size = sum(p.response_bytes for p in phases) // responses
    bare = _bare_grpc_cost(watchers, rate, size, seconds)
    note = (
        f"{WRITERS} writers, {rounds} phases of {seconds:.0f} s with the watchers between"
        f" {rounds + 1} without; {len(lags):,} deliveries, each change to each watcher once"
        " and in order; no-watcher p50 of each phase: "
        + "/".join(f"{statistics.median(p) * 1000:.1f}" for p in without)
        + " ms"
    )
    return [
        Row(
            f"CreateSession p50, {WRITERS} writers, {watchers} watchers of the org",
            ours * 1000,
            "ms",
            baseline * 1000,
            "ms (no watchers, same server, same run)",
            ratio,
            "<= 1.2",
            ratio <= 1.2,
            note,
        ),
        Row(
            f"server CPU per write, {watchers} watchers of the org",
            cpu_with * 1000,
            "ms",
            write_cpu * 1000,
            "ms (no watchers)",
            cpu_with / write_cpu,
            note="user + system time of the server process over a phase, per write (median"
            " of the phases): less sensitive than latency to other work on the machine",
        ),
        Row(
            f"server CPU per watch response, {watchers} watchers",
            per_response * 1e6,
            "us",
            bare * 1e6,
            "us (bare grpc.aio server, same rate and size)",
            per_response / bare,
            note=f"{rate:,.0f} responses/s of {size:,} bytes; ours: the phases' server CPU beyond"
            " their writes' cost without watchers, per response (the shared read, fan-out,"
            " encoding and sending); bare: a grpc.aio server doing nothing but yield the same"
            " bytes to as many streams over as many connections (what gRPC itself costs)",
        ),
        Row(
            f"change delivery lag p99, {watchers} watchers, {WRITERS} writers",
            p99,
            "ms",
            target="<= 100 ms",
            met=p99 <= 100,
            note=f"from the writer's response to the watcher's receipt; p50 {p50_lag:.1f} ms",
        ),
    ]


# --- gRPC's own cost per streamed response -------------------------------------------------------


def _bare_grpc_cost(streams: int, rate: float, size: int, seconds: float) -> float:
    """Server CPU seconds per response of a grpc.aio server that only yields ``size`` bytes at
    ``rate`` responses a second in all, spread over ``streams`` streams (``WATCHER_CHANNELS``
    connections), its client in another process."""
    output = subprocess.run(
        [
            sys.executable, "-m", "tests.bench.feed", "bare-server",
            str(streams), str(rate), str(size), str(seconds),
        ],
        capture_output=True, text=True, timeout=120 + seconds, check=True,
    ).stdout  # fmt: skip
    return float(output.split()[-1])


async def _bare_server(streams: int, rate: float, size: int, seconds: float) -> float:
    payload = b"\x00" * size
    wakes: list[asyncio.Event] = []

    async def stream(request: bytes, context: object) -> AsyncIterator[bytes]:
        wake = asyncio.Event()
        wakes.append(wake)
        while True:
            await wake.wait()
            wake.clear()
            yield payload

    server = aio.server()
    handler = grpc.unary_stream_rpc_method_handler(stream)
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("bench.Bare", {"Stream": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    client = subprocess.Popen(
        [sys.executable, "-m", "tests.bench.feed", "bare-client", str(port), str(streams)]
    )
    try:
        while len(wakes) < streams:
            await asyncio.sleep(0.01)
        interval = streams / rate  # every stream gets a response this often, as the feed does
        loop = asyncio.get_running_loop()
        cpu, started, sent = _cpu_seconds(os.getpid()), loop.time(), 0
        while loop.time() - started < seconds:
            for wake in wakes:
                wake.set()
            sent += streams
            await asyncio.sleep(interval)
        return (_cpu_seconds(os.getpid()) - cpu) / sent
    finally:
        client.kill()
        client.wait()
        await server.stop(None)


async def _bare_client(port: int, streams: int) -> None:
    channels = [aio.insecure_channel(f"127.0.0.1:{port}") for _ in range(WATCHER_CHANNELS)]

    async def one(i: int) -> None:
        method = channels[i % len(channels)].unary_stream(
            "/bench.Bare/Stream", request_serializer=None, response_deserializer=None
        )
        async for _ in method(b""):
            pass

    await asyncio.gather(*(one(i) for i in range(streams)))


def bench_restart(repeats: int) -> Row:
    """Seconds from the database answering again to a write reaching an open watcher."""
    from flightlog_server.storage.migrate import upgrade
    from tests.reliability.private_postgres import PrivatePostgres

    root = Path(tempfile.mkdtemp(prefix="flightlog-feed-restart-"))
    delays: list[float] = []
    try:
        cluster = PrivatePostgres(root)
        cluster.start()
        try:
            upgrade(cluster.url)
            identity = create_identity(cluster.url, "bench-restart")
            with (
                ServerProcess("real", cluster.url) as server,
                grpc.insecure_channel(server.target) as channel,
            ):
                stub = session_service_pb2_grpc.SessionServiceStub(channel)
                md = metadata(identity)
                session = stub.CreateSession(pb.CreateSessionRequest(), metadata=md).session
                received: queue.Queue[tuple[int, float]] = queue.Queue()
                # From the create's revision, not -1 ("from now"): the update below could
                # otherwise commit before the stream has started, and never reach it.
                call: Any = stub.WatchSessions(
                    pb.WatchSessionsRequest(after_revision=session.revision), metadata=md
                )

                def read() -> None:
                    try:
                        for response in call:
                            for change in response.changes:
                                received.put((change.revision, time.monotonic()))
                    except grpc.RpcError as error:
                        if error.code() != grpc.StatusCode.CANCELLED:
                            received.put((-1, 0.0))

                reader = threading.Thread(target=read, daemon=True)
                reader.start()
                update = pb.UpdateSessionRequest(session_id=session.session_id)
                update.name.set = "warm"
                first = stub.UpdateSession(update, metadata=md).session.revision
                assert received.get(timeout=30)[0] == first
                for i in range(repeats):
                    cluster.stop("fast")
                    cluster.start()
                    answering = time.monotonic()
                    update.name.set = f"after restart {i}"
                    for _ in range(100):
                        try:
                            written = stub.UpdateSession(update, metadata=md).session.revision
                            break
                        except grpc.RpcError as error:
                            if error.code() != grpc.StatusCode.UNAVAILABLE:
                                raise
                    else:
                        raise RuntimeError("no write succeeded after the restart")
                    revision, at = received.get(timeout=30)
                    assert revision == written, "the watch stream ended or skipped a change"
                    delays.append(at - answering)
                    log(f"  restart {i + 1}: delivered {delays[-1] * 1000:.0f} ms after")
                call.cancel()
                reader.join(10)
        finally:
            cluster.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    worst = max(delays)
    return Row(
        "live delivery after a database restart, same watch stream",
        worst * 1000,
        "ms",
        target="<= 1000 ms",
        met=worst <= 1.0,
        note=f"worst of {repeats} restarts (pg_ctl stop -m fast, start); all: "
        + ", ".join(f"{d * 1000:.0f}" for d in delays)
        + " ms; from pg_ctl start returning to the watcher receiving a write made then",
    )


def rows(url: str, quick: bool) -> list[Row]:
    """Every row of this module (``make bench`` calls it)."""
    watchers = 50 if quick else 200
    log(f"change feed: {watchers} watchers, {WRITERS} writers")
    # Four phases with the watchers, between five without: the machine drifts from phase to
    # phase (autovacuum, checkpoints), and with two the ratio moved by 0.1 from run to run.
    result = bench_watchers(url, watchers, 3.0 if quick else 6.0, 1 if quick else 4)
    log("change feed: a database restart")
    result.append(bench_restart(2 if quick else 5))
    return result


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args and args[0] == "watchers":
        target, api_key, org_id, count, out = args[1:6]
        asyncio.run(_watch(target, api_key, org_id, int(count), out))
        return 0
    if args and args[0] == "bare-server":
        streams, rate, size, seconds = args[1:5]
        cost = asyncio.run(_bare_server(int(streams), float(rate), int(size), float(seconds)))
        print(f"{cost:.9f}")
        return 0
    if args and args[0] == "bare-client":
        with contextlib.suppress(KeyboardInterrupt):
            asyncio.run(_bare_client(int(args[1]), int(args[2])))
        return 0
    parser = argparse.ArgumentParser(prog="python -m tests.bench.feed", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="50 watchers, shorter phases")
    options = parser.parse_args(args)
    from tests.bench import data
    from tests.bench.__main__ import table

    with data.bench_database(log) as url:
        result = rows(url, options.quick)
    print()
    print(table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
