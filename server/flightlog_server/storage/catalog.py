"""The catalog: devices, datasets, files, topic identities, partitions and extents.

Locks follow the order of ``storage.sessions``: sessions (in ID order), then the catalog row, then
the org revision. Rows that must merely keep existing until commit (a file's dataset and device)
are held with ``FOR KEY SHARE``, which blocks their deletion but not other readers or writers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import AsyncGenerator, AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

from psycopg import AsyncCopy
from sqlalchemy import Table, and_, delete, func, select, text, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.catalog import (
    CheckedFile,
    DatasetRecord,
    DeviceRecord,
    FileExtras,
    FileInput,
    FileRecord,
    FileRecovery,
    PartitionInput,
    PartitionRecord,
    TopicRecord,
)
from flightlog_server.domain.errors import AlreadyExists, NotFound, RequestIdReused
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import Caller, IdempotencyKey
from flightlog_server.pacing import Pacer
from flightlog_server.storage import models as m
from flightlog_server.storage.database import Row, Tx
from flightlog_server.storage.id_rows import id_rows, keyed

DV = m.table(m.Device)
DS = m.table(m.Dataset)
F = m.table(m.File)
T = m.table(m.Topic)
P = m.table(m.TopicPartition)
E = m.table(m.TimelineExtent)

# Extents copied between two chances for other calls to run (a partition may hold 100,000).
_ROWS_PER_TICK = 256
# Inserting this many rows makes cached plans of foreign-key checks worth refreshing first.
_MANY_ROWS = 1_000
# Extent rows read per round trip by ListFileTopics (about 60 KiB).
_EXTENT_ROWS_PER_FETCH = 1_000

# RegisterFile's partitions and extents as sent, for the statements below; dropped at commit.
# ``position`` is a partition's index in the request, which its extents refer to.
_CREATE_SENT_SQL = (
    text(
        """
        CREATE TEMPORARY TABLE sent_partitions (
            position integer PRIMARY KEY,
            new_topic_id text NOT NULL,
            name text NOT NULL,
            schema_name text NOT NULL,
            message_encoding text NOT NULL,
            message_count bigint NOT NULL,
            topic_id text
        ) ON COMMIT DROP
        """
    ),
    text(
        """
        CREATE TEMPORARY TABLE sent_extents (
            position integer NOT NULL,
            ordinal integer NOT NULL,
            min_ns bigint NOT NULL,
            max_ns bigint NOT NULL
        ) ON COMMIT DROP
        """
    ),
)
_COPY_SENT_PARTITIONS_SQL = (
    "COPY sent_partitions (position, new_topic_id, name, schema_name, message_encoding,"
    " message_count) FROM STDIN (FORMAT BINARY)"
)
_SENT_PARTITION_TYPES = ("int4", "text", "text", "text", "text", "int8")
_COPY_SENT_EXTENTS_SQL = "COPY sent_extents FROM STDIN (FORMAT BINARY)"
_SENT_EXTENT_TYPES = ("int4", "int4", "int8", "int8")
_INSERT_TOPICS_SQL = text(
    """
    INSERT INTO topics (org_id, topic_id, name, schema_name, message_encoding)
    SELECT :org_id, new_topic_id, name, schema_name, message_encoding
    FROM sent_partitions
    ORDER BY name, schema_name
    ON CONFLICT (org_id, name, schema_name) DO NOTHING
    """
)
# Each partition's topic, looked up by its unique key: a join of topics with a temporary table
# (no statistics) could be planned as a scan of one for each row of the other.
_FIND_TOPICS_SQL = text(
    """
    UPDATE sent_partitions s SET topic_id = (
        SELECT t.topic_id FROM topics t
        WHERE t.org_id = :org_id AND t.name = s.name AND t.schema_name = s.schema_name
    )
    """
)
_INSERT_PARTITIONS_SQL = text(
    """
    INSERT INTO topic_partitions (org_id, file_id, topic_id, message_count)
    SELECT :org_id, :file_id, topic_id, message_count FROM sent_partitions ORDER BY position
    """
)
# Joined by the partitions' primary key (their position).
_INSERT_EXTENTS_SQL = text(
    """
    INSERT INTO timeline_extents (org_id, file_id, topic_id, ordinal, min_ns, max_ns)
    SELECT :org_id, :file_id, p.topic_id, e.ordinal, e.min_ns, e.max_ns
    FROM sent_extents e JOIN sent_partitions p USING (position)
    """
)
# By the primary key's whole prefix, so that the plan cannot depend on statistics.
_FILE_EXTENTS_SQL = """
    SELECT topic_id, min_ns, max_ns FROM timeline_extents
    WHERE org_id = %(org_id)s AND file_id = %(file_id)s AND topic_id = ANY(%(topic_ids)s)
    ORDER BY topic_id, ordinal
