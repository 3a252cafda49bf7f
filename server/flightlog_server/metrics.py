"""Prometheus metrics on a side port: calls per RPC and code, latencies, in-flight calls and
streams, and the database pool's use. Served by ``prometheus_client``'s own HTTP server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from flightlog_server.rpc.calls import CallObserver
from flightlog_server.storage.database import Database


class PrometheusObserver(CallObserver):
    """Counts calls per method and code, their latency, and what is in flight."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.calls = Counter(
            "flightlog_rpc_calls",
            "Finished calls, per method and status code.",
            ["method", "code"],
            registry=registry,
        )
        self.latency = Histogram(
            "flightlog_rpc_duration_seconds",
            "Call duration (streams: until the last message), per method and status code.",
            ["method", "code"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60),
        )
        self.in_flight = Gauge(
            "flightlog_rpc_in_flight",
            "Calls (and open streams) in progress.",
            ["method"],
            registry=registry,
        )

    def started(self, method: str) -> None:
        self.in_flight.labels(method).inc()

    def finished(self, method: str, code: grpc.StatusCode, seconds: float) -> None:
        self.in_flight.labels(method).dec()
        self.calls.labels(method, code.name).inc()
        self.latency.labels(method, code.name).observe(seconds)


class PoolCollector(Collector):
    """The database pool's size and use, read when scraped."""

    def __init__(self) -> None:
        self.database: Database | None = None

    def collect(self) -> Iterator[GaugeMetricFamily]:
        if self.database is None:
            return
        pool = self.database.engine.pool
        checked_out = GaugeMetricFamily(
            "flightlog_db_pool_checked_out", "Database connections in use."
        )
        checked_out.add_metric([], float(getattr(pool, "checkedout", lambda: 0)()))
        size = GaugeMetricFamily("flightlog_db_pool_size", "Database connections kept open.")
        size.add_metric([], float(getattr(pool, "size", lambda: 0)()))
        yield checked_out
        yield size


class Metrics:
    """The registry, the call observer and the pool collector of one server process."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.observer = PrometheusObserver(self.registry)
        self.pool = PoolCollector()
        self.registry.register(self.pool)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Starts the HTTP endpoint (``/metrics``); returns its port (useful with 0)."""
        server, _ = start_http_server(port, addr=address, registry=self.registry)
        return int(server.server_port)
