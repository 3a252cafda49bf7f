"""The write path's figures (issue 12), each against a baseline measured in the same run.

* CreateSession, GetSession and UpdateSession (tags + 2 custom fields + 1 metric) with 8 calls in
  flight, against the bare grpc.aio server running one SQL statement per call (what a user
  writing the simplest possible service would have): ``tests.bench.processes``.
* CreateSession in one org against the same calls spread over eight orgs (does anything per
  org, such as the feed revision's row lock, limit one org's writes?), same server, same run.
* CreateSession on ``serve --workers 2`` against ``--workers 1``, same run.
* BatchCreateSessions of 100,000 sessions, 1,000 a call, against psycopg's ``executemany`` of
  an INSERT of the same rows (the physical limit of loading rows one statement at a time).
"""

from __future__ import annotations

import asyncio
import random
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import grpc

from flightlog.v1 import common_pb2, custom_field_service_pb2_grpc, session_service_pb2_grpc
from flightlog.v1 import custom_field_service_pb2 as fields_pb
from flightlog.v1 import session_service_pb2 as pb
from flightlog_server.domain.rules import new_id
from tests.bench import data
from tests.bench.common import CHANNEL_OPTIONS, Row, calls_per_second, log, metadata
from tests.bench.processes import ServerProcess
from tests.support import Identity, create_identity

Call = Callable[[Any], Awaitable[Any]]


def _create(identity: Identity) -> Call:
    md = metadata(identity)
    body = pb.CreateSessionRequest(name="bench flight", tags=["bench", "outdoor"])
    body.metadata.update({"pilot": "bench", "wind": {"knots": 12}})

    async def call(stub: Any) -> Any:
        return await stub.CreateSession(body, metadata=md)

    return call


def _get(identity: Identity, ids: Sequence[str]) -> Call:
    md = metadata(identity)
    rng = random.Random(1)

    async def call(stub: Any) -> Any:
        return await stub.GetSession(pb.GetSessionRequest(session_id=rng.choice(ids)), metadata=md)

    return call


def _update(identity: Identity, ids: Sequence[str]) -> Call:
    """UpdateSession of 8 sessions in turn (so 8 in flight hit 8 different sessions): a tag, two
    custom fields and a metric in one call."""
    md = metadata(identity)
    turn = 0
    # Each caller task keeps to its own session: with a session per call in turn instead, a
    # call could start on a session whose previous update was still in flight and wait for it.
    owners: dict[asyncio.Task[Any] | None, str] = {}

    async def call(stub: Any) -> Any:
        nonlocal turn
        turn += 1
        task = asyncio.current_task()
        session_id = owners.get(task)
        if session_id is None:
            session_id = owners[task] = ids[len(owners) % len(ids)]
        request = pb.UpdateSessionRequest(
            session_id=session_id,
            metadata_changeset=pb.MetadataChangeset(put_tags=[f"t{turn % 16}"]),
            custom_fields_changeset=pb.CustomFieldChangeset(
                set_fields={
                    "max_speed": common_pb2.CustomFieldValue(number_value=turn % 40),
                    "battery_pct": common_pb2.CustomFieldValue(number_value=turn % 100),
                }
            ),
            metrics=pb.MetricValues(
                entries=[pb.MetricEntry(name="max_altitude_m", value=turn % 300)], no_device=True
            ),
        )
        return await stub.UpdateSession(request, metadata=md)

    return call


def _ratio_row(
    figure: str, ours: float, theirs: float, baseline: str, target: float, note: str = ""
) -> Row:
    ratio = ours / theirs
    return Row(
        figure, ours, "calls/s", theirs, baseline, ratio, f">= {target}", ratio >= target, note
    )


def bench_unary(
    real: ServerProcess, bare: ServerProcess, big: data.BigOrg, writer: Identity, seconds: float
) -> list[Row]:
    """CreateSession, GetSession and UpdateSession against the bare server."""
    updated = _sessions_with_fields(real, writer, 8)
    cases: list[tuple[str, Call, float, str]] = [
        ("GetSession, 8 in flight", _get(big.identity, big.sample_ids), 0.7, "one SELECT"),
        ("CreateSession, 8 in flight, one org", _create(writer), 0.5, "one INSERT"),
        (
            "UpdateSession (tag + 2 custom fields + 1 metric), 8 in flight on 8 sessions",
            _update(writer, updated),
            0.5,
            "one UPDATE",
        ),
    ]
    rows = []
    for figure, call, target, statement in cases:
        ours = asyncio.run(calls_per_second(real.target, call, seconds))
        theirs = asyncio.run(calls_per_second(bare.target, call, seconds))
        log(f"  {figure}: {ours:,.0f} calls/s, bare {theirs:,.0f} calls/s")
        rows.append(
            _ratio_row(
                figure,
                ours,
                theirs,
                f"calls/s (bare grpc.aio + {statement})",
                target,
                "aim 0.8" if "Create" in figure else "",
            )
        )
    return rows


