"""Operations: Prometheus metrics on a side port, and several worker processes on one port."""

from __future__ import annotations

import os
import socket
import urllib.request
from collections.abc import Iterator

import grpc
import pytest

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.app import ServerSettings
from flightlog_server.storage.database import DatabaseSettings
from tests.ops.server_process import flightlog_server, loopback
from tests.reliability.private_postgres import free_port
from tests.support import Identity, ServerThread, Stubs


def scrape(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        return str(response.read().decode())


def sample(text: str, name: str, **labels: str) -> float:
    """The value of one sample in Prometheus text format (0 when absent)."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.fixture(scope="module")
def metered_server(database_url: str) -> Iterator[ServerThread]:
    thread = ServerThread(
        ServerSettings(
            database=DatabaseSettings(url=database_url, pool_size=4),
            bind="127.0.0.1:0",
            auth_cache_seconds=0,
            metrics_port=0,
        )
    )
    yield thread
    thread.stop()


def test_metrics_count_calls_per_method_and_code(
    metered_server: ServerThread, identity: Identity
) -> None:
    stubs = Stubs(f"127.0.0.1:{metered_server.port}", identity.api_key, identity.org_id)
    for _ in range(3):
        stubs.sessions.CreateSession(pb.CreateSessionRequest())
    with pytest.raises(grpc.RpcError):
        stubs.sessions.GetSession(pb.GetSessionRequest(session_id="ss_doesnotexist"))
    port = metered_server.server.metrics_port
    assert port is not None
    text = scrape(port)
    create = "/flightlog.v1.SessionService/CreateSession"
    get = "/flightlog.v1.SessionService/GetSession"
    assert sample(text, "flightlog_rpc_calls_total", method=create, code="OK") == 3
    assert sample(text, "flightlog_rpc_calls_total", method=get, code="NOT_FOUND") == 1
    assert sample(text, "flightlog_rpc_duration_seconds_count", method=create, code="OK") == 3
    assert sample(text, "flightlog_rpc_in_flight", method=create) == 0
    assert "flightlog_db_pool_checked_out" in text
    assert sample(text, "flightlog_db_pool_size") == 4
    stubs.close()


def test_two_workers_serve_one_port(database_url: str, identity: Identity) -> None:
    metrics = free_port()
    # The workers' metrics ports are metrics and metrics + 1; make sure the second is free too.
    while True:
        try:
            with socket.socket() as s:
                s.bind(("127.0.0.1", metrics + 1))
            break
        except OSError:
            metrics = free_port()
    with flightlog_server(
        "serve",
        "--database-url", database_url,
        "--workers", "2",
        "--metrics-port", str(metrics),
        bind=loopback(),
        env={**os.environ, "FLIGHTLOG_AUTH_CACHE_SECONDS": "0"},
    ) as server:  # fmt: skip
        # Each worker starts on its own (waits for the database, migrates, serves) and a
        # connection may reach either: wait for both, not for one health check.
        server.wait_for_line("serving on port", times=2)
        # Every new connection goes to one of the workers (SO_REUSEPORT hashes connections).
        for _ in range(40):
            stubs = Stubs(server.target, identity.api_key, identity.org_id)
            stubs.sessions.CreateSession(pb.CreateSessionRequest())
            stubs.close()
        create = "/flightlog.v1.SessionService/CreateSession"
        counts = [
            sample(scrape(p), "flightlog_rpc_calls_total", method=create, code="OK")
            for p in (metrics, metrics + 1)
        ]
        assert sum(counts) == 40
        assert all(c > 0 for c in counts), f"one worker served everything: {counts}"
        assert server.stop() == 0
