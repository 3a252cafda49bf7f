"""What the session use cases take: requests in domain terms, checked for everything that needs no
database by the RPC layer (``rpc.sessions``), each value carrying the path of the request field
it came from, so that a rule broken later (a custom field that is not Ready) still names it."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from flightlog_server.domain.types import MetricEntry, WireValue


class Keep(enum.Enum):
    """``KEEP``: leave the field as it is (distinct from None, which clears it)."""

    KEEP = "keep"


KEEP = Keep.KEEP


class Infer(enum.Enum):
    """``INFER``: associate metric values with the session's only attached device."""

    INFER = "infer"


INFER = Infer.INFER


@dataclass(frozen=True)
class SentValue:
    """A custom-field value as sent (``null`` clears), and the request field that holds it."""

    path: str
    value: WireValue


@dataclass(frozen=True)
class MetricValues:
    """Metric values to publish on one session: the entries (validated one by one by the use
    case, see ``domain.metrics``), and the device: an ID, None for no device, or ``INFER``."""

    entries: tuple[MetricEntry, ...]
    device: str | Infer | None
    # The request fields holding the entries and the device (``metrics`` and ``device_id``;
    # ``metrics.entries`` and ``metrics.device_id``; ``requests[3].metrics``...).
    path: str
    device_path: str


@dataclass(frozen=True)
class NewSession:
    """A session to create (CreateSession, an item of BatchCreateSessions, or
    CreateSessionFromDataset with ``dataset_id``)."""

    name: str | None
    description: str | None
    tags: tuple[str, ...]
    metadata: dict[str, Any]
    device_ids: tuple[str, ...]
    values: dict[str, SentValue]
    request_id: str | None = None
    request_digest: bytes | None = None
    dataset_id: str | None = None


@dataclass(frozen=True)
class SessionUpdate:
    """UpdateSession: each member left at ``KEEP`` (or empty) changes nothing."""

    session_id: str
    expected_revision: int | None = None
    name: str | Keep | None = KEEP
    description: str | Keep | None = KEEP
    # Tag and metadata changes, applied when ``metadata_changeset`` was sent.
    changes_metadata: bool = False
    put_tags: tuple[str, ...] = ()
    remove_tags: tuple[str, ...] = ()
    put_fields: dict[str, Any] = field(default_factory=dict)
    remove_fields: tuple[str, ...] = ()
    values: dict[str, SentValue] = field(default_factory=dict)
    metrics: MetricValues | None = None
