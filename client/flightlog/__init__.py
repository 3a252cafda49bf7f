"""Flightlog: the Python client of the Flightlog sessions service.

``flightlog.Session`` mirrors the Session class of the Roboto SDK, so code written for it runs
with only the import line changed::

    from flightlog import Session

    session = Session.create(name="flight-2026-04-23-001", device_ids=["dv_abc"])
    session = session.add_file("fl_0123456789abcdef")
    for topic in session.list_topics():
        print(topic.name)

The connection is configured from ``FLIGHTLOG_ENDPOINT``, ``FLIGHTLOG_API_KEY``,
``FLIGHTLOG_ORG_ID`` and the ``FLIGHTLOG_TLS*`` variables, or explicitly with a
:class:`FlightlogClient` passed as ``client=`` or installed with :func:`set_default_client`.
Failures raise the typed exceptions of :mod:`flightlog.errors`.
"""

from flightlog import catalog, custom_fields, errors, metrics
from flightlog._client import (
    FlightlogClient,
    RetrySettings,
    get_default_client,
    set_default_client,
)
from flightlog._config import ClientConfig
from flightlog._values import EnumValue, NotSet, NotSetType
from flightlog.catalog import (
    Dataset,
    Device,
    File,
    TimelineExtent,
    Topic,
    TopicPartition,
    TopicPartitionSpec,
)
from flightlog.custom_fields import CustomField
from flightlog.errors import (
    ConfigurationError,
    ConflictError,
    DeadlineExceededError,
    FlightlogError,
    InternalError,
    InvalidRequestError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthorizedError,
    UnavailableError,
)
from flightlog.metrics import BulkPublishMetricsResult, Metric, MetricEntry, MetricFailure
from flightlog.session import (
    CreateSessionRequest,
    CustomFieldChangeset,
    FieldCondition,
    MetadataChangeset,
    Session,
    SessionChange,
    SessionFile,
    SessionQuery,
    SessionRecord,
    create_session,
    create_session_for_dataset,
    watch,
)

TopicIdentityRecord = Topic
"""Alias of :class:`~flightlog.catalog.Topic`, the name the Roboto SDK uses for topics."""

__all__ = [
    "BulkPublishMetricsResult",
    "ClientConfig",
    "ConfigurationError",
    "ConflictError",
    "CreateSessionRequest",
    "CustomField",
    "CustomFieldChangeset",
    "Dataset",
    "DeadlineExceededError",
    "Device",
    "EnumValue",
    "FieldCondition",
    "File",
    "FlightlogClient",
    "FlightlogError",
    "InternalError",
    "InvalidRequestError",
    "MetadataChangeset",
    "Metric",
    "MetricEntry",
    "MetricFailure",
    "NotFoundError",
    "NotSet",
    "NotSetType",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetrySettings",
    "Session",
    "SessionChange",
    "SessionFile",
    "SessionQuery",
    "SessionRecord",
    "TimelineExtent",
    "Topic",
    "TopicIdentityRecord",
    "TopicPartition",
    "TopicPartitionSpec",
    "UnauthorizedError",
    "UnavailableError",
    "catalog",
    "create_session",
    "create_session_for_dataset",
    "custom_fields",
    "errors",
    "get_default_client",
    "metrics",
    "set_default_client",
    "watch",
]
