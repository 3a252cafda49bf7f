"""SessionService: checks each request, calls its use case (``services.sessions``) and maps the
result to protobuf.

Sessions travel as stored: a use case returns a session's record (its serialized ``Session``) and
the org's Ready field names, and the response is assembled from bytes (``_sessions``), without
building or parsing a message per session.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from grpc import aio

from flightlog.v1 import common_pb2, session_service_pb2, session_service_pb2_grpc
from flightlog_server.domain import metrics, rules
from flightlog_server.domain.catalog import MAX_TOPIC_NAME_CHARS, TopicRecord
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.metrics import MetricRecord
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.sessions import (
    INFER,
    KEEP,
    Infer,
    Keep,
    MetricValues,
    NewSession,
    SentValue,
    SessionUpdate,
)
from flightlog_server.domain.types import Caller, ContributionSpec, MetricEntry, WireValue
from flightlog_server.pacing import run_sliced
from flightlog_server.rpc import aggregation, convert, pagination, session_listing, watch
from flightlog_server.rpc.calls import current_caller
from flightlog_server.rpc.piecewise import Streamed, WireRepeated
from flightlog_server.rpc.preserialized import Serialized, length_delimited
from flightlog_server.services.aggregation import Aggregations
from flightlog_server.services.change_feed import Database as FeedDatabase
from flightlog_server.services.session_listing import SessionListings
from flightlog_server.services.session_parts import SessionParts
from flightlog_server.services.sessions import PublishOutcome, Sessions, SessionView

pb = session_service_pb2
Context = aio.ServicerContext[Any, Any]
# The requests of a session's own listings.
SessionListRequest = (
    pb.ListSessionFilesRequest
    | pb.ListSessionDevicesRequest
    | pb.ListSessionTopicsRequest
    | pb.ListSessionMetricsRequest
)
Response = TypeVar("Response")
Item = TypeVar("Item")

MAX_BATCH_SESSIONS = 1_000
MAX_BATCH_METRIC_ENTRIES = 10_000


class SessionServicer(session_service_pb2_grpc.SessionServiceServicer):
    def __init__(
        self,
        sessions: Sessions,
        parts: SessionParts,
        listings: SessionListings,
        aggregations: Aggregations,
        feed_database: FeedDatabase,
    ) -> None:
        self.sessions = sessions
        self.parts = parts
        self.listings = listings
        self.aggregations = aggregations
        # WatchSessions' readers are shared by every watch of the process, per database
        # (services.change_feed.change_feed).
        self.feed_database = feed_database

    # --- create / get / update / delete --------------------------------------------------------

    async def CreateSession(self, request: pb.CreateSessionRequest, context: Context) -> Serialized:
        new = _new_session(request, "")
        return _sessions([await self.sessions.create(current_caller(), new)])

    async def BatchCreateSessions(
        self, request: pb.BatchCreateSessionsRequest, context: Context
    ) -> Serialized:
        v = Violations()
        count = len(request.requests)
        if not 1 <= count <= MAX_BATCH_SESSIONS:
            v.add("requests", f"must hold 1 to {MAX_BATCH_SESSIONS} sessions")
        v.raise_if_any()
        items: list[NewSession] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(request.requests):
            try:
                items.append(_new_session(item, f"requests[{i}]."))
            except InvalidArgument as e:
                v.items.extend(e.violations)
            if item.request_id:
                if item.request_id in seen:
                    v.add(
                        f"requests[{i}].request_id",
                        f"repeats requests[{seen[item.request_id]}].request_id",
                    )
                seen.setdefault(item.request_id, i)
        v.raise_if_any()
        return _sessions(await self.sessions.create_many(current_caller(), items))

    async def CreateSessionFromDataset(
        self, request: pb.CreateSessionFromDatasetRequest, context: Context
    ) -> Serialized:
        new = _new_session(request, "")
        return _sessions([await self.sessions.create(current_caller(), new)])

    async def GetSession(self, request: pb.GetSessionRequest, context: Context) -> Serialized:
        rules.require_id("session_id", request.session_id, "session")
        return _sessions([await self.sessions.get(current_caller(), request.session_id)])

    async def BatchGetSessions(
        self, request: pb.BatchGetSessionsRequest, context: Context
    ) -> Serialized:
        v = Violations()
        if not 1 <= len(request.session_ids) <= MAX_BATCH_SESSIONS:
            v.add("session_ids", f"must name 1 to {MAX_BATCH_SESSIONS} sessions")
        else:
            for i, session_id in enumerate(request.session_ids):
                rules.check_id(v, f"session_ids[{i}]", session_id, "session")
        v.raise_if_any()
        return _sessions(await self.sessions.get_many(current_caller(), request.session_ids))

    async def UpdateSession(self, request: pb.UpdateSessionRequest, context: Context) -> Serialized:
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        name = _string_update(v, request, "name")
        description = _string_update(v, request, "description")
        changes = request.metadata_changeset
        rules.check_tags(v, "metadata_changeset.put_tags", changes.put_tags)
        rules.check_tags(v, "metadata_changeset.remove_tags", changes.remove_tags)
        put_fields = convert.struct_to_dict(changes.put_fields)
        for key in put_fields:
            rules.check_metadata_path(v, f"metadata_changeset.put_fields[{key}]", key)
        for i, path in enumerate(changes.remove_fields):
            rules.check_metadata_path(v, f"metadata_changeset.remove_fields[{i}]", path)
        field_changes = request.custom_fields_changeset
        values = _sent_values(v, field_changes.set_fields, "custom_fields_changeset.set_fields")
        for i, field_name in enumerate(field_changes.clear_fields):
            path = f"custom_fields_changeset.clear_fields[{i}]"
            if field_name in values:
                v.add(path, f"field {field_name!r} is both set and cleared")
            values.setdefault(field_name, SentValue(path, WireValue("null", None)))
        metric_values = None
        if request.HasField("metrics"):
            metric_values = _metric_values(
                v,
                request.metrics.entries,
                _device_choice(v, request.metrics, "metrics.device_id"),
                "metrics.entries",
                "metrics.device_id",
            )
        v.raise_if_any()
        update = SessionUpdate(
            session_id=request.session_id,
            expected_revision=_optional(request, "expected_revision"),
            name=name,
            description=description,
            changes_metadata=request.HasField("metadata_changeset"),
            put_tags=tuple(changes.put_tags),
            remove_tags=tuple(changes.remove_tags),
            put_fields=put_fields,
            remove_fields=tuple(changes.remove_fields),
            values=values,
            metrics=metric_values,
        )
        return _sessions([await self.sessions.update(current_caller(), update)])

    async def DeleteSession(
        self, request: pb.DeleteSessionRequest, context: Context
    ) -> pb.DeleteSessionResponse:
        rules.require_id("session_id", request.session_id, "session")
        await self.sessions.delete(
            current_caller(), request.session_id, _optional(request, "expected_revision")
        )
        return pb.DeleteSessionResponse()

    # --- contributions -------------------------------------------------------------------------

    async def AddSessionFiles(  # type: ignore[override]  # read from the wire, not built whole
        self, request: WireRepeated[pb.AddSessionFilesRequest], context: Context
    ) -> Serialized:
        # The files are read a window at a time (rpc.piecewise), which also refused more than
        # MAX_FILES_PER_CALL, and each spec is made when it is used, never all kept at once.
        header = request.header
        v = Violations()
        rules.check_id(v, "session_id", header.session_id, "session")
        specs = _ContributionSpecs(request)
        await run_sliced(rules.check_contributions(v, specs))
        v.raise_if_any()
        view = await self.sessions.add_files(
            current_caller(), header.session_id, specs, _optional(header, "expected_revision")
        )
        return _sessions([view])

    async def RemoveSessionFiles(
        self, request: pb.RemoveSessionFilesRequest, context: Context
    ) -> Serialized:
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
        view = await self.sessions.remove_files(
            current_caller(),
            request.session_id,
            rules.dedupe(request.file_ids),
            _optional(request, "expected_revision"),
        )
        return _sessions([view])

    async def ListSessionFiles(
        self, request: pb.ListSessionFilesRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionFilesResponse]:
        caller = current_caller()

        async def page(after: list[Any] | None, limit: int) -> list[Any]:
            seq = pagination.checked_position(after, int)
            return await self.parts.files(
                caller, request.session_id, seq[0] if seq else None, limit
            )

        def build(rows: Sequence[Any], token: str) -> pb.ListSessionFilesResponse:
            return pb.ListSessionFilesResponse(
                files=[_session_file_message(request.session_id, r) for r in rows],
                next_page_token=token,
            )

        async for response in _stream_part(
            "ListSessionFiles", caller, request, page, lambda r: [r.seq], build
        ):
            yield response

    # --- devices -------------------------------------------------------------------------------

    async def AttachSessionDevice(
        self, request: pb.AttachSessionDeviceRequest, context: Context
    ) -> Serialized:
        _check_device_request(request)
        view = await self.sessions.attach_device(
            current_caller(),
            request.session_id,
            request.device_id,
            _optional(request, "expected_revision"),
        )
        return _sessions([view])

    async def DetachSessionDevice(
        self, request: pb.DetachSessionDeviceRequest, context: Context
    ) -> Serialized:
        _check_device_request(request)
        view = await self.sessions.detach_device(
            current_caller(),
            request.session_id,
            request.device_id,
            _optional(request, "expected_revision"),
        )
        return _sessions([view])

    async def ListSessionDevices(
        self, request: pb.ListSessionDevicesRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionDevicesResponse]:
        caller = current_caller()

        async def page(after: list[Any] | None, limit: int) -> list[Any]:
            seq = pagination.checked_position(after, int)
            return await self.parts.devices(
                caller, request.session_id, seq[0] if seq else None, limit
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

        async for response in _stream_part(
            "ListSessionDevices", caller, request, page, lambda r: [r.seq], build
        ):
            yield response

    # --- topics --------------------------------------------------------------------------------

    async def ListSessionTopics(
        self, request: pb.ListSessionTopicsRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionTopicsResponse]:
        caller = current_caller()

        async def page(after: list[Any] | None, limit: int) -> list[TopicRecord]:
            position = pagination.checked_position(after, str, str)
            keyset = (position[0], position[1]) if position else None
            return await self.parts.topics(caller, request.session_id, keyset, limit)

        def build(topics: Sequence[TopicRecord], token: str) -> pb.ListSessionTopicsResponse:
            return pb.ListSessionTopicsResponse(
                topics=[_topic_message(t) for t in topics], next_page_token=token
            )

        async for response in _stream_part(
            "ListSessionTopics", caller, request, page, lambda t: [t.name, t.topic_id], build
        ):
            yield response

    async def GetSessionTopic(
        self, request: pb.GetSessionTopicRequest, context: Context
    ) -> pb.GetSessionTopicResponse:
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        if v.check(bool(request.topic_name), "topic_name", "is required"):
            rules.check_text(
                v, "topic_name", request.topic_name, MAX_TOPIC_NAME_CHARS, allow_newlines=False
            )
        v.raise_if_any()
        topic = await self.parts.topic(current_caller(), request.session_id, request.topic_name)
        return pb.GetSessionTopicResponse(topic=_topic_message(topic))

    # --- metrics -------------------------------------------------------------------------------

    async def PublishSessionMetrics(
        self, request: pb.PublishSessionMetricsRequest, context: Context
    ) -> pb.PublishSessionMetricsResponse:
        v = Violations()
        rules.check_id(v, "session_id", request.session_id, "session")
        values = _metric_values(
            v, request.metrics, _device_choice(v, request, "device_id"), "metrics", "device_id"
        )
        v.raise_if_any()
        (outcome,) = await self.sessions.publish_metrics(
            current_caller(), [(request.session_id, values)]
        )
        return _publish_response(outcome)

    async def PublishMetrics(
        self, request: pb.PublishMetricsRequest, context: Context
    ) -> pb.PublishMetricsResponse:
        v = Violations()
        if not 1 <= len(request.requests) <= MAX_BATCH_SESSIONS:
            v.add("requests", f"must hold 1 to {MAX_BATCH_SESSIONS} sessions")
        elif sum(len(item.metrics) for item in request.requests) > MAX_BATCH_METRIC_ENTRIES:
            v.add("requests", f"must hold at most {MAX_BATCH_METRIC_ENTRIES} entries in all")
        v.raise_if_any()
        items: list[tuple[str, MetricValues]] = []
        seen: dict[str, int] = {}
        for i, item in enumerate(request.requests):
            prefix = f"requests[{i}]."
            if rules.check_id(v, f"{prefix}session_id", item.session_id, "session"):
                if item.session_id in seen:
                    v.add(
                        f"{prefix}session_id",
                        f"repeats requests[{seen[item.session_id]}].session_id; name a session"
                        " once and put all its entries in one item",
                    )
                seen.setdefault(item.session_id, i)
            device = _device_choice(v, item, f"{prefix}device_id")
            values = _metric_values(
                v, item.metrics, device, f"{prefix}metrics", f"{prefix}device_id"
            )
            items.append((item.session_id, values))
        v.raise_if_any()
        outcomes = await self.sessions.publish_metrics(current_caller(), items)
        return pb.PublishMetricsResponse(responses=[_publish_response(o) for o in outcomes])

    async def ListSessionMetrics(
        self, request: pb.ListSessionMetricsRequest, context: Context
    ) -> AsyncIterator[pb.ListSessionMetricsResponse]:
        caller = current_caller()

        async def page(after: list[Any] | None, limit: int) -> list[MetricRecord]:
            name = pagination.checked_position(after, str)
            return await self.parts.metrics(
                caller, request.session_id, name[0] if name else None, limit
            )

        def build(records: Sequence[MetricRecord], token: str) -> pb.ListSessionMetricsResponse:
            return pb.ListSessionMetricsResponse(
                metrics=[_metric_message(r) for r in records], next_page_token=token
            )

        async for response in _stream_part(
            "ListSessionMetrics", caller, request, page, lambda r: [r.name], build
        ):
            yield response

    # --- aggregation across sessions (rpc.aggregation) -----------------------------------------

    async def AggregateSessionMetrics(
        self, request: pb.AggregateSessionMetricsRequest, context: Context
    ) -> AsyncIterator[pb.AggregateSessionMetricsResponse]:
        async for response in aggregation.aggregate_metrics(
            self.aggregations, current_caller(), request
        ):
            yield response

    async def AggregateSessions(
        self, request: pb.AggregateSessionsRequest, context: Context
    ) -> AsyncIterator[pb.AggregateSessionsResponse]:
        async for response in aggregation.aggregate_sessions(
            self.aggregations, current_caller(), request
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
            self.listings, current_caller(), request
        ):
            yield batch

    def WatchSessions(
        self, request: pb.WatchSessionsRequest, context: Context
    ) -> AsyncIterator[Serialized]:
        # The stream itself, not a generator around it: a live feed sends many responses, and
        # each generator layer costs every one of them a resumption.
        return watch.watch_sessions(self.feed_database, current_caller(), request, context)


# --- requests in, domain out ------------------------------------------------------------------


def _new_session(
    request: pb.CreateSessionRequest | pb.CreateSessionFromDatasetRequest, prefix: str
) -> NewSession:
    """A create request's checked content; every violation named ``<prefix><field>``."""
    v = Violations()
    device_ids: tuple[str, ...] = ()
    dataset_id = None
    if isinstance(request, pb.CreateSessionRequest):
        count = len(request.device_ids)
        limit = rules.MAX_DEVICE_IDS_PER_CALL
        if rules.check_count(v, f"{prefix}device_ids", count, limit, "device IDs"):
            for i, device_id in enumerate(request.device_ids):
                rules.check_device_id(v, f"{prefix}device_ids[{i}]", device_id)
            device_ids = tuple(rules.dedupe(request.device_ids))
    else:
        rules.check_id(v, f"{prefix}dataset_id", request.dataset_id, "dataset")
        dataset_id = request.dataset_id
    rules.check_name(v, f"{prefix}name", request.name)
    rules.check_text(v, f"{prefix}description", request.description, rules.MAX_DESCRIPTION_CHARS)
    rules.check_tags(v, f"{prefix}tags", request.tags)
    metadata = convert.struct_to_dict(request.metadata)
    rules.check_metadata(v, f"{prefix}metadata", metadata)
    if request.request_id:
        rules.check_text(
            v,
            f"{prefix}request_id",
            request.request_id,
            rules.MAX_REQUEST_ID_CHARS,
            allow_newlines=False,
        )
    values = _sent_values(v, request.custom_fields, f"{prefix}custom_fields")
    v.raise_if_any()
    return NewSession(
        name=request.name or None,
        description=request.description or None,
        tags=tuple(rules.dedupe(request.tags)),
        metadata=metadata,
        device_ids=device_ids,
        values=values,
        request_id=request.request_id or None,
        request_digest=(
            convert.request_fingerprint(type(request).__name__, request)
            if request.request_id
            else None
        ),
        dataset_id=dataset_id,
    )


