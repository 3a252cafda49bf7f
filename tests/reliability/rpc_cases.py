"""Every RPC of the three services, enumerated from the service descriptors, with a valid request
for each one that names an org's real resources.

``METHODS`` comes from the descriptors, so a new RPC appears here by itself; the request tables
must then gain an entry for it, or the tests built on this module (tenant isolation, SQL injection)
fail for that RPC. ``build_world`` makes the resources an org's requests refer to.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import struct_pb2
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import (
    add_files,
    make_custom_field,
    make_dataset,
    make_device,
    make_session,
    register_file,
    unique,
)
from tests.support import Identity, Stubs

SERVICES: list[ServiceDescriptor] = [
    pb.DESCRIPTOR.services_by_name["SessionService"],
    catalog_pb.DESCRIPTOR.services_by_name["CatalogService"],
    fields_pb.DESCRIPTOR.services_by_name["CustomFieldService"],
]
METHODS: list[MethodDescriptor] = [m for service in SERVICES for m in service.methods]


def method_name(method: MethodDescriptor) -> str:
    return f"{method.containing_service.name}.{method.name}"


@dataclass(frozen=True)
class World:
    """An org and one of each resource in it, as made by ``build_world``."""

    identity: Identity
    org_name: str
    device_id: str
    spare_device_id: str  # attached to the session as well
    lone_device_id: str  # attached to nothing; only CreateDevice names it
    dataset_id: str
    file_id: str
    topic_id: str
    topic_name: str
    custom_field_id: str
    custom_field_name: str
    session_id: str  # with the file, both devices, a custom-field value and a metric
    empty_session_id: str  # no files, no devices

    @property
    def org_id(self) -> str:
        return self.identity.org_id

    def markers(self) -> list[str]:
        """Strings that only this org's data contains (random IDs and the org's name)."""
        return [
            self.org_id,
            self.org_name,
            self.dataset_id,
            self.file_id,
            self.topic_id,
            self.custom_field_id,
            self.session_id,
            self.empty_session_id,
        ]


def build_world(stubs: Stubs, identity: Identity, org_name: str) -> World:
    device = make_device(stubs, name="device")
    spare = make_device(stubs, name="spare")
    lone = make_device(stubs, name="lone")
    dataset = make_dataset(stubs, name="dataset", device_id=device.device_id)
    file = register_file(
        stubs,
        dataset.dataset_id,
        [("/odom", [(100, 200)]), ("/imu", [(150, 400), (500, 600)])],
        offset=1_000,
        size_bytes=1234,
    )
    field = make_custom_field(stubs, name=unique("f"))
    session = make_session(
        stubs,
        name="session",
        device_ids=[device.device_id, spare.device_id],
        tags=["t1", "t2"],
        custom_fields={field.name: common_pb2.CustomFieldValue(string_value="value")},
        metadata=struct_pb2.Struct(fields={"k": struct_pb2.Value(string_value="v")}),
    )
    add_files(stubs, session.session_id, file.file_id)
    stubs.sessions.PublishSessionMetrics(
        pb.PublishSessionMetricsRequest(
            session_id=session.session_id,
            metrics=[pb.MetricEntry(name="speed", value=1.5)],
            no_device=True,
        )
    )
    topics = [
        p.topic
        for batch in stubs.catalog.ListFileTopics(
            catalog_pb.ListFileTopicsRequest(file_id=file.file_id)
        )
        for p in batch.partitions
    ]
    empty = make_session(stubs, name="empty")
    return World(
        identity=identity,
        org_name=org_name,
        device_id=device.device_id,
        spare_device_id=spare.device_id,
        lone_device_id=lone.device_id,
        dataset_id=dataset.dataset_id,
        file_id=file.file_id,
        topic_id=topics[0].topic_id,
        topic_name=topics[0].name,
        custom_field_id=field.custom_field_id,
        custom_field_name=field.name,
        session_id=session.session_id,
        empty_session_id=empty.session_id,
    )


# --- a valid request per RPC ---------------------------------------------------------------------
#
# Each builder gets the org whose resources the requests name (``theirs``) and the caller's own
# org (``mine``; the same world when a test acts in one org). The first request is the plain one;
# others add variants that mix the caller's resources with the named org's.

Builder = Callable[[World, World], list[Any]]


def _every_group_key(t: World) -> list[pb.GroupBy]:
    """Four group keys (the most a request may have) that between them reach every kind."""
    return [
        pb.GroupBy(kind=pb.GROUP_KIND_DEVICE),
        pb.GroupBy(kind=pb.GROUP_KIND_CUSTOM_FIELD, custom_field=t.custom_field_name),
        pb.GroupBy(kind=pb.GROUP_KIND_DATASET),
        pb.GroupBy(kind=pb.GROUP_KIND_START_TIME, time_bucket=pb.TIME_BUCKET_MONTH),
    ]


SESSION_REQUESTS: dict[str, Builder] = {
    "CreateSession": lambda t, m: [
        pb.CreateSessionRequest(name="n", device_ids=[t.device_id]),
    ],
    "CreateSessionFromDataset": lambda t, m: [
        pb.CreateSessionFromDatasetRequest(dataset_id=t.dataset_id, name="n"),
    ],
    "GetSession": lambda t, m: [pb.GetSessionRequest(session_id=t.session_id)],
    "BatchCreateSessions": lambda t, m: [
        pb.BatchCreateSessionsRequest(
            requests=[
                pb.CreateSessionRequest(name="n", device_ids=[t.device_id]),
                pb.CreateSessionRequest(
                    name="m",
                    custom_fields={
                        t.custom_field_name: common_pb2.CustomFieldValue(string_value="v")
                    },
                ),
            ]
        ),
        pb.BatchCreateSessionsRequest(
            requests=[
                pb.CreateSessionRequest(name="mine", device_ids=[m.device_id]),
                pb.CreateSessionRequest(name="theirs", device_ids=[t.device_id]),
            ]
        ),
    ],
    "BatchGetSessions": lambda t, m: [
        pb.BatchGetSessionsRequest(session_ids=[t.session_id, t.empty_session_id]),
        pb.BatchGetSessionsRequest(session_ids=[m.session_id, t.session_id]),
    ],
    "UpdateSession": lambda t, m: [
        pb.UpdateSessionRequest(
            session_id=t.session_id,
            name=common_pb2.StringUpdate(set="renamed"),
            description=common_pb2.StringUpdate(set="described"),
            metadata_changeset=pb.MetadataChangeset(
                put_tags=["x"],
                remove_tags=["t1"],
                put_fields=struct_pb2.Struct(fields={"a.b": struct_pb2.Value(string_value="c")}),
                remove_fields=["k"],
            ),
            custom_fields_changeset=pb.CustomFieldChangeset(
                set_fields={t.custom_field_name: common_pb2.CustomFieldValue(string_value="other")}
            ),
            metrics=pb.MetricValues(
                entries=[pb.MetricEntry(name="speed", value=1.5)], device_id=t.device_id
            ),
        )
    ],
    "DeleteSession": lambda t, m: [pb.DeleteSessionRequest(session_id=t.empty_session_id)],
    "ListSessions": lambda t, m: [
        pb.ListSessionsRequest(),
        pb.ListSessionsRequest(
            filter=pb.SessionFilter(
                device_id=t.device_id,
                dataset_id=t.dataset_id,
                tags_any=["t1"],
                name_contains="sess",
            ),
            page_size=1,
        ),
    ],
    "AddSessionFiles": lambda t, m: [
        pb.AddSessionFilesRequest(
            session_id=t.session_id,
            files=[
                pb.SessionFileSpec(
                    file_id=t.file_id, range_min_timestamp_ns=1, range_max_timestamp_ns=2
                )
            ],
        ),
        pb.AddSessionFilesRequest(
            session_id=m.empty_session_id, files=[pb.SessionFileSpec(file_id=t.file_id)]
        ),
    ],
    "RemoveSessionFiles": lambda t, m: [
        pb.RemoveSessionFilesRequest(session_id=t.session_id, file_ids=[t.file_id]),
    ],
    "ListSessionFiles": lambda t, m: [pb.ListSessionFilesRequest(session_id=t.session_id)],
    "AttachSessionDevice": lambda t, m: [
        pb.AttachSessionDeviceRequest(session_id=t.empty_session_id, device_id=t.device_id),
        pb.AttachSessionDeviceRequest(session_id=m.empty_session_id, device_id=t.device_id),
    ],
    "DetachSessionDevice": lambda t, m: [
        pb.DetachSessionDeviceRequest(session_id=t.session_id, device_id=t.spare_device_id),
    ],
    "ListSessionDevices": lambda t, m: [
        pb.ListSessionDevicesRequest(session_id=t.session_id),
    ],
    "ListSessionTopics": lambda t, m: [pb.ListSessionTopicsRequest(session_id=t.session_id)],
    "GetSessionTopic": lambda t, m: [
        pb.GetSessionTopicRequest(session_id=t.session_id, topic_name=t.topic_name),
    ],
    "PublishSessionMetrics": lambda t, m: [
        pb.PublishSessionMetricsRequest(
            session_id=t.session_id,
            metrics=[pb.MetricEntry(name="speed", value=2.5)],
            device_id=t.device_id,
        ),
        pb.PublishSessionMetricsRequest(
            session_id=m.session_id,
            metrics=[pb.MetricEntry(name="speed", value=2.5)],
            device_id=t.device_id,
        ),
    ],
    "PublishMetrics": lambda t, m: [
        pb.PublishMetricsRequest(
            requests=[
                pb.PublishSessionMetricsRequest(
                    session_id=t.session_id,
                    metrics=[pb.MetricEntry(name="speed", value=2.5)],
                    device_id=t.device_id,
                ),
                pb.PublishSessionMetricsRequest(
                    session_id=t.empty_session_id,
                    metrics=[pb.MetricEntry(name="speed", value=3.5)],
                    no_device=True,
                ),
            ]
        ),
        pb.PublishMetricsRequest(
            requests=[
                pb.PublishSessionMetricsRequest(
                    session_id=m.session_id,
                    metrics=[pb.MetricEntry(name="speed", value=2.5)],
                    no_device=True,
                ),
                pb.PublishSessionMetricsRequest(
                    session_id=t.session_id,
                    metrics=[pb.MetricEntry(name="speed", value=2.5)],
                    no_device=True,
                ),
            ]
        ),
    ],
    "ListSessionMetrics": lambda t, m: [pb.ListSessionMetricsRequest(session_id=t.session_id)],
    "AggregateSessionMetrics": lambda t, m: [
        pb.AggregateSessionMetricsRequest(metrics=["speed"], group_by=_every_group_key(t)),
        pb.AggregateSessionMetricsRequest(metrics=["speed"], time_zone="Europe/Paris"),
    ],
    "AggregateSessions": lambda t, m: [
        pb.AggregateSessionsRequest(group_by=_every_group_key(t), time_zone="Europe/Paris"),
    ],
    "WatchSessions": lambda t, m: [
        pb.WatchSessionsRequest(after_revision=0, session_ids=[t.session_id]),
        pb.WatchSessionsRequest(after_revision=0, device_id=t.device_id),
    ],
}


CATALOG_REQUESTS: dict[str, Builder] = {
    # Device IDs are chosen by users and unique per org: another org may take the same one.
    "CreateDevice": lambda t, m: [catalog_pb.CreateDeviceRequest(device_id=t.lone_device_id)],
    "GetDevice": lambda t, m: [catalog_pb.GetDeviceRequest(device_id=t.device_id)],
    "ListDevices": lambda t, m: [catalog_pb.ListDevicesRequest(page_size=1)],
    "DeleteDevice": lambda t, m: [catalog_pb.DeleteDeviceRequest(device_id=t.spare_device_id)],
    "CreateDataset": lambda t, m: [
        catalog_pb.CreateDatasetRequest(name="d", device_id=t.device_id)
    ],
    "GetDataset": lambda t, m: [catalog_pb.GetDatasetRequest(dataset_id=t.dataset_id)],
    "ListDatasets": lambda t, m: [catalog_pb.ListDatasetsRequest(page_size=1)],
    "RegisterFile": lambda t, m: [
        catalog_pb.RegisterFileRequest(
            dataset_id=t.dataset_id,
            relative_path=unique("injected/") + ".mcap",
            partitions=[
                catalog_pb.TopicPartitionSpec(
                    topic_name="/odom",
                    schema_name="nav_msgs/Odometry",
                    message_encoding="cdr",
                    message_count=3,
                    extents=[catalog_pb.TimelineExtent(min_timestamp_ns=5, max_timestamp_ns=9)],
                )
            ],
        ),
        catalog_pb.RegisterFileRequest(
            dataset_id=m.dataset_id,
            relative_path=unique("injected/") + ".mcap",
            device_id=t.device_id,
        ),
    ],
    "GetFile": lambda t, m: [catalog_pb.GetFileRequest(file_id=t.file_id)],
    "ListFiles": lambda t, m: [catalog_pb.ListFilesRequest(dataset_id=t.dataset_id)],
    "ListFileTopics": lambda t, m: [catalog_pb.ListFileTopicsRequest(file_id=t.file_id)],
    "UpdateFileTimelineOffset": lambda t, m: [
        catalog_pb.UpdateFileTimelineOffsetRequest(file_id=t.file_id, unix_epoch_offset_ns=7)
    ],
    "DeleteFile": lambda t, m: [catalog_pb.DeleteFileRequest(file_id=t.file_id)],
}


CUSTOM_FIELD_REQUESTS: dict[str, Builder] = {
    # Names are unique per org: another org may define the same one.
    "CreateCustomField": lambda t, m: [
        fields_pb.CreateCustomFieldRequest(
            entity_type=fields_pb.ENTITY_TYPE_SESSION,
            name=t.custom_field_name,
            type=fields_pb.CUSTOM_FIELD_TYPE_ENUM,
            enum_values=["a", "b"],
            description="d",
        )
    ],
    "GetCustomField": lambda t, m: [
        fields_pb.GetCustomFieldRequest(custom_field_id=t.custom_field_id)
    ],
    "ListCustomFields": lambda t, m: [fields_pb.ListCustomFieldsRequest(page_size=1)],
    "UpdateCustomField": lambda t, m: [
        fields_pb.UpdateCustomFieldRequest(
            custom_field_id=t.custom_field_id, status=fields_pb.CUSTOM_FIELD_STATUS_READY
        )
    ],
    "DeleteCustomField": lambda t, m: [
        fields_pb.DeleteCustomFieldRequest(custom_field_id=t.custom_field_id)
    ],
}


def requests_for(method: MethodDescriptor, theirs: World, mine: World) -> list[Any]:
    """Valid requests for ``method`` naming ``theirs``'s resources; KeyError when the RPC has no
    entry (a new RPC must get one)."""
    table = {
        "SessionService": SESSION_REQUESTS,
        "CatalogService": CATALOG_REQUESTS,
        "CustomFieldService": CUSTOM_FIELD_REQUESTS,
    }[method.containing_service.name]
    requests = table[method.name](theirs, mine)
    for request in requests:
        assert request.DESCRIPTOR is method.input_type, method_name(method)
    return requests


# --- calling any RPC -----------------------------------------------------------------------------


@dataclass
class Outcome:
    code: grpc.StatusCode
    responses: list[Any]
    error: grpc.RpcError | None

    def payload(self) -> bytes:
        """Everything the caller received: responses, status message and details."""
        parts = [r.SerializeToString() for r in self.responses]
        if self.error is not None:
            parts.append((self.error.details() or "").encode())
            # The errors a call raises are Calls too; Call types its trailing metadata.
            if isinstance(self.error, grpc.Call):
                for _, value in self.error.trailing_metadata() or ():
                    parts.append(value if isinstance(value, bytes) else value.encode())
        return b"\n".join(parts)


def stub_for(stubs: Stubs, method: MethodDescriptor) -> Any:
    return {
        "SessionService": stubs.sessions,
        "CatalogService": stubs.catalog,
        "CustomFieldService": stubs.custom_fields,
    }[method.containing_service.name]


def invoke(stubs: Stubs, method: MethodDescriptor, request: Any, timeout: float) -> Outcome:
    """Calls ``method``; a stream is read to its end (or until the deadline)."""
    function = getattr(stub_for(stubs, method), method.name)
    responses: list[Any] = []
    try:
        if method.server_streaming:
            call = function(request, timeout=timeout)
            for response in call:
                responses.append(response)
        else:
            responses.append(function(request, timeout=timeout))
    except grpc.RpcError as error:
        return Outcome(error.code(), responses, error)
    return Outcome(grpc.StatusCode.OK, responses, None)


def walk_org_ids(message: Any) -> Iterator[str]:
    """Every ``org_id`` field value in a message, at any depth."""
    for field, value in message.ListFields():
        if field.name == "org_id":
            yield value
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for item in value if field.is_repeated else [value]:
                yield from walk_org_ids(item)
