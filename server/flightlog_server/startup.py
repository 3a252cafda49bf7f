"""Start-up: what the server checks, and waits for, before it serves.

* **One server per port.** The listening address must be free. gRPC alone would not say so:
  with SO_REUSEPORT (which it sets unless told not to) a second server shares the port and
  silently takes part of the traffic, and when a name such as ``localhost`` resolves to several
  addresses it listens on those that are free and carries on. So every address the bind resolves
  to is probed first, and a busy one is a one-line start-up error. ``--workers N`` shares a port
  on purpose: the parent process probes it once, then its workers bind it with SO_REUSEPORT.
* **A database that is not up yet.** Orchestrators start services in any order, so the server
  listens at once (health NOT_SERVING, calls UNAVAILABLE) and waits for PostgreSQL, retrying with
  a backoff capped at a second. It logs one line when it starts waiting and a reminder every
  minute, not a line per attempt.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time

from sqlalchemy import text

from flightlog_server.domain.errors import DatabaseUnavailable
from flightlog_server.storage.database import Database, classify

__all__ = ["StartupError", "ensure_address_free", "unreachable_reason", "wait_for_database"]

log = logging.getLogger("flightlog.startup")

FIRST_RETRY_S = 0.05
MAX_RETRY_S = 1.0
REMINDER_EVERY_S = 60.0


class StartupError(Exception):
    """The server cannot start; the message says why, in one line."""


def _host_and_port(address: str) -> tuple[str, int] | None:
    """``host:port`` or ``[v6]:port`` split; None for forms only gRPC knows (``unix:...``)."""
    host, sep, port = address.rpartition(":")
    if not sep or not port.isdigit():
        return None
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def _shown(sockaddr: tuple[object, ...]) -> str:
    host, port = str(sockaddr[0]), sockaddr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def ensure_address_free(address: str) -> None:
    """Raises :class:`StartupError` unless every address ``address`` resolves to can be bound.

    An address the machine does not have (``::1`` without IPv6) is skipped, as gRPC skips it.
    Port 0 (any free port) is always free.
    """
    parts = _host_and_port(address)
    if parts is None or parts[1] == 0:
        return
    host, port = parts
    try:
        resolved = socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )
    except socket.gaierror as e:
        raise StartupError(
            f"cannot listen on {address}: cannot resolve {host!r} ({e.strerror})"
        ) from None
    for family, kind, proto, _, sockaddr in resolved:
        with socket.socket(family, kind, proto) as probe:
            # As gRPC's own listeners do, so that connections of a server that has just stopped
            # (TIME_WAIT) do not count; a socket that listens on the address still does.
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind(sockaddr)
            except OSError as e:
                if e.errno == errno.EADDRNOTAVAIL:
                    continue
                shown = _shown(sockaddr)
                which = "the address" if shown == address else shown
                if e.errno == errno.EADDRINUSE:
                    raise StartupError(
                        f"cannot listen on {address}: {which} is already in use "
                        "(another Flightlog server?)"
                    ) from None
                raise StartupError(f"cannot listen on {address}: {which}: {e.strerror}") from None


def unreachable_reason(exc: BaseException) -> str:
    """Why a connection to PostgreSQL failed, in a few words ("connection refused").

    The driver's message names the server and adds hints over several lines; the cause is the
    last part of its first line (``...port 5432 failed: FATAL:  database "x" does not exist``).
    """
    cause = getattr(exc, "orig", None) or exc
    lines = str(cause).strip().splitlines()
    if not lines:
        return type(cause).__name__
    reason = lines[0].rsplit(" failed: ", 1)[-1].removeprefix("FATAL:").strip()
    if reason[:1].isupper() and reason[1:2].islower():
        reason = reason[0].lower() + reason[1:]  # "Connection refused" reads as a clause
    return reason[:200]


async def _probe(database: Database) -> None:
    async with database.engine.connect() as connection:
        await connection.execute(text("SELECT 1"))


async def wait_for_database(database: Database, where: str) -> None:
    """Returns once the database answers; until then retries, logging as the module says.

    ``where`` names the database in the log (``host:port/name``, never the credentials). Errors
    that do not mean "cannot be reached" (a bug) are raised.
    """
    started = time.monotonic()
    delay = FIRST_RETRY_S
    remind_at: float | None = None
    while True:
        try:
            await _probe(database)
        except Exception as exc:
            if not isinstance(classify(exc), DatabaseUnavailable):
                raise
            now = time.monotonic()
            if remind_at is None:
                log.warning(
                    "waiting for the database at %s (%s); retrying every %g s until it answers",
                    where,
                    unreachable_reason(exc),
                    MAX_RETRY_S,
                )
                remind_at = now + REMINDER_EVERY_S
            elif now >= remind_at:
                log.warning(
                    "still waiting for the database at %s after %.0f s (%s)",
                    where,
                    now - started,
                    unreachable_reason(exc),
                )
                remind_at = now + REMINDER_EVERY_S
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_S)
        else:
            if remind_at is not None:
                log.info(
                    "the database at %s answered after %.1f s", where, time.monotonic() - started
                )
            return
