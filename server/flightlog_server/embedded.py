"""An embedded PostgreSQL server for development and tests (the ``embedded`` extra, pgserver).

``make run`` keeps its data in ``.data/pg`` of the project and reuses it across starts; the tests
use a temporary folder. The server listens on a Unix socket in the data folder only, so it never
takes a TCP port. When several processes open the same folder they share one server, which is
stopped when the last of them calls :meth:`EmbeddedPostgres.stop` (or exits).
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING

from flightlog_server.storage.urls import libpq_conninfo, sqlalchemy_url, with_database

if TYPE_CHECKING:
    from pgserver.postgres_server import PostgresServer

__all__ = [
    "DEFAULT_DATA_DIR",
    "EmbeddedPostgres",
    "EmbeddedPostgresUnavailable",
    "start_embedded_postgres",
]

DEFAULT_DATA_DIR = Path(".data") / "pg"
"""Where ``make run`` keeps the embedded database, relative to the project folder."""

_log = logging.getLogger(__name__)


class EmbeddedPostgresUnavailable(RuntimeError):
    """The embedded PostgreSQL cannot be used: the ``embedded`` extra is not installed."""


class EmbeddedPostgres:
    """A running embedded PostgreSQL server. Create it with :func:`start_embedded_postgres`."""

    def __init__(self, server: PostgresServer, data_dir: Path) -> None:
        self._server = server
        self._data_dir = data_dir
        self._stopped = False

    @property
    def data_dir(self) -> Path:
        """The server's data folder (``PGDATA``)."""
        return self._data_dir

    @property
    def libpq_url(self) -> str:
        """The ``postgresql://`` URL of the ``postgres`` database, for psycopg and ``psql``."""
        return self._server.get_uri()

    @property
    def url(self) -> str:
        """The SQLAlchemy URL (``postgresql+psycopg://``) of the ``postgres`` database."""
        return sqlalchemy_url(self.libpq_url)

    def database_url(self, database: str) -> str:
        """The SQLAlchemy URL of another database on this server."""
        return with_database(self.libpq_url, database)

    def create_database(self, database: str) -> str:
        """Create ``database`` unless it exists, and return its SQLAlchemy URL."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(libpq_conninfo(self.libpq_url), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
            ).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))
        return self.database_url(database)

    def stop(self) -> None:
        """Let go of the server; it stops when no other process still uses it. Idempotent."""
        if self._stopped:
            return
        self._stopped = True
        self._server.cleanup()
        _log.info("embedded PostgreSQL in %s released", self._data_dir)

    def __enter__(self) -> EmbeddedPostgres:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def start_embedded_postgres(data_dir: Path = DEFAULT_DATA_DIR) -> EmbeddedPostgres:
    """Start (or join) the embedded PostgreSQL server whose data lives in ``data_dir``.

    The folder is created (with its parents) and initialised on first use, and reused after:
    the data survives restarts. Raises :class:`EmbeddedPostgresUnavailable` when pgserver (the
    ``embedded`` extra) is not installed.
    """
    try:
        with warnings.catch_warnings():
            # pgserver looks up a runtime folder when imported; platformdirs warns that
            # XDG_RUNTIME_DIR is unset (usual on servers and in CI) and falls back to /tmp.
            warnings.simplefilter("ignore")
            from pgserver.postgres_server import get_server
    except ModuleNotFoundError as exc:
        if exc.name != "pgserver":
            raise
        raise EmbeddedPostgresUnavailable(
            "the embedded PostgreSQL needs pgserver: pip install 'flightlog[embedded]' "
            "(or set DATABASE_URL to use a running PostgreSQL server)"
        ) from exc

    data_dir = data_dir.expanduser().resolve()
    data_dir.parent.mkdir(parents=True, exist_ok=True)
    fresh = not (data_dir / "PG_VERSION").exists()
    _log.info(
        "starting the embedded PostgreSQL in %s%s",
        data_dir,
        " (a new cluster: initdb runs first, a few seconds)" if fresh else "",
    )
    # pgserver runs initdb and pg_ctl with their output captured, and logs it (at INFO, which
    # configure_logging keeps for --log-level DEBUG); the server itself logs to a file.
    server = get_server(data_dir, cleanup_mode="stop")
    _log.info("embedded PostgreSQL ready; its log is %s", data_dir / "log")
    return EmbeddedPostgres(server, data_dir)
