"""A database outage: the server fails fast, says it is not serving, and heals by itself.

The test owns its PostgreSQL (``PrivatePostgres``: a fresh cluster in a temporary folder, never
the shared server) so it can stop it under load and start it again on the same port. Two outages
are injected into one server process: a clean shutdown (``pg_ctl stop -m fast``, sessions are
terminated) and a crash (``-m immediate``, the WAL is replayed on restart).

During each outage every call returns UNAVAILABLE before its deadline and health reports
NOT_SERVING; after PostgreSQL is back the same server process answers within 5 s; and every write
the server acknowledged, before or during the outage, is there afterwards.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import grpc

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.app import ServerSettings
from flightlog_server.storage.database import DatabaseSettings
from flightlog_server.storage.migrate import upgrade
from tests.reliability.helpers import NOT_SERVING, SERVING, health, outcome, poll, record
from tests.reliability.private_postgres import PrivatePostgres
from tests.support import ServerThread, Stubs, create_identity

CALL_DEADLINE_S = 2.0
RECOVERY_LIMIT_S = 5.0
WRITERS = 3


@dataclass
class Ledger:
    """What the server acknowledged, and every status the writers saw."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    sessions: dict[str, str] = field(default_factory=dict)  # request_id -> session_id
    tags: dict[str, set[str]] = field(default_factory=dict)  # session_id -> acknowledged tags
    codes: Counter[str] = field(default_factory=Counter)
    writes: int = 0

    def saw(self, code: grpc.StatusCode) -> None:
        with self.lock:
            self.codes[code.name] += 1

    def grown_by(self, n: int) -> Callable[[], bool]:
        """A condition for ``poll``: ``n`` more writes acknowledged than now."""
        target = self.writes + n
        return lambda: self.writes >= target