def _sent_values(
    v: Violations, values: Mapping[str, common_pb2.CustomFieldValue], field_path: str
) -> dict[str, SentValue]:
    """The sent values by field name, each with the path of the request field holding it."""
    sent: dict[str, SentValue] = {}
    for name, value in values.items():
        path = f"{field_path}[{name}]"
        try:
            sent[name] = SentValue(path, convert.wire_value(path, value))
        except InvalidArgument as e:
            v.items.extend(e.violations)
    return sent


def _string_update(
    v: Violations, request: pb.UpdateSessionRequest, field: str
) -> str | Keep | None:
    if not request.HasField(field):  # type: ignore[arg-type]
        return KEEP
    change = getattr(request, field)
    action = change.WhichOneof("action")
    if action is None:
        v.add(field, "set either 'set' or 'clear', or leave the field absent")
        return KEEP
    if action == "set" and field == "name":
        rules.check_name(v, "name.set", change.set)
    elif action == "set":
        rules.check_text(v, f"{field}.set", change.set, rules.MAX_DESCRIPTION_CHARS)
    return change.set or None  # clear, or set to "" (the same as clear)


def _device_choice(v: Violations, message: Any, path: str) -> str | Infer | None:
    """The device of a metrics publication: its ``device_id``, None for ``no_device``, or
    INFER when neither is set."""
    which = message.WhichOneof("device")
    if which == "device_id":
        rules.check_device_id(v, path, message.device_id)
        return str(message.device_id)
    return None if which == "no_device" else INFER


