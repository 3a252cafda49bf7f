"""Custom-field definitions."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.types import CustomFieldDef, CustomFieldStatus, CustomFieldType
from flightlog_server.storage import models as m

CF = m.table(m.CustomField)


def definition_from_row(row: Any) -> CustomFieldDef:
    return CustomFieldDef(
        custom_field_id=row.custom_field_id,
        org_id=row.org_id,
        entity_type=row.entity_type,
        name=row.name,
        type=CustomFieldType(row.type),
        enum_values=tuple(row.enum_values),
        status=CustomFieldStatus(row.status),
        description=row.description,
        created=row.created,
        created_by=row.created_by,
    )


class CustomFieldRepository:
    """All SQL about custom-field definitions, scoped to one org. Flushes, never commits."""

    def __init__(self, session: AsyncSession, org_id: str) -> None:
        self.db = session
        self.org_id = org_id

    async def by_names(
        self, names: Iterable[str], entity_type: str = "session"
    ) -> dict[str, CustomFieldDef]:
        """The definitions with these names (any status), keyed by name."""
        wanted = list(set(names))
        if not wanted:
            return {}
        rows = await self.db.execute(
            select(CF).where(
                CF.c.org_id == self.org_id,
                CF.c.entity_type == entity_type,
                CF.c.name.in_(wanted),
            )
        )
        return {row.name: definition_from_row(row) for row in rows}

    async def ready_names(self, entity_type: str = "session") -> list[str]:
        rows = await self.db.scalars(
            select(CF.c.name)
            .where(
                CF.c.org_id == self.org_id,
                CF.c.entity_type == entity_type,
                CF.c.status == CustomFieldStatus.READY.value,
            )
            .order_by(CF.c.name)
        )
        return list(rows)
