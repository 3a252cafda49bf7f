"""Sessions in storage: the SQL of every write of sessions, run by the unit of work
(``services.unit_of_work``), and the reads of their records.

A write of sessions is a few statements on one :class:`~flightlog_server.storage.database.Tx`:

1. **Lock** the sessions written (``FOR UPDATE``, in session ID order), reading back everything
   their record is made of in the same statement: columns, attached devices, Ready custom-field
   values (``lock_sessions``). A write that depends on a catalog row (a file's contributions, a
   device's attachments, a custom field's values) locks the sessions that depend on it first,
   then the row, then checks that no dependent appeared meanwhile (``lock_dependents``: the one
   copy of that protocol).
2. Whatever the write changes that the record depends on and that SQL must compute: file
   contributions (then ``recompute_bounds``), device attachments.
3. **Store** (``store_sessions``): one statement that writes the new columns, the custom-field
   and metric values, the record, takes the org's next revisions and records the changes (and
   wakes the watchers). The org's revision row is locked by that statement until COMMIT, which
   travels with it (see ``storage.changes`` for why revisions must be taken last).

Creates (``create_sessions``) and deletes (``delete_session``) are one statement each, shaped the
same way.

Records are encoded by the caller (in Python, from the state read in step 1) without their
``revision`` field, which only this last statement knows: SQL appends it with
``flightlog_revision_field`` (migration 0003). ``revision`` is field 14, the Session message's
last, so the result is exactly the deterministic serialization of the whole message.

Every statement is plain SQL with ``$n`` placeholders, scoped by ``org_id``, its values bound. The
storing statements check what they rely on themselves and give up with ``flightlog_retry`` (a
serialization failure: the transaction is re-run) rather than returning a flag to check, so that
COMMIT can be sent right behind them: a write's last round trip carries both.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from psycopg.types.json import Jsonb

from flightlog_server.domain.errors import NotFound
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldType,
    FieldValue,
    Instant,
    SessionState,
)
from flightlog_server.storage.database import Pending, RetryTransaction, Row, Tx
from flightlog_server.storage.id_rows import ORG, id_rows

CHANGES_CHANNEL = "flightlog_session_changes"

# The wake-up for the org's change feed readers (``storage.changes``), sent in a transaction of
# its own right after the write commits, never by the write itself: PostgreSQL serializes the
# commits of every transaction that notifies, in the whole cluster, behind one lock held through
# the commit's WAL flush, so a NOTIFY inside the writes capped the writes of all orgs together
# at about one per fsync. Alone, the notifying transaction has nothing to make durable, so it
# commits without waiting for the flush (``synchronous_commit`` off: a crash can lose only the
# wake-up, which the readers' periodic check makes up for). Payload: "<org_id>:<revision>".
_NOTIFY = f"""
SELECT set_config('synchronous_commit', 'off', true),
       pg_notify('{CHANGES_CHANNEL}', $1 || ':' || $2)
"""


async def notify_changes(tx: Tx, org_id: str, revision: int) -> None:
    """Wakes the org's feed readers to ``revision``, the write's last; call it after the
    write's COMMIT (see ``_NOTIFY``)."""
    await tx.run(_NOTIFY, [org_id, str(revision)])
    await tx.commit()


# The custom-field value columns, in the order the statements below list them.
_VALUE_COLUMNS = ("bool_value", "text_value", "number_value", "timestamp_ns")
_COLUMN_OF_TYPE: dict[CustomFieldType, int] = {
    CustomFieldType.BOOLEAN: 0,
    CustomFieldType.ENUM: 1,
    CustomFieldType.NUMBER: 2,
    CustomFieldType.STRING: 1,
    CustomFieldType.TIMESTAMP: 3,
}


@dataclass(frozen=True)
class LockedSession:
    """A session as ``lock_sessions`` read it: its columns, attached devices (in attach order)
    and the values of its Ready custom fields (name → (type, value))."""

    session_id: str
    name: str | None
    description: str | None
    tags: list[str]
    metadata: dict[str, Any]
    min_timestamp_ns: int | None
    max_timestamp_ns: int | None
    created: dt.datetime
    created_by: str
    modified: dt.datetime
    modified_by: str
    revision: int
    device_ids: list[str]
    custom_fields: dict[str, tuple[CustomFieldType, FieldValue]]
    # The stored record and the version of the encoding that wrote it.
    record: bytes
    record_version: int

    def state(self, org_id: str) -> SessionState:
        """The session as its record shows it."""
        return SessionState(
            session_id=self.session_id,
            org_id=org_id,
            name=self.name,
            description=self.description,
            tags=self.tags,
            metadata=self.metadata,
            custom_fields=self.custom_fields,
            min_timestamp_ns=self.min_timestamp_ns,
            max_timestamp_ns=self.max_timestamp_ns,
            created=self.created,
            created_by=self.created_by,
            modified=self.modified,
            modified_by=self.modified_by,
            revision=self.revision,
        )


