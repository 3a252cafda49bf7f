"""Sessions: operational time windows of one or more devices, and the files in them.

:class:`Session` mirrors the ``Session`` class of the Roboto SDK (``roboto.domain.sessions``):
the same classmethods, methods, argument names, defaults, return values and properties, so that
code written against it runs with only the import line changed. The ``roboto_client=`` argument
is ``client=`` here and defaults to the ambient client configured from the environment
(``FLIGHTLOG_ENDPOINT``, ``FLIGHTLOG_API_KEY``, ``FLIGHTLOG_ORG_ID``; see
:func:`flightlog.get_default_client`). ``caller_org_id``, ``owner_org_id`` and ``org_id``
arguments select the acting org of that call (the ``x-org-id`` metadata); methods of a loaded
session act in the session's own org.

Example:
    >>> from flightlog import Session
    >>> session = Session.create(name="flight-2026-04-23-001", device_ids=["dv_abc"])
    >>> session = session.add_file("fl_0123456789abcdef")
    >>> for topic in session.list_topics():
    ...     print(topic.name)
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from typing import Any, Protocol

import grpc

from flightlog._batching import (
    MAX_BATCH_BYTES,
    MAX_BATCH_ITEMS,
    batch_call,
    batches,
    field_size,
)
from flightlog._client import FlightlogClient, resolve_client
from flightlog._values import (
    NotSet,
    NotSetType,
    custom_field_value_from_proto,
    custom_field_value_to_proto,
    custom_fields_to_proto,
    datetime_from_proto,
    metadata_from_proto,
    metadata_to_proto,
)
from flightlog.catalog import Topic
from flightlog.errors import from_rpc_error
from flightlog.metrics import BulkPublishMetricsResult, Metric, MetricEntry, publish
from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb

__all__ = [
    "SESSION_CHANGE_KINDS",
    "CreateSessionRequest",
    "CustomFieldChangeset",
    "FieldCondition",
    "MetadataChangeset",
    "Session",
    "SessionChange",
    "SessionFile",
    "SessionRecord",
    "create_session",
    "create_session_for_dataset",
]


class _HasFileId(Protocol):
    """Anything that names a file: :class:`flightlog.catalog.File`, :class:`SessionFile`..."""

    @property
    def file_id(self) -> str:
        """The file ID."""
        ...


def _file_id(file: str | _HasFileId) -> str:
    """Return the file ID of a raw ID or of an object that carries one."""
    return file if isinstance(file, str) else file.file_id


def _new_request_id() -> str:
    """Return a fresh idempotency key for a create call."""
    return uuid.uuid4().hex


@dataclasses.dataclass(frozen=True)
class SessionRecord:
    """The data of a session, as returned by the server.

    Attributes:
        session_id: Stable, unique identifier, prefixed ``ss_``.
        org_id: Organization that owns the session.
        name: Short, human-readable name, or ``None``.
        description: Description, or ``None``.
        tags: User-supplied tags, in the order they were first added.
        metadata: User-supplied metadata (integral numbers as ``int``).
        custom_fields: Every Ready custom field of the org, unset ones as ``None``.
        min_timestamp_ns: Lower aggregate bound (Unix-epoch ns), ``None`` without contributions.
        max_timestamp_ns: Upper aggregate bound (Unix-epoch ns), ``None`` without contributions.
        created: When the session was created (UTC).
        created_by: Principal that created it.
        modified: When it was last modified (UTC).
        modified_by: Principal that last modified it.
        revision: The org revision of its last change; see ``expected_revision``.
    """

    session_id: str
    org_id: str = ""
    name: str | None = None
    description: str | None = None
    tags: list[str] = dataclasses.field(default_factory=list)
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    custom_fields: dict[str, Any] = dataclasses.field(default_factory=dict)
    min_timestamp_ns: int | None = None
    max_timestamp_ns: int | None = None
    created: dt.datetime | None = None
    created_by: str = ""
    modified: dt.datetime | None = None
    modified_by: str = ""
    revision: int = 0

    @classmethod
    def from_proto(cls, message: pb.Session) -> SessionRecord:
        """Build from a ``flightlog.v1.Session`` message."""
        return cls(
            session_id=message.session_id,
            org_id=message.org_id,
            name=message.name if message.HasField("name") and message.name else None,
            description=(
                message.description
                if message.HasField("description") and message.description
                else None
            ),
            tags=list(message.tags),
            metadata=metadata_from_proto(message.metadata),
            custom_fields={
                name: custom_field_value_from_proto(value)
                for name, value in sorted(message.custom_fields.items())
            },
            min_timestamp_ns=(
                message.min_timestamp_ns if message.HasField("min_timestamp_ns") else None
            ),
            max_timestamp_ns=(
                message.max_timestamp_ns if message.HasField("max_timestamp_ns") else None
            ),
            created=datetime_from_proto(message.created) if message.HasField("created") else None,
            created_by=message.created_by,
            modified=(
                datetime_from_proto(message.modified) if message.HasField("modified") else None
            ),
            modified_by=message.modified_by,
            revision=message.revision,
        )


@dataclasses.dataclass(frozen=True)
class SessionFile:
    """A file's contribution to a session, optionally narrowed to a time range.

    ``range_min_timestamp_ns`` and ``range_max_timestamp_ns`` are absolute Unix-epoch
    nanoseconds, the coordinate system of the session's bounds. Leaving both ``None``
    contributes the whole file's time window; both must be set together or both omitted
    (half-open windows are rejected), with min <= max.

    The other attributes are filled by :meth:`Session.list_files` and ignored when adding
    files; they do not take part in equality.

    Attributes:
        file_id: The contributing file, prefixed ``fl_``.
        range_min_timestamp_ns: Lower bound (inclusive) of the contribution, or ``None``.
        range_max_timestamp_ns: Upper bound (inclusive) of the contribution, or ``None``.
        session_id: The session the file contributes to.
        dataset_id: The dataset the file belongs to.
        relative_path: The file's path relative to its dataset.
        size_bytes: The file's size in bytes.
        created: When the file was first added to the session.
        created_by: Principal that first added it.
        modified: When the contribution's window last changed.
        modified_by: Principal that last changed it.
    """

    file_id: str
    range_min_timestamp_ns: int | None = None
    range_max_timestamp_ns: int | None = None
    session_id: str = dataclasses.field(default="", compare=False)
    dataset_id: str = dataclasses.field(default="", compare=False)
    relative_path: str = dataclasses.field(default="", compare=False)
    size_bytes: int = dataclasses.field(default=0, compare=False)
    created: dt.datetime | None = dataclasses.field(default=None, compare=False)
    created_by: str = dataclasses.field(default="", compare=False)
    modified: dt.datetime | None = dataclasses.field(default=None, compare=False)
    modified_by: str = dataclasses.field(default="", compare=False)

    def to_proto(self) -> pb.SessionFileSpec:
        """Return the wire form used to add the contribution."""
        spec = pb.SessionFileSpec(file_id=self.file_id)
        if self.range_min_timestamp_ns is not None:
            spec.range_min_timestamp_ns = self.range_min_timestamp_ns
        if self.range_max_timestamp_ns is not None:
            spec.range_max_timestamp_ns = self.range_max_timestamp_ns
        return spec

    @classmethod
    def from_proto(cls, message: pb.SessionFile) -> SessionFile:
        """Build from a ``flightlog.v1.SessionFile`` message."""
        return cls(
            file_id=message.file_id,
            range_min_timestamp_ns=(
                message.range_min_timestamp_ns
                if message.HasField("range_min_timestamp_ns")
                else None
            ),
            range_max_timestamp_ns=(
                message.range_max_timestamp_ns
                if message.HasField("range_max_timestamp_ns")
                else None
            ),
            session_id=message.session_id,
            dataset_id=message.dataset_id,
            relative_path=message.relative_path,
            size_bytes=message.size_bytes,
            created=datetime_from_proto(message.created) if message.HasField("created") else None,
            created_by=message.created_by,
            modified=(
                datetime_from_proto(message.modified) if message.HasField("modified") else None
            ),
            modified_by=message.modified_by,
        )


@dataclasses.dataclass(frozen=True)
class MetadataChangeset:
    """Tag and metadata changes for :meth:`Session.update`, applied puts before removes.

    Attributes:
        put_tags: Tags to add; tags already present are not duplicated.
        remove_tags: Tags to remove; tags not present are ignored.
        put_fields: Metadata fields to add or overwrite; keys may be dot paths
            (``"weather.condition"``) addressing nested objects, created as needed.
        remove_fields: Metadata keys to remove, as dot paths; missing keys are ignored and
            objects left empty are removed too.
    """

    put_tags: Sequence[str] = ()
    remove_tags: Sequence[str] = ()
    put_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    remove_fields: Sequence[str] = ()

    def to_proto(self) -> pb.MetadataChangeset:
        """Return the wire form."""
        message = pb.MetadataChangeset(
            put_tags=list(self.put_tags),
            remove_tags=list(self.remove_tags),
            remove_fields=list(self.remove_fields),
        )
        if self.put_fields:
            message.put_fields.CopyFrom(metadata_to_proto(self.put_fields))
        return message


@dataclasses.dataclass(frozen=True)
class CustomFieldChangeset:
    """Custom-field value changes for :meth:`Session.update`.

    Attributes:
        set_fields: Values to set, keyed by the name of a Ready custom field; ``None`` clears.
            Values are converted as described in :mod:`flightlog._values`.
        clear_fields: Names of fields to clear. A name may not be both set and cleared.
    """

    set_fields: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    clear_fields: Sequence[str] = ()

    def to_proto(self) -> pb.CustomFieldChangeset:
        """Return the wire form."""
        return pb.CustomFieldChangeset(
            set_fields=custom_fields_to_proto(self.set_fields),
            clear_fields=list(self.clear_fields),
        )


@dataclasses.dataclass(frozen=True)
class CreateSessionRequest:
    """One session to create with :meth:`Session.create_many`: the arguments of
    :meth:`Session.create`, plus an optional idempotency key.

    Attributes:
        name: Optional short name (max 120 characters).
        description: Optional description.
        device_ids: Devices to attach at creation; each must exist in the org.
        metadata: Optional initial metadata.
        tags: Optional initial tags.
        custom_fields: Optional initial values for Ready custom fields.
        request_id: Idempotency key, 1 to 128 characters, unique within one call. Sending the
            same key and the same session again returns the session the first call created
            instead of creating another. ``None``: :meth:`Session.create_many` generates one.
    """

    name: str | None = None
    description: str | None = None
    device_ids: Sequence[str] = ()
    metadata: Mapping[str, Any] | None = None
    tags: Sequence[str] = ()
    custom_fields: Mapping[str, Any] | None = None
    request_id: str | None = None

    @classmethod
    def from_mapping(cls, values: Mapping[str, Any]) -> CreateSessionRequest:
        """Build from a mapping of the attributes' names (a parsed JSON object, say).

        Raises:
            ValueError: A key is not an attribute, or a value has the wrong shape.
        """
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown session field(s): {', '.join(unknown)}")
        for key in ("name", "description", "request_id"):
            if values.get(key) is not None and not isinstance(values[key], str):
                raise ValueError(f"{key} must be a string")
        for key in ("device_ids", "tags"):
            value = values.get(key)
            if value is not None and (
                not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value)
            ):
                raise ValueError(f"{key} must be a list of strings")
        for key in ("metadata", "custom_fields"):
            if values.get(key) is not None and not isinstance(values[key], Mapping):
                raise ValueError(f"{key} must be an object")
        return cls(
            name=values.get("name"),
            description=values.get("description"),
            device_ids=tuple(values.get("device_ids") or ()),
            metadata=values.get("metadata"),
            tags=tuple(values.get("tags") or ()),
            custom_fields=values.get("custom_fields"),
            request_id=values.get("request_id"),
        )

    def to_proto(self) -> pb.CreateSessionRequest:
        """Return the wire form; a missing ``request_id`` is generated.

        Raises:
            TypeError: A metadata or custom-field value has no wire representation.
        """
        request = pb.CreateSessionRequest(
            name=self.name or "",
            description=self.description or "",
            device_ids=list(self.device_ids),
            tags=list(self.tags),
            custom_fields=custom_fields_to_proto(self.custom_fields or {}),
            request_id=self.request_id or _new_request_id(),
        )
        if self.metadata:
            request.metadata.CopyFrom(metadata_to_proto(self.metadata))
        return request


def create_session_batches(
    requests: Iterable[pb.CreateSessionRequest],
    *,
    caller_org_id: str | None = None,
    client: FlightlogClient | None = None,
    max_items: int = MAX_BATCH_ITEMS,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Iterator[list[Session]]:
    """Create sessions from wire requests with BatchCreateSessions, one call per batch, and
    yield each batch's sessions as soon as its call succeeded.

    The building block of :meth:`Session.create_many` and ``flightlog sessions import``, for
    callers that report progress or build the requests themselves. ``requests`` is read
    lazily and cut into batches of at most ``max_items`` sessions and ``max_bytes`` encoded
    bytes (see :mod:`flightlog._batching`). Each request should carry a ``request_id``: the
    client retries a call that failed in transit, and only request IDs make the retry return
    the sessions the lost call created.

    Raises:
        FlightlogError: A call failed; its ``batch_offset`` is the index of that call's first
            request. Every batch before it was created; nothing of it was.
    """
    c = resolve_client(client)
    offset = 0
    for chunk in batches(
        requests,
        lambda request: field_size(request.ByteSize()),
        max_items=max_items,
        max_bytes=max_bytes,
    ):
        with batch_call(offset, len(chunk)):
            response = c.call(
                c.sessions.BatchCreateSessions,
                pb.BatchCreateSessionsRequest(requests=chunk),
                org_id=caller_org_id,
            )
        yield [Session(message, client=c) for message in response.sessions]
        offset += len(chunk)


_OPERATORS: dict[str, pb.ComparisonOperator.ValueType] = {
    "=": pb.COMPARISON_OPERATOR_EQUAL,
    "==": pb.COMPARISON_OPERATOR_EQUAL,
    "!=": pb.COMPARISON_OPERATOR_NOT_EQUAL,
    "<": pb.COMPARISON_OPERATOR_LESS,
    "<=": pb.COMPARISON_OPERATOR_LESS_OR_EQUAL,
    ">": pb.COMPARISON_OPERATOR_GREATER,
    ">=": pb.COMPARISON_OPERATOR_GREATER_OR_EQUAL,
    "in": pb.COMPARISON_OPERATOR_IN,
    "is_null": pb.COMPARISON_OPERATOR_IS_NULL,
    "is_not_null": pb.COMPARISON_OPERATOR_IS_NOT_NULL,
}

_SORT_FIELDS: dict[str, pb.SessionSortField.ValueType] = {
    "created": pb.SESSION_SORT_FIELD_CREATED,
    "name": pb.SESSION_SORT_FIELD_NAME,
    "start_time": pb.SESSION_SORT_FIELD_START_TIME,
    "duration": pb.SESSION_SORT_FIELD_DURATION,
    "custom_field": pb.SESSION_SORT_FIELD_CUSTOM_FIELD,
}

SESSION_CHANGE_KINDS: dict[str, pb.SessionChangeKind.ValueType] = {
    "created": pb.SESSION_CHANGE_KIND_CREATED,
    "updated": pb.SESSION_CHANGE_KIND_UPDATED,
    "deleted": pb.SESSION_CHANGE_KIND_DELETED,
    "files_changed": pb.SESSION_CHANGE_KIND_FILES_CHANGED,
    "bounds_changed": pb.SESSION_CHANGE_KIND_BOUNDS_CHANGED,
    "devices_changed": pb.SESSION_CHANGE_KIND_DEVICES_CHANGED,
    "metrics_published": pb.SESSION_CHANGE_KIND_METRICS_PUBLISHED,
}
"""Names of the kinds of session change reported by :meth:`Session.watch`."""


@dataclasses.dataclass(frozen=True)
class FieldCondition:
    """A condition on a custom field's value, for :meth:`Session.query`.

    Attributes:
        field: The name of a Ready custom field.
        operator: ``"="``, ``"!="``, ``"<"``, ``"<="``, ``">"``, ``">="``, ``"in"``,
            ``"is_null"`` or ``"is_not_null"``.
        value: The operand of a comparison (not used by ``in`` and the null tests).
        values: The operands of ``in``.
    """

    field: str
    operator: str
    value: Any = None
    values: Sequence[Any] = ()

    def to_proto(self) -> pb.CustomFieldCondition:
        """Return the wire form.

        Raises:
            ValueError: The operator is unknown.
        """
        try:
            operator = _OPERATORS[self.operator.lower()]
        except KeyError:
            raise ValueError(
                f"unknown operator {self.operator!r}; expected one of {', '.join(_OPERATORS)}"
            ) from None
        condition = pb.CustomFieldCondition(field=self.field, operator=operator)
        if operator == pb.COMPARISON_OPERATOR_IN:
            condition.values.extend(custom_field_value_to_proto(v) for v in self.values)
        elif operator not in (pb.COMPARISON_OPERATOR_IS_NULL, pb.COMPARISON_OPERATOR_IS_NOT_NULL):
            condition.value.CopyFrom(custom_field_value_to_proto(self.value))
        return condition


@dataclasses.dataclass(frozen=True)
class SessionChange:
    """One committed change of a session, as streamed by :meth:`Session.watch`.

    Attributes:
        revision: The change's org revision, strictly increasing within the org.
        session_id: The session that changed.
        kind: What changed: one of :data:`SESSION_CHANGE_KINDS` (``"created"``,
            ``"updated"``, ``"deleted"``, ``"files_changed"``...).
        session: The session after the change; ``None`` for a deletion.
        time: When the change committed.
    """

    revision: int
    session_id: str
    kind: str
    session: Session | None
    time: dt.datetime | None


def _change_kind_name(kind: int) -> str:
    """Return the name of a wire change kind."""
    for name, wire in SESSION_CHANGE_KINDS.items():
        if wire == kind:
            return name
    return "unspecified"


def _string_update(value: str | NotSetType | None) -> common_pb2.StringUpdate | None:
    """Return the wire form of an optional-string update: set, clear, or absent."""
    if isinstance(value, NotSetType):
        return None
    if value is None:
        return common_pb2.StringUpdate(clear=True)
    return common_pb2.StringUpdate(set=value)


class SessionQuery(Iterator["Session"]):
    """The Sessions of a :meth:`Session.query`, streamed as they are iterated.

    ``to_pandas()`` reads the (remaining) sessions into a ``pandas.DataFrame``, one row per
    session, with one ``custom_fields.NAME`` column per Ready custom field; it needs the
    optional extra: ``pip install 'flightlog[pandas]'``.
    """

    def __init__(self, sessions: Iterator[Session]) -> None:
        self._sessions = sessions

    def __iter__(self) -> SessionQuery:
        return self

    def __next__(self) -> Session:
        return next(self._sessions)

    def to_pandas(self) -> Any:
        """The sessions as a ``pandas.DataFrame`` (columns: session_id, name, description,
        tags, start_time, end_time, duration_s, created, modified, custom_fields.*)."""
        try:
            import pandas as pd
        except ImportError:
            raise ImportError("to_pandas() needs pandas: pip install 'flightlog[pandas]'") from None
        rows = []
        for session in self:
            r = session.record
            low, high = r.min_timestamp_ns, r.max_timestamp_ns
            row: dict[str, Any] = {
                "session_id": r.session_id,
                "name": r.name,
                "description": r.description,
                "tags": list(r.tags),
                "start_time": pd.Timestamp(low, unit="ns", tz="UTC") if low is not None else None,
                "end_time": pd.Timestamp(high, unit="ns", tz="UTC") if high is not None else None,
                "duration_s": (high - low) / 1e9 if low is not None and high is not None else None,
                "created": r.created,
                "modified": r.modified,
            }
            for name, value in r.custom_fields.items():
                row[f"custom_fields.{name}"] = value
            rows.append(row)
        columns = [
            "session_id",
            "name",
            "description",
            "tags",
            "start_time",
            "end_time",
            "duration_s",
            "created",
            "modified",
        ]
        frame = pd.DataFrame(rows)
        return frame if rows else pd.DataFrame(columns=columns)


class Session:
    """An operational time window of one or more devices: a drone flight, a vehicle drive, a
    robot arm test run.

    A Session groups the recordings made during that window as file contributions, each
    whole or narrowed to a sub-window. Its aggregate bounds, :attr:`min_timestamp_ns` and
    :attr:`max_timestamp_ns` (Unix-epoch nanoseconds), are recomputed by the server on every
    add or remove, and the returned instance reflects them.

    A Session can reference one or many devices; use :meth:`attach_to_device` and
    :meth:`detach_from_device` to change which.

    How to create a Session:

    - :meth:`Session.create` accepts zero, one, or many devices.
    - :func:`create_session` is a shortcut for the common single-device case.
    - :func:`create_session_for_dataset` creates a Session for an existing Dataset, inferring
      the devices involved and pre-populating files from the Dataset.

    Args:
        record: The session's data, as a :class:`SessionRecord` or a ``flightlog.v1.Session``.
        client: The client to use; ``None`` uses the ambient one.
    """

    def __init__(
        self, record: SessionRecord | pb.Session, client: FlightlogClient | None = None
    ) -> None:
        self._record = (
            record if isinstance(record, SessionRecord) else SessionRecord.from_proto(record)
        )
        self._client = resolve_client(client)

    def __repr__(self) -> str:
        """Return the ID, name and bounds."""
        return (
            f"Session(session_id={self.session_id!r}, name={self.name!r}, "
            f"min_timestamp_ns={self.min_timestamp_ns!r}, "
            f"max_timestamp_ns={self.max_timestamp_ns!r})"
        )

    # Construction ----------------------------------------------------------------------------

    @classmethod
    def create(
        cls,
        name: str | None = None,
        device_ids: Sequence[str] = (),
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        custom_fields: dict[str, Any] | None = None,
        caller_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Session:
        """Create a new Session, optionally associating it with one or more devices.

        Prefer :func:`create_session` for the common single-device case. To add devices to an
        existing Session later, see :meth:`attach_to_device`. The call carries a fresh
        ``request_id``, so the automatic retry of a lost call cannot create two sessions.

        Args:
            name: Optional short name for the Session (max 120 characters).
            device_ids: Devices to associate with the Session at creation. Empty (the default)
                creates a Session with no associated devices.
            description: Optional description of the Session.
            metadata: Optional initial metadata. Sessions are not filterable or sortable by
                metadata keys; for queryable attributes, define a custom field.
            tags: Optional initial tags.
            custom_fields: Optional initial values for Ready custom fields defined on Sessions
                in the caller's org.
            caller_org_id: Caller's org scope. Required when the caller belongs to multiple
                orgs.
            client: Optional client; defaults to the ambient one.

        Returns:
            The created Session.

        Raises:
            NotFoundError: A device does not exist in the org.
            InvalidRequestError: A field is invalid (see ``field_violations``).
        """
        c = resolve_client(client)
        request = pb.CreateSessionRequest(
            name=name or "",
            description=description or "",
            device_ids=list(device_ids),
            tags=list(tags or ()),
            custom_fields=custom_fields_to_proto(custom_fields or {}),
            request_id=_new_request_id(),
        )
        if metadata:
            request.metadata.CopyFrom(metadata_to_proto(metadata))
        response = c.call(c.sessions.CreateSession, request, org_id=caller_org_id)
        return cls(response.session, client=c)

    @classmethod
    def create_from_dataset(
        cls,
        dataset_id: str,
        name: str | None = None,
        description: str | None = None,
        metadata: dict[str, Any] | None = None,
        tags: Sequence[str] | None = None,
        custom_fields: dict[str, Any] | None = None,
        caller_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Session:
        """Create a Session for an existing Dataset in one call: the devices are inferred (the
        dataset's and its files') and every file of the dataset is added whole.

        Same arguments as :meth:`create`, with ``dataset_id`` instead of ``device_ids``.

        Raises:
            NotFoundError: The dataset does not exist in the org.
        """
        c = resolve_client(client)
        request = pb.CreateSessionFromDatasetRequest(
            dataset_id=dataset_id,
            name=name or "",
            description=description or "",
            tags=list(tags or ()),
            custom_fields=custom_fields_to_proto(custom_fields or {}),
            request_id=_new_request_id(),
        )
        if metadata:
            request.metadata.CopyFrom(metadata_to_proto(metadata))
        response = c.call(c.sessions.CreateSessionFromDataset, request, org_id=caller_org_id)
        return cls(response.session, client=c)

    @classmethod
    def create_many(
        cls,
        sessions: Iterable[CreateSessionRequest | Mapping[str, Any]],
        caller_org_id: str | None = None,
        client: FlightlogClient | None = None,
        *,
        on_batch: Callable[[list[Session]], None] | None = None,
    ) -> list[Session]:
        """Create many Sessions in as few calls as the server's limits allow.

        The sessions are sent with BatchCreateSessions, up to 1,000 a call and under the
        server's 1 MiB message limit (a call holds at most about 900 KiB of encoded sessions).
        Each call is all or nothing. Every session carries a ``request_id``, its own or a
        generated one, so a retried call (the client retries one lost in transit) returns the
        sessions the first attempt created instead of creating duplicates. To make a whole
        import resumable across runs, give each session a ``request_id`` derived from its
        source (as ``flightlog sessions import`` does): running it again returns the sessions
        already created and creates only the others.

        Args:
            sessions: The sessions to create, as :class:`CreateSessionRequest` values or
                mappings of their attributes (``{"name": ..., "device_ids": [...]}``). Read
                lazily, one batch at a time.
            caller_org_id: Caller's org scope. Required when the caller belongs to multiple
                orgs.
            client: Optional client; defaults to the ambient one.
            on_batch: Called with each batch's Sessions once its call succeeded (for
                progress).

        Returns:
            The created Sessions, in the order of ``sessions``.

        Raises:
            InvalidRequestError: A session is invalid; ``field_violations`` names it as
                ``requests[i].<field>``, input item ``batch_offset + i``.
            NotFoundError: A device does not exist in the org.
            ConflictError: A ``request_id`` was used before with a different session.

        Example:
            >>> from flightlog import CreateSessionRequest, Session
            >>> sessions = Session.create_many(
            ...     [
            ...         CreateSessionRequest(name="run-1", tags=["nightly"]),
            ...         {"name": "run-2", "tags": ["nightly"], "request_id": "nightly-run-2"},
            ...     ]
            ... )
            >>> [s.name for s in sessions]
            ['run-1', 'run-2']
        """
        c = resolve_client(client)
        requests = (
            (
                item
                if isinstance(item, CreateSessionRequest)
                else CreateSessionRequest.from_mapping(item)
            ).to_proto()
            for item in sessions
        )
        created: list[Session] = []
        for batch in create_session_batches(requests, caller_org_id=caller_org_id, client=c):
            created.extend(batch)
            if on_batch is not None:
                on_batch(batch)
        return created

    @classmethod
    def get_many(
        cls,
        session_ids: Iterable[str],
        owner_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> list[Session]:
        """Load Sessions by ID with BatchGetSessions, 1,000 a call.

        Args:
            session_ids: Session primary keys; an ID given twice is returned twice.
            owner_org_id: Caller's org scope. Required when the caller belongs to multiple
                orgs.
            client: Optional client; defaults to the ambient one.

        Returns:
            The Sessions, in the order of ``session_ids``.

        Raises:
            NotFoundError: A session does not exist in the org (reason
                ``SESSION_NOT_FOUND``, ``metadata["ids"]`` lists the missing ones).
        """
        c = resolve_client(client)
        loaded: list[Session] = []
        for chunk in batches(session_ids, lambda session_id: field_size(len(session_id.encode()))):
            with batch_call(len(loaded), len(chunk)):
                response = c.call(
                    c.sessions.BatchGetSessions,
                    pb.BatchGetSessionsRequest(session_ids=chunk),
                    org_id=owner_org_id,
                )
            loaded.extend(cls(message, client=c) for message in response.sessions)
        return loaded

    @classmethod
    def from_id(
        cls,
        session_id: str,
        owner_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Session:
        """Load a Session by ID.

        Args:
            session_id: Session primary key.
            owner_org_id: Caller's org scope. Required when the caller belongs to multiple
                orgs.
            client: Optional client; defaults to the ambient one.

        Raises:
            NotFoundError: No such session in the org (reason ``SESSION_NOT_FOUND``).
        """
        c = resolve_client(client)
        request = pb.GetSessionRequest(session_id=session_id)
        return cls(c.call(c.sessions.GetSession, request, org_id=owner_org_id).session, client=c)

    @classmethod
    def for_org(
        cls, org_id: str | None = None, client: FlightlogClient | None = None
    ) -> Generator[Session, None, None]:
        """Iterate all Sessions visible to the caller's org, newest first.

        Args:
            org_id: Caller's org scope. Required when the caller belongs to multiple orgs.
            client: Optional client; defaults to the ambient one.

        Yields:
            Sessions, one at a time, following the stream (and resuming it if it breaks).
        """
        yield from cls.query(org_id=org_id, client=client)

    @classmethod
    def for_dataset(
        cls,
        dataset_id: str,
        owner_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Generator[Session, None, None]:
        """Iterate Sessions whose composition includes any file in the given dataset.

        Args:
            dataset_id: Dataset whose sessions to list.
            owner_org_id: Org that owns the dataset. Required when the caller belongs to
                multiple orgs.
            client: Optional client; defaults to the ambient one.

        Yields:
            Sessions, one at a time, following the stream automatically.
        """
        yield from cls.query(dataset_id=dataset_id, org_id=owner_org_id, client=client)

    @classmethod
    def for_device(
        cls,
        device_id: str,
        owner_org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Generator[Session, None, None]:
        """Iterate Sessions to which the given device is attached.

        Args:
            device_id: Device whose sessions to list.
            owner_org_id: Org that owns the device. Required when the caller belongs to
                multiple orgs.
            client: Optional client; defaults to the ambient one.

        Yields:
            Sessions, one at a time, following the stream automatically.
        """
        yield from cls.query(device_id=device_id, org_id=owner_org_id, client=client)

    @classmethod
    def query(
        cls,
        *,
        tags_all: Sequence[str] = (),
        tags_any: Sequence[str] = (),
        device_id: str | None = None,
        dataset_id: str | None = None,
        overlaps: tuple[int, int] | None = None,
        custom_fields: Sequence[FieldCondition] = (),
        name_contains: str | None = None,
        sort_by: str | None = None,
        sort_custom_field: str | None = None,
        descending: bool | None = None,
        page_size: int = 0,
        org_id: str | None = None,
        client: FlightlogClient | None = None,
        filter: str | None = None,  # the API's name (AIP-160), shadowing the builtin here only
        order_by: str | None = None,
    ) -> SessionQuery:
        """Iterate the org's Sessions that match every given condition, in a chosen order.

        ``filter`` takes the AIP-160 filter language and ``order_by`` several sort keys (see
        the README's "Asking questions"); the other conditions, when also given, must hold too.
        The result is an iterator of Sessions, which ``to_pandas()`` turns into a DataFrame
        (with the ``flightlog[pandas]`` extra)::

            >>> from flightlog import Session
            >>> fast = Session.query(
            ...     filter='tags:"outdoor" AND metrics.max_speed > 10',
            ...     order_by="metrics.max_speed desc, start_time",
            ... )
            >>> for session in fast:  # doctest: +SKIP
            ...     print(session.session_id, session.name)

        Args:
            filter: An AIP-160 filter, e.g. ``'tags:"outdoor" AND custom_fields.site = "lab"'``.
            order_by: Sort keys in the AIP-132 form, e.g. ``"custom_fields.max_speed desc,
                start_time"``; not together with ``sort_by``/``descending``.
            tags_all: Sessions that carry every one of these tags.
            tags_any: Sessions that carry at least one of these tags.
            device_id: Sessions to which this device is attached.
            dataset_id: Sessions with a contributing file from this dataset.
            overlaps: ``(min_ns, max_ns)``: sessions whose bounds overlap this closed window.
            custom_fields: Conditions on custom-field values.
            name_contains: Sessions whose name contains this text, case-insensitively.
            sort_by: ``"created"`` (default), ``"name"``, ``"start_time"``, ``"duration"`` or
                ``"custom_field"`` (with ``sort_custom_field``).
            sort_custom_field: The Ready custom field to sort by.
            descending: The direction; ``None`` is the field's default (newest first for
                ``created``, ascending otherwise).
            page_size: Sessions per streamed batch; 0 lets the server choose.
            org_id: Caller's org scope.
            client: Optional client; defaults to the ambient one.

        Returns:
            A :class:`SessionQuery`: Sessions, one at a time, following the stream (and
            resuming it if it breaks).
        """
        c = resolve_client(client)
        request = cls._list_request(
            tags_all=tags_all,
            tags_any=tags_any,
            device_id=device_id,
            dataset_id=dataset_id,
            overlaps=overlaps,
            custom_fields=custom_fields,
            name_contains=name_contains,
            sort_by=sort_by,
            sort_custom_field=sort_custom_field,
            descending=descending,
            page_size=page_size,
        )
        request.filter_text = filter or ""
        request.order_by = order_by or ""

        def sessions() -> Generator[Session, None, None]:
            for message in c.iterate(
                c.sessions.ListSessions, request, lambda r: r.sessions, org_id=org_id
            ):
                yield cls(message, client=c)

        return SessionQuery(sessions())

    @staticmethod
    def _list_request(
        *,
        tags_all: Sequence[str],
        tags_any: Sequence[str],
        device_id: str | None,
        dataset_id: str | None,
        overlaps: tuple[int, int] | None,
        custom_fields: Sequence[FieldCondition],
        name_contains: str | None,
        sort_by: str | None,
        sort_custom_field: str | None,
        descending: bool | None,
        page_size: int,
    ) -> pb.ListSessionsRequest:
        """Build a ListSessions request from :meth:`query` arguments."""
        request = pb.ListSessionsRequest(page_size=page_size)
        f = request.filter
        f.tags_all.extend(tags_all)
        f.tags_any.extend(tags_any)
        f.device_id = device_id or ""
        f.dataset_id = dataset_id or ""
        f.name_contains = name_contains or ""
        if overlaps is not None:
            f.overlaps.min_timestamp_ns, f.overlaps.max_timestamp_ns = overlaps
        f.custom_fields.extend(condition.to_proto() for condition in custom_fields)
        if sort_by is not None:
            try:
                request.sort.field = _SORT_FIELDS[sort_by]
            except KeyError:
                raise ValueError(
                    f"unknown sort field {sort_by!r}; expected one of {', '.join(_SORT_FIELDS)}"
                ) from None
        if sort_custom_field:
            request.sort.field = pb.SESSION_SORT_FIELD_CUSTOM_FIELD
            request.sort.custom_field = sort_custom_field
        if descending is not None:
            request.sort.direction = (
                pb.SORT_DIRECTION_DESCENDING if descending else pb.SORT_DIRECTION_ASCENDING
            )
        return request

    @classmethod
    def watch(
        cls,
        after_revision: int = -1,
        *,
        session_ids: Sequence[str] = (),
        tags_any: Sequence[str] = (),
        device_id: str | None = None,
        kinds: Sequence[str] = (),
        org_id: str | None = None,
        client: FlightlogClient | None = None,
    ) -> Generator[SessionChange, None, None]:
        """Follow the org's session changes, then live ones as they commit.

        When the stream breaks (UNAVAILABLE, including a server shutting down), it is reopened
        after the last revision seen, so no change is missed or repeated. The generator runs
        until the caller stops iterating. Also available as ``flightlog.watch``.

        Args:
            after_revision: Replay changes after this revision; 0 replays the org's history
                from its first change (OUT_OF_RANGE once part of it was pruned), -1 (the
                default) starts with live changes only.
            session_ids: Only changes of these sessions.
            tags_any: Only changes of sessions carrying one of these tags.
            device_id: Only changes of sessions to which this device is attached.
            kinds: Only these kinds of change (names of :data:`SESSION_CHANGE_KINDS`).
            org_id: Caller's org scope.
            client: Optional client; defaults to the ambient one.

        Yields:
            :class:`SessionChange` entries in revision order.

        Raises:
            InvalidRequestError: ``after_revision`` is older than the retained history (code
                OUT_OF_RANGE, reason ``REVISION_EXPIRED``, ``metadata["oldest_revision"]``).
        """
        c = resolve_client(client)
        try:
            wire_kinds = [SESSION_CHANGE_KINDS[kind] for kind in kinds]
        except KeyError as error:
            raise ValueError(
                f"unknown change kind {error.args[0]!r}; "
                f"expected one of {', '.join(SESSION_CHANGE_KINDS)}"
            ) from None
        revision = after_revision
        failures = 0
        while True:
            request = pb.WatchSessionsRequest(
                after_revision=revision,
                session_ids=list(session_ids),
                tags_any=list(tags_any),
                device_id=device_id or "",
                kinds=wire_kinds,
            )
            call = c.sessions.WatchSessions(request, timeout=None, metadata=c.metadata(org_id))
            try:
                for response in call:
                    failures = 0
                    for change in response.changes:
                        yield SessionChange(
                            revision=change.revision,
                            session_id=change.session_id,
                            kind=_change_kind_name(change.kind),
                            session=(
                                cls(change.session, client=c)
                                if change.HasField("session")
                                else None
                            ),
                            time=(
                                datetime_from_proto(change.time)
                                if change.HasField("time")
                                else None
                            ),
                        )
                        revision = max(revision, change.revision)
                    revision = max(revision, response.revision)
                return
            except grpc.RpcError as error:
                code = error.code() if isinstance(error, grpc.Call) else None
                resumable = code in (
                    grpc.StatusCode.UNAVAILABLE,
                    grpc.StatusCode.RESOURCE_EXHAUSTED,
                )
                if not resumable or failures >= c.retry.stream_resumes:
                    raise from_rpc_error(error) from error
                time.sleep(c.retry.backoff(failures))
                failures += 1
            finally:
                call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves it untyped

    # Properties ------------------------------------------------------------------------------

    @property
    def record(self) -> SessionRecord:
        """Underlying data record for this Session."""
        return self._record

    @property
    def session_id(self) -> str:
        """Globally unique identifier assigned to this Session on creation."""
        return self._record.session_id

    @property
    def org_id(self) -> str:
        """Identifier of the organization that owns this Session."""
        return self._record.org_id

    @property
    def name(self) -> str | None:
        """Optional short name of this Session."""
        return self._record.name

    @property
    def description(self) -> str | None:
        """Optional description of this Session."""
        return self._record.description

    @property
    def tags(self) -> list[str]:
        """User-supplied tags on this Session."""
        return list(self._record.tags)

    @property
    def metadata(self) -> dict[str, Any]:
        """User-supplied metadata attached to this Session.

        Sessions are not filterable or sortable by metadata keys; for queryable attributes,
        define a custom field.
        """
        return dict(self._record.metadata)

    @property
    def custom_fields(self) -> dict[str, Any]:
        """Custom-field values defined on Sessions in this org.

        Every Ready custom field appears as a key; values not set on this session are
        ``None``. Empty when no custom fields are defined for the org.
        """
        return dict(self._record.custom_fields)

    @property
    def min_timestamp_ns(self) -> int | None:
        """Lower aggregate bound across this Session's contributions, in Unix-epoch
        nanoseconds; ``None`` when the Session has no contributions."""
        return self._record.min_timestamp_ns

    @property
    def max_timestamp_ns(self) -> int | None:
        """Upper aggregate bound across this Session's contributions, in Unix-epoch
        nanoseconds; ``None`` when the Session has no contributions."""
        return self._record.max_timestamp_ns

    @property
    def created(self) -> dt.datetime | None:
        """UTC timestamp when this Session was created."""
        return self._record.created

    @property
    def created_by(self) -> str:
        """Identifier of the user or service which created this Session."""
        return self._record.created_by

    @property
    def modified(self) -> dt.datetime | None:
        """UTC timestamp when this Session was last modified."""
        return self._record.modified

    @property
    def modified_by(self) -> str:
        """Identifier of the user or service which last modified this Session."""
        return self._record.modified_by

    @property
    def revision(self) -> int:
        """The org revision of this Session's last change, usable as ``expected_revision``."""
        return self._record.revision

    # Internals -------------------------------------------------------------------------------

    @property
    def _org(self) -> str | None:
        """The org every call about this session acts in."""
        return self._record.org_id or None

    def _apply(self, message: pb.Session) -> Session:
        """Replace the record with the server's latest and return ``self``."""
        self._record = SessionRecord.from_proto(message)
        return self

    # Files -----------------------------------------------------------------------------------

    def add_file(
        self,
        file: str | _HasFileId,
        range_min_timestamp_ns: int | None = None,
        range_max_timestamp_ns: int | None = None,
    ) -> Session:
        """Include a single file in this Session as a contribution.

        Thin convenience over :meth:`add_files` for the common one-file case.

        Args:
            file: A :class:`~flightlog.catalog.File` or a raw file id.
            range_min_timestamp_ns: Optional lower bound (Unix-epoch nanoseconds) of this
                file's contribution. Must be paired with ``range_max_timestamp_ns``; leaving
                both ``None`` contributes the whole file's time window.
            range_max_timestamp_ns: Optional upper bound paired with ``range_min_timestamp_ns``.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.add_files(
            [
                SessionFile(
                    file_id=_file_id(file),
                    range_min_timestamp_ns=range_min_timestamp_ns,
                    range_max_timestamp_ns=range_max_timestamp_ns,
                )
            ]
        )

    def add_files(self, files: Sequence[SessionFile | str | _HasFileId]) -> Session:
        """Include the given files in this Session as contributions, all or nothing.

        Each :class:`SessionFile` may carry ``range_min_timestamp_ns`` /
        ``range_max_timestamp_ns`` bounds narrowing its contribution to a sub-window; raw file
        IDs and :class:`~flightlog.catalog.File` objects contribute whole. A file already in the
        Session has its window replaced. The server recomputes the aggregate bounds.

        Args:
            files: Files to contribute to the Session.

        Returns:
            This Session, refreshed from the server response.

        Raises:
            NotFoundError: A file does not exist (reason ``FILE_NOT_FOUND``,
                ``metadata["ids"]`` lists them).
            InvalidRequestError: A file is listed twice, or a window is half-open or inverted.
        """
        specs = [
            (f if isinstance(f, SessionFile) else SessionFile(file_id=_file_id(f))).to_proto()
            for f in files
        ]
        request = pb.AddSessionFilesRequest(session_id=self.session_id, files=specs)
        c = self._client
        return self._apply(c.call(c.sessions.AddSessionFiles, request, org_id=self._org).session)

    def remove_file(self, file: str | _HasFileId) -> Session:
        """Remove a single file's contributions from this Session.

        Thin convenience over :meth:`remove_files` for the common one-file case.

        Args:
            file: A :class:`~flightlog.catalog.File` or a file id.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.remove_files([_file_id(file)])

    def remove_files(self, file_ids: Sequence[str]) -> Session:
        """Remove the given files' contributions from this Session.

        Files that are not in the Session are ignored. The server recomputes the aggregate
        bounds across the remaining contributions.

        Args:
            file_ids: File IDs whose contributions should be removed.

        Returns:
            This Session, refreshed from the server response.
        """
        request = pb.RemoveSessionFilesRequest(session_id=self.session_id, file_ids=list(file_ids))
        c = self._client
        response = c.call(c.sessions.RemoveSessionFiles, request, org_id=self._org)
        return self._apply(response.session)

    def list_files(self) -> Generator[SessionFile, None, None]:
        """Iterate this Session's file contributions, in the order they were first added.

        Yields:
            :class:`SessionFile` entries, each carrying its optional
            ``range_min_timestamp_ns`` / ``range_max_timestamp_ns`` sub-window bounds.
        """
        c = self._client
        request = pb.ListSessionFilesRequest(session_id=self.session_id)
        for message in c.iterate(
            c.sessions.ListSessionFiles, request, lambda r: r.files, org_id=self._org
        ):
            yield SessionFile.from_proto(message)

    # Devices ---------------------------------------------------------------------------------

    def attach_to_device(self, device_id: str) -> None:
        """Attach a Device to this Session as a subject.

        A Session may have many device attachments, for example a formation flight where
        several drones operate within one activity window. Attaching an attached device is a
        no-op.

        Args:
            device_id: ID of the Device to add as a subject of this Session.

        Raises:
            NotFoundError: The device does not exist in the Session's org.
        """
        request = pb.AttachSessionDeviceRequest(session_id=self.session_id, device_id=device_id)
        c = self._client
        self._apply(c.call(c.sessions.AttachSessionDevice, request, org_id=self._org).session)

    def detach_from_device(self, device_id: str) -> None:
        """Remove a Device from this Session's subjects; the Session itself is kept.

        Args:
            device_id: ID of the Device to remove as a subject of this Session.
        """
        request = pb.DetachSessionDeviceRequest(session_id=self.session_id, device_id=device_id)
        c = self._client
        self._apply(c.call(c.sessions.DetachSessionDevice, request, org_id=self._org).session)

    def list_devices(self) -> Generator[str, None, None]:
        """Iterate the device IDs attached as subjects of this Session, in attach order."""
        c = self._client
        request = pb.ListSessionDevicesRequest(session_id=self.session_id)
        for device in c.iterate(
            c.sessions.ListSessionDevices, request, lambda r: r.devices, org_id=self._org
        ):
            yield device.device_id

    # Topics ----------------------------------------------------------------------------------

    def list_topics(self) -> Generator[Topic, None, None]:
        """Iterate topic identities reachable from this Session.

        A topic is yielded when one of its partitions in a contributing file has a timeline
        extent that overlaps the Session's window (closed at both ends). Results are
        deduplicated across files and partitions and ordered by name, with ``topic_id`` as the
        tiebreaker. A Session without bounds has no topics.

        Yields:
            :class:`~flightlog.catalog.Topic` entries (``topic_id``, ``name``,
            ``schema_name``, ``message_encoding``).
        """
        c = self._client
        request = pb.ListSessionTopicsRequest(session_id=self.session_id)
        for message in c.iterate(
            c.sessions.ListSessionTopics, request, lambda r: r.topics, org_id=self._org
        ):
            yield Topic.from_proto(message)

    def get_topic(self, topic_name: str) -> Topic:
        """Return the topic of this name reachable from this Session (see :meth:`list_topics`).

        Raises:
            NotFoundError: No topic of that name is reachable (reason ``TOPIC_NOT_FOUND``).
        """
        request = pb.GetSessionTopicRequest(session_id=self.session_id, topic_name=topic_name)
        c = self._client
        return Topic.from_proto(c.call(c.sessions.GetSessionTopic, request, org_id=self._org).topic)

    # Metrics ---------------------------------------------------------------------------------

    def list_metrics(self) -> list[Metric]:
        """Return all metrics published to this Session, ordered by name.

        Returns:
            List of :class:`~flightlog.metrics.Metric` instances for this Session.
        """
        c = self._client
        request = pb.ListSessionMetricsRequest(session_id=self.session_id)
        return [
            Metric.from_proto(message)
            for message in c.iterate(
                c.sessions.ListSessionMetrics, request, lambda r: r.metrics, org_id=self._org
            )
        ]

    def publish_metrics(
        self,
        metrics: Sequence[MetricEntry],
        device_id: str | NotSetType | None = NotSet,
    ) -> BulkPublishMetricsResult:
        """Record metric values for this Session in a single network call.

        Convenience wrapper around :func:`flightlog.metrics.publish` that supplies this
        Session's ``session_id`` and org. Each (metric, session) pair is upserted:
        republishing under the same name replaces the previous value. Metric definitions are
        created on first use. Entries that fail on their own (bad name, NaN) are reported in
        ``failed``; the others are recorded.

        Args:
            metrics: Metric names and numeric values to record.
            device_id: Device to associate with each published value, or ``None`` to opt out.
                When omitted, the server infers the device from this Session's attached
                devices: the call succeeds only if exactly one device is attached.

        Returns:
            A :class:`~flightlog.metrics.BulkPublishMetricsResult` with ``succeeded`` and
            ``failed`` lists.

        Raises:
            InvalidRequestError: ``device_id`` was omitted and this Session has zero or more
                than one attached devices.
        """
        return publish(
            metrics,
            session_id=self.session_id,
            device_id=device_id,
            org_id=self._org,
            client=self._client,
        )

    # Tags, metadata, custom fields -----------------------------------------------------------

    def put_metadata(self, metadata: dict[str, Any]) -> Session:
        """Add or update metadata fields on this Session.

        Args:
            metadata: Field-to-value map. Existing fields are overwritten; fields not in this
                map are left unchanged. Keys may be dot paths (``"weather.condition"``).

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(metadata_changeset=MetadataChangeset(put_fields=metadata))

    def remove_metadata(self, metadata: Sequence[str]) -> Session:
        """Remove metadata keys from this Session.

        Args:
            metadata: Metadata keys to remove. Dot notation addresses nested keys
                (``"weather.condition"``).

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(metadata_changeset=MetadataChangeset(remove_fields=list(metadata)))

    def put_tags(self, tags: Sequence[str]) -> Session:
        """Add tags to this Session. Tags already present are not duplicated.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(metadata_changeset=MetadataChangeset(put_tags=list(tags)))

    def remove_tags(self, tags: Sequence[str]) -> Session:
        """Remove the given tags from this Session. Tags not present are silently ignored.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(metadata_changeset=MetadataChangeset(remove_tags=list(tags)))

    def set_custom_field(self, name: str, value: Any) -> Session:
        """Set a single custom-field value on this session.

        ``name`` must be the name of a Ready custom field for this session's org; ``value``
        must satisfy the field's declared type (``bool``, ``str``, a number, a ``datetime``).

        Returns:
            This Session, refreshed from the server response.
        """
        return self.set_custom_fields({name: value})

    def set_custom_fields(self, fields: dict[str, Any]) -> Session:
        """Set or overwrite multiple custom-field values on this session.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(custom_fields_changeset=CustomFieldChangeset(set_fields=fields))

    def clear_custom_field(self, name: str) -> Session:
        """Clear a single custom-field value on this session to ``None``.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.clear_custom_fields([name])

    def clear_custom_fields(self, names: Sequence[str]) -> Session:
        """Clear multiple custom-field values on this session to ``None``.

        Returns:
            This Session, refreshed from the server response.
        """
        return self.update(custom_fields_changeset=CustomFieldChangeset(clear_fields=list(names)))

    # Update, delete, refresh -----------------------------------------------------------------

    def update(
        self,
        description: str | NotSetType | None = NotSet,
        metadata_changeset: MetadataChangeset | NotSetType = NotSet,
        name: str | NotSetType | None = NotSet,
        custom_fields_changeset: CustomFieldChangeset | None = None,
        *,
        expected_revision: int | None = None,
        metrics: Sequence[MetricEntry] = (),
        metrics_device_id: str | NotSetType | None = NotSet,
    ) -> Session:
        """Update mutable Session fields.

        Fields left at the :data:`~flightlog.NotSet` default are preserved; for the nullable
        string fields (``description``, ``name``), pass ``None`` to clear. See
        :meth:`put_tags`, :meth:`remove_tags`, :meth:`put_metadata` and
        :meth:`remove_metadata` for shorthand helpers.

        Args:
            description: New description, ``None`` to clear, or leave unchanged.
            metadata_changeset: Tag and metadata changes to merge into the Session.
            name: New name (max 120 characters), ``None`` to clear, or leave unchanged.
            custom_fields_changeset: Changes to Ready custom-field values.
            expected_revision: Apply only if the Session's :attr:`revision` still equals this
                (optimistic concurrency); otherwise :class:`~flightlog.errors.ConflictError`.
            metrics: Metric values to publish in the same call (1 to 1,000), all or nothing
                with the other changes: one transaction, one change in the feed, one new
                revision. Unlike :meth:`publish_metrics`, a bad entry fails the whole call
                (its violation is named ``metrics.entries[i]``).
            metrics_device_id: Device to associate with the ``metrics``, or ``None`` for no
                device; when omitted, inferred from the one attached device.

        Returns:
            This Session, refreshed from the server response.

        Example:
            A pipeline step that tags a session, sets a custom field (``max_speed``, a Ready
            number field of the org) and records a metric, in one call:

            >>> from flightlog import CustomFieldChangeset, MetadataChangeset, MetricEntry
            >>> session = Session.create(name="flight-001")
            >>> session = session.update(
            ...     metadata_changeset=MetadataChangeset(put_tags=["analyzed"]),
            ...     custom_fields_changeset=CustomFieldChangeset(set_fields={"max_speed": 12.5}),
            ...     metrics=[MetricEntry("cpu.usage_max", 87.2)],
            ...     metrics_device_id=None,
            ... )
            >>> session.tags, session.custom_fields["max_speed"]
            (['analyzed'], 12.5)
            >>> [(m.name, m.value) for m in session.list_metrics()]
            [('cpu.usage_max', 87.2)]
        """
        request = pb.UpdateSessionRequest(session_id=self.session_id)
        name_update = _string_update(name)
        if name_update is not None:
            request.name.CopyFrom(name_update)
        description_update = _string_update(description)
        if description_update is not None:
            request.description.CopyFrom(description_update)
        if isinstance(metadata_changeset, MetadataChangeset):
            request.metadata_changeset.CopyFrom(metadata_changeset.to_proto())
        if custom_fields_changeset is not None:
            request.custom_fields_changeset.CopyFrom(custom_fields_changeset.to_proto())
        if expected_revision is not None:
            request.expected_revision = expected_revision
        if metrics:
            request.metrics.entries.extend(m.to_proto() for m in metrics)
            if metrics_device_id is None:
                request.metrics.no_device = True
            elif not isinstance(metrics_device_id, NotSetType):
                request.metrics.device_id = metrics_device_id
        c = self._client
        return self._apply(c.call(c.sessions.UpdateSession, request, org_id=self._org).session)

    def delete(self, *, expected_revision: int | None = None) -> None:
        """Delete this Session. Its file contributions, device attachments and metric values
        are removed alongside it.

        Args:
            expected_revision: Delete only if the Session's :attr:`revision` still equals this.
        """
        request = pb.DeleteSessionRequest(session_id=self.session_id)
        if expected_revision is not None:
            request.expected_revision = expected_revision
        c = self._client
        c.call(c.sessions.DeleteSession, request, org_id=self._org)

    def refresh(self) -> Session:
        """Reload this Session from the server and return it."""
        request = pb.GetSessionRequest(session_id=self.session_id)
        c = self._client
        return self._apply(c.call(c.sessions.GetSession, request, org_id=self._org).session)