def _sessions_with_fields(real: ServerProcess, writer: Identity, count: int) -> list[str]:
    """Sessions of the writer's org, where the number fields the updates set are defined."""
    md = metadata(writer)
    with grpc.insecure_channel(real.target, options=CHANNEL_OPTIONS) as channel:
        fields = custom_field_service_pb2_grpc.CustomFieldServiceStub(channel)
        for name in ("max_speed", "battery_pct"):
            fields.CreateCustomField(
                fields_pb.CreateCustomFieldRequest(
                    entity_type=fields_pb.ENTITY_TYPE_SESSION,
                    name=name,
                    type=fields_pb.CUSTOM_FIELD_TYPE_NUMBER,
                ),
                metadata=md,
            )
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        return [
            stub.CreateSession(pb.CreateSessionRequest(), metadata=md).session.session_id
            for _ in range(count)
        ]


def bench_orgs(real: ServerProcess, url: str, seconds: float) -> Row:
    """The same creates in one org, then spread over eight orgs, on the same server."""
    one = create_identity(url, f"bench-one-{secrets.token_hex(3)}")
    eight = [create_identity(url, f"bench-eight-{i}-{secrets.token_hex(3)}") for i in range(8)]
    in_one = asyncio.run(calls_per_second(real.target, _create(one), seconds))
    calls = [_create(identity) for identity in eight]
    turn = 0

    async def spread(stub: Any) -> Any:
        nonlocal turn
        turn += 1
        return await calls[turn % 8](stub)

    in_eight = asyncio.run(calls_per_second(real.target, spread, seconds))
    log(f"  CreateSession: one org {in_one:,.0f} calls/s, eight orgs {in_eight:,.0f} calls/s")
    return _ratio_row(
        "CreateSession, 8 in flight: one org vs eight orgs",
        in_one,
        in_eight,
        "calls/s (the same calls over 8 orgs, same server)",
        0.9,
    )


def bench_workers(url: str, writer: Identity, seconds: float) -> Row:
    """CreateSession on ``serve --workers 2`` against ``--workers 1``."""
    rates = {}
    for workers in (1, 2):
        with ServerProcess("serve", url, workers=workers) as server:
            rates[workers] = asyncio.run(calls_per_second(server.target, _create(writer), seconds))
    log(f"  CreateSession: --workers 2 {rates[2]:,.0f} calls/s, --workers 1 {rates[1]:,.0f}")
    return _ratio_row(
        "CreateSession, 8 in flight: serve --workers 2 vs --workers 1",
        rates[2],
        rates[1],
        "calls/s (serve --workers 1, same run)",
        1.3,
        "2 cores, shared with PostgreSQL and the client",
    )


def bench_batch_create(real: ServerProcess, url: str, total: int, per_call: int) -> Row:
    """BatchCreateSessions of ``total`` sessions, ``per_call`` a call, against psycopg's
    executemany of an INSERT of the same rows."""
    ours_org = create_identity(url, f"bench-batch-{secrets.token_hex(3)}")
    md = metadata(ours_org)
    items = [
        pb.CreateSessionRequest(name=f"imported {i}", tags=["import"], request_id=f"bench-{i}")
        for i in range(total)
    ]
    with grpc.insecure_channel(real.target, options=CHANNEL_OPTIONS) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        started = time.perf_counter()
        for start in range(0, total, per_call):
            stub.BatchCreateSessions(
                pb.BatchCreateSessionsRequest(requests=items[start : start + per_call]),
                metadata=md,
            )
        ours = time.perf_counter() - started
    theirs_org = create_identity(url, f"bench-many-{secrets.token_hex(3)}")
    rows = [
        (theirs_org.org_id, new_id("session"), f"imported {i}", ["import"], "bench", "bench")
        for i in range(total)
    ]
    with data.connect(url) as conn:
        started = time.perf_counter()
        with conn.transaction():
            conn.cursor().executemany(
                "INSERT INTO sessions (org_id, session_id, name, tags, created_by, modified_by)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                rows,
            )
        theirs = time.perf_counter() - started
    ratio = theirs / ours
    log(f"  BatchCreateSessions: {total / ours:,.0f} sessions/s, executemany {total / theirs:,.0f}")
    return Row(
        f"BatchCreateSessions, {total:,} sessions, {per_call:,} a call",
        total / ours,
        "sessions/s",
        total / theirs,
        "rows/s (psycopg executemany INSERT of the same rows)",
        ratio,
        ">= 0.3",
        ratio >= 0.3,
        f"{ours:.1f} s against {theirs:.1f} s",
    )