# --- 1. locking ----------------------------------------------------------------------------------

_LOCKED_COLUMNS = """
    s.session_id, s.name, s.description, s.tags, s.metadata, s.min_timestamp_ns,
    s.max_timestamp_ns, s.created, s.created_by, s.modified, s.modified_by, s.revision,
    ARRAY(SELECT d.device_id FROM session_devices d
          WHERE d.org_id = s.org_id AND d.session_id = s.session_id ORDER BY d.seq),
    (SELECT jsonb_agg(jsonb_build_array(f.name, f.type, v.bool_value, v.text_value,
                                        v.number_value, v.timestamp_ns))
     FROM session_custom_field_values v
     JOIN custom_fields f ON f.org_id = v.org_id AND f.custom_field_id = v.custom_field_id
     WHERE v.org_id = s.org_id AND v.session_id = s.session_id AND f.status = 'ready'),
    s.wire_record, s.record_version
"""

# The sessions a write names, as rows (session_id, org_id) that statements join on both columns
# of the primary key: see ``storage.id_rows`` for why.
_WANTED = id_rows()

# Locking and reading are two statements, sent together. A row locked ``FOR UPDATE`` after
# waiting for another writer is read again as that writer left it, but the subqueries of the
# same statement (devices, custom-field values) would still see the snapshot taken before the
# wait; the read that follows the lock takes a snapshot of its own, after it.
# The lock takes the sessions in the order given (``lock_sessions`` sorts the IDs), one probe each.
_LOCK_SESSIONS = f"""
    SELECT s.session_id
    FROM {_WANTED} AS wanted(session_id, org_id)
    CROSS JOIN LATERAL (
        SELECT s.session_id FROM sessions s
        WHERE s.org_id = wanted.org_id AND s.session_id = wanted.session_id
        FOR UPDATE OF s
    ) s
"""


_READ_SESSIONS = f"""
    SELECT {_LOCKED_COLUMNS}
    FROM {_WANTED} AS wanted(session_id, org_id)
    JOIN sessions s ON s.org_id = wanted.org_id AND s.session_id = wanted.session_id
"""


async def lock_sessions(tx: Tx, org_id: str, session_ids: Sequence[str]) -> list[LockedSession]:
    """Locks the sessions that exist in the org, in session ID order, and reads them (in that
    order); one round trip. (IDs are ASCII letters, digits and one "_" at a fixed place, so
    Python's order is the database's under any collation: the order every locker uses.)"""
    params = [org_id, sorted(set(session_ids))]
    await tx.run(_LOCK_SESSIONS, params)
    rows = await tx.rows(_READ_SESSIONS, params)
    return sorted((_locked(row) for row in rows), key=lambda session: session.session_id)


async def read_sessions(tx: Tx, org_id: str, session_ids: Sequence[str]) -> list[LockedSession]:
    """Reads the sessions that exist in the org (in no particular order) without locking."""
    rows = await tx.rows(_READ_SESSIONS, [org_id, list(dict.fromkeys(session_ids))])
    return [_locked(row) for row in rows]


_RECORDS = f"""
    SELECT s.session_id, s.wire_record, s.record_version,
           ARRAY(SELECT name FROM custom_fields
                 WHERE org_id = $1 AND entity_type = 'session' AND status = 'ready'
                 ORDER BY name)
    FROM {_WANTED} AS wanted(session_id, org_id)
    JOIN sessions s ON s.org_id = wanted.org_id AND s.session_id = wanted.session_id
"""
_READY_FIELDS = """
    SELECT ARRAY(SELECT name FROM custom_fields
                 WHERE org_id = $1 AND entity_type = 'session' AND status = 'ready'
                 ORDER BY name)
"""


async def records(
    tx: Tx, org_id: str, session_ids: Sequence[str]
) -> tuple[dict[str, tuple[bytes, int]], list[str]]:
    """The stored records (and their encoding versions) of the sessions found in the org, by
    ID, and the org's Ready custom-field names; one statement."""
    rows = await tx.rows(_RECORDS, [org_id, list(session_ids)])
    if not rows:
        ready = await tx.one(_READY_FIELDS, [org_id])
        return {}, list(ready[0])
    return {row[0]: (bytes(row[1]), row[2]) for row in rows}, list(rows[0][3])


