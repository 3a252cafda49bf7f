"""The vertical slice: create, get, update, delete a session through the generated stub."""

from __future__ import annotations

import grpc
from google.protobuf import struct_pb2

from flightlog.v1 import common_pb2
from flightlog.v1 import session_service_pb2 as pb
from tests.rpc.factories import make_session
from tests.support import Stubs, rpc_error


def test_create_then_get_returns_the_same_session(stubs: Stubs, org_id: str) -> None:
    metadata = struct_pb2.Struct()
    metadata.update({"pilot": "alice", "wind": {"knots": 12}})
    created = make_session(
        stubs,
        name="flight-001",
        description="formation #4",
        tags=["a", "b", "a"],
        metadata=metadata,
    )
    assert created.session_id.startswith("ss_")
    assert created.org_id == org_id
    assert list(created.tags) == ["a", "b"]
    assert not created.HasField("min_timestamp_ns")
    fetched = stubs.sessions.GetSession(pb.GetSessionRequest(session_id=created.session_id)).session
    assert fetched == created


def test_update_sets_clears_and_keeps_fields(stubs: Stubs) -> None:
    session = make_session(stubs, name="before", description="keep me")
    updated = stubs.sessions.UpdateSession(
        pb.UpdateSessionRequest(
            session_id=session.session_id,
            name=common_pb2.StringUpdate(clear=True),
            metadata_changeset=pb.MetadataChangeset(put_tags=["x", "y"], remove_tags=["y"]),
        )
    ).session
    assert not updated.HasField("name")
    assert updated.description == "keep me"
    assert list(updated.tags) == ["x"]
    assert updated.revision > session.revision


def test_name_over_120_characters_is_invalid_argument_naming_the_field(stubs: Stubs) -> None:
    failure = rpc_error(lambda: make_session(stubs, name="x" * 121))
    assert failure.code == grpc.StatusCode.INVALID_ARGUMENT
    assert failure.reason == "INVALID_REQUEST"
    assert "name" in failure.fields


def test_delete_then_get_is_not_found(stubs: Stubs) -> None:
    session = make_session(stubs)
    stubs.sessions.DeleteSession(pb.DeleteSessionRequest(session_id=session.session_id))
    failure = rpc_error(
        lambda: stubs.sessions.GetSession(pb.GetSessionRequest(session_id=session.session_id))
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND
    assert failure.reason == "SESSION_NOT_FOUND"


def test_another_org_cannot_see_the_session(stubs: Stubs, other_stubs: Stubs) -> None:
    session = make_session(stubs, name="private")
    failure = rpc_error(
        lambda: other_stubs.sessions.GetSession(pb.GetSessionRequest(session_id=session.session_id))
    )
    assert failure.code == grpc.StatusCode.NOT_FOUND


def test_missing_key_is_unauthenticated(grpc_target: str) -> None:
    anonymous = Stubs(grpc_target, None, None)
    failure = rpc_error(
        lambda: anonymous.sessions.GetSession(pb.GetSessionRequest(session_id="ss_x"))
    )
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    assert failure.reason == "UNAUTHENTICATED"
