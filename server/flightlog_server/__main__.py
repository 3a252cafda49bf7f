"""``python -m flightlog_server`` (also ``flightlog-server``): serve, develop, migrate, administer.

Every option also reads an environment variable (shown in ``--help``); flags win.
"""

from __future__ import annotations

import os

# gRPC's core library writes its own log lines on stderr, in plain text, which would break the
# one-JSON-object-per-line stream (log_setup). It reads these settings when it is imported:
# hence here, before any import of it; the environment still wins.
# - Its fork handlers are for children that go on using gRPC, which ours never do (workers are
#   spawned, PostgreSQL's programs exec at once); left on, they log a line at every fork made
#   while gRPC's threads are busy, and pgserver forks initdb and pg_ctl when run as root.
# - Below ERROR it logs events a client can cause at will, such as every failed TLS handshake.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

import argparse
import asyncio
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from flightlog_server.app import ServerSettings, TlsSettings
from flightlog_server.log_setup import configure_logging
from flightlog_server.serving import run_workers, schema_step, serve
from flightlog_server.startup import StartupError, ensure_address_free, unreachable_reason
from flightlog_server.storage.database import Database, DatabaseSettings, classify
from flightlog_server.storage.urls import location

log = logging.getLogger("flightlog.main")
T = TypeVar("T")

DATA_DIR = Path(".data")


def _env(name: str, default: str | None = None) -> str | None:
    return os.environ.get(name, default)


DATABASE_URL_HELP = "PostgreSQL URL, e.g. postgresql://user@host:5432/flightlog (DATABASE_URL)"