def _locked(row: Row) -> LockedSession:
    values: dict[str, tuple[CustomFieldType, FieldValue]] = {}
    for name, type_name, *columns in row[13] or ():
        field_type = CustomFieldType(type_name)
        raw = columns[_COLUMN_OF_TYPE[field_type]]
        # jsonb carries numbers exactly; integral ones come back as int.
        value: FieldValue
        if field_type is CustomFieldType.NUMBER:
            value = float(raw)
        elif field_type is CustomFieldType.TIMESTAMP:
            value = Instant(int(raw))
        else:
            value = raw
        values[name] = (field_type, value)
    return LockedSession(
        session_id=row[0],
        name=row[1],
        description=row[2],
        tags=list(row[3]),
        metadata=dict(row[4]),
        min_timestamp_ns=row[5],
        max_timestamp_ns=row[6],
        created=row[7],
        created_by=row[8],
        modified=row[9],
        modified_by=row[10],
        revision=row[11],
        device_ids=list(row[12]),
        custom_fields=values,
        record=bytes(row[14]),
        record_version=row[15],
    )


@dataclass(frozen=True)
class Parent:
    """A catalog row that sessions depend on, for ``lock_dependents``: its table and ID column,
    and the table of the sessions' dependences on it (keyed by org, that column, session)."""

    kind: str
    table: str
    column: str
    links: str

    @property
    def dependents(self) -> str:
        """The sessions that depend on the row (``$1`` the org, ``$2`` the row's ID)."""
        return f"SELECT session_id FROM {self.links} WHERE org_id = {ORG} AND {self.column} = $2"

    @property
    def lock(self) -> str:
        """Locks the row; returns a row when it exists."""
        return f"SELECT 1 FROM {self.table} WHERE org_id = {ORG} AND {self.column} = $2 FOR UPDATE"

    def statements(self) -> tuple[str, str, str]:
        """``lock_dependents``' three statements: lock the dependents, then the row (with the
        dependents seen after that lock), then read the dependents."""
        return (
            f"""SELECT s.session_id FROM sessions s
                WHERE s.org_id = {ORG} AND s.session_id IN ({self.dependents})
                ORDER BY s.session_id FOR UPDATE OF s""",
            f"""SELECT EXISTS ({self.lock}),
                       ARRAY(SELECT session_id FROM ({self.dependents}) d ORDER BY session_id)""",
            f"""SELECT {_LOCKED_COLUMNS} FROM sessions s
                WHERE s.org_id = {ORG} AND s.session_id IN ({self.dependents})
                ORDER BY s.session_id""",
        )


FILE = Parent(kind="file", table="files", column="file_id", links="session_files")
DEVICE = Parent(kind="device", table="devices", column="device_id", links="session_devices")
CUSTOM_FIELD = Parent(
    kind="custom_field",
    table="custom_fields",
    column="custom_field_id",
    links="session_custom_field_values",
)


async def lock_dependents(
    tx: Tx, org_id: str, parent: Parent, parent_id: str
) -> list[LockedSession]:
    """Locks every session that depends on the parent row (in session ID order), then the row
    itself, and reads the sessions. NOT_FOUND when the row is not in the org; the transaction is
    re-run (``RetryTransaction``) when a dependent appeared or went while locking.

    Sessions are locked before the row because every write of a session locks the session first
    and may then touch the row (adding a file holds it with ``FOR KEY SHARE``): the same order
    everywhere, so that writers wait for each other instead of deadlocking."""
    params = [org_id, parent_id]
    lock_sessions_sql, lock_row_sql, read_sql = parent.statements()
    locked_ids = await tx.send(lock_sessions_sql, params)
    parent_row = await tx.send(lock_row_sql, params)
    # Read after both locks (see _LOCK_SESSIONS), all three in one round trip.
    sessions = await tx.rows(read_sql, params)
    exists, dependents = await parent_row.one()
    if not exists:
        raise NotFound(parent.kind, [parent_id])
    ids = [row[0] for row in await locked_ids.rows()]
    if list(dependents) != ids or [row[0] for row in sessions] != ids:
        raise RetryTransaction(f"the sessions depending on {parent_id} changed while locking")
    return [_locked(row) for row in sessions]


# --- 2. what SQL computes -------------------------------------------------------------------------

_RECOMPUTE_BOUNDS = f"""
    UPDATE sessions s
    SET (min_timestamp_ns, max_timestamp_ns) = (
        SELECT min(coalesce(c.range_min_ns, f.extents_min_ns + f.unix_epoch_offset_ns)),
               max(coalesce(c.range_max_ns, f.extents_max_ns + f.unix_epoch_offset_ns))
        FROM session_files c
        JOIN files f ON f.org_id = c.org_id AND f.file_id = c.file_id
        WHERE c.org_id = s.org_id AND c.session_id = s.session_id)
    FROM {_WANTED} AS wanted(session_id, org_id)
    WHERE s.org_id = wanted.org_id AND s.session_id = wanted.session_id
    RETURNING s.session_id, s.min_timestamp_ns, s.max_timestamp_ns
"""


