"""The admin command manages identity against the database: orgs, principals, keys."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from flightlog.v1 import session_service_pb2 as pb
from tests.support import Stubs, rpc_error


def admin(database_url: str, *args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "flightlog_server", "admin", "--database-url", database_url, *args],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return result.stdout.strip()


def test_admin_creates_an_org_a_principal_and_a_key_that_works_until_revoked(
    database_url: str, grpc_target: str
) -> None:
    org_id = admin(database_url, "create-org", "admin-cli-org")
    principal_id = admin(database_url, "create-principal", "admin-cli-bot")
    assert org_id.startswith("og_") and principal_id.startswith("pr_")
    admin(database_url, "add-member", org_id, principal_id)
    key = admin(database_url, "create-api-key", principal_id)
    key_id, _, secret = key.partition(".")
    assert key_id.startswith("ak_") and secret

    stubs = Stubs(grpc_target, key, None)
    session = stubs.sessions.CreateSession(pb.CreateSessionRequest(name="via admin key")).session
    assert session.org_id == org_id

    admin(database_url, "revoke-api-key", key_id)
    failure = rpc_error(lambda: stubs.sessions.CreateSession(pb.CreateSessionRequest()))
    assert failure.code == grpc.StatusCode.UNAUTHENTICATED
    stubs.close()


def test_admin_reports_a_duplicate_org_as_one_line_and_exit_code_1(database_url: str) -> None:
    admin(database_url, "create-org", "admin-cli-duplicate")
    with pytest.raises(subprocess.CalledProcessError) as failed:
        admin(database_url, "create-org", "admin-cli-duplicate")
    assert failed.value.returncode == 1
    assert failed.value.stderr.strip().startswith("error: ")
    assert "Traceback" not in failed.value.stderr