def _add_server_options(parser: argparse.ArgumentParser, *, workers: bool) -> None:
    parser.add_argument(
        "--bind",
        default=_env("FLIGHTLOG_BIND", "localhost:50051"),
        help="address to listen on; a port another process listens on is a start-up error "
        "(FLIGHTLOG_BIND; default localhost:50051)",
    )
    parser.add_argument(
        "--pool-size",
        type=int,
        default=int(_env("FLIGHTLOG_DB_POOL_SIZE", "10") or 10),
        help="database connections per process (FLIGHTLOG_DB_POOL_SIZE; default 10)",
    )
    parser.add_argument(
        "--log-level",
        type=str.upper,
        choices=("DEBUG", "INFO", "WARNING", "ERROR"),
        default=_env("FLIGHTLOG_LOG_LEVEL", "INFO"),
        help="DEBUG, INFO, WARNING or ERROR: JSON lines on stderr (FLIGHTLOG_LOG_LEVEL; "
        "default INFO)",
    )
    parser.add_argument(
        "--auth-cache-seconds",
        type=float,
        default=float(_env("FLIGHTLOG_AUTH_CACHE_SECONDS", "5") or 5),
        help="how long a checked API key is trusted before it is checked again; a revoked key "
        "is refused within this time (FLIGHTLOG_AUTH_CACHE_SECONDS; default 5, 0 disables)",
    )
    parser.add_argument(
        "--grace-seconds",
        type=float,
        default=float(_env("FLIGHTLOG_GRACE_SECONDS", "10") or 10),
        help="on SIGTERM/SIGINT, how long in-flight calls may take to finish "
        "(FLIGHTLOG_GRACE_SECONDS; default 10)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        default=int(_env("FLIGHTLOG_METRICS_PORT", "-1") or -1),
        help="serve Prometheus metrics on 127.0.0.1:PORT/metrics; with --workers N, worker i "
        "uses PORT+i (FLIGHTLOG_METRICS_PORT; default off)",
    )
    parser.add_argument(
        "--change-retention-days",
        type=float,
        default=float(_env("FLIGHTLOG_CHANGE_RETENTION_DAYS", "7") or 7),
        help="how long WatchSessions can replay session changes; older ones are pruned hourly "
        "(FLIGHTLOG_CHANGE_RETENTION_DAYS; default 7, 0 keeps them forever)",
    )
    parser.add_argument(
        "--tls-cert",
        default=_env("FLIGHTLOG_TLS_CERT"),
        help="PEM certificate (FLIGHTLOG_TLS_CERT)",
    )
    parser.add_argument(
        "--tls-key", default=_env("FLIGHTLOG_TLS_KEY"), help="PEM private key (FLIGHTLOG_TLS_KEY)"
    )
    parser.add_argument(
        "--tls-client-ca",
        default=_env("FLIGHTLOG_TLS_CLIENT_CA"),
        help="PEM CA bundle; when set, clients must present a certificate it signed (mutual "
        "TLS) (FLIGHTLOG_TLS_CLIENT_CA)",
    )
    if workers:
        parser.add_argument(
            "--workers",
            type=int,
            default=int(_env("FLIGHTLOG_WORKERS", "1") or 1),
            help="server processes sharing the port; only then is SO_REUSEPORT set, and the "
            "kernel spreads connections over them (FLIGHTLOG_WORKERS; default 1)",
        )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="flightlog-server", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    serve = commands.add_parser(
        "serve",
        help="serve on DATABASE_URL: listens at once, waits for the database, migrates it, serves",
    )
    serve.add_argument(
        "--database-url", default=_env("DATABASE_URL"), help=f"{DATABASE_URL_HELP}; required"
    )
    serve.add_argument(
        "--no-migrate",
        action="store_true",
        help="refuse to start on an unmigrated database instead of migrating it",
    )
    _add_server_options(serve, workers=True)

    dev = commands.add_parser(
        "dev",
        help="development server: embedded PostgreSQL in .data/ unless DATABASE_URL is set, "
        "a dev org and API key, credentials in .data/dev.env",
    )
    dev.add_argument(
        "--database-url",
        default=_env("DATABASE_URL"),
        help=f"{DATABASE_URL_HELP}; default: the embedded PostgreSQL in .data/pg",
    )
    _add_server_options(dev, workers=False)

    migrate = commands.add_parser("migrate", help="apply the migrations to DATABASE_URL")
    migrate.add_argument(
        "--database-url", default=_env("DATABASE_URL"), help=f"{DATABASE_URL_HELP}; required"
    )

    admin = commands.add_parser("admin", help="manage orgs, principals and API keys")
    admin.add_argument(
        "--database-url", default=_env("DATABASE_URL"), help=f"{DATABASE_URL_HELP}; required"
    )
    actions = admin.add_subparsers(dest="action", required=True)
    create_org = actions.add_parser("create-org", help="create an org; prints its ID")
    create_org.add_argument("name", help="the org's name, unique")
    create_principal = actions.add_parser(
        "create-principal", help="create a principal (a user or a service account); prints its ID"
    )
    create_principal.add_argument("name", help="the principal's name, unique")
    create_principal.add_argument(
        "--kind",
        choices=("user", "service_account"),
        default="service_account",
        help="a person or a program (default service_account)",
    )
    add_member = actions.add_parser("add-member", help="make a principal a member of an org")
    add_member.add_argument("org_id", help="the org (og_...)")
    add_member.add_argument("principal_id", help="the principal (pr_...)")
    create_key = actions.add_parser(
        "create-api-key", help="create an API key; it is printed once and stored hashed"
    )
    create_key.add_argument("principal_id", help="the principal the key acts as (pr_...)")
    revoke_key = actions.add_parser("revoke-api-key", help="revoke an API key by its ID (ak_...)")
    revoke_key.add_argument("api_key_id", help="the key's ID, the part before the dot (ak_...)")
    reencode = actions.add_parser(
        "reencode-sessions",
        help="rewrite the session records an older version of the server encoded (online, in"
        " small batches, while servers serve); until then they are re-encoded where read",
    )
    reencode.add_argument(
        "--batch-size",
        type=int,
        default=500,
        help="sessions rewritten per transaction (default 500)",
    )
    return parser


def _require_url(args: argparse.Namespace) -> str:
    if not args.database_url:
        sys.exit("error: no database: set DATABASE_URL or pass --database-url")
    url: str = args.database_url
    return url


def _settings(args: argparse.Namespace, url: str) -> ServerSettings:
    tls = None
    if args.tls_cert or args.tls_key:
        if not (args.tls_cert and args.tls_key):
            sys.exit("error: TLS needs both --tls-cert and --tls-key")
        tls = TlsSettings(
            cert=Path(args.tls_cert),
            key=Path(args.tls_key),
            client_ca=Path(args.tls_client_ca) if args.tls_client_ca else None,
        )
    return ServerSettings(
        database=DatabaseSettings(url=url, pool_size=args.pool_size, max_overflow=args.pool_size),
        bind=args.bind,
        auth_cache_seconds=args.auth_cache_seconds,
        grace_seconds=args.grace_seconds,
        tls=tls,
        change_retention_days=args.change_retention_days,
        metrics_port=args.metrics_port if args.metrics_port >= 0 else None,
    )


