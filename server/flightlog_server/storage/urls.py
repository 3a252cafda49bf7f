"""Database URLs: one place that turns what users write into what SQLAlchemy and psycopg take.

Users (``DATABASE_URL``, ``TEST_DATABASE_URL``, pgserver) write libpq URLs such as
``postgresql://user@host:5432/db`` or Heroku-style ``postgres://...``. SQLAlchemy needs the driver
named (``postgresql+psycopg://``, psycopg 3), and psycopg itself needs a libpq connection string.
"""

from __future__ import annotations

from typing import Any

from psycopg.conninfo import make_conninfo
from sqlalchemy.engine import URL, make_url

__all__ = ["libpq_conninfo", "location", "sqlalchemy_url", "with_database"]

_DRIVER = "postgresql+psycopg"
_ACCEPTED_SCHEMES = frozenset({"postgres", "postgresql", _DRIVER})


def _parse(url: str) -> URL:
    scheme, sep, rest = url.partition("://")
    if not sep or scheme.lower() not in _ACCEPTED_SCHEMES:
        # Only the scheme is shown: the rest of a URL may hold a password.
        shown = f"{scheme}://" if sep else "no scheme"
        raise ValueError(
            f"not a PostgreSQL URL ({shown}); expected postgresql://, postgres:// or {_DRIVER}://"
        )
    # SQLAlchemy does not know the "postgres" alias, so the scheme is replaced before parsing.
    return make_url(f"{_DRIVER}://{rest}")


def _render(url: URL) -> str:
    return url.render_as_string(hide_password=False)


def sqlalchemy_url(url: str) -> str:
    """Return ``url`` as a SQLAlchemy URL for psycopg 3 (``postgresql+psycopg://...``).

    Accepts ``postgresql://``, ``postgres://`` and ``postgresql+psycopg://`` URLs; anything else
    (another driver or database) is a ``ValueError``. Credentials, host (including a Unix socket
    folder given as ``?host=/path``), port, database and query options are kept.
    """
    return _render(_parse(url))


def with_database(url: str, database: str) -> str:
    """Return ``url`` (any accepted form) as a SQLAlchemy URL naming ``database`` instead."""
    return _render(_parse(url).set(database=database))


def location(url: str) -> str:
    """Where ``url`` points, for messages: ``host:port/database``, never the credentials.

    A Unix socket folder given as ``?host=/path`` stands for the host; parts the URL leaves to
    libpq's defaults are left out.
    """
    parsed = _parse(url)
    host = parsed.host or parsed.query.get("host") or ""
    if not isinstance(host, str):
        host = ",".join(host)
    port = f":{parsed.port}" if parsed.port else ""
    return f"{host}{port}/{parsed.database or ''}"


def libpq_conninfo(url: str) -> str:
    """Return ``url`` (any accepted form) as a libpq connection string for ``psycopg.connect``.

    Use it where the server talks to PostgreSQL without SQLAlchemy (``LISTEN``, admin work).
    """
    parsed = _parse(url)
    params: dict[str, Any] = {
        "user": parsed.username,
        "password": parsed.password,
        "host": parsed.host,
        "port": parsed.port,
        "dbname": parsed.database,
    }
    for key, value in parsed.query.items():
        # A repeated query option (a tuple) is a list of hosts or ports in libpq.
        params[key] = value if isinstance(value, str) else ",".join(value)
    return make_conninfo("", **{k: v for k, v in params.items() if v is not None})