class Writer(threading.Thread):
    """Creates sessions (with request ids) and tags them, until told to stop.

    A create that failed is retried with the same request id, so an outage never leaves a
    request both failed and duplicated.
    """

    def __init__(self, stubs: Stubs, ledger: Ledger, index: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.stubs = stubs
        self.ledger = ledger
        self.index = index
        self.stop_event = stop
        self.random = random.Random(index)
        self.mine: list[str] = []
        self.failure: BaseException | None = None

    def run(self) -> None:
        try:
            self._loop()
        except BaseException as e:  # noqa: BLE001 - reported by the test that joins it
            self.failure = e

    def _call(self, method: Callable[..., Any], request: Any) -> Any:
        try:
            response = method(request, timeout=CALL_DEADLINE_S)
        except grpc.RpcError as e:
            self.ledger.saw(e.code())
            return None
        self.ledger.saw(grpc.StatusCode.OK)
        return response

    def _loop(self) -> None:
        n = 0
        pending: str | None = None
        while not self.stop_event.is_set():
            if pending is None or not self.mine or self.random.random() < 0.5:
                request_id = pending or f"w{self.index}-{n}"
                n += 1
                response = self._call(
                    self.stubs.sessions.CreateSession,
                    pb.CreateSessionRequest(name=request_id, request_id=request_id),
                )
                if response is None:
                    pending = request_id
                    continue
                pending = None
                with self.ledger.lock:
                    self.ledger.sessions[request_id] = response.session.session_id
                    self.ledger.writes += 1
                self.mine.append(response.session.session_id)
            else:
                session_id = self.random.choice(self.mine)
                tag = f"t{self.index}-{n}"
                n += 1
                response = self._call(
                    self.stubs.sessions.UpdateSession,
                    pb.UpdateSessionRequest(
                        session_id=session_id,
                        metadata_changeset=pb.MetadataChangeset(put_tags=[tag]),
                    ),
                )
                if response is not None:
                    with self.ledger.lock:
                        self.ledger.tags.setdefault(session_id, set()).add(tag)
                        self.ledger.writes += 1


def test_outage_fails_fast_reports_not_serving_and_recovers_without_losing_writes(
    private_postgres: PrivatePostgres,
) -> None:
    upgrade(private_postgres.url)
    who = create_identity(private_postgres.url, "outage")
    server = ServerThread(
        ServerSettings(
            database=DatabaseSettings(url=private_postgres.url, pool_size=4),
            bind="127.0.0.1:0",
            auth_cache_seconds=0,
            grace_seconds=1,
        )
    )
    target = f"127.0.0.1:{server.port}"
    stubs = Stubs(target, who.api_key, who.org_id)
    ledger = Ledger()
    probes = 0
    recoveries: list[float] = []
    stop = threading.Event()
    try:
        existing = stubs.sessions.CreateSession(pb.CreateSessionRequest(name="probe")).session
        for mode in ("fast", "immediate"):
            stop = threading.Event()
            writers = [
                Writer(stubs, ledger, i + 10 * len(recoveries), stop) for i in range(WRITERS)
            ]
            for writer in writers:
                writer.start()
            poll(ledger.grown_by(30), 30, "writers make progress")

            private_postgres.stop(mode)  # under load
            poll(
                lambda: health(target) == NOT_SERVING,
                5,
                "health reports NOT_SERVING while the database is down",
            )
            calls: list[Callable[[], Any]] = [
                lambda: stubs.sessions.CreateSession(
                    pb.CreateSessionRequest(name="x"), timeout=CALL_DEADLINE_S
                ),
                lambda: stubs.sessions.GetSession(
                    pb.GetSessionRequest(session_id=existing.session_id), timeout=CALL_DEADLINE_S
                ),
                lambda: stubs.sessions.UpdateSession(
                    pb.UpdateSessionRequest(
                        session_id=existing.session_id, name=common_pb2.StringUpdate(set="y")
                    ),
                    timeout=CALL_DEADLINE_S,
                ),
                lambda: stubs.sessions.ListSessionDevices(
                    pb.ListSessionDevicesRequest(session_id=existing.session_id),
                    timeout=CALL_DEADLINE_S,
                ),
            ]
            for _ in range(5):
                for call in calls:
                    code, seconds = outcome(call)
                    probes += 1
                    assert code == grpc.StatusCode.UNAVAILABLE, f"{mode} outage: {code}"
                    assert seconds < CALL_DEADLINE_S, f"took {seconds:.2f} s"

            private_postgres.start()
            recovered = poll(
                lambda: (
                    outcome(
                        lambda: stubs.sessions.GetSession(
                            pb.GetSessionRequest(session_id=existing.session_id), timeout=1
                        )
                    )[0]
                    == grpc.StatusCode.OK
                ),
                RECOVERY_LIMIT_S,
                "the same server process serves again after PostgreSQL restarts",
            )
            recoveries.append(recovered)
            poll(
                lambda: health(target) == SERVING,
                RECOVERY_LIMIT_S,
                "health reports SERVING again",
            )
            poll(ledger.grown_by(10), 30, "writers resume")
            stop.set()
            for writer in writers:
                writer.join(30)
                assert writer.failure is None, writer.failure

        # Every acknowledged write is there: each session once, with every acknowledged tag.
        for request_id, session_id in ledger.sessions.items():
            session = stubs.sessions.GetSession(pb.GetSessionRequest(session_id=session_id)).session
            assert session.name == request_id
            assert ledger.tags.get(session_id, set()) <= set(session.tags), session_id
            replay = stubs.sessions.CreateSession(
                pb.CreateSessionRequest(name=request_id, request_id=request_id)
            ).session
            assert replay.session_id == session_id
        assert set(ledger.codes) <= {"OK", "UNAVAILABLE"}, ledger.codes
    finally:
        stop.set()
        stubs.close()
        server.stop()
    record(
        "database outage",
        f"2 outages injected under load (stop -m fast, stop -m immediate); {ledger.writes} "
        f"acknowledged writes verified afterwards; writer statuses {dict(ledger.codes)}; "
        f"{probes} probe calls UNAVAILABLE within {CALL_DEADLINE_S} s; served again after "
        + ", ".join(f"{r:.2f} s" for r in recoveries),
    )
