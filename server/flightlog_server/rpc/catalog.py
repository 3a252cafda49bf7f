"""CatalogService: devices, datasets, files, topic partitions and extents."""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import catalog_service_pb2, catalog_service_pb2_grpc
from flightlog_server.domain import catalog, rules
from flightlog_server.domain.catalog import (
    DatasetRecord,
    DeviceRecord,
    FileRecord,
)
from flightlog_server.domain.errors import InvalidPageToken
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import Caller, IdempotencyKey
from flightlog_server.pacing import Pacer, run_sliced
from flightlog_server.rpc import convert, pagination
from flightlog_server.rpc.calls import current_caller
from flightlog_server.storage.catalog import CatalogRepository
from flightlog_server.storage.database import Database
from flightlog_server.storage.sessions import SessionRepository

pb = catalog_service_pb2
Context = aio.ServicerContext[Any, Any]


class CatalogServicer(catalog_service_pb2_grpc.CatalogServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    def _sessions(db: AsyncSession, caller: Caller) -> SessionRepository:
        return SessionRepository(db, caller, convert.encode_session)

    # --- devices -------------------------------------------------------------------------------

    async def CreateDevice(
        self, request: pb.CreateDeviceRequest, context: Context
    ) -> pb.CreateDeviceResponse:
        caller = current_caller()
        v = Violations()
        rules.check_device_id(v, "device_id", request.device_id)
        rules.check_name(v, "name", request.name)
        v.raise_if_any()

        async def work(db: AsyncSession) -> DeviceRecord:
            return await CatalogRepository(db, caller).create_device(
                request.device_id, request.name
            )

        device = await self.database.run(work)
        return pb.CreateDeviceResponse(device=convert.device_message(device))

    async def GetDevice(
        self, request: pb.GetDeviceRequest, context: Context
    ) -> pb.GetDeviceResponse:
        caller = current_caller()
        _require_device_id(request.device_id)

        async def work(db: AsyncSession) -> DeviceRecord:
            return await CatalogRepository(db, caller).get_device(request.device_id)

        device = await self.database.run(work)
        return pb.GetDeviceResponse(device=convert.device_message(device))

    async def ListDevices(
        self, request: pb.ListDevicesRequest, context: Context
    ) -> AsyncIterator[pb.ListDevicesResponse]:
        caller = current_caller()
        v = Violations()
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()

        async def fetch(db: AsyncSession, after: list[Any] | None, limit: int) -> list[Any]:
            position = pagination.checked_position(after, str)
            return await CatalogRepository(db, caller).list_devices(
                position[0] if position else None, limit
            )

        def build(rows: Sequence[DeviceRecord], token: str) -> pb.ListDevicesResponse:
            return pb.ListDevicesResponse(
                devices=[convert.device_message(d) for d in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            self.database,
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

        async def work(db: AsyncSession) -> None:
            repo = CatalogRepository(db, caller)
            sessions = await repo.lock_sessions_of_device(request.device_id)
            await repo.delete_device(request.device_id)
            session_repo = self._sessions(db, caller)
            for session_id in sessions:
                await session_repo.commit_change(session_id, "devices_changed")

        await self.database.run(work)
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

        async def work(db: AsyncSession) -> DatasetRecord:
            return await CatalogRepository(db, caller).create_dataset(
                request.name, request.device_id or None, key
            )

        dataset = await self.database.run(work)
        return pb.CreateDatasetResponse(dataset=convert.dataset_message(dataset))

    async def GetDataset(
        self, request: pb.GetDatasetRequest, context: Context
    ) -> pb.GetDatasetResponse:
        caller = current_caller()
        rules.require_id("dataset_id", request.dataset_id, "dataset")

        async def work(db: AsyncSession) -> DatasetRecord:
            return await CatalogRepository(db, caller).get_dataset(request.dataset_id)

        dataset = await self.database.run(work)
        return pb.GetDatasetResponse(dataset=convert.dataset_message(dataset))

    async def ListDatasets(
        self, request: pb.ListDatasetsRequest, context: Context
    ) -> AsyncIterator[pb.ListDatasetsResponse]:
        caller = current_caller()
        v = Violations()
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()

        async def fetch(db: AsyncSession, after: list[Any] | None, limit: int) -> list[Any]:
            position = pagination.checked_position(after, str, str)
            keyset = None
            if position is not None:
                keyset = (_parse_time(position[0]), position[1])
            return await CatalogRepository(db, caller).list_datasets(keyset, limit)

        def build(rows: Sequence[DatasetRecord], token: str) -> pb.ListDatasetsResponse:
            return pb.ListDatasetsResponse(
                datasets=[convert.dataset_message(d) for d in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            self.database,
            scope=pagination.fingerprint("ListDatasets", caller.org_id),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=lambda d: [d.created.isoformat(), d.dataset_id],
            build=build,
        ):
            yield response

    # --- files ---------------------------------------------------------------------------------

    async def RegisterFile(
        self, request: pb.RegisterFileRequest, context: Context
    ) -> pb.RegisterFileResponse:
        caller = current_caller()
        v = Violations()
        # The request itself is checked and then stored, extent by extent (domain.catalog):
        # never copied whole, and other calls run while its 100,000 extents are gone through.
        extents = await run_sliced(catalog.check_file(v, request))
        rules.check_request_id(v, request.request_id)
        v.raise_if_any()
        key = _idempotency_key("RegisterFile", request)

        async def work(db: AsyncSession) -> FileRecord:
            return await CatalogRepository(db, caller).register_file(request, extents, key)

        file = await self.database.run(work)
        return pb.RegisterFileResponse(file=convert.file_message(file))

    async def GetFile(self, request: pb.GetFileRequest, context: Context) -> pb.GetFileResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")

        async def work(db: AsyncSession) -> FileRecord:
            return await CatalogRepository(db, caller).get_file(request.file_id)

        file = await self.database.run(work)
        return pb.GetFileResponse(file=convert.file_message(file))

    async def ListFiles(
        self, request: pb.ListFilesRequest, context: Context
    ) -> AsyncIterator[pb.ListFilesResponse]:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "dataset_id", request.dataset_id, "dataset", required=False)
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()
        dataset_id = request.dataset_id or None
        checked = False

        async def fetch(db: AsyncSession, after: list[Any] | None, limit: int) -> list[Any]:
            nonlocal checked
            position = pagination.checked_position(after, str)
            repo = CatalogRepository(db, caller)
            if dataset_id is not None and not checked:
                await repo.get_dataset(dataset_id)  # NOT_FOUND for a dataset not in the org
                checked = True
            return await repo.list_files(dataset_id, position[0] if position else None, limit)

        def build(rows: Sequence[FileRecord], token: str) -> pb.ListFilesResponse:
            return pb.ListFilesResponse(
                files=[convert.file_message(f) for f in rows], next_page_token=token
            )

        async for response in pagination.stream_pages(
            self.database,
            scope=pagination.fingerprint("ListFiles", caller.org_id, request.dataset_id),
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

        async def file_exists(db: AsyncSession) -> None:
            await CatalogRepository(db, caller).get_file(file_id)  # NOT_FOUND outside the org

        async def batch(db: AsyncSession) -> tuple[pb.ListFileTopicsResponse, bool] | None:
            """The next batch, and whether it is the last; None when nothing is left."""
            repo = CatalogRepository(db, caller)
            page = await repo.list_partitions(file_id, after, size)
            if not page:
                return None
            partitions = catalog.listing_batch(page)
            response = pb.ListFileTopicsResponse()
            by_topic: dict[str, pb.TopicPartition] = {}
            pacer = Pacer()
            for partition in partitions:
                message = response.partitions.add()
                message.CopyFrom(convert.topic_partition_message(partition))
                by_topic[partition.topic.topic_id] = message
                await pacer.tick()
            chunks = repo.extents_of_partitions(file_id, list(by_topic))
            async with contextlib.aclosing(chunks):
                async for rows in chunks:
                    for topic_id, low, high in rows:
                        by_topic[topic_id].extents.add(min_timestamp_ns=low, max_timestamp_ns=high)
                    await pacer.tick()
            last = partitions[-1].topic
            response.next_page_token = pagination.encode(scope, [last.name, last.topic_id])
            return response, len(page) < size and len(partitions) == len(page)

        await self.database.run(file_exists)
        while (result := await self.database.run(batch)) is not None:
            response, last = result
            yield response
            if last:
                return
            after = (response.partitions[-1].topic.name, response.partitions[-1].topic.topic_id)

    async def UpdateFileTimelineOffset(
        self, request: pb.UpdateFileTimelineOffsetRequest, context: Context
    ) -> pb.UpdateFileTimelineOffsetResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")
        offset = request.unix_epoch_offset_ns

        async def work(db: AsyncSession) -> FileRecord:
            session_repo = self._sessions(db, caller)
            repo = CatalogRepository(db, caller)
            # Sessions first, then the file: the order every session write locks in.
            sessions = await session_repo.lock_sessions_of_file(request.file_id)
            file = await repo.get_file(request.file_id)
            if file.unix_epoch_offset_ns == offset:
                return file  # nothing changes, so nothing is recomputed or recorded
            extents = (
                None
                if file.extents_min_ns is None or file.extents_max_ns is None
                else (file.extents_min_ns, file.extents_max_ns)
            )
            v = Violations()
            catalog.check_offset(v, "unix_epoch_offset_ns", extents, offset)
            v.raise_if_any()
            file = await repo.set_offset(request.file_id, offset)
            if sessions:
                await session_repo.recompute_bounds(sessions)
            for session_id in sessions:
                await session_repo.commit_change(session_id, "bounds_changed")
            return file

        file = await self.database.run(work)
        return pb.UpdateFileTimelineOffsetResponse(file=convert.file_message(file))

    async def DeleteFile(
        self, request: pb.DeleteFileRequest, context: Context
    ) -> pb.DeleteFileResponse:
        caller = current_caller()
        rules.require_id("file_id", request.file_id, "file")

        async def work(db: AsyncSession) -> None:
            session_repo = self._sessions(db, caller)
            repo = CatalogRepository(db, caller)
            await session_repo.lock_sessions_of_file(request.file_id)
            # The contributions go first, explicitly, so that their sessions are known.
            sessions = await repo.delete_contributions_of_file(request.file_id)
            await repo.delete_file(request.file_id)
            if sessions:
                await session_repo.recompute_bounds(sessions)
            for session_id in sessions:
                await session_repo.commit_change(session_id, "bounds_changed")

        await self.database.run(work)
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


def _idempotency_key(
    method: str, request: pb.CreateDatasetRequest | pb.RegisterFileRequest
) -> IdempotencyKey | None:
    if not request.request_id:
        return None
    return IdempotencyKey(request.request_id, convert.request_fingerprint(method, request))
