"""WatchSessions and revisions: a resumable change feed, through the generated stub.

Every test works in a brand-new org, so its revisions start at 1 and are predictable. Where a
test needs a change to commit at an exact point of a watch (the seams), it holds the server's
watch loop by wrapping ``ChangeFeed.read`` (``observe_reads`` in ``tests/rpc/watching.py``);
everything else synchronises on what the watcher receives (queues and events), never on sleeps.
The helpers are in ``watching.py``, the fixtures in ``conftest.py``.
"""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import psycopg
import pytest

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from flightlog_server.app import ServerSettings
from flightlog_server.services import change_feed as watch
from flightlog_server.storage.changes import ChangeNotifier, change_notifier
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.urls import libpq_conninfo
from tests.reliability.private_postgres import PrivatePostgres
from tests.rpc.factories import (
    drain,
    make_dataset,
    make_device,
    register_file,
    unique,
)
from tests.rpc.watching import (
    CREATED,
    DELETED,
    DEVICES_CHANGED,
    FILES_CHANGED,
    UPDATED,
    WAIT_S,
    FeedRead,
    Hold,
    Org,
    Watcher,
    age_changes,
    attach,
    create,
    delete,
    detach,
    get,
    notifier_backends,
    observe_reads,
    prune,
    put_fields,
    put_tags,
    rename,
    retained,
    summary,
    write_updates,
)
from tests.support import (
    RpcFailure,
    ServerThread,
    Stubs,
    create_identity,
    rpc_error,
    sql,
)

# --- replay, live, and what each write records ---------------------------------------------------


def test_watch_replays_history_then_streams_live_changes(org: Org, watchers: Any) -> None:
    sessions = [create(org.stubs, name=f"s{i}") for i in range(3)]
    assert [s.revision for s in sessions] == [1, 2, 3]

    watcher = watchers(org.stubs, after_revision=0)
    replayed = watcher.until(3)
    assert summary(replayed) == [(s.revision, s.session_id, CREATED) for s in sessions]
    assert [c.session for c in replayed] == sessions

    updated = rename(org.stubs, sessions[1].session_id, "renamed")
    (live,) = watcher.until(4)
    assert (live.revision, live.session_id, live.kind) == (4, sessions[1].session_id, UPDATED)
    assert live.session == updated
    assert live.HasField("time")


def test_a_caught_up_replay_sends_the_current_revision_even_without_changes(
    org: Org, watchers: Any
) -> None:
    create(org.stubs)
    create(org.stubs)
    now = watchers(org.stubs, after_revision=-1).next()
    assert (list(now.changes), now.revision) == ([], 2)
    filtered = watchers(org.stubs, after_revision=0, kinds=[DELETED]).next()
    assert (list(filtered.changes), filtered.revision) == ([], 2)
    empty = watchers(org.stubs, after_revision=2).next()
    assert (list(empty.changes), empty.revision) == ([], 2)


def test_watch_from_now_sends_only_later_changes(org: Org, watchers: Any) -> None:
    first = create(org.stubs)
    watcher = watchers(org.stubs, after_revision=-1)
    assert watcher.next().revision == 1
    second = create(org.stubs)
    assert summary(watcher.until(2)) == [(2, second.session_id, CREATED)]
    assert first.revision == 1


