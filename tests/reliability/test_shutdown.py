"""Graceful shutdown of the real server process.

``python -m flightlog_server serve --grace-seconds 5`` runs as a subprocess. A unary call is kept
in flight by a row lock the test holds, and a stream is open with batches still to come. On
SIGTERM the server refuses new calls (UNAVAILABLE), lets the in-flight call finish once the lock
is released and the stream run to its end, and exits 0 within the grace period.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.storage.urls import libpq_conninfo
from tests.reliability.helpers import SERVING, health, outcome, poll, record
from tests.reliability.private_postgres import free_port
from tests.rpc.factories import make_device, make_session, unique
from tests.support import Identity, Stubs, create_identity, session_row_locked

GRACE_S = 5.0
WAITING_FOR = "SELECT count(*) FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))"


@pytest.fixture
def server_process(
    database_url: str, tmp_path: Path
) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    port = free_port()
    log = (tmp_path / "server.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable, "-m", "flightlog_server", "serve",
            "--database-url", database_url,
            "--bind", f"127.0.0.1:{port}",
            "--grace-seconds", str(GRACE_S),
            "--log-level", "WARNING",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    target = f"127.0.0.1:{port}"
    try:
        poll(
            lambda: process.poll() is not None or health(target) == SERVING,
            60,
            "the server process starts serving",
        )
        assert process.poll() is None, (tmp_path / "server.log").read_text()
        yield process, target
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(10)
        log.close()


@pytest.fixture
def who(database_url: str) -> Identity:
    return create_identity(database_url, unique("shutdown-"))


def test_sigterm_refuses_new_calls_drains_in_flight_ones_and_exits_zero(
    server_process: tuple[subprocess.Popen[bytes], str], who: Identity, database_url: str
) -> None:
    process, target = server_process
    stubs = Stubs(target, who.api_key, who.org_id)
    conninfo = libpq_conninfo(database_url)
    try:
        locked = make_session(stubs, name="before")
        devices = [make_device(stubs).device_id for _ in range(4)]
        listed = make_session(stubs, device_ids=devices)
        with session_row_locked(database_url, locked.session_id) as holder:
            in_flight = stubs.sessions.UpdateSession.future(
                pb.UpdateSessionRequest(
                    session_id=locked.session_id, name=common_pb2.StringUpdate(set="after")
                ),
                timeout=30,
            )
            with psycopg.connect(conninfo, autocommit=True) as observer:
                poll(
                    lambda: (
                        observer.execute(
                            WAITING_FOR,
                            (holder.info.backend_pid,),
                        ).fetchone()
                        == (1,)
                    ),
                    10,
                    "the unary call is in flight, waiting for the row lock",
                )
            stream = stubs.sessions.ListSessionDevices(
                pb.ListSessionDevicesRequest(session_id=listed.session_id, page_size=1), timeout=30
            )
            batches = iter(stream)
            first = next(batches)

            process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()

            def refused() -> bool:
                fresh = Stubs(target, who.api_key, who.org_id)
                try:
                    code, _ = outcome(
                        lambda: fresh.sessions.GetSession(
                            pb.GetSessionRequest(session_id=listed.session_id), timeout=2
                        )
                    )
                finally:
                    fresh.close()
                return code == grpc.StatusCode.UNAVAILABLE

            poll(refused, 2, "a new call is refused with UNAVAILABLE after SIGTERM")
            assert process.poll() is None, "the server exited with a call still in flight"

            rest = [d.device_id for batch in batches for d in batch.devices]
            assert [d.device_id for d in first.devices] + rest == devices
            assert stream.code() == grpc.StatusCode.OK

            holder.rollback()  # lets the in-flight call through
        assert in_flight.result(timeout=GRACE_S).session.name == "after"
        assert process.wait(timeout=GRACE_S + 5) == 0
        exited = time.monotonic() - signalled
        assert exited < GRACE_S, f"exited {exited:.2f} s after SIGTERM"
        record(
            "graceful shutdown",
            f"SIGTERM with a unary call and a stream in flight: new calls UNAVAILABLE, both "
            f"finished OK, exit 0 after {exited:.2f} s (grace {GRACE_S:.0f} s)",
        )
    finally:
        stubs.close()