def _metric_values(
    v: Violations,
    entries: Sequence[pb.MetricEntry],
    device: str | Infer | None,
    path: str,
    device_path: str,
) -> MetricValues:
    metrics.check_batch(v, len(entries), path)
    return MetricValues(
        entries=tuple(MetricEntry(name=e.name, value=e.value) for e in entries),
        device=device,
        path=path,
        device_path=device_path,
    )


def _check_device_request(
    request: pb.AttachSessionDeviceRequest | pb.DetachSessionDeviceRequest,
) -> None:
    v = Violations()
    rules.check_id(v, "session_id", request.session_id, "session")
    rules.check_device_id(v, "device_id", request.device_id)
    v.raise_if_any()


def _optional(message: Any, field: str) -> int | None:
    return int(getattr(message, field)) if message.HasField(field) else None


class _ContributionSpecs(Streamed[ContributionSpec]):
    """AddSessionFiles' files as specs, each made when it is read and not kept (10,000 of them
    kept took 2.2 MB, eight times the request's size)."""

    def __init__(self, files: WireRepeated[pb.AddSessionFilesRequest]) -> None:
        super().__init__(len(files))
        self._files = files

    def __iter__(self) -> Iterator[ContributionSpec]:
        for f in self._files:
            yield ContributionSpec(
                file_id=f.file_id,
                range_min_ns=_optional(f, "range_min_timestamp_ns"),
                range_max_ns=_optional(f, "range_max_timestamp_ns"),
            )


