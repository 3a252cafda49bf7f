"""SessionService: protobuf in, protobuf out; rules from ``domain``, SQL from ``storage``."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from grpc import aio
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from flightlog.v1 import common_pb2, session_service_pb2, session_service_pb2_grpc
from flightlog_server.domain import metrics, rules
from flightlog_server.domain.catalog import MAX_TOPIC_NAME_CHARS, TopicRecord
from flightlog_server.domain.errors import InvalidArgument, NotFound
from flightlog_server.domain.metrics import MetricRecord
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldType,
    FieldValue,
    MetricEntry,
    SessionState,
    WireValue,
)
from flightlog_server.rpc import convert, pagination, session_listing, watch
from flightlog_server.rpc.calls import current_caller
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database
from flightlog_server.storage.metrics import MetricRepository
from flightlog_server.storage.sessions import (
    SessionRepository,
    record_and_ready_fields,
)
from flightlog_server.storage.topics import TopicRepository

pb = session_service_pb2
Context = aio.ServicerContext[Any, Any]
NewSessionRequest = pb.CreateSessionRequest | pb.CreateSessionFromDatasetRequest
# The requests of a session's own listings, and the response messages they stream.
SessionListRequest = (
    pb.ListSessionFilesRequest
    | pb.ListSessionDevicesRequest
    | pb.ListSessionTopicsRequest
    | pb.ListSessionMetricsRequest
)
Response = TypeVar("Response")
# Custom-field values to write, keyed by field ID; None clears.
FieldWrites = dict[str, tuple[CustomFieldType, FieldValue | None]]


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    # --- helpers -------------------------------------------------------------------------------

    def _repo(self, db: AsyncSession, caller: Caller) -> SessionRepository:
        return SessionRepository(db, caller, convert.encode_session)

    @staticmethod
    async def _ready_fields(db: AsyncSession, caller: Caller) -> list[str]:
        """The org's Ready field names, read at the start of a write: later, the org's revision
        row is locked (``commit_change``) and every round trip then delays the org's writers."""
        return await CustomFieldRepository(db, caller.org_id).ready_names()

    @staticmethod
    def _message(state: SessionState, ready_fields: list[str]) -> pb.Session:
        """The API form of a session: every Ready field present, unset ones null."""
        return convert.session_from_record(
            convert.null_custom_fields(ready_fields), convert.encode_session(state)
        )

    async def _field_writes(
        self,
        db: AsyncSession,
        caller: Caller,
        sent: Mapping[str, WireValue],
        field_path: str,
    ) -> FieldWrites:
        """Checks values against their Ready definitions; every bad one is a violation."""
        definitions = await CustomFieldRepository(db, caller.org_id).by_names(sent, lock=True)
        v = Violations()
        writes: FieldWrites = {}
        for name in sorted(sent):
            definition = definitions.get(name)
            ok, value = rules.coerce_field_value(v, f"{field_path}[{name}]", definition, sent[name])
            if ok and definition is not None:
                writes[definition.custom_field_id] = (definition.type, value)
        v.raise_if_any()
        return writes

    @staticmethod
    def _sent_values(
        v: Violations, values: Mapping[str, common_pb2.CustomFieldValue], field_path: str
    ) -> dict[str, WireValue]:
        sent: dict[str, WireValue] = {}
        for name, value in values.items():
            try:
                sent[name] = convert.wire_value(f"{field_path}[{name}]", value)
            except InvalidArgument as e:
                v.items.extend(e.violations)
        return sent

    # --- create / get / update / delete --------------------------------------------------------

    async def CreateSession(
        self, request: pb.CreateSessionRequest, context: Context
    ) -> pb.CreateSessionResponse:
        v = Violations()
        device_ids: list[str] = []
        if rules.check_count(
            v, "device_ids", len(request.device_ids), rules.MAX_DEVICE_IDS_PER_CALL, "device IDs"
        ):
            for i, device_id in enumerate(request.device_ids):
                rules.check_device_id(v, f"device_ids[{i}]", device_id)
            device_ids = rules.dedupe(request.device_ids)
        session = await self._create(v, request, device_ids=device_ids)
        return pb.CreateSessionResponse(session=session)

    async def CreateSessionFromDataset(
        self, request: pb.CreateSessionFromDatasetRequest, context: Context
    ) -> pb.CreateSessionFromDatasetResponse:
        v = Violations()
        rules.check_id(v, "dataset_id", request.dataset_id, "dataset")
        session = await self._create(v, request, dataset_id=request.dataset_id)
        return pb.CreateSessionFromDatasetResponse(session=session)

    async def _create(
        self,
        v: Violations,
        request: NewSessionRequest,
        *,
        device_ids: Sequence[str] = (),
        dataset_id: str | None = None,
    ) -> pb.Session:
        """What both creates share: the checks of the common fields (added to ``v``, which
        holds the caller's own), the ``request_id`` replay, custom-field values and the insert.
        With ``dataset_id``, the devices are the dataset's and its files' and every file of the
        dataset is added whole, in the same transaction."""
        caller = current_caller()
        rules.check_name(v, "name", request.name)
        rules.check_text(v, "description", request.description, rules.MAX_DESCRIPTION_CHARS)
        rules.check_tags(v, "tags", request.tags)
        metadata = convert.struct_to_dict(request.metadata)
        rules.check_metadata(v, "metadata", metadata)
        rules.check_request_id(v, request.request_id)
        sent = self._sent_values(v, request.custom_fields, "custom_fields")
        v.raise_if_any()
        request_id = request.request_id or None
        digest = (
            convert.request_fingerprint(type(request).__name__, request) if request_id else None
        )

        async def work(db: AsyncSession) -> pb.Session:
            ready = await self._ready_fields(db, caller)
            repo = self._repo(db, caller)
            state = await repo.find_by_request_id(request_id, digest or b"") if request_id else None
            if state is None:
                writes = await self._field_writes(db, caller, sent, "custom_fields")
                devices = device_ids
                if dataset_id is not None:
                    devices = await repo.dataset_devices(dataset_id)
                state = await repo.create(
                    name=request.name or None,
                    description=request.description or None,
                    device_ids=devices,
                    metadata=metadata,
                    tags=rules.dedupe(request.tags),
                    values=writes,
                    request_id=request_id,
                    digest=digest,
                    dataset_id=dataset_id,
                )
            if state is None:  # a concurrent create with the same request_id committed first
                assert request_id is not None
                state = await repo.find_by_request_id(request_id, digest or b"")
                assert state is not None
            return self._message(state, ready)

        return await self.database.run(work)

    async def GetSession(
        self, request: pb.GetSessionRequest, context: Context
    ) -> pb.GetSessionResponse:
        caller = current_caller()
        rules.require_id("session_id", request.session_id, "session")

        async def work(db: AsyncConnection) -> pb.Session:
            record, ready = await record_and_ready_fields(db, caller.org_id, request.session_id)
            return convert.session_from_record(convert.null_custom_fields(ready), record)

        return pb.GetSessionResponse(session=await self.database.read(work))

    async def UpdateSession(
        self, request: pb.UpdateSessionRequest, context: Context
    ) -> pb.UpdateSessionResponse:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        columns: dict[str, Any] = {}
        updates = (
            ("name", request.name if request.HasField("name") else None),
            ("description", request.description if request.HasField("description") else None),
        )
        for field, change in updates:
            if change is None:
                continue  # absent: unchanged
            action = change.WhichOneof("action")
            if action is None:
                v.add(field, "set either 'set' or 'clear', or leave the field absent")
            elif action == "set" and field == "name":
                rules.check_name(v, "name.set", change.set)
            elif action == "set":
                rules.check_text(v, f"{field}.set", change.set, rules.MAX_DESCRIPTION_CHARS)
            columns[field] = change.set or None  # clear, or set to "" (the same as clear)
        changes = request.metadata_changeset
        rules.check_tags(v, "metadata_changeset.put_tags", changes.put_tags)
        rules.check_tags(v, "metadata_changeset.remove_tags", changes.remove_tags)
        put_fields = convert.struct_to_dict(changes.put_fields)
        for key in put_fields:
            rules.check_metadata_path(v, f"metadata_changeset.put_fields[{key}]", key)
        for i, path in enumerate(changes.remove_fields):
            rules.check_metadata_path(v, f"metadata_changeset.remove_fields[{i}]", path)
        field_changes = request.custom_fields_changeset
        sent = self._sent_values(v, field_changes.set_fields, "custom_fields_changeset.set_fields")
        for i, name in enumerate(field_changes.clear_fields):
            if name in sent:
                v.add(
                    f"custom_fields_changeset.clear_fields[{i}]",
                    f"field {name!r} is both set and cleared",
                )
            sent.setdefault(name, WireValue("null", None))
        v.raise_if_any()

        async def work(db: AsyncSession) -> pb.Session:
            ready = await self._ready_fields(db, caller)
            repo = self._repo(db, caller)
            state = await repo.lock(request.session_id, _optional(request, "expected_revision"))
            if request.HasField("metadata_changeset"):
                after = Violations()
                tags = rules.apply_tag_changes(state.tags, changes.put_tags, changes.remove_tags)
                rules.check_tags(after, "metadata_changeset.put_tags", tags)
                metadata = rules.apply_metadata_changes(
                    state.metadata, put_fields, list(changes.remove_fields)
                )
                rules.check_metadata(after, "metadata_changeset.put_fields", metadata)
                after.raise_if_any()
                columns.update(tags=tags, metadata=metadata)
            writes = await self._field_writes(
                db, caller, sent, "custom_fields_changeset.set_fields"
            )
            await repo.update_fields(request.session_id, **columns)
            await repo.set_custom_values(request.session_id, writes)
            state = await repo.commit_change(request.session_id, "updated")
            return self._message(state, ready)

        return pb.UpdateSessionResponse(session=await self.database.run(work))

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        caller = current_caller()
        rules.require_id("session_id", request.session_id, "session")

        async def work(db: AsyncSession) -> None:
            await self._repo(db, caller).delete(
                request.session_id, _optional(request, "expected_revision")
            )

        await self.database.run(work)
        return pb.DeleteSessionResponse()

    # --- contributions -------------------------------------------------------------------------

    async def AddSessionFiles(
        self, request: pb.AddSessionFilesRequest, context: Context
    ) -> pb.AddSessionFilesResponse:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        if rules.check_count(v, "files", len(request.files), rules.MAX_FILES_PER_CALL, "files"):
            specs = [
                ContributionSpec(
                    file_id=f.file_id,
                    range_min_ns=f.range_min_timestamp_ns
                    if f.HasField("range_min_timestamp_ns")
                    else None,
                    range_max_ns=f.range_max_timestamp_ns
                    if f.HasField("range_max_timestamp_ns")
                    else None,
                )
                for f in request.files
            ]
            rules.check_contributions(v, specs)
        v.raise_if_any()

        async def work(db: AsyncSession) -> pb.Session:
            ready = await self._ready_fields(db, caller)
            repo = self._repo(db, caller)
            await repo.lock(request.session_id, _optional(request, "expected_revision"))
            await repo.add_contributions(request.session_id, specs)
            state = await repo.commit_change(request.session_id, "files_changed")
            return self._message(state, ready)

        return pb.AddSessionFilesResponse(session=await self.database.run(work))

    async def RemoveSessionFiles(
        self, request: pb.RemoveSessionFilesRequest, context: Context
    ) -> pb.RemoveSessionFilesResponse:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        if not request.file_ids:
            v.add("file_ids", "must name at least one file")
        elif len(request.file_ids) > rules.MAX_FILES_PER_CALL:
            v.add("file_ids", f"must name at most {rules.MAX_FILES_PER_CALL} files")
        else:
            for i, file_id in enumerate(request.file_ids):
                rules.check_id(v, f"file_ids[{i}]", file_id, "file")
        v.raise_if_any()

        async def work(db: AsyncSession) -> pb.Session:
            ready = await self._ready_fields(db, caller)
            repo = self._repo(db, caller)
            await repo.lock(request.session_id, _optional(request, "expected_revision"))
            await repo.remove_contributions(request.session_id, rules.dedupe(request.file_ids))
            state = await repo.commit_change(request.session_id, "files_changed")
            return self._message(state, ready)

        return pb.RemoveSessionFilesResponse(session=await self.database.run(work))

    async def ListSessionFiles(
        self, request: pb.ListSessionFilesRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionFilesResponse]:
        async def page(
            db: AsyncSession, caller: Caller, after: list[Any] | None, limit: int
        ) -> Any:
            return await self._repo(db, caller).list_contributions(
                request.session_id, after[0] if after else None, limit
            )

        def build(rows: Sequence[Any], token: str) -> pb.ListSessionFilesResponse:
            return pb.ListSessionFilesResponse(
                files=[_session_file_message(request.session_id, r) for r in rows],
                next_page_token=token,
            )

        async for response in self._stream_session_list(
            "ListSessionFiles", request, (int,), page, lambda r: [r.seq], build
        ):
            yield response

    # --- devices -------------------------------------------------------------------------------

    async def AttachSessionDevice(
        self, request: pb.AttachSessionDeviceRequest, context: Context
    ) -> pb.AttachSessionDeviceResponse:
        return pb.AttachSessionDeviceResponse(session=await self._change_device(request, True))

    async def DetachSessionDevice(
        self, request: pb.DetachSessionDeviceRequest, context: Context
    ) -> pb.DetachSessionDeviceResponse:
        return pb.DetachSessionDeviceResponse(session=await self._change_device(request, False))

    async def _change_device(
        self,
        request: pb.AttachSessionDeviceRequest | pb.DetachSessionDeviceRequest,
        attach: bool,
    ) -> pb.Session:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        rules.check_device_id(v, "device_id", request.device_id)
        v.raise_if_any()

        async def work(db: AsyncSession) -> pb.Session:
            ready = await self._ready_fields(db, caller)
            repo = self._repo(db, caller)
            state = await repo.lock(request.session_id, _optional(request, "expected_revision"))
            if attach:
                changed = await repo.attach_device(request.session_id, request.device_id)
            else:
                changed = await repo.detach_device(request.session_id, request.device_id)
            if changed:  # a no-op is not a change: no new revision, nothing in the feed
                state = await repo.commit_change(request.session_id, "devices_changed")
            return self._message(state, ready)

        return await self.database.run(work)

    async def ListSessionDevices(
        self, request: pb.ListSessionDevicesRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionDevicesResponse]:
        async def page(
            db: AsyncSession, caller: Caller, after: list[Any] | None, limit: int
        ) -> Any:
            return await self._repo(db, caller).list_devices(
                request.session_id, after[0] if after else None, limit
            )

        def build(rows: Sequence[Any], token: str) -> pb.ListSessionDevicesResponse:
            return pb.ListSessionDevicesResponse(
                devices=[
                    pb.SessionDevice(
                        device_id=r.device_id,
                        attached=convert.timestamp(r.attached),
                        attached_by=r.attached_by,
                    )
                    for r in rows
                ],
                next_page_token=token,
            )

        async for response in self._stream_session_list(
            "ListSessionDevices", request, (int,), page, lambda r: [r.seq], build
        ):
            yield response

    # --- topics --------------------------------------------------------------------------------

    async def ListSessionTopics(
        self, request: pb.ListSessionTopicsRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionTopicsResponse]:
        async def page(
            db: AsyncSession, caller: Caller, after: list[Any] | None, limit: int
        ) -> Any:
            return await TopicRepository(db, caller.org_id).list_reachable(
                request.session_id, (after[0], after[1]) if after else None, limit
            )

        def build(topics: Sequence[TopicRecord], token: str) -> pb.ListSessionTopicsResponse:
            return pb.ListSessionTopicsResponse(
                topics=[_topic_message(t) for t in topics], next_page_token=token
            )

        async for response in self._stream_session_list(
            "ListSessionTopics", request, (str, str), page, lambda t: [t.name, t.topic_id], build
        ):
            yield response

    async def GetSessionTopic(
        self, request: pb.GetSessionTopicRequest, context: Context
    ) -> pb.GetSessionTopicResponse:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        if v.check(bool(request.topic_name), "topic_name", "is required"):
            rules.check_text(
                v, "topic_name", request.topic_name, MAX_TOPIC_NAME_CHARS, allow_newlines=False
            )
        v.raise_if_any()

        async def work(db: AsyncSession) -> TopicRecord:
            await self._repo(db, caller).require(request.session_id)
            topic = await TopicRepository(db, caller.org_id).reachable_by_name(
                request.session_id, request.topic_name
            )
            if topic is None:
                raise NotFound("topic", [request.topic_name])
            return topic

        return pb.GetSessionTopicResponse(topic=_topic_message(await self.database.run(work)))

    # --- metrics -------------------------------------------------------------------------------

    async def PublishSessionMetrics(
        self, request: pb.PublishSessionMetricsRequest, context: Context
    ) -> pb.PublishSessionMetricsResponse:
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        metrics.check_batch(v, len(request.metrics))
        device = request.WhichOneof("device")
        if device == "device_id":
            rules.check_device_id(v, "device_id", request.device_id)
        v.raise_if_any()
        accepted, failures = metrics.split_entries(
            [MetricEntry(name=e.name, value=e.value) for e in request.metrics]
        )

        async def work(db: AsyncSession) -> list[MetricRecord]:
            repo = self._repo(db, caller)
            state = await repo.lock(request.session_id, None)
            device_id: str | None = None
            if device == "device_id":
                await repo.require_devices([request.device_id])
                device_id = request.device_id
            elif device is None:
                device_id = metrics.inferred_device(await repo.device_ids(request.session_id))
            if not accepted:
                return []
            records = await MetricRepository(db, caller).publish(
                request.session_id,
                device_id,
                accepted,
                (state.min_timestamp_ns, state.max_timestamp_ns),
            )
            await repo.commit_change(request.session_id, "metrics_published", touch=False)
            return records

        records = await self.database.run(work)
        return pb.PublishSessionMetricsResponse(
            succeeded=[_metric_message(r) for r in records],
            failed=[
                pb.MetricFailure(
                    entry=pb.MetricEntry(name=f.entry.name, value=f.entry.value),
                    index=f.index,
                    reason=f.reason,
                )
                for f in failures
            ],
        )

    async def ListSessionMetrics(
        self, request: pb.ListSessionMetricsRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionMetricsResponse]:
        async def page(
            db: AsyncSession, caller: Caller, after: list[Any] | None, limit: int
        ) -> Any:
            return await MetricRepository(db, caller).list_values(
                request.session_id, after[0] if after else None, limit
            )

        def build(records: Sequence[MetricRecord], token: str) -> pb.ListSessionMetricsResponse:
            return pb.ListSessionMetricsResponse(
                metrics=[_metric_message(r) for r in records], next_page_token=token
            )

        async for response in self._stream_session_list(
            "ListSessionMetrics", request, (str,), page, lambda r: [r.name], build
        ):
            yield response

    async def _stream_session_list(
        self,
        method: str,
        request: SessionListRequest,
        position_types: tuple[type, ...],
        page: Callable[[AsyncSession, Caller, list[Any] | None, int], Awaitable[Any]],
        position_of: Callable[[Any], list[Any]],
        build: Callable[[Sequence[Any], str], Response],
    ) -> AsyncIterator[Response]:
        """Streams one of a session's own listings (files, devices, topics, metrics) in keyset
        pages; an unknown session is NOT_FOUND, checked with the first page."""
        caller = current_caller()
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()

        async def fetch(db: AsyncSession, after: list[Any] | None, limit: int) -> Any:
            after = pagination.checked_position(after, *position_types)
            if after is None:
                await self._repo(db, caller).require(request.session_id)
            return await page(db, caller, after, limit)

        async for response in pagination.stream_pages(
            self.database,
            scope=pagination.fingerprint(method, caller.org_id, request.session_id),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=position_of,
            build=build,
        ):
            yield response

    # --- listing and the change feed live in their own modules ----------------------------------

    async def ListSessions(  # type: ignore[override]
        self, request: pb.ListSessionsRequest, context: Context
    ) -> AsyncIterator[bytes]:
        # Yields serialized ListSessionsResponse batches, built by PostgreSQL from the stored
        # wire records (rpc.session_listing); app.py registers this method with a serializer
        # that passes bytes through (rpc.preserialized), so the wire is the same as for messages.
        async for batch in session_listing.list_session_batches(
            self.database, current_caller(), request
        ):
            yield batch

    async def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[pb.WatchSessionsResponse]:
        async for response in watch.watch_sessions(
            self.database, current_caller(), request, context
        ):
            yield response


