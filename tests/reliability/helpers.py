"""Small tools shared by the reliability tests: polling with a deadline, health, timing calls,
and the settings of the property tests."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from hypothesis import HealthCheck, settings
from sqlalchemy.pool import QueuePool

from tests.support import ServerThread

# The figures the tests report (operations run, faults injected, inputs tried, violations found),
# printed by conftest.py at the end of the run.
FIGURES: dict[str, str] = {}

# Property tests run this many examples per RPC (``FLIGHTLOG_HYPOTHESIS_EXAMPLES`` raises it),
# derandomized so that CI sees the same inputs every time; each example is a call to the server.
HYPOTHESIS_EXAMPLES = int(os.environ.get("FLIGHTLOG_HYPOTHESIS_EXAMPLES", "25"))
PROPERTY_SETTINGS = settings(
    max_examples=HYPOTHESIS_EXAMPLES,
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def poll(condition: Callable[[], bool], within: float, what: str) -> float:
    """Waits until ``condition()`` holds, checking every 20 ms; returns how long that took.

    This is how the tests wait for something to happen (never a bare sleep): it fails with
    ``what`` when the condition does not hold within ``within`` seconds.
    """
    started = time.monotonic()
    while not condition():
        if time.monotonic() - started > within:
            raise AssertionError(f"not within {within} s: {what}")
        time.sleep(0.02)
    return time.monotonic() - started


def health(target: str, service: str = "flightlog.v1.SessionService", **channel: Any) -> int:
    """The health status the server at ``target`` reports for ``service`` (-1: no answer).

    ``channel`` may hold ``credentials`` for a TLS channel.
    """
    credentials = channel.get("credentials")
    with (
        grpc.secure_channel(target, credentials)
        if credentials is not None
        else grpc.insecure_channel(target)
    ) as ch:
        try:
            response = health_pb2_grpc.HealthStub(ch).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=2
            )
        except grpc.RpcError:
            return -1
    return int(response.status)


def outcome(call: Callable[[], Any]) -> tuple[grpc.StatusCode, float]:
    """Runs a call (reading a stream to its end) and returns its status code and duration."""
    started = time.monotonic()
    try:
        result = call()
        if isinstance(result, Iterator):
            for _ in result:
                pass
        code = grpc.StatusCode.OK
    except grpc.RpcError as e:
        code = e.code()
    return code, time.monotonic() - started


def record(name: str, figure: str) -> None:
    """Records a figure for the end-of-run summary (and prints it, for ``pytest -s``)."""
    FIGURES[name] = figure
    print(f"\n{name}: {figure}")


def blocked_by(conninfo: str, holder_pid: int) -> list[str]:
    """The queries that wait for a lock held by the backend ``holder_pid``."""
    with psycopg.connect(conninfo, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT query FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
            (holder_pid,),
        ).fetchall()
    return [r[0] for r in rows]


def checked_out(server: ServerThread) -> int:
    """How many of the server's pooled connections are checked out now."""

    async def read() -> int:
        pool = server.server.database.engine.pool
        assert isinstance(pool, QueuePool)
        return pool.checkedout()

    result: int = server.call(read())
    return result
