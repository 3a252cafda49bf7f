"""CatalogService: devices, datasets, files, topic partitions and extents."""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio

from flightlog.v1 import catalog_service_pb2, catalog_service_pb2_grpc
from flightlog_server.domain import catalog, rules
from flightlog_server.domain.catalog import (
    DatasetRecord,
    DeviceRecord,
    FileRecord,
)
from flightlog_server.domain.errors import InvalidPageToken
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import IdempotencyKey
from flightlog_server.pacing import Pacer, run_sliced
from flightlog_server.rpc import convert, pagination
from flightlog_server.rpc.calls import current_caller
from flightlog_server.rpc.piecewise import WireFile
from flightlog_server.services.catalog import Catalog

pb = catalog_service_pb2
Context = aio.ServicerContext[Any, Any]


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    # --- devices -------------------------------------------------------------------------------

    async def CreateDevice(
        self, request: pb.CreateDeviceRequest, context: Context
    ) -> pb.CreateDeviceResponse:
        caller = current_caller()
        v = Violations()
        rules.check_device_id(v, "device_id", request.device_id)
        rules.check_name(v, "name", request.name)
        v.raise_if_any()

        device = await self.catalog.create_device(caller, request.device_id, request.name)
        return pb.CreateDeviceResponse(device=convert.device_message(device))

    async def GetDevice(
        self, request: pb.GetDeviceRequest, context: Context
    ) -> pb.GetDeviceResponse:
        caller = current_caller()
        _require_device_id(request.device_id)

        device = await self.catalog.get_device(caller, request.device_id)
        return pb.GetDeviceResponse(device=convert.device_message(device))

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> AsyncIterator[pb.ListDevicesResponse]:
        caller = current_caller()
        v = Violations()
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()

        async def fetch(after: list[Any] | None, limit: int) -> list[DeviceRecord]:
            position = pagination.checked_position(after, str)
            return await self.catalog.devices(caller, position[0] if position else None, limit)

        def build(rows: Sequence[DeviceRecord], token: str) -> pb.ListDevicesResponse:
            return pb.ListDevicesResponse(
                devices=[convert.device_message(d) for d in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            scope=pagination.fingerprint("ListDevices", caller.org_id),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=lambda d: [d.device_id],
            build=build,
        ):
            yield response

    async def DeleteDevice(
        self, request: pb.DeleteDeviceRequest, context: Context
    ) -> pb.DeleteDeviceResponse:
        caller = current_caller()
        _require_device_id(request.device_id)

        await self.catalog.delete_device(caller, request.device_id)
        return pb.DeleteDeviceResponse()

    # --- datasets ------------------------------------------------------------------------------

    async def CreateDataset(
        self, request: pb.CreateDatasetRequest, context: Context
    ) -> pb.CreateDatasetResponse:
        caller = current_caller()
        v = Violations()
        rules.check_name(v, "name", request.name)
        if request.device_id:
            rules.check_device_id(v, "device_id", request.device_id)
        rules.check_request_id(v, request.request_id)
        v.raise_if_any()
        key = _idempotency_key("CreateDataset", request)

        dataset = await self.catalog.create_dataset(
            caller, request.name, request.device_id or None, key
        )
        return pb.CreateDatasetResponse(dataset=convert.dataset_message(dataset))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        caller = current_caller()
        rules.require_id("dataset_id", request.dataset_id, "dataset")

        dataset = await self.catalog.get_dataset(caller, request.dataset_id)
        return pb.GetDatasetResponse(dataset=convert.dataset_message(dataset))

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> AsyncIterator[pb.ListDatasetsResponse]:
        caller = current_caller()
        v = Violations()
        size = rules.check_page(v, request.page_size)
        rules.check_name(v, "name", request.name)
        v.raise_if_any()
        name = request.name or None

        async def fetch(after: list[Any] | None, limit: int) -> list[DatasetRecord]:
            position = pagination.checked_position(after, str, str)
            keyset = None
            if position is not None:
                keyset = (_parse_time(position[0]), position[1])
            return await self.catalog.datasets(caller, name, keyset, limit)

        def build(rows: Sequence[DatasetRecord], token: str) -> pb.ListDatasetsResponse:
            return pb.ListDatasetsResponse(
                datasets=[convert.dataset_message(d) for d in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            scope=pagination.fingerprint("ListDatasets", caller.org_id, request.name),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=lambda d: [d.created.isoformat(), d.dataset_id],
            build=build,
        ):
            yield response

    # --- files ---------------------------------------------------------------------------------

    async def RegisterFile(  # type: ignore[override]  # read from the wire, not built whole
        self, request: WireFile, context: Context
    ) -> pb.RegisterFileResponse:
        caller = current_caller()
        v = Violations()
        # The request is checked and then stored, extent by extent (domain.catalog), from its
        # bytes (rpc.piecewise): never built whole, and other calls run while its 100,000
        # extents are gone through.
        extras = convert.file_extras(request.header)
        checked = await run_sliced(catalog.check_file(v, request, extras))
        rules.check_request_id(v, request.request_id)
        v.raise_if_any()
        key = (
            IdempotencyKey(request.request_id, await request.fingerprint("RegisterFile"))
            if request.request_id
            else None
        )
        file = await self.catalog.register_file(caller, request, checked, extras, key)
        return pb.RegisterFileResponse(file=convert.file_message(file))

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")

        file = await self.catalog.get_file(caller, request.file_id)
        return pb.GetFileResponse(file=convert.file_message(file))

    async def ListFiles(
        self, request: pb.ListFilesRequest, context: Context
    ) -> AsyncIterator[pb.ListFilesResponse]:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "dataset_id", request.dataset_id, "dataset", required=False)
        size = rules.check_page(v, request.page_size)
        content_sha256 = convert.content_sha256(request.content_sha256)
        if content_sha256 is not None:
            catalog.check_content_sha256(v, "content_sha256", content_sha256)
        v.raise_if_any()
        dataset_id = request.dataset_id or None
        recovered = request.recovered if request.HasField("recovered") else None

        async def fetch(after: list[Any] | None, limit: int) -> list[FileRecord]:
            position = pagination.checked_position(after, str)
            return await self.catalog.files(
                caller,
                dataset_id,
                position[0] if position else None,
                limit,
                content_sha256=content_sha256,
                recovered=recovered,
            )

        def build(rows: Sequence[FileRecord], token: str) -> pb.ListFilesResponse:
            return pb.ListFilesResponse(
                files=[convert.file_message(f) for f in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            scope=pagination.fingerprint(
                "ListFiles",
                caller.org_id,
                request.dataset_id,
                content_sha256 or "",
                {None: "", True: "recovered", False: "intact"}[recovered],
            ),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=lambda f: [f.relative_path if dataset_id else f.file_id],
            build=build,
        ):
            yield response

    async def ListFileTopics(
        self, request: pb.ListFileTopicsRequest, context: Context
    ) -> AsyncIterator[pb.ListFileTopicsResponse]:
        """Like every listing (``pagination``), except that a batch also stops before the
        partition that would take it past ``catalog.EXTENTS_PER_LISTING_BATCH`` extents: the
        stream therefore ends on a short *page* of partitions, not a short batch."""
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "file_id", request.file_id, "file")
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()
        file_id = request.file_id
        scope = pagination.fingerprint("ListFileTopics", caller.org_id, file_id)
        position = pagination.checked_position(
            pagination.decode(request.page_token, scope), str, str
        )
        after = (position[0], position[1]) if position else None
        async for batch in self.catalog.file_topic_batches(caller, file_id, after, size):
            response = pb.ListFileTopicsResponse()
            pacer = Pacer()
            for partition in batch.partitions:
                message = response.partitions.add()
                message.CopyFrom(convert.topic_partition_message(partition))
                for low, high in batch.extents[partition.topic.topic_id]:
                    message.extents.add(min_timestamp_ns=low, max_timestamp_ns=high)
                await pacer.tick()
            end = batch.partitions[-1].topic
            response.next_page_token = pagination.encode(scope, [end.name, end.topic_id])
            yield response

    async def UpdateFileTimelineOffset(
        self, request: pb.UpdateFileTimelineOffsetRequest, context: Context
    ) -> pb.UpdateFileTimelineOffsetResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")
        file = await self.catalog.set_file_offset(
            caller, request.file_id, request.unix_epoch_offset_ns
        )
        return pb.UpdateFileTimelineOffsetResponse(file=convert.file_message(file))

    async def DeleteFile(
        self, request: pb.DeleteFileRequest, context: Context
    ) -> pb.DeleteFileResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")

        await self.catalog.delete_file(caller, request.file_id)
        return pb.DeleteFileResponse()


def _require_device_id(device_id: str) -> None:
    v = Violations()
    rules.check_device_id(v, "device_id", device_id)
    v.raise_if_any()


def _parse_time(value: str) -> dt.datetime:
    try:
        parsed = dt.datetime.fromisoformat(value)
    except ValueError as e:
        raise InvalidPageToken("is not a token this server issued") from e
    if parsed.tzinfo is None:
        raise InvalidPageToken("is not a token this server issued")
    return parsed


def _idempotency_key(method: str, request: pb.CreateDatasetRequest) -> IdempotencyKey | None:
    if not request.request_id:
        return None
    return IdempotencyKey(request.request_id, convert.request_fingerprint(method, request))