"""


def _device(row: Any) -> DeviceRecord:
    return DeviceRecord(
        device_id=row.device_id,
        org_id=row.org_id,
        name=row.name,
        created=row.created,
        created_by=row.created_by,
    )


def _dataset(row: Any) -> DatasetRecord:
    return DatasetRecord(
        dataset_id=row.dataset_id,
        org_id=row.org_id,
        name=row.name,
        device_id=row.device_id,
        created=row.created,
        created_by=row.created_by,
    )


def _file(row: Any) -> FileRecord:
    return FileRecord(
        file_id=row.file_id,
        org_id=row.org_id,
        dataset_id=row.dataset_id,
        relative_path=row.relative_path,
        size_bytes=row.size_bytes,
        device_id=row.device_id,
        unix_epoch_offset_ns=row.unix_epoch_offset_ns,
        extents_min_ns=row.extents_min_ns,
        extents_max_ns=row.extents_max_ns,
        created=row.created,
        created_by=row.created_by,
        content_sha256=row.content_sha256,
        recovery=(
            None
            if row.recovery_reason is None
            else FileRecovery(
                reason=row.recovery_reason,
                detail=row.recovery_detail,
                message_count=row.recovery_message_count,
                readable_bytes=row.recovery_readable_bytes,
            )
        ),
    )


class CatalogRepository:
    """All SQL about the catalog, scoped to the caller's org. Flushes, never commits."""

    def __init__(self, session: AsyncSession, caller: Caller) -> None:
        self.db = session
        self.caller = caller
        self.org_id = caller.org_id

    # --- devices -------------------------------------------------------------------------------

    async def create_device(self, device_id: str, name: str) -> DeviceRecord:
        row = (
            await self.db.execute(
                pg_insert(DV)
                .values(
                    org_id=self.org_id,
                    device_id=device_id,
                    name=name,
                    created_by=self.caller.principal_id,
                )
                .on_conflict_do_nothing(index_elements=[DV.c.org_id, DV.c.device_id])
                .returning(DV)
            )
        ).one_or_none()
        if row is None:
            raise AlreadyExists(f"a device with ID {device_id!r} already exists")
        return _device(row)

    async def get_device(self, device_id: str) -> DeviceRecord:
        row = (
            await self.db.execute(select(DV).where(keyed(self.org_id, DV.c.device_id, device_id)))
        ).one_or_none()
        if row is None:
            raise NotFound("device", [device_id])
        return _device(row)

    async def list_devices(self, after: str | None, limit: int) -> list[DeviceRecord]:
        """Devices in ID order, after the keyset position ``after``."""
        query = select(DV).where(DV.c.org_id == self.org_id).order_by(DV.c.device_id).limit(limit)
        if after is not None:
            query = query.where(DV.c.device_id > after)
        return [_device(row) for row in await self.db.execute(query)]

    async def delete_device(self, device_id: str) -> None:
        """Deletes the device; its attachments go with it (cascade) and the datasets, files and
        metric values that name it keep no device (``SET NULL``)."""
        await self.db.execute(delete(DV).where(keyed(self.org_id, DV.c.device_id, device_id)))

    async def _key_share_device(self, device_id: str) -> bool:
        """Keeps the device from being deleted until commit; False when it does not exist."""
        found = await self.db.scalar(
            select(DV.c.device_id)
            .where(keyed(self.org_id, DV.c.device_id, device_id))
            .with_for_update(read=True, key_share=True)
        )
        return found is not None

    # --- datasets ------------------------------------------------------------------------------

    async def create_dataset(
        self, name: str, device_id: str | None, request: IdempotencyKey | None = None
    ) -> DatasetRecord:
        """Inserts a dataset; with ``request``, a replay returns the dataset made first."""
        if request is not None:
            replayed = await self._replayed(DS, request)
            if replayed is not None:
                return _dataset(replayed)
        if device_id is not None and not await self._key_share_device(device_id):
            raise NotFound("device", [device_id])
        row = (
            await self.db.execute(
                pg_insert(DS)
                .values(
                    org_id=self.org_id,
                    dataset_id=new_id("dataset"),
                    name=name,
                    device_id=device_id,
                    created_by=self.caller.principal_id,
                    request_id=request.request_id if request else None,
                    request_digest=request.digest if request else None,
                )
                .on_conflict_do_nothing()
                .returning(DS)
            )
        ).one_or_none()
        if row is None:  # only the request_id can conflict: a concurrent replay committed first
            assert request is not None
            row = await self._replayed(DS, request)
            assert row is not None
        return _dataset(row)

    async def _replayed(self, table: Table, request: IdempotencyKey) -> Any:
        """The row an earlier call with this ``request_id`` made (None when there is none);
        REQUEST_ID_REUSED when that call had another body."""
        row = (
            await self.db.execute(
                select(table).where(keyed(self.org_id, table.c.request_id, request.request_id))
            )
        ).one_or_none()
        if row is not None and row.request_digest != request.digest:
            raise RequestIdReused(
                f"request_id {request.request_id!r} was already used with a different request"
            )
        return row

    async def get_dataset(self, dataset_id: str, *, key_share: bool = False) -> DatasetRecord:
        query = select(DS).where(keyed(self.org_id, DS.c.dataset_id, dataset_id))
        if key_share:
            query = query.with_for_update(read=True, key_share=True)
        row = (await self.db.execute(query)).one_or_none()
        if row is None:
            raise NotFound("dataset", [dataset_id])
        return _dataset(row)

    async def list_datasets(
        self, name: str | None, after: tuple[dt.datetime, str] | None, limit: int
    ) -> list[DatasetRecord]:
        """Datasets newest first (ties by ID, descending), after the keyset position ``after``;
        only those named ``name`` unless it is None."""
        query = (
            select(DS)
            .where(DS.c.org_id == self.org_id)
            .order_by(DS.c.created.desc(), DS.c.dataset_id.desc())
            .limit(limit)
        )
        if name is not None:
            query = query.where(DS.c.name == name)
        if after is not None:
            query = query.where(tuple_(DS.c.created, DS.c.dataset_id) < tuple_(*after))
        return [_dataset(row) for row in await self.db.execute(query)]

    # --- files ---------------------------------------------------------------------------------

    async def register_file(
        self,
        file: FileInput,
        checked: CheckedFile,
        extras: FileExtras,
        request: IdempotencyKey | None = None,
    ) -> FileRecord:
        """Inserts a file with its partitions and extents; topics are matched by (name, schema
        name) or created. ``file`` has passed ``catalog.check_file``, which found ``checked``
        (the extents' minimum and maximum, the recovery to store). NOT_FOUND for an unknown
        dataset or device, ALREADY_EXISTS for a taken path. With ``request``, a replay returns
        the file registered first.

        The partitions and extents are read from ``file`` as they are written, never copied
        whole (see ``_insert_partitions``). Columns the file row gains are set here."""
        if request is not None:
            replayed = await self._replayed(F, request)
            if replayed is not None:
                return _file(replayed)
        dataset = await self.get_dataset(file.dataset_id, key_share=True)
        device_id = file.device_id or None
        if device_id is not None:
            if not await self._key_share_device(device_id):
                raise NotFound("device", [device_id])
        elif dataset.device_id is not None and await self._key_share_device(dataset.device_id):
            # (A dataset device deleted since the dataset was read leaves the file without one.)
            device_id = dataset.device_id
        extents, recovery = checked.extents, checked.recovery
        row = (
            await self.db.execute(
                pg_insert(F)
                .values(
                    org_id=self.org_id,
                    file_id=new_id("file"),
                    dataset_id=file.dataset_id,
                    device_id=device_id,
                    relative_path=file.relative_path,
                    size_bytes=file.size_bytes,
                    unix_epoch_offset_ns=file.unix_epoch_offset_ns,
                    extents_min_ns=extents[0] if extents else None,
                    extents_max_ns=extents[1] if extents else None,
                    created_by=self.caller.principal_id,
                    request_id=request.request_id if request else None,
                    request_digest=request.digest if request else None,
                    content_sha256=extras.content_sha256,
                    recovery_reason=recovery.reason if recovery else None,
                    recovery_detail=recovery.detail if recovery else None,
                    recovery_message_count=recovery.message_count if recovery else None,
                    recovery_readable_bytes=recovery.readable_bytes if recovery else None,
                )
                .on_conflict_do_nothing()  # the path, or the request_id, is taken
                .returning(F)
            )
        ).one_or_none()
        if row is None and request is not None:
            replayed = await self._replayed(F, request)  # a concurrent replay committed first
            if replayed is not None:
                return _file(replayed)
        if row is None:
            raise AlreadyExists(
                f"dataset {file.dataset_id} already has a file at {file.relative_path!r}"
            )
        stored = _file(row)
        if file.partitions:
            await self._insert_partitions(stored.file_id, file.partitions)
        return stored

    async def _insert_partitions(self, file_id: str, partitions: Sequence[PartitionInput]) -> None:
        """Inserts the file's partitions and extents, creating the topic identities that do not
        exist yet.

        The partitions and extents are copied (binary COPY, formatted by psycopg in C and sent in
        32 KiB chunks) to temporary tables straight from the request, so that memory does not
        grow with their number, and other calls run between slices. SQL then does the rest, and
        no topic ID comes back to Python. (A statement per column of up to 10,000 values would
        have psycopg dump them to arrays in Python, about 20 µs a value, all at once.)

        ``ON CONFLICT DO NOTHING`` waits for a concurrent registration inserting the same topic
        and then skips it, so concurrent registrations never fail; topics go in (name, schema
        name) order so that two of them wait on each other in the same order (no deadlock). The
        next statement takes a new snapshot (READ COMMITTED), so it finds the identities this
        transaction inserted and those a concurrent registration committed meanwhile alike. A
        topic's message encoding is the one it was first registered with."""
        for statement in _CREATE_SENT_SQL:
            await self.db.execute(statement)
        pacer = Pacer()
        async with self._copy(_COPY_SENT_PARTITIONS_SQL, _SENT_PARTITION_TYPES) as copy:
            for position, p in enumerate(partitions):
                new_topic_id = new_id("topic")  # used if the topic is new
                await copy.write_row(
                    (
                        position,
                        new_topic_id,
                        p.topic_name,
                        p.schema_name,
                        p.message_encoding,
                        p.message_count,
                    )
                )
                await pacer.tick()
        async with self._copy(_COPY_SENT_EXTENTS_SQL, _SENT_EXTENT_TYPES) as copy:
            for position, p in enumerate(partitions):
                for ordinal, extent in enumerate(p.extents):
                    await copy.write_row(
                        (position, ordinal, extent.min_timestamp_ns, extent.max_timestamp_ns)
                    )
                    if ordinal % _ROWS_PER_TICK == _ROWS_PER_TICK - 1:
                        await pacer.tick()
                await pacer.tick()
        org = {"org_id": self.org_id}
        await self.db.execute(_INSERT_TOPICS_SQL, org)
        await self.db.execute(_FIND_TOPICS_SQL, org)
        await self._replan_foreign_key_checks(len(partitions))
        await self.db.execute(_INSERT_PARTITIONS_SQL, {**org, "file_id": file_id})
        await self._replan_foreign_key_checks(sum(len(p.extents) for p in partitions))
        await self.db.execute(_INSERT_EXTENTS_SQL, {**org, "file_id": file_id})

    async def _replan_foreign_key_checks(self, rows: int) -> None:
        """Before inserting ``rows`` rows that each check a foreign key, drops the connection's
        cached plans when there are many.

        PostgreSQL checks each row's foreign key with a query whose plan the connection keeps.
        Planned while the referenced table was tiny (a new deployment, a test database), it may
        use another index that starts with ``org_id`` and filter the rest, reading all of the
        org's topics or partitions for every row: a file of 10,000 new topics took over 30 s.
        Planned again now, after this registration's own inserts, the table's size makes the
        primary key the obvious choice (0.3 s)."""
        if rows >= _MANY_ROWS:
            await self.db.execute(text("DISCARD PLANS"))

    @asynccontextmanager
    async def _copy(self, statement: str, types: Sequence[str]) -> AsyncIterator[AsyncCopy]:
        """A binary ``COPY ... FROM STDIN`` in this transaction, on its psycopg connection:
        psycopg formats the rows in C and sends them in 32 KiB chunks as they come."""
        connection = await self.db.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.cursor() as cursor, cursor.copy(statement) as copy:
            copy.set_types(types)
            yield copy

    async def get_file(self, file_id: str) -> FileRecord:
        row = (
            await self.db.execute(select(F).where(keyed(self.org_id, F.c.file_id, file_id)))
        ).one_or_none()
        if row is None:
            raise NotFound("file", [file_id])
        return _file(row)

    async def list_files(
        self,
        dataset_id: str | None,
        after: str | None,
        limit: int,
        *,
        content_sha256: str | None = None,
        recovered: bool | None = None,
    ) -> list[FileRecord]:
        """A dataset's files by relative path, or (``dataset_id`` None) the org's files by ID,
        after the keyset position ``after`` (a path or an ID); only those with this content hash
        unless it is None, and only the recovered (True) or intact (False) ones unless None."""
        query = select(F).where(F.c.org_id == self.org_id).limit(limit)
        if content_sha256 is not None:
            query = query.where(F.c.content_sha256 == content_sha256)
        if recovered is not None:
            reason = F.c.recovery_reason
            query = query.where(reason.is_not(None) if recovered else reason.is_(None))
        key = F.c.file_id
        if dataset_id is not None:
            query = query.where(F.c.dataset_id == dataset_id)
            key = F.c.relative_path
        query = query.order_by(key)
        if after is not None:
            query = query.where(key > after)
        return [_file(row) for row in await self.db.execute(query)]

    async def list_partitions(
        self, file_id: str, after: tuple[str, str] | None, limit: int
    ) -> list[PartitionRecord]:
        """Up to ``limit`` of the file's partitions after ``after``, in (topic name, topic ID)
        order, each with its number of extents (read them with ``extents_of_partitions``)."""
        # Counted per partition, by the primary key's whole prefix: a plan cannot make this
        # read more than the batch's own extents, whatever the statistics say.
        extent_count = (
            select(func.count())
            .where(
                E.c.org_id == P.c.org_id, E.c.file_id == P.c.file_id, E.c.topic_id == P.c.topic_id
            )
            .scalar_subquery()
        )
        query = (
            select(
                P.c.topic_id,
                P.c.message_count,
                T.c.name,
                T.c.schema_name,
                T.c.message_encoding,
                extent_count.label("extent_count"),
            )
            .join(T, and_(T.c.org_id == P.c.org_id, T.c.topic_id == P.c.topic_id))
            .where(P.c.org_id == self.org_id, P.c.file_id == file_id)
            .order_by(T.c.name, T.c.topic_id)
            .limit(limit)
        )
        if after is not None:
            query = query.where(tuple_(T.c.name, T.c.topic_id) > tuple_(*after))
        partitions = []
        pacer = Pacer()  # 1,000 rows through SQLAlchemy take longer than other calls may wait
        for r in await self.db.execute(query):
            partitions.append(
                PartitionRecord(
                    topic=TopicRecord(r.topic_id, r.name, r.schema_name, r.message_encoding),
                    file_id=file_id,
                    message_count=r.message_count,
                    extent_count=r.extent_count,
                )
            )
            await pacer.tick()
        return partitions

    async def extents_of_partitions(
        self, file_id: str, topic_ids: Sequence[str]
    ) -> AsyncGenerator[list[tuple[str, int, int]], None]:
        """The extents (topic ID, min_ns, max_ns) of the file's partitions of ``topic_ids``,
        ordered by (topic ID, ordinal), a chunk of rows at a time: a file may hold 100,000, so
        they are read through a server-side cursor, in binary. The caller closes the iterator
        (``contextlib.aclosing``) if it stops early."""
        connection = await self.db.connection()
        driver = (await connection.get_raw_connection()).driver_connection
        assert driver is not None
        async with driver.cursor(name="file_extents", binary=True) as cursor:
            await cursor.execute(
                _FILE_EXTENTS_SQL,
                {"org_id": self.org_id, "file_id": file_id, "topic_ids": list(topic_ids)},
            )
            while rows := await cursor.fetchmany(_EXTENT_ROWS_PER_FETCH):
                yield rows

    async def delete_file(self, file_id: str) -> None:
        """Deletes the file with its partitions and extents (cascade). Topic identities stay:
        other files may record them."""
        await self.db.execute(delete(F).where(keyed(self.org_id, F.c.file_id, file_id)))