def test_every_write_records_exactly_one_change_with_the_session_after_it(
    org: Org, watchers: Any
) -> None:
    device = make_device(org.stubs).device_id
    other = make_device(org.stubs).device_id
    dataset = make_dataset(org.stubs)
    file = register_file(org.stubs, dataset.dataset_id, topics=[("/odom", [(100, 200)])])
    watcher = watchers(org.stubs, after_revision=-1)
    start = watcher.next().revision

    created = create(org.stubs, name="a", device_ids=[device])
    updated = rename(org.stubs, created.session_id, "b")
    with_file = org.stubs.sessions.AddSessionFiles(
        pb.AddSessionFilesRequest(
            session_id=created.session_id, files=[pb.SessionFileSpec(file_id=file.file_id)]
        )
    ).session
    without_file = org.stubs.sessions.RemoveSessionFiles(
        pb.RemoveSessionFilesRequest(session_id=created.session_id, file_ids=[file.file_id])
    ).session
    attached = attach(org.stubs, created.session_id, other)
    assert attach(org.stubs, created.session_id, other) == attached  # a no-op: no change
    detached = detach(org.stubs, created.session_id, other)
    assert detach(org.stubs, created.session_id, other) == detached  # a no-op: no change
    delete(org.stubs, created.session_id)

    after_writes = [created, updated, with_file, without_file, attached, detached]
    assert [s.revision for s in after_writes] == list(range(start + 1, start + 7))
    assert with_file.min_timestamp_ns == 100 and not without_file.HasField("min_timestamp_ns")
    changes = watcher.until(start + 7)
    kinds = [CREATED, UPDATED, FILES_CHANGED, FILES_CHANGED, DEVICES_CHANGED, DEVICES_CHANGED]
    assert summary(changes) == [
        *[(s.revision, s.session_id, k) for s, k in zip(after_writes, kinds, strict=True)],
        (start + 7, created.session_id, DELETED),
    ]
    assert [c.session for c in changes[:-1]] == after_writes
    assert not changes[-1].HasField("session")


# --- expected revisions --------------------------------------------------------------------------


def test_a_stale_expected_revision_is_aborted_and_changes_nothing(org: Org, watchers: Any) -> None:
    device = make_device(org.stubs).device_id
    dataset = make_dataset(org.stubs)
    file = register_file(org.stubs, dataset.dataset_id, topics=[("/odom", [(1, 2)])])
    session = create(org.stubs, name="original")
    current = attach(org.stubs, session.session_id, device)
    stale = current.revision - 1
    sid = session.session_id
    watcher = watchers(org.stubs, after_revision=-1)
    assert watcher.next().revision == current.revision

    def update() -> Any:
        return rename(org.stubs, sid, "changed", expected_revision=stale)

    def add_files() -> Any:
        return org.stubs.sessions.AddSessionFiles(
            pb.AddSessionFilesRequest(
                session_id=sid,
                files=[pb.SessionFileSpec(file_id=file.file_id)],
                expected_revision=stale,
            )
        )

    def remove_files() -> Any:
        return org.stubs.sessions.RemoveSessionFiles(
            pb.RemoveSessionFilesRequest(
                session_id=sid, file_ids=[file.file_id], expected_revision=stale
            )
        )

    calls: dict[str, Callable[[], Any]] = {
        "UpdateSession": update,
        "DeleteSession": lambda: delete(org.stubs, sid, expected_revision=stale),
        "AddSessionFiles": add_files,
        "RemoveSessionFiles": remove_files,
        "AttachSessionDevice": lambda: attach(
            org.stubs, sid, make_device(org.stubs).device_id, expected_revision=stale
        ),
        "DetachSessionDevice": lambda: detach(org.stubs, sid, device, expected_revision=stale),
    }
    for name, call in calls.items():
        failed = rpc_error(call)
        assert (failed.code, failed.reason) == (grpc.StatusCode.ABORTED, "REVISION_MISMATCH"), name
        assert failed.metadata == {
            "expected_revision": str(stale),
            "current_revision": str(current.revision),
        }, name
        assert get(org.stubs, sid) == current, name

    # Nothing was recorded: the next write takes the very next revision, and it is all the feed
    # has after the session's revision. The expected revision, when current, is accepted.
    renamed = rename(org.stubs, sid, "changed", expected_revision=current.revision)
    assert renamed.revision == current.revision + 1
    assert summary(watcher.until(renamed.revision)) == [(renamed.revision, sid, UPDATED)]
    delete(org.stubs, sid, expected_revision=renamed.revision)
    assert summary(watcher.until(renamed.revision + 1)) == [(renamed.revision + 1, sid, DELETED)]


# --- ordering and completeness under concurrent writers ------------------------------------------

WRITERS = 4
ROUNDS = 5


@dataclass
class Acknowledged:
    lock: threading.Lock = field(default_factory=threading.Lock)
    writes: list[tuple[str, int, int | None]] = field(default_factory=list)  # (id, kind, rev)

    def add(self, session_id: str, kind: int, revision: int | None) -> None:
        with self.lock:
            self.writes.append((session_id, kind, revision))