def _with_database(url: str, work: Callable[[Any], Awaitable[T]]) -> T:
    async def run() -> T:
        database = Database(DatabaseSettings(url=url, pool_size=1))
        try:
            return await database.run(work)
        finally:
            await database.close()

    return asyncio.run(run())


def _admin(args: argparse.Namespace) -> int:
    from flightlog_server.storage.identity import IdentityRepository

    url = _require_url(args)
    if args.action == "reencode-sessions":
        return _reencode_sessions(url, args.batch_size)

    async def work(session: Any) -> str | None:
        repo = IdentityRepository(session)
        if args.action == "create-org":
            return await repo.create_org(args.name)
        if args.action == "create-principal":
            return await repo.create_principal(args.name, args.kind)
        if args.action == "add-member":
            await repo.add_member(args.org_id, args.principal_id)
            return None
        if args.action == "create-api-key":
            return await repo.create_api_key(args.principal_id)
        await repo.revoke_api_key(args.api_key_id)
        return None

    from flightlog_server.domain.errors import DomainError

    try:
        result = _with_database(url, work)
    except DomainError as e:
        print(f"error: {e.message}", file=sys.stderr)
        return 1
    if result is not None:
        print(result)
    return 0


def _reencode_sessions(url: str, batch_size: int) -> int:
    from rich.progress import Progress

    from flightlog_server.app import SESSION_RECORDS as record_format
    from flightlog_server.services.records import count_stale, reencode_sessions

    async def run() -> int:
        database = Database(DatabaseSettings(url=url, pool_size=2))
        try:
            stale = await count_stale(database, record_format)
            with Progress(transient=True) as progress:
                task = progress.add_task("re-encoding session records", total=stale)
                return await reencode_sessions(
                    database,
                    record_format,
                    batch_size=batch_size,
                    progress=lambda done: progress.update(task, completed=done),
                )
        finally:
            await database.close()

    done = asyncio.run(run())
    print(f"re-encoded {done} session records (encoding version {record_format.version})")
    return 0


def _migrate(url: str) -> int:
    """The ``migrate`` command: one attempt; a database that cannot be reached is one line."""
    from flightlog_server.storage.migrate import upgrade

    log.info("migrating the database to the latest schema")
    try:
        upgrade(url)
    except Exception as exc:
        if classify(exc) is None:
            raise
        log.error("cannot migrate the database at %s (%s)", location(url), unreachable_reason(exc))
        return 1
    return 0


def _dev(args: argparse.Namespace) -> int:
    from flightlog_server.dev import DevCredentials, bootstrap_dev_credentials

    try:
        # Before the embedded PostgreSQL starts: a second `make run` stops here, at once.
        ensure_address_free(args.bind)
    except StartupError as e:
        log.error("%s", e)
        return 1
    DATA_DIR.mkdir(exist_ok=True)
    embedded = None
    url = args.database_url
    if not url:
        from flightlog_server.embedded import start_embedded_postgres

        embedded = start_embedded_postgres(DATA_DIR / "pg")
        url = embedded.create_database("flightlog")
    try:
        settings = _settings(args, url)
        migrate = schema_step(url, migrate=True)
        credentials: DevCredentials | None = None

        async def prepare() -> None:
            nonlocal credentials
            await migrate()
            env_file = DATA_DIR / "dev.env"
            credentials = await bootstrap_dev_credentials(url, env_file, settings.bind)

        def announce(port: int) -> None:
            assert credentials is not None  # prepare() ran: the server serves
            print(credentials.banner(port), flush=True)

        return asyncio.run(serve(settings, prepare, announce))
    finally:
        if embedded is not None:
            embedded.stop()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    level = getattr(args, "log_level", None) or _env("FLIGHTLOG_LOG_LEVEL", "INFO") or "INFO"
    os.environ["FLIGHTLOG_LOG_LEVEL"] = level
    configure_logging(level)
    if args.command == "admin":
        return _admin(args)
    if args.command == "migrate":
        return _migrate(_require_url(args))
    if args.command == "dev":
        return _dev(args)
    url = _require_url(args)
    return run_workers(_settings(args, url), args.workers, migrate=not args.no_migrate)


if __name__ == "__main__":
    sys.exit(main())
