"""Custom-field definitions and their lifecycle.

Sessions show the values of Ready fields only, in their stored records. So a status change that
moves a field to or away from Ready, and the deletion of a Ready field, rewrite the record of
every session holding a value for it: in the session unit of work, which locks those sessions
first (``lock_dependents``), so that no session gains or loses a value meanwhile.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain import rules
from flightlog_server.domain.errors import InvalidArgument
from flightlog_server.domain.types import (
    Caller,
    CustomFieldDef,
    CustomFieldStatus,
    CustomFieldType,
)
from flightlog_server.services.unit_of_work import RecordFormat, SessionWrites, write_sessions
from flightlog_server.storage import custom_fields as store
from flightlog_server.storage import sessions as session_store
from flightlog_server.storage.custom_fields import CustomFieldRepository
from flightlog_server.storage.database import Database, RetryTransaction


def shown(status: CustomFieldStatus) -> bool:
    """Whether sessions show a field's values in this status."""
    return status is CustomFieldStatus.READY


class CustomFields:
    def __init__(self, database: Database, record_format: RecordFormat) -> None:
        self.database = database
        self.record_format = record_format

    async def create(
        self,
        caller: Caller,
        *,
        entity_type: str,
        name: str,
        type_: CustomFieldType,
        enum_values: Sequence[str],
        status: CustomFieldStatus,
        description: str,
    ) -> CustomFieldDef:
        """ALREADY_EXISTS when the name is taken for the entity type in the org. A new field has
        no values, so no session changes (a Ready one starts showing, null, where sessions are
        read)."""

        async def work(db: AsyncSession) -> CustomFieldDef:
            return await CustomFieldRepository(db, caller.org_id).create(
                entity_type=entity_type,
                name=name,
                type_=type_,
                enum_values=enum_values,
                status=status,
                description=description,
                created_by=caller.principal_id,
            )

        return await self.database.run(work)

    async def get(self, caller: Caller, custom_field_id: str) -> CustomFieldDef:
        async def work(db: AsyncSession) -> CustomFieldDef:
            return await CustomFieldRepository(db, caller.org_id).get(custom_field_id)

        return await self.database.run(work)

    async def page(
        self, caller: Caller, entity_type: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[CustomFieldDef]:
        """Definitions by (name, ID), optionally of one entity type, after ``after``."""

        async def work(db: AsyncSession) -> list[CustomFieldDef]:
            return await CustomFieldRepository(db, caller.org_id).list_fields(
                entity_type, after, limit
            )

        return await self.database.run(work)

    async def update(
        self,
        caller: Caller,
        custom_field_id: str,
        status: CustomFieldStatus | None,
        add_enum_values: Sequence[str],
    ) -> CustomFieldDef:
        """Changes the status and/or appends enum values. The sessions holding a value are
        rewritten (one ``updated`` change each) when the field starts or stops being shown."""

        async def work(w: SessionWrites) -> CustomFieldDef:
            # Only a change of what sessions show needs the sessions holding a value locked
            # (there may be very many); which case this is, is checked again under the lock.
            seen = await store.definition(w.tx, caller.org_id, custom_field_id)
            flips = status is not None and shown(status) != shown(seen.status)
            drafts = []
            if flips:
                drafts = await w.lock_dependents(session_store.CUSTOM_FIELD, custom_field_id)
            current = await store.lock_definition(w.tx, caller.org_id, custom_field_id)
            flipping = status is not None and shown(status) != shown(current.status)
            if flipping and not flips:
                raise RetryTransaction(f"the status of {custom_field_id} changed meanwhile")
            added = [value for value in add_enum_values if value not in current.enum_values]
            if added and current.type is not CustomFieldType.ENUM:
                raise InvalidArgument.one("add_enum_values", "is only allowed for ENUM fields")
            enum_values = (*current.enum_values, *added)
            if len(enum_values) > rules.MAX_ENUM_VALUES:
                raise InvalidArgument.one(
                    "add_enum_values",
                    f"would give the field more than {rules.MAX_ENUM_VALUES} values",
                )
            new_status = status or current.status
            updated = await store.update_definition(
                w.tx, caller.org_id, custom_field_id, status=new_status, enum_values=enum_values
            )
            if flipping:
                await w.refresh(drafts, "updated", bounds=False)
            return updated

        definition, _ = await write_sessions(self.database, caller, self.record_format, work)
        return definition

    async def delete(self, caller: Caller, custom_field_id: str) -> None:
        """Deletes the definition and its values; sessions that showed one lose it (one
        ``updated`` change each)."""

        async def work(w: SessionWrites) -> None:
            # Values can only be written while the field is Ready (see storage.sessions), so
            # the sessions holding one need locking only when they show it.
            seen = await store.definition(w.tx, caller.org_id, custom_field_id)
            drafts = []
            if shown(seen.status):
                drafts = await w.lock_dependents(session_store.CUSTOM_FIELD, custom_field_id)
            current = await store.lock_definition(w.tx, caller.org_id, custom_field_id)
            if shown(current.status) and not shown(seen.status):
                raise RetryTransaction(f"the status of {custom_field_id} changed meanwhile")
            await store.delete_definition(w.tx, caller.org_id, custom_field_id)
            if shown(current.status):
                await w.refresh(drafts, "updated", bounds=False)

        await write_sessions(self.database, caller, self.record_format, work)
