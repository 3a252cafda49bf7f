"""Sessions and what they are made of: contributions, device attachments, custom-field values.

Concurrency: every write to a session first locks its row (``FOR UPDATE``), so writes to one
session are serialized and each recomputes the bounds from what is committed. Writes that touch
many sessions (a file's offset changing, a file deleted) lock those sessions in ID order, then the
file, then check that no contribution appeared meanwhile (``RetryTransaction`` otherwise). Every
write ends with ``commit_change``, which bumps the org revision last, so the org row is held
only for the final statements of the transaction.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import replace
from typing import Any

from sqlalchemy import and_, delete, func, literal, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from flightlog_server.domain.errors import (
    NotFound,
    RequestIdReused,
    RevisionMismatch,
)
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldType,
    FieldValue,
    SessionState,
)
from flightlog_server.storage import models as m
from flightlog_server.storage.database import RetryTransaction

# Turns a session into the bytes stored in ``sessions.wire_record`` (set by the wiring).
SessionEncoder = Callable[[SessionState], bytes]

CHANGES_CHANNEL = "flightlog_session_changes"

# Custom-field type → the typed value column that stores it.
VALUE_COLUMNS: dict[CustomFieldType, str] = {
    CustomFieldType.BOOLEAN: "bool_value",
    CustomFieldType.ENUM: "text_value",
    CustomFieldType.NUMBER: "number_value",
    CustomFieldType.STRING: "text_value",
    CustomFieldType.TIMESTAMP: "timestamp_ns",
}

S = m.table(m.Session)
C = m.table(m.SessionFile)
D = m.table(m.SessionDevice)
V = m.table(m.SessionCustomFieldValue)
F = m.table(m.File)
DS = m.table(m.Dataset)
CF = m.table(m.CustomField)


async def record_and_ready_fields(
    db: AsyncConnection, org_id: str, session_id: str
) -> tuple[bytes, list[str]]:
    """A session's stored wire record and the org's Ready session field names, in one
    statement (GetSession's whole read)."""
    row = (
        await db.execute(_RECORD_AND_READY_FIELDS_SQL, {"org_id": org_id, "session_id": session_id})
    ).one_or_none()
    if row is None:
        raise NotFound("session", [session_id])
    return bytes(row[0]), list(row[1])


class SessionRepository:
    """All SQL about sessions, scoped to the caller's org. Flushes, never commits."""

    def __init__(self, session: AsyncSession, caller: Caller, encode: SessionEncoder) -> None:
        self.db = session
        self.caller = caller
        self.org_id = caller.org_id
        self.encode = encode

    # --- reading -------------------------------------------------------------------------------

    async def load(self, session_id: str, *, lock: bool = False) -> SessionState:
        """The session with its set Ready custom-field values; NOT_FOUND when not in the org."""
        query = select(S).where(S.c.org_id == self.org_id, S.c.session_id == session_id)
        if lock:
            query = query.with_for_update()
        row = (await self.db.execute(query)).mappings().one_or_none()
        if row is None:
            raise NotFound("session", [session_id])
        values = await self._custom_values(session_id)
        return SessionState(
            session_id=row["session_id"],
            org_id=row["org_id"],
            name=row["name"],
            description=row["description"],
            tags=list(row["tags"]),
            metadata=dict(row["metadata"]),
            custom_fields=values,
            min_timestamp_ns=row["min_timestamp_ns"],
            max_timestamp_ns=row["max_timestamp_ns"],
            created=row["created"],
            created_by=row["created_by"],
            modified=row["modified"],
            modified_by=row["modified_by"],
            revision=row["revision"],
        )

    async def wire_record(self, session_id: str) -> bytes:
        record = await self.db.scalar(
            select(S.c.wire_record).where(S.c.org_id == self.org_id, S.c.session_id == session_id)
        )
        if record is None:
            raise NotFound("session", [session_id])
        return bytes(record)

    async def _custom_values(
        self, session_id: str
    ) -> dict[str, tuple[CustomFieldType, FieldValue]]:
        rows = await self.db.execute(
            select(
                CF.c.name,
                CF.c.type,
                V.c.bool_value,
                V.c.text_value,
                V.c.number_value,
                V.c.timestamp_ns,
            )
            .join(CF, and_(CF.c.org_id == V.c.org_id, CF.c.custom_field_id == V.c.custom_field_id))
            .where(V.c.org_id == self.org_id, V.c.session_id == session_id, CF.c.status == "ready")
        )
        values: dict[str, tuple[CustomFieldType, FieldValue]] = {}
        for name, type_, b, t, n, ts in rows:
            field_type = CustomFieldType(type_)
            value = {"bool_value": b, "text_value": t, "number_value": n, "timestamp_ns": ts}[
                VALUE_COLUMNS[field_type]
            ]
            values[name] = (field_type, value)
        return values

    async def device_ids(self, session_id: str) -> list[str]:
        rows = await self.db.scalars(
            select(D.c.device_id)
            .where(D.c.org_id == self.org_id, D.c.session_id == session_id)
            .order_by(D.c.seq)
        )
        return list(rows)

    # --- creating ------------------------------------------------------------------------------

    async def find_by_request_id(self, request_id: str, digest: bytes) -> SessionState | None:
        """The session a create with this ``request_id`` made, when it was the same request."""
        row = (
            await self.db.execute(
                select(S.c.session_id, S.c.request_digest).where(
                    S.c.org_id == self.org_id, S.c.request_id == request_id
                )
            )
        ).one_or_none()
        if row is None:
            return None
        if row.request_digest != digest:
            raise RequestIdReused(
                f"request_id {request_id!r} was already used with a different request"
            )
        return await self.load(row.session_id)

    async def create(
        self,
        *,
        name: str | None,
        description: str | None,
        device_ids: Sequence[str],
        metadata: dict[str, Any],
        tags: Sequence[str],
        values: dict[str, tuple[CustomFieldType, FieldValue | None]],
        request_id: str | None,
        digest: bytes | None,
        dataset_id: str | None = None,
    ) -> SessionState | None:
        """Inserts a session; returns None when a concurrent create with the same
        ``request_id`` won (the caller then looks it up).

        With ``dataset_id``, every file of the dataset is added whole before the change is
        recorded, so the feed carries one ``created`` change with the final bounds."""
        await self.require_devices(device_ids)
        session_id = new_id("session")
        principal = self.caller.principal_id
        inserted = await self.db.scalar(
            pg_insert(S)
            .values(
                org_id=self.org_id,
                session_id=session_id,
                name=name,
                description=description,
                tags=list(tags),
                metadata=metadata,
                created_by=principal,
                modified_by=principal,
                request_id=request_id,
                request_digest=digest,
            )
            .on_conflict_do_nothing(index_elements=[S.c.org_id, S.c.request_id])
            .returning(S.c.session_id)
        )
        if inserted is None:
            return None
        if device_ids:
            await self.db.execute(
                D.insert(),
                [
                    {
                        "org_id": self.org_id,
                        "session_id": session_id,
                        "device_id": d,
                        "attached_by": principal,
                    }
                    for d in device_ids
                ],
            )
        await self.set_custom_values(session_id, values)
        if dataset_id is not None:
            await self.add_dataset_contributions(session_id, dataset_id)
        return await self.commit_change(session_id, "created")

    async def require_devices(self, device_ids: Iterable[str]) -> None:
        wanted = list(dict.fromkeys(device_ids))
        if not wanted:
            return
        found = set(
            await self.db.scalars(
                select(m.table(m.Device).c.device_id)
                .where(
                    m.table(m.Device).c.org_id == self.org_id,
                    m.table(m.Device).c.device_id.in_(wanted),
                )
                .with_for_update(read=True, key_share=True)
            )
        )
        missing = [d for d in wanted if d not in found]
        if missing:
            raise NotFound("device", missing)

    # --- updating ------------------------------------------------------------------------------

    async def lock(self, session_id: str, expected_revision: int | None) -> SessionState:
        """Locks the session for a write and checks the caller's expected revision."""
        state = await self.load(session_id, lock=True)
        if expected_revision is not None and expected_revision != state.revision:
            raise RevisionMismatch(expected_revision, state.revision)
        return state

    async def update_fields(self, session_id: str, **columns: Any) -> None:
        if columns:
            await self.db.execute(
                update(S)
                .where(S.c.org_id == self.org_id, S.c.session_id == session_id)
                .values(**columns)
            )

    async def set_custom_values(
        self, session_id: str, values: dict[str, tuple[CustomFieldType, FieldValue | None]]
    ) -> None:
        """Sets (or, for None, clears) values keyed by custom field ID."""
        cleared = [field_id for field_id, (_, value) in values.items() if value is None]
        if cleared:
            await self.db.execute(
                delete(V).where(
                    V.c.org_id == self.org_id,
                    V.c.session_id == session_id,
                    V.c.custom_field_id.in_(cleared),
                )
            )
        rows = []
        for field_id, (type_, value) in values.items():
            if value is None:
                continue
            row: dict[str, Any] = {
                "org_id": self.org_id,
                "session_id": session_id,
                "custom_field_id": field_id,
                "bool_value": None,
                "text_value": None,
                "number_value": None,
                "timestamp_ns": None,
            }
            row[VALUE_COLUMNS[type_]] = value
            rows.append(row)
        if rows:
            stmt = pg_insert(V)
            await self.db.execute(
                stmt.on_conflict_do_update(
                    index_elements=[V.c.org_id, V.c.session_id, V.c.custom_field_id],
                    set_={
                        c: stmt.excluded[c]
                        for c in ("bool_value", "text_value", "number_value", "timestamp_ns")
                    },
                ),
                rows,
            )

    async def delete(self, session_id: str, expected_revision: int | None) -> None:
        state = await self.lock(session_id, expected_revision)
        # The change keeps the tags and devices the session had, so that a watcher filtering on
        # them learns of the deletion.
        device_ids = await self.device_ids(session_id)
        await self.db.execute(
            delete(S).where(S.c.org_id == self.org_id, S.c.session_id == session_id)
        )
        await self._record_change(session_id, "deleted", None, state.tags, device_ids)

    # --- contributions -------------------------------------------------------------------------

    async def add_contributions(self, session_id: str, specs: Sequence[ContributionSpec]) -> None:
        """Adds or replaces contributions; NOT_FOUND naming every file not in the org."""
        file_ids = [s.file_id for s in specs]
        # KEY SHARE locks keep the files from being deleted, or their offsets changed, until
        # this transaction ends (see the module doc).
        found = set(
            await self.db.scalars(
                select(F.c.file_id)
                .where(F.c.org_id == self.org_id, F.c.file_id.in_(file_ids))
                .with_for_update(read=True, key_share=True)
            )
        )
        missing = [f for f in file_ids if f not in found]
        if missing:
            raise NotFound("file", missing)
        principal = self.caller.principal_id
        stmt = pg_insert(C)
        await self.db.execute(
            stmt.on_conflict_do_update(
                index_elements=[C.c.org_id, C.c.session_id, C.c.file_id],
                set_={
                    "range_min_ns": stmt.excluded.range_min_ns,
                    "range_max_ns": stmt.excluded.range_max_ns,
                    "modified": func.now(),
                    "modified_by": stmt.excluded.modified_by,
                },
            ),
            [
                {
                    "org_id": self.org_id,
                    "session_id": session_id,
                    "file_id": s.file_id,
                    "range_min_ns": s.range_min_ns,
                    "range_max_ns": s.range_max_ns,
                    "created_by": principal,
                    "modified_by": principal,
                }
                for s in specs
            ],
        )
        await self.recompute_bounds([session_id])

    async def dataset_devices(self, dataset_id: str) -> list[str]:
        """The devices of a dataset and of its files: the dataset's first, then the files' in
        the order of their first file's relative path. NOT_FOUND when the dataset is not in the
        org; it is held (``FOR KEY SHARE``) until the transaction ends."""
        row = (
            await self.db.execute(
                select(DS.c.device_id)
                .where(DS.c.org_id == self.org_id, DS.c.dataset_id == dataset_id)
                .with_for_update(read=True, key_share=True)
            )
        ).one_or_none()
        if row is None:
            raise NotFound("dataset", [dataset_id])
        of_files = await self.db.scalars(
            select(F.c.device_id)
            .where(
                F.c.org_id == self.org_id,
                F.c.dataset_id == dataset_id,
                F.c.device_id.is_not(None),
            )
            .group_by(F.c.device_id)
            .order_by(func.min(F.c.relative_path), F.c.device_id)
        )
        first = [row.device_id] if row.device_id is not None else []
        return list(dict.fromkeys([*first, *of_files]))

    async def add_dataset_contributions(self, session_id: str, dataset_id: str) -> None:
        """Adds every file of the dataset whole, in relative-path order, in one set-based
        statement (datasets may hold tens of thousands of files), and recomputes the bounds.

        The files are held with ``FOR KEY SHARE`` like in ``add_contributions``."""
        principal = literal(self.caller.principal_id)
        files = (
            select(
                literal(self.org_id),
                literal(session_id),
                F.c.file_id,
                principal,
                principal,
            )
            .where(F.c.org_id == self.org_id, F.c.dataset_id == dataset_id)
            .order_by(F.c.relative_path)
            .with_for_update(read=True, key_share=True)
        )
        await self.db.execute(
            C.insert().from_select(
                ["org_id", "session_id", "file_id", "created_by", "modified_by"], files
            )
        )
        await self.recompute_bounds([session_id])

    async def list_contributions(
        self, session_id: str, after_seq: int | None, limit: int
    ) -> list[Any]:
        """Contributions in the order they were first added, with their file's dataset, path
        and size, after the keyset position ``after_seq``."""
        query = (
            select(
                C.c.file_id,
                C.c.range_min_ns,
                C.c.range_max_ns,
                C.c.seq,
                C.c.created,
                C.c.created_by,
                C.c.modified,
                C.c.modified_by,
                F.c.dataset_id,
                F.c.relative_path,
                F.c.size_bytes,
            )
            .join(F, and_(F.c.org_id == C.c.org_id, F.c.file_id == C.c.file_id))
            .where(C.c.org_id == self.org_id, C.c.session_id == session_id)
            .order_by(C.c.seq)
            .limit(limit)
        )
        if after_seq is not None:
            query = query.where(C.c.seq > after_seq)
        return list(await self.db.execute(query))

    async def require(self, session_id: str) -> None:
        """NOT_FOUND when the session is not in the org."""
        found = await self.db.scalar(
            select(S.c.session_id).where(S.c.org_id == self.org_id, S.c.session_id == session_id)
        )
        if found is None:
            raise NotFound("session", [session_id])

    async def remove_contributions(self, session_id: str, file_ids: Sequence[str]) -> None:
        await self.db.execute(
            delete(C).where(
                C.c.org_id == self.org_id,
                C.c.session_id == session_id,
                C.c.file_id.in_(list(file_ids)),
            )
        )
        await self.recompute_bounds([session_id])

    async def recompute_bounds(self, session_ids: Sequence[str]) -> None:
        """Sets each session's bounds from its contributions: a window as given, or the whole
        file's window (extents plus offset); contributions without a window add nothing."""
        lo = func.min(
            func.coalesce(C.c.range_min_ns, F.c.extents_min_ns + F.c.unix_epoch_offset_ns)
        )
        hi = func.max(
            func.coalesce(C.c.range_max_ns, F.c.extents_max_ns + F.c.unix_epoch_offset_ns)
        )
        bounds = (
            select(lo, hi)
            .select_from(C.join(F, and_(F.c.org_id == C.c.org_id, F.c.file_id == C.c.file_id)))
            .where(C.c.org_id == S.c.org_id, C.c.session_id == S.c.session_id)
        )
        await self.db.execute(
            update(S)
            .where(S.c.org_id == self.org_id, S.c.session_id.in_(list(session_ids)))
            .values({tuple_(S.c.min_timestamp_ns, S.c.max_timestamp_ns): bounds.scalar_subquery()})
        )

    async def lock_sessions_of_file(self, file_id: str) -> list[str]:
        """Locks, in ID order, every session the file contributes to, then the file itself, and
        returns the sessions. Re-runs the transaction if a contribution appeared meanwhile."""
        sessions = list(
            await self.db.scalars(
                select(C.c.session_id)
                .where(C.c.org_id == self.org_id, C.c.file_id == file_id)
                .order_by(C.c.session_id)
            )
        )
        if sessions:
            await self.db.execute(
                select(S.c.session_id)
                .where(S.c.org_id == self.org_id, S.c.session_id.in_(sessions))
                .order_by(S.c.session_id)
                .with_for_update()
            )
        exists = await self.db.scalar(
            select(F.c.file_id)
            .where(F.c.org_id == self.org_id, F.c.file_id == file_id)
            .with_for_update()
        )
        if exists is None:
            raise NotFound("file", [file_id])
        again = list(
            await self.db.scalars(
                select(C.c.session_id)
                .where(C.c.org_id == self.org_id, C.c.file_id == file_id)
                .order_by(C.c.session_id)
            )
        )
        if again != sessions:
            raise RetryTransaction(f"contributions of {file_id} changed while locking")
        return sessions

    # --- devices -------------------------------------------------------------------------------

    async def attach_device(self, session_id: str, device_id: str) -> bool:
        """Attaches a device; False when it was already attached."""
        await self.require_devices([device_id])
        attached = await self.db.scalar(
            pg_insert(D)
            .values(
                org_id=self.org_id,
                session_id=session_id,
                device_id=device_id,
                attached_by=self.caller.principal_id,
            )
            .on_conflict_do_nothing()
            .returning(D.c.device_id)
        )
        return attached is not None

    async def detach_device(self, session_id: str, device_id: str) -> bool:
        """Detaches a device; False when it was not attached."""
        detached = await self.db.scalar(
            delete(D)
            .where(
                D.c.org_id == self.org_id,
                D.c.session_id == session_id,
                D.c.device_id == device_id,
            )
            .returning(D.c.device_id)
        )
        return detached is not None

    async def list_devices(self, session_id: str, after_seq: int | None, limit: int) -> list[Any]:
        """Attached devices in attach order, after the keyset position ``after_seq``."""
        query = (
            select(D.c.device_id, D.c.attached, D.c.attached_by, D.c.seq)
            .where(D.c.org_id == self.org_id, D.c.session_id == session_id)
            .order_by(D.c.seq)
            .limit(limit)
        )
        if after_seq is not None:
            query = query.where(D.c.seq > after_seq)
        return list(await self.db.execute(query))

    # --- the change feed -----------------------------------------------------------------------

    async def commit_change(
        self, session_id: str, kind: str, *, touch: bool = True
    ) -> SessionState:
        """Ends a session write: bumps the org revision, refreshes the stored wire record and
        records the change for the feed. ``touch`` also sets ``modified``/``modified_by``.

        Everything that can be read is read before the org row is locked; under the lock there
        are two statements (the revision, then one statement that stores the record, inserts
        the change and notifies watchers) and the commit."""
        state = await self.load(session_id)
        now, device_ids = (
            await self.db.execute(
                _NOW_AND_DEVICES_SQL, {"org_id": self.org_id, "session_id": session_id}
            )
        ).one()
        if touch:
            state = replace(state, modified=now, modified_by=self.caller.principal_id)
        revision = await self._next_revision()
        state = replace(state, revision=revision)
        record = self.encode(state)
        await self._store_change(
            revision, session_id, kind, record, state.tags, list(device_ids), state
        )
        return state

    async def _record_change(
        self,
        session_id: str,
        kind: str,
        record: bytes | None,
        tags: list[str],
        device_ids: list[str],
    ) -> None:
        revision = await self._next_revision()
        await self._store_change(revision, session_id, kind, record, tags, device_ids, None)

    async def _next_revision(self) -> int:
        """Takes the org's next revision. The org row stays locked until the transaction ends,
        which is what makes revisions visible in commit order (see the module doc)."""
        revision = await self.db.scalar(
            update(m.table(m.Org))
            .where(m.table(m.Org).c.org_id == self.org_id)
            .values(revision=m.table(m.Org).c.revision + 1)
            .returning(m.table(m.Org).c.revision)
        )
        assert revision is not None
        return int(revision)

    async def _store_change(
        self,
        revision: int,
        session_id: str,
        kind: str,
        record: bytes | None,
        tags: list[str],
        device_ids: list[str],
        state: SessionState | None,
    ) -> None:
        """One statement: the session's new revision and record (unless deleted), the change
        row, and the notification that wakes watchers (delivered at commit)."""
        await self.db.execute(
            _STORE_CHANGE_SQL if state is not None else _STORE_DELETION_SQL,
            {
                "org_id": self.org_id,
                "session_id": session_id,
                "revision": revision,
                "kind": kind,
                "record": record,
                "tags": tags,
                "device_ids": device_ids,
                "modified": state.modified if state else None,
                "modified_by": state.modified_by if state else None,
                "channel": CHANGES_CHANNEL,
                "payload": f"{self.org_id}:{revision}",
            },
        )


_RECORD_AND_READY_FIELDS_SQL = text(
    """
    SELECT wire_record,
           ARRAY(SELECT name FROM custom_fields
                 WHERE org_id = :org_id AND entity_type = 'session' AND status = 'ready'
                 ORDER BY name)
    FROM sessions WHERE org_id = :org_id AND session_id = :session_id
    """
)
_NOW_AND_DEVICES_SQL = text(
    """
    SELECT now(), ARRAY(SELECT device_id FROM session_devices
                        WHERE org_id = :org_id AND session_id = :session_id ORDER BY seq)
    """
)
_INSERT_CHANGE = """
    INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record, tags, device_ids)
    VALUES (:org_id, :revision, :session_id, :kind, :record,
            CAST(:tags AS text[]), CAST(:device_ids AS text[]))
"""
_STORE_CHANGE_SQL = text(
    f"""
    WITH stored AS (
        UPDATE sessions
        SET revision = :revision, modified = :modified, modified_by = :modified_by,
            wire_record = :record
        WHERE org_id = :org_id AND session_id = :session_id
    ), change AS ({_INSERT_CHANGE})
    SELECT pg_notify(:channel, :payload)
    """
)
_STORE_DELETION_SQL = text(
    f"""
    WITH change AS ({_INSERT_CHANGE})
    SELECT pg_notify(:channel, :payload)
    """
)


# Names kept for the listing module and tests.
__all__ = [
    "CHANGES_CHANNEL",
    "VALUE_COLUMNS",
    "SessionEncoder",
    "SessionRepository",
]