# --- on a Tx (the session unit of work) ----------------------------------------------------------


# A probe of the primary key per device (``storage.id_rows``).
_MISSING_DEVICES = f"""
WITH found AS (
    SELECT device_id FROM devices
    WHERE (device_id, org_id) IN (SELECT * FROM {id_rows()})
    FOR KEY SHARE)
SELECT ARRAY(SELECT u.device_id
             FROM unnest($2::text[]) WITH ORDINALITY AS u(device_id, n)
             WHERE u.device_id NOT IN (SELECT device_id FROM found)
             ORDER BY u.n)
"""


async def missing_devices(tx: Tx, org_id: str, device_ids: Sequence[str]) -> list[str]:
    """The devices of ``device_ids`` that are not in the org, in order. The others are held
    (``FOR KEY SHARE``) until the transaction ends, so they cannot go before it commits."""
    row = await tx.one(_MISSING_DEVICES, [org_id, list(dict.fromkeys(device_ids))])
    return list(row[0])


@dataclass(frozen=True)
class DatasetContents:
    """What CreateSessionFromDataset takes from a dataset: its files in relative-path order,
    the devices (the dataset's first, then its files' in the order of their first file's path)
    and the bounds of the files' windows."""

    file_ids: list[str]
    device_ids: list[str]
    bounds: tuple[int | None, int | None]


