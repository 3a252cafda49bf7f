"""CustomFieldService: custom-field definitions and their lifecycle."""

from __future__ import annotations

from flightlog.v1 import custom_field_service_pb2_grpc
from flightlog_server.storage.database import Database


class CustomFieldServicer(custom_field_service_pb2_grpc.CustomFieldServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database
