"""Tenant isolation, over every RPC of the three services.

One parameterized test; its parameters come from the service descriptors, so an RPC added later
without a case in ``rpc_cases`` fails here. For each RPC, a principal of org B sends valid
requests that name org A's resources (alone, or mixed with B's own):

* ID-taking RPCs answer NOT_FOUND, exactly as for an ID that does not exist;
* listings and the change feed answer without any of A's rows;
* creates of a user-chosen ID or name that A also uses succeed in B's namespace (an
  ALREADY_EXISTS would reveal A's resource);
* nothing B receives contains A's IDs or name (beyond what B sent), and every ``org_id`` in a
  response is B's;
* A's rows, in every tenant-owned table, are byte-for-byte the same afterwards.

And for every RPC: no key is UNAUTHENTICATED, a revoked key is UNAUTHENTICATED, and naming an org
the principal is not a member of is PERMISSION_DENIED, without that org's ID or name in anything
the caller receives.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import psycopg
import pytest
from google.protobuf.descriptor import MethodDescriptor
from psycopg import sql

from flightlog_server.storage.urls import libpq_conninfo
from tests.reliability.helpers import record
from tests.reliability.rpc_cases import (
    METHODS,
    World,
    build_world,
    invoke,
    method_name,
    requests_for,
    walk_org_ids,
)
from tests.rpc.factories import unique
from tests.support import Identity, Stubs, create_identity, run_identity

# RPCs whose request names a user-chosen identifier that is unique per org only.
SAME_NAME_CREATES = {"CatalogService.CreateDevice", "CustomFieldService.CreateCustomField"}
# RPCs that list the caller's org (filters naming A's resources match nothing).
LISTINGS = {
    "SessionService.ListSessions",
    "SessionService.WatchSessions",
    "CatalogService.ListDevices",
    "CatalogService.ListDatasets",
    "CustomFieldService.ListCustomFields",
}
# Aggregations over the caller's org: naming A's custom field, B's call is INVALID_ARGUMENT (no
# such field in B), otherwise it aggregates B's own sessions.
AGGREGATIONS = {"SessionService.AggregateSessionMetrics", "SessionService.AggregateSessions"}
WATCH_SECONDS = 1.0
CHECKED: dict[str, int] = {}  # RPC -> calls made, for the figures


@dataclass(frozen=True)
class Orgs:
    a: World
    b: World
    b_stubs: Stubs
    anonymous: Stubs
    revoked: Stubs
    b_in_a: Stubs  # B's principal, naming org A in x-org-id
    conninfo: str


@pytest.fixture(scope="module")
def orgs(database_url: str, grpc_target: str) -> Iterator[Orgs]:
    worlds = []
    opened = []
    for label in ("tenant-a-", "tenant-b-"):
        name = unique(label)
        who = create_identity(database_url, name)
        stubs = Stubs(grpc_target, who.api_key, who.org_id)
        opened.append(stubs)
        worlds.append(build_world(stubs, who, name))
    a, b = worlds
    revoked_identity = create_identity(database_url, unique("revoked-"), org_ids=[b.org_id])
    run_identity(database_url, lambda repo: repo.revoke_api_key(revoked_identity.api_key_id))
    anonymous = Stubs(grpc_target, None, b.org_id)
    revoked = Stubs(grpc_target, revoked_identity.api_key, b.org_id)
    b_in_a = Stubs(grpc_target, b.identity.api_key, a.org_id)
    opened += [anonymous, revoked, b_in_a]
    yield Orgs(a, b, opened[1], anonymous, revoked, b_in_a, libpq_conninfo(database_url))
    for stubs in opened:
        stubs.close()


def snapshot(conninfo: str, org_id: str) -> dict[str, list[str]]:
    """Every row of the org in every table that has an ``org_id`` column (and its orgs row)."""
    rows: dict[str, list[str]] = {}
    with psycopg.connect(conninfo, autocommit=True) as conn:
        tables = [
            r[0]
            for r in conn.execute(
                "SELECT table_name FROM information_schema.columns "
                "WHERE table_schema = 'public' AND column_name = 'org_id' ORDER BY 1"
            )
        ]
        assert "sessions" in tables and "orgs" in tables
        for table in tables:
            query = sql.SQL("SELECT * FROM {} WHERE org_id = %s").format(sql.Identifier(table))
            rows[table] = sorted(repr(r) for r in conn.execute(query, (org_id,)))
    return rows


def timeout_of(method: MethodDescriptor) -> float:
    return WATCH_SECONDS if method.name == "WatchSessions" else 15.0


def leaks(a: World, request: Any, received: bytes) -> list[str]:
    """A's markers in what B received, except those B sent itself (echoed in NOT_FOUND)."""
    sent = request.SerializeToString()
    return [m for m in a.markers() if m.encode() not in sent and m.encode() in received]


