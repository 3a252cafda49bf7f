"""Servers under measurement, each in a subprocess of its own (so its RSS can be read in /proc).

``python -m tests.bench.processes real URL`` runs the real Flightlog server (``FlightlogServer``,
exactly as ``flightlog-server serve`` builds it); ``... bare URL`` runs the baseline: a bare
grpc.aio server whose GetSession and CreateSession run one SQL statement each on a psycopg pool,
with no authentication, interceptor, ORM or transaction helper. Both print ``PORT <n>`` once
they serve, and stop on SIGTERM.

With ``--profile PATH``, the real server profiles itself with pyinstrument between SIGUSR1 and
SIGUSR2 and writes the text report to PATH.

The real server also measures itself for :meth:`ServerProcess.peaks`: the peak of its resident
memory (``VmHWM``, reset to the current RSS through ``/proc/self/clear_refs``) and the longest
time its event loop could not run a 1 ms timer, as CPU time of the loop's thread (a call held
the loop) and as wall time (which also counts the process waiting for a core on a busy
machine), and its longest garbage collection. The parent asks through the child's stdin, one
command a line (``reset``, ``report``), and reads the answer from its stdout.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import gc
import json
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any

import grpc
from grpc import aio
from psycopg_pool import AsyncConnectionPool

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from flightlog_server.domain.rules import new_id
from flightlog_server.storage.urls import libpq_conninfo


class ServerProcess:
    """A server subprocess; ``target`` is its loopback address.

    ``kind`` is ``real`` or ``bare`` (served by this module), or ``serve``: the real
    ``python -m flightlog_server serve`` with ``workers`` processes on a free port.
    """

    def __init__(self, kind: str, url: str, profile: str | None = None, workers: int = 1) -> None:
        if kind == "serve":
            port = _free_port()
            command = [
                sys.executable, "-m", "flightlog_server", "serve", "--database-url", url,
                "--bind", f"127.0.0.1:{port}", "--workers", str(workers), "--no-migrate",
                "--log-level", "WARNING",
            ]  # fmt: skip
            self.process: subprocess.Popen[str] = subprocess.Popen(
                command, stdout=subprocess.DEVNULL, text=True
            )
            self.target = f"127.0.0.1:{port}"
            _wait_serving(self.target, self.process)
            return
        command = [sys.executable, "-m", "tests.bench.processes", kind, url]
        if profile:
            command += ["--profile", profile]
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line.startswith("PORT "):
            self.process.kill()
            raise RuntimeError(f"the {kind} server did not start: {line!r}")
        self.target = f"127.0.0.1:{int(line.split()[1])}"

    def rss_bytes(self) -> int:
        with open(f"/proc/{self.process.pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no VmRSS")

    def _ask(self, command: str) -> str:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.process.stdout.readline()

    def reset_peaks(self) -> None:
        """Starts a new measurement of :meth:`peaks` (the real server only)."""
        if self._ask("reset").strip() != "OK":
            raise RuntimeError("the server did not reset its peaks")

    def peaks(self) -> Peaks:
        """The peak RSS growth and the longest loop stall since :meth:`reset_peaks`."""
        return Peaks(**json.loads(self._ask("report")))

    def signal(self, signum: int) -> None:
        os.kill(self.process.pid, signum)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _wait_serving(target: str, process: subprocess.Popen[Any], timeout: float = 60) -> None:
    """Returns once the health service of every worker answers SERVING."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(target) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise RuntimeError(f"the server exited with {process.returncode}")
            try:
                reply = health.Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            time.sleep(0.1)
    raise RuntimeError(f"no SERVING health check from {target} within {timeout} s")


@dataclass(frozen=True)
class Peaks:
    """What the real server measured of itself since its peaks were last reset."""

    # Peak resident memory minus the resident memory at the reset, bytes.
    rss_growth_bytes: int
    # The most CPU time the loop's thread spent between two runs of a 1 ms timer, seconds: how
    # long one piece of work held the loop.
    loop_held_s: float
    # The longest wall time between two runs of that timer, beyond its 1 ms, seconds.
    loop_stall_s: float
    # The longest collection of Python's cyclic garbage collector, seconds (it holds the loop).
    gc_pause_s: float


# --- the real server -------------------------------------------------------------------------


