"""Factories for RPC tests: plain functions that make catalog, session and custom-field resources
through the generated stubs, with unique names so tests can share one database.

Typical use::

    device = make_device(stubs)
    dataset = make_dataset(stubs, device_id=device.device_id)
    file = register_file(stubs, dataset.dataset_id, topics=[("/odom", [(100, 200)])], offset=10)
    session = make_session(stubs)
    session = add_files(stubs, session.session_id, file.file_id)   # whole file: bounds 110..210
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeAlias

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as sessions_pb
from flightlog_server.domain import catalog as catalog_limits
from tests.support import Stubs, create_identity

# A topic for ``register_file``: (name, [(min_ns, max_ns), ...]) with an empty schema name, or a
# full TopicPartitionSpec when the schema, encoding or message count matter.
TopicSpec = tuple[str, Sequence[tuple[int, int]]] | catalog_pb.TopicPartitionSpec


FieldType: TypeAlias = fields_pb.CustomFieldType.ValueType
FieldStatus: TypeAlias = fields_pb.CustomFieldStatus.ValueType


def unique(prefix: str) -> str:
    """``prefix`` plus a random suffix of 8 lowercase hex digits (no separator)."""
    return f"{prefix}{secrets.token_hex(4)}"


# --- orgs ----------------------------------------------------------------------------------------


def new_org_stubs(database_url: str, grpc_target: str) -> Stubs:
    """Stubs of a principal in a brand-new, empty org, for tests that list a whole org.

    The caller closes them (``stubs.close()``)."""
    identity = create_identity(database_url, unique("org-"))
    return Stubs(grpc_target, identity.api_key, identity.org_id)


# --- catalog -------------------------------------------------------------------------------------


def make_device(stubs: Stubs, device_id: str | None = None, name: str = "") -> catalog_pb.Device:
    """Creates a device; the ID defaults to a unique ``dv-…``."""
    request = catalog_pb.CreateDeviceRequest(device_id=device_id or unique("dv-"), name=name)
    return stubs.catalog.CreateDevice(request).device


def make_dataset(stubs: Stubs, name: str = "", device_id: str = "") -> catalog_pb.Dataset:
    """Creates a dataset, optionally recorded by ``device_id`` (which must exist)."""
    request = catalog_pb.CreateDatasetRequest(name=name, device_id=device_id)
    return stubs.catalog.CreateDataset(request).dataset


def partition(
    topic_name: str,
    extents: Iterable[tuple[int, int]] = (),
    schema_name: str = "",
    message_encoding: str = "",
    message_count: int = 0,
) -> catalog_pb.TopicPartitionSpec:
    """A TopicPartitionSpec from plain values; ``extents`` are (min_ns, max_ns) as stored."""
    return catalog_pb.TopicPartitionSpec(
        topic_name=topic_name,
        schema_name=schema_name,
        message_encoding=message_encoding,
        message_count=message_count,
        extents=[
            catalog_pb.TimelineExtent(min_timestamp_ns=lo, max_timestamp_ns=hi)
            for lo, hi in extents
        ],
    )


def register_file_request(
    dataset_id: str,
    topics: Iterable[TopicSpec] = (),
    offset: int = 0,
    *,
    path: str | None = None,
    size_bytes: int = 0,
    device_id: str = "",
) -> catalog_pb.RegisterFileRequest:
    """The RegisterFile request ``register_file`` sends (for tests that tweak it first)."""
    return catalog_pb.RegisterFileRequest(
        dataset_id=dataset_id,
        relative_path=path or unique("files/") + ".mcap",
        size_bytes=size_bytes,
        device_id=device_id,
        unix_epoch_offset_ns=offset,
        partitions=[
            t if isinstance(t, catalog_pb.TopicPartitionSpec) else partition(t[0], t[1])
            for t in topics
        ],
    )


def maximal_register_file_request(dataset_id: str) -> catalog_pb.RegisterFileRequest:
    """RegisterFile at both of its count limits at once: 10,000 partitions of 10 extents each
    (100,000 in all), ~0.75 MiB. The extents are relative to the file (small numbers, a few bytes
    each: memory per byte sent is then at its highest) and placed on the epoch by the offset."""
    topics = [
        partition(f"/robot/sensor_{n:05}", [(k * 10, k * 10 + 5) for k in range(10)])
        for n in range(catalog_limits.MAX_PARTITIONS_PER_FILE)
    ]
    request = register_file_request(dataset_id, topics, offset=1_700_000_000_000_000_000)
    assert sum(len(p.extents) for p in request.partitions) == catalog_limits.MAX_EXTENTS_PER_FILE
    return request


def densest_register_file_request(dataset_id: str) -> catalog_pb.RegisterFileRequest:
    """RegisterFile at both count limits with every partition and extent as small as it can be
    (one-to-four-letter topics, empty extents of two bytes), spread so that protobuf would build
    the most: 17 extents a partition (arrays grown to 32, the outgrown kept). 0.24 MiB, which
    protobuf would build in 6.5 MB."""
    full, rest = divmod(catalog_limits.MAX_EXTENTS_PER_FILE, 17)
    counts = [17] * full + [rest]
    counts += [0] * (catalog_limits.MAX_PARTITIONS_PER_FILE - len(counts))
    return catalog_pb.RegisterFileRequest(
        dataset_id=dataset_id,
        relative_path="d",
        partitions=[
            catalog_pb.TopicPartitionSpec(
                topic_name=f"{n:x}", extents=[catalog_pb.TimelineExtent()] * count
            )
            for n, count in enumerate(counts)
        ],
    )


def warm_up_registrations(stubs: Stubs, dataset_id: str) -> None:
    """Registers a file big enough to take every path of a large registration (1,000
    partitions), so that a measurement that follows sees a request's own cost, not the server's
    first use of its code, pool connections and statement caches."""
    register_file(stubs, dataset_id, [(unique("/warm-up/"), [(1, 2), (3, 4)]) for _ in range(1000)])


def register_file(
    stubs: Stubs,
    dataset_id: str,
    topics: Iterable[TopicSpec] = (),
    offset: int = 0,
    *,
    path: str | None = None,
    size_bytes: int = 0,
    device_id: str = "",
) -> catalog_pb.File:
    """Registers a file of ``dataset_id`` with one partition per topic.

    ``topics`` holds ``(name, [(min_ns, max_ns), ...])`` pairs (extents as stored) or
    TopicPartitionSpec messages; ``offset`` is the file's ``unix_epoch_offset_ns``, so the
    file's window is (min of the extents + offset, max + offset). ``path`` defaults to a unique
    one; an empty ``device_id`` leaves the dataset's device.
    """
    request = register_file_request(
        dataset_id, topics, offset, path=path, size_bytes=size_bytes, device_id=device_id
    )
    return stubs.catalog.RegisterFile(request).file


# --- sessions ------------------------------------------------------------------------------------


def make_session(stubs: Stubs, **fields: Any) -> sessions_pb.Session:
    """Creates a session; ``fields`` are CreateSessionRequest fields."""
    return stubs.sessions.CreateSession(sessions_pb.CreateSessionRequest(**fields)).session


def add_files(
    stubs: Stubs, session_id: str, *file_ids: str, window: tuple[int, int] | None = None
) -> sessions_pb.Session:
    """Adds files to a session, whole or (with ``window``) clipped to (min_ns, max_ns)."""
    specs = [
        sessions_pb.SessionFileSpec(file_id=file_id)
        if window is None
        else sessions_pb.SessionFileSpec(
            file_id=file_id, range_min_timestamp_ns=window[0], range_max_timestamp_ns=window[1]
        )
        for file_id in file_ids
    ]
    request = sessions_pb.AddSessionFilesRequest(session_id=session_id, files=specs)
    return stubs.sessions.AddSessionFiles(request).session


def get_session(stubs: Stubs, session_id: str) -> sessions_pb.Session:
    return stubs.sessions.GetSession(sessions_pb.GetSessionRequest(session_id=session_id)).session


def bounds(session: sessions_pb.Session) -> tuple[int, int] | None:
    """The session's (min, max) timestamps, or None when it has none (never only one)."""
    if not session.HasField("min_timestamp_ns"):
        assert not session.HasField("max_timestamp_ns")
        return None
    return session.min_timestamp_ns, session.max_timestamp_ns