# --- domain in, responses out -----------------------------------------------------------------


def _sessions(views: Sequence[SessionView]) -> Serialized:
    """A serialized response whose field 1 holds these sessions (every session-returning
    response of SessionService has that shape): each session is the prefix of its org's Ready
    fields as nulls, then its record; protobuf merges the two (see ``convert``)."""
    return b"".join(
        length_delimited(1, convert.null_custom_fields(view.ready_fields) + view.record)
        for view in views
    )


def _publish_response(outcome: PublishOutcome) -> pb.PublishSessionMetricsResponse:
    return pb.PublishSessionMetricsResponse(
        succeeded=[_metric_message(r) for r in outcome.recorded],
        failed=[
            pb.MetricFailure(
                entry=pb.MetricEntry(name=f.entry.name, value=f.entry.value),
                index=f.index,
                reason=f.reason,
            )
            for f in outcome.failed
        ],
    )


async def _stream_part(
    method: str,
    caller: Caller,
    request: SessionListRequest,
    page: Callable[[list[Any] | None, int], Any],
    position_of: Callable[[Item], list[Any]],
    build: Callable[[Sequence[Item], str], Response],
) -> AsyncIterator[Response]:
    """Streams one of a session's own listings (files, devices, topics, metrics) in keyset
    pages; an unknown session is NOT_FOUND, checked with the first page."""
    v = Violations()
    rules.check_id(v, "session_id", request.session_id, "session")
    size = rules.check_page(v, request.page_size)
    v.raise_if_any()
    async for response in pagination.stream_pages(
        scope=pagination.fingerprint(method, caller.org_id, request.session_id),
        page_token=request.page_token,
        page_size=size,
        fetch=page,
        position_of=position_of,
        build=build,
    ):
        yield response


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