def _optional(message: Any, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


def _session_file_message(session_id: str, row: Any) -> pb.SessionFile:
    message = pb.SessionFile(
        session_id=session_id,
        file_id=row.file_id,
        dataset_id=row.dataset_id,
        relative_path=row.relative_path,
        size_bytes=row.size_bytes,
        created=convert.timestamp(row.created),
        created_by=row.created_by,
        modified=convert.timestamp(row.modified),
        modified_by=row.modified_by,
    )
    if row.range_min_ns is not None:  # both bounds or neither (a CHECK constraint)
        message.range_min_timestamp_ns = row.range_min_ns
        message.range_max_timestamp_ns = row.range_max_ns
    return message


def _topic_message(topic: TopicRecord) -> common_pb2.Topic:
    return common_pb2.Topic(
        topic_id=topic.topic_id,
        name=topic.name,
        schema_name=topic.schema_name,
        message_encoding=topic.message_encoding,
    )


def _metric_message(record: MetricRecord) -> pb.Metric:
    message = pb.Metric(
        metric_id=record.metric_id,
        name=record.name,
        session_id=record.session_id,
        value=record.value,
        published=convert.timestamp(record.published),
        published_by=record.published_by,
    )
    if record.device_id is not None:
        message.device_id = record.device_id
    if record.min_timestamp_ns is not None:
        message.min_timestamp_ns = record.min_timestamp_ns
    if record.max_timestamp_ns is not None:
        message.max_timestamp_ns = record.max_timestamp_ns
    return message