class _SelfMeasurement:
    """The real server's side of ``ServerProcess.peaks``."""

    TICK_S = 0.001

    def __init__(self) -> None:
        self.rss_at_reset = _status_kib("VmRSS") * 1024
        self.held_s = 0.0
        self.stall_s = 0.0
        self.gc_pause_s = 0.0
        self._tick_started = self._tick_cpu = 0.0
        self._gc_started = 0.0
        gc.callbacks.append(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause_s = max(self.gc_pause_s, time.perf_counter() - self._gc_started)

    async def watch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            self._tick_started, self._tick_cpu = loop.time(), time.thread_time()
            await asyncio.sleep(self.TICK_S)
            self._end_tick()

    def _end_tick(self) -> None:
        """Folds the time since the current tick started into the maxima. Also called by
        ``report``, which may run before the timer's callback in the loop iteration that ends a
        long hold (I/O callbacks run before timers)."""
        loop = asyncio.get_running_loop()
        self.held_s = max(self.held_s, time.thread_time() - self._tick_cpu)
        self.stall_s = max(self.stall_s, loop.time() - self._tick_started - self.TICK_S)

    def on_command(self) -> None:
        line = sys.stdin.readline()
        if not line:  # the parent closed our stdin: stop listening (EOF stays readable)
            asyncio.get_running_loop().remove_reader(sys.stdin.fileno())
            return
        command = line.strip()
        if command == "reset":
            with open("/proc/self/clear_refs", "w") as refs:
                refs.write("5")  # VmHWM := VmRSS
            self.rss_at_reset = _status_kib("VmRSS") * 1024
            self.held_s = self.stall_s = self.gc_pause_s = 0.0
            print("OK", flush=True)
        elif command == "report":
            self._end_tick()
            growth = _status_kib("VmHWM") * 1024 - self.rss_at_reset
            peaks = Peaks(growth, self.held_s, self.stall_s, self.gc_pause_s)
            print(json.dumps(asdict(peaks)), flush=True)


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    raise RuntimeError(f"no {field} in /proc/self/status")


async def _serve_real(url: str, profile: str | None) -> None:
    from flightlog_server.app import FlightlogServer, ServerSettings
    from flightlog_server.storage.database import DatabaseSettings

    server = FlightlogServer(
        ServerSettings(
            database=DatabaseSettings(url=url, pool_size=10),
            bind="127.0.0.1:0",
            grace_seconds=1,
        )
    )
    await server.start()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    measurement = _SelfMeasurement()
    watch = asyncio.create_task(measurement.watch_loop())
    loop.add_reader(sys.stdin.fileno(), measurement.on_command)
    if profile:
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.0005, async_mode="disabled")

        def finish() -> None:
            profiler.stop()
            with open(profile, "w") as out:
                out.write(profiler.output_text(unicode=True, color=False, show_all=True))

        loop.add_signal_handler(signal.SIGUSR1, profiler.start)
        loop.add_signal_handler(signal.SIGUSR2, finish)
    print(f"PORT {server.port}", flush=True)
    await stop.wait()
    watch.cancel()
    await server.stop(grace=1)


# --- the bare baseline -----------------------------------------------------------------------


class BareSessions(session_service_pb2_grpc.SessionServiceServicer):
    """One SQL statement per call, the org taken from ``x-org-id`` as is."""

    def __init__(self, pool: AsyncConnectionPool[Any]) -> None:
        self.pool = pool

    @staticmethod
    def _org(context: aio.ServicerContext[Any, Any]) -> str:
        return str(dict(context.invocation_metadata() or ()).get("x-org-id", ""))

    async def GetSession(
        self, request: pb.GetSessionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.GetSessionResponse:
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "SELECT wire_record FROM sessions WHERE org_id = %s AND session_id = %s",
                (self._org(context), request.session_id),
            )
            row = await cursor.fetchone()
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "session not found")
        return pb.GetSessionResponse(session=pb.Session.FromString(row[0]))

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.CreateSessionResponse:
        org_id = self._org(context)
        now = dt.datetime.now(dt.UTC)
        session = pb.Session(
            session_id=new_id("session"),
            org_id=org_id,
            tags=list(dict.fromkeys(request.tags)),
            metadata=request.metadata,
            created_by="bare",
            modified_by="bare",
        )
        session.created.FromDatetime(now)
        session.modified.FromDatetime(now)
        if request.name:
            session.name = request.name
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO sessions (org_id, session_id, name, tags, created, created_by,"
                " modified, modified_by, wire_record) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
                (
                    org_id,
                    session.session_id,
                    request.name or None,
                    list(session.tags),
                    now,
                    "bare",
                    now,
                    "bare",
                    session.SerializeToString(),
                ),
            )
        return pb.CreateSessionResponse(session=session)

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: aio.ServicerContext[Any, Any]
    ) -> pb.UpdateSessionResponse:
        """The tags put, as one UPDATE returning the record (custom fields and metrics, which
        a real update also writes, are not stored: this is the floor of an update)."""
        async with self.pool.connection() as conn:
            cursor = await conn.execute(
                "UPDATE sessions SET tags = array_append(array_remove(tags, %s), %s),"
                " modified = now() WHERE org_id = %s AND session_id = %s RETURNING wire_record",
                (
                    request.metadata_changeset.put_tags[0],
                    request.metadata_changeset.put_tags[0],
                    self._org(context),
                    request.session_id,
                ),
            )
            row = await cursor.fetchone()
        if row is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, "session not found")
        return pb.UpdateSessionResponse(session=pb.Session.FromString(row[0]))


async def _serve_bare(url: str) -> None:
    async with AsyncConnectionPool(
        libpq_conninfo(url), min_size=10, max_size=10, kwargs={"autocommit": True}, open=False
    ) as pool:
        server = aio.server()
        session_service_pb2_grpc.add_SessionServiceServicer_to_server(
            BareSessions(pool),  # type: ignore[abstract]  # only Get, Create and Update are served
            server,
        )
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        stop = asyncio.Event()
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
        print(f"PORT {port}", flush=True)
        await stop.wait()
        await server.stop(1)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("kind", choices=("real", "bare"))
    parser.add_argument("url")
    parser.add_argument("--profile")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.kind == "real":
        asyncio.run(_serve_real(args.url, args.profile))
    else:
        asyncio.run(_serve_bare(args.url))


if __name__ == "__main__":
    main()
