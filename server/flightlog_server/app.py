"""Wiring: the one place that builds the database, the servicers and the gRPC server."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import functools
import logging
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
from flightlog_server.metrics import Metrics
from flightlog_server.rpc import preserialized
from flightlog_server.rpc.calls import Authenticator, CallInterceptor, CallObserver
from flightlog_server.rpc.catalog import CatalogServicer
from flightlog_server.rpc.custom_fields import CustomFieldServicer
from flightlog_server.rpc.pagination import TokenKeys
from flightlog_server.rpc.sessions import SessionServicer
from flightlog_server.storage.changes import close_change_notifier, prune_changes
from flightlog_server.storage.database import Database, DatabaseSettings
from flightlog_server.storage.page_token_keys import page_token_keys

log = logging.getLogger("flightlog.server")

MAX_MESSAGE_BYTES = 16 * 1024 * 1024
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


class FlightlogServer:
    """A started server: ``port`` is the bound port (useful with ``:0``)."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.database = Database(settings.database)
        self.metrics = Metrics() if settings.metrics_port is not None else None
        observer = self.metrics.observer if self.metrics else CallObserver()
        if self.metrics:
            self.metrics.pool.database = self.database
        self.metrics_port: int | None = None
        self._health = health_async.HealthServicer()
        self.server = aio.server(
            interceptors=[
                CallInterceptor(
                    Authenticator(self.database, settings.auth_cache_seconds),
                    TokenKeys(functools.partial(self.database.run, page_token_keys)),
                    observer,
                )
            ],
            options=[
                ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                ("grpc.so_reuseport", 1),
                ("grpc.keepalive_permit_without_calls", 1),
                ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
            ],
        )
        # ListSessions streams pre-serialized batches (rpc.preserialized, rpc.session_listing).
        sessions = SessionServicer(self.database)
        preserialized.add_servicer(
            session_service_pb2_grpc.add_SessionServiceServicer_to_server,
            sessions,
            self.server,
            streams={"ListSessions": sessions.ListSessions},
        )
        catalog_service_pb2_grpc.add_CatalogServiceServicer_to_server(
            CatalogServicer(self.database), self.server
        )
        custom_field_service_pb2_grpc.add_CustomFieldServiceServicer_to_server(
            CustomFieldServicer(self.database), self.server
        )
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self.server)
        reflection.enable_server_reflection(
            (*SERVICE_NAMES, health.SERVICE_NAME, reflection.SERVICE_NAME), self.server
        )
        self.port = self._bind(settings.bind)
        self._watch: asyncio.Task[None] | None = None
        self._prune: asyncio.Task[None] | None = None

    def _bind(self, address: str) -> int:
        tls = self.settings.tls
        if tls is None:
            return self.server.add_insecure_port(address)
        credentials = grpc.ssl_server_credentials(
            [(tls.key.read_bytes(), tls.cert.read_bytes())],
            root_certificates=tls.client_ca.read_bytes() if tls.client_ca else None,
            require_client_auth=tls.client_ca is not None,
        )
        return self.server.add_secure_port(address, credentials)

    async def start(self) -> None:
        await self.server.start()
        if self.metrics is not None and self.settings.metrics_port is not None:
            self.metrics_port = self.metrics.serve(
                self.settings.metrics_port, self.settings.metrics_address
            )
        await self._update_health()
        self._watch = asyncio.create_task(self._watch_database())
        if self.settings.change_retention_days > 0:
            self._prune = asyncio.create_task(self._prune_changes())
        log.info("serving on port %d", self.port)

    async def stop(self, grace: float | None = None) -> None:
        """Stops accepting calls, lets in-flight ones finish within the grace period."""
        await self._set_health(health_pb2.HealthCheckResponse.NOT_SERVING)
        # Watch streams never finish by themselves: end them now (clients resume elsewhere)
        # rather than let them hold the shutdown for the whole grace period.
        await close_change_notifier(self.database)
        await self.server.stop(self.settings.grace_seconds if grace is None else grace)
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
