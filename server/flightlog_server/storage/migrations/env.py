"""Alembic environment: runs the migrations synchronously on psycopg 3.

Configured by ``flightlog_server.storage.migrate.alembic_config``; there is no ``alembic.ini``,
and no ``fileConfig``: Alembic's log lines go through the process's logging, one JSON object per
line like every other (``flightlog_server.log_setup``).
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import MetaData, create_engine, pool, text
from sqlalchemy.engine import Connection

config = context.config

# Concurrent `migrate` runs (several servers starting at once) take turns on this advisory lock,
# held to the end of the migration transaction; the number is arbitrary but fixed.
_MIGRATION_LOCK_ID = 0x666C69676874  # "flight"


def _target_metadata() -> MetaData | None:
    """The models' metadata, for ``--autogenerate`` and the models/migrations agreement test.

    Imported here, not at the top of the module, so that only a run of Alembic loads the models.
    Until the models module exists, the (empty) migrations still run, with no target metadata.
    """
    try:
        from flightlog_server.storage.models import Base
    except ModuleNotFoundError as exc:
        if exc.name != "flightlog_server.storage.models":
            raise
        return None
    metadata: MetaData = Base.metadata
    return metadata


def _url() -> str:
    url = config.get_main_option("sqlalchemy.url")
    if not url:
        raise RuntimeError("alembic: no sqlalchemy.url; build the config with alembic_config(url)")
    return url


def _run_on(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=_target_metadata(),
        compare_type=True,
        compare_server_default=True,
    )
    with context.begin_transaction():
        connection.execute(text("SELECT pg_advisory_xact_lock(:id)"), {"id": _MIGRATION_LOCK_ID})
        context.run_migrations()


def run_migrations_offline() -> None:
    """Write the SQL to stdout (``alembic upgrade --sql``) instead of running it."""
    context.configure(
        url=_url(),
        target_metadata=_target_metadata(),
        literal_binds=True,
        dialect_opts={"paramstyle": "named"},
    )
    with context.begin_transaction():
        context.run_migrations()


def run_migrations_online() -> None:
    """Run the migrations on the caller's connection, or on a new one to ``sqlalchemy.url``."""
    connection = config.attributes.get("connection")
    if isinstance(connection, Connection):
        _run_on(connection)
        return
    engine = create_engine(_url(), poolclass=pool.NullPool)
    try:
        with engine.connect() as new_connection:
            _run_on(new_connection)
    finally:
        engine.dispose()


if context.is_offline_mode():
    run_migrations_offline()
else:
    run_migrations_online()
