"""Concurrent writers never break a session's composition, and creates are idempotent.

The composition invariant (DESIGN §3): a session's bounds are always the bounds of its
contributions, each a window as given or its file's window (extents + offset). Eight writer
threads hammer three shared sessions with random AddSessionFiles (random windows),
RemoveSessionFiles, UpdateSession changesets, Attach/DetachSessionDevice and
UpdateFileTimelineOffset. Afterwards:

* every session's bounds equal the bounds recomputed here from ListSessionFiles and GetFile;
* every acknowledged change is there: for each (session, tag), (session, metadata key),
  (session, file) and (session, device), the acknowledged operation with the highest revision
  decides the final state (revisions are per-org and strictly increase in commit order, so they
  order the acknowledged writes), and each file has the offset its owner thread set last;
* no call saw anything but OK: serialization failures and deadlocks are retried inside the server.

FLIGHTLOG_STRESS_OPS sets the operations per thread (150 by default; the issue's figure is 1000).
"""

from __future__ import annotations

import os
import random
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from google.protobuf import json_format

from flightlog.v1 import catalog_service_pb2 as catalog_pb
from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from tests.reliability.helpers import record
from tests.rpc.factories import (
    drain,
    make_dataset,
    make_device,
    make_session,
    partition,
    register_file,
    unique,
)
from tests.support import Stubs, create_identity, rpc_error

THREADS = 8
OPS_PER_THREAD = int(os.environ.get("FLIGHTLOG_STRESS_OPS", "150"))
SESSIONS = 3
FILES = 16
DEVICES = 4
TAGS = [f"tag{i}" for i in range(8)]
CALL_TIMEOUT_S = 60


@dataclass
class World:
    """One org with devices, files and sessions that the writers share."""

    stubs: Stubs
    target: str
    api_key: str
    org_id: str
    sessions: list[str]
    files: list[catalog_pb.File]
    devices: list[str]


@pytest.fixture(scope="module")
def world(database_url: str, grpc_target: str) -> Iterator[World]:
    who = create_identity(database_url, unique("concurrency-"))
    stubs = Stubs(grpc_target, who.api_key, who.org_id)
    rng = random.Random(7)
    devices = [make_device(stubs).device_id for _ in range(DEVICES)]
    dataset = make_dataset(stubs)
    files = []
    for i in range(FILES):
        topics = []
        for t in range(rng.randint(0, 3)):  # some files have no extents at all
            extents = []
            for _ in range(rng.randint(1, 3)):
                lo = rng.randint(0, 50_000_000)
                extents.append((lo, lo + rng.randint(0, 20_000_000)))
            topics.append(partition(f"/topic{t}", extents))
        files.append(
            register_file(stubs, dataset.dataset_id, topics, offset=rng.randint(-(10**9), 10**9))
        )
        assert files[-1].HasField("min_timestamp_ns") == any(t.extents for t in topics), i
    sessions = [make_session(stubs, name=f"shared-{i}").session_id for i in range(SESSIONS)]
    yield World(stubs, grpc_target, who.api_key, who.org_id, sessions, files, devices)
    stubs.close()


# --- the writers ---------------------------------------------------------------------------------


@dataclass
class Ack:
    """An acknowledged session write: its revision and what it did to which keys."""

    revision: int
    session_id: str
    effects: dict[tuple[str, str], Any]  # (kind, key) -> the state it leaves; None = absent


@dataclass
class Log:
    acks: list[Ack] = field(default_factory=list)
    offsets: dict[str, int] = field(default_factory=dict)  # file_id -> last acknowledged offset
    violations: list[str] = field(default_factory=list)
    operations: dict[str, int] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)


