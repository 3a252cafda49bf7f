"""The session use cases: one method per operation of SessionService, in plain Python.

Every write runs in the unit of work (``services.unit_of_work``); reads of records go through
:meth:`Sessions.views`, which also re-encodes a record written by an older encoder on the fly,
so that no caller is ever served a record that lacks what the current encoding has.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, replace

from flightlog_server.domain import metrics, rules
from flightlog_server.domain.errors import (
    FieldViolation,
    InvalidArgument,
    NotFound,
    RequestIdReused,
)
from flightlog_server.domain.metrics import MetricFailure, MetricRecord
from flightlog_server.domain.rules import Violations
from flightlog_server.domain.sessions import (
    INFER,
    KEEP,
    MetricValues,
    NewSession,
    SentValue,
    SessionUpdate,
)
from flightlog_server.domain.types import (
    Caller,
    ContributionSpec,
    CustomFieldDef,
    FieldValue,
)
from flightlog_server.services.unit_of_work import (
    NewSessionSpec,
    RecordFormat,
    SessionDraft,
    SessionWrites,
    WriteResult,
    write_sessions,
)
from flightlog_server.storage import catalog as catalog_store
from flightlog_server.storage import custom_fields as field_store
from flightlog_server.storage import metrics as metric_store
from flightlog_server.storage import sessions as store
from flightlog_server.storage.database import Database, Tx


@dataclass(frozen=True)
class SessionView:
    """A session as the API shows it: its stored record, and the org's Ready custom-field names
    (every one is shown; the record holds the set values, the others are shown null)."""

    record: bytes
    ready_fields: tuple[str, ...]


@dataclass(frozen=True)
class PublishOutcome:
    """What publishing metric values on one session did: the values recorded and the entries
    that failed on their own."""

    recorded: list[MetricRecord]
    failed: list[MetricFailure]


_DraftWork = Callable[[SessionWrites], Awaitable[SessionDraft]]


class MetricIds:
    """Metric IDs by (org, name), kept once read from a committed definition: definitions are
    never deleted or renamed. A definition the caller's own transaction creates is not kept: that
    transaction may still roll back (a retry, a failure later in the call), and another writer
    given its ID would then insert values for a metric that does not exist."""

    def __init__(self, capacity: int = 100_000) -> None:
        self._ids: dict[tuple[str, str], str] = {}
        self._capacity = capacity

    async def resolve(self, tx: Tx, caller: Caller, names: Sequence[str]) -> dict[str, str]:
        org_id = caller.org_id
        ids = {n: self._ids[(org_id, n)] for n in names if (org_id, n) in self._ids}
        missing = [n for n in names if n not in ids]
        if missing:
            found, created = await metric_store.metric_ids(tx, org_id, caller.principal_id, missing)
            if len(self._ids) + len(found) > self._capacity:
                self._ids.clear()
            self._ids.update(((org_id, n), i) for n, i in found.items() if n not in created)
            ids.update(found)
        return ids


class Sessions:
    """SessionService's use cases (the listings of a session's parts live in their own modules
    beside it)."""

    def __init__(self, database: Database, record_format: RecordFormat) -> None:
        self.database = database
        self.record_format = record_format
        self.metric_ids = MetricIds()

    # --- reading -------------------------------------------------------------------------------

    async def get(self, caller: Caller, session_id: str) -> SessionView:
        """NOT_FOUND when the session is not in the org."""
        (view,) = await self.get_many(caller, [session_id])
        return view

    async def get_many(self, caller: Caller, session_ids: Sequence[str]) -> list[SessionView]:
        """The sessions in the order asked; NOT_FOUND naming every one not in the org."""

        async def read(tx: Tx) -> list[SessionView]:
            return await self._views(tx, caller, session_ids)

        return await self.database.query(read)

    async def _views(self, tx: Tx, caller: Caller, session_ids: Sequence[str]) -> list[SessionView]:
        found, ready = await store.records(tx, caller.org_id, list(dict.fromkeys(session_ids)))
        missing = [s for s in dict.fromkeys(session_ids) if s not in found]
        if missing:
            raise NotFound("session", missing)
        stale = [s for s, (_, version) in found.items() if version != self.record_format.version]
        records = {s: record for s, (record, _) in found.items()}
        if stale:
            for session in await store.read_sessions(tx, caller.org_id, stale):
                records[session.session_id] = self.record_format.encode(
                    session.state(caller.org_id)
                )
        return [SessionView(records[s], tuple(ready)) for s in session_ids]

    # --- creating ------------------------------------------------------------------------------

    async def create(self, caller: Caller, new: NewSession) -> SessionView:
        (view,) = await self.create_many(caller, [new])
        return view

    async def create_many(self, caller: Caller, items: Sequence[NewSession]) -> list[SessionView]:
        """Creates the sessions, all or nothing; an item whose ``request_id`` was used before
        with the same body is the session its first call made (see BatchCreateSessions)."""

        async def work(w: SessionWrites) -> tuple[dict[int, str], list[SessionView]]:
            replays = await self._replays(w.tx, caller, items)
            fresh = [(i, item) for i, item in enumerate(items) if i not in replays]
            pending_fields = await field_store.send_definitions_by_names(
                w.tx, caller.org_id, {name for _, item in fresh for name in item.values}
            )
            devices = [d for _, item in fresh for d in item.device_ids]
            if devices:
                missing = await catalog_store.missing_devices(w.tx, caller.org_id, devices)
                if missing:
                    raise NotFound("device", missing)
            definitions = await pending_fields.read()
            v = Violations()
            created: dict[int, str] = {}
            for index, item in fresh:
                # On create, a null leaves the field unset.
                values = [
                    (definition, value)
                    for definition, value in _checked_values(v, item.values, definitions)
                    if value is not None
                ]
                spec = NewSessionSpec(
                    name=item.name,
                    description=item.description,
                    tags=item.tags,
                    metadata=item.metadata,
                    device_ids=item.device_ids,
                    values=values,
                    request_id=item.request_id,
                    request_digest=item.request_digest,
                )
                if item.dataset_id is not None:
                    contents = await catalog_store.dataset_contents(
                        w.tx, caller.org_id, item.dataset_id
                    )
                    spec = replace(
                        spec,
                        device_ids=contents.device_ids,
                        bounds=contents.bounds,
                        file_ids=contents.file_ids,
                    )
                created[index] = w.create(spec)
            v.raise_if_any()
            replayed = await self._views(w.tx, caller, list(replays.values())) if replays else []
            return created, replayed

        (created, replayed), result = await write_sessions(
            self.database, caller, self.record_format, work
        )
        replay_views = iter(replayed)
        return [
            self._view(result, created[i]) if i in created else next(replay_views)
            for i in range(len(items))
        ]

    async def _replays(self, tx: Tx, caller: Caller, items: Sequence[NewSession]) -> dict[int, str]:
        """The items whose ``request_id`` made a session already: index → that session.
        ALREADY_EXISTS (REQUEST_ID_REUSED) when it was made from another body."""
        keys = [item.request_id for item in items if item.request_id]
        if not keys:
            return {}
        found = await store.find_request_ids(tx, caller.org_id, keys)
        replays: dict[int, str] = {}
        for index, item in enumerate(items):
            hit = found.get(item.request_id or "")
            if hit is None:
                continue
            session_id, digest = hit
            if digest != item.request_digest:
                where = f"requests[{index}]: " if len(items) > 1 else ""
                raise RequestIdReused(
                    f"{where}request_id {item.request_id!r} was already used with a different"
                    " request"
                )
            replays[index] = session_id
        return replays

    # --- updating ------------------------------------------------------------------------------

    async def update(self, caller: Caller, update: SessionUpdate) -> SessionView:
        async def work(w: SessionWrites) -> str:
            pending_fields = await field_store.send_definitions_by_names(
                w.tx, caller.org_id, update.values
            )
            draft = await w.lock(update.session_id, update.expected_revision)
            definitions = await pending_fields.read()
            v = Violations()
            if update.name is not KEEP:
                draft.name = update.name
            if update.description is not KEEP:
                draft.description = update.description
            if update.changes_metadata:
                draft.tags = rules.apply_tag_changes(
                    draft.tags, update.put_tags, update.remove_tags
                )
                rules.check_tags(v, "metadata_changeset.put_tags", draft.tags)
                draft.metadata = rules.apply_metadata_changes(
                    draft.metadata, update.put_fields, list(update.remove_fields)
                )
                rules.check_metadata(v, "metadata_changeset.put_fields", draft.metadata)
            for definition, value in _checked_values(v, update.values, definitions):
                draft.set_value(definition, value)
            v.raise_if_any()
            draft.changed("updated")
            if update.metrics is not None:
                await self._publish(w, caller, draft, update.metrics, strict=True)
            return draft.session_id

        session_id, result = await write_sessions(self.database, caller, self.record_format, work)
        return self._view(result, session_id)

    async def delete(self, caller: Caller, session_id: str, expected_revision: int | None) -> None:
        async def work(w: SessionWrites) -> None:
            w.delete(await w.lock(session_id, expected_revision))

        await write_sessions(self.database, caller, self.record_format, work)

    # --- contributions and devices -------------------------------------------------------------

    async def add_files(
        self,
        caller: Caller,
        session_id: str,
        specs: Sequence[ContributionSpec],
        expected_revision: int | None,
    ) -> SessionView:
        async def work(w: SessionWrites) -> SessionDraft:
            draft = await w.lock(session_id, expected_revision)
            await w.add_contributions(draft, specs)
            draft.changed("files_changed")
            return draft

        return await self._one(caller, work)

    async def remove_files(
        self,
        caller: Caller,
        session_id: str,
        file_ids: Sequence[str],
        expected_revision: int | None,
    ) -> SessionView:
        async def work(w: SessionWrites) -> SessionDraft:
            draft = await w.lock(session_id, expected_revision)
            await w.remove_contributions(draft, file_ids)
            draft.changed("files_changed")
            return draft

        return await self._one(caller, work)

    async def attach_device(
        self, caller: Caller, session_id: str, device_id: str, expected_revision: int | None
    ) -> SessionView:
        """Attaching an attached device changes nothing (no new revision, nothing in the
        feed), so that a retry is harmless."""

        async def work(w: SessionWrites) -> SessionDraft:
            draft = await w.lock(session_id, expected_revision)
            if await w.attach_device(draft, device_id):
                draft.changed("devices_changed")
            return draft

        return await self._one(caller, work)

    async def detach_device(
        self, caller: Caller, session_id: str, device_id: str, expected_revision: int | None
    ) -> SessionView:
        async def work(w: SessionWrites) -> SessionDraft:
            draft = await w.lock(session_id, expected_revision)
            if await w.detach_device(draft, device_id):
                draft.changed("devices_changed")
            return draft

        return await self._one(caller, work)

    # --- metrics -------------------------------------------------------------------------------

    async def publish_metrics(
        self, caller: Caller, items: Sequence[tuple[str, MetricValues]]
    ) -> list[PublishOutcome]:
        """Publishes metric values on each session (named once each), in one transaction;
        entries that fail on their own are reported per session."""

        async def work(w: SessionWrites) -> list[PublishOutcome]:
            drafts = await w.lock_many([session_id for session_id, _ in items])
            return [
                await self._publish(w, caller, draft, values)
                for draft, (_, values) in zip(drafts, items, strict=True)
            ]

        outcomes, _ = await write_sessions(self.database, caller, self.record_format, work)
        return outcomes

    async def _publish(
        self,
        w: SessionWrites,
        caller: Caller,
        draft: SessionDraft,
        values: MetricValues,
        *,
        strict: bool = False,
    ) -> PublishOutcome:
        """Publishes on a locked session. With ``strict`` (UpdateSession), an entry that fails
        on its own fails the call instead of being reported."""
        accepted, failures = metrics.split_entries(values.entries)
        if strict and failures:
            raise InvalidArgument(
                [FieldViolation(f"{values.path}[{f.index}]", f.reason) for f in failures]
            )
        if values.device is INFER:
            device_id: str | None = metrics.inferred_device(draft.device_ids, values.device_path)
        else:
            device_id = values.device
            if device_id is not None:
                missing = await catalog_store.missing_devices(w.tx, caller.org_id, [device_id])
                if missing:
                    raise NotFound("device", missing)
        if not accepted:
            return PublishOutcome([], failures)
        ids = await self.metric_ids.resolve(w.tx, caller, [e.name for e in accepted])
        draft.publish({ids[e.name]: e.value for e in accepted}, device_id)
        draft.changed("metrics_published", touch=False)
        low, high = draft.bounds
        return PublishOutcome(
            [
                MetricRecord(
                    metric_id=ids[e.name],
                    name=e.name,
                    session_id=draft.session_id,
                    value=e.value,
                    device_id=device_id,
                    min_timestamp_ns=low,
                    max_timestamp_ns=high,
                    published=w.now,
                    published_by=caller.principal_id,
                )
                for e in accepted
            ],
            failures,
        )

    # --- helpers -------------------------------------------------------------------------------

    async def _one(self, caller: Caller, work: _DraftWork) -> SessionView:
        """Runs a write of one session and returns it as it is afterwards: as written, or, when
        the write turned out to change nothing, as it is under the write's lock. (Read after the
        commit instead, it could show a later write's state under this call's answer: a no-op
        attach answering with a revision at which another call had detached the device.)"""

        async def work_and_read(w: SessionWrites) -> tuple[SessionDraft, SessionView | None]:
            draft = await work(w)
            if draft.kind is not None:
                return draft, None
            (unchanged,) = await self._views(w.tx, caller, [draft.session_id])
            return draft, unchanged

        (draft, unchanged), result = await write_sessions(
            self.database, caller, self.record_format, work_and_read
        )
        return unchanged or self._view(result, draft.session_id)

    def _view(self, result: WriteResult, session_id: str) -> SessionView:
        record = result.sessions[session_id].record
        assert record is not None
        return SessionView(record, result.ready_fields)


def _checked_values(
    v: Violations, sent: Mapping[str, SentValue], definitions: Mapping[str, CustomFieldDef]
) -> list[tuple[CustomFieldDef, FieldValue | None]]:
    """The values sent (None: clear), checked against their Ready definitions, each bad one a
    violation of the request field that sent it."""
    checked: list[tuple[CustomFieldDef, FieldValue | None]] = []
    for name in sorted(sent):
        definition = definitions.get(name)
        ok, value = rules.coerce_field_value(v, sent[name].path, definition, sent[name].value)
        if ok and definition is not None:
            checked.append((definition, value))
    return checked
