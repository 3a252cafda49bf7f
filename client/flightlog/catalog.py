"""The catalog that sessions refer to: devices, datasets, files and their topic partitions.

Records are plain frozen dataclasses; operations are functions. Every function takes an
optional ``org_id`` (the acting org for that call, sent as ``x-org-id``; ``None`` keeps the
client's default) and an optional ``client`` (default: the ambient client configured from the
environment, see :func:`flightlog.get_default_client`).

Example:
    >>> from flightlog import catalog
    >>> catalog.create_device("dv_robot01", name="Robot 01", exist_ok=True)
    >>> dataset = catalog.create_dataset(name="2026-04-23 uploads", device_id="dv_robot01")
    >>> f = catalog.register_file(
    ...     dataset.dataset_id,
    ...     "flight.mcap",
    ...     size_bytes=1234,
    ...     partitions=[catalog.TopicPartitionSpec("/odom", "nav_msgs/msg/Odometry", "cdr", 10,
    ...                 [catalog.TimelineExtent(1_700_000_000_000_000_000,
    ...                                         1_700_000_001_000_000_000)])],
    ... )
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import itertools
import uuid
from collections.abc import Iterator, Sequence

from flightlog._client import FlightlogClient, resolve_client
from flightlog._values import datetime_from_proto
from flightlog.errors import AmbiguousNameError, ConflictError, NotFoundError
from flightlog.v1 import catalog_service_pb2 as pb
from flightlog.v1 import common_pb2

__all__ = [
    "Dataset",
    "Device",
    "File",
    "FileRecovery",
    "TimelineExtent",
    "Topic",
    "TopicPartition",
    "TopicPartitionSpec",
    "create_dataset",
    "create_device",
    "delete_device",
    "delete_file",
    "find_dataset",
    "get_dataset",
    "get_device",
    "get_file",
    "list_datasets",
    "list_devices",
    "list_file_topics",
    "list_files",
    "register_file",
    "set_file_timeline_offset",
]


def _optional_datetime(message: pb.Device | pb.Dataset | pb.File) -> dt.datetime | None:
    """Return the ``created`` timestamp of a catalog message, or ``None`` when absent."""
    return datetime_from_proto(message.created) if message.HasField("created") else None


@dataclasses.dataclass(frozen=True)
class Topic:
    """A topic identity: a named stream of messages with one schema.

    Attributes:
        topic_id: Stable, unique identifier, prefixed ``ti_``.
        name: The topic name, for example ``/odom``.
        schema_name: The schema name, for example ``nav_msgs/msg/Odometry``; ``""`` when none.
        message_encoding: The message encoding, for example ``cdr``; ``""`` when unknown.
    """

    topic_id: str
    name: str
    schema_name: str = ""
    message_encoding: str = ""

    @classmethod
    def from_proto(cls, message: common_pb2.Topic) -> Topic:
        """Build from a ``flightlog.v1.Topic`` message."""
        return cls(
            topic_id=message.topic_id,
            name=message.name,
            schema_name=message.schema_name,
            message_encoding=message.message_encoding,
        )


@dataclasses.dataclass(frozen=True)
class TimelineExtent:
    """A closed time interval of a topic partition, in nanoseconds, as stored (before the
    file's ``unix_epoch_offset_ns`` is applied)."""

    min_timestamp_ns: int
    max_timestamp_ns: int

    def to_proto(self) -> pb.TimelineExtent:
        """Return the wire form."""
        return pb.TimelineExtent(
            min_timestamp_ns=self.min_timestamp_ns, max_timestamp_ns=self.max_timestamp_ns
        )

    @classmethod
    def from_proto(cls, message: pb.TimelineExtent) -> TimelineExtent:
        """Build from a ``flightlog.v1.TimelineExtent`` message."""
        return cls(message.min_timestamp_ns, message.max_timestamp_ns)


@dataclasses.dataclass(frozen=True)
class TopicPartitionSpec:
    """One topic's messages within one file, as given to :func:`register_file`.

    Attributes:
        topic_name: The topic name.
        schema_name: The schema name; ``""`` when none.
        message_encoding: The message encoding; ``""`` when unknown.
        message_count: The number of messages.
        extents: The time extents of the messages; empty for a topic without messages.
    """

    topic_name: str
    schema_name: str = ""
    message_encoding: str = ""
    message_count: int = 0
    extents: Sequence[TimelineExtent] = ()

    def to_proto(self) -> pb.TopicPartitionSpec:
        """Return the wire form."""
        return pb.TopicPartitionSpec(
            topic_name=self.topic_name,
            schema_name=self.schema_name,
            message_encoding=self.message_encoding,
            message_count=self.message_count,
            extents=[extent.to_proto() for extent in self.extents],
        )


@dataclasses.dataclass(frozen=True)
class TopicPartition:
    """One topic's messages within one file, as stored.

    Attributes:
        topic: The topic identity.
        file_id: The file holding the partition.
        message_count: The number of messages.
        extents: The time extents, as stored (before the file's offset is applied).
    """

    topic: Topic
    file_id: str
    message_count: int
    extents: tuple[TimelineExtent, ...] = ()

    @classmethod
    def from_proto(cls, message: pb.TopicPartition) -> TopicPartition:
        """Build from a ``flightlog.v1.TopicPartition`` message."""
        return cls(
            topic=Topic.from_proto(message.topic),
            file_id=message.file_id,
            message_count=message.message_count,
            extents=tuple(TimelineExtent.from_proto(e) for e in message.extents),
        )


@dataclasses.dataclass(frozen=True)
class Device:
    """A device: a drone, a vehicle, a robot.

    Attributes:
        device_id: Caller-chosen ID, unique in the org.
        org_id: The owning org.
        name: Display name, or ``None``.
        created: When the device was registered.
        created_by: Principal that registered it.
    """

    device_id: str
    org_id: str = ""
    name: str | None = None
    created: dt.datetime | None = None
    created_by: str = ""

    @classmethod
    def from_proto(cls, message: pb.Device) -> Device:
        """Build from a ``flightlog.v1.Device`` message."""
        return cls(
            device_id=message.device_id,
            org_id=message.org_id,
            name=message.name or None,
            created=_optional_datetime(message),
            created_by=message.created_by,
        )


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset: a collection of files, typically one upload.

    Attributes:
        dataset_id: Unique identifier, prefixed ``ds_``.
        org_id: The owning org.
        name: Display name, or ``None``.
        device_id: The device that recorded the dataset, or ``None``.
        created: When the dataset was created.
        created_by: Principal that created it.
    """

    dataset_id: str
    org_id: str = ""
    name: str | None = None
    device_id: str | None = None
    created: dt.datetime | None = None
    created_by: str = ""

    @classmethod
    def from_proto(cls, message: pb.Dataset) -> Dataset:
        """Build from a ``flightlog.v1.Dataset`` message."""
        return cls(
            dataset_id=message.dataset_id,
            org_id=message.org_id,
            name=message.name or None,
            device_id=message.device_id or None,
            created=_optional_datetime(message),
            created_by=message.created_by,
        )


RECOVERY_REASONS: dict[str, pb.RecoveryReason.ValueType] = {
    "truncated": pb.RECOVERY_REASON_TRUNCATED,
    "corrupt": pb.RECOVERY_REASON_CORRUPT,
}
"""The reasons a file can be recovered for, by their client name."""


@dataclasses.dataclass(frozen=True)
class FileRecovery:
    """How much of a damaged recording was salvaged into a file.

    Attributes:
        reason: ``"truncated"`` (the recording ends early, without its footer: its recorder
            stopped before closing it) or ``"corrupt"`` (a record is damaged; reading stopped
            there).
        detail: One line on the damage, for example ``"ends inside a Chunk record at byte
            1048576"``.
        message_count: The number of messages recovered (computed by the server from the
            partitions; ignored when registering).
        readable_bytes: The bytes read from the start of the file up to the damage.
    """

    reason: str
    detail: str = ""
    message_count: int = 0
    readable_bytes: int = 0

    def to_proto(self) -> pb.FileRecovery:
        """Return the wire form.

        Raises:
            ValueError: ``reason`` is not one of :data:`RECOVERY_REASONS`.
        """
        if self.reason not in RECOVERY_REASONS:
            raise ValueError(
                f"unknown recovery reason {self.reason!r}; one of {', '.join(RECOVERY_REASONS)}"
            )
        return pb.FileRecovery(
            reason=RECOVERY_REASONS[self.reason],
            detail=self.detail,
            message_count=self.message_count,
            readable_bytes=self.readable_bytes,
        )

    @classmethod
    def from_proto(cls, message: pb.FileRecovery) -> FileRecovery:
        """Build from a ``flightlog.v1.FileRecovery`` message."""
        names = {number: name for name, number in RECOVERY_REASONS.items()}
        return cls(
            reason=names.get(message.reason, "unspecified"),
            detail=message.detail,
            message_count=message.message_count,
            readable_bytes=message.readable_bytes,
        )


@dataclasses.dataclass(frozen=True)
class File:
    """A file of a dataset; pass it (or its ``file_id``) to ``Session.add_file``.

    Attributes:
        file_id: Unique identifier, prefixed ``fl_``.
        org_id: The owning org.
        dataset_id: The dataset the file belongs to.
        relative_path: The path relative to the dataset.
        size_bytes: The size in bytes.
        device_id: The device that recorded the file, or ``None``.
        unix_epoch_offset_ns: Offset added to the stored extents to place them on the Unix epoch.
        min_timestamp_ns: Start of the file's time window (offset applied), or ``None`` when the
            file has no extents.
        max_timestamp_ns: End of the file's time window (offset applied), or ``None``.
        created: When the file was registered.
        created_by: Principal that registered it.
        content_sha256: The SHA-256 of its content (lowercase hex), or ``None`` when it was
            registered without one.
        recovery: How it was salvaged from a damaged recording, or ``None`` for a file read
            whole.
    """

    file_id: str
    org_id: str = ""
    dataset_id: str = ""
    relative_path: str = ""
    size_bytes: int = 0
    device_id: str | None = None
    unix_epoch_offset_ns: int = 0
    min_timestamp_ns: int | None = None
    max_timestamp_ns: int | None = None
    created: dt.datetime | None = None
    created_by: str = ""
    content_sha256: str | None = None
    recovery: FileRecovery | None = None

    @classmethod
    def from_proto(cls, message: pb.File) -> File:
        """Build from a ``flightlog.v1.File`` message."""
        return cls(
            file_id=message.file_id,
            org_id=message.org_id,
            dataset_id=message.dataset_id,
            relative_path=message.relative_path,
            size_bytes=message.size_bytes,
            device_id=message.device_id or None,
            unix_epoch_offset_ns=message.unix_epoch_offset_ns,
            min_timestamp_ns=(
                message.min_timestamp_ns if message.HasField("min_timestamp_ns") else None
            ),
            max_timestamp_ns=(
                message.max_timestamp_ns if message.HasField("max_timestamp_ns") else None
            ),
            created=_optional_datetime(message),
            created_by=message.created_by,
            content_sha256=message.content_sha256 or None,
            recovery=(
                FileRecovery.from_proto(message.recovery) if message.HasField("recovery") else None
            ),
        )


# Devices -------------------------------------------------------------------------------------


def create_device(
    device_id: str,
    name: str | None = None,
    *,
    exist_ok: bool = False,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Device:
    """Register a device under an ID of your choice, unique in the org.

    Args:
        device_id: The ID.
        name: A display name.
        exist_ok: Return the existing device when the ID is taken, instead of raising (its
            name is left as it is), so that a script can run again.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Raises:
        ConflictError: The ID is taken (unless ``exist_ok``).
        InvalidRequestError: The ID is malformed.
    """
    c = resolve_client(client)
    request = pb.CreateDeviceRequest(device_id=device_id, name=name or "")
    try:
        return Device.from_proto(c.call(c.catalog.CreateDevice, request, org_id=org_id).device)
    except ConflictError:
        if not exist_ok:
            raise
    return get_device(device_id, org_id=org_id, client=c)


def get_device(
    device_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> Device:
    """Return one device.

    Raises:
        NotFoundError: No such device in the org (reason ``DEVICE_NOT_FOUND``).
    """
    c = resolve_client(client)
    request = pb.GetDeviceRequest(device_id=device_id)
    return Device.from_proto(c.call(c.catalog.GetDevice, request, org_id=org_id).device)


def list_devices(
    *, page_size: int = 0, org_id: str | None = None, client: FlightlogClient | None = None
) -> Iterator[Device]:
    """Iterate the org's devices, ordered by ID, following the stream across batches."""
    c = resolve_client(client)
    request = pb.ListDevicesRequest(page_size=page_size)
    for message in c.iterate(c.catalog.ListDevices, request, lambda r: r.devices, org_id=org_id):
        yield Device.from_proto(message)


def delete_device(
    device_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> None:
    """Delete a device and its session attachments.

    Raises:
        NotFoundError: No such device in the org.
    """
    c = resolve_client(client)
    c.call(c.catalog.DeleteDevice, pb.DeleteDeviceRequest(device_id=device_id), org_id=org_id)


# Datasets ------------------------------------------------------------------------------------


def create_dataset(
    name: str | None = None,
    device_id: str | None = None,
    *,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Dataset:
    """Create a dataset, optionally recorded by one device.

    Raises:
        NotFoundError: The device does not exist in the org.
    """
    c = resolve_client(client)
    # The idempotency key makes the channel's automatic retry of a lost call safe.
    request = pb.CreateDatasetRequest(
        name=name or "", device_id=device_id or "", request_id=uuid.uuid4().hex
    )
    return Dataset.from_proto(c.call(c.catalog.CreateDataset, request, org_id=org_id).dataset)


def get_dataset(
    dataset_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> Dataset:
    """Return one dataset.

    Raises:
        NotFoundError: No such dataset in the org (reason ``DATASET_NOT_FOUND``).
    """
    c = resolve_client(client)
    request = pb.GetDatasetRequest(dataset_id=dataset_id)
    return Dataset.from_proto(c.call(c.catalog.GetDataset, request, org_id=org_id).dataset)


def list_datasets(
    *,
    name: str | None = None,
    page_size: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Iterator[Dataset]:
    """Iterate the org's datasets, newest first, following the stream across batches.

    Args:
        name: Only the datasets with exactly this name (names are not unique).
        page_size: Datasets per streamed batch; 0 lets the server choose.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.
    """
    c = resolve_client(client)
    request = pb.ListDatasetsRequest(name=name or "", page_size=page_size)
    for message in c.iterate(c.catalog.ListDatasets, request, lambda r: r.datasets, org_id=org_id):
        yield Dataset.from_proto(message)


def find_dataset(
    ref: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> Dataset:
    """Return the dataset with this ID (``ds_...``) or, otherwise, exactly this name.

    These are the rules by which the ``flightlog`` command resolves a dataset (as it does a
    session): a reference starting with ``ds_`` is an ID, anything else a name that exactly one
    dataset of the org must carry.

    Raises:
        NotFoundError: No dataset has that ID or name (reason ``DATASET_NOT_FOUND``).
        AmbiguousNameError: Several datasets have that name; ``metadata["ids"]`` lists them.
    """
    c = resolve_client(client)
    if ref.startswith("ds_"):
        return get_dataset(ref, org_id=org_id, client=c)
    shown = 10  # an ambiguity names up to this many candidates
    matches = list(
        itertools.islice(list_datasets(name=ref, page_size=shown, org_id=org_id, client=c), shown)
    )
    if not matches:
        raise NotFoundError(f"no dataset is named {ref!r}", reason="DATASET_NOT_FOUND")
    if len(matches) > 1:
        raise AmbiguousNameError("dataset", ref, [d.dataset_id for d in matches])
    return matches[0]


# Files ---------------------------------------------------------------------------------------


def register_file(
    dataset_id: str,
    relative_path: str,
    size_bytes: int = 0,
    *,
    device_id: str | None = None,
    unix_epoch_offset_ns: int = 0,
    partitions: Sequence[TopicPartitionSpec] = (),
    content_sha256: str | None = None,
    recovery: FileRecovery | None = None,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> File:
    """Register a file of a dataset with its topic partitions and their extents, in one call.

    Args:
        dataset_id: The dataset the file belongs to.
        relative_path: The path relative to the dataset, unique within it.
        size_bytes: The size in bytes.
        device_id: The device that recorded the file; ``None``: the dataset's.
        unix_epoch_offset_ns: Offset added to the extents to place them on the Unix epoch.
        partitions: One partition per topic.
        content_sha256: The SHA-256 of the file's content (hex), by which
            :func:`list_files` finds it again.
        recovery: Set when the file is salvaged from a damaged recording; the partitions then
            hold what was recovered.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Raises:
        ConflictError: The dataset already has a file at that path.
        NotFoundError: The dataset or the device does not exist.
        InvalidRequestError: A field is malformed (see ``field_violations``).
    """
    c = resolve_client(client)
    request = pb.RegisterFileRequest(
        dataset_id=dataset_id,
        relative_path=relative_path,
        size_bytes=size_bytes,
        device_id=device_id or "",
        unix_epoch_offset_ns=unix_epoch_offset_ns,
        partitions=[partition.to_proto() for partition in partitions],
        request_id=uuid.uuid4().hex,  # makes the automatic retry of a lost call safe
        content_sha256=content_sha256 or "",
        recovery=recovery.to_proto() if recovery is not None else None,
    )
    return File.from_proto(c.call(c.catalog.RegisterFile, request, org_id=org_id).file)


def get_file(
    file_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> File:
    """Return one file.

    Raises:
        NotFoundError: No such file in the org (reason ``FILE_NOT_FOUND``).
    """
    c = resolve_client(client)
    request = pb.GetFileRequest(file_id=file_id)
    return File.from_proto(c.call(c.catalog.GetFile, request, org_id=org_id).file)


def list_files(
    dataset_id: str | None = None,
    *,
    content_sha256: str | None = None,
    recovered: bool | None = None,
    page_size: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Iterator[File]:
    """Iterate a dataset's files ordered by path, or every file of the org (ordered by ID) when
    ``dataset_id`` is ``None``.

    Args:
        dataset_id: The dataset; ``None`` lists the whole org.
        content_sha256: Only the files registered with this content hash.
        recovered: Only the files recovered from a damaged recording (``True``) or only the
            others (``False``); ``None`` does not filter.
        page_size: Files per streamed batch; 0 lets the server choose.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.
    """
    c = resolve_client(client)
    request = pb.ListFilesRequest(
        dataset_id=dataset_id or "",
        content_sha256=content_sha256 or "",
        recovered=recovered,
        page_size=page_size,
    )
    for message in c.iterate(c.catalog.ListFiles, request, lambda r: r.files, org_id=org_id):
        yield File.from_proto(message)


def list_file_topics(
    file_id: str,
    *,
    page_size: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Iterator[TopicPartition]:
    """Iterate a file's topic partitions with their extents, ordered by topic name."""
    c = resolve_client(client)
    request = pb.ListFileTopicsRequest(file_id=file_id, page_size=page_size)
    for message in c.iterate(
        c.catalog.ListFileTopics, request, lambda r: r.partitions, org_id=org_id
    ):
        yield TopicPartition.from_proto(message)


def set_file_timeline_offset(
    file_id: str,
    unix_epoch_offset_ns: int,
    *,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> File:
    """Change a file's timeline offset; the bounds of its sessions are recomputed.

    Returns:
        The file with its new offset and time window.
    """
    c = resolve_client(client)
    request = pb.UpdateFileTimelineOffsetRequest(
        file_id=file_id, unix_epoch_offset_ns=unix_epoch_offset_ns
    )
    return File.from_proto(c.call(c.catalog.UpdateFileTimelineOffset, request, org_id=org_id).file)


def delete_file(
    file_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> None:
    """Delete a file; its contributions leave every session, whose bounds are recomputed."""
    c = resolve_client(client)
    c.call(c.catalog.DeleteFile, pb.DeleteFileRequest(file_id=file_id), org_id=org_id)