async def recompute_bounds(
    tx: Tx, org_id: str, session_ids: Sequence[str]
) -> dict[str, tuple[int | None, int | None]]:
    """Sets each session's bounds from its contributions (a window as given, or the whole file's
    window: extents plus offset; contributions without a window add nothing) and returns them."""
    rows = await tx.rows(_RECOMPUTE_BOUNDS, [org_id, list(session_ids)])
    return {row[0]: (row[1], row[2]) for row in rows}


# --- 3. storing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredSession:
    """What ``store_sessions`` writes for one session.

    ``record`` is the encoded session without its revision. ``values`` holds custom-field values
    to set (field ID → (type, value)) or, for None, to clear; ``metrics`` metric values to upsert
    (metric ID → value) with ``metrics_device`` (None: no device). ``tags`` and ``device_ids``
    are the session's after the write (the change feed's filters look at them)."""

    session_id: str
    kind: str
    record: bytes
    name: str | None
    description: str | None
    tags: Sequence[str]
    metadata: dict[str, Any]
    device_ids: Sequence[str]
    touch: bool
    values: dict[str, tuple[CustomFieldType, FieldValue | None]]
    metrics: dict[str, float]
    metrics_device: str | None


_STORE_SESSIONS = f"""
WITH head AS (
    INSERT INTO change_feeds AS feed (org_id, revision) VALUES ($1, cardinality($2::text[]))
    ON CONFLICT (org_id) DO UPDATE SET revision = feed.revision + EXCLUDED.revision
    RETURNING feed.revision - cardinality($2::text[]) AS base
), item AS (
    -- org_id: joined on by stored and cleared, for the reason given at _WANTED.
    SELECT u.ord::int AS ord, $1::text AS org_id, u.session_id, u.kind, u.record, j.doc,
           head.base + u.ord AS revision
    FROM head,
         unnest($2::text[], $3::text[], $4::bytea[])
             WITH ORDINALITY AS u(session_id, kind, record, ord)
         JOIN jsonb_array_elements($5::jsonb) WITH ORDINALITY AS j(doc, ord) ON j.ord = u.ord
), stored AS (
    UPDATE sessions s SET
        name = i.doc->>'name',
        description = i.doc->>'description',
        tags = ARRAY(SELECT jsonb_array_elements_text(i.doc->'tags')),
        metadata = i.doc->'metadata',
        modified = CASE WHEN (i.doc->>'touch')::bool THEN $6 ELSE s.modified END,
        modified_by = CASE WHEN (i.doc->>'touch')::bool THEN $7 ELSE s.modified_by END,
        revision = i.revision,
        record_version = $8,
        wire_record = i.record || flightlog_revision_field(i.revision)
    FROM item i
    WHERE s.org_id = i.org_id AND s.session_id = i.session_id  -- a probe: see _WANTED
    RETURNING s.session_id, s.wire_record
), fields AS (
    -- The definitions of the values written, still Ready: share-locked until COMMIT, so that a
    -- status change waits (and then finds these values, see lock_dependents).
    SELECT custom_field_id FROM custom_fields
    WHERE org_id = $1 AND custom_field_id = ANY($9::text[]) AND status = 'ready'
    FOR SHARE
), cleared AS (
    DELETE FROM session_custom_field_values v
    USING item i, unnest($10::int[], $11::text[]) AS c(ord, field_id)
    WHERE i.ord = c.ord AND v.org_id = i.org_id AND v.session_id = i.session_id
      AND v.custom_field_id = c.field_id
), valued AS (
    INSERT INTO session_custom_field_values
        (org_id, session_id, custom_field_id, {", ".join(_VALUE_COLUMNS)})
    SELECT $1, i.session_id, u.field_id, u.b, u.t, u.n, u.ts
    FROM unnest($12::int[], $13::text[], $14::bool[], $15::text[], $16::float8[], $17::numeric[])
             AS u(ord, field_id, b, t, n, ts)
    JOIN item i ON i.ord = u.ord
    ON CONFLICT (org_id, session_id, custom_field_id) DO UPDATE SET
        {", ".join(f"{c} = EXCLUDED.{c}" for c in _VALUE_COLUMNS)}
), measured AS (
    INSERT INTO session_metric_values
        (org_id, session_id, metric_id, value, device_id, published, published_by)
    SELECT $1, i.session_id, u.metric_id, u.value, u.device_id, $6, $7
    FROM unnest($18::int[], $19::text[], $20::float8[], $21::text[])
             AS u(ord, metric_id, value, device_id)
    JOIN item i ON i.ord = u.ord
    ON CONFLICT (org_id, session_id, metric_id) DO UPDATE SET
        value = EXCLUDED.value, device_id = EXCLUDED.device_id,
        published = EXCLUDED.published, published_by = EXCLUDED.published_by
), changed AS (
    INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record, tags, device_ids)
    SELECT $1, i.revision, i.session_id, i.kind, st.wire_record,
           ARRAY(SELECT jsonb_array_elements_text(i.doc->'tags')),
           ARRAY(SELECT jsonb_array_elements_text(i.doc->'devices'))
    FROM item i JOIN stored st ON st.session_id = i.session_id
)
SELECT (SELECT array_agg(revision ORDER BY ord) FROM item),
       (SELECT count(*) FROM fields) = cardinality($9::text[])
           OR flightlog_retry('a custom field changed status while values were written'),
       ARRAY(SELECT name FROM custom_fields
             WHERE org_id = $1 AND entity_type = 'session' AND status = 'ready' ORDER BY name)
"""


