"""The catalog's use cases: devices, datasets, files, their topic partitions and extents.

Three of them change what sessions are made of, and run in the session unit of work: a file's
offset moves the bounds of the sessions it contributes to, deleting a file removes its
contributions, and deleting a device detaches it.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain import catalog
from flightlog_server.domain.catalog import (
    CheckedFile,
    DatasetRecord,
    DeviceRecord,
    FileExtras,
    FileInput,
    FileRecord,
    PartitionRecord,
)
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import Caller, IdempotencyKey
from flightlog_server.pacing import Pacer
from flightlog_server.services.unit_of_work import RecordFormat, SessionWrites, write_sessions
from flightlog_server.storage import catalog as store
from flightlog_server.storage import sessions as session_store
from flightlog_server.storage.catalog import CatalogRepository
from flightlog_server.storage.database import Database

T = TypeVar("T")


@dataclass(frozen=True)
class TopicBatch:
    """A batch of a file's partitions, with each one's extents (min, max) by topic ID, in
    order; ``last`` when no partition follows."""

    partitions: Sequence[PartitionRecord]
    extents: dict[str, list[tuple[int, int]]]
    last: bool


class Catalog:
    def __init__(self, database: Database, record_format: RecordFormat) -> None:
        self.database = database
        self.record_format = record_format

    async def _run(self, caller: Caller, work: Callable[[CatalogRepository], Awaitable[T]]) -> T:
        async def run(db: AsyncSession) -> T:
            return await work(CatalogRepository(db, caller))

        return await self.database.run(run)

    # --- devices -------------------------------------------------------------------------------

    async def create_device(self, caller: Caller, device_id: str, name: str) -> DeviceRecord:
        return await self._run(caller, lambda repo: repo.create_device(device_id, name))

    async def get_device(self, caller: Caller, device_id: str) -> DeviceRecord:
        return await self._run(caller, lambda repo: repo.get_device(device_id))

    async def devices(self, caller: Caller, after: str | None, limit: int) -> list[DeviceRecord]:
        """Devices in ID order, after ``after``."""
        return await self._run(caller, lambda repo: repo.list_devices(after, limit))

    async def delete_device(self, caller: Caller, device_id: str) -> None:
        """Deletes the device; the sessions it was attached to lose it (one change each)."""

        async def work(w: SessionWrites) -> None:
            drafts = await w.lock_dependents(session_store.DEVICE, device_id)
            await store.delete_device(w.tx, caller.org_id, device_id)
            await w.refresh(drafts, "devices_changed", bounds=False)

        await write_sessions(self.database, caller, self.record_format, work)

    # --- datasets ------------------------------------------------------------------------------

    async def create_dataset(
        self, caller: Caller, name: str, device_id: str | None, key: IdempotencyKey | None
    ) -> DatasetRecord:
        return await self._run(caller, lambda repo: repo.create_dataset(name, device_id, key))

    async def get_dataset(self, caller: Caller, dataset_id: str) -> DatasetRecord:
        return await self._run(caller, lambda repo: repo.get_dataset(dataset_id))

    async def datasets(
        self,
        caller: Caller,
        name: str | None,
        after: tuple[dt.datetime, str] | None,
        limit: int,
    ) -> list[DatasetRecord]:
        """Datasets (only those named ``name`` when given) newest first, after ``after``."""
        return await self._run(caller, lambda repo: repo.list_datasets(name, after, limit))

    # --- files ---------------------------------------------------------------------------------

    async def register_file(
        self,
        caller: Caller,
        file: FileInput,
        checked: CheckedFile,
        extras: FileExtras,
        key: IdempotencyKey | None,
    ) -> FileRecord:
        """Registers a file that passed ``catalog.check_file`` (which found ``checked``)."""
        return await self._run(caller, lambda repo: repo.register_file(file, checked, extras, key))

    async def get_file(self, caller: Caller, file_id: str) -> FileRecord:
        return await self._run(caller, lambda repo: repo.get_file(file_id))

    async def files(
        self,
        caller: Caller,
        dataset_id: str | None,
        after: str | None,
        limit: int,
        *,
        content_sha256: str | None = None,
        recovered: bool | None = None,
    ) -> list[FileRecord]:
        """A dataset's files by relative path (NOT_FOUND for a dataset not in the org, checked
        with the first page), or the org's files by ID, after ``after``; only those with that
        content, or recovered (or not), when asked."""

        async def work(repo: CatalogRepository) -> list[FileRecord]:
            if dataset_id is not None and after is None:
                await repo.get_dataset(dataset_id)
            return await repo.list_files(
                dataset_id, after, limit, content_sha256=content_sha256, recovered=recovered
            )

        return await self._run(caller, work)

    async def file_topic_batches(
        self, caller: Caller, file_id: str, after: tuple[str, str] | None, size: int
    ) -> AsyncIterator[TopicBatch]:
        """The file's partitions by (topic name, topic ID) after ``after``, with their extents,
        in batches of at most ``size`` partitions that also stop before the partition that would
        take them past ``catalog.EXTENTS_PER_LISTING_BATCH`` extents (a partition is never split,
        so one with more is a batch of its own). NOT_FOUND for a file not in the org."""
        await self._run(caller, lambda repo: repo.get_file(file_id))

        async def batch(repo: CatalogRepository) -> TopicBatch | None:
            page = await repo.list_partitions(file_id, after, size)
            if not page:
                return None
            partitions = catalog.listing_batch(page)
            extents: dict[str, list[tuple[int, int]]] = {p.topic.topic_id: [] for p in partitions}
            pacer = Pacer()
            chunks = repo.extents_of_partitions(file_id, list(extents))
            async with contextlib.aclosing(chunks):
                async for rows in chunks:
                    for topic_id, low, high in rows:
                        extents[topic_id].append((low, high))
                    await pacer.tick()
            # The last batch is the one that ends a short page of partitions.
            return TopicBatch(partitions, extents, len(page) < size and partitions == page)

        while (found := await self._run(caller, batch)) is not None:
            yield found
            if found.last:
                return
            after = (found.partitions[-1].topic.name, found.partitions[-1].topic.topic_id)

    async def set_file_offset(self, caller: Caller, file_id: str, offset: int) -> FileRecord:
        """Moves the file on the timeline; the sessions it contributes to get new bounds (one
        change each). Setting the offset it has changes nothing."""

        async def work(w: SessionWrites) -> FileRecord:
            drafts = await w.lock_dependents(session_store.FILE, file_id)
            file = await store.file_of(w.tx, caller.org_id, file_id)
            if file.unix_epoch_offset_ns == offset:
                return file
            extents = (
                None
                if file.extents_min_ns is None or file.extents_max_ns is None
                else (file.extents_min_ns, file.extents_max_ns)
            )
            v = Violations()
            catalog.check_offset(v, "unix_epoch_offset_ns", extents, offset)
            v.raise_if_any()
            file = await store.set_file_offset(w.tx, caller.org_id, file_id, offset)
            await w.refresh(drafts, "bounds_changed", bounds=True)
            return file

        file, _ = await write_sessions(self.database, caller, self.record_format, work)
        return file

    async def delete_file(self, caller: Caller, file_id: str) -> None:
        """Deletes the file; the sessions it contributed to lose it and get new bounds."""

        async def work(w: SessionWrites) -> None:
            drafts = await w.lock_dependents(session_store.FILE, file_id)
            await store.delete_file(w.tx, caller.org_id, file_id)
            await w.refresh(drafts, "bounds_changed", bounds=True)

        await write_sessions(self.database, caller, self.record_format, work)
