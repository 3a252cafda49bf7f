"""Reflection: `buf curl` calls the server with no local protos, learning the schema from the
server's reflection service alone.

buf runs in an empty temporary directory so that it cannot pick up the repository's buf.yaml or
protos/, and it sends the auth metadata as plain headers, as any HTTP/2 tool would.
"""

from __future__ import annotations

import asyncio
import json
import sys
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

BUF = Path(sys.executable).parent / "buf"
BUF_TIMEOUT_S = 60.0


def _json_documents(text: str) -> list[Any]:
    """The JSON values that buf curl prints one after another (one per streamed message)."""
    decoder = json.JSONDecoder()
    documents: list[Any] = []
    position = 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return documents
        document, position = decoder.raw_decode(text, position)
        documents.append(document)


async def _buf_curl(
    workdir: Path,
    target: str,
    method: str,
    body: dict[str, Any],
    headers: Sequence[str] = (),
    reflect_headers: Sequence[str] | None = None,
) -> list[Any]:
    """Call `method` (`package.Service/Method`) with reflection only; return the JSON responses.

    `reflect_headers` go with the reflection calls; by default the same as `headers`, in case the
    server guards reflection too.
    """
    assert BUF.is_file(), f"{BUF} not found; the dev extra installs buf-bin"
    argv = [
        str(BUF),
        "curl",
        "--protocol",
        "grpc",
        "--http2-prior-knowledge",
        "--reflect",
        "--connect-timeout",
        "10",
        "--data",
        json.dumps(body),
    ]
    for header in headers:
        argv += ["-H", header]
    if reflect_headers is None:
        if headers:
            argv += ["--reflect-header", "*"]
    else:
        for header in reflect_headers:
            argv += ["--reflect-header", header]
    argv.append(f"http://{target}/{method}")
    process = await asyncio.create_subprocess_exec(
        *argv,
        cwd=workdir,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), BUF_TIMEOUT_S)
    except TimeoutError:
        process.kill()
        await process.communicate()
        raise AssertionError(f"buf curl {method} timed out after {BUF_TIMEOUT_S:.0f}s") from None
    out, err = stdout.decode(errors="replace"), stderr.decode(errors="replace")
    # buf exits with the gRPC code shifted left by three bits when the RPC fails.
    assert process.returncode == 0, (
        f"buf curl {method} exited {process.returncode}"
        f" (gRPC code {(process.returncode or 0) >> 3}):\nstdout:\n{out}\nstderr:\n{err}"
    )
    return _json_documents(out)


@pytest.fixture
def buf_workdir(tmp_path: Path) -> Path:
    """An empty directory: no buf.yaml, no buf.work.yaml and no .proto files for buf to find."""
    workdir = tmp_path / "buf-curl"
    workdir.mkdir()
    return workdir


def _auth(api_key: str, org_id: str) -> list[str]:
    return [f"authorization: Bearer {api_key}", f"x-org-id: {org_id}"]


async def test_buf_curl_unary_and_streaming_calls_by_reflection(
    buf_workdir: Path, grpc_target: str, api_key: str, org_id: str
) -> None:
    name = f"buf curl {uuid.uuid4().hex}"
    headers = _auth(api_key, org_id)

    created = await _buf_curl(
        buf_workdir,
        grpc_target,
        "flightlog.v1.SessionService/CreateSession",
        {"name": name, "tags": ["buf-curl"]},
        headers,
    )
    assert len(created) == 1, created
    session = created[0].get("session", {})
    session_id = session.get("sessionId", "")
    assert session_id.startswith("ss_"), created
    assert session.get("name") == name, created

    batches = await _buf_curl(
        buf_workdir,
        grpc_target,
        "flightlog.v1.SessionService/ListSessions",
        {"pageSize": 2},
        headers,
    )
    listed = [s["sessionId"] for batch in batches for s in batch.get("sessions", [])]
    assert session_id in listed, batches
    assert len(listed) == len(set(listed)), listed


async def test_buf_curl_filtered_listing_streams_exactly_the_session(
    buf_workdir: Path, grpc_target: str, api_key: str, org_id: str
) -> None:
    name = f"buf curl filtered {uuid.uuid4().hex}"
    headers = _auth(api_key, org_id)
    created = await _buf_curl(
        buf_workdir,
        grpc_target,
        "flightlog.v1.SessionService/CreateSession",
        {"name": name},
        headers,
    )
    session_id = created[0]["session"]["sessionId"]

    batches = await _buf_curl(
        buf_workdir,
        grpc_target,
        "flightlog.v1.SessionService/ListSessions",
        {"filter": {"nameContains": name}, "pageSize": 1},
        headers,
    )
    listed = [s["sessionId"] for batch in batches for s in batch.get("sessions", [])]
    assert listed == [session_id], batches


async def test_buf_curl_health_check_needs_no_credentials(
    buf_workdir: Path, grpc_target: str, api_key: str, org_id: str
) -> None:
    # Load balancers and Kubernetes gRPC probes call Health/Check without metadata; only the
    # reflection calls that fetch the schema carry credentials.
    responses = await _buf_curl(
        buf_workdir,
        grpc_target,
        "grpc.health.v1.Health/Check",
        {},
        headers=(),
        reflect_headers=_auth(api_key, org_id),
    )
    assert responses == [{"status": "SERVING"}], responses
