"""Alembic migrations, configured in code: there is no ``alembic.ini``.

The schema is only ever changed by the revisions under ``migrations/versions/``; the tests apply
them with :func:`upgrade` to a real PostgreSQL, exactly as ``flightlog-server migrate`` does.

For the Alembic commands themselves (new revisions, history, ...), run this module; it takes
Alembic's usual arguments and the database from ``DATABASE_URL``::

    DATABASE_URL=postgresql://postgres@127.0.0.1:5432/flightlog \\
        python -m flightlog_server.storage.migrate revision --autogenerate -m "add sessions"
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path

from alembic import command
from alembic.config import CommandLine, Config

from flightlog_server.log_setup import configure_logging
from flightlog_server.storage.urls import sqlalchemy_url

__all__ = ["MIGRATIONS_DIR", "alembic_config", "downgrade", "is_up_to_date", "upgrade"]

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


def alembic_config(url: str) -> Config:
    """Return the Alembic configuration for the database at ``url`` (any PostgreSQL URL form).

    ``env.py`` reads the URL back from the ``sqlalchemy.url`` option. A caller that already holds
    a connection may put it in ``config.attributes["connection"]``; the migrations then run on it,
    inside the caller's transaction.
    """
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    # The option values go through configparser interpolation, where "%" is special: a URL with
    # percent-encoded characters (a password, a socket path) must have them doubled.
    config.set_main_option("sqlalchemy.url", sqlalchemy_url(url).replace("%", "%%"))
    config.set_main_option("path_separator", "os")
    # Revision files sort by creation date in a directory listing.
    config.set_main_option(
        "file_template",
        "%%(year)d_%%(month).2d_%%(day).2d_%%(hour).2d%%(minute).2d_%%(rev)s_%%(slug)s",
    )
    config.set_main_option("truncate_slug_length", "40")
    config.set_main_option("timezone", "UTC")
    # New revisions come out lint-clean: ruff (the dev extra) fixes and formats them.
    hooks = "post_write_hooks"
    config.set_section_option(hooks, "hooks", "ruff_fix, ruff_format")
    for hook, options in (("ruff_fix", "check --fix --quiet"), ("ruff_format", "format --quiet")):
        config.set_section_option(hooks, f"{hook}.type", "module")
        config.set_section_option(hooks, f"{hook}.module", "ruff")
        config.set_section_option(hooks, f"{hook}.options", f"{options} REVISION_SCRIPT_FILENAME")
    return config


def upgrade(url: str, revision: str = "head") -> None:
    """Migrate the database at ``url`` up to ``revision`` (the newest by default)."""
    command.upgrade(alembic_config(url), revision)


def downgrade(url: str, revision: str) -> None:
    """Migrate the database at ``url`` down to ``revision`` (``"base"`` for an empty schema)."""
    command.downgrade(alembic_config(url), revision)


def is_up_to_date(url: str) -> bool:
    """True when the database at ``url`` is at the newest revision."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory
    from sqlalchemy import create_engine

    heads = set(ScriptDirectory.from_config(alembic_config(url)).get_heads())
    engine = create_engine(sqlalchemy_url(url))
    try:
        with engine.connect() as connection:
            current = set(MigrationContext.configure(connection).get_current_heads())
    finally:
        engine.dispose()
    return current == heads


def main(argv: Sequence[str] | None = None) -> int:
    """Run an Alembic command (``alembic --help`` lists them) against ``DATABASE_URL``."""
    url = os.environ.get("DATABASE_URL")
    if not url:
        print(
            "DATABASE_URL is not set (e.g. postgresql://postgres@127.0.0.1:5432/flightlog).",
            file=sys.stderr,
        )
        return 2
    # Alembic reports what it does (revisions applied, changes detected) through logging.
    configure_logging(os.environ.get("FLIGHTLOG_LOG_LEVEL"))
    cli = CommandLine(prog="python -m flightlog_server.storage.migrate")
    options = cli.parser.parse_args(argv)
    if not hasattr(options, "cmd"):
        cli.parser.print_help()
        return 2
    cli.run_cmd(alembic_config(url), options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
