"""The unit of work of every write of sessions.

Every use case that changes a session — its own fields, its files, devices, custom-field values,
metrics, or a catalog row its record or bounds depend on — runs inside :func:`write_sessions`,
which hands it a :class:`SessionWrites` and, when the use case returns, ends the write in one
place (:meth:`SessionWrites._finish`):

* each affected session was locked once, through this object (``lock``, ``lock_dependents``,
  or made by ``create``);
* bounds are recomputed for every session whose contributions, or whose files, changed;
* each session's record is encoded once, from the state read under the lock plus the changes;
* the record, the columns, the values and one change per session are stored by one statement
  that takes the org's next revisions (``storage.sessions``), and COMMIT travels with it;
* once committed, the org's change-feed readers are woken (``storage.sessions.notify_changes``).

A use case cannot skip any of this: it has no other way to write a session (the statements live
in ``storage.sessions`` and take drafts only from here), and the ending is not its to call.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

from flightlog_server.domain.errors import NotFound, RevisionMismatch
from flightlog_server.domain.rules import new_id
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldDef,
    CustomFieldType,
    FieldValue,
    SessionState,
)
from flightlog_server.storage import sessions as sql
from flightlog_server.storage.database import Database, Tx

T = TypeVar("T")


@dataclass(frozen=True)
class RecordFormat:
    """How a session's stored record is made: ``encode`` (the API's serialized ``Session``, set
    by the wiring) and the ``version`` of that encoding, stored with every record so that records
    written by an older encoder can be found and rewritten (``admin reencode-sessions``)."""

    version: int
    encode: Callable[[SessionState], bytes]


@dataclass
class SessionDraft:
    """A locked session and what the write changes in it. Use cases change the public fields
    (``name``, ``description``, ``tags``, ``metadata``) and call the methods; a draft whose
    ``kind`` is set when the write ends is stored, with one change of that kind."""

    locked: sql.LockedSession
    name: str | None
    description: str | None
    tags: list[str]
    metadata: dict[str, Any]
    device_ids: list[str]
    bounds: tuple[int | None, int | None]
    # The Ready custom-field values the record shows, by name.
    shown: dict[str, tuple[CustomFieldType, FieldValue]]
    # Custom-field values to write, by field ID; None clears.
    values: dict[str, tuple[CustomFieldType, FieldValue | None]] = field(default_factory=dict)
    metrics: dict[str, float] = field(default_factory=dict)
    metrics_device: str | None = None
    kind: str | None = None
    touch: bool = True
    bounds_stale: bool = False

    @property
    def session_id(self) -> str:
        return self.locked.session_id

    @property
    def revision(self) -> int:
        """The revision the session had when it was locked."""
        return self.locked.revision

    def changed(self, kind: str, *, touch: bool = True) -> None:
        """Marks the session changed (the first kind given names the change); ``touch`` updates
        ``modified``/``modified_by`` (metric values alone do not)."""
        if self.kind is None:
            self.kind = kind
            self.touch = touch
        else:
            self.touch = self.touch or touch

    def set_value(self, definition: CustomFieldDef, value: FieldValue | None) -> None:
        """Sets (or, with None, clears) a Ready custom field's value."""
        self.values[definition.custom_field_id] = (definition.type, value)
        if value is None:
            self.shown.pop(definition.name, None)
        else:
            self.shown[definition.name] = (definition.type, value)

    def publish(self, metrics: dict[str, float], device_id: str | None) -> None:
        """Upserts metric values (metric ID → value) with their device (None: no device)."""
        self.metrics.update(metrics)
        self.metrics_device = device_id


def _draft(locked: sql.LockedSession) -> SessionDraft:
    return SessionDraft(
        locked=locked,
        name=locked.name,
        description=locked.description,
        tags=list(locked.tags),
        metadata=dict(locked.metadata),
        device_ids=list(locked.device_ids),
        bounds=(locked.min_timestamp_ns, locked.max_timestamp_ns),
        shown=dict(locked.custom_fields),
    )


