"""Custom-field definitions.

A session's stored wire record shows the values of Ready fields only, so a write that moves a
field to or away from Ready, or deletes it, must refresh the record of every session holding a
value for it, in the same transaction: the unit of work's ``lock_dependents`` (one protocol for
files, devices and custom fields, in ``storage.sessions``) takes those locks.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import delete, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from flightlog_server.domain.errors import AlreadyExists, NotFound
from flightlog_server.domain.rules import CUSTOM_FIELD_NAME, new_id
from flightlog_server.domain.types import CustomFieldDef, CustomFieldStatus, CustomFieldType
from flightlog_server.storage import models as m
from flightlog_server.storage.database import Pending, Row, Tx

CF = m.table(m.CustomField)
V = m.table(m.SessionCustomFieldValue)
S = m.table(m.Session)


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
        self, names: Iterable[str], entity_type: str = "session", *, lock: bool = False
    ) -> dict[str, CustomFieldDef]:
        """The definitions with these names (any status), keyed by name.

        With ``lock``, the definitions are share-locked until the transaction ends, so a write
        that checked values against them cannot race a status change or a deletion."""
        # A name that cannot be a field's (NUL characters, say) cannot be found either.
        wanted = [name for name in set(names) if CUSTOM_FIELD_NAME.fullmatch(name)]
        if not wanted:
            return {}
        query = select(CF).where(
            CF.c.org_id == self.org_id,
            CF.c.entity_type == entity_type,
            CF.c.name.in_(wanted),
        )
        if lock:
            query = query.with_for_update(read=True)
        rows = await self.db.execute(query)
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

    # --- definition CRUD (CustomFieldService) --------------------------------------------------

    async def create(
        self,
        *,
        entity_type: str,
        name: str,
        type_: CustomFieldType,
        enum_values: Sequence[str],
        status: CustomFieldStatus,
        description: str,
        created_by: str,
    ) -> CustomFieldDef:
        """Inserts a definition; ALREADY_EXISTS when (entity type, name) is taken in the org."""
        row = (
            await self.db.execute(
                pg_insert(CF)
                .values(
                    org_id=self.org_id,
                    custom_field_id=new_id("custom_field"),
                    entity_type=entity_type,
                    name=name,
                    type=type_.value,
                    enum_values=list(enum_values),
                    status=status.value,
                    description=description,
                    created_by=created_by,
                )
                .on_conflict_do_nothing(index_elements=[CF.c.org_id, CF.c.entity_type, CF.c.name])
                .returning(CF)
            )
        ).one_or_none()
        if row is None:
            raise AlreadyExists(f"a custom field named {name!r} already exists for {entity_type}s")
        return definition_from_row(row)

    async def get(self, custom_field_id: str, *, lock: bool = False) -> CustomFieldDef:
        """The definition; NOT_FOUND when not in the org. ``lock`` holds it for an update."""
        query = select(CF).where(
            CF.c.org_id == self.org_id, CF.c.custom_field_id == custom_field_id
        )
        if lock:
            query = query.with_for_update()
        row = (await self.db.execute(query)).one_or_none()
        if row is None:
            raise NotFound("custom_field", [custom_field_id])
        return definition_from_row(row)

    async def list_fields(
        self, entity_type: str | None, after: tuple[str, str] | None, limit: int
    ) -> list[CustomFieldDef]:
        """Definitions ordered by (name, ID), optionally of one entity type, after ``after``."""
        query = (
            select(CF)
            .where(CF.c.org_id == self.org_id)
            .order_by(CF.c.name, CF.c.custom_field_id)
            .limit(limit)
        )
        if entity_type is not None:
            query = query.where(CF.c.entity_type == entity_type)
        if after is not None:
            query = query.where(tuple_(CF.c.name, CF.c.custom_field_id) > tuple_(*after))
        return [definition_from_row(row) for row in await self.db.execute(query)]

    async def update(
        self,
        custom_field_id: str,
        *,
        status: CustomFieldStatus,
        enum_values: Sequence[str],
    ) -> CustomFieldDef:
        row = (
            await self.db.execute(
                update(CF)
                .where(CF.c.org_id == self.org_id, CF.c.custom_field_id == custom_field_id)
                .values(status=status.value, enum_values=list(enum_values))
                .returning(CF)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("custom_field", [custom_field_id])
        return definition_from_row(row)

    async def delete(self, custom_field_id: str) -> None:
        """Deletes the definition and every value set for it."""
        await self.db.execute(
            delete(V).where(V.c.org_id == self.org_id, V.c.custom_field_id == custom_field_id)
        )
        await self.db.execute(
            delete(CF).where(CF.c.org_id == self.org_id, CF.c.custom_field_id == custom_field_id)
        )


# --- on a Tx (the session unit of work) ----------------------------------------------------------

_DEFINITION_COLUMNS = (
    "custom_field_id, org_id, entity_type, name, type, enum_values, status, description,"
    " created, created_by"
)


def _definition(row: Row) -> CustomFieldDef:
    return CustomFieldDef(
        custom_field_id=row[0],
        org_id=row[1],
        entity_type=row[2],
        name=row[3],
        type=CustomFieldType(row[4]),
        enum_values=tuple(row[5]),
        status=CustomFieldStatus(row[6]),
        description=row[7],
        created=row[8],
        created_by=row[9],
    )


class Definitions:
    """A read of definitions already sent, read (``await definitions.read()``) when needed: the
    session fields with the names asked (any status), keyed by name."""

    def __init__(self, pending: Pending | None) -> None:
        self._pending = pending

    async def read(self) -> dict[str, CustomFieldDef]:
        if self._pending is None:
            return {}
        return {row[3]: _definition(row) for row in await self._pending.rows()}


async def send_definitions_by_names(tx: Tx, org_id: str, names: Iterable[str]) -> Definitions:
    """Sends the read of the session fields with these names, so that it travels with the next
    statement (nothing is sent for no names)."""
    wanted = sorted(name for name in set(names) if CUSTOM_FIELD_NAME.fullmatch(name))
    if not wanted:
        return Definitions(None)
    return Definitions(
        await tx.send(
            f"SELECT {_DEFINITION_COLUMNS} FROM custom_fields"
            " WHERE org_id = $1 AND entity_type = 'session' AND name = ANY($2::text[])",
            [org_id, wanted],
        )
    )


async def definition(tx: Tx, org_id: str, custom_field_id: str) -> CustomFieldDef:
    """The definition, unlocked; NOT_FOUND when not in the org."""
    row = await tx.row(
        f"SELECT {_DEFINITION_COLUMNS} FROM custom_fields"
        " WHERE org_id = $1 AND custom_field_id = $2",
        [org_id, custom_field_id],
    )
    if row is None:
        raise NotFound("custom_field", [custom_field_id])
    return _definition(row)


async def lock_definition(tx: Tx, org_id: str, custom_field_id: str) -> CustomFieldDef:
    """The definition, locked for an update (after its dependent sessions, see
    ``sessions.lock_dependents``); NOT_FOUND when not in the org."""
    row = await tx.row(
        f"SELECT {_DEFINITION_COLUMNS} FROM custom_fields"
        " WHERE org_id = $1 AND custom_field_id = $2 FOR UPDATE",
        [org_id, custom_field_id],
    )
    if row is None:
        raise NotFound("custom_field", [custom_field_id])
    return _definition(row)


async def update_definition(
    tx: Tx,
    org_id: str,
    custom_field_id: str,
    *,
    status: CustomFieldStatus,
    enum_values: Sequence[str],
) -> CustomFieldDef:
    row = await tx.one(
        f"UPDATE custom_fields SET status = $3, enum_values = $4::text[]"
        f" WHERE org_id = $1 AND custom_field_id = $2 RETURNING {_DEFINITION_COLUMNS}",
        [org_id, custom_field_id, status.value, list(enum_values)],
    )
    return _definition(row)


async def delete_definition(tx: Tx, org_id: str, custom_field_id: str) -> None:
    """Deletes the definition and every value set for it (cascade)."""
    await tx.run(
        "DELETE FROM custom_fields WHERE org_id = $1 AND custom_field_id = $2",
        [org_id, custom_field_id],
    )
