"""Fixtures shared by every test: a real PostgreSQL, with the schema built by the real migrations.

The server is the one in ``TEST_DATABASE_URL`` when it is set (CI sets it to the machine's
PostgreSQL, e.g. ``postgresql://postgres@127.0.0.1:5432/postgres``), else an embedded one
(pgserver) in a temporary folder. Either way each test run creates its own databases, named
``<prefix>_<random hex>``, and drops them when the run ends, so runs never see each other's data.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from alembic import command
from psycopg import sql

from flightlog_server.app import ServerSettings
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.migrate import alembic_config
from flightlog_server.storage.urls import libpq_conninfo, with_database
from tests.reliability.private_postgres import PrivatePostgres
from tests.rpc.factories import new_org_stubs
from tests.support import Identity, ServerThread, Stubs, create_identity

CreateDatabase = Callable[[str], str]
"""``create_database(prefix)``: create an empty database and return its SQLAlchemy URL."""

_DATABASE_PREFIX = re.compile(r"^[a-z_][a-z0-9_]{0,45}$")


@pytest.fixture(scope="session")
def admin_database_url() -> Iterator[str]:
    """A ``postgresql://`` URL with the right to create and drop databases."""
    url = os.environ.get("TEST_DATABASE_URL")
    if url:
        yield url
        return

    from flightlog_server.embedded import start_embedded_postgres

    # Not pytest's tmp_path: that one is kept after the run, and a data folder is large.
    root = Path(tempfile.mkdtemp(prefix="flightlog-test-"))
    try:
        with start_embedded_postgres(root / "pg") as server:
            yield server.libpq_url
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="session")
def create_database(admin_database_url: str) -> Iterator[CreateDatabase]:
    """Create fresh, empty databases (for tests that need their own, such as migration tests).

    Every database made through it is dropped at the end of the test run.
    """
    created: list[str] = []
    admin = libpq_conninfo(admin_database_url)

    def create(prefix: str) -> str:
        if not _DATABASE_PREFIX.match(prefix):
            raise ValueError(f"database prefix must match {_DATABASE_PREFIX.pattern}: {prefix!r}")
        name = f"{prefix}_{secrets.token_hex(6)}"
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        created.append(name)
        return with_database(admin_database_url, name)

    yield create

    with psycopg.connect(admin, autocommit=True) as conn:
        for name in reversed(created):
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )


@pytest.fixture(scope="session")
def database_url(create_database: CreateDatabase) -> str:
    """The SQLAlchemy URL (``postgresql+psycopg://``) of this run's database, fully migrated."""
    url = create_database("flightlog_test")
    command.upgrade(alembic_config(url), "head")
    return url


# --- A real server on a loopback port ------------------------------------------------------------


@pytest.fixture(scope="session")
def server(database_url: str) -> Iterator[ServerThread]:
    """A Flightlog server on 127.0.0.1 (a free port), on this run's database.

    The API-key cache is off so that revocation is visible at once.
    """
    settings = ServerSettings(
        database=DatabaseSettings(url=database_url, pool_size=10),
        bind="127.0.0.1:0",
        auth_cache_seconds=0,
        grace_seconds=1,
    )
    thread = ServerThread(settings)
    yield thread
    thread.stop()


@pytest.fixture(scope="session")
def grpc_target(server: ServerThread) -> str:
    return f"127.0.0.1:{server.port}"


@pytest.fixture(scope="session")
def identity(database_url: str) -> Identity:
    """A principal in exactly one org (org A)."""
    return create_identity(database_url, f"org-a-{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def other_identity(database_url: str) -> Identity:
    """A principal of another org (org B), for tenant-isolation tests."""
    return create_identity(database_url, f"org-b-{secrets.token_hex(4)}")


@pytest.fixture(scope="session")
def api_key(identity: Identity) -> str:
    return identity.api_key


@pytest.fixture(scope="session")
def org_id(identity: Identity) -> str:
    return identity.org_id


@pytest.fixture(scope="session")
def stubs(grpc_target: str, identity: Identity) -> Iterator[Stubs]:
    """Stubs acting as org A's principal (x-org-id sent)."""
    s = Stubs(grpc_target, identity.api_key, identity.org_id)
    yield s
    s.close()


@pytest.fixture(scope="session")
def other_stubs(grpc_target: str, other_identity: Identity) -> Iterator[Stubs]:
    """Stubs acting as org B's principal."""
    s = Stubs(grpc_target, other_identity.api_key, other_identity.org_id)
    yield s
    s.close()


@pytest.fixture
def fresh(database_url: str, grpc_target: str) -> Iterator[Stubs]:
    """Stubs of a new, empty org: its listings hold only what the test made."""
    stubs = new_org_stubs(database_url, grpc_target)
    yield stubs
    stubs.close()


# --- A PostgreSQL of the test's own, for tests that stop or start the database ------------------


@pytest.fixture
def stopped_postgres() -> Iterator[PrivatePostgres]:
    """A PostgreSQL cluster of the test's own (never the shared server), initialised but not
    started; destroyed when the test ends."""
    # Not pytest's tmp_path: its parent folders are private to root, and PostgreSQL runs as the
    # 'postgres' user when the tests run as root.
    root = Path(tempfile.mkdtemp(prefix="flightlog-private-"))
    try:
        cluster = PrivatePostgres(root)
        yield cluster
        cluster.destroy()
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def private_postgres(stopped_postgres: PrivatePostgres) -> PrivatePostgres:
    """A running PostgreSQL cluster of the test's own, which it may stop and restart."""
    stopped_postgres.start()
    return stopped_postgres


@pytest.fixture
def server_log() -> Iterator[list[logging.LogRecord]]:
    """Every record logged while the test runs, by any thread (the in-process servers'
    included): Flightlog's loggers from INFO, every other one (asyncio, grpc, SQLAlchemy) from
    its usual WARNING."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    flightlog = logging.getLogger("flightlog")
    level = flightlog.level
    flightlog.setLevel(logging.INFO)
    logging.getLogger().addHandler(handler)
    try:
        yield records
    finally:
        logging.getLogger().removeHandler(handler)
        flightlog.setLevel(level)
