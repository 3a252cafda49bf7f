"""Fixtures of the client tests that run against a real server.

They build on ``grpc_target`` (``"127.0.0.1:PORT"``), ``api_key`` and ``org_id`` from the root
``conftest.py``. Tests that need no server do not use them.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from flightlog import FlightlogClient, catalog, set_default_client
from flightlog.ingest import read_recording, register_recording
from tests.client.recordings import BY_NAME
from tests.rpc.factories import unique
from tests.support import Identity

EnsureDevice = Callable[[str], str]
RegisterRecording = Callable[[str], catalog.File]


@pytest.fixture(scope="session")
def flightlog_client(grpc_target: str, api_key: str, org_id: str) -> Iterator[FlightlogClient]:
    """A client of the test server, acting as the test principal in its org."""
    client = FlightlogClient(grpc_target, api_key=api_key, org_id=org_id, timeout=30)
    yield client
    client.close()


@pytest.fixture
def ambient_client(flightlog_client: FlightlogClient) -> Iterator[FlightlogClient]:
    """Make ``flightlog_client`` the ambient client for one test (as the seed examples use)."""
    previous = set_default_client(flightlog_client)
    yield flightlog_client
    set_default_client(previous)


@pytest.fixture(scope="session")
def ensure_device(flightlog_client: FlightlogClient) -> EnsureDevice:
    """Register a device under a fixed ID unless it exists already; returns the ID."""

    def ensure(device_id: str) -> str:
        # A device registered by an earlier test of this run is all we need.
        catalog.create_device(device_id, name=device_id, exist_ok=True, client=flightlog_client)
        return device_id

    return ensure


@pytest.fixture(scope="session")
def recordings_dataset(flightlog_client: FlightlogClient) -> catalog.Dataset:
    """A dataset that holds the shared recordings registered by tests."""
    return catalog.create_dataset(unique("shared-recordings"), client=flightlog_client)


@pytest.fixture(scope="session")
def register_shared_recording(
    flightlog_client: FlightlogClient, recordings_dataset: catalog.Dataset
) -> RegisterRecording:
    """Register one of the shared recordings (by file name) in ``recordings_dataset`` once."""

    def register(file_name: str) -> catalog.File:
        summary = read_recording(BY_NAME[file_name].path)
        ingested = register_recording(
            summary, recordings_dataset.dataset_id, client=flightlog_client
        )
        return ingested.file

    return register


@pytest.fixture
def fresh_dataset(flightlog_client: FlightlogClient) -> catalog.Dataset:
    """An empty dataset for one test."""
    return catalog.create_dataset(unique("dataset"), client=flightlog_client)


@pytest.fixture
def cli_env(
    monkeypatch: pytest.MonkeyPatch, grpc_target: str, api_key: str, org_id: str
) -> dict[str, str]:
    """Point the ``flightlog`` command at the test server through its environment."""
    env = {
        "FLIGHTLOG_ENDPOINT": grpc_target,
        "FLIGHTLOG_API_KEY": api_key,
        "FLIGHTLOG_ORG_ID": org_id,
    }
    for name in (
        "FLIGHTLOG_TIMEOUT",
        "FLIGHTLOG_TLS",
        "FLIGHTLOG_TLS_CA",
        "FLIGHTLOG_TLS_CERT",
        "FLIGHTLOG_TLS_KEY",
    ):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


@pytest.fixture
def refused_endpoint() -> str:
    """``127.0.0.1:PORT`` of a port nobody listens on: connections are refused."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"127.0.0.1:{port}"


@pytest.fixture
def silent_endpoint() -> Iterator[str]:
    """``127.0.0.1:PORT`` of a server that accepts connections and never says a word, as a
    stuck server (or one behind a black hole) does: only a deadline ends a call to it."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []

    def accept() -> None:
        with contextlib.suppress(OSError):  # the listener is closed at teardown
            while True:
                accepted.append(listener.accept()[0])

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"127.0.0.1:{listener.getsockname()[1]}"
    listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept()
    listener.close()
    for connection in accepted:
        connection.close()
    thread.join(5)


@pytest.fixture(scope="session")
def other_flightlog_client(grpc_target: str, other_identity: Identity) -> Iterator[FlightlogClient]:
    """A client acting as another org's principal, for tenant-isolation tests."""
    client = FlightlogClient(
        grpc_target, api_key=other_identity.api_key, org_id=other_identity.org_id, timeout=30
    )
    yield client
    client.close()