@pytest.mark.parametrize("method", METHODS, ids=method_name)
def test_tenant_isolation(method: MethodDescriptor, orgs: Orgs) -> None:
    name = method_name(method)
    a, b = orgs.a, orgs.b
    try:
        requests = requests_for(method, a, b)
    except KeyError:
        pytest.fail(f"{name} has no tenant-isolation case: add one to tests/reliability/rpc_cases")
    before = snapshot(orgs.conninfo, a.org_id)

    for request in requests:
        out = invoke(orgs.b_stubs, method, request, timeout_of(method))
        if name in SAME_NAME_CREATES:
            assert out.code == grpc.StatusCode.OK, (out.code, out.error)
        elif name in LISTINGS:
            allowed = {grpc.StatusCode.OK, grpc.StatusCode.NOT_FOUND}
            if method.name == "WatchSessions":
                allowed.add(grpc.StatusCode.DEADLINE_EXCEEDED)  # a live feed does not end
            assert out.code in allowed, (out.code, out.error)
        elif name in AGGREGATIONS:
            allowed = {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
            assert out.code in allowed, (out.code, out.error)
        else:
            assert out.code == grpc.StatusCode.NOT_FOUND, (out.code, out.error)
        assert leaks(a, request, out.payload()) == []
        for response in out.responses:
            assert set(walk_org_ids(response)) <= {b.org_id}

    after = snapshot(orgs.conninfo, a.org_id)
    assert after == before, f"{name} by org B changed org A's rows"

    first = requests[0]
    anonymous = invoke(orgs.anonymous, method, first, timeout_of(method))
    assert anonymous.code == grpc.StatusCode.UNAUTHENTICATED
    revoked = invoke(orgs.revoked, method, first, timeout_of(method))
    assert revoked.code == grpc.StatusCode.UNAUTHENTICATED
    other_org = invoke(orgs.b_in_a, method, first, timeout_of(method))
    assert other_org.code == grpc.StatusCode.PERMISSION_DENIED
    received = other_org.payload()
    assert a.org_id.encode() not in received and a.org_name.encode() not in received
    assert snapshot(orgs.conninfo, a.org_id) == before
    CHECKED[name] = len(requests) + 3
    record(
        "tenant isolation",
        f"{len(CHECKED)} RPCs, {sum(CHECKED.values())} cross-org calls (B on A's IDs, no key, "
        "revoked key, foreign x-org-id); A's rows unchanged after each RPC",
    )


def test_every_rpc_has_a_case() -> None:
    """The request tables cover every RPC of the descriptors (and nothing else)."""
    placeholder = World(
        identity=Identity("k", "og_x", "pr_x", "ak_x"), org_name="x", device_id="d",
        spare_device_id="d", lone_device_id="d", dataset_id="ds_x", file_id="fl_x", topic_id="ti_x",
        topic_name="/x", custom_field_id="cf_x", custom_field_name="x", session_id="ss_x",
        empty_session_id="ss_y",
    )  # fmt: skip
    missing = []
    for method in METHODS:
        try:
            requests_for(method, placeholder, placeholder)
        except KeyError:
            missing.append(method_name(method))
    assert missing == []