class Writer:
    def __init__(self, world: World, log: Log, index: int) -> None:
        self.world = world
        self.log = log
        self.index = index
        self.rng = random.Random(1000 + index)
        self.stubs = Stubs(world.target, world.api_key, world.org_id)
        # Each file's offset has one owner thread, so its last acknowledged value is known.
        self.own_files = [f for i, f in enumerate(world.files) if i % THREADS == index]

    def run(self) -> None:
        try:
            for n in range(OPS_PER_THREAD):
                self.one(n)
        finally:
            self.stubs.close()

    def one(self, n: int) -> None:
        kinds = ["add", "add", "remove", "update", "update", "attach", "detach", "offset"]
        kind = self.rng.choice(kinds if self.own_files else kinds[:-1])
        session_id = self.rng.choice(self.world.sessions)
        try:
            getattr(self, kind)(session_id, n)
        except grpc.RpcError as e:
            with self.log.lock:
                self.log.violations.append(f"{kind}: {e.code().name} {e.details()}")
        with self.log.lock:
            self.log.operations[kind] = self.log.operations.get(kind, 0) + 1

    def ack(self, session: pb.Session, effects: dict[tuple[str, str], Any]) -> None:
        with self.log.lock:
            self.log.acks.append(Ack(session.revision, session.session_id, effects))

    def add(self, session_id: str, n: int) -> None:
        files = self.rng.sample(self.world.files, self.rng.randint(1, 3))
        specs: list[pb.SessionFileSpec] = []
        effects: dict[tuple[str, str], Any] = {}
        for f in files:
            if self.rng.random() < 0.4:
                specs.append(pb.SessionFileSpec(file_id=f.file_id))
                effects["file", f.file_id] = ("whole",)
            else:
                lo = self.rng.randint(-(10**9), 2 * 10**9)
                hi = lo + self.rng.randint(0, 10**8)
                specs.append(
                    pb.SessionFileSpec(
                        file_id=f.file_id, range_min_timestamp_ns=lo, range_max_timestamp_ns=hi
                    )
                )
                effects["file", f.file_id] = (lo, hi)
        response = self.stubs.sessions.AddSessionFiles(
            pb.AddSessionFilesRequest(session_id=session_id, files=specs), timeout=CALL_TIMEOUT_S
        )
        self.ack(response.session, effects)

    def remove(self, session_id: str, n: int) -> None:
        files = self.rng.sample(self.world.files, self.rng.randint(1, 2))
        response = self.stubs.sessions.RemoveSessionFiles(
            pb.RemoveSessionFilesRequest(
                session_id=session_id, file_ids=[f.file_id for f in files]
            ),
            timeout=CALL_TIMEOUT_S,
        )
        self.ack(response.session, {("file", f.file_id): None for f in files})

    def update(self, session_id: str, n: int) -> None:
        put = self.rng.sample(TAGS, self.rng.randint(0, 3))
        remove = self.rng.sample(TAGS, self.rng.randint(0, 2))
        effects: dict[tuple[str, str], Any] = {("tag", t): True for t in put}
        effects.update({("tag", t): None for t in remove})  # puts before removes
        key = f"w{self.index}"
        changes = pb.MetadataChangeset(put_tags=put, remove_tags=remove)
        if self.rng.random() < 0.75:
            changes.put_fields.update({key: {"n": n}})
            effects["meta", key] = n
        else:
            changes.remove_fields.append(key)
            effects["meta", key] = None
        request = pb.UpdateSessionRequest(session_id=session_id, metadata_changeset=changes)
        if self.rng.random() < 0.3:
            request.name.set = f"w{self.index}-{n}"
            effects["name", ""] = request.name.set
        response = self.stubs.sessions.UpdateSession(request, timeout=CALL_TIMEOUT_S)
        self.ack(response.session, effects)

    def attach(self, session_id: str, n: int) -> None:
        device_id = self.rng.choice(self.world.devices)
        response = self.stubs.sessions.AttachSessionDevice(
            pb.AttachSessionDeviceRequest(session_id=session_id, device_id=device_id),
            timeout=CALL_TIMEOUT_S,
        )
        self.ack(response.session, {("device", device_id): True})

    def detach(self, session_id: str, n: int) -> None:
        device_id = self.rng.choice(self.world.devices)
        response = self.stubs.sessions.DetachSessionDevice(
            pb.DetachSessionDeviceRequest(session_id=session_id, device_id=device_id),
            timeout=CALL_TIMEOUT_S,
        )
        self.ack(response.session, {("device", device_id): None})

    def offset(self, session_id: str, n: int) -> None:
        f = self.rng.choice(self.own_files)
        offset = self.rng.randint(-(10**9), 10**9)
        response = self.stubs.catalog.UpdateFileTimelineOffset(
            catalog_pb.UpdateFileTimelineOffsetRequest(
                file_id=f.file_id, unix_epoch_offset_ns=offset
            ),
            timeout=CALL_TIMEOUT_S,
        )
        assert response.file.unix_epoch_offset_ns == offset
        with self.log.lock:
            self.log.offsets[f.file_id] = offset