@dataclass(frozen=True)
class NewSessionSpec:
    """A session to create: everything but what the write decides (ID, times, revision)."""

    name: str | None
    description: str | None
    tags: Sequence[str]
    metadata: dict[str, Any]
    device_ids: Sequence[str]
    # Custom-field values, by definition (Ready, checked by the caller).
    values: Sequence[tuple[CustomFieldDef, FieldValue]]
    request_id: str | None = None
    request_digest: bytes | None = None
    bounds: tuple[int | None, int | None] = (None, None)
    file_ids: Sequence[str] = ()


@dataclass(frozen=True)
class WriteResult:
    """What a write left: the sessions written, by ID, and the org's Ready custom-field names
    (a session shows every one of them, unset ones null)."""

    sessions: dict[str, WrittenSession]
    ready_fields: tuple[str, ...]


@dataclass(frozen=True)
class WrittenSession:
    """A session as the write left it: its stored record (revision included) and revision;
    ``record`` is None for a deleted session."""

    session_id: str
    revision: int
    record: bytes | None


class SessionWrites:
    """The unit of work: see the module doc. Made by :func:`write_sessions` only."""

    def __init__(self, tx: Tx, caller: Caller, record_format: RecordFormat) -> None:
        self.tx = tx
        self.caller = caller
        self.org_id = caller.org_id
        self.record_format = record_format
        # Python's clock, not the transaction's: the record is encoded before it is stored.
        # (Microseconds, like PostgreSQL's timestamps, so that the record and the columns agree.)
        self.now = dt.datetime.now(dt.UTC)
        self._drafts: dict[str, SessionDraft] = {}
        self._created: list[tuple[str, NewSessionSpec]] = []
        self._deleted: list[SessionDraft] = []

    # --- locking -------------------------------------------------------------------------------

    async def lock(self, session_id: str, expected_revision: int | None = None) -> SessionDraft:
        """Locks one session for this write; NOT_FOUND when it is not in the org, ABORTED when
        ``expected_revision`` is given and stale."""
        (draft,) = await self.lock_many([session_id])
        if expected_revision is not None and expected_revision != draft.revision:
            raise RevisionMismatch(expected_revision, draft.revision)
        return draft

    async def lock_many(self, session_ids: Sequence[str]) -> list[SessionDraft]:
        """Locks sessions (in ID order, whatever the order given) and returns their drafts in
        the order given; NOT_FOUND naming every one that is not in the org."""
        wanted = list(dict.fromkeys(session_ids))
        self._check_unlocked(wanted)
        locked = await sql.lock_sessions(self.tx, self.org_id, wanted)
        found = {s.session_id: s for s in locked}
        missing = [s for s in wanted if s not in found]
        if missing:
            raise NotFound("session", missing)
        drafts = {s.session_id: self._keep(_draft(s)) for s in locked}
        return [drafts[s] for s in wanted]

    async def lock_dependents(self, parent: sql.Parent, parent_id: str) -> list[SessionDraft]:
        """Locks the sessions that depend on a catalog row, then the row (``storage``'s one
        protocol for it); NOT_FOUND when the row is not in the org."""
        locked = await sql.lock_dependents(self.tx, self.org_id, parent, parent_id)
        self._check_unlocked([s.session_id for s in locked])
        return [self._keep(_draft(s)) for s in locked]

    def _check_unlocked(self, session_ids: Sequence[str]) -> None:
        # Locking a session twice would read it again over the changes already made to it.
        again = [s for s in session_ids if s in self._drafts]
        if again:
            raise AssertionError(f"sessions locked twice in one write: {again}")

    def _keep(self, draft: SessionDraft) -> SessionDraft:
        self._drafts[draft.session_id] = draft
        return draft

    # --- what SQL computes ---------------------------------------------------------------------

    async def add_contributions(
        self, draft: SessionDraft, specs: Sequence[ContributionSpec]
    ) -> None:
        """Adds or replaces file contributions; NOT_FOUND naming every file not in the org."""
        await sql.add_contributions(self.tx, self.caller, draft.session_id, specs)
        draft.bounds_stale = True

    async def remove_contributions(self, draft: SessionDraft, file_ids: Sequence[str]) -> None:
        await sql.remove_contributions(self.tx, self.org_id, draft.session_id, file_ids)
        draft.bounds_stale = True

    async def attach_device(self, draft: SessionDraft, device_id: str) -> bool:
        """Attaches a device (NOT_FOUND when it is not in the org); False when it already was."""
        attached = await sql.attach_device(self.tx, self.caller, draft.session_id, device_id)
        if attached:
            draft.device_ids.append(device_id)
        return attached

    async def detach_device(self, draft: SessionDraft, device_id: str) -> bool:
        """Detaches a device; False when it was not attached."""
        detached = await sql.detach_device(self.tx, self.org_id, draft.session_id, device_id)
        if detached:
            draft.device_ids.remove(device_id)
        return detached

    async def refresh(self, drafts: Sequence[SessionDraft], kind: str, *, bounds: bool) -> None:
        """After a change of a catalog row the drafts depend on (a file's offset, a device, a
        custom field's status): reads them again, with their bounds recomputed first when
        ``bounds``, and marks them changed."""
        if not drafts:
            return
        ids = [d.session_id for d in drafts]
        if bounds:
            await sql.recompute_bounds(self.tx, self.org_id, ids)
        for draft, locked in zip(
            drafts, await sql.lock_sessions(self.tx, self.org_id, ids), strict=True
        ):
            fresh = _draft(locked)
            draft.locked = locked
            draft.device_ids = fresh.device_ids
            draft.bounds = fresh.bounds
            draft.shown = fresh.shown
            draft.changed(kind)

    # --- creating and deleting -----------------------------------------------------------------

    def create(self, spec: NewSessionSpec) -> str:
        """Creates a session when the write ends; returns its new ID."""
        session_id = new_id("session")
        self._created.append((session_id, spec))
        return session_id

    def delete(self, draft: SessionDraft) -> None:
        """Deletes a locked session (its contributions, attachments and values go with it)."""
        self._deleted.append(draft)
        del self._drafts[draft.session_id]

    # --- the end of every write ----------------------------------------------------------------

    async def _finish(self) -> Callable[[], Awaitable[WriteResult]]:
        """Sends what ends the write; returns how to read its outcome once committed."""
        changed = [d for d in self._drafts.values() if d.kind is not None]
        stale = [d.session_id for d in changed if d.bounds_stale]
        if stale:
            bounds = await sql.recompute_bounds(self.tx, self.org_id, stale)
            for session_id, value in bounds.items():
                self._drafts[session_id].bounds = value
        sent: list[tuple[list[tuple[str, bytes | None]], sql.StoreReport]] = []
        if changed:
            stored = [self._stored(d) for d in changed]
            report = await sql.store_sessions(
                self.tx,
                self.org_id,
                self.caller.principal_id,
                self.now,
                self.record_format.version,
                stored,
            )
            sent.append(([(s.session_id, s.record) for s in stored], report))
        if self._created:
            new = [self._new(session_id, spec) for session_id, spec in self._created]
            report = await sql.create_sessions(
                self.tx,
                self.org_id,
                self.caller.principal_id,
                self.now,
                self.record_format.version,
                new,
            )
            sent.append(([(n.session_id, n.record) for n in new], report))
        for draft in self._deleted:
            report = await sql.delete_session(
                self.tx, self.org_id, draft.session_id, draft.tags, draft.device_ids
            )
            sent.append(([(draft.session_id, None)], report))

        async def outcome() -> WriteResult:
            result = WriteResult({}, ())
            for sessions, report in sent:
                stored_report = await report.read()
                if stored_report.ready_fields or not result.ready_fields:
                    result = WriteResult(result.sessions, tuple(stored_report.ready_fields))
                for (session_id, record), revision in zip(
                    sessions, stored_report.revisions, strict=True
                ):
                    result.sessions[session_id] = WrittenSession(
                        session_id,
                        revision,
                        None if record is None else record + revision_field(revision),
                    )
            return result

        return outcome

    def _stored(self, draft: SessionDraft) -> sql.StoredSession:
        modified, modified_by = draft.locked.modified, draft.locked.modified_by
        if draft.touch:
            modified, modified_by = self.now, self.caller.principal_id
        state = SessionState(
            session_id=draft.session_id,
            org_id=self.org_id,
            name=draft.name,
            description=draft.description,
            tags=draft.tags,
            metadata=draft.metadata,
            custom_fields=draft.shown,
            min_timestamp_ns=draft.bounds[0],
            max_timestamp_ns=draft.bounds[1],
            created=draft.locked.created,
            created_by=draft.locked.created_by,
            modified=modified,
            modified_by=modified_by,
            revision=0,  # added by the statement that stores it (see storage.sessions)
        )
        assert draft.kind is not None
        return sql.StoredSession(
            session_id=draft.session_id,
            kind=draft.kind,
            record=self.record_format.encode(state),
            name=draft.name,
            description=draft.description,
            tags=draft.tags,
            metadata=draft.metadata,
            device_ids=draft.device_ids,
            touch=draft.touch,
            values=draft.values,
            metrics=draft.metrics,
            metrics_device=draft.metrics_device,
        )

    def _new(self, session_id: str, spec: NewSessionSpec) -> sql.NewSession:
        principal = self.caller.principal_id
        state = SessionState(
            session_id=session_id,
            org_id=self.org_id,
            name=spec.name,
            description=spec.description,
            tags=list(spec.tags),
            metadata=spec.metadata,
            custom_fields={d.name: (d.type, value) for d, value in spec.values},
            min_timestamp_ns=spec.bounds[0],
            max_timestamp_ns=spec.bounds[1],
            created=self.now,
            created_by=principal,
            modified=self.now,
            modified_by=principal,
            revision=0,
        )
        return sql.NewSession(
            session_id=session_id,
            record=self.record_format.encode(state),
            name=spec.name,
            description=spec.description,
            tags=spec.tags,
            metadata=spec.metadata,
            device_ids=spec.device_ids,
            values={d.custom_field_id: (d.type, value) for d, value in spec.values},
            request_id=spec.request_id,
            request_digest=spec.request_digest,
            bounds=spec.bounds,
            file_ids=spec.file_ids,
        )


async def write_sessions(
    database: Database,
    caller: Caller,
    record_format: RecordFormat,
    work: Callable[[SessionWrites], Awaitable[T]],
) -> tuple[T, WriteResult]:
    """Runs ``work`` in one transaction with a fresh :class:`SessionWrites`, ends the write (see
    the module doc) and commits; re-run from the start on a retryable conflict, so ``work`` must
    only touch the database. Returns what ``work`` returned and what was written."""

    async def attempt(tx: Tx) -> tuple[T, WriteResult]:
        writes = SessionWrites(tx, caller, record_format)
        result = await work(writes)
        outcome = await writes._finish()
        await tx.commit()  # sent right behind the last statement: one round trip for both
        written = await outcome()
        if written.sessions:
            last = max(w.revision for w in written.sessions.values())
            await sql.notify_changes(tx, caller.org_id, last)
        return result, written

    return await database.write(attempt)


def revision_field(revision: int) -> bytes:
    """Field 14 (``revision``) of a serialized Session: what the storing statement appends to a
    record in SQL, appended here to the copy kept for the response."""
    out = bytearray([0x70])
    while revision >= 0x80:
        out.append((revision & 0x7F) | 0x80)
        revision >>= 7
    out.append(revision)
    return bytes(out)
