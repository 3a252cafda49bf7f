"""The ``flightlog`` command: parser, handlers and exit codes."""

from __future__ import annotations

import argparse
import collections
import dataclasses
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from flightlog import catalog, custom_fields
from flightlog import metrics as metrics_api
from flightlog._batching import MAX_BATCH_ITEMS
from flightlog._client import FlightlogClient
from flightlog._config import ClientConfig
from flightlog.catalog import TimelineExtent, TopicPartition, TopicPartitionSpec
from flightlog.cli._output import (
    Column,
    Output,
    bar,
    format_bytes,
    format_duration,
    format_ns,
)
from flightlog.cli._parsing import (
    UsageError,
    parse_condition,
    parse_custom_field_value,
    parse_key_value,
    parse_metadata_value,
    parse_time_ns,
)
from flightlog.custom_fields import CustomField
from flightlog.errors import (
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    FlightlogError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    UnauthorizedError,
    UnavailableError,
)
from flightlog.ingest import (
    IngestedFile,
    IngestFailure,
    IngestResult,
    PlannedFile,
    RecordingSummary,
    Recovery,
    find_session,
    ingest_recordings,
    plan_files,
)
from flightlog.metrics import Metric, MetricAggregateRow, MetricEntry, SessionAggregateRow
from flightlog.session import (
    SESSION_CHANGE_KINDS,
    CreateSessionRequest,
    CustomFieldChangeset,
    MetadataChangeset,
    Session,
    SessionChange,
    SessionFile,
    create_session_batches,
)
from flightlog.v1 import session_service_pb2 as pb

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "EXIT_CONFLICT",
    "EXIT_ERROR",
    "EXIT_INVALID",
    "EXIT_NOTHING_INGESTED",
    "EXIT_NOT_FOUND",
    "EXIT_OK",
    "EXIT_PARTIAL",
    "EXIT_UNAUTHORIZED",
    "EXIT_UNAVAILABLE",
    "EXIT_USAGE",
    "build_parser",
    "exit_code_for",
    "run",
]

EXIT_OK = 0
"""Success."""
EXIT_ERROR = 1
"""Any failure without a more specific code."""
EXIT_USAGE = 2
"""Bad command line or configuration."""
EXIT_NOT_FOUND = 3
"""A resource does not exist (NOT_FOUND)."""
EXIT_INVALID = 4
"""The server rejected the request as invalid (INVALID_ARGUMENT, OUT_OF_RANGE...)."""
EXIT_UNAUTHORIZED = 5
"""No valid API key, or no access to the org (UNAUTHENTICATED, PERMISSION_DENIED)."""
EXIT_CONFLICT = 6
"""The request conflicts with the current state (ALREADY_EXISTS, ABORTED)."""
EXIT_UNAVAILABLE = 7
"""The server could not be reached in time (UNAVAILABLE, DEADLINE_EXCEEDED)."""
EXIT_PARTIAL = 8
"""Some items failed, the others succeeded (ingest: some recordings were ingested)."""
EXIT_NOTHING_INGESTED = 9
"""``ingest``: no recording could be ingested (each one failed on its own)."""

DEFAULT_TIMEOUT_S = 5.0
"""The command's default ``--timeout``: a down server is reported within seconds."""


