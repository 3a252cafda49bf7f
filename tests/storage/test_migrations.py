"""Migrations are code under test: they apply, revert and re-apply, and agree with the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from flightlog_server.storage.migrate import downgrade, is_up_to_date, upgrade
from flightlog_server.storage.models import Base
from tests.conftest import CreateDatabase


def test_migrations_go_up_down_and_up_again(create_database: CreateDatabase) -> None:
    url = create_database("flightlog_migrations")
    upgrade(url)
    assert is_up_to_date(url)
    downgrade(url, "base")
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            assert set(inspect(connection).get_table_names()) <= {"alembic_version"}
    finally:
        engine.dispose()
    assert not is_up_to_date(url)
    upgrade(url)
    assert is_up_to_date(url)


def test_models_and_migrations_agree(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        with engine.connect() as connection:
            differences = compare_metadata(MigrationContext.configure(connection), Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
