"""Wiring: the one place that builds the database, the servicers and the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import gc
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc import aio
from grpc_health.v1 import _async as health_async
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from flightlog.v1 import (
    catalog_service_pb2,
    catalog_service_pb2_grpc,
    custom_field_service_pb2,
    custom_field_service_pb2_grpc,
    session_service_pb2,
    session_service_pb2_grpc,
)
from flightlog_server.domain import rules
from flightlog_server.domain.errors import DatabaseUnavailable, DomainError
from flightlog_server.metrics import Metrics
from flightlog_server.rpc import convert, preserialized
from flightlog_server.rpc.calls import CallInterceptor, CallObserver
from flightlog_server.rpc.catalog import CatalogServicer
from flightlog_server.rpc.custom_fields import CustomFieldServicer
from flightlog_server.rpc.pagination import TokenKeys
from flightlog_server.rpc.readiness import ReadinessGate
from flightlog_server.rpc.sessions import SessionServicer
from flightlog_server.services.aggregation import Aggregations
from flightlog_server.services.catalog import Catalog
from flightlog_server.services.change_feed import close_change_feed
from flightlog_server.services.custom_fields import CustomFields
from flightlog_server.services.identity import Authenticator
from flightlog_server.services.records import count_stale
from flightlog_server.services.session_listing import SessionListings
from flightlog_server.services.session_parts import SessionParts
from flightlog_server.services.sessions import Sessions
from flightlog_server.services.unit_of_work import RecordFormat
from flightlog_server.startup import StartupError, ensure_address_free, wait_for_database
from flightlog_server.storage.changes import close_change_notifier, prune_changes
from flightlog_server.storage.database import Database, DatabaseSettings, classify
from flightlog_server.storage.page_token_keys import page_token_keys
from flightlog_server.storage.urls import location

log = logging.getLogger("flightlog.server")

# gRPC refuses larger requests itself, before they reach the interceptor, which answers those
# over ``rules.MAX_REQUEST_BYTES`` with RESOURCE_EXHAUSTED and its details without parsing them:
# holding a few MiB to say so costs little, and past this gRPC's own status (no details) will do.
MAX_RECEIVE_BYTES = 4 * rules.MAX_REQUEST_BYTES
# Responses are bounded by the limits on what is stored (ListFileTopics' batches are the largest:
# 100,000 extents of one file, about 2.2 MiB); this only guards against a mistake.
MAX_SEND_BYTES = 16 * 1024 * 1024
# How this server encodes sessions' stored records (the API's serialized Session).
SESSION_RECORDS = RecordFormat(convert.RECORD_VERSION, convert.encode_session)
SERVICE_NAMES = (
    session_service_pb2.DESCRIPTOR.services_by_name["SessionService"].full_name,
    catalog_service_pb2.DESCRIPTOR.services_by_name["CatalogService"].full_name,
    custom_field_service_pb2.DESCRIPTOR.services_by_name["CustomFieldService"].full_name,
)


@dataclass(frozen=True)
class TlsSettings:
    """Server TLS; with ``client_ca`` set, clients must present a certificate it signed."""

    cert: Path
    key: Path
    client_ca: Path | None = None


@dataclass(frozen=True)
class ServerSettings:
    database: DatabaseSettings
    bind: str = "localhost:50051"
    auth_cache_seconds: float = 5.0
    grace_seconds: float = 10.0
    health_interval_seconds: float = 1.0
    tls: TlsSettings | None = None
    # Prometheus metrics on this port of 127.0.0.1 (0 picks a free one); None turns them off.
    metrics_port: int | None = None
    metrics_address: str = "127.0.0.1"
    # WatchSessions history older than this is pruned every ``change_prune_interval_seconds``;
    # 0 keeps it forever.
    change_retention_days: float = 7.0
    change_prune_interval_seconds: float = 3600.0
    # Share the port with other processes that set it too (SO_REUSEPORT): only for the workers
    # of one ``--workers N`` server. Otherwise a busy port is a start-up error (``startup``).
    reuse_port: bool = False


Prepare = Callable[[], Awaitable[None]]
"""Start-up work that needs the database (migrations), run once it answers, before serving."""


class FlightlogServer:
    """A server on ``port`` (the bound port, useful with ``:0``), listening once ``start`` runs.

    Constructing it binds the address (:class:`StartupError` when that cannot be done);
    ``start`` listens, waits for the database and serves. ``record_format`` is how sessions'
    records are encoded (tests pass another to stand for an older server).
    """

    def __init__(
        self,
        settings: ServerSettings,
        record_format: RecordFormat = SESSION_RECORDS,
    ) -> None:
        self.settings = settings
        self.database = Database(settings.database)
        self.metrics = Metrics() if settings.metrics_port is not None else None
        observer = self.metrics.observer if self.metrics else CallObserver()
        if self.metrics:
            self.metrics.pool.database = self.database
        self.metrics_port: int | None = None
        self._health = health_async.HealthServicer()
        # The gate comes first: until the server is ready, it answers before any database work.
        self._gate = ReadinessGate(SERVICE_NAMES, observer)
        authenticator = Authenticator(self.database, settings.auth_cache_seconds)
        self.server = aio.server(
            interceptors=[
                self._gate,
                CallInterceptor(
                    authenticator,
                    TokenKeys(functools.partial(self.database.run, page_token_keys)),
                    observer,
                ),
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_RECEIVE_BYTES),
                ("grpc.max_send_message_length", MAX_SEND_BYTES),
                # gRPC sets SO_REUSEPORT unless told not to.
                ("grpc.so_reuseport", 1 if settings.reuse_port else 0),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        # The use cases, each given the database and the format of sessions' stored records.
        self.record_format = record_format
        sessions = Sessions(self.database, record_format)
        # Sessions are returned as stored: their handlers return pre-serialized responses.
        preserialized.add_servicer(
            session_service_pb2_grpc.add_SessionServiceServicer_to_server,
            SessionServicer(
                sessions,
                SessionParts(self.database),
                SessionListings(self.database, record_format),
                Aggregations(self.database),
                self.database,
            ),
            self.server,
        )
        catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(Catalog(self.database, record_format)), self.server
        )
        custom_field_service_pb2_grpc.add_CustomFieldServiceServicer_to_server(
            CustomFieldServicer(CustomFields(self.database, record_format)), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self._bind(settings.bind)
        self._watch: asyncio.Task[None] | None = None
        self._prune: asyncio.Task[None] | None = None

    def _bind(self, address: str) -> int:
        if not self.settings.reuse_port:
            ensure_address_free(address)
        tls = self.settings.tls
        try:
            if tls is None:
                port = self.server.add_insecure_port(address)
            else:
                credentials = grpc.ssl_server_credentials(
                    [(tls.key.read_bytes(), tls.cert.read_bytes())],
                    root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
                    require_client_auth=tls.client_ca is not None,
                )
                port = self.server.add_secure_port(address, credentials)
        except OSError as e:  # a TLS file
            raise StartupError(f"cannot read {e.filename}: {e.strerror}") from None
        except RuntimeError:  # grpcio 1.85 raises; gRPC logged the cause on stderr
            port = 0
        if port == 0:  # older grpcio returns 0
            raise StartupError(f"cannot listen on {address}: gRPC could not bind it")
        return port

    async def start(self, prepare: Prepare | None = None) -> None:
        """Listens at once, then waits for the database, runs ``prepare`` and serves.

        Until then health reports NOT_SERVING and Flightlog calls are UNAVAILABLE. Cancelling it
        while it waits is safe (then ``stop``).
        """
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        await self.server.start()
        if self.metrics is not None and self.settings.metrics_port is not None:
            address = f"{self.settings.metrics_address}:{self.settings.metrics_port}"
            try:
                self.metrics_port = self.metrics.serve(
                    self.settings.metrics_port, self.settings.metrics_address
                )
            except OSError as e:
                raise StartupError(f"cannot serve metrics on {address}: {e.strerror}") from None
        log.info("listening on port %d", self.port)
        where = location(self.settings.database.url)
        while True:
            await wait_for_database(self.database, where)
            try:
                if prepare is not None:
                    await prepare()
                break
            except Exception as exc:
                if not isinstance(classify(exc), DatabaseUnavailable):
                    raise
                log.warning("lost the database at %s while starting; waiting again", where)
        await self._report_stale_records()
        self._gate.open()
        await self._update_health()
        self._watch = asyncio.create_task(self._watch_database())
        if self.settings.change_retention_days > 0:
            self._prune = asyncio.create_task(self._prune_changes())
        # Python's full garbage collections walk every object the process holds, and the ~90,000
        # made while importing and wiring (SQLAlchemy, gRPC, protobuf) live as long as it does:
        # a full collection held the event loop for 0.4-0.5 s after a 10,000-partition
        # RegisterFile. Frozen, they are skipped, and full collections take ~15 ms.
        gc.collect()
        gc.freeze()
        log.info("serving on port %d", self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets in-flight ones finish within the grace period."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Watch streams never finish by themselves: end them now (clients resume elsewhere)
        # rather than let them hold the shutdown for the whole grace period.
        await close_change_notifier(self.database)
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
        await close_change_feed(self.database)  # the readers' last reads, if any, end first
        for task in (self._watch, self._prune):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        await self.database.close()

    async def wait(self) -> None:
        await self.server.wait_for_termination()

    async def _watch_database(self) -> None:
        # Health reports SERVING only while the database answers.
        while True:
            await asyncio.sleep(self.settings.health_interval_seconds)
            await self._update_health()

    async def _report_stale_records(self) -> None:
        """Says, once at start, when records written by an older encoding remain (they are
        re-encoded where they are read until they are rewritten)."""
        try:
            stale = await count_stale(self.database, self.record_format, cap=1_000_000)
        except DomainError:  # the database is not there yet: nothing to report
            return
        if stale:
            more = "+" if stale >= 1_000_000 else ""
            log.warning(
                "%d%s session records were written by an older encoding than this server's"
                " (version %d): they are re-encoded on every read until"
                " 'flightlog-server admin reencode-sessions' rewrites them",
                stale,
                more,
                self.record_format.version,
            )

    async def _prune_changes(self) -> None:
        # Each server prunes; concurrent prunes of the same rows are harmless.
        retention = dt.timedelta(days=self.settings.change_retention_days)
        while True:
            try:
                deleted = await prune_changes(self.database, retention)
                if deleted:
                    log.info("pruned %d session changes older than %s", deleted, retention)
            except Exception:  # the next round retries; logged with its traceback
                log.exception("pruning the session change history failed")
            await asyncio.sleep(self.settings.change_prune_interval_seconds)

    async def _update_health(self) -> None:
        serving = await self.database.ping()
        await self._set_health(
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )

    async def _set_health(
        self, status: health_pb2.HealthCheckResponse.ServingStatus.ValueType
    ) -> None:
        for name in ("", *SERVICE_NAMES):
            await self._health.set(name, status)