@dataclass(frozen=True)
class Stored:
    """What a storing statement reports: the revisions taken, in order, and the org's Ready
    custom-field names (every session shows them all, unset ones null)."""

    revisions: list[int]
    ready_fields: list[str]


class StoreReport:
    """The report of a storing statement already sent, read (``await report.read()``) once the
    transaction has committed."""

    def __init__(self, pending: Pending) -> None:
        self._pending = pending

    async def read(self) -> Stored:
        row = await self._pending.one()
        return Stored(list(row[0]), list(row[2]))


async def store_sessions(
    tx: Tx,
    org_id: str,
    principal_id: str,
    now: dt.datetime,
    record_version: int,
    sessions: Sequence[StoredSession],
) -> StoreReport:
    """Sends the statement that stores the sessions (locked by this transaction) and records one
    change each; its report is read when awaited (after COMMIT, which may travel with it). The
    transaction is re-run when a custom field written stopped being Ready since it was read."""
    params = _store_params(org_id, principal_id, now, record_version, sessions)
    return StoreReport(await tx.send(_STORE_SESSIONS, params))


def _store_params(
    org_id: str,
    principal_id: str,
    now: dt.datetime,
    record_version: int,
    sessions: Sequence[StoredSession],
) -> list[Any]:
    field_ids: set[str] = set()
    clear_ord: list[int] = []
    clear_ids: list[str] = []
    value_ord: list[int] = []
    value_ids: list[str] = []
    typed: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
    metric_ord: list[int] = []
    metric_ids: list[str] = []
    metric_values: list[float] = []
    metric_devices: list[str | None] = []
    docs = []
    for ord_, s in enumerate(sessions, start=1):
        docs.append(
            {
                "name": s.name,
                "description": s.description,
                "tags": list(s.tags),
                "metadata": s.metadata,
                "devices": list(s.device_ids),
                "touch": s.touch,
            }
        )
        for field_id, (field_type, value) in s.values.items():
            field_ids.add(field_id)
            if value is None:
                clear_ord.append(ord_)
                clear_ids.append(field_id)
                continue
            value_ord.append(ord_)
            value_ids.append(field_id)
            column = _COLUMN_OF_TYPE[field_type]
            for i, values in enumerate(typed):
                values.append(_storable(value) if i == column else None)
        for metric_id, metric_value in s.metrics.items():
            metric_ord.append(ord_)
            metric_ids.append(metric_id)
            metric_values.append(metric_value)
            metric_devices.append(s.metrics_device)
    return [
        org_id,
        [s.session_id for s in sessions],
        [s.kind for s in sessions],
        [s.record for s in sessions],
        Jsonb(docs, dumps=_dumps),
        now,
        principal_id,
        record_version,
        sorted(field_ids),
        clear_ord,
        clear_ids,
        value_ord,
        value_ids,
        *typed,
        metric_ord,
        metric_ids,
        metric_values,
        metric_devices,
    ]


def _storable(value: FieldValue) -> Any:
    return value.ns if isinstance(value, Instant) else value


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


# --- creating and deleting -----------------------------------------------------------------------


@dataclass(frozen=True)
class NewSession:
    """A session for ``create_sessions``: like ``StoredSession``, plus its idempotency key, its
    bounds and the files it starts with (whole, in order: CreateSessionFromDataset)."""

    session_id: str
    record: bytes
    name: str | None
    description: str | None
    tags: Sequence[str]
    metadata: dict[str, Any]
    device_ids: Sequence[str]
    values: dict[str, tuple[CustomFieldType, FieldValue]]
    request_id: str | None
    request_digest: bytes | None
    bounds: tuple[int | None, int | None] = (None, None)
    file_ids: Sequence[str] = ()


