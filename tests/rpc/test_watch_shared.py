"""WatchSessions at scale: an org's watchers share one reader per process (issue 11).

The reader's counters (``OrgReader.shared_reads``, ``shared_rows`` and ``watcher_reads``: the
reads of the feed it made for all watchers, the rows they returned, and the reads the watchers
made by themselves) say how many feed queries a change cost; every test also checks what each
watcher received, through the generated stub. Tests synchronise on what the server reports
(``wait_attached``) and on what watchers receive, never on sleeps.
"""

from __future__ import annotations

import asyncio
import random
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

import grpc
import pytest

from flightlog.v1 import session_service_pb2 as pb
from flightlog.v1 import session_service_pb2_grpc
from flightlog_server.services import change_feed
from flightlog_server.services.change_feed import ChangeFilter, OrgReader, StoredChange
from tests.reliability.private_postgres import PrivatePostgres
from tests.rpc.factories import make_device, unique
from tests.rpc.watching import (
    CREATED,
    DELETED,
    DEVICES_CHANGED,
    UPDATED,
    WAIT_S,
    Org,
    Watcher,
    attach,
    create,
    delete,
    put_fields,
    put_tags,
    rename,
    summary,
)
from tests.support import ServerThread, Stubs, create_identity


def reader_of(server: ServerThread, org_id: str) -> OrgReader:
    feed = change_feed.existing_change_feed(server.server.database)
    assert feed is not None, "no watcher ever started"
    reader = feed.reader(org_id)
    assert reader is not None, "the org has no reader"
    return reader


def wait_attached(server: ServerThread, org_id: str, count: int) -> OrgReader:
    """The org's reader, once ``count`` of its watchers are caught up and attached to it."""
    reader = reader_of(server, org_id)
    server.call(asyncio.wait_for(reader.wait_attached(count), WAIT_S))
    return reader


@dataclass(frozen=True)
class Reads:
    shared: int
    rows: int
    own: int

    @staticmethod
    def of(reader: OrgReader) -> Reads:
        return Reads(reader.shared_reads, reader.shared_rows, reader.watcher_reads)

    def __sub__(self, other: Reads) -> Reads:
        return Reads(self.shared - other.shared, self.rows - other.rows, self.own - other.own)


# --- one read per change -------------------------------------------------------------------------


