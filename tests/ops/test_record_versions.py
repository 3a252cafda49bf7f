"""Stored session records outlive the encoding that wrote them, and are brought up to date.

An older server is stood for by an encoder that leaves ``created_by`` out, one version below
this server's, whose encoder fills it: as a new release whose encoding gained a field would.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator

import psycopg
import pytest

from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.__main__ import main
from flightlog_server.app import SESSION_RECORDS, ServerSettings
from flightlog_server.domain.types import SessionState
from flightlog_server.rpc import convert
from flightlog_server.services.unit_of_work import RecordFormat
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.migrate import upgrade
from flightlog_server.storage.urls import libpq_conninfo
from tests.conftest import CreateDatabase
from tests.support import Identity, ServerThread, Stubs, create_identity, session_row_locked


def _without_created_by(state: SessionState) -> bytes:
    message = convert.session_message(state)
    message.ClearField("created_by")
    return message.SerializeToString(deterministic=True)


NEW = SESSION_RECORDS
OLD = RecordFormat(NEW.version - 1, _without_created_by)


@pytest.fixture
def url(create_database: CreateDatabase) -> str:
    url = create_database("flightlog_records")
    upgrade(url)
    return url


def _serve(url: str, record_format: RecordFormat) -> ServerThread:
    settings = ServerSettings(
        database=DatabaseSettings(url=url, pool_size=2),
        bind="127.0.0.1:0",
        auth_cache_seconds=0,
        grace_seconds=1,
    )
    return ServerThread(settings, record_format)


def _stored(url: str) -> dict[str, tuple[int, pb.Session]]:
    """Every session's record version and record, as stored."""
    with psycopg.connect(libpq_conninfo(url)) as conn:
        rows = conn.execute("SELECT session_id, record_version, wire_record FROM sessions")
        return {sid: (version, pb.Session.FromString(record)) for sid, version, record in rows}


def _changes(url: str) -> int:
    with psycopg.connect(libpq_conninfo(url)) as conn:
        row = conn.execute("SELECT count(*) FROM session_changes").fetchone()
    assert row is not None
    return int(row[0])


@pytest.fixture
def old_sessions(url: str) -> Iterator[tuple[Identity, list[pb.Session]]]:
    """Sessions written by the older server."""
    identity = create_identity(url, "records-org")
    server = _serve(url, OLD)
    stubs = Stubs(f"127.0.0.1:{server.port}", identity.api_key, identity.org_id)
    try:
        created = [
            stubs.sessions.CreateSession(pb.CreateSessionRequest(name=f"old {i}")).session
            for i in range(5)
        ]
    finally:
        stubs.close()
        server.stop()
    yield identity, created


def test_records_of_an_older_encoding_are_served_whole_then_rewritten(
    url: str,
    old_sessions: tuple[Identity, list[pb.Session]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    identity, created = old_sessions
    ids = [s.session_id for s in created]
    assert all(not s.created_by for s in created)
    stored = _stored(url)
    assert {version for version, _ in stored.values()} == {OLD.version}
    changes = _changes(url)

    with caplog.at_level(logging.WARNING, logger="flightlog.server"):
        server = _serve(url, NEW)
    assert any(
        "5 session records were written by an older encoding" in r.message for r in caplog.records
    )
    stubs = Stubs(f"127.0.0.1:{server.port}", identity.api_key, identity.org_id)
    try:
        # Before the rewrite, reads re-encode: no record without the field is served.
        got = stubs.sessions.GetSession(pb.GetSessionRequest(session_id=ids[0])).session
        assert got.created_by == identity.principal_id
        assert got.revision == created[0].revision
        batch = stubs.sessions.BatchGetSessions(pb.BatchGetSessionsRequest(session_ids=ids))
        assert [s.created_by for s in batch.sessions] == [identity.principal_id] * 5

        assert main(["admin", "--database-url", url, "reencode-sessions", "--batch-size", "2"]) == 0

        stored = _stored(url)
        assert {version for version, _ in stored.values()} == {NEW.version}
        assert {record.created_by for _, record in stored.values()} == {identity.principal_id}
        # A rewrite is not a change: revisions and the feed stay as they were.
        assert {sid: record.revision for sid, (_, record) in stored.items()} == {
            s.session_id: s.revision for s in created
        }
        assert _changes(url) == changes
    finally:
        stubs.close()
        server.stop()


def test_the_rewrite_skips_sessions_writers_hold_and_takes_them_afterwards(
    url: str, old_sessions: tuple[Identity, list[pb.Session]]
) -> None:
    _, created = old_sessions
    held_id = created[0].session_id
    with session_row_locked(url, held_id) as held:
        done = threading.Event()
        outcome: list[int] = []

        def rewrite() -> None:
            outcome.append(main(["admin", "--database-url", url, "reencode-sessions"]))
            done.set()

        worker = threading.Thread(target=rewrite)
        worker.start()
        # The others are rewritten while one is held (the rewrite does not wait for it)...
        while True:
            versions = {sid: version for sid, (version, _) in _stored(url).items()}
            if sum(v == NEW.version for v in versions.values()) == 4:
                break
            assert not done.is_set(), "the rewrite ended with a session left"
        assert versions[held_id] == OLD.version
        held.rollback()  # ...and the held one once it is free.
    worker.join(60)
    assert outcome == [0]
    assert {version for version, _ in _stored(url).values()} == {NEW.version}


@pytest.mark.parametrize(
    "request_",
    [pb.ListSessionsRequest(page_size=2), pb.ListSessionsRequest(page_size=2, order_by="name")],
    ids=["structured", "filter language"],
)
def test_a_listing_never_serves_a_record_of_an_older_encoding(
    url: str, old_sessions: tuple[Identity, list[pb.Session]], request_: pb.ListSessionsRequest
) -> None:
    identity, created = old_sessions
    server = _serve(url, NEW)
    stubs = Stubs(f"127.0.0.1:{server.port}", identity.api_key, identity.org_id)
    try:
        listed = [s for r in stubs.sessions.ListSessions(request_) for s in r.sessions]
        assert sorted(s.session_id for s in listed) == sorted(s.session_id for s in created)
        # Every record has the field the newer encoding fills, and the revisions are unchanged.
        assert {s.created_by for s in listed} == {identity.principal_id}
        assert {s.session_id: s.revision for s in listed} == {
            s.session_id: s.revision for s in created
        }
        # The listing rewrote the records it met, for good.
        assert {version for version, _ in _stored(url).values()} == {NEW.version}
    finally:
        stubs.close()
        server.stop()