_CREATE_SESSIONS = f"""
WITH head AS (
    INSERT INTO change_feeds AS feed (org_id, revision) VALUES ($1, cardinality($2::text[]))
    ON CONFLICT (org_id) DO UPDATE SET revision = feed.revision + EXCLUDED.revision
    RETURNING feed.revision - cardinality($2::text[]) AS base
), item AS (
    SELECT u.ord::int AS ord, u.session_id, u.record, u.request_id, u.digest, j.doc,
           head.base + u.ord AS revision
    FROM head,
         unnest($2::text[], $3::bytea[], $4::text[], $5::bytea[])
             WITH ORDINALITY AS u(session_id, record, request_id, digest, ord)
         JOIN jsonb_array_elements($6::jsonb) WITH ORDINALITY AS j(doc, ord) ON j.ord = u.ord
), inserted AS (
    INSERT INTO sessions (org_id, session_id, name, description, tags, metadata,
                          min_timestamp_ns, max_timestamp_ns, created, created_by, modified,
                          modified_by, revision, request_id, request_digest, record_version,
                          wire_record)
    SELECT $1, i.session_id, i.doc->>'name', i.doc->>'description',
           ARRAY(SELECT jsonb_array_elements_text(i.doc->'tags')), i.doc->'metadata',
           (i.doc->>'min')::bigint, (i.doc->>'max')::bigint, $7, $8, $7, $8, i.revision,
           i.request_id, i.digest, $9, i.record || flightlog_revision_field(i.revision)
    FROM item i
    ORDER BY i.ord
    ON CONFLICT (org_id, request_id) DO NOTHING
    RETURNING session_id, wire_record
), live AS (
    SELECT i.*, n.wire_record FROM item i JOIN inserted n ON n.session_id = i.session_id
), attached AS (
    INSERT INTO session_devices (org_id, session_id, device_id, attached, attached_by)
    SELECT $1, l.session_id, d.device_id, $7, $8
    FROM live l, jsonb_array_elements_text(l.doc->'devices') WITH ORDINALITY AS d(device_id, n)
    ORDER BY l.ord, d.n
), contributed AS (
    INSERT INTO session_files (org_id, session_id, file_id, created_by, modified_by)
    SELECT $1, l.session_id, f.file_id, $8, $8
    FROM live l, jsonb_array_elements_text(l.doc->'files') WITH ORDINALITY AS f(file_id, n)
    ORDER BY l.ord, f.n
), fields AS (
    SELECT custom_field_id FROM custom_fields
    WHERE org_id = $1 AND custom_field_id = ANY($10::text[]) AND status = 'ready'
    FOR SHARE
), valued AS (
    INSERT INTO session_custom_field_values
        (org_id, session_id, custom_field_id, {", ".join(_VALUE_COLUMNS)})
    SELECT $1, l.session_id, u.field_id, u.b, u.t, u.n, u.ts
    FROM unnest($11::int[], $12::text[], $13::bool[], $14::text[], $15::float8[], $16::numeric[])
             AS u(ord, field_id, b, t, n, ts)
    JOIN live l ON l.ord = u.ord
), changed AS (
    INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record, tags, device_ids)
    SELECT $1, l.revision, l.session_id, 'created', l.wire_record,
           ARRAY(SELECT jsonb_array_elements_text(l.doc->'tags')),
           ARRAY(SELECT jsonb_array_elements_text(l.doc->'devices'))
    FROM live l
)
SELECT (SELECT array_agg(revision ORDER BY ord) FROM item),
       (SELECT count(*) FROM inserted) = cardinality($2::text[])
           OR flightlog_retry('a concurrent create with the same request_id committed first'),
       ARRAY(SELECT name FROM custom_fields
             WHERE org_id = $1 AND entity_type = 'session' AND status = 'ready' ORDER BY name),
       (SELECT count(*) FROM fields) = cardinality($10::text[])
           OR flightlog_retry('a custom field changed status while values were written')
"""


async def create_sessions(
    tx: Tx,
    org_id: str,
    principal_id: str,
    now: dt.datetime,
    record_version: int,
    sessions: Sequence[NewSession],
) -> StoreReport:
    """Sends the statement that inserts the sessions with their devices, custom-field values and
    files, and records one ``created`` change each (read as ``store_sessions``).

    The transaction is re-run when a concurrent create committed one of the ``request_id``s first
    (the caller then finds it, as a replay) or a custom field stopped being Ready since it was
    read. Devices and files must have been checked by the caller (the foreign keys stop a
    concurrent deletion)."""
    field_ids: set[str] = set()
    value_ord: list[int] = []
    value_ids: list[str] = []
    typed: tuple[list[Any], list[Any], list[Any], list[Any]] = ([], [], [], [])
    docs = []
    for ord_, s in enumerate(sessions, start=1):
        docs.append(
            {
                "name": s.name,
                "description": s.description,
                "tags": list(s.tags),
                "metadata": s.metadata,
                "devices": list(s.device_ids),
                "files": list(s.file_ids),
                "min": s.bounds[0],
                "max": s.bounds[1],
            }
        )
        for field_id, (field_type, value) in s.values.items():
            field_ids.add(field_id)
            value_ord.append(ord_)
            value_ids.append(field_id)
            column = _COLUMN_OF_TYPE[field_type]
            for i, values in enumerate(typed):
                values.append(_storable(value) if i == column else None)
    pending = await tx.send(
        _CREATE_SESSIONS,
        [
            org_id,
            [s.session_id for s in sessions],
            [s.record for s in sessions],
            [s.request_id for s in sessions],
            [s.request_digest for s in sessions],
            Jsonb(docs, dumps=_dumps),
            now,
            principal_id,
            record_version,
            sorted(field_ids),
            value_ord,
            value_ids,
            *typed,
        ],
    )
    return StoreReport(pending)


