"""Start-up as orchestrators need it: the real server process, started as an operator would.

* **Before its database.** ``serve`` against a PostgreSQL that is down listens at once, reports
  NOT_SERVING, answers every RPC UNAVAILABLE (``DATABASE_UNAVAILABLE``), logs one "waiting" line
  (no traceback), and serves once the database answers, having migrated it. A stop signal while
  it waits ends it with exit code 0. ``dev`` behaves the same.
* **One server per port.** A second server on a busy port (``serve``, ``serve --workers 2`` or
  ``dev``) exits 1 at once with one line naming the port; the first keeps serving.
* **JSON logs only.** ``dev`` on a fresh data folder (initdb, migrations) writes nothing but JSON
  objects on stderr.

The PostgreSQL that is down is a private cluster the test starts itself (``PrivatePostgres``),
never the shared server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import message_factory

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server import startup
from flightlog_server.__main__ import build_parser
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.urls import with_database
from tests.ops.server_process import (
    EXIT_S,
    ServerProcess,
    flightlog_server,
    json_lines,
    loopback,
)
from tests.reliability.helpers import NOT_SERVING, SERVING, health, record
from tests.reliability.private_postgres import PrivatePostgres, free_port
from tests.reliability.rpc_cases import METHODS, invoke, method_name
from tests.support import Stubs, create_identity, failure

WAITING = "waiting for the database at "


def seconds_between(start: str, end: str) -> float:
    """Seconds between two log line times (``2026-11-27T09:21:01.449Z``)."""
    parse = datetime.datetime.fromisoformat
    return (parse(end) - parse(start)).total_seconds()


@pytest.fixture
def folder() -> Iterator[Path]:
    """An empty folder to run ``dev`` in (it keeps ``.data/`` in its working folder)."""
    path = Path(tempfile.mkdtemp(prefix="flightlog-startup-dev-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


# --- Starting before the database ----------------------------------------------------------------


def assert_every_rpc_is_refused_as_unavailable(target: str) -> None:
    stubs = Stubs(target, "ak_anything.secret", None)
    try:
        for method in METHODS:
            request = message_factory.GetMessageClass(method.input_type)()
            outcome = invoke(stubs, method, request, timeout=10)
            assert outcome.error is not None, method_name(method)
            refused = failure(outcome.error)
            assert (refused.code, refused.reason) == (
                grpc.StatusCode.UNAVAILABLE,
                "DATABASE_UNAVAILABLE",
            ), method_name(method)
    finally:
        stubs.close()


def test_serve_waits_for_a_database_that_is_down_then_migrates_it_and_serves(
    stopped_postgres: PrivatePostgres,
) -> None:
    url = stopped_postgres.url
    with flightlog_server("serve", "--database-url", url, bind=loopback()) as server:
        server.wait_for_line(WAITING)
        server.wait_for_health(NOT_SERVING)
        assert_every_rpc_is_refused_as_unavailable(server.target)

        stopped_postgres.start()
        answered = time.monotonic()
        server.wait_for_health(SERVING)
        served_after = time.monotonic() - answered

        who = create_identity(stopped_postgres.url, "startup")  # the schema is there: migrated
        stubs = Stubs(server.target, who.api_key, who.org_id)
        try:
            created = stubs.sessions.CreateSession(pb.CreateSessionRequest(name="after the wait"))
            assert created.session.name == "after the wait"
        finally:
            stubs.close()

        assert server.stop(signal.SIGTERM) == 0
        log = server.log()
        assert "Traceback" not in server.stderr
        waiting = [e for e in log if e["message"].startswith(WAITING)]
        assert len(waiting) == 1, server.stderr
        assert waiting[0]["level"] == "WARNING"
        assert "(connection refused)" in waiting[0]["message"]
        assert f"127.0.0.1:{stopped_postgres.port}/postgres" in waiting[0]["message"]
        assert any(m.startswith("Running upgrade") for m in server.messages()), "not migrated"
        # From the server's own log: from its first successful query to serving (migrating).
        answered_at, serving_at = (
            next(e["time"] for e in log if e["message"].startswith(prefix))
            for prefix in ("the database at ", "serving on port ")
        )
        record(
            "start before the database",
            f"{len(METHODS)} RPCs UNAVAILABLE (DATABASE_UNAVAILABLE) while it waited, 1 waiting "
            f"line, served (health SERVING) {served_after:.2f} s after PostgreSQL accepted "
            f"connections, of which {seconds_between(answered_at, serving_at):.2f} s migrating",
        )


@pytest.mark.parametrize(
    ("command", "sig", "database", "reason"),
    [
        ("serve", signal.SIGTERM, "refused", "(connection refused)"),
        ("serve", signal.SIGINT, "missing", "does not exist)"),
        ("dev", signal.SIGINT, "refused", "(connection refused)"),
    ],
)
def test_a_stop_signal_while_waiting_for_the_database_exits_zero(
    command: str,
    sig: signal.Signals,
    database: str,
    reason: str,
    admin_database_url: str,
    folder: Path,
) -> None:
    url = (
        f"postgresql://postgres@127.0.0.1:{free_port()}/flightlog"  # nothing listens there
        if database == "refused"
        else with_database(admin_database_url, "flightlog_startup_never_created")
    )
    with flightlog_server(command, "--database-url", url, bind=loopback(), cwd=folder) as server:
        server.wait_for_line(WAITING)
        server.wait_for_health(NOT_SERVING)
        signalled = time.monotonic()
        assert server.stop(sig) == 0
        exited = time.monotonic() - signalled
        assert "Traceback" not in server.stderr
        (waiting,) = [m for m in server.messages() if m.startswith(WAITING)]
        assert waiting.split("; ")[0].endswith(reason), waiting
        assert not (folder / ".data" / "dev.env").exists()
    record(f"{sig.name} while waiting ({command})", f"exit 0 after {exited:.2f} s")


async def test_a_long_wait_logs_a_reminder_now_and_then_not_a_line_per_attempt(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    # Retries every 50 ms, a reminder every 500 ms: about ten attempts per line.
    monkeypatch.setattr(startup, "MAX_RETRY_S", 0.05)
    monkeypatch.setattr(startup, "REMINDER_EVERY_S", 0.5)
    attempts = 0
    probe = startup._probe

    async def counted(database: Database) -> None:
        nonlocal attempts
        attempts += 1
        await probe(database)

    monkeypatch.setattr(startup, "_probe", counted)
    database = Database(DatabaseSettings(url=f"postgresql://postgres@127.0.0.1:{free_port()}/x"))
    waiting = asyncio.create_task(startup.wait_for_database(database, "127.0.0.1/x"))
    try:
        with caplog.at_level(logging.INFO, logger="flightlog.startup"):
            while sum("still waiting" in r.message for r in caplog.records) < 2:
                assert not waiting.done()
                await asyncio.sleep(0.02)  # polling a condition, not synchronising on time
    finally:
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting
        await database.close()
    lines = [r.message for r in caplog.records]
    assert len(lines) == 3, lines
    assert lines[0].startswith("waiting for the database at 127.0.0.1/x (connection refused)")
    assert all(line.startswith("still waiting for the database at ") for line in lines[1:])
    assert attempts > 2 * len(lines), f"{attempts} attempts for {len(lines)} lines"


def test_serve_no_migrate_refuses_an_old_schema_in_one_line_once_the_database_answers(
    create_database: Any,
) -> None:
    empty = create_database("flightlog_startup_empty")
    args = ["serve", "--no-migrate", "--database-url", empty]
    with flightlog_server(*args, bind=loopback()) as s:
        assert s.exit_code() == 1
        assert "Traceback" not in s.stderr
        assert s.messages("ERROR") == [
            "the database schema is not up to date; run 'python -m flightlog_server migrate' "
            "(or 'make migrate') first"
        ]


# --- One server per port -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_server(database_url: str) -> Iterator[ServerProcess]:
    """A server that holds its port while the tests try to start a second one on it."""
    with flightlog_server("serve", "--database-url", database_url, bind=loopback()) as server:
        server.wait_for_health(SERVING)
        yield server
        assert server.stop() == 0


@pytest.mark.parametrize(
    "second",
    [["serve"], ["serve", "--workers", "2"], ["dev"]],
    ids=["serve", "serve --workers 2", "dev"],
)
def test_a_second_server_on_a_busy_port_fails_at_once_naming_the_port(
    second: list[str], first_server: ServerProcess, database_url: str, folder: Path
) -> None:
    bind = first_server.target
    started = time.monotonic()
    with flightlog_server(*second, "--database-url", database_url, bind=bind, cwd=folder) as s:
        assert s.exit_code() == 1
        failed_after = time.monotonic() - started
        assert "Traceback" not in s.stderr
        assert s.messages("ERROR") == [
            f"cannot listen on {bind}: the address is already in use (another Flightlog server?)"
        ]
    assert not (folder / ".data" / "pg").exists(), "dev started its database first"
    assert health(first_server.target) == SERVING
    record(f"busy port ({' '.join(second)})", f"exit 1 after {failed_after:.2f} s (process start)")


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "0.0.0.0", "[::]", ""])
def test_every_address_a_bind_resolves_to_must_be_free(host: str) -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC's listeners do
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(startup.StartupError, match="is already in use"):
            startup.ensure_address_free(f"{host}:{port}")
    startup.ensure_address_free(f"{host}:{port}")  # free again once the listener is gone


def test_an_unknown_host_is_a_start_up_error_and_port_zero_is_always_free() -> None:
    with pytest.raises(startup.StartupError, match=r"cannot resolve 'nowhere\.invalid'"):
        startup.ensure_address_free("nowhere.invalid:50051")
    startup.ensure_address_free("127.0.0.1:0")


def test_a_name_that_resolves_to_a_busy_address_is_refused_too(database_url: str) -> None:
    # gRPC alone would listen on the addresses that are free (::1) and carry on.
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        args = ["serve", "--database-url", database_url]
        with flightlog_server(*args, bind=f"localhost:{port}") as server:
            assert server.exit_code() == 1
            assert server.messages("ERROR") == [
                f"cannot listen on localhost:{port}: 127.0.0.1:{port} is already in use "
                "(another Flightlog server?)"
            ]


# --- Logs -----------------------------------------------------------------------------------------


def test_dev_on_a_fresh_data_folder_writes_only_json_lines_on_stderr(folder: Path) -> None:
    # No DATABASE_URL: the embedded PostgreSQL, initialised in folder/.data/pg by initdb. No gRPC
    # settings: the server's own choices apply (gRPC logs in plain text at forks, for one).
    unset = ("DATABASE_URL", "GRPC_ENABLE_FORK_SUPPORT", "GRPC_VERBOSITY")
    environment = {k: v for k, v in os.environ.items() if k not in unset}
    bind = loopback()
    with flightlog_server("dev", bind=bind, cwd=folder, env=environment) as server:
        server.wait_for_health(SERVING)
        # The banner follows the first SERVING answer (the server prints it once start returns).
        server.wait_for_output(f"Flightlog is serving on {bind}")
        assert (folder / ".data" / "dev.env").exists()
        assert server.stop(signal.SIGINT) == 0
        log = server.log()
    messages = [e["message"] for e in log]
    assert any("a new cluster: initdb runs first" in m for m in messages), messages
    assert any(m.startswith("Running upgrade") for m in messages), messages
    assert not (folder / ".data" / "pg" / "postmaster.pid").exists(), "PostgreSQL still runs"
    record("make run logs", f"{len(log)} stderr lines on a first start (initdb), all JSON")


def test_warnings_and_uncaught_exceptions_are_json_lines_too() -> None:
    program = "\n".join(
        [
            "import threading, warnings",
            "from flightlog_server.log_setup import configure_logging",
            "configure_logging('INFO')",
            "warnings.warn('a library warns')",
            "def fail(): raise ValueError('in a thread')",
            "thread = threading.Thread(target=fail); thread.start(); thread.join()",
            "raise RuntimeError('nothing caught this')",
        ]
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=EXIT_S
    )
    assert result.returncode == 1
    log = json_lines(result.stderr)
    assert [e["level"] for e in log] == ["WARNING", "CRITICAL", "CRITICAL"]
    assert "UserWarning: a library warns" in log[0]["message"]
    assert log[1]["message"] == "uncaught exception in thread Thread-1 (fail): in a thread"
    assert "ValueError" in log[1]["exception"]
    assert log[2]["message"] == "uncaught exception: nothing caught this"
    assert "RuntimeError" in log[2]["exception"]


# --- The command line -----------------------------------------------------------------------------


def every_parser(parser: argparse.ArgumentParser) -> Iterator[argparse.ArgumentParser]:
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                yield from every_parser(child)


def test_every_command_and_argument_has_help_text() -> None:
    missing = []
    for parser in every_parser(build_parser()):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                commands = action._choices_actions
                missing += [f"{parser.prog} {c.dest}" for c in commands if not c.help]
            elif not action.help:
                missing.append(f"{parser.prog} {action.dest}")
    assert missing == []