def expected_state(acks: list[Ack]) -> tuple[dict[tuple[str, str, str], Any], list[str]]:
    """For each (session, kind, key): the state left by the acknowledged write with the highest
    revision. Writes with the same revision (no-op attach/detach report the current one) must
    agree; when they do not, that is a violation too."""
    latest: dict[tuple[str, str, str], tuple[int, Any]] = {}
    conflicts = []
    for ack in sorted(acks, key=lambda a: a.revision):
        for (kind, key), value in ack.effects.items():
            slot = (ack.session_id, kind, key)
            previous = latest.get(slot)
            if previous is not None and previous[0] == ack.revision and previous[1] != value:
                conflicts.append(f"{slot} at revision {ack.revision}: {previous[1]} vs {value}")
            latest[slot] = (ack.revision, value)
    return {slot: value for slot, (_, value) in latest.items()}, conflicts


def recomputed_bounds(
    contributions: list[pb.SessionFile], files: dict[str, catalog_pb.File]
) -> tuple[int, int] | None:
    lows, highs = [], []
    for c in contributions:
        if c.HasField("range_min_timestamp_ns"):
            lows.append(c.range_min_timestamp_ns)
            highs.append(c.range_max_timestamp_ns)
        elif files[c.file_id].HasField("min_timestamp_ns"):
            lows.append(files[c.file_id].min_timestamp_ns)
            highs.append(files[c.file_id].max_timestamp_ns)
    return (min(lows), max(highs)) if lows else None


def test_concurrent_writers_keep_every_session_consistent_and_lose_no_acknowledged_change(
    world: World,
) -> None:
    log = Log()
    writers = [Writer(world, log, i) for i in range(THREADS)]
    with ThreadPoolExecutor(THREADS) as pool:
        for future in [pool.submit(w.run) for w in writers]:
            future.result()

    assert log.violations == [], log.violations[:10]
    expected, conflicts = expected_state(log.acks)
    assert conflicts == []

    stubs = world.stubs
    files = {
        f.file_id: stubs.catalog.GetFile(catalog_pb.GetFileRequest(file_id=f.file_id)).file
        for f in world.files
    }
    for f in world.files:
        assert files[f.file_id].unix_epoch_offset_ns == log.offsets.get(
            f.file_id, f.unix_epoch_offset_ns
        )
        if f.HasField("min_timestamp_ns"):  # the window moves with the offset
            shift = files[f.file_id].unix_epoch_offset_ns - f.unix_epoch_offset_ns
            assert files[f.file_id].min_timestamp_ns == f.min_timestamp_ns + shift
            assert files[f.file_id].max_timestamp_ns == f.max_timestamp_ns + shift

    for session_id in world.sessions:
        session = stubs.sessions.GetSession(pb.GetSessionRequest(session_id=session_id)).session
        contributions, _ = drain(
            stubs.sessions.ListSessionFiles(
                pb.ListSessionFilesRequest(session_id=session_id, page_size=7)
            ),
            "files",
        )
        devices, _ = drain(
            stubs.sessions.ListSessionDevices(pb.ListSessionDevicesRequest(session_id=session_id)),
            "devices",
        )

        # The invariant: stored bounds == bounds recomputed from the stored contributions.
        bounds = recomputed_bounds(contributions, files)
        stored = (
            (session.min_timestamp_ns, session.max_timestamp_ns)
            if session.HasField("min_timestamp_ns")
            else None
        )
        assert stored == bounds, session_id

        # Every acknowledged change is present.
        def want(kind: str, sid: str = session_id) -> dict[str, Any]:
            return {k: v for (s, kd, k), v in expected.items() if s == sid and kd == kind}

        windows = {
            c.file_id: (c.range_min_timestamp_ns, c.range_max_timestamp_ns)
            if c.HasField("range_min_timestamp_ns")
            else ("whole",)
            for c in contributions
        }
        assert windows == {k: v for k, v in want("file").items() if v is not None}
        assert {d.device_id for d in devices} == {k for k, v in want("device").items() if v}
        assert set(session.tags) == {k for k, v in want("tag").items() if v}
        metadata = json_format.MessageToDict(session.metadata)
        for key, n in want("meta").items():
            if n is None:
                assert key not in metadata
            else:
                assert metadata[key]["n"] == n
        if "" in want("name"):
            assert session.name == want("name")[""]
    total = sum(log.operations.values())
    record(
        "concurrency",
        f"{THREADS} threads x {OPS_PER_THREAD} operations = {total} ({log.operations}) over "
        f"{SESSIONS} sessions; {len(log.acks)} acknowledged session writes checked; "
        f"violations: {len(log.violations)}",
    )


# --- idempotent create ---------------------------------------------------------------------------


