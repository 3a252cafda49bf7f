"""Running the server: one process, or several worker processes sharing the port."""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import signal
import sys
from collections.abc import Callable
from dataclasses import replace

from flightlog_server.app import FlightlogServer, ServerSettings
from flightlog_server.log_setup import configure_logging

log = logging.getLogger("flightlog.main")


async def _serve(settings: ServerSettings, on_started: Callable[[int], None] | None = None) -> None:
    server = FlightlogServer(settings)
    await server.start()
    if on_started is not None:
        on_started(server.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("stopping: letting in-flight calls finish (grace %.0f s)", settings.grace_seconds)
    await server.stop()
    log.info("stopped")


def _worker(settings: ServerSettings, index: int) -> None:
    configure_logging(os.environ.get("FLIGHTLOG_LOG_LEVEL"))  # set by main() for the workers
    if settings.metrics_port:
        settings = replace(settings, metrics_port=settings.metrics_port + index)
    asyncio.run(_serve(settings))


def run_workers(
    settings: ServerSettings, workers: int, on_started: Callable[[int], None] | None = None
) -> int:
    """Serves in this process, or in ``workers`` processes sharing the port (SO_REUSEPORT).

    Each worker has its own event loop and connection pool; SIGTERM/SIGINT reach all of them
    (they are forwarded) and each drains its calls within the grace period.
    """
    if workers <= 1:
        asyncio.run(_serve(settings, on_started))
        return 0
    if settings.bind.endswith(":0"):
        sys.exit("error: --workers needs a fixed port in --bind")
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=_worker, args=(settings, i), name=f"flightlog-worker-{i}")
        for i in range(workers)
    ]
    for process in processes:
        process.start()

    def forward(signum: int, _frame: object) -> None:
        for process in processes:
            if process.pid is not None and process.is_alive():
                os.kill(process.pid, signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    if on_started is not None:
        on_started(int(settings.bind.rsplit(":", 1)[1]))
    for process in processes:
        process.join()
    failed = [p.name for p in processes if p.exitcode != 0]
    if failed:
        log.error("workers exited with an error: %s", ", ".join(failed))
        return 1
    return 0