def list_session_files(stubs: Stubs, session_id: str) -> list[sessions_pb.SessionFile]:
    """Every file of the session (all pages), in the listing's order."""
    files, _ = drain(
        stubs.sessions.ListSessionFiles(sessions_pb.ListSessionFilesRequest(session_id=session_id)),
        "files",
    )
    return files


# --- custom fields -------------------------------------------------------------------------------


def make_custom_field(
    stubs: Stubs,
    name: str | None = None,
    type: FieldType = fields_pb.CUSTOM_FIELD_TYPE_STRING,
    enum_values: Sequence[str] = (),
    initial_status: FieldStatus = fields_pb.CUSTOM_FIELD_STATUS_UNSPECIFIED,
    description: str = "",
) -> fields_pb.CustomField:
    """Defines a session custom field (Ready unless ``initial_status`` says otherwise); the name
    defaults to a unique ``cf…``. ENUM fields need ``enum_values``."""
    request = fields_pb.CreateCustomFieldRequest(
        entity_type=fields_pb.ENTITY_TYPE_SESSION,
        name=name or unique("cf"),
        type=type,
        enum_values=enum_values,
        description=description,
        initial_status=initial_status,
    )
    return stubs.custom_fields.CreateCustomField(request).custom_field


# --- streams -------------------------------------------------------------------------------------


def first_batch(responses: Iterable[Any]) -> Any:
    """The first message of a streamed listing (the stream is left unread after it)."""
    for batch in responses:
        return batch
    raise AssertionError("the listing streamed no batch")


def drain(responses: Iterable[Any], items: str) -> tuple[list[Any], list[str]]:
    """Reads a streamed listing to its end: every item (the repeated field ``items`` of each
    batch, e.g. ``"devices"``) and each batch's ``next_page_token``."""
    found: list[Any] = []
    tokens: list[str] = []
    for batch in responses:
        found.extend(getattr(batch, items))
        tokens.append(batch.next_page_token)
    return found, tokens


def check_paging(
    list_call: Callable[[Any], Iterable[Any]],
    request_type: Callable[..., Any],
    items: str,
    key: Callable[[Any], Any],
    expected: Sequence[Any],
    **fields: Any,
) -> None:
    """Asserts that a streamed listing is complete, ordered and resumable.

    Lists with ``page_size=2`` (plus ``fields``) and checks that the items' keys equal
    ``expected`` in order, in batches of two, and that resuming from each batch's
    ``next_page_token`` yields exactly the items after that batch: nothing repeated or skipped.
    """
    found, tokens = drain(list_call(request_type(page_size=2, **fields)), items)
    assert [key(item) for item in found] == list(expected)
    assert len(tokens) == (len(expected) + 1) // 2
    assert all(tokens)
    for batch, token in enumerate(tokens):
        rest, _ = drain(list_call(request_type(page_size=2, page_token=token, **fields)), items)
        assert [key(item) for item in rest] == list(expected[2 * (batch + 1) :])