def _dataset_with_files(stubs: Stubs) -> str:
    device = make_device(stubs)
    dataset = make_dataset(stubs, device_id=device.device_id)
    for lo in (100, 500):
        register_file(stubs, dataset.dataset_id, [("/odom", [(lo, lo + 50)])])
    return dataset.dataset_id


def test_create_session_replay_returns_the_first_session(stubs: Stubs) -> None:
    request = pb.CreateSessionRequest(name="replayed", tags=["a"], request_id=unique("req-"))
    first = stubs.sessions.CreateSession(request).session
    stubs.sessions.UpdateSession(
        pb.UpdateSessionRequest(
            session_id=first.session_id, name=common_pb2.StringUpdate(set="renamed")
        )
    )
    again = stubs.sessions.CreateSession(request).session
    assert again.session_id == first.session_id
    assert again.created == first.created
    assert again.name == "renamed"  # the session as it is now, not a second one


def test_create_session_with_a_reused_request_id_and_another_body_is_already_exists(
    stubs: Stubs,
) -> None:
    request_id = unique("req-")
    stubs.sessions.CreateSession(pb.CreateSessionRequest(name="one", request_id=request_id))
    failure = rpc_error(
        lambda: stubs.sessions.CreateSession(
            pb.CreateSessionRequest(name="two", request_id=request_id)
        )
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "REQUEST_ID_REUSED"


def test_create_session_from_dataset_replay_and_reuse(stubs: Stubs) -> None:
    dataset_id = _dataset_with_files(stubs)
    request = pb.CreateSessionFromDatasetRequest(
        dataset_id=dataset_id, name="from-dataset", request_id=unique("req-")
    )
    first = stubs.sessions.CreateSessionFromDataset(request).session
    assert (first.min_timestamp_ns, first.max_timestamp_ns) == (100, 550)
    again = stubs.sessions.CreateSessionFromDataset(request).session
    assert again.session_id == first.session_id

    changed = pb.CreateSessionFromDatasetRequest()
    changed.CopyFrom(request)
    changed.name = "another"
    failure = rpc_error(lambda: stubs.sessions.CreateSessionFromDataset(changed))
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS
    assert failure.reason == "REQUEST_ID_REUSED"


def test_a_request_id_cannot_be_replayed_through_the_other_create_method(stubs: Stubs) -> None:
    # The two requests serialize to the same bytes once request_id is cleared (field 1 is `name`
    # in one and `dataset_id` in the other): the body digest must tell the methods apart.
    dataset_id = _dataset_with_files(stubs)
    request_id = unique("req-")
    plain = stubs.sessions.CreateSession(
        pb.CreateSessionRequest(name=dataset_id, request_id=request_id)
    ).session
    failure = rpc_error(
        lambda: stubs.sessions.CreateSessionFromDataset(
            pb.CreateSessionFromDatasetRequest(dataset_id=dataset_id, request_id=request_id)
        )
    )
    assert failure.code == grpc.StatusCode.ALREADY_EXISTS, plain.session_id
    assert failure.reason == "REQUEST_ID_REUSED"


@pytest.mark.parametrize("method", ["CreateSession", "CreateSessionFromDataset"])
def test_sixteen_concurrent_duplicates_create_exactly_one_session(
    database_url: str, grpc_target: str, method: str
) -> None:
    who = create_identity(database_url, unique("duplicates-"))  # an empty org
    stubs = Stubs(grpc_target, who.api_key, who.org_id)
    try:
        request: Any
        if method == "CreateSession":
            request = pb.CreateSessionRequest(name="once", request_id="duplicate-me")
        else:
            request = pb.CreateSessionFromDatasetRequest(
                dataset_id=_dataset_with_files(stubs), name="once", request_id="duplicate-me"
            )
        barrier = threading.Barrier(16)

        def create(_: int) -> str:
            own = Stubs(grpc_target, who.api_key, who.org_id)
            try:
                grpc.channel_ready_future(own.raw_channel).result(timeout=10)
                barrier.wait(10)
                session: pb.Session = getattr(own.sessions, method)(request).session
                return session.session_id
            finally:
                own.close()

        with ThreadPoolExecutor(16) as pool:
            ids = set(pool.map(create, range(16)))
        assert len(ids) == 1
        listed, _ = drain(stubs.sessions.ListSessions(pb.ListSessionsRequest()), "sessions")
        assert [s.session_id for s in listed] == list(ids)
        record(f"idempotent {method}", "16 concurrent duplicates created exactly 1 session")
    finally:
        stubs.close()