def create_session(
    device_id: str | None = None,
    name: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    custom_fields: dict[str, Any] | None = None,
    caller_org_id: str | None = None,
    client: FlightlogClient | None = None,
    *,
    dataset_id: str | None = None,
) -> Session:
    """Create a Session for one device, or for an existing dataset.

    The shortcut for the common cases of :meth:`Session.create`:

    - ``create_session("dv_abc", name=...)`` creates a Session with that single device;
    - ``create_session(dataset_id="ds_abc", ...)`` creates a Session for the dataset, inferring
      its devices and adding all of its files (see :func:`create_session_for_dataset`).

    Exactly one of ``device_id`` and ``dataset_id`` must be given.

    Raises:
        ValueError: Neither or both of ``device_id`` and ``dataset_id`` were given.
    """
    if (device_id is None) == (dataset_id is None):
        raise ValueError("create_session needs exactly one of device_id and dataset_id")
    if dataset_id is not None:
        return create_session_for_dataset(
            dataset_id,
            name=name,
            description=description,
            metadata=metadata,
            tags=tags,
            custom_fields=custom_fields,
            caller_org_id=caller_org_id,
            client=client,
        )
    assert device_id is not None  # for the type checker: checked above
    return Session.create(
        name=name,
        device_ids=[device_id],
        description=description,
        metadata=metadata,
        tags=tags,
        custom_fields=custom_fields,
        caller_org_id=caller_org_id,
        client=client,
    )


def create_session_for_dataset(
    dataset_id: str,
    name: str | None = None,
    description: str | None = None,
    metadata: dict[str, Any] | None = None,
    tags: Sequence[str] | None = None,
    custom_fields: dict[str, Any] | None = None,
    caller_org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Session:
    """Create a Session for an existing Dataset: its devices are inferred and every file of the
    dataset is added whole, in one transaction. See :meth:`Session.create_from_dataset`."""
    return Session.create_from_dataset(
        dataset_id,
        name=name,
        description=description,
        metadata=metadata,
        tags=tags,
        custom_fields=custom_fields,
        caller_org_id=caller_org_id,
        client=client,
    )


watch = Session.watch
"""Follow the org's session changes: the same as :meth:`Session.watch`."""