_DELETE_SESSION = f"""
WITH head AS (
    INSERT INTO change_feeds AS feed (org_id, revision) VALUES ($1, 1)
    ON CONFLICT (org_id) DO UPDATE SET revision = feed.revision + 1
    RETURNING feed.revision
), gone AS (
    DELETE FROM sessions WHERE org_id = {ORG} AND session_id = $2 RETURNING session_id
), changed AS (
    INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record, tags, device_ids)
    SELECT $1, head.revision, gone.session_id, 'deleted', NULL, $3::text[], $4::text[]
    FROM head, gone
)
SELECT ARRAY[head.revision], true, ARRAY[]::text[]
FROM head
"""


async def delete_session(
    tx: Tx, org_id: str, session_id: str, tags: Sequence[str], device_ids: Sequence[str]
) -> StoreReport:
    """Sends the statement that deletes a (locked) session with everything it owns and records a
    ``deleted`` change that keeps the tags and devices it had, so that a watcher filtering on
    them learns of it (read as ``store_sessions``)."""
    return StoreReport(
        await tx.send(_DELETE_SESSION, [org_id, session_id, list(tags), list(device_ids)])
    )


# --- idempotency keys ----------------------------------------------------------------------------


# Joined on the request IDs as rows, on both columns of their unique key (``storage.id_rows``).
_FIND_REQUEST_IDS = f"""
SELECT s.request_id, s.session_id, s.request_digest
FROM {_WANTED} AS wanted(request_id, org_id)
JOIN sessions s ON s.org_id = wanted.org_id AND s.request_id = wanted.request_id
"""


async def find_request_ids(
    tx: Tx, org_id: str, request_ids: Sequence[str]
) -> dict[str, tuple[str, bytes | None]]:
    """The sessions created with these request IDs: request ID → (session ID, request digest)."""
    rows = await tx.rows(_FIND_REQUEST_IDS, [org_id, list(request_ids)])
    return {row[0]: (row[1], row[2]) for row in rows}


# --- contributions and attachments ---------------------------------------------------------------

# The file IDs come as one text, a line each, and bounds that are all NULL as empty arrays (unnest
# pads the shorter arrays with NULLs): psycopg dumps each element of an array parameter as an
# object of its own, which for 10,000 files was a megabyte for one request. (IDs are validated
# before: letters, digits and "_" only.)
_FILE_ID_ROWS = id_rows("string_to_array($3::text, E'\\n')")
_ADD_CONTRIBUTIONS = f"""
WITH wanted AS (
    SELECT * FROM unnest(string_to_array($3::text, E'\\n'), $4::int8[], $5::int8[])
        WITH ORDINALITY AS u(file_id, range_min_ns, range_max_ns, ord)
), found AS (
    -- KEY SHARE keeps the files from being deleted, or their offsets changed, until COMMIT.
    -- A probe of the primary key per file (``storage.id_rows``).
    SELECT f.file_id FROM files f
    WHERE (f.file_id, f.org_id) IN (SELECT * FROM {_FILE_ID_ROWS})
    FOR KEY SHARE
), added AS (
    INSERT INTO session_files
        (org_id, session_id, file_id, range_min_ns, range_max_ns, created_by, modified_by)
    SELECT $1, $2, w.file_id, w.range_min_ns, w.range_max_ns, $6, $6
    FROM wanted w JOIN found f ON f.file_id = w.file_id
    ORDER BY w.ord
    ON CONFLICT (org_id, session_id, file_id) DO UPDATE SET
        range_min_ns = EXCLUDED.range_min_ns, range_max_ns = EXCLUDED.range_max_ns,
        modified = now(), modified_by = EXCLUDED.modified_by
)
SELECT ARRAY(SELECT w.file_id FROM wanted w
             WHERE NOT EXISTS (SELECT 1 FROM found f WHERE f.file_id = w.file_id)
             ORDER BY w.ord)
"""


