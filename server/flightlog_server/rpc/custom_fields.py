"""CustomFieldService: custom-field definitions and their lifecycle (``services.custom_fields``
says what a status change does to sessions)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio

from flightlog.v1 import custom_field_service_pb2, custom_field_service_pb2_grpc
from flightlog_server.domain import rules
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import CustomFieldDef, CustomFieldStatus
from flightlog_server.rpc import convert, pagination
from flightlog_server.rpc.calls import current_caller
from flightlog_server.services.custom_fields import CustomFields

pb = custom_field_service_pb2
Context = aio.ServicerContext[Any, Any]

_INITIAL_STATUSES = (CustomFieldStatus.READY, CustomFieldStatus.CREATING)
_MAX_ENUM_VALUE_CHARS = 128


class CustomFieldServicer(custom_field_service_pb2_grpc.CustomFieldServiceServicer):
    def __init__(self, custom_fields: CustomFields) -> None:
        self.custom_fields = custom_fields

    async def CreateCustomField(
        self, request: pb.CreateCustomFieldRequest, context: Context
    ) -> pb.CreateCustomFieldResponse:
        caller = current_caller()
        v = Violations()
        entity_type = convert.entity_type_name(request.entity_type)
        v.check(entity_type is not None, "entity_type", "is required (ENTITY_TYPE_SESSION)")
        type_ = convert.custom_field_type(request.type)
        rules.check_custom_field_definition(
            v, request.name, type_, request.enum_values, request.description
        )
        status = CustomFieldStatus.READY
        if request.initial_status != pb.CUSTOM_FIELD_STATUS_UNSPECIFIED:
            given = convert.custom_field_status(request.initial_status)
            if given in _INITIAL_STATUSES:
                assert given is not None
                status = given
            else:
                v.add("initial_status", "must be READY or CREATING (unspecified means READY)")
        v.raise_if_any()
        assert entity_type is not None and type_ is not None

        definition = await self.custom_fields.create(
            caller,
            entity_type=entity_type,
            name=request.name,
            type_=type_,
            enum_values=list(request.enum_values),
            status=status,
            description=request.description,
        )
        return pb.CreateCustomFieldResponse(custom_field=convert.custom_field_message(definition))

    async def GetCustomField(
        self, request: pb.GetCustomFieldRequest, context: Context
    ) -> pb.GetCustomFieldResponse:
        caller = current_caller()
        rules.require_id("custom_field_id", request.custom_field_id, "custom_field")

        definition = await self.custom_fields.get(caller, request.custom_field_id)
        return pb.GetCustomFieldResponse(custom_field=convert.custom_field_message(definition))

    async def ListCustomFields(
        self, request: pb.ListCustomFieldsRequest, context: Context
    ) -> AsyncIterator[pb.ListCustomFieldsResponse]:
        caller = current_caller()
        v = Violations()
        entity_type = None
        if request.entity_type != pb.ENTITY_TYPE_UNSPECIFIED:
            entity_type = convert.entity_type_name(request.entity_type)
            v.check(entity_type is not None, "entity_type", "is not a known entity type")
        size = rules.check_page(v, request.page_size)
        v.raise_if_any()

        async def fetch(after: list[Any] | None, limit: int) -> list[CustomFieldDef]:
            position = pagination.checked_position(after, str, str)
            keyset = (position[0], position[1]) if position else None
            return await self.custom_fields.page(caller, entity_type, keyset, limit)

        def build(rows: Sequence[CustomFieldDef], token: str) -> pb.ListCustomFieldsResponse:
            return pb.ListCustomFieldsResponse(
                custom_fields=[convert.custom_field_message(d) for d in rows],
                next_page_token=token,
            )

        async for response in pagination.stream_pages(
            scope=pagination.fingerprint("ListCustomFields", caller.org_id, entity_type or ""),
            page_token=request.page_token,
            page_size=size,
            fetch=fetch,
            position_of=lambda d: [d.name, d.custom_field_id],
            build=build,
        ):
            yield response

    async def UpdateCustomField(
        self, request: pb.UpdateCustomFieldRequest, context: Context
    ) -> pb.UpdateCustomFieldResponse:
        caller = current_caller()
        field_id = request.custom_field_id
        v = Violations()
        rules.check_id(v, "custom_field_id", field_id, "custom_field")
        status: CustomFieldStatus | None = None
        if request.status != pb.CUSTOM_FIELD_STATUS_UNSPECIFIED:
            status = convert.custom_field_status(request.status)
            v.check(status is not None, "status", "is not a known status")
        for i, value in enumerate(request.add_enum_values):
            if not value:
                v.add(f"add_enum_values[{i}]", "must not be empty")
            else:
                rules.check_text(
                    v, f"add_enum_values[{i}]", value, _MAX_ENUM_VALUE_CHARS, allow_newlines=False
                )
        v.raise_if_any()
        definition = await self.custom_fields.update(
            caller, field_id, status, rules.dedupe(request.add_enum_values)
        )
        return pb.UpdateCustomFieldResponse(custom_field=convert.custom_field_message(definition))

    async def DeleteCustomField(
        self, request: pb.DeleteCustomFieldRequest, context: Context
    ) -> pb.DeleteCustomFieldResponse:
        caller = current_caller()
        rules.require_id("custom_field_id", request.custom_field_id, "custom_field")

        await self.custom_fields.delete(caller, request.custom_field_id)
        return pb.DeleteCustomFieldResponse()