async def dataset_contents(tx: Tx, org_id: str, dataset_id: str) -> DatasetContents:
    """The dataset's contents, held (``FOR KEY SHARE``) until the transaction ends; NOT_FOUND
    when the dataset is not in the org."""
    row = await tx.one(
        """WITH dataset AS (
               SELECT device_id FROM datasets
               WHERE org_id = $1 AND dataset_id = $2
               FOR KEY SHARE
           ), file AS (
               SELECT file_id, device_id, relative_path,
                      extents_min_ns + unix_epoch_offset_ns AS low,
                      extents_max_ns + unix_epoch_offset_ns AS high
               FROM files WHERE org_id = $1 AND dataset_id = $2
               FOR KEY SHARE
           )
           SELECT EXISTS (SELECT 1 FROM dataset),
                  ARRAY(SELECT device_id FROM dataset WHERE device_id IS NOT NULL),
                  ARRAY(SELECT device_id FROM file WHERE device_id IS NOT NULL
                        GROUP BY device_id ORDER BY min(relative_path), device_id),
                  ARRAY(SELECT file_id FROM file ORDER BY relative_path),
                  (SELECT min(low) FROM file),
                  (SELECT max(high) FROM file)""",
        [org_id, dataset_id],
    )
    if not row[0]:
        raise NotFound("dataset", [dataset_id])
    return DatasetContents(
        file_ids=list(row[3]),
        device_ids=list(dict.fromkeys([*row[1], *row[2]])),
        bounds=(row[4], row[5]),
    )


