"""CustomFieldService: custom-field definitions and their lifecycle.

Sessions store their API form with the values of Ready fields only (``sessions.wire_record``), so
moving a field to or away from Ready, or deleting a Ready field, refreshes the record of every
session holding a value for it, in the same transaction (``CustomFieldRepository`` docs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from grpc import aio
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog.v1 import custom_field_service_pb2, custom_field_service_pb2_grpc
from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.types import (
    Caller,
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
)
from flightlog_server.rpc import convert, pagination
from flightlog_server.rpc.calls import current_caller
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database, RetryTransaction
from flightlog_server.storage.sessions import SessionRepository

pb = custom_field_service_pb2
Context = aio.ServicerContext[Any, Any]

_INITIAL_STATUSES = (CustomFieldStatus.READY, CustomFieldStatus.CREATING)
_MAX_ENUM_VALUE_CHARS = 128


def _shown(status: CustomFieldStatus) -> bool:
    """Whether sessions show a field's values in this status."""
    return status is CustomFieldStatus.READY


class CustomFieldServicer(custom_field_service_pb2_grpc.CustomFieldServiceServicer):
    def __init__(self, database: Database) -> None:
        self.database = database

    @staticmethod
    async def _refresh_sessions(db: AsyncSession, caller: Caller, sessions: list[str]) -> None:
        """Rewrites the stored record of each (locked) session after a visibility change."""
        repo = SessionRepository(db, caller, convert.encode_session)
        for session_id in sessions:
            await repo.commit_change(session_id, "updated")

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

        async def work(db: AsyncSession) -> CustomFieldDef:
            return await CustomFieldRepository(db, caller.org_id).create(
                entity_type=entity_type,
                name=request.name,
                type_=type_,
                enum_values=list(request.enum_values),
                status=status,
                description=request.description,
                created_by=caller.principal_id,
            )

        definition = await self.database.run(work)
        return pb.CreateCustomFieldResponse(custom_field=convert.custom_field_message(definition))

    async def GetCustomField(
        self, request: pb.GetCustomFieldRequest, context: Context
    ) -> pb.GetCustomFieldResponse:
        caller = current_caller()
        rules.require_id("custom_field_id", request.custom_field_id, "custom_field")

        async def work(db: AsyncSession) -> CustomFieldDef:
            return await CustomFieldRepository(db, caller.org_id).get(request.custom_field_id)

        definition = await self.database.run(work)
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

        async def fetch(db: AsyncSession, after: list[Any] | None, limit: int) -> list[Any]:
            position = pagination.checked_position(after, str, str)
            keyset = (position[0], position[1]) if position else None
            return await CustomFieldRepository(db, caller.org_id).list_fields(
                entity_type, keyset, limit
            )

        def build(rows: Sequence[CustomFieldDef], token: str) -> pb.ListCustomFieldsResponse:
            return pb.ListCustomFieldsResponse(
                custom_fields=[convert.custom_field_message(d) for d in rows],
                next_page_token=token,
            )

        async for response in pagination.stream_pages(
            self.database,
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
        adding = rules.dedupe(request.add_enum_values)

        async def work(db: AsyncSession) -> CustomFieldDef:
            repo = CustomFieldRepository(db, caller.org_id)
            seen = await repo.get(field_id)
            flips = status is not None and _shown(status) != _shown(seen.status)
            sessions: list[str] = []
            if flips:  # every session showing (or about to show) a value is refreshed
                current, sessions = await repo.lock_sessions_with_values(field_id)
            else:
                current = await repo.get(field_id, lock=True)
            new_status = status or current.status
            if _shown(new_status) != _shown(current.status) and not flips:
                raise RetryTransaction(f"the status of {field_id} changed while locking")
            added = [value for value in adding if value not in current.enum_values]
            if added and current.type is not CustomFieldType.ENUM:
                raise InvalidArgument.one("add_enum_values", "is only allowed for ENUM fields")
            enum_values = (*current.enum_values, *added)
            if len(enum_values) > rules.MAX_ENUM_VALUES:
                raise InvalidArgument.one(
                    "add_enum_values",
                    f"would give the field more than {rules.MAX_ENUM_VALUES} values",
                )
            updated = await repo.update(field_id, status=new_status, enum_values=enum_values)
            if _shown(new_status) != _shown(current.status):
                await self._refresh_sessions(db, caller, sessions)
            return updated

        definition = await self.database.run(work)
        return pb.UpdateCustomFieldResponse(custom_field=convert.custom_field_message(definition))

    async def DeleteCustomField(
        self, request: pb.DeleteCustomFieldRequest, context: Context
    ) -> pb.DeleteCustomFieldResponse:
        caller = current_caller()
        rules.require_id("custom_field_id", request.custom_field_id, "custom_field")

        async def work(db: AsyncSession) -> None:
            repo = CustomFieldRepository(db, caller.org_id)
            # The sessions are collected (and locked) before their values are deleted.
            definition, sessions = await repo.lock_sessions_with_values(request.custom_field_id)
            await repo.delete(request.custom_field_id)
            if _shown(definition.status):
                await self._refresh_sessions(db, caller, sessions)

        await self.database.run(work)
        return pb.DeleteCustomFieldResponse()
