"""The server's front door: health, reflection, authentication and the org-scope rules."""

from __future__ import annotations

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from flightlog.v1 import session_service_pb2 as pb
from tests.support import Identity, Stubs, create_identity, rpc_error, run_identity


def test_health_reports_serving_while_the_database_answers(grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        overall = stub.Check(health_pb2.HealthCheckRequest(service=""))
        sessions = stub.Check(health_pb2.HealthCheckRequest(service="flightlog.v1.SessionService"))
    assert overall.status == health_pb2.HealthCheckResponse.SERVING
    assert sessions.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_every_flightlog_service(grpc_target: str) -> None:
    with grpc.insecure_channel(grpc_target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")])
        )
        names = {s.name for r in responses for s in r.list_services_response.service}
    assert {
        "flightlog.v1.SessionService",
        "flightlog.v1.CatalogService",
        "flightlog.v1.CustomFieldService",
        "grpc.health.v1.Health",
    } <= names


def test_a_call_without_a_key_is_unauthenticated(grpc_target: str) -> None:
    anonymous = Stubs(grpc_target, None, None)
    failure = rpc_error(lambda: anonymous.sessions.CreateSession(pb.CreateSessionRequest(name="x")))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "UNAUTHENTICATED"


def test_a_garbled_key_is_unauthenticated(grpc_target: str, org_id: str) -> None:
    stubs = Stubs(grpc_target, "ak_notakey.secret", org_id)
    failure = rpc_error(lambda: stubs.sessions.CreateSession(pb.CreateSessionRequest()))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_revoked_key_is_unauthenticated(grpc_target: str, database_url: str) -> None:
    who = create_identity(database_url, "revoked-key-owner")
    stubs = Stubs(grpc_target, who.api_key, None)
    stubs.sessions.CreateSession(pb.CreateSessionRequest(name="before revocation"))

    run_identity(database_url, lambda repo: repo.revoke_api_key(who.api_key_id))

    failure = rpc_error(lambda: stubs.sessions.CreateSession(pb.CreateSessionRequest()))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED


def test_a_principal_in_one_org_may_omit_x_org_id(grpc_target: str, identity: Identity) -> None:
    stubs = Stubs(grpc_target, identity.api_key, None)
    session = stubs.sessions.CreateSession(pb.CreateSessionRequest()).session
    assert session.org_id == identity.org_id


def test_a_principal_in_two_orgs_must_name_one(
    grpc_target: str, database_url: str, identity: Identity, other_identity: Identity
) -> None:
    both = create_identity(
        database_url, "member-of-two", org_ids=[identity.org_id, other_identity.org_id]
    )
    failure = rpc_error(
        lambda: Stubs(grpc_target, both.api_key, None).sessions.CreateSession(
            pb.CreateSessionRequest()
        )
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "ORG_REQUIRED"

    named = Stubs(grpc_target, both.api_key, other_identity.org_id)
    session = named.sessions.CreateSession(pb.CreateSessionRequest()).session
    assert session.org_id == other_identity.org_id


def test_naming_an_org_the_principal_is_not_in_is_permission_denied(
    grpc_target: str, identity: Identity, other_identity: Identity
) -> None:
    stubs = Stubs(grpc_target, identity.api_key, other_identity.org_id)
    failure = rpc_error(lambda: stubs.sessions.CreateSession(pb.CreateSessionRequest()))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED
    assert failure.reason == "ORG_ACCESS_DENIED"
    assert other_identity.org_id not in failure.message

    unknown = Stubs(grpc_target, identity.api_key, "og_doesnotexist")
    failure = rpc_error(lambda: unknown.sessions.CreateSession(pb.CreateSessionRequest()))
    assert failure.code == grpc.StatusCode.PERMISSION_DENIED


def test_a_malformed_id_is_invalid_argument_naming_the_field(stubs: Stubs) -> None:
    failure = rpc_error(
        lambda: stubs.sessions.GetSession(pb.GetSessionRequest(session_id="not-an-id"))
    )
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert set(failure.fields) == {"session_id"}


def test_responses_carry_a_request_id(stubs: Stubs) -> None:
    _, call = stubs.sessions.CreateSession.with_call(pb.CreateSessionRequest())
    request_ids = [v for k, v in call.initial_metadata() if k == "x-request-id"]
    assert len(request_ids) == 1 and request_ids[0]