_FILE_COLUMN_NAMES = (
    "file_id",
    "org_id",
    "dataset_id",
    "relative_path",
    "size_bytes",
    "device_id",
    "unix_epoch_offset_ns",
    "extents_min_ns",
    "extents_max_ns",
    "created",
    "created_by",
    "content_sha256",
    "recovery_reason",
    "recovery_detail",
    "recovery_message_count",
    "recovery_readable_bytes",
)
_FILE_COLUMNS = ", ".join(_FILE_COLUMN_NAMES)


def _file_of(row: Row) -> FileRecord:
    """A file from a row of ``_FILE_COLUMNS`` (mapped like every other read of a file)."""
    return _file(SimpleNamespace(**dict(zip(_FILE_COLUMN_NAMES, row, strict=True))))


async def file_of(tx: Tx, org_id: str, file_id: str) -> FileRecord:
    """The file (locked by the caller already); NOT_FOUND when not in the org."""
    row = await tx.row(
        f"SELECT {_FILE_COLUMNS} FROM files WHERE org_id = $1 AND file_id = $2",
        [org_id, file_id],
    )
    if row is None:
        raise NotFound("file", [file_id])
    return _file_of(row)


async def set_file_offset(tx: Tx, org_id: str, file_id: str, offset: int) -> FileRecord:
    row = await tx.one(
        f"UPDATE files SET unix_epoch_offset_ns = $3 WHERE org_id = $1 AND file_id = $2"
        f" RETURNING {_FILE_COLUMNS}",
        [org_id, file_id, offset],
    )
    return _file_of(row)


async def delete_file(tx: Tx, org_id: str, file_id: str) -> None:
    """Deletes the file with its partitions, extents and contributions (cascade). Topic
    identities stay: other files may record them."""
    await tx.run("DELETE FROM files WHERE org_id = $1 AND file_id = $2", [org_id, file_id])


async def delete_device(tx: Tx, org_id: str, device_id: str) -> None:
    """Deletes the device; its attachments go with it (cascade), and the datasets, files and
    metric values that name it keep no device (``SET NULL``)."""
    await tx.run("DELETE FROM devices WHERE org_id = $1 AND device_id = $2", [org_id, device_id])
