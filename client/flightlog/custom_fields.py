"""Custom-field definitions: typed, queryable attributes an org defines for sessions.

Types and statuses are spelled as lower-case strings: types ``"boolean"``, ``"enum"``,
``"number"``, ``"string"``, ``"timestamp"``; statuses ``"creating"``, ``"ready"``,
``"deleting"``, ``"failed"``; entity types ``"session"``. Only ``"ready"`` fields accept values.

Example:
    >>> from flightlog import custom_fields
    >>> custom_fields.create_custom_field("weather", "enum", enum_values=["clear", "rain"])
    >>> session.set_custom_field("weather", "clear")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Iterator, Mapping, Sequence
from typing import TypeVar

from flightlog._client import FlightlogClient, resolve_client
from flightlog._values import datetime_from_proto
from flightlog.errors import NotFoundError
from flightlog.v1 import custom_field_service_pb2 as pb

__all__ = [
    "CUSTOM_FIELD_STATUSES",
    "CUSTOM_FIELD_TYPES",
    "ENTITY_TYPES",
    "CustomField",
    "create_custom_field",
    "delete_custom_field",
    "find_custom_field",
    "get_custom_field",
    "list_custom_fields",
    "update_custom_field",
]

_T = TypeVar("_T")

CUSTOM_FIELD_TYPES: dict[str, pb.CustomFieldType.ValueType] = {
    "boolean": pb.CUSTOM_FIELD_TYPE_BOOLEAN,
    "enum": pb.CUSTOM_FIELD_TYPE_ENUM,
    "number": pb.CUSTOM_FIELD_TYPE_NUMBER,
    "string": pb.CUSTOM_FIELD_TYPE_STRING,
    "timestamp": pb.CUSTOM_FIELD_TYPE_TIMESTAMP,
}
"""Custom-field type names and their wire values."""

CUSTOM_FIELD_STATUSES: dict[str, pb.CustomFieldStatus.ValueType] = {
    "creating": pb.CUSTOM_FIELD_STATUS_CREATING,
    "ready": pb.CUSTOM_FIELD_STATUS_READY,
    "deleting": pb.CUSTOM_FIELD_STATUS_DELETING,
    "failed": pb.CUSTOM_FIELD_STATUS_FAILED,
}
"""Custom-field status names and their wire values."""

ENTITY_TYPES: dict[str, pb.EntityType.ValueType] = {"session": pb.ENTITY_TYPE_SESSION}
"""Entity type names and their wire values."""


def _name_of(table: Mapping[str, int], value: int) -> str:
    """Return the name of a wire enum value, or ``"unspecified"``."""
    for name, wire in table.items():
        if wire == value:
            return name
    return "unspecified"


def _lookup(table: Mapping[str, _T], name: str, what: str) -> _T:
    """Return the wire value named ``name``, or raise a ValueError listing the choices."""
    try:
        return table[name.lower()]
    except KeyError:
        raise ValueError(
            f"unknown custom-field {what} {name!r}; expected one of {', '.join(table)}"
        ) from None


@dataclasses.dataclass(frozen=True)
class CustomField:
    """A custom-field definition.

    Attributes:
        custom_field_id: Unique identifier, prefixed ``cf_``.
        org_id: The owning org.
        entity_type: The entity type it applies to (``"session"``).
        name: The field name, ``^[a-z][a-z0-9_]{0,62}$``.
        type: The value type (``"boolean"``, ``"enum"``, ``"number"``, ``"string"``,
            ``"timestamp"``).
        enum_values: For ENUM fields, the allowed values in declaration order.
        status: The lifecycle status (``"creating"``, ``"ready"``, ``"deleting"``,
            ``"failed"``).
        description: The description, or ``None``.
        created: When the field was defined.
        created_by: Principal that defined it.
    """

    custom_field_id: str
    name: str
    type: str
    org_id: str = ""
    entity_type: str = "session"
    enum_values: tuple[str, ...] = ()
    status: str = "ready"
    description: str | None = None
    created: dt.datetime | None = None
    created_by: str = ""

    @classmethod
    def from_proto(cls, message: pb.CustomField) -> CustomField:
        """Build from a ``flightlog.v1.CustomField`` message."""
        return cls(
            custom_field_id=message.custom_field_id,
            org_id=message.org_id,
            entity_type=_name_of(ENTITY_TYPES, message.entity_type),
            name=message.name,
            type=_name_of(CUSTOM_FIELD_TYPES, message.type),
            enum_values=tuple(message.enum_values),
            status=_name_of(CUSTOM_FIELD_STATUSES, message.status),
            description=message.description or None,
            created=(datetime_from_proto(message.created) if message.HasField("created") else None),
            created_by=message.created_by,
        )


def create_custom_field(
    name: str,
    type: str,
    *,
    enum_values: Sequence[str] = (),
    description: str | None = None,
    initial_status: str | None = None,
    entity_type: str = "session",
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> CustomField:
    """Define a custom field.

    Args:
        name: The name, ``^[a-z][a-z0-9_]{0,62}$``, unique per (org, entity type).
        type: ``"boolean"``, ``"enum"``, ``"number"``, ``"string"`` or ``"timestamp"``.
        enum_values: For ENUM fields, 1 to 256 distinct values.
        description: Optional description.
        initial_status: ``None`` or ``"ready"`` makes the field usable at once; ``"creating"``
            lets a pipeline backfill values before marking it ready.
        entity_type: The entity type; only ``"session"`` today.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.

    Raises:
        ConflictError: The name is taken for the entity type.
        InvalidRequestError: A bad name, an ENUM without values or values on another type.
        ValueError: ``type``, ``initial_status`` or ``entity_type`` is not a known name.
    """
    c = resolve_client(client)
    request = pb.CreateCustomFieldRequest(
        entity_type=_lookup(ENTITY_TYPES, entity_type, "entity type"),
        name=name,
        type=_lookup(CUSTOM_FIELD_TYPES, type, "type"),
        enum_values=list(enum_values),
        description=description or "",
        initial_status=(
            pb.CUSTOM_FIELD_STATUS_UNSPECIFIED
            if initial_status is None
            else _lookup(CUSTOM_FIELD_STATUSES, initial_status, "status")
        ),
    )
    response = c.call(c.custom_fields.CreateCustomField, request, org_id=org_id)
    return CustomField.from_proto(response.custom_field)


def get_custom_field(
    custom_field_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> CustomField:
    """Return one custom field by ID.

    Raises:
        NotFoundError: No such field in the org (reason ``CUSTOM_FIELD_NOT_FOUND``).
    """
    c = resolve_client(client)
    request = pb.GetCustomFieldRequest(custom_field_id=custom_field_id)
    response = c.call(c.custom_fields.GetCustomField, request, org_id=org_id)
    return CustomField.from_proto(response.custom_field)


def list_custom_fields(
    entity_type: str | None = None,
    *,
    page_size: int = 0,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> Iterator[CustomField]:
    """Iterate the org's custom fields ordered by name, for one entity type or all."""
    c = resolve_client(client)
    request = pb.ListCustomFieldsRequest(
        entity_type=(
            pb.ENTITY_TYPE_UNSPECIFIED
            if entity_type is None
            else _lookup(ENTITY_TYPES, entity_type, "entity type")
        ),
        page_size=page_size,
    )
    for message in c.iterate(
        c.custom_fields.ListCustomFields, request, lambda r: r.custom_fields, org_id=org_id
    ):
        yield CustomField.from_proto(message)


