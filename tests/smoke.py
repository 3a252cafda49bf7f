"""Smoke test of a running development server (`make run`), used by `.ci/run`.

Reads the development credentials that `make run` writes to `.data/dev.env`
(`FLIGHTLOG_ENDPOINT`, `FLIGHTLOG_API_KEY`, `FLIGHTLOG_ORG_ID`) from the environment, then, through
the generated stub only, creates a session and reads it back.

TODO(server team): extend it to the happy path of the seed (attach a device, add a file, list
topics) once the catalog RPCs are served; keep it to a few seconds.

    set -a; source .data/dev.env; set +a; python -m tests.smoke
"""

from __future__ import annotations

import os
import sys
import uuid

import grpc

from flightlog.v1 import session_service_pb2, session_service_pb2_grpc


def _env(name: str) -> str:
    value = os.environ.get(name, "")
    if not value:
        raise SystemExit(f"smoke: {name} is not set (source .data/dev.env first)")
    return value


def main() -> int:
    endpoint = os.environ.get("FLIGHTLOG_ENDPOINT", "localhost:50051")
    metadata = (
        ("authorization", f"Bearer {_env('FLIGHTLOG_API_KEY')}"),
        ("x-org-id", _env("FLIGHTLOG_ORG_ID")),
    )
    name = f"smoke-{uuid.uuid4().hex[:8]}"
    with grpc.insecure_channel(endpoint) as channel:
        stub = session_service_pb2_grpc.SessionServiceStub(channel)
        try:
            created = stub.CreateSession(
                session_service_pb2.CreateSessionRequest(name=name, tags=["smoke"]),
                metadata=metadata,
                timeout=30,
            ).session
            fetched = stub.GetSession(
                session_service_pb2.GetSessionRequest(session_id=created.session_id),
                metadata=metadata,
                timeout=30,
            ).session
        except grpc.RpcError as exc:
            print(f"smoke: FAILED: {exc}", file=sys.stderr)
            return 1
    if not created.session_id.startswith("ss_") or fetched.session_id != created.session_id:
        print(f"smoke: FAILED: created {created.session_id!r}, got back {fetched.session_id!r}")
        return 1
    if fetched.name != name:
        print(f"smoke: FAILED: name {fetched.name!r}, expected {name!r}")
        return 1
    print(f"smoke: OK: created and read back session {created.session_id} at {endpoint}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