async def add_contributions(
    tx: Tx, caller: Caller, session_id: str, specs: Sequence[ContributionSpec]
) -> None:
    """Adds or replaces a (locked) session's contributions, in one statement; NOT_FOUND naming
    every file not in the org (nothing is added then: the transaction rolls back).

    ``specs`` is gone through once (twice when a file has a window), its file IDs joined a
    thousand at a time: up to 10,000 of them are never all kept as objects at once."""
    chunks: list[str] = []
    batch: list[str] = []
    windowed = False
    for spec in specs:
        batch.append(spec.file_id)
        windowed = windowed or spec.range_min_ns is not None
        if len(batch) == 1000:
            chunks.append("\n".join(batch))
            batch.clear()
    chunks.append("\n".join(batch))
    file_ids = "\n".join(c for c in chunks if c)
    chunks.clear()
    row = await tx.one(
        _ADD_CONTRIBUTIONS,
        [
            caller.org_id,
            session_id,
            file_ids,
            [s.range_min_ns for s in specs] if windowed else [],
            [s.range_max_ns for s in specs] if windowed else [],
            caller.principal_id,
        ],
    )
    if row[0]:
        raise NotFound("file", list(row[0]))


async def remove_contributions(
    tx: Tx, org_id: str, session_id: str, file_ids: Sequence[str]
) -> None:
    await tx.run(
        "DELETE FROM session_files"
        " WHERE org_id = $1 AND session_id = $2 AND file_id = ANY($3::text[])",
        [org_id, session_id, list(file_ids)],
    )


_ATTACH_DEVICE = """
WITH device AS (
    SELECT device_id FROM devices WHERE org_id = $1 AND device_id = $3 FOR KEY SHARE
), attached AS (
    INSERT INTO session_devices (org_id, session_id, device_id, attached_by)
    SELECT $1, $2, device_id, $4 FROM device
    ON CONFLICT DO NOTHING
    RETURNING device_id
)
SELECT EXISTS (SELECT 1 FROM device), EXISTS (SELECT 1 FROM attached)
"""


async def attach_device(tx: Tx, caller: Caller, session_id: str, device_id: str) -> bool:
    """Attaches a device to a (locked) session; NOT_FOUND when the device is not in the org,
    False when it was attached already."""
    exists, attached = await tx.one(
        _ATTACH_DEVICE, [caller.org_id, session_id, device_id, caller.principal_id]
    )
    if not exists:
        raise NotFound("device", [device_id])
    return bool(attached)


async def detach_device(tx: Tx, org_id: str, session_id: str, device_id: str) -> bool:
    """Detaches a device; False when it was not attached."""
    row = await tx.row(
        "DELETE FROM session_devices WHERE org_id = $1 AND session_id = $2 AND device_id = $3"
        " RETURNING device_id",
        [org_id, session_id, device_id],
    )
    return row is not None


# --- records written by an older encoding --------------------------------------------------------

_STALE_BATCH = f"""
    SELECT s.org_id, {_LOCKED_COLUMNS}
    FROM sessions s
    WHERE s.record_version < $1
    ORDER BY s.org_id, s.session_id
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
"""
_STORE_RECORDS = """
    UPDATE sessions s SET wire_record = u.record, record_version = $1
    FROM unnest($2::text[], $3::text[], $4::bytea[]) AS u(org_id, session_id, record)
    WHERE s.org_id = u.org_id AND s.session_id = u.session_id
"""


_STALE_BATCH_IN_ORG = f"""
    SELECT s.org_id, {_LOCKED_COLUMNS}
    FROM sessions s
    WHERE s.record_version < $1 AND s.org_id = $3
    ORDER BY s.session_id
    LIMIT $2
    FOR UPDATE OF s SKIP LOCKED
"""


async def lock_stale_in_org(
    tx: Tx, org_id: str, version: int, limit: int
) -> list[tuple[str, LockedSession]]:
    """``lock_stale`` for one org's sessions (what a listing that met a stale record rewrites
    before reading its page again)."""
    rows = await tx.rows(_STALE_BATCH_IN_ORG, [version, limit, org_id])
    return [(row[0], _locked(row[1:])) for row in rows]


async def lock_stale(tx: Tx, version: int, limit: int) -> list[tuple[str, LockedSession]]:
    """Up to ``limit`` sessions (of any org) whose record an encoding older than ``version``
    wrote, locked; sessions locked by writers are skipped (their write stores a current record
    anyway)."""
    rows = await tx.rows(_STALE_BATCH, [version, limit])
    return [(row[0], _locked(row[1:])) for row in rows]


async def store_records(tx: Tx, version: int, records: Sequence[tuple[str, str, bytes]]) -> None:
    """Stores re-encoded records ((org ID, session ID, record), of locked sessions): not a
    change of the sessions, so neither their revision nor the feed moves."""
    await tx.run(
        _STORE_RECORDS,
        [
            version,
            [org_id for org_id, _, _ in records],
            [session_id for _, session_id, _ in records],
            [record for _, _, record in records],
        ],
    )


async def count_stale(tx: Tx, version: int, cap: int) -> int:
    """How many records an encoding older than ``version`` wrote, counting up to ``cap``."""
    row = await tx.one(
        "SELECT count(*) FROM (SELECT 1 FROM sessions WHERE record_version < $1 LIMIT $2) s",
        [version, cap],
    )
    return int(row[0])