def find_custom_field(
    name_or_id: str,
    entity_type: str = "session",
    *,
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> CustomField:
    """Return a custom field by ID (``cf_...``) or by name for an entity type.

    Raises:
        NotFoundError: No such field in the org.
    """
    if name_or_id.startswith("cf_"):
        return get_custom_field(name_or_id, org_id=org_id, client=client)
    for field in list_custom_fields(entity_type, org_id=org_id, client=client):
        if field.name == name_or_id:
            return field
    raise NotFoundError(
        f"custom field {name_or_id!r} does not exist", reason="CUSTOM_FIELD_NOT_FOUND"
    )


def update_custom_field(
    custom_field_id: str,
    *,
    status: str | None = None,
    add_enum_values: Sequence[str] = (),
    org_id: str | None = None,
    client: FlightlogClient | None = None,
) -> CustomField:
    """Move a custom field through its lifecycle and/or append enum values.

    Args:
        custom_field_id: The field ID.
        status: The new status name; ``None`` leaves it unchanged.
        add_enum_values: Values to append to an ENUM field; existing ones are ignored.
        org_id: The acting org; ``None`` keeps the client's default.
        client: The client; ``None`` uses the ambient one.
    """
    c = resolve_client(client)
    request = pb.UpdateCustomFieldRequest(
        custom_field_id=custom_field_id,
        status=(
            pb.CUSTOM_FIELD_STATUS_UNSPECIFIED
            if status is None
            else _lookup(CUSTOM_FIELD_STATUSES, status, "status")
        ),
        add_enum_values=list(add_enum_values),
    )
    response = c.call(c.custom_fields.UpdateCustomField, request, org_id=org_id)
    return CustomField.from_proto(response.custom_field)


def delete_custom_field(
    custom_field_id: str, *, org_id: str | None = None, client: FlightlogClient | None = None
) -> None:
    """Delete a custom field and every value set for it."""
    c = resolve_client(client)
    request = pb.DeleteCustomFieldRequest(custom_field_id=custom_field_id)
    c.call(c.custom_fields.DeleteCustomField, request, org_id=org_id)