def run_writer(org: Org, index: int, device: str, shared: str, acks: Acknowledged) -> None:
    """A bounded script of writes: creates, updates, attaches, deletes, and updates of a session
    every writer shares (so writers contend for one row as well as for the org revision)."""
    for i in range(ROUNDS):
        s = create(org.stubs, name=f"w{index}-{i}", tags=[f"w{index}"])
        acks.add(s.session_id, CREATED, s.revision)
        s = put_tags(org.stubs, s.session_id, "x")
        acks.add(s.session_id, UPDATED, s.revision)
        s = attach(org.stubs, s.session_id, device)
        acks.add(s.session_id, DEVICES_CHANGED, s.revision)
        t = put_fields(org.stubs, shared, **{f"w{index}": i})
        acks.add(shared, UPDATED, t.revision)
        if i % 2 == 0:
            delete(org.stubs, s.session_id)
            acks.add(s.session_id, DELETED, None)


def rebuild(changes: list[pb.SessionChange]) -> dict[str, pb.Session]:
    state: dict[str, pb.Session] = {}
    for change in changes:
        if change.kind == DELETED:
            del state[change.session_id]
        else:
            state[change.session_id] = change.session
    return state


def test_concurrent_writers_every_watcher_sees_every_change_once_in_order(
    org: Org, watchers: Any
) -> None:
    devices = [make_device(org.stubs).device_id for _ in range(WRITERS)]
    shared = create(org.stubs, name="shared")
    acks = Acknowledged()
    acks.add(shared.session_id, CREATED, shared.revision)
    total = 1 + WRITERS * (ROUNDS * 4 + (ROUNDS + 1) // 2)

    full = watchers(org.stubs, after_revision=0)
    resumed = watchers(org.stubs, after_revision=0)
    threads = [
        threading.Thread(target=run_writer, args=(org, i, devices[i], shared.session_id, acks))
        for i in range(WRITERS)
    ]
    for t in threads:
        t.start()

    # The second watcher disconnects halfway through and resumes from the last revision it got.
    first_half: list[pb.SessionChange] = []
    while len(first_half) < total // 2:
        first_half.extend(resumed.next().changes)
    resumed.cancel()
    resumed_again = watchers(org.stubs, after_revision=resumed.revision)

    for t in threads:
        t.join(WAIT_S * 4)
    assert len(acks.writes) == total
    final = rename(org.stubs, shared.session_id, "the end")
    assert final.revision == total + 1

    everything = full.until(final.revision)
    second_half = resumed_again.until(final.revision)
    expected_revisions = list(range(1, final.revision + 1))
    assert [c.revision for c in everything] == expected_revisions
    assert [c.revision for c in first_half + second_half] == expected_revisions
    assert summary(first_half + second_half) == summary(everything)

    # Every acknowledged write is in the feed, as what the writer was told.
    by_revision = {c.revision: c for c in everything}
    for session_id, kind, revision in acks.writes:
        if revision is not None:
            assert (by_revision[revision].session_id, by_revision[revision].kind) == (
                session_id,
                kind,
            )
    deletions = sorted(sid for sid, kind, _ in acks.writes if kind == DELETED)
    assert sorted(c.session_id for c in everything if c.kind == DELETED) == deletions

    # The state rebuilt from the feed is what the service lists.
    listed, _ = drain(org.stubs.sessions.ListSessions(pb.ListSessionsRequest()), "sessions")
    assert rebuild(everything) == {s.session_id: s for s in listed}
    assert rebuild(everything)[shared.session_id] == get(org.stubs, shared.session_id)


# --- the seams -----------------------------------------------------------------------------------


def test_changes_committed_during_a_replay_are_neither_lost_nor_repeated(
    org: Org, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "BATCH_ROWS", 4)
    session = create(org.stubs)
    assert write_updates(org.stubs, session.session_id, 9) == 10
    hold = Hold(org.org_id, when=lambda read: read.after == 0)
    observe_reads(monkeypatch, hold)

    watcher = watchers(org.stubs, after_revision=0)
    hold.wait_reached()  # the first batch (revisions 1..4) is read, not yet sent
    assert write_updates(org.stubs, session.session_id, 3) == 13
    hold.release()

    changes = watcher.until(13)
    assert [c.revision for c in changes] == list(range(1, 14))
    assert [(r.after, r.revision) for r in hold.reads[:4]] == [(0, 4), (4, 8), (8, 12), (12, 13)]


def test_changes_committed_as_the_replay_catches_up_are_not_lost(
    org: Org, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = create(org.stubs)
    hold = Hold(org.org_id, when=lambda read: read.caught_up)
    observe_reads(monkeypatch, hold)

    watcher = watchers(org.stubs, after_revision=0)
    hold.wait_reached()  # the replay read found nothing more; the watch is about to wait
    later = rename(org.stubs, session.session_id, "later")
    hold.release()

    assert summary(watcher.until(later.revision)) == [
        (1, session.session_id, CREATED),
        (2, session.session_id, UPDATED),
    ]


def test_a_later_revision_cannot_commit_before_an_earlier_one(
    org: Org, watchers: Any, database_url: str
) -> None:
    """The reasoning behind ``revision > last``: revisions become visible in revision order.

    A transaction holds revision 2 open, as a writer does in its last statements; a concurrent
    UpdateSession must wait for it to take revision 3, so the watcher can never see 3 before 2.
    """
    session = create(org.stubs)
    watcher = watchers(org.stubs, after_revision=0)
    assert summary(watcher.until(1)) == [(1, session.session_id, CREATED)]

    with psycopg.connect(libpq_conninfo(database_url)) as held:
        (revision,) = held.execute(
            "UPDATE change_feeds SET revision = revision + 1 WHERE org_id = %s RETURNING revision",
            (org.org_id,),
        ).fetchone() or (None,)
        assert revision == 2
        held.execute(
            "INSERT INTO session_changes (org_id, revision, session_id, kind, wire_record, tags,"
            " device_ids) SELECT org_id, 2, session_id, 'updated', wire_record, tags, '{}'"
            " FROM sessions WHERE org_id = %s AND session_id = %s",
            (org.org_id, session.session_id),
        )
        held_pid = held.info.backend_pid

        results: queue.Queue[pb.Session] = queue.Queue()
        writer = threading.Thread(
            target=lambda: results.put(rename(org.stubs, session.session_id, "concurrent"))
        )
        writer.start()
        with psycopg.connect(libpq_conninfo(database_url), autocommit=True) as probe:
            deadline = time.monotonic() + WAIT_S
            while not probe.execute(
                "SELECT 1 FROM pg_stat_activity WHERE %s = ANY(pg_blocking_pids(pid))",
                (held_pid,),
            ).fetchall():
                assert time.monotonic() < deadline, "the write never waited for revision 2"
        assert results.empty() and watcher.items.empty()
        held.execute("SELECT pg_notify('flightlog_session_changes', %s)", (f"{org.org_id}:2",))
        held.commit()

    written = results.get(timeout=WAIT_S)
    writer.join()
    assert written.revision == 3
    assert summary(watcher.until(3)) == [
        (2, session.session_id, UPDATED),
        (3, session.session_id, UPDATED),
    ]


# --- filters -------------------------------------------------------------------------------------


def test_filters_select_sessions_tags_devices_and_kinds(
    org: Org, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(watch, "PROGRESS_SECONDS", 0)  # filtered-out changes advance at once
    device = make_device(org.stubs).device_id
    a = create(org.stubs, name="a", tags=["red"])
    b = create(org.stubs, name="b", tags=["blue"], device_ids=[device])
    c = create(org.stubs, name="c")
    by_id = watchers(org.stubs, after_revision=0, session_ids=[a.session_id, c.session_id])
    by_tag = watchers(org.stubs, after_revision=0, tags_any=["red", "green"])
    by_device = watchers(org.stubs, after_revision=0, device_id=device)
    by_kind = watchers(org.stubs, after_revision=0, kinds=[UPDATED, DELETED])
    combined = watchers(org.stubs, after_revision=0, tags_any=["blue"], kinds=[DELETED])

    put_tags(org.stubs, c.session_id, "green")  # 4: c now matches the tag filter
    rename(org.stubs, b.session_id, "b2")  # 5
    put_tags(org.stubs, a.session_id, "blue", remove=("red",))  # 6: a leaves "red"
    delete(org.stubs, b.session_id)  # 7: matched by its tags and device before deletion
    delete(org.stubs, c.session_id)  # 8
    marker = create(org.stubs, name="marker")  # 9
    assert marker.revision == 9

    def seen(w: Watcher) -> list[tuple[int, str]]:
        return [(ch.revision, ch.session_id) for ch in w.until(9)]

    assert seen(by_id) == [(r, s.session_id) for r, s in [(1, a), (3, c), (4, c), (6, a), (8, c)]]
    assert seen(by_tag) == [(1, a.session_id), (4, c.session_id), (8, c.session_id)]
    assert seen(by_device) == [(2, b.session_id), (5, b.session_id), (7, b.session_id)]
    assert seen(by_kind) == [(r, s.session_id) for r, s in [(4, c), (5, b), (6, a), (7, b), (8, c)]]
    assert seen(combined) == [(7, b.session_id)]


def test_bad_requests_are_invalid_argument_naming_each_field(org: Org) -> None:
    create(org.stubs)

    def fields_of(**request: Any) -> dict[str, str]:
        failed = rpc_error(
            lambda: org.stubs.sessions.WatchSessions(pb.WatchSessionsRequest(**request))
        )
        assert failed.code == grpc.StatusCode.INVALID_ARGUMENT
        return failed.fields

    assert set(fields_of(after_revision=-2)) == {"after_revision"}
    assert set(fields_of(after_revision=2)) == {"after_revision"}  # the org is at revision 1
    assert set(fields_of(session_ids=["ss_ok", "nope"], kinds=[0, UPDATED], device_id="?")) == {
        "session_ids[1]",
        "kinds[0]",
        "device_id",
    }
    assert set(fields_of(session_ids=[f"ss_{i}" for i in range(1001)])) == {"session_ids"}
    assert set(fields_of(tags_any=[""])) == {"tags_any[0]"}


# --- retention -----------------------------------------------------------------------------------


def expired(stubs: Stubs, after_revision: int) -> RpcFailure:
    return rpc_error(
        lambda: stubs.sessions.WatchSessions(
            pb.WatchSessionsRequest(after_revision=after_revision), timeout=WAIT_S
        )
    )


def test_a_revision_older_than_the_retained_history_is_out_of_range(
    org: Org, watchers: Any, server: ServerThread, database_url: str
) -> None:
    session = create(org.stubs)
    assert write_updates(org.stubs, session.session_id, 5) == 6
    age_changes(database_url, org.org_id, [1, 2, 3])
    prune(server)
    assert retained(database_url, org.org_id) == [4, 5, 6]

    for after in (0, 2):
        failed = expired(org.stubs, after)
        assert (failed.code, failed.reason) == (grpc.StatusCode.OUT_OF_RANGE, "REVISION_EXPIRED")
        assert failed.metadata == {"oldest_revision": "4"}
    # From oldest_revision - 1 on, nothing is missing.
    assert [c.revision for c in watchers(org.stubs, after_revision=3).until(6)] == [4, 5, 6]


def test_pruning_keeps_a_suffix_of_revisions_even_when_commit_times_interleave(
    org: Org, server: ServerThread, database_url: str
) -> None:
    session = create(org.stubs)
    write_updates(org.stubs, session.session_id, 5)
    # Revision 5's transaction started long before revision 4's: everything up to 5 goes.
    age_changes(database_url, org.org_id, [1, 2, 3, 5])
    prune(server)
    assert retained(database_url, org.org_id) == [6]
    assert expired(org.stubs, 4).metadata == {"oldest_revision": "6"}


def test_when_all_history_is_pruned_only_the_current_revision_can_be_resumed(
    org: Org, watchers: Any, server: ServerThread, database_url: str
) -> None:
    session = create(org.stubs)
    write_updates(org.stubs, session.session_id, 2)
    age_changes(database_url, org.org_id, [1, 2, 3])
    prune(server)

    failed = expired(org.stubs, 2)
    assert (failed.code, failed.metadata) == (
        grpc.StatusCode.OUT_OF_RANGE,
        {"oldest_revision": "4"},
    )
    watcher = watchers(org.stubs, after_revision=3)
    assert watcher.next().revision == 3
    later = rename(org.stubs, session.session_id, "later")
    assert summary(watcher.until(4)) == [(4, session.session_id, UPDATED)]
    assert later.revision == 4


def test_a_watcher_overtaken_by_pruning_is_cut_off_out_of_range(
    org: Org,
    watchers: Any,
    server: ServerThread,
    database_url: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "BATCH_ROWS", 3)
    session = create(org.stubs)
    write_updates(org.stubs, session.session_id, 9)
    hold = Hold(org.org_id, when=lambda read: read.after == 0)
    observe_reads(monkeypatch, hold)

    watcher = watchers(org.stubs, after_revision=0)
    hold.wait_reached()  # revisions 1..3 read; 4..7 are pruned before the watcher reads them
    age_changes(database_url, org.org_id, list(range(1, 8)))
    prune(server)
    hold.release()

    assert [c.revision for c in watcher.next().changes] == [1, 2, 3]
    failed = watcher.failure()
    assert (failed.code, failed.reason) == (grpc.StatusCode.OUT_OF_RANGE, "REVISION_EXPIRED")
    assert failed.metadata == {"oldest_revision": "8"}


# --- tenancy -------------------------------------------------------------------------------------


def test_a_watcher_never_sees_another_orgs_changes(
    org: Org,
    database_url: str,
    grpc_target: str,
    watchers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(watch, "PROGRESS_SECONDS", 0)  # filtered-out changes advance at once
    other_identity = create_identity(database_url, unique("watch-other-"))
    other = Stubs(grpc_target, other_identity.api_key, other_identity.org_id)
    try:
        mine = watchers(org.stubs, after_revision=0)
        theirs_by_id = watchers(other, after_revision=0)
        foreign = create(other, name="theirs")
        assert foreign.revision == 1  # revisions are per org
        rename(other, foreign.session_id, "theirs too")
        own = create(org.stubs, name="mine")
        assert own.revision == 1
        assert summary(mine.until(1)) == [(1, own.session_id, CREATED)]

        # Naming the other org's session in a filter reveals nothing either.
        snooping = watchers(other, after_revision=0, session_ids=[own.session_id])
        assert list(snooping.next().changes) == []
        assert [c.session_id for c in theirs_by_id.until(2)] == [foreign.session_id] * 2
        renamed = rename(org.stubs, own.session_id, "still mine")
        marker = create(other, name="marker")
        assert snooping.until(marker.revision) == []
        assert summary(mine.until(2)) == [(2, own.session_id, UPDATED)]
        assert renamed.revision == 2
    finally:
        other.close()


# --- resources -----------------------------------------------------------------------------------


def test_a_slow_watcher_is_held_back_by_flow_control_not_buffered(
    org: Org, grpc_target: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = create(org.stubs)
    reads: list[FeedRead] = []

    async def record(read: FeedRead) -> None:
        if read.org_id == org.org_id:
            reads.append(read)

    observe_reads(monkeypatch, record)
    # A client whose receive window stays at the HTTP/2 default (64 KiB).
    channel = grpc.insecure_channel(grpc_target, options=[("grpc.http2.bdp_probe", 0)])
    metadata = (("authorization", f"Bearer {org.identity.api_key}"), ("x-org-id", org.org_id))
    call: Any = session_service_pb2_grpc.SessionServiceStub(channel).WatchSessions(
        pb.WatchSessionsRequest(after_revision=0), metadata=metadata, timeout=120
    )
    try:
        assert next(call).revision == 1  # caught up; the client now stops reading
        count, payload = 100, "x" * 30_000
        for i in range(count):
            put_fields(org.stubs, session.session_id, blob=f"{i}{payload}")
        written = count * len(payload)

        # The server read only what the transport could take (about 100 KB), not the 3 MB
        # written meanwhile.
        read_bytes = sum(r.record_bytes for r in reads)
        assert read_bytes < written / 3, f"the server read {read_bytes} bytes ahead"

        # Reading again, the client gets every change, once, in order.
        revisions: list[int] = []
        while len(revisions) < count:
            revisions.extend(c.revision for c in next(call).changes)
        assert revisions == list(range(2, count + 2))
    finally:
        call.cancel()
        channel.close()


def test_cancelled_watchers_leave_no_listener_and_share_one_listen_connection(
    org: Org, server: ServerThread, notifier: ChangeNotifier, database_url: str
) -> None:
    create(org.stubs)
    calls: list[Any] = [
        org.stubs.sessions.WatchSessions(pb.WatchSessionsRequest(after_revision=0), timeout=120)
        for _ in range(100)
    ]
    try:
        for call in calls:
            assert next(call).revision == 1  # registered and live
        feed = watch.existing_change_feed(server.server.database)
        assert feed is not None
        reader = feed.reader(org.org_id)
        assert reader is not None and reader.watcher_count == 100  # one reader for them all
        assert notifier_backends(database_url) == [notifier.backend_pid]  # one for them all
    finally:
        for call in calls:
            call.cancel()

    server.call(asyncio.wait_for(feed.wait_idle(), WAIT_S))
    server.call(asyncio.wait_for(notifier.wait_idle(), WAIT_S))
    assert feed.reader(org.org_id) is None  # the reader left with its last watcher
    assert notifier.listener_count == 0
    assert notifier.connected.is_set()  # the shared connection stays for the next watcher


# --- the notifier's connection, and shutdown -----------------------------------------------------


def test_watchers_miss_nothing_when_the_listen_connection_is_lost(
    org: Org, watchers: Any, server: ServerThread, notifier: ChangeNotifier, database_url: str
) -> None:
    session = create(org.stubs)
    watcher = watchers(org.stubs, after_revision=0)
    assert watcher.until(1)
    server.call(asyncio.wait_for(notifier.connected.wait(), WAIT_S))
    lost = notifier.backend_pid
    assert lost in notifier_backends(database_url)

    sql(database_url, "SELECT pg_terminate_backend(%s)", (lost,))
    # Committed while the notifier may still be reconnecting: its notification can be lost, the
    # wake-up that follows every reconnection is not.
    renamed = rename(org.stubs, session.session_id, "while reconnecting")
    assert summary(watcher.until(renamed.revision)) == [(2, session.session_id, UPDATED)]
    server.call(asyncio.wait_for(notifier.connected.wait(), WAIT_S))
    assert notifier.backend_pid != lost and notifier.backend_pid in notifier_backends(database_url)
    again = rename(org.stubs, session.session_id, "after reconnecting")
    assert summary(watcher.until(again.revision)) == [(3, session.session_id, UPDATED)]


def test_shutting_down_ends_watch_streams_at_once(database_url: str, org: Org) -> None:
    settings = ServerSettings(
        database=DatabaseSettings(url=database_url, pool_size=2), bind="127.0.0.1:0"
    )
    own = ServerThread(settings)
    stubs = Stubs(f"127.0.0.1:{own.port}", org.identity.api_key, org.org_id)
    try:
        watcher = Watcher(stubs, after_revision=-1)
        assert watcher.next().revision == 0
        own.stop()  # with a grace period of 1 s, after which it would cancel the call
        ended = watcher.failure()  # ended by the watch itself, resumable
        assert (ended.code, ended.reason) == (grpc.StatusCode.UNAVAILABLE, "SHUTTING_DOWN")
        assert "resume the watch after revision 0" in ended.message
    finally:
        stubs.close()


def test_watchers_survive_a_database_restart_and_miss_nothing(
    private_postgres: PrivatePostgres, outage_server: tuple[ServerThread, Stubs, str]
) -> None:
    own, stubs, _ = outage_server
    session = create(stubs)
    # Let the notifier connect first: the wake-up that follows its connection makes every
    # watcher read, and a read that meets the outage fails (UNAVAILABLE, resumable).
    first = Watcher(stubs, after_revision=0)
    first.next()
    own.call(asyncio.wait_for(change_notifier(own.server.database).connected.wait(), WAIT_S))
    first.cancel()
    watcher = Watcher(stubs, after_revision=0)
    assert summary(watcher.until(1)) == [(1, session.session_id, CREATED)]

    private_postgres.stop("fast")
    private_postgres.start()
    renamed = None
    for _ in range(5):  # the first calls may meet connections the restart closed
        try:
            renamed = rename(stubs, session.session_id, "after the outage")
            break
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    assert renamed is not None and renamed.revision == 2
    # The same stream, still open, delivers it: the notifier reconnected by itself.
    assert summary(watcher.until(2)) == [(2, session.session_id, UPDATED)]
    watcher.cancel()