def test_fifty_watchers_of_one_org_cost_one_feed_read_per_change(
    org: Org, server: ServerThread, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = create(org.stubs, name="first")
    opened: list[Watcher] = [watchers(org.stubs, after_revision=0) for _ in range(50)]
    for w in opened:
        assert summary(w.until(1)) == [(1, first.session_id, CREATED)]  # replayed by itself
    reader = wait_attached(server, org.org_id, 50)
    before = Reads.of(reader)
    tests_of_the_filter = 0
    matches = ChangeFilter.matches

    def counted(self: ChangeFilter, change: StoredChange) -> bool:
        nonlocal tests_of_the_filter
        tests_of_the_filter += 1
        return matches(self, change)

    monkeypatch.setattr(ChangeFilter, "matches", counted)

    written = [rename(org.stubs, first.session_id, f"name {i}") for i in range(20)]
    assert [s.revision for s in written] == list(range(2, 22))
    for w in opened:
        changes = w.until(21)
        assert [c.revision for c in changes] == list(range(2, 22))  # each once, in order
        assert [c.session for c in changes] == written

    reads = Reads.of(reader) - before
    assert reads.own == 0  # no watcher read the feed by itself once live
    assert reads.rows == 20  # every change read once for all fifty watchers
    assert 1 <= reads.shared <= 20  # at most one query per change (several when they coalesce)
    assert reader.attached_count == 50
    # The fifty share one filter: it is applied once per change, not once per watcher.
    assert tests_of_the_filter == 20


def test_concurrent_writers_reach_every_shared_watcher_once_in_order(
    org: Org, server: ServerThread, watchers: Any
) -> None:
    sessions = [create(org.stubs, name=f"s{i}") for i in range(4)]
    opened: list[Watcher] = [watchers(org.stubs, after_revision=-1) for _ in range(20)]
    for w in opened:
        assert w.next().revision == 4
    reader = wait_attached(server, org.org_id, 20)
    before = Reads.of(reader)

    def write(index: int) -> None:
        for i in range(10):
            rename(org.stubs, sessions[index].session_id, f"{index}-{i}")

    writers = [threading.Thread(target=write, args=(i,)) for i in range(4)]  # four in flight
    for t in writers:
        t.start()
    for t in writers:
        t.join(WAIT_S)
    for w in opened:
        assert [c.revision for c in w.until(44)] == list(range(5, 45))
    reads = Reads.of(reader) - before
    assert (reads.own, reads.rows) == (0, 40)
    assert reads.shared <= 40


# --- filters -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Filter:
    """A WatchSessions filter and the reference test of a change against it."""

    session_ids: tuple[str, ...] = ()
    tags_any: tuple[str, ...] = ()
    device_id: str = ""
    kinds: tuple[int, ...] = ()

    def request(self) -> dict[str, Any]:
        return {
            "session_ids": list(self.session_ids),
            "tags_any": list(self.tags_any),
            "device_id": self.device_id,
            "kinds": list(self.kinds),
        }

    def matches(self, change: Written) -> bool:
        return (
            (not self.session_ids or change.session_id in self.session_ids)
            and (not self.tags_any or bool(set(self.tags_any) & change.tags))
            and (not self.device_id or self.device_id in change.devices)
            and (not self.kinds or change.kind in self.kinds)
        )


@dataclass(frozen=True)
class Written:
    """What a write recorded: the session's tags and devices after it (before, for a delete)."""

    revision: int
    session_id: str
    kind: int
    tags: frozenset[str]
    devices: frozenset[str]


def test_watchers_with_different_filters_sharing_a_reader_get_exactly_their_changes(
    org: Org, server: ServerThread, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(change_feed, "PROGRESS_SECONDS", 0)  # filtered-out changes advance at once
    devices = [make_device(org.stubs).device_id for _ in range(2)]
    tags = ["red", "green", "blue"]
    state: dict[str, tuple[set[str], set[str]]] = {}
    log: list[Written] = []

    def record(session: pb.Session, kind: int) -> None:
        tags_now, devices_now = state[session.session_id]
        log.append(
            Written(
                session.revision,
                session.session_id,
                kind,
                frozenset(tags_now),
                frozenset(devices_now),
            )
        )

    def new_session(i: int) -> pb.Session:
        session = create(org.stubs, name=f"s{i}", tags=[tags[i % 3]])
        state[session.session_id] = ({tags[i % 3]}, set())
        record(session, CREATED)
        return session

    seeded = [new_session(i) for i in range(3)]
    ids = [s.session_id for s in seeded]
    filters = [
        Filter(),
        Filter(session_ids=(ids[0], ids[2])),
        Filter(tags_any=("red", "blue")),
        Filter(device_id=devices[0]),
        Filter(kinds=(UPDATED, DELETED)),
        Filter(tags_any=("green",), kinds=(DEVICES_CHANGED,)),
        Filter(session_ids=(ids[1],), device_id=devices[1]),
    ]
    opened = [watchers(org.stubs, after_revision=-1, **f.request()) for f in filters]
    for w in opened:
        assert w.next().revision == 3
    reader = wait_attached(server, org.org_id, len(filters))
    before = Reads.of(reader)

    # A scripted mix of every kind of write, over sessions whose tags and devices change.
    rng = random.Random(11)
    live = list(ids)
    for step in range(40):
        action = rng.choice(["create", "tag", "rename", "attach", "delete"])
        if action == "create" or not live:
            live.append(new_session(step).session_id)
            continue
        sid = rng.choice(live)
        if action == "tag":
            tag = rng.choice(tags)
            session = put_tags(org.stubs, sid, tag, remove=tuple(t for t in tags if t != tag))
            state[sid] = ({tag}, state[sid][1])
            record(session, UPDATED)
        elif action == "rename":
            record(rename(org.stubs, sid, f"n{step}"), UPDATED)
        elif action == "attach":
            device = rng.choice([d for d in devices if d not in state[sid][1]] or devices)
            if device in state[sid][1]:
                continue
            session = attach(org.stubs, sid, device)
            state[sid][1].add(device)
            record(session, DEVICES_CHANGED)
        else:
            revision = log[-1].revision + 1
            tags_now, devices_now = state[sid]
            delete(org.stubs, sid)
            log.append(Written(revision, sid, DELETED, frozenset(tags_now), frozenset(devices_now)))
            live.remove(sid)
    final = log[-1].revision

    for f, w in zip(filters, opened, strict=True):
        received = [(c.revision, c.session_id, c.kind) for c in w.until(final)]
        expected = [(c.revision, c.session_id, c.kind) for c in log[3:] if f.matches(c)]
        assert received == expected, f
    reads = Reads.of(reader) - before
    assert reads.own == 0 and reads.rows == final - 3


# --- a slow watcher ------------------------------------------------------------------------------


def test_a_slow_watcher_neither_blocks_the_others_nor_loses_anything(
    org: Org, server: ServerThread, grpc_target: str, watchers: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(change_feed, "QUEUE_BYTES", 64 * 1024)
    session = create(org.stubs)
    fast = watchers(org.stubs, after_revision=-1)
    assert fast.next().revision == 1
    # A client whose receive window stays at the HTTP/2 default (64 KiB) and that stops reading.
    channel = grpc.insecure_channel(grpc_target, options=[("grpc.http2.bdp_probe", 0)])
    metadata = (("authorization", f"Bearer {org.identity.api_key}"), ("x-org-id", org.org_id))
    slow: Any = session_service_pb2_grpc.SessionServiceStub(channel).WatchSessions(
        pb.WatchSessionsRequest(after_revision=-1), metadata=metadata, timeout=120
    )
    try:
        assert next(slow).revision == 1
        reader = wait_attached(server, org.org_id, 2)
        count, payload = 60, "x" * 30_000
        for i in range(count):
            put_fields(org.stubs, session.session_id, blob=f"{i}{payload}")

        # The fast watcher gets everything while the slow one reads nothing...
        assert [c.revision for c in fast.until(count + 1)] == list(range(2, count + 2))
        # ...which overflowed its queue: it was detached, not buffered without bound.
        assert reader.attached_count == 1
        own_before = reader.watcher_reads

        # Reading again, it gets every change, once, in order (the rest from the database).
        revisions: list[int] = []
        while len(revisions) < count:
            revisions.extend(c.revision for c in next(slow).changes)
        assert revisions == list(range(2, count + 2))
        assert reader.watcher_reads > own_before
        # Caught up, it shares the reader again.
        wait_attached(server, org.org_id, 2)
        later = rename(org.stubs, session.session_id, "later")
        assert [c.revision for c in next(slow).changes] == [later.revision]
        assert [c.revision for c in fast.until(later.revision)] == [later.revision]
    finally:
        slow.cancel()
        channel.close()


# --- tenancy -------------------------------------------------------------------------------------


def test_another_orgs_watchers_share_nothing_and_see_nothing(
    org: Org,
    database_url: str,
    grpc_target: str,
    server: ServerThread,
    watchers: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(change_feed, "PROGRESS_SECONDS", 0)
    other_identity = create_identity(database_url, unique("watch-shared-other-"))
    other = Stubs(grpc_target, other_identity.api_key, other_identity.org_id)
    try:
        mine = [watchers(org.stubs, after_revision=0) for _ in range(5)]
        theirs = [watchers(other, after_revision=0) for _ in range(5)]
        for w in mine + theirs:
            assert w.next().revision == 0
        my_reader = wait_attached(server, org.org_id, 5)
        their_reader = wait_attached(server, other_identity.org_id, 5)
        assert my_reader is not their_reader

        own = [create(org.stubs, name=f"mine {i}") for i in range(5)]
        for w in mine:
            assert summary(w.until(5)) == [(s.revision, s.session_id, CREATED) for s in own]
        marker = create(other, name="marker")
        for w in theirs:
            assert summary(w.until(1)) == [(1, marker.session_id, CREATED)]
        assert their_reader.shared_rows == 1  # the other org's reader never read our rows
    finally:
        other.close()


# --- a database restart --------------------------------------------------------------------------


def write_when_back(write: Callable[[], pb.Session]) -> pb.Session:
    """A write retried while it meets connections the restart closed (UNAVAILABLE)."""
    for _ in range(10):
        try:
            return write()
        except grpc.RpcError as error:
            assert error.code() == grpc.StatusCode.UNAVAILABLE
    raise AssertionError("the write never succeeded after the restart")


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_shared_watchers_receive_a_write_after_a_database_restart_on_the_same_stream(
    private_postgres: PrivatePostgres,
    outage_server: tuple[ServerThread, Stubs, str],
    mode: Literal["fast", "immediate"],
) -> None:
    own, stubs, org_id = outage_server
    session = create(stubs)
    opened = [
        Watcher(stubs, after_revision=0),
        Watcher(stubs, after_revision=0, kinds=[UPDATED]),
        Watcher(stubs, after_revision=0, session_ids=[session.session_id]),
    ]
    try:
        for w in opened:
            assert w.next().revision == 1
        wait_attached(own, org_id, len(opened))

        private_postgres.stop(mode)
        private_postgres.start()
        renamed = write_when_back(lambda: rename(stubs, session.session_id, "after the outage"))
        assert renamed.revision == 2
        # The same streams, still open, deliver it: nobody reconnected.
        for w in opened:
            assert summary(w.until(2)) == [(2, session.session_id, UPDATED)]
        again = rename(stubs, session.session_id, "and then")
        for w in opened:
            assert summary(w.until(3)) == [(3, session.session_id, UPDATED)]
        assert again.revision == 3
    finally:
        for w in opened:
            w.cancel()
