"""CatalogService: devices, datasets, files, topic partitions and extents."""

from __future__ import annotations

from flightlog.v1 import catalog_service_pb2_grpc
from flightlog_server.storage.database import Database


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database