def exit_code_for(error: BaseException) -> int:
    """Return the exit code for an error."""
    if isinstance(error, ValueError | ConfigurationError):  # UsageError is a ValueError
        return EXIT_USAGE
    if isinstance(error, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(error, InvalidRequestError):
        return EXIT_INVALID
    if isinstance(error, UnauthorizedError | PermissionDeniedError):
        return EXIT_UNAUTHORIZED
    if isinstance(error, ConflictError):
        return EXIT_CONFLICT
    if isinstance(error, UnavailableError | DeadlineExceededError):
        return EXIT_UNAVAILABLE
    return EXIT_ERROR


@dataclasses.dataclass
class _Context:
    """What every handler gets: the parsed arguments, the output and a lazy client."""

    args: argparse.Namespace
    out: Output
    _client: FlightlogClient | None = None
    _fields: dict[str, CustomField] | None = None

    @property
    def client(self) -> FlightlogClient:
        """The client, configured from the environment and the global options.

        Raises:
            ConfigurationError: A setting is unusable, or no API key is set.
        """
        if self._client is None:
            config = ClientConfig.from_env(default_timeout=DEFAULT_TIMEOUT_S)
            overrides: dict[str, Any] = {}
            if self.args.endpoint:
                overrides["endpoint"] = self.args.endpoint
            if self.args.org:
                overrides["org_id"] = self.args.org
            if self.args.timeout is not None:
                overrides["timeout"] = self.args.timeout
            if overrides:
                config = dataclasses.replace(config, **overrides)
            if config.api_key is None:
                raise ConfigurationError(
                    "FLIGHTLOG_API_KEY is not set: export the API key of your principal "
                    "(make run writes a development key to .data/dev.env)"
                )
            self._client = FlightlogClient.from_config(config)
        return self._client

    def close(self) -> None:
        """Close the client if one was made."""
        if self._client is not None:
            self._client.close()

    def session_fields(self) -> dict[str, CustomField]:
        """The org's custom-field definitions for sessions, by name (fetched once)."""
        if self._fields is None:
            self._fields = {
                f.name: f for f in custom_fields.list_custom_fields("session", client=self.client)
            }
        return self._fields

    def session(self, ref: str) -> Session:
        """Load a session by ID (``ss_...``) or by exact name.

        Raises:
            NotFoundError: No session has that ID or name.
            AmbiguousNameError: Several sessions have that name.
        """
        if ref.startswith("ss_"):
            return Session.from_id(ref, client=self.client)
        session = find_session(ref, client=self.client)
        if session is None:
            raise NotFoundError(f"no session is named {ref!r}", reason="SESSION_NOT_FOUND")
        return session

    def dataset(self, ref: str) -> catalog.Dataset:
        """Load a dataset by ID (``ds_...``) or by exact name, by the rules of :meth:`session`.

        Raises:
            NotFoundError: No dataset has that ID or name.
            AmbiguousNameError: Several datasets have that name.
        """
        return catalog.find_dataset(ref, client=self.client)

    def dataset_id(self, ref: str | None) -> str | None:
        """The ID of the dataset given by ID or name, or ``None`` when none is given."""
        if ref is None:
            return None
        return ref if ref.startswith("ds_") else self.dataset(ref).dataset_id


# Records -------------------------------------------------------------------------------------


def _session_fields(session: Session) -> list[tuple[str, object]]:
    """The rows of ``sessions get``."""
    return [
        ("session_id", session.session_id),
        ("name", session.name),
        ("description", session.description),
        ("org_id", session.org_id),
        ("start", format_ns(session.min_timestamp_ns)),
        ("end", format_ns(session.max_timestamp_ns)),
        ("duration", format_duration(session.min_timestamp_ns, session.max_timestamp_ns)),
        ("min_timestamp_ns", session.min_timestamp_ns),
        ("max_timestamp_ns", session.max_timestamp_ns),
        ("tags", session.tags),
        ("metadata", session.metadata),
        ("custom_fields", session.custom_fields),
        ("created", session.created),
        ("created_by", session.created_by),
        ("modified", session.modified),
        ("modified_by", session.modified_by),
        ("revision", session.revision),
    ]


def _dataclass_fields(value: Any) -> list[tuple[str, object]]:
    """The rows of a ``get`` of any record."""
    return [(f.name, getattr(value, f.name)) for f in dataclasses.fields(value)]


_SESSION_COLUMNS: list[Column[Session]] = [
    Column("SESSION", lambda s: s.session_id),
    Column("NAME", lambda s: s.name),
    Column("START", lambda s: format_ns(s.min_timestamp_ns)),
    Column("DURATION", lambda s: format_duration(s.min_timestamp_ns, s.max_timestamp_ns), "right"),
    Column("TAGS", lambda s: s.tags),
    Column("CREATED", lambda s: s.created),
]


# Sessions ------------------------------------------------------------------------------------


def _metadata_args(pairs: Sequence[str] | None) -> dict[str, Any]:
    """Parse repeated ``--meta KEY=VALUE`` options."""
    result: dict[str, Any] = {}
    for pair in pairs or ():
        key, value = parse_key_value(pair, "metadata")
        result[key] = parse_metadata_value(value)
    return result


def _field_args(ctx: _Context, pairs: Sequence[str] | None) -> dict[str, Any]:
    """Parse repeated ``--field NAME=VALUE`` options by the fields' declared types."""
    if not pairs:
        return {}
    definitions = ctx.session_fields()
    result: dict[str, Any] = {}
    for pair in pairs:
        name, value = parse_key_value(pair, "custom field")
        result[name] = parse_custom_field_value(name, value, definitions)
    return result


def _sessions_create(ctx: _Context) -> int:
    a = ctx.args
    common: dict[str, Any] = {
        "name": a.name,
        "description": a.description,
        "metadata": _metadata_args(a.meta) or None,
        "tags": a.tag or None,
        "custom_fields": _field_args(ctx, a.field) or None,
        "client": ctx.client,
    }
    if a.dataset:
        if a.device:
            raise UsageError("--dataset infers the devices; do not combine it with --device")
        session = Session.create_from_dataset(ctx.dataset(a.dataset).dataset_id, **common)
    else:
        session = Session.create(device_ids=a.device or (), **common)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_get(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_ls(ctx: _Context) -> int:
    a = ctx.args
    overlaps = None
    if a.overlaps:
        overlaps = (parse_time_ns(a.overlaps[0]), parse_time_ns(a.overlaps[1]))
    conditions = [parse_condition(text, ctx.session_fields()) for text in a.where or ()]
    sort_by: str | None = a.sort
    sort_field: str | None = None
    if sort_by is not None and sort_by.startswith("field:"):
        sort_field = sort_by.removeprefix("field:")
        sort_by = None
    sessions = Session.query(
        tags_all=a.tag or (),
        tags_any=a.any_tag or (),
        device_id=a.device,
        dataset_id=ctx.dataset_id(a.dataset),
        overlaps=overlaps,
        custom_fields=conditions,
        name_contains=a.name_contains,
        sort_by=sort_by,
        sort_custom_field=sort_field,
        descending=a.descending,
        page_size=a.page_size,
        client=ctx.client,
        filter=a.filter,
        order_by=a.order_by,
    )
    ctx.out.rows(sessions, _SESSION_COLUMNS)
    return EXIT_OK


def _sessions_update(ctx: _Context) -> int:
    a = ctx.args
    kwargs: dict[str, Any] = {}
    if a.clear_name:
        kwargs["name"] = None
    elif a.name is not None:
        kwargs["name"] = a.name
    if a.clear_description:
        kwargs["description"] = None
    elif a.description is not None:
        kwargs["description"] = a.description
    put_fields = _metadata_args(a.meta)
    if a.add_tag or a.rm_tag or put_fields or a.rm_meta:
        kwargs["metadata_changeset"] = MetadataChangeset(
            put_tags=a.add_tag or (),
            remove_tags=a.rm_tag or (),
            put_fields=put_fields,
            remove_fields=a.rm_meta or (),
        )
    set_fields = _field_args(ctx, a.field)
    if set_fields or a.clear_field:
        kwargs["custom_fields_changeset"] = CustomFieldChangeset(
            set_fields=set_fields, clear_fields=a.clear_field or ()
        )
    if not kwargs:
        raise UsageError("nothing to update: give at least one change (see --help)")
    session = ctx.session(a.session)
    session.update(**kwargs, expected_revision=a.expected_revision)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_rm(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    session.delete(expected_revision=ctx.args.expected_revision)
    if ctx.out.json_mode:
        ctx.out.json({"deleted": session.session_id})
    else:
        ctx.out.info(f"deleted session {session.session_id}")
    return EXIT_OK


def _sessions_add_file(ctx: _Context) -> int:
    a = ctx.args
    session = ctx.session(a.session)
    low = high = None
    if a.range:
        low, high = parse_time_ns(a.range[0]), parse_time_ns(a.range[1])
    session.add_files([SessionFile(f, low, high) for f in a.file])
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_rm_file(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    session.remove_files(ctx.args.file)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_attach(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    session.attach_to_device(ctx.args.device)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_detach(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    session.detach_from_device(ctx.args.device)
    ctx.out.record(session, _session_fields(session))
    return EXIT_OK


def _sessions_devices(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    if ctx.out.json_mode:
        for device_id in session.list_devices():
            ctx.out.json({"device_id": device_id})
    else:
        ctx.out.rows(session.list_devices(), [Column[str]("DEVICE", lambda d: d)])
    return EXIT_OK


def _sessions_files(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    ctx.out.rows(
        session.list_files(),
        [
            Column[SessionFile]("FILE", lambda f: f.file_id),
            Column[SessionFile]("PATH", lambda f: f.relative_path),
            Column[SessionFile]("DATASET", lambda f: f.dataset_id),
            Column[SessionFile]("SIZE", lambda f: format_bytes(f.size_bytes), "right"),
            Column[SessionFile]("RANGE START", lambda f: format_ns(f.range_min_timestamp_ns)),
            Column[SessionFile]("RANGE END", lambda f: format_ns(f.range_max_timestamp_ns)),
        ],
    )
    return EXIT_OK


def _sessions_topics(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    if ctx.args.name:
        topic = session.get_topic(ctx.args.name)
        ctx.out.record(topic, _dataclass_fields(topic))
        return EXIT_OK
    ctx.out.rows(
        session.list_topics(),
        [
            Column[catalog.Topic]("TOPIC", lambda t: t.name),
            Column[catalog.Topic]("SCHEMA", lambda t: t.schema_name),
            Column[catalog.Topic]("ENCODING", lambda t: t.message_encoding),
            Column[catalog.Topic]("TOPIC ID", lambda t: t.topic_id),
        ],
    )
    return EXIT_OK


def _sessions_metrics(ctx: _Context) -> int:
    session = ctx.session(ctx.args.session)
    ctx.out.rows(
        session.list_metrics(),
        [
            Column[Metric]("NAME", lambda m: m.name),
            Column[Metric]("VALUE", lambda m: f"{m.value:g}", "right"),
            Column[Metric]("DEVICE", lambda m: m.device_id),
            Column[Metric]("PUBLISHED", lambda m: m.published),
        ],
    )
    return EXIT_OK


def _sessions_aggregate(ctx: _Context) -> int:
    a = ctx.args
    by = a.by or []
    result = metrics_api.aggregate_sessions(
        by=by, filter=a.filter or "", time_zone=a.tz or "", client=ctx.client
    )
    if ctx.out.json_mode:
        for row in result:
            ctx.out.json(
                {
                    "keys": row.keys,
                    "session_count": row.session_count,
                    "bounded_session_count": row.bounded_session_count,
                    "total_duration_seconds": row.total_duration.total_seconds(),
                }
            )
        return EXIT_OK
    hours = [row.hours for row in result]
    low, high = min([0.0, *hours]), max([0.0, *hours])
    columns = [
        *_key_columns(by),
        *[
            Column[SessionAggregateRow]("SESSIONS", lambda r: r.session_count, "right"),
            Column[SessionAggregateRow]("BOUNDED", lambda r: r.bounded_session_count, "right"),
            Column[SessionAggregateRow]("HOURS", lambda r: f"{r.hours:,.2f}", "right"),
            Column[SessionAggregateRow]("", lambda r: bar(r.hours, low, high)),
        ],
    ]
    ctx.out.rows(result, columns)
    return EXIT_OK


def _metrics_aggregate(ctx: _Context) -> int:
    a = ctx.args
    by = a.by or []
    names = list(a.metric)
    wanted = a.agg or ["count", "mean", "min", "max", "p50", "p90"]
    shown = a.bar or (
        "mean" if "mean" in wanted else next((w for w in wanted if w != "count"), "count")
    )
    if shown not in wanted:
        wanted = [*wanted, shown]
    result = metrics_api.aggregate(
        names,
        by=by,
        filter=a.filter or "",
        aggregates=wanted,
        time_zone=a.tz or "",
        client=ctx.client,
    )
    if ctx.out.json_mode:
        ctx.out.rows(result, [])
        return EXIT_OK

    scale = [v for row in result if (v := _aggregate(row, names[0], shown)) is not None]
    low, high = min([0.0, *scale]), max([0.0, *scale])
    columns: list[Column[Any]] = list(_key_columns(by))
    for metric in names:
        for name in wanted:
            header = name.upper() if len(names) == 1 else f"{metric} {name}".upper()
            columns.append(
                Column[MetricAggregateRow](header, _aggregate_cell(metric, name), "right")
            )
    columns.append(
        Column[MetricAggregateRow](
            "", lambda r: bar(_as_float(_aggregate(r, names[0], shown)), low, high)
        )
    )
    ctx.out.rows(result, columns)
    return EXIT_OK


_BUCKET_FORMATS = {
    "hour": "%Y-%m-%d %H:%M%z",
    "day": "%Y-%m-%d",
    "week": "%G-W%V",
    "month": "%Y-%m",
    "year": "%Y",
}


def _key_columns(by: Sequence[str]) -> list[Column[Any]]:
    """The key columns of an aggregation table, one per ``--by``, in its order."""
    columns: list[Column[Any]] = []
    for key in by:
        name = key.removeprefix("field:")
        columns.append(Column[Any](name.upper(), _key_cell(name, _BUCKET_FORMATS.get(key))))
    return columns


def _aggregate(row: MetricAggregateRow, metric: str, name: str) -> float | int | None:
    found: float | int | None = getattr(row.metrics[metric], name)
    return found


def _aggregate_cell(metric: str, name: str) -> Callable[[MetricAggregateRow], str | None]:
    return lambda row: _number(_aggregate(row, metric, name))


def _key_cell(name: str, fmt: str | None) -> Callable[[Any], object]:
    """A group key's cell: ``(none)`` for the unset group, a bucket in its format."""

    def cell(row: Any) -> object:
        value = row.keys[name]
        if value is None:
            return "(none)"
        return value.strftime(fmt) if fmt is not None else value

    return cell


def _number(value: float | int | None) -> str | None:
    if value is None:
        return None
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:,.6g}"


def _as_float(value: float | int | None) -> float | None:
    return None if value is None else float(value)


def _sessions_publish(ctx: _Context) -> int:
    a = ctx.args
    entries = []
    for pair in a.metric:
        name, value = parse_key_value(pair, "metric")
        try:
            entries.append(MetricEntry(name, float(value)))
        except ValueError:
            raise UsageError(f"metric {name}: {value!r} is not a number") from None
    session = ctx.session(a.session)
    if a.no_device:
        result = session.publish_metrics(entries, device_id=None)
    elif a.device:
        result = session.publish_metrics(entries, device_id=a.device)
    else:
        result = session.publish_metrics(entries)
    if ctx.out.json_mode:
        ctx.out.json(result)
    else:
        for metric in result.succeeded:
            ctx.out.info(f"published {metric.name} = {metric.value:g}")
    for failure in result.failed:
        ctx.out.error(f"{failure.entry.name}: {failure.reason}")
    return EXIT_PARTIAL if result.failed else EXIT_OK


def _sessions_watch(ctx: _Context) -> int:
    a = ctx.args
    for kind in a.kind or ():
        if kind not in SESSION_CHANGE_KINDS:
            raise UsageError(
                f"unknown change kind {kind!r}; one of {', '.join(SESSION_CHANGE_KINDS)}"
            )
    changes = Session.watch(
        a.after,
        session_ids=a.session or (),
        tags_any=a.tag or (),
        device_id=a.device,
        kinds=a.kind or (),
        client=ctx.client,
    )

    def limited() -> Any:
        for count, change in enumerate(changes, start=1):
            yield change
            if a.limit and count >= a.limit:
                changes.close()
                return

    ctx.out.rows(
        limited(),
        [
            Column[SessionChange]("REVISION", lambda c: c.revision, "right"),
            Column[SessionChange]("KIND", lambda c: c.kind),
            Column[SessionChange]("SESSION", lambda c: c.session_id),
            Column[SessionChange]("NAME", lambda c: c.session.name if c.session else None),
            Column[SessionChange]("TIME", lambda c: c.time),
        ],
    )
    return EXIT_OK


# Devices, datasets, files --------------------------------------------------------------------


def _devices_create(ctx: _Context) -> int:
    device = catalog.create_device(ctx.args.device, ctx.args.name, client=ctx.client)
    ctx.out.record(device, _dataclass_fields(device))
    return EXIT_OK


def _devices_get(ctx: _Context) -> int:
    device = catalog.get_device(ctx.args.device, client=ctx.client)
    ctx.out.record(device, _dataclass_fields(device))
    return EXIT_OK


def _devices_ls(ctx: _Context) -> int:
    ctx.out.rows(
        catalog.list_devices(page_size=ctx.args.page_size, client=ctx.client),
        [
            Column[catalog.Device]("DEVICE", lambda d: d.device_id),
            Column[catalog.Device]("NAME", lambda d: d.name),
            Column[catalog.Device]("CREATED", lambda d: d.created),
        ],
    )
    return EXIT_OK


def _devices_rm(ctx: _Context) -> int:
    catalog.delete_device(ctx.args.device, client=ctx.client)
    if ctx.out.json_mode:
        ctx.out.json({"deleted": ctx.args.device})
    else:
        ctx.out.info(f"deleted device {ctx.args.device}")
    return EXIT_OK


def _datasets_create(ctx: _Context) -> int:
    dataset = catalog.create_dataset(ctx.args.name, ctx.args.device, client=ctx.client)
    ctx.out.record(dataset, _dataclass_fields(dataset))
    return EXIT_OK


def _datasets_get(ctx: _Context) -> int:
    dataset = ctx.dataset(ctx.args.dataset)
    ctx.out.record(dataset, _dataclass_fields(dataset))
    return EXIT_OK


def _datasets_ls(ctx: _Context) -> int:
    ctx.out.rows(
        catalog.list_datasets(name=ctx.args.name, page_size=ctx.args.page_size, client=ctx.client),
        [
            Column[catalog.Dataset]("DATASET", lambda d: d.dataset_id),
            Column[catalog.Dataset]("NAME", lambda d: d.name),
            Column[catalog.Dataset]("DEVICE", lambda d: d.device_id),
            Column[catalog.Dataset]("CREATED", lambda d: d.created),
        ],
    )
    return EXIT_OK


_FILE_COLUMNS: list[Column[catalog.File]] = [
    Column("FILE", lambda f: f.file_id),
    Column("PATH", lambda f: f.relative_path),
    Column("DATASET", lambda f: f.dataset_id),
    Column("SIZE", lambda f: format_bytes(f.size_bytes), "right"),
    Column("DEVICE", lambda f: f.device_id),
    Column("START", lambda f: format_ns(f.min_timestamp_ns)),
    Column("DURATION", lambda f: format_duration(f.min_timestamp_ns, f.max_timestamp_ns), "right"),
    Column("RECOVERED", lambda f: f.recovery.reason if f.recovery else None),
]


def _load_partitions(source: str) -> list[TopicPartitionSpec]:
    """Read partitions from a JSON file (``-`` for stdin): a list of objects with
    ``topic_name``, ``schema_name``, ``message_encoding``, ``message_count`` and ``extents``
    (``[[min_ns, max_ns], ...]``)."""
    try:
        text = sys.stdin.read() if source == "-" else Path(source).read_text()
        items = json.loads(text)
        return [
            TopicPartitionSpec(
                topic_name=item["topic_name"],
                schema_name=item.get("schema_name", ""),
                message_encoding=item.get("message_encoding", ""),
                message_count=int(item.get("message_count", 0)),
                extents=[TimelineExtent(int(lo), int(hi)) for lo, hi in item.get("extents", [])],
            )
            for item in items
        ]
    except OSError as error:
        raise UsageError(f"cannot read {source}: {error.strerror}") from None
    except (ValueError, KeyError, TypeError) as error:
        raise UsageError(f"{source}: not a list of partitions ({error})") from None


def _files_register(ctx: _Context) -> int:
    a = ctx.args
    partitions = _load_partitions(a.partitions) if a.partitions else []
    file = catalog.register_file(
        ctx.dataset(a.dataset).dataset_id,
        a.path,
        a.size,
        device_id=a.device,
        unix_epoch_offset_ns=a.offset,
        partitions=partitions,
        client=ctx.client,
    )
    ctx.out.record(file, _dataclass_fields(file))
    return EXIT_OK


def _files_get(ctx: _Context) -> int:
    file = catalog.get_file(ctx.args.file, client=ctx.client)
    ctx.out.record(file, _dataclass_fields(file))
    return EXIT_OK


def _files_ls(ctx: _Context) -> int:
    a = ctx.args
    files = catalog.list_files(
        ctx.dataset_id(a.dataset),
        content_sha256=a.sha256,
        recovered=a.recovered,
        page_size=a.page_size,
        client=ctx.client,
    )
    ctx.out.rows(files, _FILE_COLUMNS)
    return EXIT_OK


def _files_topics(ctx: _Context) -> int:
    partitions = catalog.list_file_topics(ctx.args.file, client=ctx.client)
    ctx.out.rows(
        partitions,
        [
            Column[TopicPartition]("TOPIC", lambda p: p.topic.name),
            Column[TopicPartition]("SCHEMA", lambda p: p.topic.schema_name),
            Column[TopicPartition]("ENCODING", lambda p: p.topic.message_encoding),
            Column[TopicPartition]("MESSAGES", lambda p: p.message_count, "right"),
            Column[TopicPartition](
                "FIRST", lambda p: p.extents[0].min_timestamp_ns if p.extents else None, "right"
            ),
            Column[TopicPartition](
                "LAST", lambda p: p.extents[-1].max_timestamp_ns if p.extents else None, "right"
            ),
            Column[TopicPartition]("TOPIC ID", lambda p: p.topic.topic_id),
        ],
    )
    return EXIT_OK


def _files_set_offset(ctx: _Context) -> int:
    file = catalog.set_file_timeline_offset(ctx.args.file, ctx.args.offset, client=ctx.client)
    ctx.out.record(file, _dataclass_fields(file))
    return EXIT_OK


def _files_rm(ctx: _Context) -> int:
    catalog.delete_file(ctx.args.file, client=ctx.client)
    if ctx.out.json_mode:
        ctx.out.json({"deleted": ctx.args.file})
    else:
        ctx.out.info(f"deleted file {ctx.args.file}")
    return EXIT_OK


# Custom fields -------------------------------------------------------------------------------

_FIELD_COLUMNS: list[Column[CustomField]] = [
    Column("FIELD", lambda f: f.custom_field_id),
    Column("NAME", lambda f: f.name),
    Column("TYPE", lambda f: f.type),
    Column("STATUS", lambda f: f.status),
    Column("VALUES", lambda f: list(f.enum_values)),
    Column("DESCRIPTION", lambda f: f.description),
]


def _fields_create(ctx: _Context) -> int:
    a = ctx.args
    field = custom_fields.create_custom_field(
        a.name,
        a.type,
        enum_values=a.enum_value or (),
        description=a.description,
        initial_status=a.status,
        client=ctx.client,
    )
    ctx.out.record(field, _dataclass_fields(field))
    return EXIT_OK


def _fields_get(ctx: _Context) -> int:
    field = custom_fields.find_custom_field(ctx.args.field, client=ctx.client)
    ctx.out.record(field, _dataclass_fields(field))
    return EXIT_OK


def _fields_ls(ctx: _Context) -> int:
    fields = custom_fields.list_custom_fields(None, page_size=ctx.args.page_size, client=ctx.client)
    ctx.out.rows(fields, _FIELD_COLUMNS)
    return EXIT_OK


def _fields_update(ctx: _Context) -> int:
    a = ctx.args
    if a.status is None and not a.add_enum_value:
        raise UsageError("nothing to update: give --status or --add-enum-value")
    existing = custom_fields.find_custom_field(a.field, client=ctx.client)
    field = custom_fields.update_custom_field(
        existing.custom_field_id,
        status=a.status,
        add_enum_values=a.add_enum_value or (),
        client=ctx.client,
    )
    ctx.out.record(field, _dataclass_fields(field))
    return EXIT_OK


def _fields_rm(ctx: _Context) -> int:
    existing = custom_fields.find_custom_field(ctx.args.field, client=ctx.client)
    custom_fields.delete_custom_field(existing.custom_field_id, client=ctx.client)
    if ctx.out.json_mode:
        ctx.out.json({"deleted": existing.custom_field_id})
    else:
        ctx.out.info(f"deleted custom field {existing.name} ({existing.custom_field_id})")
    return EXIT_OK


# Ingest --------------------------------------------------------------------------------------


def _ingest(ctx: _Context) -> int:
    a = ctx.args
    out = ctx.out
    client = ctx.client  # a configuration error stops the command before anything is read
    root, planned = plan_files(a.paths, a.root)
    sizes = {item.path: _size_of(item.path) for item in planned}
    progress = _byte_progress(out)
    done_bytes = 0
    done_files = 0

    def on_progress(item: PlannedFile, read: int) -> None:
        progress.update(
            task,
            completed=done_bytes + read,
            description=f"{done_files + 1}/{len(planned)} {item.relative_path}",
        )

    def on_file(outcome: IngestedFile | IngestFailure) -> None:
        nonlocal done_bytes, done_files
        done_bytes += sizes[outcome.path]
        done_files += 1
        progress.update(task, completed=done_bytes)
        if isinstance(outcome, IngestFailure):
            out.failure(outcome.error, path=str(outcome.path))
            return
        recovery = outcome.summary.recovery
        if recovery is not None:
            out.warning(_recovery_line(outcome.summary, recovery), path=str(outcome.path))
        if out.json_mode:
            out.json(_ingested_json(outcome))

    with progress:
        task = progress.add_task(f"0/{len(planned)}", total=sum(sizes.values()))
        result = ingest_recordings(
            a.paths,
            a.dataset,
            root=root,
            device_id=a.device,
            session_name=a.session,
            unix_epoch_offset_ns=a.offset,
            client=client,
            on_file=on_file,
            on_progress=on_progress,
        )
    _print_ingest_result(ctx, result)
    if result.error is not None:
        out.failure(result.error)
        return EXIT_PARTIAL if result.files else exit_code_for(result.error)
    if result.failures:
        return EXIT_PARTIAL if result.files else EXIT_NOTHING_INGESTED
    return EXIT_OK


def _byte_progress(out: Output) -> Progress:
    """A progress bar by bytes on stderr (rich), shown only on a terminal; results stay on
    stdout and stderr lines print above the bar."""
    return Progress(
        TextColumn("{task.description}", markup=False),
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=Console(file=out.stderr),
        transient=True,
        redirect_stdout=False,
        disable=not out.stderr.isatty(),
    )


def _size_of(path: Path) -> int:
    """A file's size, or 0 when it cannot be read (its failure is reported when read)."""
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _recovery_line(summary: RecordingSummary, recovery: Recovery) -> str:
    """The one line that says a recording was salvaged."""
    return (
        f"recovered {summary.message_count:,} messages from a {recovery.reason} recording "
        f"({format_bytes(recovery.readable_bytes)} of {format_bytes(recovery.size_bytes)} "
        f"readable; {recovery.detail})"
    )


def _print_ingest_result(ctx: _Context, result: IngestResult) -> None:
    """The table of ingested files and the summary lines (one JSON object with --json)."""
    out = ctx.out
    dataset = result.dataset
    session = result.session
    if out.json_mode:
        out.json(
            {
                "summary": {
                    "added": len(result.added),
                    "already_present": len(result.already_present),
                    "failed": len(result.failures),
                    "recovered": sum(1 for f in result.files if f.summary.recovery),
                    "dataset": dataset,
                    "dataset_created": result.dataset_created,
                    "session": session,
                    "session_created": result.session_created,
                }
            }
        )
        return
    if result.files:
        out.rows(
            result.files,
            [
                Column[IngestedFile]("PATH", lambda f: f.file.relative_path),
                Column[IngestedFile]("FILE", lambda f: f.file.file_id),
                Column[IngestedFile]("TOPICS", lambda f: len(f.summary.topics), "right"),
                Column[IngestedFile]("MESSAGES", lambda f: f.summary.message_count, "right"),
                Column[IngestedFile]("START", lambda f: format_ns(f.summary.start_ns)),
                Column[IngestedFile](
                    "DURATION",
                    lambda f: format_duration(f.summary.start_ns, f.summary.end_ns),
                    "right",
                ),
                Column[IngestedFile](
                    "STATUS",
                    lambda f: (
                        f.status + (f", {f.summary.recovery.reason}" if f.summary.recovery else "")
                    ),
                ),
            ],
        )
    counts = (
        f"{len(result.added)} added, {len(result.already_present)} already present, "
        f"{len(result.failures)} failed"
    )
    if result.dataset_created and not result.files and dataset is not None:
        out.warning(
            f"dataset {dataset.dataset_id} ({dataset.name}) was created but holds no file; "
            "an ingest into the same name reuses it"
        )
    if dataset is None:
        out.info(f"nothing ingested: {counts}")
    else:
        created = "created " if result.dataset_created else ""
        out.info(f"{created}dataset {dataset.dataset_id} ({dataset.name or '-'}): {counts}")
    if session is not None:
        created = "created " if result.session_created else ""
        out.info(
            f"{created}session {session.session_id} ({session.name}): "
            f"{format_ns(session.min_timestamp_ns)} -> {format_ns(session.max_timestamp_ns)} "
            f"({format_duration(session.min_timestamp_ns, session.max_timestamp_ns)})"
        )


def _ingested_json(ingested: IngestedFile) -> dict[str, Any]:
    """The JSON line of one ingested file (times and durations in exact nanoseconds)."""
    summary = ingested.summary
    return {
        "path": str(ingested.path),
        "status": "already_present" if ingested.already_present else "added",
        "file": ingested.file,
        "size_bytes": summary.size_bytes,
        "content_sha256": summary.content_sha256,
        "start_ns": summary.start_ns,
        "end_ns": summary.end_ns,
        "duration_ns": summary.duration_ns,
        "message_count": summary.message_count,
        "topics": [dataclasses.asdict(topic) for topic in summary.topics],
        "recovery": summary.recovery,
    }


# Import --------------------------------------------------------------------------------------

_IMPORT_DESCRIPTION = """\
Create sessions from a JSON Lines file: one JSON object per line, one session per object, with
the fields of `sessions create` under their API names (blank lines are skipped):

  {"name": "flight-001", "description": "...", "device_ids": ["dv_abc"],
   "tags": ["nightly"], "metadata": {"pilot": "ada"}, "custom_fields": {"max_speed": 12.5}}

Every field is optional. A custom field's value is a JSON value of its type; a timestamp is
nanoseconds or an ISO 8601 string. A "request_id" (1 to 128 characters) replaces the request
ID the line would be given as described below.

Lines are sent in batches (BatchCreateSessions: up to 1,000 sessions and about 900 KiB a call),
each created all or nothing. Every line carries a request ID derived from the import key (by
default the file's absolute path), its line number and its content, so running the same import
again is safe: lines already imported return the sessions created the first time, and only the
others are created. After a failure, fix the line named in the error (in place: inserting or
deleting lines renumbers the lines after it) and run the same command again. A bad line stops
the import before its batch is sent: every batch before it is imported, nothing of its own.
"""


class _BadLine(ValueError):
    """A line of an import file that is not a session."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line


@dataclasses.dataclass(frozen=True)
class _ImportLine:
    """A line of an import file, parsed."""

    number: int
    end_offset: int
    request: pb.CreateSessionRequest


def import_request_id(key: str, line_number: int, line: bytes) -> str:
    """The request ID of one line of an import: the same key, line number and content give
    the same ID, on any machine and in any run."""
    digest = hashlib.sha256()
    for part in (key.encode(), str(line_number).encode(), line.strip()):
        digest.update(len(part).to_bytes(8, "big"))
        digest.update(part)
    return f"import-{digest.hexdigest()}"


def _import_custom_fields(ctx: _Context, values: dict[str, Any]) -> dict[str, Any]:
    """Custom-field values of a line: text of a timestamp or enum field is parsed as
    ``sessions create --field`` parses it; other JSON values are sent as they are."""
    definitions = ctx.session_fields()
    result: dict[str, Any] = {}
    for name, value in values.items():
        field = definitions.get(name)
        if isinstance(value, str) and field is not None and field.type in ("timestamp", "enum"):
            result[name] = parse_custom_field_value(name, value, definitions)
        elif isinstance(value, int) and field is not None and field.type == "timestamp":
            result[name] = parse_custom_field_value(name, str(value), definitions)
        else:
            result[name] = value
    return result


def _read_import(ctx: _Context, source: IO[bytes], key: str) -> Iterator[_ImportLine]:
    """Parse an import file line by line.

    Raises:
        _BadLine: A line is not a JSON object describing a session.
    """
    offset = 0
    for number, raw in enumerate(source, start=1):
        offset += len(raw)
        if not raw.strip():
            continue
        try:
            try:
                values = json.loads(raw)
            except json.JSONDecodeError as error:
                raise ValueError(f"not JSON ({error.msg} at column {error.colno})") from None
            if not isinstance(values, dict):
                raise ValueError("not a JSON object")
            spec = CreateSessionRequest.from_mapping(values)
            if spec.custom_fields:
                spec = dataclasses.replace(
                    spec, custom_fields=_import_custom_fields(ctx, dict(spec.custom_fields))
                )
            if spec.request_id is None:
                spec = dataclasses.replace(spec, request_id=import_request_id(key, number, raw))
            request = spec.to_proto()
        except (ValueError, TypeError) as error:  # JSONDecodeError and UsageError included
            raise _BadLine(number, str(error)) from None
        yield _ImportLine(number, offset, request)


_VIOLATION_INDEX = re.compile(r"^requests\[(\d+)\]\.?")


def _import_failure_lines(error: FlightlogError, pending: Sequence[_ImportLine]) -> list[int]:
    """The lines a failed batch's error is about: those its violations name, else all."""
    named = sorted(
        {
            pending[int(match.group(1))].number
            for field, _ in error.field_violations
            if (match := _VIOLATION_INDEX.match(field)) and int(match.group(1)) < len(pending)
        }
    )
    return named or [line.number for line in pending]


def _name_lines(error: FlightlogError, pending: Sequence[_ImportLine]) -> bool:
    """Rename ``requests[i].field`` to ``line N: field`` in the error's message and
    violations; return whether any was renamed."""
    pattern = re.compile(r"requests\[(\d+)\]\.?")
    renamed = False

    def rename(match: re.Match[str]) -> str:
        nonlocal renamed
        index = int(match.group(1))
        if index >= len(pending):
            return match.group(0)
        renamed = True
        return f"line {pending[index].number}: "

    error.message = pattern.sub(rename, error.message)
    error.args = (error.message,)
    error.field_violations = [
        (pattern.sub(rename, field), why) for field, why in error.field_violations
    ]
    return renamed


def _batch_size(text: str) -> int:
    """Parse ``--batch-size``."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if not 1 <= value <= MAX_BATCH_ITEMS:
        raise argparse.ArgumentTypeError(f"must be a whole number from 1 to {MAX_BATCH_ITEMS}")
    return value


def _sessions_import(ctx: _Context) -> int:
    a = ctx.args
    out = ctx.out
    path = Path(a.file)
    key = a.key or str(path.resolve())
    client = ctx.client  # a configuration error stops the command before anything is read
    try:
        source = path.open("rb")
        total = path.stat().st_size
    except OSError as error:
        raise UsageError(f"cannot read {a.file}: {error.strerror}") from None
    progress = _byte_progress(out)
    pending: collections.deque[_ImportLine] = collections.deque()
    imported = 0
    last_line = 0
    batches_sent = 0

    def lines() -> Iterator[pb.CreateSessionRequest]:
        for line in _read_import(ctx, source, key):
            pending.append(line)
            yield line.request

    failure: BaseException | None = None
    failed_lines: list[int] = []
    named = False  # whether the error's own text names the failed lines
    with source, progress:
        task = progress.add_task("0 sessions", total=total)
        try:
            for sessions in create_session_batches(
                lines(), caller_org_id=None, client=client, max_items=a.batch_size
            ):
                batches_sent += 1
                done = [pending.popleft() for _ in sessions]
                imported += len(sessions)
                last_line = done[-1].number
                if out.json_mode:
                    for line, session in zip(done, sessions, strict=True):
                        out.json({"line": line.number, "session": session})
                progress.update(
                    task, completed=done[-1].end_offset, description=f"{imported:,} sessions"
                )
        except _BadLine as error:
            failure, failed_lines = error, [error.line]
        except FlightlogError as error:
            failure = error
            if error.batch_size is not None:  # a batch was refused, not a lookup before it
                batch = list(pending)[: error.batch_size]
                failed_lines = _import_failure_lines(error, batch)
                named = _name_lines(error, batch)
    summary = {
        "file": str(path),
        "imported": imported,
        "last_imported_line": last_line or None,
        "batches": batches_sent,
        "failed_lines": failed_lines,
    }
    if out.json_mode:
        out.json({"summary": summary})
    elif failure is None:
        calls = "call" if batches_sent == 1 else "calls"
        out.info(f"imported {imported:,} sessions from {path} in {batches_sent:,} {calls}")
    else:
        out.info(
            f"imported {imported:,} sessions from {path} (through line {last_line}) before "
            "the failure; fix it and run the same command again: imported lines are not "
            "created twice"
        )
    if failure is None:
        return EXIT_OK
    where = (
        f"line {failed_lines[0]}"
        if len(failed_lines) == 1
        else f"lines {', '.join(map(str, failed_lines[:10]))}"
        + (", ..." if len(failed_lines) > 10 else "")
    )
    if out.json_mode:
        out.failure(failure, lines=failed_lines)
    elif named or not failed_lines:
        out.failure(failure)
    else:
        out.failure(failure, line=where)
    if imported:
        return EXIT_PARTIAL
    return EXIT_USAGE if isinstance(failure, _BadLine) else exit_code_for(failure)


# Parser --------------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """An argument parser whose errors are raised as :class:`UsageError`, so that they are
    reported like every other error (one line, or JSON with ``--json``) with exit code 2."""

    def error(self, message: str) -> Any:  # argparse declares NoReturn; it raises.
        """Raise the usage error."""
        raise UsageError(f"{message} (see {self.prog} --help)")


Handler = Callable[[_Context], int]

_DESCRIPTION = """\
Flightlog command-line tool: sessions, devices, datasets, files, custom fields and MCAP ingest.

Connection settings come from FLIGHTLOG_ENDPOINT (default localhost:50051), FLIGHTLOG_API_KEY
(required), FLIGHTLOG_ORG_ID, FLIGHTLOG_TIMEOUT and FLIGHTLOG_TLS*; the options below override
them. A session or a dataset may be given by ID or by exact name (several with that name:
exit code 6, use the ID).

Results go to stdout: aligned tables, or with --json one JSON object per line (times and
durations in exact nanoseconds). Errors go to stderr: one "error: ..." line, or with --json one
JSON object per line, {"error": {"code", "reason", "message", "field_violations", "metadata"}}.
"""

_EPILOG = """\
exit codes:
  0  ok
  1  any other error
  2  bad command line or configuration (e.g. FLIGHTLOG_API_KEY not set)
  3  not found
  4  invalid argument
  5  unauthenticated or permission denied
  6  conflict (already exists, stale revision, ambiguous name)
  7  server unavailable or unreachable, or no answer within --timeout
  8  partial failure: some items failed, the others succeeded
     (ingest: some recordings were ingested, see the errors for the others;
     sessions import: the batches before the failed one were imported)
  9  ingest: no recording could be ingested (each one failed on its own);
     any code other than 0 and 8 means ingest added nothing
"""

_INGEST_DESCRIPTION = """\
Register MCAP recordings as files of a dataset, with their topics, message counts and time
extents, and optionally group them into a session. Running it again leaves what one run leaves:
recordings are known by their content (SHA-256), so a recording the dataset already holds is
reported as already present, and files already in the session are not added twice.

Each file is registered under its path relative to --root, by default the deepest directory
holding every PATH given, so that files of the same name in different folders are all kept.
A truncated or damaged recording is salvaged: its complete records are registered and the file
is marked as recovered (flightlog files ls --recovered lists them). Only a file with nothing
readable (empty, not MCAP, damaged before its first message) is refused. Nothing is created
before a recording has been read: a run that ingests nothing leaves no empty dataset or session.
"""


def build_parser() -> argparse.ArgumentParser:
    """Build the ``flightlog`` argument parser."""
    parser = _Parser(
        prog="flightlog",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--json",
        action="store_true",
        help="print results as JSON, one object per line, and errors as JSON objects on stderr",
    )
    parser.add_argument(
        "--endpoint", metavar="HOST:PORT", help="the server (default: FLIGHTLOG_ENDPOINT)"
    )
    parser.add_argument("--org", metavar="ORG_ID", help="acting org (default: FLIGHTLOG_ORG_ID)")
    parser.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help=(
            "deadline of each call, and the longest wait for a listing's first batch "
            f"(default: FLIGHTLOG_TIMEOUT, else {DEFAULT_TIMEOUT_S:g})"
        ),
    )
    groups = parser.add_subparsers(dest="group", required=True, metavar="COMMAND")

    def group(name: str, help_text: str) -> Any:
        sub = groups.add_parser(name, help=help_text, description=help_text)
        return sub.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def command(
        sub: Any, name: str, handler: Handler, help_text: str, **kwargs: Any
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(
            name, help=help_text, description=kwargs.pop("description", help_text), **kwargs
        )
        p.set_defaults(handler=handler)
        return p

    def page_size(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--page-size",
            type=int,
            default=0,
            metavar="N",
            help="items per streamed batch, 1 to 1000 (default: the server's, 500)",
        )

    def session_ref(p: argparse.ArgumentParser) -> None:
        p.add_argument("session", help="session ID (ss_...) or exact name")

    # sessions
    sessions = group("sessions", "manage sessions")
    p = command(sessions, "create", _sessions_create, "create a session")
    p.add_argument("--name", help="short name, at most 120 characters")
    p.add_argument("--description", help="description")
    p.add_argument("--device", action="append", help="attach this device (repeatable)")
    p.add_argument(
        "--dataset",
        help="create the session from this dataset's files (ID or name); infers the devices",
    )
    p.add_argument("--tag", action="append", help="tag (repeatable)")
    p.add_argument(
        "--meta", action="append", metavar="KEY=VALUE", help="metadata; VALUE may be JSON"
    )
    p.add_argument(
        "--field", action="append", metavar="NAME=VALUE", help="custom field value (repeatable)"
    )

    p = command(sessions, "get", _sessions_get, "show a session (by ID or exact name)")
    session_ref(p)

    p = command(sessions, "ls", _sessions_ls, "list sessions, streaming")
    p.add_argument("--tag", action="append", help="carrying every such tag (repeatable)")
    p.add_argument("--any-tag", action="append", help="carrying at least one such tag")
    p.add_argument("--device", help="with this device attached")
    p.add_argument("--dataset", help="with a file of this dataset (ID or name)")
    p.add_argument("--name-contains", metavar="TEXT", help="whose name contains TEXT")
    p.add_argument(
        "--overlaps",
        nargs=2,
        metavar=("START", "END"),
        help="whose bounds overlap [START, END] (ns or ISO 8601)",
    )
    p.add_argument(
        "--where",
        action="append",
        metavar="CONDITION",
        help="custom-field condition: 'f=v', 'f>=v', 'f in a,b', 'f is null' (repeatable)",
    )
    p.add_argument(
        "--filter",
        metavar="EXPR",
        help="an AIP-160 filter, e.g. 'tags:\"outdoor\" AND metrics.max_speed > 10'"
        " (ANDed with the options above)",
    )
    p.add_argument(
        "--order-by",
        metavar="KEYS",
        help="sort keys, e.g. 'custom_fields.site, start_time desc' (not with --sort/--asc/--desc)",
    )
    p.add_argument(
        "--sort", help="created, name, start_time, duration or field:NAME (default: created)"
    )
    direction = p.add_mutually_exclusive_group()
    direction.add_argument(
        "--desc", dest="descending", action="store_true", default=None, help="descending order"
    )
    direction.add_argument("--asc", dest="descending", action="store_false", help="ascending order")
    page_size(p)

    p = command(sessions, "update", _sessions_update, "change a session")
    session_ref(p)
    name = p.add_mutually_exclusive_group()
    name.add_argument("--name", help="new name")
    name.add_argument("--clear-name", action="store_true", help="remove the name")
    description = p.add_mutually_exclusive_group()
    description.add_argument("--description", help="new description")
    description.add_argument(
        "--clear-description", action="store_true", help="remove the description"
    )
    p.add_argument("--add-tag", action="append", metavar="TAG", help="add a tag (repeatable)")
    p.add_argument("--rm-tag", action="append", metavar="TAG", help="remove a tag (repeatable)")
    p.add_argument("--meta", action="append", metavar="KEY=VALUE", help="put metadata")
    p.add_argument("--rm-meta", action="append", metavar="KEY", help="remove a metadata key")
    p.add_argument("--field", action="append", metavar="NAME=VALUE", help="set a custom field")
    p.add_argument("--clear-field", action="append", metavar="NAME", help="clear a custom field")
    p.add_argument(
        "--expected-revision",
        type=int,
        metavar="N",
        help="change only if the session is at this revision (else exit 6)",
    )

    p = command(sessions, "rm", _sessions_rm, "delete a session")
    session_ref(p)
    p.add_argument(
        "--expected-revision",
        type=int,
        metavar="N",
        help="delete only if the session is at this revision (else exit 6)",
    )

    p = command(sessions, "add-file", _sessions_add_file, "add files to a session")
    session_ref(p)
    p.add_argument("file", nargs="+", help="file ID (fl_...)")
    p.add_argument(
        "--range",
        nargs=2,
        metavar=("START", "END"),
        help="contribute only [START, END] of each file (ns or ISO 8601)",
    )

    p = command(sessions, "rm-file", _sessions_rm_file, "remove files from a session")
    session_ref(p)
    p.add_argument("file", nargs="+", help="file ID (fl_...)")

    p = command(sessions, "attach", _sessions_attach, "attach a device to a session")
    session_ref(p)
    p.add_argument("device", help="device ID")

    p = command(sessions, "detach", _sessions_detach, "detach a device from a session")
    session_ref(p)
    p.add_argument("device", help="device ID")

    for name_, handler, text in (
        ("devices", _sessions_devices, "list a session's devices"),
        ("files", _sessions_files, "list a session's files"),
        ("metrics", _sessions_metrics, "list a session's metrics"),
    ):
        session_ref(command(sessions, name_, handler, text))

    p = command(sessions, "topics", _sessions_topics, "list a session's topics")
    session_ref(p)
    p.add_argument("name", nargs="?", help="show only the topic of this name")

    p = command(sessions, "publish", _sessions_publish, "publish metrics to a session")
    session_ref(p)
    p.add_argument("metric", nargs="+", metavar="NAME=VALUE", help="metric value (a number)")
    device = p.add_mutually_exclusive_group()
    device.add_argument("--device", help="associate the values with this device")
    device.add_argument("--no-device", action="store_true", help="associate no device")

    p = command(
        sessions,
        "import",
        _sessions_import,
        "create sessions from a JSON Lines file, resumably",
        description=_IMPORT_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "output: a summary line, or with --json one object per imported line\n"
            '({"line": N, "session": {...}}) and a last {"summary": {...}}.\n'
            "exit codes:\n"
            "  0  every line was imported (or had been by an earlier run)\n"
            "  8  the lines before the failed batch were imported, the others not\n"
            "  2  a bad line (not a session) before anything was imported\n"
            "  any other non-zero code: nothing was imported (see flightlog --help)"
        ),
    )
    p.add_argument("file", metavar="FILE.jsonl", help="one session per line")
    p.add_argument(
        "--key",
        help=(
            "import key from which the request IDs are derived (default: the file's absolute "
            "path); give the same key to resume an import of a moved or copied file"
        ),
    )
    p.add_argument(
        "--batch-size",
        type=_batch_size,
        default=MAX_BATCH_ITEMS,
        metavar="N",
        help=f"sessions per call, 1 to {MAX_BATCH_ITEMS} (default: {MAX_BATCH_ITEMS})",
    )

    def aggregation(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--by",
            action="append",
            metavar="KEY",
            help=(
                "group by: device, tag, dataset, hour, day, week, month, year (of the start), or"
                " field:NAME for an enum or string custom field (repeatable, at most 4)"
            ),
        )
        p.add_argument("--filter", help="the sessions to aggregate (filter language; default: all)")
        p.add_argument(
            "--tz", metavar="ZONE", help="IANA time zone of the time buckets (default: UTC)"
        )

    p = command(
        sessions,
        "aggregate",
        _sessions_aggregate,
        "count sessions and their hours by group (e.g. --by month --by device)",
    )
    aggregation(p)

    p = command(sessions, "watch", _sessions_watch, "follow session changes")
    p.add_argument(
        "--after", type=int, default=-1, metavar="REVISION", help="replay after it (-1: now)"
    )
    p.add_argument("--session", action="append", help="only this session ID (repeatable)")
    p.add_argument("--tag", action="append", help="only sessions with this tag (repeatable)")
    p.add_argument("--device", help="only sessions with this device")
    p.add_argument(
        "--kind",
        action="append",
        help=f"only this kind of change (repeatable): {', '.join(SESSION_CHANGE_KINDS)}",
    )
    p.add_argument(
        "--limit", type=int, default=0, metavar="N", help="stop after N changes (0: never)"
    )

    # metrics
    metrics = group("metrics", "aggregate metrics across sessions")
    p = command(
        metrics,
        "aggregate",
        _metrics_aggregate,
        "aggregate metric values by group, with a bar per row (e.g. --by month --by device)",
    )
    p.add_argument("metric", nargs="+", metavar="NAME", help="metric name (up to 10)")
    aggregation(p)
    p.add_argument(
        "--agg",
        action="append",
        choices=metrics_api.AGGREGATES,
        help="aggregate to show (repeatable; default: count mean min max p50 p90)",
    )
    p.add_argument(
        "--bar",
        choices=metrics_api.AGGREGATES,
        help="the aggregate of the first metric the bars draw (default: mean)",
    )

    # devices
    devices = group("devices", "manage devices")
    p = command(devices, "create", _devices_create, "register a device")
    p.add_argument("device", help="device ID of your choice, unique in the org")
    p.add_argument("--name", help="display name")
    command(devices, "get", _devices_get, "show a device").add_argument("device", help="device ID")
    page_size(command(devices, "ls", _devices_ls, "list devices"))
    command(devices, "rm", _devices_rm, "delete a device").add_argument("device", help="device ID")

    # datasets
    datasets = group("datasets", "manage datasets")
    p = command(datasets, "create", _datasets_create, "create a dataset")
    p.add_argument("--name", help="display name (need not be unique)")
    p.add_argument("--device", help="the device that recorded it")
    command(datasets, "get", _datasets_get, "show a dataset (by ID or exact name)").add_argument(
        "dataset", help="dataset ID (ds_...) or exact name"
    )
    p = command(datasets, "ls", _datasets_ls, "list datasets, newest first")
    p.add_argument("--name", help="only the datasets with exactly this name")
    page_size(p)

    # files
    files = group("files", "manage files")
    p = command(files, "register", _files_register, "register a file of a dataset")
    p.add_argument("dataset", help="dataset ID or exact name")
    p.add_argument("path", help="path relative to the dataset")
    p.add_argument("--size", type=int, default=0, metavar="BYTES", help="size in bytes")
    p.add_argument("--device", help="device that recorded it (default: the dataset's)")
    p.add_argument(
        "--offset", type=int, default=0, metavar="NS", help="unix epoch offset, nanoseconds"
    )
    p.add_argument("--partitions", metavar="JSON_FILE", help="partitions as JSON ('-': stdin)")
    command(files, "get", _files_get, "show a file").add_argument("file", help="file ID")
    p = command(files, "ls", _files_ls, "list files: a dataset's by path, else the org's by ID")
    p.add_argument("--dataset", help="only this dataset's files (ID or name)")
    p.add_argument("--sha256", metavar="HEX", help="only the files with this content hash")
    recovered = p.add_mutually_exclusive_group()
    recovered.add_argument(
        "--recovered",
        dest="recovered",
        action="store_true",
        default=None,
        help="only files salvaged from damaged recordings",
    )
    recovered.add_argument(
        "--intact",
        dest="recovered",
        action="store_false",
        help="only files read whole",
    )
    page_size(p)
    command(files, "topics", _files_topics, "list a file's topic partitions").add_argument(
        "file", help="file ID"
    )
    p = command(files, "set-offset", _files_set_offset, "change a file's timeline offset")
    p.add_argument("file", help="file ID")
    p.add_argument("offset", type=int, help="unix epoch offset, nanoseconds")
    command(files, "rm", _files_rm, "delete a file").add_argument("file", help="file ID")

    # custom fields
    fields = group("fields", "manage custom fields")
    p = command(fields, "create", _fields_create, "define a custom field for sessions")
    p.add_argument("name", help="field name: lowercase letters, digits and _")
    p.add_argument(
        "--type", required=True, choices=list(custom_fields.CUSTOM_FIELD_TYPES), help="value type"
    )
    p.add_argument(
        "--enum-value", action="append", metavar="VALUE", help="allowed value (repeatable)"
    )
    p.add_argument("--description", help="description")
    p.add_argument(
        "--status", choices=["creating", "ready"], help="initial status (default: ready)"
    )
    command(fields, "get", _fields_get, "show a custom field (ID or name)").add_argument(
        "field", help="custom field ID (cf_...) or name"
    )
    page_size(command(fields, "ls", _fields_ls, "list custom fields"))
    p = command(fields, "update", _fields_update, "change a custom field's status or values")
    p.add_argument("field", help="custom field ID (cf_...) or name")
    p.add_argument("--status", choices=list(custom_fields.CUSTOM_FIELD_STATUSES), help="new status")
    p.add_argument(
        "--add-enum-value", action="append", metavar="VALUE", help="allow this value too"
    )
    command(fields, "rm", _fields_rm, "delete a custom field").add_argument(
        "field", help="custom field ID (cf_...) or name"
    )

    # ingest
    p = command(
        groups,
        "ingest",
        _ingest,
        "register MCAP recordings (and group them into a session)",
        description=_INGEST_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=(
            "exit codes:\n"
            "  0  every recording was ingested, or was already present\n"
            "  8  some recordings were ingested, the others not (see the errors)\n"
            "  9  none could be ingested (each one failed on its own)\n"
            "  any other non-zero code: nothing was ingested (see flightlog --help)"
        ),
    )
    p.add_argument(
        "paths", nargs="+", metavar="PATH", help="MCAP file, or directory of *.mcap files"
    )
    p.add_argument(
        "--dataset",
        metavar="ID_OR_NAME",
        help=(
            "dataset ID, or name: reused when one dataset has it, created when none does "
            "(default: the session name, else the root directory's name)"
        ),
    )
    p.add_argument(
        "--root",
        metavar="DIR",
        help="register paths relative to DIR (default: the deepest directory holding every PATH)",
    )
    p.add_argument("--device", help="device that recorded the files; attached to the session")
    p.add_argument(
        "--session", metavar="NAME", help="add the files to the session of this name, or create it"
    )
    p.add_argument(
        "--offset",
        type=int,
        default=0,
        metavar="NS",
        help="unix epoch offset of the recordings' times, nanoseconds",
    )
    return parser


def run(
    argv: Sequence[str] | None = None,
    *,
    stdout: IO[str] | None = None,
    stderr: IO[str] | None = None,
) -> int:
    """Run the ``flightlog`` command and return its exit code."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    # --json is known before parsing, so that a bad command line is reported as JSON too.
    out = Output("--json" in arguments, stdout=stdout, stderr=stderr)
    try:
        args = build_parser().parse_args(arguments)
    except UsageError as error:
        out.failure(error)
        return EXIT_USAGE
    except SystemExit as exit_:  # --help
        return exit_.code if isinstance(exit_.code, int) else EXIT_OK
    ctx = _Context(args, out)
    try:
        handler: Handler = args.handler
        return handler(ctx)
    # ValueError: values the client refuses before sending (bad metadata type, unknown
    # operator, a directory without recordings...), like usage errors.
    except (FlightlogError, ValueError) as error:
        out.failure(error)
        return exit_code_for(error)
    except KeyboardInterrupt as error:
        out.failure(error)
        return 130
    finally:
        ctx.close()
