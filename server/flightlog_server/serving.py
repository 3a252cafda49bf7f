"""Running the server: one process, or several worker processes sharing the port.

A process listens at once and serves once its database answers and its schema is ready
(``FlightlogServer.start``); SIGTERM/SIGINT stop it at any point, exit code 0. A start-up failure
(a busy port, an old schema with ``--no-migrate``) is one log line at level ERROR and exit code 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from flightlog_server.app import FlightlogServer, Prepare, ServerSettings
from flightlog_server.log_setup import configure_logging
from flightlog_server.startup import StartupError, ensure_address_free

log = logging.getLogger("flightlog.main")

OUTDATED_SCHEMA = (
    "the database schema is not up to date; run 'python -m flightlog_server migrate' "
    "(or 'make migrate') first"
)


def schema_step(url: str, *, migrate: bool) -> Prepare:
    """Start-up work on the schema: migrate it (under the migrations' advisory lock, so several
    servers may start at once), or only check that it is current."""

    async def prepare() -> None:
        from flightlog_server.storage.migrate import is_up_to_date, upgrade

        # Alembic is synchronous: in a thread, so that the loop keeps answering health checks.
        if migrate:
            log.info("migrating the database to the latest schema")
            await asyncio.to_thread(upgrade, url)
        elif not await asyncio.to_thread(is_up_to_date, url):
            raise StartupError(OUTDATED_SCHEMA)

    return prepare


async def serve(
    settings: ServerSettings,
    prepare: Prepare | None = None,
    on_ready: Callable[[int], None] | None = None,
) -> int:
    """Serves until SIGTERM/SIGINT and returns the exit code; ``on_ready(port)`` runs once the
    server serves."""
    try:
        server = FlightlogServer(settings)
    except StartupError as e:
        log.error("%s", e)
        return 1
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    starting = asyncio.create_task(server.start(prepare))
    stopping = asyncio.create_task(stop.wait())
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    code = 0
    if not starting.done():
        log.info("stopping before serving")
        starting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await starting
    elif isinstance(starting.exception(), StartupError):
        log.error("%s", starting.exception())
        code = 1
    elif starting.exception() is not None:
        log.error("the server could not start", exc_info=starting.exception())
        code = 1
    else:
        if on_ready is not None:
            on_ready(server.port)
        await stopping
        log.info("stopping: letting in-flight calls finish (grace %.0f s)", settings.grace_seconds)
    stopping.cancel()
    await server.stop()
    log.info("stopped")
    return code


def _worker(settings: ServerSettings, index: int, migrate: bool) -> None:
    configure_logging(os.environ.get("FLIGHTLOG_LOG_LEVEL"))  # set by main() for the workers
    if settings.metrics_port:
        settings = replace(settings, metrics_port=settings.metrics_port + index)
    sys.exit(asyncio.run(serve(settings, schema_step(settings.database.url, migrate=migrate))))


def run_workers(settings: ServerSettings, workers: int, *, migrate: bool) -> int:
    """Serves in this process, or in ``workers`` processes sharing the port (SO_REUSEPORT), and
    returns the exit code. ``migrate``: migrate the schema on start, else require it current.

    Each worker has its own event loop and connection pool, and starts as a single server does
    (each migrates: the migrations take turns on an advisory lock). SIGTERM/SIGINT reach all of
    them (they are forwarded) and each drains its calls within the grace period. When a worker
    fails, the others are stopped: the server fails as a whole rather than serve with fewer.
    """
    if workers <= 1:
        return asyncio.run(serve(settings, schema_step(settings.database.url, migrate=migrate)))
    if settings.bind.endswith(":0"):
        sys.exit("error: --workers needs a fixed port in --bind")
    try:
        ensure_address_free(settings.bind)  # the workers set SO_REUSEPORT: check for them
    except StartupError as e:
        log.error("%s", e)
        return 1
    context = multiprocessing.get_context("spawn")
    shared = replace(settings, reuse_port=True)
    processes = [
        context.Process(target=_worker, args=(shared, i, migrate), name=f"flightlog-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object = None) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    failed: list[str] = []
    running = list(processes)
    while running:
        ended = multiprocessing.connection.wait([p.sentinel for p in running])
        for process in [p for p in running if p.sentinel in ended]:
            process.join()
            running.remove(process)
            if process.exitcode != 0:
                if not failed and running:
                    log.error(
                        "%s exited with code %s; stopping the others",
                        process.name,
                        process.exitcode,
                    )
                    forward(signal.SIGTERM)
                failed.append(process.name)
    if failed:
        log.error("workers exited with an error: %s", ", ".join(failed))
        return 1
    return 0
